// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/connection_info.hpp"

#include <array>
#include <cerrno>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "common/text.hpp"
#include "zmq_protocol/errc.hpp"

namespace kernelgate::zmq_protocol {

namespace {

using json = nlohmann::json;

/// Connection files are a few hundred bytes; anything far larger is not one.
constexpr std::uintmax_t max_connection_file_bytes = 64u * 1024u;

constexpr std::array<std::pair<const char*, std::uint16_t connection_info::*>, 5> port_fields = {{
    {"shell_port", &connection_info::shell_port},
    {"iopub_port", &connection_info::iopub_port},
    {"stdin_port", &connection_info::stdin_port},
    {"control_port", &connection_info::control_port},
    {"hb_port", &connection_info::hb_port},
}};

/// A required port: an integer in 1..65535 (JSON from a file or built in code).
bool read_port(const json& j, const char* name, std::uint16_t& out)
{
    const auto it = j.find(name);
    if (it == j.end() || !it->is_number_integer()) { // also false for floats
        return false;
    }
    const bool in_range = it->is_number_unsigned()
                              ? it->get<std::uint64_t>() - 1 < 65535
                              : it->get<std::int64_t>() >= 1 && it->get<std::int64_t>() <= 65535;
    if (!in_range) {
        return false;
    }
    out = static_cast<std::uint16_t>(it->get<std::uint64_t>());
    return true;
}

/// An optional string member: absent keeps the default; present must be a string.
bool read_optional_string(const json& j, const char* name, std::string& out)
{
    const auto it = j.find(name);
    if (it == j.end()) {
        return true;
    }
    if (!it->is_string()) {
        return false;
    }
    out = it->get<std::string>();
    return true;
}

[[noreturn]] void throw_errno(const std::string& what)
{
    throw std::system_error(errno, std::system_category(), what);
}

/// Closes the descriptor and removes the temporary file unless released.
class temp_file
{
public:
    temp_file(int fd, std::filesystem::path path) : fd_(fd), path_(std::move(path)) {}
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    ~temp_file()
    {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        if (!released_) {
            std::error_code ignored;
            std::filesystem::remove(path_, ignored);
        }
    }
    int fd() const noexcept { return fd_; }
    const std::filesystem::path& path() const noexcept { return path_; }
    void close()
    {
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0) {
            throw_errno("close " + path_.string());
        }
    }
    void release() noexcept { released_ = true; }

private:
    int fd_;
    std::filesystem::path path_;
    bool released_ = false;
};

} // namespace

std::string connection_info::endpoint(std::uint16_t port) const
{
    if (transport == "ipc") {
        return "ipc://" + ip + "-" + std::to_string(port);
    }
    return transport + "://" + ip + ":" + std::to_string(port);
}

void connection_info::use_ipc(std::string base)
{
    transport = "ipc";
    ip = std::move(base);
    shell_port = 1;
    iopub_port = 2;
    stdin_port = 3;
    control_port = 4;
    hb_port = 5;
}

void connection_info::use_tcp(std::string address, std::span<const std::uint16_t, 5> ports)
{
    transport = "tcp";
    ip = std::move(address);
    shell_port = ports[0];
    iopub_port = ports[1];
    stdin_port = ports[2];
    control_port = ports[3];
    hb_port = ports[4];
}

std::vector<std::string> connection_info::ipc_paths() const
{
    if (transport != "ipc") {
        return {};
    }
    std::vector<std::string> out;
    for (const auto& [name, field] : port_fields) {
        out.push_back(ip + "-" + std::to_string(this->*field));
    }
    return out;
}

nlohmann::json connection_info::to_json() const
{
    json j = json::object();
    for (const auto& [name, field] : port_fields) {
        j[name] = this->*field;
    }
    j["ip"] = ip;
    j["key"] = key;
    j["transport"] = transport;
    j["signature_scheme"] = signature_scheme;
    j["kernel_name"] = kernel_name;
    return j;
}

