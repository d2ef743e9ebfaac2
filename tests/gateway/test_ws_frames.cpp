// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/ws_frames.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

namespace gw = kernelgate::gateway;
namespace zp = kernelgate::zmq_protocol;
using nlohmann::json;
using zp::errc;

namespace {

// Reference frames produced by Jupyter Server's own serializers (Debian's jupyter_server
// 1.23, jupyter_server/base/zmqhandlers.py: serialize_msg_to_ws_v1 and
// serialize_binary_message; in 2.x they live in services/kernels/connection/base.py) when
// the test was written, for the parts below. "compact" means json.dumps was given
// separators=(",", ":") so the raw parts splice byte for byte; the framing is unchanged.
constexpr const char* H =
    R"({"msg_id":"m1","msg_type":"display_data","session":"s","username":"u",)"
    R"("date":"2024-01-01T00:00:00.123456Z","version":"5.3"})";
constexpr const char* P = R"({"msg_id":"p1"})";
constexpr const char* M = "{}";
constexpr const char* C = R"({"data":{"text/plain":"x"}})";
const std::string B0("\x00\xff\x00", 3);

constexpr const char* py_v1_iopub_buffers_hex =
    "080000000000000048000000000000004d00000000000000c800000000000000"
    "d700000000000000d900000000000000f400000000000000f700000000000000"
    "f701000000000000696f7075627b226d73675f6964223a226d31222c226d7367"
    "5f74797065223a22646973706c61795f64617461222c2273657373696f6e223a"
    "2273222c22757365726e616d65223a2275222c2264617465223a22323032342d"
    "30312d30315430303a30303a30302e3132333435365a222c2276657273696f6e"
    "223a22352e33227d7b226d73675f6964223a227031227d7b7d7b226461746122"
    "3a7b22746578742f706c61696e223a2278227d7d00ff00000102030405060708"
    "090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728"
    "292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748"
    "494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768"
    "696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788"
    "898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8"
    "a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8"
    "c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8"
    "e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

constexpr const char* py_v1_shell_hex =
    "060000000000000038000000000000003d00000000000000b800000000000000"
    "c700000000000000c900000000000000e4000000000000007368656c6c7b226d"
    "73675f6964223a226d31222c226d73675f74797065223a22646973706c61795f"
    "64617461222c2273657373696f6e223a2273222c22757365726e616d65223a22"
    "75222c2264617465223a22323032342d30312d30315430303a30303a30302e31"
    "32333435365a222c2276657273696f6e223a22352e33227d7b226d73675f6964"
    "223a227031227d7b7d7b2264617461223a7b22746578742f706c61696e223a22"
    "78227d7d";

constexpr const char* py_v1_shell_buffers_hex =
    "080000000000000048000000000000004d00000000000000c800000000000000"
    "d700000000000000d900000000000000f400000000000000f700000000000000"
    "f7010000000000007368656c6c7b226d73675f6964223a226d31222c226d7367"
    "5f74797065223a22646973706c61795f64617461222c2273657373696f6e223a"
    "2273222c22757365726e616d65223a2275222c2264617465223a22323032342d"
    "30312d30315430303a30303a30302e3132333435365a222c2276657273696f6e"
    "223a22352e33227d7b226d73675f6964223a227031227d7b7d7b226461746122"
    "3a7b22746578742f706c61696e223a2278227d7d00ff00000102030405060708"
    "090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728"
    "292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748"
    "494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768"
    "696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788"
    "898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8"
    "a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8"
    "c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8"
    "e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

constexpr const char* py_legacy_binary_compact_iopub_hex =
    "000000030000001000000124000001277b22686561646572223a7b226d73675f"
    "6964223a226d31222c226d73675f74797065223a22646973706c61795f646174"
    "61222c2273657373696f6e223a2273222c22757365726e616d65223a2275222c"
    "2264617465223a22323032342d30312d30315430303a30303a30302e31323334"
    "35365a222c2276657273696f6e223a22352e33227d2c226d73675f6964223a22"
    "6d31222c226d73675f74797065223a22646973706c61795f64617461222c2270"
    "6172656e745f686561646572223a7b226d73675f6964223a227031227d2c226d"
    "65746164617461223a7b7d2c22636f6e74656e74223a7b2264617461223a7b22"
    "746578742f706c61696e223a2278227d7d2c226368616e6e656c223a22696f70"
    "7562227d00ff00000102030405060708090a0b0c0d0e0f101112131415161718"
    "191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738"
    "393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758"
    "595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778"
    "797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798"
    "999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8"
    "b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8"
    "d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8"
    "f9fafbfcfdfeff";

constexpr const char* py_legacy_binary_shell_hex =
    "00000003000000100000013f000001427b22686561646572223a207b226d7367"
    "5f6964223a20226d31222c20226d73675f74797065223a2022646973706c6179"
    "5f64617461222c202273657373696f6e223a202273222c2022757365726e616d"
    "65223a202275222c202264617465223a2022323032342d30312d30315430303a"
    "30303a30302e3132333435365a222c202276657273696f6e223a2022352e3322"
    "7d2c20226d73675f6964223a20226d31222c20226d73675f74797065223a2022"
    "646973706c61795f64617461222c2022706172656e745f686561646572223a20"
    "7b226d73675f6964223a20227031227d2c20226d65746164617461223a207b7d"
    "2c2022636f6e74656e74223a207b2264617461223a207b22746578742f706c61"
    "696e223a202278227d7d2c20226368616e6e656c223a20227368656c6c227d00"
    "ff00000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d"
    "1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d"
    "3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d"
    "5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d"
    "7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d"
    "9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbd"
    "bebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdd"
    "dedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfd"
    "feff";

// Legacy JSON as Jupyter Server writes it (json.dumps(msg), default separators): text for
// a message without buffers. The compact variant is what our splice must equal.
constexpr const char* py_legacy_text_compact_iopub =
    R"({"header":{"msg_id":"m1","msg_type":"display_data","session":"s","username":"u",)"
    R"("date":"2024-01-01T00:00:00.123456Z","version":"5.3"},"msg_id":"m1",)"
    R"("msg_type":"display_data","parent_header":{"msg_id":"p1"},"metadata":{},)"
    R"("content":{"data":{"text/plain":"x"}},"buffers":[],"channel":"iopub"})";
constexpr const char* py_legacy_text_shell =
    R"({"header": {"msg_id": "m1", "msg_type": "display_data", "session": "s", )"
    R"("username": "u", "date": "2024-01-01T00:00:00.123456Z", "version": "5.3"}, )"
    R"("msg_id": "m1", "msg_type": "display_data", "parent_header": {"msg_id": "p1"}, )"
    R"("metadata": {}, "content": {"data": {"text/plain": "x"}}, "buffers": [], )"
    R"("channel": "shell"})";

std::string from_hex(std::string_view hex)
{
    auto nibble = [](char c) {
        return c <= '9' ? c - '0' : c - 'a' + 10;
    };
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
        out.push_back(static_cast<char>(nibble(hex[i]) * 16 + nibble(hex[i + 1])));
    }
    return out;
}

