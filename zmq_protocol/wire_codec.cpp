// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/wire_codec.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <openssl/rand.h>

#include "common/text.hpp"

namespace kernelgate::zmq_protocol {

namespace {

constexpr std::size_t signature_hex_size = 64;
constexpr std::size_t json_part_count = 4;

/// A JSON part that is empty on our side goes on the wire as "{}" (what a kernel expects
/// for "no parent"); the signature covers exactly what is sent.
std::string_view json_or_empty_object(const std::string& part) noexcept
{
    return part.empty() ? std::string_view("{}") : std::string_view(part);
}

} // namespace

std::size_t wire_part_count(const message& msg) noexcept
{
    return msg.identities.size() + 2 + json_part_count + msg.buffers.size();
}

std::array<std::string_view, 4> wire_json_parts(const message& msg) noexcept
{
    return {json_or_empty_object(msg.header), json_or_empty_object(msg.parent_header),
            json_or_empty_object(msg.metadata), json_or_empty_object(msg.content)};
}

void wire_parts(const message& msg, std::string_view signature_hex,
                std::span<std::string_view> out) noexcept
{
    std::size_t i = 0;
    for (const auto& id : msg.identities) {
        out[i++] = id;
    }
    out[i++] = delimiter;
    out[i++] = signature_hex;
    for (const auto part : wire_json_parts(msg)) {
        out[i++] = part;
    }
    for (const auto& b : msg.buffers) {
        out[i++] = b;
    }
}

std::vector<std::string> encode_frames(const message& msg, const signer& sign)
{
    const auto json = wire_json_parts(msg);
    const std::string signature = sign.sign(json[0], json[1], json[2], json[3]);
    std::vector<std::string_view> views(wire_part_count(msg));
    wire_parts(msg, signature, views);
    return {views.begin(), views.end()};
}

result<message> decode_frames(std::span<const std::string_view> frames,
                              const signer& sign,
                              replay_guard* guard,
                              const decode_limits& limits)
{
    std::size_t delim = 0;
    while (delim < frames.size() && frames[delim] != delimiter) {
        ++delim;
    }
    if (delim == frames.size()) {
        return errc::missing_delimiter;
    }
    const std::size_t after = frames.size() - delim - 1; // signature, 4 JSON parts, buffers
    if (after < 1 + json_part_count) {
        return errc::too_few_frames;
    }
    const std::size_t first_json = delim + 2;
    const std::size_t first_buffer = first_json + json_part_count;
    if (frames.size() - first_buffer > limits.max_buffers) {
        return errc::too_many_buffers;
    }
    std::size_t total = 0;
    for (std::string_view f : frames) {
        if (f.size() > limits.max_total_bytes - total) {
            return errc::message_too_large;
        }
        total += f.size();
    }

    // Authenticate before anything looks inside the JSON parts.
    const std::string_view signature = frames[delim + 1];
    if (sign.enabled()) {
        if (signature.empty()) {
            return errc::missing_signature;
        }
        if (signature.size() != signature_hex_size) {
            return errc::bad_signature_length;
        }
    }
    signer::digest_type digest{};
    if (!sign.verify(signature, frames[first_json], frames[first_json + 1],
                     frames[first_json + 2], frames[first_json + 3], &digest)) {
        return errc::bad_signature;
    }
    // Only a verified signature enters the guard: forged ones must not evict real entries.
    // Unsigned messages all share the empty signature, so there is nothing to track. The
    // guard's bucket is a cache miss (its table is up to 1 MiB): it loads while the parts are
    // copied, and a replay only costs those copies.
    const bool guarded = guard != nullptr && sign.enabled();
    if (guarded) {
        guard->prefetch(digest);
    }

    message msg;
    msg.identities.reserve(delim);
    for (std::size_t i = 0; i < delim; ++i) {
        msg.identities.emplace_back(frames[i]);
    }
    msg.header.assign(frames[first_json]);
    msg.parent_header.assign(frames[first_json + 1]);
    msg.metadata.assign(frames[first_json + 2]);
    msg.content.assign(frames[first_json + 3]);
    msg.buffers.reserve(frames.size() - first_buffer);
    for (std::size_t i = first_buffer; i < frames.size(); ++i) {
        msg.buffers.emplace_back(frames[i]);
    }
    if (guarded && !guard->check_and_insert(digest)) {
        return errc::duplicate_signature;
    }
    return msg;
}

namespace {

/// True when s can go between JSON quotes as it is: printable ASCII, no quote, no backslash.
bool plain_json_text(std::string_view s) noexcept
{
    return std::all_of(s.begin(), s.end(), [](char c) {
        return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
    });
}

} // namespace

std::string make_header(std::string_view msg_type,
                        std::string_view session,
                        std::string_view username,
                        std::string_view msg_id)
{
    const std::string id = msg_id.empty() ? new_uuid() : std::string(msg_id);
    const std::string date = iso8601_now();
    if (plain_json_text(msg_type) && plain_json_text(session) && plain_json_text(username) &&
        plain_json_text(id)) {
        // The common case, written directly (keys in the order nlohmann's object sorts them,
        // so both paths give the same text).
        std::string out;
        out.reserve(96 + msg_type.size() + session.size() + username.size() + id.size());
        out.append(R"({"date":")").append(date);
        out.append(R"(","msg_id":")").append(id);
        out.append(R"(","msg_type":")").append(msg_type);
        out.append(R"(","session":")").append(session);
        out.append(R"(","username":")").append(username);
        out.append(R"(","version":"5.3"})");
        return out;
    }
    nlohmann::json header = nlohmann::json::object();
    header["msg_id"] = id;
    header["session"] = std::string(session);
    header["username"] = std::string(username);
    header["date"] = date;
    header["msg_type"] = std::string(msg_type);
    header["version"] = "5.3";
    // Invalid UTF-8 from a caller is replaced rather than thrown on.
    return header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string new_uuid()
{
    std::array<unsigned char, 16> b{};
    if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
        throw std::runtime_error("kernelgate: RAND_bytes failed");
    }
    b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40); // version 4
    b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80); // RFC 4122 variant
    const std::string hex = common::to_hex(b.data(), b.size());
    std::string out;
    out.reserve(36);
    out.append(hex, 0, 8).append(1, '-');
    out.append(hex, 8, 4).append(1, '-');
    out.append(hex, 12, 4).append(1, '-');
    out.append(hex, 16, 4).append(1, '-');
    out.append(hex, 20, 12);
    return out;
}

std::string iso8601_now()
{
    return common::iso8601(std::chrono::system_clock::now());
}

} // namespace kernelgate::zmq_protocol
