#include "cache/snapshot/snapshot_codec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

#include "cache/snapshot/crc32.hpp"
#include "cache/snapshot/snapshot_check.hpp"
#include "cache/snapshot/snapshot_format.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

namespace sf = snapshot_format;

namespace {

Error corrupt(const std::string& m) {
    return Error(ErrorCode::CorruptSnapshot, m);
}

// --- encoding -----------------------------------------------------------------------------

class Writer {
  public:
    void u32(uint32_t v) { le(v, 4); }
    void u64(uint64_t v) { le(v, 8); }
    void i64(int64_t v) { le(static_cast<uint64_t>(v), 8); }
    void tag(const std::array<char, 4>& t) {
        for (char c : t)
            out.push_back(static_cast<uint8_t>(c));
    }
    void bytes(std::span<const uint8_t> b) { out.insert(out.end(), b.begin(), b.end()); }
    // Starts a section; returns where its length goes, for end_section.
    size_t begin_section(const std::array<char, 4>& t) {
        tag(t);
        const size_t at = out.size();
        u64(0);
        return at;
    }
    void end_section(size_t length_at) { put(length_at, out.size() - length_at - 8, 8); }
    void put(size_t at, uint64_t v, int n) {
        for (int i = 0; i < n; ++i)
            out[at + size_t(i)] = static_cast<uint8_t>(v >> (8 * i));
    }

    std::vector<uint8_t> out;

  private:
    void le(uint64_t v, int n) {
        for (int i = 0; i < n; ++i)
            out.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
};

uint64_t get_le(std::span<const uint8_t> b, uint64_t at, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i)
        v |= uint64_t(b[at + uint64_t(i)]) << (8 * i);
    return v;
}

// --- decoding -----------------------------------------------------------------------------

template <class Name>
std::string name_of(const Name& n) {
    if constexpr (std::is_invocable_v<const Name&>)
        return n();
    else
        return std::string(n);
}

// The tag as text, with anything unprintable escaped.
std::string tag_text(std::span<const uint8_t> t) {
    std::string s;
    for (uint8_t c : t)
        s += (c >= 0x20 && c < 0x7F && c != '\'') ? std::string(1, char(c))
                                                  : fmt::format("\\x{:02x}", c);
    return s;
}

// Reads little-endian fields inside [pos, end) of the file, naming the field and its byte
// offset when a read would cross the end.
class Reader {
  public:
    Reader(std::span<const uint8_t> b, uint64_t pos, uint64_t end, std::string scope)
        : b_(b), pos_(pos), end_(end), scope_(std::move(scope)) {}

    uint64_t pos() const noexcept { return pos_; }
    uint64_t end() const noexcept { return end_; }
    uint64_t left() const noexcept { return end_ - pos_; }
    const std::string& scope() const noexcept { return scope_; }

    // Throws unless count items of item_bytes each remain (no overflow, no allocation first).
    template <class Name>
    void need(uint64_t count, uint64_t item_bytes, const Name& name) const {
        if (item_bytes == 0 || count <= left() / item_bytes) return;
        throw corrupt(fmt::format("byte {} ({}): {} x {} bytes do not fit, the {} ends at byte {}",
                                  pos_, name_of(name), count, item_bytes, scope_, end_));
    }
    template <class Name>
    uint32_t u32(const Name& name) {
        need(1, 4, name);
        const uint32_t v = uint32_t(get_le(b_, pos_, 4));
        pos_ += 4;
        return v;
    }
    template <class Name>
    uint64_t u64(const Name& name) {
        need(1, 8, name);
        const uint64_t v = get_le(b_, pos_, 8);
        pos_ += 8;
        return v;
    }
    template <class Name>
    int64_t i64(const Name& name) {
        return static_cast<int64_t>(u64(name));
    }
    template <class Name>
    std::span<const uint8_t> bytes(uint64_t n, const Name& name) {
        need(n, 1, name);
        auto s = b_.subspan(pos_, n);
        pos_ += n;
        return s;
    }

