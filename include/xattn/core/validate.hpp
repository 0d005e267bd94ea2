// xattn/core/validate.hpp — the checks every front door shares: the q, k, v, out preamble of the
// attention families (shapes, heads, layouts, empty axes, null data, aliasing), per-batch and
// per-head spans, memory overlap, and option values that must survive the kernels' folding into
// the element type. Each family's own checks (core/*_args.hpp) build on these.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <tuple>
#include <utility>

#include "constants.hpp"
#include "error.hpp"
#include "tensor.hpp"

namespace xattn::detail {

template <std::size_t R>
std::size_t bytes_of(const std::array<index, R>& d, std::size_t elem) {
  std::size_t n = elem;
  for (index x : d) n *= static_cast<std::size_t>(x);
  return n;
}

/// A range of memory a call reads or writes; empty ranges overlap nothing.
struct byte_range {
  const void* p = nullptr;
  std::size_t bytes = 0;
  bool overlaps(const byte_range& o) const {
    if (!p || !o.p || bytes == 0 || o.bytes == 0) return false;
    const auto a = reinterpret_cast<std::uintptr_t>(p), b = reinterpret_cast<std::uintptr_t>(o.p);
    return a < b + o.bytes && b < a + bytes;
  }
};

inline bool overlaps(const void* a, std::size_t abytes, const void* b, std::size_t bbytes) {
  return byte_range{a, abytes}.overlaps({b, bbytes});
}
template <class S>
byte_range byte_range_of(std::span<const S> s) {
  return {s.data(), s.size_bytes()};
}
template <class T>
byte_range byte_range_of(const tensor_cref<T>& t) {
  return t ? byte_range{t.data, bytes_of(t.dims, sizeof(T))} : byte_range{};
}

/// Checks a per-batch or per-head span: empty, or exactly n entries (each in [0, hi] for lengths,
/// finite otherwise).
template <class S>
void check_span(const char* fn, const char* arg, std::span<const S> s, index n, const char* per, index hi = -1) {
  if (s.empty()) return;
  require(static_cast<index>(s.size()) == n, fn, arg, "has ", s.size(), " entries, expected one per ", per, " (", n,
          ")");
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (hi >= 0)
      require(s[i] >= 0 && s[i] <= hi, fn, arg, "[", i, "] = ", s[i], " outside [0, ", hi, "]");
    else
      require(std::isfinite(static_cast<double>(s[i])), fn, arg, "[", i, "] is not finite");
  }
}

/// How a folded option value enters the kernels: added to a score (a sink logit, an ALiBi term),
/// or multiplied into an operand (a scale folded into Q), which must leave room for the products
/// of q and k: at most √max(T) (1.8e19 for float), so that inputs up to ~1e9 keep finite scores.
enum class folded { addend, multiplier };

/// Requires that `x`, a value the kernels fold into element type T (say scale·log2 e), fits T as
/// its kind needs: a scale of 1e38 passes as a double but overflows Q·scale as a float.
template <class T>
void require_representable(const char* fn, const char* arg, double x, const char* what, double given,
                           folded kind = folded::addend) {
  const double top = double(std::numeric_limits<T>::max());
  const double limit = kind == folded::multiplier ? std::sqrt(top) : top;
  require(std::isfinite(x) && std::abs(x) <= limit, fn, arg, given, " gives ", what, " = ", x, ", beyond ",
          kind == folded::multiplier ? "the square root of " : "", "the largest ",
          std::is_same_v<T, float> ? "float" : "value of the element type", " (", limit, ")");
}

/// The four tensors of an attention call, validated: views in the engines' order (compute type T,
/// each over its own storage type), with the shared extents. Heads and head dims must be positive
/// ("empty axis"); batch and sequence lengths may be 0 (an empty result, or rows that see no key),
/// and a tensor with no elements may have null data.
template <class T>
struct qkvo {
  bshd_view<const T> q, k, v;
  bshd_view<T> o;
  index batch = 0, nq = 0, nk = 0, hq = 0, hkv = 0, d = 0, dv = 0, group = 1;
  std::size_t out_bytes = 0;
  /// Does [p, p + bytes) overlap q, k or v? Names the first one it overlaps (or null).
  const char* overlapping_input(const void* p, std::size_t bytes) const {
    const std::tuple<const char*, const bshd_view<const T>*, index, index> in[] = {
        {"q", &q, nq, hq}, {"k", &k, nk, hkv}, {"v", &v, nk, hkv}};
    for (const auto& [name, t, seq, heads] : in) {
      const auto n = static_cast<std::size_t>(batch * seq * heads * t->dim) * elem_bytes(t->type);
      if (overlaps(p, bytes, t->raw, n)) return name;
    }
    return nullptr;
  }
};

