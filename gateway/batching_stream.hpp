// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/socket.h>

#include "common/asio_fwd.hpp"
#include "gateway/quiet_release.hpp"

namespace kernelgate::gateway {

/// A stream layer under a WebSocket stream that batches writes: every write (synchronous or
/// asynchronous) appends the bytes to a buffer and returns at once, and one write to the
/// next layer sends everything buffered since the last one. A burst of kernel messages to a
/// client then costs one send() instead of one per message (over TLS, one write to the TLS
/// layer, which encrypts the burst into records that leave in one send() too).
/// Over plain TCP that send() is tried at once, without waiting for the socket: only what
/// it does not take (a client that is behind) waits for the socket to become writable.
///
/// Writes never block and never fail partially: a frame is appended whole, so frames written
/// by Beast itself (pong, keep-alive ping, close) and by the session never interleave.
/// The session bounds the buffer through buffered() (its high/low watermarks and hard
/// limit), and on_flushed is called after every completed write to the next layer.
/// Reads: over plain TCP, a read that fills the caller's buffer (Beast asks for 1536 bytes at
/// a time) is followed by one non-blocking read of up to 64 KiB, kept here and handed out to
/// the next reads, so a burst of requests costs one or two receive calls, not one per 1536
/// bytes; nothing is held while idle. Over TLS reads go straight to the next layer (it reads
/// whole records already). preload() hands up bytes read before this layer existed.
/// on_input_drained marks where each burst of input ends: every byte received so far has
/// been handed up and the layer above asks for more. Teardown (the end of a WebSocket close)
/// waits until the buffer is written, so a close frame is not lost.
///
/// Thread safety: one thread (the event loop), as the WebSocket stream above it.
template <class NextLayer>
class batching_stream
{
public:
    using next_layer_type = NextLayer;
    using executor_type = typename NextLayer::executor_type;

    template <class... Args>
    explicit batching_stream(Args&&... args) : state_(std::make_shared<state>(std::forward<Args>(args)...))
    {
    }

    batching_stream(batching_stream&&) noexcept = default;
    batching_stream& operator=(batching_stream&&) noexcept = default;
    /// A write in flight (or one posted) keeps the next layer alive; close it so that it ends
    /// at once (a client that stopped reading would otherwise hold the socket open).
    ~batching_stream()
    {
        if (state_) {
            beast::error_code ignored;
            beast::get_lowest_layer(state_->next).socket().close(ignored);
            state_->release_timer.cancel();
        }
    }

    executor_type get_executor() noexcept { return state_->next.get_executor(); }
    next_layer_type& next_layer() noexcept { return state_->next; }
    const next_layer_type& next_layer() const noexcept { return state_->next; }

    /// Bytes accepted but not yet written to the next layer (including a write in flight,
    /// less what the socket took at once when it started).
    std::size_t buffered() const noexcept
    {
        return state_->pending.size() + state_->flushing.size() - state_->flushing_sent;
    }
    /// Bytes the write buffers hold room for (0 once the connection has gone quiet).
    std::size_t write_capacity() const noexcept
    {
        return held_capacity(state_->pending) + held_capacity(state_->flushing);
    }
    /// Drops what has not started to go out (a slow client being closed); the write in
    /// flight, if any, completes.
    void discard_pending() noexcept { state_->pending.clear(); }
    /// Called after each completed write to the next layer.
    void on_flushed(std::function<void()> f) { state_->on_flushed = std::move(f); }
    /// Bytes the connection's previous reader took from the socket and did not use (an HTTP
    /// parser that read past the upgrade request: a client that sent its first frames without
    /// waiting for the 101). They are handed up before anything is read from the next layer.
    void preload(std::string_view bytes)
    {
        state_->ahead.assign(bytes.data(), bytes.size());
        state_->ahead_pos = 0;
    }
    /// Called each time the layer above has used every byte read so far and asks for more:
    /// a burst of input has been handled (the session sends on what the burst asked for).
    void on_input_drained(std::function<void()> f) { state_->on_drained = std::move(f); }
    /// Bytes received and not yet handed up: more input is at hand (over TLS, always false:
    /// this layer holds none).
    bool input_ahead() const noexcept { return !state_->ahead.empty(); }
    /// Reads issued to the next layer so far. One is issued only once the one before it has
    /// completed with data, so a count that does not move means the peer sent nothing.
    std::uint64_t socket_reads() const noexcept { return state_->socket_reads; }

