// xattn/core/tile_backward.hpp — the tile engine's backward pass (FlashAttention-2, Dao 2023,
// Algorithm 2), deterministic: no atomics, each gradient row is summed by one thread in one order.
//
// Per tile of 64 query rows × 64 keys, from the forward's saved LSE (never an Nq×Nk matrix):
//   S  = Q·Kᵀ                       X = modify(scale·S)   (softcap, ALiBi, bias, mask, band)
//   P  = exp(X − LSE)               dP = dO·Vᵀ
//   dS = P ∘ (dP − D) ∘ X′ · scale  D = rowsum(dO ∘ O),  X′ = 1 − tanh² with a softcap, else 1
//   dV += Pᵀ·dO    dK += dSᵀ·Q    dQ += dS·K
//
// Two schedules, chosen from the shapes alone. With at least 8 (batch, K/V head) pairs, one pass:
// an item per pair owns its dK, dV and the dQ rows of its query heads, walks the key blocks in
// order and adds each tile's dS·K into dQ (5 tile products per tile). With fewer pairs, two passes
// that split the sequences too. Pass 1 owns dK and dV: one item per (batch, K/V head, key block of
// 64) walks every query head of its group and every query block that sees the key block; Kᵀ and
// Vᵀ are packed once per item. Pass 2 owns dQ: one item per (batch, query head, query block) walks
// the key blocks it sees and recomputes P and dS on transposed tiles (Sᵀ = K·Qᵀ, Qᵀ and dOᵀ
// packed once per item): FA2's deterministic variant, 3 of the 5 tile products again, in exchange
// for no dQ reduction buffer. Every product is detail::mma_ab on 8 × 2-vector register tiles; its
// B operands are rows of the caller's tensors when the head dim is a whole number of panels, else
// packed copies.
//
// Which (query, key) pairs exist is the problem's band (causal, windows, lengths) and boolean mask,
// and a Rule on top: the sliding window's rule (sinks, dilation, chunks), a block layout, a 2-D
// neighborhood (core/backward_rules.hpp). A Rule classifies a tile as none / full / partial, so
// that both passes visit only the tiles the forward visited, and tells per pair on partial tiles.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "microkernel.hpp"
#include "parallel.hpp"
#include "simd.hpp"
#include "softmax_backward_args.hpp"
#include "transpose.hpp"
#include "workspace.hpp"

namespace xattn::detail {

/// What a tile of (query, key) pairs holds: no visible pair, only visible pairs, or some.
enum class tile_visit { none, full, partial };

/// The band of the problem alone (softmax attention): every pair the band and the mask let through.
struct band_rule {
  tile_visit classify(index, index, index, index, index, index) const { return tile_visit::full; }
  bool visible(index, index, index, index) const { return true; }
};

template <class Arch, class T, class Rule = band_rule>
class tile_backward {
  using V = simd::vec_t<T, Arch>;
  static constexpr index L = simd::lanes_v<T, Arch>;
  static constexpr int MR = 8, NV = 2;        // register tile: 8 rows × 2 vectors, 16 accumulators
  static constexpr index kPanel = NV * L;     // panel widths are multiples of this
  static constexpr index kB = 64;             // query rows and keys per tile (a multiple of kPanel)
  static constexpr double kTinyP = 0x1p-96;   // probabilities below this are 0 (scores_to_grads)
  static_assert(kB % kPanel == 0);

  using visit = tile_visit;

 public:
  explicit tile_backward(const softmax_backward_problem<T>& bp, const Rule& rule = {})
      : bp_(bp), p_(bp.fwd), rule_(rule), dp_(round_up(p_.d, kPanel)), dvp_(round_up(p_.dv, kPanel)) {}

  /// Fewest (batch, K/V head) pairs that run as one pass, each pair one item: enough to keep 8
  /// threads busy. The choice depends on the shapes only, so results do not depend on threads.
  static constexpr index kFusedMinItems = 8;

