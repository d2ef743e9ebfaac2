// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/ws_session.hpp"

#include <spdlog/spdlog.h>

#include "gateway/server.hpp"

namespace kernelgate::gateway {

namespace zp = zmq_protocol;

namespace {
/// The 101 response must be written by then.
constexpr auto k_upgrade_deadline = std::chrono::seconds(30);
/// A client that has not answered our close frame by then loses the connection.
constexpr auto k_close_deadline = std::chrono::seconds(5);
/// Read buffers up to this size are kept from one message to the next; a larger one goes
/// with the message that needed it (a client that once sent 60 MB must not hold 60 MB of
/// the gateway's memory for the rest of its session).
constexpr std::size_t k_keep_read_buffer = 64 * 1024;
} // namespace

ws_session::ws_session(server& srv, beast::tcp_stream&& stream, sessions::kernel_ptr k,
                       std::string session_id, ws_format fmt, auth::identity who)
    : srv_(srv),
      timer_(stream.get_executor()),
      ws_(std::in_place_type<plain_ws>, std::move(stream)),
      kernel_(std::move(k)),
      session_id_(std::move(session_id)),
      format_(fmt),
      who_(std::move(who))
{
    count_as_http(true);
}

ws_session::ws_session(server& srv, tls_stream&& stream,
                       sessions::kernel_ptr k, std::string session_id, ws_format fmt,
                       auth::identity who)
    : srv_(srv),
      timer_(stream.get_executor()),
      ws_(std::in_place_type<tls_ws>, std::move(stream)),
      kernel_(std::move(k)),
      session_id_(std::move(session_id)),
      format_(fmt),
      who_(std::move(who))
{
    count_as_http(true);
    // Every read here is bounded by the session's deadlines, which close the socket: a
    // connection waiting for its client holds no input buffer.
    std::get<tls_ws>(ws_).next_layer().next_layer().release_input_when_idle(true);
}

ws_session::~ws_session()
{
    count_as_http(false);
}

void ws_session::count_as_http(bool yes)
{
    if (yes != counted_as_http_) {
        counted_as_http_ = yes;
        srv_.http_connection_delta(yes ? 1 : -1);
    }
}

net::awaitable<void> ws_session::run(std::shared_ptr<ws_session> self, request req)
{
    const auto& cfg = srv_.config();
    with_ws([](auto& ws) { beast::get_lowest_layer(ws).expires_never(); });
    // No Beast timeouts: the session's own timer handles every deadline (see the class
    // comment), and Beast answers pings and pongs as always.
    websocket::stream_base::timeout to{};
    to.handshake_timeout = websocket::stream_base::none();
    to.idle_timeout = websocket::stream_base::none();
    to.keep_alive_pings = false;
    const bool v1 = format_ == ws_format::v1;
    with_ws([&](auto& ws) {
        ws.set_option(to);
        ws.read_message_max(cfg.ws_max_message);
        ws.auto_fragment(false);
        ws.set_option(websocket::stream_base::decorator([v1](websocket::response_type& res) {
            res.set(http::field::server, "kernelgate");
            if (v1) {
                res.set(http::field::sec_websocket_protocol, std::string(v1_subprotocol));
            }
        }));
    });
    beast::error_code ec;
    arm(k_upgrade_deadline, deadline::upgrade);
    co_await with_ws([&](auto& ws) {
        return ws.async_accept(req, net::redirect_error(net::use_awaitable, ec));
    });
    req = {};  // the upgrade request's fields are not needed any more
    if (ec) {
        finished_ = true;
        timer_.cancel();
        spdlog::debug("ws accept failed: {}", ec.message());
        co_return;
    }
    open_ = true;
    seen_reads_ = with_ws([](auto& ws) { return ws.next_layer().socket_reads(); });
    arm(cfg.ws_ping_interval, deadline::keepalive);
    with_ws([&](auto& ws) {
        ws.next_layer().on_flushed([weak = weak_from_this()] {
            if (auto s = weak.lock()) {
                s->on_flushed();
            }
        });
        // Requests of one burst are held and leave for the kernel in one write, once the
        // burst is read (see zmtp_socket::send).
        ws.next_layer().on_input_drained([weak = weak_from_this()] {
            if (auto s = weak.lock()) {
                s->kernel_->release_client_sends();
            }
        });
    });
    ++srv_.metrics().ws_opened;
    srv_.add_ws(self);
    count_as_http(false);
    kernel_->attach(self);
    spdlog::info("ws open: kernel {} session {} format {} user {}", kernel_->id(), session_id_,
                 v1 ? "v1" : "legacy", who_.user);
    // The session goes on without this coroutine: the read loop below is a chain of
    // completion handlers that hold only the session, so an idle connection keeps no
    // coroutine frames.
    read_next();
}

void ws_session::read_next()
{
    read_buf_.clear();
    if (with_ws([](auto& ws) { return ws.next_layer().input_ahead(); })) {
        read_message();  // a burst is being read: the next message is at hand
        return;
    }
    // Wait for the next message with no buffer of ours: Beast reads its frame header and
    // first bytes into its own buffer and hands up nothing. Only then is the read buffer
    // prepared, so a connection with nothing to say holds none (and the keep-alive tick
    // frees the one a past message left, see on_deadline). (A real address, not null:
    // Beast's UTF-8 check of text frames does pointer arithmetic on it even for zero bytes.)
    awaiting_message_ = true;
    with_ws([this](auto& ws) {
        ws.async_read_some(net::mutable_buffer(&no_bytes_, 0),
                           [self = shared_from_this()](beast::error_code ec, std::size_t) {
                               self->on_message_begun(ec);
                           });
    });
}

void ws_session::on_message_begun(beast::error_code ec)
{
    awaiting_message_ = false;
    if (ec) {
        end_reads(ec);
        return;
    }
    if (with_ws([](auto& ws) { return ws.is_message_done(); })) {
        on_message(ec);  // an empty message
        return;
    }
    read_message();
}

void ws_session::read_message()
{
    with_ws([this](auto& ws) {
        ws.async_read(read_buf_, [self = shared_from_this()](beast::error_code e, std::size_t) {
            self->on_message(e);
        });
    });
}

void ws_session::on_message(beast::error_code ec)
{
    if (ec) {
        end_reads(ec);
        return;
    }
    try {
        handle_frame(with_ws([](auto& ws) { return ws.got_binary(); }));
    } catch (const std::exception& e) {
        // Nothing may escape into the event loop; this client's session ends, no other.
        spdlog::error("ws kernel {} session {}: internal error: {}", kernel_->id(), session_id_,
                      e.what());
        start_close(static_cast<std::uint16_t>(websocket::close_code::internal_error),
                    "internal error");
    }
    if (read_buf_.capacity() > k_keep_read_buffer) {
        read_buf_.clear();
        read_buf_.shrink_to_fit();
    }
    read_next();
}

void ws_session::end_reads(beast::error_code ec)
{
    kernel_->release_client_sends();  // what the last burst asked for
    open_ = false;
    finished_ = true;
    timer_.cancel();
    kernel_->detach(this);
    srv_.remove_ws(this);
    spdlog::info("ws closed: kernel {} session {} ({})", kernel_->id(), session_id_,
                 ec == websocket::error::closed ? "closed" : ec.message());
}

void ws_session::handle_frame(bool binary)
{
    ++srv_.metrics().ws_messages_in;
    const auto data = read_buf_.data();
    const std::string_view frame(static_cast<const char*>(data.data()), data.size());
    result<client_message> decoded = zp::errc::bad_frame;
    if (format_ == ws_format::v1) {
        decoded = binary ? decode_v1(frame) : result<client_message>(zp::errc::bad_frame);
    } else {
        decoded = binary ? decode_legacy_binary(frame) : decode_legacy_text(frame);
    }
    if (!decoded) {
        ++srv_.metrics().ws_bad_frames;
        if (decoded.error() == zp::errc::bad_channel) {
            // Jupyter Server drops messages for unknown channels; so do we.
            spdlog::warn("ws kernel {}: dropped message for a channel clients may not use",
                         kernel_->id());
            return;
        }
        spdlog::warn("ws kernel {}: bad frame: {}", kernel_->id(), decoded.error().message());
        start_close(static_cast<std::uint16_t>(websocket::close_code::bad_payload),
                    "malformed message: " + decoded.error().message());
        return;
    }
    zp::channel ch{};
    if (!zp::parse_channel(decoded->channel, ch) || ch == zp::channel::iopub) {
        ++srv_.metrics().ws_bad_frames;
        return;
    }
    if (!kernel_->send_from_client(*this, ch, std::move(decoded->msg), /*hold=*/true)) {
        spdlog::warn("ws kernel {}: kernel not reachable, message dropped", kernel_->id());
    }
}

void ws_session::deliver(const sessions::kernel_event_ptr& ev)
{
    if (leaving()) {
        // Closing: once the client's close frame has arrived, output would only delay the
        // answer to it.
        return;
    }
    const auto slot = static_cast<std::size_t>(format_);
    // Skippable output is dropped for a client that is behind, unless the kernel's output is
    // held back for its clients (then only the few messages already read arrive meanwhile).
    if (ev->droppable && over_high_ && !kernel_->holding_output()) {
        ++dropped_;
        ++srv_.metrics().ws_dropped_slow;
        return;
    }
    if (!ev->encoded[slot]) {
        ++srv_.metrics().ws_encodings;
        if (format_ == ws_format::v1) {
            ev->encoded[slot] = std::make_shared<const std::string>(
                encode_v1(zp::channel_name(ev->channel), ev->msg));
            ev->encoded_binary[slot] = true;
        } else {
            auto f = encode_legacy(zp::channel_name(ev->channel), ev->msg);
            ev->encoded_binary[slot] = f.binary;
            ev->encoded[slot] = std::make_shared<const std::string>(std::move(f.data));
        }
    }
    send_frame(*ev->encoded[slot], ev->encoded_binary[slot]);
}

void ws_session::send_frame(const std::string& data, bool binary)
{
    // The write only appends to the batching layer: it never blocks, and the frames of one
    // burst leave in one send().
    beast::error_code ec;
    with_ws([&](auto& ws) {
        ws.binary(binary);
        ws.write(net::buffer(data), ec);
    });
    if (ec) {
        return;  // the connection failed: the read loop ends and cleans up
    }
    auto& m = srv_.metrics();
    ++m.ws_messages_out;
    m.ws_bytes_out += data.size();
    const auto& cfg = srv_.config();
    const std::size_t queued = queued_bytes();
    if (queued > cfg.ws_hard_limit) {
        ++m.ws_closed_slow;
        spdlog::warn("ws kernel {} session {}: client too slow ({} bytes queued), closing",
                     kernel_->id(), session_id_, queued);
        start_close(static_cast<std::uint16_t>(websocket::close_code::try_again_later),
                    "client too slow: send queue limit exceeded");
        return;
    }
    if (queued > cfg.ws_high_watermark && !over_high_) {
        over_high_ = true;
        kernel_->client_backlog_changed(*this);
    }
}

void ws_session::on_flushed()
{
    ++srv_.metrics().ws_socket_writes;
    if (!over_high_ || queued_bytes() > srv_.config().ws_low_watermark) {
        return;
    }
    over_high_ = false;
    kernel_->client_backlog_changed(*this);
    if (dropped_ > 0 && open_ && !closing_) {
        const auto n_dropped = dropped_;
        dropped_ = 0;
        kernel_->notice(this, "[kernelgate] " + std::to_string(n_dropped) +
                                  " output messages were dropped because "
                                  "this client could not keep up\n");
    }
}

void ws_session::start_close(std::uint16_t code, std::string reason)
{
    if (closing_ || !open_) {
        return;
    }
    closing_ = true;
    if (reason.size() > 120) {
        reason.resize(120);  // a close reason must fit in a control frame
    }
    websocket::close_reason cr(static_cast<websocket::close_code>(code));
    cr.reason = std::move(reason);
    with_ws([&](auto& ws) {
        ws.next_layer().discard_pending();  // what has not started to go out is dropped
        ws.async_close(cr, [self = shared_from_this()](beast::error_code) {});
    });
    arm(k_close_deadline, deadline::close);
}

void ws_session::arm(std::chrono::steady_clock::duration after, deadline what)
{
    timer_.expires_after(after);  // cancels the wait in progress, if any
    timer_.async_wait([weak = weak_from_this(), what](beast::error_code ec) {
        if (ec) {
            return;  // cancelled: re-armed, or the session ended
        }
        if (auto s = weak.lock()) {
            s->on_deadline(what);
        }
    });
}

void ws_session::on_deadline(deadline what)
{
    // An expiry may already be queued when the timer is re-armed for something else, so each
    // handler checks that its own deadline still applies.
    if (finished_) {
        return;
    }
    switch (what) {
    case deadline::upgrade:
        if (!open_) {
            spdlog::warn("ws kernel {}: upgrade not written within {} s, closing", kernel_->id(),
                         k_upgrade_deadline.count());
            cut();
        }
        return;
    case deadline::close:
        if (closing_) {
            ++srv_.metrics().ws_close_deadline;
            spdlog::info("ws kernel {} session {}: close not answered within {} s, "
                         "connection closed",
                         kernel_->id(), session_id_, k_close_deadline.count());
            cut();
        }
        return;
    case deadline::keepalive:
        break;
    }
    if (closing_ || !open_) {
        return;  // the close deadline applies now
    }
    if (!with_ws([](auto& ws) { return ws.is_open(); })) {
        // The client started a close and Beast is ending the connection: that too must end.
        closing_ = true;
        arm(k_close_deadline, deadline::close);
        return;
    }
    if (awaiting_message_ && read_buf_.capacity() > 0) {
        // Between messages no operation refers to the buffer: a connection that was busy
        // a moment ago gives it back here (a busy one just prepares a new one).
        read_buf_.shrink_to_fit();
    }
    const auto reads = with_ws([](auto& ws) { return ws.next_layer().socket_reads(); });
    if (reads != seen_reads_) {
        seen_reads_ = reads;  // the client sent something: no ping needed
        ping_unanswered_ = false;
    } else if (ping_unanswered_) {
        ++srv_.metrics().ws_closed_silent;
        spdlog::info("ws kernel {} session {}: no answer to a ping within {} s, closing",
                     kernel_->id(), session_id_, srv_.config().ws_ping_interval.count());
        cut();
        return;
    } else {
        ping_unanswered_ = true;
        with_ws([&](auto& ws) {
            ws.async_ping({}, [self = shared_from_this()](beast::error_code) {});
        });
    }
    arm(srv_.config().ws_ping_interval, deadline::keepalive);
}

void ws_session::cut()
{
    beast::error_code ignored;
    with_ws([&](auto& ws) { beast::get_lowest_layer(ws).socket().close(ignored); });
}

void ws_session::close_from_kernel(std::uint16_t code, const std::string& reason)
{
    start_close(code, reason);
}

} // namespace kernelgate::gateway
