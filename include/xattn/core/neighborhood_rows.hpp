// xattn/core/neighborhood_rows.hpp — the row-stencil ("shifted lanes") kernel of 2-D neighborhood
// attention without dilation or causality.
//
// The lanes of a vector are L consecutive query columns x0 … x0+L−1 of one image row y (one head).
// Inside the image, query x sees key columns x − k/2 … x + k/2, so for a column offset t the L lanes
// see the L consecutive key columns x0+t … x0+t+L−1: one unaligned load from a transposed strip of
// the key row, no broadcast, no key position computed for nothing. Per key row r a work item keeps
//     Kᵀ_r[c][j], V_r[j][e]        j = 0 … L−1+nt−1 ↔ image column x0 + tmin + j
// and computes, for each of the kh rows and nt column offsets ti = t − tmin of the window,
//     S(r, ti)  = Σ_c Qᵀ[c] ⊙ Kᵀ_r[c][ti : ti+L]          (scores in log2 units: Q carries scale·log2 e)
//     P         = 2^(S − max) over all kh·nt score vectors at once (two passes over a small buffer:
//                 every query sees all its keys before the exponentials, so nothing is rescaled)
//     O[l]      = Σ_{r, j} P(r, j − l)[l] · V_r[j] / Σ P   (query lane l, its kw key columns j)
// Two query rows y, y+1 go together: their windows share kh − 1 key rows (all kh at the image's top
// and bottom), and on a shared row one Kᵀ load feeds two FMAs, one per query row. The score loop
// keeps 2 × NT accumulators (all offsets of a row) in registers over the whole d.
//
// P·V runs in the other orientation, on V as it is (only copied out of the caller's tensor, whose
// rows of one head sit H·d apart and crowd a few L1 sets): per key row, for groups of 3 adjacent
// query lanes, each P(q, j) broadcast from the score buffer times the value vectors of key column
// j, 3 × E accumulators (E value vectors) in registers. Three neighbours see all but two of each
// other's columns, so one V load feeds three FMAs, and no query spends an FMA on a key it does not
// see (border strips included). O needs no transpose: each query's row is written as it is. Key
// rows go outermost, so a V row sits in L1 for both query rows and all lane groups; O lives in a
// per-thread buffer of 2 × L rows between key rows. (Transposing V and O for a shifted-lane P·V,
// as the scores do, took half of the ~100 16 × 16 transposes per row pair.)
//
// Borders: NATTEN shifts the window to stay inside the image (start clamp(x − k/2, 0, W − k)), so
// near the left and right edges the lanes of a strip have different starts. Such a strip runs the
// same score kernel over the union of the lanes' offsets (up to 2k − 1 of them) with a per-lane
// mask: lane l keeps offset t iff its window contains column x0 + l + t; P·V visits each lane's own
// k columns. Lanes past the right edge (W not a multiple of L) read zeros, and P·V and the write
// skip them. The top and bottom need nothing: a query row's key rows are whole rows,
// clamp(y − k/2, 0, H − k) + 0 … k − 1.
//
// A work item is (batch, K/V head, column strip, band of image rows); it walks the rows top to
// bottom, keeping a ring of k + 1 key rows, so each key row is transposed (copied) once per item
// (not once per query row), and the G query heads of the K/V head share every strip. Items are
// independent and their split depends on the shapes only, so the result does not depend on the
// thread count, bit for bit (each query's sums run in one fixed order whichever rows it is paired
// with).
//
// Not covered (neighborhood_2d_forward falls back to the tile engine's patch path): dilation > 1
// and causal axes (other window shapes and per-residue grids), and images narrower than a vector
// (most lanes would be padding).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "parallel.hpp"
#include "simd.hpp"
#include "softmax_args.hpp"
#include "tile_engine.hpp"  // kLog2e, kLn2
#include "transpose.hpp"
#include "window_args.hpp"
#include "workspace.hpp"

