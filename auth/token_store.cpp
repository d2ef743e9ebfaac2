// SPDX-License-Identifier: BSD-3-Clause
#include "auth/token_store.hpp"

#include <array>
#include <cctype>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/text.hpp"

namespace kernelgate::auth {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view k_prefix = "kg_";
constexpr std::size_t k_id_len = 26;      // 16 bytes, base32 without padding
constexpr std::size_t k_secret_len = 43;  // 32 bytes, base64url without padding
constexpr std::string_view k_static_id = "static";
constexpr auto k_last_used_granularity = std::chrono::seconds(60);

std::string random_bytes(std::size_t n)
{
    std::string out(n, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
        throw std::runtime_error("no randomness available");
    }
    return out;
}

std::optional<std::string> from_hex(std::string_view in)
{
    if (in.size() % 2 != 0) {
        return std::nullopt;
    }
    auto val = [](char c) -> int {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        if (c >= 'a' && c <= 'f') {
            return c - 'a' + 10;
        }
        if (c >= 'A' && c <= 'F') {
            return c - 'A' + 10;
        }
        return -1;
    };
    std::string out;
    for (std::size_t i = 0; i < in.size(); i += 2) {
        const int hi = val(in[i]);
        const int lo = val(in[i + 1]);
        if (hi < 0 || lo < 0) {
            return std::nullopt;
        }
        out += static_cast<char>(hi * 16 + lo);
    }
    return out;
}

std::int64_t to_us(clock::time_point tp)
{
    return std::chrono::duration_cast<std::chrono::microseconds>(tp.time_since_epoch()).count();
}

clock::time_point from_us(std::int64_t us)
{
    return clock::time_point(std::chrono::duration_cast<clock::duration>(
        std::chrono::microseconds(us)));
}

bool valid_user_name(std::string_view n)
{
    if (n.empty() || n.size() > 64) {
        return false;
    }
    for (unsigned char c : n) {
        if (std::isalnum(c) == 0 && c != '.' && c != '_' && c != '-' && c != '@') {
            return false;
        }
    }
    return true;
}

struct stmt
{
    sqlite3_stmt* s = nullptr;
    stmt(sqlite3* db, const char* sql)
    {
        if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) {
            throw std::runtime_error(std::string("database: ") + sqlite3_errmsg(db));
        }
    }
    ~stmt() { sqlite3_finalize(s); }
    stmt(const stmt&) = delete;
    stmt& operator=(const stmt&) = delete;
    stmt& bind(int i, std::string_view v)
    {
        sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    stmt& bind_blob(int i, std::string_view v)
    {
        sqlite3_bind_blob(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    stmt& bind(int i, std::int64_t v)
    {
        sqlite3_bind_int64(s, i, v);
        return *this;
    }
    bool step()
    {
        const int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            return true;
        }
        if (rc != SQLITE_DONE) {
            throw std::runtime_error(std::string("database: ") +
                                     sqlite3_errmsg(sqlite3_db_handle(s)));
        }
        return false;
    }
    std::string text(int i)
    {
        const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
        return t != nullptr ? std::string(t) : std::string();
    }
    std::string blob(int i)
    {
        const auto* b = static_cast<const char*>(sqlite3_column_blob(s, i));
        return b != nullptr ? std::string(b, static_cast<std::size_t>(sqlite3_column_bytes(s, i)))
                            : std::string();
    }
    std::int64_t integer(int i) { return sqlite3_column_int64(s, i); }
    bool null(int i) { return sqlite3_column_type(s, i) == SQLITE_NULL; }
};

token_info read_info(stmt& q)
{
    // Columns: id, user, role, note, created_by, created_at, expires_at, last_used_at,
    //          revoked_at, revoked_by
    token_info t;
    t.id = q.text(0);
    t.user = q.text(1);
    t.role = q.text(2) == "admin" ? role_t::admin : role_t::user;
    t.note = q.text(3);
    t.created_by = q.text(4);
    t.created_at = from_us(q.integer(5));
    t.expires_at = from_us(q.integer(6));
    if (!q.null(7)) {
        t.last_used_at = from_us(q.integer(7));
    }
    if (!q.null(8)) {
        t.revoked_at = from_us(q.integer(8));
    }
    t.revoked_by = q.text(9);
    return t;
}

constexpr const char* k_info_columns =
    "id, user, role, note, created_by, created_at, expires_at, last_used_at, revoked_at, "
    "revoked_by";

} // namespace

// ---------------------------------------------------------------------------------------
// pepper

pepper pepper::load(const fs::path& file, bool create)
{
    std::error_code ec;
    if (!fs::exists(file, ec)) {
        if (!create) {
            throw auth_error("pepper file " + file.string() + " does not exist");
        }
        fs::create_directories(file.parent_path(), ec);
        const int fd = ::open(file.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (fd >= 0) {
            const std::string line = "v1 " + common::to_hex(random_bytes(32)) + "\n";
            const bool ok = ::write(fd, line.data(), line.size()) ==
                            static_cast<ssize_t>(line.size());
            ::close(fd);
            if (!ok) {
                throw auth_error("cannot write pepper file " + file.string());
            }
        }
    }
    struct stat st{};
    if (::stat(file.c_str(), &st) != 0) {
        throw auth_error("cannot read pepper file " + file.string());
    }
    if ((st.st_mode & S_IWOTH) != 0 || (st.st_mode & S_IWGRP) != 0) {
        throw auth_error("pepper file " + file.string() +
                         " is writable by others; refusing to use it (chmod 600)");
    }
    std::ifstream in(file);
    pepper p;
    p.file_ = file;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') {
            continue;
        }
        std::istringstream ls(line);
        std::string v;
        std::string hex;
        ls >> v >> hex;
        auto key = from_hex(hex);
        if (v.size() < 2 || v[0] != 'v' || !key || key->size() < 32) {
            throw auth_error("pepper file " + file.string() + " is malformed");
        }
        const int version = std::stoi(v.substr(1));
        p.keys_[version] = *key;
        p.current_ = std::max(p.current_, version);
    }
    if (p.keys_.empty()) {
        throw auth_error("pepper file " + file.string() + " holds no key");
    }
    return p;
}

