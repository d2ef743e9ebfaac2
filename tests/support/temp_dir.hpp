// SPDX-License-Identifier: BSD-3-Clause
// A directory under /tmp for one test, removed with everything in it when the test ends.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace kernelgate::testing {

struct temp_dir
{
    std::filesystem::path path;
    /// prefix: names the directory (/tmp/<prefix>-XXXXXX), so a leftover shows whose it is.
    explicit temp_dir(const std::string& prefix = "kg-test")
    {
        std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
        path = ::mkdtemp(tmpl.data());
    }
    ~temp_dir()
    {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
};

} // namespace kernelgate::testing
