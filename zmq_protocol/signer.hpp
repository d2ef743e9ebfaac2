// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <array>
#include <memory>
#include <string>
#include <string_view>

namespace kernelgate::zmq_protocol {

/// HMAC-SHA256 over the four JSON frames of a message, as jupyter_client does it.
/// An empty key disables signing (sign() returns "" and verify() accepts only "").
/// The key bytes are never logged or exposed.
///
/// The key schedule is computed once (the SHA-256 states after the inner and outer pads);
/// every signature works on a copy of them on the stack (no allocation per message).
/// Thread safety: const members may be called from any number of threads at once.
class signer
{
public:
    static constexpr std::size_t digest_size = 32;          ///< SHA-256
    static constexpr std::size_t hex_size = 2 * digest_size; ///< what goes on the wire
    using digest_type = std::array<unsigned char, digest_size>;

    explicit signer(std::string_view key);
    ~signer();
    signer(signer&&) noexcept;
    signer& operator=(signer&&) noexcept;
    signer(const signer&) = delete;
    signer& operator=(const signer&) = delete;

    bool enabled() const noexcept;

    /// Lower-case hex HMAC (64 chars) of header|parent|metadata|content; "" when disabled.
    std::string sign(std::string_view header,
                     std::string_view parent_header,
                     std::string_view metadata,
                     std::string_view content) const;

    /// Writes the 64 lower-case hex characters into out (nothing when disabled).
    void sign_hex(char* out,
                  std::string_view header,
                  std::string_view parent_header,
                  std::string_view metadata,
                  std::string_view content) const;

    /// The digest a lower-case hex signature claims (64 characters), or false. Upper case is
    /// refused, as jupyter_client does.
    static bool parse_hex(std::string_view signature_hex, digest_type& out) noexcept;

    /// Constant-time check of a lower-case hex signature; checks the length (64) first.
    /// On success, *digest (if given) receives the binary digest (a compact replay key).
    bool verify(std::string_view signature_hex,
                std::string_view header,
                std::string_view parent_header,
                std::string_view metadata,
                std::string_view content,
                digest_type* digest = nullptr) const;

private:
    void mac(digest_type& out,
             std::string_view header,
             std::string_view parent_header,
             std::string_view metadata,
             std::string_view content) const;

    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace kernelgate::zmq_protocol
