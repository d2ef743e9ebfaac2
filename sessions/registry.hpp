// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include "common/histogram.hpp"
#include "common/poll_hint.hpp"
#include "sessions/kernel.hpp"
#include "sessions/kernel_host.hpp"
#include "sessions/kernelspec.hpp"
#include "sessions/store.hpp"

namespace kernelgate::sessions {

struct registry_config
{
    std::chrono::milliseconds launch_timeout{60000};
    std::chrono::milliseconds shutdown_wait{5000};  ///< request, then TERM at half, KILL at end
    int restart_limit = 5;                          ///< automatic restarts in a row
    std::chrono::seconds stable_start{10};          ///< running this long resets the count
    std::size_t max_kernels = 0;                    ///< 0: unlimited
    std::size_t max_kernels_per_user = 0;           ///< 0: unlimited
    std::set<std::string> env_allowlist;            ///< non-KERNEL_ names clients may set
    std::string default_kernel;                     ///< empty: python3 or the first found
    // Culling (off when idle_timeout is 0).
    std::chrono::seconds cull_idle_timeout{0};
    std::chrono::seconds cull_interval{300};
    bool cull_connected = false;
    bool cull_busy = false;
    replay_limits replay;
    std::string default_working_dir;                ///< empty: the gateway's cwd
    common::poll_hint* poll_hint = nullptr;         ///< predictive polling (kernel::set_poll_hint)
    /// Warm pool: kernelspec name -> kernels kept started and ready for the next request
    /// (see registry::start).
    std::map<std::string, std::size_t> warm_pool;
};

/// One kernelspec's warm pool, for /metrics.
struct pool_status
{
    std::size_t target = 0;    ///< kernels it keeps
    std::size_t ready = 0;     ///< started and waiting for a request
    std::size_t starting = 0;
    bool stopped = false;      ///< launches kept failing: no more refills
};

/// Why an operation failed, in HTTP terms (the gateway maps it straight to a response).
struct failure
{
    int status = 500;
    std::string message;
};

struct session_record
{
    std::string id;
    std::string path;
    std::string name;
    std::string type;
    std::string kernel_id;
};

/// The kernel registry: one record per kernel, its lifecycle (start, restart, interrupt,
/// shutdown, automatic restart on death, culling), and Jupyter Server's sessions.
/// It reaches kernels only through kernel_host.
///
/// Thread safety: event-loop thread only.
class registry
{
public:
    using start_callback = std::function<void(kernel_ptr, std::optional<failure>)>;
    using done_callback = std::function<void(std::optional<failure>)>;

    registry(boost::asio::io_context& ioc, kernel_host& host, store& db,
             registry_config cfg, discovery_options discovery = {});
    ~registry();

    // Kernelspecs.
    void refresh_specs();
    const std::map<std::string, kernelspec>& specs() const noexcept { return specs_; }
    const kernelspec* find_spec(const std::string& name) const;
    std::string default_spec() const;

    // Kernels.
    /// Starts a kernel of spec_name (empty: the default) for owner, with the request's env
    /// (filter_env). With a warm pool for the spec, a ready pool kernel is handed out at once
    /// and a new one starts in its place. The request's env and KERNEL_WORKING_DIR are then
    /// applied inside the kernel (a silent execute_request of os.environ.update and os.chdir,
    /// sent before anything the client sends), so only Python kernels take them from the pool;
    /// a request another kernel would need them for starts a kernel of its own.
    void start(const std::string& spec_name, const nlohmann::json& env, const std::string& owner,
               start_callback cb);
    kernel_ptr find(const std::string& id) const;
    std::vector<kernel_ptr> list() const;
    std::optional<failure> interrupt(const kernel_ptr& k);
    void restart(const kernel_ptr& k, done_callback cb);
    void shutdown(const kernel_ptr& k, done_callback cb);
    void shutdown_all(std::function<void()> done);
    /// The gateway stops without waiting for shutdown_all() to finish: every kernel (pooled
    /// too) is abandoned (kernel::abandon), and no callback of a shutdown in progress runs.
    void abandon_all();
    std::size_t size() const noexcept { return kernels_.size(); }
    std::size_t starting() const noexcept { return starting_; }

    /// Validates a request's env: KERNEL_* names plus the allowlist; values are strings of at
    /// most 4096 bytes without NUL, CR or LF. Other names are dropped (not an error).
    std::optional<failure> filter_env(const nlohmann::json& env,
                                      std::map<std::string, std::string>& out) const;

