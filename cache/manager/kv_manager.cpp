// KVManager: sequences by id over a pool's allocator, and steps: a ragged batch of new tokens
// whose slot mapping and block tables are built once, in one host-visible buffer, for every
// layer's write and attention.
#include "pagedkv/kv_manager.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <unordered_set>

#include "cache/manager/access.hpp"
#include "cache/manager/converted.hpp"
#include "cache/manager/kv_copy.hpp"
#include "cache/manager/manager_state.hpp"
#include "cache/manager/shards.hpp"
#include "cache/manager/step_plan.hpp"
#include "cache/manager/view_pages.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/attention.hpp"
#include "shaders/kernels/page_copy.hpp"
#include "shaders/vulkan/batch.hpp"

namespace pagedkv {

using detail::ManagerState;
using detail::Sequence;
using detail::StepState;

namespace {

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

// The most tokens a sequence holds: page slots (block * block_size + slot) are 32-bit, and so
// are the attention kernel's row lengths.
constexpr uint64_t kMaxTokens = uint64_t(INT32_MAX);

using Lock = detail::ManagerLock;
using detail::host_memory_guard;

Sequence& find(ManagerState& m, SeqId id, const char* op) {
    Sequence* s = m.seqs.find(id);
    if (!s) throw invalid(fmt::format("{}: unknown sequence {}", op, id));
    return *s;
}
// A live sequence whose pages are on the device (not swapped out).
Sequence& resident(ManagerState& m, SeqId id, const char* op) {
    Sequence& s = find(m, id, op);
    if (detail::is_swapped(m, s))
        throw invalid(
            fmt::format("{}: sequence {} is swapped out to the host tier (swap_in it "
                        "first)",
                        op, id));
    return s;
}
const Sequence& resident(const ManagerState& m, SeqId id, const char* op) {
    return resident(const_cast<ManagerState&>(m), id, op);
}

// The listed sequences, checked: as many counts as ids, no id twice, every id live, and the
// grown lengths within kMaxTokens.
std::vector<Sequence*> resolve(ManagerState& m, std::span<const SeqId> ids,
                               std::span<const uint32_t> counts, uint32_t lookahead,
                               const char* op) {
    if (ids.size() != counts.size())
        throw invalid(
            fmt::format("{}: {} sequences but {} token counts", op, ids.size(), counts.size()));
    std::vector<Sequence*> out;
    out.reserve(ids.size());
    std::unordered_set<SeqId> seen;
    for (size_t i = 0; i < ids.size(); ++i) {
        if (!seen.insert(ids[i]).second)
            throw invalid(fmt::format("{}: sequence {} is listed twice", op, ids[i]));
        Sequence& s = resident(m, ids[i], op);
        if (uint64_t(detail::length_of(s)) + counts[i] + lookahead > kMaxTokens)
            throw Error(
                ErrorCode::CapacityExceeded,
                fmt::format("{}: sequence {} would hold {} + {} + {} tokens, more than {}", op,
                            ids[i], detail::length_of(s), counts[i], lookahead, kMaxTokens));
        out.push_back(&s);
    }
    return out;
}

// Growing sequences: per (sequence, layer group) unit (unit i * groups + g), the sliding
// groups' leading pages that left the window, released first, and the growth of each table.
struct Growth {
    uint32_t groups = 1;
    std::vector<size_t> lead;  // [unit]: leading pages released
    uint64_t freed = 0;        // pages those releases give back to the free list
    detail::GrowthPlan p;      // [unit], over the tables before the releases
};

Growth plan(const ManagerState& m, const std::vector<Sequence*>& seqs,
            std::span<const uint32_t> counts, uint32_t lookahead) {
    const detail::PoolState& ps = *m.ps;
    const uint32_t bs = ps.config.block_size;
    Growth g;
    g.groups = ps.groups.num_groups();
    const size_t units = seqs.size() * g.groups;
    std::vector<const BlockTable*> tables;
    std::vector<int64_t> lengths;
    std::vector<uint32_t> unit_counts;
    tables.reserve(units);
    lengths.reserve(units);
    unit_counts.reserve(units);
    g.lead.assign(units, 0);
    for (size_t i = 0; i < seqs.size(); ++i)
        for (uint32_t k = 0; k < g.groups; ++k) {
            const Sequence& s = *seqs[i];
            const BlockTable& t = s.group(k);
            const int64_t origin = detail::table_origin(ps, s, k);
            tables.push_back(&t);
            lengths.push_back(detail::length_of(s) - origin);
            unit_counts.push_back(counts[i]);
            const size_t lead =
                std::min(t.size(), size_t((detail::first_held(ps, s, k) - origin) / int64_t(bs)));
            g.lead[i * g.groups + k] = lead;
            for (size_t p = 0; p < lead; ++p)
                if (ps.allocator.refcount(t[p]) == 1 && !ps.allocator.is_cached(t[p])) ++g.freed;
        }
    g.p = detail::plan_growth(tables, lengths, unit_counts, lookahead, bs, ps.allocator);
    return g;
}

// OutOfBlocks naming each sequence that needs pages, unless the pool has them.
void check_pages(const ManagerState& m, const Growth& g, std::span<const SeqId> ids,
                 const char* op) {
    const uint64_t free = m.ps->allocator.available_blocks();  // evictable pages count
    const detail::GrowthPlan& p = g.p;
    if (p.needed <= free + g.freed) return;
    std::vector<std::string> who;
    for (size_t i = 0; i < ids.size(); ++i) {
        uint64_t extra = 0, copies = 0;
        for (uint32_t k = 0; k < g.groups; ++k) {
            extra += p.seqs[i * g.groups + k].extra;
            copies += p.seqs[i * g.groups + k].copies.size();
        }
        if (extra + copies == 0) continue;
        who.push_back(copies == 0
                          ? fmt::format("sequence {}: {}", ids[i], extra)
                          : fmt::format("sequence {}: {} ({} of them copies of shared pages)",
                                        ids[i], extra + copies, copies));
    }
    throw Error(
        ErrorCode::OutOfBlocks,
        fmt::format(
            "{}: needs {} pages ({}), the pool has {} free{}{}", op, p.needed, fmt::join(who, ", "),
            free,
            m.ps->allocator.counters().cached_blocks ? fmt::format(" (evictable ones included)")
                                                     : std::string(),
            g.freed ? fmt::format(" and {} leaving sliding windows", g.freed) : std::string()));
}

// Commits a checked plan: the sliding groups' releases, fresh pages, copies of the shared pages
// written, appended pages.
void commit(ManagerState& m, const std::vector<Sequence*>& seqs, const Growth& g) {
    ++m.generation;
    const detail::PoolState& ps = *m.ps;
    const uint32_t bs = ps.config.block_size;
    for (size_t i = 0; i < seqs.size(); ++i)
        for (uint32_t k = 0; k < g.groups; ++k)
            if (const size_t lead = g.lead[i * g.groups + k])
                seqs[i]->release_leading(k, ps.groups.layers[k], lead, bs);
    // Host tier: a page the new tokens land in (in place or a fresh copy) no longer holds the
    // bytes of a host copy, nor does a fresh page (unlinked below).
    if (!m.ps->links.empty()) {
        for (const Sequence* q : seqs)
            for (size_t page = size_t(detail::length_of(*q) / bs); page < q->table.size(); ++page)
                m.ps->links.unlink_device(index(q->table[page]));
    }
    const detail::GrowthPlan& p = g.p;
    if (p.needed == 0) return;
    std::vector<BlockId> fresh;
    fresh.reserve(p.needed);
    std::vector<std::pair<uint32_t, uint32_t>> copies;
    m.ps->allocator.allocate(p.needed, fresh);  // cannot fail: check_pages
    size_t next = 0;
    for (size_t i = 0; i < seqs.size(); ++i)
        for (uint32_t k = 0; k < g.groups; ++k) {
            const size_t u = i * g.groups + k;
            BlockTable& t = seqs[i]->group(k);
            for (size_t page : p.seqs[u].copies) {
                const size_t at = page - g.lead[u];  // (copies lie past the released pages)
                copies.emplace_back(index(t[at]), index(fresh[next]));
                t.replace(at, fresh[next++]);  // the old page stays with its other sharers
            }
            t.adopt_back(std::span(fresh).subspan(next, p.seqs[u].extra));
            next += p.seqs[u].extra;
        }
    if (!m.ps->links.empty()) {
        for (BlockId b : fresh)
            m.ps->links.unlink_device(index(b));
        detail::prune_links(m);
    }
    detail::record_page_copies(*m.ps, copies);
    m.ps->pages_copied += copies.size();
}

// Prefix caching: registers the full pages of a sequence that are not in the index yet, each
// after its parent. Best effort (nothing is lost when a page is not registered: it is only not
// shared), so it never throws.
void register_pages(ManagerState& m, const Sequence& s, ManagerState::Track& t) noexcept {
    if (!m.index || !t.known) return;
    const uint32_t bs = m.ps->config.block_size;
    const size_t full =
        std::min<size_t>({t.written, t.tokens.size(), s.table.size() * size_t(bs)}) / bs;
    // An anchor that left the index (evicted, reset) means starting again from the first page:
    // the pages before it are found again (or registered again) one by one.
    if (t.anchored > 0 && m.index->serial(t.anchor) != t.anchor_serial) t.anchored = 0;
    try {
        while (t.anchored < full) {
            const size_t k = t.anchored;
            const auto r =
                m.index->insert(s.table[k], k == 0 ? PrefixEntry::kNoParent : index(t.anchor),
                                t.salt, std::span(t.tokens).subspan(k * bs, bs));
            if (r.what != PrefixIndex::Insert::Added && r.what != PrefixIndex::Insert::Duplicate)
                return;  // a hash collision: this sequence's pages past here stay unshared
            t.anchor = r.found;
            t.anchor_serial = m.index->serial(r.found);
            ++t.anchored;
        }
    } catch (...) {  // out of host memory in the index: the page stays unregistered
    }
}

// Adds a sequence and, when given, its prefix-caching track: both or neither (a failure to add
// the track removes the sequence, which gives its pages back).
SeqId add_tracked(ManagerState& m, Sequence&& s, std::optional<ManagerState::Track> track) {
    const SeqId id = m.seqs.add(std::move(s));
    if (!track) return id;
    try {
        m.tracks.emplace(id, std::move(*track));
    } catch (...) {
        m.seqs.erase(id);
        throw;
    }
    return id;
}

// Gives back the pages of each table past the sequence's length (allocate's reservation).
void drop_reserved(const detail::PoolState& ps, Sequence& s) {
    const uint32_t bs = ps.config.block_size;
    for (uint32_t g = 0; g < s.num_groups(); ++g) {
        BlockTable& t = s.group(g);
        const int64_t in_table = detail::length_of(s) - detail::table_origin(ps, s, g);
        const size_t used = size_t((uint64_t(std::max<int64_t>(0, in_table)) + bs - 1) / bs);
        if (t.size() > used) t.release_back(t.size() - used);
    }
}

uint64_t align16(uint64_t v) {
    return (v + 15) / 16 * 16;
}

float default_scale(float scale, uint32_t head_dim) {
    return scale > 0.0f ? scale : 1.0f / std::sqrt(float(head_dim));
}

// The step's state, checked: made by this manager, and nothing changed its sequences since.
const StepState& live_step(const ManagerState& m, const Step& step, const char* op) {
    const StepState* s = detail::Access::step(step);
    if (!s) throw invalid(fmt::format("{}: the step is empty (moved from or ended)", op));
    if (s->manager.get() != &m)
        throw invalid(fmt::format("{}: the step was begun by another KVManager", op));
    if (s->generation != m.generation)
        throw invalid(
            fmt::format("{}: the step is stale: the manager's sequences changed since begin_step "
                        "(allocate, fork, truncate, free or another begin_step)",
                        op));
    return *s;
}

// A ragged tensor (total, heads, dim) on the pool's device (of any float dtype: converted).
// device: the pool's device the tensor must live on (its first by default).
void check_ragged(const ManagerState& m, const Tensor& t, const char* op, const std::string& what,
                  uint32_t total, int64_t heads, uint32_t dim, bool heads_multiple = false,
                  size_t device = 0) {
    if (!t.defined()) throw invalid(fmt::format("{}: {} is undefined", op, what));
    if (&detail::Access::device(t) != m.ps->shards[device].device.get())
        throw invalid(device == 0 && !m.ps->sharded()
                          ? fmt::format("{}: {} lives on another Context than the pool", op, what)
                          : fmt::format("{}: {} lives on another Context than the pool's device {}",
                                        op, what, device));
    const auto& s = t.shape();
    if (s.size() != 3)
        throw invalid(fmt::format("{}: {} must be (total_tokens, heads, head_dim), got shape [{}]",
                                  op, what, fmt::join(s, ", ")));
    if (s[0] != total)
        throw invalid(fmt::format("{}: {} has {} tokens, the step has {}", op, what, s[0], total));
    if (heads_multiple ? (s[1] < 1 || s[1] > INT32_MAX || s[1] % heads != 0) : s[1] != heads)
        throw invalid(
            fmt::format("{}: {} has {} heads, pool layout has {} kv heads", op, what, s[1], heads));
    if (s[2] != dim)
        throw invalid(
            fmt::format("{}: {} has head_dim {}, pool layout has {}", op, what, s[2], dim));
}

std::shared_ptr<StepState> build_step(const std::shared_ptr<ManagerState>& state,
                                      std::span<const SeqId> ids,
                                      std::span<const uint32_t> new_tokens,
                                      std::span<const std::span<const int32_t>> token_ids);

}  // namespace

SeqId detail::add_sequence_of(ManagerState& m, Sequence&& s,
                              std::optional<ManagerState::Track> track) {
    const SeqId id = add_tracked(m, std::move(s), std::move(track));
    if (const auto it = m.tracks.find(id); it != m.tracks.end())
        register_pages(m, m.seqs.at(id), it->second);
    ++m.generation;
    return id;
}

// ---- Step

Step::Step(std::shared_ptr<detail::StepState> s) : state_(std::move(s)) {}
Step::Step(Step&&) noexcept = default;
Step& Step::operator=(Step&& other) noexcept {
    if (this != &other) {
        if (state_) detail::end_step(*state_);
        state_ = std::move(other.state_);
    }
    return *this;
}
Step::~Step() {
    if (state_) detail::end_step(*state_);
}

void detail::end_step(StepState& s) noexcept {
    if (s.ended) return;
    s.ended = true;
    ManagerState& m = *s.manager;
    Device::CallLock l(*m.ps->device);
    for (SeqId id : s.seqs)
        if (auto it = m.stepping.find(id); it != m.stepping.end() && --it->second == 0)
            m.stepping.erase(it);
    if (!s.registers) return;
    const bool written =
        std::all_of(s.layer_done.begin(), s.layer_done.end(), [](uint8_t d) { return d != 0; });
    for (size_t i = 0; i < s.seqs.size(); ++i) {
        if (s.new_tokens[i] == 0) continue;
        const auto it = m.tracks.find(s.seqs[i]);
        Sequence* q = m.seqs.find(s.seqs[i]);
        if (it == m.tracks.end() || !q || !it->second.known) continue;
        ManagerState::Track& t = it->second;
        const size_t first = size_t(s.first_pos[i]), end = size_t(s.lengths[i]);
        if (!written) {
            t.written = std::min(t.written, first);  // nothing from here on is vouched for
        } else if (t.epoch == s.epochs[i] && first <= t.written) {
            t.written = std::max(t.written, end);  // contiguous with what was written before
            register_pages(m, *q, t);
        }
    }
}

namespace {
const StepState& state_of(const std::shared_ptr<StepState>& s) {
    if (!s) throw invalid("Step: the step is empty (moved from or ended)");
    return *s;
}
}  // namespace

const std::vector<SeqId>& Step::sequences() const {
    return state_of(state_).seqs;
}
const std::vector<uint32_t>& Step::new_tokens() const {
    return state_of(state_).new_tokens;
}
uint32_t Step::total_tokens() const {
    return state_of(state_).total;
}
const std::vector<int64_t>& Step::first_positions() const {
    return state_of(state_).first_pos;
}
const std::vector<uint32_t>& Step::slot_mapping() const {
    return state_of(state_).tables[0].slot_mapping;
}

PagedView Step::view(uint32_t layer) const {
    const StepState& s = state_of(state_);
    const ManagerState& m = *s.manager;
    Lock l(m);
    live_step(m, *this, "Step::view");
    m.check_layer(layer, "Step::view");
    PagedView v = detail::view_pages(*m.ps, layer);
    if (!s.layer_done.empty()) state_->layer_done[layer] = 1;  // the runtime writes it
    const detail::StepTable& t = s.table_of(layer);
    v.batch = uint32_t(s.seqs.size());
    v.table = s.buffer->handle();
    const VkDeviceAddress base = s.buffer->address();
    v.indptr_offset = t.indptr_offset;
    v.indices_offset = t.indices_offset;
    v.last_page_len_offset = t.last_page_len_offset;
    v.first_slot_offset = t.first_slot_offset;
    v.slot_mapping_offset = t.slot_mapping_offset;
    v.indptr = base + t.indptr_offset;
    v.indices = base + t.indices_offset;
    v.last_page_len = base + t.last_page_len_offset;
    v.first_slot = base + t.first_slot_offset;
    v.slot_mapping = base + t.slot_mapping_offset;
    v.num_tokens = s.total;
    v.host_indptr = t.indptr;
    v.host_indices = t.indices;
    v.host_last_page_len = t.last_page_len;
    v.host_first_slot = t.first_slot;
    v.host_slot_mapping = t.slot_mapping;
    v.window = m.ps->groups.window_of(layer);
    v.first_positions = t.first_position;
    v.lengths = s.lengths;
    v.keep = state_;
    return v;
}

// ---- KVManager

KVManager::KVManager(BlockPool& pool, ManagerOptions options) {
    if (!(options.watermark >= 0.0 && options.watermark < 1.0))
        throw invalid(
            fmt::format("KVManager: watermark must be in [0, 1), got {}", options.watermark));
    auto state = std::make_shared<ManagerState>(detail::Access::shared_pool(pool), options);
    if (options.prefix_caching) {
        detail::PoolState& ps = *state->ps;
        ps.refuse_hybrid("KVManager: prefix caching");
        detail::Device::CallLock l(*ps.device);
        if (!ps.prefix)
            ps.prefix = std::make_unique<PrefixIndex>(ps.allocator, ps.config.block_size);
        state->index = ps.prefix.get();
        state->evictions_base = ps.allocator.evictions();
        if (ps.host_allocator && !ps.host_prefix)  // evicted pages spill to the host tier
            ps.host_prefix = std::make_unique<detail::HostPrefix>(ps);
        if (ps.host_prefix) state->spilled_base = ps.host_prefix->spilled();
    }
    state_ = std::move(state);
}

KVManager::~KVManager() {
    if (!state_) return;
    detail::Device::CallLock l(*state_->ps->device);
    state_->seqs.clear();  // the tables give their pages back
    state_->tracks.clear();
    detail::prune_links(*state_);
    ++state_->generation;
}

BlockPool& KVManager::pool() const {
    Lock l(*state_);
    return *state_->ps->pool;
}

const ManagerOptions& KVManager::options() const noexcept {
    return state_->options;
}

SeqId KVManager::add_sequence() {
    return add_sequence(std::span<const int32_t>{}, 0);
}

SeqId KVManager::add_sequence(std::span<const int32_t> prompt_tokens, uint64_t salt) {
    if (prompt_tokens.size() > kMaxTokens)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("add_sequence: a prompt of {} tokens, more than {}",
                                prompt_tokens.size(), kMaxTokens));
    ManagerState& m = *state_;
    Lock l(m);
    return host_memory_guard("add_sequence", [&] {
        if (!m.index) return m.seqs.add();
        // The longest cached run of full pages, leaving at least one token to compute.
        const uint32_t bs = m.ps->config.block_size;
        const size_t max_pages = prompt_tokens.empty() ? 0 : (prompt_tokens.size() - 1) / bs;
        const std::vector<BlockId> hit = m.index->match(prompt_tokens, salt, max_pages);
        Sequence s(m.ps->allocator, m.ps->config.num_layers);
        s.table.reserve(hit.size());
        for (BlockId b : hit) {
            m.ps->allocator.reuse(b);              // an evictable page leaves the list; may throw
            s.table.adopt_back(std::span(&b, 1));  // reserved: the table owns it at once
        }
        // Then the pages spilled to the host tier (copied back and indexed again).
        const size_t from_host = detail::hits_from_host(m, s.table, prompt_tokens, salt, max_pages);
        const size_t pages = s.table.size();
        const size_t held = pages * bs;
        ManagerState::Track t;
        t.tokens.assign(prompt_tokens.begin(), prompt_tokens.begin() + ptrdiff_t(held));
        t.salt = salt;
        t.anchored = pages;
        if (pages > 0) {
            t.anchor = s.table[pages - 1];
            t.anchor_serial = m.index->serial(t.anchor);
        }
        t.written = held;  // the shared pages' K/V were written by whoever computed them
        detail::set_length(s, int64_t(held));
        // On a failure below (a map node) s or the added sequence gives its pages back.
        const SeqId id = add_tracked(m, std::move(s), std::move(t));
        ++m.lookups.queries;
        m.lookups.query_tokens += prompt_tokens.size();
        m.lookups.hit_tokens += held;
        m.lookups.host_hit_pages += from_host;
        return id;
    });
}

