// tests/mpi/test_mpi.cpp — xattn/mpi.hpp under mpirun: every rank makes the same whole-sequence
// inputs from the same seed, runs the split call on its share, and checks its share against the
// single-process kernel on the whole sequence and against the fp64 reference (the accuracy rule,
// with the single-process kernel as the float baseline). Every rank runs every assertion; only
// rank 0 prints. Bad input must throw xattn::error on every rank.
#include <mpi.h>

#include "../test_util.hpp"
#include <xattn/lightning.hpp>
#include <xattn/linear.hpp>
#include <xattn/mpi.hpp>
#include <xattn/reference.hpp>

namespace {

using namespace xattn_test;
using index = std::ptrdiff_t;
using xattn::layout;

int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}
int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

/// Uneven contiguous slices of n tokens over p ranks: rank r gets about (r + 1) shares, at least 1.
std::vector<index> uneven_lengths(index n, int p) {
  std::vector<index> len(static_cast<std::size_t>(p));
  const index shares = index(p) * (p + 1) / 2;
  index used = 0;
  for (int r = 0; r < p; ++r) used += len[std::size_t(r)] = std::max<index>(1, n * (r + 1) / shares);
  len.back() += n - used;
  return len;
}
std::vector<index> even_lengths(index n, int p) {
  std::vector<index> len(static_cast<std::size_t>(p), n / p);
  len.back() += n % p;
  return len;
}
index start_of(const std::vector<index>& len, int r) {
  index s = 0;
  for (int x = 0; x < r; ++x) s += len[std::size_t(x)];
  return s;
}

/// Rows [from, from + n) of a [batch, seq, heads, dim] tensor in order l, as a new tensor.
template <class X>
tensor<typename X::Scalar> rows(const X& x, layout l, index from, index n) {
  const index b = x.dimension(0), h = heads_of(x, l), d = x.dimension(3);
  auto y = make_tensor<typename X::Scalar>(l, b, n, h, d);
  for (index i = 0; i < b; ++i)
    for (index s = 0; s < n; ++s)
      for (index j = 0; j < h; ++j)
        for (index c = 0; c < d; ++c) at(y, l, i, s, j, c) = at(const_cast<X&>(x), l, i, from + s, j, c);
  return y;
}

/// Rows [from, from + n) of an lse [batch, heads, seq].
template <class X>
tensor<typename X::Scalar, 3> lse_rows(const X& x, index from, index n) {
  tensor<typename X::Scalar, 3> y(x.dimension(0), x.dimension(1), n);
  for (index b = 0; b < x.dimension(0); ++b)
    for (index h = 0; h < x.dimension(1); ++h)
      for (index s = 0; s < n; ++s) y(b, h, s) = x(b, h, from + s);
  return y;
}

double max_abs(const auto& t) {
  double m = 0;
  for (index i = 0; i < t.size(); ++i) m = std::max(m, std::abs(double(t.data()[i])));
  return m;
}
/// eps of the rule for sums of many terms: a floor plus a few ulps of the largest output.
double sum_eps(double largest) { return 1e-5 + 8 * std::numeric_limits<float>::epsilon() * largest; }

// ---------------------------------------------------------------------------------------------
// Lightning and causal linear attention (LASP-2)

struct chunk_case {
  std::string name;
  index batch, n, hq, hkv, d, e;
  layout l = layout::bshd;
  bool decay = true;         // the official slopes; false = no decay
  bool states = false;       // initial_state on rank 0, final_state on every rank
  bool even = false;         // equal slices (multiples of the block when n allows)
  int threads = 0;           // 0 = serial
  bool linear = false;       // causal linear attention instead of lightning
  bool normalize = false;    // linear only
  xattn::feature feature = xattn::feature::identity;
};
void PrintTo(const chunk_case& c, std::ostream* os) { *os << c.name; }

class Chunk : public ::testing::TestWithParam<chunk_case> {};

