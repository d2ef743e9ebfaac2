// SPDX-License-Identifier: BSD-3-Clause
#include "zmq_protocol/errc.hpp"

#include <string>

namespace kernelgate::zmq_protocol {

namespace {

class wire_category_impl final : public std::error_category
{
public:
    const char* name() const noexcept override { return "kernelgate.wire"; }

    std::string message(int ev) const override
    {
        switch (static_cast<errc>(ev)) {
        case errc::missing_delimiter:
            return "no <IDS|MSG> delimiter frame";
        case errc::too_few_frames:
            return "fewer than a signature and four JSON frames after the delimiter";
        case errc::missing_signature:
            return "unsigned message while a key is configured";
        case errc::bad_signature_length:
            return "signature is not 64 hex characters";
        case errc::bad_signature:
            return "invalid signature";
        case errc::duplicate_signature:
            return "duplicate signature (replayed message)";
        case errc::too_many_buffers:
            return "too many binary buffers";
        case errc::message_too_large:
            return "message larger than the size cap";
        case errc::bad_json:
            return "a JSON part does not parse or is not an object";
        case errc::json_too_deep:
            return "JSON nesting deeper than the cap";
        case errc::bad_frame:
            return "malformed WebSocket frame (offsets or lengths)";
        case errc::bad_channel:
            return "channel missing, unknown or not writable by a client";
        case errc::bad_connection_info:
            return "connection info missing a field or out of range";
        }
        return "unknown kernelgate.wire error " + std::to_string(ev);
    }
};

} // namespace

const std::error_category& wire_category() noexcept
{
    static const wire_category_impl category;
    return category;
}

std::error_code make_error_code(errc e) noexcept
{
    return {static_cast<int>(e), wire_category()};
}

} // namespace kernelgate::zmq_protocol
