// xattn/core/chunk_engine.hpp — the engine of linear and lightning attention.
//
// Per (batch, query head) — a *unit* — the sequence is cut into chunks of B tokens. With λ = e^−s
// the head's decay, t, j positions inside a chunk of nb tokens, S the d' × e state before it:
//     P[t][j] = scale·φ(q_t)·φ(k_j) · D[t][j],   D[t][j] = λ^(t−j) for j <= t, else 0     (intra)
//     O[t]    = λ^(t+1)·(scale·φ(q_t)·S) + Σ_j P[t][j]·v_j                             (inter + intra)
//     S'      = λ^nb·S + ΔS,   ΔS = Σ_j φ(k_j)ᵀ·λ^(nb−1−j)·v_j                           (state update)
// With the normaliser, z = Σ φ(k) rides alongside S (one more value column of ones): the row
// sums of P plus λ^(t+1)·φ(q_t)·z divide O. Non-causal attention has no intra part: S = S0 + Σ ΔS
// over all keys, then O = φ(Q)·S. The decay mask is never factorised into λ^t·λ^−j (which
// overflows for large s): D is read from a table of λ^m, 0 <= m <= B.
//
// Products, all on packed rows (φ(Q) and φ(K) [B][d'], V [B][e]) and nothing transposed:
//     P  = φ(Q)·φ(K)ᵀ      dot_rows: dot products along d', one haddp per row and L keys (lower
//                          triangle only); a broadcast kernel would need φ(Q) or φ(K) transposed,
//                          which costs ~2 cycles per element, more than the haddp
//     O  = φ(Q)·S          mma_ab: A = φ(Q) rows, B panel = S
//     O += P·V             mma_ab: A = P rows, B panel = V, per MR rows up to their last key
//     ΔS = φ(K)ᵀ·(λV)      mma_ab: A = φ(K) read by columns, B panel = λ-scaled V
//
// Work decomposition (shapes only, never the thread count): with enough (batch, head) units, one
// item per group of up to four heads of a batch runs their chunks in order, chunk by chunk across
// the heads (their rows share pages; see run_group). With a single unit the chunks of its
// sequence are processed in windows: (1) every chunk's ΔS in parallel into its own slot, (2) a
// prefix pass S_{i+1} = λ^nb·S_i + ΔS_i over the slots, split over the state's elements, leaving
// S_i in slot i, (3) every chunk's output from its S_i in parallel (Lightning Attention-2's
// parallel variant, in bounded memory). Both orders evaluate the same expressions on the same
// operands — ΔS from zero, then fma(λ^nb, S, ΔS) — so results are bitwise identical whichever
// runs and for any thread count.
//
// On the bf16 paths (see use_amx for when): AMX-BF16 tiles (core/amx.hpp) or AVX512-BF16 dot
// products (core/dpbf16.hpp), the same products with bf16 operands and float sums, each as
// C = A·B with A bf16 rows and B paired along k:
//     P  = Q·Kᵀ            A = Q rows, B = K paired along d (a 32-bit transpose of its rows); lower
//                          32 × 32 blocks only; then P ⊙ scale·D rounded to bf16 rows
//     O  = Q·S             A = Q rows, B = S paired along d, rounded to bf16 chunk by chunk
//     O' = P·V             A = P, B = V paired along keys
//     ΔS = Kᵀ·(λV)         A = Kᵀ (K's pairs split into rows), B = λ-scaled V paired, rounded to bf16
// and out = scale·λ^(t+1)·O + O'. Q, K and V enter as bf16 unscaled (scale multiplies float
// results), so bf16 inputs are used exactly. States stay float and are combined as on the fp32 path,
// so both orders still give the same bits.
//
// Storage: q, k, v and out may hold Eigen::bfloat16 or Eigen::half (core/convert.hpp). They enter
// as rows are packed (pack_q, pack_k, pack_v, the key statistics) and leave as out rows are
// written; everything between, states included, is T. Native rows are read where they are, as
// before; 16-bit rows are converted into a row of scratch first.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>

#include "../paths.hpp"
#include "amx.hpp"
#include "dpbf16.hpp"
#include "feature_maps.hpp"
#include "linear_args.hpp"
#include "microkernel.hpp"
#include "parallel.hpp"
#include "simd.hpp"
#include "workspace.hpp"