namespace xattn::detail {

/// Calls f.template operator()<N>() for the runtime count n in [1, Max] (the switch from a runtime
/// count of registers to a compile-time one).
template <int Max, class F>
void with_count(int n, F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((n == I + 1 ? (f.template operator()<I + 1>(), 0) : 0), ...);
  }(std::make_integer_sequence<int, Max>{});
}

/// The size of O above which the row-stencil kernel writes O around the caches (see its write()):
/// a last-level cache on this machine. A variable, so that the tests can take that path on small
/// images.
inline double neighborhood_stream_bytes = 32.0 * (1 << 20);

template <class T, class Arch>
class neighborhood_rows {
 public:
  using V = simd::vec_t<T, Arch>;
  static constexpr int L = simd::lanes_v<T, Arch>;
  // Scores: two query rows × NT accumulators, two Qᵀ vectors and one Kᵀ vector, plus on AVX-512
  // the two or three loaded Kᵀ vectors the shifted ones come from (simd::shift_in): 13 offsets per
  // pass on AVX-512's 32 registers (all of kernel 13), 6 on AVX2.
  static constexpr int kMaxNT = (simd::traits<T, Arch>::registers - 3 - (simd::has_shift<T, Arch> ? 3 : 0)) / 2;
  // P·V: kQ queries × E output vectors, kQ broadcast P values and one V vector: 9 vectors (d 144)
  // per pass on AVX-512, 4 on AVX2. Three adjacent queries of a row see all but two of each
  // other's key columns, so one V load feeds three FMAs.
  static constexpr int kQ = 3;
  static constexpr int kMaxE = (simd::traits<T, Arch>::registers - kQ - 1) / kQ;

  /// Whether this kernel computes the call (else the tile engine's patch path does).
  static bool covers(const neighborhood_spec& s) {
    return s.dh == 1 && s.dw == 1 && !s.ch && !s.cw && s.width >= L;
  }

  neighborhood_rows(const softmax_problem<T>& p, const neighborhood_spec& s) : p_(p), s_(s) {
    strips_ = (s.width + L - 1) / L;
    nt_max_ = s.kw + std::min<index>(L - 1, s.kw - 1);  // the lanes' starts differ by at most kw − 1
    ld_max_ = L - 1 + nt_max_;
    // Bands of rows: enough items for a few threads even with one image and head, but bands of at
    // least 16 rows (each band transposes kh key rows that its neighbour transposes too). Shapes
    // only, so the split does not depend on the thread count.
    const index base = p.batch * p.hkv * strips_;
    const index bands = std::clamp<index>((32 + base - 1) / base, 1, std::max<index>(1, s.height / 16));
    band_ = (s.height + bands - 1) / bands;
    band_ += band_ % 2;  // query rows go in pairs
    bands_ = (s.height + band_ - 1) / band_;
    // Per-thread scratch (floats), each piece at a whole kAlign unit. V rows keep d at a whole
    // number of vectors (zeros after dv), so every value vector of a key is one aligned load.
    dvp_ = (p.dv + L - 1) / L * L;
    kt_size_ = round(p.d * ld_max_ + 2 * L);  // the scores' loads run up to 2L past the last row
    slot_ = kt_size_ + round(ld_max_ * dvp_);
    qt_size_ = round(p.d * L);
    s_size_ = round(s.kh * nt_max_ * L);
    ob_size_ = round(L * dvp_);
    ldc_ = round(std::max(p.d, p.dv));
    // O by whole cache lines around the caches when it is larger than a last-level cache (write())
    stream_ = !simd::is_scalar_v<V> && p.dv % (64 / index(sizeof(T))) == 0 &&
              double(p.batch) * double(p.nq) * double(p.hq) * double(p.dv) * sizeof(T) > neighborhood_stream_bytes;
  }

