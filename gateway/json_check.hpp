// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <string_view>

namespace kernelgate::gateway {

enum class json_check_result
{
    ok,
    bad_json,  ///< not one RFC 8259 JSON text (grammar, UTF-8, escapes, trailing bytes)
    too_deep,  ///< nesting deeper than the limit (reported as soon as it is reached)
};

/// Validates a JSON text in one pass without building anything: the grammar of RFC 8259
/// (what nlohmann::json::accept accepts, tested differentially), strings as well-formed
/// UTF-8 with valid escapes and paired surrogates, and the nesting depth. When
/// require_object is set the value must be an object. Leading/trailing whitespace is
/// allowed. Runs in O(n) time with O(1) memory (the nesting is tracked in a bit stack of
/// max_depth bits, at most 4096).
json_check_result json_check(std::string_view text, std::size_t max_depth,
                             bool require_object) noexcept;

} // namespace kernelgate::gateway
