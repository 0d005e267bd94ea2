// xattn/core/constants.hpp — the numeric constants and the integer helper every part of xattn
// shares, defined once.
#pragma once

#include <cstddef>

namespace xattn::detail {

/// log2(e): exp(x) = 2^(x·log2 e); the kernels fold it into their scales and work in log2 units.
inline constexpr double kLog2e = 1.4426950408889634074;
/// ln(2): a log2-unit log-sum-exp times ln 2 is the natural-log one.
inline constexpr double kLn2 = 0.6931471805599453094;

/// x rounded up to a multiple of m (x >= 0, m > 0).
constexpr std::ptrdiff_t round_up(std::ptrdiff_t x, std::ptrdiff_t m) { return (x + m - 1) / m * m; }

}  // namespace xattn::detail
