// xattn/core/amx.hpp — the tile engine's products on AMX-BF16 tiles, and the packing they need.
//
// The engine keeps queries in lanes (Sᵀ [keys][lanes], Oᵀ [dv][lanes], float), so both products
// are C[16 × 16 lanes] += A[16 × 32] · B[32 × 16 lanes] in AMX's terms, with B in its paired-row
// layout (row kp holds, per lane, the two bf16 of k = 2kp, 2kp + 1):
//     Sᵀ = K · Qᵀ      A = the K tile's rows as they are (bf16), B = Q paired along d (once per block)
//     Oᵀ += Vᵀ · P     A = the V tile transposed (bf16), B = P paired along keys, rounded to bf16
// Every sum is float; only the operands are bf16 (P rounded to nearest even, as FlashAttention
// does). One C block is 2 × 2 tiles (32 rows × 32 lanes, tmm0–3) fed by two A tiles (tmm4–5) and
// two B tiles (tmm6–7): each 32-wide step of k loads four tiles for four tdpbf16ps.
//
// Everything here is compiled for AMX through target attributes and runs only after
// cpu_has_amx_bf16() said yes (paths.hpp): the translation unit itself needs AVX-512 only. The
// packers and softmax_pairs need AVX512-BF16 only (XATTN_BF16_TARGET): the AVX512-BF16 path
// (core/dpbf16.hpp) keeps the same layouts and runs them after cpu_has_avx512_bf16() said yes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "error.hpp"  // detail::index
#include "tile.hpp"
#include "transpose.hpp"

#if defined(__AVX512F__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define XATTN_HAVE_AMX_KERNELS 1
#include <immintrin.h>
#else
#define XATTN_HAVE_AMX_KERNELS 0
#endif

