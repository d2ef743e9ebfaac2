// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/ws_frames.hpp"

#include "gateway/json_check.hpp"

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

/// The JSON message of a legacy frame (text, or the first part of a binary frame).
std::error_code decode_legacy_json(std::string_view text,
                                   const ws_limits& limits,
                                   client_message& out)
{
    if (json_depth(text) > limits.max_json_depth) {
        return errc::json_too_deep;
    }
    try {
        json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object()) {
            return errc::bad_json;
        }
        const auto header = j.find("header");
        if (header == j.end() || !header->is_object()) {
            return errc::bad_json;
        }
        // Jupyter Server sends a message without a channel (or with null) to shell.
        const auto channel = j.find("channel");
        if (channel == j.end() || channel->is_null()) {
            out.channel = "shell";
        } else if (channel->is_string() &&
                   client_writable(channel->get_ref<const std::string&>())) {
            out.channel = channel->get<std::string>();
        } else {
            return errc::bad_channel;
        }
        // Binary buffers travel only in binary frames, never inside the JSON.
        const auto buffers = j.find("buffers");
        if (buffers != j.end() && !buffers->is_null()) {
            if (!buffers->is_array()) {
                return errc::bad_json;
            }
            if (!buffers->empty()) {
                return errc::bad_frame;
            }
        }
        out.msg.header = header->dump();
        const std::array<std::pair<const char*, std::string*>, 3> optional_parts = {{
            {"parent_header", &out.msg.parent_header},
            {"metadata", &out.msg.metadata},
            {"content", &out.msg.content},
        }};
        for (const auto& [name, dest] : optional_parts) {
            const auto it = j.find(name);
            if (it == j.end() || it->is_null()) {
                *dest = "{}";
            } else if (it->is_object()) {
                *dest = it->dump();
            } else {
                return errc::bad_json;
            }
        }
    } catch (const json::exception&) {
        // The parser validated UTF-8, so dump() should not throw; refuse rather than leak.
        return errc::bad_json;
    }
    return {};
}

/// Collects the top-level "msg_id" and "msg_type" strings of a header without building a
/// DOM (last occurrence wins, as with a parsed object).
class header_fields_sax final : public nlohmann::json_sax<json>
{
public:
    std::optional<std::string> msg_id;
    std::optional<std::string> msg_type;

    bool null() override { return value(); }
    bool boolean(bool /*val*/) override { return value(); }
    bool number_integer(number_integer_t /*val*/) override { return value(); }
    bool number_unsigned(number_unsigned_t /*val*/) override { return value(); }
    bool number_float(number_float_t /*val*/, const string_t& /*s*/) override
    {
        return value();
    }
    bool string(string_t& val) override
    {
        if (depth_ == 1 && pending_ != nullptr) {
            *pending_ = val;
            pending_ = nullptr;
        }
        return true;
    }
    bool binary(binary_t& /*val*/) override { return value(); }
    bool start_object(std::size_t /*elements*/) override
    {
        value();
        ++depth_;
        return true;
    }
    bool key(string_t& val) override
    {
        if (depth_ == 1) {
            pending_ = val == "msg_id" ? &msg_id : val == "msg_type" ? &msg_type : nullptr;
        }
        return true;
    }
    bool end_object() override
    {
        --depth_;
        return true;
    }
    bool start_array(std::size_t /*elements*/) override
    {
        value();
        ++depth_;
        return true;
    }
    bool end_array() override
    {
        --depth_;
        return true;
    }
    bool parse_error(std::size_t /*position*/,
                     const std::string& /*last_token*/,
                     const nlohmann::detail::exception& /*ex*/) override
    {
        return false;
    }

private:
    /// A non-string value of a wanted key clears it (last occurrence wins).
    bool value()
    {
        if (depth_ == 1 && pending_ != nullptr) {
            pending_->reset();
            pending_ = nullptr;
        }
        return true;
    }

    std::size_t depth_ = 0;
    std::optional<std::string>* pending_ = nullptr;
};

std::string json_string(std::string_view s)
{
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
    header_fields_sax fields;
    const bool header_ok =
        json::sax_parse(header.begin(), header.end(), &fields, nlohmann::detail::input_format_t::json,
                        /*strict=*/true);
    auto field_or_null = [&](const std::optional<std::string>& f) {
        return header_ok && f ? json_string(*f) : std::string("null");
    };
    const bool binary = !msg.buffers.empty();

    std::string text;
    text.reserve(msg.byte_size() + channel.size() + 160);
    text.append("{\"header\":").append(header);
    text.append(",\"msg_id\":").append(field_or_null(fields.msg_id));
    text.append(",\"msg_type\":").append(field_or_null(fields.msg_type));
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
