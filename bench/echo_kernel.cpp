// SPDX-License-Identifier: BSD-3-Clause
// kg-echo-kernel: a minimal Jupyter kernel on kernelgate's own wire library.
//
// It answers fast enough that a benchmark measures the gateway, not the kernel, and it can
// misbehave on request to test what a real kernel cannot produce. The "code" of an
// execute_request is a command:
//   <anything>            stream the code back on stdout, execute_result, reply
//   stream:N              stream N bytes (in 64 KiB chunks) then reply
//   flood:N:SIZE          N stream messages of SIZE bytes each, then reply
//   results:N:SIZE        N execute_result messages of SIZE bytes (output a gateway must not drop)
//   badsig:TEXT           one stream signed with a wrong key, then TEXT properly signed
//   nosig:TEXT            one stream with an empty signature, then TEXT properly signed
//   replay:TEXT           the same signed stream frame sent twice
//   hang                  busy forever (until interrupted by SIGINT or interrupt_request)
//   exit:CODE             exit the process at once
//   stats                 stream "startup_backlog=N": the shell requests already waiting
//                         when the kernel started serving (see --slow-start)
// Usage: kg-echo-kernel -f CONNECTION_FILE [--slow-start MS] [--libzmq]
//   --slow-start MS       bind the sockets, then wait MS before serving (as ipykernel does
//                         while it imports): what a client sends meanwhile queues up
//   --libzmq              serve through libzmq sockets (its I/O thread) instead of
//                         kernelgate's own ZMTP listeners on one poll(2) loop
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <poll.h>

#include <nlohmann/json.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "zmq_protocol/connection_info.hpp"
#include "zmq_protocol/json_scan.hpp"
#include "zmq_protocol/wire_codec.hpp"
#include "zmq_protocol/zmtp_listener.hpp"

namespace zp = kernelgate::zmq_protocol;
using nlohmann::json;

namespace {

/// Output a stream or flood lets wait for slow readers before it waits for them in turn.
constexpr std::size_t k_pace_bytes = 1u << 20;

std::atomic<bool> g_interrupted{false};

enum class channel
{
    shell,
    control,
    stdin_,
    iopub,
};

/// The socket of a channel, among a transport's four.
template <class Socket>
Socket& pick(channel c, Socket& shell, Socket& control, Socket& stdin_, Socket& iopub)
{
    switch (c) {
    case channel::shell: return shell;
    case channel::control: return control;
    case channel::stdin_: return stdin_;
    case channel::iopub: return iopub;
    }
    return iopub;
}

/// The kernel's five sockets. The heartbeat is echoed inside; the rest is handed over.
class transport
{
public:
    using handler = std::function<void(channel, std::span<const std::string_view>)>;
    virtual ~transport() = default;
    virtual void send(channel c, std::span<const std::string_view> parts) = 0;
    /// Writes what was sent, then waits up to `timeout` (negative: forever) for requests on
    /// control (and, unless control_only, shell and the heartbeat) and hands them to fn
    /// (control first). Returns how many sockets had something (0: nothing in the timeout).
    virtual int serve(std::chrono::milliseconds timeout, bool control_only, const handler& fn) = 0;
    /// Writes what was sent without waiting.
    virtual void flush() = 0;
    /// Called between the messages of a long output: waits (a bounded time) while more
    /// than `limit` bytes of c's output wait for its readers. false: the time ran out.
    virtual bool pace(channel c, std::size_t limit) = 0;
};

/// kernelgate's own ZMTP server side (zmtp_listener) on one poll(2) loop: no I/O thread.
/// What handlers send is written at the next serve() or flush(), so the replies to a burst of
/// requests leave in one write per connection.
class own_transport final : public transport
{
public:
    explicit own_transport(const zp::connection_info& c)
        : shell_(zp::zmtp_listener::kind::router, c.transport, c.ip, c.shell_port),
          control_(zp::zmtp_listener::kind::router, c.transport, c.ip, c.control_port),
          stdin_(zp::zmtp_listener::kind::router, c.transport, c.ip, c.stdin_port),
          iopub_(zp::zmtp_listener::kind::pub, c.transport, c.ip, c.iopub_port),
          hb_(zp::zmtp_listener::kind::rep, c.transport, c.ip, c.hb_port)
    {
    }

