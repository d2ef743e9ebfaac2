// SPDX-License-Identifier: BSD-3-Clause
// One HTTP connection: requests in a loop, or the upgrade to a kernel WebSocket.
#include <spdlog/spdlog.h>

#include "gateway/routes.hpp"
#include "gateway/server.hpp"
#include "gateway/ws_session.hpp"
#include "zmq_protocol/wire_codec.hpp"

namespace kernelgate::gateway {

namespace {

/// Query tokens and authorization never reach the log: log the path only.
std::string loggable_path(std::string_view target)
{
    const auto q = target.find('?');
    std::string p(target.substr(0, q));
    if (p.size() > 200) {
        p.resize(200);
    }
    for (auto& c : p) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            c = '?';
        }
    }
    // A token pasted into a path (kg_<id>_<secret>) keeps only its public id.
    for (auto pos = p.find("kg_"); pos != std::string::npos; pos = p.find("kg_", pos + 3)) {
        const auto second = p.find('_', pos + 3);
        if (second == std::string::npos) {
            break;
        }
        auto end = p.find('/', second);
        if (end == std::string::npos) {
            end = p.size();
        }
        if (end > second + 1) {
            p.replace(second + 1, end - second - 1, "***");
        }
    }
    return p;
}

bool offers_v1(const request& req)
{
    const auto it = req.find(http::field::sec_websocket_protocol);
    if (it == req.end()) {
        return false;
    }
    const std::string_view offered(it->value().data(), it->value().size());
    std::size_t pos = 0;
    while (pos <= offered.size()) {
        auto comma = offered.find(',', pos);
        if (comma == std::string_view::npos) {
            comma = offered.size();
        }
        auto item = offered.substr(pos, comma - pos);
        while (!item.empty() && item.front() == ' ') {
            item.remove_prefix(1);
        }
        while (!item.empty() && item.back() == ' ') {
            item.remove_suffix(1);
        }
        if (item == v1_subprotocol) {
            return true;
        }
        pos = comma + 1;
    }
    return false;
}

/// Same-origin, no Origin (non-browser clients), or on the allow list.
bool origin_allowed(const server_config& cfg, const request& req)
{
    const auto it = req.find(http::field::origin);
    if (it == req.end()) {
        return true;
    }
    const std::string origin(it->value());
    for (const auto& o : cfg.ws_allow_origins) {
        if (o == "*" || o == origin) {
            return true;
        }
    }
    if (!cfg.cors.allow_origin.empty() &&
        (cfg.cors.allow_origin == "*" || cfg.cors.allow_origin == origin)) {
        return true;
    }
    const auto host = req.find(http::field::host);
    if (host == req.end()) {
        return false;
    }
    const auto scheme_end = origin.find("://");
    return scheme_end != std::string::npos &&
           std::string_view(origin).substr(scheme_end + 3) ==
               std::string_view(host->value().data(), host->value().size());
}

