// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <functional>
#include <map>
#include <string>

#include "sessions/kernelspec.hpp"
#include "zmq_protocol/connection_info.hpp"
#include "zmq_protocol/result.hpp"

namespace kernelgate::sessions {

struct launch_request
{
    std::string kernel_id;
    const kernelspec* spec = nullptr;
    std::map<std::string, std::string> env;  ///< already filtered and checked
    std::string working_dir;                 ///< empty: the host's default
};

/// Where kernels run. The registry talks only to this interface; the local host (child
/// processes) is the embedded default, Swarm agents implement the same calls.
///
/// Thread safety: all calls on the event-loop thread; on_exit is called there too.
class kernel_host
{
public:
    using exit_handler = std::function<void(const std::string& kernel_id, int status)>;

    virtual ~kernel_host() = default;

    /// Starts the kernel process; returns how to reach it. Fresh ports, fresh 256-bit key.
    virtual result<zmq_protocol::connection_info> launch(const launch_request& req) = 0;
    /// Sends a signal to the kernel (process group); false if it is not running.
    virtual bool signal(const std::string& kernel_id, int signum) = 0;
    virtual bool alive(const std::string& kernel_id) const = 0;
    /// Forgets the kernel (after it exited) and removes its files.
    virtual void release(const std::string& kernel_id) = 0;
    /// Called once per launched kernel when its process exits.
    virtual void set_exit_handler(exit_handler h) = 0;
    virtual std::string kind() const = 0;
};

} // namespace kernelgate::sessions
