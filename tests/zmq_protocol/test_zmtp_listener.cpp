// SPDX-License-Identifier: BSD-3-Clause
// zmtp_listener (the kernel's side: ROUTER, PUB, REP) against real libzmq peers (DEALER, SUB,
// REQ) on TCP and Unix sockets, and against our own zmtp_socket.
#include "zmq_protocol/zmtp_listener.hpp"

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "zmq_protocol/zmtp_socket.hpp"

namespace zp = kernelgate::zmq_protocol;
using namespace std::chrono_literals;
using kind = zp::zmtp_listener::kind;

namespace {

std::uint16_t free_port()
{
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    socklen_t len = sizeof(sa);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    ::close(fd);
    return ntohs(sa.sin_port);
}

using collected = std::vector<std::vector<std::string>>;

/// Serves the listeners (one poll(2) per turn, as a kernel's loop does) until done() or the
/// limit;
/// what each receives lands in got[listener] and, if given, goes to on_message too.
struct server
{
    explicit server(std::vector<zp::zmtp_listener*> l) : listeners(std::move(l)) {}
    std::vector<zp::zmtp_listener*> listeners;
    std::map<zp::zmtp_listener*, collected> got;
    std::function<void(zp::zmtp_listener&, std::span<const std::string_view>)> on_message;

    template <class Done>
    bool run_until(Done done, std::function<void()> between = {},
                   std::chrono::milliseconds limit = 5000ms)
    {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        std::vector<pollfd> fds;
        std::vector<std::size_t> counts;
        while (std::chrono::steady_clock::now() < deadline) {
            if (between) {
                between();
            }
            if (done()) {
                return true;
            }
            fds.clear();
            counts.clear();
            for (auto* l : listeners) {
                l->flush();
                counts.push_back(l->watch(fds));
            }
            ::poll(fds.data(), fds.size(), 1);
            std::span<const pollfd> rest(fds);
            for (std::size_t i = 0; i < listeners.size(); ++i) {
                auto* l = listeners[i];
                l->serve(rest.first(counts[i]), [&, l](std::span<const std::string_view> p) {
                    got[l].emplace_back(p.begin(), p.end());
                    if (on_message) {
                        on_message(*l, p);
                    }
                });
                rest = rest.subspan(counts[i]);
            }
        }
        return done();
    }
};

std::vector<std::string> strings(std::vector<zmq::message_t>& frames)
{
    std::vector<std::string> out;
    for (auto& f : frames) {
        out.push_back(f.to_string());
    }
    return out;
}

bool recv_into(zmq::socket_t& s, std::vector<std::vector<std::string>>& into)
{
    std::vector<zmq::message_t> frames;
    bool any = false;
    while (zmq::recv_multipart(s, std::back_inserter(frames), zmq::recv_flags::dontwait)) {
        into.push_back(strings(frames));
        frames.clear();
        any = true;
    }
    return any;
}

std::vector<std::string_view> views(const std::vector<std::string>& v)
{
    return {v.begin(), v.end()};
}

} // namespace

TEST_CASE("zmtp_listener: a ROUTER serves libzmq DEALERs and routes replies by id", "[zmtp]")
{
    const auto port = free_port();
    zp::zmtp_listener router(kind::router, "tcp", "127.0.0.1", port);
    server srv{{&router}};
    // Echo every request back to whoever sent it, with a reply marker.
    srv.on_message = [](zp::zmtp_listener& l, std::span<const std::string_view> p) {
        std::vector<std::string_view> reply(p.begin(), p.end());
        reply.push_back("reply");
        l.send(reply);
    };

    zmq::context_t ctx{1};
    zmq::socket_t a(ctx, zmq::socket_type::dealer);
    zmq::socket_t b(ctx, zmq::socket_type::dealer);
    for (auto* s : {&a, &b}) {
        s->set(zmq::sockopt::linger, 0);
        s->connect("tcp://127.0.0.1:" + std::to_string(port));
    }
    const std::string big(300000, 'x');  // several read chunks
    for (int i = 0; i < 500; ++i) {
        const std::string n = std::to_string(i);
        std::array<zmq::const_buffer, 2> msg{zmq::buffer(std::string_view("a")), zmq::buffer(n)};
        REQUIRE(zmq::send_multipart(a, msg));
    }
    std::array<zmq::const_buffer, 2> bmsg{zmq::buffer(std::string_view("b")), zmq::buffer(big)};
    REQUIRE(zmq::send_multipart(b, bmsg));

    collected at_a;
    collected at_b;
    REQUIRE(srv.run_until([&] { return at_a.size() == 500 && at_b.size() == 1; }, [&] {
        recv_into(a, at_a);
        recv_into(b, at_b);
    }));
    // Each peer got its own replies, in order, without the routing id.
    for (int i = 0; i < 500; ++i) {
        REQUIRE(at_a[static_cast<std::size_t>(i)] ==
                std::vector<std::string>{"a", std::to_string(i), "reply"});
    }
    REQUIRE(at_b[0] == std::vector<std::string>{"b", big, "reply"});
    // Delivered with a 5-byte routing id first, one id per connection.
    const auto& got = srv.got[&router];
    REQUIRE(got.size() == 501);
    CHECK(got[0][0].size() == 5);
    CHECK(got[0][0] != got[500][0]);
    CHECK(router.connections() == 2);
    CHECK(router.protocol_errors() == 0);

    // A reply to an id that is gone is dropped, not sent elsewhere.
    std::vector<std::string_view> stray{std::string_view("\0\0\0\0\x63", 5), "stray"};
    router.send(stray);
    router.flush();
    std::this_thread::sleep_for(50ms);
    CHECK_FALSE(recv_into(a, at_a));
    CHECK_FALSE(recv_into(b, at_b));
}