    // Opens the next section, which must carry tag `want`; `label` names it in messages.
    Reader section(const std::array<char, 4>& want, const std::string& label) {
        const uint64_t at = pos_;
        if (left() == 0)
            throw corrupt(
                fmt::format("byte {} (section {}): missing, the {} ends here", at, label, scope_));
        auto got = bytes(4, [&] { return "section " + label + " tag"; });
        if (!std::equal(got.begin(), got.end(), want.begin(),
                        [](uint8_t a, char c) { return a == static_cast<uint8_t>(c); }))
            throw corrupt(fmt::format("byte {} (section {} tag): expected '{}', found '{}'", at,
                                      label, std::string(want.data(), 4), tag_text(got)));
        const uint64_t length = u64([&] { return "section " + label + " length"; });
        if (length > left())
            throw corrupt(
                fmt::format("byte {} (section {} length): {} bytes run past the end "
                            "of the {} at byte {}",
                            at + 4, label, length, scope_, end_));
        Reader r(b_, pos_, pos_ + length, "section " + label);
        pos_ += length;
        return r;
    }
    // A section must be read to its last byte: leftovers mean its counts disagree with it.
    void finish() const {
        if (left() != 0)
            throw corrupt(fmt::format("byte {} ({}): {} bytes left over after its last field", pos_,
                                      scope_, left()));
    }

