// SPDX-License-Identifier: BSD-3-Clause
// The write-batching layer under the gateway's WebSockets, over a real loopback TCP
// connection: bursts leave in one send, a peer that does not read leaves the rest waiting
// (in order, nothing lost), and a peer that went away is an error, not a crash.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <string>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include "gateway/batching_stream.hpp"

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using kernelgate::gateway::batching_stream;
using namespace std::chrono_literals;

namespace {

/// A connected pair on 127.0.0.1: the batching layer on one side, a plain socket on the other.
struct pair
{
    net::io_context ioc;
    batching_stream<beast::tcp_stream> out{ioc};
    tcp::socket peer{ioc};
    int flushed = 0;

    pair()
    {
        tcp::acceptor acc(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0));
        beast::get_lowest_layer(out).socket().connect(acc.local_endpoint());
        acc.accept(peer);
        out.on_flushed([this] { ++flushed; });
    }

    /// Runs the loop until `done` holds or the time is up; true if it held.
    template <class Pred>
    bool run_until(Pred done, std::chrono::milliseconds limit = 5000ms)
    {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (!done() && std::chrono::steady_clock::now() < end) {
            ioc.restart();
            ioc.run_for(5ms);
        }
        return done();
    }

    /// Everything the peer can read now, without waiting.
    std::string drain_peer()
    {
        std::string got;
        peer.non_blocking(true);
        char buf[65536];
        for (;;) {
            beast::error_code ec;
            const std::size_t n = peer.read_some(net::buffer(buf), ec);
            if (ec) {
                break;
            }
            got.append(buf, n);
        }
        return got;
    }
};

std::string pattern(std::size_t n, std::size_t seed)
{
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
    }
    return s;
}

} // namespace

TEST_CASE("batching stream: a burst of writes leaves in one socket write, in order")
{
    pair p;
    std::string sent;
    for (int i = 0; i < 20; ++i) {
        const auto chunk = pattern(100 + i, static_cast<std::size_t>(i));
        beast::error_code ec;
        CHECK(p.out.write_some(net::buffer(chunk), ec) == chunk.size());
        CHECK_FALSE(ec);
        sent += chunk;
    }
    CHECK(p.out.buffered() == sent.size());  // nothing went out before the loop turned
    REQUIRE(p.run_until([&] { return p.flushed > 0 && p.out.buffered() == 0; }));
    CHECK(p.flushed == 1);
    std::string got;
    REQUIRE(p.run_until([&] {
        got += p.drain_peer();
        return got.size() >= sent.size();
    }));
    CHECK(got == sent);
}

TEST_CASE("batching stream: a peer that does not read gets everything once it does")
{
    pair p;
    // Far more than the two socket buffers hold: the first send takes part, the rest waits.
    std::string sent;
    for (int i = 0; i < 64; ++i) {
        const auto chunk = pattern(256 * 1024, static_cast<std::size_t>(i));
        beast::error_code ec;
        p.out.write_some(net::buffer(chunk), ec);
        REQUIRE_FALSE(ec);
        sent += chunk;
    }
    p.run_until([] { return false; }, 200ms);
    const std::size_t waiting = p.out.buffered();
    CHECK(waiting > 0);             // the socket did not take it all
    CHECK(waiting < sent.size());   // but it took what it could at once
    std::string got;
    REQUIRE(p.run_until(
        [&] {
            got += p.drain_peer();
            return got.size() >= sent.size();
        },
        20000ms));
    CHECK(got.size() == sent.size());
    CHECK(got == sent);
    // The peer can have every byte before the write's completion has run: the loop's time
    // slice may end between the last send and its handler. The write must still end.
    REQUIRE(p.run_until([&] { return p.flushed > 0; }));
    CHECK(p.out.buffered() == 0);
    CHECK(p.flushed == 1);  // one write: the part sent at once, then the rest
}

TEST_CASE("batching stream: the write buffers go once the connection is quiet")
{
    pair p;
    std::string sent;
    for (int round = 0; round < 2; ++round) {
        const auto chunk = pattern(300 * 1024, static_cast<std::size_t>(round));
        beast::error_code ec;
        p.out.write_some(net::buffer(chunk), ec);
        REQUIRE_FALSE(ec);
        sent += chunk;
        std::string got;
        REQUIRE(p.run_until([&] {
            got += p.drain_peer();
            return got.size() >= chunk.size() && p.out.buffered() == 0;
        }));
        CHECK(got == chunk);
        CHECK(p.out.write_capacity() >= chunk.size());  // kept while output may follow
        // Quiet: nothing is written for a while, and the buffers go.
        CHECK(p.run_until([&] { return p.out.write_capacity() == 0; }, 1000ms));
    }
}

TEST_CASE("batching stream: writing to a peer that went away is an error, not a crash")
{
    pair p;
    p.peer.set_option(net::socket_base::linger(true, 0));  // close sends a reset
    p.peer.close();
    const auto chunk = pattern(4096, 1);
    beast::error_code ec;
    // The first writes may be accepted before the reset is seen; an error must follow.
    bool failed = false;
    for (int i = 0; i < 100 && !failed; ++i) {
        p.out.write_some(net::buffer(chunk), ec);
        failed = static_cast<bool>(ec);
        p.run_until([] { return false; }, 10ms);
    }
    CHECK(failed);
    CHECK(p.out.buffered() == 0);  // what could not be sent is dropped, not kept
}
