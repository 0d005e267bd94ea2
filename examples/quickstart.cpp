// examples/quickstart.cpp — one call of xattn::softmax_attention, checked against the fp64
// reference. Build: cmake -S . -B build && cmake --build build --target xattn_example_quickstart
#include <cstdio>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>  // xattn::reference: the naive fp64 oracle
#include <xattn/xattn.hpp>      // every family of xattn

int main() {
  // Tensors are row-major, [batch, seq, heads, head_dim]: FlashAttention's order.
  constexpr int batch = 2, seq = 256, q_heads = 8, kv_heads = 2, head_dim = 64;
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  tensor q(batch, seq, q_heads, head_dim);
  tensor k(batch, seq, kv_heads, head_dim);  // fewer K/V heads than Q heads: grouped-query attention
  tensor v(batch, seq, kv_heads, head_dim);
  q.setRandom();
  k.setRandom();
  v.setRandom();

  // out = softmax(QKᵀ/√d + causal mask)·V, computed tile by tile on the calling thread.
  tensor out(batch, seq, q_heads, head_dim);
  xattn::softmax_attention(q, k, v, out, {.causal = true});

  // The same in double precision, materialising every score: slow, obviously right.
  tensor ref(batch, seq, q_heads, head_dim);
  xattn::reference::softmax_attention(q, k, v, ref, {.causal = true});

  const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (out - ref).abs().maximum();
  std::printf("softmax_attention [%d, %d, %d, %d], causal: max abs error vs reference %.3g\n", batch, seq,
              q_heads, head_dim, err());
  return err() <= 1e-4f ? 0 : 1;
}
