// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/ws_frames.hpp"

#include "gateway/json_check.hpp"
#include "zmq_protocol/json_scan.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace kernelgate::gateway {

namespace {

using json = nlohmann::json;
using zmq_protocol::errc;

constexpr std::size_t v1_min_offsets = 6; // channel + 4 JSON parts + end offset
constexpr std::size_t json_part_count = 4;
/// How deep a kernel's header may nest for its msg_id/msg_type to be read (json_check's most).
constexpr std::size_t max_header_depth = 4096;

std::uint64_t read_le64(std::string_view s, std::size_t pos) noexcept
{
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 8; ++i) {
        v |= static_cast<std::uint64_t>(static_cast<unsigned char>(s[pos + i])) << (8 * i);
    }
    return v;
}

std::uint32_t read_be32(std::string_view s, std::size_t pos) noexcept
{
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < 4; ++i) {
        v = (v << 8) | static_cast<unsigned char>(s[pos + i]);
    }
    return v;
}

void append_le64(std::string& out, std::uint64_t v)
{
    for (std::size_t i = 0; i < 8; ++i) {
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
}

void append_be32(std::string& out, std::uint32_t v)
{
    for (int shift = 24; shift >= 0; shift -= 8) {
        out.push_back(static_cast<char>((v >> shift) & 0xff));
    }
}

bool client_writable(std::string_view channel) noexcept
{
    return channel == "shell" || channel == "control" || channel == "stdin";
}

/// A v1 JSON part must be one JSON object, no deeper than the cap: one validating pass,
/// nothing built (the parts are passed on as they are).
std::error_code check_json_object(std::string_view part, const ws_limits& limits)
{
    switch (json_check(part, limits.max_json_depth, /*require_object=*/true)) {
    case json_check_result::ok: return {};
    case json_check_result::too_deep: return errc::json_too_deep;
    case json_check_result::bad_json: break;
    }
    // Invalid, but report depth first when it is over the cap anywhere (as a bracket count
    // before parsing would): "{{{{..." is a depth attack, not a typo.
    return json_depth(part) > limits.max_json_depth ? errc::json_too_deep : errc::bad_json;
}

/// The JSON message of a legacy frame (text, or the first part of a binary frame): validated
/// in one pass (check_json_object), then split into its members without building a DOM. The
/// parts go to the kernel as the client wrote them, as in the v1 format (a re-dump would turn
/// integers beyond 64 bits into doubles). Duplicate keys: the last wins, as in a parsed object.
std::error_code decode_legacy_json(std::string_view text,
                                   const ws_limits& limits,
                                   client_message& out)
{
    if (const auto ec = check_json_object(text, limits)) {
        return ec;
    }
    std::optional<std::string_view> header, channel, buffers, parent, metadata, content;
    const bool whole = zmq_protocol::detail::for_each_member(
        text, [&](const zmq_protocol::detail::raw_member& m) {
            using zmq_protocol::detail::key_is;
            for (auto [name, slot] : {std::pair{"header", &header}, std::pair{"channel", &channel},
                                      std::pair{"buffers", &buffers},
                                      std::pair{"parent_header", &parent},
                                      std::pair{"metadata", &metadata},
                                      std::pair{"content", &content}}) {
                if (key_is(m, name)) {
                    *slot = m.value;
                    return;
                }
            }
        });
    if (!whole) {
        return errc::bad_json;  // not reached for validated text
    }
    auto is_null = [](std::string_view v) { return v == "null"; };
    if (!header || header->front() != '{') {
        return errc::bad_json;
    }
    // Jupyter Server sends a message without a channel (or with null) to shell.
    if (!channel || is_null(*channel)) {
        out.channel = "shell";
    } else if (channel->front() == '"') {
        const auto raw = channel->substr(1, channel->size() - 2);
        std::string scratch;
        const auto name = zmq_protocol::detail::string_view_of(
            raw, raw.find('\\') != std::string_view::npos, scratch);
        if (!name || !client_writable(*name)) {
            return errc::bad_channel;
        }
        out.channel = *name;
    } else {
        return errc::bad_channel;
    }
    // Binary buffers travel only in binary frames, never inside the JSON.
    if (buffers && !is_null(*buffers)) {
        if (buffers->front() != '[') {
            return errc::bad_json;
        }
        const auto inner = buffers->substr(1, buffers->size() - 2);
        if (inner.find_first_not_of(" \n\t\r") != std::string_view::npos) {
            return errc::bad_frame;
        }
    }
    out.msg.header.assign(*header);
    for (auto [value, dest] : {std::pair{&parent, &out.msg.parent_header},
                               std::pair{&metadata, &out.msg.metadata},
                               std::pair{&content, &out.msg.content}}) {
        if (!*value || is_null(**value)) {
            dest->assign("{}");
        } else if ((*value)->front() == '{') {
            dest->assign(**value);
        } else {
            return errc::bad_json;
        }
    }
    return {};
}

std::string json_string(std::string_view s)
{
    // Channel names and the like need no escaping: quote them as they are.
    if (std::all_of(s.begin(), s.end(), [](char c) {
            return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
        })) {
        std::string out;
        out.reserve(s.size() + 2);
        out.append(1, '"').append(s).append(1, '"');
        return out;
    }
    return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string_view json_or_empty_object(const std::string& part) noexcept
{
    return part.empty() ? std::string_view("{}") : std::string_view(part);
}

} // namespace

std::size_t json_depth(std::string_view text) noexcept
{
    std::size_t depth = 0;
    std::size_t max_depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        switch (c) {
        case '"':
            in_string = true;
            break;
        case '[':
        case '{':
            ++depth;
            if (depth > max_depth) {
                max_depth = depth;
            }
            break;
        case ']':
        case '}':
            if (depth > 0) {
                --depth;
            }
            break;
        default:
            break;
        }
    }
    return max_depth;
}

