// SPDX-License-Identifier: BSD-3-Clause
// zmtp_socket against real libzmq peers (ROUTER, PUB, REP/ROUTER for heartbeats) on TCP and
// on Unix sockets (ipc://): the same library the kernels use. Also kernel_channels, the five
// of them to one kernel, against a kernel that binds late.
#include "zmq_protocol/zmtp_socket.hpp"
#include "zmq_protocol/kernel_channels.hpp"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

namespace zp = kernelgate::zmq_protocol;
using namespace std::chrono_literals;

namespace {

std::uint16_t bound_port(zmq::socket_t& s)
{
    s.bind("tcp://127.0.0.1:*");
    const std::string ep = s.get(zmq::sockopt::last_endpoint);
    return static_cast<std::uint16_t>(std::stoi(ep.substr(ep.rfind(':') + 1)));
}

/// A loopback port nobody listens on: bound once and let go.
std::uint16_t free_port()
{
    zmq::context_t tmp(1);
    zmq::socket_t s(tmp, zmq::socket_type::router);
    s.set(zmq::sockopt::linger, 0);
    return bound_port(s);
}

/// Runs the loop and polls the libzmq peer until done() or the deadline.
template <class Done>
bool run_until(boost::asio::io_context& ioc, Done done, std::chrono::milliseconds limit = 5000ms)
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        ioc.poll();
        ioc.restart();
        if (done()) {
            return true;
        }
        std::this_thread::sleep_for(200us);
    }
    return false;
}

/// Runs the loop until the libzmq peer has a message and returns its frames (none if nothing
/// came within the deadline).
std::vector<zmq::message_t> receive(boost::asio::io_context& ioc, zmq::socket_t& peer)
{
    std::vector<zmq::message_t> in;
    run_until(ioc, [&] {
        return zmq::recv_multipart(peer, std::back_inserter(in), zmq::recv_flags::dontwait)
            .has_value();
    });
    return in;
}

/// "hello" sent by our DEALER reaches the libzmq ROUTER.
void check_hello_arrives(boost::asio::io_context& ioc, zp::zmtp_socket& dealer,
                         zmq::socket_t& router)
{
    std::array<std::string_view, 1> hello{"hello"};
    REQUIRE(dealer.send(hello));
    const std::vector<zmq::message_t> in = receive(ioc, router);
    REQUIRE(in.size() == 2);
    CHECK(in[1].to_string() == "hello");
}

/// Our DEALER (identity "d"), counting in `got` the messages it receives.
std::shared_ptr<zp::zmtp_socket> counting_dealer(boost::asio::io_context& ioc, int& got)
{
    auto dealer = std::make_shared<zp::zmtp_socket>(ioc, zp::zmtp_socket::kind::dealer, "d");
    dealer->start([&got](std::span<const std::string_view>) { ++got; });
    return dealer;
}

std::vector<std::string> copy(std::span<const std::string_view> parts)
{
    return {parts.begin(), parts.end()};
}

/// A libzmq peer bound on a free port and our socket, collecting what it receives.
struct peer_pair
{
    zmq::context_t ctx{1};
    zmq::socket_t peer;
    std::uint16_t port = 0;
    boost::asio::io_context ioc;
    std::shared_ptr<zp::zmtp_socket> sock;
    std::vector<std::vector<std::string>> got;

    /// sndhwm: the peer's send high-water mark in messages (-1: libzmq's 1000), set before
    /// the bind (it applies only to connections made after it is set).
    peer_pair(zmq::socket_type peer_type, zp::zmtp_socket::kind kind, std::string identity,
              int sndhwm = -1)
        : peer(ctx, peer_type)
    {
        peer.set(zmq::sockopt::linger, 0);
        if (sndhwm >= 0) {
            peer.set(zmq::sockopt::sndhwm, sndhwm);
        }
        port = bound_port(peer);
        sock = std::make_shared<zp::zmtp_socket>(ioc, kind, std::move(identity));
        sock->start([this](std::span<const std::string_view> parts) {
            got.push_back(copy(parts));
        });
    }
    void connect() { sock->connect("127.0.0.1", port); }
    /// For a SUB: connects and publishes "warm" "up" until the subscription is live (the
    /// slow-joiner window). Stragglers of those may still arrive after.
    void connect_subscribed()
    {
        connect();
        REQUIRE(run_until(ioc, [&] {
            std::array<zmq::const_buffer, 2> m{zmq::buffer(std::string_view("warm")),
                                               zmq::buffer(std::string_view("up"))};
            (void)zmq::send_multipart(peer, m);
            return !got.empty();
        }));
    }
};

} // namespace

