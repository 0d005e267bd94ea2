// xattn/core/softmax_args.hpp — validation of a softmax-attention call, once, at the front door,
// and the small internal description of the problem that both the tile engine and the fp64
// reference consume. Everything is checked before anything is written.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../options.hpp"
#include "validate.hpp"

namespace xattn::detail {

/// A validated softmax-attention problem: views over the caller's memory plus resolved options.
template <class T>
struct softmax_problem {
  using value_type = T;  // the compute type
  bshd_view<const T> q, k, v;
  bshd_view<T> o;
  T* lse = nullptr;               // [batch, q heads, Nq], natural log; may be null
  index batch = 0, nq = 0, nk = 0, hq = 0, hkv = 0, d = 0, dv = 0, group = 1;
  double scale = 1;
  bool causal = false;
  bool bf16_compute = false;      // compute = bf16: float operands may run on the bf16 units
  index window_left = -1, window_right = -1;  // resolved: causal folded into window_right
  double softcap = 0;
  const float* alibi = nullptr;   // [hq], or [batch, hq] when alibi_sb = hq
  index alibi_sb = 0;             // batch stride of the slopes: 0 (one per head) or hq (per batch and head)
  const float* sinks = nullptr;   // [hq]
  const int* seqlens_q = nullptr; // [batch]
  const int* seqlens_k = nullptr; // [batch]
  const float* bias = nullptr;    // [bias_b, bias_h, nq, nk]
  index bias_sb = 0, bias_sh = 0; // 0 where broadcast
  const bool* mask = nullptr;
  index mask_sb = 0, mask_sh = 0;

