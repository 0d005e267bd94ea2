// xattn/core/cpu.hpp — run-time facts about the CPU and the OS that the compile flags cannot tell:
// whether AMX-BF16 tiles, or AVX512-BF16 dot products, may be used by this process.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace xattn::detail {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
inline unsigned long long xgetbv0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

/// Asks CPUID, XCR0 and (on Linux) the kernel, once per process.
inline bool probe_amx_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = (c >> 27) & 1;
  if (!amx_bf16 || !amx_tile || !osxsave) return false;
  const unsigned long long xcr0 = xgetbv0();
  if (((xcr0 >> 17) & 3) != 3) return false;  // XTILECFG and XTILEDATA enabled by the OS
#if defined(__linux__)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) return false;
#endif
  return true;
}

/// AVX512-BF16 (vdpbf16ps, vcvtne2ps2bf16) with AVX-512 F/BW, and the OS saving the zmm state.
inline bool probe_avx512_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return false;  // OSXSAVE
  if ((xgetbv0() & 0xe6) != 0xe6) return false;  // SSE, AVX, opmask, ZMM0–15 upper halves, ZMM16–31
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = (b >> 16) & 1, bw = (b >> 30) & 1;
  if (a < 1 || !f || !bw) return false;  // a: the highest subleaf of leaf 7
  __cpuid_count(7, 1, a, b, c, d);
  return (a >> 5) & 1;
}
#else
inline bool probe_amx_bf16() { return false; }
inline bool probe_avx512_bf16() { return false; }
#endif

/// Whether this process may run AMX-BF16 instructions.
inline bool cpu_has_amx_bf16() {
  static const bool yes = probe_amx_bf16();
  return yes;
}

/// Whether this process may run AVX512-BF16 instructions.
inline bool cpu_has_avx512_bf16() {
  static const bool yes = probe_avx512_bf16();
  return yes;
}

}  // namespace xattn::detail
