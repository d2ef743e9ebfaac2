// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

struct sqlite3;

namespace kernelgate::sessions {

struct kernel_row
{
    std::string id;
    std::string name;
    std::string owner;
    std::string host;
    std::string state;
    std::string created;
    std::string last_activity;
};

struct session_row
{
    std::string id;
    std::string path;
    std::string name;
    std::string type;
    std::string kernel_id;
};

/// Kernel and session records in SQLite (WAL) in the data dir. The file is created 0600.
/// Throws std::runtime_error on open failure; later statement failures are logged.
///
/// Thread safety: event-loop thread only (one connection, no sharing).
class store
{
public:
    explicit store(const std::filesystem::path& file);
    ~store();
    store(const store&) = delete;
    store& operator=(const store&) = delete;

    void put_kernel(const kernel_row& row);
    void delete_kernel(const std::string& id);
    std::vector<kernel_row> kernels();

    void put_session(const session_row& row);
    void delete_session(const std::string& id);
    std::vector<session_row> sessions();

private:
    void exec(const char* sql);
    sqlite3* db_ = nullptr;
};

} // namespace kernelgate::sessions