  template <class Device>
  void run(const Device& dev) const {
    if (bp_.dsinks) sink_grads();
    if (p_.batch == 0) return;
    if (bp_.dbias || bp_.dalibi) score_grads(dev);
    const index kblocks = ceil_div(p_.nk, kB), qblocks = ceil_div(p_.nq, kB);
    if (p_.batch * p_.hkv >= kFusedMinItems) {
      // One pass: an item owns a K/V head's dK, dV and the dQ rows of its query heads, and walks
      // the key blocks in order, adding each one's dS·K into dQ (5 tile products, not 7).
      parallel_for(dev, p_.batch * p_.hkv, [&](index item) {
        const index b = item / p_.hkv, hk = item % p_.hkv;
        for (index h = hk * p_.group; h < (hk + 1) * p_.group; ++h)
          for (index i = 0; i < p_.nq; ++i) std::fill(bp_.dq.row(b, i, h), bp_.dq.row(b, i, h) + p_.d, T(0));
        for (index kb = 0; kb < kblocks; ++kb) key_block<true>(b, hk, kb * kB);
      });
      return;
    }
    parallel_for(dev, p_.batch * p_.hkv * kblocks, [&](index item) {
      key_block<false>(item / (p_.hkv * kblocks), item / kblocks % p_.hkv, item % kblocks * kB);
    });
    parallel_for(dev, p_.batch * p_.hq * qblocks, [&](index item) {
      query_block(item / (p_.hq * qblocks), item / qblocks % p_.hq, item % qblocks * kB);
    });
  }

 private:
  static index round_up(index x, index m) { return (x + m - 1) / m * m; }
  static index ceil_div(index x, index m) { return (x + m - 1) / m; }

  /// Which of the tile's (query i0.., key j0..) pairs of head h the band (causal, window,
  /// lengths) and the rule let through: none, all, or some; a boolean mask makes every visited
  /// tile partial.
  visit classify(index b, index h, index i0, index ni, index j0, index nj) const {
    const index off = p_.nk_of(b) - p_.nq_of(b), i1 = i0 + ni - 1, j1 = j0 + nj - 1;
    const index wl = p_.window_left, wr = p_.window_right;
    if ((wr >= 0 && j0 > i1 + off + wr) || (wl >= 0 && j1 < i0 + off - wl)) return visit::none;
    const visit by_rule = rule_.classify(b, h, i0, i1, j0, j1);
    if (by_rule == visit::none) return visit::none;
    const bool all = (wr < 0 || j1 <= i0 + off + wr) && (wl < 0 || j0 >= i1 + off - wl);
    return all && by_rule == visit::full && !p_.mask && nj == kB ? visit::full : visit::partial;
  }

  /// The scratch of one tile: its scores and their gradients, and per-row LSE and D.
  struct tile_bufs {
    T* s;     // [kB × kB]: S, then X, then P
    T* ds;    // [kB × kB]: dP, then dS
    T* dcap;  // [kB × kB]: X′ = 1 − tanh² (softcap only)
    T* lse;   // [kB]: LSE (+inf where P is 0)
    T* dsum;  // [kB]: D
    T* ones;  // [kB]: 1, the row scale of the accumulating products
  };

  /// dst[r][c] = row(r)[c] for r < n, c < dim, zero elsewhere in [rows × ld].
  static void pack_rows(T* dst, index ld, index rows, const bshd_view<const T>& t, index b, index s0, index n,
                        index h, index dim) {
    for (index r = 0; r < rows; ++r) {
      T* d = dst + r * ld;
      if (r < n) {
        std::memcpy(d, t.row(b, s0 + r, h), sizeof(T) * static_cast<std::size_t>(dim));
        std::fill(d + dim, d + ld, T(0));
      } else {
        std::fill(d, d + ld, T(0));
      }
    }
  }
  /// dst[c][r] = row(r)[c]: the [dim × kB] transpose of n ≤ kB rows, zero columns past n.
  static void pack_transposed(T* dst, const bshd_view<const T>& t, index b, index s0, index n, index h, index dim) {
    for (index c = 0; c < dim; ++c) std::fill(dst + c * kB + n, dst + (c + 1) * kB, T(0));
    for (index r = 0; r < n; ++r) {
      const T* src = t.row(b, s0 + r, h);
      for (index c = 0; c < dim; ++c) dst[c * kB + r] = src[c];
    }
  }

  /// The rows of a B operand [n × padded]: the tensor's own rows when dim is a whole number of
  /// panels, else a zero-padded copy in `scratch` [kB × padded].
  static tile<const T> rows_as_b(T* scratch, index padded, const bshd_view<const T>& t, index b, index s0, index n,
                                 index h, index dim) {
    if (dim == padded) return {t.row(b, s0, h), n, padded, t.ss};
    pack_rows(scratch, padded, kB, t, b, s0, n, h, dim);
    return {scratch, n, padded, padded};
  }

