// SPDX-License-Identifier: BSD-3-Clause
#include "sessions/kernelspec.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>

namespace kernelgate::sessions {

namespace fs = std::filesystem;

namespace {

std::string getenv_str(const char* name)
{
    const char* v = std::getenv(name);
    return v != nullptr ? std::string(v) : std::string();
}

std::vector<std::string> split(const std::string& s, char sep)
{
    std::vector<std::string> out;
    std::string cur;
    std::istringstream in(s);
    while (std::getline(in, cur, sep)) {
        if (!cur.empty()) {
            out.push_back(cur);
        }
    }
    return out;
}

std::string lower(std::string s)
{
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

/// The sys.prefix of the python3 found on PATH, derived without running it: the directory
/// above the bin/ holding it (a symlink is followed only for the bin dir, as venvs do).
std::optional<fs::path> python_prefix()
{
    for (const auto& dir : split(getenv_str("PATH"), ':')) {
        const fs::path candidate = fs::path(dir) / "python3";
        std::error_code ec;
        if (fs::exists(candidate, ec)) {
            return fs::path(dir).parent_path();
        }
    }
    return std::nullopt;
}

bool has_ipykernel(const fs::path& env)
{
    std::error_code ec;
    // conda records installed packages in conda-meta/<name>-<version>-<build>.json
    if (fs::is_directory(env / "conda-meta", ec)) {
        for (const auto& e : fs::directory_iterator(env / "conda-meta", ec)) {
            if (e.path().filename().string().rfind("ipykernel-", 0) == 0) {
                return true;
            }
        }
    }
    for (const auto& e : fs::directory_iterator(env / "lib", ec)) {
        const auto n = e.path().filename().string();
        if (n.rfind("python3", 0) == 0 &&
            fs::exists(e.path() / "site-packages" / "ipykernel", ec)) {
            return true;
        }
    }
    return false;
}

struct conda_env
{
    std::string name;
    fs::path prefix;
};

std::vector<conda_env> find_conda_envs(const fs::path& home)
{
    std::vector<conda_env> envs;
    std::set<fs::path> seen;
    std::error_code ec;
    auto add = [&](const fs::path& p, std::string name) {
        const auto canon = fs::weakly_canonical(p, ec);
        if (ec || !fs::is_directory(canon / "conda-meta", ec) || !seen.insert(canon).second) {
            return;
        }
        envs.push_back({std::move(name), canon});
    };
    auto add_root = [&](const fs::path& root) {
        if (!fs::is_directory(root / "conda-meta", ec)) {
            return;
        }
        add(root, "base");
        for (const auto& e : fs::directory_iterator(root / "envs", ec)) {
            add(e.path(), e.path().filename().string());
        }
    };
    if (auto p = getenv_str("CONDA_PREFIX"); !p.empty()) {
        const fs::path prefix(p);
        // An env inside <root>/envs/ is named after its directory; a root is "base".
        if (prefix.parent_path().filename() == "envs") {
            add_root(prefix.parent_path().parent_path());
            add(prefix, prefix.filename().string());
        } else {
            add_root(prefix);
        }
    }
    if (auto exe = getenv_str("CONDA_EXE"); !exe.empty()) {
        add_root(fs::path(exe).parent_path().parent_path());
    }
    for (const auto& d : split(getenv_str("CONDA_ENVS_PATH"), ':')) {
        for (const auto& e : fs::directory_iterator(d, ec)) {
            add(e.path(), e.path().filename().string());
        }
    }
    for (const char* root : {"miniconda3", "anaconda3", "miniforge3", "mambaforge", "conda",
                             ".conda"}) {
        add_root(home / root);
    }
    for (const char* root : {"/opt/conda", "/opt/miniconda3", "/opt/anaconda3",
                             "/opt/miniforge3", "/usr/local/miniconda3", "/usr/local/conda"}) {
        add_root(root);
    }
    std::ifstream txt(home / ".conda" / "environments.txt");
    std::string line;
    while (std::getline(txt, line)) {
        if (line.empty()) {
            continue;
        }
        const fs::path p(line);
        // A conda install's root is "base"; any other env is named after its directory.
        add(p, fs::is_directory(p / "envs", ec) || fs::exists(p / "condabin", ec)
                   ? std::string("base")
                   : p.filename().string());
    }
    return envs;
}

void scan_dir(const fs::path& kernels_dir, const std::string& source,
              std::map<std::string, kernelspec>& out)
{
    std::error_code ec;
    if (!fs::is_directory(kernels_dir, ec)) {
        return;
    }
    for (const auto& e : fs::directory_iterator(kernels_dir, ec)) {
        if (!e.is_directory(ec)) {
            continue;
        }
        const auto name = lower(e.path().filename().string());
        if (!valid_kernel_name(name) || out.contains(name)) {
            continue;
        }
        if (auto spec = load_kernelspec(e.path(), name)) {
            spec->source = source;
            out.emplace(name, std::move(*spec));
        }
    }
}

} // namespace

bool valid_kernel_name(const std::string& name)
{
    if (name.empty() || name.size() > 128) {
        return false;
    }
    return std::all_of(name.begin(), name.end(), [](unsigned char c) {
        return std::isalnum(c) != 0 || c == '.' || c == '_' || c == '-';
    });
}

std::string expand_vars(const std::string& text, const std::map<std::string, std::string>& env)
{
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '$' && i + 1 < text.size() && text[i + 1] == '{') {
            const auto end = text.find('}', i + 2);
            if (end != std::string::npos) {
                const auto var = text.substr(i + 2, end - i - 2);
                if (auto it = env.find(var); it != env.end()) {
                    out += it->second;
                }
                i = end;
                continue;
            }
        }
        out += text[i];
    }
    return out;
}

