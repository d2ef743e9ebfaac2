// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/kernel_channels.hpp"

#include <array>
#include <string_view>
#include <vector>

namespace kernelgate::zmq_protocol {

std::string_view channel_name(channel c) noexcept
{
    switch (c) {
    case channel::shell: return "shell";
    case channel::control: return "control";
    case channel::stdin_: return "stdin";
    case channel::iopub: return "iopub";
    }
    return "shell";
}

bool parse_channel(std::string_view name, channel& out) noexcept
{
    if (name == "shell") {
        out = channel::shell;
    } else if (name == "control") {
        out = channel::control;
    } else if (name == "stdin") {
        out = channel::stdin_;
    } else if (name == "iopub") {
        out = channel::iopub;
    } else {
        return false;
    }
    return true;
}

kernel_channels::kernel_channels(boost::asio::io_context& ioc,
                                 zmq::context_t& ctx,
                                 const connection_info& info,
                                 std::string session_id)
    : ioc_(ioc),
      ctx_(ctx),
      info_(info),
      session_id_(std::move(session_id)),
      signer_(info.key),
      hb_timer_(ioc)
{
}

kernel_channels::~kernel_channels()
{
    close();
}

void kernel_channels::start(message_handler on_message, reject_handler on_reject)
{
    on_message_ = std::move(on_message);
    on_reject_ = std::move(on_reject);
    const std::string identity = session_id_;
    auto make = [&](zmq::socket_type type, std::uint16_t port, channel ch) {
        auto s = std::make_shared<async_socket>(ioc_, ctx_, type);
        if (type == zmq::socket_type::dealer) {
            s->raw().set(zmq::sockopt::routing_id, identity);
        }
        if (type == zmq::socket_type::sub) {
            // Bounds what libzmq buffers for us when a kernel outruns the gateway: past this
            // the kernel's PUB drops, as it would for any slow subscriber.
            s->raw().set(zmq::sockopt::rcvhwm, 10000);
            s->raw().set(zmq::sockopt::subscribe, "");
        }
        // We connect before a starting kernel has bound its ports: retry every 1, 2, then
        // 4 ms (libzmq's default is 100 ms), so the connection follows the bind within a few
        // milliseconds. A failed connect to a local port costs microseconds; the sockets are
        // closed when the kernel process exits, so nothing retries for a dead kernel.
        s->raw().set(zmq::sockopt::reconnect_ivl, 1);
        s->raw().set(zmq::sockopt::reconnect_ivl_max, 4);
        // A kernel must not be able to make us allocate without bound (SECURITY.md J07).
        s->raw().set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(512) << 20);
        s->raw().connect(info_.endpoint(port));
        s->start([weak = weak_from_this(), ch](async_socket::frames& f) {
            if (auto self = weak.lock()) {
                self->on_frames(ch, f);
            }
        });
        return s;
    };
    shell_ = make(zmq::socket_type::dealer, info_.shell_port, channel::shell);
    control_ = make(zmq::socket_type::dealer, info_.control_port, channel::control);
    stdin_ = make(zmq::socket_type::dealer, info_.stdin_port, channel::stdin_);
    iopub_ = make(zmq::socket_type::sub, info_.iopub_port, channel::iopub);
}

void kernel_channels::on_frames(channel ch, async_socket::frames& frames)
{
    std::array<std::string_view, 64> small{};
    std::vector<std::string_view> large;
    std::span<const std::string_view> views;
    if (frames.size() <= small.size()) {
        for (std::size_t i = 0; i < frames.size(); ++i) {
            small[i] = frames[i].to_string_view();
        }
        views = std::span<const std::string_view>(small.data(), frames.size());
    } else {
        large.reserve(frames.size());
        for (auto& f : frames) {
            large.push_back(f.to_string_view());
        }
        views = large;
    }
    auto decoded = decode_frames(views, signer_, &guard_);
    if (!decoded) {
        ++stats_.rejected;
        if (on_reject_) {
            on_reject_(ch, decoded.error());
        }
        return;
    }
    ++stats_.received;
    if (on_message_) {
        on_message_(ch, std::move(decoded).value());
    }
}

