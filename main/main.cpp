// SPDX-License-Identifier: BSD-3-Clause
// kernelgate: a Jupyter kernel gateway. This file only parses the command line and wires the
// modules together.
#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "auth/token_check.hpp"
#include "auth/token_store.hpp"
#include "common/asio_fwd.hpp"
#include "common/heap_keeper.hpp"
#include "gateway/server.hpp"
#include "sessions/kernelspec.hpp"
#include "sessions/local_host.hpp"
#include "sessions/registry.hpp"
#include "sessions/store.hpp"

namespace kg = kernelgate;
namespace fs = std::filesystem;

namespace {

struct serve_options
{
    kg::gateway::server_config server;
    kg::sessions::registry_config registry;
    std::string data_dir;
    std::string auth_token;
    bool no_auth = false;
    std::vector<std::string> kernel_dirs;
    std::vector<std::string> env_allow;
    std::vector<std::string> warm_pool;
    bool no_conda = false;
    std::string kernel_transport = "auto";
    int busy_poll_us = 0;
    double busy_poll_max_pressure = 0.4;
    int predictive_poll_us = 200;
    int heap_keep_mib = 64;
    int heap_settle_s = 10;
    bool heap_huge_pages = true;
    double launch_timeout = 60;
    double shutdown_wait = 5;
    int cull_idle_timeout = 0;
    int cull_interval = 300;
    int ws_ping_interval = 30;
    std::string log_level = "info";
    std::string log_format = "text";
    std::string pepper_file;
    std::string token_default_ttl = "30d";
    std::string token_max_ttl = "90d";
    std::string certfile;
    std::string keyfile;
    std::string client_ca;
};

/// What every admin subcommand shares with serve: where the data lives.
struct store_options
{
    std::string data_dir;
    std::string pepper_file;
    std::string token_default_ttl = "30d";
    std::string token_max_ttl = "90d";
};

std::string default_data_dir()
{
    if (const char* x = std::getenv("XDG_DATA_HOME"); x != nullptr && *x != '\0') {
        return (fs::path(x) / "kernelgate").string();
    }
    if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0') {
        return (fs::path(h) / ".local" / "share" / "kernelgate").string();
    }
    return "./kernelgate-data";
}

/// The log message as a JSON string body (quotes, backslashes and control bytes escaped), so
/// every line of --log-format json is one valid JSON object.
class json_message_flag final : public spdlog::custom_flag_formatter
{
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&,
                spdlog::memory_buf_t& dest) override
    {
        static constexpr char hex[] = "0123456789abcdef";
        for (const char c : std::string_view(msg.payload.data(), msg.payload.size())) {
            const auto u = static_cast<unsigned char>(c);
            if (c == '"' || c == '\\') {
                dest.push_back('\\');
                dest.push_back(c);
            } else if (u < 0x20) {
                const char esc[] = {'\\', 'u', '0', '0', hex[u >> 4], hex[u & 15]};
                dest.append(esc, esc + sizeof(esc));
            } else {
                dest.push_back(c);
            }
        }
    }
    std::unique_ptr<custom_flag_formatter> clone() const override
    {
        return std::make_unique<json_message_flag>();
    }
};

void setup_logging(const std::string& level, const std::string& format)
{
    auto logger = spdlog::stderr_color_mt("kernelgate");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(level));
    if (format == "json") {
        auto f = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
        f->add_flag<json_message_flag>('*').set_pattern(
            R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","pid":%P,"msg":"%*"})");
        spdlog::set_formatter(std::move(f));
    } else {
        spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    }
}

// An io_context that can destroy its pending handlers before its own destructor would.
class io_context_owner : public kg::net::io_context
{
public:
    io_context_owner() : kg::net::io_context(1) {}
    void drop_pending_work() { shutdown(); }
};

