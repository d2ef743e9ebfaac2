// SPDX-License-Identifier: BSD-3-Clause
// The gateway's TLS layer over a real loopback TCP connection, against asio's ssl::stream
// (OpenSSL) as the client: data intact both ways, a write that waits for a slow peer, the
// input buffer's size, every way a peer can end the stream, and a WebSocket closed over it.
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "gateway/batching_stream.hpp"
#include "gateway/tls_stream.hpp"

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;
using tcp = net::ip::tcp;
using kernelgate::gateway::batching_stream;
using kernelgate::gateway::tls_stream;
using namespace std::chrono_literals;

namespace {

/// A self-signed P-256 certificate for 127.0.0.1, made with OpenSSL: {certificate, key} PEM.
std::pair<std::string, std::string> make_certificate()
{
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    REQUIRE(key != nullptr);
    X509* x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("127.0.0.1"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    REQUIRE(X509_sign(x, key, EVP_sha256()) > 0);
    auto pem = [](auto write) {
        BIO* b = BIO_new(BIO_s_mem());
        write(b);
        char* data = nullptr;
        const long n = BIO_get_mem_data(b, &data);
        std::string out(data, static_cast<std::size_t>(n));
        BIO_free(b);
        return out;
    };
    auto cert = pem([&](BIO* b) { PEM_write_bio_X509(b, x); });
    auto pkey = pem([&](BIO* b) {
        PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
    });
    X509_free(x);
    EVP_PKEY_free(key);
    return {cert, pkey};
}

const std::pair<std::string, std::string>& certificate()
{
    static const auto c = make_certificate();
    return c;
}

std::string pattern(std::size_t n, std::size_t seed)
{
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
    }
    return s;
}

/// A connected pair on 127.0.0.1: tls_stream on the server's side, asio's ssl::stream on the
/// client's, the client checking the server's certificate.
struct tls_pair
{
    net::io_context ioc;
    net::ssl::context server_ctx{net::ssl::context::tls_server};
    net::ssl::context client_ctx{net::ssl::context::tls_client};
    std::optional<tls_stream> server;
    net::ssl::stream<tcp::socket> client{ioc, client_ctx};

    tls_pair()
    {
        const auto& [cert, key] = certificate();
        server_ctx.use_certificate_chain(net::buffer(cert));
        server_ctx.use_private_key(net::buffer(key), net::ssl::context::pem);
        client_ctx.add_certificate_authority(net::buffer(cert));
        client_ctx.set_verify_mode(net::ssl::verify_peer);
        tcp::acceptor acc(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0));
        client.next_layer().connect(acc.local_endpoint());
        tcp::socket s(ioc);
        acc.accept(s);
        server.emplace(beast::tcp_stream(std::move(s)), server_ctx);
    }

    template <class Pred>
    bool run_until(Pred done, std::chrono::milliseconds limit = 10000ms)
    {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (!done() && std::chrono::steady_clock::now() < end) {
            ioc.restart();
            ioc.run_for(5ms);
        }
        return done();
    }

    void handshake()
    {
        std::optional<beast::error_code> s_ec;
        std::optional<beast::error_code> c_ec;
        server->async_handshake([&](beast::error_code ec) { s_ec = ec; });
        client.async_handshake(net::ssl::stream_base::client,
                               [&](beast::error_code ec) { c_ec = ec; });
        REQUIRE(run_until([&] { return s_ec && c_ec; }));
        REQUIRE_FALSE(*s_ec);
        REQUIRE_FALSE(*c_ec);
    }

    /// Reads exactly n bytes on the server's side.
    std::string server_read(std::size_t n)
    {
        std::string got(n, '\0');
        std::optional<beast::error_code> ec;
        net::async_read(*server, net::buffer(got), [&](beast::error_code e, std::size_t) { ec = e; });
        REQUIRE(run_until([&] { return ec.has_value(); }));
        REQUIRE_FALSE(*ec);
        return got;
    }

    void client_write(const std::string& data)
    {
        std::optional<beast::error_code> ec;
        net::async_write(client, net::buffer(data), [&](beast::error_code e, std::size_t) { ec = e; });
        REQUIRE(run_until([&] { return ec.has_value(); }));
        REQUIRE_FALSE(*ec);
    }