namespace xattn::detail {

/// Micro-tiles of the chunk products: MR rows × 2 vectors — 16 accumulators of AVX-512's 32
/// registers, 8 of AVX2's 16 (2 FMA pipes × 4-cycle latency) — and a 1-vector strip for a last
/// odd vector of columns.
template <class T, class Arch>
struct chunk_tiles {
  static constexpr index L = simd::lanes_v<T, Arch>;
  static constexpr int MR = simd::traits<T, Arch>::registers >= 32 ? 8 : 4;
  static constexpr index kAlignElems = index(simd::kAlign / sizeof(T));
  static constexpr index round_up(index x, index m) { return detail::round_up(x, m); }
};

/// C = A·B (mma_ab) over n columns, n a multiple of the vector width: 2-vector micro-tiles, then a
/// 1-vector strip. Rows are tiled by MR in both, so C needs round_up(m, MR) rows.
template <class Arch, class T, mma_init Init>
void chunk_gemm(tile<T> c, strided<T> a, tile<const T> b, const T* row_scale = nullptr) {
  using S = chunk_tiles<T, Arch>;
  static_assert(Init != mma_init::scale_cols, "column scales would need offsetting for the strip");
  const index n = c.cols, n2 = n / (2 * S::L) * (2 * S::L);
  if (n2 > 0) mma_ab<Arch, T, S::MR, 2, Init>(c.block(0, 0, c.rows, n2), a, b.block(0, 0, b.rows, n2), row_scale);
  if (n > n2)
    mma_ab<Arch, T, S::MR, 1, Init>(c.block(0, n2, c.rows, n - n2), a, b.block(0, n2, b.rows, n - n2), row_scale);
}

/// C[r][c] = Σ_k A[r][k]·B[c][k] for r < m (A's rows) and one vector of columns c < L (B's rows
/// n, at most L; rows past n are read from row n − 1), k A's columns: per row of A, L accumulators
/// run along k over the L rows of B, which stay in L1 across the rows, and one haddp folds them
/// into a vector of C. k is a multiple of the vector width; A, B and C rows are aligned. The
/// loops over the L accumulators are unrolled by pragma: g++ at -O2 otherwise kept them in memory
/// (lightning ran 35 % slower than at -O3).
template <class Arch, class T>
void dot_rows(tile<T> c, tile<const T> a, tile<const T> b) {
  using V = simd::vec_t<T, Arch>;
  constexpr int L = simd::lanes_v<T, Arch>;
  const index m = a.rows, n = b.rows, k = a.cols;
  const T* br[L];
  XATTN_UNROLL for (int i = 0; i < L; ++i) br[i] = b.row(std::min<index>(i, n - 1));
  for (index r = 0; r < m; ++r) {
    V acc[L];
    XATTN_UNROLL for (int i = 0; i < L; ++i) acc[i] = simd::bcast<V>(T(0));
    const T* ar = a.row(r);
    for (index kk = 0; kk < k; kk += L) {
      const V av = simd::load<V>(ar + kk);
      XATTN_UNROLL for (int i = 0; i < L; ++i) acc[i] = simd::fma(av, simd::load<V>(br[i] + kk), acc[i]);
    }
    simd::store(c.row(r), simd::haddp(acc));
  }
}

/// Units below which the chunks of a unit are spread over the threads (windowed order): one. The
/// windowed order reads K and V twice and moves every chunk's state through L3 in its prefix pass;
/// at d = e = 128 it runs at 0.88× the per-unit order on one thread and scales 1.5× on two, so
/// already at two units (B = 1, H = 2: 1.84× on two threads) one item per head is faster.
inline constexpr index kChunkParallelUnits = 2;
/// Bytes of per-chunk states in flight in the windowed order (all units): it bounds the window.
inline constexpr std::size_t kWindowBytes = std::size_t{8} << 20;
inline constexpr index kMaxWindow = 64;
/// State elements per item of the prefix pass.
inline constexpr index kPrefixSlice = 2048;
/// Consecutive chunks per item of the windowed order.
inline constexpr index kRunChunks = 4;
/// Bytes of float out from which the AMX path streams its out rows past the caches (stream_out_):
/// about a last-level cache of these machines.
inline constexpr std::size_t kStreamOutBytes = std::size_t{32} << 20;
/// Heads one item of the per-unit order sweeps together: at most kMaxHeadGroup, fewer when that
/// would leave less than kMinGroupItems items (two threads' worth: B = 1, H = 8 runs as two items
/// of four heads, measured ~5% faster at N = 131072 than four items of two).
inline constexpr index kMaxHeadGroup = 4, kMinGroupItems = 2;

inline index head_group_of(index batch, index heads) {
  index g = kMaxHeadGroup;
  while (g > 1 && batch * ((heads + g - 1) / g) < kMinGroupItems) g /= 2;
  return std::min(g, heads);
}

template <class T, class Arch>
class chunk_engine {
  using S = chunk_tiles<T, Arch>;
  using V = simd::vec_t<T, Arch>;
  static constexpr index L = S::L;
  static constexpr index MR = S::MR;
  static constexpr index round_up(index x, index m) { return S::round_up(x, m); }
  static constexpr index ceil_div(index x, index m) { return (x + m - 1) / m; }
  static constexpr index kAheadRows = 4;       // rows of the next chunk prefetched after each product
  static constexpr index kAheadTile = 4 * MR;  // rows of the large products between two of those
  /// Whether this engine carries the AMX path: float compute with 16 lanes in an AVX-512 build.
  static constexpr bool kAmx = amx::built && std::is_same_v<T, float> && L == 16;

 public:
  explicit chunk_engine(const chunk_problem<T>& p)
      : p_(p),
        bk_(p.block),
        ldp_(round_up(bk_, L)),
        rows_(round_up(bk_, MR)),
        ldf_(round_up(p.df, L)),
        lde_(round_up(p.e, L)),
        srows_(round_up(p.df, MR)),
        zoff_(srows_ * lde_),
        sstride_(round_up(zoff_ + (p.normalize ? ldf_ : 0), S::kAlignElems)),
        pw_off_(round_up(bk_ + ldp_, S::kAlignElems)),
        tw_(pw_off_ + round_up(bk_ + 2, S::kAlignElems)),
        units_(p.batch * p.hq),
        kchunks_(ceil_div(p.nk, bk_)),
        qchunks_(ceil_div(p.nq, bk_)),
        decayed_(p.has_decay()),
        soft_(p.map->kind() == feature::softmax),
        converts_(!p.q.native() || !p.k.native()),
        window_(std::clamp<index>(index(kWindowBytes / (sizeof(T) * std::size_t(units_ * sstride_))), 1, kMaxWindow)),
        windowed_(units_ < kChunkParallelUnits && kchunks_ > 1 && window_ > 1),
        head_group_(head_group_of(p.batch, p.hq)),
        amx_(use_amx(p)),
        tiles_(amx_ && bf16_product_path<Arch>() == product_path::amx_bf16),
        stream_out_(amx_ && p.o.native() &&
                    std::size_t(p.batch * p.nq * p.hq * p.e) * sizeof(T) >= kStreamOutBytes) {}

  /// Whether this engine runs its products on bf16 pairs (see paths.hpp): float compute in an
  /// AVX-512 build, the identity map without normaliser, d, e and the chunk multiples of 32 (whole
  /// tiles), bf16 q, k and v (or compute = bf16), and the CPU and OS allowing it.
  static bool use_amx(const chunk_problem<T>& p) {
    if constexpr (!kAmx) {
      return false;
    } else {
      const bool bf16 = p.q.type == elem::bf16 && p.k.type == elem::bf16 && p.v.type == elem::bf16;
      return (bf16 || p.bf16_compute) && p.map->kind() == feature::identity && !p.normalize && p.d % 32 == 0 &&
             p.e % 32 == 0 && p.block % 32 == 0 && bf16_product_path<Arch>() != product_path::fp32;
    }
  }

