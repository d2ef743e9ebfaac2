// SPDX-License-Identifier: BSD-3-Clause
#include "sessions/kernel.hpp"

#include <algorithm>
#include <ctime>
#include <optional>

#include <spdlog/spdlog.h>

#include "zmq_protocol/json_scan.hpp"
#include "zmq_protocol/wire_codec.hpp"

namespace kernelgate::sessions {

namespace zp = zmq_protocol;

namespace {

constexpr std::size_t k_max_routes = 20000;
// Nudges go out until a reply and an iopub message have arrived; the first ones often go out
// before the SUB subscription is live. They back off from 5 ms to 500 ms: a fast kernel is ready after the first few, a slow one
// (ipykernel takes ~0.5 s to start) is not flooded with requests.
constexpr auto k_nudge_first = std::chrono::milliseconds(5);
constexpr auto k_nudge_max = std::chrono::milliseconds(500);
// How long output caused by the gateway's own requests (nudges, request_quietly) is looked
// for: late answers after that are long gone.
constexpr auto k_quiet_filter = std::chrono::seconds(5);

/// 64 bits identify a session among a kernel's clients (a collision would need two of the
/// same kernel's clients, i.e. of the same user, to pick colliding session ids).
std::uint64_t session_hash(std::string_view session)
{
    return zp::key128::hash(session).a;
}

bool is_droppable(std::string_view msg_type)
{
    return msg_type == "stream" || msg_type == "display_data" ||
           msg_type == "update_display_data";
}

} // namespace

kernel::kernel(boost::asio::io_context& ioc, std::string id, std::string spec_name,
               std::string owner, replay_limits limits)
    : ioc_(ioc),
      id_(std::move(id)),
      spec_name_(std::move(spec_name)),
      owner_(std::move(owner)),
      routes_(k_max_routes),
      limits_(limits),
      nudge_timer_(ioc),
      ready_deadline_(ioc),
      hold_timer_(ioc)
{
}

kernel::~kernel()
{
    disconnect();
}

nlohmann::json kernel::model() const
{
    return {{"id", id_},
            {"name", spec_name_},
            {"last_activity", iso8601(last_activity_)},
            {"execution_state", state_},
            {"connections", sinks_.size()}};
}

void kernel::connect(const zp::connection_info& info,
                     std::chrono::milliseconds timeout, std::function<void(bool)> on_ready)
{
    disconnect();
    ++generation_;
    on_ready_ = std::move(on_ready);
    got_info_reply_ = false;
    got_iopub_ = false;
    nudge_ids_.clear();
    nudge_rounds_ = 0;
    last_nudge_at_ = {};
    channels_ = std::make_shared<zp::kernel_channels>(ioc_, info, zp::new_uuid());
    const auto gen = generation_;
    channels_->start(
        [weak = weak_from_this(), gen](zp::channel ch, zp::message&& m) {
            auto self = weak.lock();
            if (self && self->generation_ == gen) {  // fence: nothing from an old incarnation
                self->on_kernel_message(ch, std::move(m));
            }
        },
        [weak = weak_from_this()](zp::channel ch, std::error_code ec) {
            if (auto self = weak.lock()) {
                ++self->rejected_total_;
                spdlog::warn("kernel {}: dropped message on {}: {}", self->id_,
                             zp::channel_name(ch), ec.message());
            }
        });
    // The subscription is on its way: a nudge now gets its status on iopub without waiting
    // for the back-off (the first nudge's status usually went out before it).
    channels_->on_iopub_ready([weak = weak_from_this(), gen] {
        auto self = weak.lock();
        if (self && self->generation_ == gen && self->on_ready_ && !self->got_iopub_) {
            self->nudge_timer_.cancel();
            self->nudge();
        }
    });
    // The first nudge goes out when shell is up; after a lost connection, one goes again.
    channels_->on_shell_ready([weak = weak_from_this(), gen] {
        auto self = weak.lock();
        if (self && self->generation_ == gen && self->on_ready_ && !self->got_info_reply_) {
            self->last_nudge_at_ = {};  // what was sent on a previous connection may be lost
            self->nudge_timer_.cancel();
            self->nudge();
        }
    });
    channels_->start_heartbeat(std::chrono::seconds(3), 4, [weak = weak_from_this()](bool ok) {
        if (auto self = weak.lock()) {
            if (ok) {
                spdlog::info("kernel {}: heartbeat answers again", self->id_);
            } else {
                spdlog::warn("kernel {}: heartbeat lost", self->id_);
            }
        }
    });
    ready_deadline_.expires_after(timeout);
    ready_deadline_.async_wait([weak = weak_from_this(), gen](const boost::system::error_code& ec) {
        auto self = weak.lock();
        if (ec || !self || self->generation_ != gen || !self->on_ready_) {
            return;
        }
        self->nudge_timer_.cancel();
        auto cb = std::move(self->on_ready_);
        self->on_ready_ = nullptr;
        cb(false);
    });
    nudge();
}

void kernel::nudge()
{
    if (!channels_ || !on_ready_) {
        return;
    }
    // kernel_info on shell: its reply proves shell works, its iopub status proves the
    // subscription is live (the SUB socket's slow-joiner window is over).
    // A starting kernel answers every request it was sent once it is up, one after the other,
    // and the client's first request would wait behind them (ipykernel: ~1 ms each). So
    // nothing is sent before the shell connection is up (its ready hook nudges), and while
    // a nudge is unanswered the next goes only after k_nudge_max (it may have been lost).
    const auto now = std::chrono::steady_clock::now();
    const bool unanswered = !nudge_ids_.empty() && !got_info_reply_ &&
                            now - last_nudge_at_ < k_nudge_max;
    if (channels_->shell_connected() && !unanswered) {
        nudge_ids_.push_back(channels_->request(zp::channel::shell, "kernel_info_request", "{}"));
        last_nudge_at_ = now;
    }
    ++nudge_rounds_;
    const auto n = std::min<std::size_t>(nudge_rounds_ - 1, 7);
    nudge_after(std::min<std::chrono::milliseconds>(k_nudge_first * (1 << n), k_nudge_max));
}

void kernel::nudge_after(std::chrono::milliseconds delay)
{
    nudge_timer_.expires_after(delay);  // replaces a nudge already scheduled
    nudge_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
        if (auto self = weak.lock(); self && !ec) {
            self->nudge();
        }
    });
}

