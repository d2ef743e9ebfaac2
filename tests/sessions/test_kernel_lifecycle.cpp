// SPDX-License-Identifier: BSD-3-Clause
// Real ipykernel kernels (Debian's python3-ipykernel) driven through the registry, the local
// host and the ZeroMQ channels: no mocks. Kernel-side faults that a real kernel cannot produce
// are covered by the fake-kernel integration tests.
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <spdlog/spdlog.h>

#include "sessions/local_host.hpp"
#include "sessions/registry.hpp"
#include "zmq_protocol/connection_info.hpp"
#include "zmq_protocol/json_scan.hpp"
#include "zmq_protocol/wire_codec.hpp"

namespace fs = std::filesystem;
namespace zp = kernelgate::zmq_protocol;
using namespace kernelgate::sessions;
using namespace std::chrono_literals;

namespace {

struct sink final : client_sink
{
    std::string sid = zp::new_uuid();
    std::vector<kernel_event_ptr> events;
    std::optional<std::uint16_t> closed;
    void deliver(const kernel_event_ptr& ev) override { events.push_back(ev); }
    bool behind() const override { return false; }
    void close_from_kernel(std::uint16_t code, const std::string&) override { closed = code; }
    const std::string& session_id() const override { return sid; }

    bool saw(const std::string& msg_type, const std::string& needle = "") const
    {
        for (const auto& e : events) {
            if (e->msg_type == msg_type && e->msg.content.find(needle) != std::string::npos) {
                return true;
            }
        }
        return false;
    }
};

struct fixture
{
    boost::asio::io_context ioc;
    fs::path dir;
    std::unique_ptr<store> db;
    std::unique_ptr<local_host> host;
    std::unique_ptr<registry> reg;

    explicit fixture(registry_config cfg = {}, discovery_options disc = {},
                     kernel_transport transport = kernel_transport::automatic)
    {
        char tmpl[] = "/tmp/kg-life-XXXXXX";
        dir = ::mkdtemp(tmpl);
        db = std::make_unique<store>(dir / "kg.db");
        host = std::make_unique<local_host>(ioc, dir / "runtime", "127.0.0.1", transport);
        cfg.launch_timeout = 30s;
        cfg.shutdown_wait = 4s;
        reg = std::make_unique<registry>(ioc, *host, *db, cfg, disc);
    }
    ~fixture()
    {
        bool done = false;
        reg->shutdown_all([&] { done = true; });
        run_until([&] { return done; }, 15s);
        reg.reset();
        host.reset();
        fs::remove_all(dir);
    }

    template <class Pred>
    bool run_until(Pred pred, std::chrono::milliseconds limit)
    {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (!pred()) {
            if (std::chrono::steady_clock::now() > end) {
                return false;
            }
            ioc.run_one_for(20ms);
        }
        return true;
    }

    kernel_ptr start(const std::string& name = "python3")
    {
        kernel_ptr k;
        std::optional<failure> f;
        bool done = false;
        reg->start(name, nlohmann::json::object(), "tester", [&](kernel_ptr kk, auto ff) {
            k = std::move(kk);
            f = std::move(ff);
            done = true;
        });
        REQUIRE(run_until([&] { return done; }, 40s));
        if (f) {
            FAIL("start failed: " << f->message);
        }
        return k;
    }

    std::string execute(kernel& k, const sink& from, const std::string& code)
    {
        zp::message m;
        const auto id = zp::new_uuid();
        m.header = zp::make_header("execute_request", from.sid, "tester", id);
        m.parent_header = "{}";
        m.metadata = "{}";
        m.content = nlohmann::json{{"code", code}, {"silent", false}, {"allow_stdin", false}, {"stop_on_error", false}}
                        .dump();
        REQUIRE(k.send_from_client(from, zp::channel::shell, std::move(m)));
        return id;
    }

    bool wait_reply(sink& s, const std::string& parent, std::chrono::milliseconds limit = 20s)
    {
        return run_until(
            [&] {
                for (const auto& e : s.events) {
                    if (e->msg_type == "execute_reply" &&
                        zp::json_string_field(e->msg.parent_header, "msg_id") == parent) {
                        return true;
                    }
                }
                return false;
            },
            limit);
    }
};

/// A new temporary directory holding one kernelspec, `name`, with this kernel.json.
fs::path spec_dir(const std::string& name, const std::string& kernel_json)
{
    char tmpl[] = "/tmp/kg-spec-XXXXXX";
    const fs::path d = ::mkdtemp(tmpl);
    fs::create_directories(d / name);
    std::ofstream(d / name / "kernel.json") << kernel_json;
    return d;
}

constexpr const char* k_missing_program =
    R"({"argv":["/nonexistent/python","-f","{connection_file}"],"display_name":"x"})";

} // namespace

