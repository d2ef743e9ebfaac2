// SPDX-License-Identifier: BSD-3-Clause
// The gateway's event loop: io_context::run() semantics, with optional busy polling.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <optional>
#include <thread>

#include <boost/asio.hpp>

#include "common/cpu_pressure.hpp"
#include "gateway/event_loop.hpp"

namespace net = boost::asio;
using kernelgate::gateway::event_loop;
using kernelgate::common::poll_hint;
using kernelgate::gateway::pressure_guard;
using namespace std::chrono_literals;

namespace {

/// Posts `n` handlers from another thread, each once the previous one has run and `gap` has
/// passed, then stops the loop from a last handler.
std::thread paced_poster(net::io_context& ioc, std::atomic<int>& ran, int n,
                         std::chrono::milliseconds gap, std::function<void()> also = {})
{
    return std::thread([&ioc, &ran, n, gap, also] {
        for (int i = 0; i < n; ++i) {
            std::this_thread::sleep_for(gap);
            net::post(ioc, [&ran, also] {
                if (also) {
                    also();  // on the loop's thread
                }
                ++ran;
            });
            while (ran.load() <= i) {
                std::this_thread::sleep_for(100us);
            }
        }
        std::this_thread::sleep_for(gap);
        net::post(ioc, [&ioc] { ioc.stop(); });
    });
}

/// Runs the loop while paced_poster() posts n handlers gap apart, then stops it; returns how
/// many ran.
int run_paced(event_loop& loop, net::io_context& ioc, int n, std::chrono::milliseconds gap,
              std::function<void()> also = {})
{
    ioc.restart();
    auto guard = net::make_work_guard(ioc);
    std::atomic<int> ran{0};
    auto poster = paced_poster(ioc, ran, n, gap, std::move(also));
    loop.run();
    poster.join();
    return ran;
}

/// A guard reading a pressure the test sets (0 to 1), every 5 ms.
pressure_guard guard_with(const std::atomic<double>& pressure)
{
    pressure_guard g;
    g.max = 0.4;
    g.interval = 5ms;
    g.source = [&pressure](std::chrono::steady_clock::time_point) {
        return std::optional<double>(pressure.load());
    };
    return g;
}

} // namespace

TEST_CASE("without busy polling the loop is io_context::run()", "[event_loop]")
{
    net::io_context ioc(1);
    int ran = 0;
    for (int i = 0; i < 100; ++i) {
        net::post(ioc, [&ran] { ++ran; });
    }
    event_loop loop(ioc, 0us);
    loop.run();  // returns once out of work
    CHECK(ran == 100);
    CHECK(loop.stats().sleeps == 0);
    CHECK(loop.stats().busy_poll_hits == 0);
}

TEST_CASE("work arriving within the window is found by polling, not by waking up", "[event_loop]")
{
    net::io_context ioc(1);
    auto guard = net::make_work_guard(ioc);
    std::atomic<int> ran{0};
    event_loop loop(ioc, 5s);  // far longer than the 2 ms between messages
    auto poster = paced_poster(ioc, ran, 20, 2ms);
    loop.run();
    poster.join();
    CHECK(ran == 20);
    // Only the first message can find the loop asleep (it starts idle; on a busy machine the
    // message may come before the loop's first wait); the other 19 and the stop are picked up
    // while it polls.
    CHECK(loop.stats().sleeps <= 1);
    CHECK(loop.stats().busy_poll_hits == 20);
    CHECK(loop.stats().busy_poll_idle > 20 * 1ms);
}

TEST_CASE("after the window an idle loop sleeps instead of spinning", "[event_loop]")
{
    net::io_context ioc(1);
    auto guard = net::make_work_guard(ioc);
    std::atomic<int> ran{0};
    event_loop loop(ioc, 200us);
    auto poster = paced_poster(ioc, ran, 5, 50ms);
    const auto t0 = std::chrono::steady_clock::now();
    loop.run();
    const auto took = std::chrono::steady_clock::now() - t0;
    poster.join();
    CHECK(ran == 5);
    // Asleep before each of the five messages and before the stop: nothing came within
    // 200 us of the last work.
    CHECK(loop.stats().sleeps == 6);
    CHECK(loop.stats().busy_poll_hits == 0);
    // Polled ~200 us after each handler, slept through the rest of the ~300 ms.
    CHECK(took >= 250ms);
    CHECK(loop.stats().busy_poll_idle < 100ms);
}

