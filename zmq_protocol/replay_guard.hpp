// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "zmq_protocol/signer.hpp"

namespace kernelgate::zmq_protocol {

/// Remembers recent signatures to reject replays (jupyter_client's digest_history), bounded.
///
/// Digests of verified signatures are uniformly random, so the guard keeps a 64-bit
/// fingerprint of each (its first 8 bytes) in a set-associative table: the fingerprint's top
/// bits choose a bucket of 8 slots (one cache line), and a bucket keeps its newest 8 and
/// forgets its oldest first. A check costs one cache miss, against two for an exact
/// insertion-order FIFO (the new key's slot and the evicted key's slot), and it runs for
/// every message a kernel sends.
///
/// `capacity` is how many recent digests to remember: jupyter_client's digest_history_size
/// (2^16). The table holds up to 2 * capacity fingerprints (16,384 buckets, 1 MiB, for 2^16),
/// so the last `capacity` digests fill it to four per bucket on average. A digest is
/// forgotten early only if eight later ones land in its bucket. In practice the last
/// capacity/4 digests are all remembered, and about 99% of the last `capacity` (tested).
/// jupyter_client itself forgets a random 10% of its history each time it fills up. The
/// table starts small and doubles whenever a bucket would have to forget (entries keep their
/// order), so nothing is forgotten before it has its full size, and a quiet kernel's guard
/// stays small.
///
/// A new digest whose fingerprint equals a remembered one counts as a replay. For HMAC
/// outputs, which no one can choose without the key, that is a 2^-46 chance per message with
/// a full table.
class replay_guard
{
public:
    using key_type = signer::digest_type;
    static constexpr std::size_t ways = 8;  ///< slots per bucket

    explicit replay_guard(std::size_t capacity = 65536)
    {
        if (capacity == 0) {
            return;
        }
        // Enough buckets to hold 2 * capacity fingerprints: ways/2 recent digests per bucket.
        max_buckets_ = 2;  // so a bucket index always has a bit (shift_ < 64)
        while (max_buckets_ * (ways / 2) < capacity) {
            max_buckets_ *= 2;
        }
    }

    /// true if the digest is new (and records it), false if it was seen before.
    bool check_and_insert(const key_type& digest)
    {
        if (max_buckets_ == 0) {
            return true;
        }
        std::uint64_t fp = 0;
        std::memcpy(&fp, digest.data(), sizeof(fp));
        fp |= 1;  // 0 marks an empty slot
        if (buckets_.empty()) {
            grow();
        }
        bucket* b = &buckets_[fp >> shift_];
        for (const std::uint64_t v : b->fp) {
            if (v == fp) {
                return false;
            }
        }
        // A full bucket forgets its oldest only once the table has its full size.
        while (b->fp[ways - 1] != 0 && buckets_.size() < max_buckets_) {
            grow();
            b = &buckets_[fp >> shift_];
        }
        if (b->fp[ways - 1] == 0) {
            ++count_;
        }
        std::memmove(&b->fp[1], &b->fp[0], (ways - 1) * sizeof(std::uint64_t));
        b->fp[0] = fp;
        return true;
    }

    /// Starts loading the digest's bucket into the cache, so that a check_and_insert after
    /// other work finds it there instead of waiting for memory.
    void prefetch(const key_type& digest) const noexcept
    {
        if (!buckets_.empty()) {
            std::uint64_t fp = 0;
            std::memcpy(&fp, digest.data(), sizeof(fp));
            __builtin_prefetch(&buckets_[(fp | 1) >> shift_], 1);
        }
    }

    /// Digests remembered.
    std::size_t size() const noexcept { return count_; }
    /// Bytes the table takes now: at most 32 * capacity (1 MiB for 2^16).
    std::size_t table_bytes() const noexcept { return buckets_.size() * sizeof(bucket); }

private:
    struct alignas(64) bucket
    {
        std::uint64_t fp[ways] = {};  ///< newest first; empty slots (0) at the end
    };

    /// Doubles the table: bucket i splits into 2i and 2i + 1 by the next fingerprint bit,
    /// each keeping its entries newest first.
    void grow()
    {
        const std::size_t n = buckets_.empty() ? std::min<std::size_t>(8, max_buckets_)
                                               : 2 * buckets_.size();
        unsigned bits = 0;
        while ((std::size_t{1} << bits) < n) {
            ++bits;
        }
        const unsigned shift = 64 - bits;
        std::vector<bucket> next(n);
        for (const bucket& old : buckets_) {
            for (const std::uint64_t v : old.fp) {
                if (v == 0) {
                    break;
                }
                bucket& to = next[v >> shift];
                std::size_t i = 0;
                while (to.fp[i] != 0) {
                    ++i;
                }
                to.fp[i] = v;  // never full: it gets entries of one old bucket only
            }
        }
        buckets_ = std::move(next);
        shift_ = shift;
    }

    std::vector<bucket> buckets_;  ///< size 0 or a power of two <= max_buckets_
    std::size_t max_buckets_ = 0;
    unsigned shift_ = 64;          ///< bucket = fingerprint >> shift_
    std::size_t count_ = 0;
};

} // namespace kernelgate::zmq_protocol
