// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/json_check.hpp"

#include <algorithm>
#include <bitset>
#include <cstdint>

namespace kernelgate::gateway {

namespace {

constexpr std::size_t k_max_depth_bits = 4096;

class checker
{
public:
    checker(std::string_view text, std::size_t max_depth) noexcept
        : p_(reinterpret_cast<const unsigned char*>(text.data())),
          end_(p_ + text.size()),
          max_depth_(std::min(max_depth, k_max_depth_bits))
    {
    }

    json_check_result run(bool require_object) noexcept
    {
        skip_ws();
        const bool object = p_ != end_ && *p_ == '{';
        // The value is checked first, so a deep non-object still reports its depth.
        const json_check_result r = value();
        if (r != json_check_result::ok) {
            return r;
        }
        skip_ws();
        return p_ == end_ && (object || !require_object) ? json_check_result::ok
                                                          : json_check_result::bad_json;
    }

private:
    static constexpr auto bad = json_check_result::bad_json;

    void skip_ws() noexcept
    {
        while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) {
            ++p_;
        }
    }

    bool literal(std::string_view word) noexcept
    {
        if (static_cast<std::size_t>(end_ - p_) < word.size() ||
            !std::equal(word.begin(), word.end(), p_)) {
            return false;
        }
        p_ += word.size();
        return true;
    }

    bool digits() noexcept
    {
        const unsigned char* start = p_;
        while (p_ != end_ && *p_ >= '0' && *p_ <= '9') {
            ++p_;
        }
        return p_ != start;
    }

    bool number() noexcept
    {
        if (p_ != end_ && *p_ == '-') {
            ++p_;
        }
        if (p_ == end_) {
            return false;
        }
        if (*p_ == '0') {
            ++p_;
        } else if (!digits()) {
            return false;
        }
        if (p_ != end_ && *p_ == '.') {
            ++p_;
            if (!digits()) {
                return false;
            }
        }
        if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
            ++p_;
            if (p_ != end_ && (*p_ == '+' || *p_ == '-')) {
                ++p_;
            }
            if (!digits()) {
                return false;
            }
        }
        return true;
    }

    /// Four hex digits of a \u escape.
    bool hex4(std::uint32_t& out) noexcept
    {
        if (end_ - p_ < 4) {
            return false;
        }
        out = 0;
        for (int i = 0; i < 4; ++i) {
            const unsigned char c = *p_++;
            std::uint32_t v = 0;
            if (c >= '0' && c <= '9') {
                v = c - '0';
            } else if (c >= 'a' && c <= 'f') {
                v = c - 'a' + 10;
            } else if (c >= 'A' && c <= 'F') {
                v = c - 'A' + 10;
            } else {
                return false;
            }
            out = (out << 4) | v;
        }
        return true;
    }

