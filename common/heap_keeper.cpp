// SPDX-License-Identifier: BSD-3-Clause
#include "common/heap_keeper.hpp"

#include <malloc.h>
#include <sys/auxv.h>

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>

namespace kernelgate::common {

namespace {
// glibc caps the mmap threshold at HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems.
constexpr std::size_t k_mmap_max = 32u << 20;
constexpr const char* k_tunables = "GLIBC_TUNABLES";
constexpr const char* k_huge_tunable = "glibc.malloc.hugetlb";
// GLIBC_TUNABLES as it was before exec_with_huge_pages: "=" and the value, or "-" if unset.
constexpr const char* k_was = "KERNELGATE_GLIBC_TUNABLES_WAS";
} // namespace

bool heap_keeper::apply()
{
    active_ = false;
    if (opts_.keep == 0) {
        return false;
    }
    const auto keep = static_cast<int>(std::min<std::size_t>(opts_.keep, INT_MAX));
    const auto mmap_threshold = static_cast<int>(std::min(opts_.keep, k_mmap_max));
    // mallopt returns 1 on success; a sanitizer's allocator takes the call and returns 0.
    active_ = ::mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 &&
              ::mallopt(M_TRIM_THRESHOLD, keep) == 1;
    return active_;
}

heap_keeper::sample heap_keeper::measure()
{
    const struct mallinfo2 mi = ::mallinfo2();
    // uordblks: in use from the heaps; hblkhd: in blocks of their own mappings.
    return {mi.uordblks + mi.hblkhd, mi.fordblks};
}

bool heap_keeper::tick(sample now)
{
    last_ = now;
    if (!active_) {
        return false;
    }
    const auto moved = [&](std::size_t anchor) {
        return now.in_use > anchor ? now.in_use - anchor : anchor - now.in_use;
    };
    if (!anchor_ || moved(*anchor_) > opts_.settle) {
        anchor_ = now.in_use;
        still_ = 0;
        trimmed_ = false;  // working: what is kept now is worth a new look once it settles
        return false;
    }
    if (++still_ < opts_.settle_looks) {
        return false;
    }
    if (trimmed_ || now.free <= opts_.slack) {
        return false;  // nothing new since the last trim (its free pages stay counted)
    }
    ::malloc_trim(0);
    ++trims_;
    trimmed_ = true;
    last_.free = measure().free;  // a trim changes what is kept, not what is in use
    return true;
}

std::optional<std::string> huge_pages_tunables(const char* current, std::string_view thp_mode)
{
    if (thp_mode != "always" && thp_mode != "madvise") {
        return std::nullopt;  // off ("never"), or no THP in this kernel
    }
    const std::string_view now = current != nullptr ? current : "";
    if (now.find(k_huge_tunable) != std::string_view::npos) {
        return std::nullopt;  // whoever started us chose already
    }
    std::string out(now);
    if (!out.empty()) {
        out += ':';
    }
    out += k_huge_tunable;
    out += "=1";
    return out;
}

bool under_valgrind(const char* ld_preload)
{
    return ld_preload != nullptr && std::string_view(ld_preload).find("vgpreload") != std::string_view::npos;
}

std::string transparent_huge_pages_mode()
{
    std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string line;
    std::getline(in, line);
    const auto open = line.find('[');
    const auto close = line.find(']', open);
    if (open == std::string::npos || close == std::string::npos) {
        return {};
    }
    return line.substr(open + 1, close - open - 1);
}

void exec_with_huge_pages(char** argv)
{
    const char* current = ::getenv(k_tunables);
    const auto wanted = huge_pages_tunables(current, transparent_huge_pages_mode());
    if (!wanted || ::getenv(k_was) != nullptr || under_valgrind(::getenv("LD_PRELOAD"))) {
        return;
    }
    const std::string was = current != nullptr ? std::string("=") + current : "-";
    ::setenv(k_was, was.c_str(), 1);
    ::setenv(k_tunables, wanted->c_str(), 1);
    // The path this process was started through, not /proc/self/exe: a process is named
    // after the file it runs, and "exe" is not what ps, top or pgrep kernelgate should show
    // (nor the name of a symlink it was started through). Nothing has changed the working
    // directory yet, so a relative path still holds.
    if (const auto* started_as = reinterpret_cast<const char*>(::getauxval(AT_EXECFN))) {
        ::execv(started_as, argv);
    }
    ::execv("/proc/self/exe", argv);
    // Still here: no /proc, or the binary is gone. Go on as we are.
    restore_after_huge_pages_exec();
}

bool restore_after_huge_pages_exec()
{
    const char* was = ::getenv(k_was);
    if (was == nullptr) {
        return false;
    }
    if (was[0] == '=') {
        ::setenv(k_tunables, was + 1, 1);
    } else {
        ::unsetenv(k_tunables);
    }
    ::unsetenv(k_was);
    return true;
}

} // namespace kernelgate::common
