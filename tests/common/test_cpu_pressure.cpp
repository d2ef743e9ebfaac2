// SPDX-License-Identifier: BSD-3-Clause
// CPU pressure (Linux PSI): the parser, the interval arithmetic, and the machine's own file.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/cpu_pressure.hpp"

using kernelgate::common::cpu_pressure;
using kernelgate::common::psi_some_total;
using namespace std::chrono_literals;

namespace {

void write_file(const std::string& path, const std::string& text)
{
    std::ofstream(path, std::ios::trunc) << text;
}

std::string psi_text(unsigned long long some_total)
{
    return "some avg10=1.18 avg60=13.49 avg300=17.73 total=" + std::to_string(some_total) +
           "\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
}

struct temp_file
{
    std::string path;
    temp_file()
    {
        std::string tmpl = (std::filesystem::temp_directory_path() / "kg-psi-XXXXXX").string();
        const int fd = ::mkstemp(tmpl.data());
        REQUIRE(fd >= 0);
        ::close(fd);
        path = tmpl;
    }
    ~temp_file() { std::filesystem::remove(path); }
};

} // namespace

TEST_CASE("psi_some_total reads the some line's total", "[cpu_pressure]")
{
    CHECK(psi_some_total(psi_text(8977839218ULL)) == 8977839218ULL);
    CHECK(psi_some_total("some avg10=0.00 avg60=0.00 avg300=0.00 total=0") == 0U);
    // The full line comes second and is not the one read.
    CHECK(psi_some_total("full avg10=0 total=5\nsome avg10=0 total=7\n") == 7U);
}

TEST_CASE("psi_some_total rejects what is not PSI", "[cpu_pressure]")
{
    CHECK_FALSE(psi_some_total(""));
    CHECK_FALSE(psi_some_total("full avg10=0.00 total=5\n"));  // no some line
    CHECK_FALSE(psi_some_total("some avg10=0.00 avg60=0.00\n"));  // no total
    CHECK_FALSE(psi_some_total("some total=\n"));
    CHECK_FALSE(psi_some_total("some total=-5\n"));
    CHECK_FALSE(psi_some_total("some total=12abc\n"));
    CHECK_FALSE(psi_some_total("some total=99999999999999999999999\n"));  // > 2^64
    CHECK_FALSE(psi_some_total("something total=5\n"));
}

TEST_CASE("cpu_pressure: the share of each interval some task waited", "[cpu_pressure]")
{
    temp_file f;
    write_file(f.path, psi_text(1'000'000));
    cpu_pressure p(f.path);
    REQUIRE(p.available());
    CHECK(p.path() == f.path);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(p.sample(t0).has_value());  // from construction to t0: a baseline

    write_file(f.path, psi_text(1'000'000 + 25'000));  // 25 ms stalled ...
    auto share = p.sample(t0 + 100ms);                  // ... in 100 ms
    REQUIRE(share.has_value());
    CHECK(*share == Approx(0.25));

    share = p.sample(t0 + 200ms);  // nothing more stalled
    REQUIRE(share.has_value());
    CHECK(*share == 0.0);

    write_file(f.path, psi_text(1'000'000 + 25'000 + 900'000));  // more than the interval
    share = p.sample(t0 + 300ms);
    REQUIRE(share.has_value());
    CHECK(*share == 1.0);  // clamped

    write_file(f.path, "garbage\n");
    CHECK_FALSE(p.sample(t0 + 400ms).has_value());
    write_file(f.path, psi_text(2'000'000));  // readable again: a new baseline first
    CHECK_FALSE(p.sample(t0 + 500ms).has_value());
    share = p.sample(t0 + 600ms);
    REQUIRE(share.has_value());
    CHECK(*share == 0.0);
}

TEST_CASE("cpu_pressure without a PSI file is unavailable", "[cpu_pressure]")
{
    cpu_pressure p("/nonexistent/pressure/cpu");
    CHECK_FALSE(p.available());
    CHECK_FALSE(p.sample(std::chrono::steady_clock::now()).has_value());
}

TEST_CASE("cpu_pressure of this machine rises when more threads spin than there are CPUs",
          "[cpu_pressure]")
{
    cpu_pressure p;  // the container's cgroup or /proc/pressure/cpu
    if (!p.available()) {
        // A kernel without PSI: the gateway then keeps busy polling off (test_event_loop).
        CHECK_FALSE(p.sample(std::chrono::steady_clock::now()).has_value());
        return;
    }
    const unsigned cpus = std::max(1U, std::thread::hardware_concurrency());
    std::atomic<bool> stop{false};
    std::vector<std::thread> hogs;
    p.sample(std::chrono::steady_clock::now());
    for (unsigned i = 0; i < cpus + 2; ++i) {
        hogs.emplace_back([&stop] {
            while (!stop.load(std::memory_order_relaxed)) {
            }
        });
    }
    std::this_thread::sleep_for(500ms);
    const auto share = p.sample(std::chrono::steady_clock::now());
    stop = true;
    for (auto& t : hogs) {
        t.join();
    }
    REQUIRE(share.has_value());
    // Two more runnable threads than CPUs: some task waits nearly all the time.
    CHECK(*share > 0.5);
}
