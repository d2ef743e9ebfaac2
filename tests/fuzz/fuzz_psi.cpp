// SPDX-License-Identifier: BSD-3-Clause
// Fuzz target for common::psi_some_total (the text of /proc/pressure/cpu or a cgroup's
// cpu.pressure). It must never read past its input, and whatever total it returns must be
// the digits after " total=" on a line starting "some ".
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/cpu_pressure.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string copy(reinterpret_cast<const char*>(data), size);  // exact bounds for ASan
    const auto total = kernelgate::common::psi_some_total(copy);
    if (total) {
        const auto text = std::to_string(*total);
        if (copy.find("some ") == std::string::npos ||
            copy.find(" total=" + text) == std::string::npos) {
            __builtin_trap();
        }
    }
    return 0;
}
