// SPDX-License-Identifier: BSD-3-Clause
#include <catch2/catch.hpp>

#include "zmq_protocol/json_scan.hpp"

#include <cstdint>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

using kernelgate::zmq_protocol::json_string_field;

TEST_CASE("json_string_field reads top-level string fields only")
{
    CHECK(json_string_field(R"({"msg_id":"abc","msg_type":"status"})", "msg_type") == "status");
    CHECK(json_string_field(R"({ "msg_id" : "a b" })", "msg_id") == "a b");
    CHECK(json_string_field(R"({"x":{"msg_id":"inner"},"msg_id":"outer"})", "msg_id") ==
          "outer");
    CHECK(json_string_field(R"({"x":["msg_id","v"]})", "msg_id") == std::nullopt);
    CHECK(json_string_field(R"({"a":"msg_id","b":"c"})", "msg_id") == std::nullopt);
    CHECK(json_string_field(R"({"k":"a\"b"})", "k") == "a\"b");
    CHECK(json_string_field(R"({"k":"\u00e9"})", "k") == "\xc3\xa9");
    CHECK(json_string_field(R"({"k":1})", "k") == std::nullopt);
    CHECK(json_string_field(R"({"k":"unterminated)", "k") == std::nullopt);
    CHECK(json_string_field("", "k") == std::nullopt);
    CHECK(json_string_field("{}", "k") == std::nullopt);
}

TEST_CASE("json_string_field_view: a view into the text, or the decoded value in scratch")
{
    using kernelgate::zmq_protocol::json_string_field_view;
    std::string scratch;
    const std::string text = R"({"msg_id":"abc-123","msg_type":"a\"b","n":"\u00e9"})";
    const auto id = json_string_field_view(text, "msg_id", scratch);
    REQUIRE(id.has_value());
    CHECK(*id == "abc-123");
    CHECK(id->data() >= text.data());  // no copy: it points into the text
    CHECK(id->data() + id->size() <= text.data() + text.size());
    CHECK(scratch.empty());
    CHECK(json_string_field_view(text, "msg_type", scratch) == "a\"b");
    CHECK(scratch == "a\"b");
    CHECK(json_string_field_view(text, "n", scratch) == "\xc3\xa9");
    CHECK(json_string_field_view(text, "missing", scratch) == std::nullopt);
    CHECK(json_string_field_view(R"({"k":"bad \x escape"})", "k", scratch) == std::nullopt);
    CHECK(json_string_field_view(R"({"k":2})", "k", scratch) == std::nullopt);
}

namespace {

/// A random JSON value with nesting, strings full of brackets/quotes/escapes, and numbers.
nlohmann::json random_value(std::mt19937& rng, int depth)
{
    const int pick = static_cast<int>(rng() % (depth > 3 ? 5 : 7));
    switch (pick) {
    case 0: return nullptr;
    case 1: return rng() % 2 == 0;
    case 2: return static_cast<std::int64_t>(rng()) - (1LL << 31);
    case 3: return static_cast<double>(rng() % 100000) / 7.0;
    case 4: {
        static const char* bits[] = {"{", "}", "[", "]", "\"", "\\", ",", ":", " ", "\n",
                                     "a", "\xc3\xa9", "header", "\x01"};
        std::string s;
        for (std::size_t i = 0, n = rng() % 8; i < n; ++i) {
            s += bits[rng() % std::size(bits)];
        }
        return s;
    }
    case 5: {
        auto a = nlohmann::json::array();
        for (std::size_t i = 0, n = rng() % 4; i < n; ++i) {
            a.push_back(random_value(rng, depth + 1));
        }
        return a;
    }
    default: {
        auto o = nlohmann::json::object();
        for (std::size_t i = 0, n = rng() % 4; i < n; ++i) {
            o["k" + std::to_string(rng() % 6)] = random_value(rng, depth + 1);
        }
        return o;
    }
    }
}

} // namespace

