// SPDX-License-Identifier: BSD-3-Clause
// kg-bench: the measuring instrument of kernelgate (issue 4).
//
// Two client kinds run the same scenarios against the same kernels:
//   --target gateway   a WebSocket client through a gateway (kernelgate, Jupyter Server):
//                      POST /api/kernels, then /api/kernels/{id}/channels with the
//                      v1.kernel.websocket.jupyter.org subprotocol or legacy JSON frames;
//                      an https:// --url speaks TLS (https and wss), the certificate checked
//                      against --ca-file and the URL's host;
//   --target direct    a ZeroMQ client talking to a kernel it launches itself (connection file
//                      with fresh ports and key, DEALER + SUB sockets, HMAC-signed): the
//                      physical limit any gateway is measured against.
//
// Scenarios (--scenarios, comma separated; default all):
//   start        kernel start: to kernel_info_reply in the client's hands, and to "ready"
//                (a reply and an iopub message seen); for gateways also the POST itself.
//                With --pair-kernelspec, direct starts take turns with the gateway's and
//                pair_diff_ms is the median of (gateway - direct) within each pair,
//                pair_post_diff_ms the same for the POST alone; after_post_ms is what the
//                client spends between the POST's answer and the first kernel_info_reply
//                (opening the WebSocket, one round trip)
//   kernel_info  sequential kernel_info round trips (p50/p99/mean)
//   execute      sequential execute round trips (execute_reply and iopub idle)
//   flood        pipelined kernel_info requests, --window in flight (requests/s, msgs/s)
//   iopub_flood  one execute that makes the kernel publish --iopub-flood stream messages
//   stream       executes that stream --stream-bytes of output each, --stream-n of them in
//                a row on one kernel (MB/s: their median, and the first's)
//   fanout       1/4/16/32 kernels, one client each, round trips concurrently (aggregate/s)
//   idle_ws      --idle WebSockets held open on one kernel; gateway RSS per connection
//                (needs --gateway-pid; not applicable to direct). Run once per invocation,
//                best on a fresh gateway: memory freed by earlier work is reused and hides
//                the cost.
//   broadcast    --broadcast-clients clients on one kernel all receiving the same iopub
//   idle_kernels --idle-kernels kernels started and left idle, no client connected; gateway
//                RSS per kernel (needs --gateway-pid). Run once per invocation, best on a
//                fresh gateway, as idle_ws
//
// With --gateway-pid, the data-path scenarios also report the gateway's own CPU time per
// round trip / message / MB (gw_cpu_*, from /proc/PID/task/*/schedstat): unlike latency and
// throughput it does not depend on what else the machine is doing. Both targets also report
// the kernels' CPU (kernel_cpu_*: the gateway's child processes, or the ones kg-bench
// launched), kg-bench's own (client_cpu_*), their sum with the gateway's (total_cpu_*) and
// how many cores that sum kept busy (cores_busy): on a small machine a gateway target can
// only keep up with direct ZeroMQ when its total per message is no larger. --kernel-id runs the
// single-kernel scenarios on an existing gateway kernel (bench/profile.sh uses it).
//
// Every wait has a deadline (--timeout) and every measuring loop a time budget (--budget);
// a scenario that fails is reported with its error and the others still run.
// Output: a table on stdout and, with --json FILE, a JSON document (runs and medians).
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <boost/asio/ssl.hpp>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/ssl.hpp>
#include <openssl/evp.h>

#include "common/asio_fwd.hpp"
#include "gateway/batching_stream.hpp"
#include "gateway/ws_frames.hpp"
#include "zmq_protocol/connection_info.hpp"
#include "zmq_protocol/signer.hpp"
#include "zmq_protocol/wire_codec.hpp"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace kernelgate::bench {

namespace zp = zmq_protocol;
namespace fs = std::filesystem;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;
using time_point = clock_type::time_point;
using namespace std::chrono_literals;

/// A failure of one measurement (timeout, refused request, closed connection).
class bench_error : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

/// A scenario that does not apply to this target (reported as skipped, not failed).
class not_applicable : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

double ms_since(time_point t0, time_point t1)
{
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

double us_since(time_point t0, time_point t1)
{
    return std::chrono::duration<double, std::micro>(t1 - t0).count();
}

double seconds_between(time_point t0, time_point t1)
{
    return std::chrono::duration<double>(t1 - t0).count();
}

/// Nearest-rank percentile of an unsorted sample (p in [0, 100]).
double percentile(std::vector<double> v, double p)
{
    if (v.empty()) {
        return std::nan("");
    }
    std::sort(v.begin(), v.end());
    const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    return v[std::clamp<std::size_t>(rank, 1, v.size()) - 1];
}

double mean_of(const std::vector<double>& v)
{
    double s = 0;
    for (const double x : v) {
        s += x;
    }
    return v.empty() ? std::nan("") : s / static_cast<double>(v.size());
}

// ---------------------------------------------------------------------------------------
// Minimal JSON scanning: the client only needs msg_type, the parent's msg_id, the status
// execution_state and the length of stream text, so it never builds a DOM.
// ---------------------------------------------------------------------------------------

constexpr std::size_t npos = std::string_view::npos;

/// s[i] is '"': index one past the closing quote, or npos.
std::size_t skip_string(std::string_view s, std::size_t i)
{
    std::size_t j = i + 1;
    while (j < s.size()) {
        const void* hit = std::memchr(s.data() + j, '"', s.size() - j);
        if (hit == nullptr) {
            return npos;
        }
        const std::size_t q = static_cast<std::size_t>(static_cast<const char*>(hit) - s.data());
        std::size_t backslashes = 0;
        while (q - backslashes > i + 1 && s[q - backslashes - 1] == '\\') {
            ++backslashes;
        }
        if (backslashes % 2 == 0) {
            return q + 1;
        }
        j = q + 1;
    }
    return npos;
}

bool is_space(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

/// s[i] starts a value: index one past its end, or npos.
std::size_t skip_value(std::string_view s, std::size_t i)
{
    if (i >= s.size()) {
        return npos;
    }
    if (s[i] == '"') {
        return skip_string(s, i);
    }
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        while (i < s.size()) {
            const char c = s[i];
            if (c == '"') {
                i = skip_string(s, i);
                if (i == npos) {
                    return npos;
                }
                continue;
            }
            if (c == '{' || c == '[') {
                ++depth;
            } else if (c == '}' || c == ']') {
                if (--depth == 0) {
                    return i + 1;
                }
            }
            ++i;
        }
        return npos;
    }
    while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && !is_space(s[i])) {
        ++i;
    }
    return i;
}

/// Calls f(raw_key, raw_value) for each member of a top-level JSON object (key without its
/// quotes, escapes left as they are). Stops early when f returns false.
template <class F>
bool for_each_member(std::string_view s, F&& f)
{
    std::size_t i = 0;
    auto ws = [&] {
        while (i < s.size() && is_space(s[i])) {
            ++i;
        }
    };
    ws();
    if (i >= s.size() || s[i] != '{') {
        return false;
    }
    ++i;
    for (;;) {
        ws();
        if (i >= s.size()) {
            return false;
        }
        if (s[i] == '}') {
            return true;
        }
        if (s[i] != '"') {
            return false;
        }
        const std::size_t key_end = skip_string(s, i);
        if (key_end == npos) {
            return false;
        }
        const std::string_view key = s.substr(i + 1, key_end - i - 2);
        i = key_end;
        ws();
        if (i >= s.size() || s[i] != ':') {
            return false;
        }
        ++i;
        ws();
        const std::size_t value_end = skip_value(s, i);
        if (value_end == npos) {
            return false;
        }
        if (!f(key, s.substr(i, value_end - i))) {
            return true;
        }
        i = value_end;
        ws();
        if (i < s.size() && s[i] == ',') {
            ++i;
        }
    }
}

std::string_view member(std::string_view obj, std::string_view key)
{
    std::string_view out;
    for_each_member(obj, [&](std::string_view k, std::string_view v) {
        if (k == key) {
            out = v;
            return false;
        }
        return true;
    });
    return out;
}

/// The raw text between the quotes of a string member ("" when absent or not a string).
std::string_view string_member(std::string_view obj, std::string_view key)
{
    const auto v = member(obj, key);
    if (v.size() >= 2 && v.front() == '"') {
        return v.substr(1, v.size() - 2);
    }
    return {};
}

/// What a scenario needs to know about one message from the kernel.
struct incoming
{
    std::string channel;
    std::string msg_type;
    std::string parent_id;
    std::string state;           ///< execution_state of a status message
    std::size_t text_bytes = 0;  ///< length of a stream message's text (raw JSON bytes)
};

incoming summarize(std::string_view channel,
                   std::string_view header,
                   std::string_view parent,
                   std::string_view content)
{
    incoming m;
    m.channel.assign(channel);
    m.msg_type.assign(string_member(header, "msg_type"));
    m.parent_id.assign(string_member(parent, "msg_id"));
    if (m.msg_type == "status") {
        m.state.assign(string_member(content, "execution_state"));
    } else if (m.msg_type == "stream") {
        m.text_bytes = string_member(content, "text").size();
    }
    return m;
}

// ---------------------------------------------------------------------------------------
// Clients: one interface, a WebSocket and a ZeroMQ implementation.
// ---------------------------------------------------------------------------------------

/// One client connection to a kernel. Received messages are queued by a reader coroutine;
/// scenarios take them with recv().
///
/// Thread safety: everything on the single io_context thread of kg-bench.
class client : public std::enable_shared_from_this<client>
{
public:
    explicit client(net::io_context& ioc)
        : signal_(ioc), watchdog_(ioc), session_(zp::new_uuid())
    {
    }
    virtual ~client() = default;
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    virtual net::awaitable<void> send(std::string_view channel, zp::message msg) = 0;
    virtual void close() = 0;

    const std::string& session() const noexcept { return session_; }
    std::uint64_t received() const noexcept { return received_; }
    std::uint64_t rejected() const noexcept { return rejected_; }
    /// Idle clients only count what they receive (their queue would grow for nothing).
    void keep_messages(bool keep) noexcept { keep_ = keep; }

    /// The next message, or nullopt once `until` has passed. Throws if the connection failed.
    net::awaitable<std::optional<incoming>> try_recv(time_point until)
    {
        while (queue_.empty()) {
            if (!failure_.empty()) {
                throw bench_error(failure_);
            }
            if (clock_type::now() >= until) {
                co_return std::nullopt;
            }
            arm_watchdog(until);
            // The signal waits "forever" behind the watchdog: re-arming it is then no
            // timerfd_settime() per message (asio reprograms the timerfd only for the
            // earliest timer), so the client's own wake-ups stay cheap.
            signal_.expires_at(time_point::max());
            waiting_ = true;
            boost::system::error_code ec;
            co_await signal_.async_wait(net::redirect_error(net::use_awaitable, ec));
            waiting_ = false;
        }
        incoming m = std::move(queue_.front());
        queue_.pop_front();
        co_return m;
    }

    net::awaitable<incoming> recv(time_point deadline)
    {
        auto m = co_await try_recv(deadline);
        if (!m) {
            throw bench_error("timed out waiting for a message from the kernel");
        }
        co_return std::move(*m);
    }

protected:
    void deliver(incoming&& m)
    {
        ++received_;
        if (!keep_) {
            return;
        }
        queue_.push_back(std::move(m));
        if (waiting_) {
            signal_.cancel();
        }
    }

    void fail(std::string why)
    {
        if (failure_.empty()) {
            failure_ = why.empty() ? std::string("connection failed") : std::move(why);
        }
        if (waiting_) {
            signal_.cancel();
        }
    }

    void count_rejected() noexcept { ++rejected_; }

private:
    /// Wakes the waiting try_recv() at `until`; armed again only when `until` changes.
    void arm_watchdog(time_point until)
    {
        if (watchdog_at_ == until) {
            return;
        }
        watchdog_at_ = until;
        watchdog_.expires_at(until);
        watchdog_.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
            auto self = weak.lock();
            if (!ec && self) {
                self->watchdog_at_ = time_point::min();
                if (self->waiting_) {
                    self->signal_.cancel();
                }
            }
        });
    }

    std::deque<incoming> queue_;
    net::steady_timer signal_;  // a condition variable: cancelled when a message is queued
    net::steady_timer watchdog_;
    time_point watchdog_at_ = time_point::min();
    bool waiting_ = false;
    bool keep_ = true;
    std::string failure_;
    std::string session_;
    std::uint64_t received_ = 0;
    std::uint64_t rejected_ = 0;
};

using client_ptr = std::shared_ptr<client>;

/// Completion of a reader coroutine: its errors are reported to the client through fail(), so
/// an exception here is a kg-bench bug; say so rather than lose it.
inline auto report_exception(const char* what)
{
    return [what](const std::exception_ptr& e) {
        if (!e) {
            return;
        }
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& x) {
            std::cerr << "kg-bench: " << what << ": " << x.what() << "\n";
        }
    };
}

