// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/signer.hpp"

#include <cctype>
#include <string>

#include <catch2/catch.hpp>
#include <openssl/evp.h>
#include <openssl/hmac.h>

using kernelgate::zmq_protocol::signer;

namespace {

// Known answers computed independently with Python's hmac module (and jupyter_client's
// Session.sign for the message vector) when the test was written.
constexpr const char* jupyter_key = "0123456789abcdef0123456789abcdef";
constexpr const char* jupyter_header =
    R"({"msg_id":"a1","msg_type":"execute_request","session":"s1","username":"u",)"
    R"("date":"2024-01-01T00:00:00.000000Z","version":"5.3"})";
constexpr const char* jupyter_content = R"({"code":"1+1","silent":false})";
constexpr const char* jupyter_sig =
    "78428bba7d4d6980fd0f8aa45f153eebae9d949bb2f3fe1d593f417c558ce305";

} // namespace

TEST_CASE("signer: RFC 4231 HMAC-SHA256 known answers", "[signer]")
{
    SECTION("test case 2, data split over the four parts")
    {
        const signer s("Jefe");
        CHECK(s.sign("what do ", "ya want ", "for ", "nothing?") ==
              "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Where the split falls does not matter: HMAC is over the concatenation.
        CHECK(s.sign("what do ya want for nothing?", "", "", "") ==
              "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
    SECTION("test case 6, key longer than the block size")
    {
        const signer s(std::string(131, '\xaa'));
        CHECK(s.sign("Test Using Larger Than ", "Block-Size Key - ", "Hash Key ", "First") ==
              "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }
}

TEST_CASE("signer: jupyter_client message signature", "[signer]")
{
    const signer s(jupyter_key);
    REQUIRE(s.enabled());
    const std::string sig = s.sign(jupyter_header, "{}", "{}", jupyter_content);
    CHECK(sig == jupyter_sig);
    CHECK(s.verify(jupyter_sig, jupyter_header, "{}", "{}", jupyter_content));
    // Signing twice gives the same answer (the prepared context is not consumed).
    CHECK(s.sign(jupyter_header, "{}", "{}", jupyter_content) == sig);
}

TEST_CASE("signer: the reused context gives the same answers in any order", "[signer]")
{
    // One working context is re-initialised per message: interleave two messages, a failed
    // verification and the binary digest, and the known answers must not move.
    const signer s(jupyter_key);
    const std::string other = s.sign("a", "b", "c", "d");
    REQUIRE(other.size() == signer::hex_size);
    for (int i = 0; i < 3; ++i) {
        CHECK(s.sign(jupyter_header, "{}", "{}", jupyter_content) == jupyter_sig);
        CHECK_FALSE(s.verify(other, jupyter_header, "{}", "{}", jupyter_content));
        CHECK(s.sign("a", "b", "c", "d") == other);
        signer::digest_type d{};
        REQUIRE(s.verify(jupyter_sig, jupyter_header, "{}", "{}", jupyter_content, &d));
        CHECK(d[0] == 0x78);
        CHECK(d[31] == 0x05);
    }
    std::string buf(signer::hex_size, '.');
    s.sign_hex(buf.data(), jupyter_header, "{}", "{}", jupyter_content);
    CHECK(buf == jupyter_sig);
}

TEST_CASE("signer: verify refuses near misses", "[signer]")
{
    const signer s(jupyter_key);
    const std::string good = jupyter_sig;

    SECTION("wrong lengths: empty, 63, 65, 128")
    {
        CHECK_FALSE(s.verify("", jupyter_header, "{}", "{}", jupyter_content));
        CHECK_FALSE(s.verify(good.substr(0, 63), jupyter_header, "{}", "{}", jupyter_content));
        CHECK_FALSE(s.verify(good + "0", jupyter_header, "{}", "{}", jupyter_content));
        CHECK_FALSE(s.verify(good + good, jupyter_header, "{}", "{}", jupyter_content));
    }
    SECTION("upper-case hex is not the same text")
    {
        std::string upper = good;
        for (auto& c : upper) {
            c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        }
        REQUIRE(upper != good);
        CHECK_FALSE(s.verify(upper, jupyter_header, "{}", "{}", jupyter_content));
    }
    SECTION("one flipped digit, first or last")
    {
        std::string first = good;
        first[0] = first[0] == '7' ? '8' : '7';
        std::string last = good;
        last[63] = last[63] == '5' ? '6' : '5';
        CHECK_FALSE(s.verify(first, jupyter_header, "{}", "{}", jupyter_content));
        CHECK_FALSE(s.verify(last, jupyter_header, "{}", "{}", jupyter_content));
    }
    SECTION("wrong key")
    {
        const signer other("another key");
        CHECK_FALSE(other.verify(good, jupyter_header, "{}", "{}", jupyter_content));
    }
    SECTION("changed part")
    {
        CHECK_FALSE(s.verify(good, jupyter_header, "{}", "{}", R"({"code":"1+2","silent":false})"));
        CHECK_FALSE(s.verify(good, jupyter_header, "{ }", "{}", jupyter_content));
    }
    SECTION("non-hex text of the right length")
    {
        CHECK_FALSE(s.verify(std::string(64, 'z'), jupyter_header, "{}", "{}", jupyter_content));
        CHECK_FALSE(s.verify(std::string(64, '\0'), jupyter_header, "{}", "{}", jupyter_content));
    }
}

TEST_CASE("signer: empty key disables signing", "[signer]")
{
    const signer s("");
    CHECK_FALSE(s.enabled());
    CHECK(s.sign("a", "b", "c", "d").empty());
    CHECK(s.verify("", "a", "b", "c", "d"));
    CHECK_FALSE(s.verify(jupyter_sig, "a", "b", "c", "d"));
}

TEST_CASE("signer: binary key bytes and NUL in parts", "[signer]")
{
    // python3: hmac.new(bytes(range(256)), b"\0"*4 + b"\xff", hashlib.sha256).hexdigest()
    std::string key;
    for (int i = 0; i < 256; ++i) {
        key.push_back(static_cast<char>(i));
    }
    const signer s(key);
    CHECK(s.sign(std::string(2, '\0'), std::string(1, '\0'), std::string(1, '\0'), "\xff") ==
          "718840bab6a2b3eed15b017a29e1cd29efbe9aa0708b232cbd6037a8c70229d9");
}

TEST_CASE("signer: move keeps the key, moved-from is disabled", "[signer]")
{
    signer a(jupyter_key);
    signer b(std::move(a));
    CHECK(b.sign(jupyter_header, "{}", "{}", jupyter_content) == jupyter_sig);
    signer c("");
    c = std::move(b);
    CHECK(c.enabled());
    CHECK(c.verify(jupyter_sig, jupyter_header, "{}", "{}", jupyter_content));
}

TEST_CASE("signer: parse_hex takes exactly 64 lower-case hex digits", "[signer]")
{
    signer::digest_type d{};
    REQUIRE(signer::parse_hex(jupyter_sig, d));
    // Back to text: the same 64 characters.
    static constexpr char digits[] = "0123456789abcdef";
    std::string again;
    for (unsigned char b : d) {
        again += digits[b >> 4];
        again += digits[b & 0x0f];
    }
    CHECK(again == jupyter_sig);
    CHECK_FALSE(signer::parse_hex(std::string(jupyter_sig).substr(1), d));
    CHECK_FALSE(signer::parse_hex(std::string(jupyter_sig) + "0", d));
    CHECK_FALSE(signer::parse_hex("", d));
    // Every byte that is not a lower-case hex digit, at the first, a middle and the last
    // position, is refused.
    for (int c = 0; c < 256; ++c) {
        const bool digit = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        for (std::size_t at : {std::size_t{0}, std::size_t{31}, std::size_t{63}}) {
            std::string s = jupyter_sig;
            s[at] = static_cast<char>(c);
            INFO("byte " << c << " at " << at);
            CHECK(signer::parse_hex(s, d) == digit);
        }
    }
}

TEST_CASE("signer: matches OpenSSL's HMAC for every key length around the block size",
          "[signer]")
{
    // An independent implementation (OpenSSL's one-shot HMAC) over keys of 1..140 bytes
    // (shorter than, equal to and longer than SHA-256's 64-byte block, which is where
    // RFC 2104 hashes the key first) and messages crossing block boundaries in every part.
    std::string key;
    for (std::size_t klen = 1; klen <= 140; ++klen) {
        key.push_back(static_cast<char>((klen * 37 + 11) & 0xff));  // binary bytes, NUL too
        const signer s(key);
        for (std::size_t mlen : {0u, 1u, 55u, 56u, 63u, 64u, 65u, 119u, 120u, 200u}) {
            std::string part(mlen, '\0');
            for (std::size_t i = 0; i < mlen; ++i) {
                part[i] = static_cast<char>((i * 131 + klen) & 0xff);
            }
            const std::string whole = part + "{}" + part + "x";
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int md_len = 0;
            REQUIRE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                         reinterpret_cast<const unsigned char*>(whole.data()), whole.size(), md,
                         &md_len) != nullptr);
            REQUIRE(md_len == signer::digest_size);
            std::string expected;
            for (unsigned int i = 0; i < md_len; ++i) {
                static constexpr char digits[] = "0123456789abcdef";
                expected += digits[md[i] >> 4];
                expected += digits[md[i] & 0x0f];
            }
            INFO("key length " << klen << ", part length " << mlen);
            CHECK(s.sign(part, "{}", part, "x") == expected);
            CHECK(s.verify(expected, part, "{}", part, "x"));
        }
    }
}
