// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/asio_fwd.hpp"

namespace kernelgate::gateway {

/// The server's side of TLS over a beast::tcp_stream: OpenSSL behind a BIO of our own, in
/// place of asio's ssl::stream.
///
/// asio's engine passes every record through a 17 KiB BIO pair and a 17 KiB output buffer:
/// a burst of output leaves as one send() per 16 KiB record, each its own asynchronous
/// operation, after two copies; and each connection holds those buffers (about 70 KiB)
/// for as long as it is open. Here a write encrypts all it is given, the records going
/// straight into one output buffer, and that buffer goes out with one send(). Input is read
/// into a 4 KiB buffer while the peer sends little, into 64 KiB ones while reads fill it;
/// OpenSSL's own record buffers are released between records (SSL_MODE_RELEASE_BUFFERS),
/// and the output buffers once the connection has nothing to write (release_when_quiet).
///
/// Models AsyncReadStream and AsyncWriteStream: one read and one write in flight at a time,
/// as Beast's HTTP and WebSocket code use them. A write completes once the records that
/// carry it are written to the socket, so the layers above feel a slow peer's backpressure.
/// Reads and writes go through the tcp_stream, so its expiry (expires_after) bounds them.
/// A peer that closes the TCP connection between records without a close_notify reads as
/// net::error::eof (browsers and most HTTP clients do that); in the middle of a record, as
/// net::ssl::error::stream_truncated; OpenSSL's errors have net::error::get_ssl_category().
///
/// Thread safety: one thread (the event loop). Operations in flight keep the state alive:
/// destroying the stream closes its socket, and they end with an error.
class tls_stream
{
    struct impl;

public:
    using next_layer_type = beast::tcp_stream;
    using executor_type = beast::tcp_stream::executor_type;

    /// The SSL object is made from ctx (server side; its verify mode, certificates and
    /// options apply); ctx must outlive the stream.
    tls_stream(beast::tcp_stream&& next, net::ssl::context& ctx);
    tls_stream(tls_stream&&) noexcept = default;
    tls_stream& operator=(tls_stream&&) noexcept = default;
    ~tls_stream();

    executor_type get_executor() noexcept;
    next_layer_type& next_layer() noexcept;
    const next_layer_type& next_layer() const noexcept;
    /// Bytes of records made and not yet written to the socket.
    std::size_t unsent() const noexcept;
    /// Bytes the output buffers hold room for (0 once the connection has gone quiet).
    std::size_t output_capacity() const noexcept;
    /// Bytes of the input buffer (received or room for it): 4 KiB while the peer is quiet
    /// (0 with release_input_when_idle).
    std::size_t input_capacity() const noexcept;
    /// Reads that find no input wait for the socket to become readable, holding no input
    /// buffer meanwhile: an idle connection then holds none. That wait is not bounded by the
    /// tcp_stream's expiry: for reads something else bounds (a WebSocket session's deadlines
    /// close the socket), not for an HTTP request's.
    void release_input_when_idle(bool on) noexcept;

    /// The server's handshake. Completes once the handshake's output is written.
    template <class Token>
    auto async_handshake(Token&& token)
    {
        return net::async_compose<Token, void(beast::error_code)>(
            handshake_op{impl_}, token, get_executor());
    }

    template <class MutableBufferSequence, class Token>
    auto async_read_some(const MutableBufferSequence& buffers, Token&& token)
    {
        return net::async_compose<Token, void(beast::error_code, std::size_t)>(
            read_op<MutableBufferSequence>{impl_, buffers}, token, get_executor());
    }

    template <class ConstBufferSequence, class Token>
    auto async_write_some(const ConstBufferSequence& buffers, Token&& token)
    {
        return net::async_compose<Token, void(beast::error_code, std::size_t)>(
            write_op<ConstBufferSequence>{impl_, buffers}, token, get_executor());
    }

    /// Sends close_notify (nothing is sent after it) and completes once it is written.
    /// It does not wait for the peer's.
    template <class Token>
    auto async_shutdown(Token&& token)
    {
        return net::async_compose<Token, void(beast::error_code)>(shutdown_op{impl_}, token,
                                                                  get_executor());
    }

