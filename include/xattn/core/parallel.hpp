// xattn/core/parallel.hpp — the one way xattn runs work in parallel: a caller's
// Eigen::ThreadPoolDevice (or anything with numThreads() and enqueueNoNotification), or the calling
// thread alone. Items are handed out dynamically from an atomic counter, so uneven items (causal
// query blocks) balance themselves; each item is computed by one thread from start to end, so the
// result does not depend on the thread count, bit for bit.
//
// The calling thread claims items too, and waits only for items that a pool thread has actually
// started: tasks that are still queued when the items run out find nothing to do and return. So a
// call made from a task running on the same pool (a serving loop whose requests run on the pool
// that also runs the kernels), or from many such tasks at once, always completes, even when every
// pool thread is busy: the caller then computes every item itself.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <exception>
#include <memory>
#include <mutex>
#include <unsupported/Eigen/CXX11/ThreadPool>

#include "../options.hpp"
#include "error.hpp"

namespace xattn {
namespace detail {

/// Runs on the calling thread only.
struct serial_device {
  int numThreads() const { return 1; }
  template <class F>
  void enqueueNoNotification(F&&) const {}  // never called: one thread
};

/// Calls f(item) for every item in [0, n), each exactly once, spread over the device's threads;
/// the calling thread works too and returns when all items are done.
///
/// An exception thrown by f on any thread stops the handing out of further items (the ones not
/// yet started are skipped), the started ones finish, and the first exception is rethrown on the
/// calling thread.
///
/// from_both_ends: with exactly two workers, claims 0, 2, 4, … are items 0, 1, 2, … and claims
/// 1, 3, 5, … items n − 1, n − 2, …, so that each thread mostly walks one end of the list in the
/// one-thread order (consecutive items that share data: a window's neighbouring query blocks, a
/// neighborhood strip's K/V heads), instead of every other item. One worker, or more than two, take
/// the items in order.
template <class Device, class F>
void parallel_for(const Device& dev, index n, const F& f, bool from_both_ends = false) {
  if (n <= 0) return;
  const int workers = static_cast<int>(std::min<index>(std::max(1, dev.numThreads()), n));
  if (workers <= 1) {
    for (index i = 0; i < n; ++i) f(i);
    return;
  }
  // Shared with the queued tasks, which may start after this call has returned (they then find
  // `next` past n and touch nothing else). `f` is used only by a task that claimed an item, and
  // this call does not return before every claimed item is counted in `done`.
  struct state {
    std::atomic<index> next{0}, done{0};
    std::atomic<bool> failed{false};
    std::mutex m;
    std::exception_ptr error;
  };
  const auto st = std::make_shared<state>();
  const bool ends = from_both_ends && workers == 2;
  auto work = [st, n, ends, fp = &f] {
    for (index i = st->next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = st->next.fetch_add(1, std::memory_order_relaxed)) {
      if (!st->failed.load(std::memory_order_relaxed)) {
        try {
          (*fp)(!ends ? i : i % 2 == 0 ? i / 2 : n - 1 - i / 2);
        } catch (...) {
          const std::lock_guard<std::mutex> lock(st->m);
          if (!st->error) st->error = std::current_exception();
          st->failed.store(true, std::memory_order_relaxed);
        }
      }
      // release: the item's writes are visible to the caller once it sees the count
      if (st->done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) st->done.notify_all();
    }
  };
  for (int t = 1; t < workers; ++t) dev.enqueueNoNotification(work);
  work();
  for (index c = st->done.load(std::memory_order_acquire); c != n; c = st->done.load(std::memory_order_acquire))
    st->done.wait(c, std::memory_order_acquire);
  if (st->error) std::rethrow_exception(st->error);
}

}  // namespace detail
}  // namespace xattn
