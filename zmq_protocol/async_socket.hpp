// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

namespace kernelgate::zmq_protocol {

/// A ZeroMQ socket driven by the Asio event loop through ZMQ_FD.
///
/// ZMQ_FD is edge-triggered: after every wake-up all pending messages are drained until
/// EAGAIN, and after every send ZMQ_EVENTS is re-checked because a send can consume the
/// edge (azmq's rules). The descriptor belongs to libzmq: it is released, never closed, by
/// the Asio wrapper.
///
/// Thread safety: all calls on the io_context's thread (the gateway runs one event-loop
/// thread; each socket is touched only from it).
class async_socket : public std::enable_shared_from_this<async_socket>
{
public:
    using frames = std::vector<zmq::message_t>;
    using handler = std::function<void(frames&)>;

    async_socket(boost::asio::io_context& ioc, zmq::context_t& ctx, zmq::socket_type type);
    ~async_socket();
    async_socket(const async_socket&) = delete;
    async_socket& operator=(const async_socket&) = delete;

    zmq::socket_t& raw() noexcept { return sock_; }

    /// Starts delivering every received multipart message to on_message.
    void start(handler on_message);

    /// Sends a multipart message without blocking. Returns false (and sends nothing) if the
    /// socket would block (HWM reached / no peer for a REQ).
    bool send(std::span<const std::string> parts);
    bool send(std::span<const std::string_view> parts);
    bool send(std::span<zmq::message_t> parts);

    /// Stops reading and closes the ZeroMQ socket (linger as configured).
    void close();
    bool is_open() const noexcept { return open_; }

    /// Messages received over the lifetime of this socket.
    std::uint64_t received() const noexcept { return received_; }

private:
    void arm();
    void drain();
    void schedule_drain();

    boost::asio::io_context& ioc_;
    zmq::socket_t sock_;
    boost::asio::posix::stream_descriptor fd_;
    handler on_message_;
    bool open_ = true;
    bool waiting_ = false;        // one async_wait outstanding at most
    bool drain_posted_ = false;   // one posted drain outstanding at most
    std::uint64_t received_ = 0;
};

using async_socket_ptr = std::shared_ptr<async_socket>;

} // namespace kernelgate::zmq_protocol