result<connection_info> connection_info::from_json(const nlohmann::json& j)
{
    if (!j.is_object()) {
        return errc::bad_connection_info;
    }
    connection_info info;
    for (const auto& [name, field] : port_fields) {
        if (!read_port(j, name, info.*field)) {
            return errc::bad_connection_info;
        }
    }
    const auto ip = j.find("ip");
    if (ip == j.end() || !ip->is_string() || ip->get_ref<const std::string&>().empty()) {
        return errc::bad_connection_info;
    }
    info.ip = ip->get<std::string>();
    // The key may be empty (signing disabled, as jupyter_client allows) but must be present.
    const auto key = j.find("key");
    if (key == j.end() || !key->is_string()) {
        return errc::bad_connection_info;
    }
    info.key = key->get<std::string>();
    if (!read_optional_string(j, "transport", info.transport) ||
        (info.transport != "tcp" && info.transport != "ipc")) {
        return errc::bad_connection_info;
    }
    if (!read_optional_string(j, "signature_scheme", info.signature_scheme) ||
        info.signature_scheme != "hmac-sha256") {
        return errc::bad_connection_info;
    }
    if (!read_optional_string(j, "kernel_name", info.kernel_name)) {
        return errc::bad_connection_info;
    }
    return info;
}

void write_connection_file(const std::filesystem::path& path, const connection_info& info)
{
    // Invalid UTF-8 (in a kernel name, say) would make dump() throw a json error; replace it.
    const std::string text = info.to_json().dump(2, ' ', false, json::error_handler_t::replace);

    const std::filesystem::path dir =
        path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
    std::array<unsigned char, 8> rnd{};
    if (RAND_bytes(rnd.data(), static_cast<int>(rnd.size())) != 1) {
        throw std::runtime_error("kernelgate: RAND_bytes failed");
    }
    const std::filesystem::path tmp_path =
        dir / ("." + path.filename().string() + "." + common::to_hex(rnd.data(), rnd.size()) +
               ".tmp");

    // O_EXCL|O_NOFOLLOW: never reuse or follow something already there. The mode is set at
    // creation (never wider than 0600) and then pinned with fchmod against an odd umask.
    const int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                          S_IRUSR | S_IWUSR);
    if (fd < 0) {
        throw_errno("create " + tmp_path.string());
    }
    temp_file tmp(fd, tmp_path);
    if (::fchmod(tmp.fd(), S_IRUSR | S_IWUSR) != 0) {
        throw_errno("fchmod " + tmp_path.string());
    }
    std::size_t written = 0;
    while (written < text.size()) {
        const ssize_t n = ::write(tmp.fd(), text.data() + written, text.size() - written);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw_errno("write " + tmp_path.string());
        }
        written += static_cast<std::size_t>(n);
    }
    if (::fsync(tmp.fd()) != 0) {
        throw_errno("fsync " + tmp_path.string());
    }
    tmp.close();
    if (::rename(tmp_path.c_str(), path.c_str()) != 0) {
        throw_errno("rename " + tmp_path.string() + " to " + path.string());
    }
    tmp.release();
}

result<connection_info> read_connection_file(const std::filesystem::path& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int err = errno != 0 ? errno : ENOENT;
        return std::error_code(err, std::system_category());
    }
    std::string text;
    std::array<char, 4096> chunk{};
    while (in.read(chunk.data(), chunk.size()) || in.gcount() > 0) {
        text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
        if (text.size() > max_connection_file_bytes) {
            return errc::bad_connection_info;
        }
    }
    if (in.bad()) {
        return std::error_code(EIO, std::system_category());
    }
    const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    OPENSSL_cleanse(text.data(), text.size()); // it held the key
    if (j.is_discarded()) {
        return errc::bad_connection_info;
    }
    return connection_info::from_json(j);
}

std::string new_key()
{
    std::array<unsigned char, 32> key{};
    if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) {
        throw std::runtime_error("kernelgate: RAND_bytes failed");
    }
    std::string hex = common::to_hex(key.data(), key.size());
    OPENSSL_cleanse(key.data(), key.size());
    return hex;
}

} // namespace kernelgate::zmq_protocol
