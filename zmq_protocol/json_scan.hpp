// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace kernelgate::zmq_protocol {

namespace detail {

/// Where a top-level string value sits in text: its raw characters between the quotes, and
/// whether they hold escapes.
struct raw_string_value
{
    std::string_view raw;
    bool escaped = false;
};

/// Where the JSON string whose characters start at text[start] ends: the index of its
/// closing quote, or npos when it has none. Sets *escaped when the string holds a backslash.
/// The string's bytes are searched with memchr rather than looked at one by one: Jupyter
/// headers are mostly strings, and this scan is on the path of every message.
inline std::size_t string_end(std::string_view text, std::size_t start, bool* escaped)
{
    const char* const base = text.data();
    const std::size_t n = text.size();
    std::size_t i = start;
    while (i < n) {
        const auto* quote = static_cast<const char*>(std::memchr(base + i, '"', n - i));
        if (quote == nullptr) {
            return std::string_view::npos;
        }
        const auto q = static_cast<std::size_t>(quote - base);
        const auto* backslash = static_cast<const char*>(std::memchr(base + i, '\\', q - i));
        if (backslash == nullptr) {
            return q;
        }
        if (escaped != nullptr) {
            *escaped = true;
        }
        i = static_cast<std::size_t>(backslash - base) + 2;  // past the escaped character
    }
    return std::string_view::npos;
}

inline std::optional<raw_string_value> find_string_field(std::string_view text,
                                                         std::string_view key)
{
    int depth = 0;
    bool expect_key = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '{' || c == '[') {
            ++depth;
            expect_key = (c == '{' && depth == 1);
            continue;
        }
        if (c == '}' || c == ']') {
            --depth;
            continue;
        }
        if (c == ',' && depth == 1) {
            expect_key = true;
            continue;
        }
        if (c != '"') {
            continue;
        }
        // A string: find its end, honouring escapes.
        const std::size_t start = i + 1;
        bool escaped = false;
        const std::size_t j = string_end(text, start, &escaped);
        if (j == std::string_view::npos) {
            return std::nullopt;
        }
        const auto str = text.substr(start, j - start);
        i = j;
        if (!(depth == 1 && expect_key)) {
            continue;
        }
        expect_key = false;
        if (escaped || str != key) {
            continue;
        }
        // Skip to the value.
        std::size_t k = j + 1;
        while (k < text.size() && (text[k] == ' ' || text[k] == ':' || text[k] == '\n' ||
                                   text[k] == '\t' || text[k] == '\r')) {
            ++k;
        }
        if (k >= text.size() || text[k] != '"') {
            return std::nullopt;
        }
        const std::size_t vs = k + 1;
        bool vesc = false;
        const std::size_t ve = string_end(text, vs, &vesc);
        if (ve == std::string_view::npos) {
            return std::nullopt;
        }
        return raw_string_value{text.substr(vs, ve - vs), vesc};
    }
    return std::nullopt;
}

/// The value of a raw string with escapes, decoded by a full JSON parse.
inline std::optional<std::string> unescape(std::string_view raw)
{
    std::string quoted;
    quoted.reserve(raw.size() + 2);
    quoted += '"';
    quoted += raw;
    quoted += '"';
    const auto j = nlohmann::json::parse(quoted, nullptr, false);
    if (j.is_string()) {
        return j.get<std::string>();
    }
    return std::nullopt;
}

/// A JSON string's value from its raw text (between the quotes): raw itself when it has no
/// escapes, else its decoded value in scratch (valid until scratch changes).
inline std::optional<std::string_view> string_view_of(std::string_view raw, bool escaped,
                                                      std::string& scratch)
{
    if (!escaped) {
        return raw;
    }
    auto decoded = unescape(raw);
    if (!decoded) {
        return std::nullopt;
    }
    scratch = std::move(*decoded);
    return std::string_view(scratch);
}

/// One member of a JSON object as text: the key's raw characters (between the quotes) and
/// the value's whole text ("..." with its quotes, {...}, [...], or a literal).
struct raw_member
{
    std::string_view key;
    bool key_escaped = false;
    std::string_view value;
};

