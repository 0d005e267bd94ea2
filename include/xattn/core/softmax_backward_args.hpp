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

#include "softmax_args.hpp"

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

  // What the call writes (dq, dk, dv, the sinks' gradient) must stay apart from everything it reads
  // and from each other.
  const std::size_t es = sizeof(T);
  const byte_range written[] = {{dq.data(), bytes_of(dims_of(dq), es)}, {dk.data(), bytes_of(dims_of(dk), es)},
                                {dv.data(), bytes_of(dims_of(dv), es)},
                                byte_range_of(std::span<const float>(extra.sink_logits))};
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
  const char* wname[] = {"dq", "dk", "dv", "grads.sink_logits"};
  for (int a = 0; a < 4; ++a) {
    for (const auto& [name, r] : read) require(!written[a].overlaps(r), fn, wname[a], "overlaps ", name, " in memory");
    for (int b = a + 1; b < 4; ++b) require(!written[a].overlaps(written[b]), fn, wname[a], "overlaps ", wname[b], " in memory");
  }
  return p;
}

}  // namespace xattn::detail