  template <class Device>
  void run(const Device& dev) {
    // Shared, read by every item: per-head tables of λ^m, the key statistics of the per-side
    // softmax, and in the windowed order the running state and the per-chunk slots of each unit.
    ld_stats_ = round_up(2 * p_.d, S::kAlignElems);
    const index n_tab = p_.hq * tw_, n_stats = soft_ ? p_.batch * p_.hkv * ld_stats_ : 0;
    const index n_carry = windowed_ ? units_ * sstride_ : 0, n_slots = windowed_ ? units_ * window_ * sstride_ : 0;
    T* shared = static_cast<T*>(
        workspace::of_this_thread(1).get(sizeof(T) * std::size_t(n_tab + n_stats + n_carry + n_slots)));
    tab_ = shared, stats_ = tab_ + n_tab, carry_ = stats_ + n_stats, slots_ = carry_ + n_carry;
    for (index h = 0; h < p_.hq; ++h) build_table(h);
    if (soft_) parallel_for(dev, p_.batch * p_.hkv, [&](index bh) { key_softmax_stats(bh); });
    if (windowed_) {
      run_windowed(dev);
    } else {
      const index groups = ceil_div(p_.hq, head_group_);
      parallel_for(dev, p_.batch * groups, [&](index it) {
        const index b = it / groups, h0 = it % groups * head_group_;
        run_group(b, h0, std::min(h0 + head_group_, p_.hq));
      });
    }
  }

 private:
  /// Rows [next, end) of batch b, query head h that the item reads next and has not prefetched yet.
  struct ahead_rows {
    index b = 0, h = 0, next = 0, end = 0;
    bool q = false, kv = false;
  };

  /// One item's scratch, carved from its thread's workspace: φ(Q) and φ(K) [B][ldf], P [rows][ldp],
  /// V and λ-scaled V [B][lde], O [rows][lde], λ^(nb−1−j) [ldp], the normaliser [rows], one feature
  /// row, one converted input row (16-bit q or k only), and in the per-unit order the states of its
  /// heads and ΔS.
  struct scratch {
    T *qf, *kf, *p, *v, *vd, *o, *kdec, *den, *row, *cv, *s, *ds;
    T lam_nb;  // λ^nb of the current chunk
    ahead_rows ahead;
    // AMX (bf16): Q, K and V rows [B][d|e], K's pairs [d/2][B] words, Kᵀ [d][B], V, λV and S paired
    // [B/2|d/2][e][2], P [B][B]; O' [B][e] and a converted row [max(d, e)] in float
    std::uint16_t *qb = nullptr, *kr = nullptr, *kp = nullptr, *kt = nullptr, *vr = nullptr, *vp = nullptr,
                  *vdp = nullptr, *sp = nullptr, *pb = nullptr;
    T *o2 = nullptr, *f = nullptr;
    // AMX, per-unit order: the S pairs of each of the item's heads, written as its state is updated,
    // and the ones output() is to use (null: it pairs the state it is given itself)
    std::uint16_t* sps = nullptr;
    const std::uint16_t* sp_ready = nullptr;
  };

  /// The AMX part of an item's scratch, in T: the bf16 buffers of scratch, then O' and the row.
  index amx_bf16_sizes(index* n) const {
    const index d = p_.d, e = p_.e, bk = bk_;
    const index sizes[] = {bk * d, bk * d, bk * d, d * bk, bk * e, bk * e, decayed_ ? bk * e : 0, d * e, bk * bk};
    index total = 0;
    for (int i = 0; i < 9; ++i) total += (n ? n[i] = sizes[i] : sizes[i]);
    return total;
  }
  index amx_size(index states) const {
    return amx_ ? round_up(amx_bf16_sizes(nullptr) / 2, S::kAlignElems) + round_up(bk_ * p_.e, S::kAlignElems) +
                      round_up(std::max(p_.d, p_.e), S::kAlignElems) + states * p_.d * p_.e / 2
                : 0;
  }
  void carve_amx(scratch& w, T* base, index states) const {
    index n[9];
    amx_bf16_sizes(n);
    auto* h = reinterpret_cast<std::uint16_t*>(base);
    std::uint16_t** at[] = {&w.qb, &w.kr, &w.kp, &w.kt, &w.vr, &w.vp, &w.vdp, &w.sp, &w.pb};
    for (int i = 0; i < 9; ++i) *at[i] = n[i] ? h : nullptr, h += n[i];  // each a multiple of 32 bf16
    w.o2 = base + round_up(amx_bf16_sizes(nullptr) / 2, S::kAlignElems);
    w.f = w.o2 + round_up(bk_ * p_.e, S::kAlignElems);
    if (states) w.sps = reinterpret_cast<std::uint16_t*>(w.f + round_up(std::max(p_.d, p_.e), S::kAlignElems));
  }
  /// Loads this thread's tile configuration (each item: other code may have changed it).
  void configure_tiles() const {
    if constexpr (kAmx)
      if (tiles_) amx::configure();
  }

  scratch carve(index states) const {
    const index sizes[] = {bk_ * ldf_,   bk_ * ldf_, p_.causal ? rows_ * ldp_ : 0, bk_ * lde_, decayed_ ? bk_ * lde_ : 0,
                           rows_ * lde_, ldp_,       rows_,        std::max(p_.df, p_.d) + L,
                           converts_ ? p_.d + L : 0, states * sstride_, states ? sstride_ : 0, amx_size(states)};
    constexpr int kParts = int(std::size(sizes));
    index total = 0;
    for (index n : sizes) total += round_up(n, S::kAlignElems);
    T* base = static_cast<T*>(workspace::of_this_thread(0).get(sizeof(T) * std::size_t(total)));
    T* at[kParts];
    for (int i = 0; i < kParts; ++i) {
      at[i] = sizes[i] ? base : nullptr;
      base += round_up(sizes[i], S::kAlignElems);
    }
    scratch w{at[0], at[1], at[2], at[3], at[4], at[5], at[6], at[7], at[8], at[9], at[10], at[11], T(1), {}};
    if (amx_) carve_amx(w, at[12], states);
    return w;
  }

  // --- tables ------------------------------------------------------------------------------------