int run_serve(serve_options& o, char** argv)
{
    // Before anything else (no thread, no file open yet): a process started again for huge
    // pages puts GLIBC_TUNABLES back; one that was not may be started again here.
    const bool huge_pages = kg::common::restore_after_huge_pages_exec();
    kg::common::heap_keeper heap({.keep = static_cast<std::size_t>(o.heap_keep_mib) << 20,
                                  .settle_looks = static_cast<unsigned>(o.heap_settle_s)});
    const bool keeper = heap.apply();  // false under a sanitizer's allocator
    if (keeper && o.heap_huge_pages && !huge_pages) {
        kg::common::exec_with_huge_pages(argv);  // returns only if it did not
    }
    setup_logging(o.log_level, o.log_format);
    if (!keeper && o.heap_keep_mib > 0) {
        spdlog::info("--heap-keep: this allocator does not take glibc's malloc settings; left "
                     "as it is");
    }
    if (huge_pages) {
        spdlog::info("heap: transparent huge pages (glibc.malloc.hugetlb=1)");
    } else if (o.heap_huge_pages && keeper) {
        const auto mode = kg::common::transparent_huge_pages_mode();
        spdlog::info("heap: no transparent huge pages (the system's mode is \"{}\", or "
                     "GLIBC_TUNABLES already sets glibc.malloc.hugetlb)",
                     mode.empty() ? "unknown" : mode);
    }
    // The static token is hashed at once; the environment copy is removed so kernels never
    // see it.
    std::string token = o.auth_token;
    ::unsetenv("KERNELGATE_AUTH_TOKEN");
    o.auth_token.assign(o.auth_token.size(), '\0');
    if (o.no_auth) {
        spdlog::warn("*** AUTHENTICATION IS DISABLED (--no-auth-i-know-what-i-am-doing): anyone "
                     "who can reach {}:{} can run code as this user ***",
                     o.server.ip, o.server.port);
    }
    o.server.allow_unauthenticated = o.no_auth;
    o.registry.launch_timeout =
        std::chrono::milliseconds(static_cast<long long>(o.launch_timeout * 1000));
    o.registry.shutdown_wait =
        std::chrono::milliseconds(static_cast<long long>(o.shutdown_wait * 1000));
    o.registry.cull_idle_timeout = std::chrono::seconds(o.cull_idle_timeout);
    o.registry.cull_interval = std::chrono::seconds(std::max(1, o.cull_interval));
    o.registry.env_allowlist = {o.env_allow.begin(), o.env_allow.end()};
    for (const auto& item : o.warm_pool) {
        o.registry.warm_pool[item.substr(0, item.find('='))] =
            std::stoul(item.substr(item.find('=') + 1));
    }
    o.server.ws_ping_interval = std::chrono::seconds(std::max(1, o.ws_ping_interval));

    const fs::path data_dir = o.data_dir.empty() ? fs::path(default_data_dir()) : fs::path(o.data_dir);
    fs::create_directories(data_dir);
    fs::permissions(data_dir, fs::perms::owner_all, fs::perm_options::replace);

    const auto policy = kg::auth::token_policy{kg::auth::parse_duration(o.token_default_ttl),
                                               kg::auth::parse_duration(o.token_max_ttl)};
    kg::auth::token_store tokens(
        data_dir / "auth.db",
        kg::auth::pepper::load(o.pepper_file.empty() ? data_dir / "pepper"
                                                     : fs::path(o.pepper_file),
                               o.pepper_file.empty()),
        policy);
    std::string generated;
    if (!token.empty()) {
        tokens.set_static(token, "admin", policy.max_ttl);
    } else if (!o.no_auth) {
        bool have_admin = false;
        for (const auto& t : tokens.list({}, false)) {
            have_admin |= t.role == kg::auth::role_t::admin && t.id != "static" &&
                          t.expires_at > kg::auth::clock::now();
        }
        if (!have_admin) {
            generated = tokens.create("admin", kg::auth::role_t::admin, std::chrono::seconds(0),
                                      "generated by serve", "serve")
                            .token;
        }
    }
    token.assign(token.size(), '\0');

    // Declared first, so destroyed last: everything below registers work with it.
    io_context_owner ioc;
    kg::sessions::store db(data_dir / "kernelgate.db");
    kg::sessions::local_host host(ioc, data_dir / "runtime", "127.0.0.1",
                                  *kg::sessions::parse_kernel_transport(o.kernel_transport));
    kg::sessions::discovery_options disc;
    for (const auto& d : o.kernel_dirs) {
        disc.extra_kernel_dirs.emplace_back(d);
    }
    disc.include_conda = !o.no_conda;
    // Predictive polling: the kernels say when a message is expected soon, the loop polls.
    kg::common::poll_hint poll_hint;
    poll_hint.budget = std::chrono::microseconds(o.busy_poll_us > 0 ? 0 : o.predictive_poll_us);
    o.registry.poll_hint = &poll_hint;
    kg::sessions::registry reg(ioc, host, db, o.registry, disc);
    if (reg.specs().empty()) {
        spdlog::warn("no kernelspecs found: install python3-ipykernel or point --kernel-dir at "
                     "a directory of kernelspecs");
    }
    for (const auto& [name, spec] : reg.specs()) {
        spdlog::info("kernelspec {} ({}) from {}", name, spec.display_name, spec.source);
    }
    std::unique_ptr<kg::net::ssl::context> tls;
    if (!o.certfile.empty() || !o.keyfile.empty()) {
        if (o.certfile.empty() || o.keyfile.empty()) {
            spdlog::critical("--certfile and --keyfile go together");
            return 2;
        }
        try {
            tls = kg::gateway::make_tls_context(o.certfile, o.keyfile, o.client_ca);
        } catch (const std::exception& e) {
            spdlog::critical("TLS setup failed: {}", e.what());
            return 2;
        }
    } else if (!o.client_ca.empty()) {
        spdlog::critical("--client-ca needs --certfile and --keyfile");
        return 2;
    }
    kg::gateway::server srv(ioc, o.server, reg, tokens, tls.get());
    std::uint16_t port = 0;
    try {
        port = srv.listen();
    } catch (const std::exception& e) {
        spdlog::critical("cannot listen on {}:{}: {}", o.server.ip, o.server.port, e.what());
        return 1;
    }
    const auto base = kg::gateway::normalize_base_url(o.server.base_url);
    const std::string url = std::string(tls ? "https://" : "http://") + o.server.ip + ":" + std::to_string(port) + base;
    spdlog::info("kernelgate listening on {}", url);
    if (!generated.empty()) {
        // Printed once, to stdout only (not the log): the operator needs it to connect.
        std::cout << "\nkernelgate is running at " << url << "\n"
                  << "  admin token (shown once; create more with `kernelgate token create`):\n"
                  << "    " << generated << "\n"
                  << "  connect Jupyter Server:  jupyter server --gateway-url=" << url
                  << " --GatewayClient.auth_token=<token>\n"
                  << std::endl;
        generated.assign(generated.size(), '\0');
    } else {
        std::cout << "kernelgate is running at " << url << std::endl;
    }

    kg::net::signal_set signals(ioc, SIGINT, SIGTERM);
    bool stopping = false;
    kg::net::steady_timer deadline(ioc);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
        if (ec) {
            return;
        }
        spdlog::info("signal {}: shutting down gracefully", sig);
        stopping = true;
        deadline.expires_after(o.server.shutdown_timeout);
        deadline.async_wait([&](const boost::system::error_code& ec2) {
            if (!ec2) {
                spdlog::warn("graceful shutdown took too long; stopping now");
                ioc.stop();
            }
        });
        srv.stop([&] {
            spdlog::info("all kernels shut down; bye");
            // Give the WebSocket close frames a moment to go out.
            deadline.expires_after(std::chrono::milliseconds(200));
            deadline.async_wait([&](const boost::system::error_code&) { ioc.stop(); });
        });
        // A second signal stops at once.
        signals.async_wait([&](const boost::system::error_code& e2, int) {
            if (!e2) {
                ioc.stop();
            }
        });
    });
    ::signal(SIGPIPE, SIG_IGN);
    kg::gateway::pressure_guard guard;
    guard.max = o.busy_poll_max_pressure;
    kg::gateway::event_loop loop(ioc, std::chrono::microseconds(o.busy_poll_us), guard,
                                 &poll_hint);
    srv.set_event_loop(&loop);
    srv.set_heap_keeper(&heap);
    if (loop.pressure_unknown() && o.busy_poll_us > 0) {
        spdlog::warn("busy polling off: this kernel reports no CPU pressure (PSI) to tell "
                     "whether the CPU is wanted; --busy-poll-max-pressure 1 polls regardless");
    } else if (loop.pressure_unknown()) {
        spdlog::info("predictive polling off: this kernel reports no CPU pressure (PSI) to "
                     "tell whether the CPU is wanted; --busy-poll-max-pressure 1 polls "
                     "regardless");
    } else if (loop.predictive()) {
        spdlog::info("predictive polling for expected messages up to {} us away, paused while "
                     "CPU pressure is above {}", o.predictive_poll_us, o.busy_poll_max_pressure);
    } else if (o.busy_poll_us > 0) {
        spdlog::info("busy polling up to {} us after work, paused while CPU pressure is above "
                     "{}", o.busy_poll_us, o.busy_poll_max_pressure);
    }
    loop.run();
    (void)stopping;
    // Sessions still open when the loop stopped (an idle keep-alive connection, a WebSocket
    // whose close did not finish before a second signal, kernels still shutting down) live
    // on as pending handlers that refer to the server, the registry and the host, and as
    // kernels and clients that refer to each other. Untie those, then destroy the handlers
    // while everything they refer to still lives.
    reg.abandon_all();
    ioc.drop_pending_work();
    return 0;
}

