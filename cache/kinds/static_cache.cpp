#include "pagedkv/static_cache.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "cache/kinds/cache_policies.hpp"
#include "cache/manager/cache_state.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

StaticKVCache::StaticKVCache(BlockPool& pool, uint32_t batch_size, uint32_t max_cache_len)
    : PagedKVCache(pool, detail::static_policy(batch_size, max_cache_len)) {
    if (batch_size == 0 || max_cache_len == 0)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("StaticKVCache: batch_size ({}) and max_cache_len ({}) must be at "
                                "least 1",
                                batch_size, max_cache_len));
    detail::CacheState& st = *state_;
    // The reservation and the tables' registration touch the pool's allocator, which other
    // threads' calls on other caches of the pool change under the same lock.
    detail::CacheLock lock(st);
    const uint64_t per_row = (uint64_t(max_cache_len) + st.block_size() - 1) / st.block_size();
    std::vector<BlockId> blocks;
    st.ps->allocator.allocate(per_row * batch_size, blocks);  // OutOfBlocks: nothing held
    size_t adopted = 0;
    try {
        std::vector<detail::Sequence> rows;
        rows.reserve(batch_size);
        for (uint32_t b = 0; b < batch_size; ++b) {
            rows.push_back(st.empty_sequence());
            rows.back().table.adopt_back(std::span(blocks).subspan(b * per_row, per_row));
            adopted += per_row;
        }
        st.set_rows(std::move(rows));
    } catch (...) {
        // Out of host memory half-way: the tables made so far give their blocks back with
        // them; the blocks no table took go back here.
        for (size_t i = adopted; i < blocks.size(); ++i)
            st.ps->allocator.release(blocks[i]);
        throw;
    }
}

StaticKVCache::StaticKVCache(BlockPool& pool, uint32_t batch_size, uint32_t max_cache_len,
                             NoReservation)
    : PagedKVCache(pool, detail::static_policy(batch_size, max_cache_len)) {}

uint32_t StaticKVCache::max_batch_size() const noexcept {
    return state_->policy->record().batch_size;
}
uint32_t StaticKVCache::max_cache_len() const noexcept {
    return state_->policy->record().max_cache_len;
}

}  // namespace pagedkv
