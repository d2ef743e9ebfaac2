// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/event_loop.hpp"

#include <sched.h>

#include <algorithm>

#include "common/cpu_pressure.hpp"

namespace kernelgate::gateway {

event_loop::event_loop(net::io_context& ioc, std::chrono::microseconds busy_poll,
                       pressure_guard guard, common::poll_hint* hint)
    : ioc_(ioc), busy_poll_(busy_poll), window_(busy_poll), guard_(std::move(guard)), hint_(hint)
{
    const bool polling = busy_poll_.count() > 0 || (hint_ != nullptr && hint_->enabled());
    guarded_ = polling && guard_.max < 1.0;
    if (!guarded_) {
        return;
    }
    if (!guard_.source) {
        auto psi = std::make_shared<common::cpu_pressure>();
        guard_.source = [psi](std::chrono::steady_clock::time_point now) {
            return psi->sample(now);
        };
    }
    pressure_known_ = guard_.source(std::chrono::steady_clock::now()).has_value();
    if (!pressure_known_ && hint_ != nullptr) {
        hint_->budget = std::chrono::microseconds(0);  // the kernels need not keep books
    }
}

bool event_loop::predictive() const noexcept
{
    return busy_poll_.count() <= 0 && hint_ != nullptr && hint_->enabled() &&
           !pressure_unknown();
}

std::chrono::milliseconds event_loop::short_interval() const noexcept
{
    return std::max<std::chrono::milliseconds>(std::chrono::milliseconds(1),
                                               guard_.interval / 16);
}

bool event_loop::check_pressure(std::chrono::steady_clock::time_point now)
{
    if (!guarded_ || now < next_check_) {
        return paused_;
    }
    if (now - next_check_ > guard_.interval) {
        // The loop was idle: a reading now would average the pressure over that whole time
        // (others' work of minutes ago, or an idle machine). Start a fresh interval, a short
        // one, and poll meanwhile: work that wakes the loop after a pause is judged by the
        // pressure it meets, within a few milliseconds.
        (void)guard_.source(now);
        next_check_ = now + short_interval();
        paused_ = false;
        return paused_;
    }
    const auto p = guard_.source(now);
    stats_.cpu_pressure = p.value_or(1.0);
    // Paused, the loop looks again after a sixteenth of the interval, so that polling comes
    // back within milliseconds once the contention is over rather than a whole interval
    // later: requests that follow a burst of other work (kernels starting, another user's
    // job ending) would otherwise be slept for throughout. Those readings span little time,
    // so resuming takes half the pressure that pauses: a moment's dip in lasting contention
    // (32 busy kernels on two cores) does not bring polling back for a whole interval.
    const bool pause = !p || *p > (paused_ ? guard_.max / 2 : guard_.max);
    if (pause && !paused_) {
        ++stats_.pressure_pauses;
    }
    paused_ = pause;
    next_check_ = now + (paused_ ? short_interval() : guard_.interval);
    return paused_;
}

bool event_loop::paused_turn()
{
    if (!paused_) {
        return false;
    }
    // CPUs contended: sleep between events, as io_context::run() does.
    ioc_.run_one();
    check_pressure(std::chrono::steady_clock::now());
    return true;
}

void event_loop::run_predictive()
{
    using clock = std::chrono::steady_clock;
    constexpr auto unset = clock::time_point::min();
    auto empty_since = unset;  // since when polls have found nothing
    auto stop_polling = [&](clock::time_point now) {  // counts the polling that just ended
        if (empty_since != unset) {
            stats_.busy_poll_idle += now - empty_since;
            empty_since = unset;
        }
    };
    while (!ioc_.stopped()) {
        if (paused_turn()) {
            continue;
        }
        const auto now = clock::now();
        if (now >= hint_->until) {
            // Nothing expected soon: sleep until the next event, as io_context::run() does
            // (one handler at a time; handlers may expect something).
            stop_polling(now);
            ++stats_.sleeps;
            ioc_.run_one();
            continue;
        }
        // Something is expected within microseconds: poll for it rather than sleep.
        if (ioc_.poll() > 0) {
            if (empty_since != unset) {
                ++stats_.busy_poll_hits;  // the expected event came: a wake-up saved
                stop_polling(clock::now());
            }
            continue;
        }
        if (check_pressure(now)) {  // just paused
            stop_polling(now);
            continue;
        }
        if (empty_since == unset) {
            empty_since = now;
        }
        ::sched_yield();
    }
}

void event_loop::run()
{
    if (predictive()) {
        run_predictive();
        return;
    }
    if (busy_poll_.count() <= 0 || pressure_unknown()) {
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
    while (!ioc_.stopped()) {
        if (paused_turn()) {
            continue;
        }
        const bool worked = ioc_.poll() > 0;
        const auto now = clock::now();
        if (worked) {
            if (empty_since != unset) {
                ++stats_.busy_poll_hits;  // the loop would have slept: a wake-up saved
                stats_.busy_poll_idle += now - empty_since;
                empty_since = unset;
            }
            poll_until = now + window;
        } else if (empty_since == unset) {
            empty_since = now;
        }
        if (check_pressure(now)) {  // just paused: polling resumes from idle
            if (empty_since != unset) {
                stats_.busy_poll_idle += now - empty_since;
                empty_since = unset;
            }
            poll_until = unset;
            continue;
        }
        if (worked) {
            continue;
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
            if (waited > busy_poll_) {
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
