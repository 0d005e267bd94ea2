// xattn/core/dpbf16.hpp — the bf16 products on AVX512-BF16 dot products (vdpbf16ps), for CPUs
// without AMX (AMD Zen 4 and 5), in the layouts of core/amx.hpp: the same packed operands, the
// same roundings, so the engines switch between the two per call with one flag (pairs::).
//
// vdpbf16ps c, a, b adds a[2j]·b[2j] + a[2j + 1]·b[2j + 1] to float lane j of c: a product along k
// in pairs, with B in AMX's paired-row layout (row kp holds, per lane, the bf16 of k = 2kp, 2kp + 1)
// and A's pair (row i, k = 2kp, 2kp + 1) broadcast as one 32-bit word. A micro-tile is 8 rows of C
// × 32 lanes: 16 accumulators, enough to cover the instruction's latency at two per cycle, fed per
// k pair by two vector loads of B and eight broadcasts of A.
//
// Runs only after cpu_has_avx512_bf16() said yes (paths.hpp); the translation unit needs AVX-512.
#pragma once

#include <cstdint>
#include <cstring>

#include "amx.hpp"

namespace xattn::detail::dp {

#if XATTN_HAVE_AMX_KERNELS

/// How a micro-tile of C starts: zeros, C as it is, or C with each lane (column) scaled.
enum class init { zero, load, scale_cols };

/// C[MR rows][32 lanes] (=|+=) A[MR][k] · B for k a multiple of 2: A bf16 rows lda apart, B paired
/// rows ldb bf16 apart, C float rows ldc apart; `cs` the 32 column scales of init::scale_cols.
template <int MR, init Init>
XATTN_BF16_TARGET inline void micro(float* c, index ldc, const std::uint16_t* a, index lda, const std::uint16_t* b,
                                   index ldb, index k, const float* cs) {
  __m512 acc[MR][2];
  if constexpr (Init == init::zero) {
    XATTN_UNROLL for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  } else {
    __m512 s0 = _mm512_set1_ps(1.f), s1 = s0;
    if constexpr (Init == init::scale_cols) s0 = _mm512_loadu_ps(cs), s1 = _mm512_loadu_ps(cs + 16);
    XATTN_UNROLL for (int i = 0; i < MR; ++i) {
      acc[i][0] = _mm512_loadu_ps(c + i * ldc), acc[i][1] = _mm512_loadu_ps(c + i * ldc + 16);
      if constexpr (Init == init::scale_cols) acc[i][0] = _mm512_mul_ps(acc[i][0], s0), acc[i][1] = _mm512_mul_ps(acc[i][1], s1);
    }
  }
  for (index kp = 0; kp < k / 2; ++kp) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + kp * ldb), b1 = (__m512bh)_mm512_loadu_si512(b + kp * ldb + 32);
    XATTN_UNROLL for (int i = 0; i < MR; ++i) {
      std::int32_t w;
      std::memcpy(&w, a + i * lda + 2 * kp, sizeof w);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(w);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
  XATTN_UNROLL for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(c + i * ldc, acc[i][0]);
    _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
  }
}

/// C[m][n] (=|+=) A[m][k]·B over whole micro-tiles: m a multiple of 8, n of 32, k of 2.
template <init Init>
XATTN_BF16_TARGET inline void mm(float* c, index ldc, const std::uint16_t* a, index lda, const std::uint16_t* b,
                                 index ldb, index m, index n, index k, const float* cs = nullptr) {
  // Lanes outer: a lane group's B (k/2 pair rows of 128 bytes) stays in L1 across every row of A.
  for (index x = 0; x < n; x += 32)
    for (index i = 0; i < m; i += 8)
      micro<8, Init>(c + i * ldc + x, ldc, a + i * lda, lda, b + 2 * x, ldb, k, cs ? cs + x : nullptr);
}

/// As amx::scores: Sᵀ[keys × lanes] = K · Qᵀ, keys a multiple of 8, lanes of 32.
XATTN_BF16_TARGET inline void scores(tile<float> st, tile<const std::uint16_t> k, tile<const std::uint16_t> q) {
  mm<init::zero>(st.p, st.ld, k.p, k.ld, q.p, q.ld, st.rows, st.cols, k.cols);
}

/// As amx::values: Oᵀ[e][r] = alpha[r]·Oᵀ[e][r] + Σ_c Vᵀ[e][c] · P[c][r] over Oᵀ[dv2 × lanes]
/// (dv2 a multiple of 16, lanes of 32) and Vᵀ[dv2 × keys] (keys a multiple of 2). Lanes whose
/// alpha are all 1 are not rescaled.
XATTN_BF16_TARGET inline void values(tile<float> o, const float* alpha, tile<const std::uint16_t> v,
                                     tile<const std::uint16_t> pv) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (index r = 0; r < o.cols; r += 32) {
    const bool same = _mm512_cmp_ps_mask(_mm512_loadu_ps(alpha + r), one, _CMP_EQ_OQ) == 0xffff &&
                      _mm512_cmp_ps_mask(_mm512_loadu_ps(alpha + r + 16), one, _CMP_EQ_OQ) == 0xffff;
    if (same)
      mm<init::load>(o.p + r, o.ld, v.p, v.ld, pv.p + 2 * r, pv.ld, o.rows, 32, v.cols);
    else
      mm<init::scale_cols>(o.p + r, o.ld, v.p, v.ld, pv.p + 2 * r, pv.ld, o.rows, 32, v.cols, alpha + r);
  }
}

/// As amx::gemm: C[m × n] = A[m × k]·B for m, n, k multiples of 32.
XATTN_BF16_TARGET inline void gemm(tile<float> c, tile<const std::uint16_t> a, tile<const std::uint16_t> b) {
  mm<init::zero>(c.p, c.ld, a.p, a.ld, b.p, b.ld, c.rows, c.cols, a.cols);
}

#else
void scores(tile<float>, tile<const std::uint16_t>, tile<const std::uint16_t>);
void values(tile<float>, const float*, tile<const std::uint16_t>, tile<const std::uint16_t>);
void gemm(tile<float>, tile<const std::uint16_t>, tile<const std::uint16_t>);
#endif  // XATTN_HAVE_AMX_KERNELS

}  // namespace xattn::detail::dp

namespace xattn::detail::pairs {

// The engines' bf16 products, on AMX tiles (tiles = true) or AVX512-BF16 dot products: one flag
// chosen per call (see paths.hpp), the operands packed the same way for both. The shapes are
// amx::scores', amx::values' and amx::gemm's (AMX needs the stricter multiples).
using u16tile = tile<const std::uint16_t>;
inline void scores(bool tiles, tile<float> st, u16tile k, u16tile q) {
  if (tiles) amx::scores(st, k, q);
  else dp::scores(st, k, q);
}
inline void values(bool tiles, tile<float> o, const float* alpha, u16tile v, u16tile p) {
  if (tiles) amx::values(o, alpha, v, p);
  else dp::values(o, alpha, v, p);
}
inline void gemm(bool tiles, tile<float> c, u16tile a, u16tile b) {
  if (tiles) amx::gemm(c, a, b);
  else dp::gemm(c, a, b);
}

}  // namespace xattn::detail::pairs