uint64_t KVManager::pages_needed(std::span<const SeqId> seqs, std::span<const uint32_t> new_tokens,
                                 uint32_t lookahead) const {
    ManagerState& m = *state_;
    Lock l(m);
    return host_memory_guard("pages_needed", [&] {
        return plan(m, resolve(m, seqs, new_tokens, lookahead, "pages_needed"), new_tokens,
                    lookahead)
            .p.needed;
    });
}

bool KVManager::can_allocate(std::span<const SeqId> seqs,
                             std::span<const uint32_t> new_tokens) const {
    ManagerState& m = *state_;
    Lock l(m);
    return host_memory_guard("can_allocate", [&] {
        const Growth g = plan(m, resolve(m, seqs, new_tokens, 0, "can_allocate"), new_tokens, 0);
        const uint64_t needed = g.p.needed;
        const uint64_t keep = uint64_t(m.options.watermark * double(m.ps->config.num_blocks));
        const uint64_t free = m.ps->allocator.available_blocks() + g.freed;
        return free >= keep && needed <= free - keep;
    });
}

void KVManager::allocate(std::span<const SeqId> seqs, std::span<const uint32_t> new_tokens,
                         uint32_t lookahead) {
    ManagerState& m = *state_;
    Lock l(m);
    host_memory_guard("allocate", [&] {
        const std::vector<Sequence*> s = resolve(m, seqs, new_tokens, lookahead, "allocate");
        const Growth p = plan(m, s, new_tokens, lookahead);
        check_pages(m, p, seqs, "allocate");
        commit(m, s, p);
    });
}

