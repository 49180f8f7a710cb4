// LayerGroups: how a hybrid model's layers (sliding-window and full-attention ones,
// PoolConfig::layer_windows) share a pool's pages. Layers with the same window are one kind;
// each kind is cut, in layer order, into groups of `per_page` layers, per_page being the
// fewest layers any kind has, so that every page holds the K/V of one group's layers and all
// pages have the same bytes (vLLM's hybrid allocator pads the same way). Each sequence has one
// block table per group: a sliding group's pages that left the window go back to the pool
// while a full group's stay. A model without windows is one group holding every layer.
// Pure host logic: no Vulkan.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace pagedkv {

struct LayerGroups {
    uint32_t per_page = 0;  // layers a page holds (the pool's PageFormat::num_layers)
    // [layer]: its group, and which of the page's layer slots holds it.
    std::vector<uint32_t> group_of, slot_of;
    // [group]: its window (0: full attention) and its layers, ascending.
    std::vector<uint32_t> window;
    std::vector<std::vector<uint32_t>> layers;

    uint32_t num_groups() const noexcept { return uint32_t(window.size()); }
    bool hybrid() const noexcept { return window.size() > 1 || (!window.empty() && window[0]); }
    // The window of a layer (0: full attention).
    uint32_t window_of(uint32_t layer) const { return window[group_of[layer]]; }

    // The groups of num_layers layers with these windows (empty: every layer full attention).
    // layer_windows must be empty or hold num_layers entries (check_layer_windows).
    static LayerGroups make(uint32_t num_layers, std::span<const uint32_t> layer_windows);
};

// What is wrong with these windows for num_layers layers, or nullopt.
std::optional<std::string> check_layer_windows(uint32_t num_layers,
                                               std::span<const uint32_t> layer_windows);

}  // namespace pagedkv
