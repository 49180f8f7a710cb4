// The sequence message's byte layout (little-endian), and its checks.
//
//   0  magic "PKVSEQ\r\n"        40 u64 block_bytes       72 u64 meta_bytes
//   8  u32 version               48 u64 num_pages         80 u64 body_hash (meta + pages)
//  12  u32 header_bytes (96)     56 i64 length            88 u64 header_hash (bytes 0..88)
//  16  u32 layers, kv_heads,     64 u64 salt
//      head_dim, v_head_dim, block_size; 36 u8 dtype, layout, flags (1: tokens), reserved
//  96  meta: i64 len[layers], i64 start[layers], i32 tokens[length if flags & 1]
//      then num_pages pages of block_bytes each, in block-table order.
#include "cache/transfer/sequence_message.hpp"

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <utility>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pagedkv/error.hpp"

namespace pagedkv::detail {

static_assert(std::endian::native == std::endian::little, "the message is little-endian");

namespace {

constexpr uint8_t kMagic[8] = {'P', 'K', 'V', 'S', 'E', 'Q', '\r', '\n'};
constexpr uint8_t kHasTokens = 1;
constexpr int64_t kMaxLength = INT32_MAX;

template <class T>
void put(std::vector<uint8_t>& out, size_t at, T v) {
    std::memcpy(out.data() + at, &v, sizeof v);
}
template <class T>
T get(std::span<const uint8_t> in, size_t at) {
    T v;
    std::memcpy(&v, in.data() + at, sizeof v);
    return v;
}

Error corrupt(const char* op, const std::string& what) {
    return Error(ErrorCode::CorruptSnapshot,
                 fmt::format("{}: the sequence message is damaged: {}", op, what));
}

std::string shape_text(uint32_t l, uint32_t h, uint32_t d, uint32_t vd, uint32_t bs, DType t) {
    return fmt::format("{} layers, {} kv heads, head_dim {}, v_head_dim {}, block_size {}, {}", l,
                       h, d, vd, bs, to_string(t));
}

uint64_t meta_bytes(uint32_t layers, uint64_t tokens) {
    return 16 * uint64_t(layers) + 4 * tokens;
}

}  // namespace

uint64_t body_hash_of(std::span<const uint8_t> meta,
                      std::span<const std::span<const uint8_t>> pages) {
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, meta.data(), meta.size());
    for (const auto& p : pages)
        XXH3_64bits_update(&state, p.data(), p.size());
    return XXH3_64bits_digest(&state);
}

std::vector<uint8_t> encode_sequence_head(const SequenceMessage& m) {
    const PageFormat& f = m.format;
    const uint64_t tokens = m.has_tokens ? m.tokens.size() : 0;
    std::vector<uint8_t> out(kSequenceHeaderBytes + meta_bytes(f.num_layers, tokens));
    std::memcpy(out.data(), kMagic, sizeof kMagic);
    put<uint32_t>(out, 8, kSequenceMessageVersion);
    put<uint32_t>(out, 12, uint32_t(kSequenceHeaderBytes));
    put<uint32_t>(out, 16, f.num_layers);
    put<uint32_t>(out, 20, f.num_kv_heads);
    put<uint32_t>(out, 24, f.head_dim);
    put<uint32_t>(out, 28, f.v_head_dim);
    put<uint32_t>(out, 32, f.block_size);
    put<uint8_t>(out, 36, uint8_t(f.dtype));
    put<uint8_t>(out, 37, uint8_t(f.layout));
    put<uint8_t>(out, 38, m.has_tokens ? kHasTokens : 0);
    put<uint8_t>(out, 39, 0);
    put<uint64_t>(out, 40, f.block_bytes());
    put<uint64_t>(out, 48, m.num_pages);
    put<int64_t>(out, 56, m.length);
    put<uint64_t>(out, 64, m.has_tokens ? m.salt : 0);
    put<uint64_t>(out, 72, meta_bytes(f.num_layers, tokens));
    put<uint64_t>(out, 80, m.body_hash);
    size_t at = kSequenceHeaderBytes;
    for (int64_t v : m.len)
        put<int64_t>(out, std::exchange(at, at + 8), v);
    for (int64_t v : m.start)
        put<int64_t>(out, std::exchange(at, at + 8), v);
    if (m.has_tokens && !m.tokens.empty())
        std::memcpy(out.data() + at, m.tokens.data(), m.tokens.size() * 4);
    put<uint64_t>(out, 88, XXH3_64bits(out.data(), 88));
    return out;
}

