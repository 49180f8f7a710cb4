// Sequence and SequenceSet: the one core of sequence bookkeeping. A sequence is a block table
// (one per layer group with PoolConfig::layer_windows) and, per layer, how many tokens it holds and
// the slot of the first one in the table's pages (token t of layer l at slot start[l] + t; crop and
// sliding windows move the start instead of moving bytes). A SequenceSet names sequences by ids
// that are never reused. KVManager is a SequenceSet driven by a scheduler; each 0.1 cache
// (PagedKVCache) is a view over one, whose batch row r is the sequence rows[r]. Pure host logic: no
// Vulkan.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "allocator/block_table.hpp"

namespace pagedkv::detail {

using SequenceId = uint64_t;  // pagedkv::SeqId

struct Sequence {
    Sequence(BlockAllocator& alloc, uint32_t layers, uint32_t groups = 1)
        : table(alloc), len(layers, 0), start(layers, 0) {
        more.reserve(groups - 1);
        for (uint32_t g = 1; g < groups; ++g)
            more.emplace_back(alloc);
    }
    Sequence(BlockTable t, std::vector<int64_t> l, std::vector<int64_t> s,
             std::vector<BlockTable> m = {})
        : table(std::move(t)), len(std::move(l)), start(std::move(s)), more(std::move(m)) {}

    BlockTable table;            // the first layer group's (every layer's, without groups)
    std::vector<int64_t> len;    // [layer]: tokens held
    std::vector<int64_t> start;  // [layer]: slot of the first of them in its group's table
    // The block tables of layer groups 1.. (PoolConfig::layer_windows); empty without groups.
    std::vector<BlockTable> more;
    // A 0.1 cache over a pool with layer windows: [layer] tokens a sliding layer's window let
    // go (tokens seen = len + dropped); empty (all 0) otherwise.
    std::vector<int64_t> dropped;

    uint32_t num_groups() const noexcept { return uint32_t(more.size() + 1); }
    BlockTable& group(uint32_t g) { return g == 0 ? table : more[g - 1]; }
    const BlockTable& group(uint32_t g) const { return g == 0 ? table : more[g - 1]; }

    // Slots the sequence needs: the furthest any layer reaches.
    int64_t extent() const {
        int64_t e = 0;
        for (size_t l = 0; l < len.size(); ++l)
            if (len[l] > 0) e = std::max(e, start[l] + len[l]);
        return e;
    }
    // Slots a group's table needs: the furthest its layers reach.
    int64_t extent(std::span<const uint32_t> layers) const {
        int64_t e = 0;
        for (uint32_t l : layers)
            if (len[l] > 0) e = std::max(e, start[l] + len[l]);
        return e;
    }
    // A second sequence sharing every page (copy-on-write), with the same lengths.
    Sequence fork() const {
        std::vector<BlockTable> m;
        m.reserve(more.size());
        for (const BlockTable& t : more)
            m.push_back(t.fork());
        Sequence s(table.fork(), len, start, std::move(m));
        s.dropped = dropped;
        return s;
    }
    // Gives back the first `lead` pages (those held) of group g's table and moves its layers'
    // starts back by as many slots; an empty layer starts at slot 0 (a start past the pages
    // would make the next write reach for pages it does not need).
    void release_leading(uint32_t g, std::span<const uint32_t> layers, size_t lead,
                         uint32_t block_size) {
        BlockTable& t = group(g);
        t.release_front(std::min(lead, t.size()));
        const int64_t shift = int64_t(lead) * block_size;
        for (uint32_t l : layers)
            start[l] = len[l] > 0 ? start[l] - shift : 0;
    }
};

class SequenceSet {
  public:
    SequenceSet(BlockAllocator& alloc, uint32_t layers, uint32_t groups = 1)
        : alloc_(&alloc), layers_(layers), groups_(groups) {}

    // A new empty sequence, or one made of `s`.
    SequenceId add() { return add(Sequence(*alloc_, layers_, groups_)); }
    SequenceId add(Sequence&& s) {
        const SequenceId id = next_id_;
        seqs_.emplace(id, std::move(s));
        ++next_id_;
        return id;
    }
    SequenceId fork(SequenceId id) { return add(seqs_.at(id).fork()); }
    void erase(SequenceId id) { seqs_.erase(id); }
    void clear() { seqs_.clear(); }

    Sequence* find(SequenceId id) {
        auto it = seqs_.find(id);
        return it == seqs_.end() ? nullptr : &it->second;
    }
    const Sequence* find(SequenceId id) const {
        auto it = seqs_.find(id);
        return it == seqs_.end() ? nullptr : &it->second;
    }
    Sequence& at(SequenceId id) { return seqs_.at(id); }
    const std::map<SequenceId, Sequence>& all() const noexcept { return seqs_; }
    size_t size() const noexcept { return seqs_.size(); }
    uint32_t num_layers() const noexcept { return layers_; }
    uint32_t num_groups() const noexcept { return groups_; }
    BlockAllocator& allocator() const noexcept { return *alloc_; }

  private:
    BlockAllocator* alloc_;
    uint32_t layers_;
    uint32_t groups_;
    std::map<SequenceId, Sequence> seqs_;  // node-based: a Sequence* stays valid until erased
    SequenceId next_id_ = 1;
};

}  // namespace pagedkv::detail
