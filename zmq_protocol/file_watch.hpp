// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>

namespace kernelgate::zmq_protocol {

/// Waits for files to appear without polling: an inotify watch on each file's directory,
/// one inotify instance per io_context and one watch per directory, shared by every waiter.
/// A starting kernel's ipc sockets appear in the runtime directory some hundreds of
/// milliseconds after its launch; a connection that waits here sleeps until then instead of
/// looking every few milliseconds.
///
/// Obtained with boost::asio::use_service<file_watch>(ioc). Where inotify is unusable (no
/// instance left for this user, a directory that cannot be watched) wait_for() says so and
/// the caller polls as before.
///
/// Thread safety: all calls on the io_context's thread, as the sockets that use it.
class file_watch final : public boost::asio::execution_context::service
{
    struct state;

public:
    using key_type = file_watch;
    static boost::asio::execution_context::id id;

    explicit file_watch(boost::asio::io_context& ioc);
    ~file_watch() override;
    file_watch(const file_watch&) = delete;
    file_watch& operator=(const file_watch&) = delete;

    /// A wait in progress; destroying it (or reset()) cancels it. It may outlive the service.
    class ticket
    {
    public:
        ticket() = default;
        ticket(ticket&& o) noexcept;
        ticket& operator=(ticket&& o) noexcept;
        ticket(const ticket&) = delete;
        ticket& operator=(const ticket&) = delete;
        ~ticket() { reset(); }
        void reset() noexcept;
        explicit operator bool() const noexcept { return id_ != 0; }

    private:
        friend class file_watch;
        ticket(std::weak_ptr<state> w, std::uint64_t id) : state_(std::move(w)), id_(id) {}
        std::weak_ptr<state> state_;
        std::uint64_t id_ = 0;
    };

    /// Posts `f` once a file named `path` is created in its directory or moved there. It is
    /// also posted, once, if the directory itself goes away or the kernel's event queue
    /// overflowed: the caller looks again. Nothing is posted for a file that was there
    /// already; a caller checks after this returns (no creation falls between the two).
    /// An empty ticket: no watch could be set, and nothing will be posted.
    ticket wait_for(const std::string& path, std::function<void()> f);

    /// Posts `f` once the existing file `path` is opened (by anyone, for reading or
    /// writing), or deleted or moved away. A kernel reads its connection file just before it
    /// binds its sockets: until then there is nothing to connect to. An empty ticket: no
    /// watch could be set (no inotify, no such file), and nothing will be posted.
    ticket wait_for_open(const std::string& path, std::function<void()> f);

    /// Objects watched now: one per directory with a waiter, one per file waited to be opened.
    std::size_t watched() const noexcept;
    /// Waits not yet woken or cancelled.
    std::size_t waiting() const noexcept;

private:
    void shutdown() override;
    std::shared_ptr<state> state_;  ///< shared with tickets, which may outlive the service
};

} // namespace kernelgate::zmq_protocol