  /// Per head: rev[i] = λ^(B−1−i) for i < B and 0 for B <= i < B + ldp, so that row t of the
  /// decay mask is rev[B−1−t + j]; then pw[m] = λ^m for 0 <= m <= B+1. λ^m is exp(−s·m) in double,
  /// rounded once; values below T's smallest normal become 0 (denormal operands slow the FMAs).
  void build_table(index h) const {
    T* rev = tab_ + h * tw_;
    T* pw = rev + pw_off_;
    const double s = p_.decay_of(h);
    auto power = [s](index m) {
      const double x = std::exp(-s * double(m));
      return x < double(std::numeric_limits<T>::min()) ? T(0) : T(x);
    };
    for (index i = 0; i < pw_off_; ++i) rev[i] = i < bk_ ? power(bk_ - 1 - i) : T(0);
    for (index m = 0; m < tw_ - pw_off_; ++m) pw[m] = power(m);
  }
  const T* mask_table(index h) const { return tab_ + h * tw_; }
  const T* powers(index h) const { return tab_ + h * tw_ + pw_off_; }

  /// kdec[j] = λ^(nb−1−j) for j < nb, 0 up to ldp; lam_nb = λ^nb.
  void set_chunk(scratch& w, index h, index nb) const {
    const T* pw = powers(h);
    for (index j = 0; j < ldp_; ++j) w.kdec[j] = j < nb ? pw[nb - 1 - j] : T(0);
    w.lam_nb = pw[nb];
  }

  /// Per (batch, K/V head): max_j k_jc and Σ_j exp(k_jc − max) of every feature c.
  void key_softmax_stats(index bh) const {
    const index b = bh / p_.hkv, hk = bh % p_.hkv;
    T* mx = stats_ + bh * ld_stats_;
    T* cv = p_.k.native() ? nullptr : static_cast<T*>(workspace::of_this_thread(0).get(sizeof(T) * std::size_t(p_.d)));
    detail::key_softmax_stats<Arch, T>([&](index j) { return k_row(cv, b, j, hk); }, p_.nk, p_.d, mx, mx + p_.d);
  }

  // --- packing -----------------------------------------------------------------------------------

  /// The rows of chunk c of unit (b, h) as the next rows to prefetch (none past the sequence).
  ahead_rows rows_of(index b, index h, index c, bool q, bool kv) const {
    const index t0 = c * bk_, n = q ? p_.nq : p_.nk;
    return {b, h, std::min(t0, n), std::min(t0 + bk_, n), q, kv};
  }

  /// Asks for a few more of the rows w.ahead lists, into L2. Consecutive rows of a head are H·d
  /// apart (a page apart at H·d = 1024 floats), where the hardware prefetchers do not follow, and
  /// waiting on them cost a third of the time at d = 128; a whole chunk of prefetches at once
  /// overflows the miss queues and is mostly dropped. So each product of the chunk in hand is
  /// followed by a few rows of the next chunk's prefetches.
  void prefetch_some(scratch& w) const {
    ahead_rows& a = w.ahead;
    const index hk = a.h / p_.group, end = std::min(a.end, a.next + kAheadRows);
    for (; a.next < end; ++a.next) {
      if (a.q) {  // with q, the chunk writes its out rows: owning their lines first spares the stores a miss
        simd::prefetch(p_.q.at(a.b, a.next, a.h), elem_bytes(p_.q.type) * std::size_t(p_.d));
        if (!stream_out_) simd::prefetch(p_.o.at(a.b, a.next, a.h), elem_bytes(p_.o.type) * std::size_t(p_.e));
      }
      if (a.kv) {
        simd::prefetch(p_.k.at(a.b, a.next, hk), elem_bytes(p_.k.type) * std::size_t(p_.d));
        simd::prefetch(p_.v.at(a.b, a.next, hk), elem_bytes(p_.v.type) * std::size_t(p_.e));
      }
    }
  }

  /// Row (b, s, h) of q or k as T: where it is, or converted into cv (16-bit storage).
  static const T* row_of(const bshd_view<const T>& t, T* cv, index d, index b, index s, index h) {
    if (t.native()) return t.row(b, s, h);
    t.load(cv, b, s, h, d);
    return cv;
  }
  const T* k_row(T* cv, index b, index s, index h) const { return row_of(p_.k, cv, p_.d, b, s, h); }

  /// Row (b, s, h) of t as bf16 into out: copied, or rounded to nearest even (16-bit half rows
  /// through the float row f).
  static void bf16_row(const bshd_view<const T>& t, T* f, index b, index s, index h, index n, std::uint16_t* out) {
    if (t.type == elem::bf16) {
      std::memcpy(out, t.at(b, s, h), 2 * std::size_t(n));
      return;
    }
    if (!t.native()) t.load(f, b, s, h, n);
    store_row(out, elem::bf16, t.native() ? t.row(b, s, h) : f, n);
  }
  /// n bf16 rows of `t` from token t0 into dst [round_up(n, 32)][dim] (rows past n zero).
  void bf16_rows(const bshd_view<const T>& t, T* f, index b, index h, index t0, index n, index dim,
                 std::uint16_t* dst) const {
    for (index j = 0; j < n; ++j) bf16_row(t, f, b, t0 + j, h, dim, dst + j * dim);
    std::fill(dst + n * dim, dst + round_up(n, 32) * dim, std::uint16_t(0));
  }

  /// φ(Q)[t] = scale·φ(q_t), zero past d'. AMX: the bf16 rows of q, unscaled.
  void pack_q(scratch& w, index b, index h, index t0, index nb) const {
    if constexpr (kAmx)
      if (amx_) return bf16_rows(p_.q, w.f, b, h, t0, nb, p_.d, w.qb);
    const T sc = T(p_.scale);
    const bool ident = p_.map->kind() == feature::identity;
    for (index t = 0; t < nb; ++t) {
      T* y = w.qf + t * ldf_;
      if (ident && !p_.q.native()) {
        p_.q.load(y, b, t0 + t, h, p_.d, sc);  // converted and scaled in one pass: scale·q_t
      } else {
        const T* f = row_of(p_.q, w.cv, p_.d, b, t0 + t, h);
        if (!ident) {
          feature_row<Arch, T>(*p_.map, f, p_.d, w.row);
          f = w.row;
        }
        simd::scale_copy<V>(y, f, p_.df, sc);
      }
      std::fill(y + p_.df, y + ldf_, T(0));
    }
  }

