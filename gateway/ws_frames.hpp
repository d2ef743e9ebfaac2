// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "zmq_protocol/errc.hpp"
#include "zmq_protocol/message.hpp"
#include "zmq_protocol/result.hpp"

namespace kernelgate::gateway {

/// The three WebSocket frame formats of Jupyter Server (ANCHORS.md b.4).
enum class ws_format
{
    legacy,  ///< no subprotocol: JSON text frames, legacy binary frames when buffers exist
    v1,      ///< "v1.kernel.websocket.jupyter.org": binary offset-table frames
};

inline constexpr std::string_view v1_subprotocol = "v1.kernel.websocket.jupyter.org";

/// Limits for frames coming from a client.
struct ws_limits
{
    std::size_t max_buffers = 64;
    std::size_t max_json_depth = 64;
};

/// A message decoded from a client frame: the channel plus a wire message whose JSON parts
/// are raw JSON object text (identities empty).
struct client_message
{
    std::string channel;  ///< "shell", "control" or "stdin" (others are refused)
    zmq_protocol::message msg;
};

/// Client -> gateway. All bounds are checked before any read; errors use zmq_protocol::errc
/// (bad_frame, bad_json, json_too_deep, bad_channel, too_many_buffers).
result<client_message> decode_v1(std::string_view frame, const ws_limits& limits = {});
result<client_message> decode_legacy_text(std::string_view text, const ws_limits& limits = {});
result<client_message> decode_legacy_binary(std::string_view frame,
                                            const ws_limits& limits = {});

/// Gateway -> client, v1: the JSON parts are copied in as-is (no re-encoding, no HMAC).
std::string encode_v1(std::string_view channel, const zmq_protocol::message& msg);

/// Gateway -> client, legacy. Returns the JSON text (when the message has no buffers) or a
/// legacy binary frame (when it has). The JSON is spliced from the raw parts:
/// {"header":H,"msg_id":..,"msg_type":..,"parent_header":P,"metadata":M,"content":C,
///  "buffers":[],"channel":"iopub"}; msg_id and msg_type are copied from the header.
struct legacy_frame
{
    std::string data;
    bool binary = false;
};
legacy_frame encode_legacy(std::string_view channel, const zmq_protocol::message& msg);

/// Nesting depth of a JSON text (brackets outside strings); used to refuse deep input
/// before it reaches the parser.
std::size_t json_depth(std::string_view text) noexcept;

} // namespace kernelgate::gateway
