// SPDX-License-Identifier: BSD-3-Clause
#include "common/heap_keeper.hpp"

#include <malloc.h>

#include <algorithm>
#include <climits>

namespace kernelgate::common {

namespace {
// glibc caps the mmap threshold at HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems.
constexpr std::size_t k_mmap_max = 32u << 20;
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

} // namespace kernelgate::common