    void send(channel c, std::span<const std::string_view> parts) override
    {
        of(c).send(parts);
    }

    void flush() override
    {
        // Output in the order a client expects to see it: status on iopub before the reply.
        for (auto* l : {&iopub_, &shell_, &control_, &stdin_, &hb_}) {
            l->flush();
        }
    }

    bool pace(channel c, std::size_t limit) override
    {
        return of(c).drain(limit, std::chrono::seconds(2));
    }

    int serve(std::chrono::milliseconds timeout, bool control_only, const handler& fn) override
    {
        flush();
        // serve() runs nested while a handler waits ("hang" watches control): its own list.
        auto& fds = fds_[depth_ > 0 ? 1 : 0];
        fds.clear();
        std::array<std::size_t, 5> count{};
        std::array<zp::zmtp_listener*, 5> order{&control_, &shell_, &hb_, &stdin_, &iopub_};
        const std::size_t watched = control_only ? 1 : order.size();
        for (std::size_t i = 0; i < watched; ++i) {
            count[i] = order[i]->watch(fds);
        }
        const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
        if (ready > 0) {
            ++depth_;
            std::span<const pollfd> rest(fds);
            for (std::size_t i = 0; i < watched; ++i) {
                auto* l = order[i];
                const auto mine = rest.first(count[i]);
                rest = rest.subspan(count[i]);
                if (l == &hb_) {
                    hb_.serve(mine, [this](std::span<const std::string_view> p) { hb_.send(p); });
                } else if (l == &control_ || l == &shell_) {
                    const channel ch = l == &control_ ? channel::control : channel::shell;
                    l->serve(mine, [&](std::span<const std::string_view> p) { fn(ch, p); });
                } else {
                    l->serve(mine, [](std::span<const std::string_view>) {});
                }
            }
            --depth_;
        }
        return std::max(ready, 0);
    }

private:
    zp::zmtp_listener& of(channel c) { return pick(c, shell_, control_, stdin_, iopub_); }

    zp::zmtp_listener shell_;
    zp::zmtp_listener control_;
    zp::zmtp_listener stdin_;
    zp::zmtp_listener iopub_;
    zp::zmtp_listener hb_;
    std::array<std::vector<pollfd>, 2> fds_;
    int depth_ = 0;
};

/// The same sockets through libzmq (--libzmq): the comparison for own_transport.
class libzmq_transport final : public transport
{
public:
    explicit libzmq_transport(const zp::connection_info& c)
    {
        for (auto* s : {&shell_, &control_, &stdin_, &iopub_, &hb_}) {
            s->set(zmq::sockopt::linger, 0);
            s->set(zmq::sockopt::sndhwm, 0);  // a benchmark kernel never drops
        }
        shell_.bind(c.endpoint(c.shell_port));
        control_.bind(c.endpoint(c.control_port));
        stdin_.bind(c.endpoint(c.stdin_port));
        iopub_.bind(c.endpoint(c.iopub_port));
        hb_.bind(c.endpoint(c.hb_port));
    }

