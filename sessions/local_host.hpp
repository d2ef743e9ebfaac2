// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include "sessions/kernel_host.hpp"

namespace kernelgate::sessions {

/// How local kernels are reached.
enum class kernel_transport
{
    automatic,  ///< ipc for kernels known to support it (kernel_speaks_ipc), else tcp
    tcp,        ///< loopback TCP ports, as jupyter_client does by default
    ipc,        ///< Unix-domain sockets in the runtime dir, for every kernel
};

/// "auto", "tcp" or "ipc"; nullopt for anything else.
std::optional<kernel_transport> parse_kernel_transport(std::string_view text);

/// Whether a kernelspec's kernel binds ipc:// endpoints when its connection file says
/// "transport": "ipc". The spec's metadata decides if it says so
/// ({"kernelgate": {"transport": "ipc" | "tcp"}}); otherwise true for ipykernel
/// (`-m ipykernel_launcher` or `-m ipykernel`), which does, and false for any other kernel,
/// since many (IRkernel, IJulia) build tcp-style addresses whatever the file says.
bool kernel_speaks_ipc(const kernelspec& spec);

/// Picks free TCP ports for kernels the way jupyter_client does (bind to port 0, read it back,
/// close), but never hands out a port it handed out in the last `hold`. The kernel binds its
/// ports only after it has started, so without that memory two launches close together could
/// be given the same port and the later kernel would exit with "Address already in use"
/// (jupyter_client keeps the same kind of cache).
///
/// Thread safety: one thread.
class port_picker
{
public:
    explicit port_picker(std::chrono::seconds hold = std::chrono::seconds(120)) : hold_(hold) {}
    /// n distinct free ports on ip (loopback if ip does not parse); fewer if the OS has none.
    std::vector<std::uint16_t> pick(const std::string& ip, int n);

private:
    std::chrono::seconds hold_;
    std::map<std::uint16_t, std::chrono::steady_clock::time_point> recent_;  ///< port -> when
};

/// Kernels as child processes of the gateway (the embedded default host).
/// Each kernel gets its own process group (so SIGINT reaches the whole kernel), a connection
/// file of mode 0600 in the runtime dir, and is reaped through SIGCHLD on the event loop.
///
/// With the ipc transport a kernel's five sockets are Unix-domain sockets in the runtime dir
/// (mode 0700): only the gateway's user can connect to them, there are no ports to race for,
/// and a round trip costs less CPU than over loopback TCP. A path too long for a Unix socket
/// falls back to tcp.
///
/// Thread safety: event-loop thread only.
class local_host final : public kernel_host
{
public:
    local_host(boost::asio::io_context& ioc, std::filesystem::path runtime_dir,
               std::string ip = "127.0.0.1",
               kernel_transport transport = kernel_transport::automatic);
    ~local_host() override;

    result<zmq_protocol::connection_info> launch(const launch_request& req) override;
    bool signal(const std::string& kernel_id, int signum) override;
    bool alive(const std::string& kernel_id) const override;
    void release(const std::string& kernel_id) override;
    void set_exit_handler(exit_handler h) override { on_exit_ = std::move(h); }
    std::string kind() const override { return "local"; }

    /// Pid of a running kernel, or -1.
    int pid(const std::string& kernel_id) const;

private:
    void wait_sigchld();
    void reap();
    /// Connection files and ipc sockets of kernels of an earlier run (at start).
    void remove_stale_files();

    struct child
    {
        int pid = -1;
        bool running = false;
        std::filesystem::path connection_file;
        std::vector<std::string> ipc_files;  ///< ipc transport: its five socket files
    };
    /// Removes the connection file and any ipc socket files of a kernel.
    static void remove_files(const child& c);

    boost::asio::io_context& ioc_;
    std::filesystem::path runtime_dir_;
    std::string ip_;
    kernel_transport transport_;
    std::uint64_t ipc_launches_ = 0;
    port_picker ports_;
    boost::asio::signal_set sigchld_;
    std::map<std::string, child> children_;
    exit_handler on_exit_;
};

} // namespace kernelgate::sessions