SeqId KVManager::fork(SeqId seq) {
    ManagerState& m = *state_;
    Lock l(m);
    return host_memory_guard("fork", [&] {
        // The pages holding tokens are shared; the parent's reservation past them stays its own.
        Sequence s = resident(m, seq, "fork").fork();
        drop_reserved(*m.ps, s);
        std::optional<ManagerState::Track> track;
        if (const auto it = m.tracks.find(seq); it != m.tracks.end()) track = it->second;
        const SeqId id = add_tracked(m, std::move(s), std::move(track));
        ++m.generation;
        return id;
    });
}

void KVManager::truncate(SeqId seq, int64_t length) {
    ManagerState& m = *state_;
    Lock l(m);
    Sequence& s = resident(m, seq, "truncate");
    const int64_t n = detail::length_of(s);
    const int64_t keep = length >= 0 ? std::min(n, length) : std::max<int64_t>(0, n + length);
    const detail::PoolState& ps = *m.ps;
    const uint32_t bs = ps.config.block_size;
    // A sliding group cannot give back tokens that left its window: the shorter sequence's
    // window must still be held.
    for (uint32_t g = 0; keep > 0 && g < ps.groups.num_groups(); ++g) {
        const int64_t w = ps.groups.window[g], origin = detail::table_origin(ps, s, g);
        if (w > 0 && std::max<int64_t>(0, keep - w) < origin)
            throw invalid(fmt::format(
                "truncate: sequence {} to {} tokens would need position {} in its layers of "
                "window {}, whose pages left the window (they hold positions from {}; the "
                "shortest length kept is {})",
                seq, keep, std::max<int64_t>(0, keep - w), w, origin, origin + w));
    }
    detail::set_length(s, keep);
    if (keep == 0)  // every table starts again at position 0
        for (uint32_t g = 0; g < ps.groups.num_groups(); ++g)
            s.release_leading(g, ps.groups.layers[g], s.group(g).size(), bs);
    drop_reserved(ps, s);
    if (const auto it = m.tracks.find(seq); it != m.tracks.end()) {
        ManagerState::Track& t = it->second;
        const size_t kept = size_t(keep);
        if (t.tokens.size() > kept) t.tokens.resize(kept);
        t.written = std::min(t.written, kept);
        ++t.epoch;
        if (t.anchored > kept / bs) t.anchored = 0;  // found again from the first page
    }
    detail::prune_links(m);
    ++m.generation;
}

