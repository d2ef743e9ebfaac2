// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include "sessions/kernel_host.hpp"

namespace kernelgate::sessions {

/// Kernels as child processes of the gateway (the embedded default host).
/// Each kernel gets its own process group (so SIGINT reaches the whole kernel), a connection
/// file of mode 0600 in the runtime dir, and is reaped through SIGCHLD on the event loop.
///
/// Thread safety: event-loop thread only.
class local_host final : public kernel_host
{
public:
    local_host(boost::asio::io_context& ioc, std::filesystem::path runtime_dir,
               std::string ip = "127.0.0.1");
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

    struct child
    {
        int pid = -1;
        bool running = false;
        std::filesystem::path connection_file;
    };

    boost::asio::io_context& ioc_;
    std::filesystem::path runtime_dir_;
    std::string ip_;
    boost::asio::signal_set sigchld_;
    std::map<std::string, child> children_;
    exit_handler on_exit_;
};

} // namespace kernelgate::sessions