  /// ∂L/∂bias and ∂L/∂slope, from dS = P ∘ (dP − D), the gradient of the scores where both enter.
  /// One item per (bias batch, bias head, query block) owns those rows of dbias. It walks the
  /// (batch, head) pairs the bias broadcasts over, in order; for each it packs Qᵀ and dOᵀ once,
  /// recomputes the transposed tiles of the key blocks it sees as pass 2 does (Sᵀ = K·Qᵀ, dPᵀ =
  /// V·dOᵀ: 2 tile products per visited tile) and adds dSᵀ into a key-major sum [Nk × 64] (whole
  /// rows of vectors), written transposed at the end: each element one sum in one order. The
  /// slopes' gradient −Σ dS_ij·|i + off − j| is summed per tile in vectors, into a double partial
  /// per (batch, head, query block) that one item writes, summed in order at the end. Pairs the
  /// forward never visited (masked, out of the band, past the lengths) get 0.
  template <class Device>
  void score_grads(const Device& dev) const {
    const index qblocks = ceil_div(p_.nq, kB), nk_pad = round_up(p_.nk, kB);
    const bool bias_b = !bp_.dbias || p_.bias_sb != 0, bias_h = !bp_.dbias || p_.bias_sh != 0;
    const index nb = bias_b ? p_.batch : 1, nh = bias_h ? p_.hq : 1;
    double* slope_part = nullptr;  // [batch, hq, qblocks]
    if (bp_.dalibi)
      slope_part = static_cast<double*>(
          workspace::of_this_thread(3).get(sizeof(double) * std::size_t(p_.batch * p_.hq * qblocks)));
    parallel_for(dev, nb * nh * qblocks, [&](index item) {
      const index bb = item / (nh * qblocks), hh = item / qblocks % nh, qb = item % qblocks, i0 = qb * kB;
      const index ni_all = std::min(kB, p_.nq - i0);
      std::array<T*, 3> pn;  // Qᵀ, dOᵀ, the dS sum [nk_pad keys × kB queries]
      const tile_bufs w = carve(std::array<index, 3>{p_.d, p_.dv, bp_.dbias ? nk_pad : 0}, pn);
      T *qt = pn[0], *dot = pn[1], *acc = pn[2];
      if (bp_.dbias) std::fill(acc, acc + nk_pad * kB, T(0));
      for (index b = bias_b ? bb : 0; b < (bias_b ? bb + 1 : p_.batch); ++b)
        for (index h = bias_h ? hh : 0; h < (bias_h ? hh + 1 : p_.hq); ++h) {
          const index ni = std::clamp<index>(p_.nq_of(b) - i0, 0, ni_all), nk = p_.nk_of(b);
          double slope_sum = 0;
          if (ni > 0) pack_query_block(w, qt, dot, b, h, i0, ni);
          for (index j0 = 0; ni > 0 && j0 < nk; j0 += kB) {
            const index nj = std::min(kB, nk - j0);
            const visit vis = classify(b, h, i0, ni, j0, nj);
            if (vis == visit::none) continue;
            transposed_tile<true>(w, qt, dot, vis, b, h, i0, ni, j0, nj);
            // dSᵀ's row c is key j0 + c; its columns past ni are 0
            if (bp_.dbias)
              for (index c = 0; c < nj; ++c) add_row(acc + (j0 + c) * kB, w.ds + c * kB, kB);
            if (slope_part) slope_sum += distance_weighted_sum(w.ds, nj, i0 + p_.nk_of(b) - p_.nq_of(b) - j0);
          }
          if (slope_part) slope_part[(b * p_.hq + h) * qblocks + qb] = -slope_sum;
        }
      if (bp_.dbias) {
        float* dst = bp_.dbias + bb * p_.bias_sb + hh * p_.bias_sh;
        for (index r = 0; r < ni_all; ++r) {
          float* row = dst + (i0 + r) * p_.nk;
          for (index j = 0; j < p_.nk; ++j) row[j] = float(acc[j * kB + r]);
        }
      }
    });
    if (bp_.dalibi) {  // per (batch, head) or per head: the partials summed in order
      const index nslopes = p_.alibi_sb ? p_.batch * p_.hq : p_.hq;
      for (index e = 0; e < nslopes; ++e) {
        double sum = 0;
        for (index b = 0; b < p_.batch; ++b) {
          if (p_.alibi_sb && b != e / p_.hq) continue;
          for (index qb = 0; qb < qblocks; ++qb) sum += slope_part[(b * p_.hq + e % p_.hq) * qblocks + qb];
        }
        bp_.dalibi[e] = float(sum);
      }
    }
  }

