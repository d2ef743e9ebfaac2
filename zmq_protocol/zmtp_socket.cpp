// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/zmtp_socket.hpp"

#include "zmq_protocol/listen_probe.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

namespace kernelgate::zmq_protocol {

namespace net = boost::asio;

namespace {

constexpr std::size_t k_read_chunk = 64 * 1024;
constexpr std::size_t k_keep_buffer = 1u << 20;  // larger buffers are released when empty
// A socket whose last read was smaller than this reads into a buffer of this size while it
// has nothing unread, and gives a larger one back. Most of a kernel's five sockets are quiet
// most of the time (heartbeat, control, stdin; shell between requests): 64 KiB each made an
// idle kernel cost the gateway 320 KiB. A read that fills the small buffer reads on at once
// into a grown one (pull), so a burst after a quiet spell costs one more read.
constexpr std::size_t k_quiet_buffer = 4096;
constexpr auto k_backoff_max = std::chrono::milliseconds(2);
// An ipc socket file nobody listens on is a kernel that closed its sockets: one shutting
// down (ipykernel takes a few hundred milliseconds more to exit) or dead. A restarted kernel
// binds a new file at that path, so trying again goes on, but less often; with an inotify
// watch on the file's directory the new file wakes the socket at once, and tries without
// one can be rarer still.
constexpr auto k_backoff_max_refused = std::chrono::milliseconds(16);
constexpr auto k_backoff_max_refused_watched = std::chrono::milliseconds(128);
// Waiting for a socket file by inotify, the socket still looks this often, should an event
// be missed (a directory the watch does not see into).
constexpr auto k_file_wait_fallback = std::chrono::milliseconds(500);
// Waiting for a loopback port by asking the kernel whether it listens, a connect is still
// tried this often, should the answer be wrong (a port reached through a redirect).
constexpr auto k_probe_fallback = std::chrono::milliseconds(100);
// With wait_for_read(): how long the port is looked at every 1-2 ms before the kernel has
// opened its connection file (a native kernel may have read it before the watch was set),
// and how often after that until it does.
constexpr auto k_unread_fast_window = std::chrono::milliseconds(50);
constexpr auto k_unread_interval = std::chrono::milliseconds(100);
constexpr std::size_t k_pull_every = 64;          // messages handled between eager reads
// Unhandled bytes read ahead at most. 1 MiB is 16 messages of 64 KiB: enough to keep the
// gateway busy while the kernel writes more; 8 MiB made a stream touch (and page-fault) that
// much more memory for no more speed.
constexpr std::size_t k_pull_limit = 1u << 20;
// While paused (output held for slow clients) a kernel's PUB socket keeps only 1000 messages
// beyond what we read, and drops the rest without a word. Messages of 4 KiB or more make
// that megabytes, and the read-ahead stops at k_pull_limit as usual; smaller ones (printed
// lines) are read ahead up to 8 MiB, some 12,000 of ipykernel's: more than it sends in the
// 2 s a hold lasts. A stream of big messages so keeps its memory small.
constexpr std::size_t k_pause_limit = 8u << 20;
constexpr std::size_t k_small_message = 4096;
// Messages handled per turn of the loop. What they produced (WebSocket frames) is written
// between turns, so the client works on the first messages of a burst while the gateway
// handles the rest: client, gateway and kernel run side by side instead of passing the
// whole burst from one to the next. 256 made a 64-request flood a convoy (0.59x direct
// ZeroMQ); 12 to 48 all gave about 1.1x (bench/README.md, "Bursts in slices").
constexpr std::size_t k_turn_messages = 32;
// Held bytes that go out without release(): the kernel starts on the first requests of a
// burst while the rest are read (about 25 kernel_info requests; 64 KiB was the whole burst).
constexpr std::size_t k_hold_limit = 8 * 1024;

std::string_view peer_types(zmtp_socket::kind k)
{
    switch (k) {
    case zmtp_socket::kind::dealer: return "ROUTER,DEALER,REP";
    case zmtp_socket::kind::sub: return "PUB,XPUB";
    case zmtp_socket::kind::req: return "REP,ROUTER";
    }
    return "";
}

std::string_view own_type(zmtp_socket::kind k)
{
    switch (k) {
    case zmtp_socket::kind::dealer: return "DEALER";
    case zmtp_socket::kind::sub: return "SUB";
    case zmtp_socket::kind::req: return "REQ";
    }
    return "";
}

} // namespace

zmtp_socket::zmtp_socket(net::io_context& ioc, kind k, std::string identity, zmtp::limits lim,
                         std::size_t send_limit_bytes)
    : ioc_(ioc),
      kind_(k),
      identity_(std::move(identity)),
      limits_(lim),
      send_limit_(send_limit_bytes),
      sock_(ioc),
      retry_(ioc),
      decoder_(peer_types(k), lim)
{
}

zmtp_socket::~zmtp_socket()
{
    close();
}

void zmtp_socket::connect(std::string_view transport, const std::string& ip,
                          std::uint16_t port)
{
    if (transport == "ipc") {
        peer_ = ip + "-" + std::to_string(port);
        // sun_path holds 108 bytes with the terminating NUL.
        if (ip.empty() || peer_.size() >= sizeof(sockaddr_un::sun_path)) {
            spdlog::warn("zmtp: unusable ipc path ({} bytes)", peer_.size());
            return;
        }
        is_tcp_ = false;
        endpoint_ = net::local::stream_protocol::endpoint(peer_);
    } else {
        boost::system::error_code ec;
        const auto address = net::ip::make_address(ip, ec);
        if (ec || transport != "tcp") {
            spdlog::warn("zmtp: bad kernel address {}://{}", transport, ip);
            return;
        }
        is_tcp_ = true;
        loopback_ = address.is_loopback();
        connect_called_ = std::chrono::steady_clock::now();
        const auto keep = [this](const auto& bytes) {
            address_size_ = bytes.size();
            std::copy(bytes.begin(), bytes.end(), address_.begin());
        };
        if (address.is_v4()) {
            keep(address.to_v4().to_bytes());
        } else {
            keep(address.to_v6().to_bytes());
        }
        port_ = port;
        last_attempt_ = connect_called_;
        const net::ip::tcp::endpoint ep(address, port);
        peer_ = ep.address().to_string() + ":" + std::to_string(port);
        endpoint_ = ep;
    }
    start_connect();
}

void zmtp_socket::start(handler on_message)
{
    on_message_ = std::move(on_message);
}

void zmtp_socket::start_connect()
{
    if (closed_ || (ever_connected_ && !reconnect_)) {
        return;
    }
    const auto gen = ++generation_;
    boost::system::error_code ignored;
    sock_.close(ignored);
    file_wait_.reset();
    // A starting kernel binds its ipc sockets late (ipykernel some hundreds of milliseconds
    // after it was launched). Until its socket file exists a connect cannot succeed: the
    // socket sleeps until inotify says the file is there (looking once more after the watch
    // is set, so that a file made in between is not missed). Without a watch it looks every
    // 2 ms, some 400 times for ipykernel; one access() costs less than the socket, ioctl,
    // epoll_ctl, connect and close of an attempt.
    if (!is_tcp_ && !socket_file_exists()) {
        if (!wait_for_socket_file()) {
            schedule_retry();
            backoff_ = std::min(backoff_ * 2, k_backoff_max);
            return;
        }
        if (!socket_file_exists()) {
            schedule_retry(k_file_wait_fallback);
            return;
        }
        file_wait_.reset();
    }
    // Likewise a starting kernel's TCP ports: over loopback the kernel is asked whether the
    // port listens instead of a connect being refused each time; every 1-2 ms, or every
    // 100 ms while the kernel has yet to read its connection file (wait_for_read).
    if (is_tcp_ && loopback_ && !port_may_listen()) {
        if (read_wait_ &&
            std::chrono::steady_clock::now() - connect_called_ >= k_unread_fast_window) {
            schedule_retry(k_unread_interval);  // the kernel has not read its file yet
            return;
        }
        schedule_retry();
        backoff_ = std::min(backoff_ * 2, k_backoff_max);
        return;
    }
    ++connect_attempts_;
    last_attempt_ = std::chrono::steady_clock::now();
    sock_ = net::generic::stream_protocol::socket(ioc_);
    sock_.async_connect(endpoint_, [weak = weak_from_this(), gen](boost::system::error_code ec) {
        auto self = weak.lock();
        if (!self || self->closed_ || gen != self->generation_) {
            return;
        }
        if (ec) {
            // Not bound yet (a starting kernel) or gone: try again soon.
            const bool stale_file = !self->is_tcp_ && ec == net::error::connection_refused;
            const bool watched = stale_file && self->wait_for_socket_file();
            self->schedule_retry();
            self->backoff_ = std::min(self->backoff_ * 2,
                                      watched      ? k_backoff_max_refused_watched
                                      : stale_file ? k_backoff_max_refused
                                                   : k_backoff_max);
            return;
        }
        // TCP simultaneous open: a connect to a local port nobody listens on yet can pick that
        // very port as its source and connect to itself, holding the port the kernel is about
        // to bind. Let go of it and try again.
        boost::system::error_code lec;
        if (self->is_tcp_ && self->sock_.local_endpoint(lec) == self->endpoint_) {
            self->sock_.close(lec);
            self->schedule_retry();
            return;
        }
        self->on_connected();
    });
}

void zmtp_socket::on_connected()
{
    backoff_ = std::chrono::milliseconds(1);
    ever_connected_ = true;
    read_wait_.reset();
    boost::system::error_code ignored;
    if (is_tcp_) {
        sock_.set_option(net::ip::tcp::no_delay(true), ignored);
    }
    sock_.non_blocking(true, ignored);  // pull() reads without waiting
    stream_up_ = true;
    ready_ = false;
    decoder_ = zmtp::decoder(peer_types(kind_), limits_);
    rbuf_.clear();
    // Greeting and READY go first. Messages wait for the peer's READY: libzmq drops a
    // connection whose messages arrive before its own READY went out.
    handshake_ = zmtp::make_greeting();
    zmtp::append_ready(handshake_, own_type(kind_), kind_ == kind::sub ? "" : identity_);
    flushing_.clear();
    writing_ = false;
    schedule_flush();
    read();
    if (on_stream_up_) {
        on_stream_up_();
    }
}

void zmtp_socket::disconnected()
{
    if (!stream_up_) {
        return;
    }
    stream_up_ = false;
    ready_ = false;
    writing_ = false;
    reading_ = false;  // its completion belongs to the old connection
    waiting_ = false;
    flushing_.clear();  // what was in flight is lost, as with libzmq
    handshake_.clear();
    boost::system::error_code ignored;
    sock_.close(ignored);
    ++generation_;  // completions of this connection are ignored from now on
    if (!closed_ && reconnect_) {
        schedule_retry();
    }
}

void zmtp_socket::stop_reconnecting()
{
    reconnect_ = false;
    if (!closed_ && ever_connected_ && !stream_up_) {
        // Between a lost connection and its next attempt.
        ++generation_;
        retry_.cancel();
        file_wait_.reset();
        boost::system::error_code ignored;
        sock_.close(ignored);
    }
}

bool zmtp_socket::socket_file_exists()
{
    ++file_checks_;
    return ::access(peer_.c_str(), F_OK) == 0 || errno != ENOENT;
}

void zmtp_socket::wait_for_read(const std::string& file)
{
    read_wait_ = net::use_service<file_watch>(ioc_).wait_for_open(file, [weak = weak_from_this()] {
        auto self = weak.lock();
        if (!self) {
            return;
        }
        self->read_wait_.reset();
        if (!self->closed_ && !self->ever_connected_ && !self->stream_up_ && self->is_tcp_ &&
            self->loopback_) {
            // Look now and every 1-2 ms from here: the kernel is about to bind.
            self->retry_.cancel();
            self->backoff_ = std::chrono::milliseconds(1);
            self->start_connect();
        }
    });
}

bool zmtp_socket::port_may_listen()
{
    if (std::chrono::steady_clock::now() - last_attempt_ >= k_probe_fallback) {
        return true;
    }
    ++listen_probes_;
    return tcp_listening({address_.data(), address_size_}, port_) != listening::no;
}

bool zmtp_socket::wait_for_socket_file()
{
    file_wait_ = net::use_service<file_watch>(ioc_).wait_for(
        peer_, [weak = weak_from_this(), gen = generation_] {
            auto self = weak.lock();
            if (self && !self->closed_ && gen == self->generation_) {
                self->retry_.cancel();
                self->start_connect();
            }
        });
    return static_cast<bool>(file_wait_);
}

void zmtp_socket::schedule_retry(std::chrono::milliseconds delay)
{
    retry_.expires_after(delay);
    retry_.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
        if (auto s = weak.lock(); s && !ec) {
            s->start_connect();
        }
    });
}