TEST_CASE("zmtp: DEALER talks to a libzmq ROUTER both ways", "[zmtp]")
{
    peer_pair p(zmq::socket_type::router, zp::zmtp_socket::kind::dealer, "me-1");
    auto& ioc = p.ioc;
    auto& router = p.peer;
    auto& dealer = p.sock;
    auto& got = p.got;
    // Sent before the connection exists: queued, then delivered after the handshake.
    const std::string big(100000, 'b');
    const std::vector<std::string_view> msg{"<IDS|MSG>", "sig", "{}", big, ""};
    REQUIRE(dealer->send(msg));
    p.connect();

    const std::vector<zmq::message_t> in = receive(ioc, router);
    REQUIRE(in.size() == 6);
    CHECK(in[0].to_string() == "me-1");  // our Identity property became the routing id
    CHECK(in[1].to_string() == "<IDS|MSG>");
    CHECK(in[4].to_string() == big);
    CHECK(in[5].size() == 0);
    CHECK(dealer->connected());

    // ROUTER -> DEALER, many messages in one burst.
    for (int i = 0; i < 1000; ++i) {
        const std::string num = std::to_string(i);
        std::array<zmq::const_buffer, 3> out{zmq::buffer(std::string_view("me-1")),
                                             zmq::buffer(std::string_view("n")),
                                             zmq::buffer(num)};
        REQUIRE(zmq::send_multipart(router, out));
    }
    REQUIRE(run_until(ioc, [&] { return got.size() == 1000; }));
    for (int i = 0; i < 1000; ++i) {
        REQUIRE(got[static_cast<std::size_t>(i)] ==
                std::vector<std::string>{"n", std::to_string(i)});
    }
    CHECK(dealer->received() == 1000);
    CHECK(dealer->protocol_errors() == 0);
    dealer->close();
}

TEST_CASE("zmtp: messages that come one at a time after the socket ran dry all arrive, "
          "small and large, alone and in twos",
          "[zmtp]")
{
    // Each message here comes after our socket read everything there was and went back to
    // waiting: a wake-up lost between the last read and the wait, or a wait begun while the
    // socket still held data, would stall the run (the peer sends the next only once the
    // last has arrived). Large ones arrive over several reads, some of them finding the
    // socket empty half-way through a message.
    peer_pair p(zmq::socket_type::router, zp::zmtp_socket::kind::dealer, "one");
    auto& ioc = p.ioc;
    auto& router = p.peer;
    auto& got = p.got;
    p.connect();
    check_hello_arrives(ioc, *p.sock, router);
    const std::array<std::size_t, 6> sizes{1, 300, 5000, 70000, 300000, 3000000};
    std::size_t expected = 0;
    for (int i = 0; i < 120; ++i) {
        const std::size_t size = sizes[static_cast<std::size_t>(i) % sizes.size()];
        const int burst = i % 7 == 0 ? 2 : 1;  // now and then two back to back
        for (int b = 0; b < burst; ++b) {
            const std::string body(size, static_cast<char>('a' + (i + b) % 26));
            const std::string num = std::to_string(i) + "." + std::to_string(b);
            std::array<zmq::const_buffer, 3> out{zmq::buffer(std::string_view("one")),
                                                 zmq::buffer(num), zmq::buffer(body)};
            REQUIRE(zmq::send_multipart(router, out));
            ++expected;
        }
        // What fits is in our socket's buffer before we look: one read cannot take it all
        // (4 KiB while quiet), and no more arrives to signal readiness anew.
        std::this_thread::sleep_for(5ms);
        REQUIRE(run_until(ioc, [&] { return got.size() == expected; }));
        for (int b = 0; b < burst; ++b) {
            const auto& m = got[expected - static_cast<std::size_t>(burst - b)];
            REQUIRE(m.size() == 2);
            CHECK(m[0] == std::to_string(i) + "." + std::to_string(b));
            CHECK(m[1] == std::string(size, static_cast<char>('a' + (i + b) % 26)));
        }
    }
    CHECK(p.sock->protocol_errors() == 0);
    p.sock->close();
}

TEST_CASE("zmtp: a quiet socket keeps a small read buffer, a burst grows it for a while",
          "[zmtp]")
{
    peer_pair p(zmq::socket_type::router, zp::zmtp_socket::kind::dealer, "q");
    auto& ioc = p.ioc;
    auto& got = p.got;
    p.connect();
    check_hello_arrives(ioc, *p.sock, p.peer);
    auto send_to_us = [&](const std::string& body) {
        std::array<zmq::const_buffer, 2> out{zmq::buffer(std::string_view("q")),
                                             zmq::buffer(body)};
        REQUIRE(zmq::send_multipart(p.peer, out));
    };
    // Replies of a few hundred bytes, one at a time: a kernel's shell between requests.
    for (int i = 0; i < 20; ++i) {
        send_to_us(std::string(300, 'r'));
        REQUIRE(run_until(ioc, [&] { return got.size() == static_cast<std::size_t>(i) + 1; }));
    }
    CHECK(p.sock->read_buffer_size() <= 4096);
    // A burst of big messages: read in large chunks, every byte delivered.
    const std::string big(200 * 1024, 'b');
    for (int i = 0; i < 10; ++i) {
        send_to_us(big);
    }
    REQUIRE(run_until(ioc, [&] { return got.size() == 30; }));
    for (std::size_t i = 20; i < 30; ++i) {
        REQUIRE(got[i] == std::vector<std::string>{big});
    }
    CHECK(p.sock->read_buffer_size() >= 64 * 1024);
    // Quiet again: the next small message's read gives the big buffer back.
    send_to_us("small");
    REQUIRE(run_until(ioc, [&] { return got.size() == 31; }));
    send_to_us("small again");
    REQUIRE(run_until(ioc, [&] { return got.size() == 32; }));
    CHECK(got.back() == std::vector<std::string>{"small again"});
    CHECK(p.sock->read_buffer_size() <= 4096);
    CHECK(p.sock->protocol_errors() == 0);
    p.sock->close();
}

