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
// Usage: kg-echo-kernel -f CONNECTION_FILE [--slow-start MS]
//   --slow-start MS       bind the sockets, then wait MS before serving (as ipykernel does
//                         while it imports): what a client sends meanwhile queues up
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "zmq_protocol/connection_info.hpp"
#include "zmq_protocol/json_scan.hpp"
#include "zmq_protocol/wire_codec.hpp"

namespace zp = kernelgate::zmq_protocol;
using nlohmann::json;

namespace {

std::atomic<bool> g_interrupted{false};

struct kernel
{
    zmq::context_t ctx{1};
    zmq::socket_t shell{ctx, zmq::socket_type::router};
    zmq::socket_t control{ctx, zmq::socket_type::router};
    zmq::socket_t stdin_{ctx, zmq::socket_type::router};
    zmq::socket_t iopub{ctx, zmq::socket_type::pub};
    zmq::socket_t hb{ctx, zmq::socket_type::rep};
    zp::signer sign;
    zp::signer bad_sign{"not-the-key"};
    zp::replay_guard guard;
    std::string session = zp::new_uuid();
    int execution_count = 0;
    std::vector<std::string_view> parts_;  // reused per message
    std::vector<zmq::message_t> frames_;
    std::vector<std::string_view> views_;

    std::size_t startup_backlog = 0;  // shell requests waiting when serving began

