// page_address.glsl: where a token's row lives in a pool's pages, for every kernel that reads or
// writes pages. The numbers come from PageFormat and PageSlabs on the host
// (page_addressing() in page_slabs.hpp fills the struct, which each kernel keeps in its push
// constants). Block b is in slab b >> slab_shift at byte (b & mask) * block_bytes; inside a
// block, a layer's K or V page starts page_offset bytes in and is head-major
// [kv_heads][block_size][row] (head_rows = block_size, slot_rows = 1) or token-major
// [block_size][kv_heads][row] (head_rows = 1, slot_rows = kv_heads): PageFormat::row_offset.
// Needs GL_EXT_buffer_reference2 and GL_EXT_shader_explicit_arithmetic_types_int64.

struct PageAddressing {
    uint64_t slab_table;   // the device address of each slab (u64 each)
    uint64_t block_bytes;  // bytes of one block: every layer's K and V pages
    uint block_size;       // tokens per page
    uint slab_shift;       // log2(blocks per slab)
    uint head_rows;        // rows between a slot's consecutive heads (the page layout)
    uint slot_rows;        // rows between a head's consecutive slots
};

layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer SlabTable {
    uint64_t slab[];
};

// The device address of the row of (head, slot) in block `block`'s page at page_offset.
uint64_t page_row_address(PageAddressing pa, uint64_t page_offset, uint block, uint slot,
                          uint head, uint64_t row_bytes) {
    const uint64_t slab = SlabTable(pa.slab_table).slab[block >> pa.slab_shift];
    const uint64_t in_slab = uint64_t(block & ((1u << pa.slab_shift) - 1u)) * pa.block_bytes;
    return slab + in_slab + page_offset +
           uint64_t(head * pa.head_rows + slot * pa.slot_rows) * row_bytes;
}
