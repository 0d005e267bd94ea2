// tests/test_reliability.cpp — behaviours every family shares: device calls made from tasks of the
// same pool (nested and concurrent use), exceptions thrown on pool threads, aliasing between the
// options' inputs and the outputs, option values that the element type cannot hold, empty axes,
// and non-finite inputs (a NaN or Inf in a visible position reaches its row as a non-finite value,
// in float and double alike, and is never turned into a finite number).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <xattn/xattn.hpp>

#include "test_util.hpp"

namespace xattn_test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Fails the whole run (a hang cannot be recovered from) if `body` has not returned within `limit`.
void within(std::chrono::seconds limit, const char* what, const std::function<void()>& body) {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(m);
    if (!cv.wait_for(lock, limit, [&] { return done; })) {
      std::fprintf(stderr, "xattn tests: %s did not finish within %lld s: a hang\n", what,
                   static_cast<long long>(limit.count()));
      std::fflush(stderr);
      std::_Exit(1);
    }
  });
  body();
  {
    std::lock_guard<std::mutex> lock(m);
    done = true;
  }
  cv.notify_all();
  watchdog.join();
}

template <class T>
tensor<T> random_tensor(std::mt19937_64& rng, index b, index s, index h, index d) {
  tensor<T> t(b, s, h, d);
  fill_random(t, rng);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Nested and concurrent use of one pool

TEST(NestedPool, CallsFromTasksOfTheSamePoolAlwaysComplete) {
  // An outer loop over requests on a 4-thread pool whose tasks call the kernels on a device over
  // that same pool: every pool thread may be inside a call while the work it would hand out sits
  // in the queues. 200 calls of each kind from 4 tasks; each result equals the one-thread call.
  constexpr int kThreads = 4, kTasks = 4;
  const int calls = quick() ? 10 : 50;
  std::mt19937_64 rng(case_seed("nested_pool"));
  const tensor<float> q = random_tensor<float>(rng, 1, 300, 2, 32), k = random_tensor<float>(rng, 1, 300, 2, 32),
                      v = random_tensor<float>(rng, 1, 300, 2, 32);
  Eigen::Tensor<float, 5, Eigen::RowMajor> qi(1, 12, 12, 2, 16), ki(1, 12, 12, 2, 16), vi(1, 12, 12, 2, 16);
  fill_random(qi, rng), fill_random(ki, rng), fill_random(vi, rng);
  const std::vector<int> lengths{250};
  const xattn::block_layout layout = xattn::block_layout::dense(300, 300, 64);

  // What each call kind computes, on a device or on the calling thread.
  using call = std::function<void(const Eigen::ThreadPoolDevice*, float*)>;
  auto map = [](float* p, const std::array<index, 4>& d) { return Eigen::TensorMap<tensor<float>>(p, d); };
  const std::array<index, 4> od{1, 300, 2, 32};
  const std::vector<std::pair<const char*, call>> kinds = {
      {"softmax", [&](auto* dev, float* o) {
         auto out = map(o, od);
         dev ? xattn::softmax_attention(*dev, q, k, v, out, {.causal = true})
             : xattn::softmax_attention(q, k, v, out, {.causal = true});
       }},
      {"decode", [&](auto* dev, float* o) {
         auto out = map(o, {1, 1, 2, 32});
         const Eigen::TensorMap<const tensor<float>> q1(q.data(), 1, 1, 2, 32);
         dev ? xattn::softmax_decode(*dev, q1, k, v, out, lengths) : xattn::softmax_decode(q1, k, v, out, lengths);
       }},
      {"window", [&](auto* dev, float* o) {
         auto out = map(o, od);
         dev ? xattn::sliding_window_attention(*dev, q, k, v, out, {.window_left = 70, .causal = true})
             : xattn::sliding_window_attention(q, k, v, out, {.window_left = 70, .causal = true});
       }},
      {"sparse", [&](auto* dev, float* o) {
         auto out = map(o, od);
         dev ? xattn::sparse_attention(*dev, q, k, v, out, layout) : xattn::sparse_attention(q, k, v, out, layout);
       }},
      {"lightning", [&](auto* dev, float* o) {
         auto out = map(o, od);
         dev ? xattn::lightning_attention(*dev, q, k, v, out, {.block_size = 32})
             : xattn::lightning_attention(q, k, v, out, {.block_size = 32});
       }},
      {"linear", [&](auto* dev, float* o) {
         auto out = map(o, od);
         dev ? xattn::linear_attention(*dev, q, k, v, out, {.causal = true, .block_size = 32})
             : xattn::linear_attention(q, k, v, out, {.causal = true, .block_size = 32});
       }},
      {"neighborhood", [&](auto* dev, float* o) {
         Eigen::TensorMap<Eigen::Tensor<float, 5, Eigen::RowMajor>> out(o, 1, 12, 12, 2, 16);
         dev ? xattn::neighborhood_attention_2d(*dev, qi, ki, vi, out, {.kernel_h = 5, .kernel_w = 5})
             : xattn::neighborhood_attention_2d(qi, ki, vi, out, {.kernel_h = 5, .kernel_w = 5});
       }},
  };
  const std::size_t out_size = 300 * 2 * 32;

  Eigen::ThreadPool pool(kThreads);
  Eigen::ThreadPoolDevice dev(&pool, kThreads);
  for (const auto& [name, run] : kinds) {
    SCOPED_TRACE(name);
    std::vector<float> expected(out_size, 0.f);
    run(nullptr, expected.data());
    std::atomic<int> mismatches{0}, finished{0};
    within(std::chrono::seconds(120), name, [&] {
      Eigen::Barrier tasks_done(kTasks);
      for (int t = 0; t < kTasks; ++t)
        pool.Schedule([&] {
          std::vector<float> got(out_size, 0.f);
          for (int c = 0; c < calls; ++c) {
            run(&dev, got.data());
            if (std::memcmp(got.data(), expected.data(), sizeof(float) * out_size) != 0) ++mismatches;
            ++finished;
          }
          tasks_done.Notify();
        });
      tasks_done.Wait();
    });
    EXPECT_EQ(finished.load(), kTasks * calls);
    EXPECT_EQ(mismatches.load(), 0) << "calls from pool tasks differ from the one-thread call";
  }
}

TEST(NestedPool, ConcurrentCallersFromOutsideThePoolComplete) {
  std::mt19937_64 rng(case_seed("concurrent_callers"));
  const tensor<float> q = random_tensor<float>(rng, 2, 200, 4, 32), k = random_tensor<float>(rng, 2, 200, 2, 32),
                      v = random_tensor<float>(rng, 2, 200, 2, 32);
  tensor<float> expected(2, 200, 4, 32);
  xattn::softmax_attention(q, k, v, expected, {.causal = true});
  Eigen::ThreadPool pool(3);
  Eigen::ThreadPoolDevice dev(&pool, 3);
  std::atomic<int> mismatches{0};
  within(std::chrono::seconds(120), "concurrent callers", [&] {
    std::vector<std::thread> callers;
    for (int t = 0; t < 6; ++t)
      callers.emplace_back([&] {
        tensor<float> out(2, 200, 4, 32);
        for (int c = 0; c < (quick() ? 5 : 20); ++c) {
          xattn::softmax_attention(dev, q, k, v, out, {.causal = true});
          if (!bitwise_equal("out", out, expected)) ++mismatches;
        }
      });
    for (auto& c : callers) c.join();
  });
  EXPECT_EQ(mismatches.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// Exceptions on pool threads

struct map_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

TEST(PoolExceptions, AThrowingFeatureMapPropagatesToTheCaller) {
  std::mt19937_64 rng(case_seed("throwing_map"));
  const tensor<float> q = random_tensor<float>(rng, 2, 300, 4, 16), k = random_tensor<float>(rng, 2, 300, 4, 16),
                      v = random_tensor<float>(rng, 2, 300, 4, 16);
  std::atomic<int> rows{0};
  const auto throwing = xattn::feature_map::custom(16, [&](std::span<const float> x, std::span<float> y) {
    if (rows.fetch_add(1) == 500) throw map_failure("feature map failed");
    std::copy(x.begin(), x.end(), y.begin());
  });
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    for (bool causal : {false, true}) {
      rows = 0;
      tensor<float> out(2, 300, 4, 16);
      within(std::chrono::seconds(60), "throwing map", [&] {
        try {
          xattn::linear_attention(device(threads), q, k, v, out,
                                  {.causal = causal, .feature_map = throwing, .block_size = 16});
          ADD_FAILURE() << "the map's exception did not reach the caller";
        } catch (const map_failure& e) {
          EXPECT_STREQ(e.what(), "feature map failed");
        }
      });
    }
  }
  // The pool is still usable afterwards, and a map that does not throw gives the reference.
  tensor<float> out(2, 300, 4, 16), ref(2, 300, 4, 16);
  xattn::linear_attention(device(2), q, k, v, out, {.causal = true});
  xattn::reference::linear_attention(q, k, v, ref, {.causal = true});
  EXPECT_LT(max_abs_diff(out, ref).max, 1e-3);
}

TEST(PoolExceptions, ParallelForStopsHandingOutItemsAndRethrowsTheFirst) {
  for (int threads : {2, 3, 7}) {
    std::atomic<int> ran{0};
    within(std::chrono::seconds(60), "parallel_for", [&] {
      try {
        xattn::detail::parallel_for(device(threads), 10000, [&](index i) {
          ++ran;
          if (i == 3) throw map_failure("item 3");
          std::this_thread::sleep_for(std::chrono::microseconds(20));
        });
        ADD_FAILURE() << "no exception";
      } catch (const map_failure& e) {
        EXPECT_STREQ(e.what(), "item 3");
      }
    });
    EXPECT_LT(ran.load(), 10000) << "items were still handed out after the exception";
  }
}

// ---------------------------------------------------------------------------------------------
// Validation: decode lengths, aliasing, folded option values, top-k

/// Expects `f` to throw xattn::error naming `fn` and `arg`, with `out` unchanged.
template <class F>
void expect_error(const char* fn, const char* arg, const std::vector<float>& out_before, const float* out,
                  const F& f) {
  try {
    f();
    ADD_FAILURE() << "no xattn::error thrown";
  } catch (const xattn::error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::string(fn) + ":"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string(" ") + arg + ":"), std::string::npos) << msg;
  }
  if (out) {
    EXPECT_EQ(std::memcmp(out_before.data(), out, sizeof(float) * out_before.size()), 0) << "out was written";
  }
}

