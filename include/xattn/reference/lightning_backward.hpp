// xattn/reference/lightning_backward.hpp — the fp64 oracles of the backward passes of lightning
// attention and of linear attention. Plain loops, no SIMD, no chunks, no threads. Both give the
// gradients of L = Σ dO ∘ O + Σ dS_N ∘ S_N, summing dk and dv over the query heads of each K/V head
// (GQA). The sums run in Acc (double for the oracles; the tests also run them in float, as the
// naive implementation of the accuracy rule).
//
// Lightning attention (and linear attention with the identity map and no normaliser, its s = 0
// case), written from the forward's math per (batch, query head), λ = e^−s, σ the scale, visible
// pairs j <= t (all pairs when non-causal, where s = 0):
//
//   o_t  = σ·Σ_j λ^(t−j)·(q_t·k_j)·v_j + σ·λ^(t+1)·q_t·S0        (causal; non-causal: λ = 1)
//   S_N  = λ^N·S0 + Σ_j λ^(N−1−j)·k_jᵀ·v_j
//
//   dq_t = σ·Σ_j λ^(t−j)·(dO_t·v_j)·k_j + σ·λ^(t+1)·dO_t·S0ᵀ
//   dk_j = σ·Σ_t λ^(t−j)·(dO_t·v_j)·q_t + λ^(N−1−j)·v_j·dS_Nᵀ
//   dv_j = σ·Σ_t λ^(t−j)·(q_t·k_j)·dO_t + λ^(N−1−j)·k_j·dS_N
//   dS0  = σ·Σ_t λ^(t+1)·q_tᵀ·dO_t + λ^N·dS_N
//
// and, by ∂λ^m/∂s = −m·λ^m, the decay's gradient (causal only), summed over the batch:
//
//   ∂L/∂s = −σ·Σ_t Σ_{j<=t} (t−j)·λ^(t−j)·(q_t·k_j)·(dO_t·v_j) − σ·Σ_t (t+1)·λ^(t+1)·(q_t·S0)·dO_t
//           + ⟨dS_N, ∂S_N/∂s⟩,   ∂S_N/∂s = −N·λ^N·S0 − Σ_j (N−1−j)·λ^(N−1−j)·k_jᵀ·v_j
//
// Linear attention with any built-in map φ and optional normaliser, from the definition in
// options.hpp by the chain rule. With w_j = [v_j, 1] (the 1 only with the normaliser) the state of
// query t holds the numerator's state and, as its last column, the normaliser's z:
//
//   S_t   = S0 + Σ_{j<=t} φ(k_j)ᵀ·w_j     (all j when non-causal)      S_N = S0 + Σ_j φ(k_j)ᵀ·w_j
//   num_t = σ·φ(q_t)·S_t[:, :e]   den_t = σ·φ(q_t)·z_t + eps (1 without normaliser)   o_t = num_t / den_t
//
//   g_t     = [dO_t / den_t, −(dO_t·o_t) / den_t]    ∂L/∂num_t and ∂L/∂den_t (only the first without normaliser)
//   ∂L/∂φ(q_t) = σ·S_t·g_t
//   R_j     = dS_N + Σ_{t>=j} σ·φ(q_t)ᵀ·g_t  (all t when non-causal): ∂L/∂(φ(k_j)ᵀ·w_j)
//   ∂L/∂φ(k_j) = R_j·w_j      dv_j = φ(k_j)·R_j[:, :e]      dS0 = dS_N + Σ_t σ·φ(q_t)ᵀ·g_t
//
// then dq = J_φ(q)ᵀ·∂L/∂φ(q) and dk = J_φ(k)ᵀ·∂L/∂φ(k) (feature_grad; the key side of the softmax
// map is a softmax of each feature over the sequence, so its Jacobian runs over the sequence).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/chunk_backward_args.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

