// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <map>
#include <optional>
#include <set>
#include <vector>
#include <string>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/ssl/context.hpp>

#include "auth/token_check.hpp"
#include "auth/token_store.hpp"
#include "common/asio_fwd.hpp"
#include "gateway/config.hpp"
#include "common/heap_keeper.hpp"
#include "gateway/event_loop.hpp"
#include "sessions/registry.hpp"

namespace kernelgate::gateway {

class ws_session;

/// Counters exported on /metrics.
struct server_metrics
{
    std::uint64_t http_requests = 0;
    std::uint64_t http_2xx = 0, http_4xx = 0, http_5xx = 0;
    std::uint64_t auth_failures = 0;
    std::uint64_t auth_throttled = 0;
    std::uint64_t ws_closed_auth = 0;      ///< closed with 4001 (revoked / expired / disabled)
    std::uint64_t token_db_wakeups = 0;    ///< token database changes seen through inotify
    std::uint64_t ws_opened = 0;
    std::uint64_t ws_messages_in = 0;
    std::uint64_t ws_messages_out = 0;
    std::uint64_t ws_bytes_out = 0;
    std::uint64_t ws_socket_writes = 0;  ///< writes to client sockets (each carries a batch)
    std::uint64_t ws_bad_frames = 0;
    std::uint64_t ws_dropped_slow = 0;       ///< output dropped for slow clients
    std::uint64_t ws_closed_slow = 0;        ///< clients closed for exceeding the hard limit
    std::uint64_t ws_closed_silent = 0;      ///< clients dropped for not answering a ping
    std::uint64_t ws_close_deadline = 0;     ///< close handshakes cut at the deadline
    std::uint64_t ws_encodings = 0;          ///< frames encoded (once per format per message)
};

/// The HTTP/WebSocket front: accepts connections, authenticates, routes, and owns the live
/// WebSocket sessions for graceful shutdown.
///
/// Thread safety: event-loop thread only (the gateway runs one io_context thread).
class server
{
public:
    /// tls: when set, every connection is TLS (built once at startup by make_tls_context).
    server(net::io_context& ioc, server_config cfg, sessions::registry& reg,
           auth::token_store& tokens, net::ssl::context* tls = nullptr);
    net::ssl::context* tls() const noexcept { return tls_; }
    ~server();

    /// Binds and starts accepting. Throws on bind failure. Returns the bound port.
    std::uint16_t listen();
    /// Stops accepting, closes WebSockets (1001), shuts kernels down, then calls done.
    void stop(std::function<void()> done);

    const server_config& config() const noexcept { return cfg_; }
    sessions::registry& registry() noexcept { return reg_; }
    const sessions::registry& registry() const noexcept { return reg_; }
    server_metrics& metrics() noexcept { return metrics_; }
    /// The loop that runs this server, for /metrics (busy polling); may stay unset.
    void set_event_loop(const event_loop* loop) noexcept { loop_ = loop; }
    const event_loop* loop() const noexcept { return loop_; }
    /// The process's heap keeper (nullptr: none): ticked once a second with the token
    /// expiry check, so an idle gateway still wakes once a second; its numbers go to /metrics.
    void set_heap_keeper(common::heap_keeper* heap) noexcept { heap_ = heap; }
    const common::heap_keeper* heap_keeper() const noexcept { return heap_; }
    /// Result of checking a request's credentials.
    struct auth_result
    {
        std::optional<auth::identity> who;
        bool throttled = false;
        std::chrono::seconds retry_after{0};
    };
    /// Authenticates a token (from the Authorization header or ?token=) for a request from
    /// `source` (an IP address). Failures are counted per source; past the limit the answer is
    /// "throttled" without looking at the token.
    auth_result authenticate(std::string_view authorization, std::string_view query_token,
                             const std::string& source);
    auth::token_store& tokens() noexcept { return tokens_; }
    /// Closes every WebSocket opened with one of these token ids (4001) and returns how many.
    std::size_t close_sockets_of(const std::vector<std::string>& token_ids,
                                 const std::string& reason);
    /// Re-checks the tokens of all open WebSockets now (after a revoke or disable).
    void recheck_tokens();
    bool stopping() const noexcept { return stopping_; }
    /// Whether token changes arrive through inotify (else the timer polls).
    bool watching_tokens() const noexcept { return token_watch_.has_value(); }
    std::chrono::steady_clock::time_point started() const noexcept { return started_; }

    void add_ws(const std::shared_ptr<ws_session>& s);
    void remove_ws(ws_session* s);
    std::size_t ws_count() const noexcept { return ws_.size(); }
    std::size_t ws_queued_bytes() const;
    /// Bytes the WebSocket sessions hold for reading their clients' messages.
    std::size_t ws_read_buffer_bytes() const;
    std::size_t http_connections() const noexcept { return http_connections_; }
    void http_connection_delta(int d) { http_connections_ += static_cast<std::size_t>(d); }

private:
    net::awaitable<void> accept_loop();
    void watch_tokens();
    void start_token_watch();
    /// The heap keeper's look, once a second (on the token timer's wake-ups).
    void tick_heap();
    void read_token_events();
    void check_tokens();

    struct failures
    {
        std::chrono::steady_clock::time_point window_start;
        int count = 0;
    };

    net::io_context& ioc_;
    server_config cfg_;
    sessions::registry& reg_;
    auth::token_store& tokens_;
    net::ssl::context* tls_;
    net::steady_timer token_timer_;
    std::int64_t token_version_ = 0;
    std::chrono::steady_clock::time_point last_expiry_check_{};
    std::chrono::steady_clock::time_point last_heap_tick_{};
    /// inotify on the token database's directory (when the system has it): wakes the loop
    /// when another process commits, instead of a poll every token_poll_interval.
    std::optional<net::posix::stream_descriptor> token_watch_;
    std::string token_db_name_;
    alignas(8) std::array<char, 4096> token_events_{};
    std::map<std::string, failures> auth_failures_;  // by source address
    net::ip::tcp::acceptor acceptor_;
    server_metrics metrics_;
    const event_loop* loop_ = nullptr;
    common::heap_keeper* heap_ = nullptr;
    std::set<std::shared_ptr<ws_session>> ws_;
    std::size_t http_connections_ = 0;
    bool stopping_ = false;
    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

/// A server TLS context from PEM files; with client_ca, clients must present a certificate
/// signed by it (mutual TLS). Throws on unreadable or mismatched files.
std::unique_ptr<net::ssl::context> make_tls_context(const std::string& certfile,
                                                    const std::string& keyfile,
                                                    const std::string& client_ca);

/// Runs one HTTP connection (requests until close, or the WebSocket upgrade).
net::awaitable<void> run_http_session(server& srv, net::ip::tcp::socket socket);

} // namespace kernelgate::gateway