    /// WebSocket teardown: close_notify, then the TCP teardown (shutdown, drain, close).
    template <class Handler>
    friend void async_teardown(beast::role_type role, tls_stream& s, Handler&& handler)
    {
        net::async_compose<Handler, void(beast::error_code)>(
            shutdown_op{s.impl_, true, role}, handler, s.get_executor());
    }
    friend void teardown(beast::role_type /*role*/, tls_stream& s, beast::error_code& ec)
    {
        ec = {};
        s.close_socket();
    }

private:
    using ptr = std::shared_ptr<impl>;

    // The non-template work, in tls_stream.cpp. Each returns what the operation does next.
    enum class step { done, read };
    /// SSL_read_ex into [data, data + size); ec set on failure. step::read: input needed.
    static step read_into(impl& s, void* data, std::size_t size, std::size_t& got,
                          beast::error_code& ec);
    /// Encrypts [data, data + size) into the output (all of it, or ec).
    static void encrypt(impl& s, const void* data, std::size_t size, beast::error_code& ec);
    static step handshake(impl& s, beast::error_code& ec);
    static void shutdown(impl& s);
    /// Starts writing the output if no write is in flight (one non-blocking send first).
    static void flush(const ptr& s);
    static bool sent_up_to(const impl& s, std::uint64_t mark) noexcept;
    static std::uint64_t queued(const impl& s) noexcept;
    static beast::error_code write_error(const impl& s) noexcept;
    static bool waits_for_input(const impl& s) noexcept;
    enum class receive { data, would_block, failed };
    /// release_input_when_idle: what the socket holds now, without waiting.
    static receive receive_now(impl& s, beast::error_code& ec);
    /// At the end of a read's step: input not taken yet moves to the connection's own
    /// buffer; with release_input_when_idle, an empty one goes.
    static void keep_input(impl& s);
    /// Where the next read from the socket goes, and what it brought.
    static net::mutable_buffer input_room(impl& s);
    static void input_done(impl& s, std::size_t n);
    /// The error for a failed socket read (end of stream: eof or stream_truncated).
    static beast::error_code read_error(impl& s, beast::error_code ec);
    static beast::tcp_stream& tcp(impl& s) noexcept;
    /// A waiter for written output: completes (operation_aborted) on the next progress.
    static net::steady_timer& progress(impl& s) noexcept;
    void close_socket() noexcept;

    /// Reads from the socket into the input, then calls self again.
    template <class Self>
    static void read_socket(const ptr& s, Self& self)
    {
        tcp(*s).async_read_some(input_room(*s), std::move(self));
    }

    /// Whether the output up to mark is written: true; an error: ec; otherwise false (wait
    /// on progress()).
    static bool written_up_to(const impl& s, std::uint64_t mark, beast::error_code& ec) noexcept
    {
        if (sent_up_to(s, mark)) {
            return true;
        }
        ec = write_error(s);
        return static_cast<bool>(ec);
    }

    struct handshake_op
    {
        ptr s;
        enum { start, reading, waiting, posted } state = start;
        template <class Self>
        void operator()(Self& self, beast::error_code ec = {}, std::size_t n = 0)
        {
            if (state == posted) {
                return self.complete(ec);
            }
            if (state == reading) {
                if (ec) {
                    return self.complete(read_error(*s, ec));
                }
                input_done(*s, n);
            }
            if (state == waiting) {
                ec = {};  // the progress timer's operation_aborted: look again
            } else {
                const step next = handshake(*s, ec);
                flush(s);
                if (ec) {
                    return self.complete(ec);
                }
                if (next == step::read) {
                    state = reading;
                    return read_socket(s, self);
                }
            }
            // Done: once the last flight (and any session ticket) is written.
            if (!written_up_to(*s, queued(*s), ec)) {
                state = waiting;
                return progress(*s).async_wait(std::move(self));
            }
            if (state == start) {  // never from inside the initiating call
                state = posted;
                // (The executor first: the handler's construction moves s away.)
                auto ex = tcp(*s).get_executor();
                return net::post(ex, beast::bind_front_handler(std::move(self), ec));
            }
            self.complete(ec);
        }
    };