  private:
    std::span<const uint8_t> b_;
    uint64_t pos_, end_;
    std::string scope_;
};

void decode_pool(Reader r, SnapshotData& s, uint32_t& num_caches, SnapshotOffsets& at) {
    namespace pf = sf::pool;
    at.pool = r.pos();
    SnapshotLayout& l = s.layout;
    l.num_layers = r.u32("num_layers");
    l.num_kv_heads = r.u32("num_kv_heads");
    l.head_dim = r.u32("head_dim");
    l.v_head_dim = r.u32("v_head_dim");
    l.block_size = r.u32("block_size");
    const uint32_t dtype = r.u32("dtype");
    if (dtype > 0xFF || !known_dtype(static_cast<DType>(dtype)))
        throw corrupt(
            fmt::format("byte {} (dtype): unknown dtype {} (0 f32, 1 f16, 2 bf16, "
                        "3 int8, 4 fp8e4m3)",
                        at.pool + pf::kDType, dtype));
    l.dtype = static_cast<DType>(dtype);
    l.num_blocks = r.u64("num_blocks");
    l.max_slab_bytes = r.u64("max_slab_bytes");
    const uint64_t block_bytes = r.u64("block_bytes");
    s.allocator.peak_used_blocks = r.u64("peak_used_blocks");
    s.allocator.allocations = r.u64("allocations");
    s.allocator.releases = r.u64("releases");
    s.pages_copied = r.u64("pages_copied");
    num_caches = r.u32("num_caches");
    const uint32_t layout = r.u32("page_layout");
    if (layout > static_cast<uint32_t>(PageLayout::TokenMajor))
        throw corrupt(
            fmt::format("byte {} (page_layout): unknown page layout {} (0 head-major, "
                        "1 token-major)",
                        at.pool + pf::kPageLayout, layout));
    l.layout = static_cast<PageLayout>(layout);
    r.finish();
    if (std::string e = check_layout(l, &at); !e.empty()) throw corrupt(e);
    if (block_bytes != l.block_bytes())
        throw corrupt(fmt::format("byte {} (block_bytes): {} but the layout makes blocks of {}",
                                  at.pool + pf::kBlockBytes, block_bytes, l.block_bytes()));
}

void decode_allocator(Reader r, SnapshotData& s, SnapshotOffsets& at) {
    const uint64_t n = s.layout.num_blocks;
    at.refcounts = r.pos();
    r.need(n, 4, "refcounts");
    s.allocator.refcounts.resize(n);
    for (uint64_t b = 0; b < n; ++b)
        s.allocator.refcounts[b] = r.u32("refcounts");
    const uint64_t free_count = r.u64("free_count");
    at.free_list = r.pos();
    r.need(free_count, 4, "free_list");
    if (free_count > n)
        throw corrupt(fmt::format("byte {} (free_count): {} free blocks in a pool of {}",
                                  at.free_list - 8, free_count, n));
    s.allocator.free_list.resize(free_count);
    for (uint64_t i = 0; i < free_count; ++i)
        s.allocator.free_list[i] = BlockId{r.u32("free_list")};
    r.finish();
}

// groups: the pool's layer groups with kFlagLayerGroups, else 0.
void decode_cache(Reader r, size_t c, uint32_t groups, SnapshotData& s, SnapshotOffsets& at) {
    SnapshotOffsets::Cache& o = at.caches.emplace_back();
    SnapshotCache& k = s.caches.emplace_back();
    o.head = r.pos();
    auto field = [&](const char* f) {
        return [c, f] { return fmt::format("caches[{}].{}", c, f); };
    };
    const uint32_t kind = r.u32(field("kind"));
    if (kind > static_cast<uint32_t>(SnapshotCacheKind::SlidingWindow))
        throw corrupt(
            fmt::format("byte {} (caches[{}].kind): unknown cache kind {} (0 dynamic, "
                        "1 static, 2 sliding window)",
                        o.head, c, kind));
    k.kind = static_cast<SnapshotCacheKind>(kind);
    k.batch_size = r.u32(field("batch_size"));
    k.max_cache_len = r.u32(field("max_cache_len"));
    k.window = r.u32(field("window"));
    const uint32_t rows = r.u32(field("rows"));
    const uint32_t spare = r.u32(field("spare_rows"));
    // Every table takes at least its 4-byte count: bounds the allocations below.
    r.need(uint64_t(rows) + spare, 4, field("rows"));
    k.rows.resize(rows);
    k.spare.resize(spare);
    // A table: its count, then its block ids; `name` names both.
    auto table = [&](std::vector<BlockId>& blocks, std::vector<uint64_t>& firsts,
                     const auto& name) {
        const uint32_t count = r.u32(name);
        firsts.push_back(r.pos());
        r.need(count, 4, name);
        blocks.resize(count);
        for (uint32_t i = 0; i < count; ++i)
            blocks[i] = BlockId{r.u32(name)};
    };
    for (uint64_t t = 0; t < uint64_t(rows) + spare; ++t) {
        const bool is_spare = t >= rows;
        auto name = [&] {
            return fmt::format("caches[{}].{}[{}]", c, is_spare ? "spare" : "rows",
                               is_spare ? t - rows : t);
        };
        table(is_spare ? k.spare[t - rows] : k.rows[t], o.tables, name);
    }
    o.lengths = r.pos();
    const uint32_t layers = s.model_layers();
    r.need(uint64_t(layers) * rows, 16, field("len"));  // layers < 2^32, rows < 2^32: no overflow
    k.len.assign(layers, std::vector<int64_t>(rows));
    k.start.assign(layers, std::vector<int64_t>(rows));
    for (uint32_t l = 0; l < layers; ++l)
        for (uint32_t row = 0; row < rows; ++row) {
            k.len[l][row] = r.i64(field("len"));
            k.start[l][row] = r.i64(field("start"));
        }
    if (groups > 0) {
        // Layer groups: each row's tables of groups 1.., then the tokens let go per layer.
        r.need(uint64_t(rows) * (groups - 1), 4, field("more"));  // bounds the allocations
        k.more.assign(rows, std::vector<std::vector<BlockId>>(groups - 1));
        for (uint32_t row = 0; row < rows; ++row)
            for (uint32_t g = 1; g < groups; ++g)
                table(k.more[row][g - 1], o.more,
                      [&] { return fmt::format("caches[{}].rows[{}].group[{}]", c, row, g); });
        o.dropped = r.pos();
        r.need(uint64_t(layers) * rows, 8, field("dropped"));
        k.dropped.assign(layers, std::vector<int64_t>(rows));
        for (uint32_t l = 0; l < layers; ++l)
            for (uint32_t row = 0; row < rows; ++row)
                k.dropped[l][row] = r.i64(field("dropped"));
    }
    r.finish();
}

// LAYR (with kFlagLayerGroups): the model's layers and their windows, which must cut into
// groups of POOL's num_layers layers (a page's).
void decode_layers(Reader r, SnapshotData& s, SnapshotOffsets& at) {
    namespace lf = sf::layers;
    at.layers = r.pos();
    const uint32_t layers = r.u32("model_layers");
    if (layers == 0)
        throw corrupt(fmt::format("byte {} (model_layers): 0 layers, a model has at least 1",
                                  at.layers + lf::kModelLayers));
    r.need(layers, 4, "layer_windows");
    s.layer_windows.resize(layers);
    for (uint32_t l = 0; l < layers; ++l)
        s.layer_windows[l] = r.u32("layer_windows");
    r.finish();
    if (auto e = check_layer_windows(layers, s.layer_windows))
        throw corrupt(fmt::format("byte {} (layer_windows): {}", at.layers + lf::kWindows, *e));
    const uint32_t per_page = s.groups().per_page;
    if (per_page != s.layout.num_layers)
        throw corrupt(fmt::format(
            "byte {} (num_layers): a page holds {} layers, but {} layers with these windows "
            "make pages of {}",
            at.pool + sf::pool::kNumLayers, s.layout.num_layers, layers, per_page));
}

// PRFX (version 2): the cached and evictable blocks, then the prefix index's entries.
void decode_prefix(Reader r, SnapshotData& s, SnapshotOffsets& at) {
    namespace px = sf::prefix;
    const uint64_t n = s.layout.num_blocks;
    // A list of block ids: its count, then the ids; `field` names both.
    auto ids = [&](const char* field, uint64_t& ids_at, std::vector<BlockId>& out) {
        const uint64_t count = r.u64([&] { return fmt::format("{}_count", field); });
        ids_at = r.pos();
        r.need(count, 4, field);
        if (count > n)
            throw corrupt(fmt::format("byte {} ({}_count): {} {} blocks in a pool of {}",
                                      ids_at - 8, field, count, field, n));
        out.resize(count);
        for (uint64_t i = 0; i < count; ++i)
            out[i] = BlockId{r.u32(field)};
    };
    ids("cached", at.cached, s.allocator.cached);
    ids("evictable", at.evictable, s.allocator.evictable);
    const uint64_t count = r.u64("entry_count");
    at.entries = r.pos();
    const uint32_t bs = s.layout.block_size;
    at.entry_bytes = px::kEntryHeadBytes + 4 * uint64_t(bs);
    r.need(count, at.entry_bytes, "prefix");  // bounds the allocations below
    s.prefix.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
        auto field = [i](const char* f) {
            return [i, f] { return fmt::format("prefix[{}].{}", i, f); };
        };
        PrefixEntry& e = s.prefix[i];
        e.block = BlockId{r.u32(field("block"))};
        e.parent = r.u32(field("parent"));
        e.hash = r.u64(field("hash"));
        e.salt = r.u64(field("salt"));
        e.tokens.resize(bs);
        for (uint32_t t = 0; t < bs; ++t)
            e.tokens[t] = static_cast<int32_t>(r.u32(field("tokens")));
    }
    r.finish();
}

