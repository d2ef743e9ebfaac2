// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/routes.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <spdlog/spdlog.h>

#include "gateway/server.hpp"
#include "gateway/ws_frames.hpp"
#include "zmq_protocol/wire_codec.hpp"

namespace kernelgate::gateway {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view k_version = "0.1.0";

std::vector<std::string_view> split_path(std::string_view p)
{
    std::vector<std::string_view> out;
    std::size_t pos = 0;
    while (pos < p.size()) {
        auto slash = p.find('/', pos);
        if (slash == std::string_view::npos) {
            slash = p.size();
        }
        if (slash > pos) {
            out.push_back(p.substr(pos, slash - pos));
        }
        pos = slash + 1;
    }
    return out;
}

bool looks_like_id(std::string_view s)
{
    // Jupyter Server's route pattern: \w+-\w+-\w+-\w+-\w+
    if (s.empty() || s.size() > 64) {
        return false;
    }
    int dashes = 0;
    for (char c : s) {
        if (c == '-') {
            ++dashes;
        } else if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '_') {
            return false;
        }
    }
    return dashes == 4;
}

/// Parses a JSON body with a depth cap; nullopt on anything but valid JSON.
std::optional<json> parse_body(const request& req)
{
    const auto& body = req.body();
    if (body.empty()) {
        return json::object();
    }
    if (json_depth(body) > 64) {
        return std::nullopt;
    }
    auto j = json::parse(body, nullptr, false);
    if (j.is_discarded()) {
        return std::nullopt;
    }
    return j;
}

/// Turns a callback-style registry operation into an awaitable. Not a coroutine itself
/// (g++ 12 mishandles non-trivial by-value coroutine parameters): it returns the awaitable
/// that async_initiate builds. The completion is posted, so it never runs inside the
/// registry's call stack.
template <class T, class Start>
net::awaitable<T> await_callback(Start start)
{
    return net::async_initiate<decltype(net::use_awaitable), void(T)>(
        [start = std::move(start)](auto handler) mutable {
            auto h = std::make_shared<decltype(handler)>(std::move(handler));
            start([h](T v) {
                auto ex = net::get_associated_executor(*h);
                net::post(ex, [h, v = std::move(v)]() mutable { (*h)(std::move(v)); });
            });
        },
        net::use_awaitable);
}

using start_result = std::pair<sessions::kernel_ptr, std::optional<sessions::failure>>;
using op_result = std::optional<sessions::failure>;

/// Starts a kernel for `who`. Its KERNEL_USERNAME is the authenticated user: a client value
/// that differs is overwritten (and logged), never trusted.
net::awaitable<start_result> start_kernel(server& srv, std::string name, json env,
                                          const auth::identity& who)
{
    if (env.is_object()) {
        if (auto it = env.find("KERNEL_USERNAME");
            it != env.end() && (!it->is_string() || it->get<std::string>() != who.user)) {
            spdlog::warn("KERNEL_USERNAME from the client overwritten with the token's user {}",
                         who.user);
        }
        env["KERNEL_USERNAME"] = who.user;
    } else if (env.is_null()) {
        env = json{{"KERNEL_USERNAME", who.user}};
    }
    return await_callback<start_result>(
        [&srv, name = std::move(name), env = std::move(env), owner = who.user](auto done) {
            srv.registry().start(name, env, owner,
                                 [done](sessions::kernel_ptr k, op_result f) {
                                     done({std::move(k), std::move(f)});
                                 });
        });
}

net::awaitable<op_result> shutdown_kernel(server& srv, sessions::kernel_ptr k)
{
    return await_callback<op_result>(
        [&srv, k = std::move(k)](auto done) { srv.registry().shutdown(k, done); });
}

net::awaitable<op_result> restart_kernel(server& srv, sessions::kernel_ptr k)
{
    return await_callback<op_result>(
        [&srv, k = std::move(k)](auto done) { srv.registry().restart(k, done); });
}

response failure_response(const sessions::failure& f)
{
    return error_response(static_cast<http::status>(f.status), f.message);
}

/// How a session request answers a kernel that could not be started.
enum class session_start
{
    create,  ///< POST /api/sessions: an unknown kernelspec (404) is a 501 naming it in
             ///< short_message; other failures keep their own status
    change,  ///< PATCH /api/sessions/{id}: every failure is a 501
};

/// A session's new kernel, or the response to send when it could not be started.
struct session_kernel
{
    sessions::kernel_ptr kernel;
    std::optional<response> error;
};

/// Starts the kernel a session request names; a kernelspec that does not exist is answered
/// 501 Not Implemented, as Jupyter Server does. Callers co_await it at once, so the
/// arguments bound to name and env outlive it.
net::awaitable<session_kernel> start_session_kernel(server& srv, const std::string& name,
                                                    const json& env, const auth::identity& who,
                                                    session_start mode)
{
    auto [k, f] = co_await start_kernel(srv, name, env, who);
    if (!f) {
        co_return session_kernel{std::move(k), std::nullopt};
    }
    if (mode == session_start::create && f->status != 404) {
        co_return session_kernel{nullptr, failure_response(*f)};
    }
    json body = {{"reason", "Not Implemented"}, {"message", f->message}};
    if (mode == session_start::create) {
        body["short_message"] = "Kernel not found: " + name;
    }
    co_return session_kernel{nullptr, json_response(http::status::not_implemented, body)};
}

