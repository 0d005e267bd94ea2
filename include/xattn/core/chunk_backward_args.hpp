// xattn/core/chunk_backward_args.hpp — validation of a lightning- or linear-attention backward call,
// once, at the front door, and the small description of the problem that both the backward engine
// (core/chunk_backward.hpp) and its fp64 reference consume. The forward's checks
// (core/linear_args.hpp) cover q, k, v and the options; this adds dout, the three gradients and the
// two state gradients. Everything is checked before anything is written.
#pragma once

#include <array>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>

#include "linear_args.hpp"
#include "softmax_backward_args.hpp"

namespace xattn::detail {

/// A validated chunk backward problem: the forward's problem (q, k, v, decay, scale, block,
/// initial state; its `o` is dout and is never written, its state_out is null) plus the gradients.
template <class T>
struct chunk_backward_problem {
  chunk_problem<T> fwd;
  bshd_view<const T> dout;        // [B, N, Hq, e]
  bshd_view<T> dq, dk, dv;        // shaped as q, k, v; dk and dv summed over each K/V head's query heads
  const T* dstate_out = nullptr;  // ∂L/∂final_state [B, Hq, d, e]; null = zeros
  T* dstate_in = nullptr;         // ∂L/∂initial_state [B, Hq, d, e], written; null = not wanted
  double* ddecay = nullptr;       // ∂L/∂decay [Hq] summed over the batch, written (lightning only); null = not wanted
};

/// What a backward front door adds to the forward's options.
struct chunk_backward_call {
  const char* fn;
  state_ref dstate_in;
  state_cref dstate_out;
  std::span<double> ddecay = {};  // lightning's decay gradient; linear attention has no decay
};

/// q, k, v, dout, dq, dk, dv: rank-4 row-major tensors of one element type T (float or double).
/// `fwd(dout)` validates the forward call with dout in the place of out (same shape), and returns
/// its chunk_problem. Throws xattn::error naming c.fn, the argument and the shapes.
template <class Q, class K, class V, class DO, class DQ, class DK, class DV, class Fwd>
auto make_chunk_backward_problem(const chunk_backward_call& c, const Q& q, const K& k, const V& v, const DO& dout,
                                 DQ& dq, DK& dk, DV& dv, layout lay, const Fwd& fwd) {
  using T = scalar_of<Q>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "xattn: the chunk backward passes compute in float or double (16-bit tensors go through chunk_in_float_if_16bit)");
  static_assert(std::is_same_v<scalar_of<K>, T> && std::is_same_v<scalar_of<V>, T> &&
                    std::is_same_v<scalar_of<DO>, T> && std::is_same_v<scalar_of<DQ>, T> &&
                    std::is_same_v<scalar_of<DK>, T> && std::is_same_v<scalar_of<DV>, T>,
                "xattn: q, k, v, dout, dq, dk and dv of a chunk backward pass hold one element type");
  static_assert(!std::is_const_v<std::remove_pointer_t<decltype(dq.data())>> &&
                    !std::is_const_v<std::remove_pointer_t<decltype(dk.data())>> &&
                    !std::is_const_v<std::remove_pointer_t<decltype(dv.data())>>,
                "xattn: dq, dk and dv must be writable");
  const char* fn = c.fn;
  const std::size_t es = sizeof(T);
  // dout first, under its own name: the forward's checks would call it out.
  const auto qd = dims_of(q), vd = dims_of(v), od = dims_of(dout);
  const std::array<index, 4> want{qd[0], qd[1], qd[2], vd[3]};  // q's batch, seq, heads (either layout), v's dim
  require(od == want, fn, "dout", "shape ", shape_str(od), " != expected ", shape_str(want), " (q ", shape_str(qd),
          ", v ", shape_str(vd), ")");
  require(dout.data() != nullptr || bytes_of(od, 1) == 0, fn, "dout", "null data (shape ", shape_str(od), ")");
  bool sizes_known = true;  // negative extents are reported by the forward's checks below
  for (const auto& d : {qd, vd, dims_of(k)})
    for (index x : d) sizes_known = sizes_known && x >= 0;
  if (sizes_known)
    for (const auto& [name, ptr, d] : {std::tuple{"q", static_cast<const void*>(q.data()), qd},
                                       std::tuple{"k", static_cast<const void*>(k.data()), dims_of(k)},
                                       std::tuple{"v", static_cast<const void*>(v.data()), vd}})
      require(!overlaps(dout.data(), bytes_of(od, es), ptr, bytes_of(d, es)), fn, "dout", "overlaps ", name,
              " in memory");

