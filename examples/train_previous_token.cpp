// examples/train_previous_token.cpp — training one causal softmax-attention layer with xattn's
// forward and backward passes: the task is to output, at every position, the content of the token
// before it (a "previous-token head"). Tokens are a random content vector and a one-hot position;
// the layer has learned projections W_q, W_k, W_v, trained with Adam written out below. The loss
// is printed as it falls, and the program checks that it fell by at least 20×.
#include <cmath>
#include <cstdio>
#include <random>
#include <Eigen/Dense>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/softmax.hpp>
#include <xattn/softmax_backward.hpp>

namespace {

constexpr int kBatch = 8, kSeq = 24, kContent = 8, kDim = kContent + kSeq;  // input = [content, one-hot position]
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using rows = Eigen::Map<matrix>;  // a [batch, seq, 1, dim] tensor as a [batch·seq, dim] matrix

rows as_rows(tensor4& t) { return {t.data(), t.dimension(0) * t.dimension(1), t.dimension(3)}; }

/// Adam on one parameter matrix.
struct adam {
  matrix m, v;
  int t = 0;
  explicit adam(const matrix& w) : m(matrix::Zero(w.rows(), w.cols())), v(matrix::Zero(w.rows(), w.cols())) {}
  void step(matrix& w, const matrix& g, float lr) {
    constexpr float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    ++t;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g.cwiseProduct(g);
    const float c1 = 1 - std::pow(b1, float(t)), c2 = 1 - std::pow(b2, float(t));
    w.array() -= lr * (m.array() / c1) / ((v.array() / c2).sqrt() + eps);
  }
};

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto random_matrix = [&](float scale) {
    matrix w(kDim, kDim);
    for (int i = 0; i < w.size(); ++i) w.data()[i] = scale * normal(rng);
    return w;
  };
  matrix wq = random_matrix(0.1f), wk = random_matrix(0.1f), wv = random_matrix(0.1f);
  adam aq(wq), ak(wk), av(wv);

  tensor4 x(kBatch, kSeq, 1, kDim), target(kBatch, kSeq, 1, kDim);
  tensor4 q(kBatch, kSeq, 1, kDim), k(kBatch, kSeq, 1, kDim), v(kBatch, kSeq, 1, kDim), out(kBatch, kSeq, 1, kDim);
  tensor4 dout(kBatch, kSeq, 1, kDim), dq(kBatch, kSeq, 1, kDim), dk(kBatch, kSeq, 1, kDim), dv(kBatch, kSeq, 1, kDim);
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(kBatch, 1, kSeq);
  const xattn::softmax_options opt{.causal = true};

  float first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    // A fresh batch: random contents, one-hot positions; the target of token i is token i−1's content.
    x.setZero(), target.setZero();
    for (int b = 0; b < kBatch; ++b)
      for (int i = 0; i < kSeq; ++i) {
        for (int c = 0; c < kContent; ++c) x(b, i, 0, c) = normal(rng);
        x(b, i, 0, kContent + i) = 1.f;
        if (i > 0)
          for (int c = 0; c < kContent; ++c) target(b, i, 0, c) = x(b, i - 1, 0, c);
      }
    const auto X = as_rows(x);
    as_rows(q) = X * wq, as_rows(k) = X * wk, as_rows(v) = X * wv;

    xattn::softmax_attention(q, k, v, out, lse, opt);

    // Mean squared error over the positions that have a previous token, and its gradient.
    const int counted = kBatch * (kSeq - 1);
    float loss = 0;
    for (int b = 0; b < kBatch; ++b)
      for (int i = 0; i < kSeq; ++i)
        for (int c = 0; c < kDim; ++c) {
          const float e = i > 0 ? out(b, i, 0, c) - target(b, i, 0, c) : 0.f;
          loss += e * e / counted;
          dout(b, i, 0, c) = 2 * e / counted;
        }

    xattn::softmax_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, opt);

    // The projections' gradients: dW = Xᵀ · d(XW).
    aq.step(wq, X.transpose() * as_rows(dq), 0.02f);
    ak.step(wk, X.transpose() * as_rows(dk), 0.02f);
    av.step(wv, X.transpose() * as_rows(dv), 0.02f);

    if (step == 0) first = loss;
    last = loss;
    if (step % 50 == 0 || step == 299) std::printf("step %3d  loss %.5f\n", step, loss);
  }
  const bool fell = std::isfinite(last) && last * 20 < first;
  std::printf("loss %.5f -> %.5f: %s\n", first, last, fell ? "learned to copy the previous token" : "did not learn");
  return fell ? 0 : 1;
}
