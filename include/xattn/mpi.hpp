// xattn/mpi.hpp — sequence parallelism across processes over MPI, layered on the single-process
// kernels through the two facts they expose: the log-sum-exp of softmax rows (partial results merge
// exactly) and the recurrent state of the chunk families (a prefix of states is all a slice needs).
// The only header of xattn that includes <mpi.h>; nothing else depends on it.
//
//   lightning_attention  LASP-2: each rank runs lightning_attention on its slice from a zero state
//                        (rank 0: from the caller's), which also gives the slice's own state; one
//                        all-gather of the P states [batch, Hq, d, e]; each rank forms its prefix
//                        state P and adds its share scale·λ^(t+1)·q_t·P to the first rows of its
//                        output, as far as λ^(t+1) >= 2^−100 (a few thousand rows for the usual
//                        decays). Heads without a decay need every row: with any such head, the
//                        slice's state is computed first (below) and the kernel runs from P.
//   linear_attention     causal linear attention: the slice's state alone by a non-causal call, one
//                        all-gather, and the kernel from the prefix state (the normaliser is the
//                        extra column of the state).
//   ring_attention       softmax attention with K/V blocks passed around the ring (MPI_Isend/Irecv
//                        overlapped with the block in hand), partials merged by log-sum-exp in fp32
//                        (fp64 for double). Causal with a contiguous split or the zigzag split
//                        (zigzag_split / zigzag_gather), which gives every rank the same work.
//   sharded_decode       a KV cache split over ranks; one all-gather of (out, lse) merges the partials.
//
// Ranks hold contiguous pieces of one sequence in rank order (zigzag: two pieces). Every rank passes
// the same scalar options. The checks run collectively first (one small MPI_Allgather), so bad input
// on any rank throws xattn::error on every rank, before anything is written and without a hang.
// Results are deterministic for a given number of ranks (fixed merge orders) and agree with the
// single-process call within rounding; rank 0 of the chunk families is bitwise equal to it.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <unsupported/Eigen/CXX11/Tensor>

#include "lightning.hpp"
#include "linear.hpp"
#include "softmax.hpp"

namespace xattn::mpi {

/// Seconds spent by one rank, accumulated over the calls that were given it (+=, never reset).
struct timing {
  double wait_seconds = 0;   // inside MPI calls (collectives, waits for ring blocks)
  double total_seconds = 0;  // in the whole call
};

/// What the sequence-split calls need beside the family's own options.
struct sequence_options {
  std::ptrdiff_t total_length = 0;   // the whole sequence's tokens (sharded_decode: valid cache rows summed over the batch); 0 = unchecked
  timing* stats = nullptr;  // when set, this rank's seconds are added to it
};

/// How the tokens of the sequence are laid out over the ranks.
enum class split {
  contiguous,  // rank r holds one contiguous slice, in rank order; lengths may differ
  zigzag,      // the sequence is cut into 2P equal chunks; rank r holds chunks r and 2P−1−r, concatenated
};

/// Options of ring_attention beside softmax_options.
struct ring_options {
  mpi::split split = split::contiguous;  // the layout of q and k/v over the ranks (the same for both)
  std::ptrdiff_t total_length = 0;                // the whole sequence's tokens; 0 = unchecked, else the slices must add up to it
  timing* stats = nullptr;               // when set, this rank's seconds are added to it
};

namespace detail {

using xattn::detail::index;

using clock = std::chrono::steady_clock;
inline double seconds_since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }

struct no_device {};

template <class T>
MPI_Datatype datatype() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "xattn::mpi supports float and double tensors");
  return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
}

template <class X>
using tensor_of = Eigen::Tensor<scalar_of<X>, 4, Eigen::RowMajor>;

/// Element (b, s, h, 0) of a [batch, seq, heads, dim] tensor stored in the order `l`.
template <class P>
P* row(P* data, const std::array<index, 4>& d, layout l, index b, index s, index h) {
  return l == layout::bshd ? data + ((b * d[1] + s) * d[2] + h) * d[3] : data + ((b * d[1] + h) * d[2] + s) * d[3];
}
/// seq and heads of a tensor's dims in the order `l`.
inline index seq(const std::array<index, 4>& d, layout l) { return l == layout::bshd ? d[1] : d[2]; }
inline index heads(const std::array<index, 4>& d, layout l) { return l == layout::bshd ? d[2] : d[1]; }
template <class X>
std::array<index, 4> dims(const X& x) {
  return {x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)};
}
inline std::string shape(const std::array<index, 4>& d) {
  std::ostringstream s;
  s << '[' << d[0] << ", " << d[1] << ", " << d[2] << ", " << d[3] << ']';
  return s.str();
}

inline std::int64_t bits(double x) { return std::bit_cast<std::int64_t>(x); }
inline std::int64_t hash(std::span<const double> xs) {  // FNV-1a over the bits of the values
  std::uint64_t h = 1469598103934665603ull;
  for (double x : xs) h = (h ^ std::bit_cast<std::uint64_t>(x)) * 1099511628211ull;
  return static_cast<std::int64_t>(h ^ xs.size());
}
inline std::int64_t hash(std::span<const float> xs) {
  std::vector<double> d(xs.begin(), xs.end());
  return hash(std::span<const double>(d));
}

/// The collective check. Each rank records its first local problem and the values every rank must
/// agree on; settle() all-gathers them (one MPI_Allgather of a few hundred bytes per rank) and throws
/// the same xattn::error on every rank when any rank had a problem or any value differs.
class checker {
 public:
  static constexpr int kFields = 24, kMessage = 240;
  struct report {
    std::int64_t local[2];  // this rank's own lengths (q or cache tokens, k tokens)
    std::int64_t field[kFields];
    char message[kMessage];
  };

  explicit checker(const char* fn) : fn_(fn) {}

  template <class... Parts>
  void require(bool ok, const char* arg, const Parts&... what) {
    if (ok || !message_.empty()) return;
    std::ostringstream s;
    s << arg << ": ";
    (s << ... << what);
    message_ = s.str();
  }
  void agree(const char* name, std::int64_t value) {
    names_.push_back(name);
    values_.push_back(value);
  }

