// SPDX-License-Identifier: BSD-3-Clause
// Fuzz target for zmq_protocol::decode_frames (the kernel -> gateway wire parser).
//
// Input layout: byte 0 is a set of flags, the rest is a list of frames, each a
// little-endian uint16 length followed by that many bytes (a length running past the end
// takes what is left).
//   bit 0: empty key (signing disabled) instead of the fuzz key "fuzz-key"
//   bit 1: re-sign: replace the signature after the delimiter with the right one, so the
//          fuzzer gets past the HMAC and into the copy-out and replay code
//   bit 2: tight limits (4 buffers, 4 KiB)
//   bit 3: decode twice through one replay guard
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "zmq_protocol/wire_codec.hpp"

namespace zp = kernelgate::zmq_protocol;

namespace {

std::vector<std::string_view> split_frames(std::string_view in)
{
    std::vector<std::string_view> frames;
    while (!in.empty()) {
        std::size_t len = static_cast<unsigned char>(in[0]);
        if (in.size() >= 2) {
            len |= static_cast<std::size_t>(static_cast<unsigned char>(in[1])) << 8;
            in.remove_prefix(2);
        } else {
            in.remove_prefix(1);
        }
        len = std::min(len, in.size());
        frames.push_back(in.substr(0, len));
        in.remove_prefix(len);
    }
    return frames;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) {
        return 0;
    }
    static const zp::signer keyed("fuzz-key");
    static const zp::signer unsigned_signer("");

    const std::uint8_t flags = data[0];
    const zp::signer& sign = (flags & 1) != 0 ? unsigned_signer : keyed;
    std::vector<std::string_view> frames =
        split_frames(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));

    std::string fixed_signature;
    if ((flags & 2) != 0) {
        for (std::size_t i = 0; i < frames.size(); ++i) {
            if (frames[i] == zp::delimiter && frames.size() - i >= 6) {
                fixed_signature =
                    sign.sign(frames[i + 2], frames[i + 3], frames[i + 4], frames[i + 5]);
                frames[i + 1] = fixed_signature;
                break;
            }
        }
    }
    zp::decode_limits limits;
    if ((flags & 4) != 0) {
        limits.max_buffers = 4;
        limits.max_total_bytes = 4096;
    }
    zp::replay_guard guard(8);
    const int rounds = (flags & 8) != 0 ? 2 : 1;
    for (int round = 0; round < rounds; ++round) {
        auto r = zp::decode_frames(frames, sign, &guard, limits);
        if (r.has_value()) {
            // Exercise the encoder on whatever the decoder let through.
            const auto encoded = zp::encode_frames(r.value(), sign);
            const std::vector<std::string_view> views(encoded.begin(), encoded.end());
            (void)zp::decode_frames(views, sign, nullptr, limits);
        } else {
            (void)r.error().message();
        }
    }
    return 0;
}