void KVManager::free(SeqId seq) {
    ManagerState& m = *state_;
    Lock l(m);
    find(m, seq, "free");
    m.seqs.erase(seq);    // its cached pages stay in the index, evictable once unreferenced
    m.tracks.erase(seq);  // (a swapped-out one's host pages are freed)
    detail::prune_links(m);
    ++m.generation;
}

int64_t KVManager::length(SeqId seq) const {
    Lock l(*state_);
    return detail::length_of(find(*state_, seq, "length"));
}

bool KVManager::contains(SeqId seq) const {
    Lock l(*state_);
    return state_->seqs.find(seq) != nullptr;
}

std::vector<uint32_t> KVManager::block_table(SeqId seq) const {
    return block_table(seq, 0);
}

std::vector<uint32_t> KVManager::block_table(SeqId seq, uint32_t layer) const {
    Lock l(*state_);
    const Sequence& s = resident(*state_, seq, "block_table");
    state_->check_layer(layer, "block_table");
    const BlockTable& t = s.group(state_->ps->groups.group_of[layer]);
    std::vector<uint32_t> out;
    out.reserve(t.size());
    for (BlockId b : t.blocks())
        out.push_back(index(b));
    return out;
}

int64_t KVManager::held(SeqId seq, uint32_t layer) const {
    return mask_range(seq, layer).second;
}