    void send(channel c, std::span<const std::string_view> parts) override
    {
        auto& s = of(c);
        for (std::size_t i = 0; i < parts.size(); ++i) {
            s.send(zmq::buffer(parts[i].data(), parts[i].size()),
                   i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
        }
    }

    int serve(std::chrono::milliseconds timeout, bool control_only, const handler& fn) override
    {
        std::array<zmq::pollitem_t, 3> items{{{control_.handle(), 0, ZMQ_POLLIN, 0},
                                               {shell_.handle(), 0, ZMQ_POLLIN, 0},
                                               {hb_.handle(), 0, ZMQ_POLLIN, 0}}};
        const int ready = zmq::poll(items.data(), control_only ? 1 : items.size(), timeout);
        if (!control_only && (items[2].revents & ZMQ_POLLIN) != 0) {
            zmq::message_t ping;
            if (hb_.recv(ping, zmq::recv_flags::dontwait)) {
                hb_.send(ping, zmq::send_flags::none);
            }
        }
        // Everything waiting is handled before the next poll (control first, then up to 64
        // shell requests): a pipelined burst costs one poll, not one per request.
        if ((items[0].revents & ZMQ_POLLIN) != 0) {
            while (take(control_, channel::control, fn)) {
            }
        }
        if ((items[1].revents & ZMQ_POLLIN) != 0) {
            for (int i = 0; i < 64 && take(shell_, channel::shell, fn); ++i) {
            }
        }
        return ready;
    }

    void flush() override {}
    /// libzmq's I/O thread writes while we go on; its queue is its own.
    bool pace(channel, std::size_t) override { return true; }

private:
    zmq::socket_t& of(channel c) { return pick(c, shell_, control_, stdin_, iopub_); }

    /// Hands over one message waiting on s; false if there was none.
    bool take(zmq::socket_t& s, channel c, const handler& fn)
    {
        std::vector<zmq::message_t> frames;
        if (!zmq::recv_multipart(s, std::back_inserter(frames), zmq::recv_flags::dontwait)) {
            return false;
        }
        std::vector<std::string_view> views;
        views.reserve(frames.size());
        for (auto& f : frames) {
            views.push_back(f.to_string_view());
        }
        fn(c, views);
        return true;
    }

    zmq::context_t ctx_{1};
    zmq::socket_t shell_{ctx_, zmq::socket_type::router};
    zmq::socket_t control_{ctx_, zmq::socket_type::router};
    zmq::socket_t stdin_{ctx_, zmq::socket_type::router};
    zmq::socket_t iopub_{ctx_, zmq::socket_type::pub};
    zmq::socket_t hb_{ctx_, zmq::socket_type::rep};
};

struct kernel
{
    std::unique_ptr<transport> io;
    zp::signer sign;
    zp::signer bad_sign{"not-the-key"};
    zp::replay_guard guard;
    std::string session = zp::new_uuid();
    int execution_count = 0;
    std::vector<std::string_view> parts_;  // reused per message
    bool stopping = false;                 // a shutdown_request was answered

    std::size_t startup_backlog = 0;  // shell requests waiting when serving began

    kernel(const zp::connection_info& c, bool use_libzmq) : sign(c.key)
    {
        if (use_libzmq) {
            io = std::make_unique<libzmq_transport>(c);
        } else {
            io = std::make_unique<own_transport>(c);
        }
    }

    zp::message make(std::string_view type, const zp::message& parent, std::string content)
    {
        zp::message m;
        m.header = zp::make_header(type, session, "kernel");
        m.parent_header = parent.header;
        m.metadata = "{}";
        m.content = std::move(content);
        return m;
    }

    void send(channel c, const zp::message& m, const zp::signer& with)
    {
        // Straight from the message's parts to the transport (one copy), signed on the
        // stack: the kernel's own cost stays small next to the gateway's.
        const auto json = zp::wire_json_parts(m);
        std::array<char, zp::signer::hex_size> sig{};
        with.sign_hex(sig.data(), json[0], json[1], json[2], json[3]);
        parts_.resize(zp::wire_part_count(m));
        zp::wire_parts(m, std::string_view(sig.data(), with.enabled() ? sig.size() : 0), parts_);
        io->send(c, parts_);
    }

    void publish(const zp::message& parent, std::string_view type, std::string content)
    {
        send(channel::iopub, make(type, parent, std::move(content)), sign);
    }

    void status(const zp::message& parent, const char* state)
    {
        publish(parent, "status", std::string(R"({"execution_state":")") + state + "\"}");
    }

    static std::string stream_content(const std::string& text)
    {
        return json{{"name", "stdout"}, {"text", text}}.dump();
    }

    void stream(const zp::message& parent, const std::string& text)
    {
        publish(parent, "stream", stream_content(text));
    }

    void reply(channel s, const zp::message& req, std::string_view type,
               std::string content)
    {
        auto m = make(type, req, std::move(content));
        m.identities = req.identities;
        send(s, m, sign);
    }

