#include "cache/snapshot/snapshot_check.hpp"

#include <fmt/format.h>

#include <unordered_map>

#include "cache/snapshot/snapshot_format.hpp"

namespace pagedkv {

namespace {

namespace pf = snapshot_format::pool;
namespace cf = snapshot_format::cache;
namespace px = snapshot_format::prefix;
namespace lf = snapshot_format::layers;

// Positions in a row are below INT32_MAX (update() refuses the rest).
constexpr int64_t kMaxPosition = INT32_MAX;

class Checker {
  public:
    Checker(const SnapshotData& s, const SnapshotOffsets* at) : s_(s), at_(at) {}

    std::string run() {
        std::string e;
        if (!(e = layout()).empty()) return e;
        if (!(e = layer_windows()).empty()) return e;
        groups_ = s_.groups();
        if (!(e = allocator()).empty()) return e;
        refs_.assign(s_.layout.num_blocks, 0);
        for (size_t c = 0; c < s_.caches.size(); ++c)
            if (!(e = cache(c)).empty()) return e;
        if (!(e = references()).empty()) return e;
        for (size_t c = 0; c < s_.caches.size(); ++c)
            if (!(e = unshared(c)).empty()) return e;
        if (!(e = prefix()).empty()) return e;
        return pages();
    }

    // "byte 123 (field): what", or "field: what" without offsets.
    std::string fail(uint64_t offset, const std::string& field, const std::string& what) const {
        if (at_) return fmt::format("byte {} ({}): {}", offset, field, what);
        return fmt::format("{}: {}", field, what);
    }
    uint64_t pool_at(uint64_t field) const { return at_ ? at_->pool + field : 0; }

    std::string layout() const {
        // The pool's own checks (allocator/page_format.cpp); without offsets (BlockPool's
        // constructor) the message is the problem alone.
        const auto problem = check_pool_shape(s_.layout);
        if (!problem) return {};
        if (!at_) return problem->what;
        return fail(pool_at(field_offset(problem->field)), field_name(problem->field),
                    problem->what);
    }

    static uint64_t field_offset(ShapeProblem::Field f) {
        using F = ShapeProblem::Field;
        switch (f) {
            case F::NumLayers:
                return pf::kNumLayers;
            case F::NumKvHeads:
                return pf::kNumKvHeads;
            case F::HeadDim:
                return pf::kHeadDim;
            case F::VHeadDim:
                return pf::kVHeadDim;
            case F::BlockSize:
                return pf::kBlockSize;
            case F::DType:
                return pf::kDType;
            case F::Layout:
                return pf::kPageLayout;
            case F::NumBlocks:
                return pf::kNumBlocks;
            case F::MaxSlabBytes:
                return pf::kMaxSlabBytes;
        }
        return 0;
    }

  private:
    // The model's layers and their windows cut into groups of a page's layers.
    std::string layer_windows() const {
        const auto& w = s_.layer_windows;
        if (w.empty()) return {};
        const uint64_t at = at_ ? at_->layers : 0;
        if (auto e = check_layer_windows(uint32_t(w.size()), w))
            return fail(at + lf::kWindows, "layer_windows", *e);
        const uint32_t per_page = s_.groups().per_page;
        if (per_page != s_.layout.num_layers)
            return fail(pool_at(pf::kNumLayers), "num_layers",
                        fmt::format("a page holds {} layers, but {} layers with these windows "
                                    "make pages of {}",
                                    s_.layout.num_layers, w.size(), per_page));
        return {};
    }

