// examples/image_neighborhood.cpp — 2-D neighborhood attention over an image (NATTEN's na2d):
// each pixel attends to the 7×7 pixels around it, the window shifted inward near the borders,
// then a dilated 3×3 (dilation 4) for a wider receptive field. Checked against the fp64 reference.
//
//   xattn_example_image_neighborhood [size]     default 32 (a size × size image)
#define EIGEN_USE_THREADS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main(int argc, char** argv) {
  const int size = argc > 1 ? std::atoi(argv[1]) : 32;
  constexpr int heads = 4, head_dim = 32;
  using image = Eigen::Tensor<float, 5, Eigen::RowMajor>;  // [batch, height, width, heads, head_dim]
  image q(1, size, size, heads, head_dim), k(1, size, size, heads, head_dim), v(1, size, size, heads, head_dim);
  image out(1, size, size, heads, head_dim);
  q.setRandom(), k.setRandom(), v.setRandom();
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);

  int status = 0;
  for (const xattn::neighborhood_2d_options& opt :
       {xattn::neighborhood_2d_options{.kernel_h = 7, .kernel_w = 7},
        xattn::neighborhood_2d_options{.kernel_h = 3, .kernel_w = 3, .dilation_h = 4, .dilation_w = 4}}) {
    const auto start = std::chrono::steady_clock::now();
    xattn::neighborhood_attention_2d(device, q, k, v, out, opt);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    Eigen::Tensor<double, 5, Eigen::RowMajor> ref(1, size, size, heads, head_dim);
    const Eigen::Tensor<double, 5, Eigen::RowMajor> qd = q.cast<double>(), kd = k.cast<double>(), vd = v.cast<double>();
    xattn::reference::neighborhood_attention_2d(qd, kd, vd, ref, opt);
    const Eigen::Tensor<double, 0, Eigen::RowMajor> err = (out.cast<double>() - ref).abs().maximum();
    std::printf("%dx%d image, kernel %lldx%lld, dilation %lld: %.2f ms, max abs error vs reference %.3g\n", size, size,
                static_cast<long long>(opt.kernel_h), static_cast<long long>(opt.kernel_w),
                static_cast<long long>(opt.dilation_h), ms, err());
    if (!(err() <= 1e-5)) status = 1;
  }
  return status;
}
