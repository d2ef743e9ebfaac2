// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/wire_codec.hpp"

#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <random>
#include <cstring>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "zmq_protocol/errc.hpp"

namespace zp = kernelgate::zmq_protocol;
using zp::errc;

namespace {

/// Matches a fixed-width pattern: 'x' a lower-case hex digit, 'd' a decimal digit, 'v' one
/// of 8, 9, a, b (the UUID variant), anything else itself. (No <regex>: g++ 12 warns inside
/// it under the sanitizers.)
bool matches(std::string_view s, std::string_view pattern)
{
    if (s.size() != pattern.size()) {
        return false;
    }
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        const bool digit = c >= '0' && c <= '9';
        switch (pattern[i]) {
        case 'x':
            if (!digit && !(c >= 'a' && c <= 'f')) {
                return false;
            }
            break;
        case 'd':
            if (!digit) {
                return false;
            }
            break;
        case 'v':
            if (c != '8' && c != '9' && c != 'a' && c != 'b') {
                return false;
            }
            break;
        default:
            if (c != pattern[i]) {
                return false;
            }
        }
    }
    return true;
}

constexpr const char* key = "0123456789abcdef0123456789abcdef";

std::string all_bytes()
{
    std::string s;
    for (int i = 0; i < 256; ++i) {
        s.push_back(static_cast<char>(i));
    }
    return s;
}

std::vector<std::string_view> views(const std::vector<std::string>& frames)
{
    return {frames.begin(), frames.end()};
}

kernelgate::result<zp::message> decode(const std::vector<std::string>& frames,
                                       const zp::signer& s,
                                       zp::replay_guard* guard = nullptr,
                                       const zp::decode_limits& limits = {})
{
    const auto v = views(frames);
    return zp::decode_frames(v, s, guard, limits);
}

zp::message sample(std::string content = R"j({"code":"print(1)"})j")
{
    zp::message m;
    m.identities = {"id-0", std::string("\0id\xff", 4)};
    m.header = zp::make_header("execute_request", "session-1", "alice");
    m.parent_header = "{}";
    m.metadata = R"({"tag":1})";
    m.content = std::move(content);
    m.buffers = {std::string("\0\0\0", 3), all_bytes(), ""};
    return m;
}

// A message as jupyter_client 7.4's Session.serialize() puts it on the wire (frames taken
// from Python when the test was written), plus two raw buffers as Session.send appends them.
std::vector<std::string> jupyter_client_frames()
{
    return {
        "client-1",
        "<IDS|MSG>",
        "32f4f3e67386216d43d7b2e1ae00fb9ec90213350599541fe9d8519cbd93a97e",
        R"({"msg_id": "a1", "msg_type": "execute_reply", "session": "s1", "username": "u", )"
        R"("date": "2024-01-01T00:00:00.000000Z", "version": "5.3"})",
        R"({"msg_id": "p0"})",
        "{}",
        R"({"status": "ok", "execution_count": 1})",
        std::string("\0\1\2", 3),
        all_bytes(),
    };
}

} // namespace

TEST_CASE("wire: decodes a jupyter_client message byte for byte", "[wire]")
{
    const zp::signer s(key);
    const auto frames = jupyter_client_frames();
    auto r = decode(frames, s);
    REQUIRE(r.has_value());
    const zp::message& m = r.value();
    CHECK(m.identities == std::vector<std::string>{"client-1"});
    CHECK(m.header == frames[3]);
    CHECK(m.parent_header == frames[4]);
    CHECK(m.metadata == frames[5]);
    CHECK(m.content == frames[6]);
    REQUIRE(m.buffers.size() == 2);
    CHECK(m.buffers[0] == std::string("\0\1\2", 3));
    CHECK(m.buffers[1] == all_bytes());

    // Re-encoding gives the same frames: the JSON parts are never re-serialised.
    zp::message copy;
    copy.identities = m.identities;
    copy.header = m.header;
    copy.parent_header = m.parent_header;
    copy.metadata = m.metadata;
    copy.content = m.content;
    copy.buffers = m.buffers;
    CHECK(zp::encode_frames(copy, s) == frames);
}