TEST_CASE("real kernel: start, execute, stream, error")
{
    fixture fx;
    CHECK(fx.reg->start_seconds().empty());
    const auto t0 = std::chrono::steady_clock::now();
    auto k = fx.start();
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(k->execution_state() == "idle");
    // The start is counted once, under its kernelspec, and took no longer than the wait for it.
    REQUIRE(fx.reg->start_seconds().count("python3") == 1);
    const auto& h = fx.reg->start_seconds().at("python3");
    CHECK(h.count() == 1);
    CHECK(h.sum() > 0);
    CHECK(h.sum() <= waited);
    CHECK(fx.reg->start_failures_total() == 0);
    CHECK(fx.host->alive(k->id()));
    CHECK(fx.db->kernels().size() == 1);
    auto s = std::make_shared<sink>();
    k->attach(s);
    auto id = fx.execute(*k, *s, "print('hello from kernel')");
    REQUIRE(fx.wait_reply(*s, id));
    CHECK(fx.run_until([&] { return s->saw("stream", "hello from kernel"); }, 5s));
    id = fx.execute(*k, *s, "1/0");
    REQUIRE(fx.wait_reply(*s, id));
    CHECK(fx.run_until([&] { return s->saw("error", "ZeroDivisionError"); }, 5s));
    CHECK(k->rejected_total() == 0);
}

namespace {

/// The kernel's connection file (in the runtime dir while it runs).
zp::connection_info connection_of(const fixture& fx, const std::string& kernel_id)
{
    auto info = zp::read_connection_file(fx.dir / "runtime" / ("kernel-" + kernel_id + ".json"));
    REQUIRE(info);
    return info.value();
}

std::vector<fs::path> sockets_in(const fs::path& dir)
{
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (e.is_socket()) {
            out.push_back(e.path());
        }
    }
    return out;
}

} // namespace

TEST_CASE("real kernel over ipc: Unix sockets in the 0700 runtime dir, gone after shutdown")
{
    fixture fx;  // auto: ipykernel is reached over ipc
    auto k = fx.start();
    const auto info = connection_of(fx, k->id());
    CHECK(info.transport == "ipc");
    CHECK(fs::path(info.ip).parent_path() == fx.dir / "runtime");
    const auto socks = sockets_in(fx.dir / "runtime");
    CHECK(socks.size() == 5);
    for (const auto port : {info.shell_port, info.iopub_port, info.stdin_port,
                            info.control_port, info.hb_port}) {
        CHECK(fs::is_socket(info.ip + "-" + std::to_string(port)));
    }
    CHECK((fs::status(fx.dir / "runtime").permissions() & fs::perms::all) ==
          fs::perms::owner_all);
    auto s = std::make_shared<sink>();
    k->attach(s);
    const auto id = fx.execute(*k, *s, "print('over a unix socket')");
    REQUIRE(fx.wait_reply(*s, id));
    CHECK(fx.run_until([&] { return s->saw("stream", "over a unix socket"); }, 5s));
    // The heartbeat runs over ipc too: a kernel whose heartbeat failed would be restarted.
    fx.run_until([] { return false; }, 200ms);
    CHECK(k->execution_state() == "idle");

    bool down = false;
    fx.reg->shutdown(k, [&](std::optional<failure>) { down = true; });
    REQUIRE(fx.run_until([&] { return down; }, 15s));
    CHECK(sockets_in(fx.dir / "runtime").empty());
}

