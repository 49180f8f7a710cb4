// KVManager: the serving engine's view of a pool. A scheduler admits sequences by id, grows
// them each step, forks them for parallel sampling and beams, rolls them back after
// speculative decoding and frees them when they end (vLLM's KVCacheManager, llama.cpp's
// llama_memory_seq_*). Every step writes a ragged batch of new tokens, (total_tokens,
// kv_heads, head_dim), and runs attention over it: begin_step builds the slot mapping and the
// block table once for all layers, and write / attention reuse them for every layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "pagedkv/block_pool.hpp"
#include "pagedkv/export.h"
#include "pagedkv/paged_view.hpp"
#include "pagedkv/tensor.hpp"

namespace pagedkv {

class Connection;  // pagedkv/transfer.hpp

// A sequence's id; never reused within a manager.
using SeqId = uint64_t;

struct ManagerOptions {
    // The share of the pool's blocks that can_allocate keeps free for the sequences that are
    // already running (so that admitting one more does not starve their next steps).
    double watermark = 0.01;
    // Prefix caching: full pages are indexed by a chained hash of their token ids (and the
    // sequence's salt); add_sequence(prompt) starts a sequence holding the cached pages of its
    // prompt's longest cached prefix, and pages whose last sequence ends stay cached
    // (evictable, least recently used first) until the pool needs them. The index belongs to
    // the pool: every manager with prefix caching over one pool shares it.
    bool prefix_caching = false;
};

// Prefix cache counters: this manager's lookups, and the pool's index.
struct PrefixCacheStats {
    uint64_t queries = 0;         // add_sequence(prompt) calls
    uint64_t hit_tokens = 0;      // prompt tokens found cached (need no prefill)
    uint64_t query_tokens = 0;    // prompt tokens looked up
    uint64_t cached_pages = 0;    // pages in the pool's index (held by sequences or evictable)
    uint64_t evictions = 0;       // cached pages the pool evicted to make room, since the
                                  // manager was made or reset_prefix_cache()
    uint64_t spilled_pages = 0;   // evicted cached pages copied to the host tier (pool-wide, since
                                  // the manager was made or reset_prefix_cache())
    uint64_t host_hit_pages = 0;  // pages this manager's lookups brought back from the host tier

    bool operator==(const PrefixCacheStats&) const = default;
};

namespace detail {
struct ManagerState;
struct StepState;
struct Access;
}  // namespace detail

// One step of a KVManager: the sequences it writes, how many new tokens each, and on the
// device the slot mapping and block tables that write(), attention() and view() read for
// every layer. Made by KVManager::begin_step; ends with KVManager::end_step or when
// destroyed. A step stays usable until the manager's sequences change (allocate, fork,
// truncate, free, another begin_step): then its calls throw InvalidArgument.
class PAGEDKV_API Step {
  public:
    Step() = default;
    Step(Step&&) noexcept;
    Step& operator=(Step&&) noexcept;
    ~Step();

    // The sequences, in the order their new tokens are packed.
    const std::vector<SeqId>& sequences() const;
    // New tokens of each sequence, and their sum (the rows of write's and attention's tensors).
    const std::vector<uint32_t>& new_tokens() const;
    uint32_t total_tokens() const;
    // Position of each sequence's first new token (its length before the step).
    const std::vector<int64_t>& first_positions() const;
    // Page slot (block * block_size + slot) of each new token, in order (with layer_windows:
    // in the first layer group's table; view(layer) has each layer's).
    const std::vector<uint32_t>& slot_mapping() const;

    // What a runtime's own kernels need for one layer: the pool's pages and, on the device,
    // the step's CSR block table (every sequence's pages after the step's tokens) and slot
    // mapping. Records nothing and submits nothing; the view shares the step's table buffer.
    PagedView view(uint32_t layer) const;

    bool valid() const noexcept { return state_ != nullptr; }

  private:
    friend class KVManager;
    friend struct detail::Access;
    PAGEDKV_LOCAL explicit Step(std::shared_ptr<detail::StepState> s);
    std::shared_ptr<detail::StepState> state_;
};

class PAGEDKV_API KVManager {
  public:
    KVManager(BlockPool& pool, ManagerOptions options = {});
    ~KVManager();
    KVManager(const KVManager&) = delete;
    KVManager& operator=(const KVManager&) = delete;