int pepper::rotate(const fs::path& file)
{
    const auto p = load(file, true);
    const int next = p.current_ + 1;
    std::ofstream out(file, std::ios::app);
    out << "v" << next << " " << common::to_hex(random_bytes(32)) << "\n";
    if (!out) {
        throw auth_error("cannot append to pepper file " + file.string());
    }
    return next;
}

std::string pepper::mac(int version, std::string_view data) const
{
    const auto it = keys_.find(version);
    if (it == keys_.end()) {
        return {};
    }
    std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
    unsigned int len = 0;
    HMAC(EVP_sha256(), it->second.data(), static_cast<int>(it->second.size()),
         reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
    return std::string(reinterpret_cast<const char*>(out.data()), len);
}

// ---------------------------------------------------------------------------------------
// token_store

token_store::token_store(const fs::path& db_file, pepper p, token_policy policy)
    : pepper_(std::move(p)), policy_(policy)
{
    fs::create_directories(db_file.parent_path());
    const int fd = ::open(db_file.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ::fchmod(fd, 0600);
        ::close(fd);
    }
    if (sqlite3_open_v2(db_file.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                        nullptr) != SQLITE_OK) {
        const std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
        sqlite3_close(db_);
        db_ = nullptr;
        throw std::runtime_error("cannot open " + db_file.string() + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 5000);
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA foreign_keys=ON");
    exec("CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, disabled INTEGER NOT NULL "
         "DEFAULT 0, created_at INTEGER NOT NULL)");
    exec("CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, user TEXT NOT NULL "
         "REFERENCES users(name), digest BLOB NOT NULL, pepper_version INTEGER NOT NULL, "
         "role TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL DEFAULT "
         "'', created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, last_used_at INTEGER, "
         "revoked_at INTEGER, revoked_by TEXT NOT NULL DEFAULT '')");
    exec("CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user)");
    exec("CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER "
         "NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, source "
         "TEXT NOT NULL)");
    for (const char* suffix : {"-wal", "-shm"}) {
        ::chmod((db_file.string() + suffix).c_str(), 0600);
    }
}

token_store::~token_store()
{
    sqlite3_finalize(version_stmt_);
    sqlite3_close(db_);
}

void token_store::exec(const char* sql)
{
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
        std::string msg = err != nullptr ? err : "error";
        sqlite3_free(err);
        throw std::runtime_error("database: " + msg);
    }
}

bool token_store::well_formed(std::string_view token)
{
    if (token.size() != k_prefix.size() + k_id_len + 1 + k_secret_len ||
        token.substr(0, k_prefix.size()) != k_prefix || token[k_prefix.size() + k_id_len] != '_') {
        return false;
    }
    const auto id = token.substr(k_prefix.size(), k_id_len);
    const auto secret = token.substr(k_prefix.size() + k_id_len + 1);
    for (char c : id) {
        if (!((c >= 'a' && c <= 'z') || (c >= '2' && c <= '7'))) {
            return false;
        }
    }
    for (char c : secret) {
        if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '-' && c != '_') {
            return false;
        }
    }
    return true;
}

