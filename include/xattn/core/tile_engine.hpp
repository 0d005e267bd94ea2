// xattn/core/tile_engine.hpp — the engine of softmax, sliding-window and sparse attention.
//
// For each work item — (batch, K/V head, block of query rows) — it visits the key tiles its
// schedule lists and, per tile,
//     Sᵀ = K_tile · Qᵀ              (mma_ab; scores already in log2 units: Q carries scale·log2 e)
//     Sᵀ ← modifiers, mask          (softcap, ALiBi, bias, band and boolean masks; partial tiles only)
//     P = 2^(Sᵀ − m), m, l updated  (online_softmax)
//     Oᵀ = Oᵀ ⊙ alpha + Vᵀ · P       (mma_ab with the rescale folded into the accumulator load)
// and writes O = Oᵀ / l at the end. Which key tiles a work item visits, which are partial, and the
// mask of a partial tile come from a schedule policy (core/schedule.hpp): the band of softmax
// attention, the window of sliding-window attention, a block layout's row, a 2-D neighborhood
// (whose query blocks are image patches and whose key tiles are gathered rows). One engine, one
// template parameter per family; softmax's band schedule compiles to the loop it always was.
// A partial tile (a causal diagonal, a window's edge) is computed one micro-tile width of lanes at a
// time, each on the keys its lanes can see (the schedule's lane_keys): 256-lane blocks then waste
// about as little as narrow ones while copying each K/V tile once per 256 queries.
//
// Everything is transposed: queries are the vector lanes. K and V are the broadcast operand of the
// micro-kernel and need no transposition: each tile is only copied into a contiguous buffer (its rows
// sit H·d apart in the caller's tensor — 4 KiB at H·d = 1024 floats — so an uncopied tile would fall
// into a handful of L1 sets and miss on every broadcast). Q is transposed once per query block
// (d × 64 scalars, against 64·Nk·(d + dv) FMAs). The online
// softmax becomes vertical max/add over the tile's rows. The query rows of one block are
// (query, head) pairs of one K/V head group, query-major, so grouped-query heads share every K/V
// load.
//
// Decode (a few query rows per K/V head) runs on narrow blocks: one vector of lanes holding the rows
// of as many K/V heads as fit (4 heads × 4 rows for 32 query heads over 8 K/V heads on AVX-512),
// scores by dot products (dot_abt), one online-softmax update for all of them, P·V per head. When
// the heads of a key sit side by side in memory (bshd), a work item is a range of keys over every
// head, read key by key (see work_heads); the ranges are merged by their log-sum-exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>

#include "../paths.hpp"
#include "amx.hpp"
#include "dpbf16.hpp"
#include "microkernel.hpp"
#include "online_softmax.hpp"
#include "parallel.hpp"
#include "schedule.hpp"
#include "simd.hpp"
#include "softmax_args.hpp"
#include "transpose.hpp"
#include "workspace.hpp"

namespace xattn::detail {

/// Block shapes of one (element type, architecture). Wide blocks (up to 256 query rows) serve
/// prefill; narrow blocks (one vector of query rows) serve decode, where a block holds the few rows
/// of one or several K/V head groups.
template <class T, class Arch, bool Narrow>
struct tile_shape {
  static constexpr int L = simd::lanes_v<T, Arch>;
  static constexpr bool kBig = simd::traits<T, Arch>::registers >= 32;
  // Micro-tiles of MR rows × NV vectors: 16 accumulators of AVX-512's 32 registers, 8 of AVX2's 16
  // (2 FMA pipes × 4-cycle latency). Wide: 8 keys (or values) × 32 query lanes. Narrow P·V: the
  // query rows × 64 value columns.
  static constexpr int NV = Narrow ? 4 : 2;
  static constexpr int MR = (kBig ? 16 : 8) / NV;
  // Micro-tiles of lane groups (schedules with lane_keys), one vector of lanes: Sᵀ as MRK keys (8
  // K row pointers fit the general registers), Oᵀ as MR1 value columns of consecutive scalars.
  static constexpr int MRK = 8;
  static constexpr int MR1 = kBig ? 16 : 8;
  // Query rows (lanes) per block, at most. Each block streams its head's K and V once, so wider
  // blocks mean fewer passes over K/V (and fewer TLB misses: at H·d = 1024 floats every key row
  // is on its own 4 KiB page); 256 float lanes keep Qᵀ, Sᵀ and Oᵀ (~320 KiB at d = 128) in L2.
  static constexpr index BrMax = Narrow ? L : (sizeof(T) == 4 ? 256 : 128);
  static constexpr index BrStep = Narrow ? L : NV * L;  // block widths are whole micro-tiles
  // Keys per tile. Narrow tiles are short: a decode step visits every K/V head of a tile before the
  // next tile (see tile_engine::work_heads), and short tiles keep those reads near-sequential.
  static constexpr index Bc = Narrow ? 16 : 64;
  static constexpr index round_up(index x, index m) { return detail::round_up(x, m); }
};

/// Key splits per (batch, K/V head, query block) when those are too few to keep threads busy
/// (flash-decoding). Depends on the shapes only, never on the thread count, so results are
/// bitwise identical for any thread count.
inline index key_splits(index units, index key_blocks) {
  constexpr index kTargetItems = 32;      // enough items to balance a few threads
  constexpr index kMinBlocksPerSplit = 8; // keep each split long enough to amortise its merge
  if (units >= kTargetItems) return 1;
  return std::clamp<index>((kTargetItems + units - 1) / units, 1, std::max<index>(1, key_blocks / kMinBlocksPerSplit));
}

/// A policy that lays out its own query blocks (2-D patches): query_blocks(rows, br) blocks, block qb
/// holding the queries block_queries(qb, qi, max) writes (their K/V head group's G heads each).
template <class P>
concept custom_query_blocks = requires(const P& p, index* qi) {
  { p.query_blocks(index{}, index{}) } -> std::convertible_to<index>;
  { p.block_queries(index{}, qi, index{}) } -> std::convertible_to<index>;
};
/// A schedule whose key tiles are gathered rows: tile n holds keys(n) keys, key(n, c) each (2-D
/// neighborhoods), instead of the keys [64·tile(n), 64·tile(n) + 64).
template <class S>
concept gathered_keys = requires(const S& s) {
  { s.keys(index{}) } -> std::convertible_to<index>;
  { s.key(index{}, index{}) } -> std::convertible_to<index>;
};

/// A schedule that tells, per group of lanes, the one contiguous range of a tile's keys they can
/// see, lane_keys(n, l0, l1, c_lo, c_hi) (every schedule but a custom one: core/schedule.hpp).
/// Wide blocks compute the partial tiles of such a schedule group by group, each on its range only
/// (ranged()); a gathered schedule's tiles (2-D neighborhoods) always so, one vector at a time
/// (grouped()).
template <class S>
concept lane_grouped_keys = requires(const S& s, index& c) {
  { s.lane_keys(index{}, index{}, index{}, c, c) };
};

/// The tile engine over one validated softmax problem. Wide blocks hold Qᵀ [d][br] and Oᵀ [dv][br]
/// (queries in lanes); narrow blocks hold Q [rows][d] and O [rows][dv] upright and compute S by dot
/// products. Both keep the score tile transposed, Sᵀ [Bc][br], so that masks, modifiers and the
/// online softmax are one code.
template <class T, class Arch, bool Narrow, class Policy = band_policy>
class tile_engine {
  using S = tile_shape<T, Arch, Narrow>;
  using V = simd::vec_t<T, Arch>;
  static constexpr index BrMax = S::BrMax, Bc = S::Bc, L = S::L;
  static constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  /// Whether this instantiation carries the bf16 paths (AMX, AVX512-BF16): float compute in an
  /// AVX-512 build.
  static constexpr bool kAmx = amx::built && std::is_same_v<T, float> && L == 16;

