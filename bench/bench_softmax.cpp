// bench/bench_softmax.cpp — exact softmax attention: xattn against the fp64 reference (naive) and
// against what a user would write with Eigen (eigen), in the same run.
//
//   softmax/<impl>/N:<N>/D:<D>/H:8/causal:<0|1>/threads:<t>      B = 1, Nq = Nk = N, bshd layout
//   softmax_decode/<impl>/K:<K>/threads:<t>                      one query token against a K-long cache
//   softmax_backward/xattn/N:<N>/D:<D>/H:8/causal:<0|1>/threads:<t>  the backward pass at the forward's
//                                                                shape; FLOPs 2.5× the forward's
//   .../bias:1             with a [1, 1, N, N] bias and ALiBi slopes in the options (FLOPs as above)
//   .../bias:1/score_grads:1  and their gradients asked for; FLOPs 3.5× the forward's (S and dP
//                          recomputed once more per tile)
//   .../dtype:<bf16|f16>   xattn with q, k, v (decode: the K/V cache; its queries stay float) in
//                          Eigen::bfloat16 or Eigen::half, out float, at the headline shapes
//
// impl
//   naive  xattn::reference::softmax_attention: fp64, one thread, an fp64 Nq×Nk score matrix per
//          head. It runs at a few GFLOPS, so it is kept to N <= 2048 (its buffer stays far below
//          2 GiB there) and to threads:1.
//   eigen  softmax: per (batch, head): Eigen::Map'd matrices, S = scale·Q·Kᵀ with Eigen's float GEMM into an
//          N×N buffer, an explicit row softmax (causal rows only over their visible keys, the rest
//          zeroed), then O = P·V with a second GEMM. Eigen's GEMM is single-threaded without
//          OpenMP, so threads:2 spreads the heads over the pool, one N×N buffer per thread; run
//          only where those buffers stay under 2 GiB (so not N = 16384 at 2 threads).
//          decode: per K/V head, its 4 query heads against the cache in two GEMMs (bm_decode_eigen).
//   xattn  xattn::softmax_attention / softmax_decode, device overload.
#include "bench_common.hpp"

#include <Eigen/Dense>
#include <cmath>
#include <span>
#include <string>

#include <xattn/reference.hpp>
#include <xattn/softmax.hpp>
#include <xattn/softmax_backward.hpp>

namespace xattn_bench {
namespace {

constexpr Eigen::Index kBatch = 1, kHeads = 8;
constexpr double kMaxBufferBytes = 2.0 * (1u << 30);  // naive/eigen score buffers must stay under 2 GiB
constexpr Eigen::Index kNaiveMaxN = 2048;             // naive beyond this takes minutes per call

struct shape {
  Eigen::Index n, d;
  bool causal;
  int threads;
};

// FLOPs of softmax attention, counted over visible (query, key) pairs only:
//   flops = 4 · B · H · d · Σ_i visible(i)    (2·d for a score q_i·k_j, 2·d for adding p_ij·v_j)
//   Σ_i visible(i) = Nq·Nk dense, N(N+1)/2 causal with Nq = Nk.
// Exp, max and sum are not counted. Implementations that compute masked scores anyway (naive,
// eigen's full Q·Kᵀ) get no credit for them.
double softmax_flops(const shape& s) {
  const double visible = s.causal ? double(s.n) * double(s.n + 1) / 2 : double(s.n) * double(s.n);
  return 4.0 * kBatch * kHeads * double(s.d) * visible;
}

std::vector<tensor4*> softmax_tensors(const shape& s) {
  const dims4 dims{kBatch, s.n, kHeads, s.d};
  return cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}});
}

template <class Body>
void run_softmax(benchmark::State& st, const shape& s, const Body& body, bool warm_up = true) {
  run_flops(st, s.threads, softmax_flops(s), double(kBatch * s.n), body, warm_up);
}