  /// φ(K)[j] = φ(k_j), zero past d'. AMX: K's bf16 rows, their pairs along d (words [d/2][B]) and Kᵀ.
  void pack_k(scratch& w, index b, index hk, index t0, index nb) const {
    if constexpr (kAmx)
      if (amx_) {
        const index d2 = p_.d / 2, n32 = round_up(nb, 32);
        bf16_rows(p_.k, w.f, b, hk, t0, nb, p_.d, w.kr);
        auto* kp = reinterpret_cast<std::uint32_t*>(w.kp);
        amx::transpose_words(kp, bk_, reinterpret_cast<const std::uint32_t*>(w.kr), d2, n32, d2);
        amx::split_pairs(w.kt, bk_, kp, bk_, d2, n32);
        return;
      }
    for (index j = 0; j < nb; ++j) {
      const T* x = k_row(w.cv, b, t0 + j, hk);
      T* y = w.kf + j * ldf_;
      if (soft_) {
        const T* mx = stats_ + (b * p_.hkv + hk) * ld_stats_;
        key_softmax_row<Arch, T>(x, p_.d, mx, mx + p_.d, y);
      } else {
        feature_row<Arch, T>(*p_.map, x, p_.d, y);
      }
      std::fill(y + p_.df, y + ldf_, T(0));
    }
  }

  /// V[j] = v_j, zero past e; when `scaled`, also scale_v. AMX: V's bf16 rows and their pairs.
  void pack_v(scratch& w, index b, index hk, index t0, index nb, bool scaled) const {
    if constexpr (kAmx)
      if (amx_) {
        bf16_rows(p_.v, w.f, b, hk, t0, nb, p_.e, w.vr);
        amx::pair_rows(w.vp, 2 * p_.e, w.vr, p_.e, nullptr, round_up(nb, 32), nb, p_.e);
        if (scaled) scale_v(w, nb);
        return;
      }
    for (index j = 0; j < nb; ++j) {
      T* y = w.v + j * lde_;
      p_.v.load(y, b, t0 + j, hk, p_.e);  // a copy, or a conversion from 16 bits
      std::fill(y + p_.e, y + lde_, T(0));
    }
    if (scaled) scale_v(w, nb);
  }

  /// (λV)[j] = λ^(nb−1−j)·V[j] with the current head's kdec (AMX: paired, rounded to bf16).
  void scale_v(scratch& w, index nb) const {
    if constexpr (kAmx)
      if (amx_) return amx::pair_rows(w.vdp, 2 * p_.e, w.vr, p_.e, w.kdec, round_up(nb, 32), nb, p_.e);
    for (index j = 0; j < nb; ++j) {
      const V f = simd::bcast<V>(w.kdec[j]);
      for (index x = 0; x < lde_; x += L) simd::store(w.vd + j * lde_ + x, simd::load<V>(w.v + j * lde_ + x) * f);
    }
  }

  // --- the chunk -----------------------------------------------------------------------------------

  /// Output rows [t0, t0 + nb) of unit (b, h) from the packed chunk and the state st before it.
  void output(scratch& w, const T* st, index b, index h, index t0, index nb) const {
    if constexpr (kAmx)
      if (amx_) return output_amx(w, st, b, h, t0, nb);
    const T* qdec = powers(h) + 1;  // λ^(t+1)
    const index nbl = round_up(nb, L), df = p_.df;
    if (p_.causal) {
      // P[t][j] = φ(Q)[t]·φ(K)[j] for the key vectors j0 <= t
      for (index j0 = 0; j0 < nb; j0 += L) {
        dot_rows<Arch, T>({w.p + j0 * ldp_ + j0, nb - j0, L, ldp_}, {w.qf + j0 * ldf_, nb - j0, ldf_, ldf_},
                          {w.kf + j0 * ldf_, std::min<index>(L, nb - j0), ldf_, ldf_});
        prefetch_some(w);
      }
      // P[t][j] *= D[t][j], zero from the first vector past t on; den[t] = Σ_j P[t][j]
      const T* rev = mask_table(h);
      for (index t = 0; t < nb; ++t) {
        T* row = w.p + t * ldp_;
        const T* mask = rev + (bk_ - 1 - t);
        const index end = (t / L + 1) * L;
        V sum = simd::bcast<V>(T(0));
        for (index j = 0; j < end; j += L) {
          const V x = simd::load<V>(row + j) * simd::loadu<V>(mask + j);
          simd::store(row + j, x);
          sum = sum + x;
        }
        std::fill(row + end, row + nbl, T(0));
        if (p_.normalize) w.den[t] = simd::hsum(sum);
      }
    }
    // O = φ(Q)·S
    for (index r0 = 0; r0 < nb; r0 += kAheadTile) {
      chunk_gemm<Arch, T, mma_init::zero>({w.o + r0 * lde_, std::min(kAheadTile, nb - r0), lde_, lde_},
                                          by_rows(w.qf + r0 * ldf_, ldf_), {st, df, lde_, lde_});
      prefetch_some(w);
    }
    if (p_.causal) {
      // O[t] = λ^(t+1)·O[t] + Σ_{j <= t} P[t][j]·V[j], per tile of MR rows up to its last key
      for (index r0 = 0; r0 < nb; r0 += MR) {
        const index m = std::min<index>(MR, nb - r0);
        chunk_gemm<Arch, T, mma_init::scale_rows>({w.o + r0 * lde_, m, lde_, lde_}, by_rows(w.p + r0 * ldp_, ldp_),
                                                  {w.v, r0 + m, lde_, lde_}, qdec + r0);
        prefetch_some(w);
      }
    }
    if (p_.normalize) {
      // den[t] = λ^(t+1)·φ(q_t)·z + Σ_j P[t][j]
      const T* z = st + zoff_;
      for (index t = 0; t < nb; ++t) {
        V acc = simd::bcast<V>(T(0));
        for (index c = 0; c < ldf_; c += L) acc = simd::fma(simd::load<V>(w.qf + t * ldf_ + c), simd::load<V>(z + c), acc);
        w.den[t] = p_.causal ? qdec[t] * simd::hsum(acc) + w.den[t] : simd::hsum(acc);
      }
    }
    // out = O, or O / (den + eps); 16-bit out: the same products, rounded as they are stored
    for (index t = 0; t < nb; ++t) {
      const T* o = w.o + t * lde_;
      if (!p_.o.native()) {
        p_.o.store(b, t0 + t, h, o, p_.e, p_.normalize ? T(1) / (w.den[t] + T(p_.eps)) : T(1));
        continue;
      }
      T* out = p_.o.row(b, t0 + t, h);
      if (p_.normalize) {
        simd::scale_copy<V>(out, o, p_.e, T(1) / (w.den[t] + T(p_.eps)));
      } else {
        std::memcpy(out, o, sizeof(T) * std::size_t(p_.e));
      }
    }
  }

