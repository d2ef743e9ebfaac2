// SPDX-License-Identifier: BSD-3-Clause
// json_check against nlohmann::json::accept: hand-picked edge cases, then a differential run
// over many generated and mutated texts. Both must agree on every input.
#include "gateway/json_check.hpp"

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

namespace gw = kernelgate::gateway;
using gw::json_check;
using gw::json_check_result;

namespace {

bool accepted(const std::string& s)
{
    return json_check(s, 1000, false) == json_check_result::ok;
}

/// nlohmann's verdict on the grammar, or nothing where it cannot be compared. Three
/// documented differences: nlohmann skips a leading UTF-8 byte order mark (json_check
/// refuses it, as Python's json.loads does); it takes a NUL byte for the end of the input
/// (a raw NUL is valid nowhere in JSON, so json_check refuses it); and it stops at a number
/// outside the range of a
/// double (json_check follows the RFC grammar, as Python does, which reads it as inf); such
/// inputs are not compared here but checked by hand below.
std::optional<bool> reference(const std::string& s)
{
    if (s.rfind("\xef\xbb\xbf", 0) == 0 || s.find('\0') != std::string::npos) {
        return false;
    }
    try {
        const auto parsed = nlohmann::json::parse(s);
        (void)parsed;
        return true;
    } catch (const nlohmann::json::out_of_range& e) {
        if (e.id == 406) {
            return std::nullopt;  // "number overflow": the rest was never looked at
        }
        return false;
    } catch (const nlohmann::json::exception&) {
        return false;
    }
}

/// Random JSON-ish text: mostly valid pieces, with bytes that stress strings and numbers.
void gen_value(std::mt19937& rng, std::string& out, int depth)
{
    std::uniform_int_distribution<int> pick(0, depth > 6 ? 5 : 8);
    switch (pick(rng)) {
    case 0: out += "null"; break;
    case 1: out += (rng() % 2) ? "true" : "false"; break;
    case 2: {
        static const char* nums[] = {"0", "-0", "1", "-12", "3.25", "1e9", "1E-3", "-0.5e+2",
                                     "12345678901234567890123", "1.0", "0.000"};
        out += nums[rng() % std::size(nums)];
        break;
    }
    case 3:
    case 4: {
        static const char* strs[] = {
            R"("")", R"("abc")", R"("\n\t\\\"\/")", R"("\u00e9")", R"("\ud83d\ude00")",
            "\"\xc3\xa9\"", "\"\xe2\x82\xac\"", "\"\xf0\x9f\x98\x80\"", R"("\u0000")",
            R"("a b")"};
        out += strs[rng() % std::size(strs)];
        break;
    }
    case 5: out += "\"x\""; break;
    case 6:
    case 7: {
        out += '{';
        const int n = static_cast<int>(rng() % 4);
        for (int i = 0; i < n; ++i) {
            if (i > 0) {
                out += ',';
            }
            out += (rng() % 3 == 0) ? " \"k\" : " : "\"k" + std::to_string(i) + "\":";
            gen_value(rng, out, depth + 1);
        }
        out += '}';
        break;
    }
    default: {
        out += '[';
        const int n = static_cast<int>(rng() % 4);
        for (int i = 0; i < n; ++i) {
            if (i > 0) {
                out += (rng() % 4 == 0) ? " ,\n" : ",";
            }
            gen_value(rng, out, depth + 1);
        }
        out += ']';
        break;
    }
    }
}

void mutate(std::mt19937& rng, std::string& s)
{
    static const char alphabet[] = "{}[]\":,\\ u0123456789abcdefABCDEFeE+-.tfnrl\t\n\r";
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !s.empty(); ++e) {
        const std::size_t pos = rng() % s.size();
        switch (rng() % 5) {
        case 0: s.erase(pos, 1); break;
        case 1: s.insert(pos, 1, alphabet[rng() % (sizeof(alphabet) - 1)]); break;
        case 2: s[pos] = alphabet[rng() % (sizeof(alphabet) - 1)]; break;
        case 3: s[pos] = static_cast<char>(rng() & 0xff); break;  // any byte, UTF-8 edges
        default: s.insert(pos, s.substr(pos, rng() % 8)); break;
        }
    }
}

} // namespace