    /// The client reads exactly n bytes (and the loop runs until `also` holds too).
    std::string client_read(std::size_t n, const std::function<bool()>& also = [] { return true; })
    {
        std::string got(n, '\0');
        std::optional<beast::error_code> ec;
        net::async_read(client, net::buffer(got), [&](beast::error_code e, std::size_t) { ec = e; });
        REQUIRE(run_until([&] { return ec && also(); }));
        REQUIRE_FALSE(*ec);
        return got;
    }

    /// The server writes data in one write_some while the client reads it: what it got.
    std::string server_to_client(const std::string& data)
    {
        std::optional<beast::error_code> ec;
        std::size_t written = 0;
        server->async_write_some(net::buffer(data), [&](beast::error_code e, std::size_t n) {
            ec = e;
            written = n;
        });
        auto got = client_read(data.size(), [&] { return ec.has_value(); });
        REQUIRE_FALSE(*ec);
        CHECK(written == data.size());  // all of it, once written to the socket
        return got;
    }

    /// The server's next read_some: its error (data, if any, discarded).
    beast::error_code server_read_error()
    {
        std::optional<beast::error_code> ec;
        std::array<char, 4096> buf{};
        std::function<void()> again;
        again = [&] {
            server->async_read_some(net::buffer(buf), [&](beast::error_code e, std::size_t) {
                if (e) {
                    ec = e;
                } else {
                    again();
                }
            });
        };
        again();
        REQUIRE(run_until([&] { return ec.has_value(); }));
        return *ec;
    }
};

} // namespace

TEST_CASE("tls_stream: a handshake, then data both ways, intact")
{
    const bool idle_release = GENERATE(false, true);
    INFO("release_input_when_idle " << idle_release);
    tls_pair p;
    p.handshake();
    p.server->release_input_when_idle(idle_release);
    for (int i = 0; i < 3; ++i) {
        const auto msg = pattern(100 + static_cast<std::size_t>(i), static_cast<std::size_t>(i));
        p.client_write(msg);
        CHECK(p.server_read(msg.size()) == msg);
    }
    const auto big_in = pattern(1 << 20, 5);
    p.client_write(big_in);
    CHECK(p.server_read(big_in.size()) == big_in);

    // 1 MiB out in one write: it completes once all of it is written to the socket.
    const auto big_out = pattern(1 << 20, 9);
    CHECK(p.server_to_client(big_out) == big_out);
    CHECK(p.server->unsent() == 0);
}

TEST_CASE("tls_stream: a write waits for a peer that does not read, and ends when it does")
{
    tls_pair p;
    p.handshake();
    const auto data = pattern(16 << 20, 3);  // far more than the socket buffers hold
    std::optional<beast::error_code> w_ec;
    p.server->async_write_some(net::buffer(data), [&](beast::error_code e, std::size_t) { w_ec = e; });
    CHECK_FALSE(p.run_until([&] { return w_ec.has_value(); }, 300ms));
    CHECK(p.server->unsent() > 0);

    CHECK(p.client_read(data.size(), [&] { return w_ec.has_value(); }) == data);
    CHECK_FALSE(*w_ec);
    CHECK(p.server->unsent() == 0);
}

TEST_CASE("tls_stream: closing it ends a write that waits for a slow peer")
{
    tls_pair p;
    p.handshake();
    const auto data = pattern(16 << 20, 4);
    std::optional<beast::error_code> w_ec;
    p.server->async_write_some(net::buffer(data), [&](beast::error_code e, std::size_t) { w_ec = e; });
    CHECK_FALSE(p.run_until([&] { return w_ec.has_value(); }, 200ms));
    p.server.reset();  // the session gives up on the client
    REQUIRE(p.run_until([&] { return w_ec.has_value(); }));
    CHECK(*w_ec);
}

