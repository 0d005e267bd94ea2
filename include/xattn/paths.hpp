// xattn/paths.hpp — which units the products of a 16-bit call run on, chosen at run time from what
// the CPU and the OS allow (not from the compile flags: a library built for x86-64-v4 uses AMX on
// a machine that has it).
//
//   product_path::amx_bf16     AMX tiles (tdpbf16ps), where CPUID reports AMX-TILE and AMX-BF16,
//                              XCR0 enables the tile state and Linux grants it (arch_prctl
//                              ARCH_REQ_XCOMP_PERM, asked once per process on first use).
//   product_path::avx512_bf16  AVX512-BF16 dot products (vdpbf16ps), where CPUID reports
//                              AVX512_BF16 and the OS saves the zmm state, and AMX is not there
//                              (AMD Zen 4 and 5, where vdpbf16ps runs at twice the fp32 FMA rate;
//                              on Intel's Xeons it runs at about half the FMA rate, so they take AMX).
//   product_path::fp32         everything else: 16-bit rows are converted to float where tiles are
//                              copied and the float micro-kernels run (AVX-512, AVX2, NEON, scalar).
//
// The two bf16 paths compute the same thing from the same packed operands (core/amx.hpp,
// core/dpbf16.hpp) and take the same calls:
//   - the tile engine's prefill blocks (softmax, sliding window, sparse: more than 16 query rows per
//     K/V head) when q, k and v hold bfloat16, or when the options ask for compute = bf16: QKᵀ and
//     P·V on bf16 operands, P rounded to bfloat16, every sum in float. The product of each row is
//     then off by about bf16's rounding of P (relative 2^-9 per term);
//   - the chunk engine: lightning attention and linear attention with the identity map and no
//     normaliser (d, dv and the block size multiples of 32), with P and the state rounded to bf16
//     for their products.
// Their results differ only in the order of the float sums. The rest runs on the fp32 path: decode
// (a few query rows against a cache) is bound by the bytes it reads, which a 16-bit cache halves;
// the 2-D neighborhood (its row-stencil kernel converts rows as it loads them); the chunk engine's
// other shapes and maps; half storage without compute = bf16.
//
// bf16_product_path() says which one a call would take now; limit_product_path() caps it for the
// whole process (tests and benchmarks compare the paths that way: the order is fp32 <
// avx512_bf16 < amx_bf16, so a cap of avx512_bf16 runs the dot-product path on an AMX machine).
#pragma once

#include <atomic>

#include "core/amx.hpp"
#include "core/dpbf16.hpp"
#include "core/cpu.hpp"
#include "core/simd.hpp"

namespace xattn {

enum class product_path : int { fp32 = 0, avx512_bf16 = 1, amx_bf16 = 2 };

inline const char* path_name(product_path p) {
  return p == product_path::amx_bf16 ? "amx-bf16" : p == product_path::avx512_bf16 ? "avx512-bf16" : "fp32";
}

/// The best path this CPU and OS allow to kernels of architecture Arch (the default: the one the
/// compile flags give, as the front doors use): both bf16 paths need an AVX-512 build to carry
/// their kernels. (A template, so that translation units built with different flags each get
/// their own answer.)
template <class Arch = simd::default_arch>
product_path best_product_path() {
  constexpr bool carried = detail::amx::built && simd::lanes_v<float, Arch> == 16;
  if (!carried) return product_path::fp32;
  if (detail::cpu_has_amx_bf16()) return product_path::amx_bf16;
  return detail::cpu_has_avx512_bf16() ? product_path::avx512_bf16 : product_path::fp32;
}

namespace detail {
inline std::atomic<int>& product_path_cap() {
  static std::atomic<int> cap{static_cast<int>(product_path::amx_bf16)};
  return cap;
}
}  // namespace detail

/// Caps the path of every later call in this process (product_path::fp32 turns the bf16 units off;
/// avx512_bf16 keeps an AMX machine on the dot products). A cap above what the CPU has changes nothing.
inline void limit_product_path(product_path cap) {
  detail::product_path_cap().store(static_cast<int>(cap), std::memory_order_relaxed);
}

/// The path a call with bfloat16 q, k and v (or compute = bf16) takes now: the best one, within the cap.
template <class Arch = simd::default_arch>
product_path bf16_product_path() {
  const int best = static_cast<int>(best_product_path<Arch>());
  const int cap = detail::product_path_cap().load(std::memory_order_relaxed);
  return static_cast<product_path>(best < cap ? best : cap);
}

}  // namespace xattn
