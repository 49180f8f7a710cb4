#include "allocator/page_format.hpp"

#include <fmt/format.h>

namespace pagedkv {

namespace {

bool mul_overflows(uint64_t a, uint64_t b, uint64_t& out) {
    if (a != 0 && b > UINT64_MAX / a) return true;
    out = a * b;
    return false;
}

}  // namespace

const char* field_name(ShapeProblem::Field f) noexcept {
    using F = ShapeProblem::Field;
    switch (f) {
        case F::NumLayers:
            return "num_layers";
        case F::NumKvHeads:
            return "num_kv_heads";
        case F::HeadDim:
            return "head_dim";
        case F::VHeadDim:
            return "v_head_dim";
        case F::BlockSize:
            return "block_size";
        case F::DType:
            return "dtype";
        case F::Layout:
            return "layout";
        case F::NumBlocks:
            return "num_blocks";
        case F::MaxSlabBytes:
            return "max_slab_bytes";
    }
    return "?";
}

std::optional<ShapeProblem> check_pool_shape(const PoolShape& s) {
    using F = ShapeProblem::Field;
    struct Dim {
        uint64_t value;
        F field;
    };
    for (Dim d : {Dim{s.num_layers, F::NumLayers}, Dim{s.num_kv_heads, F::NumKvHeads},
                  Dim{s.head_dim, F::HeadDim}, Dim{s.v_head_dim, F::VHeadDim},
                  Dim{s.block_size, F::BlockSize}, Dim{s.num_blocks, F::NumBlocks}})
        if (d.value == 0)
            return ShapeProblem{d.field, fmt::format("{} must be at least 1", field_name(d.field))};
    if (!known_dtype(s.dtype))
        return ShapeProblem{F::DType,
                            fmt::format("unknown dtype {}", static_cast<uint32_t>(s.dtype))};
    if (s.layout != PageLayout::HeadMajor && s.layout != PageLayout::TokenMajor)
        return ShapeProblem{F::Layout, fmt::format("page layout {} is neither 0 (head_major) nor 1 "
                                                   "(token_major)",
                                                   static_cast<uint32_t>(s.layout))};
    uint64_t slots = 0;
    if (s.num_blocks > UINT32_MAX || mul_overflows(s.num_blocks, s.block_size, slots) ||
        slots >= 0xFFFFFFFFull)
        return ShapeProblem{F::NumBlocks,
                            fmt::format("num_blocks {} x block_size {} exceeds 2^32 page slots",
                                        s.num_blocks, s.block_size)};
    if (is_quantized(s.dtype))
        for (Dim d : {Dim{s.head_dim, F::HeadDim}, Dim{s.v_head_dim, F::VHeadDim}})
            if (d.value % 4 != 0)
                return ShapeProblem{d.field,
                                    fmt::format("{} {} of a {} pool must be a multiple of 4",
                                                field_name(d.field), d.value, to_string(s.dtype))};
    // Bytes of one layer's K and V rows of one (token, head), scales included.
    uint64_t bytes = (uint64_t(s.head_dim) + s.v_head_dim) * dtype_size(s.dtype) +
                     2 * dtype_scale_size(s.dtype);  // no overflow: below 2^35
    for (uint64_t f : {uint64_t(s.num_layers), uint64_t(s.num_kv_heads), uint64_t(s.block_size)})
        if (mul_overflows(bytes, f, bytes))
            return ShapeProblem{F::NumLayers, "a block of this layout exceeds 2^64 bytes"};
    uint64_t total = 0;
    if (mul_overflows(bytes, s.num_blocks, total))
        return ShapeProblem{F::NumBlocks,
                            fmt::format("num_blocks {} x {} bytes per block exceeds 2^64 bytes",
                                        s.num_blocks, bytes)};
    if (s.max_slab_bytes != 0 && s.max_slab_bytes < bytes)
        return ShapeProblem{F::MaxSlabBytes,
                            fmt::format("max_slab_bytes {} is smaller than one block ({} bytes)",
                                        s.max_slab_bytes, bytes)};
    return std::nullopt;
}

}  // namespace pagedkv
