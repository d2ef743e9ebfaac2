// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include "common/poll_hint.hpp"
#include "common/text.hpp"
#include "zmq_protocol/fifo_table.hpp"
#include "zmq_protocol/kernel_channels.hpp"

namespace kernelgate::sessions {

/// One message from a kernel on its way to clients. Shared by every client that receives it,
/// so it is encoded at most once per WebSocket format (the caches below).
struct kernel_event
{
    zmq_protocol::channel channel = zmq_protocol::channel::iopub;
    zmq_protocol::message msg;
    std::string msg_type;
    bool droppable = false;  ///< output a slow client may lose (stream, display_data, ...)

    // Per-format encodings, filled by the first client that needs them (event-loop thread).
    mutable std::shared_ptr<const std::string> encoded[2];
    mutable bool encoded_binary[2] = {false, false};
};
using kernel_event_ptr = std::shared_ptr<const kernel_event>;

/// A client attached to a kernel (a WebSocket session, implemented in gateway/).
class client_sink
{
public:
    virtual ~client_sink() = default;
    virtual void deliver(const kernel_event_ptr& ev) = 0;
    /// More output waits for this client than its high watermark allows.
    virtual bool behind() const = 0;
    /// The connection is closing: it takes no more output and holds none back for itself.
    virtual bool leaving() const { return false; }

    /// Kept by the kernel: a hold of the kernel's output ran out while this client was
    /// behind; it no longer holds output until it catches up (kernel::client_backlog_changed).
    bool output_stalled = false;
    /// The kernel is going away or the connection was replaced: close with this code.
    virtual void close_from_kernel(std::uint16_t code, const std::string& reason) = 0;
    virtual const std::string& session_id() const = 0;
};

/// Limits of the buffer kept while no client is connected (replayed to the same session_id).
struct replay_limits
{
    std::size_t max_messages = 10000;
    std::size_t max_bytes = 32u << 20;
};

/// A kernel as the gateway sees it: its identity and state, its channels, the clients
/// attached to it, routing of replies, and the replay buffer.
///
/// Thread safety: event-loop thread only.
class kernel : public std::enable_shared_from_this<kernel>
{
public:
    using clock = std::chrono::system_clock;

    kernel(boost::asio::io_context& ioc, std::string id, std::string spec_name,
           std::string owner, replay_limits limits);
    ~kernel();

    const std::string& id() const noexcept { return id_; }
    const std::string& spec_name() const noexcept { return spec_name_; }
    const std::string& owner() const noexcept { return owner_; }
    /// A warm-pool kernel (no owner) handed to a user.
    void set_owner(std::string owner) { owner_ = std::move(owner); }
    const std::string& execution_state() const noexcept { return state_; }
    void set_execution_state(std::string s) { state_ = std::move(s); }
    clock::time_point last_activity() const noexcept { return last_activity_; }
    void touch() { last_activity_ = clock::now(); }
    std::size_t connections() const noexcept { return sinks_.size(); }
    std::uint64_t generation() const noexcept { return generation_; }

    /// The REST kernel model (last_activity with six fractional digits and Z).
    nlohmann::json model() const;

    /// Binds to a (new) kernel process: connects channels and nudges with kernel_info until a
    /// reply and an iopub message have arrived (iopub proven live) or the timeout passes.
    void connect(const zmq_protocol::connection_info& info,
                 std::chrono::milliseconds timeout, std::function<void(bool ready)> on_ready);
    /// Drops the channels of the current process (before a restart or on exit).
    void disconnect();
    /// The process was asked to shut down: its channels are not reconnected once it closes
    /// them, and its heartbeat stops (kernel_channels::expect_exit).
    void expect_exit();
    /// Fails a pending connect() at once (the process died while starting).
    void abort_ready();
    bool connected() const noexcept { return channels_ != nullptr; }

    /// Attaches a client. A client already attached with the same session_id is closed and
    /// replaced. If the buffer was kept for this session_id, it is replayed to the client;
    /// any other session_id discards it.
    void attach(const std::shared_ptr<client_sink>& sink);
    void detach(const client_sink* sink);
    /// Closes every client (kernel deleted / gateway stopping).
    void close_clients(std::uint16_t code, const std::string& reason);
    /// The gateway stops without waiting for this kernel (a second signal, the shutdown
    /// deadline): drops its channels, its clients and every callback waiting on it, without
    /// calling any, so that nothing it holds refers back to it or to a client.
    void abandon();

    /// A message from a client: routes the reply back to this client's session. With `hold`
    /// it waits (bounded) for release_client_sends(): a client's burst leaves in one write.
    bool send_from_client(const client_sink& from, zmq_protocol::channel ch,
                          zmq_protocol::message&& msg, bool hold = false);
    /// Sends what send_from_client(..., true) holds.
    void release_client_sends();
    /// A message the gateway originates (interrupt_request, shutdown_request).
    std::string request(zmq_protocol::channel ch, std::string_view msg_type,
                        std::string_view content_json);
    /// A request of the gateway's own whose output is not the user's (the warm pool's
    /// set-up of a kernel it hands out): like the start's kernel_info nudges, its iopub
    /// messages reach no client and leave the execution state alone, and its reply goes
    /// nowhere. Empty if the kernel is not connected.
    std::string request_quietly(zmq_protocol::channel ch, std::string_view msg_type,
                                std::string_view content_json);

