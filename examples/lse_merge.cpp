// examples/lse_merge.cpp — attention over keys held in two places (a cache split over two
// devices, or a prefix cache and the new chunk), computed part by part and merged by the
// log-sum-exp each part returns: with l_a, l_b the LSEs and o_a, o_b the outputs of one row,
//     l = log(e^l_a + e^l_b),   o = e^(l_a − l)·o_a + e^(l_b − l)·o_b.
// The merge equals one call over all keys (flash-decoding and ring attention merge this way).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/xattn.hpp>

int main() {
  constexpr long batch = 2, nq = 16, nk_a = 700, nk_b = 300, heads = 4, head_dim = 64;
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  using lse_t = Eigen::Tensor<float, 3, Eigen::RowMajor>;
  tensor q(batch, nq, heads, head_dim), k(batch, nk_a + nk_b, heads, head_dim), v(k.dimensions());
  q.setRandom(), k.setRandom(), v.setRandom();
  const Eigen::array<Eigen::Index, 4> at_a{0, 0, 0, 0}, at_b{0, nk_a, 0, 0}, ext_a{batch, nk_a, heads, head_dim},
      ext_b{batch, nk_b, heads, head_dim};
  const tensor k_a = k.slice(at_a, ext_a), v_a = v.slice(at_a, ext_a), k_b = k.slice(at_b, ext_b),
               v_b = v.slice(at_b, ext_b);

  // Each part with its LSE [batch, heads, nq] (natural log).
  tensor o_a(batch, nq, heads, head_dim), o_b(o_a.dimensions());
  lse_t l_a(batch, heads, nq), l_b(l_a.dimensions());
  xattn::softmax_attention(q, k_a, v_a, o_a, l_a);
  xattn::softmax_attention(q, k_b, v_b, o_b, l_b);

  // The merge, row by row; a part that saw no key has LSE −inf and weight 0.
  tensor merged(o_a.dimensions());
  for (long b = 0; b < batch; ++b)
    for (long h = 0; h < heads; ++h)
      for (long i = 0; i < nq; ++i) {
        const float m = std::max(l_a(b, h, i), l_b(b, h, i));
        if (m == -std::numeric_limits<float>::infinity()) {
          for (long e = 0; e < head_dim; ++e) merged(b, i, h, e) = 0;
          continue;
        }
        const float wa = std::exp(l_a(b, h, i) - m), wb = std::exp(l_b(b, h, i) - m), sum = wa + wb;
        for (long e = 0; e < head_dim; ++e) merged(b, i, h, e) = (wa * o_a(b, i, h, e) + wb * o_b(b, i, h, e)) / sum;
      }

  tensor whole(o_a.dimensions());
  xattn::softmax_attention(q, k, v, whole);
  const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (merged - whole).abs().maximum();
  std::printf("two parts (%ld + %ld keys) merged by LSE vs one call: max abs difference %.3g\n", nk_a, nk_b, err());
  return err() <= 1e-5f ? 0 : 1;
}
