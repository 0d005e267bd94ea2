// examples/decode_loop.cpp — token-by-token generation against a KV cache: each step appends the
// new token's key and value rows to the cache and attends its query to every cached token with
// xattn::softmax_decode, on the threads of an Eigen::ThreadPoolDevice.
#define EIGEN_USE_THREADS  // before Eigen's Tensor header: enables Eigen::ThreadPoolDevice
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main() {
  constexpr int capacity = 4096, prompt = 1024, steps = 64;  // cache rows, tokens already cached, new tokens
  constexpr int q_heads = 8, kv_heads = 2, head_dim = 128;   // grouped-query attention: 4 q heads per kv head
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;

  // The cache is allocated once at full capacity; only its first `length` rows are valid.
  tensor k_cache(1, capacity, kv_heads, head_dim), v_cache(1, capacity, kv_heads, head_dim);
  k_cache.setRandom();  // stands in for the prompt's keys and values (prefill)
  v_cache.setRandom();
  int length = prompt;

  tensor q(1, 1, q_heads, head_dim), out(1, 1, q_heads, head_dim);
  tensor k_new(1, 1, kv_heads, head_dim), v_new(1, 1, kv_heads, head_dim);

  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);

  const auto start = std::chrono::steady_clock::now();
  for (int step = 0; step < steps; ++step) {
    // In a model these come from projecting the current token's hidden state.
    q.setRandom();
    k_new.setRandom();
    v_new.setRandom();

    // Append the new token's key and value rows: cache[0, length, :, :] = new.
    const Eigen::array<Eigen::Index, 4> at{0, length, 0, 0}, row{1, 1, kv_heads, head_dim};
    k_cache.slice(at, row) = k_new;
    v_cache.slice(at, row) = v_new;
    ++length;

    // Attend to the valid prefix: one valid length per batch entry.
    const int lengths[] = {length};
    xattn::softmax_decode(device, q, k_cache, v_cache, out, lengths);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%d decode steps at %d..%d cached tokens, %d threads: %.0f tokens/s\n", steps, prompt + 1,
              length, threads, steps / seconds);

  // Check the last step: the reference attends to the valid prefix only (the same via seqlens_k).
  tensor ref(1, 1, q_heads, head_dim);
  const int lengths[] = {length};
  xattn::reference::softmax_attention(q, k_cache, v_cache, ref, {.seqlens_k = lengths});
  const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (out - ref).abs().maximum();
  std::printf("last step: max abs error vs reference %.3g\n", err());
  return err() <= 1e-4f ? 0 : 1;
}