TEST_CASE("the window shrinks while work comes seldom and grows back when it comes often",
          "[event_loop]")
{
    net::io_context ioc(1);
    auto guard = net::make_work_guard(ioc);
    std::atomic<int> ran{0};
    event_loop loop(ioc, 40ms);
    auto sparse = paced_poster(ioc, ran, 8, 100ms);
    loop.run();
    sparse.join();
    CHECK(ran == 8);
    CHECK(loop.stats().busy_poll_hits == 0);
    // Halved after each of the eight empty windows: 40 + 20 + 10 + ... ms polled in all (plus
    // what a preempted loop overshoots), where a fixed window would poll 8 x 40 ms.
    CHECK(loop.stats().busy_poll_idle < 200ms);
    CHECK(loop.window() < 1ms);

    // Dense traffic: a sleep shorter than 40 ms restarts the window at a quarter of it (then
    // doubles it), and polling catches the messages again.
    ioc.restart();
    ran = 0;
    const auto hits_before = loop.stats().busy_poll_hits;
    auto dense = paced_poster(ioc, ran, 40, 1ms);
    loop.run();
    dense.join();
    CHECK(ran == 40);
    // Messages 1 ms apart are caught only by a window that grew back from under 1 ms. (The
    // window's final value is not checked: on a loaded machine a few posts come late, over
    // 40 ms, and each halves it again.)
    CHECK(loop.stats().busy_poll_hits - hits_before >= 30);
}

TEST_CASE("stop() from another thread ends a loop that is polling", "[event_loop]")
{
    net::io_context ioc(1);
    auto guard = net::make_work_guard(ioc);
    bool ran = false;
    net::post(ioc, [&ran] { ran = true; });  // work: the loop then polls for 10 s
    event_loop loop(ioc, 10s);
    auto done = std::async(std::launch::async, [&loop] { loop.run(); });
    std::this_thread::sleep_for(50ms);
    ioc.stop();
    REQUIRE(done.wait_for(5s) == std::future_status::ready);
    done.get();
    CHECK(ran);
    CHECK(loop.stats().busy_poll_idle < 5s);
}

TEST_CASE("a polling loop returns when the io_context runs out of work", "[event_loop]")
{
    net::io_context ioc(1);
    int ran = 0;
    net::steady_timer t(ioc, 1ms);
    t.async_wait([&ran](boost::system::error_code) { ++ran; });
    net::post(ioc, [&ran] { ++ran; });
    event_loop loop(ioc, 10s);
    auto done = std::async(std::launch::async, [&loop] { loop.run(); });
    REQUIRE(done.wait_for(5s) == std::future_status::ready);
    CHECK(ran == 2);
}

TEST_CASE("a guarded loop polls while no task waits for a CPU", "[event_loop]")
{
    std::atomic<double> pressure{0.0};
    net::io_context ioc(1);
    event_loop loop(ioc, 5s, guard_with(pressure));
    CHECK_FALSE(loop.pressure_unknown());
    CHECK(run_paced(loop, ioc, 20, 2ms) == 20);
    CHECK(loop.stats().busy_poll_hits == 20);
    CHECK(loop.stats().pressure_pauses == 0);
    CHECK_FALSE(loop.paused());
}

TEST_CASE("a guarded loop stops polling while tasks wait for a CPU, and resumes after",
          "[event_loop]")
{
    std::atomic<double> pressure{0.9};
    net::io_context ioc(1);
    // Readings 20 ms apart, handlers 2 ms apart: the loop never sits idle for a whole reading
    // interval (which would make it start afresh with a short reading), unless the machine
    // stalls one of the two threads for tens of milliseconds.
    auto g = guard_with(pressure);
    g.interval = 20ms;
    event_loop loop(ioc, 5s, g);
    CHECK(run_paced(loop, ioc, 20, 2ms) == 20);
    const auto pauses = loop.stats().pressure_pauses;
    CHECK(pauses >= 1);
    CHECK(loop.paused());
    CHECK(loop.stats().cpu_pressure == 0.9);
    // With a 5 s window every message would be a hit (and the loop would spin 5 s after the
    // stop's post). Paused from the first reading on, it sleeps between messages.
    CHECK(loop.stats().busy_poll_hits == 0);
    CHECK(loop.stats().busy_poll_idle < 1s);

    // The pressure gone, polling resumes at the next reading (within 20 ms: some ten
    // messages), and the messages after it are caught polling.
    pressure = 0.1;
    CHECK(run_paced(loop, ioc, 40, 2ms) == 40);
    CHECK_FALSE(loop.paused());
    CHECK(loop.stats().cpu_pressure == 0.1);
    CHECK(loop.stats().pressure_pauses == pauses);
    CHECK(loop.stats().busy_poll_hits >= 20);
}