TEST(Validation, DecodeNeedsOneCacheLengthPerBatch) {
  tensor<float> q(2, 1, 4, 8), k(2, 6, 2, 8), v(2, 6, 2, 8), out(2, 1, 4, 8);
  q.setConstant(0.5f), k.setConstant(0.25f), v.setConstant(1.f), out.setConstant(7.f);
  const std::vector<float> before(out.data(), out.data() + out.size());
  for (const std::vector<int>& lengths : {std::vector<int>{}, std::vector<int>{6}}) {
    expect_error("xattn::softmax_decode", "cache_lengths", before, out.data(),
                 [&] { xattn::softmax_decode(q, k, v, out, lengths); });
    expect_error("xattn::softmax_decode", "cache_lengths", before, out.data(),
                 [&] { xattn::softmax_decode(device(2), q, k, v, out, lengths); });
  }
}

TEST(Validation, OptionInputsMayNotOverlapTheOutputs) {
  // q, k, v, out [1, 4, 2, 8]; bias and mask [1, 2, 4, 4] placed inside out's or lse's memory.
  std::vector<float> store(1024, 0.25f);
  float* o = store.data();
  float* l = store.data() + 64;  // lse [1, 2, 4] right after out
  tensor<float> q(1, 4, 2, 8), k(1, 4, 2, 8), v(1, 4, 2, 8);
  q.setConstant(0.5f), k.setConstant(0.25f), v.setConstant(1.f);
  Eigen::TensorMap<tensor<float>> out(o, 1, 4, 2, 8);
  Eigen::TensorMap<tensor<float, 3>> lse(l, 1, 2, 4);
  std::vector<bool> unused;
  bool mask_store[64];
  std::fill(mask_store, mask_store + 64, true);
  const std::vector<float> before(o, o + 64 + 8);
  const auto check = [&](const char* arg, const xattn::softmax_options& opt) {
    SCOPED_TRACE(arg);
    expect_error("xattn::softmax_attention", arg, before, o, [&] { xattn::softmax_attention(q, k, v, out, lse, opt); });
    expect_error("xattn::softmax_attention", arg, before, o,
                 [&] { xattn::softmax_attention(device(2), q, k, v, out, lse, opt); });
    expect_error("xattn::reference::softmax_attention", arg, before, o,
                 [&] { xattn::reference::softmax_attention(q, k, v, out, lse, opt); });
  };
  check("bias", {.bias = Eigen::TensorMap<tensor<float>>(o + 16, 1, 2, 4, 4)});
  check("bias", {.bias = Eigen::TensorMap<tensor<float>>(l - 8, 1, 1, 4, 4)});  // across out and lse
  check("mask", {.mask = Eigen::TensorMap<tensor<bool>>(reinterpret_cast<bool*>(o), 1, 2, 4, 4)});
  check("alibi_slopes", {.alibi_slopes = std::span<const float>(o + 3, 2)});
  check("sink_logits", {.sink_logits = std::span<const float>(l, 2)});
  check("seqlens_q", {.seqlens_q = std::span<const int>(reinterpret_cast<const int*>(l + 1), 1)});
  check("seqlens_k", {.seqlens_k = std::span<const int>(reinterpret_cast<const int*>(o + 9), 1)});
  // The same bias elsewhere is accepted.
  tensor<float> bias(1, 2, 4, 4);
  bias.setConstant(0.f);
  EXPECT_NO_THROW(xattn::softmax_attention(q, k, v, out, lse, {.bias = bias}));
  (void)mask_store;

  // Chunk families: the decay rates inside out.
  std::vector<double> dstore(64, 0.0);
  Eigen::TensorMap<tensor<double>> dout(dstore.data(), 1, 4, 2, 8);
  const tensor<double> qd = q.cast<double>(), kd = k.cast<double>(), vd = v.cast<double>();
  const std::vector<float> none;
  expect_error("xattn::lightning_attention", "decay", none, nullptr, [&] {
    xattn::lightning_attention(qd, kd, vd, dout, {.decay = std::span<const double>(dstore.data() + 5, 2)});
  });
}