  std::vector<report> settle(MPI_Comm comm, std::int64_t n0, std::int64_t n1, timing* stats) {
    int size = 0, rank = 0;
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(comm, &rank);
    if (values_.size() > std::size_t(kFields)) throw error(std::string(fn_) + ": too many agreed fields");
    report mine{};
    mine.local[0] = n0, mine.local[1] = n1;
    std::copy(values_.begin(), values_.end(), mine.field);
    std::strncpy(mine.message, message_.c_str(), kMessage - 1);
    std::vector<report> all(static_cast<std::size_t>(size));
    const auto t0 = clock::now();
    MPI_Allgather(&mine, sizeof(report), MPI_BYTE, all.data(), sizeof(report), MPI_BYTE, comm);
    if (stats) stats->wait_seconds += seconds_since(t0);
    for (int r = 0; r < size; ++r)
      if (all[std::size_t(r)].message[0] != '\0')
        throw error(std::string(fn_) + ": " + (size > 1 ? "on rank " + std::to_string(r) + ": " : "") +
                    all[std::size_t(r)].message);
    for (std::size_t i = 0; i < values_.size(); ++i)
      for (int r = 1; r < size; ++r)
        if (all[std::size_t(r)].field[i] != all[0].field[i])
          throw error(std::string(fn_) + ": " + names_[i] + ": rank " + std::to_string(r) + " has " +
                      std::to_string(all[std::size_t(r)].field[i]) + ", rank 0 has " +
                      std::to_string(all[0].field[i]) + ": every rank must pass the same");
    return all;
  }

 private:
  const char* fn_;
  std::string message_;
  std::vector<const char*> names_;
  std::vector<std::int64_t> values_;
};

/// Checks of a 4-D tensor argument shared by every entry point.
template <class X>
void check_tensor(checker& c, const char* name, const X& x) {
  const auto d = dims(x);
  c.require(x.data() != nullptr, name, "null data");
  for (index v : d) c.require(v > 0, name, "shape ", shape(d), " has an empty axis");
}

template <class Dev, class... A>
void lightning_call(const Dev* dev, A&&... a) {
  if constexpr (std::is_same_v<Dev, no_device>) xattn::lightning_attention(std::forward<A>(a)...);
  else xattn::lightning_attention(*dev, std::forward<A>(a)...);
}
template <class Dev, class... A>
void linear_call(const Dev* dev, A&&... a) {
  if constexpr (std::is_same_v<Dev, no_device>) xattn::linear_attention(std::forward<A>(a)...);
  else xattn::linear_attention(*dev, std::forward<A>(a)...);
}
template <class Dev, class... A>
void softmax_call(const Dev* dev, A&&... a) {
  if constexpr (std::is_same_v<Dev, no_device>) xattn::softmax_attention(std::forward<A>(a)...);
  else xattn::softmax_attention(*dev, std::forward<A>(a)...);
}

// ---------------------------------------------------------------------------------------------
// The chunk families (LASP-2)

/// What differs between lightning and causal linear attention in the prefix pass.
struct chunk_family {
  std::span<const double> decay;  // per query head; empty = no decay
  index rows = 0, cols = 0;       // of one head's state: D' × (e + normalize)
  state_cref initial_state;
  state_ref final_state;
  layout order = layout::bshd;
  bool lightning = false;         // the output is scale·q·S unnormalised: the prefix may be added after the kernel

  /// The kernel first, the prefix's share added afterwards: every head decays, so the share
  /// vanishes after the slice's first rows.
  bool prefix_after() const {
    return lightning && !decay.empty() && std::all_of(decay.begin(), decay.end(), [](double s) { return s > 0; });
  }
};

/// Tokens per piece of the decay-weighted state pass: bounds the scratch to a piece of k and v.
inline constexpr index kStatePiece = 2048;

/// Decay weights below 2^−100 are taken as 0: such a term changes no float sum it joins by even an
/// ulp, and its products would fall toward the subnormal range, where an x86 FMA takes ~100× longer
/// (a 2048-token piece at s = 0.5 reaches λ^1000 ≈ 1e−434; measured: the state pass 4× slower).
inline constexpr double kTinyWeight = 0x1p-100;
inline double weight(double lambda, double power) {
  const double w = std::pow(lambda, power);
  return w < kTinyWeight ? 0.0 : w;
}
/// Subnormal state entries as 0, for the same reason (they are below float's smallest normal value).
template <class T>
void flush_subnormals(T* x, index n) {
  for (index i = 0; i < n; ++i)
    if (std::abs(x[i]) < std::numeric_limits<T>::min()) x[i] = T(0);
}

/// The state of this rank's slice alone, S = Σ_j λ^(n−1−j)·φ(k_j)ᵀ[v_j, 1], computed with one
/// non-causal linear_attention call (state only: a one-row dummy query) per piece — a third of the
/// work of a lightning call, which would also compute every output row. With a decay the keys are
/// weighted by λ^(end−1−j) within a piece and the state carried from piece to piece scaled by λ^len.
template <class T, class Dev, class K, class V>
void slice_state(const Dev* dev, const K& k, const V& v, const chunk_family& f, const linear_options& lin,
                 Eigen::Tensor<T, 4, Eigen::RowMajor>& state) {
  const auto kd = dims(k), vd = dims(v);
  const layout l = f.order;
  const index batch = kd[0], n = seq(kd, l), hkv = heads(kd, l), d = kd[3], e = vd[3];
  const index hq = state.dimension(1), group = hq / hkv;
  state.setZero();
  linear_options o = lin;
  o.causal = false;
  o.initial_state = {};
  o.final_state = state;
  const bool decays = std::any_of(f.decay.begin(), f.decay.end(), [](double s) { return s != 0; });
  if (!decays) {  // one call over the slice as it lies in memory; k/v heads shared by their group
    Eigen::Tensor<T, 4, Eigen::RowMajor> q0 = l == layout::bshd ? Eigen::Tensor<T, 4, Eigen::RowMajor>(batch, 1, hq, d)
                                                                 : Eigen::Tensor<T, 4, Eigen::RowMajor>(batch, hq, 1, d);
    Eigen::Tensor<T, 4, Eigen::RowMajor> o0 = l == layout::bshd ? Eigen::Tensor<T, 4, Eigen::RowMajor>(batch, 1, hq, e)
                                                                 : Eigen::Tensor<T, 4, Eigen::RowMajor>(batch, hq, 1, e);
    q0.setZero();
    linear_call(dev, q0, k, v, o0, o);
    return;
  }
  // Weighted keys need one copy per query head (each head has its own λ): pieces in [b, s, Hq, ·].
  const index piece = std::min(n, kStatePiece);
  Eigen::Tensor<T, 4, Eigen::RowMajor> kw(batch, piece, hq, d), vw(batch, piece, hq, e);
  Eigen::Tensor<T, 4, Eigen::RowMajor> q0(batch, 1, hq, d), o0(batch, 1, hq, e);
  q0.setZero();
  o.layout = layout::bshd;
  o.initial_state = state;
  std::vector<double> lambda(static_cast<std::size_t>(hq));
  for (index h = 0; h < hq; ++h) lambda[std::size_t(h)] = std::exp(-f.decay[std::size_t(h)]);
  for (index start = 0; start < n; start += piece) {
    const index len = std::min(piece, n - start), end = start + len;
    for (index h = 0; h < hq; ++h) {  // S ← λ^len·S before the piece's own terms are added
      const T carry = T(weight(lambda[std::size_t(h)], double(len)));
      for (index b = 0; b < batch; ++b)
        for (index i = 0; i < f.rows * f.cols; ++i) state.data()[(b * hq + h) * f.rows * f.cols + i] *= carry;
    }
    flush_subnormals(state.data(), index(state.size()));
    Eigen::TensorMap<Eigen::Tensor<T, 4, Eigen::RowMajor>> km(kw.data(), batch, len, hq, d), vm(vw.data(), batch, len, hq, e);
    for (index b = 0; b < batch; ++b)
      for (index j = start; j < end; ++j)
        for (index h = 0; h < hq; ++h) {
          const T w = T(weight(lambda[std::size_t(h)], double(end - 1 - j)));  // λ^(end−1−j)
          const T* kr = row(k.data(), kd, l, b, j, h / group);
          const T* vr = row(v.data(), vd, l, b, j, h / group);
          T* kt = &km(b, j - start, h, 0);
          T* vt = &vm(b, j - start, h, 0);
          for (index c = 0; c < d; ++c) kt[c] = w * kr[c];
          std::copy(vr, vr + e, vt);
        }
    linear_call(dev, q0, km, vm, o0, o);
  }
  flush_subnormals(state.data(), index(state.size()));
}