TEST_CASE("zmtp: held messages wait for release() and then leave in one write", "[zmtp]")
{
    peer_pair p(zmq::socket_type::router, zp::zmtp_socket::kind::dealer, "me-h");
    auto& ioc = p.ioc;
    auto& router = p.peer;
    auto& dealer = p.sock;
    p.connect();
    REQUIRE(run_until(ioc, [&] { return dealer->connected(); }));
    auto recv_all = [&](std::size_t want, std::chrono::milliseconds limit) {
        std::vector<std::string> nums;
        run_until(
            ioc,
            [&] {
                std::vector<zmq::message_t> in;
                while (zmq::recv_multipart(router, std::back_inserter(in),
                                           zmq::recv_flags::dontwait)) {
                    nums.push_back(in.back().to_string());
                    in.clear();
                }
                return nums.size() >= want;
            },
            limit);
        return nums;
    };
    auto send_held = [&](int from, int to) {
        for (int i = from; i < to; ++i) {
            const std::string num = std::to_string(i);
            const std::vector<std::string_view> msg{"<IDS|MSG>", num};
            REQUIRE(dealer->send(msg, /*hold=*/true));
        }
    };

    const auto writes0 = dealer->writes();
    send_held(0, 50);
    CHECK(recv_all(1, 100ms).empty());  // nothing goes out while held
    CHECK(dealer->writes() == writes0);
    dealer->release();
    auto nums = recv_all(50, 5000ms);
    REQUIRE(nums.size() == 50);
    for (int i = 0; i < 50; ++i) {
        CHECK(nums[static_cast<std::size_t>(i)] == std::to_string(i));
    }
    CHECK(dealer->writes() == writes0 + 1);  // all fifty in one write

    // A message sent without hold takes the held ones with it, in order.
    send_held(50, 60);
    const std::vector<std::string_view> now{"<IDS|MSG>", "60"};
    REQUIRE(dealer->send(now));
    nums = recv_all(11, 5000ms);
    REQUIRE(nums.size() == 11);
    CHECK(nums.front() == "50");
    CHECK(nums.back() == "60");

    // Held bytes are bounded: past 8 KiB they go out without release().
    const std::string chunk(1024, 'h');
    const std::vector<std::string_view> big{"<IDS|MSG>", chunk};
    for (int i = 0; i < 7; ++i) {
        REQUIRE(dealer->send(big, /*hold=*/true));
    }
    CHECK(recv_all(1, 100ms).empty());  // 7 KiB: still held
    for (int i = 0; i < 2; ++i) {
        REQUIRE(dealer->send(big, /*hold=*/true));
    }
    CHECK(recv_all(8, 5000ms).size() >= 8);  // the eighth passed 8 KiB: out without release()
    dealer->close();
}

TEST_CASE("zmtp: SUB receives everything a libzmq PUB publishes", "[zmtp]")
{
    peer_pair p(zmq::socket_type::pub, zp::zmtp_socket::kind::sub, "");
    auto& ioc = p.ioc;
    auto& pub = p.peer;
    auto& sub = p.sock;
    auto& got = p.got;
    // Publish until the subscription is live (the slow-joiner window), then a numbered run.
    p.connect_subscribed();
    got.clear();
    for (int i = 0; i < 500; ++i) {
        const std::string num = std::to_string(i);
        std::array<zmq::const_buffer, 2> m{zmq::buffer(std::string_view("topicless")),
                                           zmq::buffer(num)};
        REQUIRE(zmq::send_multipart(pub, m));
    }
    REQUIRE(run_until(ioc, [&] {
        return !got.empty() && got.back() == std::vector<std::string>{"topicless", "499"};
    }));
    // In order, no gaps, warm-up stragglers aside.
    std::size_t first = 0;
    while (first < got.size() && got[first][0] != "topicless") {
        ++first;
    }
    REQUIRE(got.size() - first == 500);
    for (std::size_t i = 0; i < 500; ++i) {
        CHECK(got[first + i][1] == std::to_string(i));
    }
    sub->close();
}

TEST_CASE("zmtp: frames are counted into messages without decoding, over a growing prefix",
          "[zmtp]")
{
    namespace zmtp = zp::zmtp;
    std::string bytes;
    zmtp::append_frame(bytes, "id", true);
    zmtp::append_frame(bytes, std::string(300, 'b'), false);  // a long frame ends message 1
    zmtp::append_ready(bytes, "PUB", "");                     // a command counts as one
    zmtp::append_frame(bytes, "x", false);                    // message 3
    zmtp::frame_scan scan;
    std::size_t last_pos = 0;
    for (std::size_t n = 0; n <= bytes.size(); ++n) {
        zmtp::scan_frames(std::string_view(bytes).substr(0, n), scan);
        REQUIRE(scan.pos <= n);
        REQUIRE(scan.pos >= last_pos);  // goes on, never back
        last_pos = scan.pos;
    }
    CHECK(scan.pos == bytes.size());
    CHECK(scan.messages == 3);
    // A frame that claims more than is there stops the count at its header.
    std::string huge;
    zmtp::append_frame(huge, "a", false);
    const std::size_t before = huge.size();
    huge += std::string("\x02\xff\xff\xff\xff\xff\xff\xff\xff", 9);
    zmtp::frame_scan s2;
    zmtp::scan_frames(huge, s2);
    CHECK(s2.messages == 1);
    CHECK(s2.pos == before);
}

