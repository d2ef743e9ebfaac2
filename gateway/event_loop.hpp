// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>

#include "common/asio_fwd.hpp"
#include "common/poll_hint.hpp"

namespace kernelgate::gateway {

/// What the loop did, for /metrics. All zero while busy polling and predictive polling are
/// off.
struct loop_stats
{
    std::uint64_t sleeps = 0;          ///< times the loop blocked waiting for events (polling)
    std::uint64_t busy_poll_hits = 0;  ///< times polling found work that would have woken it
    std::chrono::nanoseconds busy_poll_idle{0};  ///< time spent polling and finding nothing
    std::uint64_t pressure_pauses = 0;  ///< times polling paused because CPUs were contended
    double cpu_pressure = 0;            ///< share of the last interval some task waited for a CPU
};

/// When busy polling pauses for other processes' sake: while CPU pressure (Linux PSI, the
/// share of time some runnable task waited for a CPU) was above `max` over the last
/// `interval`. Paused, the loop reads it every interval/16 and resumes at a reading of at
/// most max/2, so that polling comes back within milliseconds once the CPUs are free. With
/// max >= 1 polling never pauses (and PSI is not read).
struct pressure_guard
{
    /// The share (0 to 1) of the time since its previous call in which some task waited for a
    /// CPU; nullopt when unknown.
    using source_fn = std::function<std::optional<double>(std::chrono::steady_clock::time_point)>;

    double max = 1.0;
    std::chrono::milliseconds interval{250};
    source_fn source;  ///< empty: Linux PSI (common::cpu_pressure)
};

/// Runs an io_context until it is stopped or runs out of work, as io_context::run() does.
///
/// With busy_poll > 0, after any handler has run the loop keeps polling for ready events
/// (non-blocking epoll and sched_yield, so runnable threads on this CPU still get it) for a
/// window of up to busy_poll before it blocks again. A request/reply exchange whose next
/// message arrives within the window is then picked up without the two scheduler wake-ups
/// a sleeping loop pays per round trip, at the price of up to the window of CPU after every
/// burst of work. The window adapts: halved after a wait longer than busy_poll, doubled
/// after a wait longer than the window but within busy_poll (so traffic sparser than
/// busy_poll soon costs nothing). An idle loop sleeps as usual: polling only follows work.
///
/// With a pressure_guard (max < 1) polling takes only CPU no one else is waiting for: every
/// interval the loop reads the CPU pressure, and while it is above max the loop sleeps
/// between events as io_context::run() does. Without PSI (an old kernel, psi=0) polling
/// stays off: there is no telling whether the CPU is wanted.
///
/// With a poll_hint whose budget is > 0 and busy_poll 0 (predictive polling), the loop polls
/// only while the hint says an event is expected soon (see common::poll_hint: the kernels
/// learn how long their own replies and their clients' next requests take, and only waits
/// shorter than the budget are polled for). The same pressure guard applies.
///
/// Thread safety: run() on one thread; stats() on that thread (the loop's own handlers).
class event_loop
{
public:
    event_loop(net::io_context& ioc, std::chrono::microseconds busy_poll,
               pressure_guard guard = {}, common::poll_hint* hint = nullptr);

    void run();
    std::chrono::microseconds busy_poll() const noexcept { return busy_poll_; }
    /// The window as adapted to the traffic so far (busy_poll at first).
    std::chrono::microseconds window() const noexcept { return window_; }
    /// Predictive polling is on (a hint with a budget, no busy polling, PSI known or unguarded).
    bool predictive() const noexcept;
    /// Busy or predictive polling was asked for, but is off for good: the guard has no PSI to
    /// read.
    bool pressure_unknown() const noexcept { return guarded_ && !pressure_known_; }
    /// Polling is paused: CPU pressure was above the guard's max at the last reading.
    bool paused() const noexcept { return paused_; }
    const pressure_guard& guard() const noexcept { return guard_; }
    /// The predictive-polling hint (nullptr: none).
    const common::poll_hint* hint() const noexcept { return hint_; }
    const loop_stats& stats() const noexcept { return stats_; }

private:
    /// Reads the pressure if an interval has passed; returns whether polling is paused.
    bool check_pressure(std::chrono::steady_clock::time_point now);
    /// Between readings while paused, and for the first after an idle spell.
    std::chrono::milliseconds short_interval() const noexcept;
    /// While paused: one handler, as io_context::run() runs them, then a pressure reading.
    /// Returns whether the loop was paused.
    bool paused_turn();
    void run_predictive();

    net::io_context& ioc_;
    std::chrono::microseconds busy_poll_;
    std::chrono::microseconds window_;
    pressure_guard guard_;
    common::poll_hint* hint_ = nullptr;
    bool guarded_ = false;         // polling with a guard (max < 1)
    bool pressure_known_ = false;  // the guard's source answered at construction
    std::chrono::steady_clock::time_point next_check_{};
    bool paused_ = false;
    loop_stats stats_;
};

} // namespace kernelgate::gateway