TEST_P(Chunk, MatchesSingleProcessAndReference) {
  const chunk_case& c = GetParam();
  SCOPED_TRACE(seed_note(c.name));
  const int p = world_size(), rank = world_rank();
  if (c.n < p) GTEST_SKIP() << "fewer tokens than ranks";
  std::mt19937_64 rng(case_seed(c.name));
  auto q = make_tensor<float>(c.l, c.batch, c.n, c.hq, c.d), k = make_tensor<float>(c.l, c.batch, c.n, c.hkv, c.d);
  auto v = make_tensor<float>(c.l, c.batch, c.n, c.hkv, c.e);
  fill_random(q, rng, dist::uniform, 0.5), fill_random(k, rng, dist::uniform, 0.5), fill_random(v, rng);
  const index df = xattn::feature_map(c.feature).dim(c.d), cols = c.e + (c.normalize ? 1 : 0);
  tensor<float> s0(c.batch, c.hq, df, cols);
  fill_random(s0, rng, dist::uniform, 0.5);
  if (c.normalize) s0 = s0.abs();  // Σφ(k) of a past with positive features
  const std::vector<double> decay = c.decay ? xattn::lightning_slopes(c.hq) : std::vector<double>{};

  // The single-process call on the whole sequence, and the fp64 reference.
  auto whole = make_tensor<float>(c.l, c.batch, c.n, c.hq, c.e);
  tensor<float> whole_state(c.batch, c.hq, df, cols);
  auto ref = make_tensor<double>(c.l, c.batch, c.n, c.hq, c.e);
  tensor<double> ref_state(c.batch, c.hq, df, cols);
  const tensor<double> qd = cast_to<double>(q), kd = cast_to<double>(k), vd = cast_to<double>(v), s0d = cast_to<double>(s0);
  xattn::lightning_options lo{.decay = decay, .layout = c.l};
  xattn::linear_options li{.causal = true, .feature_map = c.feature, .normalize = c.normalize, .layout = c.l};
  if (c.states) lo.initial_state = s0, li.initial_state = s0;
  if (c.linear) {
    xattn::linear_options o = li;
    o.final_state = whole_state;
    xattn::linear_attention(q, k, v, whole, o);
    xattn::linear_options r = li;
    if (c.states) r.initial_state = s0d;
    r.final_state = ref_state;
    xattn::reference::linear_attention(qd, kd, vd, ref, r);
  } else {
    xattn::lightning_options o = lo;
    o.final_state = whole_state;
    xattn::lightning_attention(q, k, v, whole, o);
    xattn::lightning_options r = lo;
    if (c.states) r.initial_state = s0d;
    r.final_state = ref_state;
    xattn::reference::lightning_attention(qd, kd, vd, ref, r);
  }

  // This rank's share, run twice (the answer must not change between runs).
  const std::vector<index> len = c.even ? even_lengths(c.n, p) : uneven_lengths(c.n, p);
  const index from = start_of(len, rank), n = len[std::size_t(rank)];
  const auto ql = rows(q, c.l, from, n), kl = rows(k, c.l, from, n), vl = rows(v, c.l, from, n);
  tensor<float> out[2] = {make_tensor<float>(c.l, c.batch, n, c.hq, c.e), make_tensor<float>(c.l, c.batch, n, c.hq, c.e)};
  tensor<float> state[2] = {tensor<float>(c.batch, c.hq, df, cols), tensor<float>(c.batch, c.hq, df, cols)};
  for (int run = 0; run < 2; ++run) {
    const xattn::mpi::sequence_options so{.total_length = c.n};
    if (c.linear) {
      xattn::linear_options o = li;
      if (rank != 0) o.initial_state = {};
      if (c.states) o.final_state = state[run];
      if (c.threads) xattn::mpi::linear_attention(MPI_COMM_WORLD, device(c.threads), ql, kl, vl, out[run], o, so);
      else xattn::mpi::linear_attention(MPI_COMM_WORLD, ql, kl, vl, out[run], o, so);
    } else {
      xattn::lightning_options o = lo;
      if (rank != 0) o.initial_state = {};
      if (c.states) o.final_state = state[run];
      if (c.threads) xattn::mpi::lightning_attention(MPI_COMM_WORLD, device(c.threads), ql, kl, vl, out[run], o, so);
      else xattn::mpi::lightning_attention(MPI_COMM_WORLD, ql, kl, vl, out[run], o, so);
    }
  }
  EXPECT_TRUE(bitwise_equal("out, second run", out[1], out[0]));
  const auto whole_l = rows(whole, c.l, from, n);
  const auto ref_l = rows(ref, c.l, from, n);
  EXPECT_TRUE(within_rule("out", out[0], whole_l, ref_l, sum_eps(max_abs(ref_l))));
  // Rank 0 starts where the single-process call starts, with the same chunks: the same bits.
  if (rank == 0) {
    EXPECT_TRUE(bitwise_equal("out of rank 0", out[0], whole_l));
  }
  if (c.states) {
    EXPECT_TRUE(bitwise_equal("final_state, second run", state[1], state[0]));
    EXPECT_TRUE(within_rule("final_state", state[0], whole_state, ref_state, sum_eps(max_abs(ref_state))));
  }
}

