// tests/paths_util.hpp — the product paths of this machine (xattn/paths.hpp) and a guard that caps
// the process-wide path for a scope, for the tests that run every path.
#pragma once

#include <vector>

#include <xattn/paths.hpp>

namespace xattn_test {

/// The product paths this machine has: fp32 always, avx512-bf16 where the CPU has AVX512-BF16 (an
/// AMX machine too: a cap below AMX takes it), amx-bf16 where the CPU and the OS allow it.
inline std::vector<xattn::product_path> machine_paths() {
  std::vector<xattn::product_path> p{xattn::product_path::fp32};
  const xattn::product_path best = xattn::best_product_path();
  if (best != xattn::product_path::fp32 && xattn::detail::cpu_has_avx512_bf16())
    p.push_back(xattn::product_path::avx512_bf16);
  if (best == xattn::product_path::amx_bf16) p.push_back(xattn::product_path::amx_bf16);
  return p;
}

/// The bf16 product paths of this machine (machine_paths() without fp32).
inline std::vector<xattn::product_path> bf16_paths() {
  std::vector<xattn::product_path> p = machine_paths();
  p.erase(p.begin());
  return p;
}

/// Caps the product path for its lifetime and restores the cap it found (also when a test fails
/// by an exception or a fatal assertion).
class path_cap {
 public:
  explicit path_cap(xattn::product_path p) : saved_(xattn::detail::product_path_cap().load()) {
    xattn::limit_product_path(p);
  }
  ~path_cap() { xattn::limit_product_path(static_cast<xattn::product_path>(saved_)); }
  path_cap(const path_cap&) = delete;
  path_cap& operator=(const path_cap&) = delete;

 private:
  int saved_;
};

}  // namespace xattn_test
