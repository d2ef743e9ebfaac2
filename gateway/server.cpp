// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/server.hpp"

#include <spdlog/spdlog.h>

#include "gateway/ws_session.hpp"

namespace kernelgate::gateway {

server::server(net::io_context& ioc, server_config cfg, sessions::registry& reg,
               auth::static_token token)
    : ioc_(ioc), cfg_(std::move(cfg)), reg_(reg), token_(std::move(token)), acceptor_(ioc)
{
    cfg_.base_url = normalize_base_url(cfg_.base_url);
}

server::~server() = default;

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

bool server::authorized(std::string_view authorization, std::string_view query_token) const
{
    if (cfg_.allow_unauthenticated) {
        return true;
    }
    if (auto t = auth::token_from_authorization(authorization)) {
        return token_.matches(*t);
    }
    return !query_token.empty() && token_.matches(query_token);
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

void server::stop(std::function<void()> done)
{
    if (stopping_) {
        return;
    }
    stopping_ = true;
    beast::error_code ec;
    acceptor_.close(ec);
    spdlog::info("stopping: closing {} websockets, shutting down {} kernels", ws_.size(),
                 reg_.size());
    for (const auto& s : std::set<std::shared_ptr<ws_session>>(ws_)) {
        s->close_from_kernel(static_cast<std::uint16_t>(websocket::close_code::going_away),
                             "server shutting down");
    }
    reg_.shutdown_all(std::move(done));
}

} // namespace kernelgate::gateway