    void execute(channel s, const zp::message& req)
    {
        const std::string code = zp::json_string_field(req.content, "code").value_or("");
        ++execution_count;
        status(req, "busy");
        auto starts = [&](const char* p) { return code.rfind(p, 0) == 0; };
        bool error = false;
        if (starts("stream:")) {
            std::size_t n = std::stoull(code.substr(7));
            // The content is made once: serializing 64 KiB of text per message cost this
            // kernel more than signing and sending it, and bounded the stream scenario.
            constexpr std::size_t chunk = 65536;
            const std::string full = stream_content(std::string(chunk, 'x'));
            bool pacing = true;
            while (n > 0) {
                const auto k = std::min(n, chunk);
                publish(req, "stream", k == chunk ? full : stream_content(std::string(k, 'x')));
                n -= k;
                pacing = pacing && io->pace(channel::iopub, k_pace_bytes);
            }
        } else if (starts("flood:")) {
            const auto colon = code.find(':', 6);
            const auto n = std::stoull(code.substr(6, colon - 6));
            const auto size = colon == std::string::npos ? 10 : std::stoull(code.substr(colon + 1));
            const std::string content = stream_content(std::string(size, 'y'));
            bool pacing = true;
            for (std::size_t i = 0; i < n; ++i) {
                publish(req, "stream", content);
                pacing = pacing && io->pace(channel::iopub, k_pace_bytes);
            }
        } else if (starts("results:")) {
            const auto colon = code.find(':', 8);
            const auto n = std::stoull(code.substr(8, colon - 8));
            const auto size = colon == std::string::npos ? 10 : std::stoull(code.substr(colon + 1));
            const std::string text(size, 'r');
            for (std::size_t i = 0; i < n; ++i) {
                publish(req, "execute_result",
                        json{{"execution_count", execution_count},
                             {"data", {{"text/plain", text}}},
                             {"metadata", json::object()}}
                            .dump());
            }
        } else if (starts("badsig:") || starts("nosig:")) {
            const bool none = starts("nosig:");
            auto bad = make("stream", req, json{{"name", "stdout"}, {"text", "FORGED"}}.dump());
            if (none) {
                auto frames = zp::encode_frames(bad, sign);
                frames[1].clear();  // the signature frame after the delimiter
                const std::vector<std::string_view> views(frames.begin(), frames.end());
                io->send(channel::iopub, views);
            } else {
                send(channel::iopub, bad, bad_sign);
            }
            stream(req, code.substr(none ? 6 : 7));
        } else if (starts("replay:")) {
            auto m = make("stream", req, json{{"name", "stdout"}, {"text", code.substr(7)}}.dump());
            send(channel::iopub, m, sign);
            send(channel::iopub, m, sign);  // byte-identical: same signature
        } else if (code == "hang") {
            g_interrupted = false;
            while (!g_interrupted) {
                io->serve(std::chrono::milliseconds(20), true,
                          [this](channel c, std::span<const std::string_view> p) { handle(c, p); });
            }
            error = true;
        } else if (code == "stats") {
            stream(req, "startup_backlog=" + std::to_string(startup_backlog));
        } else if (starts("exit:")) {
            std::_Exit(std::atoi(code.c_str() + 5));
        } else {
            stream(req, code);
            publish(req, "execute_result",
                    json{{"execution_count", execution_count},
                         {"data", {{"text/plain", code}}},
                         {"metadata", json::object()}}
                        .dump());
        }
        if (error) {
            publish(req, "error", json{{"ename", "KeyboardInterrupt"}, {"evalue", ""},
                                       {"traceback", json::array()}}
                                      .dump());
            reply(s, req, "execute_reply",
                  json{{"status", "error"}, {"execution_count", execution_count},
                       {"ename", "KeyboardInterrupt"}, {"evalue", ""},
                       {"traceback", json::array()}}
                      .dump());
        } else {
            reply(s, req, "execute_reply",
                  json{{"status", "ok"}, {"execution_count", execution_count},
                       {"user_expressions", json::object()}, {"payload", json::array()}}
                      .dump());
        }
        status(req, "idle");
    }