std::vector<chunk_case> chunk_cases() {
  using xattn::feature;
  return {
      {"lightning_gqa_uneven", 2, 300, 4, 2, 16, 24},
      {"lightning_even_blocks", 1, 512, 2, 2, 32, 32, layout::bshd, true, false, true},
      {"lightning_states_bhsd", 2, 130, 2, 1, 8, 12, layout::bhsd, true, true},
      {"lightning_no_decay_states", 1, 97, 3, 3, 8, 8, layout::bshd, false, true},
      {"lightning_threads", 1, 260, 2, 1, 16, 16, layout::bshd, true, true, false, 2},
      {"lightning_seven_tokens", 1, 7, 2, 2, 4, 4, layout::bshd, true, true},
      {"linear_identity_states", 2, 150, 2, 1, 8, 16, layout::bshd, false, true, false, 0, true},
      {"linear_elu_normalized", 1, 201, 4, 2, 8, 8, layout::bshd, false, true, false, 0, true, true,
       feature::elu_plus_one},
      {"linear_relu_normalized_bhsd", 2, 64, 2, 2, 6, 5, layout::bhsd, false, false, true, 0, true, true,
       feature::relu},
  };
}
INSTANTIATE_TEST_SUITE_P(Mpi, Chunk, ::testing::ValuesIn(chunk_cases()),
                         [](const auto& info) { return info.param.name; });

/// A slice longer than the state pass's piece (2048 tokens): the carried, decayed state between
/// pieces, checked against the single-process call (the fp64 reference is too slow at this length).
TEST(MpiLightning, LongSlicesMatchSingleProcess) {
  SCOPED_TRACE(seed_note("lightning_long"));
  const int p = world_size(), rank = world_rank();
  const index n = 4600 * index(p), h = 2, d = 8;
  std::mt19937_64 rng(case_seed("lightning_long"));
  tensor<float> q(1, n, h, d), k(1, n, h, d), v(1, n, h, d), whole(1, n, h, d);
  fill_random(q, rng, dist::uniform, 0.5), fill_random(k, rng, dist::uniform, 0.5), fill_random(v, rng);
  const std::vector<double> decay = {0.002, 0.0005};  // long memories: states from far slices matter
  xattn::lightning_attention(q, k, v, whole, {.decay = decay});
  const std::vector<index> len = uneven_lengths(n, p);
  const index from = start_of(len, rank), nl = len[std::size_t(rank)];
  tensor<float> out(1, nl, h, d);
  xattn::mpi::lightning_attention(MPI_COMM_WORLD, rows(q, layout::bshd, from, nl), rows(k, layout::bshd, from, nl),
                                  rows(v, layout::bshd, from, nl), out, {.decay = decay});
  const auto want = rows(whole, layout::bshd, from, nl);
  const diff_result e = max_abs_diff(out, want);
  EXPECT_LE(e.max, 1e-4 * (1 + max_abs(want))) << "at " << index_str(want, e.where);
}

// ---------------------------------------------------------------------------------------------
// Ring attention

struct ring_case {
  std::string name;
  index batch, n, hq, hkv, d, dv;
  bool causal;
  xattn::mpi::split split = xattn::mpi::split::contiguous;
  layout l = layout::bshd;
  double softcap = 0;
  bool uneven = true;
  int threads = 0;
};
void PrintTo(const ring_case& c, std::ostream* os) { *os << c.name; }

class Ring : public ::testing::TestWithParam<ring_case> {};

