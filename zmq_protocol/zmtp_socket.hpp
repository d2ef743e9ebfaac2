// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "zmq_protocol/file_watch.hpp"
#include "zmq_protocol/zmtp.hpp"

namespace kernelgate::zmq_protocol {

/// The client end of one ZeroMQ connection, spoken directly on the event loop's own TCP or
/// Unix-domain socket (ZMTP 3.0, NULL mechanism: libzmq's tcp:// and ipc:// transports): a
/// DEALER, SUB or REQ peer of a kernel's ROUTER, PUB or heartbeat socket. No libzmq I/O
/// thread sits between the loop and the kernel, so a message costs no thread hand-off and no
/// mailbox signal.
///
/// Like a libzmq socket with connect(): messages sent before the connection is up are queued
/// and go out after the handshake; a refused or lost connection is retried (after 1, then
/// every 2 ms); over ipc a socket file that is not there yet is waited for with inotify
/// (file_watch) rather than looked for every 2 ms, and one that refuses (a kernel that
/// closed its sockets) is tried less often, and again at once when a new one is made there;
/// a SUB subscribes to everything on every connection; what a peer sends is bounded
/// (zmtp::limits) and a violation drops the connection (counted in protocol_errors()).
/// Messages are delivered whole, as views into the read buffer valid during the callback.
///
/// Thread safety: all calls on the io_context's thread.
class zmtp_socket : public std::enable_shared_from_this<zmtp_socket>
{
public:
    enum class kind
    {
        dealer,
        sub,
        req,
    };
    using handler = std::function<void(std::span<const std::string_view>)>;

    zmtp_socket(boost::asio::io_context& ioc, kind k, std::string identity,
                zmtp::limits lim = {}, std::size_t send_limit_bytes = 256u << 20);
    ~zmtp_socket();
    zmtp_socket(const zmtp_socket&) = delete;
    zmtp_socket& operator=(const zmtp_socket&) = delete;

    /// Starts connecting (and reconnecting whenever the connection drops) to ip:port over
    /// TCP, or for transport "ipc" to the Unix socket "ip-port" (jupyter_client's naming).
    /// An unusable address is logged and never connects.
    void connect(std::string_view transport, const std::string& ip, std::uint16_t port);
    void connect(const std::string& ip, std::uint16_t port) { connect("tcp", ip, port); }
    /// Over loopback TCP, before connect(): the peer is a kernel that reads `file` (its
    /// connection file) before it binds. After the first 50 ms the port is looked at only
    /// every 100 ms until something opens the file, then every 1-2 ms again. Without inotify
    /// (or without the file) nothing changes.
    void wait_for_read(const std::string& file);
    /// Starts delivering messages.
    void start(handler on_message);
    /// Called each time a connection's handshake completes (for a SUB: its subscription is
    /// on its way).
    void on_ready(std::function<void()> f) { on_ready_ = std::move(f); }
    /// Called each time a connection is made, before its handshake: the peer is bound.
    void on_stream_up(std::function<void()> f) { on_stream_up_ = std::move(f); }
    /// Queues a multipart message. false (nothing queued) if closed or the send buffer is over
    /// its limit (the peer does not read).
    ///
    /// Without `hold` the message goes out now if the connection is idle, else with what else
    /// is sent in this turn of the event loop. With `hold` it waits for release() (or for the
    /// next message sent without hold, or for 8 KiB held): a caller handling a burst of
    /// requests holds them and releases once the burst is read, so they leave in writes of
    /// about 8 KiB, the first while the rest are still being read.
    bool send(std::span<const std::string_view> parts, bool hold = false);
    /// Sends what send(..., true) holds.
    void release();
    /// Paused: no more messages are delivered, and what the peer sends is read ahead only up
    /// to the read-ahead limit (1 MiB; 8 MiB of messages under 4 KiB): then a peer that outruns its consumers fills its own
    /// socket and waits, or drops by its own policy. Unpaused: delivery goes on where it
    /// stopped.
    void set_paused(bool paused);
    bool paused() const noexcept { return paused_; }
    void close();
    /// The peer is about to go away for good (a kernel asked to shut down): a connection that
    /// drops from now on is not made again, and one already lost is no longer retried. A
    /// socket that never connected still does, so that what it queued reaches the peer.
    void stop_reconnecting();
    bool connected() const noexcept { return ready_; }