/// Closes every client of a scenario however it ends.
class client_set
{
public:
    client_set() = default;
    client_set(const client_set&) = delete;
    client_set& operator=(const client_set&) = delete;
    ~client_set() { close_all(); }
    void add(client_ptr c) { all_.push_back(std::move(c)); }
    client& operator[](std::size_t i) { return *all_.at(i); }
    std::size_t size() const noexcept { return all_.size(); }
    void close_all()
    {
        for (auto& c : all_) {
            if (c) {
                c->close();
            }
        }
        all_.clear();
    }

private:
    std::vector<client_ptr> all_;
};

/// host:port plus the base path of a gateway URL.
struct gateway_url
{
    std::string host = "127.0.0.1";
    std::uint16_t port = 8888;
    std::string base;  ///< "" or "/prefix" (no trailing slash)
    bool tls = false;  ///< https://: TLS to the gateway (wss:// for the WebSockets)

    static gateway_url parse(std::string_view url)
    {
        gateway_url out;
        constexpr std::string_view http_scheme = "http://";
        constexpr std::string_view https_scheme = "https://";
        if (url.substr(0, https_scheme.size()) == https_scheme) {
            out.tls = true;
            url.remove_prefix(https_scheme.size());
        } else if (url.substr(0, http_scheme.size()) == http_scheme) {
            url.remove_prefix(http_scheme.size());
        } else {
            throw std::invalid_argument("the gateway URL must start with http:// or https://");
        }
        const auto slash = url.find('/');
        const auto authority = url.substr(0, slash);
        std::string_view path = slash == npos ? std::string_view{} : url.substr(slash);
        while (!path.empty() && path.back() == '/') {
            path.remove_suffix(1);
        }
        out.base.assign(path);
        const auto colon = authority.rfind(':');
        out.host.assign(authority.substr(0, colon));
        if (colon != npos) {
            out.port = static_cast<std::uint16_t>(std::stoul(std::string(authority.substr(colon + 1))));
        } else {
            out.port = out.tls ? 443 : 80;
        }
        return out;
    }

    tcp::endpoint endpoint() const { return {net::ip::make_address(host), port}; }
    std::string host_header() const { return host + ":" + std::to_string(port); }
};

using tls_layer = beast::ssl_stream<beast::tcp_stream>;

/// The client side of TLS to a gateway: the certificate is checked against --ca-file (or the
/// system's CAs) and must name the URL's host (an IP address or a DNS name).
std::unique_ptr<net::ssl::context> make_client_tls(const std::string& ca_file)
{
    auto ctx = std::make_unique<net::ssl::context>(net::ssl::context::tls_client);
    ctx->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                     net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
                     net::ssl::context::no_tlsv1_1);
    if (ca_file.empty()) {
        ctx->set_default_verify_paths();
    } else {
        ctx->load_verify_file(ca_file);
    }
    ctx->set_verify_mode(net::ssl::verify_peer);
    return ctx;
}

/// Connects stream's TCP layer and, over TLS, does the client's handshake (SNI for a host
/// name, the certificate checked against the host).
template <class Stream>
net::awaitable<void> connect_layer(Stream& stream, const gateway_url& gw)
{
    auto& tcp_layer = beast::get_lowest_layer(stream);
    co_await tcp_layer.async_connect(gw.endpoint(), net::use_awaitable);
    tcp_layer.socket().set_option(tcp::no_delay(true));
    if constexpr (std::is_same_v<Stream, tls_layer>) {
        beast::error_code ec;
        net::ip::make_address(gw.host, ec);
        if (ec && !SSL_set_tlsext_host_name(stream.native_handle(), gw.host.c_str())) {
            throw bench_error("TLS: cannot set the server name");
        }
        stream.set_verify_callback(net::ssl::host_name_verification(gw.host));
        co_await stream.async_handshake(net::ssl::stream_base::client, net::use_awaitable);
    }
}

/// WebSocket client through a gateway, v1 or legacy frames.
///
/// The handshake is Beast's HTTP over the socket; the frames are read and written here
/// (RFC 6455 client side: masked frames out, unmasked frames in). Every read decodes all the
/// complete frames it brought in one go, and the writes of one turn of the loop leave in one
/// send(): the same batching libzmq gives the direct client (its I/O thread reads 8 KiB at a
/// time and decodes every message in it, and writes whatever queued), so the two clients
/// pay comparable costs per message and the ratios show the gateway's. A client that went
/// through Beast's WebSocket stream paid a post and an event-loop round per frame, and in an
/// iopub flood it, not the gateway, was the bottleneck.
class ws_client final : public client
{
public:
    /// tls: the context of a wss:// connection (the gateway_target's), or null.
    ws_client(net::io_context& ioc, bool v1, net::ssl::context* tls)
        : client(ioc),
          stream_(tls ? layers(std::in_place_index<1>, ioc, *tls) : layers(std::in_place_index<0>, ioc)),
          close_timer_(ioc), v1_(v1), mask_state_(mask_seed())
    {
    }

    net::awaitable<void> open(const gateway_url& gw,
                              const std::string& token,
                              const std::string& kernel_id,
                              time_point deadline)
    {
        auto& tcp_layer = lowest();
        tcp_layer.expires_at(deadline);
        if (auto* tls = std::get_if<1>(&stream_)) {
            co_await connect_layer(tls->next_layer(), gw);
            co_await upgrade(tls->next_layer(), gw, token, kernel_id);
        } else {
            co_await connect_layer(tcp_layer, gw);
            co_await upgrade(tcp_layer, gw, token, kernel_id);
        }
        tcp_layer.expires_never();
        open_ = true;
        auto self = std::static_pointer_cast<ws_client>(shared_from_this());
        net::co_spawn(get_executor(), self->pump(self), report_exception("WebSocket reader"));
    }

    bool v1() const noexcept { return v1_; }

    net::awaitable<void> send(std::string_view channel, zp::message msg) override
    {
        if (!open_) {
            throw bench_error("send on a closed WebSocket");
        }
        if (v1_) {
            write_frame(0x2, gateway::encode_v1(channel, msg));
        } else {
            auto f = gateway::encode_legacy(channel, msg);
            write_frame(f.binary ? 0x2 : 0x1, f.data);
        }
        co_return;
    }

    /// Starts a polite close (close frame, one second at most for the answer), then drops
    /// the socket.
    void close() override
    {
        if (closed_) {
            return;
        }
        closed_ = true;
        if (!open_) {
            drop();
            return;
        }
        open_ = false;
        const std::array<char, 2> code{static_cast<char>(1000 >> 8), static_cast<char>(1000 & 0xff)};
        write_frame(0x8, std::string_view(code.data(), code.size()));
        close_timer_.expires_after(1s);
        close_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (!ec) {
                std::static_pointer_cast<ws_client>(self)->drop();
            }
        });
    }

