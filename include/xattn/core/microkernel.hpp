// xattn/core/microkernel.hpp — the register-tiled product both tile products run on.
//
//   C[M×N] = A·B            (Accumulate = false)
//   C[M×N] = C ⊙ s + A·B    (Accumulate = true; s scales each column of C: the online-softmax
//                            rescale exp(m_old − m_new), folded into the accumulator load)
//
// A is read one element at a time and broadcast (any strides: a row of K, or a column of V), B is a
// packed row-major panel whose rows are whole vectors, C is row-major. One micro-tile is MR rows ×
// NV vectors: MR·NV accumulators stay in registers for the whole K loop, which per step loads NV
// vectors of B and broadcasts MR scalars of A. With MR·NV = 16 on AVX-512 (32 registers) that is 16
// independent FMA chains: enough for 2 FMA pipes × 4-cycle latency twice over, and it leaves room
// for the B vectors and a broadcast, so nothing spills.
#pragma once

#include <algorithm>
#include <cstring>

#include "simd.hpp"
#include "error.hpp"  // detail::index
#include "tile.hpp"

namespace xattn::detail {

/// How mma_ab starts its accumulators: from zero, or from C scaled per column or per row (the
/// online-softmax rescale of a transposed or an upright output tile).
enum class mma_init { zero, scale_cols, scale_rows };

/// C[m × n] (=|+=) A[m × k]·B[k × n]: m and n are C's rows and columns, k is B's rows. Rows of A
/// past m are read from row m − 1 instead (so a short tile never reads outside its tensor); their
/// C rows are computed and meaningless. With Consecutive, A's rows are consecutive scalars (its
/// row stride is taken as 1) readable for round_up(m, MR) rows: every broadcast of a K step is one
/// pointer plus a constant, where MR = 16 row pointers would not fit the 16 general registers.
/// C's memory must have round_up(m, MR) rows; n is a multiple of NV·lanes; C is kAlign-aligned with
/// ld a multiple of the vector width. B may be unaligned (rows of a caller's tensor): unaligned
/// loads of aligned data cost nothing extra.
template <class Arch, class T, int MR, int NV, mma_init Init, bool Consecutive = false, class SB = T>
void mma_ab(tile<T> ct, strided<T> at, tile<const SB> bt, const T* scale = nullptr) {
  using V = simd::vec_t<T, Arch>;
  constexpr index L = simd::lanes_v<T, Arch>;
  T* const c = ct.p;
  const T* const a = at.p;
  const SB* const b = bt.p;
  const index ldc = ct.ld, m = ct.rows, n = ct.cols, a_rs = at.rs, a_cs = at.cs, ldb = bt.ld, k = bt.rows;
  for (index i0 = 0; i0 < m; i0 += MR) {
    const T* ar[MR];
    XATTN_UNROLL for (int r = 0; r < MR; ++r) ar[r] = a + std::min<index>(i0 + r, m - 1) * a_rs;
    for (index j0 = 0; j0 < n; j0 += NV * L) {
      V acc[MR][NV];
      T* crow = c + i0 * ldc + j0;
      if constexpr (Init == mma_init::scale_cols) {
        V s[NV];
        XATTN_UNROLL for (int v = 0; v < NV; ++v) s[v] = simd::load<V>(scale + j0 + v * L);
        XATTN_UNROLL for (int r = 0; r < MR; ++r)
          XATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = simd::load<V>(crow + r * ldc + v * L) * s[v];
      } else if constexpr (Init == mma_init::scale_rows) {
        XATTN_UNROLL for (int r = 0; r < MR; ++r) {
          const V s = simd::bcast<V>(scale[std::min<index>(i0 + r, m - 1)]);
          XATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = simd::load<V>(crow + r * ldc + v * L) * s;
        }
      } else {
        XATTN_UNROLL for (int r = 0; r < MR; ++r)
          XATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = simd::bcast<V>(T(0));
      }
      const SB* bp = b + j0;
      const T* ak = a + i0;  // Consecutive: A[i0 + r][kk] = ak[r], ak advancing by a_cs
      for (index kk = 0; kk < k; ++kk, bp += ldb, ak += a_cs) {
        V bv[NV];
        XATTN_UNROLL for (int v = 0; v < NV; ++v) bv[v] = simd::in_register(simd::loadu_from<V>(bp + v * L));
        XATTN_UNROLL for (int r = 0; r < MR; ++r) {
          const V ab = simd::bcast<V>(Consecutive ? ak[r] : ar[r][kk * a_cs]);
          XATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = simd::fma(ab, bv[v], acc[r][v]);
        }
      }
      XATTN_UNROLL for (int r = 0; r < MR; ++r)
        XATTN_UNROLL for (int v = 0; v < NV; ++v) simd::store(crow + r * ldc + v * L, acc[r][v]);
    }
  }
}

/// Rows of A per dot_abt block (it writes Sᵀ lanes in whole blocks of this many).
template <class Arch, class T>
inline constexpr int dot_row_block = simd::lanes_v<T, Arch> < 4 ? 1 : simd::lanes_v<T, Arch> / 4;

/// Sᵀ[c][r] = Σ_k A[r][k]·B[c][k] for r < m (A's rows), c < n (B's rows), k A's and B's columns,
/// by dot products along k: the product for a few rows of A against many rows of B (a decode
/// step's query rows against a K tile), where broadcasting A would leave most lanes idle. A block
/// of RB rows × KB keys (RB·KB = lanes, 4 × 4 on AVX-512) keeps one accumulator per pair along k —
/// each k step loads RB + KB vectors for RB·KB FMAs — and one haddp folds the lanes accumulators
/// into their sums. k is a multiple of the vector width (A and B zero-padded); rows of A past m
/// and of B past n are read from the last row (their results land in padding). Sᵀ (n × m) has
/// memory for round_up(n, KB) rows and round_up(m, RB) lanes. prefetch(i) is called once for each
/// i < round_up(n, KB), interleaved with the work (the caller requests the next tile's rows there).
template <class Arch, class T, class Prefetch, class SB = T>
void dot_abt(tile<T> st, tile<const T> at, tile<const SB> bt, const Prefetch& prefetch) {
  using V = simd::vec_t<T, Arch>;
  constexpr int L = simd::lanes_v<T, Arch>;
  T* const c = st.p;
  const T* const a = at.p;
  const SB* const b = bt.p;
  const index ldc = st.ld, lda = at.ld, m = at.rows, ldb = bt.ld, n = bt.rows, k = at.cols;
  constexpr int RB = dot_row_block<Arch, T>, KB = L / RB;
  for (index c0 = 0; c0 < n; c0 += KB) {
    const SB* br[KB];
    XATTN_UNROLL for (int j = 0; j < KB; ++j) {
      br[j] = b + std::min<index>(c0 + j, n - 1) * ldb;
      prefetch(c0 + j);
    }
    for (index r0 = 0; r0 < m; r0 += RB) {
      const T* ar[RB];
      XATTN_UNROLL for (int i = 0; i < RB; ++i) ar[i] = a + std::min<index>(r0 + i, m - 1) * lda;
      V acc[KB * RB];  // acc[j·RB + i]: key j, row i — so that each key's sums land in adjacent lanes
      XATTN_UNROLL for (int t = 0; t < KB * RB; ++t) acc[t] = simd::bcast<V>(T(0));
      for (index kk = 0; kk < k; kk += L) {
        V bv[KB];
        XATTN_UNROLL for (int j = 0; j < KB; ++j) bv[j] = simd::in_register(simd::loadu_from<V>(br[j] + kk));
        XATTN_UNROLL for (int i = 0; i < RB; ++i) {
          const V av = simd::in_register(simd::loadu<V>(ar[i] + kk));
          XATTN_UNROLL for (int j = 0; j < KB; ++j) acc[j * RB + i] = simd::fma(av, bv[j], acc[j * RB + i]);
        }
      }
      alignas(simd::kAlign) T sums[L];
      simd::store(sums, simd::haddp(acc));
      XATTN_UNROLL for (int j = 0; j < KB; ++j) std::memcpy(c + (c0 + j) * ldc + r0, sums + j * RB, sizeof(T) * RB);
    }
  }
}

}  // namespace xattn::detail
