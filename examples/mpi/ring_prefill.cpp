// examples/mpi/ring_prefill.cpp — a long causal prefill split over the ranks with ring attention and
// the zigzag split: the sequence is cut into 2P chunks and rank r holds chunks r and 2P−1−r, so
// every rank has the same share of the causal triangle. K/V blocks travel around the ring while each
// rank computes on the block in hand. Rank 0 checks the gathered output against the single-process
// call, and its first rows against the fp64 reference.
//
//   mpirun -np 2 xattn_example_ring_prefill [tokens]     default 8192
#define EIGEN_USE_THREADS
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/mpi.hpp>
#include <xattn/reference.hpp>

using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr int kHeads = 4, kKvHeads = 2, kDim = 64;  // grouped-query attention, two query heads per K/V head
constexpr long kChecked = 256;                      // rows checked against the fp64 reference

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int ranks = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const long asked = argc > 1 ? std::atol(argv[1]) : 8192;
  const long tokens = asked / (2 * ranks) * (2 * ranks);  // 2P equal chunks
  if (tokens < 2 * ranks) {
    if (rank == 0) std::fprintf(stderr, "usage: %s [tokens >= 2 × ranks]\n", argv[0]);
    MPI_Finalize();
    return 2;
  }
  // Every rank makes the same whole prompt from one seed and keeps its zigzag share (a model would
  // produce its share's q, k, v itself).
  tensor q(1, tokens, kHeads, kDim), k(1, tokens, kKvHeads, kDim), v(1, tokens, kKvHeads, kDim);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (tensor* t : {&q, &k, &v})
    for (long i = 0; i < t->size(); ++i) t->data()[i] = normal(rng);
  const tensor ql = xattn::mpi::zigzag_split(q, ranks, rank), kl = xattn::mpi::zigzag_split(k, ranks, rank);
  const tensor vl = xattn::mpi::zigzag_split(v, ranks, rank);
  tensor out(ql.dimension(0), ql.dimension(1), kHeads, kDim);

  xattn::mpi::timing t;
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = std::chrono::steady_clock::now();
  xattn::mpi::ring_attention(MPI_COMM_WORLD, ql, kl, vl, out, {.causal = true},
                             {.split = xattn::mpi::split::zigzag, .total_length = tokens, .stats = &t});
  MPI_Barrier(MPI_COMM_WORLD);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double wait = t.wait_seconds, most_wait = 0;
  MPI_Reduce(&wait, &most_wait, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);

  tensor whole(1, tokens, kHeads, kDim);
  xattn::mpi::zigzag_gather(MPI_COMM_WORLD, out, whole);
  int ok = 1;
  if (rank == 0) {
    std::printf("causal prefill of %ld tokens over %d ranks, %d/%d heads, d %d: %.3f s; longest wait in MPI %.3f s\n",
                tokens, ranks, kHeads, kKvHeads, kDim, seconds, most_wait);
    tensor want(whole.dimensions());
    const auto t0 = std::chrono::steady_clock::now();
    xattn::softmax_attention(q, k, v, want, {.causal = true});
    const double single = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (whole - want).abs().maximum();
    // Causal rows depend only on the tokens before them: the first rows against the reference on a prefix.
    const long nr = std::min(tokens, kChecked);
    const Eigen::array<Eigen::Index, 4> zero{0, 0, 0, 0}, ext{1, nr, kHeads, kDim}, ext_kv{1, nr, kKvHeads, kDim};
    const tensor qr = q.slice(zero, ext), kr = k.slice(zero, ext_kv), vr = v.slice(zero, ext_kv);
    tensor ref(ext);
    xattn::reference::softmax_attention(qr, kr, vr, ref, {.causal = true});
    const Eigen::Tensor<float, 0, Eigen::RowMajor> ref_err = (ref - whole.slice(zero, ext)).abs().maximum();
    std::printf("vs one process (%.3f s on one thread): max abs difference %.3g; first %ld rows vs reference: %.3g\n",
                single, err(), nr, ref_err());
    ok = err() <= 1e-5f && ref_err() <= 1e-5f;
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return ok ? 0 : 1;
}
