// The --svg output of pagedkv-dump: pool occupancy at a glance. One square per page in block-id
// order, coloured by the row that owns it, filled as far as its slots hold tokens; shared pages
// hatched and outlined, free pages blank, and a legend naming every colour.
#pragma once

#include <string>

#include "snapshot_view.hpp"

namespace pagedkv::dump {

std::string svg_picture(const SnapshotView& v);

}  // namespace pagedkv::dump