void bm_naive(benchmark::State& st, shape s) {
  auto ts = softmax_tensors(s);
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2];
  tensor4& out = *ts[3];
  const xattn::softmax_options opt{.causal = s.causal};
  run_softmax(st, s, [&] { xattn::reference::softmax_attention(q, k, v, out, opt); }, false);
}

/// xattn with q, k, v in storage S; bfloat16 runs on AMX or AVX512-BF16 where the CPU has it (path_of).
template <storage S>
void bm_xattn(benchmark::State& st, shape s) {
  const auto [q, k, v, out] = prefill_tensors_of<S>({kBatch, s.n, kHeads, s.d});
  const auto& dev = device(s.threads);
  const xattn::softmax_options opt{.causal = s.causal};
  auto lead = [&](const tensor4_of<S>& t) { return leading_tokens(t, kWarmUpTokens); };
  auto out_lead = leading_tokens(out, kWarmUpTokens);
  const auto path = path_of(S, true);
  label_path(st, S, path);
  run_flops_after(
      st, s.threads, softmax_flops(s), double(kBatch * s.n), [&] { xattn::softmax_attention(dev, q, k, v, out, opt); },
      [&] { xattn::softmax_attention(dev, lead(q), lead(k), lead(v), out_lead, opt); }, path);
}

/// The backward pass (xattn::softmax_attention_backward) at the forward's shape: out and lse from
/// one untimed forward call, dout random. FLOPs: 2.5× the forward's (FlashAttention-2's count for
/// a backward that recomputes P: QKᵀ again, dP = dO·Vᵀ, dV, dK and dQ, five products against two).
/// bias: with an additive bias [1, 1, N, N] and ALiBi slopes in the options; score_grads: and their
/// gradients asked for (2 more tile products per visited tile: 3.5× the forward's FLOPs).
void bm_backward(benchmark::State& st, shape s, bool warm_up, bool bias = false, bool score_grads = false) {
  const dims4 dims{kBatch, s.n, kHeads, s.d}, square{1, 1, s.n, s.n};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}, {"dout", dims}, {"dq", dims},
                            {"dk", dims}, {"dv", dims}});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2], &dout = *ts[4];
  tensor4 &out = *ts[3], &dq = *ts[5], &dk = *ts[6], &dv = *ts[7];
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(kBatch, kHeads, s.n);
  const auto& dev = device(s.threads);
  xattn::softmax_options opt{.causal = s.causal};
  xattn::softmax_grads grads;
  std::vector<float> slopes(kHeads), dslopes(kHeads);
  if (bias) {
    auto sq = cached_tensors({{"bias", square}, {"dbias", square}});
    for (Eigen::Index h = 0; h < kHeads; ++h) slopes[h] = std::exp2(-8.0f * float(h + 1) / float(kHeads));
    opt.bias = *sq[0], opt.alibi_slopes = slopes;
    if (score_grads) grads.bias = *sq[1], grads.alibi_slopes = dslopes;
  }
  xattn::softmax_attention(dev, q, k, v, out, lse, opt);  // also touches out and lse
  run_flops(st, s.threads, (score_grads ? 3.5 : 2.5) * softmax_flops(s), double(kBatch * s.n),
            [&] { xattn::softmax_attention_backward(dev, q, k, v, out, lse, dout, dq, dk, dv, opt, grads); }, warm_up);
}
void bm_backward_warm(benchmark::State& st, shape s) { bm_backward(st, s, true); }
void bm_backward_bias(benchmark::State& st, shape s) { bm_backward(st, s, true, true); }
void bm_backward_score_grads(benchmark::State& st, shape s) { bm_backward(st, s, true, true, true); }
/// Once, with no warm-up call: causal at N = 32768 takes tens of seconds.
void bm_backward_once(benchmark::State& st, shape s) { bm_backward(st, s, false); }

// --- the Eigen baseline ------------------------------------------------------------------------

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_head = Eigen::Map<const row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using head = Eigen::Map<row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

