// Consumer of an installed xattn: one call on random data against the fp64 reference.
#include <cmath>
#include <cstdio>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main() {
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  tensor q(2, 37, 4, 64), k(2, 53, 2, 64), v(2, 53, 2, 64);  // GQA 4 over 2, Nq != Nk
  q.setRandom();
  k.setRandom();
  v.setRandom();
  tensor out(2, 37, 4, 64), ref(2, 37, 4, 64);

  xattn::softmax_attention(q, k, v, out);
  xattn::reference::softmax_attention(q, k, v, ref);

  const float err = Eigen::Tensor<float, 0, Eigen::RowMajor>((out - ref).abs().maximum())();
  std::printf("find_package consumer: max abs error %.3g\n", err);
  return std::isfinite(err) && err <= 1e-4f ? 0 : 1;
}