TEST_CASE("tls_stream: a key update from the peer, and a TLS 1.2 peer")
{
    SECTION("TLS 1.3 key update: the server answers it and both sides go on with new keys")
    {
        const bool idle_release = GENERATE(false, true);
        tls_pair p;
        p.handshake();
        p.server->release_input_when_idle(idle_release);
        REQUIRE(SSL_version(p.client.native_handle()) == TLS1_3_VERSION);
        REQUIRE(SSL_key_update(p.client.native_handle(), SSL_KEY_UPDATE_REQUESTED) == 1);
        p.client_write("after the update");  // the key update goes out first
        CHECK(p.server_read(16) == "after the update");
        const auto reply = pattern(50000, 2);
        CHECK(p.server_to_client(reply) == reply);
    }
    SECTION("TLS 1.2")
    {
        tls_pair p;
        SSL_set_max_proto_version(p.client.native_handle(), TLS1_2_VERSION);
        p.handshake();
        CHECK(SSL_version(p.client.native_handle()) == TLS1_2_VERSION);
        const auto msg = pattern(70000, 8);
        p.client_write(msg);
        CHECK(p.server_read(msg.size()) == msg);
        CHECK(p.server_to_client(msg) == msg);
    }
}

TEST_CASE("tls_stream: the input buffer is 4 KiB while the peer is quiet, larger in a burst")
{
    tls_pair p;
    p.handshake();
    for (int i = 0; i < 20; ++i) {
        const auto msg = pattern(200, static_cast<std::size_t>(i));
        p.client_write(msg);
        CHECK(p.server_read(msg.size()) == msg);
    }
    CHECK(p.server->input_capacity() <= 4096);
    const auto burst = pattern(4 << 20, 1);
    std::optional<beast::error_code> c_ec;
    net::async_write(p.client, net::buffer(burst), [&](beast::error_code e, std::size_t) { c_ec = e; });
    CHECK(p.server_read(burst.size()) == burst);
    REQUIRE(p.run_until([&] { return c_ec.has_value(); }));
    CHECK(p.server->input_capacity() >= 64 * 1024);
    for (int i = 0; i < 2; ++i) {
        const auto msg = pattern(200, 50 + static_cast<std::size_t>(i));
        p.client_write(msg);
        CHECK(p.server_read(msg.size()) == msg);
    }
    CHECK(p.server->input_capacity() <= 4096);
}

TEST_CASE("tls_stream: release_input_when_idle: a read waiting for its peer holds no buffer")
{
    tls_pair p;
    p.handshake();
    p.server->release_input_when_idle(true);
    for (int i = 0; i < 5; ++i) {
        const auto msg = pattern(300, static_cast<std::size_t>(i));
        p.client_write(msg);
        CHECK(p.server_read(msg.size()) == msg);
    }
    // A read that waits: no input buffer meanwhile, and it gets what comes next.
    std::string got(100, '\0');
    std::optional<beast::error_code> ec;
    std::size_t n = 0;
    p.server->async_read_some(net::buffer(got), [&](beast::error_code e, std::size_t m) {
        ec = e;
        n = m;
    });
    CHECK_FALSE(p.run_until([&] { return ec.has_value(); }, 100ms));
    CHECK(p.server->input_capacity() == 0);
    p.client_write("woken");
    REQUIRE(p.run_until([&] { return ec.has_value(); }));
    REQUIRE_FALSE(*ec);
    CHECK(got.substr(0, n) == "woken");

    // A burst read in small pieces: what OpenSSL has not taken is kept between reads, in
    // order, and let go once it is used up.
    const auto burst = pattern(3 << 20, 7);
    std::optional<beast::error_code> c_ec;
    net::async_write(p.client, net::buffer(burst), [&](beast::error_code e, std::size_t) { c_ec = e; });
    std::string in;
    std::array<char, 1000> piece{};
    while (in.size() < burst.size()) {
        std::optional<beast::error_code> r_ec;
        std::size_t m = 0;
        p.server->async_read_some(net::buffer(piece), [&](beast::error_code e, std::size_t k) {
            r_ec = e;
            m = k;
        });
        REQUIRE(p.run_until([&] { return r_ec.has_value(); }));
        REQUIRE_FALSE(*r_ec);
        in.append(piece.data(), m);
    }
    REQUIRE(p.run_until([&] { return c_ec.has_value(); }));
    CHECK(in == burst);
    std::optional<beast::error_code> last;
    p.server->async_read_some(net::buffer(piece), [&](beast::error_code e, std::size_t) { last = e; });
    CHECK_FALSE(p.run_until([&] { return last.has_value(); }, 100ms));
    CHECK(p.server->input_capacity() == 0);

    // The socket closed under the wait (how a session's deadline acts): the read ends.
    beast::error_code ignored;
    beast::get_lowest_layer(*p.server).socket().close(ignored);
    REQUIRE(p.run_until([&] { return last.has_value(); }));
    CHECK(*last);
}

