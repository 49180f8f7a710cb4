// snapshot_format: where every field of a snapshot file sits (version 2, little-endian), shared
// by the encoder, the decoder and the checks that name byte offsets. README.md#format says it
// in words; a change here is a new format version. (The page layout took POOL's reserved u32,
// which every earlier file holds as 0: head-major, the only layout those pools had. A reader
// from before refuses a token-major file rather than misreading its pages.)
//
// Version 2 added prefix caching: flag kFlagPrefixCache and a PRFX section after the caches
// (cached and evictable blocks, the prefix index's entries). Files are written in the lowest
// version that holds them: a pool without cached pages is a version-1 file, so a version-2
// file always has the flag (a reader refuses one without); version-1 files are still read.
//
// Layer groups (PoolConfig::layer_windows) came within version 2: flag kFlagLayerGroups, a LAYR
// section after POOL (the model's layers and their windows), and in each CACH body the layers
// of the model (not a page's) plus each row's tables of groups 1.. and the tokens its sliding
// layers let go. A version-2 file has kFlagPrefixCache or kFlagLayerGroups (or both); a reader
// from before groups refuses the unknown flag rather than misreading the file. A pool without
// layer windows writes exactly the bytes it wrote before.
#pragma once

#include <array>
#include <cstdint>

namespace pagedkv::snapshot_format {

inline constexpr std::array<uint8_t, 8> kMagic = {'P', 'K', 'V', 'S', 'N', 'A', 'P', 0x1A};
inline constexpr uint32_t kVersion = 2;
inline constexpr uint32_t kOldestVersion = 1;  // the oldest version this build reads

// Header: 32 bytes.
inline constexpr uint64_t kMagicAt = 0;
inline constexpr uint64_t kVersionAt = 8;
inline constexpr uint64_t kFlagsAt = 12;
inline constexpr uint64_t kPayloadBytesAt = 16;
inline constexpr uint64_t kPayloadCrcAt = 24;
inline constexpr uint64_t kHeaderCrcAt = 28;  // CRC-32 of bytes [0, 28)
inline constexpr uint64_t kHeaderBytes = 32;

inline constexpr uint32_t kFlagPageContents = 1u << 0;
inline constexpr uint32_t kFlagPrefixCache = 1u << 1;  // version 2: a PRFX section
inline constexpr uint32_t kFlagLayerGroups = 1u << 2;  // version 2: a LAYR section, group tables
inline constexpr uint32_t kKnownFlagsV1 = kFlagPageContents;
inline constexpr uint32_t kKnownFlags = kFlagPageContents | kFlagPrefixCache | kFlagLayerGroups;

// A section: a 4-character tag, the body's length in bytes (u64), the body.
inline constexpr uint64_t kSectionHeaderBytes = 12;
inline constexpr std::array<char, 4> kPoolTag = {'P', 'O', 'O', 'L'};
inline constexpr std::array<char, 4> kLayersTag = {'L', 'A', 'Y', 'R'};
inline constexpr std::array<char, 4> kAllocatorTag = {'A', 'L', 'O', 'C'};
inline constexpr std::array<char, 4> kCacheTag = {'C', 'A', 'C', 'H'};
inline constexpr std::array<char, 4> kPrefixTag = {'P', 'R', 'F', 'X'};
inline constexpr std::array<char, 4> kPagesTag = {'P', 'A', 'G', 'E'};

// POOL body: 88 bytes, offsets from the body's first byte.
namespace pool {
inline constexpr uint64_t kNumLayers = 0;   // u32
inline constexpr uint64_t kNumKvHeads = 4;  // u32
inline constexpr uint64_t kHeadDim = 8;     // u32
inline constexpr uint64_t kVHeadDim = 12;   // u32
inline constexpr uint64_t kBlockSize = 16;  // u32
// u32: 0 f32, 1 f16, 2 bf16, 3 int8, 4 fp8e4m3 (quantized pages hold a scale per row after
// their codes: PageFormat; block_bytes counts them). Readers before 0.2's quantized pages refuse
// 3 and 4 as unknown dtypes, so these need no new version.
inline constexpr uint64_t kDType = 20;
inline constexpr uint64_t kNumBlocks = 24;     // u64
inline constexpr uint64_t kMaxSlabBytes = 32;  // u64
inline constexpr uint64_t kBlockBytes = 40;    // u64
inline constexpr uint64_t kPeakUsed = 48;      // u64
inline constexpr uint64_t kAllocations = 56;   // u64
inline constexpr uint64_t kReleases = 64;      // u64
inline constexpr uint64_t kPagesCopied = 72;   // u64
inline constexpr uint64_t kNumCaches = 80;     // u32
inline constexpr uint64_t kPageLayout = 84;    // u32: 0 head-major, 1 token-major
inline constexpr uint64_t kBytes = 88;
}  // namespace pool

// LAYR body (with kFlagLayerGroups; between POOL and ALOC): u32 model_layers, then that many
// u32 windows (PoolConfig::layer_windows, 0: full attention). POOL's num_layers is a page's
// layers: LayerGroups::make(model_layers, windows).per_page.
namespace layers {
inline constexpr uint64_t kModelLayers = 0;  // u32
inline constexpr uint64_t kWindows = 4;      // model_layers x u32
}  // namespace layers

// CACH body: a 24-byte head, then rows + spare_rows tables (u32 count, count u32 block ids),
// then layers x rows pairs (i64 len, i64 start), layer-major; layers is POOL's num_layers, or
// with kFlagLayerGroups LAYR's model_layers. With kFlagLayerGroups there follow, per row, the
// tables of groups 1.. (num_groups - 1 of them, same encoding as the rows'), then layers x rows
// i64 dropped (tokens a sliding layer let go), layer-major.
namespace cache {
inline constexpr uint64_t kKind = 0;         // u32: 0 dynamic, 1 static, 2 sliding window
inline constexpr uint64_t kBatchSize = 4;    // u32
inline constexpr uint64_t kMaxCacheLen = 8;  // u32
inline constexpr uint64_t kWindow = 12;      // u32
inline constexpr uint64_t kRows = 16;        // u32
inline constexpr uint64_t kSpareRows = 20;   // u32
inline constexpr uint64_t kHeadBytes = 24;
}  // namespace cache

// PRFX body (version 2, with kFlagPrefixCache; after the CACH sections, before PAGE):
// u64 cached_count, that many u32 block ids (every cached block, ascending); u64
// evictable_count, that many u32 block ids (the cached blocks of refcount 0, least recently
// released first: evicted first); u64 entry_count, then the prefix index's entries, each page
// after its parent, kEntryHeadBytes + 4 x block_size bytes each.
namespace prefix {
inline constexpr uint64_t kBlock = 0;    // u32
inline constexpr uint64_t kParent = 4;   // u32: the parent page's block, or 0xFFFFFFFF
inline constexpr uint64_t kHash = 8;     // u64: PrefixIndex::hash_page of parent hash, salt, tokens
inline constexpr uint64_t kSalt = 16;    // u64
inline constexpr uint64_t kTokens = 24;  // block_size x i32 token ids
inline constexpr uint64_t kEntryHeadBytes = 24;
}  // namespace prefix

}  // namespace pagedkv::snapshot_format