std::string all_bytes()
{
    std::string s;
    for (int i = 0; i < 256; ++i) {
        s.push_back(static_cast<char>(i));
    }
    return s;
}

zp::message reference_message(bool with_buffers)
{
    zp::message m;
    m.header = H;
    m.parent_header = P;
    m.metadata = M;
    m.content = C;
    if (with_buffers) {
        m.buffers = {B0, all_bytes()};
    }
    return m;
}

void put_le64(std::string& s, std::size_t pos, std::uint64_t v)
{
    for (std::size_t i = 0; i < 8; ++i) {
        s[pos + i] = static_cast<char>((v >> (8 * i)) & 0xff);
    }
}

std::uint64_t get_le64(const std::string& s, std::size_t pos)
{
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 8; ++i) {
        v |= static_cast<std::uint64_t>(static_cast<unsigned char>(s[pos + i])) << (8 * i);
    }
    return v;
}

void put_be32(std::string& s, std::size_t pos, std::uint32_t v)
{
    for (std::size_t i = 0; i < 4; ++i) {
        s[pos + i] = static_cast<char>((v >> (8 * (3 - i))) & 0xff);
    }
}

std::error_code v1_error(const std::string& frame, const gw::ws_limits& limits = {})
{
    return gw::decode_v1(frame, limits).error();
}

std::string deep(std::size_t levels, char open, char close)
{
    return std::string(levels, open) + std::string(levels, close);
}

/// {"a":{"a":...{}...}} with `levels` objects.
std::string deep_object(std::size_t levels)
{
    std::string s;
    for (std::size_t i = 1; i < levels; ++i) {
        s += R"({"a":)";
    }
    s += "{}";
    s += std::string(levels - 1, '}');
    return s;
}

/// An independent v1 builder (not encode_v1): no substitution of empty parts.
std::string v1_frame(std::string_view channel, const std::vector<std::string>& parts)
{
    const std::size_t offset_number = parts.size() + 2;
    std::string frame(8 * (offset_number + 1), '\0');
    put_le64(frame, 0, offset_number);
    std::size_t pos = frame.size();
    put_le64(frame, 8, pos);
    pos += channel.size();
    put_le64(frame, 16, pos);
    for (std::size_t i = 0; i < parts.size(); ++i) {
        pos += parts[i].size();
        put_le64(frame, 8 * (i + 3), pos);
    }
    frame.append(channel);
    for (const auto& p : parts) {
        frame.append(p);
    }
    return frame;
}

