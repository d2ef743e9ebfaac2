// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "zmq_protocol/zmtp_socket.hpp"
#include "zmq_protocol/connection_info.hpp"
#include "zmq_protocol/message.hpp"
#include "zmq_protocol/signer.hpp"
#include "zmq_protocol/wire_codec.hpp"

namespace kernelgate::zmq_protocol {

enum class channel : std::uint8_t
{
    shell,
    control,
    stdin_,
    iopub,
};

std::string_view channel_name(channel c) noexcept;
/// Parses "shell" / "control" / "stdin" / "iopub"; returns false for anything else.
bool parse_channel(std::string_view name, channel& out) noexcept;

/// Counters a kernel connection keeps (exported on /metrics).
struct channel_stats
{
    std::uint64_t received = 0;
    std::uint64_t sent = 0;
    std::uint64_t rejected = 0;  ///< bad, missing or replayed signatures, malformed frames
    std::uint64_t send_dropped = 0;
    std::uint64_t heartbeat_misses = 0;
};

/// The gateway's end of one kernel: shell/control/stdin DEALER, iopub SUB, hb REQ, each a
/// ZMTP connection on the event loop's own TCP socket (zmtp_socket).
/// Every message from the kernel is authenticated (HMAC, replay guard) before it is passed on;
/// rejected messages are counted and reported, never delivered.
///
/// Thread safety: all calls on the io_context thread.
class kernel_channels : public std::enable_shared_from_this<kernel_channels>
{
public:
    using message_handler = std::function<void(channel, message&&)>;
    using reject_handler = std::function<void(channel, std::error_code)>;
    using heartbeat_handler = std::function<void(bool alive)>;

    kernel_channels(boost::asio::io_context& ioc,
                    const connection_info& info,
                    std::string session_id);
    ~kernel_channels();
    kernel_channels(const kernel_channels&) = delete;
    kernel_channels& operator=(const kernel_channels&) = delete;

    /// Connects all sockets (shell first: the others once it has) and starts reading.
    void start(message_handler on_message, reject_handler on_reject);
    /// Called when the iopub connection's handshake completes (its subscription is sent).
    void on_iopub_ready(std::function<void()> f);
    /// Called each time the shell connection's handshake completes.
    void on_shell_ready(std::function<void()> f);
    /// Whether the shell connection is up (handshake done): a request sent now reaches the
    /// kernel's socket at once instead of waiting in our queue.
    bool shell_connected() const noexcept { return shell_ && shell_->connected(); }

    /// Signs and sends. Returns false if the channel would block (message dropped, counted).
    /// With `hold` the message waits for release() (zmtp_socket::send), so that a burst of
    /// client requests reaches the kernel in one write.
    bool send(channel ch, const message& msg, bool hold = false);
    /// Sends what send(..., true) holds on every channel.
    void release();
    /// Holds iopub: nothing more is read or delivered from it until released (see
    /// zmtp_socket::set_paused).
    void hold_iopub(bool hold);

    /// Sends a message the gateway originates (kernel_info_request, shutdown_request, ...).
    /// Returns the msg_id used.
    std::string request(channel ch, std::string_view msg_type, std::string_view content_json);

    /// Starts heartbeat pings; after `max_misses` consecutive misses on_change(false) is
    /// called, and on_change(true) when it answers again.
    void start_heartbeat(std::chrono::milliseconds interval,
                         int max_misses,
                         heartbeat_handler on_change);

    /// The kernel was asked to shut down: its sockets are not connected again once it closes
    /// them, and the heartbeat stops (zmtp_socket::stop_reconnecting). What is on its way,
    /// such as the shutdown_reply and the last status, is still delivered.
    void expect_exit();
    void close();
    /// connect() calls made so far by shell, control, stdin and iopub (zmtp_socket).
    std::uint64_t connect_attempts() const noexcept;
    const channel_stats& stats() const noexcept { return stats_; }
    const std::string& session_id() const noexcept { return session_id_; }

private:
    void on_frames(channel ch, std::span<const std::string_view> frames);
    void make_hb_socket();
    void heartbeat_tick();

    boost::asio::io_context& ioc_;
    connection_info info_;
    std::string session_id_;
    signer signer_;
    replay_guard guard_;
    zmtp_socket_ptr shell_, control_, stdin_, iopub_, hb_;
    message_handler on_message_;
    reject_handler on_reject_;
    boost::asio::steady_timer hb_timer_;
    heartbeat_handler on_hb_;
    std::chrono::milliseconds hb_interval_{0};
    int hb_max_misses_ = 3;
    int hb_misses_ = 0;
    bool hb_waiting_ = false;
    bool hb_alive_ = true;
    channel_stats stats_;
    bool closed_ = false;
    bool exiting_ = false;  ///< expect_exit()
    bool others_connecting_ = false;  ///< control, stdin, iopub, hb connect after shell first did
};

using kernel_channels_ptr = std::shared_ptr<kernel_channels>;

} // namespace kernelgate::zmq_protocol