  /// Σ_{c < nj, r < kB} ds[c][r]·|base + r − c| of a transposed tile (keys c, queries r), in vectors
  /// of T per tile; base = i0 + off − j0 (query i0 + r, key j0 + c).
  static double distance_weighted_sum(const T* ds, index nj, index base) {
    alignas(simd::kAlign) T lane[L];
    for (index l = 0; l < L; ++l) lane[l] = T(l);
    const V iota = simd::load<V>(lane);
    V acc = simd::bcast<V>(T(0));
    for (index c = 0; c < nj; ++c)
      for (index r = 0; r < kB; r += L) {
        const V dist = simd::abs(iota + simd::bcast<V>(T(base + r - c)));
        acc = simd::fma(simd::load<V>(ds + c * kB + r), dist, acc);
      }
    return double(simd::hsum(acc));
  }

  /// ∂L/∂sink_h = −Σ_{b,i} P_sink(b, h, i)·D(b, h, i), P_sink = exp(sink_h − LSE): the sink joins
  /// the denominator with no value row, so its dP is 0 and its dS is −P_sink·D. Summed in double,
  /// rows in order: a pass of O(B·Hq·Nq·dv), beside the engine's O(N²).
  void sink_grads() const {
    for (index h = 0; h < p_.hq; ++h) {
      double acc = 0;
      for (index b = 0; b < p_.batch; ++b)
        for (index i = 0; i < p_.nq_of(b); ++i) {
          const double lse = double(bp_.lse[(b * p_.hq + h) * p_.nq + i]);
          if (lse == -std::numeric_limits<double>::infinity()) continue;  // a row that saw nothing
          acc -= std::exp(double(p_.sinks[h]) - lse) * double(dot(bp_.o.row(b, i, h), bp_.dout.row(b, i, h), p_.dv));
        }
      bp_.dsinks[h] = float(acc);
    }
  }

  /// Σ a[e]·b[e] in vectors (pass 1 recomputes D for every tile: a scalar chain of dependent adds
  /// cost a third of its time at d = 128).
  static T dot(const T* a, const T* b, index n) {
    V acc = simd::bcast<V>(T(0));
    index e = 0;
    for (; e + L <= n; e += L) acc = simd::fma(simd::loadu<V>(a + e), simd::loadu<V>(b + e), acc);
    T sum = simd::hsum(acc);
    for (; e < n; ++e) sum += a[e] * b[e];
    return sum;
  }

  /// dst[e] += src[e] for e < n.
  static void add_row(T* dst, const T* src, index n) {
    index e = 0;
    for (; e + L <= n; e += L) simd::storeu(dst + e, simd::loadu<V>(dst + e) + simd::load<V>(src + e));
    for (; e < n; ++e) dst[e] += src[e];
  }

  /// LSE and D = rowsum(dO ∘ O) of query rows i0 .. i0 + ni of head h, for all kB slots: rows
  /// that see no key (LSE −inf) and slots past ni get LSE = +inf, so that P = 2^((X − LSE)·log2 e)
  /// is exactly 0 there with no branch in the tile loop.
  void row_stats(const tile_bufs& w, index b, index h, index i0, index ni) const {
    const T inf = std::numeric_limits<T>::infinity();
    for (index r = 0; r < kB; ++r) {
      if (r >= ni) {
        w.lse[r] = inf, w.dsum[r] = 0;
        continue;
      }
      const T lse = bp_.lse[(b * p_.hq + h) * p_.nq + i0 + r];
      w.lse[r] = lse == -inf ? inf : lse;
      w.dsum[r] = dot(bp_.o.row(b, i0 + r, h), bp_.dout.row(b, i0 + r, h), p_.dv);
    }
  }

  /// seen[c] = whether the rule lets query i see key j0 + c, c < n: its visible_keys where it has
  /// one (a run of keys costs less than n single questions), else visible() key by key.
  void visible_keys(index b, index h, index i, index j0, index n, bool* seen) const {
    if constexpr (requires { rule_.visible_keys(b, h, i, j0, n, seen); }) {
      rule_.visible_keys(b, h, i, j0, n, seen);
    } else {
      for (index c = 0; c < n; ++c) seen[c] = rule_.visible(b, h, i, j0 + c);
    }
  }

