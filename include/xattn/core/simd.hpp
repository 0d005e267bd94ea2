// xattn/core/simd.hpp — the few vector operations the engines use, over xsimd 8.x batches or plain
// scalars. Kernels are templated on an architecture tag: an xsimd arch (avx512bw, fma3<avx2>, neon64,
// ...) or `simd::scalar` where xsimd has none (or when XATTN_SCALAR is defined). Differences
// between xsimd versions (hadd in 8.x, reduce_add later) are hidden here and nowhere else.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <xsimd/xsimd.hpp>
#include <unsupported/Eigen/CXX11/Tensor>  // Eigen::bfloat16, Eigen::half

#include "constants.hpp"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace xattn::simd {

/// The architecture tag of the scalar path.
struct scalar {};

#if defined(XATTN_SCALAR)
using default_arch = scalar;
#else
using default_arch = std::conditional_t<std::is_same_v<xsimd::default_arch, xsimd::unavailable>, scalar,
                                        xsimd::default_arch>;
#endif

template <class T, class Arch>
struct traits {
  using vec = xsimd::batch<T, Arch>;
  static constexpr int lanes = static_cast<int>(vec::size);
  static constexpr int registers = sizeof(vec) >= 64 ? 32 : 16;  // AVX-512 has 32 vector registers
};
template <class T>
struct traits<T, scalar> {
  using vec = T;
  static constexpr int lanes = 1;
  static constexpr int registers = 16;
};

template <class T, class Arch>
using vec_t = typename traits<T, Arch>::vec;
template <class T, class Arch>
inline constexpr int lanes_v = traits<T, Arch>::lanes;

/// Alignment of packed panels: one cache line, which covers every vector width.
inline constexpr std::size_t kAlign = 64;

/// Put before a loop over a compile-time count of registers (micro-tile rows, vectors): it must be
/// unrolled so that its arrays of vectors live in registers. g++ 12 unrolls them fully at -O3 but
/// not at -O2 (CMake's RelWithDebInfo), where the accumulators went to the stack and the kernels
/// ran 5–6× slower.
#if defined(__clang__)
#define XATTN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define XATTN_UNROLL _Pragma("GCC unroll 64")
#else
#define XATTN_UNROLL
#endif

template <class T> inline constexpr bool is_scalar_v = std::is_floating_point_v<T>;
template <class V> struct elem { using type = typename V::value_type; };
template <> struct elem<float> { using type = float; };
template <> struct elem<double> { using type = double; };
template <class V> using elem_t = typename elem<V>::type;

template <class V> inline V load(const elem_t<V>* p) {  // aligned
  if constexpr (is_scalar_v<V>) return *p; else return V::load_aligned(p);
}
template <class V> inline V loadu(const elem_t<V>* p) {
  if constexpr (is_scalar_v<V>) return *p; else return V::load_unaligned(p);
}
template <class V> inline void store(elem_t<V>* p, const V& v) {  // aligned
  if constexpr (is_scalar_v<V>) *p = v; else v.store_aligned(p);
}
template <class V> inline void storeu(elem_t<V>* p, const V& v) {
  if constexpr (is_scalar_v<V>) *p = v; else v.store_unaligned(p);
}
/// A vector of V's element type from lanes_v consecutive values of storage type S (the same type,
/// Eigen::bfloat16 or Eigen::half), unaligned: the 16-bit types are widened in registers (bf16 by
/// a shift, half by F16C), so a micro-kernel reads a 16-bit cache where it lies.
template <class V, class S> inline V loadu_from(const S* p) {
  using T = elem_t<V>;
  if constexpr (std::is_same_v<S, T>) {
    return loadu<V>(p);
  } else if constexpr (is_scalar_v<V>) {
    return T(static_cast<float>(*p));
  } else {
    [[maybe_unused]] const void* raw = p;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float> && sizeof(V) == 64) {
      const __m256i h = _mm256_loadu_si256(static_cast<const __m256i*>(raw));
      if constexpr (std::is_same_v<S, Eigen::bfloat16>) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      else return _mm512_cvtph_ps(h);
    }
#endif
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float> && sizeof(V) == 32) {
      const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(raw));
      if constexpr (std::is_same_v<S, Eigen::bfloat16>) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#if defined(__F16C__)
      else return _mm256_cvtph_ps(h);
#endif
    }
