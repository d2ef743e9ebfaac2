// SPDX-License-Identifier: BSD-3-Clause
#include <filesystem>

#include <catch2/catch.hpp>
#include <sys/stat.h>

#include "sessions/store.hpp"

namespace fs = std::filesystem;
using namespace kernelgate::sessions;

TEST_CASE("store: kernels and sessions survive reopening; file is 0600")
{
    char tmpl[] = "/tmp/kg-store-XXXXXX";
    const fs::path dir = ::mkdtemp(tmpl);
    const auto file = dir / "sub" / "kernelgate.db";
    {
        store s(file);
        s.put_kernel({"k1", "python3", "alice", "local", "idle", "t0", "t1"});
        s.put_kernel({"k2", "python3", "bob", "local", "busy", "t0", "t1"});
        s.put_kernel({"k1", "python3", "alice", "local", "busy", "t0", "t2"});  // update
        s.put_session({"s1", "a.ipynb", "a", "notebook", "k1"});
        s.delete_kernel("k2");
    }
    struct stat st{};
    REQUIRE(::stat(file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    store s(file);
    const auto ks = s.kernels();
    REQUIRE(ks.size() == 1);
    CHECK(ks[0].id == "k1");
    CHECK(ks[0].state == "busy");
    CHECK(ks[0].last_activity == "t2");
    const auto ss = s.sessions();
    REQUIRE(ss.size() == 1);
    CHECK(ss[0].path == "a.ipynb");
    s.delete_session("s1");
    CHECK(s.sessions().empty());
    fs::remove_all(dir);
}

TEST_CASE("store: unwritable location throws a clear error")
{
    CHECK_THROWS_WITH(store("/proc/kernelgate-no/x.db"), Catch::Contains("kernelgate"));
}
