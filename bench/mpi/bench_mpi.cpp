// bench/mpi/bench_mpi.cpp — xattn/mpi.hpp against one process on the same problem: lightning
// attention (LASP-2) at 128k tokens and causal ring attention (zigzag) at 16k tokens, H = 8, d = 128.
// Each rank reports its time and the time it spent waiting in MPI calls. Run the split version and the
// one-process baseline with the same number of cores, e.g. on two cores:
//
//   mpirun -np 2 xattn_mpi_bench --threads 1      P = 2 ranks × T = 1 thread
//   mpirun -np 1 xattn_mpi_bench --threads 2      one process with P·T = 2 threads: the plain
//                                                  single-process kernels (the baseline), and the
//                                                  split path on one rank (its own overhead)
//
//   options: --threads T (per rank, default 1)  --reps R (best of R, default 3)
//            --lightning N (tokens, default 131072)  --ring N (tokens, default 16384)  --heads H  --dim D
// Inputs are allocated and touched before timing; the time of a repetition is the slowest rank's.
// FLOP counts: lightning ≈ N·H·(4·d·e + 2·B·(d + e)) for B-token chunks (intra, inter, state update);
// causal softmax ≈ 2·N²·H·d (QKᵀ and PV over half of the N² scores, 2 FLOPs each).
#define EIGEN_USE_THREADS
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/mpi.hpp>

namespace {

using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;

struct settings {
  int threads = 1, reps = 3;
  long lightning_tokens = 131072, ring_tokens = 16384;
  int heads = 8, dim = 128;
};

void fill(tensor& t, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  for (long i = 0; i < t.size(); ++i) t.data()[i] = u(rng);
}

/// Runs f on every rank `reps` times; per repetition the slowest rank's time. Prints the best
/// repetition and each rank's wait in MPI during it.
template <class F>
void measure(const char* name, double flops, const settings& s, int rank, int ranks, F&& f) {
  double best = 1e30;
  std::vector<double> waits(static_cast<std::size_t>(ranks)), totals(static_cast<std::size_t>(ranks));
  for (int rep = 0; rep < s.reps; ++rep) {
    xattn::mpi::timing t;
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    f(t);
    const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double slowest = 0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    std::vector<double> w(static_cast<std::size_t>(ranks)), tt(static_cast<std::size_t>(ranks));
    MPI_Gather(&t.wait_seconds, 1, MPI_DOUBLE, w.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Gather(&mine, 1, MPI_DOUBLE, tt.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (slowest < best) best = slowest, waits = w, totals = tt;
  }
  if (rank != 0) return;
  std::printf("%-34s %d rank(s) x %d thread(s): %8.4f s  %7.1f GFLOP/s  %6.1f GFLOP/s per core\n", name, ranks,
              s.threads, best, flops / best * 1e-9, flops / best * 1e-9 / (ranks * s.threads));
  for (int r = 0; r < ranks; ++r)
    std::printf("    rank %d: %.4f s, waiting in MPI %.4f s (%.1f %%)\n", r, totals[std::size_t(r)],
                waits[std::size_t(r)], 100 * waits[std::size_t(r)] / std::max(1e-12, totals[std::size_t(r)]));
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int ranks = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  settings s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const long x = std::atol(argv[i + 1]);
    if (a == "--threads") s.threads = int(x);
    else if (a == "--reps") s.reps = int(x);
    else if (a == "--lightning") s.lightning_tokens = x;
    else if (a == "--ring") s.ring_tokens = x;
    else if (a == "--heads") s.heads = int(x);
    else if (a == "--dim") s.dim = int(x);
    else {
      if (rank == 0) std::fprintf(stderr, "unknown option %s (see the header of bench_mpi.cpp)\n", argv[i]);
      MPI_Finalize();
      return 2;
    }
  }
  Eigen::ThreadPool pool(s.threads);
  Eigen::ThreadPoolDevice device(&pool, s.threads);
  const bool single = ranks == 1;  // the baseline: the plain kernels, no MPI in the timed call
  const int h = s.heads, d = s.dim;
  if (rank == 0)
    std::printf("xattn_mpi_bench: %d rank(s) x %d thread(s), H %d, d %d, best of %d%s\n", ranks, s.threads, h, d,
                s.reps, single ? " (one process: the single-process kernels, then the split path on one rank)" : "");

  {  // Lightning, LASP-2: equal contiguous slices.
    const long n = s.lightning_tokens / ranks;
    tensor q(1, n, h, d), k(1, n, h, d), v(1, n, h, d), out(1, n, h, d);
    fill(q, 1 + rank), fill(k, 100 + rank), fill(v, 200 + rank), out.setZero();
    const std::vector<double> decay = xattn::lightning_slopes(h);
    const double chunk = xattn::default_chunk_size;
    const double flops = double(s.lightning_tokens) * h * (4.0 * d * d + 2 * chunk * (2.0 * d));
    if (single)
      measure("lightning, one process", flops, s, rank, ranks,
              [&](xattn::mpi::timing&) { xattn::lightning_attention(device, q, k, v, out, {.decay = decay}); });
    // On one rank this is the split path's own cost: the state pass, the (trivial) all-gather, the output.
    measure("lightning, LASP-2", flops, s, rank, ranks, [&](xattn::mpi::timing& t) {
      xattn::mpi::lightning_attention(MPI_COMM_WORLD, device, q, k, v, out, {.decay = decay}, {.stats = &t});
    });
  }
  {  // Causal ring attention, zigzag split.
    const long n = s.ring_tokens / (2 * ranks) * 2;
    tensor q(1, n, h, d), k(1, n, h, d), v(1, n, h, d), out(1, n, h, d);
    fill(q, 300 + rank), fill(k, 400 + rank), fill(v, 500 + rank), out.setZero();
    const double total = double(n) * ranks;
    const double flops = 2.0 * total * total * h * d;
    if (single)
      measure("causal softmax, one process", flops, s, rank, ranks,
              [&](xattn::mpi::timing&) { xattn::softmax_attention(device, q, k, v, out, {.causal = true}); });
    measure("causal softmax, ring (zigzag)", flops, s, rank, ranks, [&](xattn::mpi::timing& t) {
      xattn::mpi::ring_attention(MPI_COMM_WORLD, device, q, k, v, out, {.causal = true},
                                 {.split = xattn::mpi::split::zigzag, .stats = &t});
    });
  }
  MPI_Finalize();
  return 0;
}