TEST_CASE("files of kernels from an earlier run are removed at start, nothing else")
{
    char tmpl[] = "/tmp/kg-stale-XXXXXX";
    const fs::path dir = ::mkdtemp(tmpl);
    const fs::path runtime = dir / "runtime";
    fs::create_directories(runtime);
    std::ofstream(runtime / "kernel-0a1b.json") << R"({"key":"old secret"})";
    std::ofstream(runtime / "notes.txt") << "keep";
    std::ofstream(runtime / "kernel-0a1b-1-ipc-1") << "a regular file, not a socket: kept";
    const fs::path sock_path = runtime / "kernel-0a1b-1-ipc-2";
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, sock_path.c_str(), sizeof(addr.sun_path) - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    ::close(fd);
    REQUIRE(fs::is_socket(sock_path));
    {
        boost::asio::io_context ioc;
        local_host host(ioc, runtime);
        CHECK_FALSE(fs::exists(runtime / "kernel-0a1b.json"));
        CHECK_FALSE(fs::exists(sock_path));
        CHECK(fs::exists(runtime / "notes.txt"));
        CHECK(fs::exists(runtime / "kernel-0a1b-1-ipc-1"));
    }
    fs::remove_all(dir);
}

TEST_CASE("real kernel over tcp (--kernel-transport tcp): loopback ports, no socket files")
{
    fixture fx({}, {}, kernel_transport::tcp);
    auto k = fx.start();
    const auto info = connection_of(fx, k->id());
    CHECK(info.transport == "tcp");
    CHECK(info.ip == "127.0.0.1");
    CHECK(info.shell_port > 5);
    CHECK(sockets_in(fx.dir / "runtime").empty());
    auto s = std::make_shared<sink>();
    k->attach(s);
    const auto id = fx.execute(*k, *s, "print(6*7)");
    REQUIRE(fx.wait_reply(*s, id));
    CHECK(fx.run_until([&] { return s->saw("stream", "42"); }, 5s));
}

TEST_CASE("real kernel: killed from outside is restarted under the same id")
{
    fixture fx;
    auto k = fx.start();
    const auto id = k->id();
    auto s = std::make_shared<sink>();
    k->attach(s);
    const int pid = fx.host->pid(id);
    REQUIRE(pid > 0);
    ::kill(pid, SIGKILL);
    REQUIRE(fx.run_until([&] { return s->saw("status", "restarting"); }, 10s));
    REQUIRE(fx.run_until([&] { return fx.host->alive(id) && k->execution_state() == "idle"; },
                         40s));
    CHECK(fx.host->pid(id) != pid);
    CHECK(fx.reg->find(id) == k);
    // The killed kernel's ipc sockets were removed; the new one has five of its own.
    CHECK(sockets_in(fx.dir / "runtime").size() == 5);
    CHECK(fx.reg->kernels_died_total() == 1);
    const auto mid = fx.execute(*k, *s, "print(40+2)");
    REQUIRE(fx.wait_reply(*s, mid));
    CHECK(fx.run_until([&] { return s->saw("stream", "42"); }, 5s));
}

TEST_CASE("real kernel: restart clears state, interrupt stops a sleep, shutdown cleans up")
{
    fixture fx;
    auto k = fx.start();
    auto s = std::make_shared<sink>();
    k->attach(s);
    auto id = fx.execute(*k, *s, "x = 41");
    REQUIRE(fx.wait_reply(*s, id));

    std::optional<failure> rf{failure{}};
    bool restarted = false;
    fx.reg->restart(k, [&](std::optional<failure> f) {
        rf = std::move(f);
        restarted = true;
    });
    REQUIRE(fx.run_until([&] { return restarted; }, 40s));
    CHECK_FALSE(rf);
    CHECK(fx.run_until([&] { return s->saw("status", "restarting"); }, 5s));
    CHECK(fx.reg->start_seconds().at("python3").count() == 2);  // the restart's launch too
    s->events.clear();
    id = fx.execute(*k, *s, "x");
    REQUIRE(fx.wait_reply(*s, id));
    CHECK(fx.run_until([&] { return s->saw("error", "NameError"); }, 5s));

    s->events.clear();
    const auto t0 = std::chrono::steady_clock::now();
    id = fx.execute(*k, *s, "import time; time.sleep(30)");
    // This cell's execute_input: the kernel is running it ("busy" could still be the last
    // cell's). ipykernel ignores SIGINT outside a cell, so the signal must not come sooner.
    REQUIRE(fx.run_until([&] { return s->saw("execute_input", "time.sleep(30)"); }, 10s));
    fx.run_until([] { return false; }, 300ms);  // let the sleep begin
    CHECK_FALSE(fx.reg->interrupt(k));
    REQUIRE(fx.wait_reply(*s, id, 15s));
    const bool interrupted = fx.run_until([&] { return s->saw("error", "KeyboardInterrupt"); }, 5s);
    if (!interrupted) {
        for (const auto& e : s->events) {
            UNSCOPED_INFO(e->msg_type << ": " << e->msg.content.substr(0, 200));
        }
    }
    CHECK(interrupted);
    CHECK(std::chrono::steady_clock::now() - t0 < 15s);

    const auto kid = k->id();
    bool down = false;
    fx.reg->shutdown(k, [&](std::optional<failure>) { down = true; });
    REQUIRE(fx.run_until([&] { return down; }, 15s));
    CHECK_FALSE(fx.host->alive(kid));
    CHECK(fx.reg->find(kid) == nullptr);
    CHECK(fx.db->kernels().empty());
    CHECK(s->closed == 1000);
    CHECK_FALSE(fs::exists(fx.dir / "runtime" / ("kernel-" + kid + ".json")));
}