    // SyncReadStream / SyncWriteStream
    template <class MutableBufferSequence>
    std::size_t read_some(const MutableBufferSequence& buffers, beast::error_code& ec)
    {
        ec = {};
        if (!state_->ahead.empty()) {
            return take_ahead(*state_, buffers);
        }
        drained();
        ++state_->socket_reads;
        return state_->next.read_some(buffers, ec);
    }
    template <class MutableBufferSequence>
    std::size_t read_some(const MutableBufferSequence& buffers)
    {
        beast::error_code ec;
        const std::size_t n = read_some(buffers, ec);
        if (ec) {
            BOOST_THROW_EXCEPTION(beast::system_error{ec});
        }
        return n;
    }
    template <class ConstBufferSequence>
    std::size_t write_some(const ConstBufferSequence& buffers, beast::error_code& ec)
    {
        ec = state_->error;
        if (ec) {
            return 0;
        }
        return append(buffers);
    }
    template <class ConstBufferSequence>
    std::size_t write_some(const ConstBufferSequence& buffers)
    {
        beast::error_code ec;
        const std::size_t n = write_some(buffers, ec);
        if (ec) {
            BOOST_THROW_EXCEPTION(beast::system_error{ec});
        }
        return n;
    }

    // AsyncReadStream / AsyncWriteStream
    template <class MutableBufferSequence, class ReadHandler>
    auto async_read_some(const MutableBufferSequence& buffers, ReadHandler&& handler)
    {
        return net::async_initiate<ReadHandler, void(beast::error_code, std::size_t)>(
            [this](auto h, const MutableBufferSequence& b) {
                auto st = state_;
                if (!st->ahead.empty()) {  // read ahead or preloaded
                    const std::size_t n = take_ahead(*st, b);
                    net::post(get_executor(),
                              beast::bind_front_handler(std::move(h), beast::error_code{}, n));
                    return;
                }
                drained();
                ++st->socket_reads;
                if constexpr (!k_plain_tcp) {
                    st->next.async_read_some(b, std::move(h));
                } else {
                    const std::size_t want = net::buffer_size(b);
                    // The caller's executor stays bound to the read.
                    auto ex = net::get_associated_executor(h, get_executor());
                    st->next.async_read_some(
                        b, net::bind_executor(ex, [st, want, h = std::move(h)](
                                                      beast::error_code ec, std::size_t n) mutable {
                            if (!ec && n == want && want > 0) {
                                read_ahead(*st);
                            }
                            std::move(h)(ec, n);
                        }));
                }
            },
            handler, buffers);
    }
    template <class ConstBufferSequence, class WriteHandler>
    auto async_write_some(const ConstBufferSequence& buffers, WriteHandler&& handler)
    {
        return net::async_initiate<WriteHandler, void(beast::error_code, std::size_t)>(
            [this](auto h, const ConstBufferSequence& b) {
                beast::error_code ec = state_->error;
                const std::size_t n = ec ? 0 : append(b);
                net::post(get_executor(), beast::bind_front_handler(std::move(h), ec, n));
            },
            handler, buffers);
    }

    /// WebSocket teardown: once everything buffered is written, the next layer's teardown.
    template <class TeardownHandler>
    friend void async_teardown(beast::role_type role, batching_stream& s,
                               TeardownHandler&& handler)
    {
        auto st = s.state_;
        auto h = std::make_shared<std::decay_t<TeardownHandler>>(
            std::forward<TeardownHandler>(handler));
        auto go = [st, role, h](beast::error_code) {
            using websocket::async_teardown;
            async_teardown(role, st->next, std::move(*h));
        };
        if (!st->writing && st->pending.empty()) {
            net::post(st->next.get_executor(), [go] { go({}); });
        } else {
            st->after_flush.emplace_back(std::move(go));
        }
    }
    friend void teardown(beast::role_type role, batching_stream& s, beast::error_code& ec)
    {
        using websocket::teardown;
        teardown(role, s.state_->next, ec);
    }

private:
    /// Shared with the write in flight, so that it may outlive a moved-from or destroyed
    /// stream object without touching freed memory.
    struct state
    {
        template <class... Args>
        explicit state(Args&&... args)
            : next(std::forward<Args>(args)...), release_timer(next.get_executor())
        {
        }
        NextLayer next;
        net::steady_timer release_timer;  ///< lets the write buffers go (release_when_quiet)
        bool release_armed = false;
        std::string pending;   ///< appended since the write in flight started
        std::string flushing;  ///< the write in flight
        std::size_t flushing_sent = 0;  ///< of flushing, sent before the write had to wait
        bool writing = false;
        bool flush_posted = false;
        beast::error_code error;
        std::function<void()> on_flushed;
        std::function<void()> on_drained;
        std::string ahead;           ///< read ahead, not yet handed up
        std::size_t ahead_pos = 0;   ///< first byte of ahead not handed up
        std::uint64_t socket_reads = 0;
        std::vector<std::function<void(beast::error_code)>> after_flush;
    };

