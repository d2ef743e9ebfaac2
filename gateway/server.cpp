// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/server.hpp"

#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string_view>

#include <spdlog/spdlog.h>

#include "common/inotify_events.hpp"
#include "gateway/ws_session.hpp"

namespace kernelgate::gateway {

server::server(net::io_context& ioc, server_config cfg, sessions::registry& reg,
               auth::token_store& tokens, net::ssl::context* tls)
    : ioc_(ioc),
      cfg_(std::move(cfg)),
      reg_(reg),
      tokens_(tokens),
      tls_(tls),
      token_timer_(ioc),
      acceptor_(ioc)
{
    cfg_.base_url = normalize_base_url(cfg_.base_url);
    token_version_ = tokens_.change_counter();
    start_token_watch();
    watch_tokens();
}

void server::start_token_watch()
{
    // Another process (the admin CLI) may revoke a token or disable a user at any time. Its
    // commit writes the database's WAL file: inotify on the directory wakes the loop then, so
    // that revocation cuts connections at once while an idle gateway sleeps. Without inotify
    // (or if adding the watch fails) the timer polls instead.
    const std::filesystem::path db = tokens_.path();
    if (db.empty()) {
        return;
    }
    const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        spdlog::info("token changes: no inotify ({}), polling every {} ms", std::strerror(errno),
                     cfg_.token_poll_interval.count());
        return;
    }
    const std::filesystem::path dir = db.has_parent_path() ? db.parent_path() : ".";
    if (::inotify_add_watch(fd, dir.c_str(), IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO) <
        0) {
        spdlog::info("token changes: cannot watch the data directory ({}), polling every {} ms",
                     std::strerror(errno), cfg_.token_poll_interval.count());
        ::close(fd);
        return;
    }
    token_db_name_ = db.filename().string();
    token_watch_.emplace(ioc_, fd);
    spdlog::info("token changes: watching {} (inotify)", token_db_name_);
    read_token_events();
}

void server::read_token_events()
{
    token_watch_->async_read_some(
        net::buffer(token_events_), [this](const boost::system::error_code& ec, std::size_t n) {
            if (stopping_ || ec == net::error::operation_aborted) {
                return;
            }
            if (ec) {
                spdlog::warn("token changes: watch failed ({}), polling every {} ms",
                             ec.message(), cfg_.token_poll_interval.count());
                token_watch_.reset();
                return;
            }
            // Any change to the database, its WAL or its journal; or events were lost.
            bool changed = false;
            for_each_inotify_event(token_events_.data(), n,
                                   [&](int, std::uint32_t mask, std::string_view file) {
                                       changed |= (mask & IN_Q_OVERFLOW) != 0 ||
                                                  file.starts_with(token_db_name_);
                                   });
            if (changed) {
                ++metrics_.token_db_wakeups;
                check_tokens();
            }
            read_token_events();
        });
}

void server::watch_tokens()
{
    // With inotify the timer only checks expiry, once a second (and stands in should an
    // event be missed); without it, it polls SQLite's data_version (no I/O unless the file
    // changed).
    token_timer_.expires_after(token_watch_ ? std::chrono::milliseconds(1000)
                                            : cfg_.token_poll_interval);
    token_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec || stopping_) {
            return;
        }
        check_tokens();
        tick_heap();
        watch_tokens();
    });
}

void server::tick_heap()
{
    const auto now = std::chrono::steady_clock::now();
    if (heap_ == nullptr || !heap_->active() ||
        now - last_heap_tick_ < std::chrono::milliseconds(990)) {
        return;
    }
    last_heap_tick_ = now;
    if (heap_->tick()) {
        spdlog::debug("heap trimmed: memory use settled");
    }
}

void server::check_tokens()
{
    try {
        const auto v = tokens_.change_counter();
        const auto now = std::chrono::steady_clock::now();
        if (v != token_version_ || now - last_expiry_check_ >= std::chrono::seconds(1)) {
            token_version_ = v;
            last_expiry_check_ = now;
            recheck_tokens();
        }
    } catch (const std::exception& e) {
        spdlog::error("token check failed: {}", e.what());
    }
}

void server::recheck_tokens()
{
    std::set<std::string> ids;
    for (const auto& s : ws_) {
        if (!s->who().token_id.empty() && !cfg_.allow_unauthenticated) {
            ids.insert(s->who().token_id);
        }
    }
    if (ids.empty()) {
        return;
    }
    const auto invalid = tokens_.invalid_among({ids.begin(), ids.end()});
    if (!invalid.empty()) {
        close_sockets_of(invalid, "token revoked, expired or user disabled");
    }
}

std::size_t server::close_sockets_of(const std::vector<std::string>& token_ids,
                                     const std::string& reason)
{
    const std::set<std::string> ids(token_ids.begin(), token_ids.end());
    std::size_t n = 0;
    for (const auto& s : std::set<std::shared_ptr<ws_session>>(ws_)) {
        if (!s->closing() && ids.contains(s->who().token_id)) {
            s->close_from_kernel(4001, reason);
            ++n;
        }
    }
    if (n > 0) {
        metrics_.ws_closed_auth += n;
        spdlog::info("closed {} websockets: {}", n, reason);
    }
    return n;
}

server::~server() = default;

