#include "allocator/layer_groups.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

namespace pagedkv {

std::optional<std::string> check_layer_windows(uint32_t num_layers,
                                               std::span<const uint32_t> layer_windows) {
    if (!layer_windows.empty() && layer_windows.size() != num_layers)
        return fmt::format(
            "layer_windows has {} entries, the pool has {} layers (one per layer, "
            "or none)",
            layer_windows.size(), num_layers);
    for (size_t l = 0; l < layer_windows.size(); ++l)
        if (layer_windows[l] > uint32_t(INT32_MAX))
            return fmt::format("layer_windows[{}] is {}, more than {}", l, layer_windows[l],
                               INT32_MAX);
    return std::nullopt;
}

LayerGroups LayerGroups::make(uint32_t num_layers, std::span<const uint32_t> layer_windows) {
    LayerGroups g;
    g.group_of.assign(num_layers, 0);
    g.slot_of.assign(num_layers, 0);
    // The layers of each kind (window), in layer order; kinds ordered by window, full first.
    std::map<uint32_t, std::vector<uint32_t>> kinds;
    for (uint32_t l = 0; l < num_layers; ++l)
        kinds[layer_windows.empty() ? 0 : layer_windows[l]].push_back(l);
    g.per_page = num_layers;
    for (const auto& [w, ls] : kinds)
        g.per_page = std::min(g.per_page, uint32_t(ls.size()));
    for (const auto& [w, ls] : kinds)
        for (size_t i = 0; i < ls.size(); i += g.per_page) {
            const auto id = uint32_t(g.window.size());
            g.window.push_back(w);
            auto& mine = g.layers.emplace_back();
            for (size_t j = i; j < std::min(ls.size(), i + g.per_page); ++j) {
                mine.push_back(ls[j]);
                g.group_of[ls[j]] = id;
                g.slot_of[ls[j]] = uint32_t(j - i);
            }
        }
    return g;
}

}  // namespace pagedkv
