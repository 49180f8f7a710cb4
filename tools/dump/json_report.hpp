// The --json output of pagedkv-dump: the text report's content, machine-readable, versioned by
// schema_version and described by tools/pagedkv-dump.schema.json (a test validates against it).
#pragma once

#include <string>

#include "snapshot_view.hpp"

namespace pagedkv::dump {

// Bumped whenever a field is removed or changes meaning; added fields keep the version.
// 2: pool.free_list is top first (its first entry is handed out next), as the text report lists
// it; version 1 listed it bottom first. Layer groups (layout.model_layers and layer_windows,
// rows' dropped and groups) were added within version 2: files without them read as before.
inline constexpr int kJsonSchemaVersion = 2;

std::string json_report(const SnapshotView& v);

}  // namespace pagedkv::dump