    /// Handles one request (its frames, routing id first). Sets `stopping` on shutdown.
    void handle(channel s, std::span<const std::string_view> frames)
    {
        if (stopping) {
            return;
        }
        auto decoded = zp::decode_frames(frames, sign, &guard);
        if (!decoded) {
            std::cerr << "kg-echo-kernel: dropped message: " << decoded.error().message() << "\n";
            return;
        }
        auto& req = decoded.value();
        const auto type = zp::json_string_field(req.header, "msg_type").value_or("");
        if (type == "kernel_info_request") {
            status(req, "busy");
            static const std::string info =
                json{{"status", "ok"}, {"protocol_version", "5.3"},
                     {"implementation", "kg-echo"}, {"implementation_version", "0.1"},
                     {"language_info", {{"name", "echo"}, {"version", "1"},
                                        {"mimetype", "text/plain"},
                                        {"file_extension", ".txt"}}},
                     {"banner", "kernelgate echo kernel"}}
                    .dump();
            reply(s, req, "kernel_info_reply", info);
            status(req, "idle");
        } else if (type == "execute_request") {
            execute(s, req);
        } else if (type == "interrupt_request") {
            g_interrupted = true;
            reply(s, req, "interrupt_reply", R"({"status":"ok"})");
        } else if (type == "shutdown_request") {
            const auto c = json::parse(req.content, nullptr, false);
            reply(s, req, "shutdown_reply",
                  json{{"status", "ok"},
                       {"restart", c.is_object() ? c.value("restart", false) : false}}
                      .dump());
            stopping = true;
        } else if (type == "comm_info_request") {
            reply(s, req, "comm_info_reply", R"({"status":"ok","comms":{}})");
        } else {
            // Unknown requests get an error reply so clients never wait forever.
            reply(s, req, type.size() > 8 ? type.substr(0, type.size() - 8) + "_reply"
                                          : std::string("error_reply"),
                  R"({"status":"error","ename":"NotImplemented","evalue":"","traceback":[]})");
        }
    }

    void run(std::chrono::milliseconds slow_start)
    {
        const auto fn = [this](channel c, std::span<const std::string_view> p) { handle(c, p); };
        if (slow_start.count() > 0) {
            // Connections are taken and the heartbeat answered meanwhile (as libzmq's I/O
            // thread and ipykernel's heartbeat thread do), but requests wait until the end.
            std::vector<std::pair<channel, std::vector<std::string>>> waiting;
            const auto until = std::chrono::steady_clock::now() + slow_start;
            for (auto now = std::chrono::steady_clock::now(); now < until;
                 now = std::chrono::steady_clock::now()) {
                io->serve(std::chrono::ceil<std::chrono::milliseconds>(until - now), false,
                          [&](channel c, std::span<const std::string_view> p) {
                              waiting.emplace_back(c, std::vector<std::string>(p.begin(), p.end()));
                          });
            }
            for (const auto& [c, frames] : waiting) {
                startup_backlog += c == channel::shell ? 1 : 0;
                handle(c, std::vector<std::string_view>(frames.begin(), frames.end()));
            }
        }
        status(zp::message{}, "starting");
        while (!stopping) {
            io->serve(std::chrono::milliseconds(-1), false, fn);
        }
        io->flush();  // the shutdown_reply
    }
};

} // namespace

int main(int argc, char** argv)
{
    std::string file;
    std::chrono::milliseconds slow_start{0};
    bool use_libzmq = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if ((a == "-f" || a == "--connection-file") && i + 1 < argc) {
            file = argv[++i];
        } else if (a == "--slow-start" && i + 1 < argc) {
            slow_start = std::chrono::milliseconds(std::atoi(argv[++i]));
        } else if (a == "--libzmq") {
            use_libzmq = true;
        } else if (a == "-h" || a == "--help") {
            std::cout << "usage: kg-echo-kernel -f CONNECTION_FILE [--slow-start MS] [--libzmq]\n"
                         "  --slow-start MS  bind, then wait MS before serving\n"
                         "  --libzmq         serve through libzmq instead of kernelgate's own "
                         "ZMTP listeners\n"
                         "A minimal Jupyter kernel for benchmarks and fault tests; see the "
                         "comment at the top of bench/echo_kernel.cpp for its commands.\n";
            return 0;
        }
    }
    if (file.empty()) {
        std::cerr << "kg-echo-kernel: -f CONNECTION_FILE is required\n";
        return 2;
    }
    auto info = zp::read_connection_file(file);
    if (!info) {
        std::cerr << "kg-echo-kernel: cannot read " << file << ": " << info.error().message()
                  << "\n";
        return 2;
    }
    struct sigaction sa{};
    sa.sa_handler = [](int) { g_interrupted = true; };
    sigaction(SIGINT, &sa, nullptr);
    try {
        kernel k(info.value(), use_libzmq);
        k.run(slow_start);
    } catch (const std::exception& e) {
        std::cerr << "kg-echo-kernel: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
