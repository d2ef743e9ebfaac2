// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/connection_info.hpp"

#include <array>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "zmq_protocol/errc.hpp"
#include "zmq_protocol/wire_codec.hpp"

namespace fs = std::filesystem;
namespace zp = kernelgate::zmq_protocol;
using nlohmann::json;
using zp::errc;

namespace {

/// Matches a fixed-width pattern: 'x' a lower-case hex digit, 'd' a decimal digit, 'v' one
/// of 8, 9, a, b (the UUID variant), anything else itself. (No <regex>: g++ 12 warns inside
/// it under the sanitizers.)
bool matches(std::string_view s, std::string_view pattern)
{
    if (s.size() != pattern.size()) {
        return false;
    }
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        const bool digit = c >= '0' && c <= '9';
        switch (pattern[i]) {
        case 'x':
            if (!digit && !(c >= 'a' && c <= 'f')) {
                return false;
            }
            break;
        case 'd':
            if (!digit) {
                return false;
            }
            break;
        case 'v':
            if (c != '8' && c != '9' && c != 'a' && c != 'b') {
                return false;
            }
            break;
        default:
            if (c != pattern[i]) {
                return false;
            }
        }
    }
    return true;
}

/// A fresh directory under the system temp dir, removed at the end of the test.
class temp_dir
{
public:
    temp_dir() : path_(fs::temp_directory_path() / ("kernelgate-test-" + zp::new_uuid()))
    {
        fs::create_directories(path_);
    }
    ~temp_dir()
    {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

void write_text(const fs::path& p, const std::string& text)
{
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << text;
}

unsigned mode_of(const fs::path& p)
{
    struct stat st
    {
    };
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// What jupyter_client 7.4's write_connection_file() wrote (captured when writing the test).
constexpr const char* jupyter_client_file = R"({
  "shell_port": 5001,
  "iopub_port": 5002,
  "stdin_port": 5003,
  "control_port": 5005,
  "hb_port": 5004,
  "ip": "127.0.0.1",
  "key": "abc123",
  "transport": "tcp",
  "signature_scheme": "hmac-sha256",
  "kernel_name": "python3"
})";

zp::connection_info sample()
{
    zp::connection_info info;
    info.ip = "10.1.2.3";
    info.shell_port = 1;
    info.iopub_port = 65535;
    info.stdin_port = 40000;
    info.control_port = 40001;
    info.hb_port = 40002;
    info.key = zp::new_key();
    info.kernel_name = "python3";
    return info;
}

bool same(const zp::connection_info& a, const zp::connection_info& b)
{
    return a.transport == b.transport && a.ip == b.ip && a.shell_port == b.shell_port &&
           a.iopub_port == b.iopub_port && a.stdin_port == b.stdin_port &&
           a.control_port == b.control_port && a.hb_port == b.hb_port && a.key == b.key &&
           a.signature_scheme == b.signature_scheme && a.kernel_name == b.kernel_name;
}

} // namespace

TEST_CASE("connection_info: reads jupyter_client's file format", "[connection]")
{
    auto r = zp::connection_info::from_json(json::parse(jupyter_client_file));
    REQUIRE(r.has_value());
    CHECK(r->shell_port == 5001);
    CHECK(r->iopub_port == 5002);
    CHECK(r->stdin_port == 5003);
    CHECK(r->control_port == 5005);
    CHECK(r->hb_port == 5004);
    CHECK(r->ip == "127.0.0.1");
    CHECK(r->key == "abc123");
    CHECK(r->transport == "tcp");
    CHECK(r->signature_scheme == "hmac-sha256");
    CHECK(r->kernel_name == "python3");
    // And writes the same keys back.
    CHECK(r->to_json() == json::parse(jupyter_client_file));
}

TEST_CASE("connection_info: json round trip and defaults", "[connection]")
{
    const auto info = sample();
    auto r = zp::connection_info::from_json(info.to_json());
    REQUIRE(r.has_value());
    CHECK(same(r.value(), info));

    // Optional keys: transport, signature_scheme, kernel_name; extra keys are ignored.
    json j = json::parse(jupyter_client_file);
    j.erase("transport");
    j.erase("signature_scheme");
    j.erase("kernel_name");
    j["curve_publickey"] = "ignored";
    auto d = zp::connection_info::from_json(j);
    REQUIRE(d.has_value());
    CHECK(d->transport == "tcp");
    CHECK(d->signature_scheme == "hmac-sha256");
    CHECK(d->kernel_name.empty());

    // Ports built in code as signed integers are fine too.
    j["shell_port"] = 6000;
    j["key"] = "";
    auto e = zp::connection_info::from_json(j);
    REQUIRE(e.has_value());
    CHECK(e->shell_port == 6000);
    CHECK(e->key.empty());
}