TEST_CASE("without pressure information a guarded loop does not poll at all", "[event_loop]")
{
    pressure_guard g;
    g.max = 0.4;
    g.source = [](std::chrono::steady_clock::time_point) { return std::optional<double>(); };
    net::io_context ioc(1);
    event_loop loop(ioc, 5s, g);
    CHECK(loop.pressure_unknown());
    // io_context::run(): a polling loop would spin 5 s after the last message.
    CHECK(run_paced(loop, ioc, 5, 2ms) == 5);
    CHECK(loop.stats().busy_poll_hits == 0);
    CHECK(loop.stats().busy_poll_idle == std::chrono::nanoseconds(0));
}

TEST_CASE("an unguarded loop (max 1) polls without reading any pressure", "[event_loop]")
{
    pressure_guard g;
    g.max = 1.0;
    bool read = false;
    g.source = [&read](std::chrono::steady_clock::time_point) {
        read = true;
        return std::optional<double>(1.0);
    };
    net::io_context ioc(1);
    event_loop loop(ioc, 5s, g);
    CHECK_FALSE(loop.pressure_unknown());
    CHECK(run_paced(loop, ioc, 10, 2ms) == 10);
    CHECK(loop.stats().busy_poll_hits == 10);
    CHECK_FALSE(read);
}

TEST_CASE("the default guard reads this machine's PSI", "[event_loop]")
{
    net::io_context ioc(1);
    pressure_guard g;
    g.max = 0.4;
    event_loop loop(ioc, 200us, g);
    // Known exactly when the kernel has PSI (test_common checks the reader itself).
    CHECK(loop.pressure_unknown() == !kernelgate::common::cpu_pressure().available());
}

TEST_CASE("predictive polling polls while a handler expects more, and sleeps otherwise",
          "[event_loop]")
{
    net::io_context ioc(1);
    poll_hint hint;
    hint.budget = 200us;
    event_loop loop(ioc, 0us, {}, &hint);
    REQUIRE(loop.predictive());

    // Each handler expects the next event within 50 ms (messages come 2 ms apart): all are
    // caught polling, none by waking up (only the first can find the loop asleep).
    auto expect_more = [&hint] {
        hint.until = std::chrono::steady_clock::now() + 50ms;
    };
    CHECK(run_paced(loop, ioc, 20, 2ms, expect_more) == 20);
    CHECK(loop.stats().busy_poll_hits >= 19);
    CHECK(loop.stats().sleeps <= 1);

    // Handlers that expect nothing: the loop sleeps before every message and the stop, and
    // spends no time polling.
    hint.until = std::chrono::steady_clock::time_point::min();  // the last expectation
    const auto stats = loop.stats();
    CHECK(run_paced(loop, ioc, 10, 2ms) == 10);
    CHECK(loop.stats().busy_poll_hits == stats.busy_poll_hits);
    // Asleep before each message and the stop: 11 times (fewer only if the loop was held off
    // its CPU so long that the next message was already in when it looked).
    CHECK(loop.stats().sleeps - stats.sleeps >= 6);
    CHECK(loop.stats().busy_poll_idle == stats.busy_poll_idle);
}

TEST_CASE("predictive polling pauses under CPU pressure like busy polling", "[event_loop]")
{
    std::atomic<double> pressure{0.9};
    net::io_context ioc(1);
    poll_hint hint;
    hint.budget = 200us;
    // Readings 20 ms apart, as in the busy-poll case above: with handlers 2 ms apart the loop
    // is never idle for a whole interval (which would make it start afresh, unpaused),
    // unless the machine stalls it for tens of milliseconds.
    auto g = guard_with(pressure);
    g.interval = 20ms;
    event_loop loop(ioc, 0us, g, &hint);
    REQUIRE(loop.predictive());
    auto expect_more = [&hint] {
        hint.until = std::chrono::steady_clock::now() + 50ms;
    };
    CHECK(run_paced(loop, ioc, 20, 2ms, expect_more) == 20);
    CHECK(loop.paused());
    CHECK(loop.stats().pressure_pauses == 1);
    CHECK(loop.stats().busy_poll_hits <= 1);  // before the first reading, at most

    // The pressure gone, polling resumes at the next reading (within 20 ms: some ten
    // messages), and the messages after it are caught polling.
    pressure = 0.1;
    CHECK(run_paced(loop, ioc, 40, 2ms, expect_more) == 40);
    CHECK_FALSE(loop.paused());
    CHECK(loop.stats().busy_poll_hits >= 20);
}

