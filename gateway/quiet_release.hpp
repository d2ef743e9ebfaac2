// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "common/asio_fwd.hpp"

namespace kernelgate::gateway {

/// How often a connection that wrote something looks whether it has gone quiet.
inline constexpr auto k_release_after = std::chrono::milliseconds(100);

/// Bytes of memory a buffer holds (0 for an empty string's own inline room).
inline std::size_t held_capacity(const std::string& b) noexcept
{
    return b.capacity() > std::string().capacity() ? b.capacity() : 0;
}

/// A connection's write buffers stay while output keeps coming (the buffer just written
/// becomes the next one to fill, so a stream does not grow a buffer, copying as it doubles,
/// for every write) and go once it is found with nothing to write, k_release_after after a
/// write (and every k_release_after after that while it is busy): an idle connection holds
/// no write buffer at all.
///
/// State is the write side of a stream layer, shared with its operations: `pending` (bytes
/// waiting), `flushing` (the write in flight), `writing`, and the timer `release_timer` with
/// its flag `release_armed`. Call after each completed write; the layer's destructor cancels
/// the timer (the wait holds the state).
template <class State>
void release_when_quiet(const std::shared_ptr<State>& st)
{
    if (st->release_armed || held_capacity(st->pending) + held_capacity(st->flushing) == 0) {
        return;
    }
    st->release_armed = true;
    st->release_timer.expires_after(k_release_after);
    st->release_timer.async_wait([st](beast::error_code ec) {
        st->release_armed = false;
        if (ec) {
            return;  // cancelled: the stream is gone
        }
        if (st->writing || !st->pending.empty()) {
            release_when_quiet(st);  // still busy: look again later
            return;
        }
        std::string().swap(st->flushing);
        std::string().swap(st->pending);
    });
}

} // namespace kernelgate::gateway
