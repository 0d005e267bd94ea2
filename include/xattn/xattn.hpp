// xattn/xattn.hpp — the umbrella header: every family of xattn.
#pragma once

#include "softmax.hpp"
#include "sliding_window.hpp"
#include "sparse.hpp"
#include "lightning.hpp"
#include "linear.hpp"