TEST(Validation, OptionValuesTheElementTypeCannotHold) {
  tensor<float> q(1, 5, 2, 8), k(1, 5, 2, 8), v(1, 5, 2, 8), out(1, 5, 2, 8);
  q.setConstant(0.01f), k.setConstant(0.01f), v.setConstant(1.f), out.setConstant(7.f);
  const std::vector<float> before(out.data(), out.data() + out.size());
  const std::vector<float> huge_slopes{3e38f, 0.5f}, huge_sinks{0.f, 3e38f}, big_slopes{1e38f, 1e38f};
  const std::vector<std::pair<const char*, xattn::softmax_options>> bad = {
      {"scale", {.scale = 1e38}},
      {"scale", {.scale = 1e300}},
      {"scale", {.scale = 1e38, .softcap = 1e-5}},
      {"softcap", {.softcap = 3e38}},
      {"alibi_slopes", {.alibi_slopes = huge_slopes}},
      {"alibi_slopes", {.alibi_slopes = big_slopes}},  // finite, but slope · log2 e · distance overflows
      {"sink_logits", {.sink_logits = huge_sinks}},
  };
  for (const auto& [arg, opt] : bad) {
    SCOPED_TRACE(arg);
    expect_error("xattn::softmax_attention", arg, before, out.data(), [&] { xattn::softmax_attention(q, k, v, out, opt); });
    xattn::sliding_window_options w{.window_left = 2, .softmax = opt};
    expect_error("xattn::sliding_window_attention", arg, before, out.data(),
                 [&] { xattn::sliding_window_attention(q, k, v, out, w); });
  }
  // double holds them, so the double kernels accept them and agree with the reference.
  const tensor<double> qd = q.cast<double>(), kd = k.cast<double>(), vd = v.cast<double>();
  tensor<double> od(1, 5, 2, 8), rd(1, 5, 2, 8);
  xattn::softmax_attention(qd, kd, vd, od, {.scale = 1e38, .sink_logits = huge_sinks});
  xattn::reference::softmax_attention(qd, kd, vd, rd, {.scale = 1e38, .sink_logits = huge_sinks});
  EXPECT_LT(max_abs_diff(od, rd).max, 1e-12);
  // The chunk families: scale and eps packed as T.
  expect_error("xattn::lightning_attention", "scale", before, out.data(),
               [&] { xattn::lightning_attention(q, k, v, out, {.scale = 1e39}); });
  expect_error("xattn::linear_attention", "eps", before, out.data(),
               [&] { xattn::linear_attention(q, k, v, out, {.normalize = true, .eps = 1e39}); });
}

