// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/tls_stream.hpp"
#include "gateway/quiet_release.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <openssl/bio.h>

namespace kernelgate::gateway {

namespace {

/// Input buffer sizes: while the peer sends little, and while its reads fill the buffer.
constexpr std::size_t k_quiet_input = 4 * 1024;
constexpr std::size_t k_busy_input = 64 * 1024;
/// TLS 1.3 adds 22 bytes to each record of up to 16 KiB (TLS 1.2 with AES-GCM, 29).
constexpr std::size_t k_record = 16 * 1024;
constexpr std::size_t k_record_overhead = 32;

beast::error_code ssl_error(unsigned long e)
{
    return {static_cast<int>(e), net::error::get_ssl_category()};
}

} // namespace

struct tls_stream::impl
{
    impl(beast::tcp_stream&& next, net::ssl::context& ctx)
        : tcp(std::move(next)), progress(tcp.get_executor()), release_timer(tcp.get_executor())
    {
        progress.expires_at(net::steady_timer::time_point::max());
        ssl = SSL_new(ctx.native_handle());
        if (ssl == nullptr) {
            throw std::runtime_error("TLS: SSL_new failed");
        }
        BIO* bio = BIO_new(bio_method());
        if (bio == nullptr) {
            SSL_free(ssl);
            throw std::runtime_error("TLS: BIO_new failed");
        }
        BIO_set_data(bio, this);
        BIO_set_init(bio, 1);
        SSL_set_bio(ssl, bio, bio);  // one reference, for both directions
        SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
        SSL_set_accept_state(ssl);
    }
    ~impl() { SSL_free(ssl); }
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;

    beast::tcp_stream tcp;
    SSL* ssl = nullptr;

    // Input: bytes received, [in_begin, in_end) of in_data not yet taken by OpenSSL. in_data
    // is `in`, or (release_input_when_idle, within one step of a read) the thread's scratch.
    std::unique_ptr<char[]> in;
    std::size_t in_cap = 0;
    const char* in_data = nullptr;
    std::size_t in_begin = 0;
    std::size_t in_end = 0;
    bool in_quiet = true;  ///< the last read did not fill its buffer
    bool wait_for_input = false;  ///< see release_input_when_idle

    // Output: records made; pending goes out after flushing, the send in flight.
    std::string pending;
    std::string flushing;
    bool writing = false;
    std::uint64_t queued = 0;  ///< bytes of records made so far
    std::uint64_t sent = 0;    ///< of those, written to the socket
    beast::error_code write_error;
    net::steady_timer progress;  ///< waiters for written output; cancelled on progress
    net::steady_timer release_timer;  ///< lets the output buffers go (release_when_quiet)
    bool release_armed = false;

    static BIO_METHOD* bio_method();
};

BIO_METHOD* tls_stream::impl::bio_method()
{
    static BIO_METHOD* const method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                     "kernelgate tls_stream");
        if (m == nullptr) {
            throw std::runtime_error("TLS: BIO_meth_new failed");
        }
        // Records made are appended to the output; never short, never "retry".
        BIO_meth_set_write_ex(m, [](BIO* b, const char* data, std::size_t n, std::size_t* done) {
            auto* s = static_cast<impl*>(BIO_get_data(b));
            BIO_clear_retry_flags(b);
            s->pending.append(data, n);
            s->queued += n;
            *done = n;
            return 1;
        });
        // Input received so far; none left: "retry" (SSL_ERROR_WANT_READ).
        BIO_meth_set_read_ex(m, [](BIO* b, char* out, std::size_t n, std::size_t* done) {
            auto* s = static_cast<impl*>(BIO_get_data(b));
            BIO_clear_retry_flags(b);
            const std::size_t avail = s->in_end - s->in_begin;
            if (avail == 0) {
                BIO_set_retry_read(b);
                *done = 0;
                return 0;
            }
            const std::size_t take = std::min(n, avail);
            std::memcpy(out, s->in_data + s->in_begin, take);
            s->in_begin += take;
            *done = take;
            return 1;
        });
        BIO_meth_set_ctrl(m, [](BIO* b, int cmd, long /*num*/, void* /*ptr*/) -> long {
            switch (cmd) {
            case BIO_CTRL_FLUSH:
                return 1;
            case BIO_CTRL_PENDING: {
                const auto* s = static_cast<impl*>(BIO_get_data(b));
                return static_cast<long>(s->in_end - s->in_begin);
            }
            default:
                return 0;
            }
        });
        return m;
    }();
    return method;
}