    // The allocator's own invariants (allocator/block_allocator.cpp), located in the file.
    std::string allocator() const {
        const auto problem = check_state(s_.allocator, s_.layout.num_blocks);
        if (!problem) return {};
        using W = StateProblem::Where;
        uint64_t offset = 0;
        switch (problem->where) {
            case W::Refcounts:
                offset = (at_ ? at_->refcounts : 0) + 4 * problem->index;
                break;
            case W::FreeList:
                offset = (at_ ? at_->free_list : 0) + 4 * problem->index;
                break;
            case W::PeakUsed:
                offset = pool_at(pf::kPeakUsed);
                break;
            case W::Allocations:
                offset = pool_at(pf::kAllocations);
                break;
            case W::Cached:
                offset = (at_ ? at_->cached : 0) + 4 * problem->index;
                break;
            case W::Evictable:
                offset = (at_ ? at_->evictable : 0) + 4 * problem->index;
                break;
        }
        return fail(offset, problem->field, problem->what);
    }

    std::string cache(size_t c) {
        const SnapshotCache& k = s_.caches[c];
        const SnapshotOffsets::Cache* o = at_ && c < at_->caches.size() ? &at_->caches[c] : nullptr;
        const uint64_t head = o ? o->head : 0;
        const std::string name = fmt::format("caches[{}]", c);
        auto zero = [&](uint32_t v, uint64_t off, const char* field) -> std::string {
            if (v == 0) return {};
            return fail(
                head + off, name + "." + field,
                fmt::format("{} is {}, must be 0 for a {} cache", field, v, to_string(k.kind)));
        };
        std::string e;
        switch (k.kind) {
            case SnapshotCacheKind::Dynamic:
                if (!(e = zero(k.window, cf::kWindow, "window")).empty()) return e;
                [[fallthrough]];
            case SnapshotCacheKind::SlidingWindow:
                if (!(e = zero(k.batch_size, cf::kBatchSize, "batch_size")).empty()) return e;
                if (!(e = zero(k.max_cache_len, cf::kMaxCacheLen, "max_cache_len")).empty())
                    return e;
                if (!(e = zero(uint32_t(k.spare.size()), cf::kSpareRows, "spare_rows")).empty())
                    return e;
                if (k.kind == SnapshotCacheKind::SlidingWindow && k.window == 0)
                    return fail(head + cf::kWindow, name + ".window",
                                "a sliding-window cache needs a window of at least 1");
                break;
            case SnapshotCacheKind::Static:
                if (!(e = zero(k.window, cf::kWindow, "window")).empty()) return e;
                if (k.batch_size == 0 || k.max_cache_len == 0)
                    return fail(head + cf::kBatchSize, name + ".batch_size",
                                fmt::format("a static cache needs batch_size ({}) and "
                                            "max_cache_len ({}) of at least 1",
                                            k.batch_size, k.max_cache_len));
                if (k.rows.size() > k.batch_size)
                    return fail(head + cf::kRows, name + ".rows",
                                fmt::format("{} rows exceed the static cache's batch_size {}",
                                            k.rows.size(), k.batch_size));
                break;
            default:
                return fail(head + cf::kKind, name + ".kind",
                            fmt::format("unknown cache kind {}", static_cast<uint32_t>(k.kind)));
        }
        const uint64_t n = s_.layout.num_blocks;
        const uint32_t bs = s_.layout.block_size;
        const bool is_static = k.kind == SnapshotCacheKind::Static;
        // A static cache's tables (rows and spare ones) are exactly its reservation, each
        // ceil(max_cache_len / block_size) pages of its own (never shared).
        const uint64_t per_row = is_static ? (uint64_t(k.max_cache_len) + bs - 1) / bs : 0;
        if (is_static && k.rows.size() + k.spare.size() != k.batch_size)
            return fail(head + cf::kSpareRows, name + ".spare_rows",
                        fmt::format("{} rows + {} spare tables, a static cache of batch_size {} "
                                    "holds exactly {}",
                                    k.rows.size(), k.spare.size(), k.batch_size, k.batch_size));
        const bool grouped = !s_.layer_windows.empty();
        const uint32_t G = groups_.num_groups();
        if (grouped && is_static)
            return fail(head + cf::kKind, name + ".kind",
                        "a static cache over a pool with layer_windows (static caches refuse "
                        "layer groups)");
        // With layer groups, every row has the tables of groups 1.. and dropped counts.
        if (!grouped && (!k.more.empty() || !k.dropped.empty()))
            return fail(head, name + ".more",
                        "group tables or dropped counts without layer_windows");
        if (grouped) {
            if (k.more.size() != k.rows.size())
                return fail(head + cf::kRows, name + ".more",
                            fmt::format("group tables for {} rows, the cache has {}", k.more.size(),
                                        k.rows.size()));
            for (size_t r = 0; r < k.more.size(); ++r)
                if (k.more[r].size() != G - 1)
                    return fail(head + cf::kRows, fmt::format("{}.rows[{}]", name, r),
                                fmt::format("{} tables of groups 1.., the pool has {} groups",
                                            k.more[r].size(), G));
        }
        for (size_t t = 0; t < num_tables(k); ++t) {
            const auto [blocks, table, first] = table_of(c, t);
            if (is_static && blocks.size() != per_row)
                return fail(first, table,
                            fmt::format("{} pages, a static cache's row of max_cache_len {} "
                                        "reserves {}",
                                        blocks.size(), k.max_cache_len, per_row));
            std::unordered_map<uint32_t, size_t> seen;
            for (size_t i = 0; i < blocks.size(); ++i) {
                const uint32_t b = index(blocks[i]);
                const std::string field = fmt::format("{}[{}]", table, i);
                if (b >= n)
                    return fail(first + 4 * i, field,
                                fmt::format("block {} out of range, the pool has {} blocks", b, n));
                if (auto [it, fresh] = seen.emplace(b, i); !fresh)
                    return fail(first + 4 * i, field,
                                fmt::format("block {} is in this table twice (also at [{}])", b,
                                            it->second));
                ++refs_[b];
            }
        }
        const uint32_t layers = s_.model_layers();
        const uint64_t len_at = o ? o->lengths : 0;
        if (k.len.size() != layers || k.start.size() != layers)
            return fail(
                len_at, name + ".len",
                fmt::format("lengths for {} layers, the pool has {}", k.len.size(), layers));
        if (grouped && k.dropped.size() != layers)
            return fail(o ? o->dropped : 0, name + ".dropped",
                        fmt::format("dropped counts for {} layers, the pool has {}",
                                    k.dropped.size(), layers));
        for (uint32_t l = 0; l < layers; ++l) {
            if (k.len[l].size() != k.rows.size() || k.start[l].size() != k.rows.size() ||
                (grouped && k.dropped[l].size() != k.rows.size()))
                return fail(len_at, name + ".len",
                            fmt::format("layer {} has lengths for {} rows, the cache has {}", l,
                                        k.len[l].size(), k.rows.size()));
            const uint32_t g = groups_.group_of[l];
            for (size_t r = 0; r < k.rows.size(); ++r) {
                const int64_t len = k.len[l][r], start = k.start[l][r];
                const uint64_t off = len_at + 16 * (uint64_t(l) * k.rows.size() + r);
                const std::string field = fmt::format("{}.len[layer {}][row {}]", name, l, r);
                if (len < 0 || len > kMaxPosition || start < 0 || start > kMaxPosition)
                    return fail(off, field,
                                fmt::format("length {} / start {} out of range [0, {}]", len, start,
                                            kMaxPosition));
                const auto& pages = k.table(r, g);
                const int64_t slots = int64_t(pages.size()) * bs;
                if (len > 0 && start + len > slots)
                    return fail(
                        off, field,
                        fmt::format("tokens [{}, {}) do not fit the row's {}{} pages ({} "
                                    "slots)",
                                    start, start + len,
                                    g == 0 ? std::string() : fmt::format("group {} table's ", g),
                                    pages.size(), slots));
                if (grouped) {
                    const int64_t d = k.dropped[l][r];
                    if (d < 0 || d > kMaxPosition - len)
                        return fail((o ? o->dropped : 0) + 8 * (uint64_t(l) * k.rows.size() + r),
                                    fmt::format("{}.dropped[layer {}][row {}]", name, l, r),
                                    fmt::format("{} tokens let go, with {} held out of range "
                                                "[0, {}]",
                                                d, len, kMaxPosition));
                }
                if (k.kind == SnapshotCacheKind::SlidingWindow && len > int64_t(k.window))
                    return fail(
                        off, field,
                        fmt::format("length {} exceeds the sliding window of {}", len, k.window));
                if (is_static && (start != 0 || len > int64_t(k.max_cache_len)))
                    return fail(off, field,
                                fmt::format("length {} / start {}: a static cache's rows start at "
                                            "slot 0 and hold at most max_cache_len {}",
                                            len, start, k.max_cache_len));
            }
        }
        return {};
    }

