// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/event_loop.hpp"

#include <sched.h>
#include <sys/resource.h>

#include <algorithm>

namespace kernelgate::gateway {

namespace {

/// Times this thread was switched out while it could still run (preempted, or a yield that
/// gave the CPU away): another thread wanted this CPU.
std::uint64_t involuntary_switches() noexcept
{
    rusage ru{};
    if (::getrusage(RUSAGE_THREAD, &ru) != 0) {
        return 0;
    }
    return static_cast<std::uint64_t>(ru.ru_nivcsw);
}

} // namespace

void event_loop::run()
{
    if (busy_poll_.count() <= 0) {
        ioc_.run();
        return;
    }
    using clock = std::chrono::steady_clock;
    using std::chrono::microseconds;
    constexpr auto unset = clock::time_point::min();
    // The window adapts as the kernel's haltpoll governor does, from how long each wait
    // (polling, then sleeping) lasted: longer than busy_poll, and polling was of no use, so the
    // window halves; longer than the window but within busy_poll, and a longer window would
    // have caught it, so it doubles (from a quarter of busy_poll). Sparse traffic soon costs
    // nothing; dense traffic wins the window back.
    const auto grow_from = std::max(microseconds(1), busy_poll_ / 4);
    auto& window = window_;  // kept across run() calls
    auto poll_until = unset;   // polling goes on until then; the loop starts idle
    auto empty_since = unset;  // since when polls have found nothing
    // Polling is only worth it on a CPU nobody else wants: when this thread was preempted or
    // its yield handed the CPU over since the last check, other threads (a kernel, a client)
    // are waiting for this CPU, and the window halves instead of growing.
    std::uint64_t switches = back_off_when_contended_ ? involuntary_switches() : 0;
    const auto contended = [&] {
        if (!back_off_when_contended_) {
            return false;
        }
        const std::uint64_t now = involuntary_switches();
        const bool more = now != switches;
        switches = now;
        if (more) {
            ++stats_.busy_poll_contended;
        }
        return more;
    };
    while (!ioc_.stopped()) {
        if (ioc_.poll() > 0) {
            const auto now = clock::now();
            if (empty_since != unset) {
                ++stats_.busy_poll_hits;  // the loop would have slept: a wake-up saved
                stats_.busy_poll_idle += now - empty_since;
                empty_since = unset;
                if (contended()) {
                    window /= 2;
                }
            }
            poll_until = now + window;
            continue;
        }
        const auto now = clock::now();
        if (empty_since == unset) {
            empty_since = now;
        }
        if (now < poll_until) {
            ::sched_yield();
            continue;
        }
        // The window passed with nothing to do: sleep until the next event.
        stats_.busy_poll_idle += now - empty_since;
        ++stats_.sleeps;
        ioc_.run_one();
        const auto woke = clock::now();
        if (poll_until != unset) {  // not the first wait
            const auto waited = woke - empty_since;  // polling, then sleeping
            if (contended()) {
                window /= 2;  // the polling kept a waiting thread off this CPU
            } else if (waited > busy_poll_) {
                window /= 2;  // longer than any window: polling was no use
            } else if (waited > window) {
                window = std::min(busy_poll_, std::max(grow_from, window * 2));  // just missed
            }
        }
        empty_since = unset;
        poll_until = woke + window;
    }
}

} // namespace kernelgate::gateway