int run_kernelspecs(const std::vector<std::string>& dirs, bool no_conda, bool as_json)
{
    kg::sessions::discovery_options disc;
    for (const auto& d : dirs) {
        disc.extra_kernel_dirs.emplace_back(d);
    }
    disc.include_conda = !no_conda;
    const auto specs = kg::sessions::discover_kernelspecs(disc);
    // What --kernel-transport auto gives each spec.
    auto transport = [](const kg::sessions::kernelspec& s) {
        return kg::sessions::kernel_speaks_ipc(s) ? "ipc" : "tcp";
    };
    if (as_json) {
        nlohmann::json j = nlohmann::json::object();
        for (const auto& [name, s] : specs) {
            j[name] = {{"display_name", s.display_name},
                       {"language", s.language},
                       {"dir", s.dir.string()},
                       {"source", s.source},
                       {"argv", s.argv},
                       {"transport", transport(s)}};
        }
        std::cout << j.dump(2) << std::endl;
        return 0;
    }
    if (specs.empty()) {
        std::cout << "no kernelspecs found\n";
        return 1;
    }
    for (const auto& [name, s] : specs) {
        std::cout << name << "\t" << s.display_name << "\t" << s.source << "\t"
                  << transport(s) << "\t"
                  << s.dir.string() << "\n";
    }
    return 0;
}