  /// From the scores and dP of one tile, P into w.s and dS into w.ds. Upright (pass 1): rows are
  /// the ni queries, columns the keys; Transposed (pass 2): rows are the nj keys, columns the
  /// queries (Sᵀ = K·Qᵀ, so that Q and dO are packed once per query block instead of K and V per
  /// tile). Keys past nj and queries past ni get P = dS = 0, so the products may run over whole
  /// vectors.
  /// s[r][c] −= slope·|i + off − j| over a tile's `rows` rows and all kB columns, in vectors:
  /// base = i0 + off − j0, (i, j) = (i0 + r, j0 + c) upright, (i0 + c, j0 + r) transposed. Columns
  /// past the tile's own are padding that P ignores (their LSE is +inf) or that is masked after.
  template <bool Transposed>
  static void alibi_tile(T* s, index rows, T slope, index base) {
    alignas(simd::kAlign) T lane[L];
    for (index l = 0; l < L; ++l) lane[l] = T(l);
    const V iota = simd::load<V>(lane), sv = simd::bcast<V>(slope);
    for (index r = 0; r < rows; ++r)
      for (index c = 0; c < kB; c += L) {
        // upright: |base + r − c − l|, transposed: |base + c + l − r|
        const V dist = Transposed ? simd::abs(simd::bcast<V>(T(base + c - r)) + iota)
                                  : simd::abs(simd::bcast<V>(T(base + r - c)) - iota);
        simd::store(s + r * kB + c, simd::load<V>(s + r * kB + c) - sv * dist);
      }
  }

  /// s[r][c] += bias[i][j] over the tile's rows × cols ((i, j) as in alibi_tile), from `bias` at
  /// (i0, j0) with rows Nk apart: upright in vectors along the bias rows, transposed in L × L blocks
  /// transposed in registers where the engine has them (float on AVX2 / AVX-512); the rest element
  /// by element. Nothing is read outside the tile's own rows and columns of the bias.
  template <bool Transposed>
  void bias_tile(T* s, index rows, index cols, const float* bias) const {
    const index nk = p_.nk;
    if constexpr (!Transposed) {
      for (index r = 0; r < rows; ++r) {
        T* sr = s + r * kB;
        const float* br = bias + r * nk;
        index c = 0;
        if constexpr (std::is_same_v<T, float>)
          for (; c + L <= cols; c += L) simd::store(sr + c, simd::load<V>(sr + c) + simd::loadu<V>(br + c));
        for (; c < cols; ++c) sr[c] += T(br[c]);
      }
    } else {
      // rows are keys, columns queries: block (r0, c0) is bias rows c0 .. c0 + L, columns r0 .. r0 + L
      for (index r0 = 0; r0 < rows; r0 += L)
        for (index c0 = 0; c0 < cols; c0 += L) {
          if constexpr (simd::has_transpose<T, Arch>) {
            if (r0 + L <= rows && c0 + L <= cols) {
              const T* src[L];
              V col[L];
              for (index l = 0; l < L; ++l) src[l] = bias + (c0 + l) * nk + r0;
              simd::transpose_block<T, Arch>(src, col);
              for (index k = 0; k < L; ++k) {
                T* sk = s + (r0 + k) * kB + c0;
                simd::store(sk, simd::load<V>(sk) + col[k]);
              }
              continue;
            }
          }
          for (index r = r0; r < std::min(rows, r0 + L); ++r)
            for (index c = c0; c < std::min(cols, c0 + L); ++c) s[r * kB + c] += T(bias[c * nk + r]);
        }
    }
  }

