// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include <sys/inotify.h>

namespace kernelgate {

/// Calls f(wd, mask, name) for each event in `n` bytes read from an inotify descriptor. The
/// name is empty for events on the watched object itself (and for IN_Q_OVERFLOW, wd -1). A
/// truncated last event (which the kernel never produces) ends the walk.
template <class F>
void for_each_inotify_event(const char* data, std::size_t n, F&& f)
{
    for (std::size_t off = 0; off + sizeof(inotify_event) <= n;) {
        inotify_event ev;
        std::memcpy(&ev, data + off, sizeof ev);
        const std::size_t len = std::min<std::size_t>(ev.len, n - off - sizeof ev);
        const char* name = data + off + sizeof ev;
        f(ev.wd, static_cast<std::uint32_t>(ev.mask), std::string_view(name, ::strnlen(name, len)));
        off += sizeof ev + len;
    }
}

} // namespace kernelgate
