// xattn/block_layout.hpp — the block layout of sparse attention: for each query block (and
// per head, or shared by all heads) the sorted list of key blocks it visits, as compressed rows
// (CSR), and the builders of the usual patterns. Query block qb holds queries [qb·B, (qb + 1)·B),
// key block kb keys [kb·B, (kb + 1)·B) (B = block_size, the last block of each may be short).
// A small header below both the fast path and the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "core/error.hpp"
#include "core/tensor.hpp"
#include "options.hpp"

namespace xattn {

/// Parameters of block_layout::bigbird (BigBird's ITC pattern, in blocks).
struct bigbird_options {
  std::ptrdiff_t window_blocks = 1;   // key blocks on each side of the diagonal block (BigBird's 3-block window = 1)
  std::ptrdiff_t global_blocks = 1;   // the first global_blocks blocks see, and are seen by, everything
  std::ptrdiff_t random_blocks = 2;   // random key blocks per query block, drawn from the rest
  std::uint64_t seed = 0;    // the same seed gives the same layout
  std::ptrdiff_t heads = 1;           // 1 = shared by all heads; else one random draw per head
  bool causal = false;       // keep only key blocks kb <= the diagonal block
};

/// Parameters of block_layout::longformer.
struct longformer_options {
  std::ptrdiff_t window = 256;                     // tokens on each side of a query (at block granularity); >= 0
  std::span<const std::ptrdiff_t> global_tokens;   // tokens that see, and are seen by, every block
  bool causal = false;                             // keep only key blocks kb <= the diagonal block
};

/// Parameters of block_layout::strided (Sparse Transformer's fixed pattern; causal).
struct strided_options {
  std::ptrdiff_t local_blocks = 4;  // blocks up to and including the diagonal; >= 1
  std::ptrdiff_t stride = 8;        // the last block of every `stride` blocks is a summary block; >= 1
};

/// Parameters of block_layout::streaming (StreamingLLM's sinks and window, in blocks; causal).
struct streaming_layout_options {
  std::ptrdiff_t sink_blocks = 1;    // key blocks [0, sink_blocks) stay visible; >= 0
  std::ptrdiff_t window_blocks = 4;  // blocks up to and including the diagonal; >= 1
};

/// Parameters of block_layout::top_k (SeerAttention / FlexPrefill-style block selection).
struct top_k_options {
  std::ptrdiff_t block_size = 64;     // tokens per block
  std::ptrdiff_t keep = 0;            // keep the `keep` best key blocks per query block (> 0), or
  double mass = 0;           // ...the fewest blocks whose estimated attention mass reaches `mass` (in (0, 1])
  std::ptrdiff_t sink_blocks = 1;     // key blocks [0, sink_blocks) are always kept
  bool causal = false;       // score only key blocks at or before the diagonal block (bottom-right aligned)
  std::optional<double> scale = {};  // of the pooled scores; unset = 1/sqrt(head_dim)
  xattn::layout layout = layout::bshd;
};

class block_layout {
 public:
  using index = std::ptrdiff_t;  // block counts and sizes (a class member: no xattn::index to clash with POSIX index())

  block_layout() = default;

  /// ⌈n / b⌉ blocks of b (b > 0) for n >= 0 items, without the overflow of n + b − 1.
  static index blocks_of(index n, index b) { return n <= 0 ? 0 : (n - 1) / b + 1; }

  /// From compressed rows: row r = h·q_blocks + qb lists key blocks cols[row_ptr[r] .. row_ptr[r+1]),
  /// strictly increasing, in [0, k_blocks). heads = 1 shares the rows among all heads. Throws
  /// xattn::error naming the inconsistency.
  block_layout(index block_size, index heads, index q_blocks, index k_blocks, std::vector<index> row_ptr,
               std::vector<int> cols)
      : block_(block_size), heads_(heads), qb_(q_blocks), kb_(k_blocks), row_ptr_(std::move(row_ptr)), cols_(std::move(cols)) {
    validate("xattn::block_layout");
  }

