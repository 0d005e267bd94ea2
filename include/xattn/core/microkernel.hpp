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

#include "simd.hpp"
#include "error.hpp"  // xattn::index

namespace xattn::detail {

/// Rows of A past `m` are read from row m − 1 instead (so a short tile never reads outside its
/// tensor); their C rows are computed and meaningless. C must have round_up(m, MR) rows; N is a
/// multiple of NV·lanes; B and C are kAlign-aligned with ldb, ldc multiples of the vector width.
template <class Arch, class T, int MR, int NV, bool Accumulate>
void mma_ab(T* c, index ldc, const T* a, index a_rs, index a_cs, index m, const T* b, index ldb, index n,
            index k, const T* col_scale = nullptr) {
  using V = simd::vec_t<T, Arch>;
  constexpr index L = simd::lanes_v<T, Arch>;
  for (index i0 = 0; i0 < m; i0 += MR) {
    const T* ar[MR];
    for (int r = 0; r < MR; ++r) ar[r] = a + std::min<index>(i0 + r, m - 1) * a_rs;
    for (index j0 = 0; j0 < n; j0 += NV * L) {
      V acc[MR][NV];
      T* crow = c + i0 * ldc + j0;
      if constexpr (Accumulate) {
        V s[NV];
        for (int v = 0; v < NV; ++v) s[v] = simd::load<V>(col_scale + j0 + v * L);
        for (int r = 0; r < MR; ++r)
          for (int v = 0; v < NV; ++v) acc[r][v] = simd::load<V>(crow + r * ldc + v * L) * s[v];
      } else {
        for (int r = 0; r < MR; ++r)
          for (int v = 0; v < NV; ++v) acc[r][v] = simd::bcast<V>(T(0));
      }
      const T* bp = b + j0;
      for (index kk = 0; kk < k; ++kk, bp += ldb) {
        V bv[NV];
        for (int v = 0; v < NV; ++v) bv[v] = simd::load<V>(bp + v * L);
        for (int r = 0; r < MR; ++r) {
          const V ab = simd::bcast<V>(ar[r][kk * a_cs]);
          for (int v = 0; v < NV; ++v) acc[r][v] = simd::fma(ab, bv[v], acc[r][v]);
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) simd::store(crow + r * ldc + v * L, acc[r][v]);
    }
  }
}

}  // namespace xattn::detail
