// SPDX-License-Identifier: BSD-3-Clause
#include "common/text.hpp"

#include <cstdio>
#include <ctime>

namespace kernelgate::common {

std::string iso8601(std::chrono::system_clock::time_point tp)
{
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(tp.time_since_epoch()).count();
    // Floor division, so that a time before 1970 still has a fraction in [0, 1 s).
    auto secs = us / 1000000;
    auto frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        --secs;
    }
    const auto t = static_cast<std::time_t>(secs);
    std::tm tm{};
    gmtime_r(&t, &tm);
    const int year = tm.tm_year + 1900;
    if (year < 0 || year > 9999) {
        char buf[96];
        std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", year,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      static_cast<long long>(frac));
        return buf;
    }
    // Digits written directly (this is on every message a kernel or the gateway originates).
    std::string out("0000-00-00T00:00:00.000000Z");
    auto put = [&out](std::size_t at, long long v, int width) {
        for (int i = width - 1; i >= 0; --i) {
            out[at + static_cast<std::size_t>(i)] = static_cast<char>('0' + v % 10);
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, tm.tm_mon + 1, 2);
    put(8, tm.tm_mday, 2);
    put(11, tm.tm_hour, 2);
    put(14, tm.tm_min, 2);
    put(17, tm.tm_sec, 2);
    put(20, frac, 6);
    return out;
}

void to_hex(const unsigned char* data, std::size_t n, char* out) noexcept
{
    static constexpr char digits[] = "0123456789abcdef";
    for (std::size_t i = 0; i < n; ++i) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 0x0f];
    }
}

std::string to_hex(const unsigned char* data, std::size_t n)
{
    std::string out(2 * n, '\0');
    to_hex(data, n, out.data());
    return out;
}

std::string to_hex(std::string_view bytes)
{
    return to_hex(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
}

std::string encode_bits(std::string_view bytes, std::string_view alphabet, int bits_per_char)
{
    const unsigned mask = (1U << bits_per_char) - 1;
    std::string out;
    out.reserve((bytes.size() * 8 + static_cast<std::size_t>(bits_per_char) - 1) /
                static_cast<std::size_t>(bits_per_char));
    unsigned buffer = 0;
    int bits = 0;
    for (unsigned char c : bytes) {
        buffer = (buffer << 8) | c;
        bits += 8;
        while (bits >= bits_per_char) {
            out += alphabet[(buffer >> (bits - bits_per_char)) & mask];
            bits -= bits_per_char;
        }
    }
    if (bits > 0) {
        out += alphabet[(buffer << (bits_per_char - bits)) & mask];
    }
    return out;
}

std::string base32_lower(std::string_view bytes)
{
    return encode_bits(bytes, "abcdefghijklmnopqrstuvwxyz234567", 5);
}

std::string base64url(std::string_view bytes)
{
    return encode_bits(bytes, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                       6);
}

} // namespace kernelgate::common
