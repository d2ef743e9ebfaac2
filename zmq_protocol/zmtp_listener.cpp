// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/zmtp_listener.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace kernelgate::zmq_protocol {

namespace {

constexpr std::size_t k_read_chunk = 64 * 1024;
constexpr std::size_t k_keep_buffer = 1u << 20;   // larger buffers are released when empty
constexpr std::size_t k_write_early = 64 * 1024;  // queued bytes that send() writes at once

std::string_view peer_types(zmtp_listener::kind k)
{
    switch (k) {
    case zmtp_listener::kind::router: return "DEALER,REQ,ROUTER";
    case zmtp_listener::kind::pub: return "SUB,XSUB";
    case zmtp_listener::kind::rep: return "REQ,DEALER";
    }
    return "";
}

std::string_view own_type(zmtp_listener::kind k)
{
    switch (k) {
    case zmtp_listener::kind::router: return "ROUTER";
    case zmtp_listener::kind::pub: return "PUB";
    case zmtp_listener::kind::rep: return "REP";
    }
    return "";
}

[[noreturn]] void throw_errno(const std::string& what)
{
    throw std::system_error(errno, std::generic_category(), what);
}

} // namespace

struct zmtp_listener::connection
{
    connection(int f, std::string routing_id, std::string_view types, zmtp::limits lim)
        : fd(f), id(std::move(routing_id)), decoder(types, lim)
    {
    }
    int fd;
    std::string id;
    zmtp::decoder decoder;
    zmtp::read_buffer rbuf;  ///< received bytes not yet decoded
    std::string out;   ///< encoded bytes; [out_pos, size) not yet written
    std::size_t out_pos = 0;
    std::vector<std::string> subscriptions;  ///< PUB: topic prefixes
    std::vector<std::string_view> routed;    ///< ROUTER: routing id + parts, reused

    bool alive() const noexcept { return fd >= 0; }
    void drop() noexcept
    {
        if (fd >= 0) {
            ::close(fd);
            fd = -1;
        }
    }
    bool subscribed(std::string_view topic) const noexcept
    {
        return std::any_of(subscriptions.begin(), subscriptions.end(),
                           [&](const std::string& s) { return topic.starts_with(s); });
    }
};

zmtp_listener::zmtp_listener(kind k, std::string_view transport, const std::string& ip,
                             std::uint16_t port, zmtp::limits lim)
    : kind_(k), limits_(lim)
{
    if (transport == "ipc") {
        const std::string path = ip + "-" + std::to_string(port);
        sockaddr_un sa{};
        if (ip.empty() || path.size() >= sizeof(sa.sun_path)) {
            throw std::system_error(std::make_error_code(std::errc::filename_too_long),
                                    "ipc path");
        }
        sa.sun_family = AF_UNIX;
        std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd_ < 0) {
            throw_errno("socket");
        }
        ::unlink(path.c_str());  // a stale socket of an earlier kernel, as libzmq does
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
            const int e = errno;
            ::close(fd_);
            throw std::system_error(e, std::generic_category(), "bind " + path);
        }
        unlink_path_ = path;
    } else {
        sockaddr_storage ss{};
        socklen_t len = 0;
        const std::string host = ip == "*" ? "0.0.0.0" : ip;
        if (host.find(':') != std::string::npos) {
            auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
            sa->sin6_family = AF_INET6;
            sa->sin6_port = htons(port);
            if (::inet_pton(AF_INET6, host.c_str(), &sa->sin6_addr) != 1) {
                throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                                        "address " + host);
            }
            len = sizeof(*sa);
        } else {
            auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
            sa->sin_family = AF_INET;
            sa->sin_port = htons(port);
            if (::inet_pton(AF_INET, host.c_str(), &sa->sin_addr) != 1) {
                throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                                        "address " + host);
            }
            len = sizeof(*sa);
        }
        fd_ = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd_ < 0) {
            throw_errno("socket");
        }
        const int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
            const int e = errno;
            ::close(fd_);
            throw std::system_error(e, std::generic_category(),
                                    "bind " + host + ":" + std::to_string(port));
        }
    }
    if (::listen(fd_, 128) != 0) {
        const int e = errno;
        ::close(fd_);
        throw std::system_error(e, std::generic_category(), "listen");
    }
}

