// xattn/paths.hpp — which units the products of a 16-bit call run on, chosen at run time from what
// the CPU and the OS allow (not from the compile flags: a library built for x86-64-v4 uses AMX on
// a machine that has it).
//
//   product_path::amx_bf16  AMX tiles (tdpbf16ps), where CPUID reports AMX-TILE and AMX-BF16, XCR0
//                           enables the tile state and Linux grants it (arch_prctl
//                           ARCH_REQ_XCOMP_PERM, asked once per process on first use). Taken by
//                           the tile engine's prefill blocks (softmax, sliding window, sparse: more
//                           than 16 query rows per K/V head) when q, k and v hold bfloat16, or when
//                           the options ask for compute = bf16: QKᵀ and P·V on bf16 operands, P
//                           rounded to bfloat16, every sum in float. The product of each row is
//                           then off by about bf16's rounding of P (relative 2^-9 per term). Also
//                           the chunk engine: lightning attention and linear attention with the
//                           identity map and no normaliser (d, dv and the block size multiples of
//                           32), with P and the state rounded to bf16 for their products.
//   product_path::fp32      everything else: 16-bit rows are converted to float where tiles are
//                           copied and the float micro-kernels run (AVX-512, AVX2, NEON, scalar).
//                           Decode (a few query rows against a cache) always runs here: it is bound
//                           by the bytes it reads, which a 16-bit cache halves. So do the 2-D
//                           neighborhood (its row-stencil kernel converts rows as it loads them),
//                           the chunk engine's other shapes and maps, and half storage.
//
// bf16_product_path() says which one a call would take now; limit_product_path() caps it for the
// whole process (tests and benchmarks compare the paths that way).
#pragma once

#include <atomic>

#include "core/amx.hpp"
#include "core/cpu.hpp"
#include "core/simd.hpp"

namespace xattn {

enum class product_path : int { fp32 = 0, amx_bf16 = 2 };

inline const char* path_name(product_path p) { return p == product_path::amx_bf16 ? "amx-bf16" : "fp32"; }

/// The best path this CPU and OS allow to kernels of architecture Arch (the default: the one the
/// compile flags give, as the front doors use): AMX needs an AVX-512 build to carry its kernels.
/// (A template, so that translation units built with different flags each get their own answer.)
template <class Arch = simd::default_arch>
product_path best_product_path() {
  constexpr bool carried = detail::amx::built && simd::lanes_v<float, Arch> == 16;
  return carried && detail::cpu_has_amx_bf16() ? product_path::amx_bf16 : product_path::fp32;
}

namespace detail {
inline std::atomic<int>& product_path_cap() {
  static std::atomic<int> cap{static_cast<int>(product_path::amx_bf16)};
  return cap;
}
}  // namespace detail

/// Caps the path of every later call in this process (product_path::fp32 turns the bf16 units off).
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
