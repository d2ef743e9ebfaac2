// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace kernelgate::auth {

using clock = std::chrono::system_clock;

/// The server key ("pepper") tokens are hashed under. It lives in a file of its own (mode
/// 0600, or a Docker secret), never in the database, and is versioned so it can be rotated:
/// one line per version, "v<N> <64 hex chars>"; the highest version signs new tokens.
class pepper
{
public:
    /// Loads the file, creating it (0600) with version 1 when it does not exist and create is
    /// true. Throws std::runtime_error on a malformed file or unsafe permissions.
    static pepper load(const std::filesystem::path& file, bool create);
    /// Appends a new version to the file; returns it.
    static int rotate(const std::filesystem::path& file);

    int current() const noexcept { return current_; }
    const std::filesystem::path& file() const noexcept { return file_; }
    bool has(int version) const { return keys_.contains(version); }
    /// HMAC-SHA-256 under the given version's key.
    std::string mac(int version, std::string_view data) const;

private:
    std::map<int, std::string> keys_;  // secret: never logged
    int current_ = 0;
    std::filesystem::path file_;
};

enum class role_t
{
    user,
    admin,
};

/// Who a request is: the result of a successful token check.
struct identity
{
    std::string user;
    std::string token_id;
    role_t role = role_t::user;
    clock::time_point expires_at{};
    bool admin() const noexcept { return role == role_t::admin; }
};

/// A token's record as listed (never its secret or digest).
struct token_info
{
    std::string id;
    std::string user;
    role_t role = role_t::user;
    std::string note;
    std::string created_by;
    clock::time_point created_at{};
    clock::time_point expires_at{};
    std::optional<clock::time_point> last_used_at;
    std::optional<clock::time_point> revoked_at;
    std::string revoked_by;
};

struct user_info
{
    std::string name;
    bool disabled = false;
    clock::time_point created_at{};
    std::size_t active_tokens = 0;
};

struct audit_entry
{
    clock::time_point at{};
    std::string actor;
    std::string action;
    std::string target;
    std::string source;
};

/// Token policy: expiry is required; these bound what may be asked for.
struct token_policy
{
    std::chrono::seconds default_ttl = std::chrono::hours(24 * 30);
    std::chrono::seconds max_ttl = std::chrono::hours(24 * 90);
};

class auth_error : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

/// Users, hashed tokens and the audit log, in SQLite (WAL; the file is 0600).
///
/// Tokens look like kg_<id>_<secret>: id is 16 random bytes in base32 (the primary key, not
/// secret), secret 32 random bytes in base64url. Only HMAC-SHA-256(pepper, "kg-token-v1" ||
/// id || secret) is stored, so the database alone verifies nothing. Lookup is by id and the
/// digest is compared in constant time. Revocation is soft (kept for audit).
///
/// Several processes may use the same file at once (the gateway and the admin CLI);
/// change_counter() tells a process that another one changed something.
///
/// Thread safety: one instance per thread.
class token_store
{
public:
    token_store(const std::filesystem::path& db_file, pepper p, token_policy policy = {});
    ~token_store();
    token_store(const token_store&) = delete;
    token_store& operator=(const token_store&) = delete;

    struct created
    {
        std::string token;  ///< shown once
        token_info info;
    };
    /// Creates a token (and the user if new). ttl 0 means the default; above the maximum is an
    /// auth_error. A disabled user gets no new token.
    created create(const std::string& user, role_t r, std::chrono::seconds ttl,
                   const std::string& note, const std::string& actor);
    /// The static --auth-token: an admin token for user `user` with the reserved id "static",
    /// replaced at every start.
    void set_static(std::string_view token, const std::string& user, std::chrono::seconds ttl);

    /// Checks a presented token. nullopt for any failure (format, unknown id, digest, expiry,
    /// revocation, disabled user); the reason goes to `why` for logging (never the secret).
    std::optional<identity> verify(std::string_view token, std::string* why = nullptr,
                                   std::string* token_id = nullptr);

    std::vector<token_info> list(const std::string& user_filter = {}, bool include_revoked = true);
    std::optional<token_info> get(const std::string& id);
    /// Soft revocation. false if the id is unknown or already revoked.
    bool revoke(const std::string& id, const std::string& actor);

    std::vector<user_info> users();
    bool set_user_disabled(const std::string& name, bool disabled, const std::string& actor);
    bool user_disabled(const std::string& name);

    void audit(const std::string& actor, const std::string& action, const std::string& target,
               const std::string& source);
    std::vector<audit_entry> audit_log(std::size_t limit = 100);

    /// Ids among `ids` that are no longer valid (revoked, expired, user disabled, gone).
    std::vector<std::string> invalid_among(const std::vector<std::string>& ids);

    /// Changes when any connection (any process) commits to the file.
    std::int64_t change_counter();
    /// The database file (empty for an in-memory database).
    std::filesystem::path path() const;

    /// Valid kg_ token syntax (no database access).
    static bool well_formed(std::string_view token);

private:
    void exec(const char* sql);
    sqlite3* db_ = nullptr;
    sqlite3_stmt* version_stmt_ = nullptr;  ///< PRAGMA data_version, kept prepared
    pepper pepper_;
    token_policy policy_;
};

/// "YYYY-MM-DDTHH:MM:SS.ffffffZ" (common::iso8601).
std::string to_iso(clock::time_point tp);
/// "30d", "12h", "45m", "90s" or a plain number of seconds; throws auth_error otherwise.
std::chrono::seconds parse_duration(const std::string& text);
std::string_view role_name(role_t r) noexcept;

} // namespace kernelgate::auth
