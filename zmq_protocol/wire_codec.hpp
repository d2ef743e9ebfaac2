// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "zmq_protocol/errc.hpp"
#include "zmq_protocol/message.hpp"
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

/// Remembers recent signatures to reject replays (jupyter_client's digest_history), bounded:
/// the oldest entries are forgotten first.
class replay_guard
{
public:
    explicit replay_guard(std::size_t capacity = 65536) : capacity_(capacity) {}
    /// true if the signature is new (and records it), false if seen before.
    bool check_and_insert(std::string_view signature);
    std::size_t size() const noexcept { return order_.size(); }

private:
    std::size_t capacity_;
    std::unordered_set<std::string> seen_;
    std::deque<std::string> order_;
};

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
