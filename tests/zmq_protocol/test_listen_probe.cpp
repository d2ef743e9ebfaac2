// SPDX-License-Identifier: BSD-3-Clause
// tcp_listening against real sockets of this machine: listening, bound only, closed, bound
// to another address, and an IPv6 dual-stack listener asked about as IPv4.
#include "zmq_protocol/listen_probe.hpp"

#include <array>
#include <cstdint>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace zp = kernelgate::zmq_protocol;

namespace {

constexpr std::array<unsigned char, 4> k_lo4{127, 0, 0, 1};
constexpr std::array<unsigned char, 16> k_lo6{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};

/// A TCP socket of this process, closed with the object.
struct tcp_socket
{
    int fd = -1;
    explicit tcp_socket(int family) : fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0)) {}
    ~tcp_socket() { close(); }
    tcp_socket(const tcp_socket&) = delete;
    tcp_socket& operator=(const tcp_socket&) = delete;
    void close()
    {
        if (fd >= 0) {
            ::close(fd);
            fd = -1;
        }
    }
    /// Binds an IPv4 address (host order) on `port` (0: a free one); returns the port.
    std::uint16_t bind4(std::uint32_t host_addr, std::uint16_t port = 0)
    {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(host_addr);
        a.sin_port = htons(port);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
        socklen_t len = sizeof(a);
        REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        return ntohs(a.sin_port);
    }
};

zp::listening ask4(std::uint16_t port)
{
    return zp::tcp_listening(k_lo4, port);
}

} // namespace

TEST_CASE("listen_probe: a port is listening only once listen() is called, and not after "
          "close",
          "[listen_probe]")
{
    tcp_socket s(AF_INET);
    REQUIRE(s.fd >= 0);
    const std::uint16_t port = s.bind4(INADDR_LOOPBACK);
    CHECK(ask4(port) == zp::listening::no);  // bound, as a kernel between bind and listen
    REQUIRE(::listen(s.fd, 4) == 0);
    CHECK(ask4(port) == zp::listening::yes);
    s.close();
    CHECK(ask4(port) == zp::listening::no);
}

TEST_CASE("listen_probe: a listener on another address, or on the IPv4 wildcard, is told "
          "apart",
          "[listen_probe]")
{
    // 127.0.0.2 is loopback too, but a connect to 127.0.0.1 does not reach it.
    tcp_socket other(AF_INET);
    const std::uint16_t port = other.bind4(0x7f000002);
    REQUIRE(::listen(other.fd, 4) == 0);
    CHECK(ask4(port) == zp::listening::no);
    const std::array<unsigned char, 4> lo2{127, 0, 0, 2};
    CHECK(zp::tcp_listening(lo2, port) == zp::listening::yes);

    // 0.0.0.0 takes connects to every address of the machine.
    tcp_socket any(AF_INET);
    const std::uint16_t any_port = any.bind4(INADDR_ANY);
    REQUIRE(::listen(any.fd, 4) == 0);
    CHECK(ask4(any_port) == zp::listening::yes);
    CHECK(zp::tcp_listening(k_lo6, any_port) == zp::listening::no);  // IPv4 only
}

TEST_CASE("listen_probe: an IPv6 dual-stack listener counts for IPv4 and IPv6 loopback",
          "[listen_probe]")
{
    tcp_socket s(AF_INET6);
    REQUIRE(s.fd >= 0);  // the kernel has IPv6 (Debian's does, even without an address)
    int off = 0;
    REQUIRE(::setsockopt(s.fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) == 0);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    REQUIRE(::bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    socklen_t len = sizeof(a);
    REQUIRE(::getsockname(s.fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    const std::uint16_t port = ntohs(a.sin6_port);
    CHECK(zp::tcp_listening(k_lo6, port) == zp::listening::no);
    REQUIRE(::listen(s.fd, 4) == 0);
    CHECK(ask4(port) == zp::listening::yes);
    CHECK(zp::tcp_listening(k_lo6, port) == zp::listening::yes);
}

TEST_CASE("listen_probe: an address that is neither IPv4 nor IPv6 is not asked about",
          "[listen_probe]")
{
    const std::array<unsigned char, 5> odd{127, 0, 0, 1, 0};
    CHECK(zp::tcp_listening(odd, 1) == zp::listening::unknown);
    CHECK(zp::tcp_listening({}, 1) == zp::listening::unknown);
}
