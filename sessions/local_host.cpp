// SPDX-License-Identifier: BSD-3-Clause
#include "sessions/local_host.hpp"

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "zmq_protocol/errc.hpp"

extern char** environ;  // NOLINT

namespace kernelgate::sessions {

namespace fs = std::filesystem;

namespace {

/// Room in sockaddr_un::sun_path for a path and its terminating NUL.
constexpr std::size_t k_max_ipc_path = sizeof(sockaddr_un::sun_path) - 1;

} // namespace

std::vector<std::uint16_t> port_picker::pick(const std::string& ip, int n)
{
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(recent_, [&](const auto& kv) { return now - kv.second > hold_; });
    std::vector<int> fds;  // held open until done: one call never sees a port twice
    std::vector<std::uint16_t> ports;
    // A port handed out recently stays bound here while we ask again; bounded so that a
    // host whose ephemeral range is nearly used up gets an error rather than a loop.
    for (int attempts = 0; static_cast<int>(ports.size()) < n && attempts < 64 * n; ++attempts) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            break;
        }
        fds.push_back(fd);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = 0;
        if (::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1) {
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        }
        socklen_t len = sizeof(addr);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            break;
        }
        const std::uint16_t port = ntohs(addr.sin_port);
        if (!recent_.contains(port)) {
            ports.push_back(port);
        }
    }
    for (int fd : fds) {
        ::close(fd);
    }
    for (const auto p : ports) {
        recent_[p] = now;
    }
    return ports;
}

std::optional<kernel_transport> parse_kernel_transport(std::string_view text)
{
    if (text == "auto") {
        return kernel_transport::automatic;
    }
    if (text == "tcp") {
        return kernel_transport::tcp;
    }
    if (text == "ipc") {
        return kernel_transport::ipc;
    }
    return std::nullopt;
}

bool kernel_speaks_ipc(const kernelspec& spec)
{
    if (const auto kg = spec.metadata.find("kernelgate");
        kg != spec.metadata.end() && kg->is_object()) {
        if (const auto t = kg->find("transport"); t != kg->end() && t->is_string()) {
            return t->get<std::string>() == "ipc";
        }
    }
    for (std::size_t i = 0; i + 1 < spec.argv.size(); ++i) {
        if (spec.argv[i] == "-m" &&
            (spec.argv[i + 1] == "ipykernel_launcher" || spec.argv[i + 1] == "ipykernel")) {
            return true;
        }
    }
    return false;
}

local_host::local_host(boost::asio::io_context& ioc, fs::path runtime_dir, std::string ip,
                       kernel_transport transport)
    : ioc_(ioc),
      runtime_dir_(std::move(runtime_dir)),
      ip_(std::move(ip)),
      transport_(transport),
      sigchld_(ioc, SIGCHLD)
{
    fs::create_directories(runtime_dir_);
    fs::permissions(runtime_dir_, fs::perms::owner_all, fs::perm_options::replace);
    remove_stale_files();
    wait_sigchld();
}

void local_host::remove_stale_files()
{
    // A gateway that did not stop cleanly leaves its kernels' connection files (with their
    // keys) and ipc sockets behind. Those kernels are not adopted again (the registry drops
    // their records), so their files go. Nothing else in the directory is touched.
    std::error_code ec;
    std::size_t removed = 0;
    for (fs::directory_iterator it(runtime_dir_, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.rfind("kernel-", 0) != 0) {
            continue;
        }
        std::error_code type_ec;
        const auto type = it->symlink_status(type_ec).type();
        const bool conn_file =
            type == fs::file_type::regular && it->path().extension() == ".json";
        const bool ipc_socket = type == fs::file_type::socket &&
                                name.find("-ipc-") != std::string::npos;
        std::error_code rm_ec;
        if ((conn_file || ipc_socket) && fs::remove(it->path(), rm_ec)) {
            ++removed;
        }
    }
    if (removed > 0) {
        spdlog::info("removed {} connection files and sockets left by a previous run", removed);
    }
}