/// An independent legacy binary builder: nbufs, offsets, JSON, buffers.
std::string legacy_binary_frame(const std::string& json_text,
                                const std::vector<std::string>& buffers)
{
    const std::size_t nbufs = 1 + buffers.size();
    std::string frame(4 * (nbufs + 1), '\0');
    put_be32(frame, 0, static_cast<std::uint32_t>(nbufs));
    std::size_t pos = frame.size();
    put_be32(frame, 4, static_cast<std::uint32_t>(pos));
    pos += json_text.size();
    for (std::size_t i = 0; i < buffers.size(); ++i) {
        put_be32(frame, 4 * (i + 2), static_cast<std::uint32_t>(pos));
        pos += buffers[i].size();
    }
    frame += json_text;
    for (const auto& b : buffers) {
        frame += b;
    }
    return frame;
}

} // namespace

// ---------------------------------------------------------------------------------------
// Reference frames from Jupyter Server

TEST_CASE("ws v1: encode matches Jupyter Server byte for byte", "[ws][v1]")
{
    CHECK(gw::encode_v1("iopub", reference_message(true)) == from_hex(py_v1_iopub_buffers_hex));
    CHECK(gw::encode_v1("shell", reference_message(false)) == from_hex(py_v1_shell_hex));
    CHECK(gw::encode_v1("shell", reference_message(true)) ==
          from_hex(py_v1_shell_buffers_hex));
}

TEST_CASE("ws v1: decodes Jupyter Server frames", "[ws][v1]")
{
    SECTION("no buffers")
    {
        auto r = gw::decode_v1(from_hex(py_v1_shell_hex));
        REQUIRE(r.has_value());
        CHECK(r->channel == "shell");
        CHECK(r->msg.header == H); // raw bytes as sent, not re-encoded
        CHECK(r->msg.parent_header == P);
        CHECK(r->msg.metadata == M);
        CHECK(r->msg.content == C);
        CHECK(r->msg.buffers.empty());
        CHECK(r->msg.identities.empty());
    }
    SECTION("binary buffers with NUL and every byte value")
    {
        auto r = gw::decode_v1(from_hex(py_v1_shell_buffers_hex));
        REQUIRE(r.has_value());
        REQUIRE(r->msg.buffers.size() == 2);
        CHECK(r->msg.buffers[0] == B0);
        CHECK(r->msg.buffers[1] == all_bytes());
    }
    SECTION("iopub is not writable by a client")
    {
        CHECK(v1_error(from_hex(py_v1_iopub_buffers_hex)) == errc::bad_channel);
    }
}

TEST_CASE("ws legacy: encode matches Jupyter Server byte for byte", "[ws][legacy]")
{
    SECTION("text frame without buffers")
    {
        const auto f = gw::encode_legacy("iopub", reference_message(false));
        CHECK_FALSE(f.binary);
        CHECK(f.data == py_legacy_text_compact_iopub);
    }
    SECTION("binary frame with buffers")
    {
        const auto f = gw::encode_legacy("iopub", reference_message(true));
        CHECK(f.binary);
        CHECK(f.data == from_hex(py_legacy_binary_compact_iopub_hex));
    }
}

TEST_CASE("ws legacy: decodes Jupyter Server frames", "[ws][legacy]")
{
    auto check_parts = [](const gw::client_message& cm) {
        CHECK(cm.channel == "shell");
        CHECK(json::parse(cm.msg.header) == json::parse(H));
        CHECK(json::parse(cm.msg.parent_header) == json::parse(P));
        CHECK(cm.msg.metadata == "{}");
        CHECK(json::parse(cm.msg.content) == json::parse(C));
        // Legacy parts are the client's own text, spaces and all (as v1 parts are).
        CHECK(cm.msg.header.front() == '{');
        CHECK(std::string_view(py_legacy_text_shell).find(cm.msg.header) != std::string::npos);
        CHECK(std::string_view(py_legacy_text_shell).find(cm.msg.content) != std::string::npos);
    };
    SECTION("text")
    {
        auto r = gw::decode_legacy_text(py_legacy_text_shell);
        REQUIRE(r.has_value());
        check_parts(r.value());
        CHECK(r->msg.buffers.empty());
    }
    SECTION("binary")
    {
        auto r = gw::decode_legacy_binary(from_hex(py_legacy_binary_shell_hex));
        REQUIRE(r.has_value());
        check_parts(r.value());
        REQUIRE(r->msg.buffers.size() == 2);
        CHECK(r->msg.buffers[0] == B0);
        CHECK(r->msg.buffers[1] == all_bytes());
    }
    SECTION("the server's own iopub frames are refused from a client")
    {
        CHECK(gw::decode_legacy_text(py_legacy_text_compact_iopub).error() == errc::bad_channel);
        CHECK(gw::decode_legacy_binary(from_hex(py_legacy_binary_compact_iopub_hex)).error() ==
              errc::bad_channel);
    }
}

// ---------------------------------------------------------------------------------------
// Round trips

