// examples/lightning_decode.cpp — generation with lightning attention: the prompt is prefilled in
// one call that leaves the state ([batch, heads, d, e]), then each new token is one
// xattn::lightning_step — the recurrent form, O(d·e) per head and token whatever the length so
// far, with no KV cache at all. Each step reads its token's rows through Eigen::TensorMap, with no
// copy (one sequence here: with several, the rows of a token are not contiguous in [batch, seq,
// heads, dim], so keep each new token's q, k, v in a [batch, 1, heads, dim] buffer instead).
#define EIGEN_USE_THREADS  // before Eigen's Tensor header: enables Eigen::ThreadPoolDevice
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/xattn.hpp>

int main() {
  constexpr int prompt = 1024, steps = 128;             // tokens prefilled, tokens generated
  constexpr int batch = 1, heads = 8, head_dim = 128;   // 8 query heads, each with its own decay
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;

  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);
  const std::vector<double> decay = xattn::lightning_slopes(heads);  // the official kernel's slopes

  // The whole sequence, kept here only to check the result at the end; a model makes each
  // token's q, k, v from its hidden state as it goes.
  tensor q(batch, prompt + steps, heads, head_dim), k(q.dimensions()), v(q.dimensions());
  q.setRandom(), k.setRandom(), v.setRandom();
  q = q - 0.5f, k = k - 0.5f, v = v - 0.5f;
  auto rows = [](const tensor& x, long first, long n) {
    const Eigen::array<Eigen::Index, 4> at{0, first, 0, 0}, ext{x.dimension(0), n, x.dimension(2), x.dimension(3)};
    return tensor(x.slice(at, ext));
  };

  // Prefill: the prompt in one call, keeping the state after its last token.
  tensor state(batch, heads, head_dim, head_dim);
  tensor prefill_out(batch, prompt, heads, head_dim);
  xattn::lightning_attention(device, rows(q, 0, prompt), rows(k, 0, prompt), rows(v, 0, prompt), prefill_out,
                             {.decay = decay, .final_state = state});

  // Decode: one token at a time; the state is read and updated in place. Token t's rows, mapped
  // where they are: [1, 1, heads, head_dim] at offset t·heads·head_dim.
  using row_map = Eigen::TensorMap<const tensor>;
  const long row = long(heads) * head_dim;
  tensor out(batch, 1, heads, head_dim);
  const auto start = std::chrono::steady_clock::now();
  for (int t = prompt; t < prompt + steps; ++t)
    xattn::lightning_step(device, row_map(q.data() + t * row, 1, 1, heads, head_dim),
                          row_map(k.data() + t * row, 1, 1, heads, head_dim),
                          row_map(v.data() + t * row, 1, 1, heads, head_dim), out, state, {.decay = decay});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%d decode steps after a %d-token prompt, batch %d, %d heads, %d threads: %.0f tokens/s\n", steps,
              prompt, batch, heads, threads, batch * steps / seconds);

  // Check: the last step's output equals lightning attention over the whole sequence.
  tensor all(batch, prompt + steps, heads, head_dim);
  xattn::lightning_attention(device, q, k, v, all, {.decay = decay});
  const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (out - rows(all, prompt + steps - 1, 1)).abs().maximum();
  std::printf("last step vs one call over all %d tokens: max abs difference %.3g\n", prompt + steps, err());
  return err() <= 1e-3f ? 0 : 1;
}