/// out_t += scale·λ_h^(t+1)·q_t·P_h for the rows t of every (batch, head) whose weight λ^(t+1) is
/// at least kTinyWeight: the prefix state's share in a lightning slice computed from a zero state.
/// One GEMM per (batch, head) over those rows (Eigen's), then the weighted rows added.
template <class T, class Q, class O>
void add_prefix_share(const Q& q, O& out, const T* prefix, std::span<const double> decay, double scale, layout l) {
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using rows_map = Eigen::Map<const mat, 0, Eigen::OuterStride<>>;
  const auto qd = dims(q), od = dims(out);
  const index batch = qd[0], n = seq(qd, l), hq = heads(qd, l), d = qd[3], e = od[3];
  mat share;
  for (index h = 0; h < hq; ++h) {
    const double lambda = std::exp(-decay[std::size_t(h)]);
    index m = 0;  // rows with a weight that counts
    while (m < n && weight(lambda, double(m + 1)) > 0) ++m;
    if (m == 0) continue;
    const index qs = l == layout::bshd ? hq * d : d, os = l == layout::bshd ? hq * e : e;
    for (index b = 0; b < batch; ++b) {
      const rows_map qm(row(q.data(), qd, l, b, 0, h), m, d, Eigen::OuterStride<>(qs));
      const Eigen::Map<const mat> pm(prefix + (b * hq + h) * d * e, d, e);
      share.noalias() = qm * pm;
      T* o = row(out.data(), od, l, b, 0, h);
      for (index t = 0; t < m; ++t) {
        const T w = T(scale * weight(lambda, double(t + 1)));
        for (index c = 0; c < e; ++c) o[t * os + c] += w * share(t, c);
      }
    }
  }
}

