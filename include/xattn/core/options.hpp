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

// ---------------------------------------------------------------------------------------------
// Linear and lightning attention (the chunk engine): feature maps, state references, options.

#include <functional>
#include <utility>

namespace xattn {

/// Tokens per chunk of the chunk engine when the options leave block_size at 0. 64 keeps the
/// intra-chunk work (B·(d + e) FLOPs per token) a quarter of the state work (4·d·e) at
/// d = e = 128, and every per-chunk buffer in L2; 32 and 128 measured slower.
inline constexpr index default_chunk_size = 64;

/// The feature maps φ of linear attention, applied to every row of q and k (head_dim d → D').
enum class feature {
  identity,      // φ(x) = x; D' = d
  elu_plus_one,  // φ(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs"); D' = d
  relu,          // φ(x) = max(x, 0); D' = d
  taylor,        // Based's 2nd-order Taylor map of exp: [1, x, x⊗x/√2], so φ(q)·φ(k) = 1 + q·k + (q·k)²/2;
                 // stored compactly as [1, x_0..x_{d-1}, x_i²/√2 (i < d), x_i·x_j (i < j, row-major)]:
                 // the same inner products with D' = 1 + d + d(d+1)/2 (fla's TaylorFeatureMap layout
                 // without its d^-¼ input scaling: scale q and k by d^-¼ for Based's exp(q·k/√d))
  softmax,       // Efficient Attention (Shen et al. 2021): q → softmax over its d features, k → softmax
                 // of each feature over the sequence; non-causal only; D' = d
  custom,        // a user callable (learned maps such as Hedgehog's): see feature_map::custom
};

/// A feature map: one of the built-in kinds (implicitly, `.feature_map = xattn::feature::relu`) or
/// a user callable made by feature_map::custom.
class feature_map {
 public:
  feature_map() = default;
  feature_map(feature kind) : kind_(kind) {}  // NOLINT: implicit on purpose

  /// A user map y = φ(x) with x of the call's head_dim d and y of `dim` features, called as
  /// f(std::span<const T> x, std::span<T> y) for T = float and/or double (a generic lambda serves
  /// both). It is called once per row of q and of k, concurrently from the device's threads, and
  /// must write every element of y.
  template <class F>
  static feature_map custom(index dim, F f) {
    feature_map m(feature::custom);
    m.custom_dim_ = dim;
    if constexpr (std::is_invocable_v<F&, std::span<const float>, std::span<float>>) m.f32_ = f;
    if constexpr (std::is_invocable_v<F&, std::span<const double>, std::span<double>>) m.f64_ = f;
    return m;
  }

  feature kind() const { return kind_; }
  /// D', the number of features of a head_dim-d row (0 for a custom map given no dimension).
  index dim(index d) const {
    switch (kind_) {
      case feature::taylor: return 1 + d + d * (d + 1) / 2;
      case feature::custom: return custom_dim_;
      default: return d;
    }
  }
  /// The user callable for element type T (empty when the map was not made for T).
  template <class T>
  const std::function<void(std::span<const T>, std::span<T>)>& callable() const {
    if constexpr (std::is_same_v<T, float>) return f32_; else return f64_;
  }

 private:
  feature kind_ = feature::identity;
  index custom_dim_ = 0;
  std::function<void(std::span<const float>, std::span<float>)> f32_;
  std::function<void(std::span<const double>, std::span<double>)> f64_;
};

/// A read-only reference to a 4-D row-major float or double tensor (Eigen::Tensor or TensorMap):
/// the initial_state of the chunk families. Its element type is checked against the call's.
struct state_cref {
  const void* data = nullptr;
  bool is_double = false;
  std::array<index, 4> dims{};

  state_cref() = default;
  template <row_major_tensor<4> X>
    requires std::same_as<scalar_of<X>, float> || std::same_as<scalar_of<X>, double>
  state_cref(const X& x)  // NOLINT: implicit on purpose, so `.initial_state = s` reads well
      : data(x.data()), is_double(std::same_as<scalar_of<X>, double>),
        dims{x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)} {}
  explicit operator bool() const { return data != nullptr; }
};

/// A writable reference to a 4-D row-major float or double tensor: the final_state of the chunk
/// families. Built from a non-const Eigen::Tensor or a TensorMap over writable memory.
struct state_ref {
  void* data = nullptr;
  bool is_double = false;
  std::array<index, 4> dims{};

  state_ref() = default;
  template <row_major_tensor<4> X>
    requires(std::same_as<scalar_of<X>, float> || std::same_as<scalar_of<X>, double>) &&
            (!std::is_const_v<std::remove_pointer_t<decltype(std::declval<X&>().data())>>)
  state_ref(X&& x)  // NOLINT: implicit on purpose, so `.final_state = s` reads well
      : data(x.data()), is_double(std::same_as<scalar_of<X>, double>),
        dims{x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)} {}
  explicit operator bool() const { return data != nullptr; }
};

/// Options of lightning attention (Lightning Attention-2): per batch and query head h,
///   o_t = Σ_{j≤t} exp(−s_h·(t−j)) · scale·(q_t·k_j) · v_j
/// (the official kernel's math). Fill with designated initializers: `{.decay = slopes}`.
struct lightning_options {
  std::span<const double> decay = {};   // s_h >= 0, one per query head (see lightning_slopes); empty = 0 for every head (no decay)
  double scale = 1;                     // multiplies q·k; 1 as the official kernel (fla's chunk_lightning_attn defaults to 1/sqrt(d)); must be > 0
  index block_size = 0;                 // tokens per chunk, 1..1024; 0 = default_chunk_size. Results agree across sizes within rounding
  state_cref initial_state = {};        // [batch, heads, d, e]: the state before token 0 (a previous segment's final_state); empty = zeros
  state_ref final_state = {};           // [batch, heads, d, e]: written with the state after the last token; may be initial_state's tensor
  xattn::layout layout = layout::bshd;  // memory order of q, k, v and out (the states are always [batch, heads, d, e])
};

/// Options of linear attention: out = φ(Q)·(φ(K)ᵀ·V)·scale, optionally divided row by row by
/// scale·φ(q_t)·Σ_j φ(k_j) + eps; causal sums run over j <= t. Fill with designated initializers:
/// `{.causal = true, .feature_map = xattn::feature::elu_plus_one, .normalize = true}`.
struct linear_options {
  bool causal = false;                  // o_t sums over keys j <= t (Nq = Nk; chunked); false = over all keys (one state, Nq may differ)
  xattn::feature_map feature_map = {};  // φ, applied to every row of q and k; identity by default
  bool normalize = false;               // divide by scale·φ(q_t)·Σ_j φ(k_j) + eps (Katharopoulos et al.; fla's normalize=True)
  double eps = 1e-6;                    // added to the normaliser (Katharopoulos et al.'s 1e-6; fla uses 1e-10); must be >= 0
  double scale = 1;                     // multiplies φ(q)·φ(k) (fla's linear_attn defaults to 1/sqrt(d)); cancels under normalize but for eps; must be > 0
  index block_size = 0;                 // tokens per chunk, 1..1024; 0 = default_chunk_size
  state_cref initial_state = {};        // [batch, heads, D', e + normalize]: Σ φ(k)ᵀv so far and, with normalize, Σ φ(k) as the last column; empty = zeros
  state_ref final_state = {};           // [batch, heads, D', e + normalize]: written with the state after the last key; may be initial_state's tensor
  xattn::layout layout = layout::bshd;  // memory order of q, k, v and out (the states are always [batch, heads, D', e(+1)])
};

}  // namespace xattn
