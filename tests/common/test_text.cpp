// SPDX-License-Identifier: BSD-3-Clause
#include <catch2/catch.hpp>

#include <string>

#include "common/text.hpp"

using namespace kernelgate::common;
using namespace std::chrono_literals;
using std::chrono::system_clock;

namespace {

system_clock::time_point at(std::chrono::seconds since_epoch)
{
    return system_clock::time_point(since_epoch);
}

} // namespace

TEST_CASE("iso8601: UTC, six fractional digits, 'Z'", "[common]")
{
    CHECK(iso8601(system_clock::time_point{}) == "1970-01-01T00:00:00.000000Z");
    CHECK(iso8601(at(1609556645s)) == "2021-01-02T03:04:05.000000Z");
    CHECK(iso8601(at(1609556645s) + 123456us) == "2021-01-02T03:04:05.123456Z");
    CHECK(iso8601(at(951868799s) + 999999us) == "2000-02-29T23:59:59.999999Z");
    CHECK(iso8601(at(4133894400s) + 1us) == "2100-12-31T00:00:00.000001Z");
    // Below a microsecond is truncated, never rounded up.
    CHECK(iso8601(at(1609556645s) + 123456us + 999ns) == "2021-01-02T03:04:05.123456Z");
    // Before 1970 the fraction still counts forward from the whole second.
    CHECK(iso8601(system_clock::time_point{} - 1us) == "1969-12-31T23:59:59.999999Z");
}

TEST_CASE("iso8601: the current time has the fixed shape", "[common]")
{
    const std::string now = iso8601(system_clock::now());
    REQUIRE(now.size() == 27);
    CHECK(now[4] == '-');
    CHECK(now[7] == '-');
    CHECK(now[10] == 'T');
    CHECK(now[13] == ':');
    CHECK(now[16] == ':');
    CHECK(now[19] == '.');
    CHECK(now[26] == 'Z');
}

TEST_CASE("to_hex: lower case, two digits per byte", "[common]")
{
    CHECK(to_hex(std::string_view()).empty());
    CHECK(to_hex("foobar") == "666f6f626172");
    CHECK(to_hex(std::string("\x00\x01\x7f\x80\xab\xff", 6)) == "00017f80abff");
    const unsigned char raw[] = {0xde, 0xad, 0xbe, 0xef};
    CHECK(to_hex(raw, sizeof(raw)) == "deadbeef");
    CHECK(to_hex(raw, 0).empty());
}

TEST_CASE("base32_lower: RFC 4648 test vectors, lower case, no padding", "[common]")
{
    CHECK(base32_lower("").empty());
    CHECK(base32_lower("f") == "my");
    CHECK(base32_lower("fo") == "mzxq");
    CHECK(base32_lower("foo") == "mzxw6");
    CHECK(base32_lower("foob") == "mzxw6yq");
    CHECK(base32_lower("fooba") == "mzxw6ytb");
    CHECK(base32_lower("foobar") == "mzxw6ytboi");
    CHECK(base32_lower(std::string(5, '\xff')) == "77777777");
    CHECK(base32_lower(std::string(16, '\0')).size() == 26);  // a token id
}

TEST_CASE("base64url: RFC 4648 test vectors, URL alphabet, no padding", "[common]")
{
    CHECK(base64url("").empty());
    CHECK(base64url("f") == "Zg");
    CHECK(base64url("fo") == "Zm8");
    CHECK(base64url("foo") == "Zm9v");
    CHECK(base64url("foob") == "Zm9vYg");
    CHECK(base64url("fooba") == "Zm9vYmE");
    CHECK(base64url("foobar") == "Zm9vYmFy");
    // '-' and '_' where base64 has '+' and '/'.
    CHECK(base64url("\xfb\xff") == "-_8");
    CHECK(base64url("\xfb\xef\xbe") == "----");
    CHECK(base64url("\xff\xff\xff") == "____");
    CHECK(base64url(std::string(32, '\0')).size() == 43);  // a token secret
}

TEST_CASE("encode_bits: 4 bits per char over hex digits is to_hex", "[common]")
{
    const std::string bytes("\x00\x12\x34\x56\x78\x9a\xbc\xde\xf0\xff", 10);
    CHECK(encode_bits(bytes, "0123456789abcdef", 4) == to_hex(bytes));
    CHECK(encode_bits("\xa5", "01", 1) == "10100101");
}
