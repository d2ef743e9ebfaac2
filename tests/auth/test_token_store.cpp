// SPDX-License-Identifier: BSD-3-Clause
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include <catch2/catch.hpp>
#include <sys/stat.h>

#include "auth/token_store.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace kernelgate::auth;
using namespace std::chrono_literals;

namespace {

struct temp_dir : kernelgate::testing::temp_dir
{
    temp_dir() : kernelgate::testing::temp_dir("kg-auth") {}
};

std::string slurp(const fs::path& p)
{
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

unsigned mode_of(const fs::path& p)
{
    struct stat st{};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 0777;
}

} // namespace

TEST_CASE("create and verify: format, identity, role, expiry")
{
    temp_dir d;
    token_store s(d.path / "auth.db", pepper::load(d.path / "pepper", true));
    auto c = s.create("alice", role_t::user, 0s, "laptop", "test");
    CHECK(token_store::well_formed(c.token));
    CHECK(c.token.rfind("kg_", 0) == 0);
    CHECK(c.token.size() == 3 + 26 + 1 + 43);
    CHECK(c.info.user == "alice");
    CHECK(c.info.note == "laptop");
    const auto ttl = c.info.expires_at - c.info.created_at;
    CHECK(ttl > std::chrono::hours(24 * 29));
    CHECK(ttl <= std::chrono::hours(24 * 30) + 1s);
    std::string why;
    auto who = s.verify(c.token, &why);
    REQUIRE(who);
    CHECK(who->user == "alice");
    CHECK(who->token_id == c.info.id);
    CHECK_FALSE(who->admin());
    auto admin = s.create("root", role_t::admin, 1h, "", "test");
    CHECK(s.verify(admin.token)->admin());
}

TEST_CASE("verify refuses tampering, unknown ids, revocation, disabled users, expiry")
{
    temp_dir d;
    token_store s(d.path / "auth.db", pepper::load(d.path / "pepper", true));
    auto c = s.create("bob", role_t::user, 1h, "", "test");
    std::string why;
    std::string tampered = c.token;
    tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
    CHECK_FALSE(s.verify(tampered, &why));
    CHECK(why == "wrong secret");
    std::string other_id = c.token;
    other_id[3] = other_id[3] == 'a' ? 'b' : 'a';
    CHECK_FALSE(s.verify(other_id, &why));
    CHECK(why == "unknown token id");
    for (std::string bad : {std::string(""), std::string("kg_"), std::string("kg_x_y"),
                            std::string(65536, 'a'), std::string("kg_") + std::string(70, '!'),
                            std::string("\0kg", 3)}) {
        CHECK_FALSE(s.verify(bad));
    }
    CHECK(s.set_user_disabled("bob", true, "test"));
    CHECK_FALSE(s.verify(c.token, &why));
    CHECK(why == "disabled user");
    CHECK_THROWS_AS(s.create("bob", role_t::user, 1h, "", "test"), auth_error);
    CHECK(s.set_user_disabled("bob", false, "test"));
    CHECK(s.verify(c.token));
    CHECK(s.revoke(c.info.id, "admin"));
    CHECK_FALSE(s.revoke(c.info.id, "admin"));  // already revoked
    CHECK_FALSE(s.verify(c.token, &why));
    CHECK(why == "revoked token");
    const auto info = s.get(c.info.id);
    REQUIRE(info);
    CHECK(info->revoked_at.has_value());  // soft: kept for audit
    CHECK(info->revoked_by == "admin");
    CHECK(s.invalid_among({c.info.id, "nope"}).size() == 2);

    auto short_lived = s.create("carol", role_t::user, 1s, "", "test");
    CHECK(s.verify(short_lived.token));
    CHECK(s.invalid_among({short_lived.info.id}).empty());
    std::this_thread::sleep_for(1100ms);
    CHECK_FALSE(s.verify(short_lived.token, &why));
    CHECK(why == "expired token");
    CHECK(s.invalid_among({short_lived.info.id}) == std::vector<std::string>{short_lived.info.id});
}

TEST_CASE("policy: expiry required and bounded; user names are strict")
{
    temp_dir d;
    token_store s(d.path / "auth.db", pepper::load(d.path / "pepper", true), {1h, 2h});
    CHECK_THROWS_AS(s.create("a", role_t::user, 3h, "", "t"), auth_error);
    const auto made = s.create("a", role_t::user, 0s, "", "t");
    CHECK(made.info.expires_at - made.info.created_at <= 1h + 1s);  // the default applies
    for (const char* bad : {"", "a b", "al/ice", "\xd0\xb0lice", "x\n", "../etc"}) {
        CHECK_THROWS_AS(s.create(bad, role_t::user, 0s, "", "t"), auth_error);
    }
    CHECK_THROWS_AS(s.create("a", role_t::user, 0s, std::string(300, 'n'), "t"), auth_error);
    s.create("alice", role_t::user, 0s, "", "t");
    s.create("Alice", role_t::user, 0s, "", "t");
    CHECK(s.users().size() == 3);  // a, alice, Alice: distinct principals
    CHECK(parse_duration("30d") == std::chrono::hours(24 * 30));
    CHECK(parse_duration("90") == 90s);
    CHECK_THROWS_AS(parse_duration("5y"), auth_error);
    CHECK_THROWS_AS(parse_duration("-1d"), auth_error);
    CHECK_THROWS_AS(parse_duration("x"), auth_error);
}

TEST_CASE("the database holds nothing that verifies a token; files are 0600")
{
    temp_dir d;
    std::vector<std::string> tokens;
    {
        token_store s(d.path / "auth.db", pepper::load(d.path / "pepper", true));
        for (int i = 0; i < 5; ++i) {
            tokens.push_back(s.create("u" + std::to_string(i), role_t::user, 0s, "", "t").token);
        }
        s.set_static("static-admin-secret", "admin", 1h);
        for (const auto& t : tokens) {
            REQUIRE(s.verify(t));
        }
    }
    std::string raw;
    for (const auto& e : fs::directory_iterator(d.path)) {
        if (e.path().filename().string().rfind("auth.db", 0) == 0) {
            raw += slurp(e.path());
            CHECK(mode_of(e.path()) == 0600);
        }
    }
    REQUIRE_FALSE(raw.empty());
    for (const auto& t : tokens) {
        CHECK(raw.find(t.substr(3 + 26 + 1)) == std::string::npos);  // the secret
        CHECK(raw.find(t) == std::string::npos);
    }
    CHECK(raw.find("static-admin-secret") == std::string::npos);
    CHECK(mode_of(d.path / "pepper") == 0600);
    // Without the pepper, the stored digests verify nothing: a new pepper fails every token.
    fs::remove(d.path / "pepper");
    token_store other(d.path / "auth.db", pepper::load(d.path / "pepper", true));
    for (const auto& t : tokens) {
        CHECK_FALSE(other.verify(t));
    }
}

TEST_CASE("pepper: rotation re-hashes on use; unsafe files refused")
{
    temp_dir d;
    std::string tok;
    {
        token_store s(d.path / "auth.db", pepper::load(d.path / "pepper", true));
        tok = s.create("alice", role_t::user, 0s, "", "t").token;
    }
    CHECK(pepper::rotate(d.path / "pepper") == 2);
    {
        token_store s(d.path / "auth.db", pepper::load(d.path / "pepper", false));
        CHECK(s.verify(tok));  // old version still verifies, and is re-hashed under v2
    }
    // Drop v1 from the file: the token still works because it moved to v2.
    std::ifstream in(d.path / "pepper");
    std::string l1;
    std::string l2;
    std::getline(in, l1);
    std::getline(in, l2);
    in.close();
    {
        std::ofstream out(d.path / "pepper", std::ios::trunc);
        out << l2 << "\n";
    }
    token_store s2(d.path / "auth.db", pepper::load(d.path / "pepper", false));
    CHECK(s2.verify(tok));

    ::chmod((d.path / "pepper").c_str(), 0666);
    CHECK_THROWS_AS(pepper::load(d.path / "pepper", false), auth_error);
    CHECK_THROWS_AS(pepper::load(d.path / "missing", false), auth_error);
    std::ofstream(d.path / "bad") << "v1 nothex\n";
    ::chmod((d.path / "bad").c_str(), 0600);
    CHECK_THROWS_AS(pepper::load(d.path / "bad", false), auth_error);
}

TEST_CASE("static token is an admin token in the same scheme; change counter sees other writers")
{
    temp_dir d;
    token_store a(d.path / "auth.db", pepper::load(d.path / "pepper", true));
    token_store b(d.path / "auth.db", pepper::load(d.path / "pepper", false));
    a.set_static("letmein", "admin", 1h);
    auto who = b.verify("letmein");
    REQUIRE(who);
    CHECK(who->admin());
    CHECK(who->token_id == "static");
    CHECK_FALSE(b.verify("letmeout"));
    const auto v0 = a.change_counter();
    auto c = b.create("dave", role_t::user, 0s, "", "cli");
    CHECK(a.change_counter() != v0);
    const auto v1 = a.change_counter();
    b.revoke(c.info.id, "cli");
    CHECK(a.change_counter() != v1);
    CHECK(a.invalid_among({c.info.id}).size() == 1);
    a.audit("admin", "token.revoke", c.info.id, "127.0.0.1");
    const auto log = b.audit_log();
    REQUIRE(log.size() == 1);
    CHECK(log[0].action == "token.revoke");
    CHECK(log[0].source == "127.0.0.1");
}
