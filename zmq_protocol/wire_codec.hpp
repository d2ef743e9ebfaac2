// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zmq_protocol/errc.hpp"
#include "zmq_protocol/message.hpp"
#include "zmq_protocol/replay_guard.hpp"
#include "zmq_protocol/result.hpp"
#include "zmq_protocol/signer.hpp"

namespace kernelgate::zmq_protocol {

inline constexpr std::string_view delimiter = "<IDS|MSG>";

/// Limits applied by decode(); defaults suit messages from a kernel.
struct decode_limits
{
    std::size_t max_buffers = 1024;
    std::size_t max_total_bytes = 512u * 1024u * 1024u;
};

/// Number of frames msg takes on the wire.
std::size_t wire_part_count(const message& msg) noexcept;

/// Views of the frames of msg as they go on the wire (no copy): identities, delimiter,
/// signature_hex (64 chars from signer::sign_hex, or empty when signing is off), the four
/// JSON parts ("{}" for an empty one; the signature must cover the same) and the buffers.
/// out must hold wire_part_count(msg) views.
void wire_parts(const message& msg, std::string_view signature_hex,
                std::span<std::string_view> out) noexcept;

/// The four JSON parts as they go on the wire ("{}" for an empty one).
std::array<std::string_view, 4> wire_json_parts(const message& msg) noexcept;

/// Frames of a message as they go on the wire:
/// [identities..., "<IDS|MSG>", hmac, header, parent_header, metadata, content, buffers...]
std::vector<std::string> encode_frames(const message& msg, const signer& sign);

/// Decodes frames received from ZMQ. Authenticates first, parses never: finds the delimiter,
/// checks counts and signature length, verifies the HMAC in constant time, checks the replay
/// guard (if given) and only then copies the parts out. The JSON parts are not parsed here.
result<message> decode_frames(std::span<const std::string_view> frames,
                              const signer& sign,
                              replay_guard* guard = nullptr,
                              const decode_limits& limits = {});

/// Builds a new header JSON text for a message we originate (kernel_info_request, ...).
/// date is ISO-8601 UTC with six fractional digits and 'Z'.
std::string make_header(std::string_view msg_type,
                        std::string_view session,
                        std::string_view username = "kernelgate",
                        std::string_view msg_id = {});

/// A new random UUID4 string (lower-case, with dashes).
std::string new_uuid();

/// Current time as "YYYY-MM-DDTHH:MM:SS.ffffffZ".
std::string iso8601_now();

} // namespace kernelgate::zmq_protocol
