// SPDX-License-Identifier: BSD-3-Clause
// Fuzz target for zmq_protocol/json_scan.hpp: the in-place readers of Jupyter header fields
// (json_string_field, json_string_field_view) and the member splitter (for_each_member).
//
// Input: the JSON text itself. Whatever it is, the readers must stay inside it, and views
// they hand out must point into it (or into the scratch string). When the text is a JSON
// object whose keys hold no escapes and appear once each, the readers must agree with a full
// parse: the same string values, the same members.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "zmq_protocol/json_scan.hpp"

namespace zp = kernelgate::zmq_protocol;

namespace {

void check(bool ok)
{
    if (!ok) {
        std::abort();
    }
}

bool inside(std::string_view part, std::string_view whole)
{
    return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    static const char* const keys[] = {"msg_id", "msg_type", "execution_state", "k", ""};

    std::set<std::string> member_keys;
    bool plain_keys = true;
    bool unique = true;
    const bool split = zp::detail::for_each_member(text, [&](const zp::detail::raw_member& m) {
        check(inside(m.key, text) && inside(m.value, text));
        plain_keys = plain_keys && !m.key_escaped;
        unique = member_keys.emplace(m.key).second && unique;
    });

    const auto parsed = nlohmann::json::parse(text, nullptr, false);
    const bool comparable = parsed.is_object() && plain_keys && unique;
    if (comparable) {
        check(split && member_keys.size() == parsed.size());
    }
    for (const char* key : keys) {
        std::string scratch;
        const auto view = zp::json_string_field_view(text, key, scratch);
        if (view && scratch.empty()) {
            check(inside(*view, text));
        }
        const auto value = zp::json_string_field(text, key);
        check(value.has_value() == view.has_value());
        if (value) {
            check(*value == *view);
        }
        if (comparable) {
            const auto it = parsed.find(key);
            const bool is_string = it != parsed.end() && it->is_string();
            check(value.has_value() == is_string);
            if (is_string) {
                check(*value == it->get<std::string>());
            }
        }
    }
    return 0;
}
