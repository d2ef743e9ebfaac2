// SPDX-License-Identifier: BSD-3-Clause
#include "sessions/registry.hpp"

#include <algorithm>
#include <csignal>
#include <filesystem>

#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "zmq_protocol/wire_codec.hpp"

namespace kernelgate::sessions {

namespace zp = zmq_protocol;

namespace {

bool valid_env_value(const std::string& v)
{
    return v.size() <= 4096 && v.find_first_of(std::string("\0\r\n", 3)) == std::string::npos;
}

bool valid_env_name(const std::string& n)
{
    return !n.empty() && n.size() <= 256 && std::all_of(n.begin(), n.end(), [](unsigned char c) {
        return std::isalnum(c) != 0 || c == '_';
    });
}

} // namespace

registry::registry(boost::asio::io_context& ioc, kernel_host& host,
                   store& db, registry_config cfg, discovery_options discovery)
    : ioc_(ioc),
      host_(host),
      db_(db),
      cfg_(std::move(cfg)),
      discovery_(std::move(discovery)),
      cull_timer_(ioc)
{
    host_.set_exit_handler([this](const std::string& id, int status) { on_exit(id, status); });
    refresh_specs();
    // Records left by a gateway that did not stop cleanly: their kernels were ours and are
    // gone with our process group, so drop the records (and their sessions).
    for (const auto& row : db_.kernels()) {
        spdlog::warn("kernel {} from a previous run is gone; record removed", row.id);
        db_.delete_kernel(row.id);
    }
    for (const auto& row : db_.sessions()) {
        db_.delete_session(row.id);
    }
    schedule_cull();
    for (const auto& [name, n] : cfg_.warm_pool) {
        fill_pool(name);
    }
}

registry::~registry()
{
    host_.set_exit_handler(nullptr);
}

void registry::refresh_specs()
{
    specs_ = discover_kernelspecs(discovery_);
}

const kernelspec* registry::find_spec(const std::string& name) const
{
    std::string lower = name;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    auto it = specs_.find(lower);
    return it == specs_.end() ? nullptr : &it->second;
}

std::string registry::default_spec() const
{
    if (!cfg_.default_kernel.empty() && specs_.contains(cfg_.default_kernel)) {
        return cfg_.default_kernel;
    }
    if (specs_.contains("python3")) {
        return "python3";
    }
    return specs_.empty() ? std::string("python3") : specs_.begin()->first;
}

std::optional<failure> registry::filter_env(const nlohmann::json& env,
                                            std::map<std::string, std::string>& out) const
{
    if (env.is_null()) {
        return std::nullopt;
    }
    if (!env.is_object()) {
        return failure{400, "env must be an object"};
    }
    for (const auto& [k, v] : env.items()) {
        const bool allowed = k.rfind("KERNEL_", 0) == 0 || cfg_.env_allowlist.contains(k);
        if (!allowed) {
            continue;  // dropped, as Kernel Gateway does with names outside its allowlist
        }
        if (!valid_env_name(k) || !v.is_string() || !valid_env_value(v.get<std::string>())) {
            return failure{400, "invalid value for environment variable " +
                                    (valid_env_name(k) ? k : std::string("(bad name)"))};
        }
        out[k] = v.get<std::string>();
    }
    return std::nullopt;
}

void registry::start(const std::string& spec_name, const nlohmann::json& env,
                     const std::string& owner, start_callback cb)
{
    const std::string name = spec_name.empty() ? default_spec() : spec_name;
    const kernelspec* spec = valid_kernel_name(name) ? find_spec(name) : nullptr;
    if (spec == nullptr) {
        cb(nullptr, failure{404, "No such kernel named " + (valid_kernel_name(name) ? name
                                                                                   : "(invalid)")});
        return;
    }
    std::map<std::string, std::string> filtered;
    if (auto f = filter_env(env, filtered)) {
        cb(nullptr, f);
        return;
    }
    if (cfg_.max_kernels != 0 && kernels_.size() >= cfg_.max_kernels) {
        cb(nullptr, failure{403, "Resource Limit: maximum number of kernels (" +
                                     std::to_string(cfg_.max_kernels) + ") reached"});
        return;
    }
    if (cfg_.max_kernels_per_user != 0) {
        // Kernels still starting are in kernels_ already: concurrent starts cannot overshoot.
        const auto mine = std::count_if(kernels_.begin(), kernels_.end(),
                                        [&](const auto& kv) { return kv.second->owner() == owner; });
        if (static_cast<std::size_t>(mine) >= cfg_.max_kernels_per_user) {
            cb(nullptr, failure{403, "User kernel limit: " + owner + " already has " +
                                         std::to_string(mine) + " kernels (maximum " +
                                         std::to_string(cfg_.max_kernels_per_user) + ")"});
            return;
        }
    }
    if (auto k = claim_from_pool(*spec, filtered, owner)) {
        cb(k, std::nullopt);
        return;
    }
    auto k = std::make_shared<kernel>(ioc_, zp::new_uuid(), spec->name, owner, cfg_.replay);
    k->set_poll_hint(cfg_.poll_hint);
    kernels_.emplace(k->id(), k);
    launch_env_[k->id()] = std::move(filtered);
    ++starting_;
    persist(k);
    launch_into(k, [this, k, cb = std::move(cb)](std::optional<failure> f) {
        --starting_;
        if (f) {
            kernels_.erase(k->id());
            launch_env_.erase(k->id());
            db_.delete_kernel(k->id());
            host_.release(k->id());
            k->disconnect();
            cb(nullptr, f);
            return;
        }
        ++started_total_;
        persist(k);
        cb(k, std::nullopt);
    });
}

void registry::launch_into(const kernel_ptr& k, std::function<void(std::optional<failure>)> cb)
{
    const kernelspec* spec = find_spec(k->spec_name());
    if (spec == nullptr) {
        cb(failure{500, "kernelspec " + k->spec_name() + " is no longer available"});
        return;
    }
    launch_request req;
    req.kernel_id = k->id();
    req.spec = spec;
    req.env = launch_env_[k->id()];
    req.working_dir = cfg_.default_working_dir;
    if (auto it = req.env.find("KERNEL_WORKING_DIR"); it != req.env.end()) {
        std::error_code ec;
        if (std::filesystem::is_directory(it->second, ec)) {
            req.working_dir = it->second;
        }
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto info = host_.launch(req);
    if (!info) {
        ++start_failures_total_;
        spdlog::error("kernel {}: launch failed: {}", k->id(), info.error().message());
        cb(failure{500, "Kernel failed to start: " + info.error().message()});
        return;
    }
    k->set_execution_state(k->restarting ? "restarting" : "starting");
    k->started_at = kernel::clock::now();
    k->connect(info.value(), cfg_.launch_timeout,
               [this, k, t0, cb = std::move(cb)](bool ready) {
                   if (!ready) {
                       ++start_failures_total_;
                       host_.signal(k->id(), SIGKILL);
                       const auto secs = std::chrono::duration_cast<std::chrono::seconds>(
                                             cfg_.launch_timeout)
                                             .count();
                       cb(failure{500, host_.alive(k->id())
                                           ? "Kernel did not become ready within " +
                                                 std::to_string(secs) + "s"
                                           : "Kernel process exited while starting"});
                       return;
                   }
                   const auto took = std::chrono::steady_clock::now() - t0;
                   start_seconds_[k->spec_name()].observe(took);
                   spdlog::info(
                       "kernel {} ready in {} ms", k->id(),
                       std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
                   cb(std::nullopt);
               });
}

kernel_ptr registry::find(const std::string& id) const
{
    auto it = kernels_.find(id);
    return it == kernels_.end() ? nullptr : it->second;
}

std::vector<kernel_ptr> registry::list() const
{
    std::vector<kernel_ptr> out;
    out.reserve(kernels_.size());
    for (const auto& [id, k] : kernels_) {
        out.push_back(k);
    }
    return out;
}

std::optional<failure> registry::interrupt(const kernel_ptr& k)
{
    const kernelspec* spec = find_spec(k->spec_name());
    if (spec != nullptr && spec->interrupt_mode == "message") {
        if (k->request(zp::channel::control, "interrupt_request", "{}").empty()) {
            return failure{500, "kernel is not connected"};
        }
        return std::nullopt;
    }
    if (!host_.signal(k->id(), SIGINT)) {
        return failure{500, "kernel is not running"};
    }
    return std::nullopt;
}

void registry::stop_process(const kernel_ptr& k, bool restart, std::function<void()> on_exited)
{
    if (!host_.alive(k->id())) {
        k->disconnect();
        boost::asio::post(ioc_, std::move(on_exited));
        return;
    }
    k->exit_waiters.push_back(std::move(on_exited));
    k->request(zp::channel::control, "shutdown_request",
               restart ? R"({"restart":true})" : R"({"restart":false})");
    // The kernel closes its sockets before it exits; connecting again would only be refused
    // (about 35 attempts per ipykernel shutdown) until the exit is seen.
    k->expect_exit();
    k->lifecycle_timer = std::make_unique<boost::asio::steady_timer>(ioc_);
    k->lifecycle_timer->expires_after(cfg_.shutdown_wait / 2);
    std::weak_ptr<kernel> weak = k;
    k->lifecycle_timer->async_wait([this, weak](const boost::system::error_code& ec) {
        auto kk = weak.lock();
        if (ec || !kk || !host_.alive(kk->id())) {
            return;
        }
        spdlog::warn("kernel {}: no exit after shutdown_request, sending SIGTERM", kk->id());
        host_.signal(kk->id(), SIGTERM);
        kk->lifecycle_timer->expires_after(cfg_.shutdown_wait / 2);
        kk->lifecycle_timer->async_wait([this, weak](const boost::system::error_code& ec2) {
            auto k2 = weak.lock();
            if (ec2 || !k2 || !host_.alive(k2->id())) {
                return;
            }
            spdlog::warn("kernel {}: still running, sending SIGKILL", k2->id());
            host_.signal(k2->id(), SIGKILL);
        });
    });
}

void registry::restart(const kernel_ptr& k, done_callback cb)
{
    if (k->restarting || k->shutting_down) {
        cb(failure{409, "kernel is already restarting or shutting down"});
        return;
    }
    k->restarting = true;
    k->broadcast_status("restarting");
    stop_process(k, true, [this, k, cb = std::move(cb)]() mutable {
        k->disconnect();
        launch_into(k, [this, k, cb = std::move(cb)](std::optional<failure> f) {
            k->restarting = false;
            if (f) {
                k->broadcast_status("dead");
                persist(k);
                cb(failure{500, "Exception restarting kernel: " + f->message});
                return;
            }
            ++restarted_total_;
            k->restarts_in_a_row = 0;
            persist(k);
            cb(std::nullopt);
        });
    });
}

void registry::shutdown(const kernel_ptr& k, done_callback cb)
{
    if (k->shutting_down) {
        k->exit_waiters.push_back([cb = std::move(cb)] { cb(std::nullopt); });
        return;
    }
    k->shutting_down = true;
    k->abort_ready();
    stop_process(k, false, [this, k, cb = std::move(cb)] {
        if (k->lifecycle_timer) {
            k->lifecycle_timer->cancel();
        }
        k->disconnect();
        k->close_clients(1000, "kernel shut down");
        kernels_.erase(k->id());
        launch_env_.erase(k->id());
        host_.release(k->id());
        db_.delete_kernel(k->id());
        remove_sessions_of_kernel(k->id());
        spdlog::info("kernel {} shut down", k->id());
        cb(std::nullopt);
    });
}

void registry::shutdown_all(std::function<void()> done)
{
    stopping_ = true;  // the pool is not refilled from here on
    auto all = list();
    std::vector<kernel_ptr> pooled;
    for (const auto& [id, pk] : pool_) {
        pooled.push_back(pk.k);
    }
    if (all.empty() && pooled.empty()) {
        boost::asio::post(ioc_, std::move(done));
        return;
    }
    auto remaining = std::make_shared<std::size_t>(all.size() + pooled.size());
    auto one_done = [remaining, shared_done = std::make_shared<std::function<void()>>(
                                    std::move(done))] {
        if (--*remaining == 0) {
            (*shared_done)();
        }
    };
    for (const auto& k : all) {
        shutdown(k, [one_done](std::optional<failure>) { one_done(); });
    }
    for (const auto& k : pooled) {
        stop_process(k, false, [this, k, one_done] {
            drop_pool_kernel(k);
            one_done();
        });
    }
}

void registry::abandon_all()
{
    stopping_ = true;
    for (const auto& [id, k] : kernels_) {
        k->abandon();
    }
    for (const auto& [id, pk] : pool_) {
        pk.k->abandon();
    }
}

void registry::on_exit(const std::string& id, int status)
{
    const auto pooled = pool_.find(id);
    const kernel_ptr k = pooled != pool_.end() ? pooled->second.k : find(id);
    if (!k) {
        return;
    }
    k->disconnect();
    if (k->lifecycle_timer) {
        k->lifecycle_timer->cancel();
    }
    if (!k->exit_waiters.empty()) {
        auto waiters = std::move(k->exit_waiters);
        k->exit_waiters.clear();
        for (auto& w : waiters) {
            w();
        }
        return;
    }
    if (k->shutting_down || k->restarting) {
        return;
    }
    if (k->execution_state() == "starting") {
        k->abort_ready();  // the initial start fails now instead of at the timeout
        return;
    }
    if (pooled != pool_.end()) {
        // No one's kernel yet: not restarted, but replaced (and counted as a failure, so
        // that kernels that keep dying stop the pool).
        spdlog::warn("warm pool: a waiting {} kernel exited (status {}); starting another",
                     k->spec_name(), status);
        drop_pool_kernel(k);
        pool_kernel_failed(k->spec_name());
        return;
    }
    ++died_total_;
    spdlog::warn("kernel {} died unexpectedly (status {})", id, status);
    if (kernel::clock::now() - k->started_at > cfg_.stable_start) {
        k->restarts_in_a_row = 0;
    }
    if (k->restarts_in_a_row >= cfg_.restart_limit) {
        spdlog::error("kernel {}: restart limit ({}) reached; kernel is dead", id,
                      cfg_.restart_limit);
        k->broadcast_status("dead");
        persist(k);
        return;
    }
    ++k->restarts_in_a_row;
    k->restarting = true;
    k->broadcast_status("restarting");
    host_.release(id);
    launch_into(k, [this, k](std::optional<failure> f) {
        k->restarting = false;
        if (f) {
            spdlog::error("kernel {}: automatic restart failed: {}", k->id(), f->message);
            k->broadcast_status("dead");
        } else {
            ++restarted_total_;
            spdlog::info("kernel {} restarted automatically", k->id());
        }
        persist(k);
    });
}

void registry::persist(const kernel_ptr& k)
{
    db_.put_kernel({k->id(), k->spec_name(), k->owner(), host_.kind(), k->execution_state(),
                    iso8601(k->started_at), iso8601(k->last_activity())});
}

void registry::schedule_cull()
{
    if (cfg_.cull_idle_timeout.count() <= 0) {
        return;
    }
    cull_timer_.expires_after(cfg_.cull_interval);
    cull_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) {
            return;
        }
        cull();
        schedule_cull();
    });
}

