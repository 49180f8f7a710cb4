// The block allocator under churn: a pool kept about 90% full by sequences of 1-128 pages that
// end and start in random order, timed against a raw free list doing the same operations.
// pagedkv-bench reports it; pagedkv-churn prints it on its own.
#pragma once

#include <cstdint>

namespace pagedkv::bench {

struct ChurnResult {
    uint64_t pages;                // pool size
    double ns_per_page_raw;        // median over the pairs, per page allocated or freed
    double ns_per_page_allocator;  // the same for BlockAllocator + BlockTable
    double ratio;                  // median of the per-pair ratios allocator / raw
    double ratio_min, ratio_max;
};

// Fills a pool of `pages` pages to about 90% with sequences of 1-128 pages, each a BlockTable
// that grows the way the cache grows its tables (one allocate for the prompt's half of the
// pages, then one page per allocate), churns it until the free list is shuffled, then times a
// run of steps that each end a random live sequence (the table is destroyed) and start a new one
// of random length. The baseline runs the same steps, from the same random script, on a
// std::vector<uint32_t> stack of ids and one reused std::vector<uint32_t> per sequence.
// Baseline and allocator alternate `pairs` times; ratios are per pair.
ChurnResult measure_churn(uint64_t pages, int pairs = 7);

}  // namespace pagedkv::bench