std::optional<kernelspec> load_kernelspec(const fs::path& dir, const std::string& name)
{
    std::ifstream in(dir / "kernel.json");
    if (!in) {
        return std::nullopt;
    }
    const auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("argv") || !j["argv"].is_array() ||
        j["argv"].empty()) {
        spdlog::warn("kernelspec {}: invalid kernel.json, skipped", name);
        return std::nullopt;
    }
    kernelspec s;
    s.name = name;
    s.dir = dir;
    for (const auto& a : j["argv"]) {
        if (!a.is_string()) {
            return std::nullopt;
        }
        s.argv.push_back(a.get<std::string>());
    }
    s.display_name = j.value("display_name", name);
    s.language = j.value("language", "");
    s.interrupt_mode = j.value("interrupt_mode", "signal");
    if (s.interrupt_mode != "message") {
        s.interrupt_mode = "signal";
    }
    if (j.contains("env") && j["env"].is_object()) {
        for (const auto& [k, v] : j["env"].items()) {
            if (v.is_string()) {
                s.env[k] = v.get<std::string>();
            }
        }
    }
    if (j.contains("metadata") && j["metadata"].is_object()) {
        s.metadata = j["metadata"];
    }
    s.kernel_protocol_version = j.value("kernel_protocol_version", "");
    return s;
}

nlohmann::json kernelspec::spec_json() const
{
    nlohmann::json j = {{"argv", argv},
                        {"display_name", display_name},
                        {"language", language},
                        {"interrupt_mode", interrupt_mode},
                        {"env", env},
                        {"metadata", metadata}};
    if (!kernel_protocol_version.empty()) {
        j["kernel_protocol_version"] = kernel_protocol_version;
    }
    return j;
}

std::vector<std::string> kernelspec::resource_files() const
{
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const auto n = e.path().filename().string();
        const bool allowed = n == "kernel.js" || n == "kernel.css" ||
                             (n.rfind("logo-", 0) == 0 &&
                              (n.ends_with(".png") || n.ends_with(".svg")));
        if (allowed && e.is_regular_file(ec)) {
            out.push_back(n);
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::map<std::string, kernelspec> discover_kernelspecs(const discovery_options& opts)
{
    std::map<std::string, kernelspec> out;
    const fs::path home = opts.home ? *opts.home : fs::path(getenv_str("HOME"));
    for (const auto& d : opts.extra_kernel_dirs) {
        scan_dir(d, "configured", out);
    }
    for (const auto& d : split(getenv_str("JUPYTER_PATH"), ':')) {
        scan_dir(fs::path(d) / "kernels", "JUPYTER_PATH", out);
    }
    const auto data_home = getenv_str("JUPYTER_DATA_DIR");
    if (!data_home.empty()) {
        scan_dir(fs::path(data_home) / "kernels", "user", out);
    } else if (auto xdg = getenv_str("XDG_DATA_HOME"); !xdg.empty()) {
        scan_dir(fs::path(xdg) / "jupyter" / "kernels", "user", out);
    } else if (!home.empty()) {
        scan_dir(home / ".local" / "share" / "jupyter" / "kernels", "user", out);
    }
    if (auto prefix = python_prefix()) {
        scan_dir(*prefix / "share" / "jupyter" / "kernels", "sys.prefix", out);
    }
    scan_dir("/usr/local/share/jupyter/kernels", "system", out);
    scan_dir("/usr/share/jupyter/kernels", "system", out);

    if (opts.include_conda && !home.empty()) {
        for (const auto& env : find_conda_envs(home)) {
            // Specs an env ships itself (other languages), named after the env.
            std::map<std::string, kernelspec> own;
            scan_dir(env.prefix / "share" / "jupyter" / "kernels", "conda:" + env.name, own);
            for (auto& [n, spec] : own) {
                const auto name = lower("conda-env-" + env.name + "-" + n);
                if (!valid_kernel_name(name) || out.contains(name) || n == "python3") {
                    continue;
                }
                spec.name = name;
                spec.display_name += " [conda env:" + env.name + "]";
                out.emplace(name, std::move(spec));
            }
            if (!has_ipykernel(env.prefix)) {
                continue;
            }
            const auto name = lower("conda-env-" + env.name + "-py");
            if (!valid_kernel_name(name) || out.contains(name)) {
                continue;
            }
            kernelspec s;
            s.name = name;
            s.dir = env.prefix / "share" / "jupyter" / "kernels" / "python3";
            s.argv = {(env.prefix / "bin" / "python").string(), "-m", "ipykernel_launcher", "-f",
                      "{connection_file}"};
            s.display_name = "Python [conda env:" + env.name + "]";
            s.language = "python";
            s.metadata = {{"conda_env_name", env.name},
                          {"conda_env_path", env.prefix.string()}};
            s.source = "conda:" + env.name;
            out.emplace(name, std::move(s));
        }
    }
    return out;
}

} // namespace kernelgate::sessions
