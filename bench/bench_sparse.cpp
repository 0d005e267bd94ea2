// bench/bench_sparse.cpp — block-sparse attention over BigBird layouts of a given density, and the
// content-based top-k builder with the attention it feeds.
//
//   sparse/<impl>/N:<N>/density:<pct>/D:128/H:8/threads:<t>        B = 1, Nq = Nk = N, blocks of 64,
//        a shared BigBird layout (window 1, 1 global block, random blocks to reach the density)
//   sparse_topk/xattn/N:<N>/density:<pct>/D:128/H:8/threads:<t>     sparse_attention over the layout of
//        block_layout::top_k (keep = density × blocks per row, per head); counters build_ms (the
//        builder alone, best of 3, one thread) and build_pct (builder / attention call, in %)
//
//   sparse_streaming/xattn/N:<N>/sinks:64/window:1024/D:128/H:8/threads:<t>   the headline suite's
//        sweep: block_layout::streaming, one sink block and the 16 blocks up to the diagonal
//        (StreamingLLM), so every query sees about 1088 keys whatever N
//   sparse/xattn/N:16384/density:10/D:128/H:8/threads:<t>/dtype:<bf16|f16>   the headline shape with
//        q, k, v in Eigen::bfloat16 or Eigen::half (out float)
//   sparse_backward/xattn/N:<N>/density:<5|10|25>/D:128/H:8/threads:<t>   sparse_attention_backward
//        over the same layout (out and lse from one untimed forward); FLOPs 2.5× the forward's
//
// impl: naive = xattn::reference::sparse_attention (fp64, a dense N×N mask; N = 2048, threads:1);
// xattn = xattn::sparse_attention. sparse/xattn at density 10, N = 16384 reads against
// softmax/xattn/N:16384/D:128/H:8/causal:0 (the dense call over the same tokens), and build_pct of
// sparse_topk/xattn says what choosing the blocks costs beside the attention it feeds.
#include "bench_common.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include <xattn/reference.hpp>
#include <xattn/softmax_backward.hpp>
#include <xattn/sparse.hpp>

namespace xattn_bench {
namespace {

constexpr Eigen::Index kBatch = 1, kHeads = 8, kDim = 128, kBlock = 64;

struct shape {
  Eigen::Index n;
  int density;  // percent
  int threads;
};

xattn::block_layout bigbird_of(const shape& s) {
  const Eigen::Index blocks = s.n / kBlock;
  const Eigen::Index per_row = std::max<Eigen::Index>(4, std::llround(blocks * s.density / 100.0));
  return xattn::block_layout::bigbird(s.n, s.n, kBlock, {.random_blocks = per_row - 4, .seed = 1});
}

// FLOPs over visited (query, key) pairs only: 4·B·d·Σ_h Σ_rows |row|·64·64 (N a multiple of 64).
double sparse_flops(const xattn::block_layout& l) {
  const double per_head = l.heads() == 1 ? double(kHeads) : 1.0;
  return 4.0 * kBatch * kDim * per_head * double(l.nnz()) * double(kBlock * kBlock);
}

std::vector<tensor4*> tensors(const shape& s) {
  const dims4 dims{kBatch, s.n, kHeads, kDim};
  return cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}});
}

template <bool Naive, storage S = storage::f32>
void bm_sparse(benchmark::State& st, shape s) {
  const auto [q, k, v, out] = prefill_tensors_of<S>({kBatch, s.n, kHeads, kDim});
  const xattn::block_layout layout = bigbird_of(s);
  const auto& dev = device(s.threads);
  const auto path = path_of(S, true);
  label_path(st, S, path);
  run_flops(st, s.threads, sparse_flops(layout), double(kBatch * s.n), [&] {
    if constexpr (Naive) xattn::reference::sparse_attention(q, k, v, out, layout);
    else xattn::sparse_attention(dev, q, k, v, out, layout);
  }, !Naive, path);
  st.counters["density"] = layout.density();
}

/// The backward (xattn::sparse_attention_backward) over the layout of bm_sparse. FLOPs: 2.5× the
/// forward's over the same visited blocks (FlashAttention-2's count for a backward that recomputes
/// P: QKᵀ again, dP = dO·Vᵀ, dV, dK and dQ, five products against two).
void bm_sparse_backward(benchmark::State& st, shape s) {
  const dims4 dims{kBatch, s.n, kHeads, kDim};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}, {"dout", dims}, {"dq", dims},
                            {"dk", dims}, {"dv", dims}});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2], &dout = *ts[4];
  tensor4 &out = *ts[3], &dq = *ts[5], &dk = *ts[6], &dv = *ts[7];
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(kBatch, kHeads, s.n);
  const xattn::block_layout layout = bigbird_of(s);
  const auto& dev = device(s.threads);
  xattn::sparse_attention(dev, q, k, v, out, lse, layout);  // also touches out and lse
  run_flops(st, s.threads, 2.5 * sparse_flops(layout), double(kBatch * s.n),
            [&] { xattn::sparse_attention_backward(dev, q, k, v, out, lse, dout, dq, dk, dv, layout); });
  st.counters["density"] = layout.density();
}

xattn::top_k_options top_k_of(const shape& s) {
  return {.keep = std::max<Eigen::Index>(1, std::llround(s.n / kBlock * s.density / 100.0))};
}