TEST_CASE("replay: output while disconnected reaches the same session_id on reconnect")
{
    fixture fx;
    auto k = fx.start();
    auto s = std::make_shared<sink>();
    k->attach(s);
    const auto id = fx.execute(*k, *s, "import time; time.sleep(0.5); print('while away')");
    k->detach(s.get());
    // The cell ran (busy, then idle again): its stream came before the idle on iopub. The
    // reply comes on shell and may come after the idle, so there is a moment's wait for it.
    bool was_busy = false;
    REQUIRE(fx.run_until(
        [&] {
            was_busy |= k->execution_state() == "busy";
            return was_busy && k->execution_state() == "idle";
        },
        20s));
    fx.run_until([] { return false; }, 500ms);
    CHECK_FALSE(s->saw("stream", "while away"));  // it was not delivered while detached

    auto other = std::make_shared<sink>();
    other->sid = s->sid;
    k->attach(other);
    CHECK(other->saw("stream", "while away"));
    bool got_reply = false;
    for (const auto& e : other->events) {
        got_reply |= e->msg_type == "execute_reply" &&
                     zp::json_string_field(e->msg.parent_header, "msg_id") == id;
    }
    CHECK(got_reply);

    // A different session id gets nothing from the buffer.
    k->detach(other.get());
    const auto id2 = fx.execute(*k, *other, "print('second')");
    (void)id2;
    fx.run_until([] { return false; }, 1500ms);
    auto stranger = std::make_shared<sink>();
    k->attach(stranger);
    CHECK_FALSE(stranger->saw("stream", "second"));
}

TEST_CASE("a spec whose program does not exist fails with a clear error")
{
    const fs::path d = spec_dir("nope", k_missing_program);
    discovery_options disc;
    disc.extra_kernel_dirs = {d};
    fixture fx({}, disc);
    std::optional<failure> f;
    bool done = false;
    fx.reg->start("nope", nlohmann::json::object(), "t", [&](kernel_ptr, auto ff) {
        f = std::move(ff);
        done = true;
    });
    REQUIRE(fx.run_until([&] { return done; }, 10s));
    REQUIRE(f);
    CHECK(f->status == 500);
    CHECK_THAT(f->message, Catch::Contains("No such file"));
    CHECK(fx.reg->size() == 0);
    CHECK(fx.reg->start_failures_total() == 1);
    CHECK(fx.reg->start_seconds().empty());  // a failed launch has no start time
    fs::remove_all(d);
}

TEST_CASE("env from a request: KERNEL_* only, values checked")
{
    fixture fx;
    std::map<std::string, std::string> out;
    CHECK_FALSE(fx.reg->filter_env({{"KERNEL_USERNAME", "ann"}, {"LD_PRELOAD", "/x.so"},
                                    {"PATH", "/evil"}},
                                   out));
    CHECK(out == std::map<std::string, std::string>{{"KERNEL_USERNAME", "ann"}});
    out.clear();
    CHECK(fx.reg->filter_env({{"KERNEL_X", "a\nb"}}, out));
    CHECK(fx.reg->filter_env({{"KERNEL_X", std::string(5000, 'a')}}, out));
    CHECK(fx.reg->filter_env({{"KERNEL_X", 5}}, out));
    CHECK(fx.reg->filter_env(nlohmann::json::array(), out)->status == 400);
}

