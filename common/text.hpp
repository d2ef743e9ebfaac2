// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

/// Small text encoders shared by the libraries (no dependencies beyond the standard library).
namespace kernelgate::common {

/// "YYYY-MM-DDTHH:MM:SS.ffffffZ": UTC, six fractional digits (microseconds, truncated).
std::string iso8601(std::chrono::system_clock::time_point tp);

/// Lower-case hex, two digits per byte, no separators.
std::string to_hex(std::string_view bytes);
std::string to_hex(const unsigned char* data, std::size_t n);
/// The same into out, which must hold 2 * n characters (no allocation).
void to_hex(const unsigned char* data, std::size_t n, char* out) noexcept;

/// Packs the bytes, most significant bit first, into groups of bits_per_char bits (1 to 6)
/// and maps each group through alphabet (which has 2^bits_per_char characters). A partial
/// last group is padded with zero bits; no '=' padding is added.
std::string encode_bits(std::string_view bytes, std::string_view alphabet, int bits_per_char);

/// RFC 4648 base32 with a lower-case alphabet (a-z, 2-7), without padding.
std::string base32_lower(std::string_view bytes);

/// RFC 4648 base64url (A-Z, a-z, 0-9, '-', '_'), without padding.
std::string base64url(std::string_view bytes);

} // namespace kernelgate::common
