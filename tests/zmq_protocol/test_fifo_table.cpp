// SPDX-License-Identifier: BSD-3-Clause
// fifo_table (the replay guard's and the reply routes' table) against a simple model:
// std::map for the contents and a deque for the insertion order.
#include "zmq_protocol/fifo_table.hpp"

#include <deque>
#include <map>
#include <random>
#include <string>

#include <catch2/catch.hpp>

namespace zp = kernelgate::zmq_protocol;
using zp::key128;

namespace {

struct key_less
{
    bool operator()(const key128& x, const key128& y) const
    {
        return x.a != y.a ? x.a < y.a : x.b < y.b;
    }
};

} // namespace

TEST_CASE("fifo_table: behaves like a bounded FIFO map", "[fifo_table]")
{
    for (const std::size_t capacity : {1, 2, 7, 100, 1000}) {
        zp::fifo_table<std::uint32_t> table(capacity);
        std::map<key128, std::uint32_t, key_less> model;
        std::deque<key128> order;
        std::mt19937_64 rng(capacity);
        // Few distinct keys with few home slots: long probe runs, wrap-around, updates and
        // deletions in the middle of runs all happen.
        const std::uint64_t distinct = 3 * capacity + 5;
        for (int step = 0; step < 200000 / static_cast<int>(capacity + 1) + 5000; ++step) {
            const std::uint64_t r = rng() % distinct;
            const key128 key{(r % 5) * 64 + (r % 3), r};  // homes cluster at a few slots
            const auto value = static_cast<std::uint32_t>(rng());
            if (rng() % 3 == 0) {
                const auto* got = table.find(key);
                const auto it = model.find(key);
                REQUIRE((got != nullptr) == (it != model.end()));
                if (got != nullptr) {
                    REQUIRE(*got == it->second);
                }
                continue;
            }
            const bool fresh = model.find(key) == model.end();
            REQUIRE(table.insert(key, value) == fresh);
            if (fresh) {
                if (model.size() == capacity) {
                    model.erase(order.front());
                    order.pop_front();
                }
                order.push_back(key);
            }
            model[key] = value;
            REQUIRE(table.size() == model.size());
        }
        // Everything in the model is found, and the evicted are not.
        for (const auto& [k, v] : model) {
            const auto* got = table.find(k);
            REQUIRE(got != nullptr);
            CHECK(*got == v);
        }
        for (std::uint64_t r = 0; r < distinct; ++r) {
            const key128 key{(r % 5) * 64 + (r % 3), r};
            CHECK((table.find(key) != nullptr) == (model.count(key) == 1));
        }
    }
}

TEST_CASE("fifo_table: the zero key, capacity zero and string hashes", "[fifo_table]")
{
    zp::fifo_table<int> table(4);
    CHECK(table.find(key128{}) == nullptr);
    CHECK(table.insert(key128{}, 7));
    REQUIRE(table.find(key128{}) != nullptr);
    CHECK(*table.find(key128{}) == 7);
    CHECK_FALSE(table.insert(key128{}, 8));  // an update
    CHECK(*table.find(key128{}) == 8);

    zp::fifo_table<int> none(0);
    CHECK(none.insert(key128{1, 2}, 1));
    CHECK(none.insert(key128{1, 2}, 1));
    CHECK(none.find(key128{1, 2}) == nullptr);
    CHECK(none.size() == 0);

    // Hashes of msg_id-like strings: equal for equal strings, distinct across many.
    CHECK(key128::hash("a1b2") == key128::hash(std::string("a1b2")));
    std::map<key128, int, key_less> seen;
    for (int i = 0; i < 100000; ++i) {
        seen[key128::hash("msg-" + std::to_string(i))] = i;
    }
    CHECK(seen.size() == 100000);
    CHECK_FALSE(key128::hash("") == key128::hash(std::string(1, '\0')));
}