TEST_P(Ring, MatchesSingleProcessAndReference) {
  const ring_case& c = GetParam();
  SCOPED_TRACE(seed_note(c.name));
  const int p = world_size(), rank = world_rank();
  const bool zz = c.split == xattn::mpi::split::zigzag;
  const index n = zz ? c.n / (2 * p) * (2 * p) : c.n;  // the zigzag split needs 2P equal chunks
  if (n < 2 * p) GTEST_SKIP() << "fewer tokens than ranks";
  std::mt19937_64 rng(case_seed(c.name));
  auto q = make_tensor<float>(c.l, c.batch, n, c.hq, c.d), k = make_tensor<float>(c.l, c.batch, n, c.hkv, c.d);
  auto v = make_tensor<float>(c.l, c.batch, n, c.hkv, c.dv);
  fill_random(q, rng, dist::normal, 1.5), fill_random(k, rng), fill_random(v, rng);
  const xattn::softmax_options opt{.causal = c.causal, .softcap = c.softcap, .layout = c.l};
  auto whole = make_tensor<float>(c.l, c.batch, n, c.hq, c.dv);
  tensor<float, 3> whole_lse(c.batch, c.hq, n);
  xattn::softmax_attention(q, k, v, whole, whole_lse, opt);
  const attention_result<double> ref = oracle(q, k, v, opt);
  const attention_result<float> nv = naive_softmax<float>(q, k, v, opt);

  // The shares: zigzag, or contiguous with q and k split differently when not causal.
  tensor<float> ql, kl, vl, want, want_ref, want_naive;
  tensor<float, 3> want_lse;
  tensor<double> ref_l;
  tensor<double, 3> ref_lse;
  tensor<float, 3> nv_lse;
  if (zz) {
    ql = xattn::mpi::zigzag_split(q, p, rank, c.l), kl = xattn::mpi::zigzag_split(k, p, rank, c.l);
    vl = xattn::mpi::zigzag_split(v, p, rank, c.l), want = xattn::mpi::zigzag_split(whole, p, rank, c.l);
    ref_l = xattn::mpi::zigzag_split(ref.out, p, rank, c.l), want_naive = xattn::mpi::zigzag_split(nv.out, p, rank, c.l);
  } else {
    const std::vector<index> lq = c.uneven ? uneven_lengths(n, p) : even_lengths(n, p);
    std::vector<index> lk = lq;
    if (!c.causal) std::reverse(lk.begin(), lk.end());  // cross-shaped split: q and k slices differ
    const index fq = start_of(lq, rank), nq = lq[std::size_t(rank)];
    const index fk = start_of(lk, rank), nk = lk[std::size_t(rank)];
    ql = rows(q, c.l, fq, nq), kl = rows(k, c.l, fk, nk), vl = rows(v, c.l, fk, nk);
    want = rows(whole, c.l, fq, nq), ref_l = rows(ref.out, c.l, fq, nq), want_naive = rows(nv.out, c.l, fq, nq);
    want_lse = lse_rows(whole_lse, fq, nq), ref_lse = lse_rows(ref.lse, fq, nq), nv_lse = lse_rows(nv.lse, fq, nq);
  }
  const index nq = seq_of(ql, c.l);
  tensor<float> out[2] = {make_tensor<float>(c.l, c.batch, nq, c.hq, c.dv), make_tensor<float>(c.l, c.batch, nq, c.hq, c.dv)};
  tensor<float, 3> lse[2] = {tensor<float, 3>(c.batch, c.hq, nq), tensor<float, 3>(c.batch, c.hq, nq)};
  const xattn::mpi::ring_options ro{.split = c.split, .total_length = n};
  for (int run = 0; run < 2; ++run) {
    if (c.threads) xattn::mpi::ring_attention(MPI_COMM_WORLD, device(c.threads), ql, kl, vl, out[run], lse[run], opt, ro);
    else xattn::mpi::ring_attention(MPI_COMM_WORLD, ql, kl, vl, out[run], lse[run], opt, ro);
  }
  EXPECT_TRUE(bitwise_equal("out, second run", out[1], out[0]));
  EXPECT_TRUE(bitwise_equal("lse, second run", lse[1], lse[0]));
  const double eps = rule_eps<float>(ref.max_abs_score);
  EXPECT_TRUE(within_rule("out vs reference", out[0], want_naive, ref_l, eps));
  EXPECT_TRUE(within_rule("out vs single process", out[0], want_naive, want, 2 * eps));
  if (!zz) {
    EXPECT_TRUE(within_rule("lse", lse[0], nv_lse, ref_lse, eps));
  }
  if (zz) {  // the whole output put back together on every rank equals the single-process call
    auto gathered = make_tensor<float>(c.l, c.batch, n, c.hq, c.dv);
    xattn::mpi::zigzag_gather(MPI_COMM_WORLD, out[0], gathered, c.l);
    EXPECT_TRUE(within_rule("gathered out", gathered, nv.out, ref.out, eps));
  }
}