TEST_CASE("a conda environment with ipykernel runs as its own kernel")
{
    // A real environment: a venv over Debian's python (which has ipykernel), marked as a conda
    // env the way conda marks them (conda-meta/ with the ipykernel package record).
    char tmpl[] = "/tmp/kg-conda-XXXXXX";
    const fs::path home = ::mkdtemp(tmpl);
    const auto env = home / "miniconda3" / "envs" / "lab";
    fs::create_directories(home / "miniconda3" / "conda-meta");
    REQUIRE(std::system(("/usr/bin/python3 -m venv --system-site-packages --without-pip " +
                         env.string())
                            .c_str()) == 0);
    fs::create_directories(env / "conda-meta");
    std::ofstream(env / "conda-meta" / "ipykernel-6.17.0-py311.json") << "{}";
    discovery_options disc;
    disc.home = home;
    fixture fx({}, disc);
    REQUIRE(fx.reg->find_spec("conda-env-lab-py") != nullptr);
    auto k = fx.start("conda-env-lab-py");
    auto s = std::make_shared<sink>();
    k->attach(s);
    const auto id = fx.execute(*k, *s, "import sys; print('PREFIX=' + sys.prefix)");
    REQUIRE(fx.wait_reply(*s, id));
    CHECK(fx.run_until([&] { return s->saw("stream", "PREFIX=" + fs::canonical(env).string()); }, 5s));
    fs::remove_all(home);
}

TEST_CASE("interrupt_mode message sends interrupt_request on control")
{
    const fs::path d = spec_dir(
        "pymsg", R"J({"argv":["/usr/bin/python3","-m","ipykernel_launcher","-f","{connection_file}"],
                     "display_name":"Python (message interrupts)","language":"python",
                     "interrupt_mode":"message"})J");
    discovery_options disc;
    disc.extra_kernel_dirs = {d};
    fixture fx({}, disc);
    auto k = fx.start("pymsg");
    auto s = std::make_shared<sink>();
    k->attach(s);
    const auto id = fx.execute(*k, *s, "import time; time.sleep(30)");
    REQUIRE(fx.run_until([&] { return k->execution_state() == "busy"; }, 10s));
    fx.run_until([] { return false; }, 300ms);
    const auto before = k->stats()->sent;
    CHECK_FALSE(fx.reg->interrupt(k));
    CHECK(k->stats()->sent == before + 1);  // a message went out instead of a signal
    REQUIRE(fx.wait_reply(*s, id, 15s));
    CHECK(fx.run_until([&] { return s->saw("error", "KeyboardInterrupt"); }, 5s));
    fs::remove_all(d);
}

TEST_CASE("a kernel that keeps dying is declared dead after the restart limit")
{
    registry_config cfg;
    cfg.restart_limit = 1;
    cfg.stable_start = std::chrono::hours(1);  // a slow relaunch must not reset the count
    fixture fx(cfg);
    auto k = fx.start();
    auto s = std::make_shared<sink>();
    k->attach(s);
    ::kill(fx.host->pid(k->id()), SIGKILL);
    REQUIRE(fx.run_until([&] { return s->saw("status", "restarting"); }, 10s));
    REQUIRE(fx.run_until([&] { return fx.host->alive(k->id()) && !k->restarting; }, 40s));
    ::kill(fx.host->pid(k->id()), SIGKILL);
    REQUIRE(fx.run_until([&] { return s->saw("status", "dead"); }, 10s));
    CHECK(k->execution_state() == "dead");
    CHECK_FALSE(fx.host->alive(k->id()));
    CHECK(fx.reg->find(k->id()) == k);  // still listed (as dead) until deleted
    CHECK(fx.db->kernels().at(0).state == "dead");
}

TEST_CASE("idle culling shuts down idle kernels without clients only")
{
    registry_config cfg;
    cfg.cull_idle_timeout = 1s;
    cfg.cull_interval = 1s;
    fixture fx(cfg);
    auto idle = fx.start();
    auto watched = fx.start();
    auto s = std::make_shared<sink>();
    watched->attach(s);
    const auto idle_id = idle->id();
    idle.reset();
    REQUIRE(fx.run_until([&] { return fx.reg->find(idle_id) == nullptr; }, 10s));
    CHECK(fx.reg->kernels_culled_total() == 1);
    CHECK(fx.reg->find(watched->id()) != nullptr);  // it has a client
    CHECK_FALSE(s->closed);
}

