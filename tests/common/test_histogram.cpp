// SPDX-License-Identifier: BSD-3-Clause
// The duration histogram behind /metrics' kernel start times.
#include <catch2/catch.hpp>

#include <chrono>
#include <sstream>
#include <string>

#include "common/histogram.hpp"

using kernelgate::common::duration_histogram;
using namespace std::chrono_literals;

TEST_CASE("a duration histogram counts cumulatively, with the bound itself in its bucket",
          "[histogram]")
{
    duration_histogram h;
    CHECK(h.count() == 0);
    CHECK(h.at_most(duration_histogram::k_bounds.size()) == 0);

    h.observe(5ms);      // <= 0.01
    h.observe(10ms);     // exactly 0.01: still the first bucket (le means <=)
    h.observe(400ms);    // <= 0.5
    h.observe(3s);       // <= 5
    h.observe(10min);    // only +Inf
    CHECK(h.count() == 5);
    CHECK(h.sum() == Approx(0.005 + 0.010 + 0.4 + 3 + 600));
    CHECK(h.at_most(0) == 2);  // le 0.01
    CHECK(h.at_most(1) == 2);  // le 0.025
    CHECK(h.at_most(4) == 2);  // le 0.25
    CHECK(h.at_most(5) == 3);  // le 0.5
    CHECK(h.at_most(8) == 4);  // le 5
    CHECK(h.at_most(12) == 4); // le 120
    CHECK(h.at_most(duration_histogram::k_bounds.size()) == 5);  // +Inf: all of them
}

TEST_CASE("a duration histogram writes Prometheus text with its labels", "[histogram]")
{
    duration_histogram h;
    h.observe(300ms);
    h.observe(2s);

    std::ostringstream labelled;
    h.write(labelled, "kg_start_seconds", R"(kernelspec="python3")");
    const std::string t = labelled.str();
    CHECK(t.find("kg_start_seconds_bucket{kernelspec=\"python3\",le=\"0.25\"} 0\n") !=
          std::string::npos);
    CHECK(t.find("kg_start_seconds_bucket{kernelspec=\"python3\",le=\"0.5\"} 1\n") !=
          std::string::npos);
    CHECK(t.find("kg_start_seconds_bucket{kernelspec=\"python3\",le=\"2.5\"} 2\n") !=
          std::string::npos);
    CHECK(t.find("kg_start_seconds_bucket{kernelspec=\"python3\",le=\"+Inf\"} 2\n") !=
          std::string::npos);
    CHECK(t.find("kg_start_seconds_sum{kernelspec=\"python3\"} 2.3\n") != std::string::npos);
    CHECK(t.find("kg_start_seconds_count{kernelspec=\"python3\"} 2\n") != std::string::npos);
    // One line per bucket, +Inf included, then the sum and the count.
    std::size_t lines = 0;
    for (const char c : t) {
        lines += c == '\n' ? 1 : 0;
    }
    CHECK(lines == duration_histogram::k_bounds.size() + 3);

    std::ostringstream bare;
    h.write(bare, "x", "");
    CHECK(bare.str().find("x_bucket{le=\"1\"} 1\n") != std::string::npos);
    CHECK(bare.str().find("x_count 2\n") != std::string::npos);
}