zmtp_listener::~zmtp_listener()
{
    for (auto& c : conns_) {
        c->drop();
    }
    ::close(fd_);
    if (!unlink_path_.empty()) {
        ::unlink(unlink_path_.c_str());
    }
}

std::size_t zmtp_listener::watch(std::vector<pollfd>& fds) const
{
    fds.push_back({fd_, POLLIN, 0});
    for (const auto& c : conns_) {
        const short ev = c->out_pos < c->out.size() ? short(POLLIN | POLLOUT) : short(POLLIN);
        fds.push_back({c->fd, ev, 0});  // a dropped connection's -1 is ignored by poll(2)
    }
    return 1 + conns_.size();
}

void zmtp_listener::serve(std::span<const pollfd> fds, const handler& on_message)
{
    // fds[0] is the listening socket, fds[1 + i] connection i as watch() saw it; accepted
    // connections are appended after these, dropped ones removed at the end.
    const std::size_t seen = std::min(conns_.size(), fds.empty() ? 0 : fds.size() - 1);
    for (std::size_t i = 0; i < seen; ++i) {
        const short rev = fds[1 + i].revents;
        connection& c = *conns_[i];
        if (rev == 0 || !c.alive()) {
            continue;
        }
        if ((rev & POLLOUT) != 0 && !write_to(c)) {
            continue;
        }
        if ((rev & (POLLIN | POLLHUP | POLLERR)) != 0) {
            read_from(c, on_message);
        }
    }
    if (!fds.empty() && (fds[0].revents & POLLIN) != 0) {
        accept_all();
    }
    last_from_ = nullptr;
    std::erase_if(conns_, [](const std::unique_ptr<connection>& c) { return !c->alive(); });
}

void zmtp_listener::accept_all()
{
    for (;;) {
        const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;  // EAGAIN, or a connection that went away before we took it
        }
        if (unlink_path_.empty()) {
            const int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        // Routing ids as libzmq makes them: a zero byte, then a 32-bit counter.
        std::string id(5, '\0');
        const std::uint32_t n = ++next_id_;
        for (int i = 0; i < 4; ++i) {
            id[1 + i] = static_cast<char>((n >> (24 - 8 * i)) & 0xff);
        }
        auto c = std::make_unique<connection>(fd, std::move(id), peer_types(kind_), limits_);
        c->out = zmtp::make_greeting();
        zmtp::append_ready(c->out, own_type(kind_), {});
        if (write_to(*c)) {
            conns_.push_back(std::move(c));
        }
    }
}

bool zmtp_listener::read_from(connection& c, const handler& on_message)
{
    c.rbuf.rewind(k_keep_buffer);
    const auto free = c.rbuf.room(k_read_chunk);
    const ssize_t n = ::recv(c.fd, free.data(), free.size(), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return true;
    }
    if (n <= 0) {
        c.drop();
        return false;
    }
    c.rbuf.filled(static_cast<std::size_t>(n));
    // One read per wake-up, every whole message in it handled: a burst of requests costs one
    // system call, and poll(2) reports the rest.
    for (;;) {
        std::size_t used = 0;
        const auto ev = c.decoder.next(c.rbuf.unread(), &used);
        c.rbuf.consume(used);
        switch (ev) {
        case zmtp::event::need_more:
            return true;
        case zmtp::event::ready:
        case zmtp::event::ignored:
            continue;
        case zmtp::event::ping:
            zmtp::append_frame(c.out, c.decoder.pong(), false, true);
            continue;
        case zmtp::event::failed:
            ++protocol_errors_;
            c.drop();
            return false;
        case zmtp::event::message:
            break;
        }
        const auto& parts = c.decoder.parts();
        if (kind_ == kind::pub) {
            // ZMTP 3.0 subscriptions: 1 + topic subscribes, 0 + topic cancels.
            if (!parts.empty() && !parts[0].empty()) {
                const std::string_view topic = parts[0].substr(1);
                auto it = std::find(c.subscriptions.begin(), c.subscriptions.end(), topic);
                if (parts[0][0] == '\x01' && it == c.subscriptions.end()) {
                    c.subscriptions.emplace_back(topic);
                } else if (parts[0][0] == '\x00' && it != c.subscriptions.end()) {
                    c.subscriptions.erase(it);
                }
            }
            continue;
        }
        last_from_ = &c;
        if (kind_ == kind::router) {
            c.routed.assign(1, c.id);
            c.routed.insert(c.routed.end(), parts.begin(), parts.end());
            on_message(c.routed);
        } else {
            on_message(parts);
        }
        if (!c.alive()) {
            return false;
        }
    }
}

