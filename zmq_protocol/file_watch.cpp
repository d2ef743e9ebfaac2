// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/file_watch.hpp"

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <unordered_map>
#include <utility>
#include <vector>

#include <sys/inotify.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "common/inotify_events.hpp"

namespace kernelgate::zmq_protocol {

namespace net = boost::asio;

boost::asio::execution_context::id file_watch::id;

namespace {
// What ends a wait: the file made there (bind() of a Unix socket creates it) or renamed
// into place; the directory deleted, moved or unmounted (the waiter looks again).
constexpr std::uint32_t k_watch_mask =
    IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
constexpr std::uint32_t k_dir_gone = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT;
// What ends a wait for a file to be opened: the open, or the file deleted, moved or
// unmounted (the waiter stops waiting for it).
constexpr std::uint32_t k_open_mask = IN_OPEN | IN_DELETE_SELF | IN_MOVE_SELF;
} // namespace

struct file_watch::state : std::enable_shared_from_this<file_watch::state>
{
    explicit state(net::io_context& c) : ioc(c), desc(c) {}

    struct waiter
    {
        int wd;
        std::string name;
        std::function<void()> f;
    };

    net::io_context& ioc;
    net::posix::stream_descriptor desc;  ///< the inotify instance
    bool reading = false;
    alignas(inotify_event) std::array<char, 4096> events{};
    std::unordered_map<int, std::size_t> watches;  ///< waiters per watched directory
    std::map<std::uint64_t, waiter> waiters;       ///< by ticket: woken in the order they came
    std::uint64_t next_id = 1;

    /// A waiter for a file made in its directory (`opened` false: the directory is watched,
    /// and the waiter has the file's name) or for a file to be opened (the file itself is
    /// watched; the waiter's name is empty, as are the events on a watched object itself).
    std::uint64_t add(const std::string& path, bool opened, std::function<void()> f)
    {
        if (!desc.is_open()) {
            return 0;
        }
        const std::filesystem::path p(path);
        const std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
        const std::string& target = opened ? path : dir;
        // The same directory (by any path to it) gives the same watch descriptor.
        const int wd = ::inotify_add_watch(desc.native_handle(), target.c_str(),
                                           opened ? k_open_mask : k_watch_mask);
        if (wd < 0) {
            spdlog::debug("file watch: cannot watch {} ({})", target, std::strerror(errno));
            return 0;
        }
        ++watches[wd];
        const auto wait = next_id++;
        waiters.emplace(wait, waiter{wd, opened ? std::string() : p.filename().string(),
                                     std::move(f)});
        read();
        return wait;
    }

    /// The waiter leaves (cancelled or woken); its directory is unwatched after the last.
    void remove(std::map<std::uint64_t, waiter>::iterator it)
    {
        const int wd = it->second.wd;
        waiters.erase(it);
        const auto w = watches.find(wd);
        if (w != watches.end() && --w->second == 0) {
            watches.erase(w);
            // Fails harmlessly for a watch the kernel removed already (its directory went).
            ::inotify_rm_watch(desc.native_handle(), wd);
        }
        if (waiters.empty() && reading) {
            boost::system::error_code ignored;
            desc.cancel(ignored);  // no read left waiting: a loop with nothing else to do ends
        }
    }

    void cancel(std::uint64_t wait)
    {
        if (const auto it = waiters.find(wait); it != waiters.end()) {
            remove(it);
        }
    }

    template <class Pred>
    void wake_if(Pred pred)
    {
        std::vector<std::function<void()>> woken;
        for (auto it = waiters.begin(); it != waiters.end();) {
            const auto next = std::next(it);
            if (pred(it->second)) {
                woken.push_back(std::move(it->second.f));
                remove(it);
            }
            it = next;
        }
        for (auto& f : woken) {
            net::post(ioc, std::move(f));
        }
    }

    void read()
    {
        if (reading || waiters.empty()) {
            return;
        }
        reading = true;
        desc.async_read_some(
            net::buffer(events),
            [weak = weak_from_this(), this](const boost::system::error_code& ec, std::size_t n) {
                const auto alive = weak.lock();  // the service may be gone
                if (!alive) {
                    return;
                }
                reading = false;
                if (ec == net::error::operation_aborted) {
                    read();  // cancelled as the last waiter left; another may have come since
                    return;
                }
                if (ec) {
                    spdlog::warn("file watch: inotify read failed ({}); waiting sockets poll",
                                 ec.message());
                    boost::system::error_code ignored;
                    desc.close(ignored);
                    wake_if([](const waiter&) { return true; });
                    return;
                }
                on_events(n);
                read();
            });
    }

    void on_events(std::size_t n)
    {
        for_each_inotify_event(
            events.data(), n, [&](int wd, std::uint32_t mask, std::string_view name) {
                if ((mask & IN_Q_OVERFLOW) != 0) {
                    wake_if([](const waiter&) { return true; });  // events lost: all look
                } else if ((mask & k_dir_gone) != 0) {
                    wake_if([wd](const waiter& w) { return w.wd == wd; });
                } else if (!name.empty()) {
                    wake_if([wd, name](const waiter& w) { return w.wd == wd && w.name == name; });
                } else if ((mask & IN_OPEN) != 0) {
                    wake_if([wd](const waiter& w) { return w.wd == wd && w.name.empty(); });
                }
            });
    }
};

file_watch::file_watch(net::io_context& ioc)
    : net::execution_context::service(ioc), state_(std::make_shared<state>(ioc))
{
    const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        spdlog::info("file watch: no inotify ({}); sockets waiting for a kernel poll for its files",
                     std::strerror(errno));
        return;
    }
    state_->desc.assign(fd);
}

file_watch::~file_watch() = default;

void file_watch::shutdown()
{
    boost::system::error_code ignored;
    state_->desc.close(ignored);
    state_->waiters.clear();
    state_->watches.clear();
}

file_watch::ticket file_watch::wait_for(const std::string& path, std::function<void()> f)
{
    const auto wait = state_->add(path, false, std::move(f));
    if (wait == 0) {
        return {};
    }
    return ticket(state_, wait);
}

file_watch::ticket file_watch::wait_for_open(const std::string& path, std::function<void()> f)
{
    const auto wait = state_->add(path, true, std::move(f));
    if (wait == 0) {
        return {};
    }
    return ticket(state_, wait);
}

std::size_t file_watch::watched() const noexcept
{
    return state_->watches.size();
}

std::size_t file_watch::waiting() const noexcept
{
    return state_->waiters.size();
}

file_watch::ticket::ticket(ticket&& o) noexcept
    : state_(std::move(o.state_)), id_(std::exchange(o.id_, 0))
{
}

file_watch::ticket& file_watch::ticket::operator=(ticket&& o) noexcept
{
    if (this != &o) {
        reset();
        state_ = std::move(o.state_);
        id_ = std::exchange(o.id_, 0);
    }
    return *this;
}

void file_watch::ticket::reset() noexcept
{
    if (id_ != 0) {
        if (const auto st = state_.lock()) {
            st->cancel(id_);
        }
        id_ = 0;
    }
    state_.reset();
}

} // namespace kernelgate::zmq_protocol
