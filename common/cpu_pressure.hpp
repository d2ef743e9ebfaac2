// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kernelgate::common {

/// The total= of the "some" line of a Linux pressure stall information file (e.g.
/// /proc/pressure/cpu): microseconds during which at least one runnable task waited for a
/// CPU. nullopt when the text has no such line or number.
std::optional<std::uint64_t> psi_some_total(std::string_view text) noexcept;

/// CPU pressure over successive intervals: the share of wall time during which some task
/// waited for a CPU, from Linux's pressure stall information. Reads the container's own
/// cgroup v2 cpu.pressure when there is one, else /proc/pressure/cpu (machine-wide).
///
/// Thread safety: one thread.
class cpu_pressure
{
public:
    /// path empty: the container's /sys/fs/cgroup/cpu.pressure, else /proc/pressure/cpu.
    explicit cpu_pressure(std::string path = {});
    ~cpu_pressure();
    cpu_pressure(const cpu_pressure&) = delete;
    cpu_pressure& operator=(const cpu_pressure&) = delete;

    /// Whether the file could be read (a kernel without PSI, or booted with psi=0: no).
    bool available() const noexcept { return last_total_.has_value(); }
    const std::string& path() const noexcept { return path_; }

    /// Share (0 to 1) of the time since the previous sample (or construction) in which some
    /// task waited for a CPU; nullopt when the file cannot be read.
    std::optional<double> sample(std::chrono::steady_clock::time_point now) noexcept;

private:
    std::optional<std::uint64_t> read_total() noexcept;

    std::string path_;
    int fd_ = -1;
    std::optional<std::uint64_t> last_total_;
    std::chrono::steady_clock::time_point last_time_;
};

} // namespace kernelgate::common