TEST_CASE("zmtp: while paused, small messages are read ahead further than big ones", "[zmtp]")
{
    for (const std::size_t size : {std::size_t{200}, std::size_t{64 * 1024}}) {
        DYNAMIC_SECTION("messages of " << size << " bytes")
        {
            // No high-water mark: the publisher drops nothing of its own.
            peer_pair p(zmq::socket_type::pub, zp::zmtp_socket::kind::sub, "", 0);
            auto& ioc = p.ioc;
            auto& sub = p.sock;
            auto& got = p.got;
            p.connect_subscribed();
            sub->set_paused(true);
            got.clear();
            const std::size_t total = 6u << 20;
            const std::size_t n = total / size;
            const std::string body(size, 'm');
            for (std::size_t i = 0; i < n; ++i) {
                REQUIRE(p.peer.send(zmq::buffer(body), zmq::send_flags::none));
            }
            if (size < 4096) {
                // Past 1 MiB: a kernel's PUB keeps only 1000 such messages beyond us.
                CHECK(run_until(ioc, [&] { return sub->read_ahead() >= (4u << 20); }));
            } else {
                // 1 MiB (and what the last read brought): the PUB's 1000 hold the rest. It
                // must get there, then stay there.
                CHECK(run_until(ioc, [&] { return sub->read_ahead() >= (1u << 20); }));
                (void)run_until(ioc, [] { return false; }, 200ms);
                CHECK(sub->read_ahead() >= (1u << 20));
                CHECK(sub->read_ahead() < (1u << 20) + (256u << 10));
            }
            CHECK(got.empty());
            sub->set_paused(false);
            // Every message, in order (warm-up stragglers may come first).
            REQUIRE(run_until(ioc, [&] { return got.size() >= n && got.back()[0] == body; }));
            CHECK(got.size() - n <= 3);
            sub->close();
        }
    }
}

TEST_CASE("zmtp: a paused SUB delivers nothing, then goes on where it stopped, in order",
          "[zmtp]")
{
    peer_pair p(zmq::socket_type::pub, zp::zmtp_socket::kind::sub, "");
    auto& ioc = p.ioc;
    auto& pub = p.peer;
    auto& sub = p.sock;
    auto& got = p.got;
    p.connect_subscribed();
    // Pausing from inside the handler, as the gateway does when a client falls behind: the
    // message that paused is the last one delivered.
    std::size_t pause_at = 0;
    sub->start([&](std::span<const std::string_view> parts) {
        got.push_back(copy(parts));
        if (pause_at != 0 && got.size() == pause_at) {
            sub->set_paused(true);
        }
    });
    got.clear();
    pause_at = 10;
    // 900 x 16 KiB: more than the socket buffers hold, and within libzmq's send high-water
    // mark of 1000 messages (beyond it the PUB would drop, as a kernel's does).
    const std::string body(16384, 'p');
    constexpr int n = 900;
    for (int i = 0; i < n; ++i) {
        const std::string num = std::to_string(i);
        std::array<zmq::const_buffer, 2> m{zmq::buffer(num), zmq::buffer(body)};
        REQUIRE(zmq::send_multipart(pub, m));
    }
    REQUIRE(run_until(ioc, [&] { return got.size() >= 10; }));
    CHECK_FALSE(run_until(ioc, [&] { return got.size() > 10; }, 200ms));  // held
    CHECK(sub->paused());
    CHECK(got.size() == 10);
    sub->set_paused(false);
    const bool all = run_until(ioc, [&] { return got.size() >= static_cast<std::size_t>(n); });
    INFO("delivered " << got.size() << " paused " << sub->paused());
    REQUIRE(all);
    std::size_t first = 0;
    while (first < got.size() && got[first][0] != "0") {
        ++first;  // warm-up stragglers
    }
    REQUIRE(got.size() - first == static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
        REQUIRE(got[first + static_cast<std::size_t>(i)][0] == std::to_string(i));
    }

    // Paused again, and the peer sends less than the read-ahead limit and then nothing more:
    // all of it is read while paused, and delivered when the pause ends without waiting for
    // anything new from the peer.
    const std::size_t before = got.size();
    sub->set_paused(true);
    constexpr int m = 40;  // 640 KiB
    for (int i = 0; i < m; ++i) {
        const std::string num = "again-" + std::to_string(i);
        std::array<zmq::const_buffer, 2> msg{zmq::buffer(num), zmq::buffer(body)};
        REQUIRE(zmq::send_multipart(pub, msg));
    }
    CHECK_FALSE(run_until(ioc, [&] { return got.size() > before; }, 300ms));
    sub->set_paused(false);
    REQUIRE(run_until(ioc, [&] { return got.size() == before + m; }));
    CHECK(got.back()[0] == "again-" + std::to_string(m - 1));
    CHECK(sub->protocol_errors() == 0);
    sub->close();
}

