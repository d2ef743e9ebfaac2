// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>

namespace kernelgate::common {

/// How long one kind of wait lasts, learned from the waits seen so far: an exponentially
/// weighted mean of their lengths (weight 1/4 for the newest), each counted as at most
/// `cap` so that one long pause does not hide a fast exchange for long.
///
/// Thread safety: one thread.
class wait_predictor
{
public:
    using clock = std::chrono::steady_clock;

    explicit wait_predictor(std::chrono::microseconds cap = std::chrono::milliseconds(2))
        : cap_(cap)
    {
    }

    /// A wait begins (if one is under way, it goes on from its start).
    void begin(clock::time_point now) noexcept
    {
        if (!waiting()) {
            since_ = now;
        }
    }
    /// The wait ends: its length is learned.
    void end(clock::time_point now) noexcept
    {
        if (!waiting()) {
            return;
        }
        const auto waited = std::min<std::chrono::microseconds>(
            cap_, std::chrono::duration_cast<std::chrono::microseconds>(now - since_));
        mean_ = samples_ == 0 ? waited : (3 * mean_ + waited) / 4;
        ++samples_;
        since_ = clock::time_point::min();
    }
    /// The longest a single wait counts as (from now on).
    void set_cap(std::chrono::microseconds cap) noexcept { cap_ = cap; }
    /// Forgets a wait under way without learning from it.
    void cancel() noexcept { since_ = clock::time_point::min(); }

    bool waiting() const noexcept { return since_ != clock::time_point::min(); }
    /// The expected length of the next wait (meaningful once known()).
    std::chrono::microseconds mean() const noexcept { return mean_; }
    /// A wait has ended, so mean() says something.
    bool known() const noexcept { return samples_ > 0; }
    std::uint64_t samples() const noexcept { return samples_; }

private:
    std::chrono::microseconds cap_;
    std::chrono::microseconds mean_{0};
    std::uint64_t samples_ = 0;
    clock::time_point since_ = clock::time_point::min();
};

/// Predictive polling: parts of the gateway that know an event is coming soon (a kernel
/// that is working on a request, a client that usually sends its next request right after
/// the last reply) say so here, and the event loop polls for it until `until` instead of
/// sleeping. Only waits predicted to last at most `budget` are polled for, for twice their
/// predicted length: a loop whose traffic is slow (ipykernel's milliseconds per request, a
/// person typing) never polls.
///
/// Owned by the loop's owner; read by the loop, written by handlers on the loop's thread.
struct poll_hint
{
    using clock = std::chrono::steady_clock;

    std::chrono::microseconds budget{0};  ///< 0: predictive polling off
    clock::time_point until = clock::time_point::min();
    std::uint64_t predictions = 0;        ///< waits worth polling for, so far

    bool enabled() const noexcept { return budget.count() > 0; }
    /// The longest one wait should count as in a predictor feeding this hint: long enough that
    /// a few long waits push the mean over the budget, short enough that after one long pause
    /// a few quick exchanges bring it back (8 x budget, at least 1 ms).
    std::chrono::microseconds wait_cap() const noexcept
    {
        return std::max<std::chrono::microseconds>(std::chrono::milliseconds(1), 8 * budget);
    }

    /// An event is expected after a wait like the ones `p` has seen.
    void expect(const wait_predictor& p, clock::time_point now) noexcept
    {
        if (!p.known() || p.mean() > budget) {
            return;
        }
        const auto window = std::min(budget, std::max(std::chrono::microseconds(10), 2 * p.mean()));
        until = std::max(until, now + window);
        ++predictions;
    }
};

} // namespace kernelgate::common