#endif
    alignas(kAlign) T t[V::size];
    for (std::size_t i = 0; i < V::size; ++i) t[i] = T(static_cast<float>(p[i]));
    return V::load_aligned(t);
  }
}

/// An aligned store that bypasses the caches (x86: vmovntps/pd, whole lines written without reading
/// them first); an ordinary aligned store elsewhere. Call stream_fence() before the data is handed
/// to another thread.
template <class V> inline void stream(elem_t<V>* p, const V& v) {
  using T = elem_t<V>;
  if constexpr (is_scalar_v<V>) {
    *p = v;
  } else {
#if defined(__AVX512F__)
    if constexpr (sizeof(V) == 64) {
      if constexpr (std::is_same_v<T, float>) return _mm512_stream_ps(p, v); else return _mm512_stream_pd(p, v);
    }
#endif
#if defined(__AVX__)
    if constexpr (sizeof(V) == 32) {
      if constexpr (std::is_same_v<T, float>) return _mm256_stream_ps(p, v); else return _mm256_stream_pd(p, v);
    }
#endif
    v.store_aligned(p);
  }
}
inline void stream_fence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}
template <class V> inline V bcast(elem_t<V> x) {
  if constexpr (is_scalar_v<V>) return x; else return V(x);
}
/// A vector loaded once for several FMAs stays in a register: without this g++ 12 folds every use
/// into the FMA's memory operand, so one load becomes several and the micro-kernels run out of
/// load slots (dot_abt measured 53 % of the FMA peak in L1 that way). An empty asm with the value
/// as a register operand makes the value opaque, so the load cannot be repeated.
template <class V> inline V in_register(V x) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  if constexpr (!is_scalar_v<V>) asm("" : "+v"(x.data));
#endif
  return x;
}
template <class V> inline V fma(const V& a, const V& b, const V& c) {
  if constexpr (is_scalar_v<V>) return std::fma(a, b, c); else return xsimd::fma(a, b, c);
}
template <class V> inline V max(const V& a, const V& b) {
  if constexpr (is_scalar_v<V>) return a > b ? a : b; else return xsimd::max(a, b);
}
template <class V> inline V abs(const V& a) {
  if constexpr (is_scalar_v<V>) return std::abs(a); else return xsimd::abs(a);
}
template <class V> inline V tanh(const V& a) {
  if constexpr (is_scalar_v<V>) return std::tanh(a); else return xsimd::tanh(a);
}
/// lanes where lo <= x <= hi keep `v`, the others get `fill`.
template <class V> inline V keep_between(const V& x, const V& lo, const V& hi, const V& v, const V& fill) {
  if constexpr (is_scalar_v<V>) return (x >= lo && x <= hi) ? v : fill;
  else return xsimd::select((x >= lo) && (x <= hi), v, fill);
}
/// dst[i] = s·src[i] for i < n, in vectors of V (unaligned) and a scalar tail. Written out, not
/// left to the compiler: GCC vectorizes such a loop at -O3 only, and consumers build at -O2 too
/// (docs/tuning-notes.md).
template <class V> inline void scale_copy(elem_t<V>* dst, const elem_t<V>* src, std::ptrdiff_t n, elem_t<V> s) {
  std::ptrdiff_t i = 0;
  if constexpr (!is_scalar_v<V>) {
    constexpr std::ptrdiff_t L = V::size;
    const V sv = V(s);
    for (; i + L <= n; i += L) storeu(dst + i, sv * loadu<V>(src + i));
  }
  for (; i < n; ++i) dst[i] = s * src[i];
}
/// lanes where x < lo get 0, the others keep x.
template <class V> inline V zero_below(const V& x, elem_t<V> lo) {
  if constexpr (is_scalar_v<V>) return x < lo ? V(0) : x;
  else return xsimd::select(x < V(lo), V(0), x);
}
/// lanes where x == -inf get `fill`, the others keep x.
template <class V> inline V replace_neg_inf(const V& x, const V& fill) {
  const auto ninf = -std::numeric_limits<elem_t<V>>::infinity();
  if constexpr (is_scalar_v<V>) return x == ninf ? fill : x;
  else return xsimd::select(x == V(ninf), fill, x);
}
template <class V> inline elem_t<V> hsum(const V& v) {
  if constexpr (is_scalar_v<V>) return v; else return xsimd::hadd(v);  // xsimd ≥ 11: reduce_add
}
/// The lane-wise sums of `lanes` vectors: result[i] = Σ rows[i].
template <class V> inline V haddp(const V* rows) {
  if constexpr (is_scalar_v<V>) {
    return rows[0];
  } else {
#if XSIMD_VERSION_MAJOR == 8
    // xsimd 8.x's AVX-512 float haddp returns the sums in the lane order 0 1 4 5 2 3 6 7 8 9 12 13
    // 10 11 14 15; the order is its own inverse, so permuting the inputs the same way fixes it.
    // (tests/test_core.cpp checks the order on every build.)
    if constexpr (std::is_same_v<elem_t<V>, float> && V::size == 16) {
      constexpr int kOrder[16] = {0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15};
      V p[16];
      XATTN_UNROLL for (int i = 0; i < 16; ++i) p[i] = rows[kOrder[i]];
      return xsimd::haddp(p);
    }
#endif
    return xsimd::haddp(rows);
  }
}
template <class V> inline elem_t<V> hmax(const V& v) {
  if constexpr (is_scalar_v<V>) {
    return v;
  } else {
    alignas(kAlign) elem_t<V> t[V::size];
    v.store_aligned(t);
    return *std::max_element(t, t + V::size);
  }
}