/// One (batch, head): rows of q, k, v, o are `stride` floats apart (bshd: heads · d); s is N×N.
void eigen_attention_head(const float* q, const float* k, const float* v, float* o, Eigen::Index n,
                          Eigen::Index d, Eigen::Index stride, bool causal, float* s) {
  const const_head Q(q, n, d, Eigen::OuterStride<>(stride));
  const const_head K(k, n, d, Eigen::OuterStride<>(stride));
  const const_head V(v, n, d, Eigen::OuterStride<>(stride));
  head O(o, n, d, Eigen::OuterStride<>(stride));
  Eigen::Map<row_matrix> S(s, n, n);
  const float scale = 1.0f / std::sqrt(float(d));

  S.noalias() = scale * (Q * K.transpose());  // the scale folds into the GEMM's alpha
  for (Eigen::Index i = 0; i < n; ++i) {
    const Eigen::Index visible = causal ? i + 1 : n;  // causal: keys 0..i
    Eigen::Map<Eigen::ArrayXf> p(s + i * n, visible);
    p = (p - p.maxCoeff()).exp();  // p_j = exp(s_j − max)
    p /= p.sum();
    if (causal) S.row(i).tail(n - visible).setZero();
  }
  O.noalias() = S * V;
}

void bm_eigen(benchmark::State& st, shape s) {
  auto ts = softmax_tensors(s);
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2];
  tensor4& out = *ts[3];
  const auto nn = static_cast<std::size_t>(s.n * s.n);
  for (int w = 0; w < s.threads; ++w) scratch(w, nn);  // one N×N score buffer per thread, touched
  const Eigen::Index stride = kHeads * s.d, batch_stride = s.n * stride;
  run_softmax(st, s, [&] {
    parallel_for(s.threads, kBatch * kHeads, [&](Eigen::Index item, int worker) {
      const Eigen::Index off = (item / kHeads) * batch_stride + (item % kHeads) * s.d;
      eigen_attention_head(q.data() + off, k.data() + off, v.data() + off, out.data() + off, s.n, s.d, stride,
                           s.causal, scratch(worker, nn));
    });
  });
}

// --- decode ------------------------------------------------------------------------------------
// One new query token, 32 query heads over 8 K/V heads (GQA 4), d = 128, B = 1, the cache exactly
// K keys long. Decode is bandwidth-bound: each byte of K and V is read once per step, so the
// figure of merit is GB/s of K/V read (2·K·8·128·sizeof(element) bytes: half of fp32's for a
// bfloat16 or half cache, which xattn reads in place) against peak/bandwidth. At K = 4096 the
// 32 MiB of fp32 K/V can partly stay in the last-level cache between iterations, so pct_bw may
// pass 100.

constexpr Eigen::Index kDecodeQHeads = 32, kDecodeKvHeads = 8, kDecodeDim = 128;
constexpr Eigen::Index kNaiveMaxK = 4096;

struct decode_shape {
  Eigen::Index k;
  int threads;
};

template <storage S = storage::f32>
double decode_bytes(const decode_shape& s) {
  return 2.0 * double(s.k * kDecodeKvHeads * kDecodeDim) * sizeof(scalar_of<S>);
}

/// The K/V cache (storage S) and the float queries and out of a decode step.
template <storage S>
struct decode_tensors {
  const tensor4& q;
  const tensor4_of<S>& k;
  const tensor4_of<S>& v;
  tensor4& out;
};

template <storage S>
decode_tensors<S> decode_tensors_of(const decode_shape& s) {
  const dims4 qdims{kBatch, 1, kDecodeQHeads, kDecodeDim}, kvdims{kBatch, s.k, kDecodeKvHeads, kDecodeDim};
  if constexpr (S == storage::f32) {
    auto ts = cached_tensors({{"q", qdims}, {"k_cache", kvdims}, {"v_cache", kvdims}, {"out", qdims}});
    return {*ts[0], *ts[1], *ts[2], *ts[3]};
  } else {
    auto kv = cached_tensors_as<S>({{"k_cache", kvdims}, {"v_cache", kvdims}});
    auto ts = cached_tensors({{"q", qdims}, {"out", qdims}});
    return {*ts[0], *kv[0], *kv[1], *ts[1]};
  }
}