void zmtp_socket::read()
{
    rbuf_.rewind(quiet_ ? k_quiet_buffer : k_keep_buffer);
    const auto free = rbuf_.room(quiet_ ? k_quiet_buffer : k_read_chunk);
    const std::size_t room = free.size();
    reading_ = true;
    sock_.async_read_some(
        net::buffer(free.data(), room),
        [weak = weak_from_this(), gen = generation_, room](boost::system::error_code ec,
                                                           std::size_t n) {
            auto self = weak.lock();
            if (!self || self->closed_ || gen != self->generation_) {
                return;
            }
            self->reading_ = false;
            if (ec) {
                self->disconnected();
                return;
            }
            self->on_read(n, n < room);
        });
}

bool zmtp_socket::pull(std::size_t limit, bool* drained)
{
    // Moves what the kernel's socket holds into our buffer without waiting, so that a
    // kernel publishing faster than we handle messages fills our buffer (bounded), not its
    // PUB high-water mark (where libzmq would drop).
    boost::system::error_code ec;
    while (rbuf_.unread_size() < limit) {
        const auto free = rbuf_.room(k_read_chunk);
        // Up to the limit (a chunk at least): a big buffer does not overshoot it by megabytes.
        const std::size_t want =
            std::min(free.size(), std::max(k_read_chunk, limit - rbuf_.unread_size()));
        const std::size_t n = sock_.read_some(net::buffer(free.data(), want), ec);
        if (ec == net::error::would_block || ec == net::error::try_again) {
            if (drained != nullptr) {
                *drained = true;
            }
            return true;
        }
        if (ec) {
            return false;
        }
        rbuf_.filled(n);
        quiet_ = false;
    }
    return true;
}

