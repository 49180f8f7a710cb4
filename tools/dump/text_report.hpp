// The default output of pagedkv-dump: a pool summary, then every selected cache and row with
// its block table, shared pages marked '*' (e.g. "row 3  len 45  [12 13 14*]"), then the
// prefix cache's pages (hash, parent, salt, held or evictable and when it would be evicted).
#pragma once

#include <string>

#include "snapshot_view.hpp"

namespace pagedkv::dump {

std::string text_report(const SnapshotView& v);

// "64 B", "64.0 KiB", "3.50 MiB": sizes as a person reads them.
std::string human_bytes(uint64_t bytes);

// "head-major pages" or "token-major pages".
std::string layout_name(PageLayout l);

}  // namespace pagedkv::dump