/// Calls f(raw_member) for each member of the top-level object in text, in order, without
/// building anything. Meant for text already validated (gateway::json_check): on text that
/// is not an object it stops at the first thing out of place and returns false, never reading
/// outside text. Nesting is skipped by counting brackets outside strings, so it needs no stack.
template <typename F>
bool for_each_member(std::string_view text, F&& f)
{
    std::size_t i = 0;
    const std::size_t n = text.size();
    auto skip_ws = [&] {
        while (i < n && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r')) {
            ++i;
        }
    };
    // At a '"': moves i past the closing quote; false if there is none.
    auto skip_string = [&](bool* escaped) {
        const std::size_t end = string_end(text, i + 1, escaped);
        if (end == std::string_view::npos) {
            return false;
        }
        i = end + 1;
        return true;
    };
    skip_ws();
    if (i >= n || text[i] != '{') {
        return false;
    }
    ++i;
    skip_ws();
    if (i < n && text[i] == '}') {
        return true;
    }
    while (i < n) {
        if (text[i] != '"') {
            return false;
        }
        raw_member m;
        const std::size_t key_start = i + 1;
        if (!skip_string(&m.key_escaped)) {
            return false;
        }
        m.key = text.substr(key_start, i - 1 - key_start);
        skip_ws();
        if (i >= n || text[i] != ':') {
            return false;
        }
        ++i;
        skip_ws();
        if (i >= n) {
            return false;
        }
        const std::size_t value_start = i;
        if (text[i] == '"') {
            if (!skip_string(nullptr)) {
                return false;
            }
        } else if (text[i] == '{' || text[i] == '[') {
            std::size_t depth = 0;
            while (i < n) {
                const char c = text[i];
                if (c == '"') {
                    if (!skip_string(nullptr)) {
                        return false;
                    }
                    continue;
                }
                ++i;
                if (c == '{' || c == '[') {
                    ++depth;
                } else if ((c == '}' || c == ']') && --depth == 0) {
                    break;
                }
            }
            if (depth != 0) {
                return false;
            }
        } else {
            while (i < n && text[i] != ',' && text[i] != '}' && text[i] != ' ' &&
                   text[i] != '\n' && text[i] != '\t' && text[i] != '\r') {
                ++i;
            }
        }
        m.value = text.substr(value_start, i - value_start);
        f(m);
        skip_ws();
        if (i >= n) {
            return false;
        }
        if (text[i] == '}') {
            return true;
        }
        if (text[i] != ',') {
            return false;
        }
        ++i;
        skip_ws();
    }
    return false;
}

/// Whether a member's raw key is `name` (decoding escapes when it has any).
inline bool key_is(const raw_member& m, std::string_view name)
{
    if (!m.key_escaped) {
        return m.key == name;
    }
    const auto decoded = unescape(m.key);
    return decoded && *decoded == name;
}

} // namespace detail

/// Reads the string value of a key at the top level of a JSON object text without building a
/// DOM (the hot path only needs msg_id / msg_type / execution_state). Keys nested deeper are
/// skipped. Falls back to a full parse when the value holds escapes.
inline std::optional<std::string> json_string_field(std::string_view text, std::string_view key)
{
    const auto v = detail::find_string_field(text, key);
    if (!v) {
        return std::nullopt;
    }
    if (!v->escaped) {
        return std::string(v->raw);
    }
    return detail::unescape(v->raw);
}

/// json_string_field without an allocation in the usual case: a view into text when the value
/// has no escapes, else a view of its decoded value in scratch (valid until scratch changes).
inline std::optional<std::string_view> json_string_field_view(std::string_view text,
                                                              std::string_view key,
                                                              std::string& scratch)
{
    const auto v = detail::find_string_field(text, key);
    if (!v) {
        return std::nullopt;
    }
    return detail::string_view_of(v->raw, v->escaped, scratch);
}

} // namespace kernelgate::zmq_protocol
