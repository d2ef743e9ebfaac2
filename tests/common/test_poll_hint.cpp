// SPDX-License-Identifier: BSD-3-Clause
// Predictive polling's bookkeeping: learning how long waits last, and when to poll.
#include <catch2/catch.hpp>

#include <chrono>

#include "common/poll_hint.hpp"

using kernelgate::common::poll_hint;
using kernelgate::common::wait_predictor;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

TEST_CASE("a wait predictor learns a weighted mean of the waits it saw", "[poll_hint]")
{
    wait_predictor p(2ms);
    const auto t0 = clock_type::now();
    CHECK_FALSE(p.known());
    CHECK_FALSE(p.waiting());
    p.end(t0);  // no wait under way: nothing learned
    CHECK_FALSE(p.known());

    p.begin(t0);
    CHECK(p.waiting());
    p.end(t0 + 100us);
    CHECK_FALSE(p.waiting());
    REQUIRE(p.known());
    CHECK(p.mean() == 100us);  // the first wait is the mean

    p.begin(t0 + 1ms);
    p.end(t0 + 1ms + 300us);
    CHECK(p.mean() == 150us);  // (3 * 100 + 300) / 4
    CHECK(p.samples() == 2);

    // A second begin() while waiting keeps the first start: the wait is measured whole.
    p.begin(t0 + 2ms);
    p.begin(t0 + 2ms + 50us);
    p.end(t0 + 2ms + 150us);
    CHECK(p.mean() == 150us);

    // cancel() forgets the wait under way.
    p.begin(t0 + 3ms);
    p.cancel();
    p.end(t0 + 9ms);
    CHECK(p.samples() == 3);
    CHECK(p.mean() == 150us);
}

TEST_CASE("one long pause counts as at most the cap", "[poll_hint]")
{
    wait_predictor p(2ms);
    const auto t0 = clock_type::now();
    p.begin(t0);
    p.end(t0 + 40us);
    p.begin(t0 + 1s);
    p.end(t0 + 61s);  // a minute's pause counts as 2 ms
    CHECK(p.mean() == (3 * 40us + 2000us) / 4);
    // Four quick exchanges later the mean is back under 200 us.
    for (int i = 0; i < 4; ++i) {
        const auto t = t0 + 70s + i * 1ms;
        p.begin(t);
        p.end(t + 40us);
    }
    CHECK(p.mean() < 200us);
}

TEST_CASE("a poll hint asks for polling only for waits predicted within its budget",
          "[poll_hint]")
{
    const auto now = clock_type::now();
    poll_hint hint;
    hint.budget = 200us;
    wait_predictor p;

    hint.expect(p, now);  // nothing learned yet: no polling
    CHECK(hint.until == clock_type::time_point::min());
    CHECK(hint.predictions == 0);

    p.begin(now - 60us);
    p.end(now);  // waits of 60 us
    hint.expect(p, now);
    CHECK(hint.until == now + 120us);  // twice the predicted wait
    CHECK(hint.predictions == 1);

    // A later, shorter expectation does not cut an earlier, longer one short.
    wait_predictor quick;
    quick.begin(now);
    quick.end(now + 2us);
    hint.expect(quick, now + 10us);
    CHECK(hint.until == now + 120us);
    // ... a later, longer one extends it; very short waits still get 10 us.
    hint.expect(quick, now + 115us);
    CHECK(hint.until == now + 125us);

    // Waits of 150 us are polled for up to the budget (not twice 150 us).
    wait_predictor medium;
    medium.begin(now);
    medium.end(now + 150us);
    hint.expect(medium, now + 1ms);
    CHECK(hint.until == now + 1ms + 200us);

    // Waits longer than the budget are slept through.
    wait_predictor slow;
    slow.begin(now);
    slow.end(now + 1500us);
    const auto before = hint.until;
    const auto predictions = hint.predictions;
    hint.expect(slow, now + 5ms);
    CHECK(hint.until == before);
    CHECK(hint.predictions == predictions);

    // A disabled hint (budget 0) never polls.
    poll_hint off;
    CHECK_FALSE(off.enabled());
    off.expect(quick, now);
    CHECK(off.until == clock_type::time_point::min());
}

TEST_CASE("a hint caps the waits its predictors learn at 8 x its budget", "[poll_hint]")
{
    poll_hint hint;
    hint.budget = 200us;
    CHECK(hint.wait_cap() == 1600us);
    hint.budget = 5ms;
    CHECK(hint.wait_cap() == 40ms);
    hint.budget = 10us;
    CHECK(hint.wait_cap() == 1ms);

    // With a 5 ms budget, requests of 20 ms must not look like 2 ms ones.
    hint.budget = 5ms;
    wait_predictor p;
    p.set_cap(hint.wait_cap());
    const auto t0 = clock_type::now();
    p.begin(t0);
    p.end(t0 + 20ms);
    CHECK(p.mean() == 20ms);
    hint.expect(p, t0);
    CHECK(hint.predictions == 0);
}
