// SPDX-License-Identifier: BSD-3-Clause
#include "sessions/store.hpp"

#include <stdexcept>

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

namespace kernelgate::sessions {

namespace {

struct stmt
{
    sqlite3_stmt* s = nullptr;
    stmt(sqlite3* db, const char* sql)
    {
        if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) {
            spdlog::error("store: prepare failed: {}", sqlite3_errmsg(db));
            s = nullptr;
        }
    }
    ~stmt() { sqlite3_finalize(s); }
    stmt(const stmt&) = delete;
    stmt& operator=(const stmt&) = delete;
    void bind(int i, const std::string& v)
    {
        sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
    /// Binds the values to parameters 1, 2, ... in order.
    template <class... Values>
    void bind_all(const Values&... values)
    {
        int i = 0;
        (bind(++i, values), ...);
    }
    std::string col(int i)
    {
        const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
        return t != nullptr ? std::string(t) : std::string();
    }
};

/// Runs a one-row write (sql with one '?' per value, bound in order); a failed step is logged
/// as "store: <what>: <error>".
template <class... Values>
void write_row(sqlite3* db, const char* what, const char* sql, const Values&... values)
{
    stmt s(db, sql);
    if (s.s == nullptr) {
        return;
    }
    s.bind_all(values...);
    if (sqlite3_step(s.s) != SQLITE_DONE) {
        spdlog::error("store: {}: {}", what, sqlite3_errmsg(db));
    }
}

} // namespace

store::store(const std::filesystem::path& file)
{
    std::filesystem::create_directories(file.parent_path());
    // Create the file ourselves so it is 0600 from the first byte.
    const int fd = ::open(file.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ::fchmod(fd, 0600);
        ::close(fd);
    }
    if (sqlite3_open_v2(file.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                              SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
        const std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
        sqlite3_close(db_);
        db_ = nullptr;
        throw std::runtime_error("cannot open database " + file.string() + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 2000);
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=NORMAL");
    exec("CREATE TABLE IF NOT EXISTS kernels (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
         "owner TEXT NOT NULL, host TEXT NOT NULL, state TEXT NOT NULL, created TEXT NOT NULL, "
         "last_activity TEXT NOT NULL)");
    exec("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, path TEXT NOT NULL, "
         "name TEXT NOT NULL, type TEXT NOT NULL, kernel_id TEXT NOT NULL)");
    for (const char* suffix : {"-wal", "-shm"}) {
        ::chmod((file.string() + suffix).c_str(), 0600);
    }
}

store::~store()
{
    sqlite3_close(db_);
}

void store::exec(const char* sql)
{
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
        spdlog::error("store: {}", err != nullptr ? err : "error");
        sqlite3_free(err);
    }
}

void store::put_kernel(const kernel_row& r)
{
    write_row(db_, "put_kernel", "INSERT OR REPLACE INTO kernels VALUES (?,?,?,?,?,?,?)", r.id,
              r.name, r.owner, r.host, r.state, r.created, r.last_activity);
}

void store::delete_kernel(const std::string& id)
{
    stmt s(db_, "DELETE FROM kernels WHERE id = ?");
    if (s.s != nullptr) {
        s.bind(1, id);
        sqlite3_step(s.s);
    }
}

std::vector<kernel_row> store::kernels()
{
    std::vector<kernel_row> out;
    stmt s(db_, "SELECT id,name,owner,host,state,created,last_activity FROM kernels");
    while (s.s != nullptr && sqlite3_step(s.s) == SQLITE_ROW) {
        out.push_back({s.col(0), s.col(1), s.col(2), s.col(3), s.col(4), s.col(5), s.col(6)});
    }
    return out;
}

void store::put_session(const session_row& r)
{
    write_row(db_, "put_session", "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?)", r.id,
              r.path, r.name, r.type, r.kernel_id);
}

void store::delete_session(const std::string& id)
{
    stmt s(db_, "DELETE FROM sessions WHERE id = ?");
    if (s.s != nullptr) {
        s.bind(1, id);
        sqlite3_step(s.s);
    }
}

std::vector<session_row> store::sessions()
{
    std::vector<session_row> out;
    stmt s(db_, "SELECT id,path,name,type,kernel_id FROM sessions");
    while (s.s != nullptr && sqlite3_step(s.s) == SQLITE_ROW) {
        out.push_back({s.col(0), s.col(1), s.col(2), s.col(3), s.col(4)});
    }
    return out;
}

} // namespace kernelgate::sessions
