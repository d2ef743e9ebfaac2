// SPDX-License-Identifier: BSD-3-Clause
// kernelgate: a Jupyter kernel gateway. This file only parses the command line and wires the
// modules together.
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "auth/token_check.hpp"
#include "common/asio_fwd.hpp"
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
    bool no_conda = false;
    double launch_timeout = 60;
    double shutdown_wait = 5;
    int cull_idle_timeout = 0;
    int cull_interval = 300;
    int ws_ping_interval = 30;
    std::string log_level = "info";
    std::string log_format = "text";
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

int run_serve(serve_options& o)
{
    setup_logging(o.log_level, o.log_format);
    // The token is hashed at once; the environment copy is removed so kernels never see it.
    std::string token = o.auth_token;
    ::unsetenv("KERNELGATE_AUTH_TOKEN");
    o.auth_token.assign(o.auth_token.size(), '\0');
    bool generated = false;
    if (token.empty() && !o.no_auth) {
        token = kg::auth::generate_token();
        generated = true;
    }
    if (o.no_auth) {
        spdlog::warn("*** AUTHENTICATION IS DISABLED (--no-auth-i-know-what-i-am-doing): anyone "
                     "who can reach {}:{} can run code as this user ***",
                     o.server.ip, o.server.port);
    }
    kg::auth::static_token tok(token);
    o.server.allow_unauthenticated = o.no_auth;
    o.registry.launch_timeout =
        std::chrono::milliseconds(static_cast<long long>(o.launch_timeout * 1000));
    o.registry.shutdown_wait =
        std::chrono::milliseconds(static_cast<long long>(o.shutdown_wait * 1000));
    o.registry.cull_idle_timeout = std::chrono::seconds(o.cull_idle_timeout);
    o.registry.cull_interval = std::chrono::seconds(std::max(1, o.cull_interval));
    o.registry.env_allowlist = {o.env_allow.begin(), o.env_allow.end()};
    o.server.ws_ping_interval = std::chrono::seconds(std::max(1, o.ws_ping_interval));

    const fs::path data_dir = o.data_dir.empty() ? fs::path(default_data_dir()) : fs::path(o.data_dir);
    fs::create_directories(data_dir);
    fs::permissions(data_dir, fs::perms::owner_all, fs::perm_options::replace);

    kg::net::io_context ioc(1);
    zmq::context_t zctx(1);
    kg::sessions::store db(data_dir / "kernelgate.db");
    kg::sessions::local_host host(ioc, data_dir / "runtime", "127.0.0.1");
    kg::sessions::discovery_options disc;
    for (const auto& d : o.kernel_dirs) {
        disc.extra_kernel_dirs.emplace_back(d);
    }
    disc.include_conda = !o.no_conda;
    kg::sessions::registry reg(ioc, zctx, host, db, o.registry, disc);
    if (reg.specs().empty()) {
        spdlog::warn("no kernelspecs found: install python3-ipykernel or point --kernel-dir at "
                     "a directory of kernelspecs");
    }
    for (const auto& [name, spec] : reg.specs()) {
        spdlog::info("kernelspec {} ({}) from {}", name, spec.display_name, spec.source);
    }
    kg::gateway::server srv(ioc, o.server, reg, std::move(tok));
    std::uint16_t port = 0;
    try {
        port = srv.listen();
    } catch (const std::exception& e) {
        spdlog::critical("cannot listen on {}:{}: {}", o.server.ip, o.server.port, e.what());
        return 1;
    }
    const auto base = kg::gateway::normalize_base_url(o.server.base_url);
    const std::string url = "http://" + o.server.ip + ":" + std::to_string(port) + base;
    spdlog::info("kernelgate listening on {}", url);
    if (generated) {
        // Printed once, to stdout only (not the log): the operator needs it to connect.
        std::cout << "\nkernelgate is running at " << url << "\n"
                  << "  token (shown once; pass --auth-token or KERNELGATE_AUTH_TOKEN to "
                     "choose your own):\n    "
                  << token << "\n"
                  << "  connect Jupyter Server:  jupyter server --gateway-url=" << url
                  << " --GatewayClient.auth_token=<token>\n"
                  << std::endl;
    } else {
        std::cout << "kernelgate is running at " << url << std::endl;
    }
    token.assign(token.size(), '\0');

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
    ioc.run();
    (void)stopping;
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
    if (as_json) {
        nlohmann::json j = nlohmann::json::object();
        for (const auto& [name, s] : specs) {
            j[name] = {{"display_name", s.display_name},
                       {"language", s.language},
                       {"dir", s.dir.string()},
                       {"source", s.source},
                       {"argv", s.argv}};
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
                  << s.dir.string() << "\n";
    }
    return 0;
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
                      "Send-queue bytes above which stream/display output to a slow client is "
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

    std::vector<std::string> ks_dirs;
    bool ks_no_conda = false;
    bool ks_json = false;
    auto* ks = app.add_subcommand("kernelspecs", "List the kernelspecs the gateway would serve");
    ks->add_option("--kernel-dir", ks_dirs, "Extra directory of kernelspecs (repeatable)");
    ks->add_flag("--no-conda", ks_no_conda, "Skip conda environments");
    ks->add_flag("--json", ks_json, "Print JSON");

    CLI11_PARSE(app, argc, argv);
    try {
        if (serve->parsed()) {
            return run_serve(o);
        }
        if (ks->parsed()) {
            return run_kernelspecs(ks_dirs, ks_no_conda, ks_json);
        }
    } catch (const std::exception& e) {
        std::cerr << "kernelgate: " << e.what() << std::endl;
        return 1;
    }
    return 0;
}