TEST_CASE("wire: encode/decode round trip", "[wire]")
{
    const zp::signer s(key);
    const zp::message m = sample();
    const auto frames = zp::encode_frames(m, s);
    REQUIRE(frames.size() == 2 + 2 + 4 + 3);
    CHECK(frames[2] == zp::delimiter);
    CHECK(frames[3] == s.sign(m.header, m.parent_header, m.metadata, m.content));
    CHECK(matches(frames[3], std::string(64, 'x')));

    zp::replay_guard guard;
    auto r = decode(frames, s, &guard);
    REQUIRE(r.has_value());
    CHECK(r->identities == m.identities);
    CHECK(r->header == m.header);
    CHECK(r->parent_header == m.parent_header);
    CHECK(r->metadata == m.metadata);
    CHECK(r->content == m.content);
    CHECK(r->buffers == m.buffers);
    CHECK(r->byte_size() == m.byte_size());
    CHECK(guard.size() == 1);
}

TEST_CASE("wire: no identities and no buffers", "[wire]")
{
    const zp::signer s(key);
    zp::message m;
    m.header = R"({"msg_type":"kernel_info_request"})";
    const auto frames = zp::encode_frames(m, s);
    REQUIRE(frames.size() == 6);
    // Empty JSON parts go out as "{}" and are signed as such.
    CHECK(frames[3] == "{}");
    CHECK(frames[4] == "{}");
    CHECK(frames[5] == "{}");
    auto r = decode(frames, s);
    REQUIRE(r.has_value());
    CHECK(r->identities.empty());
    CHECK(r->buffers.empty());
    CHECK(r->content == "{}");
}

