// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace kernelgate::zmq_protocol {

/// A 128-bit key: a digest prefix, or two independent hashes of a string.
struct key128
{
    std::uint64_t a = 0;
    std::uint64_t b = 0;
    friend bool operator==(const key128&, const key128&) = default;

    /// The first 16 bytes of a digest (uniformly random already).
    static key128 from_bytes(const unsigned char* p) noexcept
    {
        key128 k;
        std::memcpy(&k.a, p, sizeof(k.a));
        std::memcpy(&k.b, p + sizeof(k.a), sizeof(k.b));
        return k;
    }
    /// Two different 64-bit hashes of a string (FNV-1a with two bases, then mixed).
    static key128 hash(std::string_view s) noexcept
    {
        std::uint64_t h1 = 0xcbf29ce484222325ULL;
        std::uint64_t h2 = 0x84222325cbf29ce4ULL ^ s.size();
        for (const char c : s) {
            h1 = (h1 ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
            h2 = (h2 + static_cast<unsigned char>(c)) * 0x9e3779b97f4a7c15ULL;
            h2 ^= h2 >> 29;
        }
        return {mix(h1), mix(h2)};
    }

private:
    static std::uint64_t mix(std::uint64_t x) noexcept
    {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdULL;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53ULL;
        x ^= x >> 33;
        return x;
    }
};

/// A bounded map from key128 to a small value that forgets its oldest entries first:
/// open addressing with linear probing (one cache miss per lookup, no allocation per entry)
/// and a ring of keys in insertion order. The table grows with use, up to twice the
/// capacity, so a quiet kernel's tables stay small.
///
/// The all-zero key marks an empty slot; a real all-zero key is stored as {1, 0} (keys are
/// hashes or digests: two keys that differ only there are as likely as any other collision).
template <class Value>
class fifo_table
{
public:
    explicit fifo_table(std::size_t capacity) : capacity_(capacity) {}

    std::size_t size() const noexcept { return count_; }
    std::size_t capacity() const noexcept { return capacity_; }

    /// The value of key, or nullptr.
    const Value* find(key128 key) const noexcept
    {
        const std::size_t i = slot_of(normal(key));
        return i == npos ? nullptr : &slots_[i].value;
    }

    /// Inserts or updates. Returns true if the key was new. When full, the oldest entry is
    /// forgotten first.
    bool insert(key128 key, const Value& value)
    {
        if (capacity_ == 0) {
            return true;
        }
        key = normal(key);
        if (const std::size_t i = slot_of(key); i != npos) {
            slots_[i].value = value;
            return false;
        }
        if (count_ == capacity_) {
            erase(ring_[ring_next_]);
            ring_[ring_next_] = key;
            ring_next_ = (ring_next_ + 1) % capacity_;
        } else {
            ring_.push_back(key);
        }
        if (2 * (count_ + 1) > slots_.size()) {
            grow();
        }
        place(key, value);
        ++count_;
        return true;
    }

private:
    struct slot
    {
        key128 key;
        [[no_unique_address]] Value value{};
    };

    static key128 normal(key128 k) noexcept { return k == key128{} ? key128{1, 0} : k; }
    std::size_t home(const key128& k) const noexcept { return k.a & (slots_.size() - 1); }
    std::size_t next(std::size_t i) const noexcept { return (i + 1) & (slots_.size() - 1); }

    static constexpr std::size_t npos = static_cast<std::size_t>(-1);

    /// Index of the slot holding key (already normalised), or npos.
    std::size_t slot_of(const key128& key) const noexcept
    {
        if (slots_.empty()) {
            return npos;
        }
        for (std::size_t i = home(key);; i = next(i)) {
            if (slots_[i].key == key) {
                return i;
            }
            if (slots_[i].key == key128{}) {
                return npos;
            }
        }
    }

    void place(const key128& key, const Value& value) noexcept
    {
        std::size_t i = home(key);
        while (!(slots_[i].key == key128{})) {
            i = next(i);
        }
        slots_[i] = slot{key, value};
    }

    /// Removes key, shifting later entries of its probe run back (no tombstones).
    void erase(const key128& key) noexcept
    {
        std::size_t i = slot_of(key);
        if (i == npos) {
            return;
        }
        --count_;
        for (std::size_t j = next(i);; j = next(j)) {
            if (slots_[j].key == key128{}) {
                break;
            }
            const std::size_t k = home(slots_[j].key);
            // Move slots_[j] into the hole at i unless its home lies cyclically in (i, j].
            const bool home_between = i <= j ? (i < k && k <= j) : (i < k || k <= j);
            if (!home_between) {
                slots_[i] = slots_[j];
                i = j;
            }
        }
        slots_[i] = slot{};
    }

    void grow()
    {
        std::vector<slot> old = std::move(slots_);
        std::size_t n = old.empty() ? 64 : 2 * old.size();
        while (n < 2 * (count_ + 1)) {
            n *= 2;
        }
        slots_.assign(n, slot{});
        for (const slot& s : old) {
            if (!(s.key == key128{})) {
                place(s.key, s.value);
            }
        }
    }

    std::size_t capacity_;
    std::size_t count_ = 0;
    std::vector<slot> slots_;   ///< size 0 or a power of two >= 2 * count_
    std::vector<key128> ring_;  ///< keys in insertion order; oldest at ring_next_ once full
    std::size_t ring_next_ = 0;
};

} // namespace kernelgate::zmq_protocol