  /// From a dense boolean block mask [heads][q_blocks][k_blocks] (row-major), true = visit.
  static block_layout from_mask(index block_size, index heads, index q_blocks, index k_blocks, std::span<const bool> mask) {
    detail::require(static_cast<index>(mask.size()) == heads * q_blocks * k_blocks, "xattn::block_layout::from_mask",
                    "mask", "has ", mask.size(), " entries, expected heads × q_blocks × k_blocks = ",
                    heads * q_blocks * k_blocks);
    std::vector<index> ptr{0};
    std::vector<int> cols;
    for (index r = 0; r < heads * q_blocks; ++r) {
      for (index c = 0; c < k_blocks; ++c)
        if (mask[static_cast<std::size_t>(r * k_blocks + c)]) cols.push_back(int(c));
      ptr.push_back(index(cols.size()));
    }
    return block_layout(block_size, heads, q_blocks, k_blocks, std::move(ptr), std::move(cols));
  }

  /// Every key block for every query block.
  static block_layout dense(index nq, index nk, index block_size) {
    return build(nq, nk, block_size, 1, [](index, index, index, std::vector<bool>& row) { row.assign(row.size(), true); });
  }

  /// BigBird: a window around the diagonal block, global blocks, and random blocks drawn with `seed`.
  static block_layout bigbird(index nq, index nk, index block_size, const bigbird_options& o) {
    const char* fn = "xattn::block_layout::bigbird";
    detail::require(o.window_blocks >= 0, fn, "window_blocks", "must be >= 0, got ", o.window_blocks);
    detail::require(o.global_blocks >= 0, fn, "global_blocks", "must be >= 0, got ", o.global_blocks);
    detail::require(o.random_blocks >= 0, fn, "random_blocks", "must be >= 0, got ", o.random_blocks);
    detail::require(o.heads >= 1, fn, "heads", "must be >= 1, got ", o.heads);
    std::mt19937_64 rng(o.seed);
    return build(nq, nk, block_size, o.heads, [&](index, index qb, index diag, std::vector<bool>& row) {
      const index kbs = index(row.size());
      const index hi = o.causal ? std::min(diag, kbs - 1) : kbs - 1;
      const index wb = std::min(o.window_blocks, kbs);  // (a larger window adds nothing, and diag + it could overflow)
      for (index c = std::max<index>(0, diag - wb); c <= std::min(hi, diag + wb); ++c) row[c] = true;
      for (index c = 0; c < std::min(o.global_blocks, hi + 1); ++c) row[c] = true;
      if (qb < o.global_blocks)
        for (index c = 0; c <= hi; ++c) row[c] = true;
      std::vector<index> rest;
      for (index c = 0; c <= hi; ++c)
        if (!row[c]) rest.push_back(c);
      for (index n = 0; n < std::min<index>(o.random_blocks, index(rest.size())); ++n) {
        std::uniform_int_distribution<index> pick(n, index(rest.size()) - 1);  // partial Fisher–Yates
        std::swap(rest[n], rest[pick(rng)]);
        row[rest[n]] = true;
      }
    });
  }

  /// Longformer: a sliding window of `window` tokens on each side (at block granularity), and global
  /// tokens: the blocks holding them see, and are seen by, every block.
  static block_layout longformer(index nq, index nk, index block_size, index window, std::span<const index> global_tokens,
                                 bool causal = false) {
    const char* fn = "xattn::block_layout::longformer";
    detail::require(window >= 0, fn, "window", "must be >= 0, got ", window);
    for (index g : global_tokens)
      detail::require(g >= 0 && g < std::min(nq, nk), fn, "global_tokens", "token ", g, " outside [0, ", std::min(nq, nk), ")");
    const index wb = blocks_of(window, block_size);
    return build(nq, nk, block_size, 1, [&](index, index qb, index diag, std::vector<bool>& row) {
      const index hi = causal ? std::min(diag, index(row.size()) - 1) : index(row.size()) - 1;
      const index w = std::min(wb, index(row.size()));  // (a larger window adds nothing, and diag + it could overflow)
      for (index c = std::max<index>(0, diag - w); c <= std::min(hi, diag + w); ++c) row[c] = true;
      for (index g : global_tokens) {
        if (g / block_size <= hi) row[g / block_size] = true;
        if (g / block_size == qb)
          for (index c = 0; c <= hi; ++c) row[c] = true;
      }
    });
  }