void kernel::abort_ready()
{
    if (!on_ready_) {
        return;
    }
    nudge_timer_.cancel();
    ready_deadline_.cancel();
    auto cb = std::move(on_ready_);
    on_ready_ = nullptr;
    cb(false);
}

void kernel::client_backlog_changed(client_sink& who)
{
    if (!who.behind()) {
        who.output_stalled = false;
    }
    update_output_hold();
}

void kernel::update_output_hold()
{
    // Hold while every client is behind and one of them may still catch up (not stalled).
    bool all_behind = !sinks_.empty();
    bool any_live = false;
    for (const auto& s : sinks_) {
        if (s->leaving()) {
            continue;
        }
        if (!s->behind()) {
            all_behind = false;
            break;
        }
        any_live = any_live || !s->output_stalled;
    }
    if (!all_behind || !any_live) {
        release_output();
        return;
    }
    if (output_held_ || !channels_) {
        return;
    }
    output_held_ = true;
    ++output_holds_total_;
    channels_->hold_iopub(true);
    hold_timer_.expires_after(output_hold_limit);
    hold_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
        auto self = weak.lock();
        if (!self || ec || !self->output_held_) {
            return;
        }
        ++self->output_hold_timeouts_;
        spdlog::info("kernel {}: clients still behind after {} ms: output is no longer held "
                     "for them",
                     self->id_, output_hold_limit.count());
        for (const auto& s : self->sinks_) {
            if (s->behind()) {
                s->output_stalled = true;
            }
        }
        self->release_output();
    });
}

void kernel::release_output()
{
    if (!output_held_) {
        return;
    }
    output_held_ = false;
    hold_timer_.cancel();
    if (channels_) {
        channels_->hold_iopub(false);
    }
}

void kernel::disconnect()
{
    output_held_ = false;
    hold_timer_.cancel();
    nudge_timer_.cancel();
    ready_deadline_.cancel();
    pending_replies_ = 0;
    working_ = false;
    kernel_wait_.cancel();
    client_wait_.cancel();
    service_.cancel();
    if (channels_) {
        last_stats_ = channels_->stats();
        channels_->close();
        channels_.reset();
    }
}