kg::auth::token_store open_store(const store_options& so)
{
    const fs::path data_dir = so.data_dir.empty() ? fs::path(default_data_dir())
                                                  : fs::path(so.data_dir);
    fs::create_directories(data_dir);
    fs::permissions(data_dir, fs::perms::owner_all, fs::perm_options::replace);
    return kg::auth::token_store(
        data_dir / "auth.db",
        kg::auth::pepper::load(so.pepper_file.empty() ? data_dir / "pepper"
                                                      : fs::path(so.pepper_file),
                               so.pepper_file.empty()),
        {kg::auth::parse_duration(so.token_default_ttl),
         kg::auth::parse_duration(so.token_max_ttl)});
}

std::string cli_actor()
{
    const char* u = std::getenv("USER");
    return std::string("cli:") + (u != nullptr ? u : "unknown");
}

nlohmann::json token_row(const kg::auth::token_info& t)
{
    return {{"id", t.id},
            {"user", t.user},
            {"role", kg::auth::role_name(t.role)},
            {"note", t.note},
            {"created_at", kg::auth::to_iso(t.created_at)},
            {"expires_at", kg::auth::to_iso(t.expires_at)},
            {"last_used_at", t.last_used_at ? nlohmann::json(kg::auth::to_iso(*t.last_used_at))
                                            : nlohmann::json()},
            {"revoked_at", t.revoked_at ? nlohmann::json(kg::auth::to_iso(*t.revoked_at))
                                        : nlohmann::json()}};
}

/// Applies `serve --config FILE` to the options neither the command line nor the environment
/// set (CLI11 2.1 reads a subcommand's config file only for the root command). Keys are the
/// long option names, at the top level or in a [serve] section. An unknown key, a value
/// the option refuses or an unreadable file is an error (exit 2), not a silent default.
void apply_config_file(CLI::App& cmd)
{
    const CLI::Option* cfg = cmd.get_config_ptr();
    if (cfg == nullptr || cfg->count() == 0) {
        return;
    }
    const auto path = cfg->as<std::string>();
    CLI::ConfigTOML format;  // reads TOML and INI alike
    std::vector<CLI::ConfigItem> items;
    try {
        items = format.from_file(path);
    } catch (const CLI::Error& e) {
        throw CLI::FileError("config file " + path + ": " + e.what());
    }
    for (const auto& item : items) {
        if (item.name == "++" || item.name == "--") {
            continue;  // a section starts or ends
        }
        if (!item.parents.empty() && item.parents != std::vector<std::string>{cmd.get_name()}) {
            throw CLI::ConfigError("config file " + path + ": unknown section [" +
                                   item.fullname().substr(0, item.fullname().rfind('.')) + "]");
        }
        std::string name = item.name;
        std::replace(name.begin(), name.end(), '_', '-');
        CLI::Option* op = cmd.get_option_no_throw("--" + name);
        if (op == nullptr || op == cfg || !op->get_configurable()) {
            throw CLI::ConfigError("config file " + path + ": unknown option \"" + item.name +
                                   "\" (see kernelgate serve --help)");
        }
        if (op->count() > 0) {
            continue;  // the command line or the environment said otherwise
        }
        try {
            if (op->get_expected_min() == 0) {  // a flag: true/false, yes/no, 1/0
                op->add_result(op->get_flag_value(name, format.to_flag(item)));
            } else {
                op->add_result(item.inputs);
            }
            op->run_callback();
        } catch (const CLI::Error& e) {
            throw CLI::ConfigError("config file " + path + ": " + item.name + ": " + e.what());
        }
    }
}

} // namespace

