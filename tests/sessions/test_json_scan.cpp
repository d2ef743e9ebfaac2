// SPDX-License-Identifier: BSD-3-Clause
#include <catch2/catch.hpp>

#include "zmq_protocol/json_scan.hpp"

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