  template <class Device>
  void run(const Device& dev) const {
    // Two workers take the items from both ends (parallel_for's from_both_ends), so each thread
    // mostly walks one end in the one-thread order (the K/V heads of a strip one after another,
    // sharing the pixels' pages), instead of every other item of it. At 128², kernel 13, 8 heads: a mean of 201.5–229.5 GFLOPS against
    // 200.5–224.9 in plain order, higher in 7 of 8 alternations (probe `nb`, 20 calls each). On one
    // thread the plain order is the faster (113–120 against 100–116: the same walk, alternating
    // ends, loses that sharing). Which thread computes an item does not change its result.
    parallel_for(dev, p_.batch * p_.hkv * strips_ * bands_, [&](index item) { work(item); }, true);
  }

 private:
  static constexpr index kUnit = index(simd::kAlign / sizeof(T));
  static index round(index n) { return (n + kUnit - 1) / kUnit * kUnit; }

  /// The geometry of one column strip: lane l holds column x0 + l; its window is offsets
  /// [lo[l], lo[l] + kw) relative to itself, ti = t − tmin indexes the strip's offsets.
  struct strip {
    index x0 = 0, valid = 0, tmin = 0, nt = 0, ld = 0;  // ld: columns of Kᵀ rows (and V rows of a slot)
    bool masked = false;                 // lanes with different window starts (a border strip)
    alignas(simd::kAlign) T lo[L], hi[L];  // per lane: kept ti in [lo, hi] (masked strips)
    index start[L];                      // per valid lane l: its first key column, l + lo[l]
  };

  /// The ring of key rows (Kᵀ, then V untransposed): row r in slot r mod (kh + 1).
  struct ring {
    T* base;
    index rows, slot;
    T* operator[](index r) const { return base + (r % rows) * slot; }
  };

  strip make_strip(index si) const {
    strip g;
    g.x0 = si * L;
    g.valid = std::min<index>(L, s_.width - g.x0);
    index lo[L], tmin = 0, tmax = -s_.width;
    for (index l = 0; l < g.valid; ++l) {
      const index x = g.x0 + l;
      lo[l] = std::clamp<index>(x - s_.kw / 2, 0, s_.width - s_.kw) - x;
      tmin = l == 0 ? lo[l] : std::min(tmin, lo[l]);
      tmax = std::max(tmax, lo[l] + s_.kw - 1);
    }
    g.tmin = tmin, g.nt = tmax - tmin + 1, g.ld = L - 1 + g.nt;
    g.masked = g.nt != s_.kw;
    for (index l = 0; l < L; ++l) {  // padding lanes keep every offset (their keys are zeros)
      g.lo[l] = T(l < g.valid ? lo[l] - tmin : 0);
      g.hi[l] = T(l < g.valid ? lo[l] - tmin + s_.kw - 1 : g.nt - 1);
      g.start[l] = l < g.valid ? l + lo[l] - tmin : 0;
    }
    return g;
  }

  index row_start(index y) const { return std::clamp<index>(y - s_.kh / 2, 0, s_.height - s_.kh); }

  // K and Q go in through simd::transpose_rows, L rows of the caller's tensor at a time: L vector
  // loads, an L × L transpose in registers and L vector stores for float on AVX-512 and AVX2 (rows
  // outside the image read zeros); element by element elsewhere. (A gather is no alternative here:
  // 20 cycles per 16 floats even from L1, 35 when the rows sit 4 KiB apart.)

