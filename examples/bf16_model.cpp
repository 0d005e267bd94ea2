// examples/bf16_model.cpp — a bf16 model's attention: bf16 q, k, v in, bf16 out, no fp32 copy; a
// decode step over an f16 KV cache. Prints which units ran the products (AMX tiles on Intel Xeons
// that have them, the float kernels elsewhere) and checks both calls against the fp64 reference
// on the same rounded values.
#define EIGEN_USE_THREADS
#include <cstdio>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main() {
  constexpr int seq = 512, q_heads = 8, kv_heads = 2, head_dim = 128;
  using bf16 = Eigen::bfloat16;
  using f32 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  using b16 = Eigen::Tensor<bf16, 4, Eigen::RowMajor>;
  f32 qf(1, seq, q_heads, head_dim), kf(1, seq, kv_heads, head_dim), vf(1, seq, kv_heads, head_dim);
  qf.setRandom(), kf.setRandom(), vf.setRandom();
  const b16 q = qf.cast<bf16>(), k = kf.cast<bf16>(), v = vf.cast<bf16>();  // the model's tensors

  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);

  // Prefill: bf16 in, bf16 out.
  b16 out(1, seq, q_heads, head_dim);
  xattn::softmax_attention(device, q, k, v, out, {.causal = true});
  std::printf("prefill products on %s\n", xattn::path_name(xattn::bf16_product_path()));

  // The reference reads double: the same rounded values, widened.
  using f64 = Eigen::Tensor<double, 4, Eigen::RowMajor>;
  const f64 qd = q.cast<double>(), kd = k.cast<double>(), vd = v.cast<double>();
  f64 ref(1, seq, q_heads, head_dim);
  xattn::reference::softmax_attention(qd, kd, vd, ref, {.causal = true});
  const Eigen::Tensor<double, 0, Eigen::RowMajor> err = (out.cast<double>() - ref).abs().maximum();
  // bf16 keeps 8 significant bits: out's own rounding is up to 2^-9 relative, and on AMX P is
  // rounded to bf16 before P·V as well.
  std::printf("prefill bf16: max abs error vs reference %.3g\n", err());

  // Decode: one new token's query (float) against an f16 cache, without converting the cache.
  using f16 = Eigen::Tensor<Eigen::half, 4, Eigen::RowMajor>;
  const f16 k_cache = kf.cast<Eigen::half>(), v_cache = vf.cast<Eigen::half>();
  f32 q1(1, 1, q_heads, head_dim), o1(1, 1, q_heads, head_dim);
  q1.setRandom();
  const int lengths[1] = {seq};
  xattn::softmax_decode(device, q1, k_cache, v_cache, o1, lengths);
  const f64 q1d = q1.cast<double>(), kcd = k_cache.cast<double>(), vcd = v_cache.cast<double>();
  f64 ref1(1, 1, q_heads, head_dim);
  xattn::reference::softmax_attention(q1d, kcd, vcd, ref1);  // every cached key is valid
  const Eigen::Tensor<double, 0, Eigen::RowMajor> err1 = (o1.cast<double>() - ref1).abs().maximum();
  std::printf("decode over an f16 cache: max abs error vs reference %.3g\n", err1());
  return err() <= 1e-2 && err1() <= 1e-5 ? 0 : 1;
}
