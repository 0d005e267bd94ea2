// xattn/core/feature_backward.hpp — the backward pass of linear attention through a feature map
// and the normaliser, on the identity-map engine (core/chunk_backward.hpp).
//
// With Φq = φ(q), Φk = φ(k) and, under the normaliser, v' = [v, 1] (so that the state's last
// column is z = Σφ(k), as the forward keeps it), linear attention is the identity map's on
// (Φq, Φk, v'): o' = [num, den − eps] with out = num / den. So the backward is
//   1. Φq, Φk (and v') into the calling thread's workspace; under the normaliser, o' by the
//      forward engine, then dO' = [dO / den, −(dO·out) / den] in the place of o';
//   2. the identity-map backward on (Φq, Φk, v', dO'): ∂L/∂Φq, ∂L/∂Φk, ∂L/∂v' (whose first e
//      columns are dv) and the state gradients, whose shape [D', e + 1] is the forward's;
//   3. dq = J_φ(q)ᵀ·∂L/∂Φq and dk = J_φ(k)ᵀ·∂L/∂Φk, row by row (for the per-side softmax's key
//      side, feature by feature over the sequence).
// The normaliser costs one forward pass more (about a third of the backward's time); the maps
// cost one pass over the rows each way. Every pass is cut by rows alone and each row is written by
// one thread, so the gradients stay bitwise identical for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>

#include "chunk_backward.hpp"
#include "chunk_engine.hpp"
#include "feature_maps.hpp"
#include "parallel.hpp"
#include "workspace.hpp"

