// check_snapshot: every invariant a snapshot must hold before anything is rebuilt from it
// (reference counts equal the tables' references, free list = the unreferenced blocks, ids in
// range, lengths inside the pages of their layer group's table, cached blocks = the prefix entries,
// each hashing its tokens), reported as one line naming the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cache/snapshot/snapshot_data.hpp"

namespace pagedkv {

// Where the decoder found the checked fields, so that a problem names its byte offset.
struct SnapshotOffsets {
    uint64_t pool = 0;       // first byte of the POOL body
    uint64_t layers = 0;     // first byte of the LAYR body (layer groups)
    uint64_t refcounts = 0;  // refcounts[0]
    uint64_t free_list = 0;  // free_list[0]
    // The PRFX section (version 2): cached[0], evictable[0], the first prefix entry, and the
    // size of one entry.
    uint64_t cached = 0;
    uint64_t evictable = 0;
    uint64_t entries = 0;
    uint64_t entry_bytes = 0;
    struct Cache {
        uint64_t head = 0;             // first byte of the CACH body
        std::vector<uint64_t> tables;  // block 0 of each table: rows, then spare rows
        uint64_t lengths = 0;          // len of layer 0, row 0
        // Layer groups: block 0 of each row's tables of groups 1.. (row-major), dropped of
        // layer 0, row 0.
        std::vector<uint64_t> more;
        uint64_t dropped = 0;
    };
    std::vector<Cache> caches;
};

// The layout alone (dimensions at least 1, a known dtype, block ids and page slots within 32
// bits, a block size that fits 64 bits): what the decoder needs before it sizes anything.
std::string check_layout(const SnapshotLayout& l, const SnapshotOffsets* at = nullptr);

// The first inconsistency, e.g. "byte 180 (refcounts[5]): block 5 has refcount 2 but the
// block tables reference it 1 time", or "" when there is none. Without offsets the message
// names the field only.
std::string check_snapshot(const SnapshotData& s, const SnapshotOffsets* at = nullptr);

}  // namespace pagedkv
