// xattn/core/chunk_backward.hpp — the chunk engine's backward pass (Lightning Attention-2, Qin et
// al. 2024, Algorithm 2), deterministic: no atomics, every gradient row summed by one thread in one
// order, the work cut by the shapes alone.
//
// Per (batch, query head), λ = e^−s, σ the scale, chunks of B tokens, i the position in the chunk,
// nb its length, S_c the d × e state before chunk c and dS_c = ∂L/∂S_c:
//   M[t][j]  = (dO_t·v_j)·λ^(i_t−i_j),  A[t][j] = σ·(q_t·k_j)·λ^(i_t−i_j)  for j <= t, else 0
//   dQ       = σ·(M·K + diag(λ^(i+1))·dO·S_cᵀ)                                 (forward sweep)
//   S_{c+1}  = λ^nb·S_c + Kᵀ·diag(λ^(nb−1−j))·V
//   dK       = σ·Mᵀ·Q + diag(λ^(nb−1−j))·V·dS_{c+1}ᵀ                           (reverse sweep)
//   dV       = Aᵀ·dO + diag(λ^(nb−1−j))·K·dS_{c+1}
//   dS_c     = λ^nb·dS_{c+1} + σ·Qᵀ·diag(λ^(i+1))·dO,  dS_end = ∂L/∂final_state, ∂L/∂S0 = dS_0
// Non-causal attention (one state over all keys, no decay): dQ = σ·dO·Sᵀ with S = S0 + KᵀV, and
// dS = ∂L/∂final_state + σ·QᵀdO gives dK = V·dSᵀ, dV = K·dS.
//
// The decay's gradient, on request (causal only), is g = ∂L/∂logλ, carried by the forward sweep
// with R_c = ∂S_c/∂logλ, R_0 = 0 (S0 does not depend on λ):
//   R_{c+1}        = λ^nb·R_c + nb·λ^nb·S_c + Kᵀ·diag((nb−1−j)·λ^(nb−1−j))·V
//   ∂o_t/∂logλ     = σ·Σ_{j<=t} (i_t−i_j)·λ^(i_t−i_j)·(q_t·k_j)·v_j + σ·(i_t+1)·λ^(i_t+1)·q_t·S_c
//                    + σ·λ^(i_t+1)·q_t·R_c
//   g              = Σ_t dO_t·∂o_t/∂logλ + ⟨∂L/∂final_state, R_N⟩,   ∂L/∂s = −Σ_batch g
// per chunk from M, σ·dO·Sᵀ (both already there for dQ), the scores Q·Kᵀ on the lower triangle,
// σ·dO·Rᵀ and R's update: one more d × e state and three more products of a chunk's size. Each
// (batch, query head) sums its g in double into its own slot; the slots are summed over the batch
// in index order after both passes. (Summing t·⟨dO_t, o_t⟩ instead cancels badly at long N.)
//
// Two passes, whose items run side by side (both only read the inputs). (1) One item per (batch,
// group of query heads) sweeps the chunks forwards across its heads, recomputing each head's S_c
// (and R_c), and writes dQ (and g). (2) One item per (batch, group of K/V heads) sweeps the chunks
// backwards with the dS of each of their query heads in scratch; per chunk and K/V head it packs K
// and V once and sums the query heads' dK and dV in head order before writing them: dk and dv are
// written once, in the same order for any thread count (the groups, head_group_of, only decide
// which heads share an item). The products
// are the forward's: masked scores by dot_rows on the lower triangle (the decay read from a table of
// λ^m, never factorised into λ^t·λ^−j, which overflows), the rest mma_ab on packed rows, the
// transposed operands (Mᵀ, Aᵀ, Qᵀ, Vᵀ) read by columns. Sᵀ rather than S is kept in the forward
// sweep, so that dO·Sᵀ has a row-major panel; dS is transposed once per chunk (register blocks) for
// V·dSᵀ. States and every sum are T, but for g's sums over rows and chunks (double). The chunks of
// one sequence are not spread over threads: a call has at most B·(Hq + Hkv) items.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <tuple>