TEST_CASE("zmtp: REQ heartbeat echoed by a ROUTER, as ipykernel's heartbeat does", "[zmtp]")
{
    peer_pair p(zmq::socket_type::router, zp::zmtp_socket::kind::req, "");
    auto& ioc = p.ioc;
    auto& hb = p.peer;
    auto& req = p.sock;
    auto& got = p.got;
    p.connect();
    const std::vector<std::string_view> ping{"ping"};
    REQUIRE(req->send(ping));
    REQUIRE(run_until(ioc, [&] {
        std::vector<zmq::message_t> in;
        if (zmq::recv_multipart(hb, std::back_inserter(in), zmq::recv_flags::dontwait)) {
            REQUIRE(in.size() == 3);  // identity, empty delimiter, ping
            CHECK(in[1].size() == 0);
            CHECK(in[2].to_string() == "ping");
            REQUIRE(zmq::send_multipart(hb, in));  // echo, as a zmq.device(QUEUE) does
        }
        return !got.empty();
    }));
    CHECK(got.front() == std::vector<std::string>{"ping"});
}

TEST_CASE("zmtp: reconnects after the peer goes away and comes back", "[zmtp]")
{
    zmq::context_t ctx(1);
    std::uint16_t port = 0;
    boost::asio::io_context ioc;
    int got = 0;
    auto dealer = counting_dealer(ioc, got);
    {
        zmq::socket_t router(ctx, zmq::socket_type::router);
        router.set(zmq::sockopt::linger, 0);
        port = bound_port(router);
        dealer->connect("127.0.0.1", port);
        REQUIRE(run_until(ioc, [&] { return dealer->connected(); }));
    }  // the peer closes
    REQUIRE(run_until(ioc, [&] { return !dealer->connected(); }));
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:" + std::to_string(port));
    REQUIRE(run_until(ioc, [&] { return dealer->connected(); }));
    std::array<zmq::const_buffer, 2> m{zmq::buffer(std::string_view("d")),
                                       zmq::buffer(std::string_view("again"))};
    REQUIRE(zmq::send_multipart(router, m));
    REQUIRE(run_until(ioc, [&] { return got == 1; }));
}

TEST_CASE("zmtp: ipc transport reaches a libzmq peer on a Unix socket named ip-port", "[zmtp]")
{
    char tmpl[] = "/tmp/kg-zmtp-ipc-XXXXXX";
    const std::filesystem::path dir = ::mkdtemp(tmpl);
    const std::string base = (dir / "kernel-ipc").string();
    zmq::context_t ctx(1);
    boost::asio::io_context ioc;
    auto dealer = std::make_shared<zp::zmtp_socket>(ioc, zp::zmtp_socket::kind::dealer, "d-ipc");
    std::vector<std::vector<std::string>> got;
    dealer->start([&](std::span<const std::string_view> parts) { got.push_back(copy(parts)); });
    const std::vector<std::string_view> hello{"hello", "over ipc"};
    REQUIRE(dealer->send(hello));  // queued until the handshake
    // Connecting before the kernel has bound (the socket file does not exist yet) waits for
    // the file: no socket is made and no connect() tried until it is there, and with an
    // inotify watch on the directory the file is looked for twice (before and after the
    // watch is set), not every 2 ms.
    dealer->connect("ipc", base, 7);
    run_until(ioc, [] { return false; }, 50ms);
    CHECK_FALSE(dealer->connected());
    CHECK(dealer->connect_attempts() == 0);
    auto& watch = boost::asio::use_service<zp::file_watch>(ioc);
    CHECK(watch.waiting() == 1);
    CHECK(dealer->file_checks() == 2);

    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("ipc://" + base + "-7");
    CHECK(std::filesystem::is_socket(base + "-7"));
    const std::vector<zmq::message_t> in = receive(ioc, router);
    REQUIRE(in.size() == 3);
    CHECK(in[0].to_string() == "d-ipc");
    CHECK(in[1].to_string() == "hello");
    CHECK(in[2].to_string() == "over ipc");
    CHECK(dealer->connected());
    CHECK(dealer->connect_attempts() >= 1);
    CHECK(watch.waiting() == 0);
    CHECK(watch.watched() == 0);

    const std::string big(300000, 'z');  // larger than one read
    std::array<zmq::const_buffer, 2> reply{zmq::buffer(std::string_view("d-ipc")),
                                           zmq::buffer(big)};
    REQUIRE(zmq::send_multipart(router, reply));
    REQUIRE(run_until(ioc, [&] { return got.size() == 1; }));
    CHECK(got[0] == std::vector<std::string>{big});
    CHECK(dealer->protocol_errors() == 0);

    // The peer goes away and binds again (a restarted kernel): the socket reconnects.
    router.close();
    REQUIRE(run_until(ioc, [&] { return !dealer->connected(); }));
    zmq::socket_t again(ctx, zmq::socket_type::router);
    again.set(zmq::sockopt::linger, 0);
    again.bind("ipc://" + base + "-7");
    REQUIRE(run_until(ioc, [&] { return dealer->connected(); }));
    dealer->close();
    again.close();
    std::filesystem::remove_all(dir);
}