void decode_pages(Reader r, SnapshotData& s) {
    const uint64_t count = r.u64("page_count");
    const uint64_t ids_at = r.pos();
    r.need(count, 4, "page_ids");
    // Blocks in use and evictable cached blocks hold K/V (SnapshotData::page_blocks).
    const std::vector<uint32_t> want = s.page_blocks();
    if (count != want.size())
        throw corrupt(
            fmt::format("byte {} (page_count): {} pages with contents, but {} blocks are "
                        "in use or evictable",
                        ids_at - 8, count, want.size()));
    const auto& rc = s.allocator.refcounts;
    std::vector<uint8_t> has_contents(rc.size(), 0);
    for (uint32_t b : want)
        has_contents[b] = 1;
    uint64_t prev = 0;
    for (uint64_t i = 0; i < count; ++i) {
        const uint64_t b = r.u32("page_ids");
        const uint64_t off = ids_at + 4 * i;
        if (b >= rc.size() || !has_contents[b])
            throw corrupt(
                fmt::format("byte {} (page_ids[{}]): block {} is {}, only blocks in use or "
                            "evictable have contents",
                            off, i, b, b >= rc.size() ? "out of range" : "free"));
        if (i > 0 && b <= prev)
            throw corrupt(
                fmt::format("byte {} (page_ids[{}]): block {} after block {}, ids must "
                            "ascend",
                            off, i, b, prev));
        prev = b;  // ascending, as many as want, each in want: exactly want
    }
    const uint64_t block_bytes = s.layout.block_bytes();
    r.need(count, block_bytes, "page_data");
    auto data = r.bytes(count * block_bytes, "page_data");
    s.pages.assign(data.begin(), data.end());
    s.has_pages = true;
    r.finish();
}

}  // namespace