/// The LASP-2 pass shared by lightning and causal linear attention. `run(initial_state,
/// final_state)` computes this rank's output from the given state (and its state at the slice's end).
template <class Dev, class Q, class K, class V, class O, class Run>
void chunk_parallel(const char* fn, MPI_Comm comm, const Dev* dev, const Q& q, const K& k, const V& v, O& out,
                    const chunk_family& f, const linear_options& lin, const sequence_options& so, checker& c,
                    Run&& run) {
  using T = scalar_of<Q>;
  const auto t_start = clock::now();
  int size = 0, rank = 0;
  MPI_Comm_size(comm, &size);
  MPI_Comm_rank(comm, &rank);
  const layout l = f.order;
  const auto qd = dims(q), kd = dims(k), vd = dims(v), od = dims(out);
  check_tensor(c, "q", q), check_tensor(c, "k", k), check_tensor(c, "v", v), check_tensor(c, "out", out);
  const index batch = qd[0], n = seq(qd, l), hq = heads(qd, l), hkv = heads(kd, l), d = qd[3], e = vd[3];
  c.require(kd[0] == batch && seq(kd, l) == n && kd[3] == d, "k", "shape ", shape(kd), " does not match q ", shape(qd));
  c.require(vd[0] == batch && seq(vd, l) == n && heads(vd, l) == hkv, "v", "shape ", shape(vd), " does not match k ",
            shape(kd));
  c.require(hkv > 0 && hq % hkv == 0, "k", "q heads ", hq, " not divisible by k/v heads ", hkv);
  c.require(od[0] == batch && seq(od, l) == n && heads(od, l) == hq && od[3] == e, "out", "shape ", shape(od),
            " != expected for q ", shape(qd), " and v ", shape(vd));
  c.require(f.decay.empty() || index(f.decay.size()) == hq, "decay", "has ", f.decay.size(), " rates for ", hq,
            " query heads");
  for (double s : f.decay) c.require(std::isfinite(s) && s >= 0, "decay", "rate ", s, " must be finite and >= 0");
  c.require(std::isfinite(lin.scale) && lin.scale > 0, "scale", "must be finite and > 0, got ", lin.scale);
  c.require(lin.block_size >= 0 && lin.block_size <= 1024, "block_size", "must be in [0, 1024], got ", lin.block_size);
  c.require(std::isfinite(lin.eps) && lin.eps >= 0, "eps", "must be finite and >= 0, got ", lin.eps);
  const std::array<index, 4> sd{batch, hq, f.rows, f.cols};
  const bool double_state = std::is_same_v<T, double>;
  if (f.initial_state) {
    c.require(rank == 0, "initial_state", "only rank 0 (the sequence's start) may pass one");
    c.require(f.initial_state.dims == sd && f.initial_state.is_double == double_state, "initial_state", "shape ",
              shape(f.initial_state.dims), " != expected ", shape(sd), " of the call's element type");
  }
  if (f.final_state)
    c.require(f.final_state.dims == sd && f.final_state.is_double == double_state, "final_state", "shape ",
              shape(f.final_state.dims), " != expected ", shape(sd), " of the call's element type");
  c.agree("batch", batch), c.agree("q heads", hq), c.agree("k/v heads", hkv), c.agree("head_dim", d);
  c.agree("v head_dim", e), c.agree("layout", index(l)), c.agree("scale", bits(lin.scale));
  c.agree("block_size", lin.block_size), c.agree("decay", hash(f.decay)), c.agree("element type", sizeof(T));
  const auto reports = c.settle(comm, n, n, so.stats);

  index total = 0, begin = 0;  // the whole sequence, and this rank's first token
  for (int r = 0; r < size; ++r) {
    if (r == rank) begin = total;
    total += reports[std::size_t(r)].local[0];
  }
  if (so.total_length != 0 && total != so.total_length) {
    std::ostringstream s;
    s << fn << ": q: the slices' lengths add up to " << total << " (";
    for (int r = 0; r < size; ++r) s << (r ? " + " : "") << reports[std::size_t(r)].local[0];
    s << "), not total_length " << so.total_length;
    throw error(s.str());  // thrown on every rank: every rank has every length
  }

  // 1. The state of this slice alone (rank 0 folds the initial state in: λ^n·S0 + S).
  const index per_rank = batch * hq * f.rows * f.cols;
  // A check only the kernel makes (memory overlaps, a custom map's element types) may still fail
  // here on one rank: the failure then travels in the all-gather as one extra value, so that every
  // rank throws instead of the others waiting for a state that never comes.
  Eigen::Tensor<T, 4, Eigen::RowMajor> mine(batch, hq, f.rows, f.cols);
  std::string failure;
  const bool after = f.prefix_after();
  try {
    if (after) run(rank == 0 ? f.initial_state : state_cref{}, state_ref(mine));  // its final state: λ^n·S0 + S
    else slice_state<T>(dev, k, v, f, lin, mine);
  } catch (const error& e) {
    failure = e.what();
  }
  auto decay_of = [&](index h) { return f.decay.empty() ? 0.0 : f.decay[std::size_t(h)]; };
  const T* s0 = static_cast<const T*>(f.initial_state.data);
  if (s0 && !after)
    for (index b = 0; b < batch; ++b)
      for (index h = 0; h < hq; ++h) {
        const double w = std::exp(-decay_of(h) * double(n));
        for (index i = 0; i < f.rows * f.cols; ++i) {
          const index at = (b * hq + h) * f.rows * f.cols + i;
          mine.data()[at] = T(w * double(s0[at]) + double(mine.data()[at]));
        }
      }

  // 2. One all-gather of the P states, each followed by its rank's failure flag.
  const index stride = per_rank + 1;
  std::vector<T> sent(static_cast<std::size_t>(stride)), states(static_cast<std::size_t>(stride * size));
  std::copy(mine.data(), mine.data() + per_rank, sent.begin());
  sent.back() = failure.empty() ? T(0) : T(1);
  const auto t_wait = clock::now();
  MPI_Allgather(sent.data(), int(stride), datatype<T>(), states.data(), int(stride), datatype<T>(), comm);
  if (so.stats) so.stats->wait_seconds += seconds_since(t_wait);
  if (!failure.empty()) throw error(failure);
  for (int r = 0; r < size; ++r)
    if (states[std::size_t(r * stride + per_rank)] != T(0))
      throw error(std::string(fn) + ": rank " + std::to_string(r) + " rejected its input (its own message names it)");

  // 3. S_prefix(r) = Σ_{r'<r} λ^(begin_r − end_r')·S_r', summed in rank order (deterministic).
  auto combine = [&](int upto, index at_token, T* dst) {
    std::vector<index> ends(static_cast<std::size_t>(size));
    index acc = 0;
    for (int r = 0; r < size; ++r) ends[std::size_t(r)] = acc += reports[std::size_t(r)].local[0];
    for (index b = 0; b < batch; ++b)
      for (index h = 0; h < hq; ++h) {
        T* out_h = dst + (b * hq + h) * f.rows * f.cols;
        std::fill(out_h, out_h + f.rows * f.cols, T(0));
        for (int r = 0; r < upto; ++r) {
          const T w = T(weight(std::exp(-decay_of(h)), double(at_token - ends[std::size_t(r)])));  // λ^gap
          const T* s = states.data() + r * stride + (b * hq + h) * f.rows * f.cols;
          for (index i = 0; i < f.rows * f.cols; ++i) out_h[i] += w * s[i];
        }
      }
  };
  Eigen::Tensor<T, 4, Eigen::RowMajor> prefix(batch, hq, f.rows, f.cols);
  combine(rank, begin, prefix.data());
  flush_subnormals(prefix.data(), index(prefix.size()));
  if (f.final_state) combine(size, total, static_cast<T*>(f.final_state.data));

  // 4. This slice's output from its prefix state; rank 0 starts from the caller's state exactly.
  if (after) {
    if (rank != 0) add_prefix_share(q, out, prefix.data(), f.decay, lin.scale, l);
  } else {
    run(rank == 0 ? f.initial_state : state_cref(prefix), state_ref{});
  }
  if (so.stats) so.stats->total_seconds += seconds_since(t_start);
}

template <class Dev, class Q, class K, class V, class O>
void lightning_impl(MPI_Comm comm, const Dev* dev, const Q& q, const K& k, const V& v, O& out,
                    const lightning_options& opt, const sequence_options& so) {
  constexpr const char* fn = "xattn::mpi::lightning_attention";
  checker c(fn);
  const index d = q.dimension(3), e = v.dimension(3);
  const chunk_family f{opt.decay, d, e, opt.initial_state, opt.final_state, opt.layout, true};
  const linear_options lin{.scale = opt.scale, .block_size = opt.block_size, .layout = opt.layout};
  chunk_parallel(fn, comm, dev, q, k, v, out, f, lin, so, c, [&](state_cref initial, state_ref final) {
    lightning_options o = opt;
    o.initial_state = initial;
    o.final_state = final;
    lightning_call(dev, q, k, v, out, o);
  });
}

template <class Dev, class Q, class K, class V, class O>
void linear_impl(MPI_Comm comm, const Dev* dev, const Q& q, const K& k, const V& v, O& out,
                 const linear_options& opt, const sequence_options& so) {
  constexpr const char* fn = "xattn::mpi::linear_attention";
  checker c(fn);
  c.require(opt.causal, "causal", "must be true: only causal linear attention is split over the sequence");
  c.require(opt.feature_map.kind() != feature::softmax, "feature_map", "the per-side softmax has no causal form");
  c.agree("normalize", opt.normalize), c.agree("eps", bits(opt.eps)), c.agree("feature_map", index(opt.feature_map.kind()));
  const index d = q.dimension(3), e = v.dimension(3);
  const chunk_family f{{}, opt.feature_map.dim(d), e + (opt.normalize ? 1 : 0), opt.initial_state, opt.final_state,
                       opt.layout};
  chunk_parallel(fn, comm, dev, q, k, v, out, f, opt, so, c, [&](state_cref initial, state_ref final) {
    linear_options o = opt;
    o.initial_state = initial;
    o.final_state = final;
    linear_call(dev, q, k, v, out, o);
  });
}

// ---------------------------------------------------------------------------------------------
// Softmax: ring attention and sharded decode

/// A run of tokens of one rank: its first global position, its length, its first local row.
struct piece {
  index start = 0, length = 0, local = 0;
};