TEST_CASE("wire: every refusal has its error code", "[wire]")
{
    const zp::signer s(key);
    const zp::message m = sample();
    const auto good = zp::encode_frames(m, s);
    const std::size_t sig = 3; // index of the signature frame in `good`

    auto with_sig = [&](std::string signature) {
        auto f = good;
        f[sig] = std::move(signature);
        return f;
    };

    SECTION("no frames at all")
    {
        CHECK(decode({}, s).error() == errc::missing_delimiter);
    }
    SECTION("no delimiter")
    {
        auto f = good;
        f.erase(f.begin() + 2);
        CHECK(decode(f, s).error() == errc::missing_delimiter);
        // A near-miss delimiter is not one.
        f = good;
        f[2] = "<IDS|MSG> ";
        CHECK(decode(f, s).error() == errc::missing_delimiter);
    }
    SECTION("delimiter only")
    {
        CHECK(decode({"<IDS|MSG>"}, s).error() == errc::too_few_frames);
        CHECK(decode({"id", "<IDS|MSG>"}, s).error() == errc::too_few_frames);
    }
    SECTION("signature and three JSON parts")
    {
        const std::vector<std::string> f(good.begin(), good.begin() + 7);
        CHECK(decode(f, s).error() == errc::too_few_frames);
    }
    SECTION("empty signature with a key")
    {
        CHECK(decode(with_sig(""), s).error() == errc::missing_signature);
        // ... which is what an unsigning peer sends.
        CHECK(decode(zp::encode_frames(m, zp::signer("")), s).error() ==
              errc::missing_signature);
    }
    SECTION("signature of the wrong length")
    {
        CHECK(decode(with_sig("abc"), s).error() == errc::bad_signature_length);
        CHECK(decode(with_sig(good[sig].substr(0, 63)), s).error() ==
              errc::bad_signature_length);
        CHECK(decode(with_sig(good[sig] + "0"), s).error() == errc::bad_signature_length);
        CHECK(decode(with_sig(good[sig] + good[sig]), s).error() ==
              errc::bad_signature_length);
    }
    SECTION("upper-case hex signature")
    {
        std::string upper = good[sig];
        for (auto& c : upper) {
            c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        }
        REQUIRE(upper != good[sig]);
        CHECK(decode(with_sig(upper), s).error() == errc::bad_signature);
    }
    SECTION("wrong key")
    {
        CHECK(decode(good, zp::signer("not the key")).error() == errc::bad_signature);
    }
    SECTION("tampered content, signature kept")
    {
        auto f = good;
        f[7] = R"({"code":"import os"})";
        CHECK(decode(f, s).error() == errc::bad_signature);
    }
    SECTION("replay")
    {
        zp::replay_guard guard;
        REQUIRE(decode(good, s, &guard).has_value());
        CHECK(decode(good, s, &guard).error() == errc::duplicate_signature);
        // Different identities do not make it a different message.
        auto f = good;
        f[0] = "someone-else";
        CHECK(decode(f, s, &guard).error() == errc::duplicate_signature);
        // Without a guard no replay check is made.
        CHECK(decode(good, s).has_value());
    }
    SECTION("only verified signatures enter the guard")
    {
        zp::replay_guard guard;
        auto forged = good;
        forged[7] = R"({"code":"import os"})";
        CHECK(decode(forged, s, &guard).error() == errc::bad_signature);
        CHECK(guard.size() == 0);
        CHECK(decode(good, s, &guard).has_value());
        CHECK(guard.size() == 1);
    }
    SECTION("too many buffers")
    {
        zp::decode_limits limits;
        limits.max_buffers = 2;
        CHECK(decode(good, s, nullptr, limits).error() == errc::too_many_buffers);
        limits.max_buffers = 3;
        CHECK(decode(good, s, nullptr, limits).has_value());
    }
    SECTION("message too large")
    {
        std::size_t total = 0;
        for (const auto& f : good) {
            total += f.size();
        }
        zp::decode_limits limits;
        limits.max_total_bytes = total - 1;
        CHECK(decode(good, s, nullptr, limits).error() == errc::message_too_large);
        limits.max_total_bytes = total;
        CHECK(decode(good, s, nullptr, limits).has_value());
    }
    SECTION("the size checks come before the HMAC")
    {
        zp::decode_limits limits;
        limits.max_buffers = 0;
        CHECK(decode(with_sig("x"), s, nullptr, limits).error() == errc::too_many_buffers);
    }
}

TEST_CASE("wire: empty key", "[wire]")
{
    const zp::signer none("");
    const zp::message m = sample();
    const auto frames = zp::encode_frames(m, none);
    CHECK(frames[3].empty());

    zp::replay_guard guard;
    // Unsigned messages all share the empty signature: no replay tracking, both pass.
    REQUIRE(decode(frames, none, &guard).has_value());
    REQUIRE(decode(frames, none, &guard).has_value());
    CHECK(guard.size() == 0);

    // A signature where none is expected is refused (a key mismatch between the two ends).
    const auto signed_frames = zp::encode_frames(m, zp::signer(key));
    CHECK(decode(signed_frames, none).error() == errc::bad_signature);
}

TEST_CASE("wire: JSON is never parsed by decode", "[wire]")
{
    const zp::signer s(key);
    zp::message m;
    m.header = "not json at all";
    m.parent_header = "[";
    m.metadata = std::string("\0\xff", 2);
    m.content = "<IDS|MSG>";
    auto r = decode(zp::encode_frames(m, s), s);
    REQUIRE(r.has_value());
    CHECK(r->header == "not json at all");
    CHECK(r->content == "<IDS|MSG>");
}

TEST_CASE("wire: the first delimiter frame ends the identities", "[wire]")
{
    const zp::signer s(key);
    zp::message m = sample();
    m.buffers = {"<IDS|MSG>"};
    auto r = decode(zp::encode_frames(m, s), s);
    REQUIRE(r.has_value());
    CHECK(r->identities == m.identities);
    CHECK(r->buffers == std::vector<std::string>{"<IDS|MSG>"});
}