std::unique_ptr<net::ssl::context> make_tls_context(const std::string& certfile,
                                                    const std::string& keyfile,
                                                    const std::string& client_ca)
{
    auto ctx = std::make_unique<net::ssl::context>(net::ssl::context::tls_server);
    ctx->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                     net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
                     net::ssl::context::no_tlsv1_1 | net::ssl::context::single_dh_use);
    ctx->use_certificate_chain_file(certfile);
    ctx->use_private_key_file(keyfile, net::ssl::context::pem);
    if (!client_ca.empty()) {
        ctx->load_verify_file(client_ca);
        ctx->set_verify_mode(net::ssl::verify_peer | net::ssl::verify_fail_if_no_peer_cert);
    }
    return ctx;
}

std::uint16_t server::listen()
{
    const auto addr = net::ip::make_address(cfg_.ip);
    const net::ip::tcp::endpoint ep(addr, cfg_.port);
    acceptor_.open(ep.protocol());
    acceptor_.set_option(net::socket_base::reuse_address(true));
    acceptor_.bind(ep);
    acceptor_.listen(net::socket_base::max_listen_connections);
    net::co_spawn(ioc_, accept_loop(), [](std::exception_ptr e) {
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                spdlog::error("accept loop ended: {}", ex.what());
            }
        }
    });
    return acceptor_.local_endpoint().port();
}

net::awaitable<void> server::accept_loop()
{
    for (;;) {
        beast::error_code ec;
        auto socket = co_await acceptor_.async_accept(net::redirect_error(net::use_awaitable, ec));
        if (ec) {
            if (ec == net::error::operation_aborted || stopping_) {
                co_return;
            }
            spdlog::warn("accept: {}", ec.message());
            continue;
        }
        if (http_connections_ + ws_.size() >= cfg_.max_connections) {
            spdlog::warn("connection limit ({}) reached, refusing", cfg_.max_connections);
            continue;  // socket closes as it goes out of scope
        }
        socket.set_option(net::ip::tcp::no_delay(true), ec);
        net::co_spawn(ioc_, run_http_session(*this, std::move(socket)),
                      [](std::exception_ptr e) {
                          if (e) {
                              try {
                                  std::rethrow_exception(e);
                              } catch (const std::exception& ex) {
                                  spdlog::error("http session failed: {}", ex.what());
                              }
                          }
                      });
    }
}

server::auth_result server::authenticate(std::string_view authorization,
                                         std::string_view query_token, const std::string& source)
{
    auth_result r;
    if (cfg_.allow_unauthenticated) {
        r.who = auth::identity{"anonymous", "", auth::role_t::admin, {}};
        return r;
    }
    const auto now = std::chrono::steady_clock::now();
    std::string_view token;
    if (auto t = auth::token_from_authorization(authorization)) {
        token = *t;
    } else if (!query_token.empty()) {
        token = query_token;
    }
    std::string why = "no token";
    std::string token_id;
    if (!token.empty()) {
        r.who = tokens_.verify(token, &why, &token_id);
    }
    if (r.who) {
        return r;  // a valid token always works, whatever others did from the same address
    }
    ++metrics_.auth_failures;
    auto& f = auth_failures_[source];
    if (now - f.window_start > cfg_.auth_fail_window) {
        f = failures{now, 0};
    }
    ++f.count;
    if (f.count > cfg_.auth_fail_limit) {
        // Past the limit the answer is 429 with Retry-After, and the log is rate-limited too.
        r.throttled = true;
        r.retry_after = std::chrono::duration_cast<std::chrono::seconds>(
                            f.window_start + cfg_.auth_fail_window - now) +
                        std::chrono::seconds(1);
        ++metrics_.auth_throttled;
    } else {
        spdlog::warn("authentication failed from {}: {}{}", source, why,
                     token_id.empty() ? std::string() : " (token id " + token_id + ")");
    }
    if (auth_failures_.size() > 100000) {
        auth_failures_.clear();  // bound the table under an address-spraying attack
    }
    return r;
}

void server::add_ws(const std::shared_ptr<ws_session>& s)
{
    ws_.insert(s);
}

void server::remove_ws(ws_session* s)
{
    for (auto it = ws_.begin(); it != ws_.end(); ++it) {
        if (it->get() == s) {
            ws_.erase(it);
            return;
        }
    }
}

std::size_t server::ws_queued_bytes() const
{
    std::size_t n = 0;
    for (const auto& s : ws_) {
        n += s->queued_bytes();
    }
    return n;
}

std::size_t server::ws_read_buffer_bytes() const
{
    std::size_t n = 0;
    for (const auto& s : ws_) {
        n += s->read_buffer_capacity();
    }
    return n;
}

void server::stop(std::function<void()> done)
{
    if (stopping_) {
        return;
    }
    stopping_ = true;
    beast::error_code ec;
    acceptor_.close(ec);
    token_timer_.cancel();
    if (token_watch_) {
        token_watch_->close(ec);
    }
    spdlog::info("stopping: closing {} websockets, shutting down {} kernels", ws_.size(),
                 reg_.size());
    for (const auto& s : std::set<std::shared_ptr<ws_session>>(ws_)) {
        s->close_from_kernel(static_cast<std::uint16_t>(websocket::close_code::going_away),
                             "server shutting down");
    }
    reg_.shutdown_all(std::move(done));
}

} // namespace kernelgate::gateway