local_host::~local_host()
{
    for (auto& [id, c] : children_) {
        if (c.running) {
            ::kill(-c.pid, SIGKILL);
            ::waitpid(c.pid, nullptr, 0);
        }
        remove_files(c);
    }
}

void local_host::remove_files(const child& c)
{
    std::error_code ec;
    fs::remove(c.connection_file, ec);
    for (const auto& path : c.ipc_files) {
        fs::remove(path, ec);
    }
}

result<zmq_protocol::connection_info> local_host::launch(const launch_request& req)
{
    if (req.spec == nullptr || req.spec->argv.empty()) {
        return zmq_protocol::errc::bad_connection_info;
    }
    zmq_protocol::connection_info info;
    std::string ipc_base;
    if (transport_ == kernel_transport::ipc ||
        (transport_ == kernel_transport::automatic && kernel_speaks_ipc(*req.spec))) {
        // The sockets live in the runtime dir (mode 0700). Ports are just suffixes. Each
        // launch gets its own names, so that a restart's cleanup of the previous process
        // cannot remove the sockets of the next.
        ipc_base = (runtime_dir_ / ("kernel-" + req.kernel_id + "-" +
                                    std::to_string(++ipc_launches_) + "-ipc"))
                       .string();
        if (ipc_base.size() + 2 > k_max_ipc_path) {
            spdlog::warn("kernel {}: runtime dir path too long for Unix sockets; using tcp",
                         req.kernel_id);
            ipc_base.clear();
        }
    }
    if (!ipc_base.empty()) {
        info.use_ipc(ipc_base);
    } else {
        const auto ports = ports_.pick(ip_, 5);
        if (ports.size() != 5) {
            return std::error_code(errno != 0 ? errno : EADDRINUSE, std::generic_category());
        }
        info.use_tcp(ip_, std::span<const std::uint16_t, 5>(ports.data(), 5));
    }
    info.key = zmq_protocol::new_key();
    info.kernel_name = req.spec->name;
    const auto conn_file = runtime_dir_ / ("kernel-" + req.kernel_id + ".json");
    try {
        zmq_protocol::write_connection_file(conn_file, info);
    } catch (const std::system_error& e) {
        return e.code();
    }
    info.file = conn_file.string();

    // Environment: ours, then the spec's env (with ${VAR} expansion), then the request's.
    std::map<std::string, std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        std::string_view kv(*e);
        const auto eq = kv.find('=');
        if (eq != std::string_view::npos) {
            env[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
        }
    }
    env.erase("KERNELGATE_AUTH_TOKEN");  // never hand the gateway's secret to a kernel
    for (const auto& [k, v] : req.spec->env) {
        env[k] = expand_vars(v, env);
    }
    for (const auto& [k, v] : req.env) {
        env[k] = v;
    }
    env["KERNEL_ID"] = req.kernel_id;
    env["JPY_PARENT_PID"] = std::to_string(::getpid());

    std::map<std::string, std::string> subst = {
        {"connection_file", conn_file.string()},
        {"kernel_id", req.kernel_id},
        {"resource_dir", req.spec->dir.string()},
        {"prefix", ""},
    };
    std::vector<std::string> argv;
    for (const auto& a : req.spec->argv) {
        std::string out;
        for (std::size_t i = 0; i < a.size(); ++i) {
            if (a[i] == '{') {
                const auto end = a.find('}', i);
                if (end != std::string::npos) {
                    if (auto it = subst.find(a.substr(i + 1, end - i - 1)); it != subst.end()) {
                        out += it->second;
                        i = end;
                        continue;
                    }
                }
            }
            out += a[i];
        }
        argv.push_back(std::move(out));
    }
    std::vector<std::string> env_strings;
    env_strings.reserve(env.size());
    for (const auto& [k, v] : env) {
        env_strings.push_back(k + "=" + v);
    }
    std::vector<char*> c_argv;
    for (auto& a : argv) {
        c_argv.push_back(a.data());
    }
    c_argv.push_back(nullptr);
    std::vector<char*> c_env;
    for (auto& e : env_strings) {
        c_env.push_back(e.data());
    }
    c_env.push_back(nullptr);
    const std::string cwd = req.working_dir;

    // posix_spawn, not fork: glibc starts the child with CLONE_VM|CLONE_VFORK, so the cost
    // does not grow with the gateway's memory (fork copies the page tables: a gateway that
    // has served thousands of connections took several ms per kernel start, with the event
    // loop stopped). An exec failure comes back as the return value.
    // The kernel must inherit none of the gateway's descriptors (client connections, the
    // listening socket, databases): all above stderr close. Holding a client's socket open
    // would also keep its connection alive after the gateway closed it.
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawnattr_init(&attr);
    ::posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    std::error_code dir_ec;
    if (!cwd.empty() && fs::is_directory(cwd, dir_ec)) {  // else: the inherited directory
        ::posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
    }
    ::posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    sigset_t none;
    sigemptyset(&none);
    ::posix_spawnattr_setsigmask(&attr, &none);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGPIPE, SIGHUP}) {
        sigaddset(&defaults, sig);
    }
    ::posix_spawnattr_setsigdefault(&attr, &defaults);
    ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                          POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    const int spawn_err =
        ::posix_spawnp(&pid, c_argv[0], &actions, &attr, c_argv.data(), c_env.data());
    ::posix_spawn_file_actions_destroy(&actions);
    ::posix_spawnattr_destroy(&attr);
    if (spawn_err != 0) {
        remove_files(child{-1, false, conn_file, info.ipc_paths()});
        return std::error_code(spawn_err, std::generic_category());
    }
    children_[req.kernel_id] = child{pid, true, conn_file, info.ipc_paths()};
    spdlog::info("kernel {} started: pid {} spec {} transport {}", req.kernel_id, pid,
                 req.spec->name, info.transport);
    return info;
}

