// tests/odr_check.hpp — the ODR check: xattn's headers are included in two translation units of
// one binary (odr_second_tu.cpp and test_odr.cpp). A non-inline definition in a header, or inline
// functions that differ between the two, shows up as a link error or a wrong value.
#pragma once

#include <unsupported/Eigen/CXX11/Tensor>

namespace xattn_test {

/// The tiny case both translation units compute.
inline constexpr int kOdrBatch = 1, kOdrSeq = 5, kOdrHeads = 2, kOdrDim = 8;

/// Fills q, k, v deterministically, the same way in every translation unit.
inline void odr_inputs(Eigen::Tensor<float, 4, Eigen::RowMajor>& q, Eigen::Tensor<float, 4, Eigen::RowMajor>& k,
                       Eigen::Tensor<float, 4, Eigen::RowMajor>& v) {
  q.resize(kOdrBatch, kOdrSeq, kOdrHeads, kOdrDim);
  k.resize(kOdrBatch, kOdrSeq, kOdrHeads, kOdrDim);
  v.resize(kOdrBatch, kOdrSeq, kOdrHeads, kOdrDim);
  for (int i = 0; i < q.size(); ++i) {
    q.data()[i] = 0.01f * static_cast<float>((i * 7) % 23) - 0.1f;
    k.data()[i] = 0.02f * static_cast<float>((i * 5) % 19) - 0.2f;
    v.data()[i] = 0.03f * static_cast<float>((i * 3) % 17) - 0.25f;
  }
}

/// Defined in odr_second_tu.cpp: xattn::softmax_attention (causal) on odr_inputs.
Eigen::Tensor<float, 4, Eigen::RowMajor> odr_second_tu_attention();

}  // namespace xattn_test