bool kernel_channels::send(channel ch, const message& msg)
{
    async_socket* s = nullptr;
    switch (ch) {
    case channel::shell: s = shell_.get(); break;
    case channel::control: s = control_.get(); break;
    case channel::stdin_: s = stdin_.get(); break;
    case channel::iopub: return false;  // clients never write to iopub
    }
    if (s == nullptr || closed_) {
        return false;
    }
    // The parts go to libzmq straight from the message (one copy, into its frames); only the
    // signature is made here, on the stack.
    const auto json = wire_json_parts(msg);
    std::array<char, signer::hex_size> sig{};
    signer_.sign_hex(sig.data(), json[0], json[1], json[2], json[3]);
    const std::string_view signature(sig.data(), signer_.enabled() ? sig.size() : 0);
    std::array<std::string_view, 24> small;
    std::vector<std::string_view> large;
    std::span<std::string_view> parts(small.data(), wire_part_count(msg));
    if (parts.size() > small.size()) {
        large.resize(parts.size());
        parts = large;
    }
    wire_parts(msg, signature, parts);
    if (!s->send(std::span<const std::string_view>(parts))) {
        ++stats_.send_dropped;
        return false;
    }
    ++stats_.sent;
    return true;
}

std::string kernel_channels::request(channel ch, std::string_view msg_type,
                                     std::string_view content_json)
{
    std::string id = new_uuid();
    message m;
    m.header = make_header(msg_type, session_id_, "kernelgate", id);
    m.parent_header = "{}";
    m.metadata = "{}";
    m.content = std::string(content_json);
    send(ch, m);
    return id;
}

void kernel_channels::make_hb_socket()
{
    if (hb_) {
        hb_->close();
    }
    hb_ = std::make_shared<async_socket>(ioc_, ctx_, zmq::socket_type::req);
    hb_->raw().set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(4096));
    hb_->raw().connect(info_.endpoint(info_.hb_port));
    hb_->start([weak = weak_from_this()](async_socket::frames&) {
        auto self = weak.lock();
        if (!self) {
            return;
        }
        self->hb_waiting_ = false;
        self->hb_misses_ = 0;
        if (!self->hb_alive_) {
            self->hb_alive_ = true;
            if (self->on_hb_) {
                self->on_hb_(true);
            }
        }
    });
    hb_waiting_ = false;
}

void kernel_channels::start_heartbeat(std::chrono::milliseconds interval, int max_misses,
                                      heartbeat_handler on_change)
{
    hb_interval_ = interval;
    hb_max_misses_ = max_misses;
    on_hb_ = std::move(on_change);
    make_hb_socket();
    heartbeat_tick();
}

void kernel_channels::heartbeat_tick()
{
    if (closed_) {
        return;
    }
    if (hb_waiting_) {
        // No echo within one interval: a miss. A REQ socket stuck waiting must be rebuilt.
        ++hb_misses_;
        ++stats_.heartbeat_misses;
        make_hb_socket();
        if (hb_misses_ >= hb_max_misses_ && hb_alive_) {
            hb_alive_ = false;
            if (on_hb_) {
                on_hb_(false);
            }
        }
    }
    static const std::array<std::string, 1> ping{std::string("ping")};
    if (hb_->send(ping)) {
        hb_waiting_ = true;
    }
    hb_timer_.expires_after(hb_interval_);
    hb_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
        if (auto self = weak.lock(); self && !ec) {
            self->heartbeat_tick();
        }
    });
}

void kernel_channels::close()
{
    if (closed_) {
        return;
    }
    closed_ = true;
    hb_timer_.cancel();
    for (auto* s : {&shell_, &control_, &stdin_, &iopub_, &hb_}) {
        if (*s) {
            (*s)->close();
            s->reset();
        }
    }
}

} // namespace kernelgate::zmq_protocol
