// A hybrid model's pages (PoolConfig::layer_windows), measured by running KVManager: a Gemma
// 3-like layout (34 layers, every sixth full attention, the others sliding over 1024 tokens;
// 8 kv heads of 256, f16, pages of 16 tokens) against one block table for all layers and a
// contiguous cache, at several contexts; and a decode step's time over the hybrid pool against
// one table, interleaved. pagedkv-bench --only hybrid prints it and fails when the hybrid layout
// at 32k tokens holds more than 25% of the bytes one table needs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pagedkv {
class Context;
}

namespace pagedkv::bench {

// One context's figures. Page counts come from a real KVManager over pools of 1 kv head x 4
// (page counts do not depend on the heads); bytes are those pages x the page bytes of pools of
// the real shape (8 kv heads x 256, f16).
struct HybridContext {
    uint64_t context = 0;            // prompt tokens (prefilled in chunks)
    uint64_t tokens = 0;             // after the decode steps
    uint64_t hybrid_pages = 0;       // KVManager::pages_held, pages of one group's layers
    uint64_t hybrid_peak_pages = 0;  // the most pool pages in use while a prefill chunk ran
    uint64_t one_table_pages = 0;    // the same model without layer_windows, pages of all layers
    uint64_t hybrid_bytes = 0, one_table_bytes = 0;
    uint64_t dynamic_bytes = 0;   // layers x tokens x K+V, contiguous (HF DynamicCache)
    uint64_t windowed_bytes = 0;  // full layers x tokens + sliding layers x min(tokens, window)
};

struct HybridTiming {
    bool measured = false;
    std::string shape;
    // Decode step (begin_step, write and attention of every layer, end_step) on the hybrid
    // pool over the same on one table, interleaved pairs: device time ratio with spread, and
    // medians of device and host (recording) time.
    double device_ratio = 0, device_min = 0, device_max = 0;
    double host_ratio = 0, host_min = 0, host_max = 0;
    double hybrid_device_ms = 0, one_table_device_ms = 0;
    double hybrid_host_ms = 0, one_table_host_ms = 0;
};

struct HybridFigures {
    uint32_t layers = 0, full_layers = 0, window = 0, per_page = 0, kv_heads = 0, head_dim = 0;
    uint32_t block_size = 0, chunk = 0, decode_steps = 0;
    uint64_t hybrid_page_bytes = 0, one_table_page_bytes = 0;
    uint64_t static_bytes = 0;  // a contiguous cache preallocated for the largest context
    std::vector<HybridContext> contexts;
    HybridTiming timing;
};

// Contexts in tokens (4k, 32k, 128k by default); `timing_pairs` 0 skips the timing.
HybridFigures measure_hybrid(Context& ctx,
                             const std::vector<uint64_t>& contexts = {4096, 32768, 131072},
                             int timing_pairs = 5);

// The figures as a table (one line per context), for the bench's output.
std::string hybrid_table(const HybridFigures& f);

// The figures as the bench's rows (name, value, note) and JSON keys (hybrid_*).
struct HybridRow {
    std::string name, value, note;
};
std::vector<HybridRow> hybrid_rows(const HybridFigures& f);
std::map<std::string, double> hybrid_json(const HybridFigures& f);

// The bar: at 32k tokens the hybrid layout holds at most 25% of the bytes one table
// needs (true when 32k was not measured).
inline constexpr double kHybridBar = 0.25;
bool hybrid_bar_met(const HybridFigures& f);

}  // namespace pagedkv::bench