result<client_message> decode_v1(std::string_view frame, const ws_limits& limits)
{
    const std::size_t size = frame.size();
    if (size < 8) {
        return errc::bad_frame;
    }
    // The offset table must fit in the frame before anything else is believed:
    // 8 * (offset_number + 1) <= size, written so that it cannot overflow.
    const std::uint64_t offset_number = read_le64(frame, 0);
    if (offset_number > size / 8 - 1) {
        return errc::bad_frame;
    }
    const auto n = static_cast<std::size_t>(offset_number);
    if (n < v1_min_offsets) {
        return errc::bad_frame;
    }
    if (n - v1_min_offsets > limits.max_buffers) {
        return errc::too_many_buffers;
    }
    std::vector<std::size_t> offsets(n);
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t off = read_le64(frame, 8 * (i + 1));
        if (off > size || (i > 0 && off < offsets[i - 1])) {
            return errc::bad_frame;
        }
        offsets[i] = static_cast<std::size_t>(off);
    }
    if (offsets[0] != 8 * (n + 1) || offsets[n - 1] != size) {
        return errc::bad_frame;
    }
    auto part = [&](std::size_t i) { // [offsets[i], offsets[i+1])
        return frame.substr(offsets[i], offsets[i + 1] - offsets[i]);
    };

    client_message out;
    const std::string_view channel = part(0);
    if (!client_writable(channel)) {
        return errc::bad_channel;
    }
    out.channel.assign(channel);
    for (std::size_t i = 1; i <= json_part_count; ++i) {
        if (const auto ec = check_json_object(part(i), limits)) {
            return ec;
        }
    }
    out.msg.header.assign(part(1));
    out.msg.parent_header.assign(part(2));
    out.msg.metadata.assign(part(3));
    out.msg.content.assign(part(4));
    out.msg.buffers.reserve(n - v1_min_offsets);
    for (std::size_t i = 1 + json_part_count; i + 1 < n; ++i) {
        out.msg.buffers.emplace_back(part(i));
    }
    return out;
}

result<client_message> decode_legacy_text(std::string_view text, const ws_limits& limits)
{
    client_message out;
    if (const auto ec = decode_legacy_json(text, limits, out)) {
        return ec;
    }
    return out;
}

result<client_message> decode_legacy_binary(std::string_view frame, const ws_limits& limits)
{
    const std::size_t size = frame.size();
    if (size < 4) {
        return errc::bad_frame;
    }
    const std::size_t nbufs = read_be32(frame, 0);
    // nbufs < 2^32, so the table size below cannot overflow a 64-bit size_t.
    if (nbufs == 0 || 4 * (nbufs + 1) > size) {
        return errc::bad_frame;
    }
    if (nbufs - 1 > limits.max_buffers) {
        return errc::too_many_buffers;
    }
    std::vector<std::size_t> offsets(nbufs + 1);
    for (std::size_t i = 0; i < nbufs; ++i) {
        const std::size_t off = read_be32(frame, 4 * (i + 1));
        if (off > size || (i > 0 && off < offsets[i - 1])) {
            return errc::bad_frame;
        }
        offsets[i] = off;
    }
    if (offsets[0] != 4 * (nbufs + 1)) {
        return errc::bad_frame;
    }
    offsets[nbufs] = size; // the last part runs to the end of the frame
    auto part = [&](std::size_t i) {
        return frame.substr(offsets[i], offsets[i + 1] - offsets[i]);
    };

    client_message out;
    if (const auto ec = decode_legacy_json(part(0), limits, out)) {
        return ec;
    }
    out.msg.buffers.reserve(nbufs - 1);
    for (std::size_t i = 1; i < nbufs; ++i) {
        out.msg.buffers.emplace_back(part(i));
    }
    return out;
}