  /// Kᵀ of key row r over the strip's columns into `slot` (zeros outside the image), in blocks of
  /// L columns (the last block overlaps its neighbour when ld is not a multiple of L), and the
  /// row's V as it is, one key per dvp values, for the columns inside the image (no window reaches
  /// past the image, so the others are never read). A copy, not a transpose: V rows sit 4 KiB
  /// apart in the caller's tensor at 8 heads × d 128, all in the same few L1 sets.
  void load_row(const strip& g, index b, index hk, index r, T* slot, T* conv) const {
    for (index j = 0; j < g.ld; j += L) {
      const index j0 = std::min(j, g.ld - L), col0 = g.x0 + g.tmin + j0;
      const T* src[L];
      for (index l = 0; l < L; ++l)
        src[l] = col0 + l >= 0 && col0 + l < s_.width ? row_of(p_.k, b, r * s_.width + col0 + l, hk, p_.d, conv + l * ldc_)
                                                     : nullptr;
      simd::transpose_rows<T, Arch>(src, p_.d, T(1), slot + j0, g.ld);  // null rows: zeros
    }
    std::fill(slot + p_.d * g.ld, slot + p_.d * g.ld + 2 * L, T(0));  // read by scores, never used
    T* vp = slot + kt_size_;
    const index j_lo = std::max<index>(0, -(g.x0 + g.tmin)), j_hi = std::min(g.ld, s_.width - g.x0 - g.tmin);
    for (index j = j_lo; j < j_hi; ++j) {
      const T* src = row_of(p_.v, b, r * s_.width + g.x0 + g.tmin + j, hk, p_.dv, conv);
      T* dst = vp + j * dvp_;
      index e = 0;
      for (; e + L <= p_.dv; e += L) simd::store(dst + e, simd::loadu<V>(src + e));
      for (; e < p_.dv; ++e) dst[e] = src[e];
      for (; e < dvp_; ++e) dst[e] = T(0);
    }
  }

  /// Qᵀ of query row y, head h, scaled by scale·log2 e (zeros on padding lanes).
  void load_q(const strip& g, index b, index y, index h, T* qt, T* conv) const {
    const T* src[L];
    for (index l = 0; l < L; ++l)
      src[l] = l < g.valid ? row_of(p_.q, b, y * s_.width + g.x0 + l, h, p_.d, conv + l * ldc_) : nullptr;
    simd::transpose_rows<T, Arch>(src, p_.d, T(p_.scale * kLog2e), qt, L);
  }

  /// Scores of R query rows against offsets [ti0, ti0 + NT) of one key row: s[i][n] (vector n of
  /// row i's buffer at that key row) = Σ_c qt[i][c] ⊙ kt[c][ti0 + n : +L], masked on border strips;
  /// mx[i] takes their max.
  template <int R, int NT>
  void scores(const strip& g, const T* const* qt, const T* kt, index ti0, T* const* s, V* mx) const {
    V acc[R][NT];
    XATTN_UNROLL for (int i = 0; i < R; ++i) XATTN_UNROLL for (int n = 0; n < NT; ++n) acc[i][n] = simd::bcast<V>(T(0));
    const T* kc = kt + ti0;
    for (index c = 0; c < p_.d; ++c, kc += g.ld) {
      V q[R];
      XATTN_UNROLL for (int i = 0; i < R; ++i) q[i] = simd::in_register(simd::load<V>(qt[i] + c * L));
      // On AVX-512, every second shifted vector by a shuffle (simd::shift_in) of NL loaded ones, the
      // others by an unaligned load. Alone, over Kᵀ rows in L2, this loop ran at 97 % of the FMA
      // peak, against 87 % with shuffles only (which seem to take FMA issue slots) and 79 % with
      // loads only (most cross a cache line). In the whole kernel at 128², kernel 13: shuffles only
      // +3–5 % over loads only, and this mix +1 % over shuffles only.
      if constexpr (simd::has_shift<T, Arch>) {
        constexpr int NL = (NT - 1) / L + 2;
        V k[NL];
        XATTN_UNROLL for (int j = 0; j < NL; ++j) k[j] = simd::loadu<V>(kc + j * L);
        [&]<int... n>(std::integer_sequence<int, n...>) {
          ((void)[&] {
             V kn;
             if constexpr (n % 2 == 0) kn = simd::shift_in<n % L, T, Arch>(k[n / L], k[n / L + 1]);
             else kn = simd::loadu<V>(kc + n);
             kn = simd::in_register(kn);
             XATTN_UNROLL for (int i = 0; i < R; ++i) acc[i][n] = simd::fma(q[i], kn, acc[i][n]);
           }(), ...);
        }(std::make_integer_sequence<int, NT>{});
        continue;
      }
      XATTN_UNROLL for (int n = 0; n < NT; ++n) {
        const V k = simd::in_register(simd::loadu<V>(kc + n));
        XATTN_UNROLL for (int i = 0; i < R; ++i) acc[i][n] = simd::fma(q[i], k, acc[i][n]);
      }
    }
    const V ninf = simd::bcast<V>(-std::numeric_limits<T>::infinity());
    XATTN_UNROLL for (int n = 0; n < NT; ++n) {
      if (g.masked) {
        const V t = simd::bcast<V>(T(ti0 + n));
        const V lo = simd::load<V>(g.lo), hi = simd::load<V>(g.hi);
        XATTN_UNROLL for (int i = 0; i < R; ++i) acc[i][n] = simd::keep_between(t, lo, hi, acc[i][n], ninf);
      }
      XATTN_UNROLL for (int i = 0; i < R; ++i) {
        mx[i] = simd::max(mx[i], acc[i][n]);
        simd::store(s[i] + n * L, acc[i][n]);
      }
    }
  }