TEST_CASE("ws: round trips through all three formats", "[ws]")
{
    for (const char* channel : {"shell", "control", "stdin"}) {
        for (const bool buffers : {false, true}) {
            INFO(channel << (buffers ? " with buffers" : ""));
            zp::message m = reference_message(buffers);
            if (buffers) {
                m.buffers.emplace_back(); // an empty buffer survives too
            }

            auto v1 = gw::decode_v1(gw::encode_v1(channel, m));
            REQUIRE(v1.has_value());
            CHECK(v1->channel == channel);
            CHECK(v1->msg.header == m.header);
            CHECK(v1->msg.parent_header == m.parent_header);
            CHECK(v1->msg.metadata == m.metadata);
            CHECK(v1->msg.content == m.content);
            CHECK(v1->msg.buffers == m.buffers);

            const auto legacy = gw::encode_legacy(channel, m);
            CHECK(legacy.binary == buffers);
            auto back = legacy.binary ? gw::decode_legacy_binary(legacy.data)
                                      : gw::decode_legacy_text(legacy.data);
            REQUIRE(back.has_value());
            CHECK(back->channel == channel);
            CHECK(json::parse(back->msg.header) == json::parse(m.header));
            CHECK(json::parse(back->msg.parent_header) == json::parse(m.parent_header));
            CHECK(json::parse(back->msg.metadata) == json::parse(m.metadata));
            CHECK(json::parse(back->msg.content) == json::parse(m.content));
            CHECK(back->msg.buffers == m.buffers);
        }
    }
}

TEST_CASE("ws legacy encode: msg_id and msg_type come from the header only", "[ws][legacy]")
{
    auto top = [](std::string header) {
        zp::message m;
        m.header = std::move(header);
        const auto f = gw::encode_legacy("iopub", m);
        REQUIRE_FALSE(f.binary);
        const json j = json::parse(f.data);
        return std::pair{j.at("msg_id"), j.at("msg_type")};
    };
    CHECK(top(R"({"msg_id":"a","msg_type":"b"})") == std::pair{json("a"), json("b")});
    // Nested keys are not the header's own.
    CHECK(top(R"({"x":{"msg_id":"no"},"msg_type":"t","y":["msg_id"]})") ==
          std::pair{json(nullptr), json("t")});
    // Missing or not a string: null.
    CHECK(top(R"({"msg_id":5,"msg_type":{"a":1}})") == std::pair{json(nullptr), json(nullptr)});
    CHECK(top("{}") == std::pair{json(nullptr), json(nullptr)});
    // Duplicate keys: the last wins, as for a parsed object.
    CHECK(top(R"({"msg_id":"first","msg_id":"last","msg_type":"t"})") ==
          std::pair{json("last"), json("t")});
    CHECK(top(R"({"msg_id":"first","msg_id":7})") == std::pair{json(nullptr), json(nullptr)});
    // Escapes and non-ASCII survive.
    CHECK(top(R"({"msg_id":"q\"\u00e9\n","msg_type":"é"})") ==
          std::pair{json("q\"\u00e9\n"), json("é")});
}

TEST_CASE("ws encode: empty parts go out as {}", "[ws]")
{
    zp::message m;
    const auto legacy = gw::encode_legacy("iopub", m);
    const json j = json::parse(legacy.data);
    CHECK(j.at("header") == json::object());
    CHECK(j.at("parent_header") == json::object());
    CHECK(j.at("channel") == "iopub");
    CHECK(j.at("buffers") == json::array());

    auto r = gw::decode_v1(gw::encode_v1("shell", m));
    REQUIRE(r.has_value());
    CHECK(r->msg.header == "{}");
    CHECK(r->msg.content == "{}");
}

TEST_CASE("ws legacy encode: the binary JSON part has channel and no buffers key",
          "[ws][legacy]")
{
    zp::message m = reference_message(true);
    const auto f = gw::encode_legacy("iopub", m);
    REQUIRE(f.binary);
    const std::string& d = f.data;
    const std::size_t json_start = 16; // 4 * (nbufs + 1), nbufs = 3
    const auto be32 = [&](std::size_t pos) {
        return (static_cast<std::uint32_t>(static_cast<unsigned char>(d[pos])) << 24) |
               (static_cast<std::uint32_t>(static_cast<unsigned char>(d[pos + 1])) << 16) |
               (static_cast<std::uint32_t>(static_cast<unsigned char>(d[pos + 2])) << 8) |
               static_cast<std::uint32_t>(static_cast<unsigned char>(d[pos + 3]));
    };
    REQUIRE(be32(0) == 3);
    REQUIRE(be32(4) == json_start);
    const json j = json::parse(d.substr(json_start, be32(8) - json_start));
    CHECK(j.at("channel") == "iopub");
    CHECK_FALSE(j.contains("buffers"));
    CHECK(d.substr(be32(8), be32(12) - be32(8)) == B0);
    CHECK(d.substr(be32(12)) == all_bytes());
}

