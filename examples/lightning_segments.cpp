// examples/lightning_segments.cpp — a long document processed in segments with lightning attention's
// state passing, in constant memory: each call takes one segment of q, k, v and the state the
// previous call left ([batch, heads, d, e]), and leaves the state after its last token. The result
// equals one call over the whole document. Memory stays that of one segment, whatever the length.
//
//   xattn_example_lightning_segments [tokens [segment]]   default 8192 tokens in segments of 2048
//   xattn_example_lightning_segments 1048576              one million tokens (~2 s on two cores)
//   xattn_example_lightning_segments 1048576 --one-call   the same in one call over whole tensors
//                                                         (4 GiB of q, k, v, out): measure its peak
//                                                         memory with /usr/bin/time -v
#define EIGEN_USE_THREADS  // before Eigen's Tensor header: enables Eigen::ThreadPoolDevice
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr int kHeads = 2, kDim = 128;  // [batch 1, seq, 2 heads, 128]

// Token t's q, k, v rows: a deterministic function of t (a hash, uniform in [-0.5, 0.5)), as a
// model's projections would be, so that any segment can be made — and remade for the check —
// without keeping the document.
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

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // KiB on Linux
}

int main(int argc, char** argv) {
  const long tokens = argc > 1 ? std::atol(argv[1]) : 8192;
  const bool one_call = argc > 2 && std::strcmp(argv[2], "--one-call") == 0;
  const long segment = argc > 2 && !one_call ? std::atol(argv[2]) : 2048;
  if (tokens < 1 || segment < 1) {
    std::fprintf(stderr, "usage: %s [tokens [segment | --one-call]]\n", argv[0]);
    return 2;
  }
  // Decay rates of layer 3 of 24 in the TransNormerLLM / MiniMax-01 convention.
  const std::vector<double> decay = xattn::lightning_slopes(kHeads, 3, 24);
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);

  const auto start = std::chrono::steady_clock::now();
  tensor state(1, kHeads, kDim, kDim);  // the whole memory of the past: 2 × 128 × 128 floats
  double checksum = 0;
  if (one_call) {
    tensor q(1, tokens, kHeads, kDim), k(1, tokens, kHeads, kDim), v(1, tokens, kHeads, kDim);
    tensor out(1, tokens, kHeads, kDim);
    make_rows(q, k, v, 0);
    out.setZero();
    const double before = peak_rss_mib();
    const auto t0 = std::chrono::steady_clock::now();
    xattn::lightning_attention(device, q, k, v, out, {.decay = decay, .final_state = state});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%ld tokens × %d heads × d %d in one call: %.3f s, %.0f tokens/s; peak RSS %.0f MiB "
                "(%.0f MiB of tensors, %.0f MiB more during the call)\n",
                tokens, kHeads, kDim, s, double(tokens) / s, peak_rss_mib(),
                4.0 * double(q.size()) * sizeof(float) / (1 << 20), peak_rss_mib() - before);
    return 0;
  }

  tensor q(1, segment, kHeads, kDim), k(q.dimensions()), v(q.dimensions()), out(q.dimensions());
  for (long first = 0; first < tokens; first += segment) {
    const long n = std::min(segment, tokens - first);
    if (n != q.dimension(1)) q.resize(1, n, kHeads, kDim), k.resize(q.dimensions()), v.resize(q.dimensions()), out.resize(q.dimensions());
    make_rows(q, k, v, first);
    xattn::lightning_options opt{.decay = decay, .final_state = state};
    if (first > 0) opt.initial_state = state;  // the same tensor in and out
    xattn::lightning_attention(device, q, k, v, out, opt);
    checksum += double(out(0, n - 1, 0, 0));  // a model would hand `out` on to its next layer here
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%ld tokens in segments of %ld, %d heads, d %d, %d threads: %.3f s (with making the inputs), "
              "peak RSS %.0f MiB (checksum %.4f)\n",
              tokens, segment, kHeads, kDim, threads, seconds, peak_rss_mib(), checksum);

  // Check: segments equal one call. The first two segments again, in one call, against their
  // segmented outputs; and the first 256 tokens against the fp64 reference.
  const long n2 = std::min(tokens, 2 * segment);
  tensor q2(1, n2, kHeads, kDim), k2(q2.dimensions()), v2(q2.dimensions()), whole(q2.dimensions());
  make_rows(q2, k2, v2, 0);
  xattn::lightning_attention(device, q2, k2, v2, whole, {.decay = decay});
  tensor seg_state(1, kHeads, kDim, kDim);
  float worst = 0;
  for (long first = 0; first < n2; first += segment) {
    const long n = std::min(segment, n2 - first);
    const Eigen::array<Eigen::Index, 4> at{0, first, 0, 0}, ext{1, n, kHeads, kDim};
    const tensor qs = q2.slice(at, ext), ks = k2.slice(at, ext), vs = v2.slice(at, ext);
    tensor os(ext);
    xattn::lightning_options opt{.decay = decay, .final_state = seg_state};
    if (first > 0) opt.initial_state = seg_state;
    xattn::lightning_attention(qs, ks, vs, os, opt);
    const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (os - whole.slice(at, ext)).abs().maximum();
    worst = std::max(worst, err());
  }
  const long nr = std::min(n2, 256L);
  const Eigen::array<Eigen::Index, 4> zero{0, 0, 0, 0}, ext{1, nr, kHeads, kDim};
  const tensor qr = q2.slice(zero, ext), kr = k2.slice(zero, ext), vr = v2.slice(zero, ext);
  tensor ref(ext);
  xattn::reference::lightning_attention(qr, kr, vr, ref, {.decay = decay});
  const Eigen::Tensor<float, 0, Eigen::RowMajor> ref_err = (ref - whole.slice(zero, ext)).abs().maximum();
  std::printf("segments vs one call: max abs difference %.3g; first %ld tokens vs reference: %.3g\n", worst, nr,
              ref_err());
  return worst <= 1e-3f && ref_err() <= 1e-3f ? 0 : 1;
}