tls_stream::tls_stream(beast::tcp_stream&& next, net::ssl::context& ctx)
    : impl_(std::make_shared<impl>(std::move(next), ctx))
{
}

tls_stream::~tls_stream()
{
    // Operations in flight hold the state: closing the socket ends them.
    close_socket();
}

void tls_stream::close_socket() noexcept
{
    if (impl_) {
        beast::error_code ignored;
        impl_->tcp.socket().close(ignored);
        impl_->release_timer.cancel();
        impl_->progress.cancel();
    }
}

tls_stream::executor_type tls_stream::get_executor() noexcept
{
    return impl_->tcp.get_executor();
}
tls_stream::next_layer_type& tls_stream::next_layer() noexcept
{
    return impl_->tcp;
}
const tls_stream::next_layer_type& tls_stream::next_layer() const noexcept
{
    return impl_->tcp;
}
std::size_t tls_stream::unsent() const noexcept
{
    return static_cast<std::size_t>(impl_->queued - impl_->sent);
}
std::size_t tls_stream::output_capacity() const noexcept
{
    return held_capacity(impl_->pending) + held_capacity(impl_->flushing);
}
std::size_t tls_stream::input_capacity() const noexcept
{
    return impl_->in_cap;
}
void tls_stream::release_input_when_idle(bool on) noexcept
{
    impl_->wait_for_input = on;
}
bool tls_stream::waits_for_input(const impl& s) noexcept
{
    return s.wait_for_input;
}

beast::tcp_stream& tls_stream::tcp(impl& s) noexcept
{
    return s.tcp;
}
net::steady_timer& tls_stream::progress(impl& s) noexcept
{
    return s.progress;
}
bool tls_stream::sent_up_to(const impl& s, std::uint64_t mark) noexcept
{
    return s.sent >= mark;
}
std::uint64_t tls_stream::queued(const impl& s) noexcept
{
    return s.queued;
}
beast::error_code tls_stream::write_error(const impl& s) noexcept
{
    return s.write_error;
}

