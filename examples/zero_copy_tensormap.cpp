// examples/zero_copy_tensormap.cpp — xattn over memory it does not own: a framework hands over raw
// float buffers in [batch, seq, heads, head_dim] order (or [batch, heads, seq, head_dim] with
// .layout = xattn::layout::bhsd); Eigen::TensorMap wraps them with no copy, const for the inputs.
// Here: grouped-query causal attention, 32 query heads over 8 K/V heads, on a thread pool.
#define EIGEN_USE_THREADS  // before Eigen's Tensor header: enables Eigen::ThreadPoolDevice
#include <cstdio>
#include <random>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <vector>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main() {
  constexpr long batch = 1, seq = 512, q_heads = 32, kv_heads = 8, head_dim = 64;
  // The caller's buffers (a framework's tensors, a memory-mapped cache, ...).
  std::vector<float> q_buf(batch * seq * q_heads * head_dim), k_buf(batch * seq * kv_heads * head_dim),
      v_buf(k_buf.size()), out_buf(q_buf.size()), lse_buf(batch * q_heads * seq);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (auto* b : {&q_buf, &k_buf, &v_buf})
    for (float& x : *b) x = normal(rng);

  using in_map = Eigen::TensorMap<const Eigen::Tensor<float, 4, Eigen::RowMajor>>;
  using out_map = Eigen::TensorMap<Eigen::Tensor<float, 4, Eigen::RowMajor>>;
  const in_map q(q_buf.data(), batch, seq, q_heads, head_dim), k(k_buf.data(), batch, seq, kv_heads, head_dim),
      v(v_buf.data(), batch, seq, kv_heads, head_dim);
  out_map out(out_buf.data(), batch, seq, q_heads, head_dim);
  Eigen::TensorMap<Eigen::Tensor<float, 3, Eigen::RowMajor>> lse(lse_buf.data(), batch, q_heads, seq);

  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);
  xattn::softmax_attention(device, q, k, v, out, lse, {.causal = true});  // writes out_buf and lse_buf

  Eigen::Tensor<float, 4, Eigen::RowMajor> ref(batch, seq, q_heads, head_dim);
  xattn::reference::softmax_attention(q, k, v, ref, {.causal = true});
  const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (out - ref).abs().maximum();
  std::printf("GQA causal attention over caller memory (%ld q heads, %ld k/v heads, %d threads): max abs error %.3g\n",
              q_heads, kv_heads, threads, err());
  return err() <= 1e-4f ? 0 : 1;
}