  /// Raw: dS = P ∘ (dP − D) alone, the gradient of the scores where the bias enters (after the
  /// softcap, before the scale reaches Q·Kᵀ).
  template <bool Transposed, bool Raw = false>
  void scores_to_grads(const tile_bufs& w, visit vis, index b, index h, index i0, index ni, index j0, index nj) const {
    const index rows = Transposed ? nj : ni, cols = Transposed ? ni : nj;
    const V scale = simd::bcast<V>(T(p_.scale));
    const bool capped = p_.softcap > 0;
    const V cap = simd::bcast<V>(T(p_.softcap)), inv_cap = simd::bcast<V>(T(1 / p_.softcap));
    // X = modify(scale·S): the softcap first, in vectors (its derivative kept beside)
    for (index r = 0; r < rows; ++r) {
      T* s = w.s + r * kB;
      T* g = w.dcap + r * kB;
      for (index c = 0; c < kB; c += L) {
        V x = simd::load<V>(s + c) * scale;
        if (capped) {
          const V t = simd::tanh(x * inv_cap);
          x = cap * t;
          simd::store(g + c, simd::bcast<V>(T(1)) - t * t);  // d(cap·tanh(x/cap))/dx
        }
        simd::store(s + c, x);
      }
    }
    // then ALiBi and bias, only where a tile needs them
    const T ninf = -std::numeric_limits<T>::infinity();
    if (p_.alibi) alibi_tile<Transposed>(w.s, rows, T(p_.alibi_of(b, h)), i0 + p_.nk_of(b) - p_.nq_of(b) - j0);
    if (p_.bias) bias_tile<Transposed>(w.s, rows, cols, p_.bias + b * p_.bias_sb + h * p_.bias_sh + i0 * p_.nk + j0);
    // and on partial tiles the band, the rule and the mask, query by query over the tile's keys
    if (vis == visit::partial) {
      const bool* mask = p_.mask ? p_.mask + b * p_.mask_sb + h * p_.mask_sh : nullptr;
      bool seen[kB];
      for (index q = 0; q < ni; ++q) {
        const index i = i0 + q;
        visible_keys(b, h, i, j0, nj, seen);
        for (index c = 0; c < nj; ++c) {
          const index j = j0 + c;
          if (!seen[c] || !p_.band_visible(b, i, j) || (mask && !mask[i * p_.nk + j]))
            (Transposed ? w.s[c * kB + q] : w.s[q * kB + c]) = ninf;
        }
      }
    }
    if (!Transposed && (vis == visit::partial || p_.alibi || p_.bias))
      for (index r = 0; r < rows; ++r) std::fill(w.s + r * kB + cols, w.s + (r + 1) * kB, ninf);
    // P = 2^((X − LSE)·log2 e), 0 below 2^-96 (kTinyP): such a P changes no gradient by a float
    // ulp (a row's largest P is at least 1/Nk), while its products with dO, Q and K fall into the
    // subnormal range, where each FMA takes ~100 cycles on x86 (ALiBi's far keys; see
    // docs/tuning-notes.md). X − LSE is exact where P matters (Sterbenz); X·log2 e − LSE·log2 e
    // would round LSE·log2 e once more. What remains is the saved LSE's own rounding, a relative
    // error of ~ulp(LSE) in P, the float LSE's limit at large logits (FlashAttention's too).
    // dS = P ∘ (dP − D) ∘ X′ · scale
    const V log2e = simd::bcast<V>(T(kLog2e));
    for (index r = 0; r < rows; ++r) {
      T* s = w.s + r * kB;
      T* ds = w.ds + r * kB;
      const T* g = w.dcap + r * kB;
      for (index c = 0; c < kB; c += L) {
        const V lse = Transposed ? simd::load<V>(w.lse + c) : simd::bcast<V>(w.lse[r]);
        const V dsum = Transposed ? simd::load<V>(w.dsum + c) : simd::bcast<V>(w.dsum[r]);
        const V pv = simd::zero_below(simd::exp2((simd::load<V>(s + c) - lse) * log2e), T(kTinyP));
        V d = pv * (simd::load<V>(ds + c) - dsum);
        if constexpr (!Raw) {
          d = d * scale;
          if (capped) d = d * simd::load<V>(g + c);
        }
        simd::store(s + c, pv);
        simd::store(ds + c, d);
      }
    }
  }

  /// Qᵀ and dOᵀ of query rows i0 .. i0 + ni of head h packed [d × kB], [dv × kB], with their LSE and D.
  void pack_query_block(const tile_bufs& w, T* qt, T* dot, index b, index h, index i0, index ni) const {
    pack_transposed(qt, p_.q, b, i0, ni, h, p_.d);
    pack_transposed(dot, bp_.dout, b, i0, ni, h, p_.dv);
    row_stats(w, b, h, i0, ni);
  }