// ---------------------------------------------------------------------------------------
// Hostile v1 frames (SECURITY.md W06, W07, J04)

TEST_CASE("ws v1: hostile offset tables", "[ws][v1][hostile]")
{
    const std::string good = v1_frame("shell", {H, P, M, C, B0});
    REQUIRE(gw::decode_v1(good).has_value());
    const std::size_t n = get_le64(good, 0);
    REQUIRE(n == 7);

    SECTION("too short for the count")
    {
        for (std::size_t len = 0; len < 8; ++len) {
            CHECK(v1_error(good.substr(0, len)) == errc::bad_frame);
        }
    }
    SECTION("offset_number 2^63 and other huge counts")
    {
        for (const std::uint64_t bad : {std::uint64_t(1) << 63, ~std::uint64_t(0),
                                        ~std::uint64_t(0) / 8, std::uint64_t(1) << 61,
                                        std::uint64_t(good.size() / 8)}) {
            std::string f = good;
            put_le64(f, 0, bad);
            CHECK(v1_error(f) == errc::bad_frame);
        }
    }
    SECTION("offset_number too small")
    {
        for (std::uint64_t bad = 0; bad < 6; ++bad) {
            std::string f = good;
            put_le64(f, 0, bad);
            CHECK(v1_error(f) == errc::bad_frame);
        }
    }
    SECTION("offset_number disagreeing with the table")
    {
        std::string f = good;
        put_le64(f, 0, n - 1); // then offset[0] is not 8 * (offset_number + 1)
        CHECK(v1_error(f) == errc::bad_frame);
    }
    SECTION("offsets beyond the frame")
    {
        for (std::size_t i = 1; i <= n; ++i) {
            INFO("offset " << i - 1);
            std::string f = good;
            put_le64(f, 8 * i, good.size() + 1);
            CHECK(v1_error(f) == errc::bad_frame);
            put_le64(f, 8 * i, ~std::uint64_t(0));
            CHECK(v1_error(f) == errc::bad_frame);
            put_le64(f, 8 * i, std::uint64_t(1) << 63);
            CHECK(v1_error(f) == errc::bad_frame);
        }
    }
    SECTION("decreasing offsets")
    {
        for (std::size_t i = 2; i <= n; ++i) {
            INFO("offset " << i - 1);
            std::string f = good;
            put_le64(f, 8 * i, get_le64(good, 8 * (i - 1)) - 1);
            CHECK(v1_error(f) == errc::bad_frame);
        }
    }
    SECTION("offsets pointing into the offset table")
    {
        std::string f = good;
        put_le64(f, 8, 0);
        CHECK(v1_error(f) == errc::bad_frame);
        f = good;
        put_le64(f, 8, 8);
        CHECK(v1_error(f) == errc::bad_frame);
        f = good;
        put_le64(f, 8, 8 * n); // one slot short of the table end
        CHECK(v1_error(f) == errc::bad_frame);
    }
    SECTION("trailing bytes after the last part")
    {
        CHECK(v1_error(good + "x") == errc::bad_frame);
    }
    SECTION("every truncation is refused")
    {
        for (std::size_t len = 0; len < good.size(); ++len) {
            const auto r = gw::decode_v1(good.substr(0, len));
            REQUIRE_FALSE(r.has_value());
        }
    }
}

TEST_CASE("ws v1: channels a client may not write", "[ws][v1][hostile]")
{
    for (const std::string& channel :
         {std::string("iopub"), std::string("hb"), std::string("foo"), std::string(),
          std::string("Shell"), std::string("shell "), std::string("shell\0", 6),
          std::string("\xff\xfe"), std::string("sh\xc3\xa9ll")}) {
        CHECK(v1_error(v1_frame(channel, {H, P, M, C})) == errc::bad_channel);
    }
    for (const char* channel : {"shell", "control", "stdin"}) {
        CHECK(gw::decode_v1(v1_frame(channel, {H, P, M, C})).has_value());
    }
}

TEST_CASE("ws v1: JSON parts must be objects", "[ws][v1][hostile]")
{
    for (std::size_t part = 0; part < 4; ++part) {
        for (const std::string& bad :
             {std::string(), std::string("{"), std::string("not json"), std::string("[]"),
              std::string("null"), std::string("\"{}\""), std::string("{} {}"),
              std::string("{\"a\":\"\xff\"}"), std::string("{\"a\":1,}")}) {
            INFO("part " << part << ": " << bad);
            std::vector<std::string> parts = {H, P, M, C};
            parts[part] = bad;
            CHECK(v1_error(v1_frame("shell", parts)) == errc::bad_json);
        }
        std::vector<std::string> parts = {H, P, M, C};
        parts[part] = " {\"ok\" : [1, {}]}\n";
        CHECK(gw::decode_v1(v1_frame("shell", parts)).has_value());
    }
}

