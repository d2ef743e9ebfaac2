// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstdint>
#include <span>

namespace kernelgate::zmq_protocol {

/// Is a TCP port of this network namespace listening?
enum class listening
{
    yes,
    no,
    unknown,  ///< the question could not be asked (no sock_diag here): try to connect
};

/// Asks the Linux kernel (sock_diag netlink) whether a TCP connect to address:port would
/// find a listening socket: one bound to that address or to any address, IPv6 dual-stack
/// ([::]) included for an IPv4 address. `address` is 4 bytes (IPv4) or 16 (IPv6), in network
/// order, as boost::asio's to_bytes() gives them.
///
/// A starting kernel binds its ports some hundreds of milliseconds (seconds, for some
/// kernels) after its launch; until then each connect is refused, and an attempt costs a
/// socket, a connect the loopback answers with a reset, and a close, plus the event loop's
/// registration and completion of them. The question costs a send and a receive on one
/// netlink socket kept per thread, and the kernel answers it with a hash lookup, as for an
/// incoming connection.
///
/// Thread safety: any thread; each has its own netlink socket.
listening tcp_listening(std::span<const unsigned char> address, std::uint16_t port) noexcept;

} // namespace kernelgate::zmq_protocol