  index nq_of(index b) const { return seqlens_q ? seqlens_q[b] : nq; }
  double alibi_of(index b, index h) const { return double(alibi[b * alibi_sb + h]); }
  index nk_of(index b) const { return seqlens_k ? seqlens_k[b] : nk; }
  /// Is key j visible to query i of batch b by the band (causal/window/lengths) alone?
  bool band_visible(index b, index i, index j) const {
    const index off = nk_of(b) - nq_of(b);
    if (j < 0 || j >= nk_of(b)) return false;
    if (window_right >= 0 && j > i + off + window_right) return false;
    if (window_left >= 0 && j < i + off - window_left) return false;
    return true;
  }
};

template <class M>
void check_mask_shape(const char* fn, const char* arg, const tensor_cref<M>& m, index b, index h,
                      index nq, index nk, index& sb, index& sh) {
  const auto& d = m.dims;
  if (!m && d == std::array<index, 4>{}) return;  // not given
  require(m.data != nullptr, fn, arg, "null data (shape ", shape_str(d), ")");
  require((d[0] == b || d[0] == 1) && (d[1] == h || d[1] == 1) && d[2] == nq && d[3] == nk, fn, arg,
          "shape ", shape_str(d), " does not broadcast to [batch, q heads, Nq, Nk] = ",
          shape_str(std::array<index, 4>{b, h, nq, nk}));
  sh = d[1] == 1 ? 0 : d[2] * d[3];
  sb = d[0] == 1 ? 0 : d[1] * d[2] * d[3];
}

/// The option values as the tile engine folds them into T (tile_engine::start and modify): Q
/// carries scale·log2 e (scale/softcap with a softcap), the softcap becomes cap·log2 e, each ALiBi
/// slope −slope·log2 e times distances up to Nq + Nk, each sink logit logit·log2 e. A value that
/// passes as a double but overflows T would turn into inf and then NaN; it is rejected here.
template <class T>
void check_folded_options(const char* fn, const softmax_problem<T>& p) {
  if (p.softcap > 0) {
    require_representable<T>(fn, "scale", p.scale / p.softcap, "scale / softcap", p.scale, folded::multiplier);
    require_representable<T>(fn, "softcap", p.softcap * kLog2e, "softcap · log2 e", p.softcap);
  } else {
    require_representable<T>(fn, "scale", p.scale * kLog2e, "scale · log2 e", p.scale, folded::multiplier);
  }
  const double reach = double(p.nq + p.nk);
  for (index h = 0; p.alibi && h < (p.alibi_sb ? p.batch : 1) * p.hq; ++h)
    require_representable<T>(fn, "alibi_slopes", double(p.alibi[h]) * kLog2e * reach,
                             "slope · log2 e · (Nq + Nk)", double(p.alibi[h]));
  for (index h = 0; p.sinks && h < p.hq; ++h)
    require_representable<T>(fn, "sink_logits", double(p.sinks[h]) * kLog2e, "logit · log2 e", double(p.sinks[h]));
}

/// Validates q, k, v, out (and lse when given) against the options; throws xattn::error naming
/// `fn`, the argument and the shapes. `kv_lengths` is the decode call's per-batch cache length.
template <class T, class SQ, class SK, class SV, class SO>
softmax_problem<T> make_softmax_problem(const char* fn, const SQ* q, std::array<index, 4> qd,
                                        const SK* k, std::array<index, 4> kd, const SV* v,
                                        std::array<index, 4> vd, SO* o, std::array<index, 4> od,
                                        T* lse, const std::array<index, 3>* lsed,
                                        const softmax_options& opt, const char* seqlens_k_name = "seqlens_k") {
  const qkvo<T> t = check_qkvo<T>(fn, q, qd, k, kd, v, vd, o, od, opt.layout);
  softmax_problem<T> p;
  p.q = t.q, p.k = t.k, p.v = t.v, p.o = t.o;
  p.batch = t.batch, p.nq = t.nq, p.nk = t.nk, p.hq = t.hq, p.hkv = t.hkv, p.d = t.d, p.dv = t.dv, p.group = t.group;
  const std::size_t ob = t.out_bytes;
  if (lsed) {
    require(lse != nullptr || p.batch * p.hq * p.nq == 0, fn, "lse", "null data");
    const std::array<index, 3> lw{p.batch, p.hq, p.nq};
    require(*lsed == lw, fn, "lse", "shape ", shape_str(*lsed), " != expected [batch, q heads, Nq] = ",
            shape_str(lw));
  }

  if (lse) {
    const std::size_t lb = static_cast<std::size_t>(p.batch * p.hq * p.nq) * sizeof(T);
    if (const char* name = t.overlapping_input(lse, lb)) require(false, fn, "lse", "overlaps ", name, " in memory");
    require(!overlaps(lse, lb, o, ob), fn, "lse", "overlaps out in memory");
  }

  if (opt.scale) {
    require(std::isfinite(*opt.scale) && *opt.scale > 0, fn, "scale", "must be finite and > 0, got ", *opt.scale);
    p.scale = *opt.scale;
  } else {
    p.scale = 1.0 / std::sqrt(static_cast<double>(p.d));
  }
  require(opt.window_left >= -1, fn, "window_left", "must be >= -1 (-1 = unbounded), got ", opt.window_left);
  require(opt.window_right >= -1, fn, "window_right", "must be >= -1 (-1 = unbounded), got ", opt.window_right);
  require(std::isfinite(opt.softcap) && opt.softcap >= 0, fn, "softcap", "must be finite and >= 0, got ", opt.softcap);
  p.causal = opt.causal;
  p.bf16_compute = opt.compute == compute::bf16;
  // A window at least as long as both sequences together reaches every key: it is unbounded, so
  // that nothing downstream adds a huge window to a position (signed overflow).
  const auto reach = [&](index w) { return w >= p.nq + p.nk ? index(-1) : w; };
  p.window_left = reach(opt.window_left);
  p.window_right = opt.causal ? 0 : reach(opt.window_right);
  p.softcap = opt.softcap;

  // One slope per query head, or per (batch, query head) as FlashAttention's [batch, heads].
  const bool per_batch = !opt.alibi_slopes.empty() && static_cast<index>(opt.alibi_slopes.size()) == p.batch * p.hq &&
                         p.batch > 1;
  check_span<float>(fn, "alibi_slopes", opt.alibi_slopes, per_batch ? p.batch * p.hq : p.hq,
                    per_batch ? "(batch, q head)" : "q head (or per batch and q head)");
  p.alibi_sb = per_batch ? p.hq : 0;
  check_span<float>(fn, "sink_logits", opt.sink_logits, p.hq, "q head");
  check_span<int>(fn, "seqlens_q", opt.seqlens_q, p.batch, "batch", p.nq);
  check_span<int>(fn, seqlens_k_name, opt.seqlens_k, p.batch, "batch", p.nk);
  p.alibi = opt.alibi_slopes.empty() ? nullptr : opt.alibi_slopes.data();
  p.sinks = opt.sink_logits.empty() ? nullptr : opt.sink_logits.data();
  p.seqlens_q = opt.seqlens_q.empty() ? nullptr : opt.seqlens_q.data();
  p.seqlens_k = opt.seqlens_k.empty() ? nullptr : opt.seqlens_k.data();
  check_mask_shape(fn, "bias", opt.bias, p.batch, p.hq, p.nq, p.nk, p.bias_sb, p.bias_sh);
  check_mask_shape(fn, "mask", opt.mask, p.batch, p.hq, p.nq, p.nk, p.mask_sb, p.mask_sh);
  p.bias = opt.bias.data;
  p.mask = opt.mask.data;
  p.lse = lse;
  check_folded_options(fn, p);

  // Every input of the options must stay apart from what the call writes: out and lse are written
  // block by block while other blocks still read them.
  const std::size_t lb = lse ? static_cast<std::size_t>(p.batch * p.hq * p.nq) * sizeof(T) : 0;
  const std::pair<const char*, byte_range> inputs[] = {
      {"bias", byte_range_of(opt.bias)},          {"mask", byte_range_of(opt.mask)},
      {"alibi_slopes", byte_range_of(opt.alibi_slopes)}, {"sink_logits", byte_range_of(opt.sink_logits)},
      {"seqlens_q", byte_range_of(opt.seqlens_q)}, {seqlens_k_name, byte_range_of(opt.seqlens_k)}};
  for (const auto& [name, r] : inputs) {
    require(!r.overlaps({o, ob}), fn, name, "overlaps out in memory");
    require(!r.overlaps({lse, lb}), fn, name, "overlaps lse in memory");
  }
  return p;
}

/// The same from Eigen tensors (Q, K, V, O rank 4; L rank 3 or nullptr_t). The compute type is
/// compute_t of the four (core/convert.hpp's rules); lse holds it.
template <class Q, class K, class V, class O, class L>
auto make_softmax_problem(const char* fn, const Q& q, const K& k, const V& v, O& o, L* lse,
                          const softmax_options& opt, const char* seqlens_k_name = "seqlens_k") {
  using T = compute_t<scalar_of<Q>, scalar_of<K>, scalar_of<V>, scalar_of<O>>;
  static_assert(!std::is_const_v<typename std::remove_cvref_t<O>::Scalar>, "xattn: out must be writable");
  if constexpr (std::is_same_v<L, std::nullptr_t>) {
    return make_softmax_problem<T>(fn, q.data(), dims_of(q), k.data(), dims_of(k), v.data(), dims_of(v),
                                   o.data(), dims_of(o), static_cast<T*>(nullptr), nullptr, opt, seqlens_k_name);
  } else {
    static_assert(std::is_same_v<typename std::remove_cvref_t<L>::Scalar, T>,
                  "xattn: lse holds the compute type: float (double when q, k, v and out are double)");
    const std::array<index, 3> ld = dims_of(*lse);
    return make_softmax_problem<T>(fn, q.data(), dims_of(q), k.data(), dims_of(k), v.data(), dims_of(v),
                                   o.data(), dims_of(o), lse->data(), &ld, opt, seqlens_k_name);
  }
}

}  // namespace xattn::detail
