// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace kernelgate::zmq_protocol::zmtp {

/// ZMTP 3.0 (rfc.zeromq.org/spec/23) with the NULL mechanism, the client side of what a
/// kernel's libzmq sockets speak: enough to be a DEALER, SUB or REQ peer of a ROUTER, PUB or
/// REP/ROUTER. Pure functions and a pure incremental decoder (no sockets): fuzzable.

inline constexpr std::size_t greeting_size = 64;

/// Our greeting: signature, version 3.0, mechanism NULL, as-server 0.
std::string make_greeting();

/// Appends one frame to out (short or long size, MORE and COMMAND flags as given).
void append_frame(std::string& out, std::string_view body, bool more, bool command = false);

/// Appends a READY command carrying Socket-Type and, when not empty, Identity.
void append_ready(std::string& out, std::string_view socket_type, std::string_view identity);

/// Bytes received from a peer and not yet decoded, in one buffer that grows as needed: a
/// reader reads into room(), adds what it read with filled(), decodes unread() and drops
/// what it used with consume(). The buffer is not zero-filled: a page of it is first
/// touched by the read that fills it, so room asked for and never used costs nothing.
class read_buffer
{
public:
    std::string_view unread() const noexcept { return {buf_.get() + start_, end_ - start_}; }
    std::size_t unread_size() const noexcept { return end_ - start_; }
    void consume(std::size_t n) noexcept { start_ += n; }
    void filled(std::size_t n) noexcept { end_ += n; }
    void clear() noexcept { start_ = end_ = 0; }
    /// When everything is consumed: starts again at the front, and lets a buffer larger
    /// than `keep` go (a big message's buffer is not kept).
    void rewind(std::size_t keep);
    /// At least `chunk` writable bytes after the unread ones (moved to the front first, the
    /// buffer doubled if that is not enough). Valid until the next call.
    std::span<char> room(std::size_t chunk);

    /// Bytes the buffer holds room for.
    std::size_t capacity() const noexcept { return size_; }

private:
    std::unique_ptr<char[]> buf_;
    std::size_t size_ = 0;
    std::size_t start_ = 0;
    std::size_t end_ = 0;
};

/// A count of the whole messages in bytes received after the handshake, made without
/// decoding them: frame headers are read and bodies skipped. scan_frames() goes on from where
/// the last call over the same (since grown) bytes stopped. A command counts as a message.
struct frame_scan
{
    std::size_t pos = 0;       ///< bytes scanned: the start of the first frame not complete
    std::size_t messages = 0;  ///< messages whose last frame ends before pos
};
/// `bytes` begins at a message boundary; only whole frames are counted.
void scan_frames(std::string_view bytes, frame_scan& scan) noexcept;

/// Bounds applied to what a peer sends.
struct limits
{
    std::size_t max_message_bytes = 512u * 1024u * 1024u;  ///< all frames of one message
    std::size_t max_frames = 4096;                          ///< frames in one message
    std::size_t max_command_bytes = 65536;                  ///< one command frame
};

enum class error
{
    bad_greeting = 1,       ///< not a ZMTP 3.x greeting
    bad_mechanism,          ///< a security mechanism other than NULL
    bad_handshake,          ///< first frame not a READY command, or malformed properties
    incompatible_peer,      ///< Socket-Type cannot talk to ours
    message_too_large,      ///< over limits.max_message_bytes
    too_many_frames,        ///< over limits.max_frames
    command_too_large,      ///< over limits.max_command_bytes
    command_in_message,     ///< a command frame inside a multipart message
    peer_error,             ///< the peer sent an ERROR command
};
const std::error_category& error_category() noexcept;
std::error_code make_error_code(error e) noexcept;

/// What decoder::next found.
enum class event
{
    need_more,  ///< not enough bytes yet (nothing consumed)
    ready,      ///< greeting and READY done: the connection carries messages now
    message,    ///< a whole message: parts() holds its frames
    ping,       ///< a PING command: send pong() back
    ignored,    ///< a command we do not act on (consumed)
    failed,     ///< a protocol violation: failure() says which; drop the connection
};

/// Decodes the peer's byte stream. Feed it the unconsumed bytes; it never reads past them,
/// and it reports a message only when all of its frames are present, with parts() pointing
/// into the bytes given (valid until they are consumed and overwritten).
class decoder
{
public:
    /// peer_types: Socket-Type values accepted from the peer, comma-separated ("ROUTER,REP").
    decoder(std::string_view peer_types, limits lim = {});

    /// Looks at data; on return *consumed says how many bytes were used up.
    event next(std::string_view data, std::size_t* consumed);

    const std::vector<std::string_view>& parts() const noexcept { return parts_; }
    std::error_code failure() const noexcept { return failure_; }
    /// The PONG command body for the last PING.
    const std::string& pong() const noexcept { return pong_; }
    const std::string& peer_type() const noexcept { return peer_type_; }
    bool handshake_done() const noexcept { return state_ == state::traffic; }

private:
    enum class state
    {
        greeting,
        handshake,
        traffic,
        failed,
    };
    event fail(error e);
    event on_command(std::string_view body);
    /// A command frame whose header (header bytes, body size) starts data.
    event command_frame(std::string_view data, std::size_t header, std::uint64_t size,
                        std::size_t* consumed);

    std::string peer_types_;
    limits limits_;
    state state_ = state::greeting;
    std::vector<std::string_view> parts_;
    std::error_code failure_;
    std::string pong_;
    std::string peer_type_;
};

} // namespace kernelgate::zmq_protocol::zmtp

template <>
struct std::is_error_code_enum<kernelgate::zmq_protocol::zmtp::error> : std::true_type
{
};