namespace xattn::detail {

/// dx[0, d) = J_φ(x)ᵀ·g for a row x, y = φ(x) and g = ∂L/∂y (D' entries). The per-side softmax
/// is its query side here (softmax over the features); its key side is key_softmax_backward.
template <class T>
void feature_row_backward(feature kind, const T* x, index d, const T* y, const T* g, T* dx) {
  switch (kind) {
    case feature::elu_plus_one:  // φ' = 1 above 0, e^x = φ(x) below (as feature_row's x > 0 split)
      for (index c = 0; c < d; ++c) dx[c] = x[c] > T(0) ? g[c] : g[c] * y[c];
      break;
    case feature::relu:
      for (index c = 0; c < d; ++c) dx[c] = x[c] > T(0) ? g[c] : T(0);
      break;
    case feature::taylor: {  // y = [1, x, x_i²/√2, x_i·x_j (i < j)]
      const T* gsq = g + 1 + d;
      const T* gx = gsq + d;
      const T r2 = T(2 * kSqrtHalf);  // d(x²/√2)/dx = √2·x
      for (index i = 0; i < d; ++i) dx[i] = g[1 + i] + r2 * x[i] * gsq[i];
      for (index i = 0; i < d; ++i) {
        T acc = 0;
        const index n = d - 1 - i;
        for (index j = 0; j < n; ++j) {
          acc += gx[j] * x[i + 1 + j];
          dx[i + 1 + j] += gx[j] * x[i];
        }
        dx[i] += acc;
        gx += n;
      }
      break;
    }
    case feature::softmax: {  // y∘(g − y·g)
      T dot = 0;
      for (index c = 0; c < d; ++c) dot += y[c] * g[c];
      for (index c = 0; c < d; ++c) dx[c] = y[c] * (g[c] - dot);
      break;
    }
    default:  // identity (custom maps are rejected by the validation)
      std::copy(g, g + d, dx);
      break;
  }
}

/// The backward pass of a validated linear-attention problem whose map is not the identity or
/// that has the normaliser (see the top of this file).
template <class Arch, class T, class Device>
void mapped_linear_backward(const chunk_backward_problem<T>& bp, const Device& dev) {
  const chunk_problem<T>& p = bp.fwd;
  if (p.batch == 0) return;
  const index B = p.batch, nq = p.nq, nk = p.nk, hq = p.hq, hkv = p.hkv, d = p.d, e = p.e, df = p.df;
  const bool norm = p.normalize, soft = p.map->kind() == feature::softmax;
  const feature kind = p.map->kind();
  const index ea = e + (norm ? 1 : 0);

  // Workspace slot 2 (the engines use 0 and 1 on this thread): Φq, ∂Φq, Φk, ∂Φk; under the
  // normaliser v', o'/dO', ∂v'; for the key-side softmax its statistics and column sums.
  const auto room = [](index n) { return (n + 15) / 16 * 16; };
  const index n_q = room(B * nq * hq * df), n_k = room(B * nk * hkv * df);
  const index n_v = norm ? room(B * nk * hkv * ea) : 0, n_o = norm ? room(B * nq * hq * ea) : 0;
  const index n_s = soft ? room(B * hkv * 3 * d) : 0;
  T* at = static_cast<T*>(
      workspace::of_this_thread(2).get(sizeof(T) * std::size_t(2 * n_q + 2 * n_k + 2 * n_v + n_o + n_s)));
  T *fq = at, *gq = fq + n_q, *fk = gq + n_q, *gk = fk + n_k, *va = gk + n_k, *dva = va + n_v, *oa = dva + n_v;
  T* stats = oa + n_o;  // per (b, K/V head): max, sum, then Σ_j y_jc·g_jc
  const auto view = [](T* data, index b, index s, index h, index dim) {
    return make_native_view<T>(data, {b, s, h, dim}, layout::bshd);
  };
  const auto cview = [](const T* data, index b, index s, index h, index dim) {
    return make_native_view<const T>(data, {b, s, h, dim}, layout::bshd);
  };
  const bshd_view<T> Fq = view(fq, B, nq, hq, df), Gq = view(gq, B, nq, hq, df);
  const bshd_view<T> Fk = view(fk, B, nk, hkv, df), Gk = view(gk, B, nk, hkv, df);
  const bshd_view<T> Va = view(va, B, nk, hkv, ea), Dva = view(dva, B, nk, hkv, ea), Oa = view(oa, B, nq, hq, ea);

  // 1. The mapped rows, in blocks of rows of every head.
  constexpr index kRows = 16;
  const index qblocks = (nq + kRows - 1) / kRows, kblocks = (nk + kRows - 1) / kRows;
  if (soft)
    parallel_for(dev, B * hkv, [&](index bh) {
      const index b = bh / hkv, h = bh % hkv;
      T* mx = stats + bh * 3 * d;
      key_softmax_stats<Arch, T>([&](index j) { return p.k.row(b, j, h); }, nk, d, mx, mx + d);
    });
  // f(is_q, b, t, h) for every row of q and of k, spread over the threads in blocks of kRows rows
  const auto each_row = [&](const auto& f) {
    parallel_for(dev, B * (qblocks + kblocks), [&](index item) {
      const index b = item / (qblocks + kblocks), blk = item % (qblocks + kblocks);
      const bool is_q = blk < qblocks;
      const index t0 = (is_q ? blk : blk - qblocks) * kRows, n = is_q ? nq : nk, heads = is_q ? hq : hkv;
      for (index t = t0; t < std::min(n, t0 + kRows); ++t)
        for (index h = 0; h < heads; ++h) f(is_q, b, t, h);
    });
  };
  each_row([&](bool is_q, index b, index t, index h) {
    if (is_q) {
      feature_row<Arch, T>(*p.map, p.q.row(b, t, h), d, Fq.row(b, t, h));
      return;
    }
    const T* x = p.k.row(b, t, h);
    if (soft) {
      const T* mx = stats + (b * hkv + h) * 3 * d;
      key_softmax_row<Arch, T>(x, d, mx, mx + d, Fk.row(b, t, h));
    } else {
      feature_row<Arch, T>(*p.map, x, d, Fk.row(b, t, h));
    }
    if (norm) {
      T* r = Va.row(b, t, h);
      std::memcpy(r, p.v.row(b, t, h), sizeof(T) * std::size_t(e));
      r[e] = T(1);
    }
  });

  // The identity-map problem on the mapped rows.
  chunk_problem<T> f = p;
  f.q = cview(fq, B, nq, hq, df), f.k = cview(fk, B, nk, hkv, df);
  f.d = df, f.e = ea, f.map = &identity_map(), f.normalize = false, f.eps = 0, f.state_out = nullptr;
  if (norm) {
    f.v = cview(va, B, nk, hkv, ea), f.o = Oa;
    chunk_forward<Arch>(f, dev);  // o' = [num, den − eps]
    parallel_for(dev, B * qblocks, [&](index item) {
      const index b = item / qblocks, t0 = item % qblocks * kRows;
      for (index t = t0; t < std::min(nq, t0 + kRows); ++t)
        for (index h = 0; h < hq; ++h) {
          T* o = Oa.row(b, t, h);
          const T* g = bp.dout.row(b, t, h);
          const T inv = T(1) / (o[e] + T(p.eps));
          T gden = 0;
          for (index c = 0; c < e; ++c) {
            gden -= g[c] * (o[c] * inv);
            o[c] = g[c] * inv;
          }
          o[e] = gden * inv;
        }
    });
  }
  chunk_backward_problem<T> b2;
  b2.fwd = f;
  b2.dout = norm ? cview(oa, B, nq, hq, ea) : bp.dout;
  b2.dq = Gq, b2.dk = Gk, b2.dv = norm ? Dva : bp.dv;
  b2.dstate_out = bp.dstate_out, b2.dstate_in = bp.dstate_in;
  chunk_backward_run<Arch>(b2, dev);

  // 3. Through the map (and dv out of ∂L/∂v').
  if (soft)
    parallel_for(dev, B * hkv, [&](index bh) {
      const index b = bh / hkv, h = bh % hkv;
      T* dot = stats + bh * 3 * d + 2 * d;
      std::fill(dot, dot + d, T(0));
      for (index j = 0; j < nk; ++j) {
        const T *y = Fk.row(b, j, h), *g = Gk.row(b, j, h);
        for (index c = 0; c < d; ++c) dot[c] += y[c] * g[c];
      }
    });
  each_row([&](bool is_q, index b, index t, index h) {
    if (is_q) {
      feature_row_backward(kind, p.q.row(b, t, h), d, Fq.row(b, t, h), Gq.row(b, t, h), bp.dq.row(b, t, h));
      return;
    }
    const T *y = Fk.row(b, t, h), *g = Gk.row(b, t, h);
    T* dx = bp.dk.row(b, t, h);
    if (soft) {  // per feature over the sequence: y_jc·(g_jc − Σ_j' y_j'c·g_j'c)
      const T* dot = stats + (b * hkv + h) * 3 * d + 2 * d;
      for (index c = 0; c < d; ++c) dx[c] = y[c] * (g[c] - dot[c]);
    } else {
      feature_row_backward(kind, p.k.row(b, t, h), d, y, g, dx);
    }
    if (norm) std::memcpy(bp.dv.row(b, t, h), Dva.row(b, t, h), sizeof(T) * std::size_t(e));
  });
}

/// The backward pass of a validated linear-attention problem: the identity map without the
/// normaliser straight on the engine, every other form through mapped_linear_backward.
template <class Arch, class T, class Device>
void linear_backward_run(const chunk_backward_problem<T>& bp, const Device& dev) {
  if (bp.fwd.map->kind() == feature::identity && !bp.fwd.normalize)
    chunk_backward_run<Arch>(bp, dev);
  else
    mapped_linear_backward<Arch>(bp, dev);
}

}  // namespace xattn::detail