    // A new, empty sequence.
    SeqId add_sequence();
    // A new sequence for this prompt. With prefix caching on, it starts holding the cached
    // pages of the prompt's longest cached prefix of full pages (never the whole prompt: at
    // least one token is left to compute), and length() says how many tokens need no prefill;
    // the steps that follow write the rest (their token ids continue the prompt). A different
    // salt (tenant, LoRA adapter) never shares pages. Without prefix caching it is
    // add_sequence().
    SeqId add_sequence(std::span<const int32_t> prompt_tokens, uint64_t salt = 0);

    // Pages that allocate(seqs, new_tokens, lookahead) would take from the pool: those past
    // each sequence's table, and a copy of each shared page the new tokens land in.
    uint64_t pages_needed(std::span<const SeqId> seqs, std::span<const uint32_t> new_tokens,
                          uint32_t lookahead = 0) const;
    // Whether allocate would succeed while keeping watermark x num_blocks pages free for the
    // sequences already running (admission control).
    bool can_allocate(std::span<const SeqId> seqs, std::span<const uint32_t> new_tokens) const;
    // Reserves pages for that many new tokens (+ lookahead slots for speculative decoding) in
    // every listed sequence, all or nothing, and copies the shared pages they will write
    // (copy-on-write). OutOfBlocks names the sequences and page counts. The reservation stays
    // until the tokens are written or the sequence is truncated or freed.
    void allocate(std::span<const SeqId> seqs, std::span<const uint32_t> new_tokens,
                  uint32_t lookahead = 0);

    // A new sequence sharing every page of seq (copy-on-write), for parallel sampling and beams.
    SeqId fork(SeqId seq);
    // Keeps the first length tokens; a negative length drops -length tokens from the end
    // (speculative rollback). Pages left without a token go back to the pool.
    void truncate(SeqId seq, int64_t length);
    // Ends a sequence: its pages go back to the pool (shared ones stay with their sharers).
    void free(SeqId seq);

    // Tokens of the sequence (including those of a step begun for it).
    int64_t length(SeqId seq) const;
    // The sequence's pages in logical order, reserved ones included (with
    // PoolConfig::layer_windows: the table of layer 0's group, as block_table(seq, 0)).
    std::vector<uint32_t> block_table(SeqId seq) const;
    // Hybrid models (PoolConfig::layer_windows): the block table of a layer's group, from the
    // page holding its first held token's window on.
    std::vector<uint32_t> block_table(SeqId seq, uint32_t layer) const;
    // Tokens the layer still holds: length(seq) for a full-attention layer, at most the window
    // for a sliding one (its older tokens' pages went back to the pool).
    int64_t held(SeqId seq, uint32_t layer) const;
    // (first position held, tokens held) of a layer, for attention masks (Hugging Face's
    // get_mask_sizes): gather(seq, layer) returns positions [first, first + held).
    std::pair<int64_t, int64_t> mask_range(SeqId seq, uint32_t layer) const;
    // Live sequences, ascending.
    std::vector<SeqId> sequences() const;
    bool contains(SeqId seq) const;
    // That sequence's K and V of one layer, (kv_heads, held(seq, layer), head_dim) (v_head_dim
    // for V; every token but a sliding layer's older ones), in the pool's dtype.
    std::pair<Tensor, Tensor> gather(SeqId seq, uint32_t layer) const;

    // Allocates like allocate(seqs, new_tokens) and builds, once for every layer, the step's
    // slot mapping and block tables in device-readable memory (no submit). From here on,
    // length(seq) includes the new tokens.
    Step begin_step(std::span<const SeqId> seqs, std::span<const uint32_t> new_tokens);
    // The same, given the ids of each sequence's new tokens (their counts are the sizes). With
    // prefix caching on, the pages these tokens fill are hashed and registered in the index
    // when the step ends, if every layer's K/V was written (write(), or view() taken for the
    // runtime's own kernels); a sequence whose step ends unwritten, or given a step without
    // its token ids, stops registering pages (its tokens or K/V are not known).
    Step begin_step(std::span<const SeqId> seqs,
                    std::span<const std::span<const int32_t>> token_ids);
    // Packed ragged K and V of one layer, (total_tokens, kv_heads, head_dim) ("NHD"), tokens of
    // the step's first sequence first. One dispatch (or copy command) for the whole step. On a
    // pool over several devices, write / gather / attention take and return every head on the
    // first device and move the other devices' shares through host memory (see *_shards).
    void write(const Step& step, uint32_t layer, const Tensor& key, const Tensor& value);
    // Causal attention over the step: q is (total_tokens, q_heads, head_dim), q_heads a
    // multiple of kv_heads (GQA); each new token attends to its sequence's tokens up to and
    // including itself, read from the pages (prefill, chunked prefill and decode in one call).
    // Returns (total_tokens, q_heads, v_head_dim) in the pool's compute dtype; scale <= 0
    // means 1 / sqrt(head_dim). Accumulates in f32 (quantized pages are read directly).
    Tensor attention(const Step& step, uint32_t layer, const Tensor& query, float scale = 0.0f);
    // A tensor-parallel runtime's calls on a pool over several devices (BlockPool over a span of
    // Contexts): one tensor per device, in the pool's device order, each on its device and
    // holding that device's share of the heads (kv_heads / devices for K and V, q_heads /
    // devices for the query, the same count on every device); nothing crosses devices. Otherwise
    // as write / gather / attention (on a one-device pool they take and return one tensor).
    void write_shards(const Step& step, uint32_t layer, std::span<const Tensor> keys,
                      std::span<const Tensor> values);
    std::vector<std::pair<Tensor, Tensor>> gather_shards(SeqId seq, uint32_t layer) const;
    std::vector<Tensor> attention_shards(const Step& step, uint32_t layer,
                                         std::span<const Tensor> queries, float scale = 0.0f);
    // Ends the step (the Step destructor does the same): with prefix caching, registers the
    // pages it filled; pages it reserved but no token used (lookahead) stay reserved.
    void end_step(Step&& step);

