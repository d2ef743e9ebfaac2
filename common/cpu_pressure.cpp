// SPDX-License-Identifier: BSD-3-Clause
#include "common/cpu_pressure.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>

namespace kernelgate::common {

std::optional<std::uint64_t> psi_some_total(std::string_view text) noexcept
{
    // "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\nfull ..."
    while (!text.empty()) {
        const auto eol = text.find('\n');
        const auto line = text.substr(0, eol);
        text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
        if (!line.starts_with("some ")) {
            continue;
        }
        constexpr std::string_view key = " total=";
        const auto at = line.find(key);
        if (at == std::string_view::npos) {
            return std::nullopt;
        }
        const auto digits = line.substr(at + key.size());
        std::uint64_t total = 0;
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), total);
        if (ec != std::errc{} || end == digits.data() ||
            (end != digits.data() + digits.size() && *end != ' ')) {
            return std::nullopt;
        }
        return total;
    }
    return std::nullopt;
}

namespace {

std::string default_path()
{
    // In a container with its own cgroup namespace (cgroup v2) this is the container's
    // pressure; on a host it is absent (the root cgroup has none) and the machine's is used.
    for (const char* p : {"/sys/fs/cgroup/cpu.pressure", "/proc/pressure/cpu"}) {
        if (::access(p, R_OK) == 0) {
            return p;
        }
    }
    return "/proc/pressure/cpu";
}

} // namespace

cpu_pressure::cpu_pressure(std::string path)
    : path_(path.empty() ? default_path() : std::move(path)),
      fd_(::open(path_.c_str(), O_RDONLY | O_CLOEXEC)),
      last_total_(read_total()),
      last_time_(std::chrono::steady_clock::now())
{
}

cpu_pressure::~cpu_pressure()
{
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

std::optional<std::uint64_t> cpu_pressure::read_total() noexcept
{
    if (fd_ < 0) {
        return std::nullopt;
    }
    std::array<char, 512> buf;  // two lines of about 60 characters
    const auto n = ::pread(fd_, buf.data(), buf.size(), 0);
    if (n <= 0) {
        return std::nullopt;
    }
    return psi_some_total(std::string_view(buf.data(), static_cast<std::size_t>(n)));
}

std::optional<double> cpu_pressure::sample(std::chrono::steady_clock::time_point now) noexcept
{
    const auto total = read_total();
    if (!total || !last_total_) {
        last_total_ = total;
        last_time_ = now;
        return std::nullopt;
    }
    const auto stalled = static_cast<double>(*total - std::min(*total, *last_total_));  // us
    const auto wall = std::chrono::duration<double, std::micro>(now - last_time_).count();
    last_total_ = total;
    last_time_ = now;
    if (wall <= 0) {
        return 0.0;
    }
    return std::clamp(stalled / wall, 0.0, 1.0);
}

} // namespace kernelgate::common