std::vector<uint8_t> encode_snapshot(const SnapshotData& s) {
    Writer w;
    for (uint8_t c : sf::kMagic)
        w.out.push_back(c);
    // The lowest version that holds it: a pool without cached pages is a version-1 file (so
    // that older readers read it, and a file decodes and encodes to the same bytes).
    const bool grouped = !s.layer_windows.empty();
    w.u32(s.has_prefix_cache() || grouped ? sf::kVersion : 1);
    w.u32((s.has_pages ? sf::kFlagPageContents : 0) |
          (s.has_prefix_cache() ? sf::kFlagPrefixCache : 0) | (grouped ? sf::kFlagLayerGroups : 0));
    w.u64(0);  // payload bytes, sealed below
    w.u32(0);  // payload crc
    w.u32(0);  // header crc

    // Inconsistent windows (tests) make no groups rather than throw.
    const uint32_t groups =
        grouped && !check_layer_windows(uint32_t(s.layer_windows.size()), s.layer_windows)
            ? s.groups().num_groups()
            : 1;

    size_t at = w.begin_section(sf::kPoolTag);
    const SnapshotLayout& l = s.layout;
    for (uint32_t v : {l.num_layers, l.num_kv_heads, l.head_dim, l.v_head_dim, l.block_size,
                       uint32_t(static_cast<uint8_t>(l.dtype))})
        w.u32(v);
    for (uint64_t v :
         {l.num_blocks, l.max_slab_bytes, l.block_bytes(), s.allocator.peak_used_blocks,
          s.allocator.allocations, s.allocator.releases, s.pages_copied})
        w.u64(v);
    w.u32(uint32_t(s.caches.size()));
    w.u32(static_cast<uint32_t>(s.layout.layout));
    w.end_section(at);

    if (grouped) {
        at = w.begin_section(sf::kLayersTag);
        w.u32(uint32_t(s.layer_windows.size()));
        for (uint32_t v : s.layer_windows)
            w.u32(v);
        w.end_section(at);
    }

    at = w.begin_section(sf::kAllocatorTag);
    for (uint32_t rc : s.allocator.refcounts)
        w.u32(rc);
    w.u64(s.allocator.free_list.size());
    for (BlockId b : s.allocator.free_list)
        w.u32(index(b));
    w.end_section(at);

    for (const SnapshotCache& k : s.caches) {
        at = w.begin_section(sf::kCacheTag);
        w.u32(static_cast<uint32_t>(k.kind));
        w.u32(k.batch_size);
        w.u32(k.max_cache_len);
        w.u32(k.window);
        w.u32(uint32_t(k.rows.size()));
        w.u32(uint32_t(k.spare.size()));
        auto table = [&](const std::vector<BlockId>& t) {
            w.u32(uint32_t(t.size()));
            for (BlockId b : t)
                w.u32(index(b));
        };
        for (const auto* tables : {&k.rows, &k.spare})
            for (const auto& t : *tables)
                table(t);
        // Missing entries of inconsistent data are written as 0 rather than read out of range.
        auto at_or_0 = [](const std::vector<std::vector<int64_t>>& v, size_t i, size_t j) {
            return i < v.size() && j < v[i].size() ? v[i][j] : 0;
        };
        const uint32_t layers = s.model_layers();
        for (uint32_t layer = 0; layer < layers; ++layer)
            for (size_t row = 0; row < k.rows.size(); ++row) {
                w.i64(at_or_0(k.len, layer, row));
                w.i64(at_or_0(k.start, layer, row));
            }
        if (grouped) {
            // Exactly num_groups - 1 tables per row (missing ones of inconsistent data empty).
            const std::vector<BlockId> none;
            for (size_t row = 0; row < k.rows.size(); ++row)
                for (uint32_t g = 1; g < groups; ++g) {
                    const bool has = row < k.more.size() && g - 1 < k.more[row].size();
                    table(has ? k.more[row][g - 1] : none);
                }
            for (uint32_t layer = 0; layer < layers; ++layer)
                for (size_t row = 0; row < k.rows.size(); ++row)
                    w.i64(at_or_0(k.dropped, layer, row));
        }
        w.end_section(at);
    }

    if (s.has_prefix_cache()) {
        at = w.begin_section(sf::kPrefixTag);
        for (const auto* list : {&s.allocator.cached, &s.allocator.evictable}) {
            w.u64(list->size());
            for (BlockId b : *list)
                w.u32(index(b));
        }
        w.u64(s.prefix.size());
        for (const PrefixEntry& e : s.prefix) {
            w.u32(index(e.block));
            w.u32(e.parent);
            w.u64(e.hash);
            w.u64(e.salt);
            // Exactly block_size ids (missing ones of inconsistent data as 0).
            for (uint32_t t = 0; t < l.block_size; ++t)
                w.u32(static_cast<uint32_t>(t < e.tokens.size() ? e.tokens[t] : 0));
        }
        w.end_section(at);
    }

    if (s.has_pages) {
        at = w.begin_section(sf::kPagesTag);
        const std::vector<uint32_t> blocks = s.page_blocks();
        w.u64(blocks.size());
        for (uint32_t b : blocks)
            w.u32(b);
        w.bytes(s.pages);
        w.end_section(at);
    }
    seal_snapshot(w.out);
    return std::move(w.out);
}