 public:
  explicit tile_engine(const softmax_problem<T>& p, const Policy& policy = {})
      : p_(p),
        policy_(policy),
        rows_(p.nq * p.group),
        slot_(S::round_up(rows_, std::max<index>(S::MR, dot_row_block<Arch, T>))),
        hb_(Narrow && head_uniform(policy) ? std::clamp<index>(L / slot_, 1, p.hkv) : 1),
        br_(Narrow ? L : block_rows(policy, rows_, p.group)),
        qblocks_(query_blocks(policy, rows_, br_)),
        nhb_((p.hkv + hb_ - 1) / hb_),
        units_(p.batch * nhb_ * qblocks_),
        by_key_(key_major(p, policy)),
        splits_(key_splits(by_key_ ? p.batch : units_, (p.nk + Bc - 1) / Bc)),
        ldq_(S::round_up(p.d, L)),
        ldk_(tile_stride(Narrow ? ldq_ : p.d)),
        ldv_(tile_stride(S::round_up(p.dv, Narrow ? S::NV * L : S::MR1))),
        o_size_(Narrow ? S::round_up(br_, S::MR) * ldv_ : S::round_up(p.dv, S::MR1) * br_),
        ldst_(S::round_up(std::max(p.d, p.dv), L)),
        in_place_(p.d % L == 0 && p.dv % (S::NV * L) == 0 && readable_in_place(p.k) && readable_in_place(p.v)),
        amx_(use_amx(p, br_)),
        tiles_(amx_ && bf16_product_path<Arch>() == product_path::amx_bf16),
        d2_(S::round_up(p.d, 32)),
        dv2_(S::round_up(p.dv, 16)),
        dvw_(S::round_up(p.dv, 32)),
        qs_(T(p.softcap > 0 ? p.scale / p.softcap : p.scale * kLog2e)) {}

  /// Whether the narrow micro-kernels can read this tensor's rows where they are: T, or 16-bit
  /// storage under float compute (loadu_from widens it).
  static bool readable_in_place(const bshd_view<const T>& t) {
    return t.native() || (std::is_same_v<T, float> && is_16bit(t.type));
  }

  /// Whether this engine runs its products on bf16 pairs, on AMX tiles or AVX512-BF16 dot products
  /// (see paths.hpp): wide blocks of whole 32-lane groups over contiguous key tiles, float compute,
  /// an AVX-512 build, bf16 operands (or compute = bf16), and the CPU and OS allowing it.
  static bool use_amx(const softmax_problem<T>& p, index br) {
    if constexpr (Narrow || custom_query_blocks<Policy> || !kAmx) {
      return false;
    } else {
      const bool bf16 = p.q.type == elem::bf16 && p.k.type == elem::bf16 && p.v.type == elem::bf16;
      return (bf16 || p.bf16_compute) && br % 32 == 0 && bf16_product_path<Arch>() != product_path::fp32;
    }
  }

  template <class Device>
  void run(const Device& dev) {
    T* partials = nullptr;  // [units × splits] × (O, m, l) when keys are split
    if (splits_ > 1)
      partials = static_cast<T*>(workspace::of_this_thread(1).get(sizeof(T) * units_ * splits_ * partial_size()));
    if (by_key_)
      parallel_for(dev, p_.batch * splits_, [&](index item) { work_heads(item / splits_, item % splits_, partials); });
    else
      parallel_for(dev, units_ * splits_, [&](index item) {
        const index u = item / splits_, s = item % splits_;
        work(u, s, partials ? partials + item * partial_size() : nullptr);
      }, two_ended);
    if (splits_ > 1)
      for (index u = 0; u < units_; ++u) merge(u, partials + u * splits_ * partial_size());
  }

 private:
  /// Per-block state; its scratch is carved from the thread's workspace right behind it:
  /// Q (Qᵀ [d][br] wide, Q [br][ldq] narrow), Sᵀ [Bc][br], O (Oᵀ [dv][br] wide, O [br][ldv] narrow)
  /// and the current K and V tiles [Bc][ldk], [Bc][ldv].
  struct block {
    T *qt, *st, *ot, *kt, *vt;
    T* stage;                              // kT rows of ldst_: 16-bit rows of Q and O pass through it
    T* amx;                                // AMX scratch (amx_size())
    alignas(simd::kAlign) T qpos[BrMax];   // query index of each lane
    alignas(simd::kAlign) T slope[BrMax];  // −ALiBi slope · log2 e of each lane's head
    alignas(simd::kAlign) T sink[BrMax];   // sink logit · log2 e of each lane's head
    index qi[BrMax], qh[BrMax];            // query index and head of each lane
    index valid = 0;                       // lanes [0, valid) are rows of the problem
    index heads = 1;                       // narrow: K/V heads in the block, slot_ lanes each
    alignas(simd::kAlign) T aux[kLaneAux][BrMax];  // per-lane rows of the schedule
    online_softmax<Arch, T, BrMax> sm;
    alignas(simd::kAlign) T lx[BrMax];  // AMX: the sum of P before its rounding (for the LSE; sm.l sums P as rounded)
    const T* lse_sum() const { return on_amx ? lx : sm.l; }
    bool on_amx = false;
    // AMX: a full tile's P·V waits for the next tile's, so that the two run as one product over 128
    // keys (one load and store of Oᵀ instead of two); its alpha, and the keys its P covers.
    bool pending = false;
    index pending_keys = 0;
    alignas(simd::kAlign) T pending_alpha[BrMax];
  };

  /// Lanes per block: the policy's choice (e.g. one sparse layout row), else as many rows as fit.
  static index block_rows(const Policy& policy, index rows, index group) {
    const index want = policy.block_rows(rows, group, BrMax, S::BrStep);
    return want > 0 ? want : std::min(BrMax, S::round_up(rows, S::BrStep));
  }
  static index query_blocks(const Policy& policy, index rows, index br) {
    if constexpr (custom_query_blocks<Policy>) return policy.query_blocks(rows, br);
    else return (rows + br - 1) / br;
  }
  lane_view<T> view(block& blk) const {
    return {blk.qpos, blk.qi, blk.qh, blk.valid, br_, &blk.aux[0][0], BrMax};
  }

  // Wide: MRK more rows, where a lane group's micro-tiles run past its key range.
  index s_rows() const { return S::round_up(Bc + (Narrow ? 0 : S::MRK), std::max<index>(S::MR, L)); }
  index q_size() const { return Narrow ? br_ * ldq_ : amx_ ? d2_ * br_ / 2 : p_.d * br_; }
  /// AMX scratch (floats): P paired for two tiles [64][br], the V pairs [32][dvw], converted V rows [64][dvw]
  /// (bf16), and a float row through which Q rows are converted.
  index amx_size() const { return amx_ ? amx_scratch() + ldst_ : 0; }
  index amx_scratch() const { return 64 * br_ + 64 * dvw_; }  // then a float row for conversions
  index partial_size() const { return o_size_ + 3 * br_; }  // O, m, l, and the sum for the LSE
  /// Where output element (value column e, lane r) lives in a block's O.
  index o_at(index e, index r) const { return Narrow ? r * ldv_ + e : e * br_ + r; }

  /// Row stride of a copied K or V tile: whole cache lines, and not a multiple of 4 KiB, so that
  /// the rows of a tile spread over the L1 sets.
  static index tile_stride(index dim) {
    constexpr index kLine = 64 / sizeof(T);
    const index ld = S::round_up(dim, kLine);
    return (ld * index(sizeof(T))) % 4096 == 0 ? ld + kLine : ld;
  }

