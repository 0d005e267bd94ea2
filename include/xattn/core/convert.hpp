// xattn/core/convert.hpp — the element types a tensor may hold, and the row conversions between
// them and the engines' compute type. 16-bit storage (Eigen::bfloat16, Eigen::half) enters an
// engine only where a tile is copied (load_row) and leaves it where a row is written (store_row);
// everything between runs in float. Rounding to 16 bits is to nearest, ties to even, as Eigen's own
// conversions (and bitwise equal to them, NaN included), so a test can round its operands with
// Eigen and get what the kernels get.
//
// The vector paths use the intrinsics the translation unit is compiled for (AVX-512F, or AVX2 with
// F16C for half); the scalar loop is the reference and the fallback.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>

#include "error.hpp"  // detail::index

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace xattn::detail {

/// What a tensor holds in memory.
/// (Element types of a call: q, k and v each float, Eigen::bfloat16 or Eigen::half, computed in
/// float; out float or the 16-bit type of q; or all four double.)
enum class elem : std::uint8_t { f32, f64, bf16, f16 };

template <class S>
inline constexpr bool is_16bit_v = std::is_same_v<S, Eigen::bfloat16> || std::is_same_v<S, Eigen::half>;
template <class S>
inline constexpr bool is_storage_v = std::is_same_v<S, float> || std::is_same_v<S, double> || is_16bit_v<S>;

template <class S>
constexpr elem elem_of() {
  static_assert(is_storage_v<S>, "xattn: tensors hold float, double, Eigen::bfloat16 or Eigen::half");
  if constexpr (std::is_same_v<S, float>) return elem::f32;
  else if constexpr (std::is_same_v<S, double>) return elem::f64;
  else if constexpr (std::is_same_v<S, Eigen::bfloat16>) return elem::bf16;
  else return elem::f16;
}
/// The compute type of a call over these storage types (see the rule above); other mixes do not
/// compile.
template <class SQ, class SK, class SV, class SO>
struct compute_type {
  static constexpr bool all_double = std::is_same_v<SQ, double> && std::is_same_v<SK, double> &&
                                     std::is_same_v<SV, double> && std::is_same_v<SO, double>;
  template <class S>
  static constexpr bool narrow = std::is_same_v<S, float> || is_16bit_v<S>;
  static_assert(all_double || (narrow<SQ> && narrow<SK> && narrow<SV>),
                "xattn: q, k and v hold float, Eigen::bfloat16 or Eigen::half (or all of q, k, v, out double)");
  static_assert(all_double || std::is_same_v<SO, float> || (is_16bit_v<SQ> && std::is_same_v<SO, SQ>),
                "xattn: out holds float, or the 16-bit type of q");
  using type = std::conditional_t<all_double, double, float>;
};
template <class SQ, class SK, class SV, class SO>
using compute_t = typename compute_type<SQ, SK, SV, SO>::type;

/// Do q, k, v and out all hold float or double (no 16-bit storage)? The fp64 references read rows
/// in place and need it.
template <class Q, class K, class V, class O>
inline constexpr bool native_storage_v =
    !is_16bit_v<std::remove_const_t<typename std::remove_cvref_t<Q>::Scalar>> &&
    !is_16bit_v<std::remove_const_t<typename std::remove_cvref_t<K>::Scalar>> &&
    !is_16bit_v<std::remove_const_t<typename std::remove_cvref_t<V>::Scalar>> &&
    !is_16bit_v<std::remove_const_t<typename std::remove_cvref_t<O>::Scalar>>;

constexpr std::size_t elem_bytes(elem e) { return e == elem::f64 ? 8 : e == elem::f32 ? 4 : 2; }
constexpr const char* elem_name(elem e) {
  return e == elem::f32 ? "float" : e == elem::f64 ? "double" : e == elem::bf16 ? "bfloat16" : "half";
}
constexpr bool is_16bit(elem e) { return e == elem::bf16 || e == elem::f16; }

/// f(std::type_identity<S>{}) for the storage type S that `e` names, T being the compute type
/// (16-bit storage exists for float compute only).
template <class T, class F>
decltype(auto) visit_storage(elem e, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    if (e == elem::bf16) return f(std::type_identity<Eigen::bfloat16>{});
    if (e == elem::f16) return f(std::type_identity<Eigen::half>{});
  }
  return f(std::type_identity<T>{});
}

