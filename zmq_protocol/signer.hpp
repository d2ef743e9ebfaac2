// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <memory>
#include <string>
#include <string_view>

namespace kernelgate::zmq_protocol {

/// HMAC-SHA256 over the four JSON frames of a message, as jupyter_client does it.
/// An empty key disables signing (sign() returns "" and verify() accepts only "").
/// The key bytes are never logged or exposed.
/// Thread safety: one signer per thread/strand (the OpenSSL context is reused, not locked).
class signer
{
public:
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

    /// Constant-time check; checks the length (64) before comparing.
    bool verify(std::string_view signature_hex,
                std::string_view header,
                std::string_view parent_header,
                std::string_view metadata,
                std::string_view content) const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace kernelgate::zmq_protocol
