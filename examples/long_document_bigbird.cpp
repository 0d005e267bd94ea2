// examples/long_document_bigbird.cpp — a long document with block-sparse attention: a BigBird
// layout (a window of blocks, global blocks, random blocks from a seed) and a Longformer layout
// (a token window plus global tokens such as [CLS]), run with xattn::sparse_attention and checked
// against the fp64 reference, which expands the layout into a dense mask.
//
//   xattn_example_long_document_bigbird [tokens]     default 1024 (a multiple of 64)
#define EIGEN_USE_THREADS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <vector>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1024;
  constexpr int heads = 2, head_dim = 64, block = 64;
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  tensor q(1, n, heads, head_dim), k(1, n, heads, head_dim), v(1, n, heads, head_dim), out(1, n, heads, head_dim);
  q.setRandom(), k.setRandom(), v.setRandom();
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);

  const std::vector<std::ptrdiff_t> global_tokens{0, n / 2};  // e.g. [CLS] and a question token
  const struct {
    const char* name;
    xattn::block_layout layout;
  } layouts[] = {
      {"BigBird", xattn::block_layout::bigbird(n, n, block, {.window_blocks = 1, .global_blocks = 1, .random_blocks = 3, .seed = 2024})},
      {"Longformer", xattn::block_layout::longformer(n, n, block, 256, global_tokens)},
  };
  int status = 0;
  for (const auto& [name, layout] : layouts) {
    const auto start = std::chrono::steady_clock::now();
    xattn::sparse_attention(device, q, k, v, out, layout);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

    Eigen::Tensor<double, 4, Eigen::RowMajor> ref(1, n, heads, head_dim);
    const Eigen::Tensor<double, 4, Eigen::RowMajor> qd = q.cast<double>(), kd = k.cast<double>(), vd = v.cast<double>();
    xattn::reference::sparse_attention(qd, kd, vd, ref, layout);
    const Eigen::Tensor<double, 0, Eigen::RowMajor> err = (out.cast<double>() - ref).abs().maximum();
    std::printf("%-10s %d tokens, density %4.1f %%: %.2f ms, max abs error vs reference %.3g\n", name, n,
                100 * layout.density(), ms, err());
    if (!(err() <= 1e-5)) status = 1;
  }
  return status;
}