private:
    static constexpr std::uint64_t k_max_frame = 1ULL << 30;
    /// TLS hands out at most one record (16 KiB of plaintext) per read.
    static constexpr std::size_t k_tls_read = 16 * 1024;
    using layers = std::variant<gateway::batching_stream<beast::tcp_stream>,
                                gateway::batching_stream<tls_layer>>;

    beast::tcp_stream& lowest()
    {
        return std::visit([](auto& s) -> beast::tcp_stream& { return beast::get_lowest_layer(s); },
                          stream_);
    }
    net::any_io_executor get_executor()
    {
        return std::visit([](auto& s) -> net::any_io_executor { return s.get_executor(); }, stream_);
    }

    /// The HTTP upgrade over layer (TCP, or TLS once its handshake is done).
    template <class Layer>
    net::awaitable<void> upgrade(Layer& layer, const gateway_url& gw, const std::string& token,
                                 const std::string& kernel_id)
    {
        std::array<unsigned char, 16> nonce{};
        for (auto& b : nonce) {
            b = static_cast<unsigned char>(next_mask());
        }
        const std::string key = base64(nonce.data(), nonce.size());
        http::request<http::empty_body> req{
            http::verb::get,
            gw.base + "/api/kernels/" + kernel_id + "/channels?session_id=" + session(), 11};
        req.set(http::field::host, gw.host_header());
        req.set(http::field::upgrade, "websocket");
        req.set(http::field::connection, "Upgrade");
        req.set(http::field::sec_websocket_key, key);
        req.set(http::field::sec_websocket_version, "13");
        req.set(http::field::authorization, "token " + token);
        if (v1_) {
            req.set(http::field::sec_websocket_protocol, std::string(gateway::v1_subprotocol));
        }
        co_await http::async_write(layer, req, net::use_awaitable);
        beast::flat_buffer hs_buf;
        http::response_parser<http::empty_body> parser;
        parser.skip(true);  // a 101 has no body
        co_await http::async_read_header(layer, hs_buf, parser, net::use_awaitable);
        const auto& res = parser.get();
        if (res.result() != http::status::switching_protocols) {
            throw bench_error("WebSocket upgrade refused: HTTP " +
                              std::to_string(res.result_int()));
        }
        if (to_sv(res[http::field::sec_websocket_accept]) != accept_for(key)) {
            throw bench_error("WebSocket upgrade: wrong Sec-WebSocket-Accept");
        }
        // A server that does not take the subprotocol speaks legacy JSON.
        v1_ = v1_ && to_sv(res[http::field::sec_websocket_protocol]) == gateway::v1_subprotocol;
        // Frames that came in with the response.
        const auto rest = hs_buf.data();
        in_.assign(static_cast<const char*>(rest.data()), rest.size());
    }

    static std::uint64_t mask_seed()
    {
        std::random_device rd;
        return (std::uint64_t{rd()} << 32) ^ rd() ^ 0x9e3779b97f4a7c15ULL;
    }
    std::uint32_t next_mask() noexcept  // xorshift64*: masks need not be secret here
    {
        mask_state_ ^= mask_state_ >> 12;
        mask_state_ ^= mask_state_ << 25;
        mask_state_ ^= mask_state_ >> 27;
        return static_cast<std::uint32_t>((mask_state_ * 0x2545f4914f6cdd1dULL) >> 32);
    }

    static std::string base64(const unsigned char* p, std::size_t n)
    {
        std::string out(beast::detail::base64::encoded_size(n), '\0');
        out.resize(beast::detail::base64::encode(out.data(), p, n));
        return out;
    }
    static std::string accept_for(const std::string& key)
    {
        const std::string in = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        if (EVP_Digest(in.data(), in.size(), md, &len, EVP_sha1(), nullptr) != 1) {
            throw bench_error("SHA-1 failed");
        }
        return base64(md, len);
    }

    /// One masked frame (FIN set) appended to the batching layer: it leaves with everything
    /// else written in this turn of the loop.
    void write_frame(unsigned opcode, std::string_view payload)
    {
        std::string& f = frame_;
        f.clear();
        f.push_back(static_cast<char>(0x80 | opcode));
        const std::uint64_t n = payload.size();
        if (n < 126) {
            f.push_back(static_cast<char>(0x80 | n));
        } else if (n < 65536) {
            f.push_back(static_cast<char>(0x80 | 126));
            f.push_back(static_cast<char>(n >> 8));
            f.push_back(static_cast<char>(n & 0xff));
        } else {
            f.push_back(static_cast<char>(0x80 | 127));
            for (int shift = 56; shift >= 0; shift -= 8) {
                f.push_back(static_cast<char>((n >> shift) & 0xff));
            }
        }
        const std::uint32_t m = next_mask();
        const std::array<unsigned char, 4> key{static_cast<unsigned char>(m >> 24),
                                               static_cast<unsigned char>(m >> 16),
                                               static_cast<unsigned char>(m >> 8),
                                               static_cast<unsigned char>(m)};
        f.append(reinterpret_cast<const char*>(key.data()), key.size());
        const std::size_t at = f.size();
        f.append(payload);
        for (std::size_t i = 0; i < payload.size(); ++i) {
            f[at + i] = static_cast<char>(static_cast<unsigned char>(f[at + i]) ^ key[i & 3]);
        }
        beast::error_code ec;
        std::visit([&](auto& s) { s.write_some(net::buffer(f), ec); }, stream_);  // appends
        if (ec) {
            open_ = false;
            fail("WebSocket write: " + ec.message());
        }
    }

    void drop()
    {
        close_timer_.cancel();
        beast::error_code ignored;
        auto& sock = lowest().socket();
        sock.shutdown(tcp::socket::shutdown_both, ignored);
        sock.close(ignored);
    }

    /// Reads and decodes until the connection ends: waits until the socket is readable, then
    /// reads what is there into one scratch buffer (per thread) and decodes every complete
    /// frame; only the start of an incomplete frame is kept (in_), so an idle client holds
    /// no buffer.
    net::awaitable<void> pump(std::shared_ptr<ws_client> /*keeps this alive*/)
    {
        if (!feed(nullptr, 0)) {  // frames that came in with the handshake's response
            co_return;
        }
        if (auto* tls = std::get_if<1>(&stream_)) {
            co_await pump_tls(tls->next_layer());
            co_return;
        }
        auto& sock = lowest().socket();
        for (;;) {
            beast::error_code ec;
            co_await sock.async_wait(tcp::socket::wait_read,
                                     net::redirect_error(net::use_awaitable, ec));
            if (ec) {
                open_ = false;
                fail(closed_ ? "closed by kg-bench" : "WebSocket read: " + ec.message());
                co_return;
            }
            for (;;) {
                thread_local std::array<char, 64 * 1024> scratch;
                const ssize_t n = ::recv(sock.native_handle(), scratch.data(), scratch.size(),
                                         MSG_DONTWAIT);
                if (n > 0) {
                    if (!feed(scratch.data(), static_cast<std::size_t>(n))) {
                        co_return;  // closed
                    }
                    if (static_cast<std::size_t>(n) < scratch.size()) {
                        break;  // read everything there was
                    }
                    continue;
                }
                if (n < 0 && errno == EINTR) {
                    continue;
                }
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    break;
                }
                open_ = false;
                fail(closed_ ? "closed by kg-bench"
                     : n == 0 ? "WebSocket read: the gateway closed the connection"
                              : std::string("WebSocket read: ") + std::strerror(errno));
                co_return;
            }
        }
    }

    /// Over TLS: one record at a time through the TLS layer, into this client's own buffer
    /// (a read in flight writes into it when it completes, so it cannot be shared).
    net::awaitable<void> pump_tls(tls_layer& tls)
    {
        const auto buf = std::make_unique<char[]>(k_tls_read);
        for (;;) {
            beast::error_code ec;
            const std::size_t n = co_await tls.async_read_some(
                net::buffer(buf.get(), k_tls_read), net::redirect_error(net::use_awaitable, ec));
            if (ec) {
                open_ = false;
                fail(closed_ ? "closed by kg-bench"
                     : ec == net::error::eof || ec == net::ssl::error::stream_truncated
                         ? "WebSocket read: the gateway closed the connection"
                         : "WebSocket read: " + ec.message());
                co_return;
            }
            if (!feed(buf.get(), n)) {
                co_return;  // closed
            }
        }
    }

    /// Decodes what arrived (after what in_ holds). false once the connection is closed.
    bool feed(const char* data, std::size_t n)
    {
        std::size_t used = 0;
        if (in_.empty()) {
            if (n == 0) {
                return true;
            }
            if (!decode_frames(std::string_view(data, n), used)) {
                return false;
            }
            in_.assign(data + used, n - used);
            return true;
        }
        if (n > 0) {
            in_.append(data, n);
        }
        if (!decode_frames(in_, used)) {
            return false;
        }
        in_.erase(0, used);
        if (in_.empty() && in_.capacity() > 64 * 1024) {
            std::string().swap(in_);  // a big frame's buffer is not kept
        }
        return true;
    }

    /// Decodes every complete frame at the start of data; used: the bytes they took.
    bool decode_frames(std::string_view data, std::size_t& used)
    {
        std::size_t pos = 0;
        const auto* p = reinterpret_cast<const unsigned char*>(data.data());
        while (data.size() - pos >= 2) {
            const unsigned b0 = p[pos];
            const unsigned b1 = p[pos + 1];
            const bool fin = (b0 & 0x80) != 0;
            const unsigned opcode = b0 & 0x0f;
            const unsigned len7 = b1 & 0x7f;
            const std::size_t header = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
            if ((b1 & 0x80) != 0 || (b0 & 0x70) != 0) {
                return protocol_error("masked or extension frame from the server");
            }
            if (data.size() - pos < header) {
                break;
            }
            std::uint64_t len = len7;
            if (len7 >= 126) {
                len = 0;
                for (std::size_t i = 2; i < header; ++i) {
                    len = (len << 8) | p[pos + i];
                }
            }
            if (len > k_max_frame) {
                return protocol_error("frame over 1 GiB");
            }
            if (data.size() - pos - header < len) {
                break;
            }
            const std::string_view payload = data.substr(pos + header, static_cast<std::size_t>(len));
            pos += header + static_cast<std::size_t>(len);
            if (!on_frame(fin, opcode, payload)) {
                return false;
            }
        }
        used = pos;
        return true;
    }

    bool on_frame(bool fin, unsigned opcode, std::string_view payload)
    {
        switch (opcode) {
        case 0x1:
        case 0x2:
            if (fin) {
                decode(payload, opcode == 0x2);
            } else {
                fragments_.assign(payload);
                fragments_binary_ = opcode == 0x2;
            }
            return true;
        case 0x0:
            fragments_.append(payload);
            if (fin) {
                decode(fragments_, fragments_binary_);
                std::string().swap(fragments_);
            }
            return true;
        case 0x8: {  // close: answer it (unless ours started it), then the connection ends
            const bool ours = closed_;
            if (!ours) {
                closed_ = true;
                write_frame(0x8, payload.substr(0, std::min<std::size_t>(payload.size(), 2)));
            }
            open_ = false;
            std::string why = ours ? "closed by kg-bench" : "closed by the gateway";
            if (!ours && payload.size() >= 2) {
                why += " (code " +
                       std::to_string((static_cast<unsigned char>(payload[0]) << 8) |
                                      static_cast<unsigned char>(payload[1])) +
                       ")";
            }
            fail(why);
            if (ours) {
                drop();  // the handshake is complete; the gateway waits for our FIN
                return false;
            }
            close_timer_.expires_after(1s);  // our close frame goes out first
            close_timer_.async_wait([self = shared_from_this()](boost::system::error_code) {
                std::static_pointer_cast<ws_client>(self)->drop();
            });
            return false;
        }
        case 0x9:  // ping: pong with the same payload
            write_frame(0xA, payload);
            return true;
        case 0xA:
            return true;
        default:
            return protocol_error("unknown opcode");
        }
    }

    bool protocol_error(const char* what)
    {
        open_ = false;
        fail(std::string("WebSocket protocol error from the gateway: ") + what);
        drop();
        return false;
    }

    static std::uint64_t le64(std::string_view s, std::size_t at)
    {
        std::uint64_t v = 0;
        for (int b = 7; b >= 0; --b) {
            v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<std::size_t>(b)]);
        }
        return v;
    }

    static std::uint32_t be32(std::string_view s, std::size_t at)
    {
        std::uint32_t v = 0;
        for (std::size_t b = 0; b < 4; ++b) {
            v = (v << 8) | static_cast<unsigned char>(s[at + b]);
        }
        return v;
    }

    void decode(std::string_view frame, bool binary)
    {
        if (binary && v1_) {
            if (frame.size() < 8) {
                count_rejected();
                return;
            }
            const std::uint64_t n = le64(frame, 0);
            if (n < 6 || n > frame.size() / 8 - 1) {
                count_rejected();
                return;
            }
            std::array<std::size_t, 6> off{};
            for (std::size_t i = 0; i < 6; ++i) {
                off[i] = static_cast<std::size_t>(le64(frame, 8 * (i + 1)));
                if (off[i] > frame.size() || (i > 0 && off[i] < off[i - 1])) {
                    count_rejected();
                    return;
                }
            }
            auto part = [&](std::size_t i) { return frame.substr(off[i], off[i + 1] - off[i]); };
            deliver(summarize(part(0), part(1), part(2), part(4)));
            return;
        }
        std::string_view text = frame;
        if (binary) {  // legacy binary frame: the JSON is the first part
            if (frame.size() < 8) {
                count_rejected();
                return;
            }
            const std::size_t nbufs = be32(frame, 0);
            if (nbufs == 0 || 4 * (nbufs + 1) > frame.size()) {
                count_rejected();
                return;
            }
            const std::size_t start = be32(frame, 4);
            const std::size_t end = nbufs > 1 ? be32(frame, 8) : frame.size();
            if (start > end || end > frame.size()) {
                count_rejected();
                return;
            }
            text = frame.substr(start, end - start);
        }
        std::string_view channel;
        std::string_view header;
        std::string_view parent;
        std::string_view content;
        const bool ok = for_each_member(text, [&](std::string_view k, std::string_view v) {
            if (k == "channel" && v.size() >= 2) {
                channel = v.substr(1, v.size() - 2);
            } else if (k == "header") {
                header = v;
            } else if (k == "parent_header") {
                parent = v;
            } else if (k == "content") {
                content = v;
            }
            return true;
        });
        if (!ok || header.empty()) {
            count_rejected();
            return;
        }
        deliver(summarize(channel, header, parent, content));
    }

    layers stream_;  ///< batched writes (over TCP also reads ahead)
    net::steady_timer close_timer_;
    bool v1_;
    bool open_ = false;
    bool closed_ = false;
    std::uint64_t mask_state_;
    std::string in_;         ///< received, not yet decoded (the start of a frame)
    std::string frame_;      ///< the frame being written
    std::string fragments_;  ///< a fragmented message so far
    bool fragments_binary_ = false;
};

/// Direct ZeroMQ client of a kernel: shell and control DEALERs, an iopub SUB, driven by the
/// Asio loop through ZMQ_FD (drained to EAGAIN on every wake-up; re-checked after sends).
class zmq_client final : public client
{
public:
    zmq_client(net::io_context& ioc, zmq::context_t& ctx, const zp::connection_info& info)
        : client(ioc), signer_(info.key)
    {
        struct spec
        {
            zmq::socket_type type;
            std::uint16_t port;
            const char* name;
        };
        const std::array<spec, 3> specs{{{zmq::socket_type::dealer, info.shell_port, "shell"},
                                         {zmq::socket_type::dealer, info.control_port, "control"},
                                         {zmq::socket_type::sub, info.iopub_port, "iopub"}}};
        for (std::size_t i = 0; i < specs.size(); ++i) {
            auto p = std::make_unique<port>(ioc, ctx, specs[i].type, specs[i].name);
            p->sock.set(zmq::sockopt::linger, 0);
            p->sock.set(zmq::sockopt::rcvhwm, 0);  // a measuring client never drops
            p->sock.set(zmq::sockopt::sndhwm, 0);
            p->sock.set(zmq::sockopt::reconnect_ivl, 2);  // a starting kernel binds late
            if (specs[i].type == zmq::socket_type::dealer) {
                p->sock.set(zmq::sockopt::routing_id, session());
            } else {
                p->sock.set(zmq::sockopt::subscribe, "");
            }
            p->sock.connect(info.endpoint(specs[i].port));
            p->fd.assign(p->sock.get(zmq::sockopt::fd));
            ports_.at(i) = std::move(p);
        }
    }

    ~zmq_client() override { close(); }
    zmq_client(const zmq_client&) = delete;
    zmq_client& operator=(const zmq_client&) = delete;

    void start()
    {
        auto self = std::static_pointer_cast<zmq_client>(shared_from_this());
        for (std::size_t i = 0; i < ports_.size(); ++i) {
            net::co_spawn(ports_[i]->fd.get_executor(), self->pump(self, i),
                          report_exception("ZeroMQ reader"));
        }
    }

    net::awaitable<void> send(std::string_view channel, zp::message msg) override
    {
        if (closed_) {
            throw bench_error("send on a closed ZeroMQ client");
        }
        port& p = channel == "control" ? *ports_[1] : *ports_[0];
        const auto frames = zp::encode_frames(msg, signer_);
        for (std::size_t i = 0; i < frames.size(); ++i) {
            auto flags = zmq::send_flags::dontwait;
            if (i + 1 < frames.size()) {
                flags = flags | zmq::send_flags::sndmore;
            }
            if (!p.sock.send(zmq::buffer(frames[i]), flags)) {
                throw bench_error("ZeroMQ send would block");
            }
        }
        // A send can consume the read edge of ZMQ_FD: wake the reader if input is pending.
        if (p.waiting && (p.sock.get(zmq::sockopt::events) & ZMQ_POLLIN) != 0) {
            p.fd.cancel();
        }
        co_return;
    }

    void close() override
    {
        if (closed_) {
            return;
        }
        closed_ = true;
        for (auto& p : ports_) {
            if (p) {
                boost::system::error_code ignored;
                p->fd.cancel(ignored);
                (void)p->fd.release();  // the descriptor is libzmq's
                p->sock.close();
            }
        }
    }

private:
    struct port
    {
        port(net::io_context& ioc, zmq::context_t& ctx, zmq::socket_type type, const char* name)
            : sock(ctx, type), fd(ioc), channel(name)
        {
        }
        zmq::socket_t sock;
        net::posix::stream_descriptor fd;
        std::string_view channel;
        bool waiting = false;
    };

    net::awaitable<void> pump(std::shared_ptr<zmq_client> /*keeps this alive*/, std::size_t which)
    {
        port& p = *ports_[which];
        std::vector<zmq::message_t> frames;
        for (;;) {
            for (int batch = 0;; ++batch) {
                if (closed_) {
                    co_return;
                }
                if (batch == 256) {  // let the scenario run between long bursts
                    co_await net::post(p.fd.get_executor(), net::use_awaitable);
                    batch = 0;
                    continue;
                }
                frames.clear();
                if (!zmq::recv_multipart(p.sock, std::back_inserter(frames),
                                         zmq::recv_flags::dontwait)) {
                    break;
                }
                on_frames(p.channel, frames);
            }
            boost::system::error_code ec;
            p.waiting = true;
            co_await p.fd.async_wait(net::posix::stream_descriptor::wait_read,
                                     net::redirect_error(net::use_awaitable, ec));
            p.waiting = false;
        }
    }

