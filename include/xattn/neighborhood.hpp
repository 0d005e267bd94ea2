// xattn/neighborhood.hpp — 2-D neighborhood attention (NATTEN's na2d): each query pixel of an image
// sees the kernel_h × kernel_w keys around it (on its dilation grid; causal per axis on request),
// the window shifted to stay inside the image near a border.
//
//   q [batch, height, width, Hq, d]   k, v [batch, height, width, Hkv, d | dv]   out [batch, height, width, Hq, dv]
//   lse [batch, Hq, height·width] (queries in row-major image order; optional)
//
// Options: xattn::neighborhood_2d_options (options.hpp). Hkv divides Hq (at most 64 q heads per
// K/V head). Plain windows on images at least a vector wide run the row-stencil kernel
// (core/neighborhood_rows.hpp: one image row of queries in the lanes, key rows transposed once per
// column strip); dilation, causal axes and narrower images run the tile engine over image patches.
// Errors, LSE and thread-count invariance are softmax_attention's.
#pragma once

#include <algorithm>

#include "core/neighborhood_rows.hpp"
#include "core/parallel.hpp"
#include "core/schedule.hpp"
#include "core/tile_engine.hpp"
#include "core/window_args.hpp"
#include "options.hpp"

namespace xattn {

namespace detail {
/// The query patch of a 2-D neighborhood work item: pw columns × ph rows (times the G heads of a K/V
/// group, in lanes). The engine computes each vector of lanes on the key rows its windows cover, all
/// of the patch's rectangle columns, so a vector should be a compact square (lanes/G queries:
/// 4 × 4 at 16 float lanes) and pw its side; ph stacks such squares into about kLanes lanes, which
/// share the copy of their key rectangle.
inline void neighborhood_patch(index lanes, index group, index& ph, index& pw) {
  // 64, 96 and 160 lanes measured the same at kernel 13; 128 was 25 % slower (likely the L1 sets:
  // Qᵀ and Oᵀ rows 512 B apart put one vector column of them into 8 of the 64 sets).
  constexpr index kLanes = 64;
  const index per_vector = std::max<index>(1, lanes / group);
  pw = 1;
  while (pw * pw < per_vector) pw *= 2;
  ph = std::max<index>(1, kLanes / (pw * group));
}

template <class Arch, class Q, class K, class V, class O, class L, class Device>
void neighborhood_2d_forward(const Device& dev, const Q& q, const K& k, const V& v, O& out, L* lse,
                             const neighborhood_2d_options& opt) {
  constexpr const char* fn = "xattn::neighborhood_attention_2d";
  const auto p = make_image_problem(fn, q, k, v, out, lse, softmax_options{.scale = opt.scale, .compute = opt.compute});
  using T = typename std::remove_cvref_t<decltype(p)>::value_type;
  require(p.group <= 64, fn, "k", "at most 64 q heads per k/v head, got ", p.group);
  neighborhood_policy policy{make_neighborhood_spec(fn, q.dimension(1), q.dimension(2), opt)};
  if (p.batch == 0 || p.nq == 0) return;  // an empty result
  // Plain windows on images at least a vector wide: the row-stencil kernel (one image row of
  // queries in the lanes; 16-bit rows converted as it loads them, products in float: its strips
  // of one image row do not make AMX tiles). Dilation, causal axes and narrower images: the tile
  // engine's patches (float products too).
  if (neighborhood_rows<T, Arch>::covers(policy.s)) {
    neighborhood_rows<T, Arch>(p, policy.s).run(dev);
    return;
  }
  neighborhood_patch(simd::lanes_v<T, Arch>, p.group, policy.ph, policy.pw);
  softmax_forward<Arch>(p, dev, policy);
}

}  // namespace detail

/// 2-D neighborhood attention (NATTEN's na2d) over q [batch, height, width, Hq, d], k and v
/// [batch, height, width, Hkv, d | dv], out [batch, height, width, Hq, dv]; on the calling thread.
/// Options: xattn::neighborhood_2d_options (kernel, dilation and causality per axis). Hkv divides Hq.
template <class Arch = simd::default_arch, row_major_tensor<5> Q, row_major_tensor<5> K, row_major_tensor<5> V,
          row_major_tensor<5> O>
void neighborhood_attention_2d(const Q& q, const K& k, const V& v, O&& out, const neighborhood_2d_options& opt = {}) {
  detail::neighborhood_2d_forward<Arch>(detail::serial_device{}, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), opt);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<5> Q, row_major_tensor<5> K,
          row_major_tensor<5> V, row_major_tensor<5> O>
void neighborhood_attention_2d(const D& device, const Q& q, const K& k, const V& v, O&& out,
                               const neighborhood_2d_options& opt = {}) {
  detail::neighborhood_2d_forward<Arch>(device, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), opt);
}

/// The same, also writing each query's log-sum-exp to `lse` [batch, Hq, height·width] (queries in
/// row-major image order).
template <class Arch = simd::default_arch, row_major_tensor<5> Q, row_major_tensor<5> K, row_major_tensor<5> V,
          row_major_tensor<5> O, row_major_tensor<3> L>
void neighborhood_attention_2d(const Q& q, const K& k, const V& v, O&& out, L&& lse,
                               const neighborhood_2d_options& opt = {}) {
  detail::neighborhood_2d_forward<Arch>(detail::serial_device{}, q, k, v, out, &lse, opt);
}

/// The same on the threads of `device`, also writing the log-sum-exp.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<5> Q, row_major_tensor<5> K,
          row_major_tensor<5> V, row_major_tensor<5> O, row_major_tensor<3> L>
void neighborhood_attention_2d(const D& device, const Q& q, const K& k, const V& v, O&& out, L&& lse,
                               const neighborhood_2d_options& opt = {}) {
  detail::neighborhood_2d_forward<Arch>(device, q, k, v, out, &lse, opt);
}

}  // namespace xattn