token_store::created token_store::create(const std::string& user, role_t r,
                                         std::chrono::seconds ttl, const std::string& note,
                                         const std::string& actor)
{
    if (!valid_user_name(user)) {
        throw auth_error("invalid user name (1-64 of A-Z a-z 0-9 . _ - @)");
    }
    if (note.size() > 256) {
        throw auth_error("note longer than 256 characters");
    }
    if (ttl.count() <= 0) {
        ttl = policy_.default_ttl;
    }
    if (ttl > policy_.max_ttl) {
        throw auth_error("expiry beyond the maximum of " +
                         std::to_string(policy_.max_ttl.count() / 86400) + " days");
    }
    if (user_disabled(user)) {
        throw auth_error("user " + user + " is disabled");
    }
    const auto now = clock::now();
    stmt(db_, "INSERT OR IGNORE INTO users (name, disabled, created_at) VALUES (?, 0, ?)")
        .bind(1, user)
        .bind(2, to_us(now))
        .step();
    const std::string id = common::base32_lower(random_bytes(16));
    const std::string secret = common::base64url(random_bytes(32));
    const auto digest = pepper_.mac(pepper_.current(), "kg-token-v1" + id + secret);
    stmt(db_, "INSERT INTO tokens (id, user, digest, pepper_version, role, note, created_by, "
              "created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)")
        .bind(1, id)
        .bind(2, user)
        .bind_blob(3, digest)
        .bind(4, static_cast<std::int64_t>(pepper_.current()))
        .bind(5, role_name(r))
        .bind(6, note)
        .bind(7, actor)
        .bind(8, to_us(now))
        .bind(9, to_us(now + ttl))
        .step();
    created c;
    c.token = std::string(k_prefix) + id + "_" + secret;
    c.info = *get(id);
    return c;
}

void token_store::set_static(std::string_view token, const std::string& user,
                             std::chrono::seconds ttl)
{
    const auto now = clock::now();
    stmt(db_, "INSERT OR IGNORE INTO users (name, disabled, created_at) VALUES (?, 0, ?)")
        .bind(1, user)
        .bind(2, to_us(now))
        .step();
    stmt(db_, "DELETE FROM tokens WHERE id = ?").bind(1, k_static_id).step();
    const auto digest = pepper_.mac(pepper_.current(),
                                    "kg-token-v1" + std::string(k_static_id) + std::string(token));
    stmt(db_, "INSERT INTO tokens (id, user, digest, pepper_version, role, note, created_by, "
              "created_at, expires_at) VALUES (?,?,?,?,'admin','--auth-token','serve',?,?)")
        .bind(1, k_static_id)
        .bind(2, user)
        .bind_blob(3, digest)
        .bind(4, static_cast<std::int64_t>(pepper_.current()))
        .bind(5, to_us(now))
        .bind(6, to_us(now + ttl))
        .step();
}