TEST_CASE("for_each_member splits an object as a parser does")
{
    using kernelgate::zmq_protocol::detail::for_each_member;
    using kernelgate::zmq_protocol::detail::raw_member;
    std::mt19937 rng(20261130);
    for (int round = 0; round < 2000; ++round) {
        auto obj = nlohmann::json::object();
        for (std::size_t i = 0, n = rng() % 6; i < n; ++i) {
            obj["m" + std::to_string(i)] = random_value(rng, 1);
        }
        const int indent = static_cast<int>(rng() % 3) - 1;  // compact, 0 or 1 space
        const std::string text = obj.dump(indent);
        INFO(text);
        std::vector<std::pair<std::string, std::string>> seen;
        REQUIRE(for_each_member(text, [&](const raw_member& m) {
            seen.emplace_back(std::string(m.key), std::string(m.value));
        }));
        REQUIRE(seen.size() == obj.size());
        for (const auto& [key, value] : seen) {
            CHECK(nlohmann::json::parse(value) == obj.at(key));
        }
        // Every cut of the text stops short (false) without reading past its end.
        for (std::size_t cut = 0; cut < text.size(); ++cut) {
            CHECK_FALSE(for_each_member(std::string_view(text).substr(0, cut), [](auto&&) {}));
        }
    }
}

TEST_CASE("for_each_member: escaped keys, spacing, and text that is not an object")
{
    using kernelgate::zmq_protocol::detail::for_each_member;
    using kernelgate::zmq_protocol::detail::key_is;
    using kernelgate::zmq_protocol::detail::raw_member;
    std::vector<std::string> values;
    CHECK(for_each_member(" { \"h\\u0065ader\" :\t{ \"a\" : [ 1 , 2 ] } ,\n\"n\" : -1.5e3 } ",
                          [&](const raw_member& m) {
                              if (key_is(m, "header")) {
                                  values.emplace_back(m.value);
                              }
                              if (key_is(m, "n")) {
                                  values.emplace_back(m.value);
                              }
                          }));
    CHECK(values == std::vector<std::string>{R"({ "a" : [ 1 , 2 ] })", "-1.5e3"});
    CHECK(for_each_member("{}", [](auto&&) { FAIL("no members"); }));
    for (const char* bad : {"", "[]", "\"x\"", "{\"a\"}", "{\"a\":1 \"b\":2}", "{\"a\":[1}",
                            "{\"a\":\"x}", "{a:1}", "{\"a\":1,}"}) {
        INFO(bad);
        CHECK_FALSE(for_each_member(bad, [](auto&&) {}));
    }
}

TEST_CASE("json_string_field finds what a parser finds, in random objects")
{
    std::mt19937 rng(20261202);
    for (int round = 0; round < 2000; ++round) {
        auto obj = nlohmann::json::object();
        for (std::size_t i = 0, n = rng() % 6; i < n; ++i) {
            obj["k" + std::to_string(rng() % 6)] = random_value(rng, 1);
        }
        const int indent = static_cast<int>(rng() % 3) - 1;  // compact, 0 or 1 space
        const std::string text = obj.dump(indent);
        INFO(text);
        for (int k = 0; k < 6; ++k) {
            const std::string key = "k" + std::to_string(k);
            const auto found = json_string_field(text, key);
            if (obj.contains(key) && obj[key].is_string()) {
                REQUIRE(found.has_value());
                CHECK(*found == obj[key].get<std::string>());
            } else {
                CHECK_FALSE(found.has_value());
            }
        }
        // A cut text never yields a value that runs past the cut, nor reads past it.
        for (std::size_t cut = 0; cut < text.size(); ++cut) {
            const std::string_view part = std::string_view(text).substr(0, cut);
            std::string scratch;
            const auto v = kernelgate::zmq_protocol::json_string_field_view(part, "k0", scratch);
            if (v && scratch.empty()) {
                CHECK(v->data() + v->size() <= part.data() + part.size());
            }
        }
    }
}