json spec_model(const server& srv, const sessions::kernelspec& s)
{
    json resources = json::object();
    for (const auto& f : s.resource_files()) {
        auto key = f;
        if (const auto dot = key.rfind('.'); dot != std::string::npos &&
                                             key.rfind("logo-", 0) == 0) {
            key = key.substr(0, dot);  // "logo-64x64.png" -> "logo-64x64"
        }
        resources[key] = srv.config().base_url + "kernelspecs/" + s.name + "/" + f;
    }
    return {{"name", s.name}, {"spec", s.spec_json()}, {"resources", resources}};
}

json session_model(const server& srv, const sessions::session_record& s)
{
    json j = {{"id", s.id}, {"path", s.path}, {"name", s.name}, {"type", s.type}};
    if (auto k = srv.registry().find(s.kernel_id)) {
        j["kernel"] = k->model();
    } else {
        j["kernel"] = nullptr;
    }
    if (s.type == "notebook") {
        j["notebook"] = {{"path", s.path}, {"name", s.name}};
    }
    return j;
}

std::string mime_type(const std::string& file)
{
    if (file.ends_with(".png")) {
        return "image/png";
    }
    if (file.ends_with(".svg")) {
        return "image/svg+xml";
    }
    if (file.ends_with(".js")) {
        return "application/javascript";
    }
    if (file.ends_with(".css")) {
        return "text/css";
    }
    return "application/octet-stream";
}