bool local_host::signal(const std::string& kernel_id, int signum)
{
    auto it = children_.find(kernel_id);
    if (it == children_.end() || !it->second.running) {
        return false;
    }
    // The kernel leads its own process group: signal the group, as jupyter_client does.
    if (::kill(-it->second.pid, signum) != 0) {
        return ::kill(it->second.pid, signum) == 0;
    }
    return true;
}

bool local_host::alive(const std::string& kernel_id) const
{
    auto it = children_.find(kernel_id);
    return it != children_.end() && it->second.running;
}

int local_host::pid(const std::string& kernel_id) const
{
    auto it = children_.find(kernel_id);
    return it != children_.end() && it->second.running ? it->second.pid : -1;
}

void local_host::release(const std::string& kernel_id)
{
    auto it = children_.find(kernel_id);
    if (it == children_.end()) {
        return;
    }
    if (it->second.running) {
        ::kill(-it->second.pid, SIGKILL);
    }
    remove_files(it->second);
    if (!it->second.running) {
        children_.erase(it);
    }
    // A still-running child stays listed until SIGCHLD reaps it.
}

void local_host::wait_sigchld()
{
    sigchld_.async_wait([this](const boost::system::error_code& ec, int) {
        if (ec) {
            return;
        }
        reap();
        wait_sigchld();
    });
}

void local_host::reap()
{
    std::vector<std::pair<std::string, int>> exited;
    for (auto it = children_.begin(); it != children_.end();) {
        auto& c = it->second;
        int status = 0;
        if (c.running && ::waitpid(c.pid, &status, WNOHANG) == c.pid) {
            c.running = false;
            ::kill(-c.pid, SIGKILL);  // whatever the kernel left behind in its group
            spdlog::info("kernel {} exited: pid {} status {}", it->first, c.pid,
                         WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
            remove_files(c);
            exited.emplace_back(it->first, status);
            it = children_.erase(it);
            continue;
        }
        ++it;
    }
    // Handlers run after the table is consistent: they may launch a replacement.
    for (const auto& [id, status] : exited) {
        if (on_exit_) {
            on_exit_(id, status);
        }
    }
}

} // namespace kernelgate::sessions
