// SPDX-License-Identifier: BSD-3-Clause
// The heap keeper: malloc keeps freed memory for reuse, and gives it back once use settles.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <string>
#include <memory>
#include <vector>

#include "common/heap_keeper.hpp"

using kernelgate::common::heap_keeper;

namespace {
constexpr std::size_t k_mib = 1u << 20;
heap_keeper::options test_options()
{
    return {.keep = 64 * k_mib, .slack = 4 * k_mib, .settle = 1 * k_mib, .settle_looks = 1};
}
} // namespace

#if defined(__SANITIZE_ADDRESS__)

// The sanitizer's allocator is not glibc's: the keeper says so and leaves it alone.
TEST_CASE("under a sanitizer's allocator the heap keeper stands aside", "[heap_keeper]")
{
    heap_keeper k(test_options());
    CHECK_FALSE(k.apply());
    CHECK_FALSE(k.active());
    CHECK_FALSE(k.tick());
    CHECK_FALSE(k.tick());
    CHECK(k.trims() == 0);
}

#else

TEST_CASE("the heap keeper trims only once memory use has settled, and once per settling",
          "[heap_keeper]")
{
    heap_keeper k(test_options());
    REQUIRE(k.apply());
    using sample = heap_keeper::sample;
    CHECK_FALSE(k.tick(sample{100 * k_mib, 40 * k_mib}));  // the first look: nothing to compare
    CHECK_FALSE(k.tick(sample{130 * k_mib, 10 * k_mib}));  // in use moved by 30 MiB: working
    CHECK_FALSE(k.tick(sample{80 * k_mib, 60 * k_mib}));   // moved again
    CHECK(k.trims() == 0);
    CHECK(k.tick(sample{80 * k_mib + 4096, 60 * k_mib}));  // settled, 60 MiB kept: trimmed
    CHECK(k.trims() == 1);
    // Still settled, and the free count still high (released pages stay counted as free):
    // no second trim until memory use moves.
    CHECK_FALSE(k.tick(sample{80 * k_mib, 60 * k_mib}));
    CHECK_FALSE(k.tick(sample{80 * k_mib, 60 * k_mib}));
    CHECK(k.trims() == 1);
    CHECK_FALSE(k.tick(sample{120 * k_mib, 20 * k_mib}));  // work again
    CHECK(k.tick(sample{120 * k_mib, 20 * k_mib}));        // settled again: a trim
    CHECK(k.trims() == 2);
    // Settled with little kept: not worth a trim.
    CHECK_FALSE(k.tick(sample{20 * k_mib, 120 * k_mib}));
    CHECK_FALSE(k.tick(sample{20 * k_mib, 2 * k_mib}));
    CHECK(k.trims() == 2);
}

TEST_CASE("the heap keeper waits for memory use to stay put for settle_looks looks",
          "[heap_keeper]")
{
    auto o = test_options();
    o.settle_looks = 3;
    heap_keeper k(o);
    REQUIRE(k.apply());
    using sample = heap_keeper::sample;
    CHECK_FALSE(k.tick(sample{50 * k_mib, 30 * k_mib}));  // the first look
    CHECK_FALSE(k.tick(sample{50 * k_mib, 30 * k_mib}));  // still: 1
    CHECK_FALSE(k.tick(sample{50 * k_mib, 30 * k_mib}));  // still: 2
    CHECK_FALSE(k.tick(sample{60 * k_mib, 20 * k_mib}));  // moved: counting starts again
    CHECK_FALSE(k.tick(sample{60 * k_mib + 512 * 1024, 20 * k_mib}));  // within 1 MiB: 1
    CHECK_FALSE(k.tick(sample{60 * k_mib - 512 * 1024, 20 * k_mib}));  // within 1 MiB: 2
    CHECK(k.trims() == 0);
    CHECK(k.tick(sample{60 * k_mib, 20 * k_mib}));  // the third look in a row: trimmed
    CHECK(k.trims() == 1);
    CHECK_FALSE(k.tick(sample{60 * k_mib, 20 * k_mib}));  // and not again while still
}