response kernelspec_resource(server& srv, const request& req, std::string_view name,
                             std::string_view file)
{
    const auto* spec = srv.registry().find_spec(std::string(name));
    const std::string f(file);
    if (spec == nullptr || f.find('/') != std::string::npos ||
        f.find('\\') != std::string::npos || f.find('\0') != std::string::npos) {
        return error_response(http::status::not_found, "Not Found");
    }
    const auto allowed = spec->resource_files();
    if (std::find(allowed.begin(), allowed.end(), f) == allowed.end()) {
        return error_response(http::status::not_found, "Not Found");
    }
    // The resolved path must lie inside the spec dir (symlinks pointing out are refused).
    std::error_code ec;
    const auto dir = fs::weakly_canonical(spec->dir, ec);
    const auto target = fs::weakly_canonical(spec->dir / f, ec);
    const auto prefix = dir.string() + "/";
    if (ec || target.string().rfind(prefix, 0) != 0) {
        return error_response(http::status::not_found, "Not Found");
    }
    std::ifstream in(target, std::ios::binary);
    if (!in) {
        return error_response(http::status::not_found, "Not Found");
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    response res(http::status::ok, req.version());
    res.set(http::field::content_type, mime_type(f));
    res.set("Content-Security-Policy", "sandbox");
    res.body() = req.method() == http::verb::head ? std::string() : ss.str();
    if (req.method() == http::verb::head) {
        res.content_length(ss.str().size());
    }
    return res;
}

std::string metrics_text(server& srv)
{
    const auto& m = srv.metrics();
    auto& reg = srv.registry();
    std::uint64_t rejected = 0;
    std::uint64_t replay_dropped = 0;
    std::uint64_t output_holds = 0;
    std::uint64_t output_hold_timeouts = 0;
    std::uint64_t kmsgs_in = 0;
    std::uint64_t kmsgs_out = 0;
    std::map<std::string, int> states;
    for (const auto& k : reg.list()) {
        rejected += k->rejected_total();
        replay_dropped += k->replay_dropped_total();
        output_holds += k->output_holds_total();
        output_hold_timeouts += k->output_hold_timeouts_total();
        if (const auto* st = k->stats()) {
            kmsgs_in += st->received;
            kmsgs_out += st->sent;
        }
        ++states[k->execution_state()];
    }
    std::ostringstream o;
    auto counter = [&](const char* name, const char* help, std::uint64_t v) {
        o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " counter\n"
          << name << ' ' << v << '\n';
    };
    auto gauge = [&](const char* name, const char* help, std::uint64_t v) {
        o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " gauge\n"
          << name << ' ' << v << '\n';
    };
    counter("kernelgate_http_requests_total", "HTTP requests handled", m.http_requests);
    o << "kernelgate_http_responses_total{class=\"2xx\"} " << m.http_2xx << '\n'
      << "kernelgate_http_responses_total{class=\"4xx\"} " << m.http_4xx << '\n'
      << "kernelgate_http_responses_total{class=\"5xx\"} " << m.http_5xx << '\n';
    counter("kernelgate_auth_failures_total", "Requests refused for a bad or missing token",
            m.auth_failures);
    counter("kernelgate_auth_throttled_total",
            "Failed authentications answered 429 (source over --auth-fail-limit)",
            m.auth_throttled);
    counter("kernelgate_ws_closed_auth_total",
            "WebSockets closed with 4001 (token revoked or expired, user disabled)",
            m.ws_closed_auth);
    gauge("kernelgate_token_watch",
          "1: token database changes (revocations by another process) wake the gateway "
          "through inotify; 0: it polls every 20 ms",
          srv.watching_tokens() ? 1 : 0);
    counter("kernelgate_token_db_wakeups_total",
            "Token database changes seen through inotify (each re-checks open WebSockets' tokens)",
            m.token_db_wakeups);
    gauge("kernelgate_websockets", "Open kernel WebSockets", srv.ws_count());
    gauge("kernelgate_ws_queued_bytes", "Bytes waiting in WebSocket send queues",
          srv.ws_queued_bytes());
    gauge("kernelgate_ws_read_buffer_bytes",
          "Bytes WebSocket sessions hold for reading their clients' messages",
          srv.ws_read_buffer_bytes());
    counter("kernelgate_websockets_opened_total", "Kernel WebSockets opened", m.ws_opened);
    counter("kernelgate_ws_messages_in_total", "Frames received from clients", m.ws_messages_in);
    counter("kernelgate_ws_messages_out_total", "Frames sent to clients", m.ws_messages_out);
    counter("kernelgate_ws_bytes_out_total", "Bytes sent to clients", m.ws_bytes_out);
    counter("kernelgate_ws_socket_writes_total",
            "Writes to client sockets (each carries every frame buffered since the last)",
            m.ws_socket_writes);
    counter("kernelgate_ws_bad_frames_total", "Malformed or refused client frames",
            m.ws_bad_frames);
    counter("kernelgate_ws_encodings_total", "Frames encoded (once per format per message)",
            m.ws_encodings);
    counter("kernelgate_ws_slow_client_dropped_total",
            "Output messages dropped for clients over the high watermark", m.ws_dropped_slow);
    counter("kernelgate_ws_slow_client_closed_total",
            "Clients closed for exceeding the send queue limit", m.ws_closed_slow);
    counter("kernelgate_ws_closed_silent_total",
            "Clients dropped for sending nothing, not even a pong, for a ping interval after a "
            "ping",
            m.ws_closed_silent);
    counter("kernelgate_ws_close_deadline_total",
            "Close handshakes the client did not finish within 5 s (the connection was cut)",
            m.ws_close_deadline);
    gauge("kernelgate_kernels", "Kernels known to the gateway", reg.size());
    o << "# HELP kernelgate_kernels_by_state Kernels by execution state\n"
      << "# TYPE kernelgate_kernels_by_state gauge\n";
    for (const auto& [st, n] : states) {
        o << "kernelgate_kernels_by_state{state=\"" << st << "\"} " << n << '\n';
    }
    counter("kernelgate_kernels_started_total", "Kernels started", reg.kernels_started_total());
    counter("kernelgate_kernels_restarted_total", "Kernel restarts (requested and automatic)",
            reg.kernels_restarted_total());
    counter("kernelgate_kernels_died_total", "Kernels that died unexpectedly",
            reg.kernels_died_total());
    counter("kernelgate_kernels_culled_total", "Idle kernels culled",
            reg.kernels_culled_total());
    o << "# HELP kernelgate_kernel_start_seconds Kernel launches by kernelspec, from launching "
         "the process to its first kernel_info_reply and iopub message (starts, restarts, "
         "warm-pool kernels)\n# TYPE kernelgate_kernel_start_seconds histogram\n";
    for (const auto& [spec, h] : reg.start_seconds()) {  // names are [A-Za-z0-9._-]
        h.write(o, "kernelgate_kernel_start_seconds", "kernelspec=\"" + spec + "\"");
    }
    counter("kernelgate_kernel_start_failures_total",
            "Kernel launches that never became ready (the program could not run, it exited, "
            "or it did not answer within --launch-timeout)",
            reg.start_failures_total());
    if (const auto pools = reg.warm_pools(); !pools.empty()) {
        o << "# HELP kernelgate_warm_pool_kernels Warm-pool kernels by kernelspec and state "
             "(target: --warm-pool)\n# TYPE kernelgate_warm_pool_kernels gauge\n";
        for (const auto& [name, st] : pools) {
            for (const auto& [what, n] : {std::pair<const char*, std::size_t>{"target", st.target},
                                          {"ready", st.ready},
                                          {"starting", st.starting}}) {
                o << "kernelgate_warm_pool_kernels{kernelspec=\"" << name << "\",state=\"" << what
                  << "\"} " << n << '\n';
            }
        }
        o << "# HELP kernelgate_warm_pool_stopped 1: the kernelspec's pool stopped refilling "
             "(launches kept failing)\n# TYPE kernelgate_warm_pool_stopped gauge\n";
        for (const auto& [name, st] : pools) {
            o << "kernelgate_warm_pool_stopped{kernelspec=\"" << name << "\"} "
              << (st.stopped ? 1 : 0) << '\n';
        }
        counter("kernelgate_warm_pool_claims_total", "Kernel starts served from a warm pool",
                reg.pool_claims_total());
        counter("kernelgate_warm_pool_misses_total",
                "Starts of a pooled kernelspec that launched a kernel of their own (none ready, "
                "or env for a kernel that is not Python)",
                reg.pool_misses_total());
    }
    counter("kernelgate_kernel_messages_in_total", "Messages received from live kernels",
            kmsgs_in);
    counter("kernelgate_kernel_messages_out_total", "Messages sent to live kernels", kmsgs_out);
    counter("kernelgate_kernel_messages_rejected_total",
            "Kernel messages dropped: bad, missing or replayed signature (live kernels)",
            rejected);
    counter("kernelgate_replay_dropped_total",
            "Messages dropped from full replay buffers (live kernels)", replay_dropped);
    counter("kernelgate_output_holds_total",
            "Times a kernel's output was held back because every client of it was behind "
            "(live kernels)",
            output_holds);
    counter("kernelgate_output_hold_timeouts_total",
            "Holds of a kernel's output that ran out (clients still behind after 2 s: from then "
            "on they lose skippable output)",
            output_hold_timeouts);
    if (const auto* heap = srv.heap_keeper(); heap != nullptr && heap->active()) {
        gauge("kernelgate_heap_free_bytes",
              "Bytes freed and held by malloc for reuse at the last look, once a second "
              "(--heap-keep; after a trim their pages are back with the system, but they "
              "still count)",
              heap->kept());
        counter("kernelgate_heap_trims_total",
                "Times kept memory went back to the system once memory use had settled",
                heap->trims());
    }
    if (const auto* loop = srv.loop()) {
        const auto& ls = loop->stats();
        gauge("kernelgate_busy_poll_microseconds", "Largest busy-poll window (--busy-poll; 0: off)",
              static_cast<std::uint64_t>(loop->busy_poll().count()));
        gauge("kernelgate_busy_poll_window_microseconds",
              "The busy-poll window as adapted to the traffic",
              static_cast<std::uint64_t>(loop->window().count()));
        const auto* hint = loop->predictive() ? loop->hint() : nullptr;
        gauge("kernelgate_predictive_poll_microseconds",
              "Longest expected wait polled for (--predictive-poll; 0: off)",
              hint != nullptr ? static_cast<std::uint64_t>(hint->budget.count()) : 0);
        counter("kernelgate_predictive_poll_predictions_total",
                "Times a kernel or its client was expected to send within the budget",
                hint != nullptr ? hint->predictions : 0);
        counter("kernelgate_loop_sleeps_total",
                "Times the event loop blocked waiting for events (busy or predictive polling "
                "on)",
                ls.sleeps);
        counter("kernelgate_busy_poll_hits_total",
                "Times busy or predictive polling found work the loop would have slept for",
                ls.busy_poll_hits);
        o << "# HELP kernelgate_busy_poll_idle_seconds_total Time spent busy polling without "
             "finding work (CPU spent at most)\n# TYPE kernelgate_busy_poll_idle_seconds_total counter\n"
          << "kernelgate_busy_poll_idle_seconds_total "
          << std::chrono::duration<double>(ls.busy_poll_idle).count() << '\n';
        gauge("kernelgate_busy_poll_paused",
              "1 while busy or predictive polling is paused: CPU pressure above "
              "--busy-poll-max-pressure, or no pressure information",
              loop->paused() || loop->pressure_unknown() ? 1 : 0);
        counter("kernelgate_busy_poll_pressure_pauses_total",
                "Times busy polling paused because other tasks waited for a CPU",
                ls.pressure_pauses);
        o << "# HELP kernelgate_cpu_pressure Share of the last interval some task waited for a "
             "CPU (Linux PSI; read only while busy polling is guarded)\n"
             "# TYPE kernelgate_cpu_pressure gauge\nkernelgate_cpu_pressure "
          << ls.cpu_pressure << '\n';
    }
    return o.str();
}

json token_json(const auth::token_info& t)
{
    json j = {{"id", t.id},
              {"user", t.user},
              {"role", auth::role_name(t.role)},
              {"note", t.note},
              {"created_by", t.created_by},
              {"created_at", auth::to_iso(t.created_at)},
              {"expires_at", auth::to_iso(t.expires_at)},
              {"last_used_at", t.last_used_at ? json(auth::to_iso(*t.last_used_at)) : json()},
              {"revoked_at", t.revoked_at ? json(auth::to_iso(*t.revoked_at)) : json()},
              {"revoked_by", t.revoked_by}};
    return j;
}

/// /api/admin/...: tokens, users, audit. Admin role only (403 otherwise: these routes are
/// known to exist, so refusing them leaks nothing).
net::awaitable<response> handle_admin(server& srv, const request& req,
                                      const std::vector<std::string_view>& parts,
                                      const auth::identity& who, const std::string& source)
{
    if (!who.admin()) {
        co_return error_response(http::status::forbidden, "admin role required");
    }
    auto& tokens = srv.tokens();
    const auto method = req.method();
    const bool get = method == http::verb::get;
    auto audit = [&](const std::string& action, const std::string& target) {
        tokens.audit(who.user + (who.token_id.empty() ? "" : " (token " + who.token_id + ")"),
                     action, target, source);
        spdlog::info("audit: {} {} {} from {}", who.user, action, target, source);
    };
    try {
        if (parts.size() >= 3 && parts[2] == "tokens") {
            if (parts.size() == 3 && get) {
                json list = json::array();
                const auto user = parse_target(to_sv(req.target()), "/").query;
                const auto it = user.find("user");
                for (const auto& t : tokens.list(it == user.end() ? "" : it->second)) {
                    list.push_back(token_json(t));
                }
                co_return json_response(http::status::ok, list);
            }
            if (parts.size() == 3 && method == http::verb::post) {
                auto body = parse_body(req);
                if (!body || !body->is_object() || !body->value("user", json()).is_string()) {
                    co_return error_response(http::status::bad_request,
                                             "body must be {\"user\": NAME, ...}");
                }
                const auto user = (*body)["user"].get<std::string>();
                const bool admin = body->value("admin", json(false)).is_boolean() &&
                                   body->value("admin", false);
                std::chrono::seconds ttl{0};
                if (body->contains("expires")) {
                    if (!(*body)["expires"].is_string()) {
                        co_return error_response(http::status::bad_request,
                                                 "expires must be a string like \"30d\"");
                    }
                    ttl = auth::parse_duration((*body)["expires"].get<std::string>());
                }
                const auto note = body->value("note", json("")).is_string()
                                      ? body->value("note", std::string())
                                      : std::string();
                auto c = tokens.create(user, admin ? auth::role_t::admin : auth::role_t::user,
                                       ttl, note, who.user);
                audit("token.create", c.info.id + " user=" + user +
                                          (admin ? " role=admin" : " role=user"));
                auto j = token_json(c.info);
                j["token"] = c.token;
                co_return json_response(http::status::created, j);
            }
            if (parts.size() == 4 && (method == http::verb::delete_)) {
                const std::string id(parts[3]);
                if (!tokens.get(id)) {
                    co_return error_response(http::status::not_found, "no such token");
                }
                tokens.revoke(id, who.user);
                audit("token.revoke", id);
                srv.close_sockets_of({id}, "token revoked");
                co_return response(http::status::no_content, 11);
            }
            co_return error_response(http::status::method_not_allowed, "Method Not Allowed");
        }
        if (parts.size() >= 3 && parts[2] == "users") {
            if (parts.size() == 3 && get) {
                json list = json::array();
                for (const auto& u : tokens.users()) {
                    std::size_t kernels = 0;
                    for (const auto& k : srv.registry().list()) {
                        kernels += k->owner() == u.name ? 1 : 0;
                    }
                    list.push_back({{"name", u.name},
                                    {"disabled", u.disabled},
                                    {"created_at", auth::to_iso(u.created_at)},
                                    {"active_tokens", u.active_tokens},
                                    {"kernels", kernels}});
                }
                co_return json_response(http::status::ok, list);
            }
            if (parts.size() == 5 && method == http::verb::post &&
                (parts[4] == "disable" || parts[4] == "enable")) {
                const std::string name(parts[3]);
                const bool disable = parts[4] == "disable";
                if (!tokens.set_user_disabled(name, disable, who.user)) {
                    co_return error_response(http::status::not_found, "no such user");
                }
                audit(disable ? "user.disable" : "user.enable", name);
                if (disable) {
                    std::vector<std::string> ids;
                    for (const auto& t : tokens.list(name, false)) {
                        ids.push_back(t.id);
                    }
                    srv.close_sockets_of(ids, "user disabled");
                    auto body = parse_body(req);
                    if (body && body->is_object() &&
                        body->value("shutdown_kernels", json(false)) == json(true)) {
                        for (const auto& k : srv.registry().list()) {
                            if (k->owner() == name) {
                                co_await shutdown_kernel(srv, k);
                            }
                        }
                        audit("user.shutdown_kernels", name);
                    }
                }
                co_return response(http::status::no_content, 11);
            }
            co_return error_response(http::status::method_not_allowed, "Method Not Allowed");
        }
        if (parts.size() == 3 && parts[2] == "audit" && get) {
            json list = json::array();
            for (const auto& e : tokens.audit_log(500)) {
                list.push_back({{"at", auth::to_iso(e.at)},
                                {"actor", e.actor},
                                {"action", e.action},
                                {"target", e.target},
                                {"source", e.source}});
            }
            co_return json_response(http::status::ok, list);
        }
    } catch (const auth::auth_error& e) {
        co_return error_response(http::status::bad_request, e.what());
    }
    co_return error_response(http::status::not_found, "Not Found");
}

} // namespace

