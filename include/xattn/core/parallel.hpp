// xattn/core/parallel.hpp — the one way xattn runs work in parallel: a caller's
// Eigen::ThreadPoolDevice (or anything with numThreads() and enqueue_with_barrier), or the calling
// thread alone. Items are handed out dynamically from an atomic counter, so uneven items (causal
// query blocks) balance themselves; each item is computed by one thread from start to end, so the
// result does not depend on the thread count, bit for bit.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <unsupported/Eigen/CXX11/ThreadPool>

#include "error.hpp"

namespace xattn {

/// What the device overloads accept: Eigen::ThreadPoolDevice, or a type with the same two members.
template <class D>
concept thread_pool_device = requires(const D& d, Eigen::Barrier* b) {
  { d.numThreads() } -> std::convertible_to<int>;
  d.enqueue_with_barrier(b, [] {});
};

namespace detail {

/// Runs on the calling thread only.
struct serial_device {
  int numThreads() const { return 1; }
  template <class F>
  void enqueue_with_barrier(Eigen::Barrier*, F&&) const {}  // never called: one thread
};

/// Calls f(item) for every item in [0, n), each exactly once, spread over the device's threads;
/// the calling thread works too and returns when all items are done.
///
/// from_both_ends: with exactly two workers, claims 0, 2, 4, … are items 0, 1, 2, … and claims
/// 1, 3, 5, … items n − 1, n − 2, …, so that each thread mostly walks one end of the list in the
/// one-thread order (consecutive items that share data: a window's neighbouring query blocks, a
/// neighborhood strip's K/V heads), instead of every other item. One worker, or more than two, take
/// the items in order.
template <class Device, class F>
void parallel_for(const Device& dev, index n, const F& f, bool from_both_ends = false) {
  const int workers = static_cast<int>(std::min<index>(std::max(1, dev.numThreads()), n));
  if (workers <= 1) {
    for (index i = 0; i < n; ++i) f(i);
    return;
  }
  const bool ends = from_both_ends && workers == 2;
  std::atomic<index> next{0};
  auto work = [&] {
    for (index i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      f(!ends ? i : i % 2 == 0 ? i / 2 : n - 1 - i / 2);
  };
  Eigen::Barrier done(static_cast<unsigned>(workers - 1));
  for (int t = 1; t < workers; ++t) dev.enqueue_with_barrier(&done, work);
  work();
  done.Wait();
}

}  // namespace detail
}  // namespace xattn