std::optional<identity> token_store::verify(std::string_view token, std::string* why,
                                            std::string* token_id)
{
    auto fail = [&](const char* reason) -> std::optional<identity> {
        if (why != nullptr) {
            *why = reason;
        }
        return std::nullopt;
    };
    if (token.empty() || token.size() > 512) {
        return fail("malformed token");
    }
    std::string id;
    std::string secret;
    if (well_formed(token)) {
        id = std::string(token.substr(k_prefix.size(), k_id_len));
        secret = std::string(token.substr(k_prefix.size() + k_id_len + 1));
    } else if (token.substr(0, k_prefix.size()) == k_prefix) {
        return fail("malformed token");
    } else {
        id = std::string(k_static_id);  // anything else can only be the static token
        secret = std::string(token);
    }
    if (token_id != nullptr) {
        *token_id = id;
    }
    auto q_version = [&]() -> int {
        stmt v(db_, "SELECT pepper_version FROM tokens WHERE id = ?");
        v.bind(1, id);
        return v.step() ? static_cast<int>(v.integer(0)) : 0;
    };
    if (const int v = q_version(); v != 0 && !pepper_.has(v)) {
        // Signed under a version added since we loaded the file (`kernelgate pepper rotate`
        // while running): load the file again.
        try {
            pepper_ = pepper::load(pepper_.file(), false);
        } catch (const std::exception&) {
            return fail("pepper version unavailable");
        }
    }
    stmt q(db_, "SELECT t.digest, t.pepper_version, t.user, t.role, t.expires_at, "
                "t.revoked_at, u.disabled, t.last_used_at FROM tokens t JOIN users u ON "
                "u.name = t.user WHERE t.id = ?");
    q.bind(1, id);
    if (!q.step()) {
        return fail("unknown token id");
    }
    const auto stored = q.blob(0);
    const int version = static_cast<int>(q.integer(1));
    const auto digest = pepper_.mac(version, "kg-token-v1" + id + secret);
    if (digest.size() != stored.size() || digest.empty() ||
        CRYPTO_memcmp(digest.data(), stored.data(), digest.size()) != 0) {
        return fail("wrong secret");
    }
    identity who;
    who.user = q.text(2);
    who.role = q.text(3) == "admin" ? role_t::admin : role_t::user;
    who.token_id = id;
    who.expires_at = from_us(q.integer(4));
    const bool revoked = !q.null(5);
    const bool disabled = q.integer(6) != 0;
    const auto last_used = q.null(7) ? std::int64_t{0} : q.integer(7);
    if (revoked) {
        return fail("revoked token");
    }
    if (disabled) {
        return fail("disabled user");
    }
    const auto now = clock::now();
    if (who.expires_at <= now) {
        return fail("expired token");
    }
    if (now - from_us(last_used) > k_last_used_granularity || version != pepper_.current()) {
        // Also re-hashes under the newest pepper version (rotation).
        stmt(db_, "UPDATE tokens SET last_used_at = ?, digest = ?, pepper_version = ? "
                  "WHERE id = ?")
            .bind(1, to_us(now))
            .bind_blob(2, pepper_.mac(pepper_.current(), "kg-token-v1" + id + secret))
            .bind(3, static_cast<std::int64_t>(pepper_.current()))
            .bind(4, id)
            .step();
    }
    return who;
}

std::vector<token_info> token_store::list(const std::string& user_filter, bool include_revoked)
{
    std::string sql = std::string("SELECT ") + k_info_columns + " FROM tokens WHERE 1=1";
    if (!user_filter.empty()) {
        sql += " AND user = ?1";
    }
    if (!include_revoked) {
        sql += " AND revoked_at IS NULL";
    }
    sql += " ORDER BY created_at";
    stmt q(db_, sql.c_str());
    if (!user_filter.empty()) {
        q.bind(1, user_filter);
    }
    std::vector<token_info> out;
    while (q.step()) {
        out.push_back(read_info(q));
    }
    return out;
}

std::optional<token_info> token_store::get(const std::string& id)
{
    stmt q(db_, (std::string("SELECT ") + k_info_columns + " FROM tokens WHERE id = ?").c_str());
    q.bind(1, id);
    if (!q.step()) {
        return std::nullopt;
    }
    return read_info(q);
}

bool token_store::revoke(const std::string& id, const std::string& actor)
{
    stmt q(db_, "UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at "
                "IS NULL");
    q.bind(1, to_us(clock::now())).bind(2, actor).bind(3, id).step();
    return sqlite3_changes(db_) > 0;
}

std::vector<user_info> token_store::users()
{
    stmt q(db_, "SELECT u.name, u.disabled, u.created_at, (SELECT count(*) FROM tokens t WHERE "
                "t.user = u.name AND t.revoked_at IS NULL AND t.expires_at > ?) FROM users u "
                "ORDER BY u.name");
    q.bind(1, to_us(clock::now()));
    std::vector<user_info> out;
    while (q.step()) {
        out.push_back({q.text(0), q.integer(1) != 0, from_us(q.integer(2)),
                       static_cast<std::size_t>(q.integer(3))});
    }
    return out;
}