uint64_t check_sequence_header(std::span<const uint8_t> b, const PageFormat& pool,
                               uint64_t max_pages, const char* op) {
    if (b.size() < kSequenceHeaderBytes)
        throw corrupt(op, fmt::format("truncated: {} bytes, the header alone is {}", b.size(),
                                      kSequenceHeaderBytes));
    if (std::memcmp(b.data(), kMagic, sizeof kMagic) != 0)
        throw corrupt(op, "it does not start with the magic bytes (not a pagedkv sequence)");
    // The checksum first: a damaged field reads as damage, not as a message of another kind.
    if (get<uint64_t>(b, 88) != XXH3_64bits(b.data(), 88))
        throw corrupt(op, "the header's checksum does not match");
    if (const uint32_t v = get<uint32_t>(b, 8); v != kSequenceMessageVersion)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: a version {} sequence message; this library reads version {}",
                                op, v, kSequenceMessageVersion));
    if (get<uint32_t>(b, 12) != kSequenceHeaderBytes)
        throw corrupt(op, fmt::format("header size {}", get<uint32_t>(b, 12)));
    const uint8_t dtype = get<uint8_t>(b, 36), layout = get<uint8_t>(b, 37),
                  flags = get<uint8_t>(b, 38);
    if (!known_dtype(DType(dtype))) throw corrupt(op, fmt::format("dtype {}", dtype));
    if (layout != uint8_t(PageLayout::HeadMajor) && layout != uint8_t(PageLayout::TokenMajor))
        throw corrupt(op, fmt::format("page layout {}", layout));
    if ((flags & ~kHasTokens) != 0 || get<uint8_t>(b, 39) != 0)
        throw corrupt(op, fmt::format("unknown flags {:#x}", flags));
    PageFormat f = pool;
    f.num_layers = get<uint32_t>(b, 16);
    f.num_kv_heads = get<uint32_t>(b, 20);
    f.head_dim = get<uint32_t>(b, 24);
    f.v_head_dim = get<uint32_t>(b, 28);
    f.block_size = get<uint32_t>(b, 32);
    f.dtype = DType(dtype);
    if (f != pool)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: the sequence comes from a pool of {}; this pool has {}", op,
                                shape_text(f.num_layers, f.num_kv_heads, f.head_dim, f.v_head_dim,
                                           f.block_size, f.dtype),
                                shape_text(pool.num_layers, pool.num_kv_heads, pool.head_dim,
                                           pool.v_head_dim, pool.block_size, pool.dtype)));
    const uint64_t bb = pool.block_bytes();
    if (get<uint64_t>(b, 40) != bb)
        throw corrupt(op,
                      fmt::format("block_bytes {}, the shape makes {}", get<uint64_t>(b, 40), bb));
    const int64_t length = get<int64_t>(b, 56);
    if (length < 0 || length > kMaxLength)
        throw corrupt(op, fmt::format("length {} tokens", length));
    const uint64_t pages = get<uint64_t>(b, 48);
    if (pages != (uint64_t(length) + pool.block_size - 1) / pool.block_size)
        throw corrupt(op, fmt::format("{} pages for {} tokens of {} per page", pages, length,
                                      pool.block_size));
    if (pages > max_pages)
        throw Error(ErrorCode::OutOfBlocks,
                    fmt::format("{}: the sequence needs {} pages, the pool has {} in all", op,
                                pages, max_pages));
    const uint64_t tokens = (flags & kHasTokens) ? uint64_t(length) : 0;
    if (get<uint64_t>(b, 72) != meta_bytes(pool.num_layers, tokens))
        throw corrupt(op, fmt::format("meta_bytes {}, {} layers and {} token ids make {}",
                                      get<uint64_t>(b, 72), pool.num_layers, tokens,
                                      meta_bytes(pool.num_layers, tokens)));
    return kSequenceHeaderBytes + meta_bytes(pool.num_layers, tokens) + pages * bb;
}

