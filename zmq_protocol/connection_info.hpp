// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "zmq_protocol/result.hpp"

namespace kernelgate::zmq_protocol {

/// The contents of a Jupyter connection file (jupyter_client's format).
struct connection_info
{
    std::string transport = "tcp";
    std::string ip = "127.0.0.1";
    std::uint16_t shell_port = 0;
    std::uint16_t iopub_port = 0;
    std::uint16_t stdin_port = 0;
    std::uint16_t control_port = 0;
    std::uint16_t hb_port = 0;
    std::string key;                              ///< secret: never log
    std::string signature_scheme = "hmac-sha256";
    std::string kernel_name;
    /// Where the file was written, if it was (not part of the file): a kernel reads it just
    /// before it binds.
    std::string file;

    /// "tcp://ip:port" (or "ipc://ip-port" for ipc transport, as jupyter_client does).
    std::string endpoint(std::uint16_t port) const;
    /// The ipc transport: the five sockets are the Unix sockets base-1 .. base-5.
    void use_ipc(std::string base);
    /// The tcp transport on `address`, ports in connection-file order: shell, iopub, stdin,
    /// control, hb.
    void use_tcp(std::string address, std::span<const std::uint16_t, 5> ports);
    /// The five Unix socket paths of the ipc transport (ip-port); empty for tcp.
    std::vector<std::string> ipc_paths() const;
    nlohmann::json to_json() const;
    static result<connection_info> from_json(const nlohmann::json& j);
};

/// Writes the file atomically with mode 0600 (as jupyter_client's secure_write). Throws
/// std::system_error on failure.
void write_connection_file(const std::filesystem::path& path, const connection_info& info);
result<connection_info> read_connection_file(const std::filesystem::path& path);

/// A fresh 256-bit key, hex encoded (64 chars), from the OS CSPRNG.
std::string new_key();

} // namespace kernelgate::zmq_protocol
