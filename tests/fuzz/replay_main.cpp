// SPDX-License-Identifier: BSD-3-Clause
// A stand-in for libFuzzer's driver where there is none (g++): runs every file given (or
// found under a given directory), then N inputs made from them by simple deterministic
// mutations. It asserts nothing itself; the sanitizers and the target do.
//
// usage: <target>_replay [-n N] [-s SEED] [--max-len BYTES] PATH...
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;
using bytes = std::vector<std::uint8_t>;

/// splitmix64: small, fast, and the same sequence on every platform.
class prng
{
public:
    explicit prng(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next()
    {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    /// Uniform enough in [0, n); n == 0 gives 0.
    std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(next() % n); }

private:
    std::uint64_t state_;
};

/// Runs one input from an exactly sized heap block, so that ASan sees any overread.
void run(const bytes& input)
{
    const std::unique_ptr<std::uint8_t[]> copy(new std::uint8_t[input.size()]);
    if (!input.empty()) {
        std::memcpy(copy.get(), input.data(), input.size());
    }
    LLVMFuzzerTestOneInput(copy.get(), input.size());
}

bool read_file(const fs::path& p, bytes& out)
{
    std::ifstream in(p, std::ios::binary);
    if (!in) {
        return false;
    }
    out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return !in.bad();
}

constexpr std::array<std::uint64_t, 12> interesting = {
    0, 1, 2, 5, 6, 7, 8, 0x7f, 0x80, 0xff, 0xffff, 0x7fffffff,
};

void put_int(bytes& b, std::size_t pos, std::uint64_t v, std::size_t width, bool big_endian)
{
    for (std::size_t i = 0; i < width && pos + i < b.size(); ++i) {
        const std::size_t shift = 8 * (big_endian ? width - 1 - i : i);
        b[pos + i] = static_cast<std::uint8_t>((v >> shift) & 0xff);
    }
}

bytes mutate(const std::vector<bytes>& seeds, prng& rng, std::size_t max_len)
{
    bytes b = seeds[rng.below(seeds.size())];
    const std::size_t steps = 1 + rng.below(4);
    for (std::size_t s = 0; s < steps; ++s) {
        switch (rng.below(9)) {
        case 0: // flip a bit
            if (!b.empty()) {
                b[rng.below(b.size())] ^= static_cast<std::uint8_t>(1u << rng.below(8));
            }
            break;
        case 1: // random byte
            if (!b.empty()) {
                b[rng.below(b.size())] = static_cast<std::uint8_t>(rng.next());
            }
            break;
        case 2: // truncate
            b.resize(rng.below(b.size() + 1));
            break;
        case 3: { // splice: our prefix, another seed's suffix
            const bytes& other = seeds[rng.below(seeds.size())];
            const std::size_t cut = rng.below(b.size() + 1);
            const std::size_t from = rng.below(other.size() + 1);
            b.resize(cut);
            b.insert(b.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
            break;
        }
        case 4: { // insert random bytes
            const std::size_t at = rng.below(b.size() + 1);
            const std::size_t n = 1 + rng.below(16);
            bytes chunk(n);
            for (auto& c : chunk) {
                c = static_cast<std::uint8_t>(rng.next());
            }
            b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), chunk.begin(), chunk.end());
            break;
        }
        case 5: { // erase a chunk
            if (!b.empty()) {
                const std::size_t at = rng.below(b.size());
                const std::size_t n = 1 + rng.below(std::min<std::size_t>(16, b.size() - at));
                b.erase(b.begin() + static_cast<std::ptrdiff_t>(at),
                        b.begin() + static_cast<std::ptrdiff_t>(at + n));
            }
            break;
        }
        case 6: { // duplicate a chunk in place
            if (!b.empty()) {
                const std::size_t at = rng.below(b.size());
                const std::size_t n = 1 + rng.below(std::min<std::size_t>(64, b.size() - at));
                const bytes chunk(b.begin() + static_cast<std::ptrdiff_t>(at),
                                  b.begin() + static_cast<std::ptrdiff_t>(at + n));
                b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), chunk.begin(), chunk.end());
            }
            break;
        }
        case 7: { // an interesting integer (count, offset, length) at a random place
            if (!b.empty()) {
                std::uint64_t v = interesting[rng.below(interesting.size())];
                switch (rng.below(4)) {
                case 0:
                    v = std::uint64_t(1) << 63;
                    break;
                case 1:
                    v = ~std::uint64_t(0) - rng.below(4);
                    break;
                case 2:
                    v = b.size() + rng.below(3) - 1;
                    break;
                default:
                    break;
                }
                const std::size_t width = rng.below(2) == 0 ? 4 : 8;
                // Aligned positions hit the offset tables more often.
                std::size_t pos = rng.below(b.size());
                if (rng.below(2) == 0) {
                    pos -= pos % 4;
                    pos += 1; // after the fuzz targets' selector byte
                }
                put_int(b, pos, v, width, rng.below(2) == 0);
            }
            break;
        }
        default: // an interesting byte
            if (!b.empty()) {
                b[rng.below(b.size())] =
                    static_cast<std::uint8_t>(interesting[rng.below(interesting.size())]);
            }
            break;
        }
    }
    if (b.size() > max_len) {
        b.resize(max_len);
    }
    return b;
}

[[noreturn]] void usage(const char* argv0)
{
    std::fprintf(stderr, "usage: %s [-n MUTATIONS] [-s SEED] [--max-len BYTES] PATH...\n",
                 argv0);
    std::exit(2);
}

} // namespace

int main(int argc, char** argv)
{
    std::size_t mutations = 0;
    std::uint64_t seed = 0x6b65726e656c6761ULL; // fixed: every run replays the same inputs
    std::size_t max_len = 1u << 20;
    std::vector<fs::path> files;

    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                usage(argv[0]);
            }
            return argv[++i];
        };
        if (arg == "-n") {
            mutations = std::strtoull(value(), nullptr, 10);
        } else if (arg == "-s") {
            seed = std::strtoull(value(), nullptr, 0);
        } else if (arg == "--max-len") {
            max_len = std::strtoull(value(), nullptr, 10);
        } else if (!arg.empty() && arg[0] == '-') {
            usage(argv[0]);
        } else if (fs::is_directory(arg)) {
            for (const auto& e : fs::recursive_directory_iterator(arg)) {
                if (e.is_regular_file()) {
                    files.push_back(e.path());
                }
            }
        } else {
            files.emplace_back(arg);
        }
    }
    std::sort(files.begin(), files.end());

    std::vector<bytes> seeds;
    for (const auto& f : files) {
        bytes b;
        if (!read_file(f, b)) {
            std::fprintf(stderr, "cannot read %s\n", f.c_str());
            return 2;
        }
        run(b);
        seeds.push_back(std::move(b));
    }
    if (seeds.empty() && mutations > 0) {
        seeds.emplace_back(); // mutate from nothing rather than not at all
    }
    prng rng(seed);
    for (std::size_t i = 0; i < mutations; ++i) {
        run(mutate(seeds, rng, max_len));
    }
    std::printf("fuzz replay: ran %zu inputs (%zu files, %zu mutations)\n",
                files.size() + mutations, files.size(), mutations);
    return 0;
}
