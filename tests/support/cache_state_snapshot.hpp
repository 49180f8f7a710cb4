// CacheSnapshot: everything observable about a cache and its pool, to prove that a call which
// threw changed nothing (lengths, pages, stored K/V, pool counters).
#pragma once

#include "test_support.hpp"

namespace pagedkv::test {

struct CacheSnapshot {
    uint32_t batch = 0;
    std::vector<std::vector<int64_t>> lengths;  // [layer][row]
    std::vector<std::vector<uint32_t>> tables;  // [row][page]
    std::vector<std::vector<float>> k, v;       // get() per layer
    uint64_t used = 0, shared = 0, copied = 0;

    static CacheSnapshot of(const PagedKVCache& cache) {
        CacheSnapshot s;
        const BlockPool& pool = cache.pool();
        s.batch = cache.batch_size();
        for (uint32_t l = 0; l < pool.config().num_layers; ++l) {
            s.lengths.push_back(cache.seq_lengths(l));
            auto kv = cache.get(l);
            s.k.push_back(kv ? kv->first.to_host() : std::vector<float>{});
            s.v.push_back(kv ? kv->second.to_host() : std::vector<float>{});
        }
        for (uint32_t r = 0; r < s.batch; ++r)
            s.tables.push_back(cache.block_table(r));
        const PoolStats st = pool.stats();
        s.used = st.used_blocks;
        s.shared = st.shared_blocks;
        s.copied = st.pages_copied;
        return s;
    }
    bool operator==(const CacheSnapshot& o) const {
        if (batch != o.batch || lengths != o.lengths || tables != o.tables || used != o.used ||
            shared != o.shared || copied != o.copied || k.size() != o.k.size())
            return false;
        for (size_t i = 0; i < k.size(); ++i)
            if (!bit_equal(k[i], o.k[i]) || !bit_equal(v[i], o.v[i])) return false;
        return true;
    }
};

// Runs f, which must throw pagedkv::Error with `code` and a message containing `text`, and
// checks that the cache and its pool are exactly as before.
template <class F>
void require_rejected(PagedKVCache& cache, ErrorCode code, const std::string& text, F&& f) {
    const CacheSnapshot before = CacheSnapshot::of(cache);
    require_error(f, code, text);
    CHECK(CacheSnapshot::of(cache) == before);
    CHECK(cache.pool().check() == "");
}

}  // namespace pagedkv::test