/// Lightning attention's backward pass (the first formulas at the top of this file); it reads the
/// problem's decays and ignores its feature map and normaliser, so it serves linear attention only
/// for the identity map without normaliser (linear_attention_backward below serves every map).
/// The decay's gradient, when asked, sums in Acc per (batch, head) and over the batch in double.
template <class Acc, class T>
void chunk_attention_backward(const xattn::detail::chunk_backward_problem<T>& bp) {
  const auto& p = bp.fwd;
  const index nq = p.nq, nk = p.nk, d = p.d, e = p.e;
  const auto sz = [](index x) { return static_cast<std::size_t>(x); };
  const Acc sc = Acc(p.scale);
  const bool want_ds = bp.ddecay && p.causal;
  std::vector<Acc> dk(sz(nk * d)), dv(sz(nk * e)), dq(sz(d)), ds0(sz(d * e)), pw(sz(std::max(nq, nk) + 2));
  if (bp.ddecay) std::fill(bp.ddecay, bp.ddecay + p.hq, 0.0);
  for (index b = 0; b < p.batch; ++b)
    for (index hk = 0; hk < p.hkv; ++hk) {
      std::fill(dk.begin(), dk.end(), Acc(0));
      std::fill(dv.begin(), dv.end(), Acc(0));
      for (index h = hk * p.group; h < (hk + 1) * p.group; ++h) {
        for (index m = 0; m < index(pw.size()); ++m) pw[sz(m)] = std::exp(-Acc(p.decay_of(h)) * Acc(m));  // λ^m
        const index u = b * p.hq + h;
        const T* s0 = p.state_in ? p.state_in + u * d * e : nullptr;
        const T* dsn = bp.dstate_out ? bp.dstate_out + u * d * e : nullptr;
        Acc ds = 0;  // ∂L/∂s of this (batch, head)
        for (index t = 0; t < nq; ++t) {
          const T* qt = p.q.row(b, t, h);
          const T* dot = bp.dout.row(b, t, h);
          std::fill(dq.begin(), dq.end(), Acc(0));
          for (index j = 0; j < (p.causal ? t + 1 : nk); ++j) {
            const T* kj = p.k.row(b, j, hk);
            const T* vj = p.v.row(b, j, hk);
            Acc a = 0, dp = 0;  // q_t·k_j, dO_t·v_j
            for (index c = 0; c < d; ++c) a += Acc(qt[c]) * Acc(kj[c]);
            for (index x = 0; x < e; ++x) dp += Acc(dot[x]) * Acc(vj[x]);
            const Acc f = sc * (p.causal ? pw[sz(t - j)] : Acc(1));
            for (index c = 0; c < d; ++c) {
              dq[sz(c)] += f * dp * Acc(kj[c]);
              dk[sz(j * d + c)] += f * dp * Acc(qt[c]);
            }
            for (index x = 0; x < e; ++x) dv[sz(j * e + x)] += f * a * Acc(dot[x]);
            if (want_ds) ds -= Acc(t - j) * f * a * dp;  // −σ·(t−j)·λ^(t−j)·(q_t·k_j)·(dO_t·v_j)
          }
          if (s0) {  // + σ·λ^(t+1)·dO_t·S0ᵀ
            const Acc f = sc * (p.causal ? pw[sz(t + 1)] : Acc(1));
            Acc qsd = 0;  // (q_t·S0)·dO_t
            for (index c = 0; c < d; ++c) {
              Acc acc = 0;
              for (index x = 0; x < e; ++x) acc += Acc(dot[x]) * Acc(s0[c * e + x]);
              dq[sz(c)] += f * acc;
              qsd += Acc(qt[c]) * acc;
            }
            if (want_ds) ds -= Acc(t + 1) * f * qsd;  // −σ·(t+1)·λ^(t+1)·(q_t·S0)·dO_t
          }
          for (index c = 0; c < d; ++c) bp.dq.row(b, t, h)[c] = T(dq[sz(c)]);
        }
        if (dsn)  // the final state's terms: λ^(N−1−j)·v_j·dS_Nᵀ and λ^(N−1−j)·k_j·dS_N
          for (index j = 0; j < nk; ++j) {
            const T* kj = p.k.row(b, j, hk);
            const T* vj = p.v.row(b, j, hk);
            const Acc f = p.causal ? pw[sz(nk - 1 - j)] : Acc(1);
            Acc kdv = 0;  // ⟨dS_N, k_jᵀ·v_j⟩
            for (index c = 0; c < d; ++c) {
              Acc acc = 0;
              for (index x = 0; x < e; ++x) acc += Acc(vj[x]) * Acc(dsn[c * e + x]);
              dk[sz(j * d + c)] += f * acc;
              kdv += Acc(kj[c]) * acc;
            }
            if (want_ds) ds -= Acc(nk - 1 - j) * f * kdv;  // ⟨dS_N, −(N−1−j)·λ^(N−1−j)·k_jᵀ·v_j⟩
            for (index x = 0; x < e; ++x) {
              Acc acc = 0;
              for (index c = 0; c < d; ++c) acc += Acc(kj[c]) * Acc(dsn[c * e + x]);
              dv[sz(j * e + x)] += f * acc;
            }
          }
        if (bp.dstate_in) {  // dS0 = σ·Σ_t λ^(t+1)·q_tᵀ·dO_t + λ^N·dS_N
          for (index c = 0; c < d * e; ++c) ds0[sz(c)] = dsn ? (p.causal ? pw[sz(nk)] : Acc(1)) * Acc(dsn[c]) : Acc(0);
          for (index t = 0; t < nq; ++t) {
            const Acc f = sc * (p.causal ? pw[sz(t + 1)] : Acc(1));
            for (index c = 0; c < d; ++c) {
              const Acc qc = f * Acc(p.q.row(b, t, h)[c]);
              for (index x = 0; x < e; ++x) ds0[sz(c * e + x)] += qc * Acc(bp.dout.row(b, t, h)[x]);
            }
          }
          for (index c = 0; c < d * e; ++c) bp.dstate_in[u * d * e + c] = T(ds0[sz(c)]);
        }
        if (want_ds && dsn && s0) {  // ⟨dS_N, −N·λ^N·S0⟩
          Acc acc = 0;
          for (index c = 0; c < d * e; ++c) acc += Acc(dsn[c]) * Acc(s0[c]);
          ds -= Acc(nk) * pw[sz(nk)] * acc;
        }
        if (want_ds) bp.ddecay[h] += double(ds);
      }
      for (index j = 0; j < nk; ++j) {
        for (index c = 0; c < d; ++c) bp.dk.row(b, j, hk)[c] = T(dk[sz(j * d + c)]);
        for (index x = 0; x < e; ++x) bp.dv.row(b, j, hk)[x] = T(dv[sz(j * e + x)]);
      }
    }
}