void kernel::expect_exit()
{
    if (channels_) {
        channels_->expect_exit();
    }
}

const zp::channel_stats* kernel::stats() const
{
    return channels_ ? &channels_->stats() : &last_stats_;
}

void kernel::on_kernel_message(zp::channel ch, zp::message&& msg)
{
    last_activity_ = clock::now();
    auto ev = std::make_shared<kernel_event>();
    ev->channel = ch;
    std::string scratch;  // decoded values with escapes (rare); views into msg otherwise
    ev->msg_type = zp::json_string_field_view(msg.header, "msg_type", scratch).value_or("");
    ev->droppable = ch == zp::channel::iopub && is_droppable(ev->msg_type);
    std::string state_scratch;
    std::optional<std::string_view> status;  // an iopub status message's execution_state
    if (ch == zp::channel::iopub && ev->msg_type == "status") {
        status = zp::json_string_field_view(msg.content, "execution_state", state_scratch);
    }
    if (hint_ != nullptr && hint_->enabled() && !on_ready_) {
        predict_after_kernel_message(ch, ev->msg_type, status);
    }

    if (on_ready_) {
        if (ch == zp::channel::iopub) {
            got_iopub_ = true;
        } else if (ev->msg_type == "kernel_info_reply") {
            const auto parent = zp::json_string_field_view(msg.parent_header, "msg_id", scratch);
            if (parent && std::find(nudge_ids_.begin(), nudge_ids_.end(), *parent) !=
                              nudge_ids_.end()) {
                got_info_reply_ = true;
                if (!got_iopub_ && *parent == nudge_ids_.back()) {
                    // Shell answers but iopub has not shown up yet (the subscription was not
                    // live when the nudge's status went out): ask again in 1 ms rather than
                    // at the back-off's pace.
                    nudge_after(std::chrono::milliseconds(1));
                }
            }
        }
        if (got_iopub_ && got_info_reply_) {
            nudge_timer_.cancel();
            ready_deadline_.cancel();
            auto cb = std::move(on_ready_);
            on_ready_ = nullptr;
            state_ = "idle";  // the nudge's own busy/idle pair is not the user's work
            nudge_filter_until_ = std::chrono::steady_clock::now() + k_quiet_filter;
            auto held = std::move(held_);
            held_.clear();
            for (auto& [hch, hmsg] : held) {
                channels_->send(hch, hmsg);
            }
            cb(true);
        }
    }

    if (ch == zp::channel::iopub) {
        // Output caused by our own kernel_info nudges is not the user's: it neither changes
        // the execution state nor reaches clients.
        if (!nudge_ids_.empty() && !on_ready_ &&
            std::chrono::steady_clock::now() > nudge_filter_until_) {
            nudge_ids_.clear();  // late answers to nudges are long gone: stop checking
        }
        if (!nudge_ids_.empty()) {
            const auto parent = zp::json_string_field_view(msg.parent_header, "msg_id", scratch);
            if (parent && std::find(nudge_ids_.begin(), nudge_ids_.end(), *parent) !=
                              nudge_ids_.end()) {
                return;
            }
        }
        if (status) {
            state_ = *status;
        }
        ev->msg = std::move(msg);
        dispatch(ev, nullptr);
        return;
    }
    // A reply: to the session that asked. Replies to our own nudges go nowhere.
    const auto parent = zp::json_string_field_view(msg.parent_header, "msg_id", scratch);
    if (!parent) {
        return;
    }
    const std::uint64_t* route = routes_.find(zp::key128::hash(*parent));
    if (route == nullptr) {
        return;
    }
    const std::uint64_t session = *route;
    ev->msg = std::move(msg);
    dispatch(ev, &session);
}