SequenceMessage decode_sequence(std::span<const uint8_t> b, const PageFormat& pool,
                                uint64_t max_pages, const char* op) {
    const uint64_t total = check_sequence_header(b, pool, max_pages, op);
    if (b.size() < total)
        throw corrupt(op, fmt::format("truncated: {} of its {} bytes", b.size(), total));
    if (b.size() > total)
        throw corrupt(op, fmt::format("{} bytes past its end ({} bytes)", b.size() - total, total));
    SequenceMessage m;
    m.format = pool;
    m.format.layout = PageLayout(get<uint8_t>(b, 37));
    m.num_pages = get<uint64_t>(b, 48);
    m.length = get<int64_t>(b, 56);
    m.has_tokens = (get<uint8_t>(b, 38) & kHasTokens) != 0;
    m.salt = get<uint64_t>(b, 64);
    m.body_hash = get<uint64_t>(b, 80);
    const uint64_t meta = get<uint64_t>(b, 72);
    const auto body = b.subspan(kSequenceHeaderBytes);
    const std::span<const uint8_t> pages[] = {body.subspan(meta)};
    if (body_hash_of(body.first(meta), pages) != m.body_hash)
        throw corrupt(op, "the checksum of its lengths, tokens and pages does not match");
    const uint32_t L = pool.num_layers;
    size_t at = kSequenceHeaderBytes;
    for (uint32_t l = 0; l < L; ++l)
        m.len.push_back(get<int64_t>(b, std::exchange(at, at + 8)));
    for (uint32_t l = 0; l < L; ++l)
        m.start.push_back(get<int64_t>(b, std::exchange(at, at + 8)));
    for (uint32_t l = 0; l < L; ++l)
        if (m.len[l] != m.length || m.start[l] != 0)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: layer {} holds {} tokens from slot {}; a KVManager's "
                                    "sequences hold all {} in every layer from slot 0",
                                    op, l, m.len[l], m.start[l], m.length));
    if (m.has_tokens) {
        m.tokens.resize(size_t(m.length));
        if (m.length) std::memcpy(m.tokens.data(), b.data() + at, m.tokens.size() * 4);
    } else if (m.salt != 0) {
        throw corrupt(op, "a salt without token ids");
    }
    m.pages = body.subspan(meta);
    return m;
}

std::vector<uint8_t> relayout_pages(std::span<const uint8_t> pages, const PageFormat& from,
                                    const PageFormat& to) {
    std::vector<uint8_t> out(pages.size());
    const uint64_t bb = from.block_bytes();
    const uint64_t sb = from.scale_bytes();
    for (uint64_t p = 0; p * bb < pages.size(); ++p)
        for (uint32_t l = 0; l < from.num_layers; ++l)
            for (bool value : {false, true}) {
                const uint64_t page = p * bb + from.page_offset(l, value);
                const uint64_t rb = value ? from.v_row_bytes() : from.k_row_bytes();
                const uint64_t scales = from.scales_offset(value);
                for (uint32_t h = 0; h < from.num_kv_heads; ++h)
                    for (uint32_t s = 0; s < from.block_size; ++s) {
                        std::memcpy(out.data() + page + to.row_offset(s, h, rb),
                                    pages.data() + page + from.row_offset(s, h, rb), rb);
                        if (sb)
                            std::memcpy(out.data() + page + scales + to.row_offset(s, h, sb),
                                        pages.data() + page + scales + from.row_offset(s, h, sb),
                                        sb);
                    }
            }
    return out;
}

}  // namespace pagedkv::detail
