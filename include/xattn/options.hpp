// xattn/options.hpp — what the front doors take: the tensors they accept, the devices they run on,
// and the options struct of every family, each field with its default and meaning. Fill options
// with designated initializers at the call site: `{.causal = true, .window_left = 512}`.
// A small header below both the fast kernels and the fp64 references.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <unsupported/Eigen/CXX11/Tensor>

namespace xattn {

/// Memory order of the four axes of q, k, v and out. FlashAttention and flash-linear-attention
/// use [batch, seq, heads, head_dim]; PyTorch's SDPA uses [batch, heads, seq, head_dim].
enum class layout { bshd, bhsd };

/// An Eigen::Tensor<T, R, Eigen::RowMajor> or an Eigen::TensorMap of one (zero copy).
template <class X, int R>
concept row_major_tensor = requires(X& x) {
  { x.data() };
  { x.dimension(0) } -> std::convertible_to<std::ptrdiff_t>;
} && (std::remove_cvref_t<X>::NumDimensions == R) &&
    (static_cast<int>(Eigen::internal::traits<std::remove_cvref_t<X>>::Layout) ==
     static_cast<int>(Eigen::RowMajor));

template <class X>
using scalar_of = std::remove_const_t<typename std::remove_cvref_t<X>::Scalar>;

/// A read-only reference to a 4-D row-major tensor of T, built implicitly from an Eigen::Tensor
/// or an Eigen::TensorMap; used for the optional inputs of an options struct (bias, mask).
template <class T>
struct tensor_cref {
  const T* data = nullptr;
  std::array<std::ptrdiff_t, 4> dims{};

  tensor_cref() = default;
  template <row_major_tensor<4> X>
    requires std::same_as<scalar_of<X>, T>
  tensor_cref(const X& x)  // NOLINT: implicit on purpose, so `.bias = my_tensor` reads well
      : data(x.data()), dims{x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)} {}
  explicit operator bool() const { return data != nullptr; }
};

/// A writable reference to a 4-D row-major tensor of T, built implicitly from an Eigen::Tensor or
/// an Eigen::TensorMap of non-const T; used for the optional outputs of a gradients struct (dbias).
template <class T>
struct tensor_ref {
  T* data = nullptr;
  std::array<std::ptrdiff_t, 4> dims{};

  tensor_ref() = default;
  template <row_major_tensor<4> X>
    requires std::same_as<scalar_of<X>, T> && (!std::is_const_v<typename std::remove_cvref_t<X>::Scalar>)
  tensor_ref(X& x)  // NOLINT: implicit on purpose, so `.bias = my_gradient` reads well
      : data(x.data()), dims{x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)} {}
  explicit operator bool() const { return data != nullptr; }
};

/// What the device overloads accept: Eigen::ThreadPoolDevice, or a type with the same two members
/// (numThreads(), and enqueueNoNotification(f), which runs f on one of its threads some time later).
template <class D>
concept thread_pool_device = requires(const D& d) {
  { d.numThreads() } -> std::convertible_to<int>;
  d.enqueueNoNotification([] {});
};


/// How the products of a call are computed. exact: in float (double for double tensors), 16-bit
/// operands converted to float first. bf16: on the CPU's bf16 units where they exist (see
/// xattn/paths.hpp) with operands rounded to bfloat16 and every sum in float, as PyTorch's
/// fp32_precision = "bf16" and oneDNN's bf32 mode; where no bf16 path exists, exact. Calls whose K
/// and V hold bfloat16 take the bf16 units either way.
enum class compute { exact, bf16 };

/// Options of softmax attention: softmax(scale·QKᵀ + bias + mask)·V. Conventions are
/// FlashAttention's (flash_attn_func) wherever it has one. Fill with designated initializers:
/// `{.causal = true, .window_left = 512}`.
struct softmax_options {
  std::optional<double> scale = {};         // multiplies QKᵀ; unset = 1/sqrt(head_dim) (FA's softmax_scale=None); must be > 0
  bool causal = false;                      // key j visible to query i iff j <= i + Nk − Nq: bottom-right aligned, as FA ≥ 2.1
  std::ptrdiff_t window_left = -1;                   // keys j < i + Nk − Nq − window_left are masked; −1 = unbounded (FA's window_size[0])
  std::ptrdiff_t window_right = -1;                  // keys j > i + Nk − Nq + window_right are masked; −1 = unbounded; causal forces 0
  double softcap = 0;                       // s ← cap·tanh(s/cap) on the scaled scores, before bias, ALiBi and masks (FA's softcap); 0 = off
  std::span<const float> alibi_slopes = {}; // one per query head, or B·Hq (per batch and head, row-major); adds −slope·|i + Nk − Nq − j| to the scores (FA's alibi_slopes)
  std::span<const float> sink_logits = {};  // one per query head; a logit that joins the softmax denominator with no value row (gpt-oss "sinks")
  std::span<const int> seqlens_q = {};      // one per batch: valid query rows; rows past it get zeros and LSE −inf (FA varlen)
  std::span<const int> seqlens_k = {};      // one per batch: valid keys; causal and window align with each batch's own lengths
  tensor_cref<float> bias = {};             // additive [B|1, Hq|1, Nq, Nk] in score units (PyTorch SDPA's float attn_mask), after softcap
  tensor_cref<bool> mask = {};              // [B|1, Hq|1, Nq, Nk], true = attend (PyTorch SDPA's boolean attn_mask)
  xattn::layout layout = layout::bshd;      // memory order of q, k, v and out: [batch, seq, heads, dim] or [batch, heads, seq, dim]
  xattn::compute compute = compute::exact;  // bf16: float tensors' products on the bf16 units too (see enum compute)
};