    explicit kernel(const zp::connection_info& c) : sign(c.key)
    {
        for (auto* s : {&shell, &control, &stdin_, &iopub, &hb}) {
            s->set(zmq::sockopt::linger, 0);
            s->set(zmq::sockopt::sndhwm, 0);  // a benchmark kernel never drops
        }
        shell.bind(c.endpoint(c.shell_port));
        control.bind(c.endpoint(c.control_port));
        stdin_.bind(c.endpoint(c.stdin_port));
        iopub.bind(c.endpoint(c.iopub_port));
        hb.bind(c.endpoint(c.hb_port));
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

    void send(zmq::socket_t& s, const zp::message& m, const zp::signer& with)
    {
        // Straight from the message's parts into libzmq's frames (one copy), signed on the
        // stack: the kernel's own cost stays small next to the gateway's.
        const auto json = zp::wire_json_parts(m);
        std::array<char, zp::signer::hex_size> sig{};
        with.sign_hex(sig.data(), json[0], json[1], json[2], json[3]);
        parts_.resize(zp::wire_part_count(m));
        zp::wire_parts(m, std::string_view(sig.data(), with.enabled() ? sig.size() : 0), parts_);
        for (std::size_t i = 0; i < parts_.size(); ++i) {
            s.send(zmq::buffer(parts_[i].data(), parts_[i].size()),
                   i + 1 < parts_.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
        }
    }

    void publish(const zp::message& parent, std::string_view type, std::string content)
    {
        send(iopub, make(type, parent, std::move(content)), sign);
    }

    void status(const zp::message& parent, const char* state)
    {
        publish(parent, "status", std::string(R"({"execution_state":")") + state + "\"}");
    }

    void stream(const zp::message& parent, const std::string& text)
    {
        publish(parent, "stream", json{{"name", "stdout"}, {"text", text}}.dump());
    }

    void reply(zmq::socket_t& s, const zp::message& req, std::string_view type,
               std::string content)
    {
        auto m = make(type, req, std::move(content));
        m.identities = req.identities;
        send(s, m, sign);
    }

    void execute(zmq::socket_t& s, const zp::message& req)
    {
        const std::string code = zp::json_string_field(req.content, "code").value_or("");
        ++execution_count;
        status(req, "busy");
        auto starts = [&](const char* p) { return code.rfind(p, 0) == 0; };
        bool error = false;
        if (starts("stream:")) {
            std::size_t n = std::stoull(code.substr(7));
            const std::string chunk(65536, 'x');
            while (n > 0) {
                const auto k = std::min(n, chunk.size());
                stream(req, chunk.substr(0, k));
                n -= k;
            }
        } else if (starts("flood:")) {
            const auto colon = code.find(':', 6);
            const auto n = std::stoull(code.substr(6, colon - 6));
            const auto size = colon == std::string::npos ? 10 : std::stoull(code.substr(colon + 1));
            const std::string text(size, 'y');
            for (std::size_t i = 0; i < n; ++i) {
                stream(req, text);
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
                for (std::size_t i = 0; i < frames.size(); ++i) {
                    iopub.send(zmq::buffer(frames[i]), i + 1 < frames.size()
                                                            ? zmq::send_flags::sndmore
                                                            : zmq::send_flags::none);
                }
            } else {
                send(iopub, bad, bad_sign);
            }
            stream(req, code.substr(none ? 6 : 7));
        } else if (starts("replay:")) {
            auto m = make("stream", req, json{{"name", "stdout"}, {"text", code.substr(7)}}.dump());
            send(iopub, m, sign);
            send(iopub, m, sign);  // byte-identical: same signature
        } else if (code == "hang") {
            g_interrupted = false;
            while (!g_interrupted) {
                zmq::pollitem_t item{control.handle(), 0, ZMQ_POLLIN, 0};
                zmq::poll(&item, 1, std::chrono::milliseconds(20));
                if ((item.revents & ZMQ_POLLIN) != 0) {
                    handle(control);
                }
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

    /// Handles one message waiting on s (false in *got if there was none). Returns false on
    /// shutdown.
    bool handle(zmq::socket_t& s, bool* got = nullptr)
    {
        frames_.clear();
        if (!zmq::recv_multipart(s, std::back_inserter(frames_), zmq::recv_flags::dontwait)) {
            if (got != nullptr) {
                *got = false;
            }
            return true;
        }
        if (got != nullptr) {
            *got = true;
        }
        views_.clear();
        for (auto& f : frames_) {
            views_.push_back(f.to_string_view());
        }
        auto decoded = zp::decode_frames(views_, sign, &guard);
        if (!decoded) {
            std::cerr << "kg-echo-kernel: dropped message: " << decoded.error().message() << "\n";
            return true;
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
            return false;
        } else if (type == "comm_info_request") {
            reply(s, req, "comm_info_reply", R"({"status":"ok","comms":{}})");
        } else {
            // Unknown requests get an error reply so clients never wait forever.
            reply(s, req, type.size() > 8 ? type.substr(0, type.size() - 8) + "_reply"
                                          : std::string("error_reply"),
                  R"({"status":"error","ename":"NotImplemented","evalue":"","traceback":[]})");
        }
        return true;
    }

    void run(std::chrono::milliseconds slow_start)
    {
        if (slow_start.count() > 0) {
            std::this_thread::sleep_for(slow_start);
            for (bool got = true; got;) {
                if (!handle(shell, &got)) {
                    return;
                }
                startup_backlog += got ? 1 : 0;
            }
        }
        status(zp::message{}, "starting");
        for (;;) {
            std::array<zmq::pollitem_t, 3> items{{{shell.handle(), 0, ZMQ_POLLIN, 0},
                                                   {control.handle(), 0, ZMQ_POLLIN, 0},
                                                   {hb.handle(), 0, ZMQ_POLLIN, 0}}};
            zmq::poll(items.data(), items.size(), std::chrono::milliseconds(-1));
            if ((items[2].revents & ZMQ_POLLIN) != 0) {
                zmq::message_t ping;
                if (hb.recv(ping, zmq::recv_flags::dontwait)) {
                    hb.send(ping, zmq::send_flags::none);
                }
            }
            // Everything waiting is handled before the next poll (control first, then up to
            // 64 shell requests): a pipelined burst costs one poll, not one per request.
            for (bool got = true; got && (items[1].revents & ZMQ_POLLIN) != 0;) {
                if (!handle(control, &got)) {
                    return;
                }
            }
            bool got = true;
            for (int i = 0; got && i < 64 && (items[0].revents & ZMQ_POLLIN) != 0; ++i) {
                if (!handle(shell, &got)) {
                    return;
                }
            }
        }
    }
};

} // namespace

int main(int argc, char** argv)
{
    std::string file;
    std::chrono::milliseconds slow_start{0};
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if ((a == "-f" || a == "--connection-file") && i + 1 < argc) {
            file = argv[++i];
        } else if (a == "--slow-start" && i + 1 < argc) {
            slow_start = std::chrono::milliseconds(std::atoi(argv[++i]));
        } else if (a == "-h" || a == "--help") {
            std::cout << "usage: kg-echo-kernel -f CONNECTION_FILE [--slow-start MS]\n"
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
        kernel k(info.value());
        k.run(slow_start);
    } catch (const std::exception& e) {
        std::cerr << "kg-echo-kernel: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
