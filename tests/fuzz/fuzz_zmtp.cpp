// SPDX-License-Identifier: BSD-3-Clause
// Fuzz target for zmq_protocol::zmtp::decoder (the bytes a kernel's libzmq socket sends us),
// and for zmtp::scan_frames over the same bytes.
//
// Input layout: byte 0 picks the chunk size the stream is fed in (1..16 bytes, or all at
// once) and the peer types; the rest is the stream. The decoder must never read past what it
// is given, report parts inside it, respect the limits, and stop for good after a failure.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "zmq_protocol/zmtp.hpp"

namespace zmtp = kernelgate::zmq_protocol::zmtp;

namespace {

void check(bool ok)
{
    if (!ok) {
        __builtin_trap();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) {
        return 0;
    }
    const std::uint8_t mode = data[0];
    const std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
    zmtp::limits lim;
    lim.max_message_bytes = 4096;
    lim.max_frames = 16;
    lim.max_command_bytes = 512;
    zmtp::decoder dec((mode & 0x40) != 0 ? "PUB,XPUB" : "ROUTER,DEALER,REP", lim);
    const std::size_t chunk = (mode & 0x0f) == 0 ? stream.size() : (mode & 0x0f);

    // zmtp::scan_frames over the same bytes (as if after the handshake), fed chunk by chunk:
    // it never passes what it is given, never goes back, and ends where one pass over all of
    // them ends.
    {
        zmtp::frame_scan inc;
        const std::size_t step = std::max<std::size_t>(chunk, 1);
        for (std::size_t n = 0;; n = std::min(stream.size(), n + step)) {
            const std::size_t before = inc.pos;
            zmtp::scan_frames(stream.substr(0, n), inc);
            check(inc.pos <= n && inc.pos >= before);
            if (n == stream.size()) {
                break;
            }
        }
        zmtp::frame_scan whole;
        zmtp::scan_frames(stream, whole);
        check(whole.pos == inc.pos && whole.messages == inc.messages);
    }

    // The bytes arrive chunk by chunk into a buffer, as from a socket.
    std::string buf;
    std::size_t fed = 0;
    bool failed = false;
    while (fed < stream.size() || !buf.empty()) {
        if (fed < stream.size()) {
            const std::size_t n = std::min(chunk, stream.size() - fed);
            buf.append(stream.substr(fed, n));
            fed += n;
        }
        for (;;) {
            std::size_t used = 0;
            const auto ev = dec.next(buf, &used);
            check(used <= buf.size());
            if (failed) {
                check(ev == zmtp::event::failed);  // a failed decoder stays failed
                return 0;
            }
            if (ev == zmtp::event::failed) {
                check(used == 0 && dec.failure());
                failed = true;
                continue;
            }
            if (ev == zmtp::event::message) {
                std::size_t total = 0;
                check(!dec.parts().empty() && dec.parts().size() <= lim.max_frames);
                for (const auto part : dec.parts()) {
                    check(part.data() >= buf.data() &&
                          part.data() + part.size() <= buf.data() + used);
                    total += part.size();
                }
                check(total <= lim.max_message_bytes);
                check(dec.handshake_done());
            }
            if (ev == zmtp::event::ping) {
                check(dec.pong().substr(0, 5) == "\x04PONG");
            }
            buf.erase(0, used);
            if (ev == zmtp::event::need_more) {
                check(used == 0);
                break;
            }
            check(used > 0);
        }
        if (fed == stream.size()) {
            break;
        }
    }
    return 0;
}
