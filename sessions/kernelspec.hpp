// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kernelgate::sessions {

/// One kernelspec: a directory with kernel.json and optional resources.
struct kernelspec
{
    std::string name;                   ///< lower-case, [a-z0-9._-]+
    std::filesystem::path dir;          ///< the spec directory (resources live here)
    std::vector<std::string> argv;
    std::string display_name;
    std::string language;
    std::string interrupt_mode = "signal";  ///< "signal" or "message"
    std::map<std::string, std::string> env;
    nlohmann::json metadata = nlohmann::json::object();
    std::string kernel_protocol_version;
    std::string source;                 ///< where it was found (for `kernelgate kernelspecs`)

    /// The spec part of the REST model (argv, display_name, language, ...).
    nlohmann::json spec_json() const;
    /// Resource files present in the spec dir that may be served (allowlist).
    std::vector<std::string> resource_files() const;
};

/// Where to look. Empty fields mean "derive from the environment as Jupyter does".
struct discovery_options
{
    std::vector<std::filesystem::path> extra_kernel_dirs;  ///< searched first
    bool include_conda = true;
    std::optional<std::filesystem::path> home;            ///< default: $HOME
};

/// Finds kernelspecs as jupyter_client does (JUPYTER_PATH, the user data dir, the prefix of
/// the python3 on PATH, /usr/local/share, /usr/share) and adds every conda environment with
/// ipykernel (CONDA_PREFIX, envs/ of conda installs, ~/.conda/environments.txt,
/// CONDA_ENVS_PATH) as "conda-env-<env>-py" (the naming nb_conda_kernels uses). The first
/// spec found for a name wins.
std::map<std::string, kernelspec> discover_kernelspecs(const discovery_options& opts = {});

/// Parses one spec directory; nullopt if kernel.json is missing or invalid.
std::optional<kernelspec> load_kernelspec(const std::filesystem::path& dir,
                                          const std::string& name);

/// Valid kernelspec name (jupyter_client's pattern, case-insensitive): [a-z0-9._-]+
bool valid_kernel_name(const std::string& name);

/// Expands ${VAR} from the given environment (unknown variables become empty).
std::string expand_vars(const std::string& text, const std::map<std::string, std::string>& env);

} // namespace kernelgate::sessions