TEST_CASE("replay: an overflowing buffer keeps the newest messages and says how many it dropped")
{
    registry_config cfg;
    cfg.replay.max_messages = 5;
    fixture fx(cfg);
    auto k = fx.start();
    auto s = std::make_shared<sink>();
    k->attach(s);
    fx.execute(*k, *s, "import time; time.sleep(0.3)\nfor i in range(30): display(i)");
    k->detach(s.get());
    REQUIRE(fx.run_until([&] { return k->replay_dropped_total() > 0 &&
                                      k->execution_state() == "idle"; }, 20s));
    fx.run_until([] { return false; }, 500ms);
    auto back = std::make_shared<sink>();
    back->sid = s->sid;
    k->attach(back);
    REQUIRE(back->events.size() == 6);  // the notice, then the 5 newest messages
    CHECK(back->events.front()->msg_type == "stream");
    CHECK_THAT(back->events.front()->msg.content,
               Catch::Contains("messages were dropped while no client was connected"));
    // The newest messages were kept: the idle that ended the cell is among them (only the
    // reply, on shell, can come after it; the displays on iopub all came before).
    CHECK(back->saw("status", "idle"));
    CHECK_FALSE(back->saw("execute_input"));  // the oldest were dropped
}

TEST_CASE("port picker: launches close together never share a port")
{
    // bind(0) picks from the ephemeral range at random; a thousand ports drawn one launch
    // after another would repeat dozens of times without the picker's memory (a kernel given
    // a port another kernel is about to bind exits with "Address already in use").
    kernelgate::sessions::port_picker picker;
    std::set<std::uint16_t> seen;
    for (int launch = 0; launch < 200; ++launch) {
        const auto ports = picker.pick("127.0.0.1", 5);
        REQUIRE(ports.size() == 5);
        for (const auto p : ports) {
            CHECK(p != 0);
            CHECK(seen.insert(p).second);
        }
    }
    // After the hold period a port may be handed out again.
    kernelgate::sessions::port_picker forgetful(std::chrono::seconds(0));
    std::set<std::uint16_t> again;
    int repeats = 0;
    for (int launch = 0; launch < 400 && repeats == 0; ++launch) {
        for (const auto p : forgetful.pick("127.0.0.1", 5)) {
            repeats += again.insert(p).second ? 0 : 1;
        }
    }
    CHECK(repeats > 0);
}

namespace {

/// Runs until every warm pool has all its kernels ready.
bool pools_ready(fixture& fx, std::chrono::milliseconds limit = 40s)
{
    return fx.run_until(
        [&] {
            for (const auto& [name, st] : fx.reg->warm_pools()) {
                if (st.ready < st.target) {
                    return false;
                }
            }
            return true;
        },
        limit);
}

/// reg->start, and whether its callback came before the loop ran again (a pool hand-out:
/// nothing to wait for).
struct start_result
{
    kernel_ptr k;
    std::optional<failure> f;
    bool at_once = false;
};

start_result start_with(fixture& fx, const std::string& name, const nlohmann::json& env)
{
    start_result r;
    bool done = false;
    fx.reg->start(name, env, "tester", [&](kernel_ptr k, std::optional<failure> f) {
        r.k = std::move(k);
        r.f = std::move(f);
        done = true;
    });
    r.at_once = done;
    REQUIRE(fx.run_until([&] { return done; }, 40s));
    return r;
}

} // namespace

TEST_CASE("warm pool: a Python kernel is handed out at once and set up as the request asks")
{
    registry_config cfg;
    cfg.warm_pool = {{"python3", 1}};
    fixture fx(cfg);
    REQUIRE(pools_ready(fx));
    CHECK(fx.reg->size() == 0);  // pool kernels belong to no one and are not listed
    CHECK(fx.db->kernels().empty());
    const auto pooled = fx.reg->pool_kernels();
    REQUIRE(pooled.size() == 1);

    char tmpl[] = "/tmp/kg-pool-cwd-XXXXXX";
    const fs::path cwd = ::mkdtemp(tmpl);
    const auto r = start_with(fx, "python3",
                              {{"KERNEL_USERNAME", "ann"}, {"KERNEL_WORKING_DIR", cwd.string()}});
    REQUIRE_FALSE(r.f);
    CHECK(r.at_once);
    CHECK(r.k == pooled.front());
    CHECK(r.k->owner() == "tester");
    CHECK(fx.reg->find(r.k->id()) == r.k);
    CHECK(fx.reg->pool_claims_total() == 1);
    CHECK(fx.reg->kernels_started_total() == 1);
    CHECK(fx.db->kernels().size() == 1);

    // The client's first request runs after the set-up: the env and the working dir are there.
    auto s = std::make_shared<sink>();
    r.k->attach(s);
    const auto id = fx.execute(*r.k, *s,
                               "import os; print('CWD=' + os.getcwd(), "
                               "'USER=' + os.environ['KERNEL_USERNAME'])");
    REQUIRE(fx.wait_reply(*s, id));
    CHECK(fx.run_until([&] { return s->saw("stream", "CWD=" + cwd.string() + " USER=ann"); }, 5s));
    // The set-up's own output reached no one, and it did not count as the user's cell.
    for (const auto& e : s->events) {
        CHECK(zp::json_string_field(e->msg.parent_header, "msg_id") == id);
        if (e->msg_type == "execute_reply") {
            CHECK(nlohmann::json::parse(e->msg.content).at("execution_count") == 1);
        }
    }
    CHECK(fx.run_until([&] { return r.k->execution_state() == "idle"; }, 5s));

    // Another kernel takes the handed-out one's place.
    REQUIRE(pools_ready(fx));
    REQUIRE(fx.reg->pool_kernels().size() == 1);
    CHECK(fx.reg->pool_kernels().front() != r.k);
    CHECK(fx.reg->size() == 1);
    fs::remove_all(cwd);
}

