// SPDX-License-Identifier: BSD-3-Clause
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <catch2/catch.hpp>

#include "sessions/kernelspec.hpp"
#include "sessions/local_host.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace kernelgate::sessions;

namespace {

struct temp_dir : kernelgate::testing::temp_dir
{
    temp_dir() : kernelgate::testing::temp_dir("kg-spec") {}
};

void write_spec(const fs::path& dir, const std::string& json)
{
    fs::create_directories(dir);
    std::ofstream(dir / "kernel.json") << json;
}

struct env_guard
{
    std::string name;
    std::optional<std::string> old;
    env_guard(std::string n, const std::string& value) : name(std::move(n))
    {
        if (const char* v = std::getenv(name.c_str())) {
            old = v;
        }
        ::setenv(name.c_str(), value.c_str(), 1);
    }
    ~env_guard()
    {
        if (old) {
            ::setenv(name.c_str(), old->c_str(), 1);
        } else {
            ::unsetenv(name.c_str());
        }
    }
};

} // namespace

TEST_CASE("kernel names follow jupyter_client's pattern")
{
    CHECK(valid_kernel_name("python3"));
    CHECK(valid_kernel_name("conda-env-ml_1.2-py"));
    CHECK_FALSE(valid_kernel_name(""));
    CHECK_FALSE(valid_kernel_name("../x"));
    CHECK_FALSE(valid_kernel_name("py;rm -rf /"));
    CHECK_FALSE(valid_kernel_name("a/b"));
    CHECK_FALSE(valid_kernel_name(std::string(200, 'a')));
}

TEST_CASE("${VAR} expansion in kernelspec env")
{
    const std::map<std::string, std::string> env{{"HOME", "/home/u"}, {"X", "1"}};
    CHECK(expand_vars("${HOME}/lib:${X}", env) == "/home/u/lib:1");
    CHECK(expand_vars("${NOPE}-a", env) == "-a");
    CHECK(expand_vars("plain $HOME {x}", env) == "plain $HOME {x}");
    CHECK(expand_vars("${unterminated", env) == "${unterminated");
}

TEST_CASE("discovery: JUPYTER_PATH, user dir, precedence and invalid specs")
{
    temp_dir home;
    temp_dir jp;
    write_spec(jp.path / "kernels" / "mine", R"({"argv":["/bin/true","{connection_file}"],
        "display_name":"Mine","language":"x","interrupt_mode":"message",
        "env":{"A":"${HOME}/a"},"metadata":{"m":1}})");
    write_spec(jp.path / "kernels" / "broken", "{not json");
    write_spec(jp.path / "kernels" / "noargv", R"({"display_name":"x"})");
    write_spec(home.path / ".local/share/jupyter/kernels" / "mine",
               R"({"argv":["/bin/false"],"display_name":"Shadowed"})");
    write_spec(home.path / ".local/share/jupyter/kernels" / "UserK",
               R"({"argv":["/bin/false"],"display_name":"User kernel"})");
    env_guard g1("JUPYTER_PATH", jp.path.string());
    env_guard g2("JUPYTER_DATA_DIR", (home.path / ".local/share/jupyter").string());
    discovery_options o;
    o.home = home.path;
    o.include_conda = false;
    const auto specs = discover_kernelspecs(o);
    REQUIRE(specs.contains("mine"));
    CHECK(specs.at("mine").display_name == "Mine");  // JUPYTER_PATH wins over the user dir
    CHECK(specs.at("mine").interrupt_mode == "message");
    CHECK(specs.at("mine").env.at("A") == "${HOME}/a");  // expanded at launch, not here
    CHECK(specs.at("mine").spec_json()["metadata"]["m"] == 1);
    CHECK(specs.contains("userk"));  // names are matched case-insensitively
    CHECK_FALSE(specs.contains("broken"));
    CHECK_FALSE(specs.contains("noargv"));
}

TEST_CASE("resource files are allowlisted")
{
    temp_dir d;
    write_spec(d.path, R"({"argv":["x"]})");
    for (const char* f : {"logo-64x64.png", "logo-svg.svg", "kernel.js", "kernel.css",
                          "secret.txt", "logo-64x64.exe"}) {
        std::ofstream(d.path / f) << "x";
    }
    const auto spec = load_kernelspec(d.path, "k");
    REQUIRE(spec);
    const auto files = spec->resource_files();
    CHECK(files == std::vector<std::string>{"kernel.css", "kernel.js", "logo-64x64.png",
                                            "logo-svg.svg"});
}

