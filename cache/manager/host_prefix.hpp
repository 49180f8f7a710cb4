// HostPrefix: prefix-cached pages spilled to the host tier (SGLang's HiCache, TensorRT-LLM's
// host offload). When the pool evicts an indexed page (PrefixIndex's SpillListener), its bytes
// are copied to a free host block before the device page's new owner writes it, and kept under
// the page's identity (hash, parent hash, salt, tokens); add_sequence(prompt) then continues
// its lookup past the device-cached prefix into these pages, copying them back.
//
// Swapped-out sequences come first: a spill only takes a host block nobody holds, dropping the
// least recently spilled (or found) page when none is free, and swap_out drops spilled pages
// to make room before it would run out of host blocks. Each spilled page holds its host block
// through a one-page BlockTable, so the host allocator's check() counts it.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "allocator/block_table.hpp"
#include "allocator/prefix_index.hpp"

namespace pagedkv::detail {

struct PoolState;

class HostPrefix final : public SpillListener {
  public:
    // Over a pool with a host tier and a prefix index; becomes the index's spill listener.
    explicit HostPrefix(PoolState& ps);
    ~HostPrefix();
    HostPrefix(const HostPrefix&) = delete;
    HostPrefix& operator=(const HostPrefix&) = delete;

    // Copies the evicted device page b to a host block (best effort: skipped when no host
    // block can be had, or on any failure).
    void spilling(BlockId b, uint64_t hash, uint64_t parent_hash, uint64_t salt,
                  std::span<const int32_t> tokens) noexcept override;

    // The host block holding the page of this identity, or -1; a found page becomes the most
    // recently used.
    int64_t find(uint64_t hash, uint64_t parent_hash, uint64_t salt,
                 std::span<const int32_t> tokens) noexcept;
    // Frees the host block of the least recently spilled (or found) page; false when none.
    bool drop_oldest() noexcept;
    void clear() noexcept;

    uint64_t size() const noexcept { return by_hash_.size(); }
    uint64_t spilled() const noexcept { return spilled_; }  // pages copied to host, ever
    uint64_t dropped() const noexcept { return dropped_; }  // spilled pages dropped, ever

    // Every spilled page holds one host block that nobody else references (no swapped-out
    // sequence, no tier link), and the LRU lists each page once. "" when that holds.
    std::string check() const;

  private:
    struct Entry {
        uint64_t parent_hash = 0, salt = 0;
        std::vector<int32_t> tokens;
        BlockTable table;  // the host block, over the host allocator
        std::list<uint64_t>::iterator lru;
    };
    PoolState& ps_;
    std::unordered_map<uint64_t, Entry> by_hash_;
    std::list<uint64_t> lru_;  // hashes, least recently spilled or found first
    uint64_t spilled_ = 0, dropped_ = 0;
};

}  // namespace pagedkv::detail
