// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string_view>

namespace kernelgate::common {

/// Durations counted into fixed buckets, as a Prometheus histogram: how many were at most
/// each bound (cumulative), how many in all and their sum. The bounds suit waits of
/// milliseconds to minutes (a kernel's start).
///
/// Thread safety: one thread.
class duration_histogram
{
public:
    /// Upper bounds of the buckets, in seconds; +Inf is implied.
    static constexpr std::array<double, 13> k_bounds{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                     2.5, 5, 10, 30, 60, 120};

    void observe(std::chrono::steady_clock::duration d) noexcept
    {
        const double s = std::chrono::duration<double>(d).count();
        std::size_t i = 0;
        while (i < k_bounds.size() && s > k_bounds[i]) {
            ++i;
        }
        ++buckets_[i];  // the last one is +Inf
        ++count_;
        sum_ += s;
    }

    std::uint64_t count() const noexcept { return count_; }
    double sum() const noexcept { return sum_; }
    /// Observations of at most k_bounds[i] (i == k_bounds.size(): all of them).
    std::uint64_t at_most(std::size_t i) const noexcept
    {
        std::uint64_t n = 0;
        for (std::size_t j = 0; j <= i && j < buckets_.size(); ++j) {
            n += buckets_[j];
        }
        return n;
    }

    /// The series of one histogram in Prometheus text format: name_bucket{labels,le="…"},
    /// name_sum{labels}, name_count{labels}. `labels` is empty or `key="value"` pairs
    /// joined by commas, already escaped. The HELP and TYPE lines are the caller's (once per
    /// metric, however many label sets).
    void write(std::ostream& o, std::string_view name, std::string_view labels) const
    {
        const auto precision = o.precision(12);  // a sum of many seconds keeps its ms
        const std::string_view sep = labels.empty() ? "" : ",";
        for (std::size_t i = 0; i <= k_bounds.size(); ++i) {
            o << name << "_bucket{" << labels << sep << "le=\"";
            if (i < k_bounds.size()) {
                o << k_bounds[i];
            } else {
                o << "+Inf";
            }
            o << "\"} " << at_most(i) << '\n';
        }
        const std::string_view open = labels.empty() ? "" : "{";
        const std::string_view close = labels.empty() ? "" : "}";
        o << name << "_sum" << open << labels << close << ' ' << sum_ << '\n'
          << name << "_count" << open << labels << close << ' ' << count_ << '\n';
        o.precision(precision);
    }

private:
    std::array<std::uint64_t, k_bounds.size() + 1> buckets_{};
    std::uint64_t count_ = 0;
    double sum_ = 0;
};

} // namespace kernelgate::common