#include "chunk_backward_args.hpp"
#include "chunk_engine.hpp"
#include "microkernel.hpp"
#include "parallel.hpp"
#include "simd.hpp"
#include "transpose.hpp"
#include "workspace.hpp"

namespace xattn::detail {

template <class T, class Arch>
class chunk_backward {
  using S = chunk_tiles<T, Arch>;
  using V = simd::vec_t<T, Arch>;
  static constexpr index L = S::L;
  static constexpr index MR = S::MR;
  static constexpr index kAlign = S::kAlignElems;
  static constexpr index round_up(index x, index m) { return S::round_up(x, m); }
  static constexpr index ceil_div(index x, index m) { return (x + m - 1) / m; }

 public:
  explicit chunk_backward(const chunk_backward_problem<T>& bp)
      : bp_(bp),
        p_(bp.fwd),
        bk_(p_.block),
        ldp_(round_up(bk_, L)),
        rows_(round_up(bk_, MR)),
        ldd_(round_up(p_.d, L)),
        lde_(round_up(p_.e, L)),
        drows_(round_up(p_.d, MR)),
        erows_(round_up(p_.e, MR)),
        pw_off_(round_up(bk_ + ldp_, kAlign)),
        tw_(pw_off_ + round_up(bk_ + 2, kAlign)),
        chunks_(ceil_div(p_.nk, bk_)),
        qchunks_(ceil_div(p_.nq, bk_)),
        decayed_(p_.has_decay()),
        ddecay_(bp.ddecay != nullptr && p_.causal) {}

  template <class Device>
  void run(const Device& dev) {
    // This thread's slot 1: the per-(batch, head) partials of ∂L/∂logλ (double) and the ramp table
    // when ddecay is wanted, then the heads' tables.
    const std::size_t part_bytes = ddecay_ ? round_up(index(sizeof(double)) * p_.batch * p_.hq, simd::kAlign) : 0;
    const index ramp = ddecay_ ? pw_off_ : 0;
    auto* base = static_cast<std::byte*>(
        workspace::of_this_thread(1).get(part_bytes + sizeof(T) * std::size_t(ramp + p_.hq * tw_)));
    partials_ = reinterpret_cast<double*>(base);
    ramp_ = reinterpret_cast<T*>(base + part_bytes);
    tab_ = ramp_ + ramp;
    for (index h = 0; h < p_.hq; ++h) build_table(h);
    for (index i = 0; i < ramp; ++i) ramp_[i] = i < bk_ ? T(bk_ - 1 - i) : T(0);
    // Both passes read only the inputs, so their items run side by side: the (heavier) key sweeps
    // first, then the query sweeps; a single (batch, head) still keeps two threads busy.
    // Each item sweeps a group of heads chunk by chunk across the heads, as the forward does
    // (head_group_of): in bshd consecutive heads' rows share pages, so a chunk reads whole runs of
    // a page instead of one head's 512 bytes in each (which left the hardware prefetchers idle once
    // the tensors outgrew the last-level cache). Every head keeps its own states and sums, so the
    // grouping does not change a bit of the result.
    const index gk = head_group_of(p_.batch, p_.hkv), gq = head_group_of(p_.batch, p_.hq);
    const index kgroups = ceil_div(p_.hkv, gk), qgroups = ceil_div(p_.hq, gq), keys = p_.batch * kgroups;
    parallel_for(dev, keys + p_.batch * qgroups, [&](index it) {
      if (it < keys) {
        const index h0 = it % kgroups * gk;
        key_sweep(it / kgroups, h0, std::min(h0 + gk, p_.hkv));
      } else {
        const index h0 = (it - keys) % qgroups * gq;
        query_sweep((it - keys) / qgroups, h0, std::min(h0 + gq, p_.hq));
      }
    });
    // ∂L/∂s = −Σ_b ∂L/∂logλ (logλ = −s), over the batch in index order: the same bits for any
    // thread count
    if (ddecay_)
      for (index h = 0; h < p_.hq; ++h) {
        double sum = 0;
        for (index b = 0; b < p_.batch; ++b) sum -= partials_[b * p_.hq + h];
        bp_.ddecay[h] = sum;
      }
  }