TEST_CASE("predictive polling is off without PSI, with a zero budget, or under --busy-poll",
          "[event_loop]")
{
    net::io_context ioc(1);
    {
        pressure_guard g;
        g.max = 0.4;
        g.source = [](std::chrono::steady_clock::time_point) { return std::optional<double>(); };
        poll_hint hint;
        hint.budget = 200us;
        event_loop loop(ioc, 0us, g, &hint);
        CHECK(loop.pressure_unknown());
        CHECK_FALSE(loop.predictive());
        CHECK_FALSE(hint.enabled());  // the kernels keep no books
        auto expect_more = [&hint] {
            hint.until = std::chrono::steady_clock::now() + 50ms;
        };
        CHECK(run_paced(loop, ioc, 5, 2ms, expect_more) == 5);
        CHECK(loop.stats().busy_poll_hits == 0);
        CHECK(loop.stats().busy_poll_idle == std::chrono::nanoseconds(0));
    }
    {
        poll_hint hint;  // budget 0
        event_loop loop(ioc, 0us, {}, &hint);
        CHECK_FALSE(loop.predictive());
        CHECK_FALSE(loop.pressure_unknown());
    }
    {
        poll_hint hint;
        hint.budget = 200us;
        event_loop loop(ioc, 5s, {}, &hint);
        CHECK_FALSE(loop.predictive());  // busy polling polls after all work anyway
    }
}

TEST_CASE("after an idle spell the guard takes a fresh reading before it judges",
          "[event_loop]")
{
    // The first reading after a spell without any (more than two intervals) would average the
    // pressure over the whole spell: it only starts a new, short interval, and polling resumes
    // until that interval's reading.
    std::atomic<double> pressure{0.9};
    net::io_context ioc(1);
    auto g = guard_with(pressure);
    g.interval = 20ms;
    event_loop loop(ioc, 5s, g);
    CHECK(run_paced(loop, ioc, 30, 2ms) == 30);
    CHECK(loop.paused());
    CHECK(loop.stats().pressure_pauses == 1);

    std::this_thread::sleep_for(100ms);  // idle, no readings
    CHECK(run_paced(loop, ioc, 10, 2ms) == 10);
    // Resumed at the fresh start, paused again by the reading a few ms later (still 0.9).
    CHECK(loop.stats().pressure_pauses == 2);
    CHECK(loop.paused());
}

TEST_CASE("a paused loop looks again within a sixteenth of the interval and resumes at once",
          "[event_loop]")
{
    // Readings 160 ms apart while polling; paused, every 10 ms. Requests that follow a burst
    // of contention are polled for as soon as a reading finds the CPUs free (at most half
    // the pressure that pauses), not up to a whole interval later.
    std::atomic<double> pressure{0.9};
    net::io_context ioc(1);
    auto g = guard_with(pressure);
    g.interval = 160ms;
    event_loop loop(ioc, 5s, g);
    CHECK(run_paced(loop, ioc, 30, 2ms) == 30);  // some 60 ms: a fresh start, then 0.9
    REQUIRE(loop.paused());
    CHECK(loop.stats().pressure_pauses == 1);
    const auto hits = loop.stats().busy_poll_hits;

    // Under max (0.4) but above half of it: short readings do not end the pause.
    pressure = 0.3;
    CHECK(run_paced(loop, ioc, 20, 2ms) == 20);
    CHECK(loop.paused());
    CHECK(loop.stats().cpu_pressure == 0.3);
    CHECK(loop.stats().busy_poll_hits == hits);

    pressure = 0.1;
    // 20 handlers 2 ms apart, right after: some 40 ms, far less than the 160 ms interval.
    CHECK(run_paced(loop, ioc, 20, 2ms) == 20);
    CHECK_FALSE(loop.paused());
    CHECK(loop.stats().cpu_pressure == 0.1);
    CHECK(loop.stats().pressure_pauses == 1);
    CHECK(loop.stats().busy_poll_hits - hits >= 8);  // those after the first 10 ms or so
}