  chunk_backward_problem<T> p;
  p.fwd = fwd(const_cast<T*>(dout.data()));  // read only: the forward's validator takes a writable out
  require(p.fwd.state_out == nullptr, fn, "final_state",
          "must stay empty in a backward call: pass the loss's gradient of it as dfinal_state");
  require(!p.fwd.bf16_compute, fn, "compute", "bf16 is not supported by the backward pass: use compute::exact");

  const std::tuple<const char*, const char*, std::array<index, 4>, std::array<index, 4>, const void*> grads[] = {
      {"dq", "q", dims_of(dq), qd, dq.data()}, {"dk", "k", dims_of(dk), dims_of(k), dk.data()},
      {"dv", "v", dims_of(dv), vd, dv.data()}};
  for (const auto& [name, of, gd, wd, ptr] : grads) {
    require(gd == wd, fn, name, "shape ", shape_str(gd), " != ", of, " shape ", shape_str(wd));
    require(ptr != nullptr || bytes_of(gd, 1) == 0, fn, name, "null data (shape ", shape_str(gd), ")");
  }

  // State gradients: [batch, q heads, D', e (+1 with the normaliser)] of T, as the forward's states.
  const std::array<index, 4> sd{p.fwd.batch, p.fwd.hq, p.fwd.df, p.fwd.cols()};
  const std::size_t sb = bytes_of(sd, es);
  const char* tname = std::is_same_v<T, double> ? "double" : "float";
  for (const auto& [name, data, is_double, dims] :
       {std::tuple{"dfinal_state", static_cast<const void*>(c.dstate_out.data), c.dstate_out.is_double, c.dstate_out.dims},
        std::tuple{"dinitial_state", static_cast<const void*>(c.dstate_in.data), c.dstate_in.is_double, c.dstate_in.dims}}) {
    if (!data) continue;
    require(is_double == std::is_same_v<T, double>, fn, name, "holds ", is_double ? "double" : "float", ", expected ",
            tname);
    require(dims == sd, fn, name, "shape ", shape_str(dims), " != expected [batch, heads, D', e", p.fwd.normalize ? " + 1" : "",
            "] = ", shape_str(sd));
  }
  p.dstate_out = static_cast<const T*>(c.dstate_out.data);
  p.dstate_in = static_cast<T*>(c.dstate_in.data);
  if (!c.ddecay.empty()) {
    require(static_cast<index>(c.ddecay.size()) == p.fwd.hq, fn, "ddecay", "has ", c.ddecay.size(),
            " elements, expected one per query head (", p.fwd.hq, ")");
    p.ddecay = c.ddecay.data();
  }

  // What the call writes (ddecay, dq, dk, dv, dinitial_state) stays apart from what it reads and from
  // each other; ddecay comes first, so that a message about it names it.
  const byte_range written[] = {{p.ddecay, c.ddecay.size_bytes()},
                                {dq.data(), bytes_of(dims_of(dq), es)},
                                {dk.data(), bytes_of(dims_of(dk), es)},
                                {dv.data(), bytes_of(dims_of(dv), es)},
                                {p.dstate_in, p.dstate_in ? sb : 0}};
  const char* wname[] = {"ddecay", "dq", "dk", "dv", "dinitial_state"};
  constexpr int n_written = static_cast<int>(std::size(written));
  const std::pair<const char*, byte_range> read[] = {
      {"q", {q.data(), bytes_of(qd, es)}},
      {"k", {k.data(), bytes_of(dims_of(k), es)}},
      {"v", {v.data(), bytes_of(vd, es)}},
      {"dout", {dout.data(), bytes_of(od, es)}},
      {"initial_state", {p.fwd.state_in, p.fwd.state_in ? sb : 0}},
      {"dfinal_state", {p.dstate_out, p.dstate_out ? sb : 0}},
      {"decay", {p.fwd.decay, p.fwd.decay ? sizeof(double) * std::size_t(p.fwd.hq) : 0}}};
  for (int a = 0; a < n_written; ++a) {
    for (const auto& [name, r] : read) require(!written[a].overlaps(r), fn, wname[a], "overlaps ", name, " in memory");
    for (int b = a + 1; b < n_written; ++b)
      require(!written[a].overlaps(written[b]), fn, wname[a], "overlaps ", wname[b], " in memory");
  }
  p.dout = make_native_view<const T>(dout.data(), od, lay);
  p.dq = make_native_view<T>(dq.data(), dims_of(dq), lay);
  p.dk = make_native_view<T>(dk.data(), dims_of(dk), lay);
  p.dv = make_native_view<T>(dv.data(), dims_of(dv), lay);
  return p;
}

