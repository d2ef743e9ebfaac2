// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <map>
#include <string>
#include <string_view>

#include "auth/token_store.hpp"
#include "common/asio_fwd.hpp"

namespace kernelgate::gateway {

class server;

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;

struct parsed_target
{
    std::string path;                          ///< percent-decoded, base_url stripped
    std::map<std::string, std::string> query;  ///< decoded
    bool under_base = true;                    ///< false if the path is outside base_url
};

parsed_target parse_target(std::string_view target, std::string_view base_url);
std::string percent_decode(std::string_view in, bool plus_is_space = false);

/// JSON responses with the Kernel Gateway error body {"reason","message"}.
response json_response(http::status status, const json& body);
response error_response(http::status status, std::string_view message);

/// Adds CORS and security headers (nosniff, no caching of API answers).
void finish_response(const server& srv, response& res, bool keep_alive, unsigned version);

/// Handles every non-WebSocket route. Auth has been checked already (except for the
/// open routes it reports through is_open_route).
net::awaitable<response> handle_rest(server& srv, const request& req, const parsed_target& t,
                                     const auth::identity& who, const std::string& source);

/// Routes that need no token: the health check (and OPTIONS preflight, by method).
bool is_open_route(std::string_view path);

/// True if path is "api/kernels/<id>/channels"; sets id.
bool is_channels_route(std::string_view path, std::string& kernel_id);

} // namespace kernelgate::gateway