bool token_store::set_user_disabled(const std::string& name, bool disabled,
                                    const std::string& actor)
{
    (void)actor;
    stmt q(db_, "UPDATE users SET disabled = ? WHERE name = ?");
    q.bind(1, static_cast<std::int64_t>(disabled ? 1 : 0)).bind(2, name).step();
    return sqlite3_changes(db_) > 0;
}

bool token_store::user_disabled(const std::string& name)
{
    stmt q(db_, "SELECT disabled FROM users WHERE name = ?");
    q.bind(1, name);
    return q.step() && q.integer(0) != 0;
}

void token_store::audit(const std::string& actor, const std::string& action,
                        const std::string& target, const std::string& source)
{
    stmt(db_, "INSERT INTO audit (at, actor, action, target, source) VALUES (?,?,?,?,?)")
        .bind(1, to_us(clock::now()))
        .bind(2, actor)
        .bind(3, action)
        .bind(4, target)
        .bind(5, source)
        .step();
}

std::vector<audit_entry> token_store::audit_log(std::size_t limit)
{
    stmt q(db_, "SELECT at, actor, action, target, source FROM audit ORDER BY seq DESC LIMIT ?");
    q.bind(1, static_cast<std::int64_t>(limit));
    std::vector<audit_entry> out;
    while (q.step()) {
        out.push_back({from_us(q.integer(0)), q.text(1), q.text(2), q.text(3), q.text(4)});
    }
    return out;
}

std::vector<std::string> token_store::invalid_among(const std::vector<std::string>& ids)
{
    std::vector<std::string> out;
    const auto now = to_us(clock::now());
    stmt q(db_, "SELECT t.revoked_at IS NOT NULL OR t.expires_at <= ? OR u.disabled != 0 FROM "
                "tokens t JOIN users u ON u.name = t.user WHERE t.id = ?");
    for (const auto& id : ids) {
        sqlite3_reset(q.s);
        q.bind(1, now).bind(2, id);
        if (!q.step() || q.integer(0) != 0) {
            out.push_back(id);
        }
    }
    return out;
}

std::filesystem::path token_store::path() const
{
    const char* f = sqlite3_db_filename(db_, "main");
    return f == nullptr ? std::filesystem::path() : std::filesystem::path(f);
}

std::int64_t token_store::change_counter()
{
    // Asked every 20 ms (server::watch_tokens): prepared once, not compiled on every call.
    if (version_stmt_ == nullptr &&
        sqlite3_prepare_v2(db_, "PRAGMA data_version", -1, &version_stmt_, nullptr) != SQLITE_OK) {
        throw std::runtime_error(std::string("database: ") + sqlite3_errmsg(db_));
    }
    const int rc = sqlite3_step(version_stmt_);
    const std::int64_t v = rc == SQLITE_ROW ? sqlite3_column_int64(version_stmt_, 0) : 0;
    sqlite3_reset(version_stmt_);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        throw std::runtime_error(std::string("database: ") + sqlite3_errmsg(db_));
    }
    return v;
}

std::string to_iso(clock::time_point tp)
{
    return common::iso8601(tp);
}

std::chrono::seconds parse_duration(const std::string& text)
{
    if (text.empty()) {
        throw auth_error("empty duration");
    }
    std::size_t used = 0;
    long long n = 0;
    try {
        n = std::stoll(text, &used);
    } catch (const std::exception&) {
        throw auth_error("invalid duration '" + text + "' (use e.g. 30d, 12h, 45m, 90s)");
    }
    const auto unit = text.substr(used);
    long long mult = 1;
    if (unit == "d") {
        mult = 86400;
    } else if (unit == "h") {
        mult = 3600;
    } else if (unit == "m") {
        mult = 60;
    } else if (unit != "s" && !unit.empty()) {
        throw auth_error("invalid duration '" + text + "' (use e.g. 30d, 12h, 45m, 90s)");
    }
    if (n <= 0) {
        throw auth_error("duration must be positive");
    }
    constexpr long long k_hundred_years = 100LL * 366 * 86400;
    if (n > k_hundred_years / mult) {
        throw auth_error("duration '" + text + "' is too long");
    }
    return std::chrono::seconds(n * mult);
}

std::string_view role_name(role_t r) noexcept
{
    return r == role_t::admin ? "admin" : "user";
}

} // namespace kernelgate::auth