  /// P and dS of one transposed tile into w.s and w.ds: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (K and V rows in
  /// place, Qᵀ and dOᵀ as pack_query_block left them), then scores_to_grads.
  template <bool Raw = false>
  void transposed_tile(const tile_bufs& w, const T* qt, const T* dot, visit vis, index b, index h, index i0, index ni,
                       index j0, index nj) const {
    const index hk = h / p_.group;
    mma_ab<Arch, T, MR, NV, mma_init::zero>({w.s, nj, kB, kB}, by_rows(p_.k.row(b, j0, hk), p_.k.ss),
                                            {qt, p_.d, kB, kB});
    mma_ab<Arch, T, MR, NV, mma_init::zero>({w.ds, nj, kB, kB}, by_rows(p_.v.row(b, j0, hk), p_.v.ss),
                                            {dot, p_.dv, kB, kB});
    scores_to_grads<true, Raw>(w, vis, b, h, i0, ni, j0, nj);
  }

  /// S and dP of one upright tile: S = Q·Kᵀ (A = Q rows in place, B = Kᵀ packed), dP = dO·Vᵀ.
  void tile_products(const tile_bufs& w, const T* kt, const T* vt, index b, index h, index i0, index ni) const {
    mma_ab<Arch, T, MR, NV, mma_init::zero>({w.s, ni, kB, kB}, by_rows(p_.q.row(b, i0, h), p_.q.ss),
                                            {kt, p_.d, kB, kB});
    mma_ab<Arch, T, MR, NV, mma_init::zero>({w.ds, ni, kB, kB}, by_rows(bp_.dout.row(b, i0, h), bp_.dout.ss),
                                            {vt, p_.dv, kB, kB});
  }

  /// Carves one thread's workspace: the tile buffers plus `extra` panels of kB × `widths[i]`.
  template <std::size_t N>
  tile_bufs carve(const std::array<index, N>& widths, std::array<T*, N>& panels) const {
    std::size_t elems = 3 * kB * kB + 3 * kB;
    for (index wdt : widths) elems += static_cast<std::size_t>(kB * wdt);
    T* base = static_cast<T*>(workspace::of_this_thread().get(elems * sizeof(T)));
    tile_bufs w{base, base + kB * kB, base + 2 * kB * kB, base + 3 * kB * kB, base + 3 * kB * kB + kB,
                base + 3 * kB * kB + 2 * kB};
    std::fill(w.ones, w.ones + kB, T(1));
    T* next = base + 3 * kB * kB + 3 * kB;  // every piece a multiple of 64 elements: stays aligned
    for (std::size_t i = 0; i < N; ++i) panels[i] = next, next += kB * widths[i];
    return w;
  }

  /// Pass 1: dK and dV of keys j0 .. j0 + 64 of K/V head hk, over every query that sees them.
  /// With dQ (the one-pass schedule) it also adds dS·K into the dQ rows of the tensor, which the
  /// item owns and zeroed first.
  template <bool WithDq>
  void key_block(index b, index hk, index j0) const {
    const index nj_all = std::min(kB, p_.nk - j0), nj = std::clamp<index>(p_.nk_of(b) - j0, 0, nj_all);
    // panels: Kᵀ [d × kB], Vᵀ [dv × kB], dK, dV accumulators, packed Q and dO rows, packed K rows
    // and a dQ tile
    std::array<T*, 8> pn;
    const tile_bufs w = carve(std::array<index, 8>{p_.d, p_.dv, dp_, dvp_, dp_, dvp_, dp_, dp_}, pn);
    T *kt = pn[0], *vt = pn[1], *dk = pn[2], *dv = pn[3], *qpack = pn[4], *dopack = pn[5], *kpack = pn[6],
      *dqt = pn[7];
    tile<const T> kb{};
    if (WithDq && nj > 0) kb = rows_as_b(kpack, dp_, p_.k, b, j0, nj, hk, p_.d);
    std::fill(dk, dk + kB * dp_, T(0));
    std::fill(dv, dv + kB * dvp_, T(0));
    if (nj > 0) {
      pack_transposed(kt, p_.k, b, j0, nj, hk, p_.d);
      pack_transposed(vt, p_.v, b, j0, nj, hk, p_.dv);
      const index nq = p_.nq_of(b);
      for (index h = hk * p_.group; h < (hk + 1) * p_.group; ++h) {
        for (index i0 = 0; i0 < nq; i0 += kB) {
          const index ni = std::min(kB, nq - i0);
          const visit vis = classify(b, h, i0, ni, j0, nj);
          if (vis == visit::none) continue;
          row_stats(w, b, h, i0, ni);
          tile_products(w, kt, vt, b, h, i0, ni);
          scores_to_grads<false>(w, vis, b, h, i0, ni, j0, nj);
          // dV += Pᵀ·dO and dK += dSᵀ·Q: Aᵀ's rows are P's columns, consecutive scalars
          mma_ab<Arch, T, MR, NV, mma_init::scale_rows, true>({dv, nj, dvp_, dvp_}, by_cols(w.s, kB),
                                                              rows_as_b(dopack, dvp_, bp_.dout, b, i0, ni, h, p_.dv),
                                                              w.ones);
          mma_ab<Arch, T, MR, NV, mma_init::scale_rows, true>({dk, nj, dp_, dp_}, by_cols(w.ds, kB),
                                                              rows_as_b(qpack, dp_, p_.q, b, i0, ni, h, p_.d), w.ones);
          if constexpr (WithDq) {  // dQ += dS·K, key blocks in order
            mma_ab<Arch, T, MR, NV, mma_init::zero>({dqt, ni, dp_, dp_}, by_rows(w.ds, kB), kb);
            for (index r = 0; r < ni; ++r) add_row(bp_.dq.row(b, i0 + r, h), dqt + r * dp_, p_.d);
          }
        }
      }
    }
    // Accumulator rows past nj hold the micro-kernel's padding rows; keys past the batch's
    // length get zeros.
    for (index r = 0; r < nj_all; ++r) {
      T* dkr = bp_.dk.row(b, j0 + r, hk);
      T* dvr = bp_.dv.row(b, j0 + r, hk);
      if (r < nj) {
        std::memcpy(dkr, dk + r * dp_, sizeof(T) * static_cast<std::size_t>(p_.d));
        std::memcpy(dvr, dv + r * dvp_, sizeof(T) * static_cast<std::size_t>(p_.dv));
      } else {
        std::fill(dkr, dkr + p_.d, T(0));
        std::fill(dvr, dvr + p_.dv, T(0));
      }
    }
  }

