// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/signer.hpp"

#include "common/text.hpp"

#include <stdexcept>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

namespace kernelgate::zmq_protocol {

namespace {

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

/// Value of each byte as a lower-case hex digit, or -1.
constexpr std::array<signed char, 256> k_hex_values = [] {
    std::array<signed char, 256> t{};
    for (auto& v : t) {
        v = -1;
    }
    for (int c = '0'; c <= '9'; ++c) {
        t[static_cast<std::size_t>(c)] = static_cast<signed char>(c - '0');
    }
    for (int c = 'a'; c <= 'f'; ++c) {
        t[static_cast<std::size_t>(c)] = static_cast<signed char>(c - 'a' + 10);
    }
    return t;
}();

} // namespace

/// An HMAC context initialised with the key. EVP_MAC_init with a null key re-initialises
/// it from the stored inner/outer pads: no key schedule and no allocation per message.
struct signer::impl
{
    mac_ctx_ptr ctx;
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
    impl_->ctx = std::move(ctx);
}

signer::~signer() = default;
signer::signer(signer&&) noexcept = default;
signer& signer::operator=(signer&&) noexcept = default;

bool signer::enabled() const noexcept
{
    return impl_ != nullptr;
}

void signer::mac(digest_type& out,
                 std::string_view header,
                 std::string_view parent_header,
                 std::string_view metadata,
                 std::string_view content) const
{
    EVP_MAC_CTX* ctx = impl_->ctx.get();
    // The first message uses the context as the constructor left it; re-initialising an
    // initialised context with a null key is the same and cheap, so do it every time.
    if (EVP_MAC_init(ctx, nullptr, 0, nullptr) != 1) {
        openssl_failure("EVP_MAC_init");
    }
    for (std::string_view part : {header, parent_header, metadata, content}) {
        if (EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(part.data()),
                           part.size()) != 1) {
            openssl_failure("EVP_MAC_update");
        }
    }
    std::size_t out_len = 0;
    if (EVP_MAC_final(ctx, out.data(), &out_len, out.size()) != 1 || out_len != digest_size) {
        openssl_failure("EVP_MAC_final");
    }
}

void signer::sign_hex(char* out,
                      std::string_view header,
                      std::string_view parent_header,
                      std::string_view metadata,
                      std::string_view content) const
{
    if (!enabled()) {
        return;
    }
    digest_type d{};
    mac(d, header, parent_header, metadata, content);
    common::to_hex(d.data(), d.size(), out);
    OPENSSL_cleanse(d.data(), d.size());
}

std::string signer::sign(std::string_view header,
                         std::string_view parent_header,
                         std::string_view metadata,
                         std::string_view content) const
{
    if (!enabled()) {
        return {};
    }
    std::string hex(hex_size, '\0');
    sign_hex(hex.data(), header, parent_header, metadata, content);
    return hex;
}

bool signer::parse_hex(std::string_view signature_hex, digest_type& out) noexcept
{
    if (signature_hex.size() != hex_size) {
        return false;
    }
    int bad = 0;
    for (std::size_t i = 0; i < digest_size; ++i) {
        const int hi = k_hex_values[static_cast<unsigned char>(signature_hex[2 * i])];
        const int lo = k_hex_values[static_cast<unsigned char>(signature_hex[2 * i + 1])];
        bad |= hi | lo;  // negative if either is not a digit
        out[i] = static_cast<unsigned char>(((hi & 0x0f) << 4) | (lo & 0x0f));
    }
    return bad >= 0;
}

bool signer::verify(std::string_view signature_hex,
                    std::string_view header,
                    std::string_view parent_header,
                    std::string_view metadata,
                    std::string_view content,
                    digest_type* digest) const
{
    if (!enabled()) {
        return signature_hex.empty();
    }
    // Length first: it is public, and CRYPTO_memcmp needs equal sizes.
    if (signature_hex.size() != hex_size) {
        return false;
    }
    // Decoding the claimed signature reveals nothing about the key; only the comparison
    // with the expected digest must not depend on where they differ.
    digest_type claimed{};
    if (!parse_hex(signature_hex, claimed)) {
        return false;
    }
    digest_type expected{};
    mac(expected, header, parent_header, metadata, content);
    const bool ok = CRYPTO_memcmp(claimed.data(), expected.data(), digest_size) == 0;
    OPENSSL_cleanse(expected.data(), expected.size());
    if (ok && digest != nullptr) {
        *digest = claimed;
    }
    return ok;
}

} // namespace kernelgate::zmq_protocol