 private:
  // --- tables (as the forward's) ------------------------------------------------------------------

  /// Per head: rev[i] = λ^(B−1−i) for i < B and 0 up to B + ldp, so that row t of the decay mask is
  /// rev[B−1−t + j]; then pw[m] = λ^m for 0 <= m <= B+1, exp(−s·m) in double rounded once, values
  /// below T's smallest normal flushed to 0 (denormal operands slow the FMAs).
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

  // --- scratch --------------------------------------------------------------------------------------

  /// Consecutive kAlign-aligned parts of this thread's workspace, sizes in T.
  template <std::size_t N>
  static std::array<T*, N> carve(const std::array<index, N>& sizes) {
    index total = 0;
    for (index n : sizes) total += round_up(n, kAlign);
    T* base = static_cast<T*>(workspace::of_this_thread(0).get(sizeof(T) * std::size_t(total)));
    std::array<T*, N> at{};
    for (std::size_t i = 0; i < N; ++i) at[i] = base, base += round_up(sizes[i], kAlign);
    return at;
  }

  /// dst[r][c] = f·row(t0 + r)[c] for r < nb, c < n, zero up to ld: rows of a caller's tensor packed.
  static void pack(T* dst, index ld, const bshd_view<const T>& t, index b, index t0, index nb, index h, index n,
                   T f = T(1)) {
    for (index r = 0; r < nb; ++r) {
      T* y = dst + r * ld;
      simd::scale_copy<V>(y, t.row(b, t0 + r, h), n, f);
      std::fill(y + n, y + ld, T(0));
    }
  }
  /// dst[r] = f[r]·src[r] over nb packed rows of ld.
  static void scale_rows(T* dst, const T* src, index ld, index nb, const T* f) {
    for (index r = 0; r < nb; ++r) {
      const V s = simd::bcast<V>(f[r]);
      for (index x = 0; x < ld; x += L) simd::store(dst + r * ld + x, simd::load<V>(src + r * ld + x) * s);
    }
  }
  /// Rows of C into a caller's tensor (the first n columns).
  static void store_rows(const bshd_view<T>& t, const T* c, index ld, index b, index t0, index nb, index h, index n) {
    for (index r = 0; r < nb; ++r) std::memcpy(t.row(b, t0 + r, h), c + r * ld, sizeof(T) * std::size_t(n));
  }

  /// kdec[j] = λ^(nb−1−j) for j < nb, 0 up to ldp; returns λ^nb.
  T set_chunk(T* kdec, index h, index nb) const {
    const T* pw = powers(h);
    for (index j = 0; j < ldp_; ++j) kdec[j] = j < nb ? pw[nb - 1 - j] : T(0);
    return pw[nb];
  }

  /// P[t][j] = (a_t·b_j)·λ^(t−j) for j <= t and 0 past t up to round_up(nb, L): dot products along
  /// the packed rows (ld a multiple of the vector width) for the key vectors j0 <= t only.
  void masked_scores(T* p, const T* a, const T* b, index ld, index nb, index h) const {
    for (index j0 = 0; j0 < nb; j0 += L)
      dot_rows<Arch, T>({p + j0 * ldp_ + j0, nb - j0, L, ldp_}, {a + j0 * ld, nb - j0, ld, ld},
                        {b + j0 * ld, std::min<index>(L, nb - j0), ld, ld});
    const T* rev = mask_table(h);
    const index nbl = round_up(nb, L);
    for (index t = 0; t < nb; ++t) {
      T* row = p + t * ldp_;
      const T* mask = rev + (bk_ - 1 - t);
      const index end = (t / L + 1) * L;
      for (index j = 0; j < end; j += L) simd::store(row + j, simd::load<V>(row + j) * simd::loadu<V>(mask + j));
      std::fill(row + end, row + nbl, T(0));
    }
  }

