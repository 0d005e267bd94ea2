// xattn/core/softmax_backward_args.hpp — validation of a softmax-attention backward call, once, at
// the front door, and the small description of the problem that both the backward kernel and its
// fp64 reference consume. The forward's checks (core/softmax_args.hpp) cover q, k, v, out, lse and
// the options; this adds dout and the three gradients. Everything is checked before anything is
// written.
#pragma once

#include <array>
#include <tuple>
#include <type_traits>
#include <utility>

#include "convert.hpp"
#include "softmax_args.hpp"
#include "workspace.hpp"

namespace xattn::detail {

/// A validated backward problem: the forward's problem (q, k, v, out, lse and resolved options;
/// its `o` and `lse` are inputs here and are never written) plus dout and the gradients.
template <class T>
struct softmax_backward_problem {
  softmax_problem<T> fwd;
  bshd_view<const T> o, dout;  // [B, Nq, Hq, dv]
  const T* lse = nullptr;      // [B, Hq, Nq]
  bshd_view<T> dq, dk, dv;     // shaped as q, k, v
  float* dsinks = nullptr;     // [Hq]: ∂L/∂sink_logits, on request
  float* dbias = nullptr;      // shaped as fwd.bias (strides fwd.bias_sb, fwd.bias_sh): ∂L/∂bias, on request
  float* dalibi = nullptr;     // shaped as fwd.alibi (stride fwd.alibi_sb): ∂L/∂slope, on request
};

/// q, k, v, out, dout, dq, dk, dv: rank-4 row-major tensors of one element type T (float or double);
/// lse: rank 3 of T. Throws xattn::error naming `fn`, the argument and the shapes.
template <class Q, class K, class V, class O, class L, class DO, class DQ, class DK, class DV>
auto make_softmax_backward_problem(const char* fn, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                                   const DO& dout, DQ& dq, DK& dk, DV& dv, const softmax_options& opt,
                                   const softmax_grads& extra = {}) {
  using T = scalar_of<Q>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "xattn::softmax_attention_backward: tensors hold float or double (16-bit storage is not supported yet)");
  static_assert(std::is_same_v<scalar_of<K>, T> && std::is_same_v<scalar_of<V>, T> && std::is_same_v<scalar_of<O>, T> &&
                    std::is_same_v<scalar_of<L>, T> && std::is_same_v<scalar_of<DO>, T> &&
                    std::is_same_v<scalar_of<DQ>, T> && std::is_same_v<scalar_of<DK>, T> &&
                    std::is_same_v<scalar_of<DV>, T>,
                "xattn::softmax_attention_backward: q, k, v, out, lse, dout, dq, dk and dv hold one element type");
  static_assert(!std::is_const_v<typename std::remove_cvref_t<DQ>::Scalar> &&
                    !std::is_const_v<typename std::remove_cvref_t<DK>::Scalar> &&
                    !std::is_const_v<typename std::remove_cvref_t<DV>::Scalar>,
                "xattn::softmax_attention_backward: dq, dk and dv must be writable");
  softmax_backward_problem<T> p;
  const std::array<index, 3> ld = dims_of(lse);
  // The forward's validator takes writable out and lse pointers; the backward only reads them.
  p.fwd = make_softmax_problem<T>(fn, q.data(), dims_of(q), k.data(), dims_of(k), v.data(), dims_of(v),
                                  const_cast<T*>(out.data()), dims_of(out), const_cast<T*>(lse.data()), &ld, opt);
  p.o = make_native_view<const T>(out.data(), dims_of(out), opt.layout);
  p.lse = lse.data();

  const auto od = dims_of(out);
  require(dims_of(dout) == od, fn, "dout", "shape ", shape_str(dims_of(dout)), " != out shape ", shape_str(od));
  require(dout.data() != nullptr || bytes_of(od, 1) == 0, fn, "dout", "null data (shape ", shape_str(od), ")");
  const std::tuple<const char*, std::array<index, 4>, std::array<index, 4>, const void*> grads[] = {
      {"dq", dims_of(dq), dims_of(q), dq.data()}, {"dk", dims_of(dk), dims_of(k), dk.data()},
      {"dv", dims_of(dv), dims_of(v), dv.data()}};
  const char* of[] = {"q", "k", "v"};
  int w = 0;
  for (const auto& [name, gd, want, ptr] : grads) {
    require(gd == want, fn, name, "shape ", shape_str(gd), " != ", of[w], " shape ", shape_str(want));
    require(ptr != nullptr || bytes_of(gd, 1) == 0, fn, name, "null data (shape ", shape_str(gd), ")");
    ++w;
  }
  p.dout = make_native_view<const T>(dout.data(), od, opt.layout);
  p.dq = make_native_view<T>(dq.data(), dims_of(dq), opt.layout);
  p.dk = make_native_view<T>(dk.data(), dims_of(dk), opt.layout);
  p.dv = make_native_view<T>(dv.data(), dims_of(dv), opt.layout);