template <bool Naive, storage S = storage::f32>
void bm_decode(benchmark::State& st, decode_shape s) {
  const auto [q, k, v, out] = decode_tensors_of<S>(s);
  const std::array<int, kBatch> lengths{static_cast<int>(s.k)};
  const auto& dev = device(s.threads);
  label_path(st, S, xattn::product_path::fp32);  // decode: always the fp32 path, 16-bit rows widened as loaded
  bandwidth_peak(s.threads);
  const auto step = [&] {
    if constexpr (Naive)
      xattn::reference::softmax_attention(q, k, v, out, {.seqlens_k = lengths});
    else
      xattn::softmax_decode(dev, q, k, v, out, std::span<const int>(lengths));
  };
  if (!Naive) step();  // untimed: the workspaces grow and the pool's threads wake here
  wall_timer t;
  for (auto _ : st) {
    step();
    benchmark::ClobberMemory();
  }
  report_bandwidth(st, t.seconds(), decode_bytes<S>(s), s.threads);
}

/// The Eigen baseline of a decode step: per K/V head g, its kGroup query heads as one matrix,
/// S = scale·Q_g·K_gᵀ (kGroup × K, one GEMM), a row softmax, O_g = P·V_g (a second GEMM); the
/// K/V heads spread over the pool, one kGroup × K score buffer per thread.
constexpr Eigen::Index kDecodeGroup = kDecodeQHeads / kDecodeKvHeads;

void bm_decode_eigen(benchmark::State& st, decode_shape s) {
  const dims4 qdims{kBatch, 1, kDecodeQHeads, kDecodeDim}, kvdims{kBatch, s.k, kDecodeKvHeads, kDecodeDim};
  auto ts = cached_tensors({{"q", qdims}, {"k_cache", kvdims}, {"v_cache", kvdims}, {"out", qdims}});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2];
  tensor4& out = *ts[3];
  const auto scores = static_cast<std::size_t>(kDecodeGroup * s.k);
  for (int w = 0; w < s.threads; ++w) scratch(w, scores);  // touched before timing
  const Eigen::Index kv_stride = kDecodeKvHeads * kDecodeDim;  // bshd: one cached token's row
  const float scale = 1.0f / std::sqrt(float(kDecodeDim));
  bandwidth_peak(s.threads);
  const auto step = [&] {
    parallel_for(s.threads, kDecodeKvHeads, [&](Eigen::Index g, int worker) {
      const Eigen::Map<const row_matrix> Q(q.data() + g * kDecodeGroup * kDecodeDim, kDecodeGroup, kDecodeDim);
      const const_head K(k.data() + g * kDecodeDim, s.k, kDecodeDim, Eigen::OuterStride<>(kv_stride));
      const const_head V(v.data() + g * kDecodeDim, s.k, kDecodeDim, Eigen::OuterStride<>(kv_stride));
      Eigen::Map<row_matrix> O(out.data() + g * kDecodeGroup * kDecodeDim, kDecodeGroup, kDecodeDim);
      Eigen::Map<row_matrix> S(scratch(worker, scores), kDecodeGroup, s.k);
      S.noalias() = scale * (Q * K.transpose());
      for (Eigen::Index i = 0; i < kDecodeGroup; ++i) {
        Eigen::Map<Eigen::ArrayXf> p(S.row(i).data(), s.k);  // row-major: a row is contiguous
        p = (p - p.maxCoeff()).exp();  // p_j = exp(s_j − max)
        p /= p.sum();
      }
      O.noalias() = S * V;
    });
  };
  step();  // untimed, as xattn's
  wall_timer t;
  for (auto _ : st) {
    step();
    benchmark::ClobberMemory();
  }
  report_bandwidth(st, t.seconds(), decode_bytes(s), s.threads);
}

// --- registration ------------------------------------------------------------------------------

