// `pagedkv-demo serve --hybrid`: the serving engine (engine.hpp) over a hybrid model's pool
// (PoolConfig::layer_windows: every third layer full attention, the others sliding over
// `window` tokens), every step's attention checked against the CPU's over each layer's window
// and every sequence's held K/V bit for bit against the reference. Preemption by recompute and
// no prefix caching (swap and prefix caching are not implemented for hybrid pools). Ends with
// the pages held against what one block table for all layers would hold.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.hpp"

namespace pagedkv::serve {

// The serve demos' pool: `layers` layers of 2 kv heads x 32, pages of 16 tokens.
PoolConfig demo_config(uint32_t layers, uint64_t pages, DType dtype);

// Windows of `layers` layers: layer l full attention when l % 3 == 2, else `window` tokens
// (6 layers: {w, w, 0, w, w, 0}).
std::vector<uint32_t> hybrid_windows(uint32_t layers, uint32_t window);

// Runs the trace; returns the process's exit status (1 on any mismatch).
int hybrid_main(const TraceOptions& trace, EngineOptions opt, uint64_t pages, uint32_t layers,
                uint32_t window, DType dtype);

}  // namespace pagedkv::serve