int main(int argc, char** argv)
{
    CLI::App app{"kernelgate: a Jupyter kernel gateway (Kernel Gateway REST + WebSocket API "
                 "over ZeroMQ to local kernels)"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "kernelgate 0.1.0");

    serve_options o;
    auto* serve = app.add_subcommand("serve", "Run the gateway");
    serve->set_config("--config", "", "Read options from this TOML/INI file");
    serve->add_option("--ip", o.server.ip, "Address to listen on")
        ->envname("KERNELGATE_IP")
        ->capture_default_str();
    serve->add_option("--port", o.server.port, "Port to listen on (0: pick a free one)")
        ->envname("KERNELGATE_PORT")
        ->capture_default_str();
    serve->add_option("--base-url", o.server.base_url, "URL prefix of every route")
        ->envname("KERNELGATE_BASE_URL")
        ->capture_default_str();
    serve->add_option("--data-dir", o.data_dir,
                      "Where the database and kernel connection files live (mode 0700) "
                      "[default: $XDG_DATA_HOME/kernelgate or ~/.local/share/kernelgate]")
        ->envname("KERNELGATE_DATA_DIR");
    serve->add_option("--auth-token", o.auth_token,
                      "Static token clients must send (Authorization: token T / Bearer T or "
                      "?token=T). Held only as a hash. Without one a random token is generated "
                      "and printed once")
        ->envname("KERNELGATE_AUTH_TOKEN");
    serve->add_flag("--no-auth-i-know-what-i-am-doing", o.no_auth,
                    "Serve WITHOUT authentication: anyone who can connect runs code as you");
    serve->add_option("--allow-origin", o.server.cors.allow_origin,
                      "Access-Control-Allow-Origin value for every response; also allowed as "
                      "a WebSocket Origin")
        ->envname("KERNELGATE_ALLOW_ORIGIN");
    serve->add_option("--allow-methods", o.server.cors.allow_methods,
                      "Access-Control-Allow-Methods value");
    serve->add_option("--allow-headers", o.server.cors.allow_headers,
                      "Access-Control-Allow-Headers value");
    serve->add_option("--allow-credentials", o.server.cors.allow_credentials,
                      "Access-Control-Allow-Credentials value");
    serve->add_option("--expose-headers", o.server.cors.expose_headers,
                      "Access-Control-Expose-Headers value");
    serve->add_option("--max-age", o.server.cors.max_age, "Access-Control-Max-Age value");
    serve->add_option("--ws-allow-origin", o.server.ws_allow_origins,
                      "Extra Origin allowed to open kernel WebSockets (repeatable; '*' for "
                      "any). Same-origin and Origin-less clients are always allowed");
    serve->add_option("--kernel-dir", o.kernel_dirs,
                      "Extra directory of kernelspecs, searched first (repeatable)");
    serve->add_flag("--no-conda", o.no_conda, "Do not add kernelspecs for conda environments");
    serve->add_option("--kernel-transport", o.kernel_transport,
                      "How local kernels are reached: ipc (Unix sockets in the runtime dir), "
                      "tcp (loopback ports), or auto: ipc for ipykernel and for kernelspecs "
                      "whose metadata says {\"kernelgate\": {\"transport\": \"ipc\"}}, "
                      "tcp for the rest")
        ->check(CLI::IsMember({"auto", "tcp", "ipc"}))
        ->envname("KERNELGATE_KERNEL_TRANSPORT")
        ->capture_default_str();
    serve->add_option("--busy-poll", o.busy_poll_us,
                      "Microseconds the event loop keeps polling after work before it sleeps "
                      "(0: off). Saves the two wake-ups a request/reply pays in a sleeping "
                      "loop (about 50 us per round trip on a small VM) for up to this much "
                      "CPU after every burst of messages. The window shrinks while traffic "
                      "is sparser than this; an idle gateway still sleeps. Replaces --predictive-poll")
        ->check(CLI::Range(0, 100000))
        ->envname("KERNELGATE_BUSY_POLL_US")
        ->capture_default_str();
    serve->add_option("--predictive-poll", o.predictive_poll_us,
                      "Microseconds of the longest wait the event loop polls for instead of "
                      "sleeping, when a message is expected: a kernel working on a request, "
                      "or a client that usually sends its next request right after the last "
                      "reply. Each kernel learns how long its requests and these waits last; "
                      "kernels whose requests take longer than this (ipykernel's milliseconds "
                      "of work), and waits predicted longer (a person at a notebook), are "
                      "slept through. 0: off; --busy-poll replaces it")
        ->check(CLI::Range(0, 100000))
        ->envname("KERNELGATE_PREDICTIVE_POLL_US")
        ->capture_default_str();
    serve->add_option("--busy-poll-max-pressure", o.busy_poll_max_pressure,
                      "With --busy-poll or --predictive-poll: polling pauses while CPU "
                      "pressure (Linux PSI: the "
                      "share of time some runnable task waited for a CPU, read every 250 ms) "
                      "is above this, so that it takes only CPU nobody else is waiting for "
                      "(1: poll regardless)")
        ->check(CLI::Range(0.0, 1.0))
        ->envname("KERNELGATE_BUSY_POLL_MAX_PRESSURE")
        ->capture_default_str();
    serve->add_option("--heap-keep", o.heap_keep_mib,
                      "MiB of freed memory malloc keeps for reuse instead of returning it to "
                      "the system at once, given back once memory use has settled (see "
                      "--heap-settle). A stream of large messages then reuses its buffers "
                      "instead of page-faulting fresh ones for every megabyte. 0: glibc's "
                      "defaults")
        ->check(CLI::Range(0, 4096))
        ->envname("KERNELGATE_HEAP_KEEP_MIB")
        ->capture_default_str();
    serve->add_option("--heap-settle", o.heap_settle_s,
                      "With --heap-keep: seconds memory use must stay put (within 1 MiB) "
                      "before kept memory goes back to the system")
        ->check(CLI::Range(1, 3600))
        ->envname("KERNELGATE_HEAP_SETTLE_S")
        ->capture_default_str();
    serve->add_option("--heap-huge-pages", o.heap_huge_pages,
                      "With --heap-keep: back malloc's memory with transparent huge pages "
                      "where the system offers them (THP \"madvise\" or \"always\"), so "
                      "that buffers touched for the first time take one page fault per 2 MiB "
                      "instead of one per 4 KiB. The gateway starts itself again at once with "
                      "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (same pid); kernels do not "
                      "inherit it")
        ->envname("KERNELGATE_HEAP_HUGE_PAGES")
        ->capture_default_str();
    serve->add_option("--default-kernel", o.registry.default_kernel,
                      "Default kernelspec name [default: python3 if present]")
        ->envname("KERNELGATE_DEFAULT_KERNEL");
    serve->add_option("--max-kernels", o.registry.max_kernels,
                      "Maximum number of kernels (0: unlimited); more is 403")
        ->envname("KERNELGATE_MAX_KERNELS")
        ->capture_default_str();
    serve->add_option("--env-allow", o.env_allow,
                      "Environment variable (besides KERNEL_*) a client may pass to a kernel "
                      "(repeatable)");
    serve->add_option("--warm-pool", o.warm_pool,
                      "Keep N kernels of a kernelspec started, handed out at once on request: "
                      "NAME=N (repeatable, or comma-separated)")
        ->delimiter(',')
        ->check(CLI::Validator(
            [](std::string& v) -> std::string {
                static const std::regex form(R"([a-z0-9._-]+=([1-9][0-9]?))");
                return std::regex_match(v, form) ? std::string()
                                                 : "expected NAME=N (N from 1 to 99), got " + v;
            },
            "NAME=N"))
        ->envname("KERNELGATE_WARM_POOL");
    serve->add_option("--launch-timeout", o.launch_timeout,
                      "Seconds a kernel may take to answer kernel_info after launch")
        ->envname("KERNELGATE_LAUNCH_TIMEOUT")
        ->capture_default_str();
    serve->add_option("--shutdown-wait", o.shutdown_wait,
                      "Seconds from shutdown_request to SIGKILL (SIGTERM at half)")
        ->capture_default_str();
    serve->add_option("--restart-limit", o.registry.restart_limit,
                      "Automatic restarts in a row before a dying kernel is declared dead")
        ->capture_default_str();
    serve->add_option("--cull-idle-timeout", o.cull_idle_timeout,
                      "Shut down kernels idle this many seconds (0: never)")
        ->envname("KERNELGATE_CULL_IDLE_TIMEOUT")
        ->capture_default_str();
    serve->add_option("--cull-interval", o.cull_interval, "Seconds between culling passes")
        ->capture_default_str();
    serve->add_flag("--cull-connected", o.registry.cull_connected,
                    "Also cull kernels that have clients connected");
    serve->add_flag("--cull-busy", o.registry.cull_busy, "Also cull busy kernels");
    serve->add_option("--replay-buffer-messages", o.registry.replay.max_messages,
                      "Messages kept per kernel while no client is connected")
        ->capture_default_str();
    serve->add_option("--replay-buffer-bytes", o.registry.replay.max_bytes,
                      "Bytes kept per kernel while no client is connected")
        ->capture_default_str();
    serve->add_option("--ws-ping-interval", o.ws_ping_interval,
                      "Seconds between WebSocket pings; a client silent for twice this is "
                      "dropped")
        ->capture_default_str();
    serve->add_option("--ws-max-message", o.server.ws_max_message,
                      "Largest WebSocket message accepted from a client, in bytes (1009 above)")
        ->capture_default_str();
    serve->add_option("--ws-high-watermark", o.server.ws_high_watermark,
                      "Send-queue bytes above which a client is behind: its kernel's output "
                      "is held while every client is, else stream/display output to it is "
                      "dropped (with a notice)")
        ->capture_default_str();
    serve->add_option("--ws-low-watermark", o.server.ws_low_watermark,
                      "Send-queue bytes below which output flows again")
        ->capture_default_str();
    serve->add_option("--ws-hard-limit", o.server.ws_hard_limit,
                      "Send-queue bytes above which a slow client is closed with 1013")
        ->capture_default_str();
    serve->add_option("--max-connections", o.server.max_connections,
                      "Maximum concurrent HTTP + WebSocket connections")
        ->capture_default_str();
    serve->add_option("--log-level", o.log_level, "trace, debug, info, warn, error")
        ->envname("KERNELGATE_LOG_LEVEL")
        ->capture_default_str();
    serve->add_option("--log-format", o.log_format, "text or json")
        ->check(CLI::IsMember({"text", "json"}))
        ->envname("KERNELGATE_LOG_FORMAT")
        ->capture_default_str();

    serve->add_option("--certfile", o.certfile, "TLS certificate chain (PEM): serve https/wss")
        ->envname("KERNELGATE_CERTFILE");
    serve->add_option("--keyfile", o.keyfile, "TLS private key (PEM)")
        ->envname("KERNELGATE_KEYFILE");
    serve->add_option("--client-ca", o.client_ca,
                      "CA bundle (PEM): require client certificates signed by it (mutual TLS)")
        ->envname("KERNELGATE_CLIENT_CA");
    serve->add_option("--max-kernels-per-user", o.registry.max_kernels_per_user,
                      "Maximum kernels one user may have (0: unlimited); more is 403")
        ->envname("KERNELGATE_MAX_KERNELS_PER_USER")
        ->capture_default_str();
    serve->add_option("--pepper-file", o.pepper_file,
                      "Server key tokens are hashed under (mode 0600 or a Docker secret) "
                      "[default: <data-dir>/pepper, created if missing]")
        ->envname("KERNELGATE_PEPPER_FILE");
    serve->add_option("--token-default-ttl", o.token_default_ttl,
                      "Expiry of tokens created without one (e.g. 30d)")
        ->capture_default_str();
    serve->add_option("--token-max-ttl", o.token_max_ttl, "Longest expiry a token may have")
        ->capture_default_str();
    serve->add_option("--auth-fail-limit", o.server.auth_fail_limit,
                      "Failed authentications per source address per minute before 429")
        ->capture_default_str();

    // Admin commands: they work on the data dir, also while the gateway runs.
    store_options so;
    auto add_store_opts = [&so](CLI::App* cmd) {
        cmd->add_option("--data-dir", so.data_dir, "The gateway's data dir (as for serve)")
            ->envname("KERNELGATE_DATA_DIR");
        cmd->add_option("--pepper-file", so.pepper_file, "As for serve")
            ->envname("KERNELGATE_PEPPER_FILE");
        cmd->add_option("--token-default-ttl", so.token_default_ttl, "As for serve")
            ->capture_default_str();
        cmd->add_option("--token-max-ttl", so.token_max_ttl, "As for serve")
            ->capture_default_str();
    };
    auto* token_cmd = app.add_subcommand("token", "Create, list and revoke API tokens");
    token_cmd->require_subcommand(1);
    std::string t_user;
    std::string t_expires;
    std::string t_note;
    std::string t_id;
    bool t_admin = false;
    bool t_json = false;
    bool t_all = false;
    auto* t_create = token_cmd->add_subcommand(
        "create", "Create a token and print it (once: only its hash is stored)");
    t_create->add_option("--user", t_user, "Owner of the token (created if new)")->required();
    t_create->add_flag("--admin", t_admin, "Admin role: sees and manages everything");
    t_create->add_option("--expires", t_expires, "Lifetime, e.g. 30d, 12h [default: 30d]");
    t_create->add_option("--note", t_note, "Free text kept with the token (max 256 chars)");
    add_store_opts(t_create);
    auto* t_list = token_cmd->add_subcommand("list", "List tokens (never their secrets)");
    t_list->add_option("--user", t_user, "Only this user's tokens");
    t_list->add_flag("--all", t_all, "Include revoked tokens");
    t_list->add_flag("--json", t_json, "Print JSON");
    add_store_opts(t_list);
    auto* t_revoke = token_cmd->add_subcommand(
        "revoke", "Revoke a token now; the gateway closes its WebSockets (4001) at once");
    t_revoke->add_option("ID", t_id, "Token id (the part after kg_)")->required();
    add_store_opts(t_revoke);

    auto* user_cmd = app.add_subcommand("user", "List, disable and enable users");
    user_cmd->require_subcommand(1);
    std::string u_name;
    auto* u_list = user_cmd->add_subcommand("list", "List users");
    u_list->add_flag("--json", t_json, "Print JSON");
    add_store_opts(u_list);
    auto* u_disable = user_cmd->add_subcommand(
        "disable", "Disable a user: every token stops working and its WebSockets close (4001)");
    u_disable->add_option("NAME", u_name, "User name")->required();
    add_store_opts(u_disable);
    auto* u_enable = user_cmd->add_subcommand("enable", "Enable a disabled user again");
    u_enable->add_option("NAME", u_name, "User name")->required();
    add_store_opts(u_enable);

    auto* pepper_cmd = app.add_subcommand("pepper", "Manage the token hashing key");
    pepper_cmd->require_subcommand(1);
    auto* p_rotate = pepper_cmd->add_subcommand(
        "rotate", "Add a new key version; tokens move to it when next used");
    add_store_opts(p_rotate);

    std::vector<std::string> ks_dirs;
    bool ks_no_conda = false;
    bool ks_json = false;
    auto* ks = app.add_subcommand("kernelspecs", "List the kernelspecs the gateway would serve");
    ks->add_option("--kernel-dir", ks_dirs, "Extra directory of kernelspecs (repeatable)");
    ks->add_flag("--no-conda", ks_no_conda, "Skip conda environments");
    ks->add_flag("--json", ks_json, "Print JSON");

    CLI11_PARSE(app, argc, argv);
    if (serve->parsed()) {
        try {
            apply_config_file(*serve);
        } catch (const CLI::Error& e) {
            std::cerr << "kernelgate serve: " << e.what() << std::endl;
            return 2;
        }
    }
    try {
        if (serve->parsed()) {
            return run_serve(o, argv);
        }
        if (ks->parsed()) {
            return run_kernelspecs(ks_dirs, ks_no_conda, ks_json);
        }
        if (t_create->parsed()) {
            auto store = open_store(so);
            const auto ttl = t_expires.empty() ? std::chrono::seconds(0)
                                               : kg::auth::parse_duration(t_expires);
            auto c = store.create(t_user, t_admin ? kg::auth::role_t::admin
                                                  : kg::auth::role_t::user,
                                  ttl, t_note, cli_actor());
            store.audit(cli_actor(), "token.create",
                        c.info.id + " user=" + t_user + (t_admin ? " role=admin" : " role=user"),
                        "cli");
            std::cout << c.token << std::endl;
            std::cerr << "token id " << c.info.id << " for " << t_user << " ("
                      << kg::auth::role_name(c.info.role) << "), expires "
                      << kg::auth::to_iso(c.info.expires_at)
                      << ". This is the only time it is shown." << std::endl;
            return 0;
        }
        if (t_list->parsed()) {
            auto store = open_store(so);
            const auto rows = store.list(t_user, t_all);
            if (t_json) {
                nlohmann::json j = nlohmann::json::array();
                for (const auto& t : rows) {
                    j.push_back(token_row(t));
                }
                std::cout << j.dump(2) << std::endl;
                return 0;
            }
            std::cout << "ID                          USER            ROLE   EXPIRES                "
                         "      STATE    NOTE\n";
            const auto now = kg::auth::clock::now();
            for (const auto& t : rows) {
                const char* state = t.revoked_at ? "revoked" : t.expires_at <= now ? "expired"
                                                                                     : "active";
                std::printf("%-27s %-15s %-6s %-28s %-8s %s\n", t.id.c_str(), t.user.c_str(),
                            std::string(kg::auth::role_name(t.role)).c_str(),
                            kg::auth::to_iso(t.expires_at).c_str(), state, t.note.c_str());
            }
            return 0;
        }
        if (t_revoke->parsed()) {
            auto store = open_store(so);
            if (!store.get(t_id)) {
                std::cerr << "kernelgate: no token with id " << t_id << std::endl;
                return 1;
            }
            const bool changed = store.revoke(t_id, cli_actor());
            store.audit(cli_actor(), "token.revoke", t_id, "cli");
            std::cout << (changed ? "revoked " : "already revoked ") << t_id << std::endl;
            return 0;
        }
        if (u_list->parsed()) {
            auto store = open_store(so);
            const auto users = store.users();
            if (t_json) {
                nlohmann::json j = nlohmann::json::array();
                for (const auto& u : users) {
                    j.push_back({{"name", u.name},
                                 {"disabled", u.disabled},
                                 {"active_tokens", u.active_tokens}});
                }
                std::cout << j.dump(2) << std::endl;
                return 0;
            }
            for (const auto& u : users) {
                std::cout << u.name << "\t" << (u.disabled ? "disabled" : "enabled") << "\t"
                          << u.active_tokens << " active tokens\n";
            }
            return 0;
        }
        if (u_disable->parsed() || u_enable->parsed()) {
            auto store = open_store(so);
            const bool disable = u_disable->parsed();
            if (!store.set_user_disabled(u_name, disable, cli_actor())) {
                std::cerr << "kernelgate: no user named " << u_name << std::endl;
                return 1;
            }
            store.audit(cli_actor(), disable ? "user.disable" : "user.enable", u_name, "cli");
            std::cout << (disable ? "disabled " : "enabled ") << u_name << std::endl;
            return 0;
        }
        if (p_rotate->parsed()) {
            const fs::path data_dir = so.data_dir.empty() ? fs::path(default_data_dir())
                                                          : fs::path(so.data_dir);
            const auto file = so.pepper_file.empty() ? data_dir / "pepper"
                                                     : fs::path(so.pepper_file);
            std::cout << "pepper version " << kg::auth::pepper::rotate(file)
                      << " added; restart the gateway to sign new tokens with it" << std::endl;
            return 0;
        }
    } catch (const std::exception& e) {
        std::cerr << "kernelgate: " << e.what() << std::endl;
        return 1;
    }
    return 0;
}