TEST_CASE("ws v1: deep JSON is refused before parsing", "[ws][v1][hostile]")
{
    for (const std::string& bomb : {deep(100000, '[', ']'), deep_object(100000),
                                    "{\"a\":" + deep(100000, '[', ']') + "}",
                                    std::string(100000, '{')}) {
        CHECK(v1_error(v1_frame("shell", {H, P, M, bomb})) == errc::json_too_deep);
        CHECK(v1_error(v1_frame("shell", {bomb, P, M, C})) == errc::json_too_deep);
    }
    gw::ws_limits limits;
    limits.max_json_depth = 3;
    CHECK(gw::decode_v1(v1_frame("shell", {H, P, M, deep_object(3)}), limits).has_value());
    CHECK(v1_error(v1_frame("shell", {H, P, M, deep_object(4)}), limits) ==
          errc::json_too_deep);
}

TEST_CASE("ws v1: buffer count limit", "[ws][v1][hostile]")
{
    std::vector<std::string> parts = {H, P, M, C};
    parts.resize(4 + 64, "b");
    CHECK(gw::decode_v1(v1_frame("shell", parts)).has_value());
    parts.emplace_back("b");
    CHECK(v1_error(v1_frame("shell", parts)) == errc::too_many_buffers);

    // Empty buffers cost 8 bytes each in the table: a plausible table, too many entries.
    std::vector<std::string> many = {H, P, M, C};
    many.resize(4 + 10000);
    CHECK(v1_error(v1_frame("shell", many)) == errc::too_many_buffers);

    gw::ws_limits none;
    none.max_buffers = 0;
    CHECK(gw::decode_v1(v1_frame("shell", {H, P, M, C}), none).has_value());
    CHECK(v1_error(v1_frame("shell", {H, P, M, C, "b"}), none) == errc::too_many_buffers);
}

// ---------------------------------------------------------------------------------------
// Hostile legacy frames

TEST_CASE("ws legacy text: structure rules", "[ws][legacy][hostile]")
{
    auto err = [](const std::string& text) { return gw::decode_legacy_text(text).error(); };
    const std::string h = R"("header":{"msg_type":"execute_request"})";

    SECTION("minimal message: defaults")
    {
        auto r = gw::decode_legacy_text("{" + h + "}");
        REQUIRE(r.has_value());
        CHECK(r->channel == "shell"); // no channel means shell, as in Jupyter Server
        CHECK(r->msg.header == R"({"msg_type":"execute_request"})");
        CHECK(r->msg.parent_header == "{}");
        CHECK(r->msg.metadata == "{}");
        CHECK(r->msg.content == "{}");
        CHECK(r->msg.buffers.empty());
    }
    SECTION("null channel and parts also default")
    {
        auto r = gw::decode_legacy_text(
            "{" + h + R"(,"channel":null,"parent_header":null,"metadata":null,"content":null,)" +
            R"("buffers":null})");
        REQUIRE(r.has_value());
        CHECK(r->channel == "shell");
        CHECK(r->msg.content == "{}");
    }
    SECTION("writable channels")
    {
        for (const char* c : {"shell", "control", "stdin"}) {
            auto r = gw::decode_legacy_text("{" + h + R"(,"channel":")" + c + "\"}");
            REQUIRE(r.has_value());
            CHECK(r->channel == c);
        }
    }
    SECTION("bad channels")
    {
        for (const char* c : {R"("iopub")", R"("hb")", R"("foo")", R"("")", "5", "[]", "{}",
                              R"("shell\u0000")", "true"}) {
            INFO(c);
            CHECK(err("{" + h + R"(,"channel":)" + c + "}") == errc::bad_channel);
        }
    }
    SECTION("invalid JSON")
    {
        for (const std::string& bad :
             {std::string(), std::string("{"), std::string("nope"), std::string("{" + h),
              "{" + h + "} trailing", "{" + h + R"(,"content":{"s":"\xff"}})",
              "{" + h + ",}", std::string("\xef\xbb\xbf{}")}) {
            INFO(bad);
            CHECK(err(bad) == errc::bad_json);
        }
    }
    SECTION("not an object, or no header object")
    {
        for (const std::string& bad :
             {std::string("[]"), std::string("1"), std::string("\"x\""), std::string("null"),
              std::string("{}"), std::string(R"({"header":null})"),
              std::string(R"({"header":[]})"), std::string(R"({"header":"x"})"),
              std::string(R"({"content":{}})")}) {
            INFO(bad);
            CHECK(err(bad) == errc::bad_json);
        }
    }
    SECTION("parts that are not objects")
    {
        for (const char* part : {"parent_header", "metadata", "content"}) {
            for (const char* v : {"[]", "1", R"("x")", "true"}) {
                INFO(part << "=" << v);
                CHECK(err("{" + h + ",\"" + part + "\":" + v + "}") == errc::bad_json);
            }
        }
    }
    SECTION("buffers in a text frame")
    {
        CHECK(gw::decode_legacy_text("{" + h + R"(,"buffers":[]})").has_value());
        CHECK(err("{" + h + R"(,"buffers":["aGk="]})") == errc::bad_frame);
        CHECK(err("{" + h + R"(,"buffers":"x"})") == errc::bad_json);
        CHECK(err("{" + h + R"(,"buffers":{}})") == errc::bad_json);
    }
    SECTION("top-level msg_id and msg_type are ignored")
    {
        auto r = gw::decode_legacy_text("{" + h + R"(,"msg_id":5,"msg_type":[]})");
        CHECK(r.has_value());
    }
}