  if (!extra.sink_logits.empty()) {
    require(p.fwd.sinks != nullptr, fn, "grads.sink_logits", "asks for the sink logits' gradient, but the options "
            "have no sink_logits");
    require(index(extra.sink_logits.size()) == p.fwd.hq, fn, "grads.sink_logits", "has ", extra.sink_logits.size(),
            " entries, expected one per q head (", p.fwd.hq, ")");
    p.dsinks = extra.sink_logits.data();
  }
  if (extra.bias) {
    require(p.fwd.bias != nullptr, fn, "grads.bias", "asks for the bias' gradient, but the options have no bias");
    require(extra.bias.dims == opt.bias.dims, fn, "grads.bias", "shape ", shape_str(extra.bias.dims),
            " != bias shape ", shape_str(opt.bias.dims));
    p.dbias = extra.bias.data;
  } else {
    require(extra.bias.dims == std::array<index, 4>{}, fn, "grads.bias", "null data (shape ",
            shape_str(extra.bias.dims), ")");
  }
  if (!extra.alibi_slopes.empty()) {
    require(p.fwd.alibi != nullptr, fn, "grads.alibi_slopes", "asks for the ALiBi slopes' gradient, but the "
            "options have no alibi_slopes");
    require(extra.alibi_slopes.size() == opt.alibi_slopes.size(), fn, "grads.alibi_slopes", "has ",
            extra.alibi_slopes.size(), " entries, expected ", opt.alibi_slopes.size(), " (as alibi_slopes)");
    p.dalibi = extra.alibi_slopes.data();
  }

  // What the call writes (dq, dk, dv, the sinks', bias' and slopes' gradients) must stay apart from everything it reads
  // and from each other.
  const std::size_t es = sizeof(T);
  const byte_range written[] = {{dq.data(), bytes_of(dims_of(dq), es)}, {dk.data(), bytes_of(dims_of(dk), es)},
                                {dv.data(), bytes_of(dims_of(dv), es)},
                                byte_range_of(std::span<const float>(extra.sink_logits)),
                                extra.bias ? byte_range{extra.bias.data, bytes_of(extra.bias.dims, sizeof(float))}
                                           : byte_range{},
                                byte_range_of(std::span<const float>(extra.alibi_slopes))};
  const std::pair<const char*, byte_range> read[] = {
      {"q", {q.data(), bytes_of(dims_of(q), es)}},
      {"k", {k.data(), bytes_of(dims_of(k), es)}},
      {"v", {v.data(), bytes_of(dims_of(v), es)}},
      {"out", {out.data(), bytes_of(od, es)}},
      {"lse", {lse.data(), bytes_of(ld, es)}},
      {"dout", {dout.data(), bytes_of(od, es)}},
      {"bias", byte_range_of(opt.bias)},
      {"mask", byte_range_of(opt.mask)},
      {"alibi_slopes", byte_range_of(opt.alibi_slopes)},
      {"sink_logits", byte_range_of(opt.sink_logits)},
      {"seqlens_q", byte_range_of(opt.seqlens_q)},
      {"seqlens_k", byte_range_of(opt.seqlens_k)}};
  const char* wname[] = {"dq", "dk", "dv", "grads.sink_logits", "grads.bias", "grads.alibi_slopes"};
  for (int a = 0; a < 6; ++a) {
    for (const auto& [name, r] : read) require(!written[a].overlaps(r), fn, wname[a], "overlaps ", name, " in memory");
    for (int b = a + 1; b < 6; ++b) require(!written[a].overlaps(written[b]), fn, wname[a], "overlaps ", wname[b], " in memory");
  }
  return p;
}

/// Whether any of a backward call's tensors holds 16-bit values.
template <class... X>
inline constexpr bool any_16bit_v = (is_16bit_v<scalar_of<X>> || ...);
template <class X>
inline constexpr bool float_or_16bit_v = std::is_same_v<scalar_of<X>, float> || is_16bit_v<scalar_of<X>>;