  /// C[j] = C[j]·f[j] + Σ_{t >= j} P[t][j]·B[t] for j < nb: the transposed masked scores times
  /// packed rows B, each tile of MR columns of P from its first row on (P is zero above).
  void transposed_product(T* c, index ldc, const T* p, const T* b, index ldb, index nb, const T* f) const {
    for (index r0 = 0; r0 < nb; r0 += MR) {
      const index m = std::min<index>(MR, nb - r0);
      chunk_gemm<Arch, T, mma_init::scale_rows>({c + r0 * ldc, m, ldc, ldc}, by_cols(p + r0 * ldp_ + r0, ldp_),
                                                {b + r0 * ldb, nb - r0, ldc, ldb}, f + r0);
    }
  }

  /// a·b over n elements of aligned rows (n a multiple of the vector width).
  static T dot(const T* a, const T* b, index n) {
    V acc = simd::bcast<V>(T(0));
    for (index x = 0; x < n; x += L) acc = simd::fma(simd::load<V>(a + x), simd::load<V>(b + x), acc);
    return simd::hsum(acc);
  }

  /// Σ_t dO_t·∂o_t/∂logλ over one chunk of nb tokens, per query row t (i its position in the chunk):
  ///   λ^(i+1)·((i+1)·q_t·c_t + q_t·x_t) + Σ_{j<=t} (i−j)·M[t][j]·(q_t·k_j)
  /// with c = σ·dO·Sᵀ, x = σ·dO·Rᵀ (R = ∂S_c/∂logλ) and M = σ·(dO·Vᵀ) ⊙ D as the sweep has them;
  /// the scores q_t·k_j into p (the lower triangle's vector tiles only, as masked_scores).
  double decay_terms(T* p, const T* q, const T* k, const T* c, const T* x, const T* m, index nb, index h) const {
    for (index j0 = 0; j0 < nb; j0 += L)
      dot_rows<Arch, T>({p + j0 * ldp_ + j0, nb - j0, L, ldp_}, {q + j0 * ldd_, nb - j0, ldd_, ldd_},
                        {k + j0 * ldd_, std::min<index>(L, nb - j0), ldd_, ldd_});
    const T* qdec = powers(h) + 1;  // λ^(i+1)
    double g = 0;
    for (index t = 0; t < nb; ++t) {
      const T* qt = q + t * ldd_;
      const double qc = double(dot(qt, c + t * ldd_, ldd_)), qx = double(dot(qt, x + t * ldd_, ldd_));
      g += double(qdec[t]) * (double(t + 1) * qc + qx);
      // M is zero past t, so the ramp's values there (i − j < 0) add nothing
      const T* mt = m + t * ldp_;
      const T* pt = p + t * ldp_;
      const T* ramp = ramp_ + (bk_ - 1 - t);  // ramp[j] = t − j
      V acc = simd::bcast<V>(T(0));
      for (index j = 0, end = (t / L + 1) * L; j < end; j += L)
        acc = simd::fma(simd::load<V>(mt + j) * simd::load<V>(pt + j), simd::loadu<V>(ramp + j), acc);
      g += double(simd::hsum(acc));
    }
    return g;
  }

  /// s = λ·s + ds over n elements (a multiple of the vector width): the state recurrence.
  static void combine(T* s, const T* ds, index n, T lam) {
    const V l = simd::bcast<V>(lam);
    for (index x = 0; x < n; x += L) simd::store(s + x, simd::fma(l, simd::load<V>(s + x), simd::load<V>(ds + x)));
  }

  // --- pass 1: dQ -----------------------------------------------------------------------------------

