// xattn/xattn.hpp — the umbrella header: every family of xattn. (xattn/mpi.hpp, which needs MPI,
// is not included: include it yourself.)
#pragma once

#include "options.hpp"
#include "paths.hpp"
#include "softmax.hpp"
#include "softmax_backward.hpp"
#include "sliding_window.hpp"
#include "neighborhood.hpp"
#include "block_layout.hpp"
#include "sparse.hpp"
#include "lightning.hpp"
#include "lightning_backward.hpp"
#include "linear.hpp"
#include "linear_backward.hpp"
