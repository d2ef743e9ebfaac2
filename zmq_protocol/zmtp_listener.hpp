// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <poll.h>

#include "zmq_protocol/zmtp.hpp"

namespace kernelgate::zmq_protocol {

/// The bound end of a ZeroMQ socket, as a kernel has it: a ROUTER, PUB or REP listening on
/// TCP or a Unix socket (libzmq's tcp:// and ipc:// transports, ZMTP 3.0, NULL mechanism),
/// driven by the caller's poll(2) loop on the caller's thread. No I/O thread: a message costs
/// no thread hand-off, which is what a kernel that must answer fast needs.
///
/// - ROUTER: each connection gets a routing id (5 bytes, 0 and a counter, as libzmq makes
///   them); a message is delivered with its routing id as the first part, and send() routes on
///   the first part (unknown ids are dropped, as libzmq's ROUTER does).
/// - PUB: send() goes to every connection with a matching subscription (ZMTP 3.0 subscription
///   messages); a connection that has not subscribed yet gets nothing, as with libzmq.
/// - REP: messages are delivered whole (envelope and body); send() goes to the connection of
///   the message delivered last, so a handler answers with what it received.
///
/// Output is never dropped (like libzmq with a send high-water mark of 0): it is written at
/// once when the connection takes it, else when poll(2) says it can. A connection whose peer
/// breaks the protocol or the limits is dropped and counted.
class zmtp_listener
{
public:
    enum class kind
    {
        router,
        pub,
        rep,
    };
    using handler = std::function<void(std::span<const std::string_view>)>;

    /// Binds and listens on ip:port over TCP, or for transport "ipc" on the Unix socket
    /// "ip-port" (jupyter_client's naming; a stale socket file there is replaced). Throws
    /// std::system_error if that fails.
    zmtp_listener(kind k, std::string_view transport, const std::string& ip, std::uint16_t port,
                  zmtp::limits lim = {});
    ~zmtp_listener();
    zmtp_listener(const zmtp_listener&) = delete;
    zmtp_listener& operator=(const zmtp_listener&) = delete;

    /// Appends the descriptors to wait for (the listening socket, each connection: POLLIN,
    /// and POLLOUT while output waits) and returns how many.
    std::size_t watch(std::vector<pollfd>& fds) const;
    /// Handles what poll(2) reported for the descriptors watch() added (in that order):
    /// accepts, reads, writes, and calls on_message for every whole message. The handler may
    /// send on any listener, this one included.
    void serve(std::span<const pollfd> fds, const handler& on_message);
    /// Queues a multipart message (see the class comment for where it goes) and writes it
    /// now if the connection takes it.
    void send(std::span<const std::string_view> parts);
    /// Writes what waits, without blocking.
    void flush();
    /// Bytes queued and not yet written, over all connections.
    std::size_t queued() const noexcept;
    /// Writes what waits, waiting with poll(2) while more than `limit` bytes are queued
    /// (nothing is read meanwhile): a sender that outruns its readers waits for them, as a
    /// process writing to a full pipe does, instead of queueing without bound. false if
    /// `timeout` passed first.
    bool drain(std::size_t limit, std::chrono::milliseconds timeout);

    std::size_t connections() const noexcept { return conns_.size(); }
    std::uint64_t protocol_errors() const noexcept { return protocol_errors_; }

private:
    struct connection;
    void accept_all();
    bool read_from(connection& c, const handler& on_message);
    bool write_to(connection& c);
    void queue(connection& c, std::span<const std::string_view> parts);

    kind kind_;
    zmtp::limits limits_;
    int fd_ = -1;
    std::string unlink_path_;  ///< the ipc socket file, removed when closed
    std::vector<std::unique_ptr<connection>> conns_;
    std::uint32_t next_id_ = 0;
    connection* last_from_ = nullptr;  ///< REP: where send() goes
    std::uint64_t protocol_errors_ = 0;
};

} // namespace kernelgate::zmq_protocol
