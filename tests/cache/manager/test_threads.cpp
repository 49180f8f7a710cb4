// The threading contract: every call on a Context and on what was made from it may come from
// any thread. Here several threads share one pool (and so one device), each driving its own
// cache against its own reference, while another thread reads pool statistics. Run under
// ThreadSanitizer by the test command.
#include <atomic>
#include <thread>

#include "cache_harness.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE("caches over one pool are used from several threads at once", "[threads][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 512));
        constexpr int kThreads = 4;
        std::vector<std::string> failures(kThreads);
        std::atomic<bool> done{false};
        std::thread watcher([&] {
            while (!done) {
                const PoolStats s = pool.stats();
                if (s.used_blocks + s.free_blocks != s.num_blocks) failures[0] = "stats torn";
                if (!pool.validate()) failures[0] = "pool invariants broken: " + pool.check();
            }
        });
        std::vector<std::thread> workers;
        for (int t = 0; t < kThreads; ++t)
            workers.emplace_back([&, t] {
                DynamicKVCache cache(pool);
                // Catch2 assertions are not thread-safe: compare by hand, report after joining.
                ReferenceCache ref(2, 2, 8, 8);
                std::mt19937 rng(uint32_t(100 + t));
                for (int step = 0; step < 60; ++step) {
                    const uint32_t seq = step == 0 ? 7 : 1;
                    for (uint32_t l = 0; l < 2; ++l) {
                        auto k = random_values(size_t(2) * 2 * seq * 8, rng, DType::F16);
                        auto v = random_values(size_t(2) * 2 * seq * 8, rng, DType::F16);
                        Tensor tk = Tensor::from_host(g.ctx, k, shape4(2, 2, seq, 8), DType::F16);
                        Tensor tv = Tensor::from_host(g.ctx, v, shape4(2, 2, seq, 8), DType::F16);
                        const auto lens = ref.lengths(l);
                        std::vector<std::vector<int64_t>> pos(2);
                        for (uint32_t b = 0; b < 2; ++b)
                            for (uint32_t s = 0; s < seq; ++s)
                                pos[b].push_back((lens.empty() ? 0 : lens[b]) + s);
                        auto [ok, ov] = cache.update(tk, tv, l);
                        ref.update(stored_values(pool.config(), k, 8),
                                   stored_values(pool.config(), v, 8), 2, seq, l, pos);
                        if (!bit_equal(ok.to_host(), ref.keys(l)) ||
                            !bit_equal(ov.to_host(), ref.values(l)))
                            failures[size_t(t)] = "thread " + std::to_string(t) + " step " +
                                                  std::to_string(step) + ": K/V differ";
                    }
                    if (step % 10 == 9) {
                        const int32_t beams[] = {1, 1};
                        cache.reorder_cache(beams);
                        ref.select({1, 1});
                    }
                }
            });
        for (auto& w : workers)
            w.join();
        done = true;
        watcher.join();
        for (const auto& f : failures)
            CHECK(f == "");
        CHECK(pool.stats().used_blocks == 0);
        CHECK(pool.validate());
    }
}

TEST_CASE("static caches are made and destroyed while other threads update the same pool",
          "[threads][gpu]") {
    // A static cache's constructor reserves pages and registers tables, and its destructor
    // releases spare tables: both touch the allocator that the other threads' updates change.
    ValidatedContext g;
    TestPool pool(g.ctx, small_config(DType::F16, 2, 2, 8, 4, 512));
    std::atomic<bool> done{false};
    std::vector<std::string> failures(3);
    std::thread maker([&] {
        for (int i = 0; i < 200; ++i) {
            StaticKVCache s(pool, 3, 9);
            const int keep[] = {0};  // two tables become spare ones
            s.batch_select_indices(keep);
        }
        done = true;
    });
    std::thread checker([&] {
        while (!done)
            if (std::string e = pool.check(); !e.empty()) failures[0] = "pool torn: " + e;
    });
    std::thread updater([&] {
        std::mt19937 rng(7);
        DynamicKVCache cache(pool);
        ReferenceCache ref(2, 2, 8, 8);
        for (int step = 0; !done || step < 20; ++step) {
            auto k = random_values(size_t(2) * 8, rng, DType::F16);
            auto v = random_values(size_t(2) * 8, rng, DType::F16);
            Tensor tk = Tensor::from_host(g.ctx, k, shape4(1, 2, 1, 8), DType::F16);
            Tensor tv = Tensor::from_host(g.ctx, v, shape4(1, 2, 1, 8), DType::F16);
            const auto lens = ref.lengths(0);
            auto [ok, ov] = cache.update(tk, tv, 0);
            ref.update(k, v, 1, 1, 0, {{lens.empty() ? 0 : lens[0]}});
            if (!bit_equal(ok.to_host(), ref.keys(0))) failures[1] = "K differs";
            if (step % 16 == 15) {
                cache.reset();
                ref = ReferenceCache(2, 2, 8, 8);
            }
        }
    });
    maker.join();
    checker.join();
    updater.join();
    for (const auto& f : failures)
        CHECK(f == "");
    CHECK(pool.stats().used_blocks == 0);
    CHECK(pool.validate());
}
