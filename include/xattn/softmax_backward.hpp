// xattn/softmax_backward.hpp — the backward pass of exact softmax attention (FlashAttention-2's
// algorithm): the gradients of a loss L with respect to q, k and v, given ∂L/∂out.
//
//   q, k, v, out, lse   as the forward call took and produced them (out and lse: its results)
//   dout  [batch, Nq, Hq, dv]   ∂L/∂out
//   dq, dk, dv                  written: shaped as q, k, v; dk and dv summed over the query heads
//                               of each K/V head (GQA)
//   (or [batch, heads, seq, dim] with .layout = xattn::layout::bhsd)
//
// Pass the forward's options unchanged. P is recomputed tile by tile from the saved LSE, so no
// Nq×Nk matrix is materialised; every option of the forward is honoured in recomputing it
// (causal, windows, seqlens, softcap with its derivative, ALiBi, bias, boolean mask, sink logits),
// and the gradients of the sink logits, the additive bias and the ALiBi slopes are written on
// request (softmax_grads, the last argument: `{.bias = dbias, .alibi_slopes = dslopes}`, each shaped
// as its option; a broadcast bias gets the sum over what it broadcasts over). They cost an extra pass
// over the visited tiles that recomputes S and dP (2 more tile products per tile, ~40 % of the
// backward), run only when asked for.
// compute = bf16 is rejected. Fully masked and padded rows give zero gradients; keys past
// seqlens_k get zero dk and dv. All tensors hold double, or float, Eigen::bfloat16 and Eigen::half
// in any mix with a float lse: 16-bit tensors are converted to float copies in the calling
// thread's reusable workspace and 16-bit gradients rounded from float ones (every sum in float, as
// the float call on the same values; core/softmax_backward_args.hpp, backward_in_float). Bad input
// throws xattn::error before anything is written. The device overloads run on an
// Eigen::ThreadPoolDevice; results are bitwise identical for any thread count.
//
// The restricted forms of softmax attention have their backward here too, on the same engine with
// their visibility rule (core/backward_rules.hpp), visiting only the tiles their forward visits:
//   sliding_window_attention_backward(..., sliding_window_options)   sinks, dilation, chunks
//   sparse_attention_backward(..., block_layout, softmax_options)     the layout's blocks
//   neighborhood_attention_2d_backward(..., neighborhood_2d_options)  rank-5 image tensors; lse
//                                                                     [batch, Hq, height·width]
// Their arguments and options are the forward's; the options' limits are those above.
#pragma once

#include "block_layout.hpp"
#include "options.hpp"
#include "core/backward_rules.hpp"
#include "core/parallel.hpp"
#include "core/softmax_backward_args.hpp"
#include "core/tile_backward.hpp"
#include "core/window_args.hpp"