    std::string references() const {
        const auto problem = check_references(s_.allocator.refcounts, refs_);
        if (!problem) return {};
        return fail((at_ ? at_->refcounts : 0) + 4 * problem->index, problem->field, problem->what);
    }

    // Table t of cache c (its rows, then its spare tables): the blocks, the field's name, and
    // the byte offset of block 0 (0 without offsets).
    struct Table {
        const std::vector<BlockId>& blocks;
        std::string field;
        uint64_t first;
    };
    // Rows, spare tables, then each row's tables of groups 1.. (row-major).
    static size_t num_tables(const SnapshotCache& k) {
        size_t n = k.rows.size() + k.spare.size();
        for (const auto& m : k.more)
            n += m.size();
        return n;
    }
    Table table_of(size_t c, size_t t) const {
        const SnapshotCache& k = s_.caches[c];
        const SnapshotOffsets::Cache* o = at_ && c < at_->caches.size() ? &at_->caches[c] : nullptr;
        if (t >= k.rows.size() + k.spare.size()) {
            // (Shapes checked: every row has num_groups - 1 of them.)
            const size_t m = t - k.rows.size() - k.spare.size(), per = groups_.num_groups() - 1;
            const size_t row = m / per, g = m % per + 1;
            return {k.more[row][g - 1], fmt::format("caches[{}].rows[{}].group[{}]", c, row, g),
                    o && m < o->more.size() ? o->more[m] : 0};
        }
        const bool spare = t >= k.rows.size();
        const size_t i = spare ? t - k.rows.size() : t;
        return {spare ? k.spare[i] : k.rows[i],
                fmt::format("caches[{}].{}[{}]", c, spare ? "spare" : "rows", i),
                o && t < o->tables.size() ? o->tables[t] : 0};
    }