std::string percent_decode(std::string_view in, bool plus_is_space)
{
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '%' && i + 2 < in.size() + 0 && i + 2 <= in.size() - 1 + 0) {
            auto hex = [](char h) -> int {
                if (h >= '0' && h <= '9') {
                    return h - '0';
                }
                if (h >= 'a' && h <= 'f') {
                    return h - 'a' + 10;
                }
                if (h >= 'A' && h <= 'F') {
                    return h - 'A' + 10;
                }
                return -1;
            };
            const int hi = hex(in[i + 1]);
            const int lo = hex(in[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out += static_cast<char>(hi * 16 + lo);
                i += 2;
                continue;
            }
        }
        out += (plus_is_space && c == '+') ? ' ' : c;
    }
    return out;
}

parsed_target parse_target(std::string_view target, std::string_view base_url)
{
    parsed_target t;
    const auto q = target.find('?');
    const auto raw_path = target.substr(0, q);
    if (q != std::string_view::npos) {
        auto query = target.substr(q + 1);
        std::size_t pos = 0;
        while (pos <= query.size()) {
            auto amp = query.find('&', pos);
            if (amp == std::string_view::npos) {
                amp = query.size();
            }
            const auto kv = query.substr(pos, amp - pos);
            if (!kv.empty()) {
                const auto eq = kv.find('=');
                const auto key = percent_decode(kv.substr(0, eq), true);
                const auto val = eq == std::string_view::npos
                                     ? std::string()
                                     : percent_decode(kv.substr(eq + 1), true);
                t.query.emplace(key, val);
            }
            pos = amp + 1;
        }
    }
    if (raw_path.substr(0, base_url.size()) != base_url &&
        std::string(raw_path) + "/" != base_url) {
        t.under_base = false;
        return t;
    }
    const auto rest = raw_path.size() >= base_url.size() ? raw_path.substr(base_url.size())
                                                         : std::string_view();
    t.path = percent_decode(rest);
    while (!t.path.empty() && t.path.back() == '/') {
        t.path.pop_back();
    }
    return t;
}

