// SPDX-License-Identifier: BSD-3-Clause
// The one translation unit that compiles Asio and Beast (separate compilation).
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
