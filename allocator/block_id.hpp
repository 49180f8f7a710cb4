// BlockId: the index of one physical page in a pool.
// A strong type so a page id cannot be mixed up with a token count or a row index.
#pragma once

#include <cstdint>

namespace pagedkv {

enum class BlockId : uint32_t {};

constexpr uint32_t index(BlockId b) noexcept {
    return static_cast<uint32_t>(b);
}

}  // namespace pagedkv