TEST_CASE("connection_info: endpoints", "[connection]")
{
    zp::connection_info info;
    info.ip = "127.0.0.1";
    CHECK(info.endpoint(5555) == "tcp://127.0.0.1:5555");
    info.transport = "ipc";
    info.ip = "/tmp/kernel-abc";
    CHECK(info.endpoint(3) == "ipc:///tmp/kernel-abc-3");

    zp::connection_info u;
    u.use_ipc("/run/kg/kernel-x-ipc");
    CHECK(u.transport == "ipc");
    CHECK(u.endpoint(u.shell_port) == "ipc:///run/kg/kernel-x-ipc-1");
    CHECK(u.endpoint(u.hb_port) == "ipc:///run/kg/kernel-x-ipc-5");
    // Five distinct sockets, and a file jupyter_client reads back the same.
    CHECK(std::set<std::uint16_t>{u.shell_port, u.iopub_port, u.stdin_port, u.control_port,
                                  u.hb_port}
              .size() == 5);
    CHECK(u.ipc_paths() == std::vector<std::string>{
                               "/run/kg/kernel-x-ipc-1", "/run/kg/kernel-x-ipc-2",
                               "/run/kg/kernel-x-ipc-3", "/run/kg/kernel-x-ipc-4",
                               "/run/kg/kernel-x-ipc-5"});
    auto back = zp::connection_info::from_json(u.to_json());
    REQUIRE(back.has_value());
    CHECK(back->transport == "ipc");
    CHECK(back->ip == u.ip);
    CHECK(back->iopub_port == u.iopub_port);

    const std::array<std::uint16_t, 5> ports{5001, 5002, 5003, 5004, 5005};
    u.use_tcp("127.0.0.1", ports);
    CHECK(u.transport == "tcp");
    CHECK(u.endpoint(u.shell_port) == "tcp://127.0.0.1:5001");
    CHECK(u.iopub_port == 5002);
    CHECK(u.stdin_port == 5003);
    CHECK(u.control_port == 5004);
    CHECK(u.hb_port == 5005);
    CHECK(u.ipc_paths().empty());
}

TEST_CASE("connection_info: refuses bad contents", "[connection]")
{
    const json good = json::parse(jupyter_client_file);
    auto refuse = [](const json& j) {
        const auto r = zp::connection_info::from_json(j);
        return !r.has_value() && r.error() == errc::bad_connection_info;
    };
    REQUIRE_FALSE(refuse(good));

    CHECK(refuse(json::array()));
    CHECK(refuse(json("a string")));
    CHECK(refuse(json::object()));
    for (const char* port : {"shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"}) {
        INFO(port);
        json j = good;
        j.erase(port);
        CHECK(refuse(j));
        for (const json& bad : {json(0), json(65536), json(-1), json(-65535), json("5001"),
                               json(5001.0), json(nullptr), json(true),
                               json(std::uint64_t(1) << 63)}) {
            j[port] = bad;
            CHECK(refuse(j));
        }
        j[port] = 65535;
        CHECK_FALSE(refuse(j));
    }
    for (const char* field : {"ip", "key"}) {
        json j = good;
        j.erase(field);
        CHECK(refuse(j));
        j[field] = 5;
        CHECK(refuse(j));
    }
    json j = good;
    j["ip"] = "";
    CHECK(refuse(j));
    j = good;
    j["transport"] = "udp";
    CHECK(refuse(j));
    j["transport"] = 1;
    CHECK(refuse(j));
    j = good;
    j["signature_scheme"] = "hmac-md5";
    CHECK(refuse(j));
    j["signature_scheme"] = "HMAC-SHA256";
    CHECK(refuse(j));
    j = good;
    j["kernel_name"] = json::array();
    CHECK(refuse(j));
}

TEST_CASE("connection file: written 0600, atomically, and read back", "[connection]")
{
    temp_dir dir;
    const fs::path file = dir.path() / "kernel-1.json";
    const auto info = sample();

    SECTION("fresh file")
    {
        zp::write_connection_file(file, info);
        CHECK(mode_of(file) == 0600);
        auto r = zp::read_connection_file(file);
        REQUIRE(r.has_value());
        CHECK(same(r.value(), info));
    }
    SECTION("a permissive umask does not widen the mode")
    {
        const mode_t old = ::umask(0);
        zp::write_connection_file(file, info);
        ::umask(old);
        CHECK(mode_of(file) == 0600);
    }
    SECTION("replacing a world-readable file leaves a 0600 file")
    {
        write_text(file, "old");
        fs::permissions(file, fs::perms(0644));
        REQUIRE(mode_of(file) == 0644);
        zp::write_connection_file(file, info);
        CHECK(mode_of(file) == 0600);
        CHECK(zp::read_connection_file(file).has_value());
    }
    SECTION("no temporary file is left behind")
    {
        zp::write_connection_file(file, info);
        zp::write_connection_file(file, info);
        std::size_t entries = 0;
        for (const auto& e : fs::directory_iterator(dir.path())) {
            CHECK(e.path().filename() == "kernel-1.json");
            ++entries;
        }
        CHECK(entries == 1);
    }
    SECTION("a missing directory throws")
    {
        CHECK_THROWS_AS(zp::write_connection_file(dir.path() / "nope" / "k.json", info),
                        std::system_error);
    }
}

TEST_CASE("connection file: bad files", "[connection]")
{
    temp_dir dir;
    const fs::path file = dir.path() / "bad.json";

    SECTION("missing file is an OS error")
    {
        const auto r = zp::read_connection_file(dir.path() / "missing.json");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error() == std::errc::no_such_file_or_directory);
    }
    SECTION("a directory is not a file")
    {
        CHECK_FALSE(zp::read_connection_file(dir.path()).has_value());
    }
    for (const std::string& text :
         {std::string(), std::string("{"), std::string("not json"), std::string("[]"),
          std::string(R"({"shell_port": 1})"), std::string("\xff\xfe{}"),
          std::string(jupyter_client_file) + "trailing"}) {
        SECTION("bad content: " + text.substr(0, 12))
        {
            write_text(file, text);
            const auto r = zp::read_connection_file(file);
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error() == errc::bad_connection_info);
        }
    }
    SECTION("oversized file")
    {
        write_text(file, std::string(jupyter_client_file) + std::string(100000, ' '));
        const auto r = zp::read_connection_file(file);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error() == errc::bad_connection_info);
    }
}

TEST_CASE("new_key: 256 random bits in hex", "[connection]")
{
    std::set<std::string> keys;
    for (int i = 0; i < 100; ++i) {
        const std::string k = zp::new_key();
        REQUIRE(matches(k, std::string(64, 'x')));
        keys.insert(k);
    }
    CHECK(keys.size() == 100);
}