std::pair<int64_t, int64_t> KVManager::mask_range(SeqId seq, uint32_t layer) const {
    Lock l(*state_);
    const Sequence& s = find(*state_, seq, "mask_range");
    state_->check_layer(layer, "mask_range");
    const int64_t first = detail::first_held(*state_->ps, s, state_->ps->groups.group_of[layer]);
    return {first, detail::length_of(s) - first};
}

std::vector<SeqId> KVManager::sequences() const {
    Lock l(*state_);
    std::vector<SeqId> out;
    out.reserve(state_->seqs.size());
    for (const auto& [id, s] : state_->seqs.all())
        out.push_back(id);
    return out;
}

uint64_t KVManager::pages_held() const {
    Lock l(*state_);
    std::unordered_set<uint32_t> pages;
    for (const auto& [id, s] : state_->seqs.all())
        if (!detail::is_swapped(*state_, s))
            for (uint32_t g = 0; g < s.num_groups(); ++g)
                for (BlockId b : s.group(g).blocks())
                    pages.insert(index(b));
    return pages.size();
}

namespace {

// A gather of what a layer holds of a sequence, in order: tensor row i from the slot of its
// i-th held token. Sets len to their count.
std::vector<detail::RowEntry> gather_entries(const ManagerState& m, const Sequence& s,
                                             uint32_t layer, int64_t& len) {
    const detail::PoolState& ps = *m.ps;
    const uint32_t g = ps.groups.group_of[layer];
    const int64_t first = detail::first_held(ps, s, g);
    len = detail::length_of(s) - first;
    std::vector<detail::RowEntry> entries;
    entries.reserve(size_t(len));
    for (int64_t i = 0; i < len; ++i)
        entries.push_back({uint32_t(i), detail::slot_in_group(ps, s, g, first + i)});
    return entries;
}

}  // namespace

std::pair<Tensor, Tensor> KVManager::gather(SeqId seq, uint32_t layer) const {
    const ManagerState& m = *state_;
    Lock l(m);
    const Sequence& s = resident(m, seq, "gather");
    const PoolConfig& c = m.ps->config;
    m.check_layer(layer, "gather");
    int64_t len = 0;
    const std::vector<detail::RowEntry> entries = gather_entries(m, s, layer, len);
    // Quantized pages dequantize into the compute dtype; others gather as they are first.
    const DType t = detail::kv_tensor_dtype(m.ps->format, *c.compute_dtype);
    std::pair<Tensor, Tensor> kv{
        detail::Access::empty_tensor(m.ps->device, {c.num_kv_heads, len, c.head_dim}, t),
        detail::Access::empty_tensor(m.ps->device, {c.num_kv_heads, len, c.v_head_dim}, t)};
    if (len > 0)
        detail::record_kv_all(*m.ps, layer, kv.first, kv.second, entries, uint32_t(len), true);
    return detail::converted(kv, *c.compute_dtype);
}

PrefixCacheStats KVManager::prefix_stats() const {
    const ManagerState& m = *state_;
    Lock l(m);
    PrefixCacheStats s = m.lookups;
    if (m.index) {
        s.cached_pages = m.index->size();
        s.evictions = m.ps->allocator.evictions() - m.evictions_base;
        if (m.ps->host_prefix) s.spilled_pages = m.ps->host_prefix->spilled() - m.spilled_base;
    }
    return s;
}

void KVManager::reset_prefix_cache() {
    ManagerState& m = *state_;
    Lock l(m);
    m.lookups = {};
    m.evictions_base = m.ps->allocator.evictions();
    if (m.ps->host_prefix) {
        m.spilled_base = m.ps->host_prefix->spilled();
        m.ps->host_prefix->clear();  // the host tier's spilled pages go too
    }
    if (!m.index) return;
    m.index->clear();  // each track's anchor serial is stale now: it registers again from 0
}

Step KVManager::begin_step(std::span<const SeqId> seqs,
                           std::span<const std::span<const int32_t>> token_ids) {
    std::vector<uint32_t> counts;
    counts.reserve(token_ids.size());
    for (const auto& ids : token_ids) {
        if (ids.size() > kMaxTokens)
            throw Error(ErrorCode::CapacityExceeded,
                        fmt::format("begin_step: {} new tokens for one sequence, more than {}",
                                    ids.size(), kMaxTokens));
        counts.push_back(uint32_t(ids.size()));
    }
    return Step(build_step(state_, seqs, counts, token_ids));
}

Step KVManager::begin_step(std::span<const SeqId> ids, std::span<const uint32_t> new_tokens) {
    return Step(build_step(state_, ids, new_tokens, {}));
}

