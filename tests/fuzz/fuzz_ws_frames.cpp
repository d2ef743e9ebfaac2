// SPDX-License-Identifier: BSD-3-Clause
// Fuzz target for the WebSocket frame codecs (client -> gateway decoders, and the legacy
// encoder's header scan).
//
// Input layout: byte 0 selects what to run, the rest is the frame.
//   byte0 % 4 == 0: decode_v1
//   byte0 % 4 == 1: decode_legacy_text
//   byte0 % 4 == 2: decode_legacy_binary
//   byte0 % 4 == 3: the rest is a header for encode_legacy / encode_v1
//   bit 2: tight limits (2 buffers, depth 8)
// Every decoded message is encoded again in both formats and decoded back, and
// json_check must agree with nlohmann::json::accept on the whole input.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "gateway/json_check.hpp"
#include "gateway/ws_frames.hpp"

namespace gw = kernelgate::gateway;
namespace zp = kernelgate::zmq_protocol;

namespace {

void reencode(const gw::client_message& cm, const gw::ws_limits& limits)
{
    const std::string v1 = gw::encode_v1(cm.channel, cm.msg);
    (void)gw::decode_v1(v1, limits);
    const gw::legacy_frame legacy = gw::encode_legacy(cm.channel, cm.msg);
    if (legacy.binary) {
        (void)gw::decode_legacy_binary(legacy.data, limits);
    } else {
        (void)gw::decode_legacy_text(legacy.data, limits);
    }
}

/// A legacy text frame that decoded must mean what a parser says it means: the parts (or
/// {} for a missing or null part) and the channel (or shell) of the parsed object.
void check_legacy_against_parser(std::string_view frame, const gw::client_message& cm)
{
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(frame.begin(), frame.end());
    } catch (const nlohmann::json::out_of_range&) {
        return;  // a number beyond a double: the parser gives up, we pass it on
    } catch (const nlohmann::json::exception&) {
        __builtin_trap();  // accepted what a parser refuses
    }
    auto part = [&](const char* key) {
        const auto it = j.find(key);
        return it == j.end() || it->is_null() ? nlohmann::json::object() : *it;
    };
    const auto ch = j.find("channel");
    if (nlohmann::json::parse(cm.msg.header) != j.at("header") ||
        nlohmann::json::parse(cm.msg.parent_header) != part("parent_header") ||
        nlohmann::json::parse(cm.msg.metadata) != part("metadata") ||
        nlohmann::json::parse(cm.msg.content) != part("content") ||
        cm.channel != (ch == j.end() || ch->is_null() ? std::string("shell")
                                                       : ch->get<std::string>())) {
        __builtin_trap();
    }
}

/// encode_legacy's msg_id and msg_type are the header's own top-level strings, or null.
void check_encoded_ids(std::string_view header, const gw::legacy_frame& f)
{
    // nlohmann's parser stops at a NUL byte (a documented difference, above).
    if (f.binary || header.find('\0') != std::string_view::npos) {
        return;
    }
    nlohmann::json h;
    try {
        h = nlohmann::json::parse(header.begin(), header.end());
    } catch (const nlohmann::json::exception&) {
        return;  // not JSON: nothing to compare with
    }
    if (!h.is_object()) {
        return;
    }
    const auto out = nlohmann::json::parse(f.data);
    for (const char* key : {"msg_id", "msg_type"}) {
        const auto it = h.find(key);
        const auto want = it != h.end() && it->is_string() ? *it : nlohmann::json(nullptr);
        if (out.at(key) != want) {
            __builtin_trap();
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) {
        return 0;
    }
    const std::uint8_t mode = data[0];
    const std::string_view frame(reinterpret_cast<const char*>(data) + 1, size - 1);
    gw::ws_limits limits;
    if ((mode & 4) != 0) {
        limits.max_buffers = 2;
        limits.max_json_depth = 8;
    }
    (void)gw::json_depth(frame);
    // The validator agrees with nlohmann's parser on every input (depth kept out of it),
    // but for the three documented differences (tests/gateway/test_json_check.cpp): a
    // leading byte order mark, NUL bytes, and numbers outside the range of a double.
    if (frame.size() < 4096 && frame.rfind("\xef\xbb\xbf", 0) != 0 &&
        frame.find('\0') == std::string_view::npos) {
        int ref = 1;  // 1 valid, 0 invalid, -1 not comparable (number overflow)
        try {
            const auto parsed = nlohmann::json::parse(frame.begin(), frame.end());
            (void)parsed;
        } catch (const nlohmann::json::out_of_range& e) {
            ref = e.id == 406 ? -1 : 0;
        } catch (const nlohmann::json::exception&) {
            ref = 0;
        }
        if (ref >= 0 &&
            (gw::json_check(frame, 4096, false) == gw::json_check_result::ok) != (ref == 1)) {
            __builtin_trap();
        }
    }

    kernelgate::result<gw::client_message> r = zp::errc::bad_frame;
    switch (mode % 4) {
    case 0:
        r = gw::decode_v1(frame, limits);
        break;
    case 1:
        r = gw::decode_legacy_text(frame, limits);
        if (r.has_value()) {
            check_legacy_against_parser(frame, r.value());
        }
        break;
    case 2:
        r = gw::decode_legacy_binary(frame, limits);
        break;
    default: {
        zp::message msg;
        msg.header.assign(frame);
        msg.content = R"({"x":1})";
        if ((mode & 8) != 0) {
            msg.buffers.emplace_back(frame);
        }
        check_encoded_ids(frame, gw::encode_legacy("iopub", msg));
        (void)gw::encode_v1("iopub", msg);
        return 0;
    }
    }
    if (r.has_value()) {
        reencode(r.value(), limits);
    }
    return 0;
}