  /// Pass 2: dQ of query rows i0 .. i0 + 64 of head h, over every key block they see, on
  /// transposed tiles: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ take K and V rows in place, dQ = (dSᵀ)ᵀ·K.
  void query_block(index b, index h, index i0) const {
    const index hk = h / p_.group;
    const index ni_all = std::min(kB, p_.nq - i0), ni = std::clamp<index>(p_.nq_of(b) - i0, 0, ni_all);
    std::array<T*, 4> pn;  // Qᵀ, dOᵀ, packed K rows, dQ accumulator
    const tile_bufs w = carve(std::array<index, 4>{p_.d, p_.dv, dp_, dp_}, pn);
    T *qt = pn[0], *dot = pn[1], *kpack = pn[2], *dq = pn[3];
    std::fill(dq, dq + kB * dp_, T(0));
    if (ni > 0) {
      pack_query_block(w, qt, dot, b, h, i0, ni);
      const index nk = p_.nk_of(b);
      for (index j0 = 0; j0 < nk; j0 += kB) {
        const index nj = std::min(kB, nk - j0);
        const visit vis = classify(b, h, i0, ni, j0, nj);
        if (vis == visit::none) continue;
        transposed_tile(w, qt, dot, vis, b, h, i0, ni, j0, nj);
        mma_ab<Arch, T, MR, NV, mma_init::scale_rows, true>({dq, ni, dp_, dp_}, by_cols(w.ds, kB),
                                                            rows_as_b(kpack, dp_, p_.k, b, j0, nj, hk, p_.d), w.ones);
      }
    }
    for (index r = 0; r < ni_all; ++r) {  // padded rows (past the batch's length) get zeros
      T* dqr = bp_.dq.row(b, i0 + r, h);
      if (r < ni) std::memcpy(dqr, dq + r * dp_, sizeof(T) * static_cast<std::size_t>(p_.d));
      else std::fill(dqr, dqr + p_.d, T(0));
    }
  }

  const softmax_backward_problem<T>& bp_;
  const softmax_problem<T>& p_;
  Rule rule_;
  index dp_, dvp_;  // d and dv rounded up to whole panels
};

/// The backward's one dispatch site: options it cannot run are rejected here, by name.
template <class Arch, class T, class Device, class Rule = band_rule>
void softmax_backward(const softmax_backward_problem<T>& bp, const Device& dev, const Rule& rule = {},
                      const char* fn = "xattn::softmax_attention_backward") {
  require(!bp.fwd.bf16_compute, fn, "compute", "compute::bf16 is not supported by the backward pass (use compute::exact)");
  tile_backward<Arch, T, Rule>(bp, rule).run(dev);
}

}  // namespace xattn::detail