namespace xattn::detail::amx {

/// Whether this build carries the AMX kernels (x86-64 with AVX-512; the CPU is asked at run time).
inline constexpr bool built = XATTN_HAVE_AMX_KERNELS;

#if XATTN_HAVE_AMX_KERNELS

#define XATTN_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512bf16,avx512bw,avx512f")))
// The packers and the softmax into pairs use AVX512-BF16 conversions only: the AVX512-BF16 path
// (core/dpbf16.hpp) shares them on CPUs without AMX.
#define XATTN_BF16_TARGET __attribute__((target("avx512bf16,avx512bw,avx512f")))
// The tile instructions as asm with a memory clobber on loads too: the compiler's own macros tell it
// only that a load takes two registers, so a store into the packed buffers could sink past it.
#define XATTN_TILE_LOAD(t, base, stride) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void*)(base)), "r"((long)(stride)) : "memory")
#define XATTN_TILE_STORE(t, base, stride) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"((void*)(base)), "r"((long)(stride)) : "memory")
#define XATTN_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define XATTN_TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

/// The word order that interleaves two rows' bf16 (words 0–15 of one, 16–31 of the other) into
/// pairs: _mm512_permutexvar_epi16(kPairWords, cvtne2ps_pbh(b, a)) holds (a[j], b[j]) in 32-bit lane j.
alignas(64) inline constexpr std::uint16_t kPairWords[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                             21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                             11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

struct alignas(64) tile_config {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

/// Loads this thread's tile configuration: all eight tiles 16 rows × 64 bytes. Each work item
/// loads it (a few dozen cycles against thousands per key tile), so a thread whose tiles some
/// other code configured differently in between still gets ours.
XATTN_AMX_TARGET inline void configure() {
  static const tile_config cfg = [] {
    tile_config c;
    for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = 16;
    return c;
  }();
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

/// C[MT·16 rows][32 lanes] (+)= A[MT·16][k] · B, k a multiple of 32. A: bf16 rows lda apart; B:
/// paired rows (kp, lane, 2) ldb bf16 apart; C: float rows ldc apart. Accumulate: C is loaded first.
template <int MT, bool Accumulate>
XATTN_AMX_TARGET inline void mm(float* c, index ldc, const std::uint16_t* a, index lda, const std::uint16_t* b,
                                index ldb, index k) {
  const long sc = long(ldc * 4), sa = long(lda * 2), sb = long(ldb * 2);
  if constexpr (Accumulate) {
    XATTN_TILE_LOAD(0, c, sc);
    XATTN_TILE_LOAD(1, c + 16, sc);
    if constexpr (MT == 2) {
      XATTN_TILE_LOAD(2, c + 16 * ldc, sc);
      XATTN_TILE_LOAD(3, c + 16 * ldc + 16, sc);
    }
  } else {
    XATTN_TILE_ZERO(0);
    XATTN_TILE_ZERO(1);
    if constexpr (MT == 2) {
      XATTN_TILE_ZERO(2);
      XATTN_TILE_ZERO(3);
    }
  }
  for (index kk = 0; kk < k; kk += 32) {
    const std::uint16_t* bk = b + (kk / 2) * ldb;
    XATTN_TILE_LOAD(6, bk, sb);
    XATTN_TILE_LOAD(7, bk + 32, sb);
    XATTN_TILE_LOAD(4, a + kk, sa);
    XATTN_TILE_DP(0, 4, 6);
    XATTN_TILE_DP(1, 4, 7);
    if constexpr (MT == 2) {
      XATTN_TILE_LOAD(5, a + 16 * lda + kk, sa);
      XATTN_TILE_DP(2, 5, 6);
      XATTN_TILE_DP(3, 5, 7);
    }
  }
  XATTN_TILE_STORE(0, c, sc);
  XATTN_TILE_STORE(1, c + 16, sc);
  if constexpr (MT == 2) {
    XATTN_TILE_STORE(2, c + 16 * ldc, sc);
    XATTN_TILE_STORE(3, c + 16 * ldc + 16, sc);
  }
}

/// Sᵀ[keys × lanes] = K[keys × d2] · Qᵀ, keys a multiple of 16, lanes of 32, d2 of 32: K bf16
/// rows, Q paired along d ([d2/2] pair rows of 2·lanes words), Sᵀ float.
XATTN_AMX_TARGET inline void scores(tile<float> st, tile<const std::uint16_t> k, tile<const std::uint16_t> q) {
  for (index r = 0; r < st.cols; r += 32) {
    index c = 0;
    for (; c + 32 <= st.rows; c += 32) mm<2, false>(st.row(c) + r, st.ld, k.row(c), k.ld, q.p + 2 * r, q.ld, k.cols);
    if (c < st.rows) mm<1, false>(st.row(c) + r, st.ld, k.row(c), k.ld, q.p + 2 * r, q.ld, k.cols);
  }
}

/// Oᵀ[e][r] = alpha[r]·Oᵀ[e][r] + Σ_c Vᵀ[e][c] · P[c][r] over Oᵀ[dv2 × lanes] (dv2 a multiple
/// of 16, lanes of 32) and Vᵀ[dv2 × keys] (keys a multiple of 32; none: Oᵀ is only rescaled):
/// Vᵀ bf16 rows, P paired along keys ([keys/2] pair rows of 2·lanes words), alpha one per lane.
XATTN_AMX_TARGET inline void values(tile<float> o, const float* alpha, tile<const std::uint16_t> v,
                                    tile<const std::uint16_t> pv) {
  float* const ot = o.p;
  const index br = o.ld, dv2 = o.rows, keys = v.cols;
  // Lanes outer: a lane group's P (4 KiB) stays in L1 for all of dv, beside Vᵀ (16 KiB at dv 128).
  for (index r = 0; r < o.cols; r += 32) {
    const __m512 a0 = _mm512_loadu_ps(alpha + r), a1 = _mm512_loadu_ps(alpha + r + 16), one = _mm512_set1_ps(1.f);
    const bool same = _mm512_cmp_ps_mask(a0, one, _CMP_EQ_OQ) == 0xffff && _mm512_cmp_ps_mask(a1, one, _CMP_EQ_OQ) == 0xffff;
    for (index e = 0; e < dv2; e += 32) {
      const int mt = e + 32 <= dv2 ? 2 : 1;
      for (index i = e; i < e + 16 * mt && !same; ++i) {
        float* row = ot + i * br + r;
        _mm512_storeu_ps(row, _mm512_mul_ps(_mm512_loadu_ps(row), a0));
        _mm512_storeu_ps(row + 16, _mm512_mul_ps(_mm512_loadu_ps(row + 16), a1));
      }
      if (keys <= 0) continue;
      if (mt == 2)
        mm<2, true>(ot + e * br + r, br, v.row(e), v.ld, pv.p + 2 * r, pv.ld, keys);
      else
        mm<1, true>(ot + e * br + r, br, v.row(e), v.ld, pv.p + 2 * r, pv.ld, keys);
    }
  }
}

/// The online softmax of the tile's scores on the AMX path, for Sᵀ rows [c0, c1) × lanes [r0, r1)
/// (r1 − r0 a multiple of 32): the raw scores times `scale` (> 0; AMX scores come unscaled), the
/// running max m, sum l and factor alpha as online_softmax::update, and P written straight into
/// pv's pair rows [p0, p1) (multiples of 2 around [c0, c1)) as bf16, zero outside [c0, c1); Sᵀ is
/// only read. The max is kept lazily (FlashAttention-3's rule): m moves only when a score exceeds
/// it by more than 2^8, so P stays below 256 and alpha is exactly 1 on most tiles, where values()
/// then skips rescaling Oᵀ. l sums P as rounded (as P·V sees it: their roundings cancel where they
/// can), lx sums it unrounded (for the log-sum-exp).
template <int W>
XATTN_BF16_TARGET inline void softmax_pairs_lanes(float* m, float* l, float* lx, float* alpha, const float* st, index br, index c0,
                                                 index c1, index r, float scale, std::uint16_t* pv, index p0,
                                                 index p1) {
  using B = xsimd::batch<float, xsimd::avx512f>;
  const __m512i pair = _mm512_load_si512(kPairWords);
  const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-__builtin_inff()), zero = _mm512_setzero_ps();
  const __m512 slack = _mm512_set1_ps(8.f);
  const __m512i hi16 = _mm512_set1_epi32(int(0xffff0000u));
  // Two rows per step with their own maxima and sums: 2·W independent chains (the max and the sum
  // are latency-bound with one chain per vector).
  __m512 mx[2][W], nmu[W], sum[2][W], sx[W];
  for (int w = 0; w < W; ++w) mx[0][w] = mx[1][w] = ninf;
  index c = c0;
  for (; c + 2 <= c1; c += 2)
    for (int w = 0; w < W; ++w) {
      mx[0][w] = _mm512_max_ps(mx[0][w], _mm512_loadu_ps(st + c * br + r + 16 * w));
      mx[1][w] = _mm512_max_ps(mx[1][w], _mm512_loadu_ps(st + (c + 1) * br + r + 16 * w));
    }
  if (c < c1)
    for (int w = 0; w < W; ++w) mx[0][w] = _mm512_max_ps(mx[0][w], _mm512_loadu_ps(st + c * br + r + 16 * w));
  for (int w = 0; w < W; ++w) {
    const __m512 old = _mm512_loadu_ps(m + r + 16 * w);
    const __m512 top = _mm512_mul_ps(_mm512_max_ps(mx[0][w], mx[1][w]), sc);
    // keep the old reference where every score is within 2^8 of it (a NaN score moves it: p is NaN anyway)
    const __mmask16 keep = _mm512_cmp_ps_mask(top, _mm512_add_ps(old, slack), _CMP_LE_OQ);
    const __m512 mnew = _mm512_mask_mov_ps(_mm512_max_ps(top, old), keep, old);
    const __m512 mu = _mm512_mask_mov_ps(mnew, _mm512_cmp_ps_mask(mnew, ninf, _CMP_EQ_OQ), zero);  // −inf → 0
    const __m512 a = simd::exp2(B(_mm512_sub_ps(old, mu)));
    _mm512_storeu_ps(alpha + r + 16 * w, a);
    _mm512_storeu_ps(m + r + 16 * w, mnew);
    sum[0][w] = _mm512_mul_ps(_mm512_loadu_ps(l + r + 16 * w), a);
    sum[1][w] = zero;
    sx[w] = _mm512_mul_ps(_mm512_loadu_ps(lx + r + 16 * w), a);
    nmu[w] = _mm512_sub_ps(zero, mu);
  }
  for (index k = p0; k < p1; k += 2) {
    std::uint16_t* dst = pv + k * br + 2 * r;  // pair row k/2
    const bool in0 = k >= c0 && k < c1, in1 = k + 1 >= c0 && k + 1 < c1;
    for (int w = 0; w < W; ++w) {
      __m512 x0 = zero, x1 = zero;
      if (in0) x0 = simd::exp2(B(_mm512_fmadd_ps(_mm512_loadu_ps(st + k * br + r + 16 * w), sc, nmu[w])));
      if (in1) x1 = simd::exp2(B(_mm512_fmadd_ps(_mm512_loadu_ps(st + (k + 1) * br + r + 16 * w), sc, nmu[w])));
      sx[w] = _mm512_add_ps(sx[w], _mm512_add_ps(x0, x1));
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);  // words 0–15: x0, 16–31: x1
      const __m512i inter = _mm512_permutexvar_epi16(pair, both);  // 32-bit lane j: (x0[j], x1[j])
      _mm512_storeu_si512(dst + 32 * w, inter);
      // l sums P as rounded, so that the rounding of P·V and of the denominator cancel where they can
      sum[0][w] = _mm512_add_ps(sum[0][w], _mm512_castsi512_ps(_mm512_slli_epi32(inter, 16)));
      sum[1][w] = _mm512_add_ps(sum[1][w], _mm512_castsi512_ps(_mm512_and_si512(inter, hi16)));
    }
  }
  for (int w = 0; w < W; ++w) {
    _mm512_storeu_ps(l + r + 16 * w, _mm512_add_ps(sum[0][w], sum[1][w]));
    _mm512_storeu_ps(lx + r + 16 * w, sx[w]);
  }
}

XATTN_BF16_TARGET inline void softmax_pairs(float* m, float* l, float* lx, float* alpha, const float* st, index br, index c0,
                                           index c1, index r0, index r1, float scale, std::uint16_t* pv, index p0,
                                           index p1) {
  index r = r0;
  for (; r + 64 <= r1; r += 64) softmax_pairs_lanes<4>(m, l, lx, alpha, st, br, c0, c1, r, scale, pv, p0, p1);
  for (; r < r1; r += 32) softmax_pairs_lanes<2>(m, l, lx, alpha, st, br, c0, c1, r, scale, pv, p0, p1);
}

/// The V tile transposed: vt[e][c] (rows ldv bf16 apart, e < dv2, c < 64) = V[c][e] for
/// c < nc, 0 for c >= nc; rows[c] are the bf16 rows of V (dv values each). w is scratch of
/// 32 × dvw 32-bit words (dvw = dv rounded up to 32): first each key pair (c, c + 1) interleaved
/// per value column, then 16 × 16 blocks of those pairs transposed as 32-bit words.
XATTN_BF16_TARGET inline void pack_v(std::uint16_t* vt, index ldv, const std::uint16_t* const* rows, index nc, index dv,
                                    index dv2, index dvw, std::uint32_t* w) {
  alignas(64) static constexpr std::uint16_t kLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,
                                                        37, 6, 38, 7, 39, 8,  40, 9,  41, 10, 42,
                                                        11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (index cp = 0; cp < 32; ++cp) {
    const index c = 2 * cp;
    std::uint32_t* wr = w + cp * dvw;
    for (index e = 0; e < dvw; e += 32) {
      const __mmask32 m = e + 32 <= dv ? ~__mmask32(0) : e < dv ? __mmask32((1u << (dv - e)) - 1) : 0;
      const __m512i a = c < nc ? _mm512_maskz_loadu_epi16(m, rows[c] + e) : _mm512_setzero_si512();
      const __m512i b = c + 1 < nc ? _mm512_maskz_loadu_epi16(m, rows[c + 1] + e) : _mm512_setzero_si512();
      _mm512_storeu_si512(wr + e, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(wr + e + 16, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
  auto* v32 = reinterpret_cast<std::uint32_t*>(vt);  // [dv2][ldv / 2] words
  for (index e = 0; e < dv2; e += 16)
    for (index cp0 = 0; cp0 < 32; cp0 += 16) {
      const float* src[16];
      for (int i = 0; i < 16; ++i) src[i] = reinterpret_cast<const float*>(w + (cp0 + i) * dvw + e);
      xsimd::batch<float, xsimd::avx512f> col[16];
      simd::transpose_block<float, xsimd::avx512f>(src, col);
      for (int j = 0; j < 16; ++j) col[j].store_unaligned(reinterpret_cast<float*>(v32 + (e + j) * (ldv / 2) + cp0));
    }
}

// --- the chunk engine's products (core/chunk_engine.hpp) ------------------------------------------
// There the operands are row-major chunks, not lanes: C[m × n] = A[m × k]·B with A bf16 rows and B
// paired along k, every dimension a multiple of 32. The helpers below make the paired and the
// transposed operands: B pairs from float or bf16 rows, K's pairs by a 32-bit transpose, and Kᵀ by
// splitting those pairs into their two halves.

/// C[m × n] = A[m × k]·B for m, n, k multiples of 32: A bf16 rows, B paired along k ([k/2] pair
/// rows of 2n words), C float; 2 × 2 tiles per 32 × 32 block of C.
XATTN_AMX_TARGET inline void gemm(tile<float> c, tile<const std::uint16_t> a, tile<const std::uint16_t> b) {
  for (index r = 0; r < c.rows; r += 32)
    for (index x = 0; x < c.cols; x += 32) mm<2, false>(c.row(r) + x, c.ld, a.row(r), a.ld, b.p + 2 * x, b.ld, a.cols);
}

/// B pairs from float rows: dst[p][x][0..1] = bf16(s·src[2p][x]), bf16(s·src[2p + 1][x]) with
/// s = scale[row] (1 when scale is null), rows >= valid read as zeros; pair rows ldd bf16 apart,
/// p < rows/2, x < n (a multiple of 16). Rounded to nearest even.
XATTN_BF16_TARGET inline void pair_rows(std::uint16_t* dst, index ldd, const float* src, index lds, const float* scale,
                                       index rows, index valid, index n) {
  const __m512i pair = _mm512_load_si512(kPairWords);
  const __m512 zero = _mm512_setzero_ps();
  for (index r = 0; r < rows; r += 2) {
    const bool in0 = r < valid, in1 = r + 1 < valid;
    const __m512 s0 = _mm512_set1_ps(scale && in0 ? scale[r] : 1.f), s1 = _mm512_set1_ps(scale && in1 ? scale[r + 1] : 1.f);
    std::uint16_t* d = dst + (r / 2) * ldd;
    for (index x = 0; x < n; x += 16) {
      const __m512 x0 = in0 ? _mm512_mul_ps(_mm512_loadu_ps(src + r * lds + x), s0) : zero;
      const __m512 x1 = in1 ? _mm512_mul_ps(_mm512_loadu_ps(src + (r + 1) * lds + x), s1) : zero;
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);  // words 0–15: x0, 16–31: x1
      _mm512_storeu_si512(d + 2 * x, _mm512_permutexvar_epi16(pair, both));
    }
  }
}

/// B pairs from bf16 rows: dst[p][x][0..1] = src[2p][x], src[2p + 1][x], rows >= valid as zeros;
/// with scale, bf16(scale[row]·src[row][x]) instead (rounded to nearest even). p < rows/2, x < n (a
/// multiple of 32).
XATTN_BF16_TARGET inline void pair_rows(std::uint16_t* dst, index ldd, const std::uint16_t* src, index lds,
                                       const float* scale, index rows, index valid, index n) {
  alignas(64) static constexpr std::uint16_t kLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,
                                                        37, 6, 38, 7, 39, 8,  40, 9,  41, 10, 42,
                                                        11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  const auto widen = [](__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); };
  for (index r = 0; r < rows; r += 2) {
    const bool in0 = r < valid, in1 = r + 1 < valid;
    std::uint16_t* d = dst + (r / 2) * ldd;
    for (index x = 0; x < n; x += 32) {
      __m512i a = in0 ? _mm512_loadu_si512(src + r * lds + x) : _mm512_setzero_si512();
      __m512i b = in1 ? _mm512_loadu_si512(src + (r + 1) * lds + x) : _mm512_setzero_si512();
      if (scale) {  // words 0–15 and 16–31 of a row: widened, scaled and rounded back in order
        const __m512 s0 = _mm512_set1_ps(in0 ? scale[r] : 0.f), s1 = _mm512_set1_ps(in1 ? scale[r + 1] : 0.f);
        a = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(widen(_mm512_extracti64x4_epi64(a, 1)), s0),
                                         _mm512_mul_ps(widen(_mm512_castsi512_si256(a)), s0));
        b = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(widen(_mm512_extracti64x4_epi64(b, 1)), s1),
                                         _mm512_mul_ps(widen(_mm512_castsi512_si256(b)), s1));
      }
      _mm512_storeu_si512(d + 2 * x, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(d + 2 * x + 32, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
}

/// A 32-bit transpose: dst[c][r] = src[r][c] for r < rows, c < cols (both multiples of 16); rows
/// of src lds words apart, of dst ldd. Over bf16 rows of K this makes K's pairs along d.
XATTN_BF16_TARGET inline void transpose_words(std::uint32_t* dst, index ldd, const std::uint32_t* src, index lds,
                                             index rows, index cols) {
  for (index r0 = 0; r0 < rows; r0 += 16)
    for (index c0 = 0; c0 < cols; c0 += 16) {
      const float* in[16];
      for (int i = 0; i < 16; ++i) in[i] = reinterpret_cast<const float*>(src + (r0 + i) * lds + c0);
      xsimd::batch<float, xsimd::avx512f> col[16];
      simd::transpose_block<float, xsimd::avx512f>(in, col);
      for (int j = 0; j < 16; ++j) col[j].store_unaligned(reinterpret_cast<float*>(dst + (c0 + j) * ldd + r0));
    }
}

/// Pairs split into rows: dst[2p][x] = the low half of src[p][x], dst[2p + 1][x] its high half, for
/// p < pairs, x < n (a multiple of 32). K's pairs along d become the rows of Kᵀ.
XATTN_BF16_TARGET inline void split_pairs(std::uint16_t* dst, index ldd, const std::uint32_t* src, index lds,
                                         index pairs, index n) {
  alignas(64) static constexpr std::uint16_t kEven[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20,
                                                          22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42,
                                                          44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
  const __m512i even = _mm512_load_si512(kEven), odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  for (index p = 0; p < pairs; ++p)
    for (index x = 0; x < n; x += 32) {
      const __m512i a = _mm512_loadu_si512(src + p * lds + x), b = _mm512_loadu_si512(src + p * lds + x + 16);
      _mm512_storeu_si512(dst + 2 * p * ldd + x, _mm512_permutex2var_epi16(a, even, b));
      _mm512_storeu_si512(dst + (2 * p + 1) * ldd + x, _mm512_permutex2var_epi16(a, odd, b));
    }
}

/// The state update s = fma(lam, s, ds) over rows × n floats (rows ld apart, n a multiple of 16),
/// and the updated rows as B pairs for the next chunk: sp[p][x][0..1] = bf16(s[2p][x]),
/// bf16(s[2p + 1][x]) (pair rows 2n bf16 apart), in the same pass.
XATTN_BF16_TARGET inline void combine_pairs(float* s, const float* ds, float lam, std::uint16_t* sp, index rows, index n,
                                           index ld) {
  const __m512i pair = _mm512_load_si512(kPairWords);
  const __m512 l = _mm512_set1_ps(lam);
  for (index r = 0; r < rows; r += 2) {
    float* s0 = s + r * ld;
    float* s1 = s0 + ld;
    const float* d0 = ds + r * ld;
    const float* d1 = d0 + ld;
    std::uint16_t* dst = sp + r * n;  // pair row r/2
    for (index x = 0; x < n; x += 16) {
      const __m512 x0 = _mm512_fmadd_ps(l, _mm512_loadu_ps(s0 + x), _mm512_loadu_ps(d0 + x));
      const __m512 x1 = _mm512_fmadd_ps(l, _mm512_loadu_ps(s1 + x), _mm512_loadu_ps(d1 + x));
      _mm512_storeu_ps(s0 + x, x0);
      _mm512_storeu_ps(s1 + x, x1);
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);  // words 0–15: x0, 16–31: x1
      _mm512_storeu_si512(dst + 2 * x, _mm512_permutexvar_epi16(pair, both));
    }
  }
}

/// A row of A from float scores: dst[j] = bf16(s·p[j]·mask[j]) for j < n (a multiple of 32),
/// rounded to nearest even; mask read unaligned.
XATTN_BF16_TARGET inline void masked_row(std::uint16_t* dst, const float* p, const float* mask, float s, index n) {
  const __m512 sv = _mm512_set1_ps(s);
  for (index j = 0; j < n; j += 32) {
    const __m512 x0 = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_loadu_ps(mask + j)), sv);
    const __m512 x1 = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(p + j + 16), _mm512_loadu_ps(mask + j + 16)), sv);
    _mm512_storeu_si512(dst + j, (__m512i)_mm512_cvtne2ps_pbh(x1, x0));  // words 0–15: x0, 16–31: x1
  }
}

#undef XATTN_TILE_LOAD
#undef XATTN_TILE_STORE
#undef XATTN_TILE_ZERO
#undef XATTN_TILE_DP

#else
// Declared only, so that the engines' discarded `if constexpr (amx::built)` branches name them.
inline void configure();
void scores(tile<float>, tile<const std::uint16_t>, tile<const std::uint16_t>);
void values(tile<float>, const float*, tile<const std::uint16_t>, tile<const std::uint16_t>);
void pack_v(std::uint16_t*, index, const std::uint16_t* const*, index, index, index, index, std::uint32_t*);
void softmax_pairs(float*, float*, float*, float*, const float*, index, index, index, index, index, float, std::uint16_t*, index,
                   index);
void gemm(tile<float>, tile<const std::uint16_t>, tile<const std::uint16_t>);
void pair_rows(std::uint16_t*, index, const float*, index, const float*, index, index, index);
void pair_rows(std::uint16_t*, index, const std::uint16_t*, index, const float*, index, index, index);
void transpose_words(std::uint32_t*, index, const std::uint32_t*, index, index, index);
void split_pairs(std::uint16_t*, index, const std::uint32_t*, index, index, index);
void masked_row(std::uint16_t*, const float*, const float*, float, index);
void combine_pairs(float*, const float*, float, std::uint16_t*, index, index, index);
#endif  // XATTN_HAVE_AMX_KERNELS

}  // namespace xattn::detail::amx