  /// Sparse Transformer's fixed pattern: the `local_blocks` blocks up to the diagonal, plus the last
  /// block of every `stride` blocks (the "summary" blocks), causal.
  static block_layout strided(index n, index block_size, index local_blocks, index stride) {
    const char* fn = "xattn::block_layout::strided";
    detail::require(local_blocks >= 1, fn, "local_blocks", "must be >= 1, got ", local_blocks);
    detail::require(stride >= 1, fn, "stride", "must be >= 1, got ", stride);
    return build(n, n, block_size, 1, [&](index, index, index diag, std::vector<bool>& row) {
      for (index c = std::max<index>(0, diag - local_blocks + 1); c <= diag; ++c) row[c] = true;
      for (index c = stride - 1; c <= diag; c += stride) row[c] = true;
    });
  }

  /// Streaming (StreamingLLM, DuoAttention's streaming heads): sink blocks plus the `window_blocks`
  /// blocks up to the diagonal.
  static block_layout streaming(index nq, index nk, index block_size, index sink_blocks, index window_blocks) {
    const char* fn = "xattn::block_layout::streaming";
    detail::require(sink_blocks >= 0, fn, "sink_blocks", "must be >= 0, got ", sink_blocks);
    detail::require(window_blocks >= 1, fn, "window_blocks", "must be >= 1, got ", window_blocks);
    return build(nq, nk, block_size, 1, [&](index, index, index diag, std::vector<bool>& row) {
      const index hi = std::min(diag, index(row.size()) - 1);
      for (index c = 0; c <= std::min(hi, sink_blocks - 1); ++c) row[c] = true;
      for (index c = std::max<index>(0, diag - window_blocks + 1); c <= hi; ++c) row[c] = true;
    });
  }

  /// The same three builders with their parameters by name, as bigbird takes them:
  /// `longformer(n, n, 64, {.window = 512, .global_tokens = cls})`.
  static block_layout longformer(index nq, index nk, index block_size, const longformer_options& o) {
    return longformer(nq, nk, block_size, o.window, o.global_tokens, o.causal);
  }
  static block_layout strided(index n, index block_size, const strided_options& o) {
    return strided(n, block_size, o.local_blocks, o.stride);
  }
  static block_layout streaming(index nq, index nk, index block_size, const streaming_layout_options& o) {
    return streaming(nq, nk, block_size, o.sink_blocks, o.window_blocks);
  }

  /// Per-head mixes (DuoAttention, MoA): head h gets heads[h] (each a shared, one-head layout of
  /// the same block size and block counts).
  static block_layout per_head(std::span<const block_layout> heads) {
    const char* fn = "xattn::block_layout::per_head";
    detail::require(!heads.empty(), fn, "heads", "is empty");
    const block_layout& f = heads.front();
    std::vector<index> ptr{0};
    std::vector<int> cols;
    for (std::size_t h = 0; h < heads.size(); ++h) {
      const block_layout& l = heads[h];
      detail::require(l.heads_ == 1, fn, "heads", "[", h, "] has ", l.heads_, " heads, expected a shared layout");
      detail::require(l.block_ == f.block_ && l.qb_ == f.qb_ && l.kb_ == f.kb_, fn, "heads", "[", h,
                      "] has block size ", l.block_, " and ", l.qb_, "×", l.kb_, " blocks, heads[0] ", f.block_,
                      " and ", f.qb_, "×", f.kb_);
      for (index r = 0; r < l.qb_; ++r) {
        cols.insert(cols.end(), l.cols_.begin() + l.row_ptr_[r], l.cols_.begin() + l.row_ptr_[r + 1]);
        ptr.push_back(index(cols.size()));
      }
    }
    return block_layout(f.block_, index(heads.size()), f.qb_, f.kb_, std::move(ptr), std::move(cols));
  }