/// Copies rows [from, from + len) of a tensor in order `l` into a [batch, len, heads, dim] buffer.
template <class T>
void pack_rows(const T* src, const std::array<index, 4>& d, layout l, index from, index len, T* dst) {
  const index batch = d[0], h = heads(d, l), dim = d[3];
  for (index b = 0; b < batch; ++b)
    for (index s = 0; s < len; ++s)
      for (index x = 0; x < h; ++x, dst += dim) {
        const T* r = row(src, d, l, b, from + s, x);
        std::copy(r, r + dim, dst);
      }
}

/// Merges a partial (o, lse) into running (acc, acc_lse) by log-sum-exp: with m = max(L, l),
/// acc ← (e^(L−m)·acc + e^(l−m)·o) / (e^(L−m) + e^(l−m)), L ← m + log(e^(L−m) + e^(l−m)).
/// A partial with lse −inf (every key masked) changes nothing.
template <class A, class T>
void merge_row(A* acc, A& acc_lse, const T* o, double lse, index dv) {
  if (lse == -std::numeric_limits<double>::infinity()) return;
  const double m = std::max(double(acc_lse), lse);
  const double wa = std::exp(double(acc_lse) - m), wo = std::exp(lse - m), sum = wa + wo;
  for (index x = 0; x < dv; ++x) acc[x] = A((wa * double(acc[x]) + wo * double(o[x])) / sum);
  acc_lse = A(m + std::log(sum));
}

inline void check_ring_options(checker& c, const softmax_options& opt) {
  c.require(opt.window_left < 0 && opt.window_right < 0, "window_left",
            "windows are not supported across ranks (got window_left ", opt.window_left, ", window_right ",
            opt.window_right, ")");
  c.require(opt.seqlens_q.empty() && opt.seqlens_k.empty(), "seqlens_q",
            "per-batch lengths (seqlens_q, seqlens_k) are not supported across ranks");
  c.require(opt.alibi_slopes.empty(), "alibi_slopes", "not supported across ranks (positions are global)");
  c.require(opt.sink_logits.empty(), "sink_logits", "not supported across ranks (a sink would count once per rank)");
  c.require(!opt.bias && !opt.mask, "bias", "bias and mask are not supported across ranks");
  c.require(!opt.scale || (std::isfinite(*opt.scale) && *opt.scale > 0), "scale", "must be finite and > 0");
  c.require(std::isfinite(opt.softcap) && opt.softcap >= 0, "softcap", "must be finite and >= 0, got ", opt.softcap);
  c.agree("scale", opt.scale ? bits(*opt.scale) : -1), c.agree("softcap", bits(opt.softcap));
  c.agree("causal", opt.causal), c.agree("layout", index(opt.layout));
}

/// The extents of an attention call's four tensors, once their shapes agree.
struct extents {
  index batch = 0, nq = 0, nk = 0, hq = 0, hkv = 0, d = 0, dv = 0;
};

/// q [B, Nq, Hq, d], k [B, Nk, Hkv, d], v [B, Nk, Hkv, dv], out [B, Nq, Hq, dv] in the order `l`;
/// Hkv divides Hq. Failures are recorded in `c` (thrown collectively later), naming k and v as given.
inline extents check_shapes(checker& c, const std::array<index, 4>& qd, const std::array<index, 4>& kd,
                            const std::array<index, 4>& vd, const std::array<index, 4>& od, layout l,
                            const char* kname, const char* vname) {
  extents x{qd[0], seq(qd, l), seq(kd, l), heads(qd, l), heads(kd, l), qd[3], vd[3]};
  c.require(kd[0] == x.batch && kd[3] == x.d, kname, "shape ", shape(kd), " does not match q ", shape(qd));
  c.require(vd[0] == x.batch && seq(vd, l) == x.nk && heads(vd, l) == x.hkv, vname, "shape ", shape(vd),
            " does not match ", kname, " ", shape(kd));
  c.require(x.hkv > 0 && x.hq % x.hkv == 0, kname, "q heads ", x.hq, " not divisible by k/v heads ", x.hkv);
  c.require(od[0] == x.batch && seq(od, l) == x.nq && heads(od, l) == x.hq && od[3] == x.dv, "out", "shape ",
            shape(od), " != expected for q ", shape(qd), " and ", vname, " ", shape(vd));
  return x;
}