    /// Plain TCP: a non-blocking read or send on the socket is a whole read or send (under
    /// TLS it would be part of a record), so reads ahead and sends at once are done there only.
    static constexpr bool k_plain_tcp = std::is_same_v<NextLayer, beast::tcp_stream>;
    static constexpr std::size_t k_ahead_max = 64 * 1024;

    /// After a read that filled the caller's buffer: what else the socket holds now (up to
    /// 64 KiB), without waiting. Errors and end of stream are left for the next read to find.
    static void read_ahead(state& st)
    {
        if constexpr (k_plain_tcp) {
            // MSG_DONTWAIT on this one call: the socket's own mode (and so any synchronous
            // read through it) stays as it was.
            thread_local std::array<char, k_ahead_max> scratch;
            const ssize_t n = ::recv(st.next.socket().native_handle(), scratch.data(),
                                     scratch.size(), MSG_DONTWAIT);
            if (n > 0) {
                st.ahead.assign(scratch.data(), static_cast<std::size_t>(n));
                st.ahead_pos = 0;
            }
        }
    }

    template <class MutableBufferSequence>
    static std::size_t take_ahead(state& st, const MutableBufferSequence& buffers)
    {
        const std::size_t n = net::buffer_copy(
            buffers, net::buffer(st.ahead.data() + st.ahead_pos, st.ahead.size() - st.ahead_pos));
        st.ahead_pos += n;
        if (st.ahead_pos == st.ahead.size()) {
            std::string().swap(st.ahead);  // nothing is kept between bursts
            st.ahead_pos = 0;
        }
        return n;
    }

    void drained()
    {
        if (state_->on_drained) {
            state_->on_drained();
        }
    }

    template <class ConstBufferSequence>
    std::size_t append(const ConstBufferSequence& buffers)
    {
        const std::size_t n = net::buffer_size(buffers);
        auto& p = state_->pending;
        p.reserve(p.size() + n);  // geometric: amortized, and no zero-fill as resize() does
        for (const auto b : beast::buffers_range_ref(buffers)) {
            p.append(static_cast<const char*>(b.data()), b.size());
        }
        schedule(state_);
        return n;
    }

    /// The write goes out after the handlers already queued have run, so a burst delivered
    /// in one turn of the event loop leaves in one write.
    static void schedule(const std::shared_ptr<state>& st)
    {
        if (st->writing || st->flush_posted) {
            return;
        }
        st->flush_posted = true;
        net::post(st->next.get_executor(), [st] {
            st->flush_posted = false;
            flush(st);
        });
    }

    static void flush(const std::shared_ptr<state>& st)
    {
        if (st->writing) {
            return;
        }
        if (st->pending.empty() || st->error) {
            finish(st);
            return;
        }
        st->writing = true;
        st->flushing.swap(st->pending);
        std::size_t sent = 0;
        if constexpr (k_plain_tcp) {
            // Plain TCP: send now, without waiting. What the socket takes at once (all of it,
            // unless the client is behind) needs no completion handler, no extra turn of the
            // event loop and no epoll round for it. The rest waits for the socket as before.
            const ssize_t n = ::send(st->next.socket().native_handle(), st->flushing.data(),
                                     st->flushing.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n >= 0) {
                sent = static_cast<std::size_t>(n);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                written(st, beast::error_code(errno, boost::system::system_category()));
                return;
            }
            if (sent == st->flushing.size()) {
                written(st, {});
                return;
            }
            st->flushing_sent = sent;
        }
        net::async_write(st->next,
                         net::buffer(st->flushing.data() + sent, st->flushing.size() - sent),
                         [st](beast::error_code ec, std::size_t) { written(st, ec); });
    }

    /// The write of flushing has ended (ec: it failed): next, whatever was appended meanwhile.
    static void written(const std::shared_ptr<state>& st, beast::error_code ec)
    {
        st->writing = false;
        st->flushing.clear();
        st->flushing_sent = 0;
        release_when_quiet(st);
        if (ec) {
            st->error = ec;
            st->pending.clear();
        }
        if (st->on_flushed) {
            st->on_flushed();
        }
        flush(st);
    }

    /// Nothing left to write (or the stream failed): run what waited for that.
    static void finish(const std::shared_ptr<state>& st)
    {
        auto waiters = std::move(st->after_flush);
        st->after_flush.clear();
        for (auto& w : waiters) {
            w(st->error);
        }
    }

    std::shared_ptr<state> state_;
};

} // namespace kernelgate::gateway
