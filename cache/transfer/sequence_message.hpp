// SequenceMessage: one KVManager sequence as bytes, the form export_sequence writes and
// import_sequence reads, in memory or over a connection: a fixed header (versioned, with the
// pool's page format and a checksum of its own), the per-layer lengths and starts and the
// token ids (the "meta"), then the bytes of each page in block-table order (a checksum over
// meta and pages sits in the header). Everything read from one is untrusted: decode checks it
// all before anything uses it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "allocator/page_format.hpp"

namespace pagedkv::detail {

inline constexpr uint64_t kSequenceHeaderBytes = 96;
inline constexpr uint32_t kSequenceMessageVersion = 1;

// What a message says, decoded (pages points into the message's bytes).
struct SequenceMessage {
    PageFormat format;
    uint64_t num_pages = 0;
    int64_t length = 0;               // tokens (every layer holds them, from slot 0)
    std::vector<int64_t> len, start;  // [layer]
    bool has_tokens = false;          // prefix caching knew the token ids
    uint64_t salt = 0;                // with has_tokens: the sequence's prefix-cache salt
    std::vector<int32_t> tokens;      // with has_tokens: length ids
    std::span<const uint8_t> pages;   // num_pages x format.block_bytes()
    uint64_t body_hash = 0;           // XXH3 of meta and pages
};

// The header and meta of a message whose pages follow (body_hash already computed over meta
// and pages by the caller: body_hash_of).
std::vector<uint8_t> encode_sequence_head(const SequenceMessage& m);
// XXH3-64 over the meta bytes (the head past its header) and then the page bytes.
uint64_t body_hash_of(std::span<const uint8_t> meta,
                      std::span<const std::span<const uint8_t>> pages);

// The header alone checked (size, magic, version, its checksum, sizes consistent and bounded
// by `max_pages`, shape equal to `pool` but for the page layout): the whole message's size.
// Throws CorruptSnapshot for damaged bytes, InvalidArgument for a well-formed message this pool
// cannot take (another shape, a newer version), OutOfBlocks for more pages than the pool has.
uint64_t check_sequence_header(std::span<const uint8_t> header, const PageFormat& pool,
                               uint64_t max_pages, const char* op);
// The whole message checked (header as above, then size, checksum, lengths), decoded.
SequenceMessage decode_sequence(std::span<const uint8_t> bytes, const PageFormat& pool,
                                uint64_t max_pages, const char* op);

// Page bytes of format `from` in the row order of `to` (same shape, another page layout).
std::vector<uint8_t> relayout_pages(std::span<const uint8_t> pages, const PageFormat& from,
                                    const PageFormat& to);

}  // namespace pagedkv::detail