    // A static cache's pages are its own: with the references counted right, each of its
    // blocks has refcount 1.
    std::string unshared(size_t c) const {
        const SnapshotCache& k = s_.caches[c];
        if (k.kind != SnapshotCacheKind::Static) return {};
        for (size_t t = 0; t < k.rows.size() + k.spare.size(); ++t) {
            const auto [blocks, table, first] = table_of(c, t);
            for (size_t i = 0; i < blocks.size(); ++i) {
                const uint32_t b = index(blocks[i]);
                if (s_.allocator.refcounts[b] == 1) continue;
                return fail(first + 4 * i, fmt::format("{}[{}]", table, i),
                            fmt::format("block {} of a static cache has refcount {}; its pages "
                                        "are never shared",
                                        b, s_.allocator.refcounts[b]));
            }
        }
        return {};
    }

    // The prefix index's entries (the allocator's cached and evictable lists passed
    // allocator()): one per cached block, each page after its parent, each hash the hash of its
    // parent's hash, salt and tokens (PrefixIndex::hash_page), no hash twice; what
    // PrefixIndex::restore and PrefixIndex::check require.
    std::string prefix() const {
        const uint64_t n = s_.layout.num_blocks;
        const uint32_t bs = s_.layout.block_size;
        const auto& entries = s_.prefix;
        std::vector<uint8_t> cached(n, 0);
        for (BlockId b : s_.allocator.cached)
            cached[index(b)] = 1;
        constexpr uint64_t kNone = UINT64_MAX;
        std::vector<uint64_t> entry_of(n, kNone);
        std::unordered_map<uint64_t, size_t> by_hash;
        for (size_t i = 0; i < entries.size(); ++i) {
            const PrefixEntry& e = entries[i];
            const uint32_t b = index(e.block);
            auto bad = [&](uint64_t field, const char* name, const std::string& what) {
                const uint64_t at = at_ ? at_->entries + i * at_->entry_bytes + field : 0;
                return fail(at, fmt::format("prefix[{}].{}", i, name), what);
            };
            if (b >= n)
                return bad(px::kBlock, "block",
                           fmt::format("block {} out of range, the pool has {} blocks", b, n));
            if (entry_of[b] != kNone)
                return bad(
                    px::kBlock, "block",
                    fmt::format("block {} has two entries (also prefix[{}])", b, entry_of[b]));
            if (!cached[b])
                return bad(px::kBlock, "block",
                           fmt::format("block {} has an entry but is not cached", b));
            if (e.tokens.size() != bs)
                return bad(px::kTokens, "tokens",
                           fmt::format("{} token ids, a page holds {}", e.tokens.size(), bs));
            uint64_t parent_hash = PrefixIndex::kRootHash;
            if (e.parent != PrefixEntry::kNoParent) {
                if (e.parent >= n || entry_of[e.parent] == kNone)
                    return bad(px::kParent, "parent",
                               fmt::format("parent block {} of block {} is not an entry before it "
                                           "(each page comes after its parent)",
                                           e.parent, b));
                parent_hash = entries[entry_of[e.parent]].hash;
            }
            const uint64_t h = PrefixIndex::hash_page(parent_hash, e.salt, e.tokens);
            if (h != e.hash)
                return bad(px::kHash, "hash",
                           fmt::format("hash {:016x} of block {}, but its parent's hash, salt and "
                                       "tokens hash to {:016x}",
                                       e.hash, b, h));
            if (auto [it, fresh] = by_hash.emplace(h, i); !fresh)
                return bad(
                    px::kHash, "hash",
                    fmt::format("hash {:016x} of block {} is also prefix[{}]'s", h, b, it->second));
            entry_of[b] = i;
        }
        const auto& list = s_.allocator.cached;
        for (size_t i = 0; i < list.size(); ++i)
            if (entry_of[index(list[i])] == kNone)
                return fail(
                    (at_ ? at_->cached : 0) + 4 * i, fmt::format("cached[{}]", i),
                    fmt::format("block {} is cached but has no prefix entry", index(list[i])));
        return {};
    }

    std::string pages() const {
        // The decoder reads exactly this many bytes, so only assembled data can fail here.
        if (!s_.has_pages) {
            if (!s_.pages.empty()) return "pages: page bytes present but has_pages is false";
            return {};
        }
        const uint64_t blocks = s_.page_blocks().size();
        const uint64_t want = blocks * s_.layout.block_bytes();
        if (s_.pages.size() != want)
            return fmt::format("pages: {} page bytes, {} blocks in use or evictable need {}",
                               s_.pages.size(), blocks, want);
        return {};
    }

    const SnapshotData& s_;
    const SnapshotOffsets* at_;
    LayerGroups groups_;
    std::vector<uint64_t> refs_;
};

}  // namespace

std::string check_layout(const SnapshotLayout& l, const SnapshotOffsets* at) {
    SnapshotData s;
    s.layout = l;
    return Checker(s, at).layout();
}

std::string check_snapshot(const SnapshotData& s, const SnapshotOffsets* at) {
    return Checker(s, at).run();
}

}  // namespace pagedkv
