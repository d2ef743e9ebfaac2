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
                                 const connection_info& info,
                                 std::string session_id)
    : ioc_(ioc),
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
    auto make = [&](zmtp_socket::kind kind, channel ch) {
        // A kernel must not be able to make us allocate without bound (SECURITY.md J07):
        // 512 MiB per message, 4096 frames (zmtp::limits).
        auto s = std::make_shared<zmtp_socket>(
            ioc_, kind, kind == zmtp_socket::kind::dealer ? identity : std::string());
        s->start([weak = weak_from_this(), ch](std::span<const std::string_view> f) {
            if (auto self = weak.lock()) {
                self->on_frames(ch, f);
            }
        });
        return s;
    };
    shell_ = make(zmtp_socket::kind::dealer, channel::shell);
    control_ = make(zmtp_socket::kind::dealer, channel::control);
    stdin_ = make(zmtp_socket::kind::dealer, channel::stdin_);
    iopub_ = make(zmtp_socket::kind::sub, channel::iopub);
    // Until a starting kernel binds, every socket retries every 2 ms; ipykernel takes some
    // hundreds of milliseconds to get there. Only shell looks for it; the others (heartbeat
    // too) start once shell has connected. Kernels bind their sockets together: ipykernel
    // shell first, then stdin, control and iopub within a few milliseconds. Messages sent on
    // them before wait in their queues, as before any handshake. From then on each socket
    // reconnects on its own.
    shell_->on_stream_up([weak = weak_from_this()] {
        auto self = weak.lock();
        if (!self || self->closed_ || self->others_connecting_) {
            return;
        }
        self->others_connecting_ = true;
        self->control_->connect(self->info_.transport, self->info_.ip, self->info_.control_port);
        self->stdin_->connect(self->info_.transport, self->info_.ip, self->info_.stdin_port);
        self->iopub_->connect(self->info_.transport, self->info_.ip, self->info_.iopub_port);
        if (self->hb_) {
            self->hb_->connect(self->info_.transport, self->info_.ip, self->info_.hb_port);
        }
    });
    if (!info_.file.empty() && info_.transport == "tcp") {
        // Over TCP there is no socket file to wait for, but the kernel reads its connection
        // file just before it binds: shell looks for the port slowly until then.
        shell_->wait_for_read(info_.file);
    }
    shell_->connect(info_.transport, info_.ip, info_.shell_port);
}

void kernel_channels::on_frames(channel ch, std::span<const std::string_view> views)
{
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

void kernel_channels::on_iopub_ready(std::function<void()> f)
{
    if (iopub_) {
        iopub_->on_ready(std::move(f));
    }
}

void kernel_channels::on_shell_ready(std::function<void()> f)
{
    if (shell_) {
        shell_->on_ready(std::move(f));
    }
}

bool kernel_channels::send(channel ch, const message& msg, bool hold)
{
    zmtp_socket* s = nullptr;
    switch (ch) {
    case channel::shell: s = shell_.get(); break;
    case channel::control: s = control_.get(); break;
    case channel::stdin_: s = stdin_.get(); break;
    case channel::iopub: return false;  // clients never write to iopub
    }
    if (s == nullptr || closed_) {
        return false;
    }
    // The parts are encoded straight from the message into the socket's send buffer; only
    // the signature is made here, on the stack.
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
    if (!s->send(std::span<const std::string_view>(parts), hold)) {
        ++stats_.send_dropped;
        return false;
    }
    ++stats_.sent;
    return true;
}

void kernel_channels::release()
{
    for (zmtp_socket* s : {shell_.get(), control_.get(), stdin_.get()}) {
        if (s != nullptr) {
            s->release();
        }
    }
}

void kernel_channels::hold_iopub(bool hold)
{
    if (iopub_) {
        iopub_->set_paused(hold);
    }
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
    zmtp::limits hb_limits;
    hb_limits.max_message_bytes = 4096;
    hb_ = std::make_shared<zmtp_socket>(ioc_, zmtp_socket::kind::req, std::string(), hb_limits);
    if (others_connecting_) {  // else once shell has connected (start())
        hb_->connect(info_.transport, info_.ip, info_.hb_port);
    }
    hb_->start([weak = weak_from_this()](std::span<const std::string_view>) {
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
    if (closed_ || exiting_) {
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
    static constexpr std::array<std::string_view, 1> ping{"ping"};
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

std::uint64_t kernel_channels::connect_attempts() const noexcept
{
    std::uint64_t n = 0;
    for (const auto* s : {&shell_, &control_, &stdin_, &iopub_}) {
        if (*s) {
            n += (*s)->connect_attempts();
        }
    }
    return n;
}

void kernel_channels::expect_exit()
{
    exiting_ = true;
    hb_timer_.cancel();
    if (hb_) {
        hb_->close();
    }
    for (auto* s : {&shell_, &control_, &stdin_, &iopub_}) {
        if (*s) {
            (*s)->stop_reconnecting();
        }
    }
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