void registry::cull()
{
    const auto now = kernel::clock::now();
    for (const auto& k : list()) {
        const auto& st = k->execution_state();
        const bool state_ok = st == "idle" || (cfg_.cull_busy && st == "busy");
        const bool conn_ok = k->connections() == 0 || cfg_.cull_connected;
        if (!state_ok || !conn_ok || k->restarting || k->shutting_down ||
            now - k->last_activity() < cfg_.cull_idle_timeout) {
            continue;
        }
        spdlog::info("culling kernel {} ({}), idle since {}", k->id(), st,
                     iso8601(k->last_activity()));
        ++culled_total_;
        shutdown(k, [](std::optional<failure>) {});
    }
}

// Warm pool ----------------------------------------------------------------------------

namespace {

constexpr auto k_pool_refill_delay = std::chrono::milliseconds(100);

/// Python that gives a running kernel what a launch with this env would have: the variables
/// and, for KERNEL_WORKING_DIR naming a directory, its working directory. JSON strings and
/// objects of strings are Python literals.
std::string python_setup(const std::map<std::string, std::string>& env, const std::string& dir)
{
    std::string code = "import os as _kg_os\n_kg_os.environ.update(" +
                       nlohmann::json(env).dump() + ")\n";
    if (!dir.empty()) {
        code += "_kg_os.chdir(" + nlohmann::json(dir).dump() + ")\n";
    }
    return code + "del _kg_os\n";
}

bool is_python(const kernelspec& spec)
{
    std::string lang = spec.language;
    std::transform(lang.begin(), lang.end(), lang.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return lang == "python";
}

} // namespace

std::map<std::string, pool_status> registry::warm_pools() const
{
    std::map<std::string, pool_status> out;
    for (const auto& [name, n] : cfg_.warm_pool) {
        auto& st = out[name];
        st.target = n;
        auto failed = pool_failures_.find(name);
        st.stopped = failed != pool_failures_.end() && failed->second >= pool_failure_limit();
    }
    for (const auto& [id, pk] : pool_) {
        auto& st = out[pk.k->spec_name()];
        ++(pk.ready ? st.ready : st.starting);
    }
    return out;
}

std::vector<kernel_ptr> registry::pool_kernels() const
{
    std::vector<kernel_ptr> out;
    for (const auto& [id, pk] : pool_) {
        out.push_back(pk.k);
    }
    return out;
}

void registry::fill_pool(const std::string& name)
{
    const auto target = cfg_.warm_pool.find(name);
    if (stopping_ || target == cfg_.warm_pool.end()) {
        return;
    }
    if (find_spec(name) == nullptr) {
        spdlog::warn("warm pool: no kernelspec named {}", name);
        return;
    }
    auto have = [&] {
        return static_cast<std::size_t>(std::count_if(pool_.begin(), pool_.end(), [&](const auto& kv) {
            return kv.second.k->spec_name() == name;
        }));
    };
    // A launch that fails at once ends this pass: the back-off timer starts the next one.
    const int failures = pool_failures_[name];
    while (have() < target->second && pool_failures_[name] == failures &&
           failures < pool_failure_limit()) {
        launch_pool_kernel(name);
    }
}

void registry::launch_pool_kernel(const std::string& name)
{
    auto k = std::make_shared<kernel>(ioc_, zp::new_uuid(), name, std::string(), cfg_.replay);
    k->set_poll_hint(cfg_.poll_hint);
    pool_.emplace(k->id(), pool_kernel{k, false, ++pool_seq_});
    launch_into(k, [this, k](std::optional<failure> f) {
        auto it = pool_.find(k->id());
        if (it == pool_.end()) {
            return;  // retired while it started (shutdown_all)
        }
        if (f) {
            spdlog::warn("warm pool: a {} kernel failed to start: {}", k->spec_name(), f->message);
            drop_pool_kernel(k);
            pool_kernel_failed(k->spec_name());
            return;
        }
        pool_failures_[k->spec_name()] = 0;
        it->second.ready = true;
    });
}

void registry::pool_kernel_failed(const std::string& name)
{
    const int failures = ++pool_failures_[name];
    if (failures >= pool_failure_limit()) {
        spdlog::error("warm pool for {} stopped: {} launches in a row failed; requests start "
                      "kernels of their own", name, failures);
        return;
    }
    // Back off (1 s, 2 s, ...) so that a broken kernelspec does not spin.
    refill_later(name, std::chrono::seconds(failures));
}

void registry::refill_later(const std::string& name, std::chrono::milliseconds delay)
{
    auto& timer = pool_timers_[name];
    if (!timer) {
        timer = std::make_unique<boost::asio::steady_timer>(ioc_);
    }
    if (timer->expiry() > boost::asio::steady_timer::clock_type::now()) {
        return;  // a refill (or a back-off) is already due
    }
    timer->expires_after(delay);
    timer->async_wait([this, name](const boost::system::error_code& ec) {
        if (!ec) {
            fill_pool(name);
        }
    });
}

kernel_ptr registry::claim_from_pool(const kernelspec& spec,
                                     const std::map<std::string, std::string>& env,
                                     const std::string& owner)
{
    if (!cfg_.warm_pool.contains(spec.name)) {
        return nullptr;
    }
    const pool_kernel* pick = nullptr;
    for (const auto& [id, pk] : pool_) {
        if (pk.ready && pk.k->spec_name() == spec.name && pk.k->connected() && host_.alive(id) &&
            (pick == nullptr || pk.seq < pick->seq)) {
            pick = &pk;
        }
    }
    // A pool kernel was launched without the request's env: only a Python kernel can be
    // given it afterwards.
    if (pick == nullptr || (!env.empty() && !is_python(spec))) {
        ++pool_misses_total_;
        return nullptr;
    }
    kernel_ptr k = pick->k;
    pool_.erase(k->id());
    k->set_owner(owner);
    k->touch();
    kernels_.emplace(k->id(), k);
    launch_env_[k->id()] = env;  // a restart launches with it
    ++started_total_;
    ++pool_claims_total_;
    persist(k);
    if (!env.empty()) {
        std::string dir;
        if (auto it = env.find("KERNEL_WORKING_DIR"); it != env.end()) {
            std::error_code ec;
            if (std::filesystem::is_directory(it->second, ec)) {
                dir = it->second;
            }
        }
        // On shell ahead of the client's first request, which the kernel handles after it.
        k->request_quietly(zp::channel::shell, "execute_request",
                           nlohmann::json{{"code", python_setup(env, dir)},
                                          {"silent", true},
                                          {"store_history", false},
                                          {"user_expressions", nlohmann::json::object()},
                                          {"allow_stdin", false},
                                          {"stop_on_error", false}}
                               .dump());
    }
    spdlog::info("kernel {} ({}) handed out from the warm pool", k->id(), spec.name);
    // A launch spawns a process and writes its connection file: milliseconds that neither
    // this answer nor the client's first exchange with its kernel should wait for.
    refill_later(spec.name, k_pool_refill_delay);
    return k;
}

void registry::drop_pool_kernel(const kernel_ptr& k)
{
    pool_.erase(k->id());
    launch_env_.erase(k->id());
    host_.release(k->id());
    k->disconnect();
}

std::vector<session_record> registry::sessions() const
{
    std::vector<session_record> out;
    for (const auto& [id, s] : sessions_) {
        out.push_back(s);
    }
    return out;
}

std::optional<session_record> registry::find_session(const std::string& id) const
{
    auto it = sessions_.find(id);
    return it == sessions_.end() ? std::nullopt : std::optional<session_record>(it->second);
}

void registry::put_session(const session_record& s)
{
    sessions_[s.id] = s;
    db_.put_session({s.id, s.path, s.name, s.type, s.kernel_id});
}

void registry::remove_session(const std::string& id)
{
    sessions_.erase(id);
    db_.delete_session(id);
}

void registry::remove_sessions_of_kernel(const std::string& kernel_id)
{
    for (auto it = sessions_.begin(); it != sessions_.end();) {
        if (it->second.kernel_id == kernel_id) {
            db_.delete_session(it->first);
            it = sessions_.erase(it);
        } else {
            ++it;
        }
    }
}

} // namespace kernelgate::sessions