    /// A client's backlog crossed its high watermark (up) or drained below its low one.
    /// While every client of the kernel is behind, the kernel's output is held back: iopub is
    /// not read, so the kernel waits for its clients (or its PUB socket drops by its own
    /// policy) instead of output being dropped here. A hold ends when any client catches up,
    /// or after `output_hold_limit`: then the clients still behind count as stalled and lose
    /// skippable output, with a notice, until they catch up; a stalled client holds nothing.
    /// A client that reads, however slowly, so gets all of a stream; one that has stopped
    /// reading costs the kernel one hold at most, and other clients nothing.
    void client_backlog_changed(client_sink& who);
    /// Output from the kernel is being held back for its clients (see client_backlog_changed):
    /// what still arrives meanwhile is delivered, not dropped.
    bool holding_output() const noexcept { return output_held_; }
    std::uint64_t output_holds_total() const noexcept { return output_holds_total_; }
    std::uint64_t output_hold_timeouts_total() const noexcept { return output_hold_timeouts_; }
    static constexpr std::chrono::milliseconds output_hold_limit{2000};

    /// Sends a synthetic iopub status (restarting, dead, ...) to every client.
    void broadcast_status(const std::string& execution_state);
    /// Sends a synthetic stderr stream notice on iopub to one client or all (nullptr).
    void notice(client_sink* to, const std::string& text);

    /// Predictive polling: tells `hint` when this kernel or its clients are expected to send
    /// soon (nullptr or a disabled hint: no bookkeeping at all).
    void set_poll_hint(common::poll_hint* hint) noexcept;

    const zmq_protocol::channel_stats* stats() const;
    std::uint64_t rejected_total() const noexcept { return rejected_total_; }
    std::uint64_t replay_dropped_total() const noexcept { return replay_dropped_total_; }

    // Lifecycle bookkeeping owned by the registry.
    int restarts_in_a_row = 0;
    clock::time_point started_at = clock::now();
    bool shutting_down = false;
    bool restarting = false;
    std::vector<std::function<void()>> exit_waiters;
    std::unique_ptr<boost::asio::steady_timer> lifecycle_timer;

private:
    void on_kernel_message(zmq_protocol::channel ch, zmq_protocol::message&& msg);
    /// To every client (target_session null), or to the clients whose session_id hashes to
    /// *target_session (see session_hash).
    void dispatch(const kernel_event_ptr& ev, const std::uint64_t* target_session);
    void nudge();
    /// Predictive polling's bookkeeping for a client request / a kernel message.
    void predict_after_request(const zmq_protocol::message& msg);
    void predict_after_kernel_message(zmq_protocol::channel ch, std::string_view msg_type,
                                      std::optional<std::string_view> status);
    /// The kernel's requests take no longer than the hint's budget (so polling pays).
    bool fast_kernel() const noexcept;
    void nudge_after(std::chrono::milliseconds delay);
    void release_output();
    void update_output_hold();

    boost::asio::io_context& ioc_;
    std::string id_;
    std::string spec_name_;
    std::string owner_;
    std::string state_ = "starting";
    clock::time_point last_activity_ = clock::now();
    std::uint64_t generation_ = 0;  ///< bumps on every (re)connect: fences old incarnations

    zmq_protocol::kernel_channels_ptr channels_;
    std::vector<std::shared_ptr<client_sink>> sinks_;

    // Reply routing: msg_id of a client request -> a hash of the client's session_id
    // (bounded, FIFO, no allocation per request).
    zmq_protocol::fifo_table<std::uint64_t> routes_;

    // Replay buffer while no client is attached.
    replay_limits limits_;
    bool buffering_ = false;
    std::string buffer_session_;
    std::deque<kernel_event_ptr> buffer_;
    std::size_t buffer_bytes_ = 0;
    std::size_t buffer_dropped_ = 0;

    // Start/restart readiness.
    boost::asio::steady_timer nudge_timer_;
    boost::asio::steady_timer ready_deadline_;
    std::function<void(bool)> on_ready_;
    std::vector<std::string> nudge_ids_;
    std::size_t nudge_rounds_ = 0;                         ///< back-off steps so far
    std::chrono::steady_clock::time_point last_nudge_at_{};  ///< last kernel_info sent
    std::chrono::steady_clock::time_point nudge_filter_until_{};
    // Client messages held while the kernel (re)starts: sent once its iopub is proven live,
    // so their output is not lost to the SUB socket's slow-joiner window.
    std::deque<std::pair<zmq_protocol::channel, zmq_protocol::message>> held_;
    bool got_info_reply_ = false;
    bool got_iopub_ = false;

    // Predictive polling (see common::poll_hint): how long this kernel takes from a request to
    // going quiet again (service), to send its next message while it works on one, and how
    // long its clients take to send the next request once it has gone quiet.
    common::poll_hint* hint_ = nullptr;
    common::wait_predictor service_;
    common::wait_predictor kernel_wait_;
    common::wait_predictor client_wait_;
    std::uint32_t pending_replies_ = 0;  ///< *_request sent on shell/control, not yet replied
    bool working_ = false;               ///< a request went in and no idle status came out

    // Output held back while every client is behind (client_backlog_changed).
    boost::asio::steady_timer hold_timer_;
    bool output_held_ = false;
    std::uint64_t output_holds_total_ = 0;
    std::uint64_t output_hold_timeouts_ = 0;

    std::uint64_t rejected_total_ = 0;
    std::uint64_t replay_dropped_total_ = 0;
    zmq_protocol::channel_stats last_stats_{};
};

using kernel_ptr = std::shared_ptr<kernel>;

/// "YYYY-MM-DDTHH:MM:SS.ffffffZ" for a time point.
inline std::string iso8601(kernel::clock::time_point tp)
{
    return common::iso8601(tp);
}

} // namespace kernelgate::sessions