  /// Decode over K/V heads that sit side by side in memory (bshd, more than one K/V head, a schedule
  /// the same for every head): then a work item is (batch, key split) and visits every head of a key
  /// tile before the next tile, reading each key's H·d row front to back. Head by head, an item would
  /// read d-sized pieces a page apart, which the hardware prefetchers do not follow: a plain read of a
  /// 32k-key, 8-head cache that way measured 14.5 GB/s on one thread, against 28–31 GB/s key-major
  /// in 16-key tiles and 36–40 GB/s for a sequential read (the decode step itself: 13 → 18 GB/s).
  static bool key_major(const softmax_problem<T>& p, const Policy& policy) {
    return Narrow && head_uniform(policy) && p.hkv > 1 && p.k.sh < p.k.ss && p.v.sh < p.v.ss;
  }
  static bool head_uniform(const Policy& policy) {
    if constexpr (custom_query_blocks<Policy>) return false;
    else return policy.head_uniform();
  }

  /// Whether two workers take the items from both ends (parallel_for's from_both_ends), so that each
  /// thread mostly walks its end in the one-thread order: the window's consecutive query blocks of
  /// one head, whose bands share most of their keys (and those keys' pages), instead of every other
  /// block. Sliding window, W = 1024, two threads (probe, best of 2–6 calls, alternated): N = 65536
  /// faster in 6 of 8 rounds, ~3 % on average, N = 8192 the same (both orders in one binary);
  /// against the plain build, N = 8192 +1–3 % (3 of 3), N = 65536 0, 0 and +8 %. Policies opt in
  /// (window_policy::two_ended).
  static constexpr bool two_ended = requires { requires Policy::two_ended; };

  /// Unit u → (batch, K/V head — narrow: block of hb_ heads —, query block), head-major —
  /// consecutive items share one head's K and V (a few MiB, which stay in L3) instead of cycling
  /// through all heads — and within a head the costliest query blocks (most keys under a causal
  /// mask) first. Small 2-D patches go patch-major instead, the K/V heads of a patch in a row: they
  /// touch the same pages of Q, K, V and O (at H·d = 1024 floats a token is a page), which measured
  /// 13 % faster at 128×128, kernel 13.
  void unit_coords(index u, index& b, index& hk, index& qb) const {
    if constexpr (custom_query_blocks<Policy>) {  // 2-D patches: patch-major, heads inner
      hk = u % p_.hkv;
      b = u / p_.hkv / qblocks_, qb = u / p_.hkv % qblocks_;
      return;
    }
    const index bh = u / qblocks_;
    qb = qblocks_ - 1 - u % qblocks_;
    b = bh / nhb_, hk = bh % nhb_;
  }
  static constexpr index kT = 16;  // rows × columns per block of the Q and O transpositions

  /// Whether lane r holds a row of its own (not a repeat filling a narrow head's slot).
  bool own_lane(index r) const { return !Narrow || r % slot_ < rows_; }

  /// Lanes: row ρ = qb·br + r of K/V head hk's group is query ρ / G of head hk·G + ρ % G. Narrow
  /// blocks hold the rows of K/V heads hk·hb_ + h in lanes [h·slot_, h·slot_ + rows_); the lanes
  /// after each head's rows, and those of heads past the last, repeat its last row.
  void lanes(block& blk, index hk, index qb) const {
    const index G = p_.group;
    if constexpr (custom_query_blocks<Policy>) {  // the policy's queries, each with its G heads
      index queries[BrMax];
      blk.valid = policy_.block_queries(qb, queries, br_ / G) * G;
      for (index r = 0; r < br_; ++r) {
        const index rr = std::min(r, blk.valid - 1);
        blk.qi[r] = queries[rr / G], blk.qh[r] = hk * G + rr % G;
        blk.qpos[r] = T(blk.qi[r]);
      }
      return;
    }
    if constexpr (Narrow) {
      blk.heads = std::min(hb_, p_.hkv - hk * hb_);
      blk.valid = (blk.heads - 1) * slot_ + rows_;
      for (index r = 0; r < br_; ++r) {
        const index h = std::min(r / slot_, blk.heads - 1);
        const index rho = r / slot_ < blk.heads ? std::min(r % slot_, rows_ - 1) : rows_ - 1;
        blk.qi[r] = rho / G, blk.qh[r] = (hk * hb_ + h) * G + rho % G;
        blk.qpos[r] = T(blk.qi[r]);
      }
      return;
    }
    const index row0 = qb * br_;
    blk.valid = std::min(br_, rows_ - row0);
    for (index r = 0; r < br_; ++r) {
      const index rho = row0 + std::min(r, blk.valid - 1);  // padding lanes repeat the last row
      blk.qi[r] = rho / G, blk.qh[r] = hk * G + rho % G;
      blk.qpos[r] = T(blk.qi[r]);
    }
  }

  /// `count` blocks from the thread's workspace, each with its own Q and O, sharing one Sᵀ and one
  /// K and V tile (a block's scratch lives only for the duration of one tile).
  block* blocks(index count) const {
    const index one = block_bytes();
    auto* base = static_cast<std::byte*>(workspace::of_this_thread(0).get(
        count * one + sizeof(T) * (s_rows() * br_ + Bc * (ldk_ + ldv_) + kT * ldst_ + amx_size())));
    T* shared = reinterpret_cast<T*>(base + count * one);
    for (index i = 0; i < count; ++i) {
      auto* blk = new (base + i * one) block;
      blk->qt = reinterpret_cast<T*>(blk + 1);
      blk->ot = blk->qt + q_size();
      blk->st = shared;
      blk->kt = shared + s_rows() * br_;
      blk->vt = blk->kt + Bc * ldk_;
      blk->stage = blk->vt + Bc * ldv_;
      blk->amx = blk->stage + kT * ldst_;
    }
    return reinterpret_cast<block*>(base);
  }
  index block_bytes() const {  // whole kAlign units, so that every block of blocks() stays aligned
    return S::round_up(index(sizeof(block) + sizeof(T) * (q_size() + o_size_)), index(simd::kAlign));
  }
  block& block_at(block* first, index i) const {
    return *reinterpret_cast<block*>(reinterpret_cast<std::byte*>(first) + i * block_bytes());
  }

  void work(index u, index split, T* partial) const {
    index b, hk, qb;
    unit_coords(u, b, hk, qb);
    block* blk = blocks(1);
    if constexpr (kAmx)
      if (tiles_) amx::configure();
    start(*blk, b, hk, qb, split);
    const auto sched = policy_.make(p_, b, hk, view(*blk), Bc);
    const index n0 = sched.count() * split / splits_, n1 = sched.count() * (split + 1) / splits_;
    for (index n = n0; n < n1; ++n) visit(*blk, b, hk, p_.nk_of(b), sched, n, n + 1 < n1 ? n + 1 : -1);
    finish(*blk, b, partial);
  }