/// y[0, D') = φ(x[0, d)) in Acc, from the definitions in options.hpp: the rows of q of every map and
/// the rows of k of every map but softmax (whose key side runs over the sequence).
template <class Acc>
void feature_values(feature kind, const Acc* x, index d, Acc* y) {
  using std::exp, std::sqrt;
  switch (kind) {
    case feature::identity:
      std::copy(x, x + d, y);
      break;
    case feature::elu_plus_one:  // x + 1 for x > 0, e^x below
      for (index c = 0; c < d; ++c) y[c] = x[c] > Acc(0) ? x[c] + Acc(1) : exp(x[c]);
      break;
    case feature::relu:
      for (index c = 0; c < d; ++c) y[c] = std::max(x[c], Acc(0));
      break;
    case feature::taylor: {  // [1, x, x_i²/√2, x_i·x_j (i < j, row-major)]
      *y++ = Acc(1);
      for (index c = 0; c < d; ++c) *y++ = x[c];
      for (index c = 0; c < d; ++c) *y++ = x[c] * x[c] / sqrt(Acc(2));
      for (index i = 0; i < d; ++i)
        for (index j = i + 1; j < d; ++j) *y++ = x[i] * x[j];
      break;
    }
    case feature::softmax: {  // the query side: a softmax over the d features
      const Acc mx = *std::max_element(x, x + d);
      Acc sum = 0;
      for (index c = 0; c < d; ++c) sum += y[c] = exp(x[c] - mx);
      for (index c = 0; c < d; ++c) y[c] /= sum;
      break;
    }
    case feature::custom:  // rejected by the validator: no derivative to take
      break;
  }
}