  /// Content-based selection from mean-pooled Q and K blocks of each head: block scores
  /// s = scale·mean(q_blk)·mean(k_blk), softmax over each query block's key blocks, then the top
  /// `keep` blocks or the fewest blocks reaching `mass`; sink and diagonal blocks are always kept.
  /// q [batch, Nq, Hq, d], k [batch, Nk, Hkv, d] (or bhsd); batch 0's tokens decide (one layout per
  /// call). The result has one row set per query head.
  template <row_major_tensor<4> Q, row_major_tensor<4> K>
  static block_layout top_k(const Q& q, const K& k, const top_k_options& o);

  index block_size() const { return block_; }
  index heads() const { return heads_; }
  index q_blocks() const { return qb_; }
  index k_blocks() const { return kb_; }
  /// The sorted key blocks of query block qb of head h (h ignored when shared).
  std::span<const int> row(index h, index qb) const {
    const index r = (heads_ == 1 ? 0 : h) * qb_ + qb;
    return {cols_.data() + row_ptr_[r], static_cast<std::size_t>(row_ptr_[r + 1] - row_ptr_[r])};
  }
  index nnz() const { return index(cols_.size()); }
  /// Fraction of (query block, key block) pairs visited.
  double density() const { return double(cols_.size()) / double(std::max<index>(1, heads_ * qb_ * kb_)); }

  /// Checks the layout against a call with nq queries, nk keys and hq query heads; `tile` is the
  /// engine's key tile, which the block size must be a multiple of.
  void check_for(const char* fn, index nq, index nk, index hq, index tile) const {
    detail::require(block_ > 0 && block_ % tile == 0, fn, "layout", "block size ", block_,
                    " is not a positive multiple of ", tile);
    detail::require(heads_ == 1 || heads_ == hq, fn, "layout", "has ", heads_, " heads, expected 1 (shared) or ", hq,
                    " (q heads)");
    detail::require(qb_ == blocks_of(nq, block_) && kb_ == blocks_of(nk, block_), fn, "layout", "has ",
                    qb_, "×", kb_, " blocks of ", block_, ", expected ", blocks_of(nq, block_), "×",
                    blocks_of(nk, block_), " for Nq = ", nq, ", Nk = ", nk);
  }

 private:
  void validate(const char* fn) const {
    detail::require(block_ > 0, fn, "block_size", "must be > 0, got ", block_);
    detail::require(heads_ >= 1, fn, "heads", "must be >= 1, got ", heads_);
    detail::require(qb_ >= 1 && kb_ >= 1, fn, "q_blocks", "q_blocks ", qb_, " and k_blocks ", kb_, " must be >= 1");
    const index rows = index(row_ptr_.size()) - 1;  // heads × q_blocks, tested without the product's overflow
    detail::require(rows >= 0 && qb_ <= rows / heads_ && heads_ * qb_ == rows, fn, "row_ptr", "has ",
                    row_ptr_.size(), " entries, expected heads × q_blocks + 1 for heads ", heads_, ", q_blocks ", qb_);
    detail::require(row_ptr_.front() == 0 && row_ptr_.back() == index(cols_.size()), fn, "row_ptr",
                    "must start at 0 and end at cols.size() = ", cols_.size());
    for (index r = 0; r < heads_ * qb_; ++r)  // all of row_ptr first: then every row lies inside cols
      detail::require(row_ptr_[r] <= row_ptr_[r + 1], fn, "row_ptr", "decreases at row ", r);
    for (index r = 0; r < heads_ * qb_; ++r) {
      for (index x = row_ptr_[r]; x < row_ptr_[r + 1]; ++x) {
        detail::require(cols_[x] >= 0 && cols_[x] < kb_, fn, "cols", "key block ", cols_[x], " of row ", r,
                        " (head ", r / qb_, ", query block ", r % qb_, ") outside [0, ", kb_, ")");
        detail::require(x == row_ptr_[r] || cols_[x - 1] < cols_[x], fn, "cols", "row ", r, " (head ", r / qb_,
                        ", query block ", r % qb_, ") is not strictly increasing at key block ", cols_[x]);
      }
    }
  }