TEST_CASE("json_check: agrees with nlohmann on edge cases", "[json_check]")
{
    const std::vector<std::string> cases = {
        "", " ", "{}", "[]", " {} ", "{} {}", "{,}", "[,]", "[1,]", "{\"a\":1,}", "{\"a\"}",
        "{\"a\":}", "{a:1}", "{'a':1}", "[01]", "[-]", "[1.]", "[.5]", "[1e]", "[1e+]",
        "[-01]", "[1.5e10]", "[+1]", "[0x10]", "[Infinity]", "[NaN]", "[tru]", "[nul]",
        "[true false]", "[\"\\x\"]", "[\"\\u12\"]", "[\"\\u12g4\"]", "[\"\\uD800\"]",
        "[\"\\uDC00\"]", "[\"\\uD800\\u0041\"]", "[\"\\uD800\\uDC00\"]", "[\"\\uDBFF\\uDFFF\"]",
        "[\"\t\"]", std::string("[\"\0\"]", 5), "[\"\x7f\"]", "[\"\xc0\x80\"]", "[\"\xc2\x80\"]",
        "[\"\xe0\x80\x80\"]", "[\"\xe0\xa0\x80\"]", "[\"\xed\xa0\x80\"]", "[\"\xed\x9f\xbf\"]",
        "[\"\xf0\x8f\xbf\xbf\"]", "[\"\xf0\x90\x80\x80\"]", "[\"\xf4\x8f\xbf\xbf\"]",
        "[\"\xf4\x90\x80\x80\"]", "[\"\xf5\x80\x80\x80\"]", "[\"\xff\"]", "[\"\x80\"]",
        "[\"\xc3\"]", "\"abc\"", "123", "-0", "null", "nulll", "[[[]]]", "[[[]]",
        "{\"a\":{\"b\":[1,2,{\"c\":null}]}}", "\xef\xbb\xbf{}", "{}\n", "\f{}",
        std::string("{}\0", 3), std::string("[\"a\0\"]", 6),
        "[1,2", "{\"a\":1", "\"unterminated", "[\"a\"\"b\"]",
    };
    for (const auto& c : cases) {
        INFO("input: " << nlohmann::json(c).dump(-1, ' ', true,
                                                  nlohmann::json::error_handler_t::replace));
        const auto ref = reference(c);
        REQUIRE(ref.has_value());
        CHECK(accepted(c) == *ref);
    }
}

TEST_CASE("json_check: agrees with nlohmann on generated and mutated texts", "[json_check]")
{
    std::mt19937 rng(20261129);
    int valid = 0;
    int invalid = 0;
    for (int i = 0; i < 20000; ++i) {
        std::string s;
        gen_value(rng, s, 0);
        if (i % 2 == 1) {
            mutate(rng, s);
        }
        const auto ref = reference(s);
        if (!ref) {
            continue;
        }
        (*ref ? valid : invalid)++;
        INFO("input: " << nlohmann::json(s).dump(-1, ' ', true,
                                                  nlohmann::json::error_handler_t::replace));
        REQUIRE(accepted(s) == *ref);
    }
    // Both kinds were exercised in bulk.
    CHECK(valid > 5000);
    CHECK(invalid > 2000);
}

TEST_CASE("json_check: the two documented differences from nlohmann", "[json_check]")
{
    // A byte order mark is refused (Python's json.loads refuses it too).
    CHECK_FALSE(accepted("\xef\xbb\xbf{}"));
    CHECK(nlohmann::json::accept("\xef\xbb\xbf{}"));
    // A NUL byte after a complete value is trailing garbage (nlohmann stops reading there).
    const std::string nul("{}\0x", 4);
    CHECK_FALSE(accepted(nul));
    CHECK(nlohmann::json::accept(nul));
    // Numbers outside a double's range follow the grammar (Python reads them as inf).
    CHECK(accepted("[1e999]"));
    CHECK(accepted("{\"x\":-1234E6789678901234567890123}"));
    CHECK_FALSE(accepted("[1e999,]"));
    CHECK_FALSE(nlohmann::json::accept("[1e999]"));
}

TEST_CASE("json_check: depth limit and object requirement", "[json_check]")
{
    CHECK(json_check("{}", 1, true) == json_check_result::ok);
    CHECK(json_check("{}", 0, true) == json_check_result::too_deep);
    CHECK(json_check("{\"a\":[{}]}", 3, true) == json_check_result::ok);
    CHECK(json_check("{\"a\":[{}]}", 2, true) == json_check_result::too_deep);
    CHECK(json_check("[]", 5, true) == json_check_result::bad_json);
    CHECK(json_check("1", 5, true) == json_check_result::bad_json);
    CHECK(json_check(" \n{\"a\":1}\t", 5, true) == json_check_result::ok);
    // A deep array is reported as too deep even where an object is required.
    CHECK(json_check(std::string(100000, '['), 64, true) == json_check_result::too_deep);
    // Depth past the bit stack is refused, not overflowed.
    std::string deep(5000, '[');
    deep += std::string(5000, ']');
    CHECK(json_check(deep, 100000, false) == json_check_result::too_deep);
    CHECK(json_check(deep, 100000, false) != json_check_result::ok);
}