TEST_CASE("with the heap keeper, freed megabyte blocks stay for reuse until a trim",
          "[heap_keeper]")
{
    heap_keeper k(test_options());
    REQUIRE(k.apply());
    const auto before = heap_keeper::measure();
    {
        // Megabyte blocks: by glibc's defaults each is a mapping of its own, unmapped when
        // freed, and nothing of them would stay free in the heap.
        std::vector<std::unique_ptr<char[]>> blocks;
        for (int i = 0; i < 24; ++i) {
            blocks.emplace_back(new char[k_mib]);
            std::memset(blocks.back().get(), i, k_mib);
        }
        const auto held = heap_keeper::measure();
        CHECK(held.in_use >= before.in_use + 24 * k_mib);
    }
    const auto freed = heap_keeper::measure();
    CHECK(freed.free >= before.free + 20 * k_mib);  // kept for reuse

    (void)k.tick();            // the first look
    REQUIRE(k.tick());         // nothing moved since: the kept memory goes back
    CHECK(k.trims() == 1);
    CHECK(k.kept() < freed.free - 16 * k_mib);  // the top of the heap was returned
}

#endif

TEST_CASE("huge pages: GLIBC_TUNABLES gains glibc.malloc.hugetlb=1 only where it means something",
          "[heap_keeper]")
{
    using kernelgate::common::huge_pages_tunables;
    CHECK(huge_pages_tunables(nullptr, "madvise") == "glibc.malloc.hugetlb=1");
    CHECK(huge_pages_tunables("", "always") == "glibc.malloc.hugetlb=1");
    CHECK(huge_pages_tunables("glibc.malloc.arena_max=2", "madvise") ==
          "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1");
    // Whoever started us chose already (either way).
    CHECK_FALSE(huge_pages_tunables("glibc.malloc.hugetlb=0", "madvise"));
    CHECK_FALSE(huge_pages_tunables("a=1:glibc.malloc.hugetlb=2", "always"));
    // No THP on this system, or no way to tell.
    CHECK_FALSE(huge_pages_tunables(nullptr, "never"));
    CHECK_FALSE(huge_pages_tunables(nullptr, ""));
}

TEST_CASE("huge pages: not under valgrind, whose tool an exec would leave", "[heap_keeper]")
{
    using kernelgate::common::under_valgrind;
    CHECK(under_valgrind("/usr/libexec/valgrind/vgpreload_core-amd64-linux.so:"
                         "/usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so"));
    CHECK_FALSE(under_valgrind(nullptr));
    CHECK_FALSE(under_valgrind("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"));
}

TEST_CASE("huge pages: the process started again puts GLIBC_TUNABLES back as it was",
          "[heap_keeper]")
{
    using kernelgate::common::restore_after_huge_pages_exec;
    ::unsetenv("KERNELGATE_GLIBC_TUNABLES_WAS");
    ::setenv("GLIBC_TUNABLES", "untouched", 1);
    CHECK_FALSE(restore_after_huge_pages_exec());  // not started again: nothing changes
    CHECK(std::string(::getenv("GLIBC_TUNABLES")) == "untouched");

    ::setenv("KERNELGATE_GLIBC_TUNABLES_WAS", "-", 1);  // was unset
    ::setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 1);
    CHECK(restore_after_huge_pages_exec());
    CHECK(::getenv("GLIBC_TUNABLES") == nullptr);
    CHECK(::getenv("KERNELGATE_GLIBC_TUNABLES_WAS") == nullptr);

    ::setenv("KERNELGATE_GLIBC_TUNABLES_WAS", "=glibc.malloc.arena_max=2", 1);
    ::setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", 1);
    CHECK(restore_after_huge_pages_exec());
    CHECK(std::string(::getenv("GLIBC_TUNABLES")) == "glibc.malloc.arena_max=2");
    CHECK(::getenv("KERNELGATE_GLIBC_TUNABLES_WAS") == nullptr);
    ::unsetenv("GLIBC_TUNABLES");
}