/// dx[0, d) = J_φ(x)ᵀ·g, g = ∂L/∂φ(x) [D'], y = φ(x) as feature_values gave it.
template <class Acc>
void feature_grad(feature kind, const Acc* x, const Acc* y, const Acc* g, index d, Acc* dx) {
  using std::sqrt;
  switch (kind) {
    case feature::identity:
      std::copy(g, g + d, dx);
      break;
    case feature::elu_plus_one:  // φ' = 1 for x > 0, e^x = φ below
      for (index c = 0; c < d; ++c) dx[c] = x[c] > Acc(0) ? g[c] : g[c] * y[c];
      break;
    case feature::relu:  // φ' = 1 for x > 0, 0 below
      for (index c = 0; c < d; ++c) dx[c] = x[c] > Acc(0) ? g[c] : Acc(0);
      break;
    case feature::taylor: {  // ∂/∂x_i: g[1 + i] + √2·x_i·g[1 + d + i] + Σ_{j≠i} x_j·g[x_i·x_j's index]
      for (index c = 0; c < d; ++c) dx[c] = g[1 + c] + sqrt(Acc(2)) * x[c] * g[1 + d + c];
      const Acc* cross = g + 1 + 2 * d;
      for (index i = 0; i < d; ++i)
        for (index j = i + 1; j < d; ++j, ++cross) {
          dx[i] += x[j] * *cross;
          dx[j] += x[i] * *cross;
        }
      break;
    }
    case feature::softmax: {  // the query side: y∘(g − y·g)
      Acc yg = 0;
      for (index c = 0; c < d; ++c) yg += y[c] * g[c];
      for (index c = 0; c < d; ++c) dx[c] = y[c] * (g[c] - yg);
      break;
    }
    case feature::custom:
      break;
  }
}