    // Sessions (Jupyter Server's /api/sessions).
    std::vector<session_record> sessions() const;
    std::optional<session_record> find_session(const std::string& id) const;
    void put_session(const session_record& s);
    void remove_session(const std::string& id);
    void remove_sessions_of_kernel(const std::string& kernel_id);

    // Metrics.
    std::uint64_t kernels_started_total() const noexcept { return started_total_; }
    std::uint64_t kernels_restarted_total() const noexcept { return restarted_total_; }
    std::uint64_t kernels_died_total() const noexcept { return died_total_; }
    std::uint64_t kernels_culled_total() const noexcept { return culled_total_; }
    /// Launch to ready (the first kernel_info_reply and iopub message), per kernelspec: every
    /// launch that got there (starts, restarts, warm-pool kernels).
    const std::map<std::string, common::duration_histogram>& start_seconds() const noexcept
    {
        return start_seconds_;
    }
    /// Launches that never got there: the program could not be run, it exited, or it did
    /// not answer within the launch timeout.
    std::uint64_t start_failures_total() const noexcept { return start_failures_total_; }
    std::map<std::string, pool_status> warm_pools() const;
    /// The kernels in the warm pools, starting or ready (list() leaves them out: they belong
    /// to no one yet).
    std::vector<kernel_ptr> pool_kernels() const;
    /// Requests served from a warm pool / for a pooled kernelspec that started a kernel
    /// of their own (none ready, or the request's env needs a Python kernel).
    std::uint64_t pool_claims_total() const noexcept { return pool_claims_total_; }
    std::uint64_t pool_misses_total() const noexcept { return pool_misses_total_; }

private:
    void on_exit(const std::string& id, int status);
    void launch_into(const kernel_ptr& k, std::function<void(std::optional<failure>)> cb);
    void stop_process(const kernel_ptr& k, bool restart, std::function<void()> on_exited);
    void persist(const kernel_ptr& k);
    void schedule_cull();
    void cull();
    // Warm pool.
    void fill_pool(const std::string& spec_name);
    void launch_pool_kernel(const std::string& spec_name);
    void pool_kernel_failed(const std::string& spec_name);
    /// fill_pool after `delay`, unless a refill is already due.
    void refill_later(const std::string& spec_name, std::chrono::milliseconds delay);
    kernel_ptr claim_from_pool(const kernelspec& spec,
                               const std::map<std::string, std::string>& env,
                               const std::string& owner);
    /// Forgets a pool kernel (its process has exited or is left to exit).
    void drop_pool_kernel(const kernel_ptr& k);
    /// Launches in a row that may fail before a kernelspec's pool stops (--restart-limit).
    int pool_failure_limit() const noexcept { return std::max(1, cfg_.restart_limit); }

    boost::asio::io_context& ioc_;
    kernel_host& host_;
    store& db_;
    registry_config cfg_;
    discovery_options discovery_;
    std::map<std::string, kernelspec> specs_;
    std::map<std::string, kernel_ptr> kernels_;
    std::map<std::string, std::map<std::string, std::string>> launch_env_;  // for restarts
    std::map<std::string, session_record> sessions_;
    std::size_t starting_ = 0;
    boost::asio::steady_timer cull_timer_;
    std::uint64_t started_total_ = 0;
    std::uint64_t restarted_total_ = 0;
    std::uint64_t died_total_ = 0;
    std::uint64_t culled_total_ = 0;
    std::map<std::string, common::duration_histogram> start_seconds_;
    std::uint64_t start_failures_total_ = 0;

    struct pool_kernel
    {
        kernel_ptr k;
        bool ready = false;
        std::uint64_t seq = 0;  ///< launch order: the oldest ready one is handed out first
    };
    std::map<std::string, pool_kernel> pool_;               ///< by kernel id; no owner yet
    std::map<std::string, int> pool_failures_;              ///< launches in a row, per spec
    std::map<std::string, std::unique_ptr<boost::asio::steady_timer>> pool_timers_;  ///< back-off
    std::uint64_t pool_seq_ = 0;
    std::uint64_t pool_claims_total_ = 0;
    std::uint64_t pool_misses_total_ = 0;
    bool stopping_ = false;                                 ///< shutdown_all: no refills
};

} // namespace kernelgate::sessions
