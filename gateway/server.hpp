// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "auth/token_check.hpp"
#include "common/asio_fwd.hpp"
#include "gateway/config.hpp"
#include "sessions/registry.hpp"

namespace kernelgate::gateway {

class ws_session;

/// Counters exported on /metrics.
struct server_metrics
{
    std::uint64_t http_requests = 0;
    std::uint64_t http_2xx = 0, http_4xx = 0, http_5xx = 0;
    std::uint64_t auth_failures = 0;
    std::uint64_t ws_opened = 0;
    std::uint64_t ws_messages_in = 0;
    std::uint64_t ws_messages_out = 0;
    std::uint64_t ws_bytes_out = 0;
    std::uint64_t ws_bad_frames = 0;
    std::uint64_t ws_dropped_slow = 0;       ///< output dropped for slow clients
    std::uint64_t ws_closed_slow = 0;        ///< clients closed for exceeding the hard limit
    std::uint64_t ws_encodings = 0;          ///< frames encoded (once per format per message)
};

/// The HTTP/WebSocket front: accepts connections, authenticates, routes, and owns the live
/// WebSocket sessions for graceful shutdown.
///
/// Thread safety: event-loop thread only (the gateway runs one io_context thread).
class server
{
public:
    server(net::io_context& ioc, server_config cfg, sessions::registry& reg,
           auth::static_token token);
    ~server();

    /// Binds and starts accepting. Throws on bind failure. Returns the bound port.
    std::uint16_t listen();
    /// Stops accepting, closes WebSockets (1001), shuts kernels down, then calls done.
    void stop(std::function<void()> done);

    const server_config& config() const noexcept { return cfg_; }
    sessions::registry& registry() noexcept { return reg_; }
    const sessions::registry& registry() const noexcept { return reg_; }
    server_metrics& metrics() noexcept { return metrics_; }
    bool authorized(std::string_view authorization, std::string_view query_token) const;
    bool stopping() const noexcept { return stopping_; }
    std::chrono::steady_clock::time_point started() const noexcept { return started_; }

    void add_ws(const std::shared_ptr<ws_session>& s);
    void remove_ws(ws_session* s);
    std::size_t ws_count() const noexcept { return ws_.size(); }
    std::size_t ws_queued_bytes() const;
    std::size_t http_connections() const noexcept { return http_connections_; }
    void http_connection_delta(int d) { http_connections_ += static_cast<std::size_t>(d); }

private:
    net::awaitable<void> accept_loop();

    net::io_context& ioc_;
    server_config cfg_;
    sessions::registry& reg_;
    auth::static_token token_;
    net::ip::tcp::acceptor acceptor_;
    server_metrics metrics_;
    std::set<std::shared_ptr<ws_session>> ws_;
    std::size_t http_connections_ = 0;
    bool stopping_ = false;
    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

/// Runs one HTTP connection (requests until close, or the WebSocket upgrade).
net::awaitable<void> run_http_session(server& srv, net::ip::tcp::socket socket);

} // namespace kernelgate::gateway