    template <class Buffers>
    struct read_op
    {
        ptr s;
        Buffers buffers;
        enum { start, reading, waiting, posted } state = start;
        template <class Self>
        void operator()(Self& self, beast::error_code ec = {}, std::size_t n = 0)
        {
            if (state == posted) {
                return self.complete(ec, n);
            }
            if (state == reading) {
                if (ec) {
                    return self.complete(read_error(*s, ec), 0);
                }
                input_done(*s, n);
            }
            if (state == waiting && ec) {  // the socket closed under the wait
                return self.complete(ec, 0);
            }
            // SSL_read hands out one record's worth at most: the first buffer is enough.
            net::mutable_buffer into;
            for (const net::mutable_buffer b : beast::buffers_range_ref(buffers)) {
                if (b.size() > 0) {
                    into = b;
                    break;
                }
            }
            std::size_t got = 0;
            step next = step::done;
            // Woken by a readable socket (release_input_when_idle): receive first.
            bool receive_first = state == waiting;
            for (;;) {
                if (!receive_first) {
                    next = into.size() == 0 ? step::done
                                            : read_into(*s, into.data(), into.size(), got, ec);
                    if (next != step::read || !waits_for_input(*s)) {
                        break;
                    }
                }
                receive_first = false;
                const receive r = receive_now(*s, ec);
                if (r != receive::data) {
                    next = r == receive::would_block ? step::read : step::done;
                    break;
                }
            }
            if (waits_for_input(*s)) {
                keep_input(*s);
            }
            flush(s);  // what reading made (an alert, an answer to a key update)
            if (next == step::read && waits_for_input(*s)) {
                state = waiting;
                return tcp(*s).socket().async_wait(net::socket_base::wait_read, std::move(self));
            }
            if (next == step::read) {
                state = reading;
                return read_socket(s, self);
            }
            if (state == start) {
                state = posted;
                // (The executor first: the handler's construction moves s away.)
                auto ex = tcp(*s).get_executor();
                return net::post(ex, beast::bind_front_handler(std::move(self), ec, got));
            }
            self.complete(ec, got);
        }
    };

    template <class Buffers>
    struct write_op
    {
        ptr s;
        Buffers buffers;
        enum { start, waiting, posted } state = start;
        std::uint64_t mark = 0;  ///< the output written up to here carries all of it
        std::size_t size = 0;
        template <class Self>
        void operator()(Self& self, beast::error_code ec = {}, std::size_t /*n*/ = 0)
        {
            if (state == posted) {
                return self.complete(ec, ec ? 0 : size);
            }
            if (state == waiting) {
                ec = {};
            } else {
                ec = write_error(*s);
                for (const net::const_buffer b : beast::buffers_range_ref(buffers)) {
                    if (ec) {
                        break;
                    }
                    encrypt(*s, b.data(), b.size(), ec);
                    size += b.size();
                }
                mark = queued(*s);
                flush(s);
            }
            if (!ec && !written_up_to(*s, mark, ec)) {
                state = waiting;
                return progress(*s).async_wait(std::move(self));
            }
            if (state == start) {
                state = posted;
                // (The executor first: the handler's construction moves s away.)
                auto ex = tcp(*s).get_executor();
                return net::post(ex, beast::bind_front_handler(std::move(self), ec, 0));
            }
            self.complete(ec, ec ? 0 : size);
        }
    };

    /// close_notify, then (teardown only) the TCP teardown.
    struct shutdown_op
    {
        ptr s;
        bool then_teardown = false;
        beast::role_type role = beast::role_type::server;
        enum { start, waiting, tearing, posted } state = start;
        template <class Self>
        void operator()(Self& self, beast::error_code ec = {})
        {
            if (state == posted || state == tearing) {
                return self.complete(ec);
            }
            if (state == waiting) {
                ec = {};
            } else {
                shutdown(*s);
                flush(s);
            }
            if (!written_up_to(*s, queued(*s), ec)) {
                state = waiting;
                return progress(*s).async_wait(std::move(self));
            }
            if (then_teardown) {
                // Whether close_notify went out or not, the TCP connection ends the same way.
                state = tearing;
                using websocket::async_teardown;
                return async_teardown(role, tcp(*s).socket(), std::move(self));
            }
            if (state == start) {
                state = posted;
                // (The executor first: the handler's construction moves s away.)
                auto ex = tcp(*s).get_executor();
                return net::post(ex, beast::bind_front_handler(std::move(self), ec));
            }
            self.complete(ec);
        }
    };

    ptr impl_;
};

} // namespace kernelgate::gateway
