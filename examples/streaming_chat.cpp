// examples/streaming_chat.cpp — a long generation in bounded memory (StreamingLLM): the KV cache
// keeps 4 attention-sink tokens and a ring of the most recent `window` tokens, whatever the number
// of tokens generated. Each step writes the new token's key and value at streaming_slot(t) and
// attends its query with xattn::streaming_decode. At the end the last token's output is checked
// against windowed prefill over the whole history (sliding_window_attention with the same sinks and
// window), which needs every token — the memory the ring saves.
//
//   xattn_example_streaming_chat [tokens [window]]     defaults: 2000 tokens, window 256
#define EIGEN_USE_THREADS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/xattn.hpp>

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 2000;
  const int window = argc > 2 ? std::atoi(argv[2]) : 256;
  constexpr int sinks = 4, q_heads = 8, kv_heads = 2, head_dim = 64;
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  const xattn::streaming_options opt{.sinks = sinks, .window = window};

  // The whole history is kept here only for the final check; the model itself needs only the cache.
  tensor q_all(1, tokens, q_heads, head_dim), k_all(1, tokens, kv_heads, head_dim), v_all(1, tokens, kv_heads, head_dim);
  q_all.setRandom(), k_all.setRandom(), v_all.setRandom();

  tensor k_cache(1, sinks + window, kv_heads, head_dim), v_cache(1, sinks + window, kv_heads, head_dim);
  tensor q(1, 1, q_heads, head_dim), out(1, 1, q_heads, head_dim);
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);

  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < tokens; ++t) {
    // In a model: q, k, v projected from token t's hidden state.
    const Eigen::array<Eigen::Index, 4> row{1, 1, kv_heads, head_dim}, qrow{1, 1, q_heads, head_dim};
    const Eigen::array<Eigen::Index, 4> slot{0, xattn::streaming_slot(t, opt), 0, 0}, at{0, t, 0, 0};
    k_cache.slice(slot, row) = k_all.slice(at, row);
    v_cache.slice(slot, row) = v_all.slice(at, row);
    q = q_all.slice(at, qrow);
    const int seen[] = {t + 1};
    xattn::streaming_decode(device, q, k_cache, v_cache, out, seen, opt);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%d tokens, cache of %d sinks + %d recent (%.1f MiB instead of %.1f): %.0f tokens/s\n", tokens, sinks,
              window, 2.0 * (sinks + window) * kv_heads * head_dim * 4 / (1 << 20),
              2.0 * tokens * kv_heads * head_dim * 4 / (1 << 20), tokens / seconds);

  tensor full(q_all.dimensions());
  xattn::sliding_window_attention(device, q_all, k_all, v_all, full,
                                  {.window_left = window - 1, .causal = true, .sinks = sinks});
  const Eigen::array<Eigen::Index, 4> last{0, tokens - 1, 0, 0}, qrow{1, 1, q_heads, head_dim};
  const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (out - full.slice(last, qrow)).abs().maximum();
  std::printf("last token vs windowed prefill over the whole history: max abs difference %.3g\n", err());
  return err() <= 1e-5f ? 0 : 1;
}
