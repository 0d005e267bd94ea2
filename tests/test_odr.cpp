// The first translation unit of the ODR check: the same call here and in odr_second_tu.cpp must
// give the same values, and both must match the fp64 reference.
#include <gtest/gtest.h>

#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

#include "odr_check.hpp"

namespace xattn_test {
namespace {

TEST(Odr, TwoTranslationUnitsAgree) {
  Eigen::Tensor<float, 4, Eigen::RowMajor> q, k, v;
  odr_inputs(q, k, v);
  Eigen::Tensor<float, 4, Eigen::RowMajor> here(kOdrBatch, kOdrSeq, kOdrHeads, kOdrDim);
  Eigen::Tensor<float, 4, Eigen::RowMajor> ref(kOdrBatch, kOdrSeq, kOdrHeads, kOdrDim);
  xattn::softmax_attention(q, k, v, here, {.causal = true});
  xattn::reference::softmax_attention(q, k, v, ref, {.causal = true});

  const Eigen::Tensor<float, 4, Eigen::RowMajor> there = odr_second_tu_attention();
  ASSERT_EQ(there.size(), here.size());
  for (Eigen::Index i = 0; i < here.size(); ++i) {
    EXPECT_EQ(here.data()[i], there.data()[i]) << "element " << i;
    EXPECT_NEAR(here.data()[i], ref.data()[i], 1e-5f) << "element " << i;
  }
}

}  // namespace
}  // namespace xattn_test
