// bench/bench_linear.cpp — the chunk families: lightning attention and linear attention (causal and
// not), xattn against the fp64 reference (naive), in the same run; and causal softmax attention at
// the longest N of the comparison, where bench_softmax stops.
//
//   lightning/<impl>/N:<N>/D:128/H:<H>/threads:<t>            B = 1, decay = lightning_slopes(H)
//   linear/<impl>/N:<N>/D:128/H:8/causal:<0|1>/threads:<t>    elu+1 features with the normaliser
//                                                             (Katharopoulos et al.), B = 1
//   softmax/xattn/N:32768/D:128/H:8/causal:1/threads:<t>      the crossover point (as bench_softmax)
//   .../dtype:<bf16|f16>   xattn with q, k, v in Eigen::bfloat16 or Eigen::half (out float): lightning
//                          at every N of the sweep, causal linear at the headline N; the chunk
//                          engine converts them to float where it packs rows (the fp32 path)
//
// d = e = 128, bshd layout, scale 1, the default chunk size. N runs from 1024 to 131072; H = 2 and
// H = 1 at N = 65536 are the few-heads cases: two heads give each thread one; one head makes two
// threads split the chunks of its sequence (per-chunk states in parallel, a prefix pass, outputs).
//
// impl
//   naive  xattn::reference::{lightning,linear}_attention: fp64, one thread, the full N×N score
//          matrix of each head (512 MiB at N = 8192), so N <= 8192 and threads:1 only.
//   xattn  xattn::lightning_attention / linear_attention, device overload.
#include "bench_common.hpp"

#include <string>
#include <vector>

#include <xattn/lightning.hpp>
#include <xattn/linear.hpp>
#include <xattn/reference.hpp>
#include <xattn/softmax.hpp>