std::string softmax_name(const char* impl, const shape& s) {
  return std::string("softmax/") + impl + "/N:" + std::to_string(s.n) + "/D:" + std::to_string(s.d) +
         "/H:" + std::to_string(kHeads) + "/causal:" + std::to_string(int(s.causal)) +
         "/threads:" + std::to_string(s.threads);
}

std::string softmax_backward_name(const char* impl, const shape& s) {
  return "softmax_backward" + softmax_name(impl, s).substr(std::string("softmax").size());
}

/// compared: a row the full suite's comparisons use, timed over at least kComparedMinTime.
benchmark::internal::Benchmark* add(const std::string& name, auto fn, auto arg, bool compared = false) {
  auto* row = benchmark::RegisterBenchmark(name.c_str(), fn, arg)->UseRealTime()->Unit(benchmark::kMillisecond);
  if (compared) row->MinTime(kComparedMinTime);
  return row;
}

// The headline shapes: dense and causal softmax at N = 4096, D = 128 (the causal row is the
// sweep's point at that N), decode over a 32k cache. The naive reference runs at about half a
// GFLOPS (8 s per dense call at N = 1024), so it runs once at N = 512, beside xattn at N = 512 on
// the table's threads for the ratio; naive decode runs at the headline shape.
constexpr Eigen::Index kTableN = 4096, kTableDim = 128, kNaiveTableN = 512, kTableCacheK = 32768;

/// The 16-bit rows of one shape, after its fp32 rows (which built the float tensors they round).
benchmark::internal::Benchmark* add16(storage st, const shape& s) {
  const auto fn = st == storage::bf16 ? bm_xattn<storage::bf16> : bm_xattn<storage::f16>;
  return add(softmax_name("xattn", s) + dtype_suffix(st), fn, s);
}

std::string decode_name(const char* impl, Eigen::Index k, int threads, storage st = storage::f32) {
  return std::string("softmax_decode/") + impl + "/K:" + std::to_string(k) + "/threads:" + std::to_string(threads) +
         dtype_suffix(st);
}

benchmark::internal::Benchmark* add_decode16(storage st, const decode_shape& s) {
  const auto fn = st == storage::bf16 ? bm_decode<false, storage::bf16> : bm_decode<false, storage::f16>;
  return add(decode_name("xattn", s.k, s.threads, st), fn, s);
}

// Decode's 16-bit caches at both cache lengths; fp32 at K = 4096 too, for their ratio.
constexpr Eigen::Index kDecodeCacheKs[] = {4096, 32768};

void register_softmax_table() {
  const shape dense{kTableN, kTableDim, false, kTableThreads};
  add(softmax_name("xattn", dense), bm_xattn<storage::f32>, dense)->MinTime(kTableMinTime);
  for (storage st : kStorages16) add16(st, dense)->MinTime(kTableMinTime);
  for (bool causal : {false, true}) {
    const shape s{kTableN, kTableDim, causal, kTableThreads};
    add(softmax_name("eigen", s), bm_eigen, s)->MinTime(kTableMinTime);
    const shape naive{kNaiveTableN, kTableDim, causal, 1}, small{kNaiveTableN, kTableDim, causal, kTableThreads};
    add(softmax_name("naive", naive), bm_naive, naive)->Iterations(1);
    add(softmax_name("xattn", small), bm_xattn<storage::f32>, small)->MinTime(kSweepMinTime);
  }
  for (bool causal : {false, true}) {
    const shape s{kTableN, kTableDim, causal, kTableThreads};
    add(softmax_backward_name("xattn", s), bm_backward_warm, s)->MinTime(kTableMinTime);
  }
  const shape causal{kTableN, kTableDim, true, kTableThreads};
  add(softmax_backward_name("xattn", causal) + "/bias:1", bm_backward_bias, causal);
  add(softmax_backward_name("xattn", causal) + "/bias:1/score_grads:1", bm_backward_score_grads, causal);
  const decode_shape decode{kTableCacheK, kTableThreads}, decode_naive{kTableCacheK, 1};
  add(decode_name("xattn", kTableCacheK, kTableThreads), bm_decode<false>, decode)->MinTime(kTableMinTime);
  add(decode_name("naive", kTableCacheK, 1), bm_decode<true>, decode_naive)->Iterations(1);
  add(decode_name("eigen", kTableCacheK, kTableThreads), bm_decode_eigen, decode)->MinTime(kTableMinTime);
  for (Eigen::Index k : kDecodeCacheKs) {
    const decode_shape s{k, kTableThreads};
    if (k != kTableCacheK) add(decode_name("xattn", k, kTableThreads), bm_decode<false>, s)->MinTime(kTableMinTime);
    for (storage st : kStorages16) add_decode16(st, s)->MinTime(kTableMinTime);
  }
}