TEST_CASE("replay_guard: a bucket forgets its oldest first", "[wire][replay]")
{
    // Digests whose top bits agree share a bucket; the low bits tell them apart.
    auto key = [](unsigned char c) {
        zp::replay_guard::key_type k{};
        k.fill(0x5a);
        k[0] = static_cast<unsigned char>(c << 1);  // the fingerprint's lowest bit is forced
        return k;
    };
    zp::replay_guard guard(2);  // the smallest table: two buckets of eight
    for (unsigned char c = 1; c <= zp::replay_guard::ways; ++c) {
        CHECK(guard.check_and_insert(key(c)));
    }
    CHECK(guard.size() == zp::replay_guard::ways);
    for (unsigned char c = 1; c <= zp::replay_guard::ways; ++c) {
        CHECK_FALSE(guard.check_and_insert(key(c)));  // all eight remembered
    }
    CHECK(guard.check_and_insert(key(9)));   // a ninth in the same bucket evicts key 1
    CHECK(guard.size() == zp::replay_guard::ways);
    CHECK_FALSE(guard.check_and_insert(key(2)));
    CHECK_FALSE(guard.check_and_insert(key(9)));
    CHECK(guard.check_and_insert(key(1)));   // forgotten, so new again (and it evicts key 2)
    CHECK(guard.check_and_insert(key(2)));
    CHECK_FALSE(guard.check_and_insert(key(1)));

    // Keys differing only past the fingerprint's 8 bytes are one digest to the guard: for
    // HMAC outputs that is a 2^-64 coincidence, for this test a documented limit.
    auto same_fp = key(9);
    same_fp[20] ^= 0xff;
    CHECK_FALSE(guard.check_and_insert(same_fp));

    zp::replay_guard none(0);
    CHECK(none.check_and_insert(key(1)));
    CHECK(none.check_and_insert(key(1)));
    CHECK(none.size() == 0);
    CHECK(none.table_bytes() == 0);
}

TEST_CASE("replay_guard: remembers the recent history of random digests, in 1 MiB",
          "[wire][replay]")
{
    // Digests are HMAC outputs: uniformly random. Feed 2^20 of them through a guard sized
    // like jupyter_client's history (2^16), checking replays of older ones as it goes.
    constexpr std::size_t capacity = 65536;
    constexpr std::size_t total = 1u << 20;
    zp::replay_guard guard(capacity);
    std::mt19937_64 rng(20261129);
    std::vector<zp::replay_guard::key_type> keys(total);
    for (auto& k : keys) {
        for (std::size_t i = 0; i < k.size(); i += 8) {
            const std::uint64_t v = rng();
            std::memcpy(k.data() + i, &v, 8);
        }
    }
    std::size_t fresh = 0;
    for (const auto& k : keys) {
        fresh += guard.check_and_insert(k) ? 1 : 0;
    }
    CHECK(fresh == total);  // no new digest was taken for a replay
    CHECK(guard.size() <= 2 * capacity);
    CHECK(guard.table_bytes() <= 1024u * 1024u);

    // Replays, newest first: every one of the last capacity/4 is caught, and nearly all of
    // the last capacity. (Each check of a replay inserts nothing: the guard is unchanged.)
    std::size_t caught_quarter = 0;
    std::size_t caught_all = 0;
    for (std::size_t back = 1; back <= capacity; ++back) {
        const bool caught = !guard.check_and_insert(keys[total - back]);
        caught_all += caught ? 1 : 0;
        if (back <= capacity / 4) {
            caught_quarter += caught ? 1 : 0;
        }
    }
    CHECK(caught_quarter == capacity / 4);
    CHECK(caught_all >= capacity * 90 / 100);
    INFO("caught " << caught_all << " of the last " << capacity);

    // Growth keeps what was learnt, and a table below its full size forgets nothing: a
    // guard that doubled its table many times over a short history catches all of it.
    zp::replay_guard small(capacity);
    for (std::size_t i = 0; i < 5000; ++i) {
        REQUIRE(small.check_and_insert(keys[i]));
    }
    std::size_t caught_small = 0;
    for (std::size_t i = 0; i < 5000; ++i) {
        caught_small += small.check_and_insert(keys[i]) ? 0 : 1;
    }
    CHECK(caught_small == 5000);
    CHECK(small.table_bytes() < 1024u * 1024u);  // it grew only as far as it needed
}

