// xattn/core/options.hpp — the options structs of the families. A small header below both the fast
// kernels and the fp64 references, so that neither has to include the other.
#pragma once

#include <optional>
#include <span>

#include "tensor.hpp"

namespace xattn {

/// Options of softmax attention: softmax(scale·QKᵀ + bias + mask)·V. Conventions are
/// FlashAttention's (flash_attn_func) wherever it has one. Fill with designated initializers:
/// `{.causal = true, .window_left = 512}`.
struct softmax_options {
  std::optional<double> scale = {};         // multiplies QKᵀ; unset = 1/sqrt(head_dim) (FA's softmax_scale=None); must be > 0
  bool causal = false;                      // key j visible to query i iff j <= i + Nk − Nq: bottom-right aligned, as FA ≥ 2.1
  index window_left = -1;                   // keys j < i + Nk − Nq − window_left are masked; −1 = unbounded (FA's window_size[0])
  index window_right = -1;                  // keys j > i + Nk − Nq + window_right are masked; −1 = unbounded; causal forces 0
  double softcap = 0;                       // s ← cap·tanh(s/cap) on the scaled scores, before bias, ALiBi and masks (FA's softcap); 0 = off
  std::span<const float> alibi_slopes = {}; // one per query head; adds −slope·|i + Nk − Nq − j| to the scores (FA's alibi_slopes)
  std::span<const float> sink_logits = {};  // one per query head; a logit that joins the softmax denominator with no value row (gpt-oss "sinks")
  std::span<const int> seqlens_q = {};      // one per batch: valid query rows; rows past it get zeros and LSE −inf (FA varlen)
  std::span<const int> seqlens_k = {};      // one per batch: valid keys; causal and window align with each batch's own lengths
  tensor_cref<float> bias = {};             // additive [B|1, Hq|1, Nq, Nk] in score units (PyTorch SDPA's float attn_mask), after softcap
  tensor_cref<bool> mask = {};              // [B|1, Hq|1, Nq, Nk], true = attend (PyTorch SDPA's boolean attn_mask)
  xattn::layout layout = layout::bshd;      // memory order of q, k, v and out: [batch, seq, heads, dim] or [batch, heads, seq, dim]
};

}  // namespace xattn