response json_response(http::status status, const json& body)
{
    response res(status, 11);
    res.set(http::field::content_type, "application/json");
    res.body() = body.dump(-1, ' ', false, json::error_handler_t::replace);
    return res;
}

response error_response(http::status status, std::string_view message)
{
    std::string reason(http::obsolete_reason(status));
    return json_response(status, {{"reason", reason}, {"message", std::string(message)}});
}

void finish_response(const server& srv, response& res, bool keep_alive, unsigned version)
{
    const auto& cors = srv.config().cors;
    res.version(version);
    res.set(http::field::server, "kernelgate");
    res.set("X-Content-Type-Options", "nosniff");
    if (!cors.allow_origin.empty()) {
        res.set(http::field::access_control_allow_origin, cors.allow_origin);
    }
    if (!cors.allow_methods.empty()) {
        res.set(http::field::access_control_allow_methods, cors.allow_methods);
    }
    if (!cors.allow_headers.empty()) {
        res.set(http::field::access_control_allow_headers, cors.allow_headers);
    }
    if (!cors.allow_credentials.empty()) {
        res.set(http::field::access_control_allow_credentials, cors.allow_credentials);
    }
    if (!cors.expose_headers.empty()) {
        res.set(http::field::access_control_expose_headers, cors.expose_headers);
    }
    if (!cors.max_age.empty()) {
        res.set(http::field::access_control_max_age, cors.max_age);
    }
    if (res.find(http::field::cache_control) == res.end()) {
        res.set(http::field::cache_control, "no-store");
    }
    res.keep_alive(keep_alive);
    if (res.find(http::field::content_length) == res.end()) {
        res.prepare_payload();
    }
}