TEST(Validation, TopKRejectsBadScaleAndSinkBlocks) {
  tensor<float> q(1, 256, 2, 16), k(1, 256, 2, 16);
  std::mt19937_64 rng(case_seed("top_k_validation"));
  fill_random(q, rng), fill_random(k, rng);
  const std::vector<float> none;
  for (double s : {0.0, -1.0, kNaN, kInf})
    expect_error("xattn::block_layout::top_k", "scale", none, nullptr,
                 [&] { (void)xattn::block_layout::top_k(q, k, {.keep = 2, .scale = s}); });
  expect_error("xattn::block_layout::top_k", "sink_blocks", none, nullptr,
               [&] { (void)xattn::block_layout::top_k(q, k, {.keep = 2, .sink_blocks = -1}); });
}

TEST(Validation, TopKRanksNaNBlocksLastAndStaysDeterministic) {
  tensor<float> q(1, 512, 1, 16), k(1, 512, 1, 16);
  std::mt19937_64 rng(case_seed("top_k_nan"));
  fill_random(q, rng), fill_random(k, rng);
  for (index s = 128; s < 192; ++s) k(0, s, 0, 3) = float(kNaN);  // key block 2 pools to NaN
  for (const xattn::top_k_options& o : {xattn::top_k_options{.keep = 3, .sink_blocks = 0},
                                        xattn::top_k_options{.mass = 0.5, .sink_blocks = 0}}) {
    const auto a = xattn::block_layout::top_k(q, k, o), b = xattn::block_layout::top_k(q, k, o);
    ASSERT_EQ(a.nnz(), b.nnz());
    for (index qb = 0; qb < a.q_blocks(); ++qb) {
      const auto ra = a.row(0, qb), rb = b.row(0, qb);
      EXPECT_TRUE(std::equal(ra.begin(), ra.end(), rb.begin(), rb.end())) << "query block " << qb;
      // block 2 is chosen only as its own diagonal block (qb 2): it never wins on its NaN score
      if (qb != 2) {
        EXPECT_EQ(std::count(ra.begin(), ra.end(), 2), 0) << "query block " << qb;
      }
    }
  }
  // All of q NaN: every score NaN; the layout still builds (diagonal and sinks only, keep = 1).
  q.setConstant(float(kNaN));
  const auto c = xattn::block_layout::top_k(q, k, {.keep = 1, .sink_blocks = 1});
  EXPECT_GE(c.nnz(), c.q_blocks());
}

