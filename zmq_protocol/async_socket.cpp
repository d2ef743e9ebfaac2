// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/async_socket.hpp"

#include <algorithm>
#include <array>
#include <optional>

#include <boost/asio/post.hpp>

namespace kernelgate::zmq_protocol {

namespace {
// Messages handled per wake-up before yielding to other work on the loop (fairness).
constexpr int k_drain_batch = 512;
} // namespace

async_socket::async_socket(boost::asio::io_context& ioc, zmq::context_t& ctx,
                           zmq::socket_type type)
    : ioc_(ioc), sock_(ctx, type), fd_(ioc)
{
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::rcvhwm, 100000);
    sock_.set(zmq::sockopt::sndhwm, 100000);
    fd_.assign(sock_.get(zmq::sockopt::fd));
}

async_socket::~async_socket()
{
    close();
}

void async_socket::start(handler on_message)
{
    on_message_ = std::move(on_message);
    schedule_drain();
}

void async_socket::close()
{
    if (!open_) {
        return;
    }
    open_ = false;
    boost::system::error_code ignored;
    fd_.cancel(ignored);
    (void)fd_.release();  // the fd is libzmq's: never let Asio close it
    sock_.close();
    on_message_ = nullptr;
}

bool async_socket::send(std::span<const std::string> parts)
{
    std::array<std::string_view, 16> small;
    std::vector<std::string_view> large;
    std::span<const std::string_view> views;
    if (parts.size() <= small.size()) {
        std::copy(parts.begin(), parts.end(), small.begin());
        views = std::span<const std::string_view>(small.data(), parts.size());
    } else {
        large.assign(parts.begin(), parts.end());
        views = large;
    }
    return send(views);
}

bool async_socket::send(std::span<const std::string_view> parts)
{
    if (!open_ || parts.empty()) {
        return false;
    }
    bool ok = true;
    for (std::size_t i = 0; i < parts.size() && ok; ++i) {
        auto flags = zmq::send_flags::dontwait;
        if (i + 1 < parts.size()) {
            flags = flags | zmq::send_flags::sndmore;
        }
        ok = sock_.send(zmq::const_buffer(parts[i].data(), parts[i].size()), flags).has_value();
        // Once the first part went out, libzmq accepts the rest atomically.
    }
    schedule_drain();  // the send may have consumed the read edge
    return ok;
}

bool async_socket::send(std::span<zmq::message_t> parts)
{
    if (!open_ || parts.empty()) {
        return false;
    }
    bool ok = true;
    for (std::size_t i = 0; i < parts.size() && ok; ++i) {
        auto flags = zmq::send_flags::dontwait;
        if (i + 1 < parts.size()) {
            flags = flags | zmq::send_flags::sndmore;
        }
        ok = sock_.send(parts[i], flags).has_value();
    }
    schedule_drain();
    return ok;
}

void async_socket::schedule_drain()
{
    if (drain_posted_ || !open_ || !on_message_) {
        return;
    }
    drain_posted_ = true;
    boost::asio::post(ioc_, [weak = weak_from_this()] {
        if (auto self = weak.lock()) {
            self->drain_posted_ = false;
            self->drain();
        }
    });
}

void async_socket::arm()
{
    if (waiting_ || !open_) {
        return;
    }
    waiting_ = true;
    fd_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                   [weak = weak_from_this()](const boost::system::error_code& ec) {
                       auto self = weak.lock();
                       if (!self) {
                           return;
                       }
                       self->waiting_ = false;
                       if (ec || !self->open_) {
                           return;
                       }
                       self->drain();
                   });
}

void async_socket::drain()
{
    auto keep = shared_from_this();  // a handler may drop the last owner
    frames msg;
    for (int n = 0; open_ && on_message_; ++n) {
        if (n == k_drain_batch) {
            schedule_drain();  // more may be queued: yield, then continue
            return;
        }
        // A non-blocking receive that finds nothing (EAGAIN) has processed libzmq's pending
        // commands, which resets ZMQ_FD: waiting on it afterwards cannot miss an edge. So no
        // ZMQ_EVENTS query per message is needed.
        msg.clear();
        std::optional<std::size_t> got;
        try {
            got = zmq::recv_multipart(sock_, std::back_inserter(msg), zmq::recv_flags::dontwait);
        } catch (const zmq::error_t& e) {
            if (e.num() != EFSM) {
                throw;
            }
            // A REQ socket between its reply and its next request: nothing can arrive. Query
            // ZMQ_EVENTS so that libzmq processes its commands and resets ZMQ_FD.
            (void)sock_.get(zmq::sockopt::events);
        }
        if (!got) {
            break;
        }
        ++received_;
        on_message_(msg);
    }
    arm();
}

} // namespace kernelgate::zmq_protocol
