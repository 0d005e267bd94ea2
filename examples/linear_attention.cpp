// examples/linear_attention.cpp — linear attention (Katharopoulos et al.): out = φ(Q)(φ(K)ᵀV),
// normalised row by row, with the elu+1 feature map; causal over one sequence, then the same
// sequence continued token by token with xattn::linear_step from the state the prefill left.
#define EIGEN_USE_THREADS
#include <algorithm>
#include <cstdio>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main() {
  constexpr long batch = 1, seq = 1024, extra = 16, heads = 4, head_dim = 64;
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);

  tensor q(batch, seq + extra, heads, head_dim), k(q.dimensions()), v(q.dimensions());
  q.setRandom(), k.setRandom(), v.setRandom();
  const xattn::linear_options opt{.causal = true, .feature_map = xattn::feature::elu_plus_one, .normalize = true};

  // Prefill the first `seq` tokens, keeping the state [batch, heads, D', e + 1] (Σ φ(k)ᵀv and Σ φ(k)).
  const Eigen::array<Eigen::Index, 4> at{0, 0, 0, 0}, ext{batch, seq, heads, head_dim};
  const tensor qp = q.slice(at, ext), kp = k.slice(at, ext), vp = v.slice(at, ext);
  tensor out(batch, seq, heads, head_dim), state(batch, heads, head_dim, head_dim + 1);
  xattn::linear_options prefill = opt;
  prefill.final_state = state;
  xattn::linear_attention(device, qp, kp, vp, out, prefill);

  // Then one token at a time: O(D'·e) per head and token (one sequence: each token's rows are
  // contiguous and are mapped in place).
  using row_map = Eigen::TensorMap<const tensor>;
  const long row = heads * head_dim;
  tensor step_out(batch, 1, heads, head_dim);
  for (long t = seq; t < seq + extra; ++t)
    xattn::linear_step(device, row_map(q.data() + t * row, 1, 1, heads, head_dim),
                       row_map(k.data() + t * row, 1, 1, heads, head_dim),
                       row_map(v.data() + t * row, 1, 1, heads, head_dim), step_out, state, opt);

  // Check both against the fp64 reference over the whole sequence.
  tensor ref(batch, seq + extra, heads, head_dim);
  xattn::reference::linear_attention(q, k, v, ref, opt);
  const Eigen::array<Eigen::Index, 4> last{0, seq + extra - 1, 0, 0}, one{batch, 1, heads, head_dim};
  const Eigen::Tensor<float, 0, Eigen::RowMajor> e1 = (out - ref.slice(at, ext)).abs().maximum(),
                                                 e2 = (step_out - ref.slice(last, one)).abs().maximum();
  std::printf("causal linear attention, %ld tokens then %ld steps: max abs error %.3g (prefill), %.3g (last step)\n",
              seq, extra, e1(), e2());
  return e1() <= 1e-4f && e2() <= 1e-4f ? 0 : 1;
}