bool zmtp_listener::write_to(connection& c)
{
    while (c.out_pos < c.out.size()) {
        const ssize_t n = ::send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos,
                                 MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                return true;
            }
            c.drop();
            return false;
        }
        c.out_pos += static_cast<std::size_t>(n);
    }
    c.out_pos = 0;
    c.out.clear();
    if (c.out.capacity() > k_keep_buffer) {
        std::string().swap(c.out);
    }
    return true;
}

void zmtp_listener::queue(connection& c, std::span<const std::string_view> parts)
{
    if (c.out_pos > 0 && c.out_pos >= c.out.size() - c.out_pos) {
        // A peer reading slower than we send: the written front goes, so the queue does not
        // grow (copying as it doubles) for as long as the peer lags. Moves at most what was
        // written since the last time.
        c.out.erase(0, c.out_pos);
        c.out_pos = 0;
    }
    for (std::size_t i = 0; i < parts.size(); ++i) {
        zmtp::append_frame(c.out, parts[i], i + 1 < parts.size());
    }
    if (c.out.size() - c.out_pos >= k_write_early) {
        write_to(c);
    }
}

void zmtp_listener::send(std::span<const std::string_view> parts)
{
    if (parts.empty()) {
        return;
    }
    switch (kind_) {
    case kind::router:
        for (auto& c : conns_) {
            if (c->alive() && c->id == parts[0]) {
                queue(*c, parts.subspan(1));
                return;
            }
        }
        return;  // no such peer (any more): dropped, as libzmq's ROUTER does
    case kind::pub:
        for (auto& c : conns_) {
            if (c->alive() && c->decoder.handshake_done() && c->subscribed(parts[0])) {
                queue(*c, parts);
            }
        }
        return;
    case kind::rep:
        if (last_from_ != nullptr && last_from_->alive()) {
            queue(*last_from_, parts);
        }
        return;
    }
}

std::size_t zmtp_listener::queued() const noexcept
{
    std::size_t n = 0;
    for (const auto& c : conns_) {
        if (c->alive()) {
            n += c->out.size() - c->out_pos;
        }
    }
    return n;
}

bool zmtp_listener::drain(std::size_t limit, std::chrono::milliseconds timeout)
{
    const auto until = std::chrono::steady_clock::now() + timeout;
    std::vector<pollfd> fds;
    for (;;) {
        if (queued() <= limit) {
            return true;
        }
        flush();
        if (queued() <= limit) {
            return true;
        }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            until - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            return false;
        }
        fds.clear();
        for (const auto& c : conns_) {
            if (c->alive() && c->out_pos < c->out.size()) {
                fds.push_back({c->fd, POLLOUT, 0});
            }
        }
        if (::poll(fds.data(), fds.size(), static_cast<int>(left.count())) < 0 &&
            errno != EINTR) {
            return false;
        }
    }
}

void zmtp_listener::flush()
{
    for (auto& c : conns_) {
        if (c->alive() && c->out_pos < c->out.size()) {
            write_to(*c);
        }
    }
}

} // namespace kernelgate::zmq_protocol