TEST_CASE("zmtp: an ipc file nobody listens on is tried less often, and a new one at once",
          "[zmtp]")
{
    char tmpl[] = "/tmp/kg-zmtp-stale-XXXXXX";
    const std::filesystem::path dir = ::mkdtemp(tmpl);
    const std::string path = (dir / "kernel-stale").string() + "-9";
    zmq::context_t ctx(1);
    boost::asio::io_context ioc;
    auto dealer = std::make_shared<zp::zmtp_socket>(ioc, zp::zmtp_socket::kind::dealer, "d");
    dealer->start([](std::span<const std::string_view>) {});

    // A socket file that is there but refuses: bound, never listened on (what a kernel that
    // closed its sockets leaves behind, for a moment).
    const int stale = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(stale >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(::bind(stale, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);

    dealer->connect("ipc", (dir / "kernel-stale").string(), 9);
    run_until(ioc, [] { return false; }, 400ms);
    CHECK_FALSE(dealer->connected());
    // Backing off to 128 ms (1 + 2 + ... + 128 is 255 ms): at most 10 tries in 400 ms, on
    // any machine. Every 2 ms would be some 200; backing off to 16 ms some 30.
    CHECK(dealer->connect_attempts() >= 2);
    CHECK(dealer->connect_attempts() <= 10);
    CHECK(boost::asio::use_service<zp::file_watch>(ioc).waiting() == 1);

    // A restarted kernel binds a new socket there (libzmq removes the old file first).
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("ipc://" + path);
    REQUIRE(run_until(ioc, [&] { return dealer->connected(); }));
    CHECK(boost::asio::use_service<zp::file_watch>(ioc).waiting() == 0);
    dealer->close();
    router.close();
    ::close(stale);
    std::filesystem::remove_all(dir);
}

TEST_CASE("zmtp: an unusable address never connects and does not crash", "[zmtp]")
{
    boost::asio::io_context ioc;
    for (const auto& [transport, ip] : std::vector<std::pair<std::string, std::string>>{
             {"ipc", "/tmp/" + std::string(200, 'p')},  // longer than sun_path
             {"ipc", ""},                               // no path
             {"tcp", "not-an-address"},
             {"udp", "127.0.0.1"},
         }) {
        auto s = std::make_shared<zp::zmtp_socket>(ioc, zp::zmtp_socket::kind::dealer, "x");
        s->start([](std::span<const std::string_view>) {});
        s->connect(transport, ip, 1);
        const std::vector<std::string_view> m{"queued"};
        CHECK(s->send(m));  // accepted and held, as before any connection
        run_until(ioc, [] { return false; }, 30ms);
        CHECK_FALSE(s->connected());
        s->close();
    }
}

TEST_CASE("zmtp: a hostile peer is dropped and counted, and the socket tries again", "[zmtp]")
{
    namespace net = boost::asio;
    boost::asio::io_context ioc;
    net::ip::tcp::acceptor acceptor(ioc, {net::ip::make_address("127.0.0.1"), 0});
    const auto port = acceptor.local_endpoint().port();
    kernelgate::zmq_protocol::zmtp::limits lim;
    lim.max_message_bytes = 1024;
    auto dealer = std::make_shared<zp::zmtp_socket>(ioc, zp::zmtp_socket::kind::dealer, "d", lim);
    int delivered = 0;
    dealer->start([&](std::span<const std::string_view>) { ++delivered; });
    dealer->connect("127.0.0.1", port);

    // What each accepted connection sends, and whether our side then closed it.
    auto serve = [&](const std::string& bytes) {
        net::ip::tcp::socket peer(ioc);
        bool accepted = false;
        acceptor.async_accept(peer, [&](boost::system::error_code ec) { accepted = !ec; });
        REQUIRE(run_until(ioc, [&] { return accepted; }));
        net::write(peer, net::buffer(bytes));
        // Our side hangs up: the peer reads to EOF (after our greeting and READY).
        bool eof = false;
        std::string sink(4096, '\0');
        std::function<void()> read_more = [&] {
            peer.async_read_some(net::buffer(sink), [&](boost::system::error_code ec, std::size_t) {
                if (ec) {
                    eof = true;
                } else {
                    read_more();
                }
            });
        };
        read_more();
        REQUIRE(run_until(ioc, [&] { return eof; }));
    };

    serve("GET / HTTP/1.1\r\nHost: x\r\n\r\n");  // not ZMTP at all
    CHECK(dealer->protocol_errors() == 1);

    std::string greeting(64, '\0');
    greeting[0] = '\xff';
    greeting[9] = '\x7f';
    greeting[10] = 3;
    greeting.replace(12, 4, "NULL");
    std::string ready;
    kernelgate::zmq_protocol::zmtp::append_ready(ready, "ROUTER", "");
    // A frame header claiming 1 TiB: refused from the header, before any body arrives.
    std::string huge = greeting + ready;
    huge += '\x02';
    for (int shift = 56; shift >= 0; shift -= 8) {
        huge += static_cast<char>((std::uint64_t{1} << 40) >> shift & 0xff);
    }
    serve(huge);  // accepted only because the socket reconnected after the first drop
    CHECK(dealer->protocol_errors() == 2);

    // The wrong socket type (a SUB cannot serve a DEALER).
    std::string wrong = greeting;
    kernelgate::zmq_protocol::zmtp::append_ready(wrong, "SUB", "");
    serve(wrong);
    CHECK(dealer->protocol_errors() == 3);
    CHECK(delivered == 0);
    dealer->close();
}

TEST_CASE("kernel_channels: only shell looks for a late kernel; the rest follow it", "[channels]")
{
    char tmpl[] = "/tmp/kg-channels-XXXXXX";
    const std::filesystem::path dir = ::mkdtemp(tmpl);
    zp::connection_info info;
    info.transport = "ipc";
    info.ip = (dir / "kernel-late-ipc").string();
    info.shell_port = 1;
    info.iopub_port = 2;
    info.stdin_port = 3;
    info.control_port = 4;
    info.hb_port = 5;
    info.key = "0123456789abcdef";

    zmq::context_t ctx(1);
    boost::asio::io_context ioc;
    auto channels = std::make_shared<zp::kernel_channels>(ioc, info, "session-late");
    channels->start([](zp::channel, zp::message&&) {}, [](zp::channel, std::error_code) {});
    bool iopub_ready = false;
    channels->on_iopub_ready([&] { iopub_ready = true; });
    // Sent before anything is bound: it waits in control's queue.
    channels->request(zp::channel::control, "kernel_info_request", "{}");

    // The kernel binds control and iopub first. Shell is not there yet, so nobody connects
    // to them: the control request is still queued, and no subscription was made.
    auto bind = [&](zmq::socket_type type, int port) {
        zmq::socket_t s(ctx, type);
        s.set(zmq::sockopt::linger, 0);
        s.bind("ipc://" + info.ip + "-" + std::to_string(port));
        return s;
    };
    zmq::socket_t control = bind(zmq::socket_type::router, info.control_port);
    zmq::socket_t iopub = bind(zmq::socket_type::xpub, info.iopub_port);
    run_until(ioc, [] { return false; }, 100ms);
    std::vector<zmq::message_t> got;
    CHECK_FALSE(zmq::recv_multipart(control, std::back_inserter(got), zmq::recv_flags::dontwait)
                    .has_value());
    CHECK_FALSE(iopub_ready);
    CHECK_FALSE(channels->shell_connected());

    // Shell binds: shell connects, then control gets its queued request and iopub subscribes.
    zmq::socket_t shell = bind(zmq::socket_type::router, info.shell_port);
    zmq::socket_t stdin_sock = bind(zmq::socket_type::router, info.stdin_port);
    REQUIRE(run_until(ioc, [&] {
        return zmq::recv_multipart(control, std::back_inserter(got), zmq::recv_flags::dontwait)
            .has_value();
    }));
    CHECK(got.front().to_string() == "session-late");  // the DEALER's identity
    REQUIRE(run_until(ioc, [&] { return iopub_ready && channels->shell_connected(); }));
    zmq::message_t sub;
    REQUIRE(run_until(ioc, [&] { return iopub.recv(sub, zmq::recv_flags::dontwait).has_value(); }));
    CHECK(sub.size() >= 1);
    CHECK(static_cast<const char*>(sub.data())[0] == 1);  // subscribe

    channels->close();
    std::filesystem::remove_all(dir);
}

TEST_CASE("zmtp: after stop_reconnecting a lost peer is not tried again; a new socket still "
          "connects",
          "[zmtp]")
{
    zmq::context_t ctx(1);
    boost::asio::io_context ioc;
    std::uint16_t port = 0;
    int got = 0;
    auto dealer = counting_dealer(ioc, got);
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    port = bound_port(router);

    // Told before its first connection: it still connects, and what it queued goes out.
    dealer->stop_reconnecting();
    std::array<std::string_view, 1> hello{"hello"};
    REQUIRE(dealer->send(hello));
    dealer->connect("127.0.0.1", port);
    const std::vector<zmq::message_t> in = receive(ioc, router);
    REQUIRE(in.size() == 2);
    CHECK(in[1].to_string() == "hello");
    // Messages still arrive on the connection it has.
    std::array<zmq::const_buffer, 2> m{zmq::buffer(std::string_view("d")),
                                       zmq::buffer(std::string_view("reply"))};
    REQUIRE(zmq::send_multipart(router, m));
    REQUIRE(run_until(ioc, [&] { return got == 1; }));

    // The peer goes away and comes back on the same port: no attempt is made to reach it
    // (with reconnecting on, one every 2 ms).
    const auto attempts = dealer->connect_attempts();
    router.close();
    REQUIRE(run_until(ioc, [&] { return !dealer->connected(); }));
    run_until(ioc, [] { return false; }, 300ms);
    zmq::socket_t again(ctx, zmq::socket_type::router);
    again.set(zmq::sockopt::linger, 0);
    again.bind("tcp://127.0.0.1:" + std::to_string(port));
    run_until(ioc, [] { return false; }, 100ms);
    CHECK(dealer->connect_attempts() == attempts);
    CHECK_FALSE(dealer->connected());
    dealer->close();
}

TEST_CASE("kernel_channels: after expect_exit a kernel that closes its sockets is not "
          "reconnected and its heartbeat stops",
          "[channels]")
{
    zmq::context_t ctx(1);
    auto bind = [&](zmq::socket_type type, std::uint16_t& port) {
        zmq::socket_t s(ctx, type);
        s.set(zmq::sockopt::linger, 0);
        port = bound_port(s);
        return s;
    };
    zp::connection_info info;
    info.transport = "tcp";
    info.ip = "127.0.0.1";
    info.key = "0123456789abcdef";
    zmq::socket_t shell = bind(zmq::socket_type::router, info.shell_port);
    zmq::socket_t control = bind(zmq::socket_type::router, info.control_port);
    zmq::socket_t stdin_sock = bind(zmq::socket_type::router, info.stdin_port);
    zmq::socket_t iopub = bind(zmq::socket_type::xpub, info.iopub_port);
    zmq::socket_t hb = bind(zmq::socket_type::router, info.hb_port);

    boost::asio::io_context ioc;
    auto channels = std::make_shared<zp::kernel_channels>(ioc, info, "session-exit");
    channels->start([](zp::channel, zp::message&&) {}, [](zp::channel, std::error_code) {});
    bool iopub_ready = false;
    channels->on_iopub_ready([&] { iopub_ready = true; });
    channels->start_heartbeat(20ms, 1000, [](bool) {});
    int pings = 0;
    auto echo_pings = [&] {
        std::vector<zmq::message_t> ping;
        while (zmq::recv_multipart(hb, std::back_inserter(ping), zmq::recv_flags::dontwait)) {
            ++pings;
            zmq::send_multipart(hb, ping);
            ping.clear();
        }
    };
    REQUIRE(run_until(ioc, [&] {
        echo_pings();
        return iopub_ready && channels->shell_connected() && pings >= 2;
    }));

    channels->request(zp::channel::control, "shutdown_request", R"({"restart":false})");
    channels->expect_exit();
    std::vector<zmq::message_t> got;
    REQUIRE(run_until(ioc, [&] {
        return zmq::recv_multipart(control, std::back_inserter(got), zmq::recv_flags::dontwait)
            .has_value();
    }));
    // No more pings (at most one already on its way), though the kernel still answers.
    const int pings_at_exit = pings;
    run_until(ioc, [&] {
        echo_pings();
        return false;
    }, 200ms);
    CHECK(pings <= pings_at_exit + 1);  // about 10 more with the heartbeat running
    const auto attempts = channels->connect_attempts();

    // The kernel closes every socket, as it does on its way out.
    for (auto* s : {&shell, &control, &stdin_sock, &iopub, &hb}) {
        s->close();
    }
    run_until(ioc, [] { return false; }, 300ms);
    CHECK(channels->connect_attempts() == attempts);  // was about 4 per 2 ms
    CHECK_FALSE(channels->shell_connected());
    channels->close();
}

TEST_CASE("zmtp: a loopback TCP port nobody listens on is asked about instead of connected to, "
          "and connected to once it listens",
          "[zmtp]")
{
    const std::uint16_t port = free_port();
    boost::asio::io_context ioc;
    int got = 0;
    auto dealer = counting_dealer(ioc, got);
    dealer->connect("127.0.0.1", port);
    run_until(ioc, [] { return false; }, 300ms);
    // Retrying every 1-2 ms by connecting made some 150 attempts here. Now the kernel is
    // asked, and a connect is only tried every 100 ms should its answer be wrong.
    CHECK(dealer->connect_attempts() <= 4);
    CHECK(dealer->listen_probes() >= 50);
    CHECK_FALSE(dealer->connected());

    zmq::context_t ctx(1);
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:" + std::to_string(port));
    REQUIRE(run_until(ioc, [&] { return dealer->connected(); }));
    check_hello_arrives(ioc, *dealer, router);
    dealer->close();
}

TEST_CASE("zmtp: with wait_for_read a port is looked at slowly until the kernel opens its "
          "connection file, and connected to once it listens",
          "[zmtp]")
{
    char tmpl[] = "/tmp/kg-zmtp-read-XXXXXX";
    const std::filesystem::path dir = ::mkdtemp(tmpl);
    const auto conn = dir / "kernel-1.json";
    std::ofstream(conn) << "{}";
    const std::uint16_t port = free_port();
    const std::uint16_t other_port = free_port();
    boost::asio::io_context ioc;
    int got = 0;
    auto dealer = counting_dealer(ioc, got);
    dealer->wait_for_read(conn.string());
    dealer->connect("127.0.0.1", port);
    // The same without a connection file to wait on: looked at every 1-2 ms.
    int other_got = 0;
    auto other = counting_dealer(ioc, other_got);
    other->connect("127.0.0.1", other_port);
    run_until(ioc, [] { return false; }, 400ms);
    const auto looks = dealer->listen_probes() + dealer->connect_attempts();
    const auto other_looks = other->listen_probes() + other->connect_attempts();
    // 50 ms at 1-2 ms, then every 100 ms: about 30, against some 200.
    CHECK(looks <= 60);
    CHECK(other_looks >= 3 * looks);
    CHECK_FALSE(dealer->connected());

    zmq::context_t ctx(1);
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:" + std::to_string(port));
    { std::ifstream in(conn); }  // the kernel reads its file, and binds
    REQUIRE(run_until(ioc, [&] { return dealer->connected(); }));
    check_hello_arrives(ioc, *dealer, router);
    dealer->close();
    other->close();
    std::filesystem::remove_all(dir);
}
