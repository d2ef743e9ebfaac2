// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <string>

namespace kernelgate::zmq_protocol::detail {

/// Lower-case hex of n bytes (no separators).
inline std::string to_hex(const unsigned char* data, std::size_t n)
{
    static constexpr char digits[] = "0123456789abcdef";
    std::string out(2 * n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 0x0f];
    }
    return out;
}

} // namespace kernelgate::zmq_protocol::detail