  /// Builds a layout row by row: f(head, qb, diag, row) sets row[kb] for the key blocks to visit,
  /// diag = the key block of the query block's last query on the bottom-right-aligned diagonal.
  template <class F>
  static block_layout build(index nq, index nk, index block_size, index heads, F&& f) {
    detail::require(block_size > 0, "xattn::block_layout", "block_size", "must be > 0, got ", block_size);
    detail::require(nq > 0 && nk > 0, "xattn::block_layout", "nq", "Nq = ", nq, " and Nk = ", nk, " must be > 0");
    const index qbs = blocks_of(nq, block_size), kbs = blocks_of(nk, block_size);
    std::vector<index> ptr{0};
    std::vector<int> cols;
    std::vector<bool> row(static_cast<std::size_t>(kbs));
    for (index h = 0; h < heads; ++h)
      for (index qb = 0; qb < qbs; ++qb) {
        row.assign(row.size(), false);
        const index last_q = std::min(nq, (qb + 1) * block_size) - 1;
        const index diag = std::clamp<index>((last_q + nk - nq) / block_size, 0, kbs - 1);
        f(h, qb, diag, row);
        for (index c = 0; c < kbs; ++c)
          if (row[c]) cols.push_back(int(c));
        ptr.push_back(index(cols.size()));
      }
    return block_layout(block_size, heads, qbs, kbs, std::move(ptr), std::move(cols));
  }

