// Consumer that vendors xattn with add_subdirectory: the ThreadPoolDevice overload, causal,
// against the fp64 reference.
#define EIGEN_USE_THREADS
#include <cmath>
#include <cstdio>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main() {
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  tensor q(1, 70, 8, 40), k(1, 70, 8, 40), v(1, 70, 8, 40);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  tensor out(1, 70, 8, 40), ref(1, 70, 8, 40);

  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);
  xattn::softmax_attention(device, q, k, v, out, {.causal = true});
  xattn::reference::softmax_attention(q, k, v, ref, {.causal = true});

  const float err = Eigen::Tensor<float, 0, Eigen::RowMajor>((out - ref).abs().maximum())();
  std::printf("add_subdirectory consumer: max abs error %.3g\n", err);
  return std::isfinite(err) && err <= 1e-4f ? 0 : 1;
}