/// Linear attention's backward pass with any built-in map and the optional normaliser (the formulas
/// at the top of this file), per (batch, K/V head): the keys' features once, then per query head of
/// the group a forward sweep of S_t (o_t, g_t, dq_t) and a reverse sweep of R_j (∂L/∂φ(k_j), dv_j),
/// and last the keys' Jacobians on ∂L/∂φ(k) summed over the group. Acc is double, float, or a type
/// with the arithmetic of one (exp and sqrt found by argument-dependent lookup; Acc(x) from the
/// inputs, T(acc) into the outputs), as the tests' scalar that carries each value's rounding scale.
template <class Acc, class T>
void linear_attention_backward(const xattn::detail::chunk_backward_problem<T>& bp) {
  using std::exp;
  const auto& p = bp.fwd;
  const index nq = p.nq, nk = p.nk, d = p.d, e = p.e, df = p.df, cols = p.cols();
  const feature kind = p.map->kind();
  const bool norm = p.normalize;
  const auto sz = [](index x) { return static_cast<std::size_t>(x); };
  const Acc sc = Acc(p.scale), eps = Acc(p.eps);
  std::vector<Acc> kx(sz(nk * d)), fk(sz(nk * df)), w(sz(nk * cols));   // k, φ(k), w = [v, 1] of the K/V head
  std::vector<Acc> dfk(sz(nk * df)), dv(sz(nk * e)), dk(sz(nk * d));    // ∂L/∂φ(k), dv, dk over the group
  std::vector<Acc> qx(sz(d)), fq(sz(nq * df)), g(sz(nq * cols));       // q_t, φ(q) and g of one query head
  std::vector<Acc> s(sz(df * cols)), r(sz(df * cols)), dfq(sz(df)), dq(sz(d)), o(sz(e));
  for (index b = 0; b < p.batch; ++b)
    for (index hk = 0; hk < p.hkv; ++hk) {
      for (index j = 0; j < nk; ++j) {
        for (index c = 0; c < d; ++c) kx[sz(j * d + c)] = Acc(p.k.row(b, j, hk)[c]);
        for (index x = 0; x < cols; ++x) w[sz(j * cols + x)] = x < e ? Acc(p.v.row(b, j, hk)[x]) : Acc(1);
        if (kind != feature::softmax) feature_values(kind, &kx[sz(j * d)], d, &fk[sz(j * df)]);
      }
      if (kind == feature::softmax)  // φ(k_j)[c] = e^(k_jc − max_c) / Σ_i e^(k_ic − max_c)
        for (index c = 0; c < d; ++c) {
          Acc mx = -std::numeric_limits<Acc>::infinity(), sum = 0;
          for (index j = 0; j < nk; ++j) mx = std::max(mx, kx[sz(j * d + c)]);
          for (index j = 0; j < nk; ++j) sum += fk[sz(j * df + c)] = exp(kx[sz(j * d + c)] - mx);
          for (index j = 0; j < nk; ++j) fk[sz(j * df + c)] /= sum;
        }
      std::fill(dfk.begin(), dfk.end(), Acc(0));
      std::fill(dv.begin(), dv.end(), Acc(0));
      // S += φ(k_j)ᵀ·w_j (into s), R += σ·φ(q_t)ᵀ·g_t (into r)
      const auto add_key = [&](index j) {
        for (index c = 0; c < df; ++c)
          for (index x = 0; x < cols; ++x) s[sz(c * cols + x)] += fk[sz(j * df + c)] * w[sz(j * cols + x)];
      };
      const auto add_query = [&](index t) {
        for (index c = 0; c < df; ++c)
          for (index x = 0; x < cols; ++x) r[sz(c * cols + x)] += sc * fq[sz(t * df + c)] * g[sz(t * cols + x)];
      };
      for (index h = hk * p.group; h < (hk + 1) * p.group; ++h) {
        const index u = b * p.hq + h;
        const T* s0 = p.state_in ? p.state_in + u * df * cols : nullptr;
        const T* dsn = bp.dstate_out ? bp.dstate_out + u * df * cols : nullptr;
        // Forward sweep: S_t, o_t, g_t, ∂L/∂φ(q_t) = σ·S_t·g_t, dq_t.
        for (index c = 0; c < df * cols; ++c) s[sz(c)] = s0 ? Acc(s0[c]) : Acc(0);
        if (!p.causal)
          for (index j = 0; j < nk; ++j) add_key(j);
        for (index t = 0; t < nq; ++t) {
          if (p.causal) add_key(t);
          const T* qt = p.q.row(b, t, h);
          const T* dot = bp.dout.row(b, t, h);
          for (index c = 0; c < d; ++c) qx[sz(c)] = Acc(qt[c]);
          const Acc* f = &fq[sz(t * df)];
          feature_values(kind, qx.data(), d, &fq[sz(t * df)]);
          Acc den = norm ? eps : Acc(1);
          std::fill(o.begin(), o.end(), Acc(0));
          for (index c = 0; c < df; ++c) {
            for (index x = 0; x < e; ++x) o[sz(x)] += sc * f[c] * s[sz(c * cols + x)];
            if (norm) den += sc * f[c] * s[sz(c * cols + e)];
          }
          Acc* gt = &g[sz(t * cols)];
          Acc dot_o = 0;  // dO_t·o_t
          for (index x = 0; x < e; ++x) {
            gt[x] = Acc(dot[x]) / den;
            dot_o += Acc(dot[x]) * o[sz(x)] / den;
          }
          if (norm) gt[e] = -dot_o / den;
          for (index c = 0; c < df; ++c) {
            Acc acc = 0;
            for (index x = 0; x < cols; ++x) acc += s[sz(c * cols + x)] * gt[x];
            dfq[sz(c)] = sc * acc;
          }
          feature_grad(kind, qx.data(), f, dfq.data(), d, dq.data());
          for (index c = 0; c < d; ++c) bp.dq.row(b, t, h)[c] = T(dq[sz(c)]);
        }
        // Reverse sweep: R_j, ∂L/∂φ(k_j) = R_j·w_j, dv_j = φ(k_j)·R_j[:, :e]; R ends as dS0.
        for (index c = 0; c < df * cols; ++c) r[sz(c)] = dsn ? Acc(dsn[c]) : Acc(0);
        if (!p.causal)
          for (index t = 0; t < nq; ++t) add_query(t);
        for (index j = nk - 1; j >= 0; --j) {
          if (p.causal) add_query(j);
          for (index c = 0; c < df; ++c) {
            Acc acc = 0;
            for (index x = 0; x < cols; ++x) acc += r[sz(c * cols + x)] * w[sz(j * cols + x)];
            dfk[sz(j * df + c)] += acc;
          }
          for (index x = 0; x < e; ++x) {
            Acc acc = 0;
            for (index c = 0; c < df; ++c) acc += fk[sz(j * df + c)] * r[sz(c * cols + x)];
            dv[sz(j * e + x)] += acc;
          }
        }
        if (bp.dstate_in)
          for (index c = 0; c < df * cols; ++c) bp.dstate_in[u * df * cols + c] = T(r[sz(c)]);
      }
      // dk = J_φ(k)ᵀ·∂L/∂φ(k); for the softmax map, per feature over the sequence:
      // dk_jc = φ_jc·(∂L/∂φ_jc − Σ_i φ_ic·∂L/∂φ_ic).
      if (kind == feature::softmax)
        for (index c = 0; c < d; ++c) {
          Acc pg = 0;
          for (index j = 0; j < nk; ++j) pg += fk[sz(j * df + c)] * dfk[sz(j * df + c)];
          for (index j = 0; j < nk; ++j) dk[sz(j * d + c)] = fk[sz(j * df + c)] * (dfk[sz(j * df + c)] - pg);
        }
      else
        for (index j = 0; j < nk; ++j)
          feature_grad(kind, &kx[sz(j * d)], &fk[sz(j * df)], &dfk[sz(j * df)], d, &dk[sz(j * d)]);
      for (index j = 0; j < nk; ++j) {
        for (index c = 0; c < d; ++c) bp.dk.row(b, j, hk)[c] = T(dk[sz(j * d + c)]);
        for (index x = 0; x < e; ++x) bp.dv.row(b, j, hk)[x] = T(dv[sz(j * e + x)]);
      }
    }
}

}  // namespace detail