std::vector<ring_case> ring_cases() {
  using xattn::mpi::split;
  return {
      {"dense_cross_split", 2, 150, 4, 2, 16, 24, false},
      {"causal_contiguous_uneven", 1, 200, 2, 1, 32, 32, true},
      {"causal_contiguous_bhsd_softcap", 2, 97, 4, 4, 8, 8, true, split::contiguous, layout::bhsd, 5.0},
      {"causal_zigzag_gqa", 2, 256, 4, 1, 16, 16, true, split::zigzag},
      {"causal_zigzag_bhsd", 1, 200, 2, 2, 40, 24, true, split::zigzag, layout::bhsd},
      {"causal_even_threads", 1, 256, 2, 2, 64, 64, true, split::contiguous, layout::bshd, 0, false, 2},
  };
}
INSTANTIATE_TEST_SUITE_P(Mpi, Ring, ::testing::ValuesIn(ring_cases()), [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Sharded decode

TEST(MpiDecode, MatchesSingleProcessAndReference) {
  for (const layout l : {layout::bshd, layout::bhsd})
    for (const index nq : {index(1), index(3)}) {
      const std::string name = std::string("decode_") + (l == layout::bshd ? "bshd" : "bhsd") + std::to_string(nq);
      SCOPED_TRACE(seed_note(name));
      const int p = world_size(), rank = world_rank();
      const index batch = 3, cap = 40, hq = 4, hkv = 2, d = 16, dv = 8;
      std::mt19937_64 rng(case_seed(name));
      // The whole cache is P shards of capacity `cap`; batch b holds lengths[b][r] valid rows in shard r
      // (shard 1 of batch 0 empty when there are two ranks or more).
      std::vector<std::vector<int>> lengths(static_cast<std::size_t>(batch), std::vector<int>(static_cast<std::size_t>(p)));
      for (index b = 0; b < batch; ++b)
        for (int r = 0; r < p; ++r) lengths[std::size_t(b)][std::size_t(r)] = (b == 0 && r == 1) ? 0 : int(5 + (7 * b + 11 * r) % 36);
      auto q = make_tensor<float>(l, batch, nq, hq, d);
      auto k = make_tensor<float>(l, batch, cap * p, hkv, d), v = make_tensor<float>(l, batch, cap * p, hkv, dv);
      fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
      // The single-process view of the same keys: each batch's valid rows packed at the front.
      index longest = 1;
      std::vector<int> total(static_cast<std::size_t>(batch), 0);
      for (index b = 0; b < batch; ++b) {
        for (int r = 0; r < p; ++r) total[std::size_t(b)] += lengths[std::size_t(b)][std::size_t(r)];
        longest = std::max<index>(longest, total[std::size_t(b)]);
      }
      auto kc = make_tensor<float>(l, batch, longest, hkv, d), vc = make_tensor<float>(l, batch, longest, hkv, dv);
      kc.setZero(), vc.setZero();
      for (index b = 0; b < batch; ++b) {
        index at_row = 0;
        for (int r = 0; r < p; ++r)
          for (index s = 0; s < lengths[std::size_t(b)][std::size_t(r)]; ++s, ++at_row)
            for (index h = 0; h < hkv; ++h) {
              for (index c = 0; c < d; ++c) at(kc, l, b, at_row, h, c) = at(k, l, b, r * cap + s, h, c);
              for (index c = 0; c < dv; ++c) at(vc, l, b, at_row, h, c) = at(v, l, b, r * cap + s, h, c);
            }
      }
      const xattn::softmax_options opt{.layout = l};
      auto whole = make_tensor<float>(l, batch, nq, hq, dv);
      xattn::softmax_decode(q, kc, vc, whole, total, opt);
      const attention_result<double> ref = oracle(q, kc, vc, {.seqlens_k = total, .layout = l});
      const attention_result<float> nv = naive_softmax<float>(q, kc, vc, {.seqlens_k = total, .layout = l});

      std::vector<int> mine(static_cast<std::size_t>(batch));
      for (index b = 0; b < batch; ++b) mine[std::size_t(b)] = lengths[std::size_t(b)][std::size_t(rank)];
      const auto ks = rows(k, l, rank * cap, cap), vs = rows(v, l, rank * cap, cap);
      tensor<float> out[2] = {make_tensor<float>(l, batch, nq, hq, dv), make_tensor<float>(l, batch, nq, hq, dv)};
      for (int run = 0; run < 2; ++run) xattn::mpi::sharded_decode(MPI_COMM_WORLD, q, ks, vs, out[run], mine, opt);
      EXPECT_TRUE(bitwise_equal("out, second run", out[1], out[0]));
      const double eps = rule_eps<float>(ref.max_abs_score);
      EXPECT_TRUE(within_rule("out vs reference", out[0], nv.out, ref.out, eps));
      EXPECT_TRUE(within_rule("out vs single process", out[0], nv.out, whole, 2 * eps));
      // Every rank holds the same bits: rank 0's answer broadcast and compared.
      tensor<float> root = out[0];
      MPI_Bcast(root.data(), int(root.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
      EXPECT_TRUE(bitwise_equal("out against rank 0's", out[0], root));
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: xattn::error on every rank, the output untouched, and no hang.

/// Runs f, which must throw xattn::error containing every one of `parts`, on this rank; then
/// checks that every rank saw the same outcome.
template <class F>
void expect_error_everywhere(F&& f, std::initializer_list<const char*> parts) {
  std::string what;
  try {
    f();
  } catch (const xattn::error& e) {
    what = e.what();
  }
  int thrown = !what.empty(), all = 0;
  MPI_Allreduce(&thrown, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_EQ(all, world_size()) << "xattn::error thrown on " << all << " of " << world_size() << " ranks";
  ASSERT_FALSE(what.empty()) << "no xattn::error on rank " << world_rank();
  for (const char* p : parts) EXPECT_NE(what.find(p), std::string::npos) << "message: " << what;
}

TEST(MpiErrors, SlicesThatDoNotAddUp) {
  tensor<float> q(1, 8, 2, 4), out(1, 8, 2, 4);
  q.setConstant(0.25f);
  out.setConstant(7.0f);
  expect_error_everywhere(
      [&] { xattn::mpi::lightning_attention(MPI_COMM_WORLD, q, q, q, out, {}, {.total_length = 8 * world_size() + 1}); },
      {"xattn::mpi::lightning_attention", "total_length"});
  EXPECT_EQ(max_abs_diff(out, tensor<float>(out.constant(7.0f))).max, 0) << "out was written";
  tensor<float, 3> lse(1, 2, 8);
  expect_error_everywhere(
      [&] { xattn::mpi::ring_attention(MPI_COMM_WORLD, q, q, q, out, lse, {.causal = true}, {.total_length = 3}); },
      {"xattn::mpi::ring_attention", "total_length"});
  EXPECT_EQ(max_abs_diff(out, tensor<float>(out.constant(7.0f))).max, 0) << "out was written";
  const std::vector<int> lens = {5};  // 5 valid rows per shard: 5·P in all, not 5·P + 1
  tensor<float> qd(1, 1, 2, 4), od(1, 1, 2, 4);
  qd.setConstant(0.5f), od.setConstant(7.0f);
  expect_error_everywhere(
      [&] { xattn::mpi::sharded_decode(MPI_COMM_WORLD, qd, q, q, od, lens, {}, {.total_length = 5 * world_size() + 1}); },
      {"xattn::mpi::sharded_decode", "total_length"});
  EXPECT_EQ(max_abs_diff(od, tensor<float>(od.constant(7.0f))).max, 0) << "out was written";
}

TEST(MpiErrors, LastRankWithDifferentHeads) {
  const bool odd = world_rank() == world_size() - 1 && world_size() > 1;
  const index h = odd ? 4 : 2;
  tensor<float> q(1, 8, h, 4), out(1, 8, h, 4);
  q.setConstant(0.25f);
  out.setConstant(7.0f);
  const char* what = world_size() > 1 ? "q heads" : "decay";
  // One rank alone cannot disagree with another: give it three rates for two heads instead.
  const std::vector<double> decay = world_size() > 1 ? std::vector<double>{} : std::vector<double>{0.1, 0.1, 0.1};
  expect_error_everywhere([&] { xattn::mpi::lightning_attention(MPI_COMM_WORLD, q, q, q, out, {.decay = decay}); },
                          {"xattn::mpi::lightning_attention", what});
  EXPECT_EQ(max_abs_diff(out, tensor<float>(out.constant(7.0f))).max, 0) << "out was written";
  tensor<float> qd(1, 1, h, 4), k(1, 5, h, 4), od(1, 1, h, 4);
  qd.setConstant(0.5f), k.setConstant(0.5f);
  const std::vector<int> lens = {world_size() > 1 ? 5 : 6};  // 6 > capacity 5: wrong alone
  expect_error_everywhere([&] { xattn::mpi::sharded_decode(MPI_COMM_WORLD, qd, k, k, od, lens); },
                          {"xattn::mpi::sharded_decode", world_size() > 1 ? "q heads" : "shard_lengths"});
}

TEST(MpiErrors, MismatchedScalarOptionsAndUnsupportedOnes) {
  tensor<float> q(1, 8, 2, 4), out(1, 8, 2, 4);
  q.setConstant(0.25f);
  // Rank 0 alone asks for causal: the ranks disagree (with one rank, zigzag without causal is refused).
  const bool causal = world_rank() == 0 && world_size() > 1;
  expect_error_everywhere(
      [&] {
        xattn::mpi::ring_attention(MPI_COMM_WORLD, q, q, q, out, {.causal = causal},
                                   {.split = world_size() > 1 ? xattn::mpi::split::contiguous : xattn::mpi::split::zigzag});
      },
      {"xattn::mpi::ring_attention", world_size() > 1 ? "causal" : "split"});
  expect_error_everywhere(
      [&] { xattn::mpi::ring_attention(MPI_COMM_WORLD, q, q, q, out, {.causal = true, .window_left = 4}); },
      {"xattn::mpi::ring_attention", "window_left"});
  expect_error_everywhere([&] { xattn::mpi::linear_attention(MPI_COMM_WORLD, q, q, q, out, {.causal = false}); },
                          {"xattn::mpi::linear_attention", "causal"});
  tensor<float> s(1, 2, 4, 4);
  s.setZero();
  // An initial state on a rank past the first one (rank 1; with one rank, a wrong shape).
  tensor<float> bad(1, 2, 4, 3);
  const bool give = world_size() > 1 ? world_rank() == 1 : true;
  expect_error_everywhere(
      [&] {
        xattn::lightning_options o;
        if (give) o.initial_state = world_size() > 1 ? xattn::state_cref(s) : xattn::state_cref(bad);
        xattn::mpi::lightning_attention(MPI_COMM_WORLD, q, q, q, out, o);
      },
      {"xattn::mpi::lightning_attention", "initial_state"});
}

TEST(MpiErrors, AKernelCheckFailingOnOneRankOnly) {
  // The last rank's custom map cannot take floats: only the kernel sees it, after the collective
  // check; every rank must still throw, and no rank's out is written.
  tensor<float> q(1, 8, 2, 4), out(1, 8, 2, 4);
  q.setConstant(0.25f);
  out.setConstant(7.0f);
  const bool last = world_rank() == world_size() - 1;
  const auto map = last ? xattn::feature_map::custom(4, [](std::span<const double> x, std::span<double> y) {
    std::copy(x.begin(), x.end(), y.begin());
  })
                        : xattn::feature_map::custom(4, [](auto x, auto y) { std::copy(x.begin(), x.end(), y.begin()); });
  expect_error_everywhere(
      [&] { xattn::mpi::linear_attention(MPI_COMM_WORLD, q, q, q, out, {.causal = true, .feature_map = map}); },
      {"linear_attention"});
  EXPECT_EQ(max_abs_diff(out, tensor<float>(out.constant(7.0f))).max, 0) << "out was written";
}

TEST(MpiZigzag, SplitRejectsLengthsNotMultipleOfTwiceTheRanks) {
  tensor<float> x(1, 10, 1, 2);
  x.setZero();
  EXPECT_THROW(xattn::mpi::zigzag_split(x, 3, 0), xattn::error);
  const tensor<float> y = xattn::mpi::zigzag_split(x, 5, 4);
  EXPECT_EQ(y.dimension(1), 2);
}

/// What the other ranks print: their failures only, each marked with the rank.
class failures_of_rank : public ::testing::EmptyTestEventListener {
 public:
  explicit failures_of_rank(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& t) override { test_ = std::string(t.test_suite_name()) + "." + t.name(); }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: %s\n", rank_, test_.c_str(), r.file_name() ? r.file_name() : "",
                 r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string test_;  // the running test (current_test_info() would take the lock held while reporting)
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (world_rank() != 0) {  // every rank asserts; rank 0 prints the run, the others their failures
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new failures_of_rank(world_rank()));
  }
  int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);  // a failure on any rank fails all
  MPI_Finalize();
  return any;
}
