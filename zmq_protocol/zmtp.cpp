// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/zmtp.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace kernelgate::zmq_protocol::zmtp {

namespace {

constexpr unsigned char flag_more = 0x01;
constexpr unsigned char flag_long = 0x02;
constexpr unsigned char flag_command = 0x04;

std::uint64_t read_be64(const unsigned char* p) noexcept
{
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) {
        v = (v << 8) | p[i];
    }
    return v;
}

std::uint32_t read_be32(const unsigned char* p) noexcept
{
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

/// One frame header at data: flags, size and header length; false if incomplete.
struct frame_header
{
    unsigned char flags = 0;
    std::uint64_t size = 0;
    std::size_t header = 0;
};
bool read_header(std::string_view data, frame_header& h) noexcept
{
    if (data.empty()) {
        return false;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    h.flags = p[0];
    if ((h.flags & flag_long) != 0) {
        if (data.size() < 9) {
            return false;
        }
        h.size = read_be64(p + 1);
        h.header = 9;
    } else {
        if (data.size() < 2) {
            return false;
        }
        h.size = p[1];
        h.header = 2;
    }
    return true;
}

class category final : public std::error_category
{
public:
    const char* name() const noexcept override { return "kernelgate.zmtp"; }
    std::string message(int ev) const override
    {
        switch (static_cast<error>(ev)) {
        case error::bad_greeting: return "peer sent no ZMTP 3 greeting";
        case error::bad_mechanism: return "peer asks for a security mechanism other than NULL";
        case error::bad_handshake: return "malformed ZMTP handshake";
        case error::incompatible_peer: return "peer socket type does not match";
        case error::message_too_large: return "message above the size limit";
        case error::too_many_frames: return "message with too many frames";
        case error::command_too_large: return "command above the size limit";
        case error::command_in_message: return "command frame inside a message";
        case error::peer_error: return "peer reported an error";
        }
        return "unknown ZMTP error";
    }
};

} // namespace

const std::error_category& error_category() noexcept
{
    static const category c;
    return c;
}

std::error_code make_error_code(error e) noexcept
{
    return {static_cast<int>(e), error_category()};
}

std::string make_greeting()
{
    std::string g(greeting_size, '\0');
    g[0] = '\xff';
    g[8] = '\x01';  // padding as libzmq sends it (a 64-bit length of 1, for ZMTP 1.0 peers)
    g[9] = '\x7f';
    g[10] = 3;      // major
    g[11] = 0;      // minor: 3.0 (subscriptions travel as messages)
    std::memcpy(g.data() + 12, "NULL", 4);
    g[32] = 0;      // as-server: no
    return g;
}

void append_frame(std::string& out, std::string_view body, bool more, bool command)
{
    unsigned char flags = (more ? flag_more : 0) | (command ? flag_command : 0);
    if (body.size() > 255) {
        flags |= flag_long;
        out.push_back(static_cast<char>(flags));
        const std::uint64_t n = body.size();
        for (int shift = 56; shift >= 0; shift -= 8) {
            out.push_back(static_cast<char>((n >> shift) & 0xff));
        }
    } else {
        out.push_back(static_cast<char>(flags));
        out.push_back(static_cast<char>(body.size()));
    }
    out.append(body);
}

void append_ready(std::string& out, std::string_view socket_type, std::string_view identity)
{
    std::string body;
    body.push_back(5);
    body.append("READY");
    auto property = [&](std::string_view name, std::string_view value) {
        body.push_back(static_cast<char>(name.size()));
        body.append(name);
        const auto n = static_cast<std::uint32_t>(value.size());
        for (int shift = 24; shift >= 0; shift -= 8) {
            body.push_back(static_cast<char>((n >> shift) & 0xff));
        }
        body.append(value);
    };
    property("Socket-Type", socket_type);
    if (!identity.empty()) {
        property("Identity", identity);
    }
    append_frame(out, body, false, true);
}

void read_buffer::rewind(std::size_t keep)
{
    if (start_ != end_) {
        return;
    }
    start_ = end_ = 0;
    if (size_ > keep) {
        buf_.reset();
        size_ = 0;
    }
}

std::span<char> read_buffer::room(std::size_t chunk)
{
    if (size_ - end_ < chunk) {
        const std::size_t unread = end_ - start_;
        if (size_ - unread < chunk) {
            // Grow into a new buffer (not zero-filled: make_unique_for_overwrite), taking
            // only the unread bytes along.
            const std::size_t size = std::max(unread + chunk, size_ * 2);
            auto grown = std::make_unique_for_overwrite<char[]>(size);
            if (unread > 0) {
                std::memcpy(grown.get(), buf_.get() + start_, unread);
            }
            buf_ = std::move(grown);
            size_ = size;
        } else if (start_ > 0) {
            std::memmove(buf_.get(), buf_.get() + start_, unread);
        }
        start_ = 0;
        end_ = unread;
    }
    return {buf_.get() + end_, size_ - end_};
}

void scan_frames(std::string_view bytes, frame_scan& scan) noexcept
{
    frame_header h;
    while (scan.pos <= bytes.size() && read_header(bytes.substr(scan.pos), h)) {
        if (bytes.size() - scan.pos - h.header < h.size) {
            return;  // the body is not all here yet (or claims more than any buffer holds)
        }
        scan.pos += h.header + static_cast<std::size_t>(h.size);
        if ((h.flags & flag_more) == 0) {
            ++scan.messages;
        }
    }
}

decoder::decoder(std::string_view peer_types, limits lim)
    : peer_types_(peer_types), limits_(lim)
{
}

event decoder::fail(error e)
{
    state_ = state::failed;
    failure_ = make_error_code(e);
    parts_.clear();
    return event::failed;
}

event decoder::on_command(std::string_view body)
{
    if (body.empty() || static_cast<unsigned char>(body[0]) + 1u > body.size()) {
        return state_ == state::handshake ? fail(error::bad_handshake) : event::ignored;
    }
    const std::string_view name = body.substr(1, static_cast<unsigned char>(body[0]));
    std::string_view data = body.substr(1 + name.size());
    if (state_ == state::handshake) {
        if (name != "READY") {
            return fail(error::bad_handshake);
        }
        std::string_view type;
        while (!data.empty()) {
            const std::size_t nlen = static_cast<unsigned char>(data[0]);
            if (data.size() < 1 + nlen + 4) {
                return fail(error::bad_handshake);
            }
            const std::string_view pname = data.substr(1, nlen);
            const std::uint32_t vlen =
                read_be32(reinterpret_cast<const unsigned char*>(data.data()) + 1 + nlen);
            if (data.size() - (1 + nlen + 4) < vlen) {
                return fail(error::bad_handshake);
            }
            const std::string_view value = data.substr(1 + nlen + 4, vlen);
            if (pname.size() == 11 && std::equal(pname.begin(), pname.end(), "Socket-Type",
                                                 [](char a, char b) {
                                                     return (a | 0x20) == (b | 0x20);
                                                 })) {
                type = value;
            }
            data.remove_prefix(1 + nlen + 4 + vlen);
        }
        // The type must be one of peer_types_ (a comma-separated list).
        std::string_view list = peer_types_;
        bool ok = false;
        while (!list.empty() && !ok) {
            const auto comma = list.find(',');
            ok = !type.empty() && list.substr(0, comma) == type;
            list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
        }
        if (!ok) {
            return fail(error::incompatible_peer);
        }
        peer_type_.assign(type);
        state_ = state::traffic;
        return event::ready;
    }
    if (name == "PING") {
        // PING: ttl (2 bytes) and a context echoed in the PONG.
        pong_.clear();
        pong_.push_back(4);
        pong_.append("PONG");
        if (data.size() > 2) {
            pong_.append(data.substr(2));
        }
        return event::ping;
    }
    if (name == "ERROR") {
        return fail(error::peer_error);
    }
    return event::ignored;
}

event decoder::command_frame(std::string_view data, std::size_t header, std::uint64_t size,
                             std::size_t* consumed)
{
    if (size > limits_.max_command_bytes) {
        return fail(error::command_too_large);
    }
    if (data.size() - header < size) {
        return event::need_more;
    }
    const auto ev = on_command(data.substr(header, static_cast<std::size_t>(size)));
    if (ev != event::failed) {
        *consumed = header + static_cast<std::size_t>(size);
    }
    return ev;
}

event decoder::next(std::string_view data, std::size_t* consumed)
{
    *consumed = 0;
    parts_.clear();
    switch (state_) {
    case state::failed:
        return event::failed;
    case state::greeting: {
        if (data.size() < greeting_size) {
            // Refuse a non-ZMTP peer as soon as its first bytes show it.
            if (!data.empty() && static_cast<unsigned char>(data[0]) != 0xff) {
                return fail(error::bad_greeting);
            }
            return event::need_more;
        }
        const auto* g = reinterpret_cast<const unsigned char*>(data.data());
        if (g[0] != 0xff || g[9] != 0x7f || g[10] < 3) {
            return fail(error::bad_greeting);
        }
        static constexpr std::array<char, 20> null_mechanism = {'N', 'U', 'L', 'L'};
        if (std::memcmp(g + 12, null_mechanism.data(), null_mechanism.size()) != 0) {
            return fail(error::bad_mechanism);
        }
        state_ = state::handshake;
        std::size_t more = 0;
        const event ev = next(data.substr(greeting_size), &more);
        if (ev == event::failed) {
            return ev;
        }
        *consumed = greeting_size + more;
        return ev == event::need_more ? event::ignored : ev;
    }
    case state::handshake: {
        frame_header h;
        if (!read_header(data, h)) {
            return event::need_more;
        }
        if ((h.flags & flag_command) == 0 || (h.flags & flag_more) != 0) {
            return fail(error::bad_handshake);
        }
        return command_frame(data, h.header, h.size, consumed);
    }
    case state::traffic:
        break;
    }

    std::size_t pos = 0;
    std::uint64_t total = 0;
    for (;;) {
        frame_header h;
        if (!read_header(data.substr(pos), h)) {
            parts_.clear();
            return event::need_more;
        }
        if ((h.flags & flag_command) != 0) {
            if (!parts_.empty()) {
                return fail(error::command_in_message);
            }
            return command_frame(data, h.header, h.size, consumed);
        }
        if (h.size > limits_.max_message_bytes - total) {
            return fail(error::message_too_large);
        }
        if (parts_.size() == limits_.max_frames) {
            return fail(error::too_many_frames);
        }
        total += h.size;
        pos += h.header;
        if (data.size() - pos < h.size) {
            parts_.clear();
            return event::need_more;
        }
        parts_.push_back(data.substr(pos, static_cast<std::size_t>(h.size)));
        pos += static_cast<std::size_t>(h.size);
        if ((h.flags & flag_more) == 0) {
            *consumed = pos;
            return event::message;
        }
    }
}

} // namespace kernelgate::zmq_protocol::zmtp
