// The host tier's figure: KVManager::swap_out / swap_in bandwidth against a plain host memcpy
// of the same bytes, interleaved in one run, with the spread and host (recording) time beside
// device time. pagedkv-bench --only swap prints it.
#pragma once

#include <cstdint>

namespace pagedkv {
class Context;
}

namespace pagedkv::bench {

struct SwapResult {
    uint64_t pages = 0, bytes = 0;
    double memcpy_gbs = 0;               // median
    double out_gbs = 0, in_gbs = 0;      // device time, medians
    double out_ratio = 0, in_ratio = 0;  // swap GB/s / memcpy GB/s, medians of the pairs
    double out_min = 0, out_max = 0, in_min = 0, in_max = 0;
    double out_host_ms = 0, in_host_ms = 0;  // CPU time recording the copies (median)
    double out_device_ms = 0, in_device_ms = 0;
    double out_wall_ms = 0, in_wall_ms = 0;  // call + submit + wait (median)
};

// Fills `seqs` sequences of `tokens` tokens each in a pool of `layers` layers x 8 heads x 128
// f16, then alternates (memcpy, swap_out all, swap_in all) and (swap_out, swap_in, memcpy)
// `pairs` times.
SwapResult measure_swap(Context& ctx, uint32_t layers = 4, uint32_t seqs = 8, uint32_t tokens = 512,
                        int pairs = 7);

}  // namespace pagedkv::bench