  /// Batch b, query heads [h0, h1): dQ chunk by chunk across the heads, with each head's Sᵀ (e × d)
  /// recomputed alongside; with ddecay, also Rᵀ = (∂S/∂logλ)ᵀ and each head's ∂L/∂logλ into
  /// partials_[b·Hq + h]. The query heads of one K/V head pack its chunk of K and V once.
  void query_sweep(index b, index h0, index h1) const {
    const index d = p_.d, e = p_.e, nh = h1 - h0, sst = erows_ * ldd_;
    const index gr = ddecay_ ? 1 : 0;  // the decay gradient's buffers are empty when it is not wanted
    const auto [k, v, vd, dout, m, c, sts, dst, kdec, q, dr, ps, rts, kw] = carve(std::array<index, 14>{
        bk_ * ldd_, bk_ * lde_, bk_ * lde_, rows_ * lde_, rows_ * ldp_, rows_ * ldd_, nh * sst, erows_ * ldd_, ldp_,
        gr * bk_ * ldd_, gr * rows_ * ldd_, gr * rows_ * ldp_, gr * nh * sst, gr * ldp_});
    auto state = [&](index h) { return sts + (h - h0) * sst; };
    auto rstate = [&](index h) { return rts + (h - h0) * sst; };
    std::fill(sts, sts + nh * sst, T(0));
    std::fill(rts, rts + gr * nh * sst, T(0));  // R_0 = 0: S0 does not depend on λ
    std::array<double, kMaxHeadGroup> g{};       // ∂L/∂logλ of each head
    if (p_.state_in)                             // Sᵀ[x][c] = S0[c][x]
      for (index h = h0; h < h1; ++h)
        for (index cc = 0; cc < d; ++cc)
          for (index x = 0; x < e; ++x) state(h)[x * ldd_ + cc] = p_.state_in[((b * p_.hq + h) * d + cc) * e + x];
    const T sc = T(p_.scale);
    if (!p_.causal) {  // linear attention's: no decay, no ddecay
      for (index ch = 0; ch < chunks_; ++ch) {  // Sᵀ = S0ᵀ + Vᵀ·K over every key
        const index t0 = ch * bk_, nb = std::min(bk_, p_.nk - t0);
        for (index h = h0, packed = -1; h < h1; ++h) {
          if (const index hk = h / p_.group; hk != packed) {
            pack(k, ldd_, p_.k, b, t0, nb, hk, d);
            pack(v, lde_, p_.v, b, t0, nb, hk, e);
            chunk_gemm<Arch, T, mma_init::zero>({dst, e, ldd_, ldd_}, by_cols(v, lde_), {k, nb, ldd_, ldd_});
            packed = hk;
          }
          combine(state(h), dst, e * ldd_, T(1));
        }
      }
      for (index ch = 0; ch < qchunks_; ++ch) {  // dQ = σ·dO·Sᵀ
        const index t0 = ch * bk_, nb = std::min(bk_, p_.nq - t0);
        for (index h = h0; h < h1; ++h) {
          pack(dout, lde_, bp_.dout, b, t0, nb, h, e, sc);
          chunk_gemm<Arch, T, mma_init::zero>({c, nb, ldd_, ldd_}, by_rows(dout, lde_), {state(h), e, ldd_, ldd_});
          store_rows(bp_.dq, c, ldd_, b, t0, nb, h, d);
        }
      }
      return;
    }
    for (index ch = 0; ch < chunks_; ++ch) {
      const index t0 = ch * bk_, nb = std::min(bk_, p_.nk - t0);
      for (index h = h0, packed = -1; h < h1; ++h) {
        if (const index hk = h / p_.group; hk != packed) {
          pack(k, ldd_, p_.k, b, t0, nb, hk, d);
          pack(v, lde_, p_.v, b, t0, nb, hk, e);
          packed = hk;
        }
        T* const st = state(h);
        T* const rt = rstate(h);
        const T* qdec = powers(h) + 1;  // λ^(i+1)
        const T lam_nb = set_chunk(kdec, h, nb);
        pack(dout, lde_, bp_.dout, b, t0, nb, h, e, sc);  // σ·dO: M and dO·Sᵀ both carry σ
        masked_scores(m, dout, v, lde_, nb, h);
        // dQ = diag(λ^(i+1))·σ·dO·Sᵀ + σ·M·K, each tile of MR rows of M up to its last key
        chunk_gemm<Arch, T, mma_init::zero>({c, nb, ldd_, ldd_}, by_rows(dout, lde_), {st, e, ldd_, ldd_});
        if (ddecay_) {  // ∂L/∂logλ += Σ_t dO_t·∂o_t/∂logλ, before c becomes dQ
          pack(q, ldd_, p_.q, b, t0, nb, h, d);
          chunk_gemm<Arch, T, mma_init::zero>({dr, nb, ldd_, ldd_}, by_rows(dout, lde_),
                                              {rt, e, ldd_, ldd_});  // σ·dO·Rᵀ
          g[h - h0] += decay_terms(ps, q, k, c, dr, m, nb, h);
        }
        for (index r0 = 0; r0 < nb; r0 += MR) {
          const index mm = std::min<index>(MR, nb - r0);
          chunk_gemm<Arch, T, mma_init::scale_rows>({c + r0 * ldd_, mm, ldd_, ldd_}, by_rows(m + r0 * ldp_, ldp_),
                                                    {k, r0 + mm, ldd_, ldd_}, qdec + r0);
        }
        store_rows(bp_.dq, c, ldd_, b, t0, nb, h, d);
        if (ddecay_) {  // Rᵀ ← λ^nb·(Rᵀ + nb·Sᵀ) + (diag((nb−1−j)·λ^(nb−1−j))·V)ᵀ·K, with the S_c of this chunk
          for (index j = 0; j < ldp_; ++j) kw[j] = T(nb - 1 - j) * kdec[j];  // kdec is 0 past nb
          scale_rows(vd, v, lde_, nb, kw);
          chunk_gemm<Arch, T, mma_init::zero>({dst, e, ldd_, ldd_}, by_cols(vd, lde_), {k, nb, ldd_, ldd_});
          const V l = simd::bcast<V>(lam_nb), n = simd::bcast<V>(T(nb));
          for (index i = 0; i < e * ldd_; i += L)
            simd::store(rt + i, simd::fma(l, simd::fma(n, simd::load<V>(st + i), simd::load<V>(rt + i)),
                                          simd::load<V>(dst + i)));
        }
        // Sᵀ ← λ^nb·Sᵀ + (diag(λ^(nb−1−j))·V)ᵀ·K
        const T* vs = v;
        if (decayed_) scale_rows(vd, v, lde_, nb, kdec), vs = vd;
        chunk_gemm<Arch, T, mma_init::zero>({dst, e, ldd_, ldd_}, by_cols(vs, lde_), {k, nb, ldd_, ldd_});
        combine(st, dst, e * ldd_, lam_nb);
      }
    }
    if (!ddecay_) return;
    for (index h = h0; h < h1; ++h) {
      const index u = b * p_.hq + h;
      if (bp_.dstate_out)  // + ⟨∂L/∂S_N, R_N⟩
        for (index cc = 0; cc < d; ++cc)
          for (index xx = 0; xx < e; ++xx)
            g[h - h0] += double(bp_.dstate_out[(u * d + cc) * e + xx]) * double(rstate(h)[xx * ldd_ + cc]);
      partials_[u] = g[h - h0];
    }
  }