    void on_frames(std::string_view channel, std::vector<zmq::message_t>& frames)
    {
        std::size_t d = 0;
        while (d < frames.size() && frames[d].to_string_view() != zp::delimiter) {
            ++d;
        }
        if (d + 6 > frames.size()) {
            count_rejected();
            return;
        }
        const auto sig = frames[d + 1].to_string_view();
        const auto header = frames[d + 2].to_string_view();
        const auto parent = frames[d + 3].to_string_view();
        const auto metadata = frames[d + 4].to_string_view();
        const auto content = frames[d + 5].to_string_view();
        // Authenticate as every real client does before it believes a message.
        if (!signer_.verify(sig, header, parent, metadata, content)) {
            count_rejected();
            return;
        }
        deliver(summarize(channel, header, parent, content));
    }

    zp::signer signer_;
    std::array<std::unique_ptr<port>, 3> ports_;
    bool closed_ = false;
};

// ---------------------------------------------------------------------------------------
// Kernels launched by kg-bench itself (direct target).
// ---------------------------------------------------------------------------------------

struct kernelspec
{
    std::vector<std::string> argv;
    std::vector<std::pair<std::string, std::string>> env;
    fs::path resource_dir;
    std::string transport = "tcp";  ///< the connection file's: tcp or ipc (--transport)
};

kernelspec read_kernelspec(fs::path path)
{
    if (fs::is_directory(path)) {
        path /= "kernel.json";
    }
    std::ifstream in(path);
    if (!in) {
        throw std::runtime_error("cannot read kernelspec " + path.string());
    }
    const auto j = nlohmann::json::parse(in);
    kernelspec ks;
    ks.argv = j.at("argv").get<std::vector<std::string>>();
    if (ks.argv.empty()) {
        throw std::runtime_error("kernelspec " + path.string() + " has an empty argv");
    }
    if (j.contains("env") && j["env"].is_object()) {
        for (const auto& [k, v] : j["env"].items()) {
            ks.env.emplace_back(k, v.get<std::string>());
        }
    }
    ks.resource_dir = path.parent_path();
    return ks;
}

/// Pids of live kernels, for the signal handler (fixed slots: async-signal-safe to read).
std::array<std::atomic<pid_t>, 256> g_kernel_pids{};

void track_pid(pid_t pid, bool add)
{
    for (auto& slot : g_kernel_pids) {
        pid_t expected = add ? 0 : pid;
        if (slot.compare_exchange_strong(expected, add ? pid : 0)) {
            return;
        }
    }
}

void kill_all_kernels() noexcept
{
    for (auto& slot : g_kernel_pids) {
        const pid_t pid = slot.load();
        if (pid > 0) {
            ::kill(-pid, SIGKILL);
        }
    }
}

/// Free TCP ports on 127.0.0.1 (bound together so they are distinct, then released).
std::vector<std::uint16_t> free_ports(std::size_t n)
{
    net::io_context ioc;
    std::vector<tcp::acceptor> held;
    std::vector<std::uint16_t> out;
    for (std::size_t i = 0; i < n; ++i) {
        held.emplace_back(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
        out.push_back(held.back().local_endpoint().port());
    }
    return out;
}

/// A kernel process in its own process group; killed (group) when destroyed.
class local_kernel
{
public:
    local_kernel(const kernelspec& spec, const fs::path& runtime_dir)
    {
        const std::string id = zp::new_uuid();
        if (spec.transport == "ipc") {
            // As kernelgate does: Unix sockets in the (0700) runtime dir, named ip-port.
            info_.use_ipc((runtime_dir / ("kernel-" + id + "-ipc")).string());
        } else {
            const auto ports = free_ports(5);
            info_.use_tcp("127.0.0.1", std::span<const std::uint16_t, 5>(ports.data(), 5));
        }
        info_.key = zp::new_key();
        file_ = runtime_dir / ("kernel-" + id + ".json");
        zp::write_connection_file(file_, info_);
        log_ = runtime_dir / ("kernel-" + id + ".log");

        // Everything the child needs is prepared before fork (only async-signal-safe calls
        // happen between fork and exec).
        std::vector<std::string> args;
        for (const auto& a : spec.argv) {
            std::string s = a;
            auto subst = [&s](std::string_view key, const std::string& value) {
                for (auto at = s.find(key); at != npos; at = s.find(key, at + value.size())) {
                    s.replace(at, key.size(), value);
                }
            };
            subst("{connection_file}", file_.string());
            subst("{resource_dir}", spec.resource_dir.string());
            subst("{kernel_id}", id);
            args.push_back(std::move(s));
        }
        std::vector<std::string> env;
        for (char** e = environ; *e != nullptr; ++e) {
            const std::string_view kv(*e);
            const auto name = kv.substr(0, kv.find('='));
            const bool overridden = std::any_of(spec.env.begin(), spec.env.end(),
                                                [&](const auto& p) { return p.first == name; });
            if (!overridden) {
                env.emplace_back(kv);
            }
        }
        for (const auto& [k, v] : spec.env) {
            env.push_back(k + "=" + v);
        }
        // Resolve the program in the parent: the child (of a process with libzmq threads)
        // only calls async-signal-safe functions, and execvpe's PATH search is not one.
        std::string program = args.front();
        if (program.find('/') == npos) {
            const char* path_env = std::getenv("PATH");
            std::stringstream dirs(path_env != nullptr ? path_env : "/usr/bin:/bin");
            std::string dir;
            while (std::getline(dirs, dir, ':')) {
                const auto candidate = fs::path(dir.empty() ? "." : dir) / program;
                if (::access(candidate.c_str(), X_OK) == 0) {
                    program = candidate.string();
                    break;
                }
            }
        }
        std::vector<char*> argv_c;
        std::vector<char*> env_c;
        for (auto& a : args) {
            argv_c.push_back(a.data());
        }
        argv_c.push_back(nullptr);
        for (auto& e : env) {
            env_c.push_back(e.data());
        }
        env_c.push_back(nullptr);
        const int log_fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ < 0) {
            throw std::system_error(errno, std::generic_category(), "fork");
        }
        if (pid_ == 0) {
            ::setpgid(0, 0);
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive kg-bench
            if (::getppid() != parent) {
                ::_exit(127);
            }
            if (null_fd >= 0) {
                ::dup2(null_fd, 0);
            }
            if (log_fd >= 0) {
                ::dup2(log_fd, 1);
                ::dup2(log_fd, 2);
            }
            ::close_range(3, ~0U, 0);  // kg-bench's sockets are not the kernel's business
            ::execve(program.c_str(), argv_c.data(), env_c.data());
            ::_exit(127);
        }
        ::setpgid(pid_, pid_);  // also from the parent: no race with the first kill
        track_pid(pid_, true);
        if (log_fd >= 0) {
            ::close(log_fd);
        }
        if (null_fd >= 0) {
            ::close(null_fd);
        }
    }

    ~local_kernel() { terminate(); }
    local_kernel(const local_kernel&) = delete;
    local_kernel& operator=(const local_kernel&) = delete;

    const zp::connection_info& info() const noexcept { return info_; }

    /// true while the process has not exited.
    bool alive()
    {
        if (pid_ <= 0) {
            return false;
        }
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            track_pid(pid_, false);
            pid_ = -1;
            return false;
        }
        return true;
    }

    void terminate() noexcept
    {
        if (pid_ > 0) {
            ::kill(-pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
            track_pid(pid_, false);
            pid_ = -1;
        }
        std::error_code ignored;
        fs::remove(file_, ignored);
    }

    std::string log_tail() const
    {
        std::ifstream in(log_);
        std::stringstream ss;
        ss << in.rdbuf();
        auto s = ss.str();
        return s.size() > 2000 ? s.substr(s.size() - 2000) : s;
    }

private:
    zp::connection_info info_;
    fs::path file_;
    fs::path log_;
    pid_t pid_ = -1;
};

// ---------------------------------------------------------------------------------------
// Targets: where kernels come from and how a client reaches them.
// ---------------------------------------------------------------------------------------

struct kernel_ref
{
    std::string id;                       ///< gateway kernel id
    std::unique_ptr<local_kernel> local;  ///< direct: the process
};
using kernel_ptr = std::shared_ptr<kernel_ref>;

class target
{
public:
    target() = default;
    virtual ~target() = default;
    target(const target&) = delete;
    target& operator=(const target&) = delete;

    virtual bool is_gateway() const noexcept = 0;
    /// Starts a kernel. Direct: returns once the process runs; gateway: when POST answered.
    virtual net::awaitable<kernel_ptr> start_kernel(time_point deadline) = 0;
    /// A connected client (not yet known to be ready: see wait_ready()).
    virtual net::awaitable<client_ptr> connect(const kernel_ref& k, time_point deadline) = 0;
    virtual net::awaitable<void> stop_kernel(kernel_ref& k, time_point deadline) = 0;
};

class direct_target final : public target
{
public:
    direct_target(net::io_context& ioc, zmq::context_t& ctx, kernelspec spec, fs::path runtime)
        : ioc_(ioc), ctx_(ctx), spec_(std::move(spec)), runtime_(std::move(runtime))
    {
    }

    bool is_gateway() const noexcept override { return false; }

    net::awaitable<kernel_ptr> start_kernel(time_point /*deadline*/) override
    {
        auto k = std::make_shared<kernel_ref>();
        k->local = std::make_unique<local_kernel>(spec_, runtime_);
        co_return k;
    }

    net::awaitable<client_ptr> connect(const kernel_ref& k, time_point /*deadline*/) override
    {
        if (!k.local->alive()) {
            throw bench_error("kernel exited: " + k.local->log_tail());
        }
        auto c = std::make_shared<zmq_client>(ioc_, ctx_, k.local->info());
        c->start();
        co_return c;
    }

    net::awaitable<void> stop_kernel(kernel_ref& k, time_point /*deadline*/) override
    {
        if (k.local) {
            k.local->terminate();
        }
        co_return;
    }

private:
    net::io_context& ioc_;
    zmq::context_t& ctx_;
    kernelspec spec_;
    fs::path runtime_;
};

struct http_reply
{
    unsigned status = 0;
    std::string body;
};

class gateway_target final : public target
{
public:
    /// ca_file: for an https:// URL, the certificate(s) to check the gateway's against
    /// (default: the system's CAs).
    gateway_target(net::io_context& ioc, gateway_url url, std::string token, std::string kernel,
                   bool v1, const std::string& ca_file)
        : ioc_(ioc), url_(std::move(url)), token_(std::move(token)), kernel_(std::move(kernel)),
          v1_(v1), tls_(url_.tls ? make_client_tls(ca_file) : nullptr)
    {
    }

    bool is_gateway() const noexcept override { return true; }

    net::awaitable<http_reply> call(http::verb verb, std::string path, std::string body,
                                    time_point deadline)
    {
        if (tls_) {
            tls_layer stream(ioc_, *tls_);
            co_return co_await call_over(stream, verb, std::move(path), std::move(body), deadline);
        }
        beast::tcp_stream stream(ioc_);
        co_return co_await call_over(stream, verb, std::move(path), std::move(body), deadline);
    }

    template <class Stream>
    net::awaitable<http_reply> call_over(Stream& stream, http::verb verb, std::string path,
                                         std::string body, time_point deadline)
    {
        beast::get_lowest_layer(stream).expires_at(deadline);
        co_await connect_layer(stream, url_);
        http::request<http::string_body> req{verb, url_.base + path, 11};
        req.set(http::field::host, url_.host_header());
        req.set(http::field::authorization, "token " + token_);
        req.set(http::field::user_agent, "kg-bench");
        if (!body.empty()) {
            req.set(http::field::content_type, "application/json");
        }
        req.body() = std::move(body);
        req.prepare_payload();
        co_await http::async_write(stream, req, net::use_awaitable);
        beast::flat_buffer buf;
        http::response<http::string_body> res;
        co_await http::async_read(stream, buf, res, net::use_awaitable);
        beast::error_code ignored;
        beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
        co_return http_reply{res.result_int(), std::move(res.body())};
    }

    net::awaitable<kernel_ptr> start_kernel(time_point deadline) override
    {
        // (g++ 12 cannot take an init-list temporary inside a co_await operand.)
        std::string body = nlohmann::json{{"name", kernel_}}.dump();
        auto r = co_await call(http::verb::post, std::string("/api/kernels"), std::move(body),
                               deadline);
        if (r.status != 201 && r.status != 200) {
            throw bench_error("POST /api/kernels -> " + std::to_string(r.status) + ": " +
                              r.body.substr(0, 300));
        }
        auto k = std::make_shared<kernel_ref>();
        k->id = nlohmann::json::parse(r.body).at("id").get<std::string>();
        co_return k;
    }

    net::awaitable<client_ptr> connect(const kernel_ref& k, time_point deadline) override
    {
        auto c = std::make_shared<ws_client>(ioc_, v1_, tls_.get());
        co_await c->open(url_, token_, k.id, deadline);
        if (v1_ && !c->v1()) {
            v1_refused_ = true;
        }
        co_return c;
    }

    net::awaitable<void> stop_kernel(kernel_ref& k, time_point deadline) override
    {
        if (k.id.empty()) {
            co_return;
        }
        auto r = co_await call(http::verb::delete_, "/api/kernels/" + k.id, {}, deadline);
        if (r.status != 204 && r.status != 200) {
            throw bench_error("DELETE /api/kernels/" + k.id + " -> " + std::to_string(r.status));
        }
        k.id.clear();
    }