void seal_snapshot(std::span<uint8_t> b) {
    if (b.size() < sf::kHeaderBytes)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("seal_snapshot: {} bytes, a snapshot header is {}", b.size(),
                                sf::kHeaderBytes));
    auto put = [&](uint64_t at, uint64_t v, int n) {
        for (int i = 0; i < n; ++i)
            b[at + uint64_t(i)] = static_cast<uint8_t>(v >> (8 * i));
    };
    put(sf::kPayloadBytesAt, b.size() - sf::kHeaderBytes, 8);
    put(sf::kPayloadCrcAt, crc32(b.subspan(sf::kHeaderBytes)), 4);
    put(sf::kHeaderCrcAt, crc32(b.first(sf::kHeaderCrcAt)), 4);
}

SnapshotData decode_snapshot(std::span<const uint8_t> b) {
    const uint64_t size = b.size();
    for (uint64_t i = 0; i < std::min<uint64_t>(size, sf::kMagic.size()); ++i)
        if (b[i] != sf::kMagic[i])
            throw corrupt(fmt::format(
                "byte {} (magic): not a pagedkv snapshot: it starts with '{}', a snapshot with "
                "'PKVSNAP\\x1a'",
                i, tag_text(b.first(std::min<uint64_t>(size, sf::kMagic.size())))));
    if (size < sf::kHeaderBytes)
        throw corrupt(
            fmt::format("byte {} (header): truncated: the file is {} bytes, the header "
                        "alone is {}",
                        size, size, sf::kHeaderBytes));
    const uint32_t version = uint32_t(get_le(b, sf::kVersionAt, 4));
    if (version < sf::kOldestVersion || version > sf::kVersion)
        throw corrupt(
            fmt::format("byte {} (version): unsupported snapshot version {}, this build "
                        "reads versions {} to {}",
                        sf::kVersionAt, version, sf::kOldestVersion, sf::kVersion));
    const uint32_t header_crc = uint32_t(get_le(b, sf::kHeaderCrcAt, 4));
    const uint32_t header_want = crc32(b.first(sf::kHeaderCrcAt));
    if (header_crc != header_want)
        throw corrupt(
            fmt::format("byte {} (header_crc32): header checksum mismatch: stored "
                        "{:#010x}, computed {:#010x} over bytes [0, {})",
                        sf::kHeaderCrcAt, header_crc, header_want, sf::kHeaderCrcAt));
    const uint32_t flags = uint32_t(get_le(b, sf::kFlagsAt, 4));
    const uint32_t known = version == 1 ? sf::kKnownFlagsV1 : sf::kKnownFlags;
    if (flags & ~known)
        throw corrupt(fmt::format("byte {} (flags): unknown flag bits {:#x} in a version-{} file",
                                  sf::kFlagsAt, flags & ~known, version));
    if (version == 2 && !(flags & (sf::kFlagPrefixCache | sf::kFlagLayerGroups)))
        throw corrupt(
            fmt::format("byte {} (flags): a version-2 file without the prefix cache or "
                        "layer groups flag (a pool without cached pages or layer windows is "
                        "written as version 1)",
                        sf::kFlagsAt));
    const uint64_t payload = get_le(b, sf::kPayloadBytesAt, 8);
    if (payload > size - sf::kHeaderBytes)
        throw corrupt(
            fmt::format("byte {} (payload): truncated: the file is {} bytes, the "
                        "header says {} + {}",
                        size, size, sf::kHeaderBytes, payload));
    if (payload < size - sf::kHeaderBytes)
        throw corrupt(fmt::format("byte {} (payload): {} bytes after the end of the payload",
                                  sf::kHeaderBytes + payload, size - sf::kHeaderBytes - payload));
    const uint32_t payload_crc = uint32_t(get_le(b, sf::kPayloadCrcAt, 4));
    const uint32_t payload_want = crc32(b.subspan(sf::kHeaderBytes));
    if (payload_crc != payload_want)
        throw corrupt(
            fmt::format("byte {} (payload_crc32): payload checksum mismatch: stored "
                        "{:#010x}, computed {:#010x} over bytes [{}, {}): the file is "
                        "damaged",
                        sf::kPayloadCrcAt, payload_crc, payload_want, sf::kHeaderBytes, size));

    SnapshotData s;
    SnapshotOffsets at;
    Reader r(b, sf::kHeaderBytes, size, "payload");
    uint32_t num_caches = 0;
    decode_pool(r.section(sf::kPoolTag, "POOL"), s, num_caches, at);
    uint32_t groups = 0;
    if (flags & sf::kFlagLayerGroups) {
        decode_layers(r.section(sf::kLayersTag, "LAYR"), s, at);
        groups = s.groups().num_groups();
    }
    decode_allocator(r.section(sf::kAllocatorTag, "ALOC"), s, at);
    // Every cache takes at least its section header and head: bounds the reservation.
    r.need(num_caches, sf::kSectionHeaderBytes + sf::cache::kHeadBytes, "num_caches");
    s.caches.reserve(num_caches);
    for (uint32_t c = 0; c < num_caches; ++c)
        decode_cache(r.section(sf::kCacheTag, fmt::format("CACH #{}", c)), c, groups, s, at);
    if (flags & sf::kFlagPrefixCache) decode_prefix(r.section(sf::kPrefixTag, "PRFX"), s, at);
    if (std::string e = check_snapshot(s, &at); !e.empty()) throw corrupt(e);
    if (flags & sf::kFlagPageContents) {
        decode_pages(r.section(sf::kPagesTag, "PAGE"), s);
    }
    if (r.left() != 0) {
        auto t = b.subspan(r.pos(), std::min<uint64_t>(4, r.left()));
        throw corrupt(fmt::format(
            "byte {} (section '{}'): unexpected after the last section{}", r.pos(), tag_text(t),
            flags & sf::kFlagPageContents ? "" : " (flags say the file has no page contents)"));
    }
    return s;
}