TEST_CASE("warm pool: other kernels only without env and a dead pool kernel is replaced "
          "and shutdown stops the pool")
{
    // ipykernel under a spec that says it is not Python: the gateway cannot set it up.
    const fs::path d = spec_dir(
        "other", R"J({"argv":["/usr/bin/python3","-m","ipykernel_launcher","-f","{connection_file}"],
                     "display_name":"Other","language":"other"})J");
    discovery_options disc;
    disc.extra_kernel_dirs = {d};
    registry_config cfg;
    cfg.warm_pool = {{"other", 1}};
    fixture fx(cfg, disc);
    REQUIRE(pools_ready(fx));

    const auto with_env = start_with(fx, "other", {{"KERNEL_USERNAME", "ann"}});
    REQUIRE_FALSE(with_env.f);
    CHECK_FALSE(with_env.at_once);  // started a kernel of its own
    CHECK(fx.reg->pool_misses_total() == 1);
    CHECK(fx.reg->pool_claims_total() == 0);
    CHECK(fx.reg->warm_pools().at("other").ready == 1);

    const auto plain = start_with(fx, "other", nlohmann::json::object());
    REQUIRE_FALSE(plain.f);
    CHECK(plain.at_once);
    CHECK(fx.reg->pool_claims_total() == 1);

    // A pool kernel that dies while it waits is replaced (and is no user's kernel death).
    REQUIRE(pools_ready(fx));
    const auto waiting = fx.reg->pool_kernels().front();
    ::kill(fx.host->pid(waiting->id()), SIGKILL);
    REQUIRE(fx.run_until([&] {
        const auto now = fx.reg->pool_kernels();
        return now.size() == 1 && now.front() != waiting &&
               fx.reg->warm_pools().at("other").ready == 1;
    }, 40s));
    CHECK(fx.reg->kernels_died_total() == 0);
    CHECK_FALSE(fx.reg->warm_pools().at("other").stopped);

    const auto last = fx.reg->pool_kernels().front();
    const auto pid = fx.host->pid(last->id());
    bool done = false;
    fx.reg->shutdown_all([&] { done = true; });
    REQUIRE(fx.run_until([&] { return done; }, 15s));
    CHECK(fx.reg->pool_kernels().empty());
    CHECK(::kill(pid, 0) != 0);  // the process is gone
    fs::remove_all(d);
}

TEST_CASE("warm pool: a kernelspec that keeps failing stops its pool and starts still answer")
{
    const fs::path d = spec_dir("nope", k_missing_program);
    discovery_options disc;
    disc.extra_kernel_dirs = {d};
    registry_config cfg;
    cfg.warm_pool = {{"nope", 2}};
    cfg.restart_limit = 2;
    fixture fx(cfg, disc);
    REQUIRE(fx.run_until([&] { return fx.reg->warm_pools().at("nope").stopped; }, 10s));
    CHECK(fx.reg->pool_kernels().empty());
    const auto r = start_with(fx, "nope", nlohmann::json::object());
    REQUIRE(r.f);
    CHECK_THAT(r.f->message, Catch::Contains("No such file"));
    CHECK(fx.reg->pool_misses_total() == 1);
    fs::remove_all(d);
}