    bool v1_refused() const noexcept { return v1_refused_; }

private:
    net::io_context& ioc_;
    gateway_url url_;
    std::string token_;
    std::string kernel_;
    bool v1_;
    bool v1_refused_ = false;
    std::unique_ptr<net::ssl::context> tls_;  ///< https:// only
};

// ---------------------------------------------------------------------------------------
// Protocol helpers shared by all scenarios.
// ---------------------------------------------------------------------------------------

/// Sends a request and returns its msg_id.
net::awaitable<std::string> send_request(client& c,
                                         std::string_view channel,
                                         std::string_view type,
                                         std::string content)
{
    std::string id = zp::new_uuid();
    zp::message m;
    m.header = zp::make_header(type, c.session(), "kg-bench", id);
    m.parent_header = "{}";
    m.metadata = "{}";
    m.content = std::move(content);
    co_await c.send(channel, std::move(m));
    co_return id;
}

net::awaitable<std::string> send_kernel_info(client& c)
{
    std::string content = "{}";
    co_return co_await send_request(c, "shell", "kernel_info_request", std::move(content));
}

std::string execute_content(const std::string& code)
{
    return nlohmann::json{{"code", code},
                          {"silent", false},
                          {"store_history", false},
                          {"user_expressions", nlohmann::json::object()},
                          {"allow_stdin", false},
                          {"stop_on_error", true}}
        .dump();
}

net::awaitable<std::string> send_execute(client& c, const std::string& code)
{
    std::string content = execute_content(code);
    co_return co_await send_request(c, "shell", "execute_request", std::move(content));
}

struct ready_times
{
    time_point first_reply;
    time_point ready;
};

/// Sends kernel_info_request until a reply and an iopub message have both arrived, which
/// proves shell works and the iopub subscription is live (the "nudge" of Jupyter Server).
net::awaitable<ready_times> wait_ready(client& c, time_point deadline)
{
    std::set<std::string> ids;
    ids.insert(co_await send_kernel_info(c));
    bool reply = false;
    bool iopub = false;
    ready_times t{};
    auto resend = clock_type::now() + 1s;
    while (!(reply && iopub)) {
        const auto now = clock_type::now();
        if (now >= deadline) {
            throw bench_error(std::string("kernel not ready before the deadline (") +
                              (reply ? "no iopub message" : "no kernel_info_reply") + ")");
        }
        if (now >= resend) {
            ids.insert(co_await send_kernel_info(c));
            resend = now + (reply ? 20ms : 1000ms);
        }
        auto m = co_await c.try_recv(std::min(resend, deadline));
        if (!m) {
            continue;
        }
        if (m->channel == "iopub") {
            iopub = true;
        } else if (m->msg_type == "kernel_info_reply" && ids.count(m->parent_id) != 0) {
            if (!reply) {
                t.first_reply = clock_type::now();
                resend = t.first_reply + 20ms;
            }
            reply = true;
        }
    }
    t.ready = clock_type::now();
    co_return t;
}

/// Waits for the reply of type `reply_type` to `id` and, when `want_idle`, the iopub idle
/// status with that parent.
net::awaitable<void> wait_reply(client& c,
                                const std::string& id,
                                std::string_view reply_type,
                                bool want_idle,
                                time_point deadline)
{
    bool reply = false;
    bool idle = !want_idle;
    while (!(reply && idle)) {
        const incoming m = co_await c.recv(deadline);
        if (m.parent_id != id) {
            continue;
        }
        if (m.msg_type == reply_type) {
            reply = true;
        } else if (m.msg_type == "status" && m.state == "idle") {
            idle = true;
        }
    }
}

struct output_count
{
    std::uint64_t streams = 0;
    std::uint64_t text_bytes = 0;
};

/// Consumes everything an execute_request `id` produces until its iopub idle (and its reply
/// when `want_reply`), counting stream messages and their bytes.
net::awaitable<output_count> consume_output(client& c,
                                            const std::string& id,
                                            bool want_reply,
                                            time_point deadline)
{
    output_count out;
    bool reply = !want_reply;
    bool idle = false;
    while (!(reply && idle)) {
        const incoming m = co_await c.recv(deadline);
        if (m.parent_id != id) {
            continue;
        }
        if (m.msg_type == "stream") {
            ++out.streams;
            out.text_bytes += m.text_bytes;
        } else if (m.msg_type == "execute_reply") {
            reply = true;
        } else if (m.msg_type == "status" && m.state == "idle") {
            idle = true;
        }
    }
    co_return out;
}

/// Runs fn(i) for i in [0, n) with at most `limit` in flight; rethrows the first failure
/// once all have finished.
template <class F>
net::awaitable<void> parallel_for(std::size_t n, std::size_t limit, F fn)
{
    auto ex = co_await net::this_coro::executor;
    std::size_t next = 0;
    std::size_t running = 0;
    std::exception_ptr first;
    net::steady_timer done(ex, time_point::max());
    auto worker = [&]() -> net::awaitable<void> {
        while (next < n && !first) {
            const std::size_t i = next++;
            co_await fn(i);
        }
    };
    const std::size_t workers = std::min(std::max<std::size_t>(limit, 1), n);
    for (std::size_t w = 0; w < workers; ++w) {
        ++running;
        net::co_spawn(ex, worker(), [&](std::exception_ptr e) {
            if (e && !first) {
                first = e;
            }
            if (--running == 0) {
                done.cancel();
            }
        });
    }
    while (running > 0) {
        boost::system::error_code ec;
        co_await done.async_wait(net::redirect_error(net::use_awaitable, ec));
    }
    if (first) {
        std::rethrow_exception(first);
    }
}

net::awaitable<void> sleep_for(clock_type::duration d)
{
    net::steady_timer t(co_await net::this_coro::executor, d);
    boost::system::error_code ec;
    co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
}

/// On-CPU and run-queue-wait time of a process so far, summed over its threads
/// (/proc/PID/task/*/schedstat, nanoseconds). CPU per message is what the gateway costs
/// whatever else runs on the machine; the run-queue wait shows how much else did.
struct cpu_sample
{
    double run_ns = std::nan("");
    double wait_ns = std::nan("");
};

/// Calls f(directory) for /proc/PID/task/TID of each thread of pid.
template <class F>
void for_each_task(int pid, F&& f)
{
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
        f(e.path());
    }
}

cpu_sample read_cpu(int pid)
{
    cpu_sample out;
    if (pid <= 0) {
        return out;
    }
    double run = 0;
    double wait = 0;
    bool any = false;
    for_each_task(pid, [&](const fs::path& task) {
        std::ifstream in(task / "schedstat");
        double r = 0;
        double w = 0;
        if (in >> r >> w) {
            run += r;
            wait += w;
            any = true;
        }
    });
    if (any) {
        out.run_ns = run;
        out.wait_ns = wait;
    }
    return out;
}

/// The CPU of pid's child processes (the kernels: a gateway's, or the ones kg-bench launched
/// itself for the direct target), from /proc/PID/task/*/children.
cpu_sample read_children_cpu(int pid)
{
    cpu_sample out;
    if (pid <= 0) {
        return out;
    }
    out.run_ns = 0;
    out.wait_ns = 0;
    for_each_task(pid, [&](const fs::path& task) {
        std::ifstream in(task / "children");
        int child = 0;
        while (in >> child) {
            const auto c = read_cpu(child);
            if (!std::isnan(c.run_ns)) {
                out.run_ns += c.run_ns;
                out.wait_ns += c.wait_ns;
            }
        }
    });
    return out;
}

/// Where the machine's CPU went during a measurement: the gateway (none for the direct
/// target), the kernels, and this client. On a machine with few cores all three compete, so
/// a gateway target can only be as fast as direct ZeroMQ when its whole work per message is
/// no larger than direct ZeroMQ's.
struct work_sample
{
    cpu_sample gateway;
    cpu_sample kernels;
    cpu_sample client;
    clock_type::time_point at = clock_type::now();
};

long read_rss_kib(int pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            return std::stol(line.substr(6));
        }
    }
    throw bench_error("cannot read VmRSS of pid " + std::to_string(pid));
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

struct options
{
    std::string target_kind = "direct";
    std::string label;
    std::string kernelspec_path;
    std::string url = "http://127.0.0.1:8888";
    std::string ca_file;  ///< https://: the CA (or self-signed certificate) to trust
    std::string token;
    std::string kernel_name = "echo";
    std::string kernel_id;
    std::string protocol = "v1";
    int gateway_pid = 0;
    std::string dialect = "echo";
    std::string scenarios = "all";
    std::string json_path;
    std::string runtime_dir;
    std::string transport = "tcp";
    int repeat = 3;
    int start_n = 3;
    int start_gap_ms = 0;
    std::string pair_kernelspec;  ///< gateway: start: also start this kernel directly, in turns
    int rt = 2000;
    int flood = 20000;
    int window = 64;
    int iopub_flood = 20000;
    int iopub_size = 64;
    long long stream_bytes = 32LL << 20;
    int stream_n = 1;  ///< streams per run, one after the other on the same kernel
    std::string fanout = "1,4,16,32";
    int fanout_rt = 500;
    double fanout_budget = 0;  ///< seconds per fan-out level; 0: --budget
    int idle = 10000;
    int idle_concurrency = 64;
    double idle_hold = 0;
    int idle_kernels = 50;
    int broadcast_clients = 16;
    int broadcast_msgs = 2000;
    double budget = 10;
    double timeout = 60;
};

using metrics = std::vector<std::pair<std::string, double>>;

const std::vector<std::string>& all_scenarios()
{
    static const std::vector<std::string> names{"start",     "kernel_info", "execute",
                                                "flood",     "iopub_flood", "stream",
                                                "fanout",    "idle_ws",     "broadcast",
                                                "idle_kernels"};
    return names;
}

std::vector<int> parse_int_list(const std::string& s)
{
    std::vector<int> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (!item.empty()) {
            out.push_back(std::stoi(item));
        }
    }
    return out;
}

/// Code the kernel runs, per kernel language ("echo" is kg-echo-kernel's command language).
struct dialect
{
    std::string name;

    std::string execute_code() const { return name == "python" ? "pass" : "hello"; }

    std::string flood_code(int n, int size) const
    {
        if (name == "python") {
            return "import sys\nfor _ in range(" + std::to_string(n) + "):\n    sys.stdout.write('y' * " +
                   std::to_string(size) + ")\n    sys.stdout.flush()\n";
        }
        return "flood:" + std::to_string(n) + ":" + std::to_string(size);
    }

    /// Streams `bytes` (a multiple of 64 KiB) in 64 KiB messages.
    std::string stream_code(long long bytes) const
    {
        if (name == "python") {
            return "import sys\nfor _ in range(" + std::to_string(bytes / 65536) +
                   "):\n    sys.stdout.write('x' * 65536)\n    sys.stdout.flush()\n";
        }
        return "stream:" + std::to_string(bytes);
    }
};

class bench
{
public:
    bench(options opts, target& tgt, target* pair = nullptr)
        : opts_(std::move(opts)), target_(tgt), pair_(pair), dialect_{opts_.dialect}
    {
    }

    const options& opts() const noexcept { return opts_; }