/// Gradients of the forward's learned parameters that a softmax backward call writes on request
/// (xattn/softmax_backward.hpp), beside dq, dk and dv.
struct softmax_grads {
  std::span<float> sink_logits = {};   // [Hq]: ∂L/∂sink_logits, written; needs softmax_options::sink_logits
  tensor_ref<float> bias = {};         // shaped as softmax_options::bias: ∂L/∂bias, written (summed over the batches and heads it broadcasts over)
  std::span<float> alibi_slopes = {};  // shaped as softmax_options::alibi_slopes ([Hq] or [B·Hq]): ∂L/∂slope, written
};


// ---------------------------------------------------------------------------------------------
// Linear and lightning attention (the chunk engine): feature maps, state references, options.

/// Tokens per chunk of the chunk engine when the options leave block_size at 0. 64 keeps the
/// intra-chunk work (B·(d + e) FLOPs per token) a quarter of the state work (4·d·e) at
/// d = e = 128, and every per-chunk buffer in L2; 32 and 128 measured slower.
inline constexpr std::ptrdiff_t default_chunk_size = 64;

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
  static feature_map custom(std::ptrdiff_t dim, F f) {
    feature_map m(feature::custom);
    m.custom_dim_ = dim;
    if constexpr (std::is_invocable_v<F&, std::span<const float>, std::span<float>>) m.f32_ = f;
    if constexpr (std::is_invocable_v<F&, std::span<const double>, std::span<double>>) m.f64_ = f;
    return m;
  }

  feature kind() const { return kind_; }
  /// D', the number of features of a head_dim-d row (0 for a custom map given no dimension).
  std::ptrdiff_t dim(std::ptrdiff_t d) const {
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
  std::ptrdiff_t custom_dim_ = 0;
  std::function<void(std::span<const float>, std::span<float>)> f32_;
  std::function<void(std::span<const double>, std::span<double>)> f64_;
};

/// A read-only reference to a 4-D row-major float or double tensor (Eigen::Tensor or TensorMap):
/// the initial_state of the chunk families. Its element type is checked against the call's.
struct state_cref {
  const void* data = nullptr;
  bool is_double = false;
  std::array<std::ptrdiff_t, 4> dims{};

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
  std::array<std::ptrdiff_t, 4> dims{};

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
  std::ptrdiff_t block_size = 0;                 // tokens per chunk, 1..1024; 0 = default_chunk_size. Results agree across sizes within rounding
  state_cref initial_state = {};        // [batch, heads, d, e]: the state before token 0 (a previous segment's final_state); empty = zeros
  state_ref final_state = {};           // [batch, heads, d, e]: written with the state after the last token; may be initial_state's tensor
  xattn::layout layout = layout::bshd;  // memory order of q, k, v and out (the states are always [batch, heads, d, e])
  xattn::compute compute = compute::exact;  // bf16: float tensors' products on the bf16 units too (see enum compute)
};

/// Options of the backward pass of lightning attention (lightning_backward.hpp): the forward
/// call's options, and the gradients of a loss that also depends on the states.
struct lightning_backward_options {
  lightning_options forward = {};   // the forward call's decay, scale, block_size, initial_state and layout; its final_state stays empty and compute exact
  state_ref dinitial_state = {};    // [batch, heads, d, e]: written with ∂L/∂initial_state (whether or not an initial_state was given); empty = not wanted
  state_cref dfinal_state = {};     // [batch, heads, d, e]: ∂L/∂final_state, when the loss depends on the forward's final state; empty = zeros
  std::span<double> ddecay = {};    // [Hq]: written with ∂L/∂decay_h (λ = e^−s_h), summed over the batch; empty = not wanted
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
  std::ptrdiff_t block_size = 0;                 // tokens per chunk, 1..1024; 0 = default_chunk_size
  state_cref initial_state = {};        // [batch, heads, D', e + normalize]: Σ φ(k)ᵀv so far and, with normalize, Σ φ(k) as the last column; empty = zeros
  state_ref final_state = {};           // [batch, heads, D', e + normalize]: written with the state after the last key; may be initial_state's tensor
  xattn::layout layout = layout::bshd;  // memory order of q, k, v and out (the states are always [batch, heads, D', e(+1)])
  xattn::compute compute = compute::exact;  // bf16: float tensors' products on the bf16 units too (see enum compute)
};