  /// The same on AMX tiles (see the header): whole 32-row blocks of the chunk, the rows past nb zero.
  void output_amx(scratch& w, const T* st, index b, index h, index t0, index nb) const {
    if constexpr (kAmx) {
      const index d = p_.d, e = p_.e, n32 = round_up(nb, 32);
      const T sc = T(p_.scale);
      if (p_.causal) {
        // P[t][j] = q_t·k_j for the 32 × 32 blocks on and below the diagonal, then
        // bf16(scale·P[t][j]·D[t][j]) up to the block's last key (zero past t), zero rows past nb
        for (index r0 = 0; r0 < n32; r0 += 32) {
          pairs::gemm(tiles_, {w.p + r0 * ldp_, 32, r0 + 32, ldp_}, {w.qb + r0 * d, 32, d, d},
                      {w.kp, d / 2, 2 * (r0 + 32), 2 * bk_});
          prefetch_some(w);
        }
        const T* rev = mask_table(h);
        for (index t = 0; t < nb; ++t)
          amx::masked_row(w.pb + t * bk_, w.p + t * ldp_, rev + (bk_ - 1 - t), sc, round_up(t + 1, 32));
        std::fill(w.pb + nb * bk_, w.pb + n32 * bk_, std::uint16_t(0));
        // O' = P·V, each block of rows up to its last key
        for (index r0 = 0; r0 < n32; r0 += 32) {
          pairs::gemm(tiles_, {w.o2 + r0 * e, 32, e, e}, {w.pb + r0 * bk_, 32, r0 + 32, bk_},
                      {w.vp, (r0 + 32) / 2, 2 * e, 2 * e});
          prefetch_some(w);
        }
      }
      // O = Q·bf16(S)
      const std::uint16_t* sp = w.sp_ready;
      if (!sp) amx::pair_rows(w.sp, 2 * e, st, lde_, nullptr, d, d, e), sp = w.sp;
      for (index r0 = 0; r0 < n32; r0 += 32) {
        pairs::gemm(tiles_, {w.o + r0 * lde_, 32, e, lde_}, {w.qb + r0 * d, 32, d, d}, {sp, d / 2, 2 * e, 2 * e});
        prefetch_some(w);
      }
      // out[t] = scale·λ^(t+1)·O[t] + O'[t] (non-causal: scale·O[t]); 16-bit out rounded as stored.
      // Float rows on 64-byte boundaries are streamed past the caches (see stream_out_).
      const T* qdec = powers(h) + 1;
      for (index t = 0; t < nb; ++t) {
        T* o = w.o + t * lde_;
        T* dst = p_.o.native() ? p_.o.row(b, t0 + t, h) : o;
        const bool stream = stream_out_ && reinterpret_cast<std::uintptr_t>(dst) % simd::kAlign == 0;
        const V f = simd::bcast<V>(p_.causal ? sc * qdec[t] : sc);
        const T* o2 = w.o2 + t * e;
        for (index x = 0; x < e; x += L) {
          const V y = p_.causal ? simd::fma(f, simd::loadu<V>(o + x), simd::loadu<V>(o2 + x)) : simd::loadu<V>(o + x) * f;
          if (stream) simd::stream(dst + x, y);
          else simd::storeu(dst + x, y);
        }
        if (!p_.o.native()) p_.o.store(b, t0 + t, h, o, e);
      }
    }
  }

  /// ΔS = φ(K)ᵀ·(λV) and Δz = Σ_j λ^(nb−1−j)·φ(k_j) of the packed chunk into ds.
  void delta(scratch& w, T* ds, index nb) const {
    if constexpr (kAmx)
      if (amx_) {
        const index e = p_.e, n32 = round_up(nb, 32);
        for (index r0 = 0; r0 < p_.d; r0 += 32) {
          pairs::gemm(tiles_, {ds + r0 * lde_, 32, e, lde_}, {w.kt + r0 * bk_, 32, n32, bk_},
                      {decayed_ ? w.vdp : w.vp, n32 / 2, 2 * e, 2 * e});
          prefetch_some(w);
        }
        return;
      }
    for (index r0 = 0; r0 < p_.df; r0 += kAheadTile) {
      chunk_gemm<Arch, T, mma_init::zero>({ds + r0 * lde_, std::min(kAheadTile, p_.df - r0), lde_, lde_},
                                          by_cols(w.kf + r0, ldf_), {decayed_ ? w.vd : w.v, nb, lde_, lde_});
      prefetch_some(w);
    }
    if (p_.normalize) {
      for (index c = 0; c < ldf_; c += L) {
        V acc = simd::bcast<V>(T(0));
        for (index j = 0; j < nb; ++j)
          acc = simd::fma(simd::load<V>(w.kf + j * ldf_ + c), simd::bcast<V>(w.kdec[j]), acc);
        simd::store(ds + zoff_ + c, acc);
      }
    }
  }

  /// s[x] = λ^nb·s[x] + ds[x] over a state: the one expression both orders use.
  static V combined(const V& lam, const V& s, const V& ds) { return simd::fma(lam, s, ds); }

  // --- states --------------------------------------------------------------------------------------

  void load_state(index u, T* s) const {
    std::fill(s, s + sstride_, T(0));
    if (!p_.state_in) return;
    const index cols = p_.cols();
    const T* in = p_.state_in + u * p_.df * cols;
    for (index c = 0; c < p_.df; ++c) {
      std::memcpy(s + c * lde_, in + c * cols, sizeof(T) * std::size_t(p_.e));
      if (p_.normalize) s[zoff_ + c] = in[c * cols + p_.e];
    }
  }

  void store_state(index u, const T* s) const {
    if (!p_.state_out) return;
    const index cols = p_.cols();
    T* out = p_.state_out + u * p_.df * cols;
    for (index c = 0; c < p_.df; ++c) {
      std::memcpy(out + c * cols, s + c * lde_, sizeof(T) * std::size_t(p_.e));
      if (p_.normalize) out[c * cols + p_.e] = s[zoff_ + c];
    }
  }