    bool escape() noexcept
    {
        if (p_ == end_) {
            return false;
        }
        const unsigned char c = *p_++;
        switch (c) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            return true;
        case 'u': {
            std::uint32_t cp = 0;
            if (!hex4(cp)) {
                return false;
            }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return false;  // a low surrogate alone
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                // A high surrogate must be followed by an escaped low one.
                std::uint32_t low = 0;
                if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') {
                    return false;
                }
                p_ += 2;
                return hex4(low) && low >= 0xDC00 && low <= 0xDFFF;
            }
            return true;
        }
        default:
            return false;
        }
    }

    /// One UTF-8 sequence starting with a byte >= 0x80 (RFC 3629 table: no overlongs, no
    /// surrogates, nothing above U+10FFFF).
    bool utf8(unsigned char lead) noexcept
    {
        auto cont = [&](unsigned char lo, unsigned char hi) {
            if (p_ == end_ || *p_ < lo || *p_ > hi) {
                return false;
            }
            ++p_;
            return true;
        };
        if (lead >= 0xC2 && lead <= 0xDF) {
            return cont(0x80, 0xBF);
        }
        if (lead == 0xE0) {
            return cont(0xA0, 0xBF) && cont(0x80, 0xBF);
        }
        if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
            return cont(0x80, 0xBF) && cont(0x80, 0xBF);
        }
        if (lead == 0xED) {
            return cont(0x80, 0x9F) && cont(0x80, 0xBF);
        }
        if (lead == 0xF0) {
            return cont(0x90, 0xBF) && cont(0x80, 0xBF) && cont(0x80, 0xBF);
        }
        if (lead >= 0xF1 && lead <= 0xF3) {
            return cont(0x80, 0xBF) && cont(0x80, 0xBF) && cont(0x80, 0xBF);
        }
        if (lead == 0xF4) {
            return cont(0x80, 0x8F) && cont(0x80, 0xBF) && cont(0x80, 0xBF);
        }
        return false;
    }

    /// A string; p_ is just past the opening quote.
    bool string() noexcept
    {
        while (p_ != end_) {
            const unsigned char c = *p_++;
            if (c == '"') {
                return true;
            }
            if (c == '\\') {
                if (!escape()) {
                    return false;
                }
            } else if (c < 0x20) {
                return false;
            } else if (c >= 0x80 && !utf8(c)) {
                return false;
            }
        }
        return false;
    }

    /// Any value, iteratively: containers push a bit (1 = object) instead of recursing.
    json_check_result value() noexcept
    {
        for (;;) {
            // Expecting a value here.
            skip_ws();
            if (p_ == end_) {
                return bad;
            }
            const unsigned char c = *p_;
            bool opened = false;
            if (c == '{' || c == '[') {
                if (depth_ >= max_depth_) {
                    return json_check_result::too_deep;
                }
                stack_[depth_++] = (c == '{');
                ++p_;
                skip_ws();
                if (p_ != end_ && *p_ == (c == '{' ? '}' : ']')) {
                    ++p_;
                    --depth_;  // empty container: a complete value
                } else if (c == '{') {
                    if (!key()) {
                        return bad;
                    }
                    continue;  // the member's value
                } else {
                    continue;  // the first element
                }
                opened = true;
            }
            if (!opened) {
                ++p_;
                bool ok = false;
                switch (c) {
                case '"': ok = string(); break;
                case 't': --p_; ok = literal("true"); break;
                case 'f': --p_; ok = literal("false"); break;
                case 'n': --p_; ok = literal("null"); break;
                default:
                    --p_;
                    ok = (c == '-' || (c >= '0' && c <= '9')) && number();
                    break;
                }
                if (!ok) {
                    return bad;
                }
            }
            // A value is complete: close containers or move to the next element/member.
            for (;;) {
                if (depth_ == 0) {
                    return json_check_result::ok;
                }
                skip_ws();
                if (p_ == end_) {
                    return bad;
                }
                const bool in_object = stack_[depth_ - 1];
                if (*p_ == ',') {
                    ++p_;
                    if (in_object && !key()) {
                        return bad;
                    }
                    break;  // next value
                }
                if (*p_ == (in_object ? '}' : ']')) {
                    ++p_;
                    --depth_;
                    continue;
                }
                return bad;
            }
        }
    }

    /// A member name and its colon.
    bool key() noexcept
    {
        skip_ws();
        if (p_ == end_ || *p_ != '"') {
            return false;
        }
        ++p_;
        if (!string()) {
            return false;
        }
        skip_ws();
        if (p_ == end_ || *p_ != ':') {
            return false;
        }
        ++p_;
        return true;
    }

    const unsigned char* p_;
    const unsigned char* end_;
    std::size_t max_depth_;
    std::size_t depth_ = 0;
    std::bitset<k_max_depth_bits> stack_;
};

} // namespace

json_check_result json_check(std::string_view text, std::size_t max_depth,
                             bool require_object) noexcept
{
    return checker(text, max_depth).run(require_object);
}

} // namespace kernelgate::gateway
