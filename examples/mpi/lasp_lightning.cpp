// examples/mpi/lasp_lightning.cpp — one million tokens of lightning attention split over the ranks
// (LASP-2): each rank holds a contiguous slice, computes its slice's state, one all-gather of the
// states gives every rank its prefix state, and each rank computes its output. The last rank checks
// itself: a single-process pass over everything before its slice (in segments, passing the state)
// gives the state its slice starts from; one single-process call on its slice from that state must
// give the same output and the same final state within rounding.
//
//   mpirun -np 4 xattn_example_lasp_lightning [tokens]     default 1048576
#define EIGEN_USE_THREADS
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/mpi.hpp>

using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr int kHeads = 2, kDim = 32;  // small heads keep 1M tokens at -np 4 within seconds on two cores
constexpr long kSegment = 16384;      // tokens per call of the last rank's single-process check

// Token t's q, k, v rows: a hash of (t, head, feature), uniform in [-0.5, 0.5): any slice can be
// made on any rank without the whole sequence.
float hashed(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;  // splitmix64
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return float(x >> 40) * 0x1p-24f - 0.5f;
}
void make_rows(tensor& q, tensor& k, tensor& v, long first) {
  for (long i = 0; i < q.dimension(1); ++i)
    for (int h = 0; h < kHeads; ++h)
      for (int c = 0; c < kDim; ++c) {
        const std::uint64_t id = ((std::uint64_t(first + i) * kHeads + h) * kDim + c) * 3;
        q(0, i, h, c) = hashed(id), k(0, i, h, c) = hashed(id + 1), v(0, i, h, c) = hashed(id + 2);
      }
}
float max_abs_diff(const tensor& a, const tensor& b) {
  const Eigen::Tensor<float, 0, Eigen::RowMajor> m = (a - b).abs().maximum();
  return m();
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int ranks = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const long tokens = argc > 1 ? std::atol(argv[1]) : 1L << 20;
  if (tokens < ranks) {
    if (rank == 0) std::fprintf(stderr, "usage: %s [tokens >= ranks]\n", argv[0]);
    MPI_Finalize();
    return 2;
  }
  // This rank's slice: equal shares, the remainder to the last rank.
  const long share = tokens / ranks, first = rank * share, n = rank == ranks - 1 ? tokens - first : share;
  const std::vector<double> decay = xattn::lightning_slopes(kHeads, 12, 24);  // a middle layer's rates
  tensor q(1, n, kHeads, kDim), k(q.dimensions()), v(q.dimensions()), out(q.dimensions());
  tensor final_state(1, kHeads, kDim, kDim);
  make_rows(q, k, v, first);
  out.setZero();

  xattn::mpi::timing t;
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = std::chrono::steady_clock::now();
  xattn::mpi::lightning_attention(MPI_COMM_WORLD, q, k, v, out, {.decay = decay, .final_state = final_state},
                                  {.total_length = tokens, .stats = &t});
  MPI_Barrier(MPI_COMM_WORLD);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double wait = t.wait_seconds, most_wait = 0;
  MPI_Reduce(&wait, &most_wait, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("%ld tokens over %d ranks (%ld each), %d heads, d %d: %.3f s, %.0f tokens/s; "
                "longest wait in MPI %.3f s\n",
                tokens, ranks, share, kHeads, kDim, seconds, double(tokens) / seconds, most_wait);

  int ok = 1;
  if (rank == ranks - 1) {
    // The state before this slice, from one process going through the tokens before it.
    tensor state(1, kHeads, kDim, kDim);
    state.setZero();
    for (long at = 0; at < first; at += kSegment) {
      const long len = std::min(kSegment, first - at);
      tensor qs(1, len, kHeads, kDim), ks(qs.dimensions()), vs(qs.dimensions()), os(qs.dimensions());
      make_rows(qs, ks, vs, at);
      xattn::lightning_attention(qs, ks, vs, os, {.decay = decay, .initial_state = state, .final_state = state});
    }
    tensor want(q.dimensions()), want_state(final_state.dimensions());
    xattn::lightning_options o{.decay = decay, .final_state = want_state};
    if (first > 0) o.initial_state = state;
    xattn::lightning_attention(q, k, v, want, o);
    const float e_out = max_abs_diff(out, want), e_state = max_abs_diff(final_state, want_state);
    const Eigen::Tensor<float, 0, Eigen::RowMajor> scale = want_state.abs().maximum();
    std::printf("last rank vs one process: max |out diff| %.3g, max |final state diff| %.3g (state magnitude %.3g)\n",
                e_out, e_state, scale());
    ok = e_out <= 1e-4f && e_state <= 1e-5f * (1 + scale());
  }
  int all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