namespace {

// begin_step: token_ids empty, or one span per sequence (prefix caching registers their pages).
std::shared_ptr<StepState> build_step(const std::shared_ptr<ManagerState>& state,
                                      std::span<const SeqId> ids,
                                      std::span<const uint32_t> new_tokens,
                                      std::span<const std::span<const int32_t>> token_ids) {
    ManagerState& m = *state;
    Lock l(m);
    const char* op = "begin_step";
    return host_memory_guard(op, [&] {
        const std::vector<Sequence*> seqs = resolve(m, ids, new_tokens, 0, op);
        const PoolConfig& c = m.ps->config;
        const LayerGroups& groups = m.ps->groups;
        const uint32_t G = groups.num_groups();
        const uint32_t bs = c.block_size;
        uint64_t total = 0;
        for (size_t i = 0; i < seqs.size(); ++i)
            total += new_tokens[i];
        if (total * c.num_kv_heads > UINT32_MAX)
            throw Error(ErrorCode::CapacityExceeded,
                        fmt::format("{}: {} new tokens x {} kv heads exceed 32-bit indexing", op,
                                    total, c.num_kv_heads));
        const Growth p = plan(m, seqs, new_tokens, 0);
        check_pages(m, p, ids, op);
        // Pages of each group's CSR table after the step: from the table's first page (the
        // releases below included) to its last token's.
        std::vector<uint64_t> pages(G, 0);
        for (size_t i = 0; i < seqs.size(); ++i)
            for (uint32_t g = 0; g < G; ++g) {
                // (The table's origin once its leading pages are released.)
                const int64_t from =
                    detail::table_origin(*m.ps, *seqs[i], g) + int64_t(p.lead[i * G + g]) * bs;
                pages[g] +=
                    (uint64_t(detail::length_of(*seqs[i]) + new_tokens[i] - from) + bs - 1) / bs;
            }

        // Everything the step holds is made before the sequences change.
        // The tracks of prefix caching, with room for the new token ids.
        std::vector<ManagerState::Track*> tracks(seqs.size(), nullptr);
        if (m.index)
            for (size_t i = 0; i < seqs.size(); ++i) {
                const auto it = m.tracks.find(ids[i]);
                if (it == m.tracks.end() || !it->second.known) continue;
                tracks[i] = &it->second;
                if (!token_ids.empty())
                    it->second.tokens.reserve(it->second.tokens.size() + new_tokens[i]);
            }
        auto s = std::make_shared<StepState>();
        s->manager = state;
        s->seqs.assign(ids.begin(), ids.end());
        s->new_tokens.assign(new_tokens.begin(), new_tokens.end());
        s->total = uint32_t(total);
        const size_t n = seqs.size();
        s->lengths.reserve(n);
        s->first_pos.reserve(n);
        s->tables.resize(G);
        const auto bytes = [](uint64_t words) { return words * sizeof(uint32_t); };
        uint64_t size = 0;
        std::vector<detail::AttentionRows> rows(G);  // attention's, one per new token
        for (uint32_t g = 0; g < G; ++g) {
            detail::StepTable& t = s->tables[g];
            t.slot_mapping.reserve(total);
            t.entries.reserve(total);
            t.indptr.reserve(n + 1);
            t.indices.reserve(pages[g]);
            t.last_page_len.reserve(n);
            t.first_slot.assign(n, 0);  // a table's first page holds its first token at slot 0
            t.first_position.reserve(n);
            t.entries_offset = align16(size);
            t.rows_offset = align16(t.entries_offset + total * sizeof(detail::RowEntry));
            t.slot_mapping_offset = align16(t.rows_offset + bytes(3 * total + pages[g]));
            t.indptr_offset = align16(t.slot_mapping_offset + bytes(total));
            t.indices_offset = align16(t.indptr_offset + bytes(n + 1));
            t.last_page_len_offset = align16(t.indices_offset + bytes(pages[g]));
            t.first_slot_offset = align16(t.last_page_len_offset + bytes(n));
            size = align16(t.first_slot_offset + bytes(n));
            rows[g].reserve(total);
        }
        s->buffer = detail::Buffer::create(*m.ps->device, size, detail::MemoryKind::Upload);
        for (size_t d = 1; d < m.ps->shards.size(); ++d)  // the same bytes on every device
            s->shard_buffers.push_back(
                detail::Buffer::create(*m.ps->shards[d].device, size, detail::MemoryKind::Upload));
        s->registers = m.index != nullptr && !token_ids.empty();
        if (s->registers) {
            s->layer_done.assign(c.num_layers, 0);
            s->epochs.assign(n, 0);
            for (size_t i = 0; i < n; ++i)
                if (tracks[i]) s->epochs[i] = tracks[i]->epoch;
        }

        // Its sequences are in a step until it ends (swap_out and swap_in refuse them).
        std::vector<std::map<SeqId, uint32_t>::iterator> stepping;
        stepping.reserve(n);
        try {
            for (size_t i = 0; i < n; ++i)
                stepping.push_back(m.stepping.try_emplace(ids[i], 0).first);
        } catch (...) {
            for (auto it : stepping)
                if (it->second == 0) m.stepping.erase(it);
            throw;
        }
        for (auto it : stepping)
            ++it->second;

        // Nothing below fails: the sequences change.
        commit(m, seqs, p);
        s->generation = m.generation;
        const uint32_t H = c.num_kv_heads;
        for (detail::StepTable& t : s->tables)
            t.indptr.push_back(0);
        for (size_t i = 0; i < n; ++i) {
            Sequence& q = *seqs[i];
            const int64_t before = detail::length_of(q), after = before + new_tokens[i];
            s->first_pos.push_back(before);
            detail::set_length(q, after);
            if (ManagerState::Track* t = tracks[i]) {
                if (!token_ids.empty()) {  // registered when the step ends, once written
                    t->tokens.insert(t->tokens.end(), token_ids[i].begin(), token_ids[i].end());
                } else if (new_tokens[i] != 0) {
                    t->known = false;  // tokens without ids: this sequence registers no more
                    std::vector<int32_t>().swap(t->tokens);
                }
            }
            s->lengths.push_back(after);
            for (uint32_t g = 0; g < G; ++g) {
                detail::StepTable& t = s->tables[g];
                const BlockTable& table = q.group(g);
                const int64_t origin = detail::table_origin(*m.ps, q, g);
                const int64_t w = groups.window[g];
                for (int64_t pos = before; pos < after; ++pos) {
                    const uint32_t slot = detail::slot_in_group(*m.ps, q, g, pos);
                    t.entries.push_back({uint32_t(t.slot_mapping.size()) * H, slot});
                    t.slot_mapping.push_back(slot);
                    // The token attends to its window (all of its sequence before it for a
                    // full layer): slots [lo, pos] of the table.
                    const int64_t lo = (w > 0 ? std::max<int64_t>(0, pos - w + 1) : 0) - origin;
                    rows[g].push(t.indptr.back() + uint32_t(lo / bs),
                                 uint32_t(pos - origin - lo + 1), uint32_t(lo % bs));
                    if (w > 0 || pos + 1 == after)
                        t.max_len = std::max(t.max_len, uint32_t(pos - origin - lo + 1));
                }
                const size_t used = size_t((uint64_t(after - origin) + bs - 1) / bs);
                for (size_t b = 0; b < used; ++b)
                    t.indices.push_back(index(table[b]));
                t.indptr.push_back(uint32_t(t.indices.size()));
                t.last_page_len.push_back(
                    after == origin ? 0 : uint32_t((after - origin - 1) % bs + 1));
                t.first_position.push_back(origin);
            }
        }

        char* mapped = static_cast<char*>(s->buffer->mapped());
        auto put = [&](uint64_t offset, const void* data, size_t len) {
            if (len) std::memcpy(mapped + offset, data, len);
        };
        for (uint32_t g = 0; g < G; ++g) {
            const detail::StepTable& t = s->tables[g];
            put(t.entries_offset, t.entries.data(), t.entries.size() * sizeof(detail::RowEntry));
            rows[g].pack_into(reinterpret_cast<uint32_t*>(mapped + t.rows_offset), t.indices);
            put(t.slot_mapping_offset, t.slot_mapping.data(), bytes(t.slot_mapping.size()));
            put(t.indptr_offset, t.indptr.data(), bytes(t.indptr.size()));
            put(t.indices_offset, t.indices.data(), bytes(t.indices.size()));
            put(t.last_page_len_offset, t.last_page_len.data(), bytes(t.last_page_len.size()));
            put(t.first_slot_offset, t.first_slot.data(), bytes(t.first_slot.size()));
        }
        for (const auto& b : s->shard_buffers)
            std::memcpy(b->mapped(), mapped, size);
        return s;
    });
}

// One device's share of a step's attention: q and out hold its share of the query heads.
void record_step_attention(const ManagerState& m, const StepState& s, size_t d,
                           detail::AttentionShape shape, detail::Buffer& q, detail::Buffer& out,
                           uint32_t layer) {
    const detail::Shard& sh = m.ps->shards[d];
    shape.kv = sh.format;
    shape.q_heads /= uint32_t(m.ps->shards.size());
    const detail::StepTable& t = s.table_of(layer);
    detail::record_paged_attention(*sh.device, shape, q, out, *sh.pages, m.ps->page_layer(layer),
                                   s.buffer_on(d), t.rows_offset, t.max_len);
}

// The attention of a step as the shader sees it (query and output dtype, scale), checked.
detail::AttentionShape step_attention_shape(const ManagerState& m, const StepState& s,
                                            uint32_t q_heads, float scale, const char* op) {
    const PoolConfig& c = m.ps->config;
    detail::AttentionShape shape;
    shape.batch = s.total;
    shape.q_heads = q_heads;
    shape.kv = m.ps->format;
    // The query in the dtype the shader reads (a float pool's own, a quantized pool's compute
    // dtype); the output in the compute dtype.
    shape.io = detail::kv_tensor_dtype(m.ps->format, *c.compute_dtype);
    shape.scale = default_scale(scale, c.head_dim);
    detail::check_attention_shape(shape, op);
    return shape;
}

// InvalidArgument unless a *_shards call got one tensor per device in each list.
void check_shard_count(const ManagerState& m, const char* op, std::initializer_list<size_t> sizes) {
    const size_t n = m.ps->shards.size();
    for (size_t size : sizes)
        if (size != n)
            throw invalid(
                fmt::format("{}: {} tensors for a pool over {} devices (one per device, "
                            "in the pool's device order)",
                            op, size, n));
}

}  // namespace