/// The gradients dq, dk, dv (and dinitial_state and ddecay when asked) of L = Σ dout ∘ out + Σ dfinal_state ∘
/// final_state, out = lightning_attention(q, k, v, opt.forward), in double. Same shapes, options and
/// errors as xattn::lightning_attention_backward (named "xattn::reference::lightning_attention_backward").
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void lightning_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                                  const lightning_backward_options& opt = {}) {
  static_assert(std::is_same_v<scalar_of<Q>, double>,
                "xattn::reference::lightning_attention_backward reads double tensors (cast with .cast<double>())");
  detail::chunk_attention_backward<double>(xattn::detail::make_lightning_backward_problem(
      "xattn::reference::lightning_attention_backward", q, k, v, dout, dq, dk, dv, opt));
}

/// The same for linear attention, out = linear_attention(q, k, v, opt.forward): every built-in
/// feature map, with or without the normaliser, causal or not; the states (initial_state,
/// dinitial_state, dfinal_state) are [batch, heads, D', e + normalize], their last column under
/// normalize being z = Σ φ(k). Same shapes, options and errors as xattn::linear_attention_backward
/// (a custom map is rejected: it has no derivative to take).
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void linear_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                               const linear_backward_options& opt = {}) {
  static_assert(std::is_same_v<scalar_of<Q>, double>,
                "xattn::reference::linear_attention_backward reads double tensors (cast with .cast<double>())");
  detail::linear_attention_backward<double>(xattn::detail::make_linear_backward_problem(
      "xattn::reference::linear_attention_backward", q, k, v, dout, dq, dk, dv, opt));
}

}  // namespace xattn::reference
