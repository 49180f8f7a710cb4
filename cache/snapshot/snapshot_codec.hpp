// Snapshot codec: SnapshotData to the version-1 file format (README.md#format) and back. The
// decoder trusts nothing: sizes, checksums and every invariant of check_snapshot are checked
// before it returns, and any problem throws Error(CorruptSnapshot) with one line naming it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "cache/snapshot/snapshot_data.hpp"

namespace pagedkv {

// Writes what it is given without checking it (tests build inconsistent files with it).
std::vector<uint8_t> encode_snapshot(const SnapshotData& s);

// Throws Error(CorruptSnapshot), e.g. "byte 28 (header_crc32): header checksum mismatch ...".
SnapshotData decode_snapshot(std::span<const uint8_t> bytes);

// Recomputes both checksums of an encoded snapshot after its bytes were edited (tests make
// files that are consistent on the outside and wrong inside). Needs the 32-byte header.
void seal_snapshot(std::span<uint8_t> bytes);

// The whole file; Error(InvalidArgument) naming the path and the reason when it cannot be read.
std::vector<uint8_t> read_snapshot_file(const std::filesystem::path& path);
// Writes to a temporary file next to `path`, then renames it over `path`, so a failed write
// never leaves a half-written snapshot behind; Error(InvalidArgument) when it cannot.
void write_snapshot_file(const std::filesystem::path& path, std::span<const uint8_t> bytes);

}  // namespace pagedkv