namespace xattn {

namespace detail {
template <class Arch, class Q, class K, class V, class O, class L, class DO, class DQ, class DK, class DV, class Device>
void softmax_backward_call(const Device& dev, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                           const DO& dout, DQ& dq, DK& dk, DV& dv, const softmax_options& opt, const softmax_grads& grads) {
  constexpr const char* fn = "xattn::softmax_attention_backward";
  in_float_if_16bit(fn, q, k, v, out, lse, dout, dq, dk, dv, [&](const auto& q, const auto& k, const auto& v,
                                                                 const auto& out, const auto& lse, const auto& dout,
                                                                 auto& dq, auto& dk, auto& dv) {
    softmax_backward<Arch>(make_softmax_backward_problem(fn, q, k, v, out, lse, dout, dq, dk, dv, opt, grads), dev);
  });
}

template <class Arch, class Q, class K, class V, class O, class L, class DO, class DQ, class DK, class DV, class Device>
void sliding_window_backward(const Device& dev, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                             const DO& dout, DQ& dq, DK& dk, DV& dv, const sliding_window_options& opt,
                             const softmax_grads& grads) {
  constexpr const char* fn = "xattn::sliding_window_attention_backward";
  check_window_options(fn, opt);
  in_float_if_16bit(fn, q, k, v, out, lse, dout, dq, dk, dv, [&](const auto& q, const auto& k, const auto& v,
                                                                 const auto& out, const auto& lse, const auto& dout,
                                                                 auto& dq, auto& dk, auto& dv) {
    const auto bp = make_softmax_backward_problem(fn, q, k, v, out, lse, dout, dq, dk, dv, opt.softmax, grads);
    using T = typename std::remove_cvref_t<decltype(bp.fwd)>::value_type;
    softmax_backward<Arch>(bp, dev, window_rule<T>{&bp.fwd, window_spec_of(opt, bp.fwd.nq, bp.fwd.nk)}, fn);
  });
}

template <class Arch, class Q, class K, class V, class O, class L, class DO, class DQ, class DK, class DV, class Device>
void sparse_backward(const Device& dev, const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                     DQ& dq, DK& dk, DV& dv, const block_layout& layout, const softmax_options& opt,
                     const softmax_grads& grads) {
  constexpr const char* fn = "xattn::sparse_attention_backward";
  in_float_if_16bit(fn, q, k, v, out, lse, dout, dq, dk, dv, [&](const auto& q, const auto& k, const auto& v,
                                                                 const auto& out, const auto& lse, const auto& dout,
                                                                 auto& dq, auto& dk, auto& dv) {
    const auto bp = make_softmax_backward_problem(fn, q, k, v, out, lse, dout, dq, dk, dv, opt, grads);
    // the engine's tiles are 64 rows: a layout of multiples of 64 puts each tile in one block
    layout.check_for(fn, bp.fwd.nq, bp.fwd.nk, bp.fwd.hq, 64);
    softmax_backward<Arch>(bp, dev, layout_rule{&layout}, fn);
  });
}

/// The 2-D backward on the image reordered into 8 × 8 patches (patch_neighborhood_rule): q, k, v,
/// out, dout and lse gathered into patch order (padding tokens zero, their LSE −inf: rows without
/// keys), the backward run there, dq, dk and dv scattered back. The reordered copies live in the
/// calling thread's workspace (slot 2), reused by later calls. bp: the validated problem of the
/// flattened image, in row-major pixel order.
template <class Arch, class T, class Device>
void patch_backward(const Device& dev, const softmax_backward_problem<T>& bp, const neighborhood_spec& spec,
                    const softmax_options& sopt, const char* fn) {
  constexpr index kSide = patch_neighborhood_rule::kSide, kTile = patch_neighborhood_rule::kTile;
  const auto& p = bp.fwd;
  const index across = (spec.width + kSide - 1) / kSide, down = (spec.height + kSide - 1) / kSide;
  const index np = across * down * kTile, B = p.batch;
  const patch_neighborhood_rule rule{spec, across};
  const index wq = p.hq * p.d, wk = p.hkv * p.d, wv = p.hkv * p.dv, wo = p.hq * p.dv;  // floats per token
  const index sizes[] = {wq, wk, wv, wo, wo, wq, wk, wv};  // q, k, v, out, dout, dq, dk, dv
  index total = B * p.hq * np;                              // lse
  for (index w : sizes) total += B * np * w;
  T* at = static_cast<T*>(workspace::of_this_thread(2).get(sizeof(T) * std::size_t(total)));
  T* buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = at, at += B * np * sizes[i];
  T* lse = at;
  // bshd rows of one pixel: all heads × dim contiguous (the 2-D front door takes bshd only)
  const auto gather = [&](const bshd_view<const T>& src, T* dst, index width) {
    for (index b = 0; b < B; ++b)
      for (index t = 0; t < np; ++t) {
        index y, x;
        rule.pixel(t, y, x);
        T* row = dst + (b * np + t) * width;
        if (y < spec.height && x < spec.width) std::memcpy(row, src.row(b, y * spec.width + x, 0), sizeof(T) * std::size_t(width));
        else std::fill(row, row + width, T(0));
      }
  };
  gather(p.q, buf[0], wq);
  gather(p.k, buf[1], wk);
  gather(p.v, buf[2], wv);
  gather(bp.o, buf[3], wo);
  gather(bp.dout, buf[4], wo);
  const index hw = spec.height * spec.width;
  for (index bh = 0; bh < B * p.hq; ++bh)
    for (index t = 0; t < np; ++t) {
      index y, x;
      rule.pixel(t, y, x);
      lse[bh * np + t] = y < spec.height && x < spec.width ? bp.lse[bh * hw + y * spec.width + x]
                                                          : -std::numeric_limits<T>::infinity();
    }
  using map4 = Eigen::TensorMap<Eigen::Tensor<T, 4, Eigen::RowMajor>>;
  const map4 q4(buf[0], B, np, p.hq, p.d), k4(buf[1], B, np, p.hkv, p.d), v4(buf[2], B, np, p.hkv, p.dv),
      o4(buf[3], B, np, p.hq, p.dv), do4(buf[4], B, np, p.hq, p.dv);
  map4 dq4(buf[5], B, np, p.hq, p.d), dk4(buf[6], B, np, p.hkv, p.d), dv4(buf[7], B, np, p.hkv, p.dv);
  const Eigen::TensorMap<Eigen::Tensor<T, 3, Eigen::RowMajor>> l3(lse, B, p.hq, np);
  softmax_backward<Arch>(make_softmax_backward_problem(fn, q4, k4, v4, o4, l3, do4, dq4, dk4, dv4, sopt), dev, rule, fn);
  const auto scatter = [&](const T* src, const bshd_view<T>& dst, index width) {
    for (index b = 0; b < B; ++b)
      for (index t = 0; t < np; ++t) {
        index y, x;
        rule.pixel(t, y, x);
        if (y < spec.height && x < spec.width)
          std::memcpy(dst.row(b, y * spec.width + x, 0), src + (b * np + t) * width, sizeof(T) * std::size_t(width));
      }
  };
  scatter(buf[5], bp.dq, wq);
  scatter(buf[6], bp.dk, wk);
  scatter(buf[7], bp.dv, wv);
}

template <class Arch, class Q, class K, class V, class O, class L, class DO, class DQ, class DK, class DV, class Device>
void neighborhood_2d_backward(const Device& dev, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                              const DO& dout, DQ& dq, DK& dk, DV& dv, const neighborhood_2d_options& opt) {
  constexpr const char* fn = "xattn::neighborhood_attention_2d_backward";
  check_image_axes(fn, q, k, v, out);
  check_image_grads(fn, q, k, v, out, dout, dq, dk, dv);
  const neighborhood_spec spec = make_neighborhood_spec(fn, q.dimension(1), q.dimension(2), opt);
  in_float_if_16bit(fn, q, k, v, out, lse, dout, dq, dk, dv, [&](const auto& q, const auto& k, const auto& v,
                                                                 const auto& out, const auto& lse, const auto& dout,
                                                                 auto& dq, auto& dk, auto& dv) {
    const softmax_options sopt{.scale = opt.scale, .compute = opt.compute};
    auto dq4 = flat_image(dq), dk4 = flat_image(dk), dv4 = flat_image(dv);
    const auto bp = make_softmax_backward_problem(fn, flat_image(q), flat_image(k), flat_image(v), flat_image(out), lse,
                                                  flat_image(dout), dq4, dk4, dv4, sopt);
    require(bp.fwd.group <= 64, fn, "k", "at most 64 q heads per k/v head, got ", bp.fwd.group);
    if (bp.fwd.batch == 0 || bp.fwd.nq == 0) return softmax_backward<Arch>(bp, dev, neighborhood_rule{spec}, fn);
    patch_backward<Arch>(dev, bp, spec, sopt, fn);
  });
}
}  // namespace detail

/// dq, dk, dv of L given dout = ∂L/∂out, on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ,
          row_major_tensor<4> DK, row_major_tensor<4> DV>
void softmax_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                DQ&& dq, DK&& dk, DV&& dv, const softmax_options& opt = {},
                                const softmax_grads& grads = {}) {
  detail::softmax_backward_call<Arch>(detail::serial_device{}, q, k, v, out, lse, dout, dq, dk, dv, opt, grads);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void softmax_attention_backward(const D& device, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                                const DO& dout, DQ&& dq, DK&& dk, DV&& dv, const softmax_options& opt = {},
                                const softmax_grads& grads = {}) {
  detail::softmax_backward_call<Arch>(device, q, k, v, out, lse, dout, dq, dk, dv, opt, grads);
}

/// dq, dk, dv of sliding-window attention (sliding_window_attention with these options), on the
/// calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ,
          row_major_tensor<4> DK, row_major_tensor<4> DV>
void sliding_window_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                       DQ&& dq, DK&& dk, DV&& dv, const sliding_window_options& opt = {},
                                       const softmax_grads& grads = {}) {
  detail::sliding_window_backward<Arch>(detail::serial_device{}, q, k, v, out, lse, dout, dq, dk, dv, opt, grads);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void sliding_window_attention_backward(const D& device, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                                       const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                                       const sliding_window_options& opt = {}, const softmax_grads& grads = {}) {
  detail::sliding_window_backward<Arch>(device, q, k, v, out, lse, dout, dq, dk, dv, opt, grads);
}

/// dq, dk, dv of block-sparse attention (sparse_attention over `layout` with these options), on
/// the calling thread. The layout's block size is a multiple of 64, as the forward's.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ,
          row_major_tensor<4> DK, row_major_tensor<4> DV>
void sparse_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout, DQ&& dq,
                               DK&& dk, DV&& dv, const block_layout& layout, const softmax_options& opt = {},
                               const softmax_grads& grads = {}) {
  detail::sparse_backward<Arch>(detail::serial_device{}, q, k, v, out, lse, dout, dq, dk, dv, layout, opt, grads);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void sparse_attention_backward(const D& device, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                               const DO& dout, DQ&& dq, DK&& dk, DV&& dv, const block_layout& layout,
                               const softmax_options& opt = {}, const softmax_grads& grads = {}) {
  detail::sparse_backward<Arch>(device, q, k, v, out, lse, dout, dq, dk, dv, layout, opt, grads);
}

/// dq, dk, dv of 2-D neighborhood attention (neighborhood_attention_2d with these options, and its
/// lse [batch, Hq, height·width]), on the calling thread. The image is reordered into 8 × 8 patches
/// (copies in the calling thread's workspace), and the backward visits the key patches each query
/// patch's windows reach, deciding pair by pair inside them: several times the forward's work at
/// small kernels (a 13 × 13 kernel visits 9 patches of 64 keys for 169 it needs).
template <class Arch = simd::default_arch, row_major_tensor<5> Q, row_major_tensor<5> K, row_major_tensor<5> V,
          row_major_tensor<5> O, row_major_tensor<3> L, row_major_tensor<5> DO, row_major_tensor<5> DQ,
          row_major_tensor<5> DK, row_major_tensor<5> DV>
void neighborhood_attention_2d_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                        DQ&& dq, DK&& dk, DV&& dv, const neighborhood_2d_options& opt = {}) {
  detail::neighborhood_2d_backward<Arch>(detail::serial_device{}, q, k, v, out, lse, dout, dq, dk, dv, opt);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<5> Q, row_major_tensor<5> K,
          row_major_tensor<5> V, row_major_tensor<5> O, row_major_tensor<3> L, row_major_tensor<5> DO,
          row_major_tensor<5> DQ, row_major_tensor<5> DK, row_major_tensor<5> DV>
void neighborhood_attention_2d_backward(const D& device, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                                        const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                                        const neighborhood_2d_options& opt = {}) {
  detail::neighborhood_2d_backward<Arch>(device, q, k, v, out, lse, dout, dq, dk, dv, opt);
}

}  // namespace xattn
