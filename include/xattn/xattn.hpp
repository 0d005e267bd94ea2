// xattn/xattn.hpp — the umbrella header: every family of xattn.
#pragma once

#include "softmax.hpp"