void KVManager::write(const Step& step, uint32_t layer, const Tensor& key, const Tensor& value) {
    const ManagerState& m = *state_;
    Lock l(m);
    const char* op = "write";
    const StepState& s = live_step(m, step, op);
    const PoolConfig& c = m.ps->config;
    m.check_layer(layer, op);
    check_ragged(m, key, op, "key", s.total, c.num_kv_heads, c.head_dim);
    check_ragged(m, value, op, "value", s.total, c.num_kv_heads, c.v_head_dim);
    if (s.total == 0) return;
    host_memory_guard(op, [&] {
        // Inputs of another float dtype than the pool's (a quantized pool's: than the key's):
        // converted on the device first.
        const DType in = detail::kv_tensor_dtype(m.ps->format, key.dtype());
        const Tensor k = detail::converted(key, in), v = detail::converted(value, in);
        const detail::StepTable& t = s.table_of(layer);
        detail::record_kv_all(*m.ps, layer, k, v, t.entries, 1, false, s.buffer.get(),
                              t.entries_offset);
        if (!s.layer_done.empty()) const_cast<StepState&>(s).layer_done[layer] = 1;
    });
}

Tensor KVManager::attention(const Step& step, uint32_t layer, const Tensor& query, float scale) {
    const ManagerState& m = *state_;
    Lock l(m);
    const char* op = "attention";
    const StepState& s = live_step(m, step, op);
    const PoolConfig& c = m.ps->config;
    m.check_layer(layer, op);
    check_ragged(m, query, op, "query", s.total, c.num_kv_heads, c.head_dim, true);
    const detail::AttentionShape shape =
        step_attention_shape(m, s, uint32_t(query.shape()[1]), scale, op);
    return host_memory_guard(op, [&] {
        const Tensor q = detail::converted(query, shape.io);
        Tensor out = detail::Access::empty_tensor(
            m.ps->device, {int64_t(s.total), int64_t(shape.q_heads), int64_t(c.v_head_dim)},
            shape.io);
        const uint64_t es = dtype_size(shape.io);
        const detail::HeadRows qr{shape.q_heads, 1, c.head_dim * es},
            outr{shape.q_heads, 1, c.v_head_dim * es};
        if (!m.ps->sharded()) {
            record_step_attention(m, s, 0, shape, detail::Access::buffer(q),
                                  detail::Access::buffer(out), layer);
        } else {
            // Each device attends with its share of the query heads over its kv heads.
            const auto qs = detail::split_heads(*m.ps, detail::Access::buffer(q), q.nbytes(), qr);
            const auto outs = detail::per_shard_buffers(*m.ps, out.nbytes());
            for (uint32_t d = 0; d < m.ps->shards.size(); ++d)
                record_step_attention(m, s, d, shape, *qs[d], *outs[d], layer);
            detail::join_heads(*m.ps, outs, detail::Access::buffer(out), out.nbytes(), outr);
        }
        if (shape.io != *c.compute_dtype) return detail::converted(out, *c.compute_dtype);
        return out;
    });
}

