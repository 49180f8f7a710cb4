#include "cache/manager/step_plan.hpp"

#include <algorithm>

namespace pagedkv::detail {

GrowthPlan plan_growth(std::span<const BlockTable* const> tables, std::span<const int64_t> lengths,
                       std::span<const uint32_t> new_tokens, uint32_t lookahead,
                       uint32_t block_size, const BlockAllocator& alloc) {
    GrowthPlan plan;
    plan.seqs.resize(tables.size());
    for (size_t i = 0; i < tables.size(); ++i) {
        const BlockTable& t = *tables[i];
        GrowthPlan::Seq& s = plan.seqs[i];
        const uint64_t end = uint64_t(lengths[i]) + new_tokens[i] + lookahead;
        const uint64_t pages = (end + block_size - 1) / block_size;
        s.extra = pages > t.size() ? pages - t.size() : 0;
        if (end > uint64_t(lengths[i]))
            for (size_t p = size_t(uint64_t(lengths[i]) / block_size);
                 p < std::min<uint64_t>(pages, t.size()); ++p)
                if (alloc.must_copy(t[p])) s.copies.push_back(p);
        plan.needed += s.extra + s.copies.size();
    }
    return plan;
}

}  // namespace pagedkv::detail