  /// Key-major decode (see key_major): every K/V head of batch b over the split's key tiles. While
  /// a tile is computed, the rows of the tile kAhead further are requested in address order (see
  /// ahead_stream); schedules of gathered rows do not come here (they are not head-uniform).
  static constexpr index kAhead = 1;
  void work_heads(index b, index split, T* partials) const {
    const index nk = p_.nk_of(b);
    block* first = blocks(nhb_);
    for (index hb = 0; hb < nhb_; ++hb) start(block_at(first, hb), b, hb, 0, split);
    // The schedule is the same for every head; making it for each block also fills that block's
    // per-lane rows (aux: e.g. each lane's residue modulo the dilation), which its masks read.
    const auto sched = policy_.make(p_, b, 0, view(*first), Bc);
    for (index hb = 1; hb < nhb_; ++hb) policy_.make(p_, b, hb * hb_, view(block_at(first, hb)), Bc);
    const index n0 = sched.count() * split / splits_, n1 = sched.count() * (split + 1) / splits_;
    for (index n = n0; n < n1; ++n) {
      if constexpr (gathered_keys<std::remove_cvref_t<decltype(sched)>>) {
        for (index hb = 0; hb < nhb_; ++hb)
          visit(block_at(first, hb), b, hb, nk, sched, n, n + kAhead < n1 ? n + kAhead : -1);
      } else {
        const index j0 = sched.tile(n) * Bc, nc = std::min(j0 + Bc, nk) - j0;
        ahead_stream ahead;
        if (n + kAhead < n1) {
          const index jn = sched.tile(n + kAhead) * Bc;
          // dot_abt calls its prefetch once per key (rounded up to its key blocks) and head
          ahead.start(p_, b, jn, std::min(jn + Bc, nk) - jn, p_.hkv * S::round_up(nc, L / dot_row_block<Arch, T>));
        }
        auto key = [&](index c) { return j0 + c; };
        auto prefetch = [&](index) { return [&](index) { ahead.next(); }; };
        for (index hb = 0; hb < nhb_; ++hb) narrow_tile(block_at(first, hb), b, hb, sched, n, j0, nc, key, prefetch);
      }
    }
    for (index hb = 0; hb < nhb_; ++hb) {
      const index u = b * nhb_ + hb;
      finish(block_at(first, hb), b, partials ? partials + (u * splits_ + split) * partial_size() : nullptr);
    }
  }

  /// The K rows, then the V rows, of keys [j0, j0 + count) over every K/V head (each key's heads
  /// are one run of memory in bshd), requested one cache line after another in address order,
  /// `quota` lines per call of next() so that the requests spread evenly over the current tile's
  /// work. Measured on one thread (32k keys, 8 K/V heads, d = 128, CPU time): requesting the same
  /// lines key by key for each head (8 lines, then the next key's 4 KiB further) left decode at
  /// 17.7–18.4 GB/s; in address order it runs at 23–26 GB/s (a sequential read: 30–35). A read
  /// probe with the same arithmetic per byte shows why: any order that is not front to back within
  /// each tile's K and V (head by head, or even two keys at a time) keeps the hardware prefetchers
  /// from streaming (20–23 GB/s against 28–35 in address order). Every line counts: requesting
  /// every second line only ran at 12–14 GB/s; so does the timing: the same requests two tiles
  /// ahead, packed into the first half of the dot products, or partly issued during P·V, all ran
  /// slower (17–23 GB/s). A line that straddles the end of an unaligned key row may be left out:
  /// these are hints.
  class ahead_stream {
   public:
    void start(const softmax_problem<T>& p, index b, index j0, index count, index calls) {
      k_ = row_span(p.k, b, j0, p.hkv, p.d), v_ = row_span(p.v, b, j0, p.hkv, p.dv);
      rows_ = count;
      const index lines = count * (k_.lines + v_.lines);
      quota_ = calls > 0 ? (lines + calls - 1) / calls : 0;
      left_ = count > 0 ? k_.lines : 0;
      at_ = k_.first;
    }
    /// Requests the next `quota` lines (none when the stream is done).
    void next() {
      for (index i = 0; i < quota_ && row_ < 2 * rows_; ++i) {
        simd::prefetch(at_, 1);
        at_ += kLine;
        if (--left_ == 0 && ++row_ < 2 * rows_) {  // next key row: K rows first, then V rows
          const span& s = row_ < rows_ ? k_ : v_;
          const index r = row_ < rows_ ? row_ : row_ - rows_;
          at_ = s.first + r * s.stride, left_ = s.lines;
        }
      }
    }

   private:
    static constexpr index kLine = 64;
    struct span {
      const char* first = nullptr;  // the line holding head 0 of the first key
      index stride = 0, lines = 0;  // bytes between keys; lines per key (all heads)
    };
    template <class View>
    static span row_span(const View& t, index b, index j0, index heads, index dim) {
      const index eb = index(elem_bytes(t.type));
      const auto* lo = reinterpret_cast<const char*>(t.at(b, j0, 0));
      const auto* hi = reinterpret_cast<const char*>(t.at(b, j0, heads - 1)) + dim * eb;
      const auto* first = reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(lo) & ~std::uintptr_t(kLine - 1));
      return {first, eb * t.ss, (hi - first + kLine - 1) / kLine};
    }
    span k_, v_;
    const char* at_ = nullptr;
    index rows_ = 0, row_ = 0, left_ = 0, quota_ = 0;
  };

  /// out[r][e] = s[r]·src[e·ld + r] for r < n (n <= kT), e < dv: the inverse of the Q transpose in
  /// start(), with a scale per row.
  static void transpose_out(const T* src, index ld, index n, index dv, const T* s, T* const* out) {
    for (index l0 = 0; l0 < n; l0 += L) {
      index e0 = 0;
      if constexpr (simd::has_transpose<T, Arch>) {
        if (l0 + L <= n) {
          for (; e0 + L <= dv; e0 += L) {
            const T* rows[L];
            V row[L];
            for (index e = 0; e < L; ++e) rows[e] = src + (e0 + e) * ld + l0;
            simd::transpose_block<T, Arch>(rows, row);
            XATTN_UNROLL for (index l = 0; l < L; ++l) simd::storeu(out[l0 + l] + e0, row[l] * simd::bcast<V>(s[l0 + l]));
          }
        }
      }
      for (index l = l0; l < std::min(l0 + L, n); ++l)
        for (index e = e0; e < dv; ++e) out[l][e] = src[e * ld + l] * s[l];
    }
  }

  /// A block's lanes, Q (scaled), per-lane constants and empty softmax state.
  void start(block& blk, index b, index hk, index qb, index split) const {
    const index d = p_.d, nq = p_.nq_of(b);
    lanes(blk, hk, qb);

    // Q scaled so that scores come out in log2 units (or in units of the softcap), zero on padding.
    const double qscale = p_.softcap > 0 ? p_.scale / p_.softcap : p_.scale * kLog2e;
    if constexpr (!Narrow)  // all rows requested at once: one row at a time leaves the latency bare
      for (index r = 0; r < blk.valid; ++r)
        if (blk.qi[r] < nq) simd::prefetch(p_.q.at(b, blk.qi[r], blk.qh[r]), elem_bytes(p_.q.type) * d);
    std::fill(blk.qt, blk.qt + q_size(), T(0));
    // Q rows into Qᵀ (wide) in blocks of kT rows × kT columns: a column of Qᵀ crosses rows br_
    // scalars apart (1 KiB at 256 float lanes), which fall into a few L1 sets, so writing a whole
    // column per query evicted each line before its neighbours were written (this loop took a third
    // of a 256-lane window block's time before it was blocked).
    const T qs = T(qscale);
    for (index r0 = 0; r0 < blk.valid; r0 += kT) {
      const T* rows[kT];
      for (index r = r0; r < r0 + kT && !amx_; ++r) {
        const bool live = r < blk.valid && blk.qi[r] < nq;
        if (Narrow && live) {
          p_.q.load(blk.qt + r * ldq_, b, blk.qi[r], blk.qh[r], d, qs);
        } else if (live && !p_.q.native()) {  // 16-bit: converted (and scaled) into the stage first
          p_.q.load(blk.stage + (r - r0) * ldst_, b, blk.qi[r], blk.qh[r], d, qs);
          rows[r - r0] = blk.stage + (r - r0) * ldst_;
        } else {
          rows[r - r0] = live ? p_.q.row(b, blk.qi[r], blk.qh[r]) : nullptr;
        }
      }
      // kT rows in groups of L lanes, none past the block's br_ lanes; null rows (padding) get zeros
      if (amx_) {
        pack_q(blk, b, r0, nq);
        continue;
      }
      if constexpr (!Narrow)
        for (index l0 = 0; l0 < std::min(kT, br_ - r0); l0 += L)
          simd::transpose_rows<T, Arch>(rows + l0, d, p_.q.native() ? qs : T(1), blk.qt + r0 + l0, br_);
    }
    for (index r = 0; r < br_; ++r) {
      blk.slope[r] = p_.alibi ? T(-p_.alibi_of(b, blk.qh[r]) * kLog2e) : T(0);
      blk.sink[r] = p_.sinks ? T(double(p_.sinks[blk.qh[r]]) * kLog2e) : T(0);
    }
    blk.sm.init(p_.sinks && split == 0 ? blk.sink : nullptr, br_);  // the sink joins one split only
    blk.on_amx = amx_;
    blk.pending = false;
    if (amx_) std::copy(blk.sm.l, blk.sm.l + br_, blk.lx);
    std::fill(blk.ot, blk.ot + o_size_, T(0));
    if constexpr (Narrow) std::fill(blk.st, blk.st + s_rows() * br_, T(0));  // lanes past `valid` stay finite
  }