TEST_CASE("discovery: conda environments with ipykernel become kernelspecs")
{
    temp_dir home;
    const auto root = home.path / "miniconda3";
    fs::create_directories(root / "conda-meta");
    // env "ml" has ipykernel (recorded in conda-meta), env "bare" does not.
    fs::create_directories(root / "envs/ml/conda-meta");
    std::ofstream(root / "envs/ml/conda-meta/ipykernel-6.29.0-pyh1.json") << "{}";
    fs::create_directories(root / "envs/bare/conda-meta");
    // env "r" ships its own R kernelspec.
    fs::create_directories(root / "envs/r/conda-meta");
    write_spec(root / "envs/r/share/jupyter/kernels/ir",
               R"({"argv":["R","--slave","-f","{connection_file}"],"display_name":"R",
                   "language":"R"})");
    // An env registered only in ~/.conda/environments.txt.
    const auto other = home.path / "elsewhere/proj";
    fs::create_directories(other / "conda-meta");
    fs::create_directories(other / "lib/python3.11/site-packages/ipykernel");
    fs::create_directories(home.path / ".conda");
    std::ofstream(home.path / ".conda/environments.txt") << other.string() << "\n";

    env_guard g("CONDA_PREFIX", (root / "envs/ml").string());
    discovery_options o;
    o.home = home.path;
    const auto specs = discover_kernelspecs(o);
    REQUIRE(specs.contains("conda-env-ml-py"));
    const auto& ml = specs.at("conda-env-ml-py");
    CHECK(ml.argv.front() == (fs::canonical(root / "envs/ml") / "bin/python").string());
    CHECK(ml.argv.back() == "{connection_file}");
    CHECK(ml.display_name == "Python [conda env:ml]");
    CHECK(ml.metadata["conda_env_name"] == "ml");
    CHECK_FALSE(specs.contains("conda-env-bare-py"));
    CHECK(specs.contains("conda-env-r-ir"));
    CHECK(specs.at("conda-env-r-ir").display_name == "R [conda env:r]");
    CHECK_FALSE(specs.contains("conda-env-base-py"));  // base has no ipykernel
    // An env outside any envs/ dir is named after its directory.
    CHECK(specs.contains("conda-env-proj-py"));
    bool found_other = false;
    for (const auto& [n, s] : specs) {
        if (s.metadata.contains("conda_env_path") &&
            s.metadata["conda_env_path"] == fs::canonical(other).string()) {
            found_other = true;
        }
    }
    CHECK(found_other);
}

TEST_CASE("kernel transport: which kernels are reached over ipc under auto")
{
    CHECK(parse_kernel_transport("auto") == kernel_transport::automatic);
    CHECK(parse_kernel_transport("tcp") == kernel_transport::tcp);
    CHECK(parse_kernel_transport("ipc") == kernel_transport::ipc);
    CHECK_FALSE(parse_kernel_transport("IPC"));
    CHECK_FALSE(parse_kernel_transport(""));
    CHECK_FALSE(parse_kernel_transport("udp"));

    kernelspec py;
    py.argv = {"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"};
    CHECK(kernel_speaks_ipc(py));
    py.argv = {"python", "-m", "ipykernel", "-f", "{connection_file}"};
    CHECK(kernel_speaks_ipc(py));
    // Other kernels build "transport://ip:port" whatever the file says: tcp unless told.
    kernelspec ir;
    ir.argv = {"R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"};
    CHECK_FALSE(kernel_speaks_ipc(ir));
    kernelspec tricky;  // "ipykernel" as a value of another option is not ipykernel running
    tricky.argv = {"mykernel", "--name", "ipykernel_launcher", "-f", "{connection_file}"};
    CHECK_FALSE(kernel_speaks_ipc(tricky));
    CHECK_FALSE(kernel_speaks_ipc(kernelspec{}));

    // The spec's metadata decides both ways.
    ir.metadata = {{"kernelgate", {{"transport", "ipc"}}}};
    CHECK(kernel_speaks_ipc(ir));
    py.metadata = {{"kernelgate", {{"transport", "tcp"}}}};
    CHECK_FALSE(kernel_speaks_ipc(py));
    py.metadata = {{"kernelgate", {{"transport", 5}}}};  // not a string: ignored
    CHECK(kernel_speaks_ipc(py));
    py.metadata = {{"kernelgate", "ipc"}};  // not an object: ignored
    CHECK(kernel_speaks_ipc(py));
}
