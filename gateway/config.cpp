// SPDX-License-Identifier: BSD-3-Clause
#include "gateway/config.hpp"

namespace kernelgate::gateway {

std::string normalize_base_url(std::string url)
{
    if (url.empty() || url.front() != '/') {
        url.insert(url.begin(), '/');
    }
    if (url.back() != '/') {
        url.push_back('/');
    }
    return url;
}

} // namespace kernelgate::gateway
