#include "allocator_churn.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <random>
#include <stdexcept>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"

namespace pagedkv::bench {

namespace {

constexpr uint32_t kMaxPages = 128;  // longest sequence

// The random script both sides replay: the sequences that fill the pool, then per step the
// sequence that ends and the length of the one that takes its place.
struct Script {
    std::vector<uint32_t> fill;
    struct Step {
        uint32_t victim, length;
    };
    std::vector<Step> warmup, timed;
    uint64_t timed_pages = 0;  // pages allocated + freed by the timed steps
};

Script make_script(uint64_t pages) {
    std::mt19937_64 rng(0x5eed0000 + pages);
    Script s;
    const uint64_t target = pages * 9 / 10;
    uint64_t used = 0;
    for (;;) {
        const uint32_t len = 1 + uint32_t(rng() % kMaxPages);
        if (used + len > target) break;
        s.fill.push_back(len);
        used += len;
    }
    if (s.fill.empty()) {  // a pool too small for one sequence of that length
        s.fill.push_back(uint32_t(std::max<uint64_t>(1, target)));
        used = s.fill.back();
    }
    std::vector<uint32_t> len = s.fill;
    uint64_t free = pages - used;
    auto step = [&](std::vector<Script::Step>& out) {
        const uint32_t v = uint32_t(rng() % len.size());
        free += len[v];
        uint32_t l = 1 + uint32_t(rng() % kMaxPages);
        if (l > free) l = uint32_t(free);  // at least the victim's pages are free
        out.push_back({v, l});
        free -= l;
        const uint64_t moved = uint64_t(len[v]) + l;
        len[v] = l;
        return moved;
    };
    const size_t live = len.size();
    for (size_t i = 0; i < 3 * live; ++i)
        step(s.warmup);
    for (size_t i = 0; i < std::max<size_t>(65536, live); ++i)
        s.timed_pages += step(s.timed);
    return s;
}

using Clock = std::chrono::steady_clock;

// The prompt's half of the pages at once, then one page at a time.
inline uint32_t first_chunk(uint32_t length) {
    return (length + 1) / 2;
}

// Baseline: a vector stack of free ids, one reused vector of ids per sequence.
double run_raw(const Script& s, uint64_t pages, uint64_t& sink) {
    std::vector<uint32_t> stack;
    stack.reserve(pages);
    for (uint64_t i = pages; i-- > 0;)
        stack.push_back(uint32_t(i));
    std::vector<std::vector<uint32_t>> seqs(s.fill.size());
    auto take = [&](std::vector<uint32_t>& seq, uint32_t k) {
        if (k > stack.size()) [[unlikely]]
            throw std::runtime_error("raw free list: out of pages");
        for (uint32_t j = 0; j < k; ++j) {
            seq.push_back(stack.back());
            stack.pop_back();
        }
    };
    auto grow = [&](std::vector<uint32_t>& seq, uint32_t length) {
        const uint32_t first = first_chunk(length);
        take(seq, first);
        for (uint32_t j = first; j < length; ++j)
            take(seq, 1);
    };
    auto end = [&](std::vector<uint32_t>& seq) {
        while (!seq.empty()) {
            stack.push_back(seq.back());
            seq.pop_back();
        }
    };
    auto play = [&](const std::vector<Script::Step>& steps) {
        for (const Script::Step& st : steps) {
            end(seqs[st.victim]);
            grow(seqs[st.victim], st.length);
        }
    };
    for (size_t i = 0; i < s.fill.size(); ++i)
        grow(seqs[i], s.fill[i]);
    play(s.warmup);
    const auto t0 = Clock::now();
    play(s.timed);
    const auto t1 = Clock::now();
    sink += stack.size() + (stack.empty() ? 0 : stack.back());
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / double(s.timed_pages);
}

// The library: a BlockAllocator, one BlockTable per sequence, destroyed when it ends.
double run_allocator(const Script& s, uint64_t pages, uint64_t& sink) {
    BlockAllocator alloc(pages);
    std::vector<std::optional<BlockTable>> tables(s.fill.size());
    std::vector<BlockId> fresh;
    fresh.reserve(kMaxPages);
    auto grow = [&](std::optional<BlockTable>& t, uint32_t length) {
        BlockTable& table = t.emplace(alloc);
        const uint32_t first = first_chunk(length);
        fresh.clear();
        alloc.allocate(first, fresh);
        table.adopt_back(fresh);
        for (uint32_t j = first; j < length; ++j) {
            fresh.clear();
            alloc.allocate(1, fresh);
            table.adopt_back(fresh);
        }
    };
    auto play = [&](const std::vector<Script::Step>& steps) {
        for (const Script::Step& st : steps) {
            tables[st.victim].reset();
            grow(tables[st.victim], st.length);
        }
    };
    for (size_t i = 0; i < s.fill.size(); ++i)
        grow(tables[i], s.fill[i]);
    play(s.warmup);
    const auto t0 = Clock::now();
    play(s.timed);
    const auto t1 = Clock::now();
    sink += alloc.free_blocks() + alloc.counters().allocations;
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / double(s.timed_pages);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

}  // namespace

ChurnResult measure_churn(uint64_t pages, int pairs) {
    if (pages == 0) throw std::invalid_argument("measure_churn: pages must be positive");
    pairs = std::max(pairs, 1);
    const Script script = make_script(pages);
    uint64_t sink = 0;
    std::vector<double> raw, ours, ratio;
    for (int p = 0; p < pairs; ++p) {
        // Alternate which side goes first, so that neither always runs on a warmer machine.
        double r, a;
        if (p % 2 == 0) {
            r = run_raw(script, pages, sink);
            a = run_allocator(script, pages, sink);
        } else {
            a = run_allocator(script, pages, sink);
            r = run_raw(script, pages, sink);
        }
        raw.push_back(r);
        ours.push_back(a);
        ratio.push_back(a / r);
    }
    volatile uint64_t keep = sink;  // the runs' results are used
    (void)keep;
    return ChurnResult{pages,
                       median(raw),
                       median(ours),
                       median(ratio),
                       *std::min_element(ratio.begin(), ratio.end()),
                       *std::max_element(ratio.begin(), ratio.end())};
}

}  // namespace pagedkv::bench