TEST_CASE("tls_stream: the output buffers go once the connection is quiet")
{
    tls_pair p;
    p.handshake();
    for (int round = 0; round < 2; ++round) {
        const auto data = pattern(512 * 1024, static_cast<std::size_t>(round));
        CHECK(p.server_to_client(data) == data);
        CHECK(p.server->output_capacity() >= data.size());  // kept while output may follow
        CHECK(p.run_until([&] { return p.server->output_capacity() == 0; }, 1000ms));
    }
}

TEST_CASE("tls_stream: how the peer ends the stream")
{
    const bool idle_release = GENERATE(false, true);
    INFO("release_input_when_idle " << idle_release);
    SECTION("close_notify: end of stream")
    {
        tls_pair p;
        p.handshake();
        p.server->release_input_when_idle(idle_release);
        std::optional<beast::error_code> ec;
        p.client.async_shutdown([&](beast::error_code e) { ec = e; });
        p.run_until([&] { return ec.has_value(); }, 200ms);  // it waits for ours: not needed
        CHECK(p.server_read_error() == net::error::eof);
    }
    SECTION("TCP closed between records, no close_notify: end of stream")
    {
        tls_pair p;
        p.handshake();
        p.server->release_input_when_idle(idle_release);
        p.client_write("the last words");
        CHECK(p.server_read(14) == "the last words");
        // (shutdown, not close: the session tickets it never read would make close a reset)
        p.client.next_layer().shutdown(tcp::socket::shutdown_send);
        CHECK(p.server_read_error() == net::error::eof);
    }
    SECTION("TCP closed in the middle of a record: truncated")
    {
        tls_pair p;
        p.handshake();
        p.server->release_input_when_idle(idle_release);
        // An application-data record header that announces 64 bytes, and 10 of them.
        const std::string partial("\x17\x03\x03\x00\x40" "0123456789", 15);
        net::write(p.client.next_layer(), net::buffer(partial));
        p.client.next_layer().shutdown(tcp::socket::shutdown_send);
        CHECK(p.server_read_error() == net::ssl::error::stream_truncated);
    }
    SECTION("a forged record: an OpenSSL error, not a crash")
    {
        tls_pair p;
        p.handshake();
        p.server->release_input_when_idle(idle_release);
        const std::string forged = std::string("\x17\x03\x03\x00\x40", 5) + std::string(64, 'x');
        net::write(p.client.next_layer(), net::buffer(forged));
        const auto ec = p.server_read_error();
        CHECK(ec.category() == net::error::get_ssl_category());
    }
}

TEST_CASE("tls_stream: a handshake that cannot happen fails cleanly")
{
    SECTION("plain HTTP to the TLS port")
    {
        tls_pair p;
        net::write(p.client.next_layer(), net::buffer(std::string("GET / HTTP/1.1\r\n\r\n")));
        std::optional<beast::error_code> ec;
        p.server->async_handshake([&](beast::error_code e) { ec = e; });
        REQUIRE(p.run_until([&] { return ec.has_value(); }));
        CHECK(ec->category() == net::error::get_ssl_category());
    }
    SECTION("a client that connects and says nothing: the stream's deadline")
    {
        tls_pair p;
        beast::get_lowest_layer(*p.server).expires_after(100ms);
        std::optional<beast::error_code> ec;
        p.server->async_handshake([&](beast::error_code e) { ec = e; });
        REQUIRE(p.run_until([&] { return ec.has_value(); }));
        CHECK(*ec == beast::error::timeout);
    }
    SECTION("a client that hangs up half-way")
    {
        tls_pair p;
        p.client.next_layer().close();
        std::optional<beast::error_code> ec;
        p.server->async_handshake([&](beast::error_code e) { ec = e; });
        REQUIRE(p.run_until([&] { return ec.has_value(); }));
        CHECK(*ec);
    }
}