/// The preamble of every attention front door: q [B, Nq, Hq, d], k [B, Nk, Hkv, d],
/// v [B, Nk, Hkv, dv], out [B, Nq, Hq, dv] in `l`'s order; Hkv divides Hq; out apart from q, k, v.
template <class T, class SQ, class SK, class SV, class SO>
qkvo<T> check_qkvo(const char* fn, const SQ* q, std::array<index, 4> qd, const SK* k, std::array<index, 4> kd,
                   const SV* v, std::array<index, 4> vd, SO* o, std::array<index, 4> od, layout l) {
  const char* order = l == layout::bshd ? "[batch, seq, heads, head_dim]" : "[batch, heads, seq, head_dim]";
  const int seq_axis = l == layout::bshd ? 1 : 2, head_axis = 3 - seq_axis;
  const std::tuple<const char*, const void*, std::array<index, 4>> all[] = {{"q", q, qd}, {"k", k, kd}, {"v", v, vd},
                                                                            {"out", o, od}};
  for (const auto& [name, ptr, d] : all) {
    for (index x : d) require(x >= 0, fn, name, "shape ", shape_str(d), " has a negative extent");
    require(d[head_axis] > 0, fn, name, "shape ", shape_str(d), " ", order, " has an empty axis: heads must be > 0");
    require(d[3] > 0, fn, name, "shape ", shape_str(d), " ", order, " has an empty axis: head_dim must be > 0");
    require(ptr != nullptr || bytes_of(d, 1) == 0, fn, name, "null data (shape ", shape_str(d), ")");
  }
  qkvo<T> t;
  t.q = make_view<const T>(q, qd, l), t.k = make_view<const T>(k, kd, l), t.v = make_view<const T>(v, vd, l);
  t.o = make_view<T>(o, od, l);
  t.batch = t.q.batch, t.nq = t.q.seq, t.nk = t.k.seq, t.hq = t.q.heads, t.hkv = t.k.heads;
  t.d = t.q.dim, t.dv = t.v.dim;
  const auto qs = shape_str(qd), ks = shape_str(kd), vs = shape_str(vd);
  require(t.k.batch == t.batch, fn, "k", "batch ", t.k.batch, " != q batch ", t.batch, " (q ", qs, ", k ", ks, ")");
  require(t.v.batch == t.batch, fn, "v", "batch ", t.v.batch, " != q batch ", t.batch, " (q ", qs, ", v ", vs, ")");
  require(t.k.dim == t.d, fn, "k", "head_dim ", t.k.dim, " != q head_dim ", t.d, " (q ", qs, ", k ", ks, ")");
  require(t.v.seq == t.nk, fn, "v", "seq ", t.v.seq, " != k seq ", t.nk, " (k ", ks, ", v ", vs, ")");
  require(t.v.heads == t.hkv, fn, "v", "heads ", t.v.heads, " != k heads ", t.hkv, " (k ", ks, ", v ", vs, ")");
  require(t.hq % t.hkv == 0, fn, "k", "q heads ", t.hq, " not divisible by k/v heads ", t.hkv, " (q ", qs, ", k ", ks,
          ")");
  t.group = t.hq / t.hkv;
  const std::array<index, 4> want = l == layout::bshd ? std::array<index, 4>{t.batch, t.nq, t.hq, t.dv}
                                                     : std::array<index, 4>{t.batch, t.hq, t.nq, t.dv};
  require(od == want, fn, "out", "shape ", shape_str(od), " != expected ", shape_str(want), " ", order, " (q ", qs,
          ", v ", vs, ")");
  t.out_bytes = bytes_of(od, sizeof(SO));
  if (const char* name = t.overlapping_input(o, t.out_bytes))
    require(false, fn, "out", "overlaps ", name, " in memory (in-place attention is not supported)");
  return t;
}

}  // namespace xattn::detail