bool is_open_route(std::string_view path)
{
    return path == "api/health";
}

bool is_channels_route(std::string_view path, std::string& kernel_id)
{
    const auto parts = split_path(path);
    if (parts.size() == 4 && parts[0] == "api" && parts[1] == "kernels" &&
        parts[3] == "channels" && looks_like_id(parts[2])) {
        kernel_id = std::string(parts[2]);
        return true;
    }
    return false;
}

net::awaitable<response> handle_rest(server& srv, const request& req, const parsed_target& t,
                                     const auth::identity& who, const std::string& source)
{
    // Another user's kernel is answered exactly like a kernel that does not exist.
    auto visible = [&](const sessions::kernel_ptr& k) {
        return k && (who.admin() || k->owner() == who.user);
    };
    auto find_kernel = [&](const std::string& id) -> sessions::kernel_ptr {
        auto k = srv.registry().find(id);
        return visible(k) ? k : nullptr;
    };
    auto& reg = srv.registry();
    const auto parts = split_path(t.path);
    const auto method = req.method();
    const bool get = method == http::verb::get || method == http::verb::head;
    auto not_allowed = [] {
        return error_response(http::status::method_not_allowed, "Method Not Allowed");
    };

    if (parts.empty()) {
        co_return error_response(http::status::not_found, "Not Found");
    }
    if (parts[0] == "api" && parts.size() == 1) {
        if (!get) {
            co_return not_allowed();
        }
        co_return json_response(http::status::ok, {{"version", k_version},
                                                   {"gateway_version", k_version},
                                                   {"kernelgate", k_version}});
    }
    if (parts[0] == "api" && parts.size() == 2 && parts[1] == "health") {
        auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now() - srv.started())
                          .count();
        co_return json_response(srv.stopping() ? http::status::service_unavailable
                                               : http::status::ok,
                                {{"status", srv.stopping() ? "stopping" : "ok"},
                                 {"kernels", reg.size()},
                                 {"websockets", srv.ws_count()},
                                 {"uptime_seconds", uptime}});
    }
    if (parts[0] == "metrics" && parts.size() == 1) {
        if (!who.admin()) {
            co_return error_response(http::status::forbidden, "admin role required");
        }
        response res(http::status::ok, 11);
        res.set(http::field::content_type, "text/plain; version=0.0.4");
        res.body() = metrics_text(srv);
        co_return res;
    }
    // /kernelspecs/{name}/{file}
    if (parts[0] == "kernelspecs") {
        if (!get) {
            co_return not_allowed();
        }
        if (parts.size() != 3) {
            co_return error_response(http::status::not_found, "Not Found");
        }
        co_return kernelspec_resource(srv, req, parts[1], parts[2]);
    }
    if (parts[0] != "api" || parts.size() < 2) {
        co_return error_response(http::status::not_found, "Not Found");
    }

    if (parts[1] == "me" && parts.size() == 2) {
        if (!get) {
            co_return not_allowed();
        }
        co_return json_response(http::status::ok,
                                {{"user", who.user},
                                 {"token_id", who.token_id},
                                 {"role", auth::role_name(who.role)},
                                 {"expires_at", who.token_id.empty()
                                                    ? json(nullptr)
                                                    : json(auth::to_iso(who.expires_at))}});
    }
    if (parts[1] == "admin") {
        co_return co_await handle_admin(srv, req, parts, who, source);
    }

    // /api/kernelspecs[/{name}]
    if (parts[1] == "kernelspecs") {
        if (!get) {
            co_return not_allowed();
        }
        if (parts.size() == 2) {
            json specs = json::object();
            for (const auto& [name, s] : reg.specs()) {
                specs[name] = spec_model(srv, s);
            }
            co_return json_response(http::status::ok,
                                    {{"default", reg.default_spec()}, {"kernelspecs", specs}});
        }
        if (parts.size() == 3) {
            const auto* s = reg.find_spec(std::string(parts[2]));
            if (s == nullptr) {
                co_return error_response(http::status::not_found,
                                         "Kernel spec " + std::string(parts[2]) + " not found");
            }
            co_return json_response(http::status::ok, spec_model(srv, *s));
        }
        co_return error_response(http::status::not_found, "Not Found");
    }

    // /api/kernels...
    if (parts[1] == "kernels") {
        if (parts.size() == 2) {
            if (get) {
                json list = json::array();
                for (const auto& k : reg.list()) {
                    if (visible(k)) {
                        list.push_back(k->model());
                    }
                }
                co_return json_response(http::status::ok, list);
            }
            if (method != http::verb::post) {
                co_return not_allowed();
            }
            auto body = parse_body(req);
            if (!body || !body->is_object()) {
                co_return error_response(http::status::bad_request, "Invalid JSON in body");
            }
            std::string name;
            if (body->contains("name")) {
                if (!(*body)["name"].is_string()) {
                    co_return error_response(http::status::bad_request,
                                             "name must be a string");
                }
                name = (*body)["name"].get<std::string>();
            }
            json env = body->value("env", json());
            if (!env.is_null() && !env.is_object()) {
                co_return error_response(http::status::bad_request, "env must be an object");
            }
            if (srv.stopping()) {
                co_return error_response(http::status::service_unavailable, "server stopping");
            }
            auto [k, f] = co_await start_kernel(srv, name, env, who);
            if (f) {
                co_return failure_response(*f);
            }
            auto res = json_response(http::status::created, k->model());
            res.set(http::field::location, srv.config().base_url + "api/kernels/" + k->id());
            co_return res;
        }
        const std::string id(parts[2]);
        auto k = looks_like_id(id) ? find_kernel(id) : nullptr;
        if (!k) {
            co_return error_response(http::status::not_found, "Kernel does not exist: " +
                                                                  (looks_like_id(id) ? id : ""));
        }
        if (parts.size() == 3) {
            if (get) {
                co_return json_response(http::status::ok, k->model());
            }
            if (method == http::verb::delete_) {
                auto f = co_await shutdown_kernel(srv, k);
                if (f) {
                    co_return failure_response(*f);
                }
                response res(http::status::no_content, 11);
                co_return res;
            }
            co_return not_allowed();
        }
        if (parts.size() == 4 && parts[3] == "interrupt") {
            if (method != http::verb::post) {
                co_return not_allowed();
            }
            if (auto f = reg.interrupt(k)) {
                co_return failure_response(*f);
            }
            co_return response(http::status::no_content, 11);
        }
        if (parts.size() == 4 && parts[3] == "restart") {
            if (method != http::verb::post) {
                co_return not_allowed();
            }
            if (auto f = co_await restart_kernel(srv, k)) {
                co_return failure_response(*f);
            }
            co_return json_response(http::status::ok, k->model());
        }
        if (parts.size() == 4 && parts[3] == "channels") {
            co_return error_response(http::status::bad_request,
                                     "WebSocket upgrade expected on this route");
        }
        co_return error_response(http::status::not_found, "Not Found");
    }

    // /api/sessions...
    if (parts[1] == "sessions") {
        // Sessions whose kernel is gone are dropped before any answer.
        for (const auto& s : reg.sessions()) {
            if (!reg.find(s.kernel_id)) {
                reg.remove_session(s.id);
            }
        }
        if (parts.size() == 2) {
            if (get) {
                json list = json::array();
                for (const auto& s : reg.sessions()) {
                    if (visible(reg.find(s.kernel_id))) {
                        list.push_back(session_model(srv, s));
                    }
                }
                co_return json_response(http::status::ok, list);
            }
            if (method != http::verb::post) {
                co_return not_allowed();
            }
            auto body = parse_body(req);
            if (!body || !body->is_object()) {
                co_return error_response(http::status::bad_request, "Invalid JSON in body");
            }
            std::string path;
            if (body->contains("path") && (*body)["path"].is_string()) {
                path = (*body)["path"].get<std::string>();
            } else if (body->contains("notebook") && (*body)["notebook"].is_object() &&
                       (*body)["notebook"].value("path", json()).is_string()) {
                path = (*body)["notebook"]["path"].get<std::string>();
                spdlog::warn("sessions API: deprecated {{\"notebook\":{{\"path\"}}}} body");
            }
            if (path.empty()) {
                co_return error_response(http::status::bad_request, "File path missing");
            }
            std::string type = body->value("type", json("notebook")).is_string()
                                   ? body->value("type", std::string("notebook"))
                                   : std::string("notebook");
            std::string name = body->value("name", json("")).is_string()
                                   ? body->value("name", std::string())
                                   : std::string();
            std::optional<sessions::session_record> existing;
            for (const auto& sr : reg.sessions()) {
                // Paths are per user: another user's session at the same path is not ours.
                if (sr.path == path && visible(reg.find(sr.kernel_id))) {
                    existing = sr;
                    break;
                }
            }
            if (existing) {
                auto res = json_response(http::status::created, session_model(srv, *existing));
                res.set(http::field::location,
                        srv.config().base_url + "api/sessions/" + existing->id);
                co_return res;
            }
            json kernel = body->value("kernel", json::object());
            if (!kernel.is_object()) {
                co_return error_response(http::status::bad_request, "kernel must be an object");
            }
            sessions::session_record rec{zmq_protocol::new_uuid(), path, name, type, ""};
            if (kernel.contains("id") && kernel["id"].is_string()) {
                auto existing_k = find_kernel(kernel["id"].get<std::string>());
                if (!existing_k) {
                    co_return error_response(http::status::not_found,
                                             "Kernel does not exist: " +
                                                 kernel["id"].get<std::string>());
                }
                rec.kernel_id = existing_k->id();
            } else {
                std::string kname = kernel.value("name", json("")).is_string()
                                        ? kernel.value("name", std::string())
                                        : std::string();
                auto started = co_await start_session_kernel(
                    srv, kname, body->value("env", json()), who, session_start::create);
                if (started.error) {
                    co_return std::move(*started.error);
                }
                rec.kernel_id = started.kernel->id();
            }
            reg.put_session(rec);
            auto res = json_response(http::status::created, session_model(srv, rec));
            res.set(http::field::location, srv.config().base_url + "api/sessions/" + rec.id);
            co_return res;
        }
        const std::string sid(parts[2]);
        auto rec = reg.find_session(sid);
        if (rec && !visible(reg.find(rec->kernel_id))) {
            rec.reset();
        }
        if (!rec || parts.size() != 3) {
            co_return error_response(http::status::not_found, "Session not found: " +
                                                                  (looks_like_id(sid) ? sid
                                                                                      : ""));
        }
        if (get) {
            co_return json_response(http::status::ok, session_model(srv, *rec));
        }
        if (method == http::verb::delete_) {
            auto k = reg.find(rec->kernel_id);
            reg.remove_session(sid);
            if (!k) {
                co_return error_response(http::status::gone, "Kernel already gone");
            }
            if (auto f = co_await shutdown_kernel(srv, k)) {
                co_return failure_response(*f);
            }
            co_return response(http::status::no_content, 11);
        }
        if (method == http::verb::patch) {
            auto body = parse_body(req);
            if (!body || !body->is_object() || req.body().empty()) {
                co_return error_response(http::status::bad_request, "No JSON data provided");
            }
            for (const char* field : {"path", "name", "type"}) {
                if (body->contains(field) && (*body)[field].is_string()) {
                    const auto v = (*body)[field].get<std::string>();
                    if (std::string_view(field) == "path") {
                        rec->path = v;
                    } else if (std::string_view(field) == "name") {
                        rec->name = v;
                    } else {
                        rec->type = v;
                    }
                }
            }
            if (body->contains("kernel") && (*body)["kernel"].is_object()) {
                const auto& kj = (*body)["kernel"];
                if (kj.contains("id") && kj["id"].is_string()) {
                    auto nk = find_kernel(kj["id"].get<std::string>());
                    if (!nk) {
                        co_return error_response(http::status::bad_request,
                                                 "No such kernel: " +
                                                     kj["id"].get<std::string>());
                    }
                    rec->kernel_id = nk->id();
                } else if (kj.contains("name") && kj["name"].is_string()) {
                    auto old = reg.find(rec->kernel_id);
                    auto started = co_await start_session_kernel(
                        srv, kj["name"].get<std::string>(), json(), who, session_start::change);
                    if (started.error) {
                        co_return std::move(*started.error);
                    }
                    rec->kernel_id = started.kernel->id();
                    reg.put_session(*rec);
                    if (old) {
                        co_await shutdown_kernel(srv, old);
                    }
                }
            }
            reg.put_session(*rec);
            co_return json_response(http::status::ok, session_model(srv, *rec));
        }
        co_return not_allowed();
    }
    co_return error_response(http::status::not_found, "Not Found");
}

} // namespace kernelgate::gateway
