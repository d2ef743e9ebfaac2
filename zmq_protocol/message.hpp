// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <string>
#include <vector>

namespace kernelgate::zmq_protocol {

/// One Jupyter message, transport-free. The four JSON parts are kept as the raw bytes the
/// kernel (or client) sent, so a message that is only passed along is never re-encoded.
/// Move-only: a message is handed on, not shared by copy.
struct message
{
    std::vector<std::string> identities;  ///< ZMQ routing prefix (kernel side only)
    std::string header;                   ///< raw JSON object
    std::string parent_header;            ///< raw JSON object ("{}" when none)
    std::string metadata;                 ///< raw JSON object
    std::string content;                  ///< raw JSON object
    std::vector<std::string> buffers;     ///< binary buffers, carried intact

    message() = default;
    message(message&&) noexcept = default;
    message& operator=(message&&) noexcept = default;
    message(const message&) = delete;
    message& operator=(const message&) = delete;

    /// Total bytes of all parts (for watermarks and limits).
    std::size_t byte_size() const noexcept
    {
        std::size_t n = header.size() + parent_header.size() + metadata.size() + content.size();
        for (const auto& b : buffers) {
            n += b.size();
        }
        return n;
    }
};

} // namespace kernelgate::zmq_protocol
