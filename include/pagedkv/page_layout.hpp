// PageLayout: how a page orders its rows. One page holds block_size tokens of one layer's K
// (or V) for every kv head; a row is one (token, head) vector of head_dim elements.
#pragma once

#include "pagedkv/export.h"

#include <cstdint>

namespace pagedkv {

enum class PageLayout : uint8_t {
    // [kv_heads][block_size][head_dim]: a head's tokens are adjacent (0.1's layout).
    HeadMajor,
    // [block_size][kv_heads][head_dim]: a token's heads are adjacent (vLLM / FlashInfer "NHD"),
    // so a decode write moves one contiguous run of bytes per token.
    TokenMajor,
    // Picked when the BlockPool is made, once per device, by timing a decode-like write into
    // both (TokenMajor on a device without timestamps); BlockPool::config() reports the result.
    Auto,
};

// Whether l is one of the enumerators (a PageLayout cast from a stored or C integer may not be).
constexpr bool known_layout(PageLayout l) noexcept {
    return l == PageLayout::HeadMajor || l == PageLayout::TokenMajor || l == PageLayout::Auto;
}

// "head_major", "token_major", "auto" ("?" for a value that is not an enumerator).
PAGEDKV_API const char* to_string(PageLayout l) noexcept;

}  // namespace pagedkv