    // Moving a sequence to another pool, in another process (disaggregated prefill and decode)
    // or another instance: its pages' bytes in block-table order, its lengths, and with prefix
    // caching its token ids, as one versioned, checksummed message. The pools must have the
    // same shape and dtype (the page layout may differ). The sequence stays here; free it once
    // the peer has it.
    std::vector<std::byte> export_sequence(SeqId seq) const;
    // A new sequence holding the message's tokens in fresh pages; with prefix caching and the
    // token ids, its full pages are registered so later prompts hit them. All or nothing:
    // a damaged, truncated or foreign message (CorruptSnapshot), another pool shape
    // (InvalidArgument) or too few free pages (OutOfBlocks) leave the pool as it was.
    SeqId import_sequence(std::span<const std::byte> message);
    // The same over a UCX connection: pages are sent straight from the pool's memory where the
    // host can reach it, else through a staging copy. Returns once the peer has imported the
    // sequence; throws with the peer's error code when it refused it.
    void export_sequence(SeqId seq, Connection& to) const;
    // Receives one exported sequence and imports it (all or nothing, as above), then tells the
    // sender. A connection that closes midway leaves the pool as it was.
    SeqId import_sequence(Connection& from);

    BlockPool& pool() const;
    const ManagerOptions& options() const noexcept;
    // Pages the manager's sequences reference (shared pages counted once).
    uint64_t pages_held() const;

    // ---- Host tier (PoolConfig::num_host_blocks): preemption by swapping instead of
    // recomputing. swap_out moves the pages holding the sequence's tokens to host-visible
    // memory (copy commands recorded in the library's batch, consecutive blocks merged) and
    // gives its device pages back; pages reserved past its tokens (lookahead) are dropped.
    // swap_in brings them back into device pages. A page shared with other sequences (fork,
    // prefix caching) is copied once: a sharer swapped out later reuses its host block, and
    // sharers swapped back in share one device page again; a sharer that stays keeps the
    // device page. Both are all or nothing: OutOfBlocks (naming the sequence and the page
    // counts) when the host tier (swap_out) or the device pool (swap_in, evictable cached
    // pages counted) lacks the pages; InvalidArgument, changing nothing, for an unknown
    // sequence, one already swapped out (swap_out) or not swapped out (swap_in), a pool
    // without a host tier, or a sequence in a step not yet ended.
    //
    // A swapped-out sequence answers contains, length, sequences and free (which gives its
    // host pages back); everything that needs its pages refuses it with InvalidArgument until
    // swap_in: allocate, pages_needed, can_allocate, begin_step, fork, truncate, gather and
    // block_table. Prefix caching: its pages are not in the index while it is swapped out
    // (they register again as its next steps fill pages). Cached pages the pool evicts are
    // not spilled to the host tier (not implemented).
    void swap_out(SeqId seq);
    void swap_in(SeqId seq);
    bool is_swapped(SeqId seq) const;

    // Prefix caching: this manager's lookups and the pool's index (all zero without it).
    PrefixCacheStats prefix_stats() const;
    // Empties the pool's prefix index: evictable pages become free, pages held by sequences
    // stay theirs (uncached), and this manager's counters restart. Pages filled from here on
    // are registered again.
    void reset_prefix_cache();

  private:
    friend struct detail::Access;
    std::shared_ptr<detail::ManagerState> state_;
};

}  // namespace pagedkv