/// Options of the backward pass of linear attention (linear_backward.hpp): the forward call's
/// options (any built-in feature map, with or without the normaliser) and the gradients of a loss
/// that also depends on the states.
struct linear_backward_options {
  linear_options forward = {};      // the forward call's options; no custom map, no final_state, compute exact
  state_ref dinitial_state = {};    // [batch, heads, D', e (+1 normalised)]: written with ∂L/∂initial_state; empty = not wanted
  state_cref dfinal_state = {};     // [batch, heads, D', e (+1 normalised)]: ∂L/∂final_state, when the loss depends on the forward's final state; empty = zeros
};


// ---------------------------------------------------------------------------------------------
// Sliding window, streaming decode and 2-D neighborhood attention.

/// Options of sliding-window attention. Query i (aligned bottom-right, p = i + Nk − Nq, as
/// FlashAttention's window_size) sees key j when
///     p − window_left·dilation <= j <= p + window_right·dilation,  (p − j) % dilation == 0,
///     and, with chunk > 0, ⌊j / chunk⌋ == ⌊p / chunk⌋,
/// or when j < sinks and j <= p + window_right·dilation (sink tokens, StreamingLLM).
/// Fill with designated initializers: `{.window_left = 1024, .causal = true, .sinks = 4}`.
struct sliding_window_options {
  std::ptrdiff_t window_left = -1;        // neighbours seen on the left (keys at multiples of dilation); −1 = unbounded
  std::ptrdiff_t window_right = -1;       // neighbours seen on the right; −1 = unbounded; causal forces 0
  bool causal = false;           // window_right = 0
  std::ptrdiff_t dilation = 1;            // neighbours at multiples of the dilation (NATTEN's dilation); >= 1
  std::ptrdiff_t sinks = 0;               // keys [0, sinks) stay visible to every query (within the right bound); >= 0
  std::ptrdiff_t chunk = 0;               // > 0: a query sees only keys of its own chunk of this length (FA's attention_chunk, Llama 4)
  softmax_options softmax = {};  // every other option (scale, softcap, ALiBi, sink logits, lengths, bias, mask, layout, lse);
                                 // its causal and window fields must stay unset: use the ones above
};

/// A streaming (StreamingLLM) KV cache: `sinks` fixed slots for the first tokens, then a ring of
/// `window` slots for the most recent ones. Decoding against it equals sliding-window attention over
/// the whole history with {.window_left = window − 1, .causal = true, .sinks = sinks}.
struct streaming_options {
  std::ptrdiff_t sinks = 4;               // first tokens kept for ever (attention sinks); >= 0
  std::ptrdiff_t window = 1024;           // most recent tokens kept, the new one included; >= 1
  softmax_options softmax = {};  // scale, softcap, sink logits, layout; no causal, window, ALiBi, lengths, bias or mask
};

/// The cache slot of token t (0-based, counted from the start of the generation).
inline std::ptrdiff_t streaming_slot(std::ptrdiff_t t, const streaming_options& o) {
  return t < o.sinks ? t : o.sinks + (t - o.sinks) % o.window;
}

/// Options of 2-D neighborhood attention (NATTEN's na2d) over [batch, height, width, heads, dim]:
/// query (y, x) sees the kernel_h × kernel_w keys around it on its dilation grid (keys whose
/// coordinates differ from it by multiples of the dilation). Near a border the window shifts to
/// stay inside the image, so every query sees exactly kernel_h × kernel_w keys; along a causal axis
/// the window is the kernel − 1 preceding positions and the query's own (fewer near the start).
struct neighborhood_2d_options {
  std::ptrdiff_t kernel_h = 7;                  // odd, >= 1; kernel_h · dilation_h <= height
  std::ptrdiff_t kernel_w = 7;                  // odd, >= 1; kernel_w · dilation_w <= width
  std::ptrdiff_t dilation_h = 1;                // >= 1
  std::ptrdiff_t dilation_w = 1;                // >= 1
  bool causal_h = false;               // along the height: keys at rows <= the query's row only
  bool causal_w = false;               // along the width: keys at columns <= the query's column only
  std::optional<double> scale = {};    // multiplies QKᵀ; unset = 1/sqrt(head_dim); must be > 0
  xattn::compute compute = compute::exact;  // bf16: float tensors' products on the bf16 units too (see enum compute)
};

}  // namespace xattn
