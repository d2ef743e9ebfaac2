// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <variant>

#include "common/asio_fwd.hpp"
#include "auth/token_store.hpp"
#include "gateway/batching_stream.hpp"
#include "gateway/tls_stream.hpp"
#include "gateway/routes.hpp"
#include "gateway/ws_frames.hpp"
#include "sessions/kernel.hpp"

namespace kernelgate::gateway {

class server;

/// One client WebSocket on /api/kernels/{id}/channels.
///
/// Reads frames (legacy JSON / legacy binary / v1), checks the channel, and hands messages to
/// the kernel; receives kernel events and writes them into a batching layer (one send() per
/// burst) whose buffer is bounded by watermarks (see server_config).
///
/// Deadlines run on the session's own timer, not on Beast's websocket timeouts: the upgrade
/// must be written within 30 s; a client that sent nothing for a ping interval is pinged and
/// dropped if still silent one interval later; a close handshake the client does not finish
/// within 5 s ends by closing the TCP connection. Every deadline acts by closing the socket,
/// so a read waiting behind a close always ends with operation_aborted. (Boost 1.74's own
/// timer can fire a stale expiry into a closing stream and fail an assertion in its read.)
///
/// Thread safety: event-loop thread only.
class ws_session final : public sessions::client_sink,
                         public std::enable_shared_from_this<ws_session>
{
public:
    using plain_ws = websocket::stream<batching_stream<beast::tcp_stream>>;
    using tls_ws = websocket::stream<batching_stream<tls_stream>>;

    ws_session(server& srv, beast::tcp_stream&& stream, sessions::kernel_ptr k,
               std::string session_id, ws_format fmt, auth::identity who);
    ws_session(server& srv, tls_stream&& stream, sessions::kernel_ptr k,
               std::string session_id, ws_format fmt, auth::identity who);
    ~ws_session() override;

    /// Bytes read past the upgrade request (frames a client sent without waiting for the
    /// 101): the read loop takes them first. Call before run().
    void preload(std::string_view early_input)
    {
        std::visit([&](auto& ws) { ws.next_layer().preload(early_input); }, ws_);
    }
    /// Completes the upgrade (answering with the chosen subprotocol) and starts the read
    /// loop, which keeps the session alive until the connection ends. `self` (this session)
    /// keeps it alive meanwhile: the coroutine may start after whoever made the session has
    /// let it go.
    net::awaitable<void> run(std::shared_ptr<ws_session> self, request req);

    void deliver(const sessions::kernel_event_ptr& ev) override;
    bool behind() const override { return over_high_; }
    /// Either side started the close (or it has not opened yet).
    bool leaving() const override
    {
        return !open_ || closing_ ||
               std::visit([](const auto& ws) { return !ws.is_open(); }, ws_);
    }
    void close_from_kernel(std::uint16_t code, const std::string& reason) override;
    const std::string& session_id() const override { return session_id_; }
    /// Bytes accepted for this client and not yet written to its socket.
    std::size_t queued_bytes() const noexcept
    {
        return std::visit([](const auto& ws) { return ws.next_layer().buffered(); }, ws_);
    }
    /// Bytes held for reading the client's messages (a large message's buffer does not
    /// outlive it; none while waiting for a message, from the keep-alive tick on).
    std::size_t read_buffer_capacity() const noexcept { return read_buf_.capacity(); }
    const auth::identity& who() const noexcept { return who_; }
    /// The session is closing or closed (a close frame went out, or the connection ended).
    bool closing() const noexcept { return closing_ || !open_; }

private:
    void send_frame(const std::string& data, bool binary);
    void on_flushed();
    void start_close(std::uint16_t code, std::string reason);
    void handle_frame(bool binary);
    /// The read loop: completion handlers holding the session (no coroutine frames while a
    /// connection waits). read_next waits for a message to begin, holding no read buffer;
    /// on_message_begun reads the rest into read_buf_ (read_message; straight away when a
    /// burst of input is at hand); on_message hands it on and loops; end_reads detaches the
    /// session when the connection has ended.
    void read_next();
    void on_message_begun(beast::error_code ec);
    void read_message();
    void on_message(beast::error_code ec);
    void end_reads(beast::error_code ec);

    enum class deadline { upgrade, keepalive, close };
    void arm(std::chrono::steady_clock::duration after, deadline what);
    void on_deadline(deadline what);
    /// Closes the TCP connection under the WebSocket: pending operations end at once.
    void cut();
    /// Until it is open and counted among the server's WebSockets, the connection counts
    /// as an HTTP one (as before the upgrade), for the connection limit.
    void count_as_http(bool yes);

    server& srv_;
    net::steady_timer timer_;  ///< declared before ws_: built from the stream's executor
    template <class F>
    decltype(auto) with_ws(F&& f)
    {
        return std::visit(std::forward<F>(f), ws_);
    }

    std::variant<plain_ws, tls_ws> ws_;
    sessions::kernel_ptr kernel_;
    std::string session_id_;
    ws_format format_;
    auth::identity who_;
    beast::flat_buffer read_buf_;
    bool closing_ = false;
    bool open_ = false;
    bool over_high_ = false;
    bool finished_ = false;        ///< the read loop has ended
    bool awaiting_message_ = false;  ///< the read loop waits for a message; read_buf_ is free
    char no_bytes_ = 0;  ///< where the zero-byte wait for a message "reads" to
    bool counted_as_http_ = false;  ///< see count_as_http
    bool ping_unanswered_ = false;  ///< a keep-alive ping went out and nothing came since
    std::uint64_t seen_reads_ = 0;  ///< the stream's socket_reads() at the last keep-alive tick
    std::uint64_t dropped_ = 0;
};

} // namespace kernelgate::gateway
