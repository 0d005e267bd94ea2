// xattn/core/linear_args.hpp — validation of a linear- or lightning-attention call, once, at the
// front door, and the small internal description of the problem that the chunk engine and the fp64
// references both consume. Everything is checked before anything is written.
#pragma once

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../options.hpp"
#include "validate.hpp"

namespace xattn::detail {

/// Largest block_size the options accept: the per-thread scratch holds a block × block score tile.
inline constexpr index kMaxChunkSize = 1024;

/// A validated chunk-engine problem: views over the caller's memory plus resolved options. Query
/// head h reads K/V head h / group (grouped-query attention) and owns its own state. T is the
/// compute type (core/convert.hpp's rule): q, k, v and out may hold 16-bit values; states, decays and
/// every accumulation are T.
template <class T>
struct chunk_problem {
  using value_type = T;  // the compute type
  bshd_view<const T> q, k, v;
  bshd_view<T> o;
  index batch = 0, nq = 0, nk = 0, hq = 0, hkv = 0, group = 1;
  index d = 0, e = 0, df = 0;       // head dims of q/k and of v; D', the feature dim of φ(q), φ(k)
  bool causal = true;
  bool bf16_compute = false;        // compute = bf16: float operands may run on the bf16 units
  double scale = 1;
  const double* decay = nullptr;    // [hq] rates s_h; null = no decay
  const xattn::feature_map* map = nullptr;  // never null; the options' map (outlives the call)
  bool normalize = false;
  double eps = 0;
  index block = default_chunk_size;
  const T* state_in = nullptr;      // [batch, hq, df, cols()]; null = zeros
  T* state_out = nullptr;           // [batch, hq, df, cols()]; may equal state_in