template <class Dev, class Q, class K, class V, class O, class L>
void ring_impl(MPI_Comm comm, const Dev* dev, const Q& q, const K& k, const V& v, O& out, L* lse,
               const softmax_options& opt, const ring_options& ro) {
  using T = scalar_of<Q>;
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;  // accumulators
  constexpr const char* fn = "xattn::mpi::ring_attention";
  const auto t_start = clock::now();
  int size = 0, rank = 0;
  MPI_Comm_size(comm, &size);
  MPI_Comm_rank(comm, &rank);
  const layout l = opt.layout;
  const auto qd = dims(q), kd = dims(k), vd = dims(v), od = dims(out);
  checker c(fn);
  check_tensor(c, "q", q), check_tensor(c, "k", k), check_tensor(c, "v", v), check_tensor(c, "out", out);
  const extents x = check_shapes(c, qd, kd, vd, od, l, "k", "v");
  const index batch = x.batch, nq = x.nq, nk = x.nk, hq = x.hq, hkv = x.hkv, d = x.d, dv = x.dv;
  if (lse)
    c.require(lse->dimension(0) == batch && lse->dimension(1) == hq && lse->dimension(2) == nq, "lse", "shape [",
              lse->dimension(0), ", ", lse->dimension(1), ", ", lse->dimension(2), "] != expected [", batch, ", ",
              hq, ", ", nq, "]");
  check_ring_options(c, opt);
  const bool zigzag = ro.split == split::zigzag;
  if (opt.causal) c.require(nq == nk, "k", "seq ", nk, " != q seq ", nq, ": causal ring attention splits q and k alike");
  if (zigzag) {
    c.require(opt.causal, "split", "zigzag balances causal work; use split::contiguous without causal");
    c.require(nq % 2 == 0, "q", "seq ", nq, " must be even under the zigzag split (two equal chunks)");
  }
  c.agree("batch", batch), c.agree("q heads", hq), c.agree("k/v heads", hkv), c.agree("head_dim", d);
  c.agree("v head_dim", dv), c.agree("split", index(ro.split)), c.agree("element type", sizeof(T));
  c.agree("lse given", lse != nullptr);
  if (zigzag) c.agree("q seq (zigzag chunks are equal)", nq);
  const auto reports = c.settle(comm, nq, nk, ro.stats);
  index total_q = 0, total_k = 0;
  for (const auto& r : reports) total_q += r.local[0], total_k += r.local[1];
  if (ro.total_length != 0 && (total_q != ro.total_length || total_k != ro.total_length))
    throw error(std::string(fn) + ": q: the slices add up to " + std::to_string(total_q) + " query and " +
                std::to_string(total_k) + " key tokens, not total_length " + std::to_string(ro.total_length));

  // The pieces of every rank: contiguous = one, zigzag = chunks r and 2P−1−r.
  auto pieces_of = [&](int r, int which) {  // which: 0 = q lengths, 1 = k lengths
    std::vector<piece> p;
    if (zigzag) {
      const index ch = reports[std::size_t(r)].local[0] / 2;
      p.push_back({r * ch, ch, 0});
      p.push_back({(2 * size - 1 - r) * ch, ch, ch});
    } else {
      index start = 0;
      for (int x = 0; x < r; ++x) start += reports[std::size_t(x)].local[which];
      p.push_back({start, reports[std::size_t(r)].local[which], 0});
    }
    return p;
  };
  const std::vector<piece> qp = pieces_of(rank, 0);

  // Query pieces packed as [batch, len, Hq, d]; accumulators [batch, len, Hq, dv] and [batch, Hq, len].
  std::vector<std::vector<T>> qbuf;
  std::vector<std::vector<A>> acc, acc_lse;
  for (const piece& p : qp) {
    qbuf.emplace_back(std::size_t(batch * p.length * hq * d));
    pack_rows(q.data(), qd, l, p.local, p.length, qbuf.back().data());
    acc.emplace_back(std::size_t(batch * p.length * hq * dv), A(0));
    acc_lse.emplace_back(std::size_t(batch * hq * p.length), -std::numeric_limits<A>::infinity());
  }

  // The travelling block: k then v, each [batch, nk_r, Hkv, ·] (a zigzag rank's two chunks in order).
  auto block_size = [&](int r) { return std::size_t(batch * reports[std::size_t(r)].local[1] * hkv * (d + dv)); };
  std::size_t most = 0;
  for (int r = 0; r < size; ++r) most = std::max(most, block_size(r));
  std::vector<T> buf[2] = {std::vector<T>(most), std::vector<T>(most)};
  pack_rows(k.data(), kd, l, 0, nk, buf[0].data());
  pack_rows(v.data(), vd, l, 0, nk, buf[0].data() + batch * nk * hkv * d);

  std::vector<T> o_tmp, l_tmp;
  const int right = (rank + 1) % size, left = (rank + size - 1) % size;
  for (int step = 0; step < size; ++step) {
    const int src = (rank - step + size) % size;  // the rank whose K/V is in hand
    const int next = (src - 1 + size) % size;     // the one arriving for the next step
    MPI_Request req[2];
    const bool pass = step + 1 < size;
    if (pass) {
      MPI_Irecv(buf[(step + 1) % 2].data(), int(block_size(next)), datatype<T>(), left, step, comm, &req[0]);
      MPI_Isend(buf[step % 2].data(), int(block_size(src)), datatype<T>(), right, step, comm, &req[1]);
    }
    const index nks = reports[std::size_t(src)].local[1];
    T* kb = buf[step % 2].data();
    T* vb = kb + batch * nks * hkv * d;
    for (const piece& kp : pieces_of(src, 1)) {
      // The piece's rows as [batch, len, Hkv, ·] tensors (copied out of the block when it has two pieces).
      std::vector<T> ks, vs;
      const T* kptr = kb;
      const T* vptr = vb;
      if (kp.length != nks) {
        ks.resize(std::size_t(batch * kp.length * hkv * d)), vs.resize(std::size_t(batch * kp.length * hkv * dv));
        pack_rows(kb, {batch, nks, hkv, d}, layout::bshd, kp.local, kp.length, ks.data());
        pack_rows(vb, {batch, nks, hkv, dv}, layout::bshd, kp.local, kp.length, vs.data());
        kptr = ks.data(), vptr = vs.data();
      }
      const Eigen::TensorMap<const Eigen::Tensor<T, 4, Eigen::RowMajor>> km(kptr, batch, kp.length, hkv, d);
      const Eigen::TensorMap<const Eigen::Tensor<T, 4, Eigen::RowMajor>> vm(vptr, batch, kp.length, hkv, dv);
      for (std::size_t i = 0; i < qp.size(); ++i) {
        const piece& p = qp[i];
        softmax_options o = opt;
        o.layout = layout::bshd;
        if (opt.causal) {
          if (kp.start >= p.start + p.length) continue;  // every key in every query's future
          // The split gives q and k the same pieces: a key piece is this query piece or wholly before it.
          o.causal = kp.start == p.start;
        }
        o_tmp.resize(std::size_t(batch * p.length * hq * dv));
        l_tmp.resize(std::size_t(batch * hq * p.length));
        const Eigen::TensorMap<const Eigen::Tensor<T, 4, Eigen::RowMajor>> qm(qbuf[i].data(), batch, p.length, hq, d);
        Eigen::TensorMap<Eigen::Tensor<T, 4, Eigen::RowMajor>> om(o_tmp.data(), batch, p.length, hq, dv);
        Eigen::TensorMap<Eigen::Tensor<T, 3, Eigen::RowMajor>> lm(l_tmp.data(), batch, hq, p.length);
        softmax_call(dev, qm, km, vm, om, lm, o);
        for (index b = 0; b < batch; ++b)
          for (index h = 0; h < hq; ++h)
            for (index s = 0; s < p.length; ++s)
              merge_row(&acc[i][std::size_t(((b * p.length + s) * hq + h) * dv)],
                        acc_lse[i][std::size_t((b * hq + h) * p.length + s)],
                        &o_tmp[std::size_t(((b * p.length + s) * hq + h) * dv)],
                        double(l_tmp[std::size_t((b * hq + h) * p.length + s)]), dv);
      }
    }
    if (pass) {
      const auto t_wait = clock::now();
      MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
      if (ro.stats) ro.stats->wait_seconds += seconds_since(t_wait);
    }
  }

  for (std::size_t i = 0; i < qp.size(); ++i) {
    const piece& p = qp[i];
    for (index b = 0; b < batch; ++b)
      for (index h = 0; h < hq; ++h)
        for (index s = 0; s < p.length; ++s) {
          auto* o = row(out.data(), od, l, b, p.local + s, h);
          const A* a = &acc[i][std::size_t(((b * p.length + s) * hq + h) * dv)];
          for (index x = 0; x < dv; ++x) o[x] = scalar_of<O>(a[x]);
          if (lse) (*lse)(b, h, p.local + s) = scalar_of<L>(acc_lse[i][std::size_t((b * hq + h) * p.length + s)]);
        }
  }
  if (ro.stats) ro.stats->total_seconds += seconds_since(t_start);
}