/// f(q, k, v, dout, dq, dk, dv) on float copies when any tensor holds 16-bit values (every tensor
/// then float or 16-bit; backward_in_float, in workspace slot 3, which the chunk engines and
/// mapped_linear_backward leave alone), else on the tensors as they are. ddecay (lightning's, double
/// either way) is written by f directly; the problem's checks see only the copies, so it is checked
/// against the caller's 16-bit tensors here.
template <class Q, class K, class V, class DO, class DQ, class DK, class DV, class F>
void chunk_in_float_if_16bit(const char* fn, const Q& q, const K& k, const V& v, const DO& dout, DQ& dq, DK& dk,
                             DV& dv, const F& f, std::span<const double> ddecay = {}) {
  if constexpr (any_16bit_v<Q, K, V, DO, DQ, DK, DV>) {
    const auto range = [](const auto& x) {
      return byte_range{x.data(), bytes_of(dims_of(x), sizeof(scalar_of<decltype(x)>))};
    };
    const byte_range dd{ddecay.data(), ddecay.size_bytes()};
    for (const auto& [name, r] : {std::pair{"q", range(q)}, std::pair{"k", range(k)}, std::pair{"v", range(v)},
                                  std::pair{"dout", range(dout)}, std::pair{"dq", range(dq)},
                                  std::pair{"dk", range(dk)}, std::pair{"dv", range(dv)}})
      require(!dd.overlaps(r), fn, "ddecay", "overlaps ", name, " in memory");
    const Eigen::TensorMap<const Eigen::Tensor<float, 3, Eigen::RowMajor>> no_lse(nullptr, 0, 0, 0);
    backward_in_float(
        fn, q, k, v, dout, no_lse, dout, dq, dk, dv,
        [&](const auto& qf, const auto& kf, const auto& vf, const auto&, const auto&, const auto& df, auto& dqf,
            auto& dkf, auto& dvf) { f(qf, kf, vf, df, dqf, dkf, dvf); },
        3, false);
  } else {
    f(q, k, v, dout, dq, dk, dv);
  }
}

/// The forward's chunk_call of a backward call: q, k, v as given, dout's memory as out.
template <class Q, class K, class V, class T>
chunk_call<T> backward_call_of(const char* fn, const Q& q, const K& k, const V& v, T* out,
                               const std::array<index, 4>& od) {
  chunk_call<T> c{};
  c.fn = fn;
  c.q = q.data(), c.k = k.data(), c.v = v.data(), c.o = out;
  c.qd = dims_of(q), c.kd = dims_of(k), c.vd = dims_of(v), c.od = od;
  return c;
}

template <class Q, class K, class V, class DO, class DQ, class DK, class DV>
auto make_lightning_backward_problem(const char* fn, const Q& q, const K& k, const V& v, const DO& dout, DQ& dq,
                                     DK& dk, DV& dv, const lightning_backward_options& opt) {
  using T = scalar_of<Q>;
  return make_chunk_backward_problem({fn, opt.dinitial_state, opt.dfinal_state, opt.ddecay}, q, k, v, dout, dq, dk,
                                     dv, opt.forward.layout, [&](T* out) {
                                       auto c = backward_call_of(fn, q, k, v, out, dims_of(dout));
                                       const lightning_options& f = opt.forward;
                                       c.lay = f.layout, c.causal = true, c.scale = f.scale, c.block = f.block_size;
                                       c.decay = f.decay, c.map = &identity_map(), c.state_in = f.initial_state;
                                       c.state_out = f.final_state, c.bf16_compute = f.compute == compute::bf16;
                                       return make_chunk_problem(c);
                                     });
}

template <class Q, class K, class V, class DO, class DQ, class DK, class DV>
auto make_linear_backward_problem(const char* fn, const Q& q, const K& k, const V& v, const DO& dout, DQ& dq, DK& dk,
                                  DV& dv, const linear_backward_options& opt) {
  using T = scalar_of<Q>;
  return make_chunk_backward_problem({fn, opt.dinitial_state, opt.dfinal_state}, q, k, v, dout, dq, dk, dv,
                                     opt.forward.layout, [&](T* out) {
                                       auto c = backward_call_of(fn, q, k, v, out, dims_of(dout));
                                       const linear_options& f = opt.forward;
                                       c.lay = f.layout, c.causal = f.causal, c.normalize = f.normalize;
                                       c.scale = f.scale, c.eps = f.eps, c.block = f.block_size;
                                       c.map = &f.feature_map, c.state_in = f.initial_state;
                                       c.state_out = f.final_state, c.bf16_compute = f.compute == compute::bf16;
                                       chunk_problem<T> p = make_chunk_problem(c);
                                       require(f.feature_map.kind() != feature::custom, fn, "feature_map",
                                               "a custom map has no derivative the backward pass can take: "
                                               "apply it to q and k yourself and pass the identity map");
                                       return p;
                                     });
}

}  // namespace xattn::detail
