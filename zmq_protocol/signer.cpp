// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/signer.hpp"

#include "common/text.hpp"

#include <cstring>
#include <stdexcept>

// SHA256_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP, but still built and
// still dispatched to the SHA-NI / AVX2 block functions. HMAC through EVP_MAC copies two
// provider contexts per message (a malloc, a free and a cleanse each, ~150 ns of the
// ~650 ns a kernel message costs); the plain context below is copied by value.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

namespace kernelgate::zmq_protocol {

namespace {

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

constexpr std::size_t k_block = SHA256_CBLOCK;  // 64

} // namespace

/// HMAC-SHA256 (RFC 2104) with the key schedule done once: the SHA-256 states after the
/// inner (key ^ 0x36) and outer (key ^ 0x5c) pad blocks. A message costs two context copies
/// by value and no allocation. The states are key material: cleansed on destruction.
struct signer::impl
{
    SHA256_CTX inner{};
    SHA256_CTX outer{};

    explicit impl(std::string_view key)
    {
        unsigned char k[k_block] = {};
        if (key.size() > k_block) {  // longer keys are hashed first (RFC 2104, section 2)
            SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), k);
        } else {
            std::memcpy(k, key.data(), key.size());
        }
        unsigned char pad[k_block];
        for (std::size_t i = 0; i < k_block; ++i) {
            pad[i] = static_cast<unsigned char>(k[i] ^ 0x36);
        }
        const bool ok_inner = SHA256_Init(&inner) == 1 && SHA256_Update(&inner, pad, k_block) == 1;
        for (std::size_t i = 0; i < k_block; ++i) {
            pad[i] = static_cast<unsigned char>(k[i] ^ 0x5c);
        }
        const bool ok_outer = SHA256_Init(&outer) == 1 && SHA256_Update(&outer, pad, k_block) == 1;
        OPENSSL_cleanse(k, sizeof(k));
        OPENSSL_cleanse(pad, sizeof(pad));
        if (!ok_inner || !ok_outer) {
            openssl_failure("SHA256_Init");
        }
    }
    ~impl()
    {
        OPENSSL_cleanse(&inner, sizeof(inner));
        OPENSSL_cleanse(&outer, sizeof(outer));
    }
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
};

signer::signer(std::string_view key)
{
    if (key.empty()) {
        return; // signing disabled, as jupyter_client does with an empty key
    }
    impl_ = std::make_unique<impl>(key);
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
    SHA256_CTX ctx = impl_->inner;
    for (std::string_view part : {header, parent_header, metadata, content}) {
        SHA256_Update(&ctx, part.data(), part.size());
    }
    unsigned char inner_digest[digest_size];
    SHA256_Final(inner_digest, &ctx);
    ctx = impl_->outer;
    SHA256_Update(&ctx, inner_digest, digest_size);
    SHA256_Final(out.data(), &ctx);
    OPENSSL_cleanse(&ctx, sizeof(ctx));
    OPENSSL_cleanse(inner_digest, sizeof(inner_digest));
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
