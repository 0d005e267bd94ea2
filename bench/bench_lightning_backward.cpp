// bench/bench_lightning_backward.cpp — the backward passes of lightning and linear attention.
//
//   lightning_backward/xattn/N:<N>/D:128/H:8/threads:<t>   B = 1, decay = lightning_slopes(H), bshd;
//                                                          dq, dk, dv from dout (no state gradients)
//   lightning_backward/xattn/N:<N>/D:128/H:8/ddecay:1/threads:<t>   the same with ddecay written
//   linear_backward/xattn/N:<N>/D:128/H:8/causal:1/threads:<t>   the linear forward row's call (elu+1,
//                                                          normalised): the identity-map backward on
//                                                          φ(q), φ(k), [v, 1] after one forward pass
//
// The headline suite times N = 16384 and 32768 on every core (32768 for the training step beside
// causal softmax's forward and backward, bench/main.cpp); the full suite (--xattn_full) N = 2048 … 131072
// on 1 and 2 threads, where tokens_per_s should stay constant in N (the work per chunk does not
// depend on the position).
#include "bench_common.hpp"

#include <string>
#include <vector>

#include <xattn/lightning.hpp>
#include <xattn/lightning_backward.hpp>
#include <xattn/linear_backward.hpp>

namespace xattn_bench {
namespace {

constexpr Eigen::Index kBatch = 1, kDim = 128, kHeads = 8;

struct shape {
  Eigen::Index n;
  int threads;
  bool linear = false;  // linear attention, elu+1 with the normaliser, causal; else lightning
  bool ddecay = false;  // lightning with the decays' gradient
};

// FLOPs, per (batch, query head), of what the backward performs (core/chunk_backward.hpp; the decay
// mask, the row scalings, the transposes and the state combinations are not counted). Per chunk of
// nb tokens, a product on the causal triangle counts nb(nb+1)/2 pairs × 2 FLOPs per multiply-add:
//   pass 1:  M = dO·Vᵀ           nb(nb+1)·e         dQ += M·K          nb(nb+1)·d
//            dO·Sᵀ               2·nb·d·e           Sᵀ update Vᵀ·K     2·nb·d·e
//   pass 2:  A = Q·Kᵀ            nb(nb+1)·d         M = dO·Vᵀ          nb(nb+1)·e
//            dK += Mᵀ·Q          nb(nb+1)·d         dV += Aᵀ·dO        nb(nb+1)·e
//            V·dSᵀ, K·dS, Qᵀ·dO  3 · 2·nb·d·e
// Σ_chunks [ 3·nb(nb+1)·(d + e) + 10·nb·d·e ]: 2.5× the forward's state work (4·nb·d·e) and 3× its
// triangle (nb(nb+1)·(d + e)).
// With ddecay, pass 1 adds Q·Kᵀ on the triangle (nb(nb+1)·d), dO·Rᵀ and Rᵀ's update Vᵀ·K (2 · 2·nb·d·e).
// The linear row runs this backward with e + 1 value columns ([v, 1]), after the forward of the same
// problem (Σ_chunks [ nb(nb+1)·(d + e + 1) + 4·nb·d·(e + 1) ], bench_linear.cpp's count); the maps'
// derivatives are not counted.
double backward_flops(const shape& s) {
  const double d = kDim, e = kDim + (s.linear ? 1 : 0);
  double per_head = 0;
  for (Eigen::Index t0 = 0; t0 < s.n; t0 += xattn::default_chunk_size) {
    const double nb = double(std::min<Eigen::Index>(xattn::default_chunk_size, s.n - t0));
    per_head += 3 * nb * (nb + 1) * (d + e) + 10 * nb * d * e;
    if (s.ddecay) per_head += nb * (nb + 1) * d + 4 * nb * d * e;
    if (s.linear) per_head += nb * (nb + 1) * (d + e) + 4 * nb * d * e;
  }
  return per_head * double(kBatch * kHeads);
}

std::string name_of(const shape& s) {
  return std::string(s.linear ? "linear" : "lightning") + "_backward/xattn/N:" + std::to_string(s.n) +
         "/D:" + std::to_string(kDim) + "/H:" + std::to_string(kHeads) + (s.linear ? "/causal:1" : "") +
         (s.ddecay ? "/ddecay:1" : "") + "/threads:" + std::to_string(s.threads);
}

void bm_backward(benchmark::State& st, shape s) {
  const dims4 dims{kBatch, s.n, kHeads, kDim};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"dout", dims}, {"dq", dims}, {"dk", dims},
                            {"dv", dims}});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2], &dout = *ts[3];
  tensor4 &dq = *ts[4], &dk = *ts[5], &dv = *ts[6];
  const std::vector<double> decay = xattn::lightning_slopes(kHeads);
  std::vector<double> ddecay(static_cast<std::size_t>(kHeads));
  xattn::lightning_backward_options opt{.forward = {.decay = decay}};
  if (s.ddecay) opt.ddecay = ddecay;
  const xattn::linear_backward_options lopt{
      .forward = {.causal = true, .feature_map = xattn::feature::elu_plus_one, .normalize = true}};
  const auto& dev = device(s.threads);
  run_flops(st, s.threads, backward_flops(s), double(kBatch * s.n), [&] {
    if (s.linear) xattn::linear_attention_backward(dev, q, k, v, dout, dq, dk, dv, lopt);
    else xattn::lightning_attention_backward(dev, q, k, v, dout, dq, dk, dv, opt);
  });
}

void add(const shape& s) {
  benchmark::RegisterBenchmark(name_of(s).c_str(), bm_backward, s)->UseRealTime()->Unit(benchmark::kMillisecond);
}

constexpr Eigen::Index kTableN = 16384, kTrainingN = 32768;

void register_lightning_backward(suite which) {
  if (which == suite::headline) {  // the table's N, and 32768 for the training step beside causal softmax's
    for (Eigen::Index n : {kTableN, kTrainingN}) add({n, kTableThreads});
    add({kTableN, kTableThreads, true});
    return;
  }
  for (Eigen::Index n = 2048; n <= 131072; n *= 2)
    for (int threads = 1; threads <= kMaxThreads; ++threads) add({n, threads});
  for (int threads = 1; threads <= kMaxThreads; ++threads) add({kTableN, threads, true});
  for (int threads = 1; threads <= kMaxThreads; ++threads) add({kTableN, threads, false, true});
}

const registrar lightning_backward_after_chunk{21, &register_lightning_backward};

}  // namespace
}  // namespace xattn_bench