    time_point deadline() const
    {
        return clock_type::now() +
               std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(opts_.timeout));
    }

    time_point budget_end() const
    {
        return clock_type::now() +
               std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(opts_.budget));
    }

    /// The kernel shared by the single-kernel scenarios (started on first use).
    net::awaitable<kernel_ptr> main_kernel()
    {
        if (!main_ && !opts_.kernel_id.empty() && target_.is_gateway()) {
            // An existing kernel (--kernel-id): used as is, never stopped by kg-bench.
            main_ = std::make_shared<kernel_ref>();
            main_->id = opts_.kernel_id;
            external_main_ = true;
        }
        if (!main_) {
            main_ = co_await target_.start_kernel(deadline());
            // Prove it answers before any measurement uses it.
            client_set cs;
            cs.add(co_await target_.connect(*main_, deadline()));
            co_await wait_ready(cs[0], deadline());
        }
        co_return main_;
    }

    net::awaitable<void> stop_main()
    {
        if (main_ && !external_main_) {
            co_await target_.stop_kernel(*main_, deadline());
        }
        main_.reset();
        external_main_ = false;
    }

    /// The CPU used so far by the gateway (nothing for the direct target or without
    /// --gateway-pid), of the kernels (the gateway's children, or kg-bench's own for direct;
    /// nothing for a gateway without --gateway-pid) and of kg-bench itself.
    work_sample cpu_so_far() const
    {
        work_sample w;
        const int kernels_parent = target_.is_gateway() ? opts_.gateway_pid : ::getpid();  // 0: none
        if (target_.is_gateway()) {
            w.gateway = read_cpu(opts_.gateway_pid);
        }
        w.kernels = read_children_cpu(kernels_parent);
        w.client = read_cpu(::getpid());
        w.at = clock_type::now();
        return w;
    }

    /// Adds, for a measured window: "<prefix>gw_cpu_us_per_<unit>" and "<prefix>gw_runq_ms"
    /// (the gateway); "<prefix>kernel_cpu_us_per_<unit>" and "<prefix>client_cpu_us_per_<unit>";
    /// "<prefix>total_cpu_us_per_<unit>", their sum, and "<prefix>cores_busy", that sum over
    /// the window's length. Kernels started or stopped within the window are not counted.
    static void add_cpu(metrics& m, const work_sample& a, const work_sample& b, double units,
                        const std::string& unit, const std::string& prefix = {})
    {
        if (units <= 0) {
            return;
        }
        const auto per_unit = [&](const cpu_sample& x, const cpu_sample& y) {
            return (y.run_ns - x.run_ns) / 1e3 / units;
        };
        const bool have_gateway = !std::isnan(a.gateway.run_ns) && !std::isnan(b.gateway.run_ns);
        if (have_gateway) {
            m.emplace_back(prefix + "gw_cpu_us_per_" + unit, per_unit(a.gateway, b.gateway));
            m.emplace_back(prefix + "gw_runq_ms", (b.gateway.wait_ns - a.gateway.wait_ns) / 1e6);
        }
        const bool have_kernels = !std::isnan(a.kernels.run_ns) && !std::isnan(b.kernels.run_ns);
        const bool have_client = !std::isnan(a.client.run_ns) && !std::isnan(b.client.run_ns);
        if (!have_kernels || !have_client) {  // a gateway target without --gateway-pid
            return;
        }
        const double kernel = per_unit(a.kernels, b.kernels);
        const double client = per_unit(a.client, b.client);
        const double total = kernel + client + (have_gateway ? per_unit(a.gateway, b.gateway) : 0);
        m.emplace_back(prefix + "kernel_cpu_us_per_" + unit, kernel);
        m.emplace_back(prefix + "client_cpu_us_per_" + unit, client);
        m.emplace_back(prefix + "total_cpu_us_per_" + unit, total);
        const double wall_us = std::chrono::duration<double, std::micro>(b.at - a.at).count();
        if (wall_us > 0) {
            m.emplace_back(prefix + "cores_busy", total * units / wall_us);
        }
    }

    net::awaitable<client_ptr> ready_client(const kernel_ref& k)
    {
        auto c = co_await target_.connect(k, deadline());
        try {
            co_await wait_ready(*c, deadline());
        } catch (...) {
            c->close();
            throw;
        }
        co_return c;
    }

    net::awaitable<metrics> run(const std::string& name)
    {
        if (name == "start") {
            co_return co_await start();
        }
        if (name == "kernel_info") {
            co_return co_await round_trips(false);
        }
        if (name == "execute") {
            co_return co_await round_trips(true);
        }
        if (name == "flood") {
            co_return co_await flood();
        }
        if (name == "iopub_flood") {
            co_return co_await iopub_flood();
        }
        if (name == "stream") {
            co_return co_await stream();
        }
        if (name == "fanout") {
            co_return co_await fanout();
        }
        if (name == "idle_ws") {
            co_return co_await idle_ws();
        }
        if (name == "broadcast") {
            co_return co_await broadcast();
        }
        if (name == "idle_kernels") {
            co_return co_await idle_kernels();
        }
        throw std::invalid_argument("unknown scenario " + name);
    }

    /// Kernels for the fan-out scenario, kept across its repeats.
    net::awaitable<void> stop_fanout_kernels()
    {
        auto kernels = std::move(fanout_kernels_);
        fanout_kernels_.clear();
        fanout_start_failures_ = 0;
        for (auto& k : kernels) {
            if (k) {  // a failed start leaves a hole
                co_await target_.stop_kernel(*k, deadline());
            }
        }
    }

private:
    struct start_times
    {
        double post_ms = 0;  ///< until the kernel was started (gateway: POST answered)
        double ki_ms = 0;    ///< until the first kernel_info_reply
        double ready_ms = 0; ///< until ready (see wait_ready)
    };

    /// One start on `t`, from nothing to a kernel that answers, then its stop (not timed).
    net::awaitable<start_times> start_once(target& t)
    {
        const auto dl = deadline();
        const auto t0 = clock_type::now();
        auto k = co_await t.start_kernel(dl);
        const auto t_started = clock_type::now();
        start_times st;
        std::exception_ptr failure;
        try {
            client_set cs;
            cs.add(co_await t.connect(*k, dl));
            const auto r = co_await wait_ready(cs[0], dl);
            st = {ms_since(t0, t_started), ms_since(t0, r.first_reply), ms_since(t0, r.ready)};
        } catch (...) {
            failure = std::current_exception();
        }
        co_await t.stop_kernel(*k, deadline());
        if (failure) {
            std::rethrow_exception(failure);
        }
        co_return st;
    }

    /// Kernel starts. With a pair target (--pair-kernelspec), each start through the gateway
    /// takes turns with a direct start of the same kernel (which of the two goes first
    /// alternates), and the differences within each pair are reported too: a kernel whose own
    /// start time drifts by hundreds of ms (ipykernel) hides a gateway's few ms from medians
    /// taken apart, but two starts made one after the other see the same machine.
    net::awaitable<metrics> start()
    {
        std::vector<double> post_ms;
        std::vector<double> ki_ms;
        std::vector<double> ready_ms;
        std::vector<double> pair_ki_ms;
        std::vector<double> diff_ms;
        std::vector<double> post_diff_ms;
        std::vector<double> after_post_ms;
        for (int i = 0; i < std::max(1, opts_.start_n); ++i) {
            if (i > 0 && opts_.start_gap_ms > 0) {
                co_await sleep_for(std::chrono::milliseconds(opts_.start_gap_ms));
            }
            std::optional<start_times> direct;
            if (pair_ != nullptr && i % 2 == 0) {
                direct = co_await start_once(*pair_);
            }
            const auto st = co_await start_once(target_);
            if (pair_ != nullptr && i % 2 == 1) {
                direct = co_await start_once(*pair_);
            }
            post_ms.push_back(st.post_ms);
            ki_ms.push_back(st.ki_ms);
            ready_ms.push_back(st.ready_ms);
            after_post_ms.push_back(st.ki_ms - st.post_ms);
            if (direct) {
                pair_ki_ms.push_back(direct->ki_ms);
                diff_ms.push_back(st.ki_ms - direct->ki_ms);
                post_diff_ms.push_back(st.post_ms - direct->ki_ms);
            }
        }
        metrics m{{"kernel_info_ms", percentile(ki_ms, 50)}, {"ready_ms", percentile(ready_ms, 50)}};
        if (target_.is_gateway()) {
            m.emplace_back("post_ms", percentile(post_ms, 50));
            m.emplace_back("after_post_ms", percentile(after_post_ms, 50));
        }
        if (!diff_ms.empty()) {
            m.emplace_back("pair_direct_kernel_info_ms", percentile(pair_ki_ms, 50));
            m.emplace_back("pair_diff_ms", percentile(diff_ms, 50));
            m.emplace_back("pair_post_diff_ms", percentile(post_diff_ms, 50));
        }
        m.emplace_back("n", static_cast<double>(ki_ms.size()));
        co_return m;
    }

    net::awaitable<metrics> round_trips(bool execute)
    {
        const kernel_ptr kp = co_await main_kernel();
        const kernel_ref& k = *kp;
        client_set cs;
        cs.add(co_await ready_client(k));
        client& c = cs[0];
        const std::string code = dialect_.execute_code();
        auto one = [&](time_point dl) -> net::awaitable<void> {
            if (execute) {
                const auto id = co_await send_execute(c, code);
                co_await wait_reply(c, id, "execute_reply", true, dl);
            } else {
                const auto id = co_await send_kernel_info(c);
                co_await wait_reply(c, id, "kernel_info_reply", false, dl);
            }
        };
        for (int i = 0; i < std::min(20, opts_.rt); ++i) {  // warm-up, not measured
            co_await one(deadline());
        }
        std::vector<double> us;
        us.reserve(static_cast<std::size_t>(opts_.rt));
        const auto stop = budget_end();
        const auto dl = deadline();
        const auto cpu0 = cpu_so_far();
        for (int i = 0; i < opts_.rt && clock_type::now() < stop; ++i) {
            const auto t0 = clock_type::now();
            co_await one(dl);
            us.push_back(us_since(t0, clock_type::now()));
        }
        metrics m{{"p50_us", percentile(us, 50)},
                  {"p99_us", percentile(us, 99)},
                  {"mean_us", mean_of(us)},
                  {"n", static_cast<double>(us.size())}};
        add_cpu(m, cpu0, cpu_so_far(), static_cast<double>(us.size()), "rt");
        co_return m;
    }

    net::awaitable<metrics> flood()
    {
        const kernel_ptr kp = co_await main_kernel();
        const kernel_ref& k = *kp;
        client_set cs;
        cs.add(co_await ready_client(k));
        client& c = cs[0];
        const auto window = static_cast<std::uint64_t>(std::max(1, opts_.window));
        const auto total = static_cast<std::uint64_t>(std::max(1, opts_.flood));
        const auto dl = deadline();
        const auto stop = budget_end();
        const auto received0 = c.received();
        std::uint64_t sent = 0;
        std::uint64_t replies = 0;
        const auto cpu0 = cpu_so_far();
        const auto t0 = clock_type::now();
        while (replies < sent || sent == 0) {
            // Keep `window` requests in flight until the total (or the budget) is reached.
            while (sent - replies < window && sent < total && clock_type::now() < stop) {
                co_await send_kernel_info(c);
                ++sent;
            }
            if (replies == sent) {
                break;
            }
            const incoming m = co_await c.recv(dl);
            if (m.msg_type == "kernel_info_reply") {
                ++replies;
            }
        }
        const double secs = seconds_between(t0, clock_type::now());
        // Every message that reached the client in the window: replies and iopub status.
        const auto expected = c.received() - received0;
        metrics m{{"req_per_s", static_cast<double>(replies) / secs},
                  {"msgs_per_s", static_cast<double>(expected) / secs},
                  {"requests", static_cast<double>(replies)},
                  {"window", static_cast<double>(window)}};
        add_cpu(m, cpu0, cpu_so_far(), static_cast<double>(expected), "msg");
        co_return m;
    }

    net::awaitable<metrics> iopub_flood()
    {
        const kernel_ptr kp = co_await main_kernel();
        const kernel_ref& k = *kp;
        client_set cs;
        cs.add(co_await ready_client(k));
        client& c = cs[0];
        const auto code = dialect_.flood_code(opts_.iopub_flood, opts_.iopub_size);
        const auto cpu0 = cpu_so_far();
        const auto t0 = clock_type::now();
        const auto id = co_await send_execute(c, code);
        const auto got = co_await consume_output(c, id, true, deadline());
        const double secs = seconds_between(t0, clock_type::now());
        metrics m{{"msgs_per_s", static_cast<double>(got.streams) / secs},
                  {"complete", static_cast<double>(got.streams) / opts_.iopub_flood},
                  {"messages", static_cast<double>(got.streams)},
                  {"size", static_cast<double>(opts_.iopub_size)}};
        add_cpu(m, cpu0, cpu_so_far(), static_cast<double>(got.streams), "msg");
        co_return m;
    }

    net::awaitable<metrics> stream()
    {
        const kernel_ptr kp = co_await main_kernel();
        const kernel_ref& k = *kp;
        client_set cs;
        cs.add(co_await ready_client(k));
        client& c = cs[0];
        const long long bytes = std::max(1LL, opts_.stream_bytes / 65536) * 65536;
        const auto code = dialect_.stream_code(bytes);
        // A 32 MiB stream lasts under 0.1 s, so one of them says as much about the moment
        // (page faults on a cold heap, a neighbour on the VM) as about the data path:
        // --stream-n streams in a row, the median of them reported, and the first on its own.
        std::vector<double> rates;
        std::uint64_t got_bytes = 0;
        std::uint64_t got_messages = 0;
        double min_complete = 1;
        const auto cpu0 = cpu_so_far();
        for (int i = 0; i < std::max(1, opts_.stream_n); ++i) {
            const auto t0 = clock_type::now();
            const auto id = co_await send_execute(c, code);
            const auto got = co_await consume_output(c, id, true, deadline());
            const double secs = seconds_between(t0, clock_type::now());
            rates.push_back(static_cast<double>(got.text_bytes) / secs / 1e6);
            min_complete = std::min(min_complete, static_cast<double>(got.text_bytes) /
                                                      static_cast<double>(bytes));
            got_bytes += got.text_bytes;
            got_messages += got.streams;
        }
        const double first = rates.front();
        metrics m{{"mb_per_s", percentile(rates, 50)},
                  {"first_mb_per_s", first},
                  {"complete", min_complete},
                  {"bytes", static_cast<double>(got_bytes)},
                  {"messages", static_cast<double>(got_messages)}};
        add_cpu(m, cpu0, cpu_so_far(), static_cast<double>(got_bytes) / 1e6, "mb");
        co_return m;
    }

    net::awaitable<metrics> fanout()
    {
        const auto levels = parse_int_list(opts_.fanout);
        if (levels.empty()) {
            throw std::invalid_argument("--fanout needs at least one level");
        }
        const auto kmax = static_cast<std::size_t>(*std::max_element(levels.begin(), levels.end()));
        // Kernels start in parallel (4 at a time), once for all repeats of the scenario. A
        // failed start is retried once and counted: concurrent starts can lose a port race
        // (the kernel's bind fails), which is a finding about the gateway, not a reason to
        // lose the whole scenario.
        const std::size_t have = fanout_kernels_.size();
        if (have < kmax) {
            fanout_kernels_.resize(kmax);
            co_await parallel_for(kmax - have, 4, [&](std::size_t i) -> net::awaitable<void> {
                for (int attempt = 0;; ++attempt) {
                    std::string failure;
                    try {
                        fanout_kernels_[have + i] = co_await target_.start_kernel(deadline());
                        auto c = co_await ready_client(*fanout_kernels_[have + i]);
                        c->close();
                        co_return;
                    } catch (const bench_error& e) {
                        failure = e.what();
                    }
                    ++fanout_start_failures_;
                    std::cerr << "kg-bench: fan-out kernel start failed: " << failure << "\n";
                    if (attempt == 1) {
                        throw bench_error("fan-out kernel start failed twice: " + failure);
                    }
                }
            });
        }
        metrics m;
        m.emplace_back("start_failures", static_cast<double>(fanout_start_failures_));
        for (const int level : levels) {
            const auto kn = static_cast<std::size_t>(level);
            std::vector<client_ptr> clients(kn);
            client_set cs;
            co_await parallel_for(kn, 8, [&](std::size_t i) -> net::awaitable<void> {
                clients[i] = co_await ready_client(*fanout_kernels_[i]);
            });
            for (auto& c : clients) {
                cs.add(c);
            }
            std::uint64_t done = 0;
            std::vector<double> us;
            const auto stop =
                opts_.fanout_budget > 0
                    ? clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                              std::chrono::duration<double>(opts_.fanout_budget))
                    : budget_end();
            const auto dl = deadline();
            const auto cpu0 = cpu_so_far();
            const auto t0 = clock_type::now();
            co_await parallel_for(kn, kn, [&](std::size_t i) -> net::awaitable<void> {
                client& c = *clients[i];
                for (int r = 0; r < opts_.fanout_rt && clock_type::now() < stop; ++r) {
                    const auto t1 = clock_type::now();
                    const auto id = co_await send_kernel_info(c);
                    co_await wait_reply(c, id, "kernel_info_reply", false, dl);
                    us.push_back(us_since(t1, clock_type::now()));
                    ++done;
                }
            });
            const double secs = seconds_between(t0, clock_type::now());
            const std::string k = "k" + std::to_string(level);
            m.emplace_back(k + "_rt_per_s", static_cast<double>(done) / secs);
            m.emplace_back(k + "_p50_us", percentile(us, 50));
            add_cpu(m, cpu0, cpu_so_far(), static_cast<double>(done), "rt", k + "_");
        }
        co_return m;
    }

    net::awaitable<metrics> idle_ws()
    {
        if (!target_.is_gateway()) {
            throw not_applicable("not applicable to a direct ZeroMQ client");
        }
        if (opts_.gateway_pid <= 0) {
            throw std::invalid_argument("needs --gateway-pid (the gateway's RSS is measured)");
        }
        const kernel_ptr kp = co_await main_kernel();
        const kernel_ref& k = *kp;
        client_set cs;
        cs.add(co_await ready_client(k));
        const auto n = static_cast<std::size_t>(std::max(1, opts_.idle));
        co_await sleep_for(300ms);
        const long rss0 = read_rss_kib(opts_.gateway_pid);
        std::vector<client_ptr> idle(n);
        const auto t0 = clock_type::now();
        co_await parallel_for(n, static_cast<std::size_t>(std::max(1, opts_.idle_concurrency)),
                              [&](std::size_t i) -> net::awaitable<void> {
                                  idle[i] = co_await target_.connect(k, deadline());
                                  idle[i]->keep_messages(false);
                              });
        const double open_s = seconds_between(t0, clock_type::now());
        for (auto& c : idle) {
            cs.add(c);
        }
        co_await sleep_for(1s);  // let the gateway finish per-connection work (nudges, buffers)
        const long rss1 = read_rss_kib(opts_.gateway_pid);
        if (opts_.idle_hold > 0) {  // time to look at the gateway from outside (heaptrack, gdb)
            std::cerr << "kg-bench: idle_ws: holding " << n << " connections for " << opts_.idle_hold << " s\n";
            co_await sleep_for(std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::duration<double>(opts_.idle_hold)));
        }
        // The gateway must still answer with all of them open.
        const auto t1 = clock_type::now();
        const auto id = co_await send_kernel_info(cs[0]);
        co_await wait_reply(cs[0], id, "kernel_info_reply", false, deadline());
        const double rt_us = us_since(t1, clock_type::now());
        co_return metrics{{"kib_per_conn", static_cast<double>(rss1 - rss0) / static_cast<double>(n)},
                          {"connections", static_cast<double>(n)},
                          {"rss_before_kib", static_cast<double>(rss0)},
                          {"rss_after_kib", static_cast<double>(rss1)},
                          {"open_s", open_s},
                          {"rt_after_us", rt_us}};
    }

    /// The gateway's memory for kernels nobody uses: started, then left alone.
    net::awaitable<metrics> idle_kernels()
    {
        if (!target_.is_gateway()) {
            throw not_applicable("not applicable to a direct ZeroMQ client");
        }
        if (opts_.gateway_pid <= 0) {
            throw std::invalid_argument("needs --gateway-pid (the gateway's RSS is measured)");
        }
        const auto n = static_cast<std::size_t>(std::max(1, opts_.idle_kernels));
        co_await sleep_for(300ms);
        const long rss0 = read_rss_kib(opts_.gateway_pid);
        std::vector<kernel_ptr> kernels(n);
        co_await parallel_for(n, 4, [&](std::size_t i) -> net::awaitable<void> {
            kernels[i] = co_await target_.start_kernel(deadline());
        });
        co_await sleep_for(1s);  // every kernel's channels connected, its first replies read
        const long rss1 = read_rss_kib(opts_.gateway_pid);
        for (auto& k : kernels) {
            co_await target_.stop_kernel(*k, deadline());
        }
        co_return metrics{
            {"kib_per_kernel", static_cast<double>(rss1 - rss0) / static_cast<double>(n)},
            {"kernels", static_cast<double>(n)},
            {"rss_before_kib", static_cast<double>(rss0)},
            {"rss_after_kib", static_cast<double>(rss1)}};
    }

    net::awaitable<metrics> broadcast()
    {
        const kernel_ptr kp = co_await main_kernel();
        const kernel_ref& k = *kp;
        const auto n = static_cast<std::size_t>(std::max(1, opts_.broadcast_clients));
        std::vector<client_ptr> clients(n);
        client_set cs;
        co_await parallel_for(n, 8, [&](std::size_t i) -> net::awaitable<void> {
            clients[i] = co_await ready_client(k);
        });
        for (auto& c : clients) {
            cs.add(c);
        }
        // Let every client's nudge output pass before the measured burst.
        co_await sleep_for(100ms);
        const auto dl = deadline();
        const auto code = dialect_.flood_code(opts_.broadcast_msgs, opts_.iopub_size);
        const auto cpu0 = cpu_so_far();
        const auto t0 = clock_type::now();
        const auto id = co_await send_execute(*clients[0], code);
        std::vector<output_count> got(n);
        co_await parallel_for(n, n, [&](std::size_t i) -> net::awaitable<void> {
            got[i] = co_await consume_output(*clients[i], id, i == 0, dl);
        });
        const double secs = seconds_between(t0, clock_type::now());
        std::uint64_t total = 0;
        std::uint64_t least = got.empty() ? 0 : got[0].streams;
        for (const auto& g : got) {
            total += g.streams;
            least = std::min(least, g.streams);
        }
        metrics m{{"delivered_per_s", static_cast<double>(total) / secs},
                  {"complete", static_cast<double>(least) / opts_.broadcast_msgs},
                  {"clients", static_cast<double>(n)},
                  {"messages", static_cast<double>(opts_.broadcast_msgs)}};
        add_cpu(m, cpu0, cpu_so_far(), static_cast<double>(total), "msg");
        co_return m;
    }

    options opts_;
    target& target_;
    target* pair_;  ///< start: a direct target whose starts take turns with target_'s
    dialect dialect_;
    kernel_ptr main_;
    bool external_main_ = false;
    std::vector<kernel_ptr> fanout_kernels_;
    int fanout_start_failures_ = 0;
};