TEST_CASE("wire error category", "[wire]")
{
    const std::error_code ec = errc::bad_signature;
    CHECK(ec.category() == zp::wire_category());
    CHECK(std::string(zp::wire_category().name()) == "kernelgate.wire");
    CHECK(ec == zp::make_error_code(errc::bad_signature));
    CHECK(ec != zp::make_error_code(errc::bad_frame));

    std::set<std::string> messages;
    for (int e = static_cast<int>(errc::missing_delimiter);
         e <= static_cast<int>(errc::bad_connection_info); ++e) {
        const std::string text = zp::make_error_code(static_cast<errc>(e)).message();
        CHECK_FALSE(text.empty());
        messages.insert(text);
    }
    CHECK(messages.size() == 13);
    CHECK_FALSE(zp::wire_category().message(999).empty());

    const kernelgate::result<int> r = errc::bad_json;
    CHECK_FALSE(r.has_value());
    CHECK(r.error() == errc::bad_json);
}

TEST_CASE("make_header, new_uuid, iso8601_now", "[wire]")
{
    const std::string_view uuid4 = "xxxxxxxx-xxxx-4xxx-vxxx-xxxxxxxxxxxx";
    const std::string_view iso = "dddd-dd-ddTdd:dd:dd.ddddddZ";

    SECTION("uuid4 format and uniqueness")
    {
        std::set<std::string> seen;
        for (int i = 0; i < 1000; ++i) {
            const std::string u = zp::new_uuid();
            REQUIRE(matches(u, uuid4));
            seen.insert(u);
        }
        CHECK(seen.size() == 1000);
    }
    SECTION("date format")
    {
        const std::string now = zp::iso8601_now();
        CHECK(matches(now, iso));
        CHECK(now.size() == 27);
    }
    SECTION("header fields")
    {
        const auto h = nlohmann::json::parse(zp::make_header("kernel_info_request", "sess"));
        REQUIRE(h.is_object());
        CHECK(h.size() == 6);
        CHECK(h.at("msg_type") == "kernel_info_request");
        CHECK(h.at("session") == "sess");
        CHECK(h.at("username") == "kernelgate");
        CHECK(h.at("version") == "5.3");
        CHECK(matches(h.at("msg_id").get<std::string>(), uuid4));
        CHECK(matches(h.at("date").get<std::string>(), iso));
    }
    SECTION("given msg_id and username are kept; text is escaped")
    {
        const auto h = nlohmann::json::parse(
            zp::make_header("execute_request", "s\"1", "bob\\", "fixed-id"));
        CHECK(h.at("msg_id") == "fixed-id");
        CHECK(h.at("session") == "s\"1");
        CHECK(h.at("username") == "bob\\");
    }
    SECTION("invalid UTF-8 does not throw")
    {
        CHECK_NOTHROW(nlohmann::json::parse(zp::make_header("x", "\xff\xfe")));
    }
    SECTION("plain text is written directly, byte for byte as nlohmann writes it")
    {
        for (const auto& [type, sess, user] :
             {std::tuple{"kernel_info_request", "sess", "kernelgate"},
              std::tuple{"a b", "c-d_e.f", "~x|y{z}"}, std::tuple{"", "", ""},
              std::tuple{"t\x7f", "s", "u"}, std::tuple{"t\n", "s", "u"}}) {
            const std::string text = zp::make_header(type, sess, user, "fixed-id");
            const auto h = nlohmann::json::parse(text);
            CHECK(h.at("msg_type") == type);
            CHECK(h.at("session") == sess);
            CHECK(h.at("username") == user);
            // The same object dumped by nlohmann: equal text, same key order and spacing.
            CHECK(text == h.dump());
        }
    }
}