  index block_ = 0, heads_ = 0, qb_ = 0, kb_ = 0;
  std::vector<index> row_ptr_;
  std::vector<int> cols_;
};

template <row_major_tensor<4> Q, row_major_tensor<4> K>
block_layout block_layout::top_k(const Q& q, const K& k, const top_k_options& o) {
  const char* fn = "xattn::block_layout::top_k";
  const auto qv = detail::make_view<const float>(q.data(), detail::dims_of(q), o.layout);  // any element type
  const auto kv = detail::make_view<const float>(k.data(), detail::dims_of(k), o.layout);
  const index B = o.block_size, nq = qv.seq, nk = kv.seq, hq = qv.heads, hkv = kv.heads, d = qv.dim;
  detail::require(B > 0, fn, "block_size", "must be > 0, got ", B);
  detail::require(kv.dim == d && hkv > 0 && hq % hkv == 0 && kv.batch == qv.batch, fn, "k", "shape ",
                  detail::shape_str(detail::dims_of(k)), " does not match q ", detail::shape_str(detail::dims_of(q)));
  detail::require((o.keep > 0) != (o.mass > 0), fn, "keep", "set exactly one of keep (> 0) and mass (in (0, 1])");
  detail::require(o.mass <= 1, fn, "mass", "must be in (0, 1], got ", o.mass);
  detail::require(o.sink_blocks >= 0, fn, "sink_blocks", "must be >= 0, got ", o.sink_blocks);
  detail::require(!o.scale || (std::isfinite(*o.scale) && *o.scale > 0), fn, "scale", "must be finite and > 0, got ",
                  o.scale.value_or(0));
  const index qbs = blocks_of(nq, B), kbs = blocks_of(nk, B), G = hq / hkv;
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(double(d));
  constexpr index kLanes = 16;

  // Mean-pooled blocks, pk[hk][kb][d] and pq[h][qb][d]: one pass over q and k.
  auto pool = [&](const auto& v, index heads, index blocks, index n) {
    std::vector<float> out(static_cast<std::size_t>(heads * blocks * d), 0.f), row(static_cast<std::size_t>(d));
    for (index h = 0; h < heads; ++h)
      for (index blk = 0; blk < blocks; ++blk) {
        float* dst = out.data() + (h * blocks + blk) * d;
        const index s0 = blk * B, s1 = std::min(n, s0 + B);
        for (index s = s0; s < s1; ++s) {
          v.load(row.data(), 0, s, h, d);
          for (index c = 0; c < d; ++c) dst[c] += row[c];
        }
        const float inv = 1.f / float(s1 - s0);
        for (index c = 0; c < d; ++c) dst[c] *= inv;
      }
    return out;
  };
  const std::vector<float> pq = pool(qv, hq, qbs, nq), pk = pool(kv, hkv, kbs, nk);

  std::vector<index> ptr{0};
  std::vector<int> cols;
  std::vector<double> s(static_cast<std::size_t>(kbs));
  std::vector<index> order(static_cast<std::size_t>(kbs));
  std::vector<bool> keep(static_cast<std::size_t>(kbs));
  for (index h = 0; h < hq; ++h)
    for (index qb = 0; qb < qbs; ++qb) {
      const index last_q = std::min(nq, (qb + 1) * B) - 1;
      const index diag = std::clamp<index>((last_q + nk - nq) / B, 0, kbs - 1);
      const index hi = o.causal ? diag : kbs - 1;
      const float* a = pq.data() + (h * qbs + qb) * d;
      double mx = -std::numeric_limits<double>::infinity();
      for (index kb = 0; kb <= hi; ++kb) {
        const float* b = pk.data() + ((h / G) * kbs + kb) * d;
        float acc[kLanes] = {};  // independent partial sums: the compiler keeps them in one vector
        index c = 0;
        for (; c + kLanes <= d; c += kLanes)
          for (index u = 0; u < kLanes; ++u) acc[u] += a[c + u] * b[c + u];
        float x = 0;
        for (; c < d; ++c) x += a[c] * b[c];
        for (index u = 0; u < kLanes; ++u) x += acc[u];
        // A NaN pooled score (a NaN or Inf in q or k) ranks below every other block, as −inf: the
        // sort below needs a strict weak order, and the layout stays deterministic.
        s[kb] = std::isnan(x) ? -std::numeric_limits<double>::infinity() : scale * double(x);
        mx = std::max(mx, s[kb]);
      }
      const double mu = std::isfinite(mx) ? mx : 0.0;  // every score −inf (or one +inf): no NaN from −inf − −inf
      double sum = 0;
      for (index kb = 0; kb <= hi; ++kb) {
        s[kb] = std::exp(s[kb] - mu);
        if (std::isnan(s[kb])) s[kb] = 0;  // +inf − +inf
        sum += s[kb];
      }
      keep.assign(keep.size(), false);
      for (index kb = 0; kb < std::min(o.sink_blocks, hi + 1); ++kb) keep[kb] = true;
      keep[diag] = true;
      std::iota(order.begin(), order.begin() + hi + 1, index(0));
      const auto better = [&](index x, index y) { return s[x] > s[y] || (s[x] == s[y] && x < y); };
      if (o.keep > 0 && o.keep <= hi) std::nth_element(order.begin(), order.begin() + o.keep - 1, order.begin() + hi + 1, better);
      else std::sort(order.begin(), order.begin() + hi + 1, better);
      double acc = 0;
      for (index n = 0; n <= hi; ++n) {
        if (o.keep > 0 ? n >= o.keep : acc >= o.mass * sum) break;
        keep[order[n]] = true;
        acc += s[order[n]];
      }
      for (index kb = 0; kb <= hi; ++kb)
        if (keep[kb]) cols.push_back(int(kb));
      ptr.push_back(index(cols.size()));
    }
  return block_layout(B, hq, qbs, kbs, std::move(ptr), std::move(cols));
}

}  // namespace xattn