  /// P = 2^(S − m) over the n score vectors of one query row, in place; returns Σ P. Flattened:
  /// g++ 12 called simd::exp2 out of line here, spilling the two sums around every call.
  [[gnu::flatten]] static V exponentials(T* s, index n, const V& m) {
    V sum0 = simd::bcast<V>(T(0)), sum1 = sum0;  // two add chains
    index i = 0;
    for (; i + 2 <= n; i += 2) {
      const V p0 = simd::exp2(simd::load<V>(s + i * L) - m), p1 = simd::exp2(simd::load<V>(s + (i + 1) * L) - m);
      simd::store(s + i * L, p0);
      simd::store(s + (i + 1) * L, p1);
      sum0 = sum0 + p0;
      sum1 = sum1 + p1;
    }
    if (i < n) {
      const V p = simd::exp2(simd::load<V>(s + i * L) - m);
      simd::store(s + i * L, p);
      sum0 = sum0 + p;
    }
    return sum0 + sum1;
  }

  /// O[q][e0 … e0+E·L) of the NQ queries in lanes l0 … l0+NQ−1 of one query row, over one key
  /// row: o[q] += Σ_j P(q, j) · V[j], V untransposed, P(q, j) broadcast from the score buffer p
  /// (query lane l at key column j: p[(j − l)·L + l]). Query q sees the columns
  /// [start[q], start[q] + kw), which differ by 0 or 1 between neighbours: the columns all NQ see run
  /// without a test. Where the starts are consecutive (interior strips) the NQ − 1 columns at either
  /// end are unrolled for the queries that see them (one V load for all of them, no test: +2–5 % on
  /// one thread at 128², kernel 13, CPU time); elsewhere (border strips) they test each query. init:
  /// o starts at zero, not at o.
  template <int NQ, int E>
  void values(const T* vt, const T* p, index l0, const index* start, T* o, bool init) const {
    V acc[NQ][E];
    XATTN_UNROLL for (int q = 0; q < NQ; ++q) XATTN_UNROLL for (int e = 0; e < E; ++e)
      acc[q][e] = init ? simd::bcast<V>(T(0)) : simd::load<V>(o + q * dvp_ + e * L);
    const index kw = s_.kw;
    index pq[NQ], a[NQ];  // P(q, j) = p[pq[q] + j·L] (pq < 0, but j ≥ a[q] ≥ l0 + q: the sum is not)
    XATTN_UNROLL for (int q = 0; q < NQ; ++q) pq[q] = (l0 + q) - (l0 + q) * L, a[q] = start[l0 + q];
    const index j_all = a[NQ - 1], j_end = a[0] + kw, j_last = a[NQ - 1] + kw;
    const auto some = [&](index j) {
      const T* v = vt + j * dvp_;
      XATTN_UNROLL for (int q = 0; q < NQ; ++q) {
        if (j < a[q] || j >= a[q] + kw) continue;
        const V pb = simd::bcast<V>(p[pq[q] + j * L]);
        XATTN_UNROLL for (int e = 0; e < E; ++e) acc[q][e] = simd::fma(pb, simd::load<V>(v + e * L), acc[q][e]);
      }
    };
    // Queries [Q0, Q1) at column j, one V load per value vector for all of them.
    const auto span = [&]<int Q0, int Q1>(index j) {
      const T* v = vt + j * dvp_;
      V pb[NQ];
      XATTN_UNROLL for (int q = Q0; q < Q1; ++q) pb[q] = simd::bcast<V>(p[pq[q] + j * L]);
      XATTN_UNROLL for (int e = 0; e < E; ++e) {
        const V x = simd::in_register(simd::load<V>(v + e * L));
        XATTN_UNROLL for (int q = Q0; q < Q1; ++q) acc[q][e] = simd::fma(pb[q], x, acc[q][e]);
      }
    };
    // Consecutive starts (every group of an interior strip) and kw >= NQ − 1: the edges are known.
    bool regular = kw >= NQ - 1;
    XATTN_UNROLL for (int q = 1; q < NQ; ++q) regular = regular && a[q] == a[0] + q;
    if (regular) {  // columns a0 + i: queries 0 … i; then all; then a0 + kw + i: queries i + 1 …
      [&]<int... i>(std::integer_sequence<int, i...>) {
        (span.template operator()<0, i + 1>(a[0] + i), ...);
      }(std::make_integer_sequence<int, NQ - 1>{});
      for (index j = j_all; j < j_end; ++j) span.template operator()<0, NQ>(j);
      [&]<int... i>(std::integer_sequence<int, i...>) {
        (span.template operator()<i + 1, NQ>(j_end + i), ...);
      }(std::make_integer_sequence<int, NQ - 1>{});
    } else {
      index j = a[0];
      for (; j < j_all; ++j) some(j);
      for (; j < j_end; ++j) span.template operator()<0, NQ>(j);
      for (; j < j_last; ++j) some(j);
    }
    XATTN_UNROLL for (int q = 0; q < NQ; ++q) XATTN_UNROLL for (int e = 0; e < E; ++e)
      simd::store(o + q * dvp_ + e * L, acc[q][e]);
  }

