// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>

#include "common/asio_fwd.hpp"

namespace kernelgate::gateway {

/// What the loop did, for /metrics. All zero while busy polling is off.
struct loop_stats
{
    std::uint64_t sleeps = 0;          ///< times the loop blocked waiting for events
    std::uint64_t busy_poll_hits = 0;  ///< times polling found work that would have woken it
    std::chrono::nanoseconds busy_poll_idle{0};  ///< time spent polling and finding nothing
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
/// Thread safety: run() on one thread; stats() on that thread (the loop's own handlers).
class event_loop
{
public:
    event_loop(net::io_context& ioc, std::chrono::microseconds busy_poll) noexcept
        : ioc_(ioc), busy_poll_(busy_poll), window_(busy_poll)
    {
    }

    void run();
    std::chrono::microseconds busy_poll() const noexcept { return busy_poll_; }
    /// The window as adapted to the traffic so far (busy_poll at first).
    std::chrono::microseconds window() const noexcept { return window_; }
    const loop_stats& stats() const noexcept { return stats_; }

private:
    net::io_context& ioc_;
    std::chrono::microseconds busy_poll_;
    std::chrono::microseconds window_;
    loop_stats stats_;
};

} // namespace kernelgate::gateway
