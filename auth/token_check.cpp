// SPDX-License-Identifier: BSD-3-Clause
#include "auth/token_check.hpp"

#include <cctype>
#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/text.hpp"

namespace kernelgate::auth {

namespace {

std::array<unsigned char, 32> salted_sha256(const std::array<unsigned char, 32>& salt,
                                            std::string_view text)
{
    std::array<unsigned char, 32> out{};
    unsigned int len = 0;
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx, salt.data(), salt.size()) != 1 ||
        EVP_DigestUpdate(ctx, text.data(), text.size()) != 1 ||
        EVP_DigestFinal_ex(ctx, out.data(), &len) != 1) {
        EVP_MD_CTX_free(ctx);
        throw std::runtime_error("SHA-256 failed");
    }
    EVP_MD_CTX_free(ctx);
    return out;
}

bool iequals(std::string_view a, std::string_view b)
{
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i]))) {
            return false;
        }
    }
    return true;
}

} // namespace

static_token::static_token(std::string_view token) : configured_(!token.empty())
{
    if (RAND_bytes(salt_.data(), static_cast<int>(salt_.size())) != 1) {
        throw std::runtime_error("no randomness available");
    }
    digest_ = salted_sha256(salt_, token);
}

bool static_token::matches(std::string_view presented) const
{
    if (!configured_ || presented.empty()) {
        return false;
    }
    const auto d = salted_sha256(salt_, presented);
    return CRYPTO_memcmp(d.data(), digest_.data(), d.size()) == 0;
}

std::string generate_token()
{
    std::array<unsigned char, 32> raw{};
    if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
        throw std::runtime_error("no randomness available");
    }
    return common::to_hex(raw.data(), raw.size());
}

std::optional<std::string_view> token_from_authorization(std::string_view header)
{
    const auto sp = header.find(' ');
    if (sp == std::string_view::npos) {
        return std::nullopt;
    }
    const auto scheme = header.substr(0, sp);
    const auto value = header.substr(sp + 1);
    if (!(iequals(scheme, "token") || iequals(scheme, "bearer"))) {
        return std::nullopt;
    }
    if (value.empty() || value.find(' ') != std::string_view::npos) {
        return std::nullopt;
    }
    return value;
}

} // namespace kernelgate::auth