// ---------------------------------------------------------------------------------------
// Running, reporting
// ---------------------------------------------------------------------------------------

struct scenario_result
{
    std::vector<metrics> runs;
    std::vector<double> wall_s;  ///< duration of each run, setup included
    std::string error;
    std::string skipped;
};

/// Runs a coroutine to completion on the (single-threaded) io_context. Every wait inside has
/// its own deadline; the hard limit only guards against a bug in kg-bench itself.
template <class T>
T run_sync(net::io_context& ioc, net::awaitable<T> aw, double hard_limit_s)
{
    std::optional<T> out;
    std::exception_ptr failure;
    bool done = false;
    net::co_spawn(ioc, std::move(aw), [&](std::exception_ptr e, T v) {
        done = true;
        failure = e;
        if (!e) {
            out.emplace(std::move(v));
        }
        ioc.stop();
    });
    // The hard limit is a timer, not a clock check per handler: the loop below runs at
    // message rate and must not cost the client more than the work itself.
    net::steady_timer hard(ioc, std::chrono::duration_cast<clock_type::duration>(
                                    std::chrono::duration<double>(hard_limit_s)));
    hard.async_wait([](boost::system::error_code ec) {
        if (!ec) {
            std::cerr << "kg-bench: hard time limit exceeded; giving up\n";
            kill_all_kernels();
            std::_Exit(3);
        }
    });
    while (!done) {
        ioc.restart();
        ioc.run();
    }
    hard.cancel();
    ioc.restart();
    ioc.poll();  // the cancelled guard's handler
    if (failure) {
        std::rethrow_exception(failure);
    }
    return std::move(*out);
}

std::map<std::string, double> medians(const std::vector<metrics>& runs)
{
    std::map<std::string, std::vector<double>> by_key;
    for (const auto& run : runs) {
        for (const auto& [k, v] : run) {
            if (!std::isnan(v)) {
                by_key[k].push_back(v);
            }
        }
    }
    std::map<std::string, double> out;
    for (auto& [k, v] : by_key) {
        std::sort(v.begin(), v.end());
        const std::size_t n = v.size();
        out[k] = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    }
    return out;
}

nlohmann::ordered_json json_number(double v)
{
    if (std::isnan(v) || std::isinf(v)) {
        return nullptr;
    }
    return v;
}

std::string format_number(double v)
{
    if (std::isnan(v)) {
        return "-";
    }
    char buf[64];
    const double a = std::fabs(v);
    if (a >= 1e5 || (a == std::floor(a) && a < 1e15)) {
        std::snprintf(buf, sizeof buf, "%.0f", v);
    } else if (a >= 100) {
        std::snprintf(buf, sizeof buf, "%.1f", v);
    } else {
        std::snprintf(buf, sizeof buf, "%.3g", v);
    }
    return buf;
}

/// The 1-minute load average: other work on the machine perturbs every number here.
double read_loadavg()
{
    std::ifstream in("/proc/loadavg");
    double v = std::nan("");
    in >> v;
    return v;
}