TEST_CASE("ws legacy text: parts reach the kernel as the client wrote them", "[ws][legacy]")
{
    SECTION("numbers beyond 64 bits and spacing are kept")
    {
        const std::string content = R"({ "n" : 123456789012345678901234567890, "f": 1.50 })";
        auto r = gw::decode_legacy_text("{\n  \"header\" : {\"msg_type\":\"x\"},\n  \"content\" : " +
                                        content + "\n}\n");
        REQUIRE(r.has_value());
        CHECK(r->msg.content == content);
        CHECK(r->msg.header == R"({"msg_type":"x"})");
    }
    SECTION("duplicate keys: the last wins, as in a parsed object")
    {
        auto r = gw::decode_legacy_text(
            R"({"header":{"a":1},"content":{"c":1},"channel":"iopub","header":{"b":2},)"
            R"("content":{"c":2},"channel":"control"})");
        REQUIRE(r.has_value());
        CHECK(r->msg.header == R"({"b":2})");
        CHECK(r->msg.content == R"({"c":2})");
        CHECK(r->channel == "control");
        CHECK(gw::decode_legacy_text(R"({"header":{},"header":null})").error() == errc::bad_json);
    }
    SECTION("escaped keys and channel names are decoded")
    {
        auto r = gw::decode_legacy_text(
            R"({"he\u0061der":{"k":"v"},"ch\u0061nnel":"st\u0064in","\u0063ontent":{"x":[1,{"y":"}"}]}})");
        REQUIRE(r.has_value());
        CHECK(r->msg.header == R"({"k":"v"})");
        CHECK(r->channel == "stdin");
        CHECK(r->msg.content == R"({"x":[1,{"y":"}"}]})");
    }
    SECTION("strings holding brackets, quotes and key names do not confuse the split")
    {
        auto r = gw::decode_legacy_text(
            R"({"metadata":{"s":"\"header\":{\"x\"} ] }"},"header":{"msg_type":"a]}"},)"
            R"j("content":{"code":"print(\"{[\")"}})j");
        REQUIRE(r.has_value());
        CHECK(r->msg.metadata == R"({"s":"\"header\":{\"x\"} ] }"})");
        CHECK(r->msg.header == R"({"msg_type":"a]}"})");
        CHECK(r->msg.content == R"j({"code":"print(\"{[\")"})j");
        CHECK(r->channel == "shell");
    }
    SECTION("an empty buffers array may have spaces")
    {
        CHECK(gw::decode_legacy_text(R"({"header":{},"buffers":[ ]})").has_value());
        CHECK(gw::decode_legacy_text(R"({"header":{},"buffers":[ null ]})").error() ==
              errc::bad_frame);
    }
}

TEST_CASE("ws legacy text: deep JSON is refused before parsing", "[ws][legacy][hostile]")
{
    const std::string h = R"({"header":{},"content":)";
    CHECK(gw::decode_legacy_text(deep(100000, '[', ']')).error() == errc::json_too_deep);
    CHECK(gw::decode_legacy_text(deep_object(100000)).error() == errc::json_too_deep);
    CHECK(gw::decode_legacy_text(h + deep_object(100000) + "}").error() ==
          errc::json_too_deep);
    CHECK(gw::decode_legacy_text(std::string(100000, '[')).error() == errc::json_too_deep);

    // Brackets inside strings do not count.
    auto r = gw::decode_legacy_text(h + R"({"s":")" + std::string(100000, '[') + "\"}}");
    REQUIRE(r.has_value());
    CHECK(json::parse(r->msg.content).at("s").get<std::string>().size() == 100000);

    gw::ws_limits limits;
    limits.max_json_depth = 3; // message object + content + one level
    CHECK(gw::decode_legacy_text(h + R"({"a":{"b":{}}}})", limits).error() ==
          errc::json_too_deep);
    CHECK(gw::decode_legacy_text(h + R"({"a":{}}})", limits).has_value());
    CHECK(gw::decode_legacy_text(h + R"({"a":1}})", limits).has_value());
}

