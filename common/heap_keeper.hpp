// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kernelgate::common {

/// How the process's allocator treats freed memory.
///
/// glibc's malloc gives freed memory back to the system eagerly: a block of 128 KiB or more
/// is a mapping of its own, unmapped when freed, and free space of more than 128 KiB at the
/// top of the heap is returned at once (both thresholds rise a little as big blocks are
/// freed). Memory used again after that comes back as fresh zeroed pages: one page fault per
/// 4 KiB written. The gateway's buffers for a stream of 64 KiB messages (the read-ahead from
/// the kernel, the WebSocket write buffers) grow to megabytes in each burst and are freed
/// after it, so a stream paid about one fault for every page of data it carried; on a
/// virtual machine where a fault costs 10-25 us that was most of the gateway's CPU.
///
/// The keeper has malloc keep up to `keep` bytes of freed memory for reuse (blocks of up to
/// 32 MiB come from the heap, and only free space beyond `keep` at its top goes back at
/// once), and gives what is kept back to the system once the gateway's memory use has
/// settled: tick(), called every second or so, trims the heap when `settle_looks` looks in
/// a row found the bytes in use within `settle` of where they were at the first of them, and
/// more than `slack` bytes are free (and not again until memory use has moved:
/// malloc_trim's released pages still count as free). So a busy gateway reuses its memory,
/// even across pauses of a few seconds between bursts, and an idle one gives it back (10
/// looks by default, as jemalloc's 10 s decay of unused pages).
///
/// Process-wide: one keeper per process. Where the allocator is not glibc's (a sanitizer's
/// own), apply() reports false and the keeper does nothing.
///
/// Thread safety: tick() from one thread; malloc itself is thread-safe.
class heap_keeper
{
public:
    struct options
    {
        std::size_t keep = 64u << 20;   ///< freed bytes kept for reuse (0: glibc's defaults)
        std::size_t slack = 4u << 20;   ///< free bytes not worth a trim
        std::size_t settle = 1u << 20;  ///< in-use change that counts as "still working"
        unsigned settle_looks = 10;     ///< looks in a row with no such change before a trim
    };
    /// What malloc holds (glibc's mallinfo2: every arena).
    struct sample
    {
        std::size_t in_use = 0;  ///< bytes handed out
        std::size_t free = 0;    ///< bytes freed and kept by malloc
    };

    explicit heap_keeper(options o) : opts_(o) {}

    /// Applies the settings to malloc. False if `keep` is 0 (glibc's defaults stay) or the
    /// allocator refused them (not glibc's).
    bool apply();
    bool active() const noexcept { return active_; }
    const options& settings() const noexcept { return opts_; }

    static sample measure();
    /// One look at the heap: trims it if memory use has settled since the last look (see the
    /// class comment). Returns whether it trimmed.
    bool tick() { return tick(measure()); }
    bool tick(sample now);

    std::uint64_t trims() const noexcept { return trims_; }
    /// Free bytes in malloc at the last tick (after a trim, pages given back still count).
    std::size_t kept() const noexcept { return last_.free; }

private:
    options opts_;
    bool active_ = false;
    std::optional<std::size_t> anchor_;  ///< bytes in use when memory use last moved
    unsigned still_ = 0;                 ///< looks since then
    bool trimmed_ = false;               ///< trimmed, and memory use has not moved since
    sample last_;
    std::uint64_t trims_ = 0;
};

/// Transparent huge pages for malloc's memory.
///
/// On a virtual machine a page fault costs 10-25 us, and the first stream through a new
/// connection writes megabytes into buffers the process never touched before: about 2,000
/// faults, a third of the stream's time. glibc (2.35 and later) can have the kernel back
/// its heap with 2 MiB pages (the tunable glibc.malloc.hugetlb=1), so that the same memory
/// takes a handful of faults. Tunables are read only when a process starts, hence:
///
/// - huge_pages_tunables() says what GLIBC_TUNABLES should be (nullopt: leave it, because
///   it already chooses, or the system has transparent huge pages off);
/// - exec_with_huge_pages() runs this program again, same pid, arguments and environment,
///   with that value and a note of the old one; it returns only if it could not;
/// - restore_after_huge_pages_exec(), first thing in the new process, puts GLIBC_TUNABLES
///   back as it was (kernels started from here inherit the user's environment, not ours)
///   and says whether this process was started that way.
///
/// With THP "madvise" or "always" only, and not under valgrind; a process with threads
/// must not call exec.
std::optional<std::string> huge_pages_tunables(const char* current, std::string_view thp_mode);
/// The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled ("" if unreadable).
std::string transparent_huge_pages_mode();
/// Valgrind's tools preload their own malloc (vgpreload_*.so in LD_PRELOAD) and take
/// mallopt, but an exec would leave the tool (the program would go on outside it): no
/// second start there.
bool under_valgrind(const char* ld_preload);
void exec_with_huge_pages(char** argv);
bool restore_after_huge_pages_exec();

} // namespace kernelgate::common