void zmtp_socket::on_read(std::size_t n, bool drained)
{
    auto keep = shared_from_this();  // a handler may drop the last owner
    const auto gen = generation_;
    rbuf_.filled(n);
    if (n > 0) {
        quiet_ = n < k_quiet_buffer;
    }
    for (std::size_t handled = 0;; ++handled) {
        if (paused_ && ready_) {
            // Nothing is delivered; what the peer sends is still read ahead, up to the limit,
            // and only then does the peer's socket fill. set_paused(false) goes on from here
            // (a handshake is never held up).
            held_scan_ = {};  // the unread bytes start at a message boundary
            read_ahead_paused();
            return;
        }
        if (handled == k_turn_messages) {
            // Yield to the rest of the loop (the frames made so far go out, other kernels
            // get their turn), then go on.
            net::post(ioc_, [weak = weak_from_this(), gen] {
                if (auto self = weak.lock(); self && !self->closed_ && gen == self->generation_) {
                    self->on_read(0, false);
                }
            });
            return;
        }
        // A read that did not fill the buffer left the socket empty: no eager read right after
        // it (it would only find nothing).
        if (handled % k_pull_every == 0 && (handled > 0 || !drained) && !pull(k_pull_limit)) {
            disconnected();
            return;
        }
        std::size_t used = 0;
        const auto ev = decoder_.next(rbuf_.unread(), &used);
        rbuf_.consume(used);
        switch (ev) {
        case zmtp::event::need_more:
            read();
            return;
        case zmtp::event::ready:
            ready_ = true;
            if (kind_ == kind::sub) {
                // Subscribe to everything (ZMTP 3.0: a message whose first byte is 1), ahead
                // of anything queued.
                std::string sub;
                zmtp::append_frame(sub, std::string_view("\x01", 1), false);
                pending_.insert(0, sub);
            }
            flush();
            if (on_ready_) {
                on_ready_();
                if (closed_ || gen != generation_) {
                    return;
                }
            }
            continue;
        case zmtp::event::ignored:
            continue;
        case zmtp::event::ping:
            zmtp::append_frame(pending_, decoder_.pong(), false, true);
            schedule_flush();
            continue;
        case zmtp::event::message: {
            ++received_;
            std::span<const std::string_view> parts(decoder_.parts());
            if (kind_ == kind::req && !parts.empty() && parts.front().empty()) {
                parts = parts.subspan(1);  // the REQ envelope's empty delimiter
            }
            if (on_message_) {
                on_message_(parts);
            }
            if (closed_ || gen != generation_) {
                return;  // the handler closed us
            }
            continue;
        }
        case zmtp::event::failed:
            ++protocol_errors_;
            spdlog::warn("zmtp: dropping the connection to {}: {}", peer_,
                         decoder_.failure().message());
            disconnected();
            return;
        }
    }
}