// ---------------------------------------------------------------------------------------------
// Empty axes

TEST(EmptyAxes, BatchAndQueriesOfLengthZeroGiveAnEmptyResult) {
  for (auto [b, nq, nk] : {std::tuple{0, 7, 9}, std::tuple{2, 0, 9}, std::tuple{0, 0, 0}}) {
    SCOPED_TRACE("b " + std::to_string(b) + " nq " + std::to_string(nq) + " nk " + std::to_string(nk));
    tensor<float> q(b, nq, 4, 8), k(b, nk, 2, 8), v(b, nk, 2, 8), out(b, nq, 4, 8);
    tensor<float, 3> lse(b, 4, nq);
    EXPECT_NO_THROW(xattn::softmax_attention(q, k, v, out, lse, {.causal = true}));
    EXPECT_NO_THROW(xattn::softmax_attention(device(2), q, k, v, out, lse));
    EXPECT_NO_THROW(xattn::sliding_window_attention(device(2), q, k, v, out, {.window_left = 3}));
    EXPECT_NO_THROW(xattn::reference::softmax_attention(q, k, v, out, lse));
    if (nq == nk) {
      EXPECT_NO_THROW(xattn::lightning_attention(device(2), q, k, v, out));
    }
    EXPECT_NO_THROW(xattn::linear_attention(device(2), q, k, v, out));
  }
  Eigen::Tensor<float, 5, Eigen::RowMajor> qi(1, 0, 8, 2, 8), ki(1, 0, 8, 2, 8), vi(1, 0, 8, 2, 8), oi(1, 0, 8, 2, 8);
  EXPECT_NO_THROW(xattn::neighborhood_attention_2d(device(2), qi, ki, vi, oi, {.kernel_h = 3, .kernel_w = 3}));
}

