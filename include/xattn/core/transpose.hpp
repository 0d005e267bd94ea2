// xattn/core/transpose.hpp — an L × L block of floats transposed in registers (L = the vector
// width): L vector loads, unpacks and lane shuffles, L vectors out. The engines keep queries in the
// lanes, while the caller's tensors keep a token's head_dim contiguous, so Q goes in and O comes out
// through such blocks (element by element, a 16 × 16 block took ~5× as long).
//
// Float on AVX-512 (16 × 16) and AVX2 (8 × 8) only; elsewhere has_transpose is false and callers go
// element by element. The intrinsics exist only where the translation unit is compiled for them (a
// consumer built without -mavx2 / -mavx512f sees no __m256 / __m512), hence the preprocessor guards
// around them and not only `if constexpr`.
#pragma once

#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "error.hpp"  // detail::index
#include "simd.hpp"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace xattn::simd {

using detail::index;  // the internals' index type

#if defined(__AVX512F__)
template <class T, class Arch>
inline constexpr bool transpose_avx512 = std::is_same_v<T, float> && std::is_base_of_v<xsimd::avx512f, Arch>;
#else
template <class T, class Arch>
inline constexpr bool transpose_avx512 = false;
#endif
#if defined(__AVX2__)
template <class T, class Arch>
inline constexpr bool transpose_avx2 =
    std::is_same_v<T, float> && !transpose_avx512<T, Arch> && std::is_base_of_v<xsimd::avx2, Arch>;
#else
template <class T, class Arch>
inline constexpr bool transpose_avx2 = false;
#endif
/// Whether transpose_block exists for this element type and architecture.
template <class T, class Arch>
inline constexpr bool has_transpose = transpose_avx512<T, Arch> || transpose_avx2<T, Arch>;

/// out[i] = (src[0][i], …, src[L−1][i]) for i < L: row pointers in, columns out (unaligned loads).
template <class T, class Arch>
inline void transpose_block([[maybe_unused]] const T* const* src, [[maybe_unused]] vec_t<T, Arch>* out) {
  static_assert(has_transpose<T, Arch>, "transpose_block: float on AVX-512 or AVX2 only (see has_transpose)");
#if defined(__AVX512F__)
  if constexpr (transpose_avx512<T, Arch>) {
    __m512 r[16], t[16];
    XATTN_UNROLL for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src[i]);
    // t[2i] lane k = (a[4k], b[4k], a[4k+1], b[4k+1]), t[2i+1] the same for 4k+2, 4k+3 (a, b = rows 2i, 2i+1)
    XATTN_UNROLL for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4i+j] lane k = rows 4i … 4i+3 at column 4k + j
    const auto lo = [](__m512 a, __m512 b) {
      return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
    };
    const auto hi = [](__m512 a, __m512 b) {
      return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
    };
    XATTN_UNROLL for (int i = 0; i < 4; ++i) {
      r[4 * i] = lo(t[4 * i], t[4 * i + 2]);
      r[4 * i + 1] = hi(t[4 * i], t[4 * i + 2]);
      r[4 * i + 2] = lo(t[4 * i + 1], t[4 * i + 3]);
      r[4 * i + 3] = hi(t[4 * i + 1], t[4 * i + 3]);
    }
    // column 4k + j = lane k of r[j], r[4+j], r[8+j], r[12+j]
    XATTN_UNROLL for (int j = 0; j < 4; ++j) {
      const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44), u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE);
      const __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44);
      const __m512 u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
      out[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
      out[4 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
      out[8 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
      out[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
    }
  }
#endif
#if defined(__AVX2__)
  if constexpr (transpose_avx2<T, Arch>) {
    __m256 r[8], t[8];
    XATTN_UNROLL for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src[i]);
    XATTN_UNROLL for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    const auto lo = [](__m256 a, __m256 b) {
      return _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)));
    };
    const auto hi = [](__m256 a, __m256 b) {
      return _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)));
    };
    XATTN_UNROLL for (int i = 0; i < 2; ++i) {
      r[4 * i] = lo(t[4 * i], t[4 * i + 2]);
      r[4 * i + 1] = hi(t[4 * i], t[4 * i + 2]);
      r[4 * i + 2] = lo(t[4 * i + 1], t[4 * i + 3]);
      r[4 * i + 3] = hi(t[4 * i + 1], t[4 * i + 3]);
    }
    XATTN_UNROLL for (int j = 0; j < 4; ++j) {
      out[j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x20);
      out[4 + j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x31);
    }
  }
#endif
}

/// dst[c·ld + l] = s·rows[l][c] for l < L, c < d: L rows into L columns of dst; a null row gives
/// zeros (a padding lane, a column outside an image). In L × L blocks through transpose_block where
/// it exists (a null row reads an L-wide block of zeros), the rest element by element.
template <class T, class Arch>
inline void transpose_rows(const T* const* rows, index d, T s, T* dst, index ld) {
  using V = vec_t<T, Arch>;
  constexpr int L = lanes_v<T, Arch>;
  index c0 = 0;
  if constexpr (has_transpose<T, Arch>) {
    alignas(kAlign) static constexpr T kZeros[L] = {};
    const V sv = bcast<V>(s);
    for (; c0 + L <= d; c0 += L) {
      const T* src[L];
      V col[L];
      for (int l = 0; l < L; ++l) src[l] = rows[l] ? rows[l] + c0 : kZeros;
      transpose_block<T, Arch>(src, col);
      XATTN_UNROLL for (int c = 0; c < L; ++c) storeu(dst + (c0 + c) * ld, col[c] * sv);
    }
  }
  for (; c0 < d; ++c0)
    for (int l = 0; l < L; ++l) dst[c0 * ld + l] = rows[l] ? rows[l][c0] * s : T(0);
}

/// Whether shift_in exists: float and double on AVX-512 (valignd / valignq, one lane-crossing
/// shuffle). AVX2 has no such shuffle across its two 128-bit halves.
#if defined(__AVX512F__)
template <class T, class Arch>
inline constexpr bool has_shift = (std::is_same_v<T, float> || std::is_same_v<T, double>) &&
                                  std::is_base_of_v<xsimd::avx512f, Arch>;
#else
template <class T, class Arch>
inline constexpr bool has_shift = false;
#endif

/// Lanes N … L−1 of a followed by lanes 0 … N−1 of b: the vector at x + N when a = x[0 : L] and
/// b = x[L : 2L]. One shuffle in place of an unaligned load, which crosses a cache line for most N
/// (the 2-D neighborhood's scores load each key row at every column offset).
template <int N, class T, class Arch>
inline vec_t<T, Arch> shift_in([[maybe_unused]] const vec_t<T, Arch>& a, [[maybe_unused]] const vec_t<T, Arch>& b) {
  static_assert(has_shift<T, Arch>, "shift_in: AVX-512 only (see has_shift)");
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(b), _mm512_castps_si512(a), N));
  else
    return _mm512_castsi512_pd(_mm512_alignr_epi64(_mm512_castpd_si512(b), _mm512_castpd_si512(a), N));
#endif
}

}  // namespace xattn::simd
