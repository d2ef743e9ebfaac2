// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include "common/text.hpp"

namespace kernelgate::zmq_protocol::detail {

/// Lower-case hex (no separators): the shared encoder in common/text.hpp.
using common::to_hex;

} // namespace kernelgate::zmq_protocol::detail