  /// out[b, y·W + x0 + l, h] = o[l] · inv[l] for the strip's valid lanes. When O is larger than a
  /// last-level cache (neighborhood_stream_bytes), rows of whole cache lines go around the caches
  /// (simd::stream): O is written once, and an ordinary store first read each line (its stores took
  /// 4 % of the time at 128², kernel 13, one thread; streamed, two threads ran 5 % faster). A
  /// smaller O stays in the cache for the caller. Writing a pair's rows a few at a time during the
  /// next pair's scores instead was no faster.
  void write(const strip& g, index b, index y, index h, const T* o, const T* inv, T* conv) const {
    for (index l = 0; l < g.valid; ++l) {
      const bool native = p_.o.native();
      T* out = native ? p_.o.row(b, y * s_.width + g.x0 + l, h) : conv;  // 16-bit: rounded from conv below
      const T* src = o + l * dvp_;
      index e = 0;
      if constexpr (!simd::is_scalar_v<V>) {
        const V s = simd::bcast<V>(inv[l]);
        if (stream_ && native && reinterpret_cast<std::uintptr_t>(out) % 64 == 0)
          for (; e + L <= p_.dv; e += L) simd::stream(out + e, simd::load<V>(src + e) * s);
        for (; e + L <= p_.dv; e += L) simd::storeu(out + e, simd::load<V>(src + e) * s);
      }
      for (; e < p_.dv; ++e) out[e] = src[e] * inv[l];
      if (!native) p_.o.store(b, y * s_.width + g.x0 + l, h, conv, p_.dv);
    }
  }