/// Asks for the cache lines of [p, p + bytes) ahead of use, into L2 (a hint; never faults). L2 has
/// more miss buffers than L1, so more lines stay in flight. On x86 this is an asm statement: g++ 12
/// at -O1 and above deletes __builtin_prefetch calls inlined into the tile loops (seen in its
/// optimized tree dump), which left every prefetch of the engine silently out.
inline void prefetch(const void* p, std::size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (std::size_t i = 0; i < bytes; i += 64) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    asm volatile("prefetcht1 %0" : : "m"(*(c + i)));
#elif defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(c + i, 0, 2);
#else
    (void)c;
#endif
  }
}
/// 2^x for x <= 0 (softmax exponents after subtracting the running max), exactly 0 below 2^-126
/// (2^-1022 for double) and at -inf. Float: n = round(x), f = x − n ∈ [−½, ½], 2^f by its degree-6 Taylor polynomial
/// (relative error 1.2e-7, below float's 6e-8·2 ulp), 2^n by adding n to the exponent bits: eight
/// FMA-port instructions per vector where xsimd::exp costs about twice that. Double: xsimd::exp2.
template <class V> inline V exp2(const V& x) {
  using T = elem_t<V>;
  if constexpr (is_scalar_v<V>) {
    return x < (std::is_same_v<T, float> ? T(-126) : T(-1022)) ? T(0) : std::exp2(x);
  } else if constexpr (std::is_same_v<T, double>) {
    return xsimd::select(x < V(-1022.0), V(0.0), xsimd::exp2(x));
  } else {
    constexpr float kLn2 = float(detail::kLn2);
    constexpr float c6 = kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 720.f;
    constexpr float c5 = kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 120.f;
    constexpr float c4 = kLn2 * kLn2 * kLn2 * kLn2 / 24.f;
    constexpr float c3 = kLn2 * kLn2 * kLn2 / 6.f;
    constexpr float c2 = kLn2 * kLn2 / 2.f;
    // Keeps the exponent arithmetic in range (−inf → −127). The constant goes first: x86's max
    // returns its second operand when either is NaN, so a NaN stays NaN (2^NaN = NaN) instead of
    // becoming 2^−127 ≈ 0, which would drop a NaN score from a row (tests/test_core.cpp checks it).
    const V xc = xsimd::max(V(-127.f), x);
    const V n = xsimd::nearbyint(xc);
    const V f = xc - n;
    V p = xsimd::fma(V(c6), f, V(c5));
    p = xsimd::fma(p, f, V(c4));
    p = xsimd::fma(p, f, V(c3));
    p = xsimd::fma(p, f, V(c2));
    p = xsimd::fma(p, f, V(kLn2));
    p = xsimd::fma(p, f, V(1.f));
    using I = xsimd::batch<std::int32_t, typename V::arch_type>;
    const I bits = xsimd::bitwise_cast<I>(p) + (xsimd::to_int(n) << 23);  // p·2^n
    return xsimd::select(x < V(-126.f), V(0.f), xsimd::bitwise_cast<V>(bits));
  }
}

}  // namespace xattn::simd