inline float bf16_to_float(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline std::uint16_t float_to_bf16(float f) { return Eigen::bfloat16(f).value; }
inline float f16_to_float(std::uint16_t h) {
  return static_cast<float>(Eigen::half(Eigen::half_impl::raw_uint16_to_half(h)));
}
inline std::uint16_t float_to_f16(float f) { return Eigen::half(f).x; }

/// The bf16 bits of 16 floats, rounded to nearest even; NaN → quiet NaN of its sign (Eigen's rule).
#if defined(__AVX512F__)
inline __m256i bf16_round16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512i qnan = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)),
                                       _mm512_set1_epi32(0x7fc0));
  r = _mm512_mask_mov_epi32(r, nan, qnan);
  return _mm512_cvtepi32_epi16(r);
}
#endif

/// dst[i] = scale · src[i] for i < n, src of element type `type` (dst's own type: a copy).
template <class T>
void load_row(T* dst, const void* src, elem type, index n, T scale = T(1)) {
  if (type == elem_of<T>()) {
    const T* s = static_cast<const T*>(src);
    if (scale == T(1)) std::memcpy(dst, s, sizeof(T) * std::size_t(n));
    else for (index i = 0; i < n; ++i) dst[i] = s[i] * scale;
    return;
  }
  const auto* h = static_cast<const std::uint16_t*>(src);
  index i = 0;
  if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX512F__)
    const __m512 sc = _mm512_set1_ps(scale);
    if (type == elem::bf16)
      for (; i + 16 <= n; i += 16) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i)));
        _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), sc));
      }
    else if (type == elem::f16)
      for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i,
                         _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))), sc));
#elif defined(__AVX2__)
    const __m256 sc = _mm256_set1_ps(scale);
    if (type == elem::bf16)
      for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)), sc));
      }
#if defined(__F16C__)
    else if (type == elem::f16)
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i,
                         _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))), sc));
#endif
#endif
  }
  if (type == elem::bf16)
    for (; i < n; ++i) dst[i] = T(bf16_to_float(h[i])) * scale;
  else if (type == elem::f16)
    for (; i < n; ++i) dst[i] = T(f16_to_float(h[i])) * scale;
  else if (type == elem::f32)
    for (const float* f = static_cast<const float*>(src); i < n; ++i) dst[i] = T(f[i]) * scale;
  else
    for (const double* f = static_cast<const double*>(src); i < n; ++i) dst[i] = T(f[i]) * scale;
}

/// dst[i] = scale · src[i] for i < n, rounded to dst's element type `type`.
template <class T>
void store_row(void* dst, elem type, const T* src, index n, T scale = T(1)) {
  if (type == elem_of<T>()) {
    T* d = static_cast<T*>(dst);
    for (index i = 0; i < n; ++i) d[i] = src[i] * scale;
    return;
  }
  auto* h = static_cast<std::uint16_t*>(dst);
  index i = 0;
  if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX512F__)
    const __m512 sc = _mm512_set1_ps(scale);
    if (type == elem::bf16)
      for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i), bf16_round16(_mm512_mul_ps(_mm512_loadu_ps(src + i), sc)));
    else if (type == elem::f16)
      for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i),
                            _mm512_cvtps_ph(_mm512_mul_ps(_mm512_loadu_ps(src + i), sc), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__AVX2__) && defined(__F16C__)
    const __m256 sc = _mm256_set1_ps(scale);
    if (type == elem::f16)
      for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i),
                         _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(src + i), sc), _MM_FROUND_TO_NEAREST_INT));
#endif
  }
  if (type == elem::bf16)
    for (; i < n; ++i) h[i] = float_to_bf16(float(src[i] * scale));
  else if (type == elem::f16)
    for (; i < n; ++i) h[i] = float_to_f16(float(src[i] * scale));
  else if (type == elem::f32)
    for (float* f = static_cast<float*>(dst); i < n; ++i) f[i] = float(src[i] * scale);
  else
    for (double* f = static_cast<double*>(dst); i < n; ++i) f[i] = double(src[i] * scale);
}

}  // namespace xattn::detail