TEST(EmptyAxes, NoKeysGiveZerosAndTheSinkOrMinusInfinity) {
  tensor<float> q(2, 70, 4, 8), k(2, 0, 2, 8), v(2, 0, 2, 8), out(2, 70, 4, 8);
  tensor<float, 3> lse(2, 4, 70);
  std::mt19937_64 rng(case_seed("no_keys"));
  fill_random(q, rng);
  const std::vector<float> sinks{0.5f, -1.f, 2.f, 0.f};
  for (bool with_sinks : {false, true}) {
    out.setConstant(7.f), lse.setConstant(7.f);
    xattn::softmax_options opt;
    if (with_sinks) opt.sink_logits = sinks;
    xattn::softmax_attention(device(2), q, k, v, out, lse, opt);
    for (index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 0.f);
    for (index b = 0; b < 2; ++b)
      for (index h = 0; h < 4; ++h)
        for (index i = 0; i < 70; ++i)
          ASSERT_EQ(lse(b, h, i), with_sinks ? sinks[std::size_t(h)] : -std::numeric_limits<float>::infinity());
  }
  // Linear attention over no keys: the initial state alone.
  tensor<float> s0(2, 4, 8, 8), s1(2, 4, 8, 8), r0(2, 70, 4, 8);
  fill_random(s0, rng);
  xattn::linear_attention(device(2), q, k, v, out, {.initial_state = s0, .final_state = s1});
  xattn::reference::linear_attention(q, k, v, r0, {.initial_state = s0});
  EXPECT_LT(max_abs_diff(out, r0).max, 1e-4);
  EXPECT_TRUE(bitwise_equal("final_state", s1, s0));
}

