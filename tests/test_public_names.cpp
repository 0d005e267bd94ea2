// tests/test_public_names.cpp — xattn's public names live well beside the C and POSIX headers: with
// `using namespace xattn;` and <strings.h> in scope, POSIX's index() still resolves, and each
// public header compiles on its own (every family's contract is in public headers, none under
// core/). Each include below is the first xattn header of its own translation unit in spirit: the
// family headers are self-contained (checked by the build of this file in this order).
#include <strings.h>

#include <xattn/options.hpp>
#include <xattn/error.hpp>
#include <xattn/softmax.hpp>
#include <xattn/sliding_window.hpp>
#include <xattn/neighborhood.hpp>
#include <xattn/block_layout.hpp>
#include <xattn/sparse.hpp>
#include <xattn/linear.hpp>
#include <xattn/lightning.hpp>
#include <xattn/lightning_backward.hpp>
#include <xattn/linear_backward.hpp>
#include <xattn/reference.hpp>

#include <gtest/gtest.h>

using namespace xattn;  // NOLINT: the point of the test

namespace {

TEST(PublicNames, PosixIndexStillResolvesUnderUsingNamespaceXattn) {
  const char* s = "attention";
  EXPECT_EQ(index(s, 't'), s + 1);  // POSIX index(), not a type of xattn's
}

TEST(PublicNames, OptionsAreAggregatesFilledByDesignatedInitializers) {
  const softmax_options s{.causal = true, .window_left = 128};
  const sliding_window_options w{.window_left = 64, .causal = true, .sinks = 4};
  const neighborhood_2d_options n{.kernel_h = 5, .kernel_w = 3};
  const lightning_options l{.scale = 0.5};
  const linear_options li{.causal = true, .normalize = true};
  const streaming_options st{.sinks = 2, .window = 16};
  const lightning_backward_options lb{.forward = {.scale = 0.5}};
  const linear_backward_options lib{.forward = {.causal = true}};
  EXPECT_TRUE(lib.forward.causal && !lb.dinitial_state && !lb.dfinal_state);
  EXPECT_EQ(lb.forward.scale, 0.5);
  EXPECT_TRUE(s.causal && w.causal && li.causal);
  EXPECT_EQ(n.kernel_h * n.kernel_w, 15);
  EXPECT_EQ(l.scale, 0.5);
  EXPECT_EQ(streaming_slot(20, st), 2 + (20 - 2) % 16);
}

TEST(PublicNames, LayoutBuildersTakeTheirParametersByName) {
  const std::vector<std::ptrdiff_t> globals{0, 300};
  const auto a = block_layout::longformer(1000, 1000, 64, {.window = 128, .global_tokens = globals, .causal = true});
  const auto b = block_layout::longformer(1000, 1000, 64, 128, globals, true);
  const auto c = block_layout::strided(1000, 64, {.local_blocks = 2, .stride = 4});
  const auto d = block_layout::strided(1000, 64, 2, 4);
  const auto e = block_layout::streaming(1000, 1000, 64, {.sink_blocks = 1, .window_blocks = 3});
  const auto f = block_layout::streaming(1000, 1000, 64, 1, 3);
  for (const auto* p : {&a, &c, &e}) {
    const auto& q = p == &a ? b : p == &c ? d : f;
    ASSERT_EQ(p->nnz(), q.nnz());
    for (std::ptrdiff_t qb = 0; qb < p->q_blocks(); ++qb) {
      const auto x = p->row(0, qb), y = q.row(0, qb);
      EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end()));
    }
  }
  EXPECT_GT(a.nnz(), 0);
}

}  // namespace