  /// Hands the block's state to its split's partial, or writes its rows.
  void finish(block& blk, index b, T* partial) const {
    if constexpr (kAmx)
      if (blk.pending) flush(blk);
    if (partial) {
      std::memcpy(partial, blk.ot, sizeof(T) * o_size_);
      std::memcpy(partial + o_size_, blk.sm.m, sizeof(T) * br_);
      std::memcpy(partial + o_size_ + br_, blk.sm.l, sizeof(T) * br_);
      std::memcpy(partial + o_size_ + 2 * br_, blk.lse_sum(), sizeof(T) * br_);
    } else {
      write(blk, b, p_.nq_of(b), blk.ot, blk.sm.m, blk.sm.l, blk.lse_sum());
    }
  }

  /// Asks for the K and V rows of key j, K/V head h (hints: see simd::prefetch).
  void request(index b, index j, index h) const {
    simd::prefetch(p_.k.at(b, j, h), elem_bytes(p_.k.type) * p_.d);
    simd::prefetch(p_.v.at(b, j, h), elem_bytes(p_.v.type) * p_.dv);
  }
  /// The n-th visit of the schedule: key tile t = sched.tile(n), keys [j0, j0 + nc); the rows of
  /// visit `ahead` (or none, −1) are requested meanwhile. hk is the K/V head (narrow: head block).
  template <class Sched>
  void visit(block& blk, index b, index hk, index nk, const Sched& sched, index n, index ahead) const {
    constexpr bool kGather = gathered_keys<Sched>;
    index j0, nc, jn, nn;
    if constexpr (kGather) {
      j0 = 0, nc = sched.keys(n), jn = 0, nn = ahead >= 0 ? sched.keys(ahead) : 0;
    } else {
      j0 = sched.tile(n) * Bc, nc = std::min(j0 + Bc, nk) - j0;
      jn = ahead >= 0 ? sched.tile(ahead) * Bc : 0, nn = ahead >= 0 ? std::min(jn + Bc, nk) - jn : 0;
    }
    // Key row c of this tile and of the one ahead.
    auto key = [&](index c) {
      if constexpr (kGather) return sched.key(n, c); else return j0 + c;
    };
    auto next_key = [&](index c) {
      if constexpr (kGather) return sched.key(ahead, c); else return jn + c;
    };
    // The K and V rows ahead are requested early: consecutive key rows are H·d apart (often a page
    // apart), where the hardware prefetchers do not follow.
    auto prefetch_ahead = [&](index head) {
      return [&, head](index c) {
        if (c < nn) request(b, next_key(c), head);
      };
    };
    if constexpr (Narrow) {
      narrow_tile(blk, b, hk, sched, n, j0, nc, key, prefetch_ahead);
    } else {
      if constexpr (kAmx && !kGather)
        if (amx_) return amx_tile(blk, b, hk, sched, n, j0, nc, key, prefetch_ahead(hk));
      // Copy the tile into contiguous rows: in place, a tile's rows (4 KiB apart at H·d = 1024
      // floats) would fall into a handful of L1 sets and miss on every broadcast.
      const auto prefetch = prefetch_ahead(hk);
      for (index c = 0; c < nc; ++c) {
        p_.k.load(blk.kt + c * ldk_, b, key(c), hk, p_.d);
        p_.v.load(blk.vt + c * ldv_, b, key(c), hk, p_.dv);
        prefetch(c);
      }
      if constexpr (kGather) return grouped(blk, sched, n, blk.kt, ldk_, blk.vt, ldv_);
      else if constexpr (lane_grouped_keys<Sched>)
        if (sched.partial(n)) return ranged(blk, b, sched, n, j0);
      // Sᵀ[c][r] = Σ_k K[j0 + c][k] · Qᵀ[k][r]
      mma_ab<Arch, T, S::MR, S::NV, mma_init::zero>({blk.st, nc, br_, br_}, by_rows(blk.kt, ldk_),
                                                    {blk.qt, p_.d, br_, br_});
      modify(blk, b, sched, n, j0, 0, nc, 0, br_);
      blk.sm.update(blk.st, br_, nc, br_);
      // Oᵀ[e][r] = alpha[r]·Oᵀ[e][r] + Σ_c V[j0 + c][e] · P[c][r]
      mma_ab<Arch, T, S::MR, S::NV, mma_init::scale_cols>({blk.ot, p_.dv, br_, br_}, by_cols(blk.vt, ldv_),
                                                          {blk.st, nc, br_, br_}, blk.sm.alpha);
    }
  }

  /// A partial tile, one micro-tile width of lanes (NV vectors) at a time, on the keys [c0, c1) of
  /// the tile that some of those lanes see: on a causal diagonal or a window's edge most of a
  /// 256-lane block's tile is invisible to any given 32 lanes. Then as visit(): Sᵀ, modifiers and
  /// masks, the online softmax and Oᵀ, on that range only.
  template <class Sched>
  void ranged(block& blk, index b, const Sched& sched, index n, index j0) const {
    constexpr index W = S::NV * L;
    for (index r0 = 0; r0 < blk.valid; r0 += W) {
      index c0, c1;
      sched.lane_keys(n, r0, r0 + W, c0, c1);
      if (c0 >= c1) continue;
      T* st = blk.st + c0 * br_;  // its micro-tiles run up to MR − 1 rows past c1 (s_rows)
      mma_ab<Arch, T, S::MR, S::NV, mma_init::zero>({st + r0, c1 - c0, W, br_}, by_rows(blk.kt + c0 * ldk_, ldk_),
                                                    {blk.qt + r0, p_.d, W, br_});
      modify(blk, b, sched, n, j0, c0, c1, r0, r0 + W);
      blk.sm.update(st, br_, c1 - c0, r0 + W, r0);
      mma_ab<Arch, T, S::MR, S::NV, mma_init::scale_cols>({blk.ot + r0, p_.dv, W, br_},
                                                          by_cols(blk.vt + c0 * ldv_, ldv_), {st + r0, c1 - c0, W, br_},
                                                          blk.sm.alpha + r0);
    }
  }