  /// A row of `t` as T: where it is, or (16-bit storage) converted into `conv`.
  static const T* row_of(const bshd_view<const T>& t, index b, index s, index h, index n, T* conv) {
    if (t.native()) return t.row(b, s, h);
    t.load(conv, b, s, h, n);
    return conv;
  }

  void work(index item) const {
    // K/V heads vary fastest: the items running at one time read the same pixels (all heads of a
    // pixel share its 4 KiB page at H·d = 1024 floats), so DRAM pages are shared. Strips fastest
    // (the neighbour strip's halo columns fresher in L3) ran 12 % slower on one thread, with 4 KiB
    // pages as with 2 MiB ones.
    const index hk = item % p_.hkv, band = item / p_.hkv % bands_, si = item / p_.hkv / bands_ % strips_,
                b = item / p_.hkv / bands_ / strips_;
    const strip g = make_strip(si);
    const index kh = s_.kh, nk = kh * g.nt;
    T* ws = static_cast<T*>(workspace::of_this_thread().get(
        sizeof(T) * std::size_t((kh + 1) * slot_ + 2 * qt_size_ + 2 * s_size_ + 2 * ob_size_ + L * ldc_)));
    const ring rows{ws, kh + 1, slot_};
    T* const qt[2] = {ws + (kh + 1) * slot_, ws + (kh + 1) * slot_ + qt_size_};
    T* const sb[2] = {qt[1] + qt_size_, qt[1] + qt_size_ + s_size_};
    T* const ob[2] = {sb[1] + s_size_, sb[1] + s_size_ + ob_size_};
    T* const conv = ob[1] + ob_size_;  // L rows of ldc_: 16-bit rows converted on their way in and out
    // Passes over offsets (scores) and over value vectors (P·V), as equal as possible; groups of
    // at most kQ query lanes, as equal as possible.
    const index chunks = (g.nt + kMaxNT - 1) / kMaxNT, nv = dvp_ / L, echunks = (nv + kMaxE - 1) / kMaxE;
    const index groups = (g.valid + kQ - 1) / kQ;
    const V ninf = simd::bcast<V>(-std::numeric_limits<T>::infinity());

    const index y_begin = band * band_, y_end = std::min(s_.height, y_begin + band_);
    index loaded = row_start(y_begin);  // rows [row_start(y_begin), loaded) sit in the ring
    for (index y = y_begin; y < y_end; y += 2) {
      const bool two = y + 1 < y_end;
      const index first[2] = {row_start(y), row_start(two ? y + 1 : y)};
      const index r_lo = first[0], r_hi = first[1] + kh;  // at most kh + 1 rows
      for (; loaded < r_hi; ++loaded) load_row(g, b, hk, loaded, rows[loaded], conv);
      // The images come from DRAM at these sizes: ask for the next pair's query rows and new key rows
      // now, while this pair computes (~10 µs at d = 128).
      if (y + 2 < y_end) {
        const index ny = std::min(y + 3, y_end - 1), next_hi = row_start(ny) + kh;
        for (index qy = y + 2; qy <= ny; ++qy)
          for (index l = 0; l < g.valid; ++l)
            simd::prefetch(p_.q.at(b, qy * s_.width + g.x0 + l, hk * p_.group), std::size_t(p_.group * p_.d) * elem_bytes(p_.q.type));
        for (index r = r_hi; r < next_hi; ++r)
          for (index col = std::max<index>(0, g.x0 + g.tmin); col < std::min(s_.width, g.x0 + g.tmin + g.ld); ++col) {
            simd::prefetch(p_.k.at(b, r * s_.width + col, hk), std::size_t(p_.d) * elem_bytes(p_.k.type));
            simd::prefetch(p_.v.at(b, r * s_.width + col, hk), std::size_t(p_.dv) * elem_bytes(p_.v.type));
          }
      }

      for (index gi = 0; gi < p_.group; ++gi) {
        const index h = hk * p_.group + gi;
        load_q(g, b, y, h, qt[0], conv);
        if (two) load_q(g, b, y + 1, h, qt[1], conv);
        V mx[2] = {ninf, ninf};
        for (index r = r_lo; r < r_hi; ++r) {
          const bool u0 = r < first[0] + kh, u1 = two && r >= first[1];
          for (index ch = 0, ti0 = 0; ch < chunks; ++ch) {
            const index nt = g.nt / chunks + (ch < g.nt % chunks);
            T* const s2[2] = {sb[0] + ((r - first[0]) * g.nt + ti0) * L, sb[1] + ((r - first[1]) * g.nt + ti0) * L};
            with_count<kMaxNT>(int(nt), [&]<int NT>() {
              if (u0 && u1) scores<2, NT>(g, qt, rows[r], ti0, s2, mx);
              else if (u0) scores<1, NT>(g, qt, rows[r], ti0, s2, mx);
              else scores<1, NT>(g, qt + 1, rows[r], ti0, s2 + 1, mx + 1);
            });
            ti0 += nt;
          }
        }
        alignas(simd::kAlign) T inv[2][L];
        for (int i = 0; i < (two ? 2 : 1); ++i) {
          const V l = exponentials(sb[i], nk, mx[i]);
          simd::store(inv[i], simd::bcast<V>(T(1)) / l);
          if (p_.lse) {  // lse = (m + log2 l)·ln 2
            alignas(simd::kAlign) T m[L], sum[L];
            simd::store(m, mx[i]), simd::store(sum, l);
            for (index x = 0; x < g.valid; ++x)
              p_.lse[(b * p_.hq + h) * p_.nq + (y + i) * s_.width + g.x0 + x] =
                  T((double(m[x]) + std::log2(double(sum[x]))) * kLn2);
          }
        }
        // P·V key row by key row (its V stays in L1 for both query rows and all lane groups), each
        // query's sums in key-row order whichever row it is paired with.
        for (index r = r_lo; r < r_hi; ++r) {
          const T* vt = rows[r] + kt_size_;
          for (int i = 0; i < (two ? 2 : 1); ++i) {
            if (r < first[i] || r >= first[i] + kh) continue;
            const T* p = sb[i] + (r - first[i]) * g.nt * L;
            for (index gr = 0, l0 = 0; gr < groups; ++gr) {
              const index nq = g.valid / groups + (gr < g.valid % groups);
              for (index ch = 0, e0 = 0; ch < echunks; ++ch) {
                const index ne = nv / echunks + (ch < nv % echunks);
                T* o = ob[i] + l0 * dvp_ + e0 * L;
                with_count<kQ>(int(nq), [&]<int NQ>() {
                  with_count<kMaxE>(int(ne), [&]<int E>() { values<NQ, E>(vt + e0 * L, p, l0, g.start, o, r == first[i]); });
                });
                e0 += ne;
              }
              l0 += nq;
            }
          }
        }
        for (int i = 0; i < (two ? 2 : 1); ++i) write(g, b, y + i, h, ob[i], inv[i], conv);
      }
    }
    simd::stream_fence();  // the streamed rows of O are complete before the item is
  }

  const softmax_problem<T>& p_;
  neighborhood_spec s_;
  index strips_, nt_max_, ld_max_, band_, bands_, dvp_, kt_size_, slot_, qt_size_, s_size_, ob_size_;
  index ldc_ = 0;  // row stride of the conversion rows
  bool stream_;
};

}  // namespace xattn::detail