namespace xattn_bench {
namespace {

constexpr Eigen::Index kBatch = 1, kDim = 128;
constexpr Eigen::Index kNaiveMaxN = 8192;

enum class family { lightning, linear_causal, linear_noncausal };

struct shape {
  family f;
  Eigen::Index n, heads;
  int threads;
};

// FLOPs, per (batch, head), of what each algorithm performs (exp, the feature maps, the decay mask
// and the final division are not counted):
//   xattn, causal (lightning, causal linear): chunks of B = default_chunk_size tokens; a chunk of
//     nb tokens multiplies scores and values on its causal triangle only — nb(nb+1)/2 pairs ×
//     2(d + e) — and costs 2·nb·d·e for φ(Q)·S plus 2·nb·d·e for the state update φ(K)ᵀV:
//       Σ_chunks [ nb(nb+1)·(d + e) + 4·nb·d·e ]            (+ 4·N·d for the normaliser's φ(q)·z, Σφ(k))
//   xattn, non-causal linear: φ(K)ᵀV and φ(Q)·S, 4·N·d·e    (+ 4·N·d for the normaliser)
//   naive, causal: the N(N+1)/2 visible (t, j) pairs × 2(d + e)
//   naive, non-causal: the N² pairs × 2(d + e)
double chunk_flops(const shape& s, bool naive) {
  const double d = kDim, e = kDim, n = double(s.n);
  const bool causal = s.f != family::linear_noncausal, normalize = s.f != family::lightning;
  double per_head = 0;
  if (naive) {
    per_head = (causal ? n * (n + 1) : 2 * n * n) * (d + e);
  } else {
    for (Eigen::Index t0 = 0; causal && t0 < s.n; t0 += xattn::default_chunk_size) {
      const double nb = double(std::min<Eigen::Index>(xattn::default_chunk_size, s.n - t0));
      per_head += nb * (nb + 1) * (d + e);
    }
    per_head += 4 * n * d * e;
  }
  if (normalize) per_head += 4 * n * d;
  return per_head * double(kBatch * s.heads);
}

const char* family_name(family f) { return f == family::lightning ? "lightning" : "linear"; }

std::string name_of(const char* impl, const shape& s) {
  std::string name = std::string(family_name(s.f)) + "/" + impl + "/N:" + std::to_string(s.n) +
                     "/D:" + std::to_string(kDim) + "/H:" + std::to_string(s.heads);
  if (s.f != family::lightning) name += std::string("/causal:") + (s.f == family::linear_causal ? "1" : "0");
  return name + "/threads:" + std::to_string(s.threads);
}

template <bool Naive, storage S = storage::f32>
void bm_chunk(benchmark::State& st, shape s) {
  const auto [q, k, v, out] = prefill_tensors_of<S>({kBatch, s.n, s.heads, kDim});
  // lightning runs on a bf16 path for bf16 (its d, e and chunk are multiples of 32); the linear rows use
  // elu+1 with the normaliser, which the chunk engine's bf16 paths do not take
  const auto path = path_of(S, s.f == family::lightning);
  label_path(st, S, path);
  const std::vector<double> decay = xattn::lightning_slopes(s.heads);
  const xattn::lightning_options lopt{.decay = decay};
  const xattn::linear_options copt{.causal = s.f == family::linear_causal,
                                   .feature_map = xattn::feature::elu_plus_one,
                                   .normalize = true};
  const auto& dev = device(s.threads);
  auto body = [&] {
    if constexpr (Naive) {
      if (s.f == family::lightning) xattn::reference::lightning_attention(q, k, v, out, lopt);
      else xattn::reference::linear_attention(q, k, v, out, copt);
    } else {
      if (s.f == family::lightning) xattn::lightning_attention(dev, q, k, v, out, lopt);
      else xattn::linear_attention(dev, q, k, v, out, copt);
    }
  };
  run_flops(st, s.threads, chunk_flops(s, Naive), double(kBatch * s.n), body, true, path);
}

// Causal softmax attention at N = 32768, D = 128, H = 8, with bench_softmax's name and FLOP count
// (4·B·H·d·N(N+1)/2: 2·d per visible score, 2·d per visible p·v), for the crossover with lightning.
void bm_softmax_long(benchmark::State& st, int threads) {
  constexpr Eigen::Index n = 32768, heads = 8;
  const dims4 dims{kBatch, n, heads, kDim};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2];
  tensor4& out = *ts[3];
  const auto& dev = device(threads);
  run_flops(st, threads, 4.0 * kBatch * heads * kDim * double(n) * double(n + 1) / 2, double(kBatch * n),
            [&] { xattn::softmax_attention(dev, q, k, v, out, {.causal = true}); });
}

void add(const std::string& name, auto fn, auto arg) {
  benchmark::RegisterBenchmark(name.c_str(), fn, arg)->UseRealTime()->Unit(benchmark::kMillisecond);
}

// The headline suite: causal linear attention and lightning over the sweep's N (the rows at
// N = 16384 timed as the table's); the naive references once at N = 2048, where their ratio is to
// the sweep's xattn rows at N = 2048.
constexpr Eigen::Index kTableN = 16384, kNaiveTableN = 2048, kTableHeads = 8;

/// xattn in 16-bit storage `st`, registered after the fp32 row of its shape.
benchmark::internal::Benchmark* add16(storage st, const shape& s) {
  auto fn = st == storage::bf16 ? bm_chunk<false, storage::bf16> : bm_chunk<false, storage::f16>;
  return benchmark::RegisterBenchmark((name_of("xattn", s) + dtype_suffix(st)).c_str(), fn, s)
      ->UseRealTime()->Unit(benchmark::kMillisecond);
}

void sweep_chunk(Eigen::Index n) {
  for (family f : {family::linear_causal, family::lightning}) {
    const shape s{f, n, kTableHeads, kSweepThreads};
    const double min_time = n == kTableN ? kTableMinTime : kSweepMinTime;
    benchmark::RegisterBenchmark(name_of("xattn", s).c_str(), bm_chunk<false>, s)
        ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(min_time);
    if (f == family::lightning || n == kTableN)
      for (storage st : kStorages16) add16(st, s)->MinTime(min_time);
  }
}

// Shape by shape, so that each shape's tensors are built once and shared by every benchmark of it.
void register_chunk(suite which) {
  if (which == suite::headline) {
    for (family f : {family::linear_causal, family::lightning}) {
      const shape s{f, kNaiveTableN, kTableHeads, 1};
      benchmark::RegisterBenchmark(name_of("naive", s).c_str(), bm_chunk<true>, s)
          ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
    }
    return;
  }
  for (Eigen::Index n = 1024; n <= 131072; n *= 2)
    for (family f : {family::lightning, family::linear_causal, family::linear_noncausal})
      for (int threads = 1; threads <= kMaxThreads; ++threads) {
        const shape s{f, n, 8, threads};
        if (threads == 1 && n <= kNaiveMaxN) add(name_of("naive", s), bm_chunk<true>, s);
        add(name_of("xattn", s), bm_chunk<false>, s);
        // lightning at every N (its tokens/s against N in 16-bit storage too); causal linear at the
        // headline N and 32k
        if (f == family::lightning || (f == family::linear_causal && (n == kTableN || n == 2 * kTableN)))
          for (storage st : kStorages16) add16(st, s);
      }
  for (Eigen::Index heads : {1, 2})
    for (int threads = 1; threads <= kMaxThreads; ++threads) {
      const shape s{family::lightning, 65536, heads, threads};
      add(name_of("xattn", s), bm_chunk<false>, s);
    }
  for (int threads = 1; threads <= kMaxThreads; ++threads)
    add("softmax/xattn/N:32768/D:128/H:8/causal:1/threads:" + std::to_string(threads), bm_softmax_long, threads);
}

const registrar chunk_after_softmax{20, &register_chunk};
const sweep_registrar chunk_sweep_last{40, &sweep_chunk};

}  // namespace
}  // namespace xattn_bench