void kernel::dispatch(const kernel_event_ptr& ev, const std::uint64_t* target_session)
{
    bool delivered = false;
    auto deliver_to = [&](const std::shared_ptr<client_sink>& s) {
        if (target_session == nullptr || session_hash(s->session_id()) == *target_session) {
            s->deliver(ev);
            delivered = true;
        }
    };
    // A sink's deliver may close it, which detaches it from sinks_: work on a copy (of the
    // one pointer, in the usual case of one client, rather than of the vector).
    if (sinks_.size() == 1) {
        const auto only = sinks_.front();
        deliver_to(only);
    } else if (!sinks_.empty()) {
        const auto sinks = sinks_;
        for (const auto& s : sinks) {
            deliver_to(s);
        }
    }
    if (delivered || !buffering_) {
        return;
    }
    if (target_session != nullptr && *target_session != session_hash(buffer_session_)) {
        return;
    }
    buffer_.push_back(ev);
    buffer_bytes_ += ev->msg.byte_size();
    while (!buffer_.empty() &&
           (buffer_.size() > limits_.max_messages || buffer_bytes_ > limits_.max_bytes)) {
        buffer_bytes_ -= buffer_.front()->msg.byte_size();
        buffer_.pop_front();
        ++buffer_dropped_;
        ++replay_dropped_total_;
    }
}

void kernel::attach(const std::shared_ptr<client_sink>& sink)
{
    // Replace a stale connection with the same session_id.
    for (auto it = sinks_.begin(); it != sinks_.end();) {
        if ((*it)->session_id() == sink->session_id()) {
            auto old = *it;
            it = sinks_.erase(it);
            old->close_from_kernel(1000, "replaced by a new connection with the same session_id");
        } else {
            ++it;
        }
    }
    sinks_.push_back(sink);
    update_output_hold();  // a new client is not behind: output flows again
    if (!buffering_) {
        return;
    }
    buffering_ = false;
    auto buffered = std::move(buffer_);
    const auto dropped = buffer_dropped_;
    buffer_.clear();
    buffer_bytes_ = 0;
    buffer_dropped_ = 0;
    if (buffer_session_ != sink->session_id()) {
        return;  // a different session: the buffer was not for it
    }
    if (dropped > 0) {
        notice(sink.get(), "[kernelgate] " + std::to_string(dropped) +
                               " messages were dropped while no client was connected "
                               "(replay buffer full)\n");
    }
    spdlog::debug("kernel {}: replaying {} messages to session {}", id_, buffered.size(),
                  sink->session_id());
    for (const auto& ev : buffered) {
        sink->deliver(ev);
    }
}

void kernel::detach(const client_sink* sink)
{
    auto it = std::find_if(sinks_.begin(), sinks_.end(),
                           [&](const auto& s) { return s.get() == sink; });
    if (it == sinks_.end()) {
        return;
    }
    const std::string session = (*it)->session_id();
    sinks_.erase(it);
    update_output_hold();
    if (sinks_.empty()) {
        // Keep what the kernel says until this session comes back.
        buffering_ = true;
        buffer_session_ = session;
        buffer_.clear();
        buffer_bytes_ = 0;
        buffer_dropped_ = 0;
    }
}

void kernel::close_clients(std::uint16_t code, const std::string& reason)
{
    auto sinks = std::move(sinks_);
    sinks_.clear();
    release_output();
    for (const auto& s : sinks) {
        s->close_from_kernel(code, reason);
    }
    buffering_ = false;
    buffer_.clear();
    buffer_bytes_ = 0;
}

void kernel::abandon()
{
    disconnect();
    on_ready_ = nullptr;
    exit_waiters.clear();
    if (lifecycle_timer) {
        lifecycle_timer->cancel();
    }
    sinks_.clear();
    buffer_.clear();
    buffer_bytes_ = 0;
}

bool kernel::send_from_client(const client_sink& from, zp::channel ch, zp::message&& msg,
                              bool hold)
{
    const bool starting = on_ready_ != nullptr || (!channels_ && restarting);
    if (!channels_ && !starting) {
        return false;
    }
    last_activity_ = clock::now();
    std::string scratch;
    if (const auto id = zp::json_string_field_view(msg.header, "msg_id", scratch)) {
        routes_.insert(zp::key128::hash(*id), session_hash(from.session_id()));
    }
    if (starting) {
        constexpr std::size_t k_max_held = 1000;
        if (held_.size() >= k_max_held) {
            return false;
        }
        held_.emplace_back(ch, std::move(msg));
        return true;
    }
    if (hint_ != nullptr && hint_->enabled() &&
        (ch == zp::channel::shell || ch == zp::channel::control)) {
        predict_after_request(msg);
    }
    return channels_->send(ch, msg, hold);
}

