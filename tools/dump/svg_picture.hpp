// The --svg output of pagedkv-dump, in two views (--view):
//  - blocks: the pool in block-id order, one square per page: fragmentation, free and evictable
//    pages at a glance;
//  - lanes: one lane per row (a batch row or sequence, and a static cache's spare tables) with
//    its pages in block-table (logical) order, then the free list (next handed out first) and
//    the evictable pages (evicted first first). A page shared by several lanes keeps its first
//    owner's colour in all of them and a line links its cells, so a beam tree shows.
// Both draw a page's tokens at the slots they occupy (a cropped or sliding row's first page
// shows its empty leading slots), reserved pages holding no token yet hatched and outlined, and
// give every page a tooltip (<title>: block id, owners, reference count, token range). Compact
// mode (automatic above kCompactAbove pages) draws small cells without text.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "snapshot_view.hpp"

namespace pagedkv::dump {

enum class SvgView { Both, Lanes, Blocks };

struct SvgOptions {
    SvgView view = SvgView::Both;
    std::optional<bool> compact;  // unset: compact above kCompactAbove pages
};

inline constexpr uint64_t kCompactAbove = 256;

std::string svg_picture(const SnapshotView& v, const SvgOptions& options = {});

}  // namespace pagedkv::dump