std::string encode_v1(std::string_view channel, const zmq_protocol::message& msg)
{
    const std::array<std::string_view, json_part_count> json_parts = {
        json_or_empty_object(msg.header), json_or_empty_object(msg.parent_header),
        json_or_empty_object(msg.metadata), json_or_empty_object(msg.content)};
    const std::size_t offset_number = 2 + json_part_count + msg.buffers.size();
    const std::size_t table = 8 * (offset_number + 1);
    std::size_t total = table + channel.size();
    for (const auto p : json_parts) {
        total += p.size();
    }
    for (const auto& b : msg.buffers) {
        total += b.size();
    }

    std::string out;
    out.reserve(total);
    append_le64(out, offset_number);
    std::size_t pos = table;
    append_le64(out, pos);
    pos += channel.size();
    append_le64(out, pos);
    for (const auto p : json_parts) {
        pos += p.size();
        append_le64(out, pos);
    }
    for (const auto& b : msg.buffers) {
        pos += b.size();
        append_le64(out, pos);
    }
    out.append(channel);
    for (const auto p : json_parts) {
        out.append(p);
    }
    for (const auto& b : msg.buffers) {
        out.append(b);
    }
    return out;
}

legacy_frame encode_legacy(std::string_view channel, const zmq_protocol::message& msg)
{
    const std::string_view header = json_or_empty_object(msg.header);
    // The header's own (top-level) msg_id and msg_type when they are strings, else null; the
    // last occurrence wins, as in a parsed object. The kernel's header is checked first, so
    // that a string's raw text (already JSON) can be copied as it is.
    std::optional<std::string_view> msg_id, msg_type;
    if (json_check(header, max_header_depth, /*require_object=*/true) == json_check_result::ok) {
        zmq_protocol::detail::for_each_member(header, [&](const zmq_protocol::detail::raw_member& m) {
            using zmq_protocol::detail::key_is;
            auto* slot = key_is(m, "msg_id") ? &msg_id : key_is(m, "msg_type") ? &msg_type : nullptr;
            if (slot != nullptr) {
                *slot = m.value.front() == '"' ? std::optional(m.value) : std::nullopt;
            }
        });
    }
    auto field_or_null = [](const std::optional<std::string_view>& f) {
        return f ? *f : std::string_view("null");
    };
    const bool binary = !msg.buffers.empty();

    std::string text;
    text.reserve(msg.byte_size() + channel.size() + 160);
    text.append("{\"header\":").append(header);
    text.append(",\"msg_id\":").append(field_or_null(msg_id));
    text.append(",\"msg_type\":").append(field_or_null(msg_type));
    text.append(",\"parent_header\":").append(json_or_empty_object(msg.parent_header));
    text.append(",\"metadata\":").append(json_or_empty_object(msg.metadata));
    text.append(",\"content\":").append(json_or_empty_object(msg.content));
    if (!binary) {
        text.append(",\"buffers\":[]");
    }
    text.append(",\"channel\":").append(json_string(channel)).append("}");
    if (!binary) {
        return {std::move(text), false};
    }

    // Legacy binary frame (Jupyter Server's serialize_binary_message): big-endian nbufs, then
    // nbufs big-endian offsets from the frame start, then the JSON and the raw buffers.
    const std::size_t nbufs = 1 + msg.buffers.size();
    const std::size_t table = 4 * (nbufs + 1);
    std::size_t total = table + text.size();
    for (const auto& b : msg.buffers) {
        total += b.size();
    }
    if (total > std::numeric_limits<std::uint32_t>::max()) {
        throw std::length_error("legacy binary WebSocket frame above 4 GiB");
    }
    std::string out;
    out.reserve(total);
    append_be32(out, static_cast<std::uint32_t>(nbufs));
    std::size_t pos = table;
    append_be32(out, static_cast<std::uint32_t>(pos));
    pos += text.size();
    for (const auto& b : msg.buffers) {
        append_be32(out, static_cast<std::uint32_t>(pos));
        pos += b.size();
    }
    out.append(text);
    for (const auto& b : msg.buffers) {
        out.append(b);
    }
    return {std::move(out), true};
}

} // namespace kernelgate::gateway
