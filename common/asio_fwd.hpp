// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <string_view>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <nlohmann/json.hpp>

namespace kernelgate {
namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace websocket = boost::beast::websocket;
using json = nlohmann::json;

inline std::string_view to_sv(boost::beast::string_view s) noexcept
{
    return {s.data(), s.size()};
}
} // namespace kernelgate
