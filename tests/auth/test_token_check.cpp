// SPDX-License-Identifier: BSD-3-Clause
#include <catch2/catch.hpp>

#include "auth/token_check.hpp"

using namespace kernelgate::auth;

TEST_CASE("Authorization header: token and Bearer schemes, case-insensitive, one space")
{
    CHECK(token_from_authorization("token abc") == "abc");
    CHECK(token_from_authorization("Token abc") == "abc");
    CHECK(token_from_authorization("Bearer abc") == "abc");
    CHECK(token_from_authorization("BEARER abc") == "abc");
    CHECK_FALSE(token_from_authorization("token "));       // empty value: no credential
    CHECK_FALSE(token_from_authorization("token"));
    CHECK_FALSE(token_from_authorization("Bearer  abc"));  // two spaces
    CHECK_FALSE(token_from_authorization("Basic abc"));
    CHECK_FALSE(token_from_authorization(""));
    CHECK_FALSE(token_from_authorization("token a b"));
}

TEST_CASE("static token: salted digest, constant-time compare")
{
    static_token t("s3cret");
    CHECK(t.configured());
    CHECK(t.matches("s3cret"));
    CHECK_FALSE(t.matches("s3cre"));
    CHECK_FALSE(t.matches("s3cret "));
    CHECK_FALSE(t.matches(""));
    CHECK_FALSE(static_token().matches("anything"));
    const auto g1 = generate_token();
    const auto g2 = generate_token();
    CHECK(g1.size() == 64);
    CHECK(g1 != g2);
}