  /// The rows of Q as bf16 pairs for AMX (Q [d2/2][br][2], zeros on padding lanes and past d):
  /// rows [r0, r0 + kT) of the block, unscaled (the scale multiplies the float scores instead, so
  /// that rounding Q·scale to bf16 adds no error).
  void pack_q(block& blk, index b, index r0, index nq) const {
    auto* qv = reinterpret_cast<float*>(blk.qt);  // [d2/2][br] words, moved as floats
    auto* rows16 = reinterpret_cast<std::uint16_t*>(blk.stage);  // kT converted rows of d2
    const bool in_place = p_.q.type == elem::bf16 && p_.d == d2_;
    const float* src[kT];
    for (index r = r0; r < r0 + kT; ++r) {
      src[r - r0] = nullptr;
      if (r >= blk.valid || blk.qi[r] >= nq) continue;
      if (in_place) {
        src[r - r0] = reinterpret_cast<const float*>(p_.q.at(b, blk.qi[r], blk.qh[r]));
      } else {
        std::uint16_t* row = rows16 + (r - r0) * d2_;
        const std::uint16_t* got = bf16_row(p_.q, b, blk.qi[r], blk.qh[r], p_.d, blk.amx + amx_scratch(), row);
        if (got != row) std::memcpy(row, got, 2 * std::size_t(p_.d));
        std::fill(row + p_.d, row + d2_, std::uint16_t(0));
        src[r - r0] = reinterpret_cast<const float*>(row);
      }
    }
    // 16 rows × 16 pairs at a time, transposed as 32-bit words: row r's pairs become lane r
    if constexpr (simd::has_transpose<float, Arch> && L == kT) {
      alignas(simd::kAlign) static constexpr float kZeros[L] = {};
      for (index kp = 0; kp < d2_ / 2; kp += L) {
        const float* at[L];
        for (index i = 0; i < L; ++i) at[i] = src[i] ? src[i] + kp : kZeros;
        V col[L];
        simd::transpose_block<float, Arch>(at, col);
        XATTN_UNROLL for (index j = 0; j < L; ++j) simd::storeu(qv + (kp + j) * br_ + r0, col[j]);
      }
    }
  }
  /// A row of `t` as bf16: in place when it holds bf16, else converted (through the float row f)
  /// into h.
  static const std::uint16_t* bf16_row(const bshd_view<const T>& t, index b, index s, index h, index n, T* f,
                                       std::uint16_t* out) {
    if (t.type == elem::bf16) return reinterpret_cast<const std::uint16_t*>(t.at(b, s, h));
    t.load(f, b, s, h, n);
    store_row(out, elem::bf16, f, n);
    return out;
  }
  /// The AMX path's softmax of Sᵀ rows [c0, c1) × lanes [r0, r1) into P pairs [p0, p1) (see
  /// amx::softmax_pairs). The scores come unscaled: with a softcap, ALiBi or bias, or on a partial
  /// tile of a mask, they are scaled first and the modifiers applied as on the float path;
  /// otherwise the scale folds into the exponent.
  template <class Sched>
  void softmax(block& blk, index b, const Sched& sched, index n, index j0, index c0, index c1, index r0, index r1,
               std::uint16_t* pv, index p0, index p1) const {
    if constexpr (kAmx) {
      T scale = qs_;
      if (p_.softcap > 0 || p_.alibi || p_.bias || p_.mask || sched.partial(n)) {
        const V s = simd::bcast<V>(qs_);
        for (index c = c0; c < c1; ++c)
          for (index r = r0; r < r1; r += L) simd::store(blk.st + c * br_ + r, simd::load<V>(blk.st + c * br_ + r) * s);
        modify(blk, b, sched, n, j0, c0, c1, r0, r1);
        scale = T(1);
      }
      amx::softmax_pairs(blk.sm.m, blk.sm.l, blk.lx, blk.sm.alpha, blk.st, br_, c0, c1, r0, r1, scale, pv, p0, p1);
    }
  }

  /// A wide tile on AMX: K as bf16 rows (zero past d), V transposed to bf16, then as visit() or
  /// ranged() with the two products on tiles and P rounded to bf16 in between.
  template <class Sched, class Key, class Prefetch>
  void amx_tile(block& blk, index b, index hk, const Sched& sched, index n, index j0, index nc, const Key& key,
                const Prefetch& prefetch) const {
    if constexpr (kAmx) {
      auto* kt = reinterpret_cast<std::uint16_t*>(blk.kt);  // [Bc][d2] when copied
      auto* vt = reinterpret_cast<std::uint16_t*>(blk.vt);  // [dv2][2·Bc]: two tiles' Vᵀ
      auto* pv = reinterpret_cast<std::uint16_t*>(blk.amx);  // [Bc][br][2]: two tiles' P pairs
      auto* w = reinterpret_cast<std::uint32_t*>(blk.amx + 64 * br_);
      auto* vconv = reinterpret_cast<std::uint16_t*>(blk.amx + 64 * br_ + 32 * dvw_);
      const auto* qv = reinterpret_cast<const std::uint16_t*>(blk.qt);
      // K rows are copied (converted) into d2-wide rows, zeros past d: in place, a tile's rows sit
      // H·d apart (2 KiB at 8 heads × 128 bf16), all in two L1 sets per column, and the 8 lane
      // groups that reuse them missed L1 (the products ran ~25 % slower that way).
      const std::uint16_t* ktile = kt;
      const index ldk = d2_;
      const std::uint16_t* vrows[Bc];
      for (index c = 0; c < nc; ++c) {
        std::uint16_t* kr = kt + c * d2_;
        const std::uint16_t* src = bf16_row(p_.k, b, key(c), hk, p_.d, blk.stage, kr);
        if (src != kr) std::memcpy(kr, src, 2 * std::size_t(p_.d));
        std::fill(kr + p_.d, kr + d2_, std::uint16_t(0));
        vrows[c] = bf16_row(p_.v, b, key(c), hk, p_.dv, blk.stage, vconv + c * dvw_);
        prefetch(c);
      }
      // Sᵀ rows [c0, c1) × lanes [r0, r1) = K · Qᵀ, and Oᵀ's lanes [r0, r1) += Vᵀ · P over the pair
      // buffers' keys [c0, c1).
      const tile<const std::uint16_t> kq{ktile, Bc, d2_, ldk}, qp{qv, d2_ / 2, 2 * br_, 2 * br_};
      auto scores = [&](index c0, index c1, index r0, index r1) {
        pairs::scores(tiles_, tile<float>{blk.st, Bc, br_, br_}.block(c0, r0, c1 - c0, r1 - r0),
                      kq.block(c0, 0, c1 - c0, d2_), qp.block(0, 2 * r0, d2_ / 2, 2 * (r1 - r0)));
      };
      auto values = [&](const T* alpha, index c0, index c1, index r0, index r1) {
        pair_values(blk, alpha, vt, pv, c0, c1, r0, r1);
      };
      if constexpr (lane_grouped_keys<Sched>) {
        if (sched.partial(n)) {
          if (blk.pending) flush(blk);
          amx::pack_v(vt, 2 * Bc, vrows, nc, p_.dv, dv2_, dvw_, w);
          constexpr index W = 32;
          for (index r0 = 0; r0 < blk.valid; r0 += W) {
            index c0, c1;
            sched.lane_keys(n, r0, r0 + W, c0, c1);
            if (c0 >= c1) continue;
            scores(c0 & ~index(15), std::min(S::round_up(c1, 16), Bc), r0, r0 + W);
            const index p0 = c0 & ~index(31), p1 = S::round_up(c1, 32);
            softmax(blk, b, sched, n, j0, c0, c1, r0, r0 + W, pv, p0, p1);
            values(blk.sm.alpha, p0, p1, r0, r0 + W);
          }
          return;
        }
      }
      // A full tile: its V and P go to the second half of the buffers when a tile is pending.
      const index half = blk.pending ? Bc : 0;
      amx::pack_v(vt + half, 2 * Bc, vrows, nc, p_.dv, dv2_, dvw_, w);
      scores(0, S::round_up(nc, 16), 0, br_);
      const index p1 = S::round_up(nc, 32);
      softmax(blk, b, sched, n, j0, 0, nc, 0, br_, pv + half * br_, 0, p1);
      if (!blk.pending) {
        blk.pending = true, blk.pending_keys = p1;
        std::copy(blk.sm.alpha, blk.sm.alpha + br_, blk.pending_alpha);
        return;
      }
      // Both tiles' P·V: as one product over their keys where this tile left a lane group's max
      // where it was (alpha = 1, most tiles: see amx::softmax_pairs), else one after the other.
      blk.pending = false;
      for (index r0 = 0; r0 < br_; r0 += 32) {
        bool same = blk.pending_keys == Bc;
        for (index r = r0; r < r0 + 32 && same; ++r) same = blk.sm.alpha[r] == T(1);
        if (same) {
          values(blk.pending_alpha, 0, Bc + p1, r0, r0 + 32);
        } else {
          values(blk.pending_alpha, 0, blk.pending_keys, r0, r0 + 32);
          values(blk.sm.alpha, Bc, Bc + p1, r0, r0 + 32);
        }
      }
    }
  }