  // --- pass 2: dK, dV, dS0 --------------------------------------------------------------------------

  /// Batch b, K/V heads [hk0, hk1): the chunks from last to first across the heads, each query head
  /// of a group with its dS.
  void key_sweep(index b, index hk0, index hk1) const {
    const index d = p_.d, e = p_.e, g = p_.group, h0 = hk0 * g, h1 = hk1 * g, sst = drows_ * lde_;
    const auto [q, k, v, dout, dod, a, m, c1, c2, akk, avv, ds, dds, dst, kdec] = carve(std::array<index, 15>{
        bk_ * ldd_, bk_ * ldd_, bk_ * lde_, bk_ * lde_, bk_ * lde_, rows_ * ldp_, rows_ * ldp_, rows_ * ldd_,
        rows_ * lde_, rows_ * ldd_, rows_ * lde_, (h1 - h0) * sst, sst, erows_ * ldd_, ldp_});
    const T sc = T(p_.scale);
    auto state = [&](index h) { return ds + (h - h0) * sst; };
    for (index h = h0; h < h1; ++h) {  // dS = ∂L/∂final_state, or zeros
      T* s = state(h);
      std::fill(s, s + sst, T(0));
      if (bp_.dstate_out)
        for (index cc = 0; cc < d; ++cc)
          std::memcpy(s + cc * lde_, bp_.dstate_out + ((b * p_.hq + h) * d + cc) * e, sizeof(T) * std::size_t(e));
    }
    // dSᵀ of head h into dst, L rows of dS at a time through register transposes (scalar stores
    // along a column took a fifth of the pass); columns past d get zeros
    auto transpose_state = [&](index h) {
      const T* s = state(h);
      for (index c0 = 0; c0 < ldd_; c0 += L) {
        const T* rows[L];
        for (index l = 0; l < L; ++l) rows[l] = c0 + l < d ? s + (c0 + l) * lde_ : nullptr;
        simd::transpose_rows<T, Arch>(rows, e, T(1), dst + c0, ldd_);
      }
    };
    // The first head of a group puts its dK and dV terms straight into akk and avv, the others into
    // c1 and c2, then added in head order.
    auto sum_heads = [&](index h, index nb) {
      if (h % g == 0) return;
      for (auto [acc, src, ld] : {std::tuple{akk, c1, ldd_}, std::tuple{avv, c2, lde_}})
        for (index x = 0; x < nb * ld; x += L) simd::store(acc + x, simd::load<V>(acc + x) + simd::load<V>(src + x));
    };

    if (!p_.causal) {
      for (index ch = 0; ch < qchunks_; ++ch) {  // dS += σ·Qᵀ·dO over every query
        const index t0 = ch * bk_, nb = std::min(bk_, p_.nq - t0);
        for (index h = h0; h < h1; ++h) {
          pack(q, ldd_, p_.q, b, t0, nb, h, d, sc);
          pack(dout, lde_, bp_.dout, b, t0, nb, h, e);
          chunk_gemm<Arch, T, mma_init::zero>({dds, d, lde_, lde_}, by_cols(q, ldd_), {dout, nb, lde_, lde_});
          combine(state(h), dds, d * lde_, T(1));
        }
      }
      for (index ch = 0; ch < chunks_; ++ch) {  // dK = V·dSᵀ, dV = K·dS, summed over the heads
        const index t0 = ch * bk_, nb = std::min(bk_, p_.nk - t0);
        for (index hk = hk0; hk < hk1; ++hk) {
          pack(k, ldd_, p_.k, b, t0, nb, hk, d);
          pack(v, lde_, p_.v, b, t0, nb, hk, e);
          for (index h = hk * g; h < (hk + 1) * g; ++h) {
            T* const gk = h % g == 0 ? akk : c1;
            T* const gv = h % g == 0 ? avv : c2;
            transpose_state(h);
            chunk_gemm<Arch, T, mma_init::zero>({gk, nb, ldd_, ldd_}, by_rows(v, lde_), {dst, e, ldd_, ldd_});
            chunk_gemm<Arch, T, mma_init::zero>({gv, nb, lde_, lde_}, by_rows(k, ldd_), {state(h), d, lde_, lde_});
            sum_heads(h, nb);
          }
          store_rows(bp_.dk, akk, ldd_, b, t0, nb, hk, d);
          store_rows(bp_.dv, avv, lde_, b, t0, nb, hk, e);
        }
      }
    } else {
      for (index ch = chunks_ - 1; ch >= 0; --ch) {
        const index t0 = ch * bk_, nb = std::min(bk_, p_.nk - t0);
        for (index hk = hk0; hk < hk1; ++hk) {
          pack(k, ldd_, p_.k, b, t0, nb, hk, d);
          pack(v, lde_, p_.v, b, t0, nb, hk, e);
          for (index h = hk * g; h < (hk + 1) * g; ++h) {
            const T lam_nb = set_chunk(kdec, h, nb);
            const T* qdec = powers(h) + 1;
            pack(q, ldd_, p_.q, b, t0, nb, h, d, sc);
            pack(dout, lde_, bp_.dout, b, t0, nb, h, e);
            masked_scores(a, q, k, ldd_, nb, h);     // A = σ·(Q·Kᵀ) ⊙ D
            masked_scores(m, dout, v, lde_, nb, h);  // M = (dO·Vᵀ) ⊙ D
            // dK = diag(λ^(nb−1−j))·V·dS_{c+1}ᵀ + Mᵀ·σQ
            T* const gk = h % g == 0 ? akk : c1;
            T* const gv = h % g == 0 ? avv : c2;
            transpose_state(h);
            chunk_gemm<Arch, T, mma_init::zero>({gk, nb, ldd_, ldd_}, by_rows(v, lde_), {dst, e, ldd_, ldd_});
            transposed_product(gk, ldd_, m, q, ldd_, nb, kdec);
            // dV = diag(λ^(nb−1−j))·K·dS_{c+1} + Aᵀ·dO
            chunk_gemm<Arch, T, mma_init::zero>({gv, nb, lde_, lde_}, by_rows(k, ldd_), {state(h), d, lde_, lde_});
            transposed_product(gv, lde_, a, dout, lde_, nb, kdec);
            sum_heads(h, nb);
            // dS_c = λ^nb·dS_{c+1} + (σQ)ᵀ·diag(λ^(i+1))·dO
            scale_rows(dod, dout, lde_, nb, qdec);
            chunk_gemm<Arch, T, mma_init::zero>({dds, d, lde_, lde_}, by_cols(q, ldd_), {dod, nb, lde_, lde_});
            combine(state(h), dds, d * lde_, lam_nb);
          }
          store_rows(bp_.dk, akk, ldd_, b, t0, nb, hk, d);
          store_rows(bp_.dv, avv, lde_, b, t0, nb, hk, e);
        }
      }
    }
    if (bp_.dstate_in)
      for (index h = h0; h < h1; ++h)
        for (index cc = 0; cc < d; ++cc)
          std::memcpy(bp_.dstate_in + ((b * p_.hq + h) * d + cc) * e, state(h) + cc * lde_, sizeof(T) * std::size_t(e));
  }

  const chunk_backward_problem<T>& bp_;
  const chunk_problem<T>& p_;
  index bk_, ldp_, rows_, ldd_, lde_, drows_, erows_, pw_off_, tw_, chunks_, qchunks_;
  bool decayed_, ddecay_;
  T* tab_ = nullptr;
  T* ramp_ = nullptr;           // ramp_[i] = B−1−i for i < B, 0 up to B + ldp: row t reads ramp_[B−1−t + j] = t − j
  double* partials_ = nullptr;  // [batch·Hq] ∂L/∂logλ per item, each written by its item alone
};

/// Runs a validated chunk backward problem on `dev` with the kernels of `Arch`.
template <class Arch, class T, class Device>
void chunk_backward_run(const chunk_backward_problem<T>& p, const Device& dev) {
  if (p.fwd.batch == 0) {  // no sequence: the decays' gradient is an empty sum
    if (p.ddecay) std::fill(p.ddecay, p.ddecay + p.fwd.hq, 0.0);
    return;
  }
  chunk_backward<T, Arch>(p).run(dev);
}

}  // namespace xattn::detail