/// A backward call with 16-bit tensors, run as a float one: 16-bit inputs (q, k, v, out, dout)
/// converted to float copies, 16-bit gradients computed into float buffers and rounded to nearest
/// even into the caller's tensors at the end; float tensors are used in place. Every sum stays in
/// float, as in the float call on the same values. The copies live in the calling thread's
/// workspace (slot 1; the engine's per-item scratch is slot 0), which later calls reuse: at most
/// 8 tensors of floats (5 inputs and 3 gradients; 128 MiB at N = 4096, H = 8, d = 128). lse is
/// float (as the 16-bit forward writes it). body(q, k, v, out, lse, dout, dq, dk, dv) gets float
/// tensor maps of the same shapes; the caller's tensors are checked for overlaps here (the copies
/// hide them from body's checks) before anything is written.
///
/// The chunk families' backward passes take no out and no lse: with_out = false leaves them out of
/// the checks and the copies (pass dout as out and any float lse; body's out is then dout's copy),
/// and `slot` names a workspace slot their engines do not use.
template <class Q, class K, class V, class O, class L, class DO, class DQ, class DK, class DV, class Body>
void backward_in_float(const char* fn, const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                       DQ& dq, DK& dk, DV& dv, const Body& body, int slot = 1, bool with_out = true) {
  static_assert((float_or_16bit_v<Q> && float_or_16bit_v<K> && float_or_16bit_v<V> && float_or_16bit_v<O> &&
                 float_or_16bit_v<DO> && float_or_16bit_v<DQ> && float_or_16bit_v<DK> && float_or_16bit_v<DV>),
                "xattn backward: with 16-bit tensors, every tensor holds float, Eigen::bfloat16 or Eigen::half");
  static_assert(std::is_same_v<scalar_of<L>, float>, "xattn backward: with 16-bit tensors, lse holds float");
  const auto range = [](const auto& x) {
    return byte_range{x.data(), bytes_of(dims_of(x), sizeof(scalar_of<decltype(x)>))};
  };
  const byte_range written[] = {range(dq), range(dk), range(dv)};
  const byte_range none{nullptr, 0};
  const std::pair<const char*, byte_range> read[] = {{"q", range(q)},
                                                     {"k", range(k)},
                                                     {"v", range(v)},
                                                     {"out", with_out ? range(out) : none},
                                                     {"lse", with_out ? range(lse) : none},
                                                     {"dout", range(dout)}};
  const char* wname[] = {"dq", "dk", "dv"};
  for (int a = 0; a < 3; ++a) {
    for (const auto& [name, r] : read) require(!written[a].overlaps(r), fn, wname[a], "overlaps ", name, " in memory");
    for (int b = a + 1; b < 3; ++b) require(!written[a].overlaps(written[b]), fn, wname[a], "overlaps ", wname[b], " in memory");
  }
  // one float buffer for every tensor that is not float already, carved in whole cache lines
  const auto floats = [](const auto& x) {
    return is_16bit_v<scalar_of<decltype(x)>> ? round_up(index(x.size()), index(simd::kAlign / sizeof(float))) : index(0);
  };
  const index sizes[] = {floats(q),    floats(k),  floats(v),  with_out ? floats(out) : 0,
                         floats(dout), floats(dq), floats(dk), floats(dv)};
  index total = 0;
  for (index n : sizes) total += n;
  float* base = static_cast<float*>(workspace::of_this_thread(slot).get(sizeof(float) * std::size_t(total)));
  float* at[8];
  for (int i = 0; i < 8; ++i) at[i] = base, base += sizes[i];
  const auto input = [](const auto& x, float* buf) {
    using S = scalar_of<decltype(x)>;
    constexpr int R = std::remove_cvref_t<decltype(x)>::NumDimensions;
    if constexpr (is_16bit_v<S>) {
      for (index e = 0; e < index(x.size()); ++e) buf[e] = float(x.data()[e]);  // exact
      return Eigen::TensorMap<const Eigen::Tensor<float, R, Eigen::RowMajor>>(buf, x.dimensions());
    } else {
      return Eigen::TensorMap<const Eigen::Tensor<float, R, Eigen::RowMajor>>(x.data(), x.dimensions());
    }
  };
  const auto grad = [](auto& x, float* buf) {
    using S = scalar_of<decltype(x)>;
    constexpr int R = std::remove_cvref_t<decltype(x)>::NumDimensions;
    float* data = nullptr;
    if constexpr (is_16bit_v<S>) data = buf;
    else data = x.data();
    return Eigen::TensorMap<Eigen::Tensor<float, R, Eigen::RowMajor>>(data, x.dimensions());
  };
  auto dqf = grad(dq, at[5]);
  auto dkf = grad(dk, at[6]);
  auto dvf = grad(dv, at[7]);
  const auto doutf = input(dout, at[4]);
  if (with_out) body(input(q, at[0]), input(k, at[1]), input(v, at[2]), input(out, at[3]), lse, doutf, dqf, dkf, dvf);
  else body(input(q, at[0]), input(k, at[1]), input(v, at[2]), doutf, lse, doutf, dqf, dkf, dvf);
  const auto round_into = [](auto& x, const float* buf) {
    using S = scalar_of<decltype(x)>;
    if constexpr (is_16bit_v<S>)
      for (index e = 0; e < index(x.size()); ++e) x.data()[e] = S(buf[e]);  // Eigen's conversion: to nearest even
  };
  round_into(dq, at[5]);
  round_into(dk, at[6]);
  round_into(dv, at[7]);
}

/// f(q, k, v, out, lse, dout, dq, dk, dv) on float copies when any tensor holds 16-bit values
/// (backward_in_float), else on the tensors as they are.
template <class Q, class K, class V, class O, class L, class DO, class DQ, class DK, class DV, class F>
void in_float_if_16bit(const char* fn, const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                       DQ& dq, DK& dk, DV& dv, const F& f) {
  if constexpr (any_16bit_v<Q, K, V, O, DO, DQ, DK, DV>) backward_in_float(fn, q, k, v, out, lse, dout, dq, dk, dv, f);
  else f(q, k, v, out, lse, dout, dq, dk, dv);
}

}  // namespace xattn::detail