TEST_CASE("tls_stream: random bytes, before or after the handshake, end in an error")
{
    std::mt19937 rng(20261203);
    for (int round = 0; round < 40; ++round) {
        const bool after_handshake = round % 2 == 1;
        tls_pair p;
        if (after_handshake) {
            p.handshake();
            p.server->release_input_when_idle(round % 4 == 1);
        }
        std::string junk(1 + rng() % 20000, '\0');
        for (auto& c : junk) {
            c = static_cast<char>(rng());
        }
        if (round % 4 < 2) {
            junk[0] = after_handshake ? '\x17' : '\x16';  // a plausible record type
        }
        net::write(p.client.next_layer(), net::buffer(junk));
        p.client.next_layer().shutdown(tcp::socket::shutdown_send);
        beast::error_code ec;
        if (after_handshake) {
            ec = p.server_read_error();
        } else {
            std::optional<beast::error_code> hs;
            p.server->async_handshake([&](beast::error_code e) { hs = e; });
            REQUIRE(p.run_until([&] { return hs.has_value(); }));
            ec = *hs;
        }
        INFO("round " << round << ", " << junk.size() << " bytes: " << ec.message());
        CHECK(ec);
        CHECK(ec != net::error::eof);  // junk is never a clean end of stream
    }
}

TEST_CASE("tls_stream: shutdown sends close_notify")
{
    tls_pair p;
    p.handshake();
    std::optional<beast::error_code> s_ec;
    p.server->async_shutdown([&](beast::error_code e) { s_ec = e; });
    REQUIRE(p.run_until([&] { return s_ec.has_value(); }));
    CHECK_FALSE(*s_ec);
    std::array<char, 16> buf{};
    std::optional<beast::error_code> r_ec;
    p.client.async_read_some(net::buffer(buf), [&](beast::error_code e, std::size_t) { r_ec = e; });
    REQUIRE(p.run_until([&] { return r_ec.has_value(); }));
    CHECK(*r_ec == net::error::eof);  // asio's word for a close_notify received
}

TEST_CASE("tls_stream: a WebSocket over it, with batched writes, echoes and closes")
{
    tls_pair p;
    p.handshake();
    websocket::stream<batching_stream<tls_stream>> server_ws(std::move(*p.server));
    websocket::stream<net::ssl::stream<tcp::socket>&> client_ws(p.client);
    std::optional<beast::error_code> accepted;
    std::optional<beast::error_code> connected;
    server_ws.async_accept([&](beast::error_code e) { accepted = e; });
    client_ws.async_handshake("127.0.0.1", "/", [&](beast::error_code e) { connected = e; });
    REQUIRE(p.run_until([&] { return accepted && connected; }));
    REQUIRE_FALSE(*accepted);
    REQUIRE_FALSE(*connected);

    // The server answers every frame with a bigger one (batched, over TLS).
    beast::flat_buffer in;
    std::function<void()> serve;
    std::optional<beast::error_code> served;
    serve = [&] {
        server_ws.async_read(in, [&](beast::error_code e, std::size_t) {
            if (e) {
                served = e;
                return;
            }
            const auto text = beast::buffers_to_string(in.data());
            in.consume(in.size());
            server_ws.text(true);
            server_ws.write(net::buffer(text + pattern(100000, text.size())));  // appends
            serve();
        });
    };
    serve();
    for (int i = 0; i < 5; ++i) {
        const auto msg = "frame " + std::to_string(i);
        std::optional<beast::error_code> w;
        client_ws.async_write(net::buffer(msg), [&](beast::error_code e, std::size_t) { w = e; });
        beast::flat_buffer reply;
        std::optional<beast::error_code> r;
        client_ws.async_read(reply, [&](beast::error_code e, std::size_t) { r = e; });
        REQUIRE(p.run_until([&] { return w && r; }));
        REQUIRE_FALSE(*r);
        CHECK(beast::buffers_to_string(reply.data()) == msg + pattern(100000, msg.size()));
    }
    // The client closes: it gets the server's close frame and close_notify; the server's
    // read ends with "closed" (after its teardown, which ends with the client's TCP close).
    std::optional<beast::error_code> closed;
    client_ws.async_close(websocket::close_code::normal, [&](beast::error_code e) { closed = e; });
    REQUIRE(p.run_until([&] { return closed.has_value(); }));
    CHECK_FALSE(*closed);
    p.client.next_layer().shutdown(tcp::socket::shutdown_send);
    REQUIRE(p.run_until([&] { return served.has_value(); }));
    CHECK(*served == websocket::error::closed);
}