  // --- orders ----------------------------------------------------------------------------------------

  /// Query heads [h0, h1) of batch b, chunk by chunk across the heads, their states in this
  /// thread's scratch. Consecutive heads' rows share pages (4 KiB holds one row of every head at
  /// H·d = 1024 floats), so the next head's rows — the prefetch target — come from pages already
  /// open, and the query heads of one K/V head pack its K and V once.
  void run_group(index b, index h0, index h1) const {
    scratch w = carve(h1 - h0);
    configure_tiles();
    auto state = [&](index h) { return w.s + (h - h0) * sstride_; };
    auto pairs = [&](index h) { return w.sps + (h - h0) * p_.d * p_.e; };  // AMX: S pairs of head h
    for (index h = h0; h < h1; ++h) load_state(b * p_.hq + h, state(h));
    // After (chunk c, head h): the next head's rows of chunk c, or the first head's of chunk c + 1.
    auto next = [&](index c, index h, bool q, bool kv) {
      if (h + 1 < h1) return rows_of(b, h + 1, c, q, kv && (h + 1) / p_.group != h / p_.group);
      return rows_of(b, h0, c + 1, q, kv);
    };
    for (index c = 0; c < kchunks_; ++c) {
      const index t0 = c * bk_, nb = std::min(bk_, p_.nk - t0);
      index packed = -1;  // the K/V head whose chunk is packed
      for (index h = h0; h < h1; ++h) {
        const index hk = h / p_.group;
        w.ahead = next(c, h, p_.causal, true);
        set_chunk(w, h, nb);
        if (hk != packed) {
          pack_k(w, b, hk, t0, nb);
          pack_v(w, b, hk, t0, nb, decayed_);
          packed = hk;
        } else if (decayed_) {
          scale_v(w, nb);  // this head's own decay
        }
        if (p_.causal) {
          pack_q(w, b, h, t0, nb);
          w.sp_ready = amx_ && c > 0 ? pairs(h) : nullptr;
          output(w, state(h), b, h, t0, nb);
        }
        delta(w, w.ds, nb);
        T* st = state(h);
        if constexpr (kAmx)
          if (amx_) {  // the same fma as combined(), and the pairs of the new state in the same pass
            amx::combine_pairs(st, w.ds, w.lam_nb, pairs(h), p_.d, p_.e, lde_);
            continue;
          }
        const V lam = simd::bcast<V>(w.lam_nb);
        for (index x = 0; x < sstride_; x += L)
          simd::store(st + x, combined(lam, simd::load<V>(st + x), simd::load<V>(w.ds + x)));
      }
    }
    if (!p_.causal)
      for (index c = 0; c < qchunks_; ++c) {
        const index t0 = c * bk_, nb = std::min(bk_, p_.nq - t0);
        for (index h = h0; h < h1; ++h) {
          w.ahead = next(c, h, true, false);
          pack_q(w, b, h, t0, nb);
          w.sp_ready = amx_ && kchunks_ > 0 ? pairs(h) : nullptr;
          output(w, state(h), b, h, t0, nb);
        }
      }
    for (index h = h0; h < h1; ++h) store_state(b * p_.hq + h, state(h));
    if (stream_out_) simd::stream_fence();  // the streamed out rows, visible before the item ends
  }

  T* carry(index u) const { return carry_ + u * sstride_; }
  T* slot(index u, index i) const { return slots_ + (u * window_ + i) * sstride_; }

  /// Chunk c0 + i of unit u = (b, h), K/V head hk, tokens [t0, t0 + nb).
  struct chunk_at {
    index u, b, h, hk, i, t0, nb;
  };

  /// fn(w, chunk) for chunks [c0, c0 + count) of every unit of a sequence of n tokens. An item
  /// takes kRunChunks consecutive chunks of one unit, so that the prefetches of the next chunk
  /// (its query rows with q, its K/V rows with kv) serve the thread that asked for them.
  template <class Device, class F>
  void chunk_runs(const Device& dev, index c0, index count, index n, bool q, bool kv, const F& fn) const {
    const index runs = ceil_div(count, kRunChunks);
    parallel_for(dev, units_ * runs, [&](index it) {
      const index u = it / runs, b = u / p_.hq, h = u % p_.hq, hk = h / p_.group;
      const index i0 = it % runs * kRunChunks, i1 = std::min(i0 + kRunChunks, count);
      scratch w = carve(0);
      configure_tiles();
      for (index i = i0; i < i1; ++i) {
        const index t0 = (c0 + i) * bk_, nb = std::min(bk_, n - t0);
        w.ahead = i + 1 < i1 ? rows_of(b, h, c0 + i + 1, q, kv) : ahead_rows{};
        fn(w, chunk_at{u, b, h, hk, i, t0, nb});
      }
      if (stream_out_ && q) simd::stream_fence();  // the streamed out rows, visible before the item ends
    });
  }

  /// Chunks spread over the threads, a window of them at a time (see the header).
  template <class Device>
  void run_windowed(const Device& dev) const {
    parallel_for(dev, units_, [&](index u) { load_state(u, carry(u)); });
    const index slices = ceil_div(sstride_, kPrefixSlice);
    for (index w0 = 0; w0 < kchunks_; w0 += window_) {
      const index nw = std::min(window_, kchunks_ - w0);
      chunk_runs(dev, w0, nw, p_.nk, false, true, [&](scratch& w, const chunk_at& c) {  // (1) ΔS of every chunk
        set_chunk(w, c.h, c.nb);
        pack_k(w, c.b, c.hk, c.t0, c.nb);
        pack_v(w, c.b, c.hk, c.t0, c.nb, decayed_);
        delta(w, slot(c.u, c.i), c.nb);
      });
      parallel_for(dev, units_ * slices, [&](index it) {  // (2) prefix: slot i ← S_i, carry ← S_{i+1}
        const index u = it / slices, h = u % p_.hq;
        const index x0 = it % slices * kPrefixSlice, x1 = std::min(x0 + kPrefixSlice, sstride_);
        T* cy = carry(u);
        for (index i = 0; i < nw; ++i) {
          T* sl = slot(u, i);
          const V lam = simd::bcast<V>(powers(h)[std::min(bk_, p_.nk - (w0 + i) * bk_)]);
          for (index x = x0; x < x1; x += L) {
            const V s = simd::load<V>(cy + x), d = simd::load<V>(sl + x);
            if (p_.causal) simd::store(sl + x, s);
            simd::store(cy + x, combined(lam, s, d));
          }
        }
      });
      if (p_.causal)
        chunk_runs(dev, w0, nw, p_.nk, true, true, [&](scratch& w, const chunk_at& c) {  // (3) outputs from S_i
          pack_q(w, c.b, c.h, c.t0, c.nb);
          pack_k(w, c.b, c.hk, c.t0, c.nb);
          pack_v(w, c.b, c.hk, c.t0, c.nb, false);
          output(w, slot(c.u, c.i), c.b, c.h, c.t0, c.nb);
        });
    }
    if (!p_.causal)
      chunk_runs(dev, 0, qchunks_, p_.nq, true, false, [&](scratch& w, const chunk_at& c) {
        pack_q(w, c.b, c.h, c.t0, c.nb);
        output(w, carry(c.u), c.b, c.h, c.t0, c.nb);
      });
    parallel_for(dev, units_, [&](index u) { store_state(u, carry(u)); });
  }