TEST_CASE("ws legacy binary: hostile frames", "[ws][legacy][hostile]")
{
    const std::string msg_json = R"({"header":{"msg_type":"comm_msg"},"channel":"shell"})";
    const std::string good = legacy_binary_frame(msg_json, {B0, all_bytes()});
    REQUIRE(gw::decode_legacy_binary(good).has_value());
    auto err = [](const std::string& f, const gw::ws_limits& limits = {}) {
        return gw::decode_legacy_binary(f, limits).error();
    };

    SECTION("too short for the count or the table")
    {
        for (std::size_t len = 0; len < 16; ++len) {
            CHECK(err(good.substr(0, len)) == errc::bad_frame);
        }
    }
    SECTION("nbufs zero or huge")
    {
        for (const std::uint32_t bad : {0u, 0xffffffffu, 0x80000000u, 0x40000000u, 5u}) {
            std::string f = good;
            put_be32(f, 0, bad);
            CHECK(err(f) == errc::bad_frame);
        }
    }
    SECTION("offsets beyond the frame, decreasing, or into the table")
    {
        for (std::size_t i = 1; i <= 3; ++i) {
            std::string f = good;
            put_be32(f, 4 * i, static_cast<std::uint32_t>(good.size() + 1));
            CHECK(err(f) == errc::bad_frame);
            put_be32(f, 4 * i, 0xffffffffu);
            CHECK(err(f) == errc::bad_frame);
        }
        std::string f = good;
        put_be32(f, 12, 17); // before offset[1]
        CHECK(err(f) == errc::bad_frame);
        for (const std::uint32_t into : {0u, 4u, 12u, 15u, 17u}) {
            f = good;
            put_be32(f, 4, into);
            CHECK(err(f) == errc::bad_frame);
        }
    }
    SECTION("truncations")
    {
        // The last buffer runs to the end of the frame, so cutting into it only shortens it;
        // cutting anywhere before it must be refused.
        std::size_t last_start = good.size() - 256;
        for (std::size_t len = 0; len < good.size(); ++len) {
            const auto r = gw::decode_legacy_binary(good.substr(0, len));
            if (len < last_start) {
                REQUIRE_FALSE(r.has_value());
            } else {
                REQUIRE(r.has_value());
                CHECK(r->msg.buffers.back().size() == len - last_start);
            }
        }
    }
    SECTION("buffer count limit")
    {
        std::vector<std::string> bufs(64, "x");
        CHECK(gw::decode_legacy_binary(legacy_binary_frame(msg_json, bufs)).has_value());
        bufs.emplace_back("x");
        CHECK(err(legacy_binary_frame(msg_json, bufs)) == errc::too_many_buffers);
        bufs.resize(100000);
        CHECK(err(legacy_binary_frame(msg_json, bufs)) == errc::too_many_buffers);
    }
    SECTION("the JSON part follows the text rules")
    {
        CHECK(err(legacy_binary_frame("{", {B0})) == errc::bad_json);
        CHECK(err(legacy_binary_frame("", {B0})) == errc::bad_json);
        CHECK(err(legacy_binary_frame("[]", {B0})) == errc::bad_json);
        CHECK(err(legacy_binary_frame(R"({"header":{},"channel":"iopub"})", {B0})) ==
              errc::bad_channel);
        CHECK(err(legacy_binary_frame(R"({"header":{},"buffers":["x"]})", {B0})) ==
              errc::bad_frame);
        CHECK(err(legacy_binary_frame(deep(100000, '{', '}'), {B0})) == errc::json_too_deep);
        auto r = gw::decode_legacy_binary(legacy_binary_frame(R"({"header":{}})", {}));
        REQUIRE(r.has_value()); // nbufs == 1: JSON only
        CHECK(r->channel == "shell");
        CHECK(r->msg.buffers.empty());
    }
}

// ---------------------------------------------------------------------------------------
// json_depth

TEST_CASE("json_depth counts brackets outside strings", "[ws]")
{
    CHECK(gw::json_depth("") == 0);
    CHECK(gw::json_depth("1") == 0);
    CHECK(gw::json_depth("{}") == 1);
    CHECK(gw::json_depth("[[]]") == 2);
    CHECK(gw::json_depth(R"({"a":[1,{"b":[]}],"c":{}})") == 4);
    CHECK(gw::json_depth(R"("[[[{{{")") == 0);
    CHECK(gw::json_depth(R"(["a\"[[[", "\\", []])") == 2); // escaped quote, escaped backslash
    CHECK(gw::json_depth(R"(["\\"[]])") == 2);              // the string ends after "\\"
    CHECK(gw::json_depth("]]]}}}{") == 1);                  // never negative
    CHECK(gw::json_depth("[[[") == 3);                      // unbalanced: max so far
    CHECK(gw::json_depth(deep(100000, '[', ']')) == 100000);
    CHECK(gw::json_depth(std::string("[\"\0[\"]", 6)) == 1); // NUL inside a string
}