  /// The pending tile's P·V (see block::pending), on its own.
  void flush(block& blk) const {
    if constexpr (kAmx) {
      blk.pending = false;
      pair_values(blk, blk.pending_alpha, reinterpret_cast<const std::uint16_t*>(blk.vt),
                  reinterpret_cast<const std::uint16_t*>(blk.amx), 0, blk.pending_keys, 0, br_);
    }
  }

  /// Oᵀ's lanes [r0, r1) = alpha·Oᵀ + Vᵀ · P over the keys [c0, c1) of the two-tile buffers:
  /// Vᵀ [dv2][2·Bc] and P pairs [Bc][br][2].
  void pair_values(block& blk, const T* alpha, const std::uint16_t* vt, const std::uint16_t* pv, index c0, index c1,
                   index r0, index r1) const {
    if constexpr (kAmx) {
      const tile<const std::uint16_t> vq{vt, dv2_, 2 * Bc, 2 * Bc}, pq{pv, Bc, 2 * br_, 2 * br_};
      pairs::values(tiles_, tile<float>{blk.ot, dv2_, br_, br_}.block(0, r0, dv2_, r1 - r0), alpha + r0,
                    vq.block(0, c0, dv2_, c1 - c0), pq.block(c0 / 2, 2 * r0, (c1 - c0) / 2, 2 * (r1 - r0)));
    }
  }

  /// A narrow tile: the block's heads one by one for the scores (dot products of their rows with
  /// their K rows, read in place unless d needs zero padding), one online-softmax update for all
  /// lanes, then the heads one by one for P·V.
  template <class Sched, class Key, class Prefetch>
  void narrow_tile(block& blk, index b, index hb, const Sched& sched, index n, index j0, index nc, const Key& key,
                   const Prefetch& prefetch_ahead) const {
    const index dvp = S::round_up(p_.dv, S::NV * L);
    const bool in_place = in_place_ && !gathered_keys<Sched>;
    const index m = std::min(rows_, blk.valid);  // rows per head (a policy's own blocks may hold fewer)
    // In place, K and V are read as they are stored: 16-bit rows widen in registers as they load.
    for (index h = 0; h < blk.heads; ++h) {
      const index hk = hb * hb_ + h;
      // Sᵀ[c][h·slot + r] = Q[h·slot + r] · K[j0 + c]
      auto scores = [&](auto stored, const void* kt, index ldk) {
        using SK = typename decltype(stored)::type;
        dot_abt<Arch, T>({blk.st + h * slot_, nc, m, br_}, {blk.qt + h * slot_ * ldq_, m, ldq_, ldq_},
                         tile<const SK>{static_cast<const SK*>(kt), nc, ldq_, ldk}, prefetch_ahead(hk));
      };
      if (in_place) {
        visit_storage<T>(p_.k.type, [&](auto stored) { scores(stored, p_.k.at(b, j0, hk), p_.k.ss); });
      } else {
        for (index c = 0; c < nc; ++c) {
          p_.k.load(blk.kt + c * ldk_, b, key(c), hk, p_.d);
          std::fill(blk.kt + c * ldk_ + p_.d, blk.kt + c * ldk_ + ldq_, T(0));
        }
        scores(std::type_identity<T>{}, blk.kt, ldk_);
      }
    }
    modify(blk, b, sched, n, j0, 0, nc, 0, br_);
    blk.sm.update(blk.st, br_, nc, br_);
    for (index h = 0; h < blk.heads; ++h) {
      const index hk = hb * hb_ + h;
      // O[h·slot + r][e] = alpha·O[h·slot + r][e] + Σ_c P[c][h·slot + r] · V[j0 + c][e]
      auto values = [&](auto stored, const void* vt, index ldv) {
        using SV = typename decltype(stored)::type;
        mma_ab<Arch, T, S::MR, S::NV, mma_init::scale_rows, false, SV>(
            {blk.ot + h * slot_ * ldv_, m, dvp, ldv_}, by_cols(blk.st + h * slot_, br_),
            {static_cast<const SV*>(vt), nc, dvp, ldv}, blk.sm.alpha + h * slot_);
      };
      if (in_place) {
        visit_storage<T>(p_.v.type, [&](auto stored) { values(stored, p_.v.at(b, j0, hk), p_.v.ss); });
      } else {
        for (index c = 0; c < nc; ++c) p_.v.load(blk.vt + c * ldv_, b, key(c), hk, p_.dv);
        values(std::type_identity<T>{}, blk.vt, ldv_);
      }
    }
  }

  /// The copied tile of a lane-grouped schedule, one vector of lanes at a time over the keys
  /// [c0, c1) that some of its lanes see: Sᵀ, the schedule's mask, the online softmax and Oᵀ as in
  /// visit(), on that range only; padding lanes past `valid` are skipped. (The 2-D front door takes
  /// no softcap, ALiBi, bias or mask.)
  template <class Sched>
  void grouped(block& blk, const Sched& sched, index n, const T* kt, index ldk, const T* vt, index ldv) const {
    for (index r0 = 0; r0 < blk.valid; r0 += L) {
      index c0, c1;
      sched.lane_keys(n, r0, r0 + L, c0, c1);
      if (c0 >= c1) continue;
      T* st = blk.st + c0 * br_;  // its micro-tiles run up to MRK − 1 rows past c1 (s_rows)
      // Sᵀ[c][r] = Σ_k K[c][k] · Qᵀ[k][r]
      mma_ab<Arch, T, S::MRK, 1, mma_init::zero>({st + r0, c1 - c0, L, br_}, by_rows(kt + c0 * ldk, ldk),
                                                 {blk.qt + r0, p_.d, L, br_});
      sched.template mask_lanes<V>(blk.st, view(blk), n, c0, c1, r0, r0 + L);
      blk.sm.update(st, br_, c1 - c0, r0 + L, r0);
      // Oᵀ[e][r] = alpha[r]·Oᵀ[e][r] + Σ_c V[c][e] · P[c][r], for e < round_up(dv, MR1) <= ldv (the rows
      // past dv read the copied rows' padding; they are meaningless and never written out)
      mma_ab<Arch, T, S::MR1, 1, mma_init::scale_cols, true>({blk.ot + r0, p_.dv, L, br_}, by_cols(vt + c0 * ldv, ldv),
                                                             {st + r0, c1 - c0, L, br_}, blk.sm.alpha + r0);
    }
  }

