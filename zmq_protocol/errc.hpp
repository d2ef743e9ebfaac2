// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <system_error>

namespace kernelgate::zmq_protocol {

/// Why a wire message (from a kernel) or a WebSocket frame (from a client) was refused.
enum class errc
{
    missing_delimiter = 1,  ///< no <IDS|MSG> frame
    too_few_frames,         ///< fewer than signature + 4 JSON frames after the delimiter
    missing_signature,      ///< empty signature while a key is configured
    bad_signature_length,   ///< signature is not 64 hex chars
    bad_signature,          ///< HMAC mismatch
    duplicate_signature,    ///< replayed message (signature seen before)
    too_many_buffers,       ///< more binary buffers than allowed
    message_too_large,      ///< total size above the cap
    bad_json,               ///< a JSON part does not parse or is not an object
    json_too_deep,          ///< nesting above the depth cap
    bad_frame,              ///< malformed WebSocket framing (offsets, lengths)
    bad_channel,            ///< channel missing, unknown or not writable by a client
    bad_connection_info,    ///< connection file missing a field or out of range
};

const std::error_category& wire_category() noexcept;
std::error_code make_error_code(errc e) noexcept;

} // namespace kernelgate::zmq_protocol

template <>
struct std::is_error_code_enum<kernelgate::zmq_protocol::errc> : std::true_type
{
};