TEST(EmptyAxes, AZeroLengthSegmentPassesItsStateOn) {
  tensor<float> q(2, 0, 4, 8), out(2, 0, 4, 8), s0(2, 4, 8, 8), s1(2, 4, 8, 8);
  std::mt19937_64 rng(case_seed("zero_length_segment"));
  fill_random(s0, rng);
  s1.setConstant(7.f);
  xattn::lightning_attention(device(2), q, q, q, out, {.initial_state = s0, .final_state = s1});
  EXPECT_TRUE(bitwise_equal("final_state", s1, s0));
  s1.setConstant(7.f);
  xattn::lightning_attention(q, q, q, out, {.final_state = s1});
  for (index i = 0; i < s1.size(); ++i) ASSERT_EQ(s1.data()[i], 0.f);
}

TEST(EmptyAxes, HeadsAndHeadDimsOfZeroAreRejectedAsEmptyAxes) {
  const std::vector<float> none;
  for (int which = 0; which < 3; ++which) {
    tensor<float> q(1, 4, which == 0 ? 0 : 2, which == 1 ? 0 : 8), k(1, 4, which == 0 ? 0 : 2, which == 1 ? 0 : 8),
        v(1, 4, which == 0 ? 0 : 2, which == 2 ? 0 : 8), out(1, 4, which == 0 ? 0 : 2, which == 2 ? 0 : 8);
    for (auto call : {std::function<void()>([&] { xattn::softmax_attention(q, k, v, out); }),
                      std::function<void()>([&] { xattn::lightning_attention(q, k, v, out); })}) {
      try {
        call();
        ADD_FAILURE() << "no error for an empty head axis";
      } catch (const xattn::error& e) {
        EXPECT_NE(std::string(e.what()).find("empty axis"), std::string::npos) << e.what();
      }
    }
  }
  tensor<float> q(1, 0, 2, 8), out(1, 0, 2, 8);
  try {
    xattn::sparse_attention(q, q, q, out, xattn::block_layout::dense(64, 64, 64));
    ADD_FAILURE() << "no error for a sparse call without queries";
  } catch (const xattn::error& e) {
    EXPECT_NE(std::string(e.what()).find("empty axis"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Non-finite inputs

template <class T>
struct nan_case {
  tensor<T> q, k, v, out;
  tensor<T, 3> lse;
};

/// A causal call over 300 keys (several key tiles) with a NaN (or ±Inf) planted in one visible
/// position; returns the output and LSE.
template <class T>
nan_case<T> run_with(const char* where, double value, int threads) {
  nan_case<T> c{tensor<T>(1, 300, 2, 16), tensor<T>(1, 300, 2, 16), tensor<T>(1, 300, 2, 16), tensor<T>(1, 300, 2, 16),
                tensor<T, 3>(1, 2, 300)};
  std::mt19937_64 rng(case_seed("nan_inputs"));
  tensor<double> q(1, 300, 2, 16), k(1, 300, 2, 16), v(1, 300, 2, 16);
  fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
  c.q = q.cast<T>(), c.k = k.cast<T>(), c.v = v.cast<T>();
  const std::string w = where;
  if (w == "q") c.q(0, 250, 1, 5) = T(value);       // query 250 of head 1
  if (w == "k") c.k(0, 200, 0, 3) = T(value);       // key 200 (in the fourth 64-key tile)
  if (w == "v") c.v(0, 200, 0, 3) = T(value);
  xattn::softmax_attention(device(threads), c.q, c.k, c.v, c.out, c.lse, {.causal = true});
  return c;
}

/// Row i of head h: are all of its outputs and its LSE finite?
template <class T>
bool row_finite(const nan_case<T>& c, index i, index h) {
  for (index e = 0; e < 16; ++e)
    if (!std::isfinite(double(c.out(0, i, h, e)))) return false;
  return std::isfinite(double(c.lse(0, h, i)));
}

TEST(NonFinite, ANaNScoreReachesItsRowInFloatAndDouble) {
  for (int threads : {1, 2}) {
    const auto f = run_with<float>("q", kNaN, threads);
    const auto d = run_with<double>("q", kNaN, threads);
    for (index e = 0; e < 16; ++e) {
      EXPECT_TRUE(std::isnan(f.out(0, 250, 1, e))) << "float, element " << e;
      EXPECT_TRUE(std::isnan(d.out(0, 250, 1, e))) << "double, element " << e;
    }
    EXPECT_TRUE(std::isnan(f.lse(0, 1, 250)));
    EXPECT_TRUE(std::isnan(d.lse(0, 1, 250)));
    for (index i = 0; i < 300; ++i)
      for (index h = 0; h < 2; ++h)
        if (!(i == 250 && h == 1)) {
          ASSERT_TRUE(row_finite(f, i, h) && row_finite(d, i, h)) << "row " << i << " head " << h;
        }
  }
}

TEST(NonFinite, ANaNKeyReachesEveryRowThatSeesItAndNoRowThatDoesNot) {
  for (double value : {kNaN, kInf, -kInf}) {
    SCOPED_TRACE(value);
    const auto f = run_with<float>("k", value, 2);
    const auto d = run_with<double>("k", value, 2);
    for (index i = 0; i < 300; ++i) {
      // Queries 0..199 cannot see key 200 (causal): its scores are masked. An infinite key gives
      // scores of +inf (NaN rows) or −inf (a weight of 0) by the sign of q; a NaN key NaN rows.
      if (i < 200) {
        EXPECT_TRUE(row_finite(f, i, 0) && row_finite(d, i, 0)) << "row " << i;
      } else {
        EXPECT_EQ(row_finite(f, i, 0), row_finite(d, i, 0)) << "float and double differ at row " << i;
        if (std::isnan(value)) {
          EXPECT_FALSE(row_finite(f, i, 0)) << "row " << i;
        }
      }
      EXPECT_TRUE(row_finite(f, i, 1) && row_finite(d, i, 1)) << "head 1 row " << i;
    }
  }
}

TEST(NonFinite, ANonFiniteValueReachesTheRowsThatSeeIt) {
  for (double value : {kNaN, kInf}) {
    SCOPED_TRACE(value);
    const auto f = run_with<float>("v", value, 2);
    const auto d = run_with<double>("v", value, 2);
    for (index i = 200; i < 300; ++i) {
      EXPECT_FALSE(std::isfinite(f.out(0, i, 0, 3))) << "float row " << i;
      EXPECT_FALSE(std::isfinite(d.out(0, i, 0, 3))) << "double row " << i;
    }
    // Rows in other key tiles than key 200's never see it.
    for (index i = 0; i < 192; ++i) EXPECT_TRUE(row_finite(f, i, 0) && row_finite(d, i, 0)) << "row " << i;
  }
}

TEST(NonFinite, DecodeOverSplitKeysPropagatesANaN) {
  tensor<float> q(1, 1, 4, 64), k(1, 4096, 1, 64), v(1, 4096, 1, 64), out(1, 1, 4, 64);
  std::mt19937_64 rng(case_seed("decode_nan"));
  fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
  k(0, 3000, 0, 7) = float(kNaN);
  const std::vector<int> lengths{4000};
  xattn::softmax_decode(device(2), q, k, v, out, lengths);
  for (index h = 0; h < 4; ++h) EXPECT_TRUE(std::isnan(out(0, 0, h, 0))) << "head " << h;
  const std::vector<int> shorter{2000};  // key 3000 is padding now: never read
  xattn::softmax_decode(device(2), q, k, v, out, shorter);
  for (index i = 0; i < out.size(); ++i) ASSERT_TRUE(std::isfinite(out.data()[i]));
}

}  // namespace
}  // namespace xattn_test