bool zmtp_socket::send(std::span<const std::string_view> parts, bool hold)
{
    if (closed_ || parts.empty() || pending_.size() > send_limit_) {
        return false;
    }
    if (kind_ == kind::req) {
        zmtp::append_frame(pending_, {}, true);  // REQ envelope: an empty delimiter first
    }
    for (std::size_t i = 0; i < parts.size(); ++i) {
        zmtp::append_frame(pending_, parts[i], i + 1 < parts.size());
    }
    if (hold && pending_.size() < k_hold_limit) {
        return true;  // release() sends it
    }
    release();
    return true;
}

void zmtp_socket::release()
{
    if (pending_.empty() || closed_) {
        return;
    }
    if (ready_ && !writing_ && !flush_posted_) {
        flush();  // idle: a lone request goes out now; later ones batch behind this write
    } else {
        schedule_flush();
    }
}

void zmtp_socket::schedule_flush()
{
    if (flush_posted_ || writing_ || !stream_up_) {
        return;
    }
    // Posted: messages sent in the same turn of the event loop leave in one write.
    flush_posted_ = true;
    net::post(ioc_, [weak = weak_from_this()] {
        if (auto self = weak.lock()) {
            self->flush_posted_ = false;
            self->flush();
        }
    });
}

void zmtp_socket::flush()
{
    if (writing_ || !stream_up_ || closed_) {
        return;
    }
    if (!handshake_.empty()) {
        flushing_ = std::move(handshake_);
        handshake_.clear();
    } else {
        if (!ready_ || pending_.empty()) {
            return;
        }
        flushing_.swap(pending_);
    }
    writing_ = true;
    ++writes_;
    net::async_write(sock_, net::buffer(flushing_),
                     [weak = weak_from_this(), gen = generation_](boost::system::error_code ec,
                                                                  std::size_t) {
                         auto self = weak.lock();
                         if (!self || gen != self->generation_) {
                             return;
                         }
                         self->writing_ = false;
                         self->flushing_.clear();
                         if (self->flushing_.capacity() > k_keep_buffer) {
                             std::string().swap(self->flushing_);
                         }
                         if (ec) {
                             self->disconnected();
                             return;
                         }
                         self->flush();
                     });
}