std::vector<uint8_t> read_snapshot_file(const std::filesystem::path& path) {
    auto fail = [&](const char* what) {
        return Error(ErrorCode::InvalidArgument,
                     fmt::format("cannot {} '{}': {}", what, path.string(), std::strerror(errno)));
    };
    errno = 0;
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.string().c_str(), "rb"), &std::fclose);
    if (!f) throw fail("open");
    std::vector<uint8_t> out;
    uint8_t buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0)
        out.insert(out.end(), buf, buf + n);
    if (std::ferror(f.get())) throw fail("read");
    return out;
}

void write_snapshot_file(const std::filesystem::path& path, std::span<const uint8_t> bytes) {
    std::error_code ec;
    const auto type = std::filesystem::status(path, ec).type();
    if (type != std::filesystem::file_type::not_found &&
        type != std::filesystem::file_type::regular) {
        // A device or pipe (/dev/stdout, a FIFO): renaming over it would replace it.
        errno = 0;
        FILE* f = std::fopen(path.string().c_str(), "wb");
        const bool ok = f && std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
        const int err = errno;
        if ((f && std::fclose(f) != 0) || !ok)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("cannot write '{}': {}", path.string(), std::strerror(err)));
        return;
    }
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    auto fail = [&](const char* what) {
        const int err = errno;
        std::remove(tmp.string().c_str());
        return Error(ErrorCode::InvalidArgument,
                     fmt::format("cannot {} '{}': {}", what, path.string(), std::strerror(err)));
    };
    errno = 0;
    FILE* f = std::fopen(tmp.string().c_str(), "wb");
    if (!f) {
        const int err = errno;
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("cannot write '{}': {}", path.string(), std::strerror(err)));
    }
    const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    const bool closed = std::fclose(f) == 0;
    if (!written || !closed) throw fail("write");
    if (std::rename(tmp.string().c_str(), path.string().c_str()) != 0) throw fail("rename onto");
}

}  // namespace pagedkv