  /// Score modifiers and masks on rows [c0, c1) × lanes [r0, r1) of the tile, in the order of
  /// softmax_options: softcap, ALiBi, bias, then the schedule's mask (partial tiles only) and the
  /// boolean mask. Each is one pass over the tile and costs nothing when off.
  template <class Sched>
  void modify(block& blk, index b, const Sched& sched, index n, index j0, index c0, index c1, index r0,
              index r1) const {
    T* st = blk.st;
    if (p_.softcap > 0) {  // Q carried scale/cap: s ← cap·tanh(s)·log2 e
      const V cap = simd::bcast<V>(T(p_.softcap * kLog2e));
      for (index c = c0; c < c1; ++c)
        for (index r = r0; r < r1; r += L)
          simd::store(st + c * br_ + r, simd::tanh(simd::load<V>(st + c * br_ + r)) * cap);
    }
    // ALiBi, bias and mask index keys as j0 + c: contiguous tiles only (the 2-D front door takes none).
    if (p_.alibi) {  // s += −slope·|i + off − j|
      const index off = p_.nk_of(b) - p_.nq_of(b);
      for (index c = c0; c < c1; ++c) {
        const V shift = simd::bcast<V>(T(off - (j0 + c)));
        for (index r = r0; r < r1; r += L) {
          const V dist = simd::abs(simd::load<V>(blk.qpos + r) + shift);
          simd::store(st + c * br_ + r, simd::fma(simd::load<V>(blk.slope + r), dist, simd::load<V>(st + c * br_ + r)));
        }
      }
    }
    const index live = std::min(r1, blk.valid);
    if (p_.bias) {
      for (index r = r0; r < live; ++r) {
        const float* row = p_.bias + b * p_.bias_sb + blk.qh[r] * p_.bias_sh + blk.qi[r] * p_.nk + j0;
        for (index c = c0; c < c1; ++c) st[c * br_ + r] += T(double(row[c]) * kLog2e);
      }
    }
    if (sched.partial(n)) sched.template mask_lanes<V>(st, view(blk), n, c0, c1, r0, r1);
    if (p_.mask) {
      for (index r = r0; r < live; ++r) {
        const bool* row = p_.mask + b * p_.mask_sb + blk.qh[r] * p_.mask_sh + blk.qi[r] * p_.nk + j0;
        for (index c = c0; c < c1; ++c)
          if (!row[c]) st[c * br_ + r] = kNegInf;
      }
    }
  }

  /// out[b, i, h, :] = O[:, r] / l[r]; lse = (m + log2 lx)·ln 2 (lx: l, or on the AMX path the
  /// sum of P before its rounding). Rows with l = 0 (fully masked) and
  /// padded rows (i >= the batch's valid queries) get zeros and LSE −inf; a row whose sum is NaN
  /// (it saw a NaN or +inf score) gets NaN.
  void write(const block& blk, index b, index nq, const T* ot, const T* m, const T* l, const T* lx) const {
    T* stage = blk.stage;
    for (index r0 = 0; r0 < blk.valid; r0 += kT) {  // blocked as Q in start()
      const index r1 = std::min(r0 + kT, blk.valid);
      T inv[kT];
      for (index r = r0; r < r1; ++r) {
        const index i = blk.qi[r], h = blk.qh[r];
        const bool live = i < nq && !(l[r] <= T(0));  // a NaN sum (a NaN score) is live: NaN out
        inv[r - r0] = live ? T(1) / l[r] : T(0);
        if (p_.lse && own_lane(r))
          p_.lse[(b * p_.hq + h) * p_.nq + i] = live ? T((double(m[r]) + std::log2(double(lx[r]))) * kLn2) : kNegInf;
      }
      // 16-bit rows are written to the stage, then rounded into out
      const bool native = p_.o.native();
      if constexpr (Narrow) {
        for (index r = r0; r < r1; ++r) {
          if (!own_lane(r)) continue;
          T* out = native ? p_.o.row(b, blk.qi[r], blk.qh[r]) : stage;
          for (index e = 0; e < p_.dv; ++e) out[e] = ot[o_at(e, r)] * inv[r - r0];
          if (!native) p_.o.store(b, blk.qi[r], blk.qh[r], stage, p_.dv);
        }
      } else {
        T* out[kT];
        for (index r = r0; r < r1; ++r) out[r - r0] = native ? p_.o.row(b, blk.qi[r], blk.qh[r]) : stage + (r - r0) * ldst_;
        transpose_out(ot + r0, br_, r1 - r0, p_.dv, inv, out);
        if (!native)
          for (index r = r0; r < r1; ++r) p_.o.store(b, blk.qi[r], blk.qh[r], out[r - r0], p_.dv);
      }
    }
  }

  /// Combines the splits of unit u by their maxima: m = max m_s, l = Σ l_s·2^(m_s − m),
  /// O = Σ O_s·2^(m_s − m), into the first split's buffer, then writes the rows.
  void merge(index u, T* parts) const {
    index b, hk, qb;
    unit_coords(u, b, hk, qb);
    const index ps = partial_size();
    T* ot = parts;
    T* m = parts + o_size_;
    T* l = m + br_;
    T* lx = l + br_;
    for (index r = 0; r < br_; ++r) {
      T mx = kNegInf;
      for (index s = 0; s < splits_; ++s) mx = std::max(mx, parts[s * ps + o_size_ + r]);
      const T mu = mx == kNegInf ? T(0) : mx;
      T sum = 0, sum_x = 0;
      for (index s = 0; s < splits_; ++s) {
        const T w = std::exp2(parts[s * ps + o_size_ + r] - mu);
        sum += parts[s * ps + o_size_ + br_ + r] * w;
        sum_x += parts[s * ps + o_size_ + 2 * br_ + r] * w;
        for (index e = 0; e < p_.dv; ++e) {
          const T x = parts[s * ps + o_at(e, r)] * w;
          ot[o_at(e, r)] = s == 0 ? x : ot[o_at(e, r)] + x;
        }
      }
      m[r] = mx, l[r] = sum, lx[r] = sum_x;
    }
    block blk;  // lane coordinates and the stage only
    lanes(blk, hk, qb);
    blk.stage = blocks(1)->stage;  // this thread's scratch: the workers are done
    write(blk, b, p_.nq_of(b), ot, m, l, lx);
  }

  const softmax_problem<T>& p_;
  Policy policy_;
  index rows_;   // query rows per K/V head: nq·G
  index slot_;   // narrow: lanes per K/V head in a block (rows_ rounded up to whole micro-tiles)
  index hb_;     // narrow: K/V heads per block (1 for wide blocks)
  index br_, qblocks_, nhb_, units_;
  bool by_key_;  // key-major decode: items are (batch, key split) over every block of heads
  index splits_, ldq_, ldk_, ldv_, o_size_;
  index ldst_;     // row stride of a block's stage
  bool in_place_;  // narrow tiles read K and V rows where they are (no padding needed)
  bool amx_;       // products on bf16 pairs (use_amx), in the layouts of core/amx.hpp
  bool tiles_;     // ... on AMX tiles (else AVX512-BF16 dot products, core/dpbf16.hpp)
  index d2_, dv2_, dvw_;  // AMX: d rounded up to 32, dv to 16 and to 32
  T qs_;           // the scale the scores need (Q carries it on the other paths)
};

/// Keys per tile of the engine that softmax_forward picks for `p` (block layouts are resolved to it).
template <class Arch, class T>
index key_tile(const softmax_problem<T>& p) {
  return p.nq * p.group <= simd::lanes_v<T, Arch> ? tile_shape<T, Arch, true>::Bc : tile_shape<T, Arch, false>::Bc;
}

/// Runs a validated softmax problem on `dev`: narrow blocks when one K/V head group's rows fit
/// in one vector (decode), wide blocks otherwise.
template <class Arch, class T, class Device, class Policy = band_policy>
void softmax_forward(const softmax_problem<T>& p, const Device& dev, const Policy& policy = {}) {
  if (p.batch == 0 || p.nq == 0) return;  // an empty result
  if (p.nq * p.group <= simd::lanes_v<T, Arch>)
    tile_engine<T, Arch, true, Policy>(p, policy).run(dev);
  else
    tile_engine<T, Arch, false, Policy>(p, policy).run(dev);
}

}  // namespace xattn::detail
