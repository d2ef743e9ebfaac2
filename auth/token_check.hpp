// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace kernelgate::auth {

/// A static token (Kernel Gateway's --auth-token), held only as a salted SHA-256 digest.
/// The token text is never stored, so a memory dump or log cannot reveal it.
class static_token
{
public:
    static_token() = default;
    explicit static_token(std::string_view token);

    bool configured() const noexcept { return configured_; }
    /// Constant-time comparison of the presented token's digest with ours.
    bool matches(std::string_view presented) const;

private:
    std::array<unsigned char, 32> salt_{};
    std::array<unsigned char, 32> digest_{};
    bool configured_ = false;
};

/// A new random token: 32 bytes from the OS CSPRNG, hex encoded.
std::string generate_token();

/// The credential in an Authorization header value: "token T" or "Bearer T" (scheme
/// case-insensitive, one space). Empty value or another scheme: nullopt.
std::optional<std::string_view> token_from_authorization(std::string_view header);

} // namespace kernelgate::auth