/// The request loop, over a plain or a TLS stream.
template <class Stream>
net::awaitable<void> serve_requests(server& srv, Stream stream, const std::string& source)
{
    beast::flat_buffer buffer;
    const auto& cfg = srv.config();
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(16 * 1024);
        parser.body_limit(cfg.http_body_limit);
        beast::get_lowest_layer(stream).expires_after(cfg.http_read_timeout);
        beast::error_code ec;
        co_await http::async_read(stream, buffer, parser,
                                  net::redirect_error(net::use_awaitable, ec));
        if (ec == http::error::end_of_stream || ec == net::error::eof ||
            ec == beast::error::timeout || ec == net::error::connection_reset) {
            break;
        }
        if (ec) {
            // Malformed request: answer 400/413/431 once and close.
            http::status st = http::status::bad_request;
            if (ec == http::error::body_limit) {
                st = http::status::payload_too_large;
            } else if (ec == http::error::header_limit) {
                st = http::status::request_header_fields_too_large;
            }
            auto res = error_response(st, "malformed request: " + ec.message());
            finish_response(srv, res, false, 11);
            beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(5));
            co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
            break;
        }
        request req = parser.release();
        ++srv.metrics().http_requests;
        const auto t = parse_target(to_sv(req.target()), cfg.base_url);
        const bool keep_alive = req.keep_alive();

        std::string kernel_id;
        const bool is_options = req.method() == http::verb::options;
        const bool open_route = is_options || is_open_route(t.path);
        const auto auth_it = req.find(http::field::authorization);
        const std::string_view authz =
            auth_it == req.end() ? std::string_view() : to_sv(auth_it->value());
        const auto qt = t.query.find("token");
        server::auth_result auth;
        if (!open_route && t.under_base) {
            auth = srv.authenticate(authz, qt == t.query.end() ? std::string_view() : qt->second,
                                    source);
        }
        const bool authed = open_route || auth.who.has_value();
        auto deny_auth = [&]() {
            if (auth.throttled) {
                auto r = error_response(http::status::too_many_requests,
                                        "Too many failed authentications; try again later");
                r.set(http::field::retry_after, std::to_string(auth.retry_after.count()));
                return r;
            }
            return error_response(http::status::forbidden, "Invalid or missing token");
        };

        if (t.under_base && websocket::is_upgrade(req) && is_channels_route(t.path, kernel_id)) {
            response deny;
            bool denied = true;
            sessions::kernel_ptr k;
            if (!authed) {
                deny = deny_auth();
            } else if (!origin_allowed(cfg, req)) {
                deny = error_response(http::status::forbidden, "Origin not allowed");
            } else if (!(k = srv.registry().find(kernel_id)) ||
                       !(auth.who->admin() || k->owner() == auth.who->user)) {
                k = nullptr;  // another user's kernel is as absent as a missing one
                deny = error_response(http::status::not_found, "Kernel does not exist: " +
                                                                   kernel_id);
            } else if (srv.stopping()) {
                deny = error_response(http::status::service_unavailable, "server stopping");
            } else {
                denied = false;
            }
            if (denied) {
                spdlog::info("{} {} {}", to_sv(req.method_string()), loggable_path(to_sv(req.target())),
                             deny.result_int());
                ++srv.metrics().http_4xx;
                finish_response(srv, deny, false, req.version());
                co_await http::async_write(stream, deny,
                                           net::redirect_error(net::use_awaitable, ec));
                break;
            }
            auto sid_it = t.query.find("session_id");
            std::string sid = sid_it != t.query.end() && !sid_it->second.empty() &&
                                      sid_it->second.size() <= 256
                                  ? sid_it->second
                                  : zmq_protocol::new_uuid();
            const auto fmt = offers_v1(req) ? ws_format::v1 : ws_format::legacy;
            spdlog::info("{} {} 101", to_sv(req.method_string()), loggable_path(to_sv(req.target())));
            auto ws = std::make_shared<ws_session>(srv, std::move(stream), std::move(k),
                                                   std::move(sid), fmt, *auth.who);
            // The parser may have read past the request: frames sent with it belong to the
            // WebSocket.
            if (buffer.size() > 0) {
                const auto early = buffer.data();
                ws->preload(std::string_view(static_cast<const char*>(early.data()), early.size()));
                buffer.consume(buffer.size());
            }
            // The session goes on by itself: this coroutine ends here, and with it the
            // request loop's frame, parser, buffer and streams, which an open WebSocket
            // would otherwise hold for as long as it lasts.
            net::co_spawn(co_await net::this_coro::executor,
                          ws->run(ws, std::move(req)), [](std::exception_ptr e) {
                if (e) {
                    try {
                        std::rethrow_exception(e);
                    } catch (const std::exception& ex) {
                        spdlog::error("ws session failed: {}", ex.what());
                    }
                }
            });
            co_return;
        }

        response res;
        if (!t.under_base) {
            res = error_response(http::status::not_found, "Not Found");
        } else if (is_options) {
            res = response(http::status::ok, req.version());
        } else if (!authed) {
            res = deny_auth();
        } else {
            try {
                static const auth::identity nobody{};
                res = co_await handle_rest(srv, req, t, auth.who ? *auth.who : nobody, source);
            } catch (const std::exception& e) {
                spdlog::error("{} {}: internal error: {}", to_sv(req.method_string()),
                              loggable_path(to_sv(req.target())), e.what());
                res = error_response(http::status::internal_server_error, "Internal error");
            }
        }
        const auto code = res.result_int();
        if (code < 300) {
            ++srv.metrics().http_2xx;
        } else if (code < 500) {
            ++srv.metrics().http_4xx;
        } else {
            ++srv.metrics().http_5xx;
        }
        spdlog::info("{} {} {}", to_sv(req.method_string()), loggable_path(to_sv(req.target())), code);
        finish_response(srv, res, keep_alive && !srv.stopping(), req.version());
        beast::get_lowest_layer(stream).expires_after(cfg.http_read_timeout);
        co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
        if (ec || !res.keep_alive()) {
            break;
        }
    }
    beast::error_code ignored;
    beast::get_lowest_layer(stream).socket().shutdown(net::ip::tcp::socket::shutdown_send,
                                                      ignored);
}

} // namespace

net::awaitable<void> run_http_session(server& srv, net::ip::tcp::socket socket)
{
    srv.http_connection_delta(1);
    struct guard
    {
        server& s;
        ~guard() { s.http_connection_delta(-1); }
    } g{srv};

    beast::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    const std::string source = ec ? std::string("unknown") : remote.address().to_string();
    beast::tcp_stream tcp(std::move(socket));
    if (srv.tls() == nullptr) {
        co_await serve_requests(srv, std::move(tcp), source);
        co_return;
    }
    tls_stream tls(std::move(tcp), *srv.tls());
    beast::get_lowest_layer(tls).expires_after(srv.config().http_read_timeout);
    co_await tls.async_handshake(net::redirect_error(net::use_awaitable, ec));
    if (ec) {
        // Includes clients without a certificate when one is required (mutual TLS).
        spdlog::info("TLS handshake from {} failed: {}", source, ec.message());
        co_return;
    }
    co_await serve_requests(srv, std::move(tls), source);
}

} // namespace kernelgate::gateway
