// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kernelgate::gateway {

/// CORS headers added to every response (as Kernel Gateway's --KernelGatewayApp.allow_*).
struct cors_config
{
    std::string allow_origin;       ///< Access-Control-Allow-Origin ("*" or one origin)
    std::string allow_methods;
    std::string allow_headers;
    std::string allow_credentials;
    std::string expose_headers;
    std::string max_age;
};

struct server_config
{
    std::string ip = "127.0.0.1";
    std::uint16_t port = 8888;
    std::string base_url = "/";     ///< normalized: starts and ends with '/'
    bool allow_unauthenticated = false;
    cors_config cors;
    /// Origins allowed to open WebSockets (besides same-origin and no Origin). "*" allows all.
    std::vector<std::string> ws_allow_origins;

    std::size_t http_body_limit = 1u << 20;
    std::chrono::seconds http_read_timeout{30};
    std::size_t ws_max_message = 64u << 20;
    std::chrono::seconds ws_ping_interval{30};
    /// Per-client send queue: above the high watermark a client is behind (its kernel's output
    /// is held while every client is; otherwise droppable output, stream and display_data, is
    /// dropped and counted); the rest is queued up to the hard limit, past which the client
    /// is closed with 1013. 2 MiB keeps a 64 KiB-message stream at full speed while the
    /// buffers a stream touches stay small (bench/README.md, "Memory the stream touches").
    std::size_t ws_high_watermark = 2u << 20;
    std::size_t ws_low_watermark = 512u << 10;
    std::size_t ws_hard_limit = 64u << 20;
    std::chrono::seconds shutdown_timeout{10};
    std::size_t max_connections = 20000;
    std::chrono::milliseconds token_poll_interval{20};
    int auth_fail_limit = 100;                   ///< failed authentications per source ...
    std::chrono::seconds auth_fail_window{60};   ///< ... per this window, then 429
};

/// "/x/y" or "x/y/" -> "/x/y/"; "" -> "/".
std::string normalize_base_url(std::string url);

} // namespace kernelgate::gateway