  const chunk_problem<T>& p_;
  index bk_, ldp_, rows_, ldf_, lde_, srows_, zoff_, sstride_, pw_off_, tw_, units_, kchunks_, qchunks_;
  bool decayed_, soft_;
  bool converts_;  // q or k holds 16-bit values: their rows are converted before φ
  index window_;
  bool windowed_;
  index head_group_;
  bool amx_;    // products on bf16 pairs (use_amx), in the layouts of core/amx.hpp
  bool tiles_;  // ... on AMX tiles (else AVX512-BF16 dot products)
  // AMX, float out larger than a last-level cache: out rows are written with streaming stores, not
  // prefetched. At AMX speed the chunk is bound by memory, and a store that misses first reads its
  // line (a third of the traffic at bf16 q, k, v and float out).
  bool stream_out_;
  T *tab_ = nullptr, *stats_ = nullptr, *carry_ = nullptr, *slots_ = nullptr;
  index ld_stats_ = 0;
};

/// Runs a validated chunk problem on `dev` with the kernels of `Arch`.
template <class Arch, class T, class Device>
void chunk_forward(const chunk_problem<T>& p, const Device& dev) {
  if (p.batch == 0) return;  // an empty result (a zero-length sequence still passes its state on)
  chunk_engine<T, Arch>(p).run(dev);
}

/// One recurrent step per (batch, query head), the state updated in place:
///   S ← λ·S + φ(k)ᵀv,  z ← λ·z + φ(k),  o = scale·φ(q)·S  (/ (scale·φ(q)·z + eps))
/// in O(d'·e): one pass over the state, which is read and written once.
template <class Arch, class T, class Device>
void chunk_step(const chunk_problem<T>& p, const Device& dev) {
  using V = simd::vec_t<T, Arch>;
  constexpr index L = simd::lanes_v<T, Arch>;
  const index df = p.df, e = p.e, cols = p.cols(), ev = e / L * L;
  const index ldf = chunk_tiles<T, Arch>::round_up(df, L) + L;
  parallel_for(dev, p.batch * p.hq, [&](index u) {
    const index b = u / p.hq, h = u % p.hq, hk = h / p.group;
    // 16-bit q, k, v: converted rows [d], [d], [e] after o
    const index ldc = chunk_tiles<T, Arch>::round_up(std::max(p.d, e), L);
    const bool native = p.q.native() && p.k.native() && p.v.native();
    T* fq = static_cast<T*>(
        workspace::of_this_thread(0).get(sizeof(T) * std::size_t(2 * ldf + e + L + (native ? 0 : 3 * ldc))));
    T* fk = fq + ldf;
    T* o = fk + ldf;
    T* cv = o + e + L;
    auto row = [&](const bshd_view<const T>& t, T* at, index n, index head) {
      if (t.native()) return t.row(b, 0, head);
      t.load(at, b, 0, head, n);
      return static_cast<const T*>(at);
    };
    feature_row<Arch, T>(*p.map, row(p.q, cv, p.d, h), p.d, fq);
    feature_row<Arch, T>(*p.map, row(p.k, cv + ldc, p.d, hk), p.d, fk);
    const T sc = T(p.scale);
    for (index c = 0; c < df; ++c) fq[c] *= sc;
    const double lam_d = std::exp(-p.decay_of(h));
    const T lam = lam_d < double(std::numeric_limits<T>::min()) ? T(0) : T(lam_d);
    const T* v = row(p.v, cv + 2 * ldc, e, hk);
    T* st = p.state_out + u * df * cols;
    std::fill(o, o + e, T(0));
    T den = 0;
    const V lv = simd::bcast<V>(lam);
    for (index c = 0; c < df; ++c) {
      T* row = st + c * cols;
      const V kc = simd::bcast<V>(fk[c]), qc = simd::bcast<V>(fq[c]);
      for (index x = 0; x < ev; x += L) {  // S[c] = λ·S[c] + φ(k)_c·v;  o += φ(q)_c·S[c]
        const V s = simd::fma(kc, simd::loadu<V>(v + x), lv * simd::loadu<V>(row + x));
        if constexpr (simd::is_scalar_v<V>) row[x] = s; else s.store_unaligned(row + x);
        if constexpr (simd::is_scalar_v<V>) o[x] += fq[c] * s; else simd::fma(qc, s, simd::loadu<V>(o + x)).store_unaligned(o + x);
      }
      for (index x = ev; x < e; ++x) {
        row[x] = std::fma(fk[c], v[x], lam * row[x]);
        o[x] = std::fma(fq[c], row[x], o[x]);
      }
      if (p.normalize) {
        row[e] = lam * row[e] + fk[c];
        den += fq[c] * row[e];
      }
    }
    const T inv = p.normalize ? T(1) / (den + T(p.eps)) : T(1);
    if (!p.o.native()) return p.o.store(b, 0, h, o, e, inv);  // o·inv rounded to 16 bits
    T* out = p.o.row(b, 0, h);
    for (index x = 0; x < e; ++x) out[x] = o[x] * inv;
  });
}

}  // namespace xattn::detail
