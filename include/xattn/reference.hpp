// xattn/reference.hpp — the fp64 references of every family (public: tests, benchmarks and users
// compare against them).
#pragma once

#include "reference/softmax.hpp"
#include "reference/softmax_backward.hpp"
#include "reference/sliding_window.hpp"
#include "reference/sparse.hpp"
#include "reference/lightning.hpp"
#include "reference/linear.hpp"
#include "reference/lightning_backward.hpp"