    std::uint64_t received() const noexcept { return received_; }
    /// Bytes read from the peer and not yet handled.
    std::size_t read_ahead() const noexcept { return rbuf_.unread_size(); }
    /// Bytes the read buffer holds room for: small while the peer sends little.
    std::size_t read_buffer_size() const noexcept { return rbuf_.capacity(); }
    std::uint64_t protocol_errors() const noexcept { return protocol_errors_; }
    /// Writes to the kernel's socket so far (each carries one or more messages).
    std::uint64_t writes() const noexcept { return writes_; }
    /// connect() calls made so far. Over ipc none is made while the socket file is missing.
    std::uint64_t connect_attempts() const noexcept { return connect_attempts_; }
    /// Over ipc: times the socket file was looked for (access()) so far.
    std::uint64_t file_checks() const noexcept { return file_checks_; }
    /// Over loopback TCP: times the kernel was asked whether the port listens (sock_diag).
    std::uint64_t listen_probes() const noexcept { return listen_probes_; }

private:
    void start_connect();
    void on_connected();
    void disconnected();
    void schedule_retry() { schedule_retry(backoff_); }
    void schedule_retry(std::chrono::milliseconds delay);
    /// Over ipc: is the socket file there? (counted in file_checks_)
    bool socket_file_exists();
    /// Over loopback TCP: might the port accept a connection? false only when the kernel
    /// says nothing listens on it, and not for longer than k_probe_fallback in a row.
    bool port_may_listen();
    /// Over ipc: start_connect() again once the socket file is (re)made at peer_. false: no
    /// inotify watch could be set (the caller polls).
    bool wait_for_socket_file();
    void read();
    void on_read(std::size_t n, bool drained);
    /// Reads without waiting until `limit` bytes are unread; *drained: the socket ran dry.
    bool pull(std::size_t limit, bool* drained = nullptr);
    void read_ahead_paused();
    /// How far to read ahead while paused: further for small messages (see the .cpp).
    std::size_t paused_limit();
    void schedule_flush();
    void flush();

    boost::asio::io_context& ioc_;
    kind kind_;
    std::string identity_;
    zmtp::limits limits_;
    std::size_t send_limit_;
    boost::asio::generic::stream_protocol::endpoint endpoint_;
    std::string peer_;         ///< endpoint_ as text, for logs
    bool is_tcp_ = true;
    bool loopback_ = false;    ///< over TCP to 127.0.0.0/8 or ::1: the port can be probed
    std::array<unsigned char, 16> address_{};  ///< over TCP: the address, network order
    std::size_t address_size_ = 0;             ///< 4 (IPv4) or 16 (IPv6)
    std::uint16_t port_ = 0;
    std::chrono::steady_clock::time_point last_attempt_{};  ///< of a connect()
    std::chrono::steady_clock::time_point connect_called_{};
    file_watch::ticket read_wait_;  ///< wait_for_read(): until the kernel opens the file
    boost::asio::generic::stream_protocol::socket sock_;
    boost::asio::steady_timer retry_;
    file_watch::ticket file_wait_;  ///< over ipc: waiting for the socket file
    std::chrono::milliseconds backoff_{1};
    bool ever_connected_ = false;
    bool reconnect_ = true;
    handler on_message_;
    std::function<void()> on_ready_;
    std::function<void()> on_stream_up_;
    zmtp::decoder decoder_;

    zmtp::read_buffer rbuf_;   ///< received bytes not yet decoded
    bool quiet_ = true;        ///< the last read was small: an empty rbuf_ shrinks back
    zmtp::frame_scan held_scan_;  ///< messages read ahead while paused (paused_limit)

    std::string handshake_;    ///< greeting + READY (+ subscription) of the current connection
    std::string pending_;      ///< encoded messages not yet handed to the kernel's socket
    std::string flushing_;     ///< the write in flight
    bool writing_ = false;
    bool reading_ = false;      ///< an async read is in flight
    bool waiting_ = false;      ///< paused: a wait for readability is in flight
    bool paused_ = false;
    bool resume_posted_ = false;
    bool flush_posted_ = false;
    bool stream_up_ = false;   ///< stream connected (handshake sent or being sent)
    bool ready_ = false;       ///< the peer's READY arrived
    bool closed_ = false;
    std::uint64_t generation_ = 0;  ///< bumps per connection: fences callbacks of old ones
    std::uint64_t received_ = 0;
    std::uint64_t protocol_errors_ = 0;
    std::uint64_t writes_ = 0;
    std::uint64_t connect_attempts_ = 0;
    std::uint64_t file_checks_ = 0;
    std::uint64_t listen_probes_ = 0;
};

using zmtp_socket_ptr = std::shared_ptr<zmtp_socket>;

} // namespace kernelgate::zmq_protocol
