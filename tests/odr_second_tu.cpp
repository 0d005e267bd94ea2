// The second translation unit of the ODR check (see odr_check.hpp).
#include "odr_check.hpp"

#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

namespace xattn_test {

Eigen::Tensor<float, 4, Eigen::RowMajor> odr_second_tu_attention() {
  Eigen::Tensor<float, 4, Eigen::RowMajor> q, k, v;
  odr_inputs(q, k, v);
  Eigen::Tensor<float, 4, Eigen::RowMajor> out(kOdrBatch, kOdrSeq, kOdrHeads, kOdrDim);
  xattn::softmax_attention(q, k, v, out, {.causal = true});
  return out;
}

}  // namespace xattn_test
