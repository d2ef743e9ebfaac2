// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/signer.hpp"

#include <array>
#include <stdexcept>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "zmq_protocol/detail/hex.hpp"

namespace kernelgate::zmq_protocol {

namespace {

constexpr std::size_t digest_size = 32;           // SHA-256
constexpr std::size_t hex_size = 2 * digest_size; // what goes on the wire

struct mac_deleter
{
    void operator()(EVP_MAC* p) const noexcept { EVP_MAC_free(p); }
};
struct mac_ctx_deleter
{
    void operator()(EVP_MAC_CTX* p) const noexcept { EVP_MAC_CTX_free(p); }
};
using mac_ptr = std::unique_ptr<EVP_MAC, mac_deleter>;
using mac_ctx_ptr = std::unique_ptr<EVP_MAC_CTX, mac_ctx_deleter>;

[[noreturn]] void openssl_failure(const char* what)
{
    throw std::runtime_error(std::string("kernelgate signer: ") + what + " failed");
}

} // namespace

/// Holds an HMAC context already initialised with the key; every signature works on a
/// duplicate of it, so the key schedule is computed once and the prepared context is never
/// modified after construction.
struct signer::impl
{
    mac_ctx_ptr prepared;
};

signer::signer(std::string_view key)
{
    if (key.empty()) {
        return; // signing disabled, as jupyter_client does with an empty key
    }
    mac_ptr mac(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
    if (!mac) {
        openssl_failure("EVP_MAC_fetch(HMAC)");
    }
    mac_ctx_ptr ctx(EVP_MAC_CTX_new(mac.get()));
    if (!ctx) {
        openssl_failure("EVP_MAC_CTX_new");
    }
    char digest_name[] = "SHA256";
    const std::array<OSSL_PARAM, 2> params = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_init(ctx.get(), reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                     params.data()) != 1) {
        openssl_failure("EVP_MAC_init");
    }
    impl_ = std::make_unique<impl>();
    impl_->prepared = std::move(ctx);
}

signer::~signer() = default;
signer::signer(signer&&) noexcept = default;
signer& signer::operator=(signer&&) noexcept = default;

bool signer::enabled() const noexcept
{
    return impl_ != nullptr;
}

std::string signer::sign(std::string_view header,
                         std::string_view parent_header,
                         std::string_view metadata,
                         std::string_view content) const
{
    if (!enabled()) {
        return {};
    }
    mac_ctx_ptr ctx(EVP_MAC_CTX_dup(impl_->prepared.get()));
    if (!ctx) {
        openssl_failure("EVP_MAC_CTX_dup");
    }
    for (std::string_view part : {header, parent_header, metadata, content}) {
        if (EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(part.data()),
                           part.size()) != 1) {
            openssl_failure("EVP_MAC_update");
        }
    }
    std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
    std::size_t out_len = 0;
    if (EVP_MAC_final(ctx.get(), out.data(), &out_len, out.size()) != 1 ||
        out_len != digest_size) {
        openssl_failure("EVP_MAC_final");
    }
    std::string hex = detail::to_hex(out.data(), out_len);
    OPENSSL_cleanse(out.data(), out.size());
    return hex;
}

bool signer::verify(std::string_view signature_hex,
                    std::string_view header,
                    std::string_view parent_header,
                    std::string_view metadata,
                    std::string_view content) const
{
    if (!enabled()) {
        return signature_hex.empty();
    }
    // Length first: it is public, and CRYPTO_memcmp needs equal sizes.
    if (signature_hex.size() != hex_size) {
        return false;
    }
    const std::string expected = sign(header, parent_header, metadata, content);
    // Comparing the lower-case hex texts in constant time is the same as decoding and
    // comparing the digests, and it also refuses upper-case hex (as jupyter_client does).
    return CRYPTO_memcmp(signature_hex.data(), expected.data(), hex_size) == 0;
}

} // namespace kernelgate::zmq_protocol