// The sweep: causal softmax up to N = 32768. Its cost grows as N² (softmax_flops: 2.2 TFLOP at
// N = 32768, 7–20 s per call on two shared cores here); N = 65536 would take four times that, most
// of the default run's three minutes.
constexpr Eigen::Index kSweepSoftmaxMaxN = 32768;

void sweep_softmax(Eigen::Index n) {
  if (n > kSweepSoftmaxMaxN) return;
  const shape s{n, kTableDim, true, kSweepThreads};
  add(softmax_name("xattn", s), bm_xattn<storage::f32>, s)->MinTime(n == kTableN ? kTableMinTime : kSweepMinTime);
  if (n == kTableN)  // the causal headline shape is a sweep point: its 16-bit rows follow it here
    for (storage st : kStorages16) add16(st, s)->MinTime(kTableMinTime);
  // a training step's other half at the longest point, beside lightning's (bench_lightning_backward.cpp)
  if (n == kSweepSoftmaxMaxN) add(softmax_backward_name("xattn", s), bm_backward_once, s)->Iterations(1);
}

// Shape by shape, so that each shape's tensors are built once and shared by the three impls.
void register_softmax(suite which) {
  if (which == suite::headline) return register_softmax_table();
  for (Eigen::Index d : {64, 128})
    for (Eigen::Index n : {512, 1024, 2048, 4096, 8192, 16384})
      for (bool causal : {false, true})
        for (int threads = 1; threads <= kMaxThreads; ++threads) {
          const shape s{n, d, causal, threads};
          const double score_bytes = double(n) * double(n);
          if (threads == 1 && n <= kNaiveMaxN && score_bytes * sizeof(double) < kMaxBufferBytes)
            add(softmax_name("naive", s), bm_naive, s);
          const bool compared = n == 4096 || n == 16384;  // the headline shape; sparse's comparison
          if (threads * score_bytes * sizeof(float) < kMaxBufferBytes) add(softmax_name("eigen", s), bm_eigen, s, compared);
          add(softmax_name("xattn", s), bm_xattn<storage::f32>, s, compared);
          if (n <= 8192) add(softmax_backward_name("xattn", s), bm_backward_warm, s);
          if (n == kTableN && d == kTableDim)  // the headline shape, also in 16-bit storage
            for (storage st : kStorages16) add16(st, s)->MinTime(kComparedMinTime);
        }
  for (Eigen::Index k : {4096, 32768})
    for (int threads = 1; threads <= kMaxThreads; ++threads) {
      const decode_shape s{k, threads};
      const std::string tail = "/K:" + std::to_string(k) + "/threads:" + std::to_string(threads);
      if (threads == 1 && k <= kNaiveMaxK) add("softmax_decode/naive" + tail, bm_decode<true>, s);
      add("softmax_decode/eigen" + tail, bm_decode_eigen, s, true);
      add("softmax_decode/xattn" + tail, bm_decode<false>, s, true);
      for (storage st : kStorages16) add_decode16(st, s)->MinTime(kComparedMinTime);
    }
}

const registrar softmax_after_peaks{10, &register_softmax};
const sweep_registrar softmax_sweep_first{10, &sweep_softmax};

}  // namespace
}  // namespace xattn_bench