int run_main(options& o)
{
    // Many idle WebSockets need many descriptors: take the hard limit.
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &lim);
    }
    std::vector<std::string> wanted;
    if (o.scenarios == "all") {
        wanted = all_scenarios();
    } else {
        std::stringstream ss(o.scenarios);
        std::string item;
        while (std::getline(ss, item, ',')) {
            if (item.empty()) {
                continue;
            }
            if (std::find(all_scenarios().begin(), all_scenarios().end(), item) ==
                all_scenarios().end()) {
                std::cerr << "kg-bench: unknown scenario '" << item << "'\n";
                return 2;
            }
            wanted.push_back(item);
        }
    }
    if (o.idle > 0 && static_cast<rlim_t>(o.idle) + 200 > lim.rlim_cur &&
        std::find(wanted.begin(), wanted.end(), "idle_ws") != wanted.end()) {
        std::cerr << "kg-bench: --idle " << o.idle << " needs more file descriptors than "
                  << lim.rlim_cur << " (ulimit -n); lowering it\n";
        o.idle = static_cast<int>(lim.rlim_cur) - 200;
    }

    zmq::context_t zctx;
    net::io_context ioc(1);
    std::unique_ptr<target> tgt;
    std::unique_ptr<target> pair;  // --pair-kernelspec: direct starts beside the gateway's
    fs::path runtime;
    bool own_runtime = false;
    std::string protocol;
    auto make_direct = [&](const std::string& kernelspec_path) -> std::unique_ptr<target> {
        if (runtime.empty()) {
            if (o.runtime_dir.empty()) {
                char tmpl[] = "/tmp/kg-bench-XXXXXX";
                if (::mkdtemp(tmpl) == nullptr) {
                    throw bench_error("mkdtemp failed");
                }
                runtime = tmpl;
                own_runtime = true;
            } else {
                runtime = o.runtime_dir;
                fs::create_directories(runtime);
            }
            fs::permissions(runtime, fs::perms::owner_all, fs::perm_options::replace);
        }
        auto spec = read_kernelspec(kernelspec_path);
        spec.transport = o.transport;
        return std::make_unique<direct_target>(ioc, zctx, std::move(spec), runtime);
    };
    if (o.target_kind == "direct") {
        if (o.kernelspec_path.empty()) {
            std::cerr << "kg-bench: --target direct needs --kernelspec\n";
            return 2;
        }
        tgt = make_direct(o.kernelspec_path);
        protocol = "zmq";
    } else {
        if (o.token.empty()) {
            if (const char* t = std::getenv("KG_BENCH_TOKEN")) {
                o.token = t;
            }
        }
        tgt = std::make_unique<gateway_target>(ioc, gateway_url::parse(o.url), o.token,
                                               o.kernel_name, o.protocol == "v1", o.ca_file);
        protocol = o.protocol;
        if (!o.pair_kernelspec.empty()) {
            pair = make_direct(o.pair_kernelspec);
        }
    }
    if (o.label.empty()) {
        o.label = o.target_kind;
    }

    const double load_start = read_loadavg();
    bench b(o, *tgt, pair.get());
    const double hard_limit = std::max(120.0, 10 * o.timeout + 4 * o.budget);
    std::map<std::string, scenario_result> results;
    for (const auto& name : wanted) {
        auto& res = results[name];
        // Memory the gateway freed after one idle_ws (or idle_kernels) run is reused by the
        // next, so that one is measured once per gateway process (bench/run.sh restarts the
        // gateway per repeat).
        const bool once = name == "idle_ws" || name == "idle_kernels";
        const int runs = once ? 1 : std::max(1, o.repeat);
        for (int r = 0; r < runs; ++r) {
            try {
                const auto t0 = clock_type::now();
                res.runs.push_back(run_sync(ioc, b.run(name), hard_limit));
                res.wall_s.push_back(seconds_between(t0, clock_type::now()));
                std::cerr << "kg-bench: " << o.label << " " << name << " run " << r + 1 << " done\n";
            } catch (const not_applicable& e) {
                res.skipped = e.what();
                break;
            } catch (const std::exception& e) {
                res.error = e.what();
                std::cerr << "kg-bench: " << o.label << " " << name << ": " << e.what() << "\n";
                // The shared kernel may be what broke: the next scenario gets a fresh one.
                try {
                    run_sync(ioc, [&]() -> net::awaitable<int> { co_await b.stop_main(); co_return 0; }(),
                             hard_limit);
                } catch (const std::exception&) {
                }
                break;
            }
        }
        if (name == "fanout") {
            try {
                run_sync(ioc, [&]() -> net::awaitable<int> { co_await b.stop_fanout_kernels(); co_return 0; }(),
                         hard_limit);
            } catch (const std::exception& e) {
                std::cerr << "kg-bench: stopping fan-out kernels: " << e.what() << "\n";
            }
        }
    }
    try {
        run_sync(ioc, [&]() -> net::awaitable<int> { co_await b.stop_main(); co_return 0; }(), hard_limit);
    } catch (const std::exception& e) {
        std::cerr << "kg-bench: stopping the kernel: " << e.what() << "\n";
    }
    if (auto* gw = dynamic_cast<gateway_target*>(tgt.get()); gw != nullptr && gw->v1_refused()) {
        protocol = "legacy (v1 refused)";
    }

    // Table
    std::cout << "kg-bench: " << o.label << " (" << o.target_kind << ", kernel " << o.kernel_name << ", "
              << protocol << ", " << o.repeat << " repeat(s))\n";
    std::printf("%-12s %-18s %14s   %s\n", "scenario", "metric", "median", "runs");
    nlohmann::ordered_json doc;
    doc["tool"] = "kg-bench";
    doc["format"] = 1;
    doc["label"] = o.label;
    doc["target"] = o.target_kind;
    doc["kernel"] = o.kernel_name;
    if (o.target_kind == "direct") {
        doc["kernelspec"] = o.kernelspec_path;
        doc["transport"] = o.transport;
    }
    doc["dialect"] = o.dialect;
    doc["protocol"] = protocol;
    doc["settings"] = {{"repeat", o.repeat},       {"start_n", o.start_n}, {"start_gap_ms", o.start_gap_ms},
                       {"rt", o.rt},               {"flood", o.flood},
                       {"window", o.window},       {"iopub_flood", o.iopub_flood},
                       {"iopub_size", o.iopub_size}, {"stream_bytes", o.stream_bytes},
                       {"fanout", o.fanout},       {"fanout_rt", o.fanout_rt},
                       {"fanout_budget_s", o.fanout_budget},
                       {"idle", o.idle},           {"broadcast_clients", o.broadcast_clients},
                       {"broadcast_msgs", o.broadcast_msgs}, {"budget_s", o.budget},
                       {"timeout_s", o.timeout}};
    auto& out = doc["scenarios"];
    out = nlohmann::ordered_json::object();
    for (const auto& name : wanted) {
        const auto& res = results[name];
        auto& j = out[name];
        j = nlohmann::ordered_json::object();
        if (!res.skipped.empty()) {
            j["skipped"] = res.skipped;
            std::printf("%-12s %-18s %14s   %s\n", name.c_str(), "-", "skipped", res.skipped.c_str());
            continue;
        }
        if (!res.error.empty()) {
            j["error"] = res.error;
            std::printf("%-12s %-18s %14s   %s\n", name.c_str(), "-", "ERROR", res.error.c_str());
        }
        j["runs"] = nlohmann::ordered_json::array();
        for (const auto& run : res.runs) {
            nlohmann::ordered_json rj = nlohmann::ordered_json::object();
            for (const auto& [k, v] : run) {
                rj[k] = json_number(v);
            }
            j["runs"].push_back(rj);
        }
        const auto med = medians(res.runs);
        nlohmann::ordered_json mj = nlohmann::ordered_json::object();
        if (!res.runs.empty()) {
            for (const auto& [k, v] : res.runs.front()) {
                const auto it = med.find(k);
                const double m = it == med.end() ? std::nan("") : it->second;
                mj[k] = json_number(m);
                std::string all;
                for (const auto& run : res.runs) {
                    for (const auto& [k2, v2] : run) {
                        if (k2 == k) {
                            all += format_number(v2) + " ";
                        }
                    }
                }
                std::printf("%-12s %-18s %14s   %s\n", name.c_str(), k.c_str(),
                            format_number(m).c_str(), all.c_str());
            }
        }
        j["median"] = mj;
        j["wall_s"] = res.wall_s;
    }
    doc["loadavg"] = {{"start", load_start}, {"end", read_loadavg()}};
    std::cout.flush();
    if (!o.json_path.empty()) {
        std::ofstream f(o.json_path);
        f << doc.dump(2) << "\n";
        if (!f) {
            std::cerr << "kg-bench: cannot write " << o.json_path << "\n";
            return 1;
        }
    }
    if (own_runtime) {
        std::error_code ignored;
        fs::remove_all(runtime, ignored);
    }
    return 0;
}

}  // namespace kernelgate::bench

namespace {

extern "C" void on_signal(int sig)
{
    kernelgate::bench::kill_all_kernels();
    ::_exit(128 + sig);
}

} // namespace

int main(int argc, char** argv)
{
    kernelgate::bench::options o;
    CLI::App app{"kg-bench: benchmark a Jupyter gateway against direct ZeroMQ to the kernel.\n"
                 "Scenarios: start, kernel_info, execute, flood, iopub_flood, stream, fanout, "
                 "idle_ws, broadcast, idle_kernels (see the comment at the top of bench/kg_bench.cpp)."};
    app.add_option("--target", o.target_kind, "direct (ZeroMQ to a kernel kg-bench launches) or gateway (WebSocket)")
        ->check(CLI::IsMember({"direct", "gateway"}));
    app.add_option("--label", o.label, "name of this target in the output");
    app.add_option("--kernelspec", o.kernelspec_path, "direct: kernel.json (or its directory) to launch");
    app.add_option("--transport", o.transport,
                   "direct: how the client reaches the kernels it launches: tcp (loopback "
                   "ports) or ipc (Unix sockets in the runtime dir, as kernelgate "
                   "--kernel-transport ipc)")
        ->check(CLI::IsMember({"tcp", "ipc"}))
        ->capture_default_str();
    app.add_option("--runtime-dir", o.runtime_dir, "direct: where connection files and kernel logs go (default: a temp dir)");
    app.add_option("--url", o.url, "gateway: base URL (http:// or https://)")->capture_default_str();
    app.add_option("--ca-file", o.ca_file,
                   "gateway over https://: PEM file of the CA (or the self-signed certificate) "
                   "to check the gateway's certificate against (default: the system's CAs)")
        ->check(CLI::ExistingFile);
    app.add_option("--token", o.token, "gateway: token (default: $KG_BENCH_TOKEN)");
    app.add_option("--kernel", o.kernel_name, "gateway: kernelspec name to start (direct: its name in the output)")
        ->capture_default_str();
    app.add_option("--kernel-id", o.kernel_id,
                   "gateway: use this running kernel for the single-kernel scenarios (not stopped)");
    app.add_option("--protocol", o.protocol, "gateway: v1 or legacy WebSocket frames")
        ->check(CLI::IsMember({"v1", "legacy"}))
        ->capture_default_str();
    app.add_option("--gateway-pid", o.gateway_pid, "gateway: its pid (idle_ws reads its VmRSS; gw_cpu_* its CPU time)");
    app.add_option("--dialect", o.dialect, "code the kernel runs: echo (kg-echo-kernel) or python")
        ->check(CLI::IsMember({"echo", "python"}))
        ->capture_default_str();
    app.add_option("--scenarios", o.scenarios, "comma-separated scenarios, or all")->capture_default_str();
    app.add_option("--repeat", o.repeat, "runs of each scenario (medians are reported)")->capture_default_str();
    app.add_option("--start-n", o.start_n, "start: kernel starts per run (median)")->capture_default_str();
    app.add_option("--start-gap-ms", o.start_gap_ms,
                   "start: pause between starts (a gateway's warm pool refills meanwhile)")
        ->capture_default_str();
    app.add_option("--pair-kernelspec", o.pair_kernelspec,
                   "gateway: start: also launch this kernel.json directly, taking turns with "
                   "the gateway's starts, and report the median difference within the pairs "
                   "(pair_diff_ms); --transport and --runtime-dir apply to it");
    app.add_option("--rt", o.rt, "kernel_info/execute: round trips per run")->capture_default_str();
    app.add_option("--flood", o.flood, "flood: requests per run")->capture_default_str();
    app.add_option("--window", o.window, "flood: requests in flight")->capture_default_str();
    app.add_option("--iopub-flood", o.iopub_flood, "iopub_flood: stream messages per run")->capture_default_str();
    app.add_option("--iopub-size", o.iopub_size, "iopub_flood/broadcast: bytes per stream message")->capture_default_str();
    app.add_option("--stream-bytes", o.stream_bytes, "stream: bytes of output (64 KiB messages)")->capture_default_str();
    app.add_option("--stream-n", o.stream_n,
                   "stream: streams per run, one after another (mb_per_s is their median, "
                   "first_mb_per_s the first's)")
        ->capture_default_str();
    app.add_option("--fanout", o.fanout, "fanout: kernel counts")->capture_default_str();
    app.add_option("--fanout-rt", o.fanout_rt, "fanout: round trips per client")->capture_default_str();
    app.add_option("--fanout-budget", o.fanout_budget, "fanout: seconds per level (0: --budget)")
        ->capture_default_str();
    app.add_option("--idle", o.idle, "idle_ws: WebSockets to hold open")->capture_default_str();
    app.add_option("--idle-concurrency", o.idle_concurrency, "idle_ws: handshakes in flight")->capture_default_str();
    app.add_option("--idle-hold", o.idle_hold,
                   "idle_ws: seconds to keep the connections open after measuring, to inspect the gateway")
        ->check(CLI::Range(0.0, 3600.0))
        ->capture_default_str();
    app.add_option("--idle-kernels", o.idle_kernels, "idle_kernels: kernels to start and leave idle")->capture_default_str();
    app.add_option("--broadcast-clients", o.broadcast_clients, "broadcast: clients on one kernel")->capture_default_str();
    app.add_option("--broadcast-msgs", o.broadcast_msgs, "broadcast: stream messages")->capture_default_str();
    app.add_option("--budget", o.budget, "seconds a measuring loop may run before it stops early")->capture_default_str();
    app.add_option("--timeout", o.timeout, "seconds any single wait may take")->capture_default_str();
    app.add_option("--json", o.json_path, "write the results as JSON to this file");
    CLI11_PARSE(app, argc, argv);

    struct sigaction sa{};
    sa.sa_handler = on_signal;
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    try {
        return kernelgate::bench::run_main(o);
    } catch (const std::exception& e) {
        kernelgate::bench::kill_all_kernels();
        std::cerr << "kg-bench: " << e.what() << "\n";
        return 1;
    }
}