tls_stream::step tls_stream::read_into(impl& s, void* data, std::size_t size, std::size_t& got,
                                       beast::error_code& ec)
{
    ERR_clear_error();
    const int r = SSL_read_ex(s.ssl, data, size, &got);
    if (r == 1) {
        return step::done;
    }
    got = 0;
    switch (SSL_get_error(s.ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return step::read;
    case SSL_ERROR_ZERO_RETURN:  // the peer's close_notify
        ec = net::error::eof;
        return step::done;
    default: {
        const unsigned long e = ERR_get_error();
        ec = e != 0 ? ssl_error(e) : beast::error_code(net::ssl::error::stream_truncated);
        ERR_clear_error();
        return step::done;
    }
    }
}

void tls_stream::encrypt(impl& s, const void* data, std::size_t size, beast::error_code& ec)
{
    if (size == 0) {
        return;
    }
    // The records go straight into the output: room for all of them at once.
    s.pending.reserve(s.pending.size() + size + (size / k_record + 1) * k_record_overhead);
    ERR_clear_error();
    std::size_t done = 0;
    if (SSL_write_ex(s.ssl, data, size, &done) != 1 || done != size) {
        const unsigned long e = ERR_get_error();
        ec = e != 0 ? ssl_error(e) : beast::error_code(net::error::shut_down);
        ERR_clear_error();
    }
}

tls_stream::step tls_stream::handshake(impl& s, beast::error_code& ec)
{
    ERR_clear_error();
    const int r = SSL_do_handshake(s.ssl);
    if (r == 1) {
        return step::done;
    }
    if (SSL_get_error(s.ssl, r) == SSL_ERROR_WANT_READ) {
        return step::read;
    }
    const unsigned long e = ERR_get_error();
    ec = e != 0 ? ssl_error(e) : beast::error_code(net::ssl::error::stream_truncated);
    ERR_clear_error();
    return step::done;
}

void tls_stream::shutdown(impl& s)
{
    ERR_clear_error();
    if (SSL_is_init_finished(s.ssl) != 0) {
        SSL_shutdown(s.ssl);  // appends close_notify; the peer's is not awaited
        // The alert's record went to the output, but OpenSSL keeps the buffer it made it in
        // (16 KiB) while the TCP connection winds down: let it go now.
        SSL_free_buffers(s.ssl);
    }
    ERR_clear_error();
}

net::mutable_buffer tls_stream::input_room(impl& s)
{
    if (s.in_begin == s.in_end) {
        s.in_begin = s.in_end = 0;
    }
    const std::size_t want = s.in_quiet ? k_quiet_input : k_busy_input;
    const std::size_t kept = s.in_end - s.in_begin;
    if (s.in_cap != want || s.in_begin > 0) {
        // A new size (quiet or busy), or what OpenSSL left to the front: compact. OpenSSL
        // takes a record's bytes as they come, so little is ever left over.
        const std::size_t cap = std::max(want, kept + k_quiet_input);
        if (cap != s.in_cap) {
            auto fresh = std::make_unique<char[]>(cap);
            if (kept > 0) {
                std::memcpy(fresh.get(), s.in.get() + s.in_begin, kept);
            }
            s.in = std::move(fresh);
            s.in_cap = cap;
            s.in_data = s.in.get();
        } else if (kept > 0) {
            std::memmove(s.in.get(), s.in.get() + s.in_begin, kept);
        }
        s.in_begin = 0;
        s.in_end = kept;
    }
    return {s.in.get() + s.in_end, s.in_cap - s.in_end};
}

namespace {
/// Where reads that wait for input receive: bytes OpenSSL does not take at once are copied
/// to the connection's own buffer before the step that received them ends.
thread_local std::array<char, k_busy_input> t_scratch;
} // namespace

tls_stream::receive tls_stream::receive_now(impl& s, beast::error_code& ec)
{
    // OpenSSL asks for input only once it has taken every byte received: nothing is kept.
    for (;;) {
        const ssize_t n = ::recv(s.tcp.socket().native_handle(), t_scratch.data(),
                                 t_scratch.size(), MSG_DONTWAIT);
        if (n > 0) {
            s.in_data = t_scratch.data();
            s.in_begin = 0;
            s.in_end = static_cast<std::size_t>(n);
            return receive::data;
        }
        if (n == 0) {
            ec = read_error(s, net::error::eof);
            return receive::failed;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return receive::would_block;
        }
        ec.assign(errno, boost::system::system_category());
        return receive::failed;
    }
}

void tls_stream::keep_input(impl& s)
{
    const std::size_t kept = s.in_end - s.in_begin;
    if (s.in_data != s.in.get() && kept > 0) {
        // Records after the one handed up: into a buffer of the connection's own.
        auto own = std::make_unique<char[]>(kept);
        std::memcpy(own.get(), s.in_data + s.in_begin, kept);
        s.in = std::move(own);
        s.in_cap = kept;
        s.in_begin = 0;
        s.in_end = kept;
    } else if (kept == 0 && s.wait_for_input) {
        s.in.reset();  // idle: no input buffer at all
        s.in_cap = 0;
        s.in_begin = s.in_end = 0;
    }
    s.in_data = s.in.get();
}

void tls_stream::input_done(impl& s, std::size_t n)
{
    s.in_quiet = s.in_end + n < s.in_cap;  // it did not fill the buffer
    s.in_end += n;
}

beast::error_code tls_stream::read_error(impl& s, beast::error_code ec)
{
    if (ec == net::error::eof) {
        // Between records (nothing received and not taken, no partial record inside
        // OpenSSL), a close without close_notify is a plain end of stream.
        const bool between = s.in_begin == s.in_end && SSL_has_pending(s.ssl) == 0;
        return between ? ec : beast::error_code(net::ssl::error::stream_truncated);
    }
    return ec;
}

void tls_stream::flush(const ptr& s)
{
    if (s->writing || s->pending.empty()) {
        return;
    }
    if (s->write_error) {
        s->pending.clear();
        return;
    }
    s->writing = true;
    s->flushing.swap(s->pending);
    // One send at once, without waiting: all of it, unless the peer is behind.
    const ssize_t n = ::send(s->tcp.socket().native_handle(), s->flushing.data(),
                             s->flushing.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    std::size_t done = 0;
    beast::error_code ec;
    if (n >= 0) {
        done = static_cast<std::size_t>(n);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        ec.assign(errno, boost::system::system_category());
    }
    s->sent += done;
    auto finished = [](const ptr& st, beast::error_code e) {
        st->writing = false;
        st->flushing.clear();
        if (e) {
            st->write_error = e;
            st->pending.clear();
        }
        release_when_quiet(st);
        st->progress.cancel();  // waiters look again
        flush(st);
    };
    if (ec || done == s->flushing.size()) {
        finished(s, ec);
        return;
    }
    net::async_write(s->tcp,
                     net::buffer(s->flushing.data() + done, s->flushing.size() - done),
                     [s, finished](beast::error_code e, std::size_t m) {
                         s->sent += m;
                         finished(s, e);
                     });
}

} // namespace kernelgate::gateway
