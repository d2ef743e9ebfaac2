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
        (void)gw::encode_legacy("iopub", msg);
        (void)gw::encode_v1("iopub", msg);
        return 0;
    }
    }
    if (r.has_value()) {
        reencode(r.value(), limits);
    }
    return 0;
}
