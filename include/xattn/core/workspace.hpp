// xattn/core/workspace.hpp — per-thread scratch that outlives a call. Touching fresh memory costs
// about 10 µs per 4 KiB page on these machines, so each thread keeps one aligned buffer that only
// grows, and calls reuse it instead of allocating in their hot path.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#include "simd.hpp"

namespace xattn::detail {

class workspace {
 public:
  /// At least `bytes` of kAlign-aligned scratch; contents are unspecified.
  void* get(std::size_t bytes) {
    if (bytes > size_) {
      bytes = (bytes + 4095) & ~std::size_t{4095};
      buf_.reset(static_cast<std::byte*>(::operator new(bytes, std::align_val_t{simd::kAlign})));
      size_ = bytes;
    }
    return buf_.get();
  }
  /// This thread's workspace number `slot` (a call that needs two buffers at once uses two slots):
  /// 0 the engines' per-item scratch; 1 the tables of the chunk engines and the partials of split
  /// decode, or softmax backward's float copies of 16-bit tensors; 2 the patch-ordered copies of the
  /// 2-D neighborhood backward, or linear backward's mapped rows; 3 the chunk backward passes' float
  /// copies of 16-bit tensors, or softmax backward's partial sums of the ALiBi slopes' gradient.
  static workspace& of_this_thread(int slot = 0) {
    thread_local workspace ws[4];
    return ws[slot];
  }

 private:
  struct deleter {
    void operator()(std::byte* p) const { ::operator delete(p, std::align_val_t{simd::kAlign}); }
  };
  std::unique_ptr<std::byte, deleter> buf_;
  std::size_t size_ = 0;
};

}  // namespace xattn::detail