TEST_CASE("zmtp_listener: a PUB on ipc sends by subscription to libzmq SUBs", "[zmtp]")
{
    const auto dir = std::filesystem::temp_directory_path() /
                     ("kg-zmtp-listener-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string base = (dir / "k").string();
    {
        zp::zmtp_listener pub(kind::pub, "ipc", base, 3);
        CHECK(std::filesystem::exists(base + "-3"));
        server srv{{&pub}};

        zmq::context_t ctx{1};
        zmq::socket_t all(ctx, zmq::socket_type::sub);
        zmq::socket_t some(ctx, zmq::socket_type::sub);
        all.set(zmq::sockopt::subscribe, "");
        some.set(zmq::sockopt::subscribe, "status");
        for (auto* s : {&all, &some}) {
            s->set(zmq::sockopt::linger, 0);
            s->connect("ipc://" + base + "-3");
        }
        // Publish a probe until both subscriptions are in (a SUB joins a moment later).
        collected at_all;
        collected at_some;
        const std::vector<std::string> probe{"status", "probe"};
        REQUIRE(srv.run_until([&] { return !at_all.empty() && !at_some.empty(); }, [&] {
            pub.send(views(probe));
            recv_into(all, at_all);
            recv_into(some, at_some);
        }));
        // Drain the probes still in flight: a fence sent after the last probe arrives after
        // it at both (one connection each, in order).
        const std::vector<std::string> fence{"status", "fence"};
        pub.send(views(fence));
        REQUIRE(srv.run_until(
            [&] {
                return !at_all.empty() && at_all.back() == fence && !at_some.empty() &&
                       at_some.back() == fence;
            },
            [&] {
                recv_into(all, at_all);
                recv_into(some, at_some);
            }));
        at_all.clear();
        at_some.clear();

        const std::vector<std::string> stream{"stream", "hello"};
        const std::vector<std::string> status{"status", "idle"};
        pub.send(views(stream));
        pub.send(views(status));
        REQUIRE(srv.run_until([&] { return at_all.size() == 2 && at_some.size() == 1; }, [&] {
            recv_into(all, at_all);
            recv_into(some, at_some);
        }));
        CHECK(at_all == collected{stream, status});
        CHECK(at_some == collected{status});  // the prefix filter held "stream" back
        CHECK(pub.protocol_errors() == 0);
    }
    // The socket file goes with the listener.
    CHECK_FALSE(std::filesystem::exists(base + "-3"));
    std::filesystem::remove_all(dir);
}

TEST_CASE("zmtp_listener: a REP answers a libzmq REQ (the heartbeat)", "[zmtp]")
{
    const auto port = free_port();
    zp::zmtp_listener rep(kind::rep, "tcp", "127.0.0.1", port);
    server srv{{&rep}};
    srv.on_message = [](zp::zmtp_listener& l, std::span<const std::string_view> p) {
        l.send(p);  // echo, envelope and all
    };
    zmq::context_t ctx{1};
    zmq::socket_t req(ctx, zmq::socket_type::req);
    req.set(zmq::sockopt::linger, 0);
    req.connect("tcp://127.0.0.1:" + std::to_string(port));
    for (int i = 0; i < 3; ++i) {
        const std::string ping = "ping-" + std::to_string(i);
        REQUIRE(req.send(zmq::buffer(ping)));
        zmq::message_t pong;
        bool got = false;
        REQUIRE(srv.run_until([&] { return got; }, [&] {
            got = got || req.recv(pong, zmq::recv_flags::dontwait).has_value();  // REQ: once
        }));
        CHECK(pong.to_string() == ping);
    }
}

TEST_CASE("zmtp_listener: our own zmtp_socket DEALER and SUB talk to it", "[zmtp]")
{
    const auto p1 = free_port();
    const auto p2 = free_port();
    zp::zmtp_listener router(kind::router, "tcp", "127.0.0.1", p1);
    zp::zmtp_listener pub(kind::pub, "tcp", "127.0.0.1", p2);
    server srv{{&router, &pub}};
    srv.on_message = [&](zp::zmtp_listener& l, std::span<const std::string_view> p) {
        if (&l == &router) {
            std::vector<std::string_view> out(p.begin() + 1, p.end());
            pub.send(out);  // everything a client sends is published
            l.send(p);      // and answered
        }
    };
    boost::asio::io_context ioc;
    auto dealer = std::make_shared<zp::zmtp_socket>(ioc, zp::zmtp_socket::kind::dealer, "d");
    auto sub = std::make_shared<zp::zmtp_socket>(ioc, zp::zmtp_socket::kind::sub, "");
    collected at_dealer;
    collected at_sub;
    dealer->start([&](std::span<const std::string_view> p) { at_dealer.emplace_back(p.begin(), p.end()); });
    sub->start([&](std::span<const std::string_view> p) { at_sub.emplace_back(p.begin(), p.end()); });
    dealer->connect("127.0.0.1", p1);
    sub->connect("127.0.0.1", p2);
    // Wait until the SUB's subscription is in: publish nothing before that.
    REQUIRE(srv.run_until([&] { return sub->connected() && dealer->connected(); },
                          [&] { ioc.poll(); ioc.restart(); }));
    // The SUB's subscription follows its handshake: let it arrive.
    srv.run_until([] { return false; }, [&] { ioc.poll(); ioc.restart(); }, 100ms);
    for (int i = 0; i < 200; ++i) {
        const std::string n = std::to_string(i);
        const std::vector<std::string_view> msg{"m", n};
        REQUIRE(dealer->send(msg));
    }
    REQUIRE(srv.run_until([&] { return at_dealer.size() == 200 && at_sub.size() == 200; },
                          [&] { ioc.poll(); ioc.restart(); }));
    for (int i = 0; i < 200; ++i) {
        REQUIRE(at_dealer[static_cast<std::size_t>(i)] ==
                std::vector<std::string>{"m", std::to_string(i)});
        REQUIRE(at_sub[static_cast<std::size_t>(i)] == at_dealer[static_cast<std::size_t>(i)]);
    }
    CHECK(dealer->protocol_errors() == 0);
    CHECK(sub->protocol_errors() == 0);
}

TEST_CASE("zmtp_listener: a peer that breaks the protocol is dropped, others go on", "[zmtp]")
{
    const auto port = free_port();
    zp::zmtp_listener router(kind::router, "tcp", "127.0.0.1", port);
    server srv{{&router}};
    srv.on_message = [](zp::zmtp_listener& l, std::span<const std::string_view> p) { l.send(p); };

    const int raw = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(raw, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
    const std::string junk = "GET / HTTP/1.1\r\n\r\n";
    REQUIRE(::send(raw, junk.data(), junk.size(), 0) == static_cast<ssize_t>(junk.size()));
    REQUIRE(srv.run_until([&] { return router.protocol_errors() == 1; }));
    CHECK(router.connections() == 0);
    // The peer sees its connection closed (after our greeting).
    char buf[256];
    ssize_t n = 0;
    ssize_t total = 0;
    while ((n = ::recv(raw, buf, sizeof(buf), 0)) > 0) {
        total += n;
    }
    CHECK(n == 0);
    CHECK(total > 0);
    ::close(raw);

    zmq::context_t ctx{1};
    zmq::socket_t ok(ctx, zmq::socket_type::dealer);
    ok.set(zmq::sockopt::linger, 0);
    ok.connect("tcp://127.0.0.1:" + std::to_string(port));
    REQUIRE(ok.send(zmq::buffer(std::string_view("still here"))));
    collected got;
    REQUIRE(srv.run_until([&] { return !got.empty(); }, [&] { recv_into(ok, got); }));
    CHECK(got[0] == std::vector<std::string>{"still here"});
}

/// A ROUTER listener and one libzmq DEALER (with the given receive high-water mark) that
/// has said hello: `id` is its routing id.
struct dealer_peer
{
    explicit dealer_peer(int rcvhwm)
        : port(free_port()), router(kind::router, "tcp", "127.0.0.1", port), srv({&router}),
          d(ctx, zmq::socket_type::dealer)
    {
        d.set(zmq::sockopt::linger, 0);
        d.set(zmq::sockopt::rcvhwm, rcvhwm);
        d.connect("tcp://127.0.0.1:" + std::to_string(port));
        REQUIRE(d.send(zmq::buffer(std::string_view("hi"))));
        REQUIRE(srv.run_until([&] { return !srv.got[&router].empty(); }));
        id = srv.got[&router][0][0];
    }
    std::uint16_t port;
    zp::zmtp_listener router;
    server srv;
    zmq::context_t ctx{1};
    zmq::socket_t d;
    std::string id;
};

TEST_CASE("zmtp_listener: output a peer does not read yet is kept, then delivered whole",
          "[zmtp]")
{
    dealer_peer p(0);
    auto& router = p.router;
    auto& srv = p.srv;
    auto& d = p.d;
    const std::string& id = p.id;
    // 32 MiB in one go: far more than the socket buffers hold, written as the peer reads.
    const std::string chunk(1u << 20, 'c');
    for (int i = 0; i < 32; ++i) {
        const std::string n = std::to_string(i);
        const std::vector<std::string_view> msg{id, n, chunk};
        router.send(msg);
    }
    collected got;
    REQUIRE(srv.run_until([&] { return got.size() == 32; }, [&] { recv_into(d, got); }));
    for (int i = 0; i < 32; ++i) {
        REQUIRE(got[static_cast<std::size_t>(i)].size() == 2);
        REQUIRE(got[static_cast<std::size_t>(i)][0] == std::to_string(i));
        REQUIRE(got[static_cast<std::size_t>(i)][1] == chunk);
    }
}

TEST_CASE("zmtp_listener: drain() waits for a slow reader, and gives up on one that stops",
          "[zmtp]")
{
    dealer_peer p(1);  // libzmq stops reading the socket while we do not
    auto& router = p.router;
    auto& d = p.d;
    const std::string& id = p.id;
    const std::string chunk(1u << 20, 'd');
    constexpr int n = 24;
    for (int i = 0; i < n; ++i) {
        const std::string num = std::to_string(i);
        const std::vector<std::string_view> msg{id, num, chunk};
        router.send(msg);
    }
    // Nobody reads: far more than 1 MiB stays queued, and drain() returns when its time is up.
    CHECK(router.queued() > (8u << 20));
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(router.drain(1u << 20, 100ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);  // it waited, then gave up
    // A reader on another thread: drain() returns once at most 1 MiB is left.
    collected got;
    std::thread reader([&] {
        const auto until = std::chrono::steady_clock::now() + 10s;
        while (got.size() < n && std::chrono::steady_clock::now() < until) {
            recv_into(d, got);
            std::this_thread::sleep_for(1ms);
        }
    });
    const bool drained = router.drain(1u << 20, 10s);
    CHECK(drained);
    CHECK(router.queued() <= (1u << 20));
    CHECK(router.drain(0, 10s));  // and everything, as the reader goes on
    reader.join();
    REQUIRE(got.size() == n);
    for (int i = 0; i < n; ++i) {
        REQUIRE(got[static_cast<std::size_t>(i)][0] == std::to_string(i));
        REQUIRE(got[static_cast<std::size_t>(i)][1] == chunk);
    }
}

TEST_CASE("zmtp_listener: an address in use is an error, not a silent listener", "[zmtp]")
{
    const auto port = free_port();
    zp::zmtp_listener first(kind::router, "tcp", "127.0.0.1", port);
    CHECK_THROWS_AS(zp::zmtp_listener(kind::router, "tcp", "127.0.0.1", port), std::system_error);
    CHECK_THROWS_AS(zp::zmtp_listener(kind::pub, "tcp", "not-an-address", 1), std::system_error);
    CHECK_THROWS_AS(zp::zmtp_listener(kind::pub, "ipc", std::string(200, 'p'), 1),
                    std::system_error);
}
