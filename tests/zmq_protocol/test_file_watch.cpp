// SPDX-License-Identifier: BSD-3-Clause
// file_watch: waiting for a file to appear with inotify, on real directories.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>

#include "zmq_protocol/file_watch.hpp"
#include "tests/support/temp_dir.hpp"

namespace zp = kernelgate::zmq_protocol;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

struct temp_dir : kernelgate::testing::temp_dir
{
    temp_dir() : kernelgate::testing::temp_dir("kg-file-watch") {}
};

void touch(const fs::path& p)
{
    std::ofstream(p) << "x";
}

/// Runs the loop in short slices until done() or the time is up; true if done() held.
template <class Done>
bool run_until(boost::asio::io_context& ioc, Done done, std::chrono::milliseconds limit = 5000ms)
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
        ioc.restart();
        ioc.run_for(5ms);
    }
    return done();
}

} // namespace

TEST_CASE("file_watch: a waiter wakes once, when its own file is made", "[file_watch]")
{
    temp_dir d;
    boost::asio::io_context ioc;
    auto& watch = boost::asio::use_service<zp::file_watch>(ioc);
    int woke = 0;
    auto t = watch.wait_for((d.path / "a").string(), [&] { ++woke; });
    REQUIRE(t);
    CHECK(watch.watched() == 1);
    CHECK(watch.waiting() == 1);

    touch(d.path / "b");  // another file in the same directory
    run_until(ioc, [] { return false; }, 50ms);
    CHECK(woke == 0);

    touch(d.path / "a");
    REQUIRE(run_until(ioc, [&] { return woke > 0; }));
    CHECK(watch.waiting() == 0);
    CHECK(watch.watched() == 0);  // the last waiter left: unwatched

    fs::remove(d.path / "a");
    touch(d.path / "a");
    run_until(ioc, [] { return false; }, 50ms);
    CHECK(woke == 1);  // once
}

TEST_CASE("file_watch: waiters share one watch per directory; a cancelled wait never fires",
          "[file_watch]")
{
    temp_dir d;
    boost::asio::io_context ioc;
    auto& watch = boost::asio::use_service<zp::file_watch>(ioc);
    bool x = false;
    bool y = false;
    bool moved = false;
    auto tx = watch.wait_for((d.path / "x").string(), [&] { x = true; });
    auto ty = watch.wait_for((d.path / "y").string(), [&] { y = true; });
    auto tm = watch.wait_for((d.path / "m").string(), [&] { moved = true; });
    CHECK(watch.watched() == 1);
    CHECK(watch.waiting() == 3);

    tx.reset();
    CHECK(watch.waiting() == 2);
    touch(d.path / "x");
    touch(d.path / "y");
    REQUIRE(run_until(ioc, [&] { return y; }));
    CHECK_FALSE(x);

    // A file renamed into place counts as made there.
    touch(d.path / "m.tmp");
    fs::rename(d.path / "m.tmp", d.path / "m");
    REQUIRE(run_until(ioc, [&] { return moved; }));
    CHECK(watch.waiting() == 0);
    CHECK(watch.watched() == 0);

    // Moving a ticket moves the wait; the moved-from ticket cancels nothing.
    bool z = false;
    auto tz = watch.wait_for((d.path / "z").string(), [&] { z = true; });
    zp::file_watch::ticket other = std::move(tz);
    tz.reset();
    CHECK(watch.waiting() == 1);
    touch(d.path / "z");
    REQUIRE(run_until(ioc, [&] { return z; }));
}

TEST_CASE("file_watch: a directory that goes away wakes its waiters; a missing one is refused",
          "[file_watch]")
{
    temp_dir d;
    boost::asio::io_context ioc;
    auto& watch = boost::asio::use_service<zp::file_watch>(ioc);
    fs::create_directory(d.path / "sub");
    bool woke = false;
    auto t = watch.wait_for((d.path / "sub" / "f").string(), [&] { woke = true; });
    REQUIRE(t);
    fs::remove(d.path / "sub");
    REQUIRE(run_until(ioc, [&] { return woke; }));  // it looks again, and polls from then on
    CHECK(watch.waiting() == 0);

    auto none = watch.wait_for((d.path / "no-such-dir" / "f").string(), [] {});
    CHECK_FALSE(none);  // no watch: the caller polls
    CHECK(watch.waiting() == 0);
}

TEST_CASE("file_watch: with no waiter left the loop has no work; a ticket may outlive the loop",
          "[file_watch]")
{
    temp_dir d;
    zp::file_watch::ticket survivor;
    {
        boost::asio::io_context ioc;
        auto& watch = boost::asio::use_service<zp::file_watch>(ioc);
        auto t = watch.wait_for((d.path / "a").string(), [] {});
        REQUIRE(t);
        ioc.run_for(20ms);  // the read is waiting
        t.reset();
        // The read was cancelled with the last waiter, so run() returns (it does not wait
        // for the 10 s).
        ioc.restart();
        ioc.run_for(10s);
        CHECK(ioc.stopped());

        survivor = watch.wait_for((d.path / "b").string(), [] {});
        REQUIRE(survivor);
    }
    survivor.reset();  // the service is gone: nothing to cancel, nothing touched
    CHECK_FALSE(survivor);
}

TEST_CASE("file_watch: wait_for_open wakes when the file is opened, not when others are; a "
          "cancelled wait never wakes",
          "[file_watch]")
{
    temp_dir d;
    touch(d.path / "conn.json");
    touch(d.path / "other.json");
    boost::asio::io_context ioc;
    auto& watch = boost::asio::use_service<zp::file_watch>(ioc);

    int woke = 0;
    auto t = watch.wait_for_open((d.path / "conn.json").string(), [&] { ++woke; });
    REQUIRE(t);
    int cancelled_woke = 0;
    auto c = watch.wait_for_open((d.path / "other.json").string(), [&] { ++cancelled_woke; });
    REQUIRE(c);
    CHECK(watch.watched() == 2);

    touch(d.path / "new.json");           // another file made in the directory
    (void)fs::exists(d.path / "conn.json");  // looked at, not opened
    run_until(ioc, [] { return false; }, 50ms);
    CHECK(woke == 0);

    c.reset();
    { std::ifstream in(d.path / "other.json"); }
    { std::ifstream in(d.path / "conn.json"); }  // read, as a kernel reads its connection file
    REQUIRE(run_until(ioc, [&] { return woke > 0; }));
    run_until(ioc, [] { return false; }, 50ms);
    CHECK(woke == 1);
    CHECK(cancelled_woke == 0);
    CHECK(watch.waiting() == 0);
    CHECK(watch.watched() == 0);

    // A file that is not there cannot be waited on: the caller goes on without.
    CHECK_FALSE(watch.wait_for_open((d.path / "missing.json").string(), [] {}));
}

TEST_CASE("file_watch: wait_for_open also ends when the file is deleted", "[file_watch]")
{
    temp_dir d;
    touch(d.path / "conn.json");
    boost::asio::io_context ioc;
    auto& watch = boost::asio::use_service<zp::file_watch>(ioc);
    int woke = 0;
    auto t = watch.wait_for_open((d.path / "conn.json").string(), [&] { ++woke; });
    REQUIRE(t);
    fs::remove(d.path / "conn.json");
    REQUIRE(run_until(ioc, [&] { return woke > 0; }));
    CHECK(watch.watched() == 0);
}