  index cols() const { return e + (normalize ? 1 : 0); }
  double decay_of(index h) const { return decay ? decay[h] : 0.0; }
  bool has_decay() const {
    if (decay)
      for (index h = 0; h < hq; ++h)
        if (decay[h] != 0) return true;
    return false;
  }
};

/// What a front door hands to make_chunk_problem: the tensors' data (each of its own storage type)
/// and shapes, and the options resolved into one form for both families.
template <class T, class SQ = T, class SK = T, class SV = T, class SO = T>
struct chunk_call {
  const char* fn;
  const SQ* q;
  const SK* k;
  const SV* v;
  SO* o;
  std::array<index, 4> qd, kd, vd, od;
  layout lay = layout::bshd;
  bool causal = true, normalize = false, bf16_compute = false;
  double scale = 1, eps = 0;
  index block = 0;
  std::span<const double> decay;
  const xattn::feature_map* map;
  state_cref state_in;
  state_ref state_out;
};

/// Validates q, k, v, out and the options; throws xattn::error naming `fn`, the argument and the
/// shapes.
template <class T, class SQ, class SK, class SV, class SO>
chunk_problem<T> make_chunk_problem(const chunk_call<T, SQ, SK, SV, SO>& c) {
  const char* fn = c.fn;
  const qkvo<T> t = check_qkvo<T>(fn, c.q, c.qd, c.k, c.kd, c.v, c.vd, c.o, c.od, c.lay);
  chunk_problem<T> p;
  p.q = t.q, p.k = t.k, p.v = t.v, p.o = t.o;
  p.batch = t.batch, p.nq = t.nq, p.nk = t.nk, p.hq = t.hq, p.hkv = t.hkv, p.group = t.group, p.d = t.d, p.e = t.dv;
  if (c.causal)
    require(p.nk == p.nq, fn, "k", "seq ", p.nk, " != q seq ", p.nq, ": causal attention needs one sequence (q ",
            shape_str(c.qd), ", k ", shape_str(c.kd), ")");
  const std::size_t ob = t.out_bytes;

  require(std::isfinite(c.scale) && c.scale > 0, fn, "scale", "must be finite and > 0, got ", c.scale);
  require_representable<T>(fn, "scale", c.scale, "scale", c.scale, folded::multiplier);  // packed into φ(Q) as T
  require(c.block >= 0 && c.block <= kMaxChunkSize, fn, "block_size", "must be in [0, ", kMaxChunkSize,
          "] (0 = default), got ", c.block);
  p.causal = c.causal;
  p.bf16_compute = c.bf16_compute;
  p.scale = c.scale;
  p.block = c.block ? c.block : default_chunk_size;
  if (!c.decay.empty()) {
    require(static_cast<index>(c.decay.size()) == p.hq, fn, "decay", "has ", c.decay.size(),
            " entries, expected one per query head (", p.hq, ")");
    for (std::size_t h = 0; h < c.decay.size(); ++h)
      require(std::isfinite(c.decay[h]) && c.decay[h] >= 0, fn, "decay", "[", h, "] = ", c.decay[h],
              " must be finite and >= 0");
    require(!overlaps(c.decay.data(), c.decay.size_bytes(), c.o, ob), fn, "decay", "overlaps out in memory");
    p.decay = c.decay.data();
  }

  p.map = c.map;
  const feature kind = c.map->kind();
  require(!(kind == feature::softmax && c.causal), fn, "feature_map",
          "the per-side softmax normalises k over the whole sequence: non-causal only");
  if (kind == feature::custom) {
    require(c.map->dim(p.d) > 0, fn, "feature_map", "custom map of dimension ", c.map->dim(p.d), ", expected > 0");
    require(static_cast<bool>(c.map->template callable<T>()), fn, "feature_map", "custom map not callable with ",
            std::is_same_v<T, float> ? "float" : "double", " spans");
  }
  p.df = c.map->dim(p.d);
  p.normalize = c.normalize;
  require(std::isfinite(c.eps) && c.eps >= 0, fn, "eps", "must be finite and >= 0, got ", c.eps);
  require_representable<T>(fn, "eps", c.eps, "eps", c.eps);
  p.eps = c.eps;

  // States: [batch, q heads, D', e (+1 with the normaliser)], of the call's element type.
  const std::array<index, 4> sd{p.batch, p.hq, p.df, p.cols()};
  const char* tname = std::is_same_v<T, double> ? "double" : "float";
  const std::size_t sb = bytes_of(sd, sizeof(T));
  if (c.state_in) {
    require(c.state_in.is_double == std::is_same_v<T, double>, fn, "initial_state", "holds ",
            c.state_in.is_double ? "double" : "float", ", expected ", tname);
    require(c.state_in.dims == sd, fn, "initial_state", "shape ", shape_str(c.state_in.dims),
            " != expected [batch, heads, D', e", p.normalize ? " + 1" : "", "] = ", shape_str(sd));
    require(!overlaps(c.o, ob, c.state_in.data, sb), fn, "initial_state", "overlaps out in memory");
    p.state_in = static_cast<const T*>(c.state_in.data);
  }
  if (c.state_out) {
    require(c.state_out.is_double == std::is_same_v<T, double>, fn, "final_state", "holds ",
            c.state_out.is_double ? "double" : "float", ", expected ", tname);
    require(c.state_out.dims == sd, fn, "final_state", "shape ", shape_str(c.state_out.dims),
            " != expected [batch, heads, D', e", p.normalize ? " + 1" : "", "] = ", shape_str(sd));
    for (auto [name, ptr, bytes] : {std::tuple{"q", static_cast<const void*>(c.q), bytes_of(c.qd, sizeof(SQ))},
                                    std::tuple{"k", static_cast<const void*>(c.k), bytes_of(c.kd, sizeof(SK))},
                                    std::tuple{"v", static_cast<const void*>(c.v), bytes_of(c.vd, sizeof(SV))},
                                    std::tuple{"out", static_cast<const void*>(c.o), ob}})
      require(!overlaps(c.state_out.data, sb, ptr, bytes), fn, "final_state", "overlaps ", name, " in memory");
    require(!overlaps(c.decay.data(), c.decay.size_bytes(), c.state_out.data, sb), fn, "decay",
            "overlaps final_state in memory");
    require(!c.state_in || c.state_in.data == c.state_out.data || !overlaps(c.state_in.data, sb, c.state_out.data, sb),
            fn, "final_state", "partly overlaps initial_state (the same tensor is fine)");
    p.state_out = static_cast<T*>(c.state_out.data);
  }
  return p;
}

/// The compute type and the pieces of a chunk_call common to both families, from Eigen tensors. The
/// compute type is compute_t of the four (core/convert.hpp's rule); states hold it.
template <class Q, class K, class V, class O>
auto tensor_call(const char* fn, const Q& q, const K& k, const V& v, O& o) {
  using SQ = scalar_of<Q>;
  using SK = scalar_of<K>;
  using SV = scalar_of<V>;
  using SO = scalar_of<O>;
  using T = compute_t<SQ, SK, SV, SO>;
  static_assert(!std::is_const_v<std::remove_pointer_t<decltype(o.data())>>, "xattn: out must be writable");
  chunk_call<T, SQ, SK, SV, SO> c{};
  c.fn = fn;
  c.q = q.data(), c.k = k.data(), c.v = v.data(), c.o = o.data();
  c.qd = dims_of(q), c.kd = dims_of(k), c.vd = dims_of(v), c.od = dims_of(o);
  return c;
}

inline const xattn::feature_map& identity_map() {
  static const xattn::feature_map m;
  return m;
}

template <class Q, class K, class V, class O>
auto make_lightning_problem(const char* fn, const Q& q, const K& k, const V& v, O& o, const lightning_options& opt) {
  auto c = tensor_call(fn, q, k, v, o);
  c.lay = opt.layout, c.causal = true, c.scale = opt.scale, c.block = opt.block_size, c.decay = opt.decay;
  c.map = &identity_map(), c.state_in = opt.initial_state, c.state_out = opt.final_state;
  c.bf16_compute = opt.compute == compute::bf16;
  return make_chunk_problem(c);
}

template <class Q, class K, class V, class O>
auto make_linear_problem(const char* fn, const Q& q, const K& k, const V& v, O& o, const linear_options& opt) {
  auto c = tensor_call(fn, q, k, v, o);
  c.lay = opt.layout, c.causal = opt.causal, c.normalize = opt.normalize, c.scale = opt.scale, c.eps = opt.eps;
  c.block = opt.block_size, c.map = &opt.feature_map, c.state_in = opt.initial_state, c.state_out = opt.final_state;
  c.bf16_compute = opt.compute == compute::bf16;
  return make_chunk_problem(c);
}

/// A recurrent step's options must leave initial_state and final_state empty: its `state`
/// argument is both.
inline void require_no_option_states(const char* fn, const state_cref& in, const state_ref& out) {
  require(!in, fn, "initial_state", "must be empty in a step: the state argument is read and written");
  require(!out, fn, "final_state", "must be empty in a step: the state argument is read and written");
}

/// A recurrent step: one token per batch (q, k, v, out of seq 1), the state updated in place.
template <class P, class S>
void attach_step_state(const char* fn, P& p, S& state) {
  using T = typename P::value_type;
  static_assert(std::is_same_v<scalar_of<S>, T>,
                "xattn: state holds the compute type: float (double when q, k, v and out are double)");
  static_assert(!std::is_const_v<std::remove_pointer_t<decltype(state.data())>>, "xattn: state must be writable");
  require(p.nq == 1, fn, "q", "seq ", p.nq, " != 1: a step takes one token per batch");
  require(state.data() != nullptr || p.batch == 0, fn, "state", "null data");
  const std::array<index, 4> sd{p.batch, p.hq, p.df, p.cols()}, got = dims_of(state);
  require(got == sd, fn, "state", "shape ", shape_str(got), " != expected [batch, heads, D', e",
          p.normalize ? " + 1" : "", "] = ", shape_str(sd));
  const std::size_t sb = bytes_of(sd, sizeof(T));
  // the views' raw storage: data is null for 16-bit tensors
  const auto bytes_of_view = [](const auto& t, index heads, index dim) {
    return static_cast<std::size_t>(t.batch * heads * dim) * elem_bytes(t.type);
  };
  const std::size_t ob = bytes_of_view(p.o, p.hq, p.e), kb = bytes_of_view(p.k, p.hkv, p.d);
  const std::size_t vb = bytes_of_view(p.v, p.hkv, p.e), qb = bytes_of_view(p.q, p.hq, p.d);
  for (auto [name, ptr, bytes] :
       {std::tuple{"q", static_cast<const void*>(p.q.raw), qb}, std::tuple{"k", static_cast<const void*>(p.k.raw), kb},
        std::tuple{"v", static_cast<const void*>(p.v.raw), vb}, std::tuple{"out", static_cast<const void*>(p.o.raw), ob}})
    require(!overlaps(state.data(), sb, ptr, bytes), fn, "state", "overlaps ", name, " in memory");
  if (p.decay)
    require(!overlaps(p.decay, sizeof(double) * std::size_t(p.hq), state.data(), sb), fn, "decay",
            "overlaps state in memory");
  p.state_in = state.data();
  p.state_out = state.data();
}

/// The problem of a step of either family: opt without states of its own, q, k, v, out of seq 1,
/// and `state` read and written in place.
template <class Q, class K, class V, class O, class S, class Opt>
auto make_step_problem(const char* fn, const Q& q, const K& k, const V& v, O& o, S& state, const Opt& opt) {
  require_no_option_states(fn, opt.initial_state, opt.final_state);
  auto p = [&] {
    if constexpr (std::is_same_v<Opt, linear_options>) return make_linear_problem(fn, q, k, v, o, opt);
    else return make_lightning_problem(fn, q, k, v, o, opt);
  }();
  attach_step_state(fn, p, state);
  return p;
}

}  // namespace xattn::detail