void bm_top_k_attention(benchmark::State& st, shape s) {
  auto ts = tensors(s);
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2];
  tensor4& out = *ts[3];
  // The builder, timed before the loop (best of 3): what selecting the blocks costs.
  double build_s = 1e30;
  xattn::block_layout layout;
  for (int rep = 0; rep < 3; ++rep) {
    wall_timer bt;
    layout = xattn::block_layout::top_k(q, k, top_k_of(s));
    build_s = std::min(build_s, bt.seconds());
  }
  const auto& dev = device(s.threads);
  const double call_s = run_flops(st, s.threads, sparse_flops(layout), double(kBatch * s.n),
                                  [&] { xattn::sparse_attention(dev, q, k, v, out, layout); });
  st.counters["density"] = layout.density();
  st.counters["build_ms"] = 1e3 * build_s;
  st.counters["build_pct"] = 100.0 * build_s / call_s;  // builder time / attention call time
}

std::string name(const std::string& family, const char* impl, const shape& s) {
  return family + "/" + impl + "/N:" + std::to_string(s.n) + "/density:" + std::to_string(s.density) +
         "/D:" + std::to_string(kDim) + "/H:" + std::to_string(kHeads) + "/threads:" + std::to_string(s.threads);
}

benchmark::internal::Benchmark* add(const std::string& n, auto fn, shape s) {
  auto* row = benchmark::RegisterBenchmark(n.c_str(), fn, s)->UseRealTime()->Unit(benchmark::kMillisecond);
  if (s.n == 16384) row->MinTime(kComparedMinTime);  // compared with dense softmax at N = 16384
  return row;
}

/// sparse/xattn in 16-bit storage `st`, registered after the fp32 row of its shape.
benchmark::internal::Benchmark* add16(storage st, shape s) {
  auto fn = st == storage::bf16 ? bm_sparse<false, storage::bf16> : bm_sparse<false, storage::f16>;
  return add(name("sparse", "xattn", s) + dtype_suffix(st), fn, s);
}

// --- the headline suite ----------------------------------------------------------------------------
// The table's row: BigBird at density 10 %, N = 16384. The naive reference uses a dense N×N mask
// (seconds per call at N = 1024), so it runs once at N = 1024 (16 blocks a row; BigBird's window and
// global block make that 4 of them), beside xattn at that shape on the table's threads for the
// ratio. The sweep: the streaming layout.

constexpr Eigen::Index kTableN = 16384, kNaiveTableN = 1024, kSinkBlocks = 1, kWindowBlocks = 16;
constexpr int kTableDensity = 10;

struct streaming_shape {
  Eigen::Index n;
  int threads;
};

void bm_streaming(benchmark::State& st, streaming_shape s) {
  auto ts = tensors({s.n, 0, s.threads});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2];
  tensor4& out = *ts[3];
  const auto layout = xattn::block_layout::streaming(s.n, s.n, kBlock, kSinkBlocks, kWindowBlocks);
  const auto& dev = device(s.threads);
  run_flops(st, s.threads, sparse_flops(layout), double(kBatch * s.n),
            [&] { xattn::sparse_attention(dev, q, k, v, out, layout); });
  st.counters["density"] = layout.density();
}

void sweep_sparse(Eigen::Index n) {
  const std::string row = "sparse_streaming/xattn/N:" + std::to_string(n) + "/sinks:" +
                          std::to_string(kSinkBlocks * kBlock) + "/window:" + std::to_string(kWindowBlocks * kBlock) +
                          "/D:" + std::to_string(kDim) + "/H:" + std::to_string(kHeads) +
                          "/threads:" + std::to_string(kSweepThreads);
  benchmark::RegisterBenchmark(row.c_str(), bm_streaming, streaming_shape{n, kSweepThreads})
      ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kSweepMinTime);
}

void register_sparse_table() {
  const shape table{kTableN, kTableDensity, kTableThreads}, naive{kNaiveTableN, kTableDensity, 1},
      small{kNaiveTableN, kTableDensity, kTableThreads};
  benchmark::RegisterBenchmark(name("sparse", "xattn", table).c_str(), bm_sparse<false>, table)
      ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kTableMinTime);
  for (storage st : kStorages16) add16(st, table)->MinTime(kTableMinTime);
  benchmark::RegisterBenchmark(name("sparse", "naive", naive).c_str(), bm_sparse<true>, naive)
      ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
  benchmark::RegisterBenchmark(name("sparse", "xattn", small).c_str(), bm_sparse<false>, small)
      ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kSweepMinTime);
  benchmark::RegisterBenchmark(name("sparse_backward", "xattn", table).c_str(), bm_sparse_backward, table)
      ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kTableMinTime);
}

void register_sparse(suite which) {
  if (which == suite::headline) return register_sparse_table();
  benchmark::RegisterBenchmark(name("sparse", "naive", {2048, 10, 1}).c_str(), bm_sparse<true>, shape{2048, 10, 1})
      ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
  add(name("sparse", "xattn", {2048, 10, 1}), bm_sparse<false>, {2048, 10, 1});
  for (int density : {5, 10, 25, 50})
    for (int threads = 1; threads <= kMaxThreads; ++threads) {
      add(name("sparse", "xattn", {16384, density, threads}), bm_sparse<false>, {16384, density, threads});
      if (density == kTableDensity)
        for (storage st : kStorages16) add16(st, {16384, density, threads});
    }
  for (int threads = 1; threads <= kMaxThreads; ++threads) {
    add(name("sparse_topk", "xattn", {16384, 10, threads}), bm_top_k_attention, {16384, 10, threads});
    add(name("sparse_backward", "xattn", {16384, 10, threads}), bm_sparse_backward, {16384, 10, threads});
  }
  // time against visited blocks (the density counter): the backward at a half and 2.5× the blocks
  for (int density : {5, 25})
    add(name("sparse_backward", "xattn", {16384, density, kMaxThreads}), bm_sparse_backward, {16384, density, kMaxThreads});
}

const registrar sparse_after_softmax{30, &register_sparse};
const sweep_registrar sparse_sweep_after_sliding_window{30, &sweep_sparse};

}  // namespace
}  // namespace xattn_bench