template <class Dev, class Q, class K, class V, class O>
void decode_impl(MPI_Comm comm, const Dev* dev, const Q& q, const K& k, const V& v, O& out,
                 std::span<const int> shard_lengths, const softmax_options& opt, const sequence_options& so) {
  using T = scalar_of<Q>;
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr const char* fn = "xattn::mpi::sharded_decode";
  const auto t_start = clock::now();
  int size = 0;
  MPI_Comm_size(comm, &size);
  const layout l = opt.layout;
  const auto qd = dims(q), kd = dims(k), vd = dims(v), od = dims(out);
  checker c(fn);
  check_tensor(c, "q", q), check_tensor(c, "k_shard", k), check_tensor(c, "v_shard", v), check_tensor(c, "out", out);
  const extents x = check_shapes(c, qd, kd, vd, od, l, "k_shard", "v_shard");
  const index batch = x.batch, nq = x.nq, cap = x.nk, hq = x.hq, hkv = x.hkv, d = x.d, dv = x.dv;
  c.require(index(shard_lengths.size()) == batch, "shard_lengths", "has ", shard_lengths.size(), " entries for batch ",
            batch);
  index valid = 0;
  for (int x : shard_lengths) {
    c.require(x >= 0 && x <= cap, "shard_lengths", "entry ", x, " outside [0, ", cap, "] (k_shard ", shape(kd), ")");
    valid += x;
  }
  c.require(!opt.causal || nq == 1, "causal", "a causal decode of ", nq,
            " query rows is not supported across shards (one row needs no mask)");
  check_ring_options(c, opt);
  c.agree("batch", batch), c.agree("q seq", nq), c.agree("q heads", hq), c.agree("k/v heads", hkv);
  c.agree("head_dim", d), c.agree("v head_dim", dv), c.agree("element type", sizeof(T));
  const auto reports = c.settle(comm, valid, cap, so.stats);
  index total = 0;
  for (const auto& r : reports) total += r.local[0];
  if (so.total_length != 0 && total != so.total_length)
    throw error(std::string(fn) + ": shard_lengths: the shards hold " + std::to_string(total) +
                " valid keys summed over ranks and batch, not total_length " + std::to_string(so.total_length));

  // This shard's partial: out and lse of every (b, row, head) packed as [dv values, lse].
  const index rows = batch * nq * hq, per_rank = rows * (dv + 1);
  Eigen::Tensor<T, 4, Eigen::RowMajor> o(batch, nq, hq, dv);
  Eigen::Tensor<T, 3, Eigen::RowMajor> ls(batch, hq, nq);
  softmax_options so_opt = opt;
  so_opt.seqlens_k = shard_lengths;
  if (l == layout::bhsd) {  // the partial is computed in bshd; q and the cache keep their order
    Eigen::Tensor<T, 4, Eigen::RowMajor> ob(batch, hq, nq, dv);
    softmax_call(dev, q, k, v, ob, ls, so_opt);
    for (index b = 0; b < batch; ++b)
      for (index s = 0; s < nq; ++s)
        for (index h = 0; h < hq; ++h)
          for (index x = 0; x < dv; ++x) o(b, s, h, x) = ob(b, h, s, x);
  } else {
    softmax_call(dev, q, k, v, o, ls, so_opt);
  }
  std::vector<T> mine(static_cast<std::size_t>(per_rank)), all(static_cast<std::size_t>(per_rank * size));
  for (index b = 0; b < batch; ++b)
    for (index s = 0; s < nq; ++s)
      for (index h = 0; h < hq; ++h) {
        T* dst = &mine[std::size_t(((b * nq + s) * hq + h) * (dv + 1))];
        std::copy(&o(b, s, h, 0), &o(b, s, h, 0) + dv, dst);
        dst[dv] = ls(b, h, s);
      }
  const auto t_wait = clock::now();
  MPI_Allgather(mine.data(), int(per_rank), datatype<T>(), all.data(), int(per_rank), datatype<T>(), comm);
  if (so.stats) so.stats->wait_seconds += seconds_since(t_wait);
  // Merged in rank order on every rank: the same bits everywhere.
  std::vector<A> acc(static_cast<std::size_t>(dv));
  for (index b = 0; b < batch; ++b)
    for (index s = 0; s < nq; ++s)
      for (index h = 0; h < hq; ++h) {
        const index at = ((b * nq + s) * hq + h) * (dv + 1);
        std::fill(acc.begin(), acc.end(), A(0));
        A acc_lse = -std::numeric_limits<A>::infinity();
        for (int r = 0; r < size; ++r) {
          const T* p = &all[std::size_t(r * per_rank + at)];
          merge_row(acc.data(), acc_lse, p, double(p[dv]), dv);
        }
        auto* dst = row(out.data(), od, l, b, s, h);
        for (index x = 0; x < dv; ++x) dst[x] = scalar_of<O>(acc[std::size_t(x)]);
      }
  if (so.stats) so.stats->total_seconds += seconds_since(t_start);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Entry points. Each has a serial form and one taking an Eigen::ThreadPoolDevice for the rank's
// own threads. `comm` is any intra-communicator; rank order is sequence order.

/// Lightning attention over a sequence split across the ranks of `comm` (LASP-2). Each rank passes
/// its contiguous slice of q, k, v and out (lengths may differ; at least one token each). Only rank 0
/// may pass opt.initial_state (the state before the sequence); every rank that passes opt.final_state
/// receives the state after the whole sequence. Communication: one all-gather of P states of
/// batch·Hq·d·e values.
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void lightning_attention(MPI_Comm comm, const Q& q, const K& k, const V& v, O&& out, const lightning_options& opt = {},
                         const sequence_options& so = {}) {
  detail::lightning_impl(comm, static_cast<const detail::no_device*>(nullptr), q, k, v, out, opt, so);
}
template <thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void lightning_attention(MPI_Comm comm, const D& device, const Q& q, const K& k, const V& v, O&& out,
                         const lightning_options& opt = {}, const sequence_options& so = {}) {
  detail::lightning_impl(comm, &device, q, k, v, out, opt, so);
}

/// Causal linear attention (opt.causal must be true) over a sequence split across the ranks, as
/// lightning_attention: the state [batch, Hq, D', e + normalize] carries the normaliser's column.
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void linear_attention(MPI_Comm comm, const Q& q, const K& k, const V& v, O&& out, const linear_options& opt,
                      const sequence_options& so = {}) {
  detail::linear_impl(comm, static_cast<const detail::no_device*>(nullptr), q, k, v, out, opt, so);
}
template <thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void linear_attention(MPI_Comm comm, const D& device, const Q& q, const K& k, const V& v, O&& out,
                      const linear_options& opt, const sequence_options& so = {}) {
  detail::linear_impl(comm, &device, q, k, v, out, opt, so);
}

/// Softmax attention with q and k/v split across the ranks (ring attention). Each rank passes its
/// slice of q, k, v and out ([batch, n_r, heads, dim]; ro.split says how the sequence is laid out;
/// causal needs q and k split alike). K/V blocks travel around the ring, each sent while the one in
/// hand is computed on; partials merge by log-sum-exp. Windows, per-batch lengths, ALiBi, sinks,
/// bias and mask are rejected. Communication: P − 1 blocks of batch·n_r·Hkv·(d + dv) values per rank.
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void ring_attention(MPI_Comm comm, const Q& q, const K& k, const V& v, O&& out, const softmax_options& opt = {},
                    const ring_options& ro = {}) {
  detail::ring_impl(comm, static_cast<const detail::no_device*>(nullptr), q, k, v, out,
                    static_cast<Eigen::Tensor<scalar_of<Q>, 3, Eigen::RowMajor>*>(nullptr), opt, ro);
}
/// The same, also writing each local query row's log-sum-exp over all keys to `lse` [batch, Hq, n_r].
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L>
void ring_attention(MPI_Comm comm, const Q& q, const K& k, const V& v, O&& out, L&& lse,
                    const softmax_options& opt = {}, const ring_options& ro = {}) {
  detail::ring_impl(comm, static_cast<const detail::no_device*>(nullptr), q, k, v, out, &lse, opt, ro);
}
template <thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void ring_attention(MPI_Comm comm, const D& device, const Q& q, const K& k, const V& v, O&& out,
                    const softmax_options& opt = {}, const ring_options& ro = {}) {
  detail::ring_impl(comm, &device, q, k, v, out, static_cast<Eigen::Tensor<scalar_of<Q>, 3, Eigen::RowMajor>*>(nullptr),
                    opt, ro);
}
template <thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L>
void ring_attention(MPI_Comm comm, const D& device, const Q& q, const K& k, const V& v, O&& out, L&& lse,
                    const softmax_options& opt = {}, const ring_options& ro = {}) {
  detail::ring_impl(comm, &device, q, k, v, out, &lse, opt, ro);
}

/// Decode against a KV cache split across the ranks: every rank passes the same q [batch, Nq, Hq, d]
/// and its shard [batch, capacity_r, Hkv, d | dv], of which shard_lengths[b] rows are valid (0 allowed).
/// Every rank receives the merged out. Communication: one all-gather of batch·Nq·Hq·(dv + 1) values
/// per rank.
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void sharded_decode(MPI_Comm comm, const Q& q, const K& k_shard, const V& v_shard, O&& out,
                    std::span<const int> shard_lengths, const softmax_options& opt = {},
                    const sequence_options& so = {}) {
  detail::decode_impl(comm, static_cast<const detail::no_device*>(nullptr), q, k_shard, v_shard, out, shard_lengths,
                      opt, so);
}
template <thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void sharded_decode(MPI_Comm comm, const D& device, const Q& q, const K& k_shard, const V& v_shard, O&& out,
                    std::span<const int> shard_lengths, const softmax_options& opt = {},
                    const sequence_options& so = {}) {
  detail::decode_impl(comm, &device, q, k_shard, v_shard, out, shard_lengths, opt, so);
}

// ---------------------------------------------------------------------------------------------
// The zigzag layout

/// Rank `rank`'s share of a whole sequence `x` [batch, N, heads, dim] (order `l`) under the zigzag
/// split over `ranks` ranks: chunks rank and 2·ranks−1−rank of 2·ranks equal chunks, concatenated.
/// N must be a multiple of 2·ranks. A local copy; no communication.
template <row_major_tensor<4> X>
detail::tensor_of<X> zigzag_split(const X& x, int ranks, int rank, layout l = layout::bshd) {
  const auto d = detail::dims(x);
  const std::ptrdiff_t n = detail::seq(d, l);
  if (ranks < 1 || rank < 0 || rank >= ranks || n % (2 * std::ptrdiff_t(ranks)) != 0)
    throw error("xattn::mpi::zigzag_split: x: seq " + std::to_string(n) + " of shape " + detail::shape(d) +
                " is not a multiple of 2 × ranks " + std::to_string(ranks) + " (rank " + std::to_string(rank) + ")");
  const std::ptrdiff_t ch = n / (2 * std::ptrdiff_t(ranks)), h = detail::heads(d, l);
  detail::tensor_of<X> y = l == layout::bshd ? detail::tensor_of<X>(d[0], 2 * ch, h, d[3])
                                             : detail::tensor_of<X>(d[0], h, 2 * ch, d[3]);
  const auto yd = detail::dims(y);
  const std::ptrdiff_t from[2] = {rank * ch, (2 * std::ptrdiff_t(ranks) - 1 - rank) * ch};
  for (std::ptrdiff_t b = 0; b < d[0]; ++b)
    for (int part = 0; part < 2; ++part)
      for (std::ptrdiff_t s = 0; s < ch; ++s)
        for (std::ptrdiff_t hh = 0; hh < h; ++hh) {
          const auto* src = detail::row(x.data(), d, l, b, from[part] + s, hh);
          std::copy(src, src + d[3], detail::row(y.data(), yd, l, b, part * ch + s, hh));
        }
  return y;
}

/// The inverse over `comm`: every rank passes its zigzag share `local` [batch, 2c, heads, dim] and
/// receives the whole sequence in `whole` [batch, 2·P·c, heads, dim] (one MPI_Allgather).
template <row_major_tensor<4> X, row_major_tensor<4> Y>
void zigzag_gather(MPI_Comm comm, const X& local, Y&& whole, layout l = layout::bshd) {
  using T = scalar_of<X>;
  int size = 0;
  MPI_Comm_size(comm, &size);
  const auto d = detail::dims(local), wd = detail::dims(whole);
  const std::ptrdiff_t n = detail::seq(d, l), h = detail::heads(d, l), ch = n / 2;
  if (n % 2 != 0 || wd[0] != d[0] || detail::heads(wd, l) != h || wd[3] != d[3] || detail::seq(wd, l) != n * size)
    throw error("xattn::mpi::zigzag_gather: whole: shape " + detail::shape(wd) + " does not hold " +
                std::to_string(size) + " zigzag shares of shape " + detail::shape(d));
  std::vector<T> all(static_cast<std::size_t>(local.size()) * std::size_t(size));
  MPI_Allgather(local.data(), int(local.size()), detail::datatype<T>(), all.data(), int(local.size()),
                detail::datatype<T>(), comm);
  for (int r = 0; r < size; ++r) {
    const T* share = all.data() + std::size_t(r) * std::size_t(local.size());
    const std::ptrdiff_t to[2] = {r * ch, (2 * std::ptrdiff_t(size) - 1 - r) * ch};
    for (std::ptrdiff_t b = 0; b < d[0]; ++b)
      for (int part = 0; part < 2; ++part)
        for (std::ptrdiff_t s = 0; s < ch; ++s)
          for (std::ptrdiff_t hh = 0; hh < h; ++hh) {
            const T* src = detail::row(share, d, l, b, part * ch + s, hh);
            std::copy(src, src + d[3], detail::row(whole.data(), wd, l, b, to[part] + s, hh));
          }
  }
}

}  // namespace xattn::mpi