void zmtp_socket::read_ahead_paused()
{
    // No read into the buffer may be left in flight here: the messages already in it must
    // be handled the moment the pause ends, whether or not the peer sends more. So: wait
    // until the socket is readable, then read what is there without waiting.
    if (waiting_ || reading_) {
        return;  // a read in flight comes back to the loop, which calls this again
    }
    // Read what the socket holds now, up to the limit; the limit rises once what was read
    // shows small messages, so read again before waiting (the socket may be full already,
    // and a full socket signals nothing new).
    for (;;) {
        const std::size_t limit = paused_limit();
        if (rbuf_.unread_size() >= limit) {
            return;
        }
        bool drained = false;
        if (!pull(limit, &drained)) {
            disconnected();
            return;
        }
        if (drained) {
            break;
        }
    }
    waiting_ = true;
    sock_.async_wait(net::socket_base::wait_read,
                     [weak = weak_from_this(), gen = generation_](boost::system::error_code ec) {
                         auto self = weak.lock();
                         if (!self || self->closed_ || gen != self->generation_) {
                             return;
                         }
                         self->waiting_ = false;
                         if (ec) {
                             self->disconnected();
                             return;
                         }
                         if (!self->paused_ || self->reading_) {
                             // The loop runs again (set_paused) and reads itself, or it
                             // already has a read in flight into the buffer: never both.
                             return;
                         }
                         self->read_ahead_paused();
                     });
}

std::size_t zmtp_socket::paused_limit()
{
    const auto unread = rbuf_.unread();
    if (unread.size() < k_pull_limit) {
        return k_pull_limit;
    }
    zmtp::scan_frames(unread, held_scan_);
    const bool small = held_scan_.messages * k_small_message > held_scan_.pos;
    return small ? k_pause_limit : k_pull_limit;
}

void zmtp_socket::set_paused(bool paused)
{
    if (paused == paused_) {
        return;
    }
    paused_ = paused;
    // A read in flight means the loop stopped for want of data (a pause only stops it at a
    // message boundary, with no read in flight): its completion goes on. Otherwise the loop
    // is started again.
    if (paused_ || reading_ || resume_posted_ || !stream_up_ || closed_) {
        return;
    }
    resume_posted_ = true;
    net::post(ioc_, [weak = weak_from_this(), gen = generation_] {
        auto self = weak.lock();
        if (!self) {
            return;
        }
        self->resume_posted_ = false;
        if (!self->closed_ && gen == self->generation_ && !self->paused_ && !self->reading_) {
            self->on_read(0, false);
        }
    });
}

void zmtp_socket::close()
{
    if (closed_) {
        return;
    }
    closed_ = true;
    ++generation_;
    retry_.cancel();
    file_wait_.reset();
    read_wait_.reset();
    boost::system::error_code ignored;
    sock_.close(ignored);
    on_message_ = nullptr;
    on_ready_ = nullptr;
    on_stream_up_ = nullptr;
}

} // namespace kernelgate::zmq_protocol