void KVManager::write_shards(const Step& step, uint32_t layer, std::span<const Tensor> keys,
                             std::span<const Tensor> values) {
    const ManagerState& m = *state_;
    Lock l(m);
    const char* op = "write_shards";
    const StepState& s = live_step(m, step, op);
    const PoolConfig& c = m.ps->config;
    m.check_layer(layer, op);
    check_shard_count(m, op, {keys.size(), values.size()});
    const size_t n = m.ps->shards.size();
    const uint32_t share = m.ps->shards[0].format.num_kv_heads;
    for (size_t d = 0; d < n; ++d) {
        check_ragged(m, keys[d], op, fmt::format("keys[{}]", d), s.total, share, c.head_dim, false,
                     d);
        check_ragged(m, values[d], op, fmt::format("values[{}]", d), s.total, share, c.v_head_dim,
                     false, d);
    }
    if (s.total == 0) return;
    host_memory_guard(op, [&] {
        // Every conversion first: a failure leaves the pages as they were.
        std::vector<Tensor> ks, vs;
        for (size_t d = 0; d < n; ++d) {
            const DType in = detail::kv_tensor_dtype(m.ps->format, keys[d].dtype());
            ks.push_back(detail::converted(keys[d], in));
            vs.push_back(detail::converted(values[d], in));
        }
        std::vector<detail::Buffer*> kb, vb;
        std::vector<DType> dtypes;
        for (size_t d = 0; d < n; ++d) {
            kb.push_back(&detail::Access::buffer(ks[d]));
            vb.push_back(&detail::Access::buffer(vs[d]));
            dtypes.push_back(ks[d].dtype());
        }
        const detail::StepTable& t = s.table_of(layer);
        detail::record_kv_shards(*m.ps, layer, kb, vb, dtypes, t.entries, 1, false, s.buffer.get(),
                                 t.entries_offset);
        if (!s.layer_done.empty()) const_cast<StepState&>(s).layer_done[layer] = 1;
    });
}

std::vector<std::pair<Tensor, Tensor>> KVManager::gather_shards(SeqId seq, uint32_t layer) const {
    const ManagerState& m = *state_;
    Lock l(m);
    const Sequence& s = resident(m, seq, "gather_shards");
    const PoolConfig& c = m.ps->config;
    m.check_layer(layer, "gather_shards");
    int64_t len = 0;
    const std::vector<detail::RowEntry> entries = gather_entries(m, s, layer, len);
    const DType t = detail::kv_tensor_dtype(m.ps->format, *c.compute_dtype);
    std::vector<std::pair<Tensor, Tensor>> out;
    for (const detail::Shard& sh : m.ps->shards) {
        const int64_t heads = sh.format.num_kv_heads;
        out.emplace_back(detail::Access::empty_tensor(sh.device, {heads, len, c.head_dim}, t),
                         detail::Access::empty_tensor(sh.device, {heads, len, c.v_head_dim}, t));
    }
    if (len > 0) {
        std::vector<detail::Buffer*> kb, vb;
        for (auto& [k, v] : out) {
            kb.push_back(&detail::Access::buffer(k));
            vb.push_back(&detail::Access::buffer(v));
        }
        detail::record_kv_shards(*m.ps, layer, kb, vb, {&t, 1}, entries, uint32_t(len), true);
    }
    for (auto& kv : out)
        kv = detail::converted(kv, *c.compute_dtype);
    return out;
}

std::vector<Tensor> KVManager::attention_shards(const Step& step, uint32_t layer,
                                                std::span<const Tensor> queries, float scale) {
    const ManagerState& m = *state_;
    Lock l(m);
    const char* op = "attention_shards";
    const StepState& s = live_step(m, step, op);
    const PoolConfig& c = m.ps->config;
    m.check_layer(layer, op);
    check_shard_count(m, op, {queries.size()});
    const size_t n = m.ps->shards.size();
    const uint32_t share = m.ps->shards[0].format.num_kv_heads;
    for (size_t d = 0; d < n; ++d) {
        check_ragged(m, queries[d], op, fmt::format("queries[{}]", d), s.total, share, c.head_dim,
                     true, d);
        if (queries[d].shape()[1] != queries[0].shape()[1])
            throw invalid(fmt::format("{}: queries[{}] has {} heads, queries[0] {}", op, d,
                                      queries[d].shape()[1], queries[0].shape()[1]));
    }
    const detail::AttentionShape shape =
        step_attention_shape(m, s, uint32_t(queries[0].shape()[1] * int64_t(n)), scale, op);
    return host_memory_guard(op, [&] {
        std::vector<Tensor> qs, outs;
        for (size_t d = 0; d < n; ++d) {
            qs.push_back(detail::converted(queries[d], shape.io));
            outs.push_back(detail::Access::empty_tensor(
                m.ps->shards[d].device,
                {int64_t(s.total), queries[d].shape()[1], int64_t(c.v_head_dim)}, shape.io));
        }
        for (size_t d = 0; d < n; ++d)
            record_step_attention(m, s, d, shape, detail::Access::buffer(qs[d]),
                                  detail::Access::buffer(outs[d]), layer);
        if (shape.io != *c.compute_dtype)
            for (Tensor& t : outs)
                t = detail::converted(t, *c.compute_dtype);
        return outs;
    });
}

void KVManager::end_step(Step&& step) {
    Step ended = std::move(step);  // registers its pages; the reservation stays
}

}  // namespace pagedkv