void kernel::set_poll_hint(common::poll_hint* hint) noexcept
{
    hint_ = hint;
    if (hint_ != nullptr) {
        for (auto* p : {&service_, &kernel_wait_, &client_wait_}) {
            p->set_cap(hint_->wait_cap());
        }
    }
}

void kernel::predict_after_request(const zp::message& msg)
{
    const auto now = std::chrono::steady_clock::now();
    client_wait_.end(now);
    std::string scratch;
    const auto type = zp::json_string_field_view(msg.header, "msg_type", scratch);
    constexpr std::uint32_t k_max_pending = 1000;  // requests a kernel never answers
    if (type && type->ends_with("_request") && pending_replies_ < k_max_pending) {
        ++pending_replies_;
    }
    working_ = true;
    service_.begin(now);
    kernel_wait_.begin(now);
    if (fast_kernel()) {
        hint_->expect(kernel_wait_, now);
    }
}

bool kernel::fast_kernel() const noexcept
{
    // Polling pays where the two wake-ups it saves are a fair share of a request's time. A
    // kernel that works for longer than the budget (ipykernel: a millisecond or more) gains a
    // few percent at best, and on a small machine the polling core is one its own threads
    // (and the client) would have used: such kernels and their clients are slept for.
    return service_.known() && service_.mean() <= hint_->budget;
}

void kernel::predict_after_kernel_message(zp::channel ch, std::string_view msg_type,
                                          std::optional<std::string_view> status)
{
    const auto now = std::chrono::steady_clock::now();
    kernel_wait_.end(now);
    if (ch == zp::channel::iopub) {
        if (msg_type == "status") {
            working_ = status == std::string_view("busy");
        }
    } else if (pending_replies_ > 0 && msg_type.ends_with("_reply")) {
        --pending_replies_;
    }
    if (working_ || pending_replies_ > 0) {  // more is coming from the kernel
        kernel_wait_.begin(now);
        if (fast_kernel()) {
            hint_->expect(kernel_wait_, now);
        }
        return;
    }
    service_.end(now);  // request(s) done
    if (!sinks_.empty()) {  // the client's turn
        client_wait_.begin(now);
        if (fast_kernel()) {
            hint_->expect(client_wait_, now);
        }
    }
}

void kernel::release_client_sends()
{
    if (channels_) {
        channels_->release();
    }
}

std::string kernel::request(zp::channel ch, std::string_view msg_type,
                            std::string_view content_json)
{
    if (!channels_) {
        return {};
    }
    return channels_->request(ch, msg_type, content_json);
}

std::string kernel::request_quietly(zp::channel ch, std::string_view msg_type,
                                    std::string_view content_json)
{
    auto id = request(ch, msg_type, content_json);
    if (!id.empty()) {
        nudge_ids_.push_back(id);
        nudge_filter_until_ = std::max(nudge_filter_until_, std::chrono::steady_clock::now() +
                                                                k_quiet_filter);
    }
    return id;
}

void kernel::broadcast_status(const std::string& execution_state)
{
    state_ = execution_state;
    if (execution_state == "dead") {
        held_.clear();  // nothing will run them
    }
    auto ev = std::make_shared<kernel_event>();
    ev->channel = zp::channel::iopub;
    ev->msg_type = "status";
    ev->msg.header = zp::make_header("status", id_);
    ev->msg.parent_header = "{}";
    ev->msg.metadata = "{}";
    ev->msg.content = nlohmann::json{{"execution_state", execution_state}}.dump();
    dispatch(ev, nullptr);
}

void kernel::notice(client_sink* to, const std::string& text)
{
    auto ev = std::make_shared<kernel_event>();
    ev->channel = zp::channel::iopub;
    ev->msg_type = "stream";
    ev->msg.header = zp::make_header("stream", id_);
    ev->msg.parent_header = "{}";
    ev->msg.metadata = "{}";
    ev->msg.content = nlohmann::json{{"name", "stderr"}, {"text", text}}.dump();
    if (to != nullptr) {
        to->deliver(ev);
    } else {
        dispatch(ev, nullptr);
    }
}

} // namespace kernelgate::sessions
