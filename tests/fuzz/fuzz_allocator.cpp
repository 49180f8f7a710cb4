// libFuzzer harness: random sequences of allocate / free / fork / copy-on-write / crop /
// truncate / reset / exhaustion over BlockAllocator and block tables, and of prefix caching
// over the same allocator: sequences (a block table, its token ids over a tiny alphabet so that
// prompts share prefixes, a salt 0 or 1) admitted with PrefixIndex::match + reuse, grown
// (allocate, which may evict; copy-on-write of a partly filled page that is shared or cached;
// registering the pages that became full), forked, truncated and freed, and the index cleared
// or pruned. An independent model keeps every block's reference count, the free set, the
// evictable list in release order and the index as a map from (salt, whole token prefix) to
// block; allocate's evictions are predicted from it (the head of the evictable list, and each
// evicted page's descendants leaving the index with it). After every operation the allocator's
// and the index's own checks must hold and every count, list and lookup must equal the
// model's. At exit it prints how many operations all executions applied.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"
#include "allocator/prefix_index.hpp"
#include "pagedkv/error.hpp"

using namespace pagedkv;

namespace {

// Operations applied (allocator and block-table calls, not the checks after them) over the
// whole run: a long run is quoted in operations, since an execution's count varies with its
// input's length.
uint64_t operations = 0, executions = 0;
// How often the prefix-caching paths were reached: pages hit by admissions, evictions (and
// the pages that left the index with them), insert's four answers, copies of a partly filled
// page that was cached.
uint64_t hits = 0, evictions = 0, cascaded = 0, cached_copies = 0, inserts[4] = {};

void print_operations() {
    using ull = unsigned long long;
    std::fprintf(stderr, "fuzz_allocator: %llu operations in %llu executions\n", ull(operations),
                 ull(executions));
    std::fprintf(stderr,
                 "fuzz_allocator: %llu pages hit, %llu evictions (%llu more pages left the "
                 "index with them), inserts %llu added %llu duplicate %llu collision %llu "
                 "parent gone, %llu copies of a cached partly filled page\n",
                 ull(hits), ull(evictions), ull(cascaded), ull(inserts[0]), ull(inserts[1]),
                 ull(inserts[2]), ull(inserts[3]), ull(cached_copies));
}

[[noreturn]] void fail(const char* what, size_t op) {
    std::fprintf(stderr, "fuzz_allocator: %s after operation %zu\n", what, op);
    std::abort();
}

// Token j of prompt template t (0..3): ids 0..2, the templates sharing their first tokens in
// pairs, so that sequences repeat each other's pages.
int32_t template_token(uint32_t t, size_t j) {
    if (j < 2) return 0;
    if (j < 5) return int32_t(t & 1);
    return int32_t((j * (t + 1) + t) % 3);
}

// A page of the index, as the model names it: the salt and every token up to its end.
using Key = std::pair<uint64_t, std::vector<int32_t>>;

struct Model {
    explicit Model(uint64_t n) : refs(n, 0), free(n, 1), key_of(n) {}

    std::vector<uint32_t> refs;              // expected reference counts
    std::vector<uint8_t> free;               // on the free list
    std::vector<uint32_t> lru;               // evictable, least recently released first
    std::map<Key, uint32_t> pages;           // (salt, token prefix) -> block
    std::vector<std::optional<Key>> key_of;  // the inverse, per block
    uint64_t evictions = 0;
    std::vector<BlockId> evicted;  // the last allocate's evictions, in order

    uint64_t free_count() const { return uint64_t(std::count(free.begin(), free.end(), 1)); }
    bool cached(uint32_t b) const { return key_of[b].has_value(); }

    void release(BlockId b) {
        const uint32_t x = index(b);
        if (--refs[x] != 0) return;
        if (cached(x))
            lru.push_back(x);
        else
            free[x] = 1;
    }
    void retain(BlockId b) { ++refs[index(b)]; }
    // A prefix-cache hit: an evictable page leaves the evictable list.
    void reuse(BlockId b) {
        const uint32_t x = index(b);
        if (refs[x]++ == 0) lru.erase(std::find(lru.begin(), lru.end(), x));
    }
    // The page `key` and every page after it leave the index; unreferenced ones become free.
    // Returns how many pages left.
    size_t drop(const Key key) {  // a copy: key_of[x] may be the argument
        std::vector<Key> gone;
        for (auto it = pages.lower_bound(key); it != pages.end(); ++it) {
            const Key& k = it->first;
            if (k.first != key.first || k.second.size() < key.second.size() ||
                !std::equal(key.second.begin(), key.second.end(), k.second.begin()))
                break;  // the map orders a prefix's extensions right after it
            gone.push_back(k);
        }
        for (const Key& k : gone) {
            const uint32_t x = pages.at(k);
            pages.erase(k);
            key_of[x].reset();
            if (refs[x] == 0) {
                const auto at = std::find(lru.begin(), lru.end(), x);
                if (at != lru.end()) lru.erase(at);
                free[x] = 1;
            }
        }
        return gone.size();
    }
    void clear() {
        for (const auto& [k, x] : pages) {
            key_of[x].reset();
            if (refs[x] == 0) free[x] = 1;
        }
        pages.clear();
        lru.clear();
    }
    // What allocate(n) does to the model before handing blocks out: false when it must fail;
    // else the evictions it makes, in order (in `evicted`).
    bool make_room(uint64_t n) {
        evicted.clear();
        uint64_t have = free_count();
        if (n > have + lru.size()) return false;
        while (have < n) {
            const uint32_t x = lru.front();
            lru.erase(lru.begin());
            evicted.push_back(BlockId{x});
            ++evictions;
            ++::evictions;
            cascaded +=
                drop(*key_of[x]) - 1;  // x itself becomes free, and so do its evictable descendants
            have = free_count();
        }
        return true;
    }
    // The longest run of indexed first pages of tokens (at most max_pages).
    std::vector<BlockId> match(const std::vector<int32_t>& tokens, uint64_t salt, size_t max_pages,
                               uint32_t bs) const {
        std::vector<BlockId> out;
        const size_t whole = std::min(max_pages, tokens.size() / bs);
        for (size_t k = 1; k <= whole; ++k) {
            const auto it = pages.find(Key{
                salt, std::vector<int32_t>(tokens.begin(), tokens.begin() + ptrdiff_t(k * bs))});
            if (it == pages.end()) break;
            out.push_back(BlockId{it->second});
        }
        return out;
    }
};

// Records each eviction the allocator reports (checking that the page has no reference) and
// passes it on to the index.
class Spy final : public EvictionListener {
  public:
    Spy(BlockAllocator& alloc, PrefixIndex& index, const Model& model)
        : alloc_(&alloc), index_(&index), model_(&model) {}
    void evicted(BlockId b) noexcept override {
        // The model's count is the one from before allocate: a block it says is referenced
        // must never be evicted, whatever the allocator's own count says.
        if (alloc_->refcount(b) != 0 || model_->refs[index(b)] != 0) referenced = true;
        log.push_back(b);
        index_->evicted(b);
    }
    std::vector<BlockId> log;
    bool referenced = false;

  private:
    BlockAllocator* alloc_;
    PrefixIndex* index_;
    const Model* model_;
};

// At most this many sequences (admit and fork refuse more), so that the checks after each
// operation stay fast on long inputs.
constexpr size_t kMaxSeqs = 32;

struct Seq {
    BlockTable table;
    std::vector<int32_t> tokens;
    uint64_t salt = 0;
    uint32_t tmpl = 0;  // the template its tokens continue
};

struct Harness {
    explicit Harness(uint64_t n, uint32_t bs) : alloc(n), model(n), bs(bs) {}

    BlockAllocator alloc;
    Model model;
    uint32_t bs;
    // Made by the first prefix-caching operation: until then the allocator caches nothing.
    std::optional<PrefixIndex> prefix;
    std::optional<Spy> spy;
    std::vector<BlockTable> tables;
    std::vector<Seq> seqs;

    void enable_index() {
        if (prefix) return;
        prefix.emplace(alloc, bs);
        spy.emplace(alloc, *prefix, model);
        alloc.enable_caching(&*spy);  // the spy forwards to the index
    }

    // allocate(want) against the model's prediction. Returns false when it (rightly) failed.
    bool allocate(uint64_t want, std::vector<BlockId>& got, size_t op) {
        const uint64_t available = alloc.available_blocks();
        const bool fits = model.make_room(want);
        if (spy) spy->log.clear();
        try {
            alloc.allocate(want, got);
        } catch (const Error& e) {
            if (e.code() != ErrorCode::OutOfBlocks || fits || want <= available || !got.empty() ||
                alloc.available_blocks() != available)
                fail("allocate failed wrongly", op);
            return false;
        }
        if (!fits) fail("allocate succeeded beyond the free and evictable blocks", op);
        if (got.size() != want) fail("allocate returned the wrong number of blocks", op);
        if (spy) {
            if (spy->referenced) fail("allocate evicted a referenced block", op);
            if (spy->log != model.evicted)
                fail("allocate evicted other blocks than the least recently released", op);
        }
        for (BlockId b : got) {
            if (model.refs[index(b)] != 0) fail("allocate returned a block in use", op);
            if (!model.free[index(b)])
                fail("allocate returned a block neither free nor evicted", op);
            model.free[index(b)] = 0;
            model.refs[index(b)] = 1;
        }
        return true;
    }

    // Registers seq's full pages from page `from`, each after its parent: the parent the
    // model indexes for its prefix, or (own_parent, or none indexed) the sequence's own page
    // before it. Stops at the first page not added or found.
    void register_pages(Seq& s, size_t from, bool own_parent, size_t op) {
        const size_t full = std::min(s.tokens.size() / bs, s.table.size());
        for (size_t k = from; k < full; ++k) {
            ++operations;
            uint32_t parent = PrefixEntry::kNoParent;
            if (k > 0) {
                parent = index(s.table[k - 1]);
                const auto it = model.pages.find(Key{
                    s.salt,
                    std::vector<int32_t>(s.tokens.begin(), s.tokens.begin() + ptrdiff_t(k * bs))});
                if (!own_parent && it != model.pages.end()) parent = it->second;
            }
            const BlockId b = s.table[k];
            Key key{s.salt, std::vector<int32_t>(s.tokens.begin(),
                                                 s.tokens.begin() + ptrdiff_t((k + 1) * bs))};
            // The model's answer.
            PrefixIndex::Insert want;
            BlockId found{};
            if (parent != PrefixEntry::kNoParent && !model.cached(parent)) {
                want = PrefixIndex::Insert::ParentGone;
            } else if (const auto it = model.pages.find(key); it != model.pages.end()) {
                want = PrefixIndex::Insert::Duplicate;
                found = BlockId{it->second};
            } else if (model.cached(index(b))) {
                want = PrefixIndex::Insert::Collision;  // b is indexed as another page
            } else {
                want = PrefixIndex::Insert::Added;
                found = b;
            }
            const auto page = std::span(s.tokens).subspan(k * bs, bs);
            const PrefixIndex::InsertResult r = prefix->insert(b, parent, s.salt, page);
            if (r.what != want) fail("insert answered other than the model", op);
            ++inserts[size_t(want)];
            if ((want == PrefixIndex::Insert::Added || want == PrefixIndex::Insert::Duplicate) &&
                r.found != found)
                fail("insert found another block than the model", op);
            if (want == PrefixIndex::Insert::Added) {
                model.pages.emplace(key, index(b));
                model.key_of[index(b)] = std::move(key);
            } else if (want != PrefixIndex::Insert::Duplicate) {
                return;
            }
        }
    }

    void check(size_t op) const {
        if (!alloc.validate()) fail(alloc.check().c_str(), op);
        if (prefix && !prefix->check().empty()) fail(prefix->check().c_str(), op);
        const uint64_t n = alloc.num_blocks();
        uint64_t used = 0, shared = 0;
        for (uint64_t b = 0; b < n; ++b) {
            const BlockId id{uint32_t(b)};
            if (alloc.refcount(id) != model.refs[b]) fail("refcount drifted", op);
            if (alloc.is_cached(id) != model.cached(uint32_t(b)))
                fail("cached flag differs from the model's index", op);
            used += model.refs[b] > 0;
            shared += model.refs[b] > 1;
        }
        // No referenced block is free or evictable: the free list is exactly the model's free
        // set, the evictable list exactly its release order.
        std::vector<uint8_t> on_free(n, 0);
        for (BlockId b : alloc.free_list()) {
            if (model.refs[index(b)] != 0) fail("a referenced block is on the free list", op);
            if (!model.free[index(b)]) fail("the free list holds a block the model does not", op);
            on_free[index(b)] = 1;
        }
        if (on_free != model.free) fail("the free list misses a free block", op);
        std::vector<BlockId> lru;
        for (uint32_t x : model.lru)
            lru.push_back(BlockId{x});
        if (alloc.evictable() != lru) fail("the evictable list is not in release order", op);
        const AllocatorCounters& c = alloc.counters();
        if (c.used_blocks != used || c.free_blocks != model.free_count() ||
            c.cached_blocks != model.lru.size() || c.shared_blocks != shared ||
            c.used_blocks + c.free_blocks + c.cached_blocks != n ||
            alloc.available_blocks() != c.free_blocks + c.cached_blocks)
            fail("counters differ from the model", op);
        if (alloc.evictions() != model.evictions) fail("eviction count differs", op);
        if (!prefix) return;
        if (prefix->size() != model.pages.size()) fail("index size differs", op);
        // Every indexed page can be found from its prompt, through the model's chain.
        for (const auto& [key, x] : model.pages) {
            const std::vector<BlockId> got = prefix->match(key.second, key.first, SIZE_MAX);
            if (got != model.match(key.second, key.first, SIZE_MAX, bs) ||
                got.size() * bs != key.second.size())
                fail("an indexed page cannot be found as the model finds it", op);
            if (!prefix->contains(BlockId{x})) fail("contains() misses an indexed page", op);
        }
        for (const Seq& s : seqs) {
            if (prefix->match(s.tokens, s.salt, SIZE_MAX) !=
                model.match(s.tokens, s.salt, SIZE_MAX, bs))
                fail("match of a sequence's tokens differs from the model", op);
            for (BlockId b : s.table.blocks())
                if (alloc.must_copy(b) != (model.refs[index(b)] > 1 || model.cached(index(b))))
                    fail("must_copy differs from the model", op);
        }
    }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // libFuzzer ends a run (-runs, -max_total_time) with exit(), which runs this.
    std::atexit(print_operations);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    ++executions;
    if (size < 1) return 0;
    const uint64_t n = 1 + data[0] % 48;
    const uint32_t bs = 1 + (data[0] / 48) % 3;  // tokens a page (prefix caching)
    Harness h(n, bs);
    BlockAllocator& alloc = h.alloc;
    Model& model = h.model;
    std::vector<BlockTable>& tables = h.tables;
    std::vector<Seq>& seqs = h.seqs;
    for (size_t i = 1; i + 1 < size; i += 2) {
        const uint8_t op = data[i] % 16, arg = data[i + 1];
        BlockTable* t = tables.empty() ? nullptr : &tables[arg % tables.size()];
        Seq* s = seqs.empty() ? nullptr : &seqs[arg % seqs.size()];
        switch (op) {
            case 0:
                ++operations;
                tables.emplace_back(alloc);
                break;
            case 1: {  // allocate into a table, or fail as a whole
                if (!t) break;
                ++operations;
                std::vector<BlockId> got;
                if (h.allocate(arg % 6, got, i)) t->adopt_back(got);
                break;
            }
            case 2:  // fork: share every page
                if (!t) break;
                ++operations;
                for (BlockId b : t->blocks())
                    model.retain(b);
                tables.push_back(t->fork());
                break;
            case 3: {  // copy-on-write: replace one page by a fresh copy
                if (!t || t->empty()) break;
                ++operations;
                const size_t at = arg % t->size();
                std::vector<BlockId> fresh;
                if (!h.allocate(1, fresh, i)) break;
                model.release((*t)[at]);
                t->replace(at, fresh[0]);
                break;
            }
            case 4:    // crop: drop leading pages
            case 5: {  // truncate: drop trailing pages
                if (!t) break;
                ++operations;
                const size_t k = std::min<size_t>(arg % 4, t->size());
                for (size_t j = 0; j < k; ++j)
                    model.release(op == 4 ? (*t)[j] : (*t)[t->size() - 1 - j]);
                op == 4 ? t->release_front(k) : t->release_back(k);
                break;
            }
            case 6:  // destroy a table (its pages from the last)
                if (!t) break;
                ++operations;
                for (size_t j = t->size(); j-- > 0;)
                    model.release((*t)[j]);
                tables.erase(tables.begin() + std::ptrdiff_t(arg % tables.size()));
                break;
            case 7:  // reset every table, the last first
                ++operations;
                while (!tables.empty()) {
                    for (size_t j = tables.back().size(); j-- > 0;)
                        model.release(tables.back()[j]);
                    tables.pop_back();
                }
                break;
            case 8: {  // releasing a free or evictable block is an error that changes nothing
                const BlockId b{uint32_t(arg % (n + 2))};
                if (b < BlockId(n) && model.refs[index(b)] > 0) break;
                ++operations;
                try {
                    alloc.release(b);
                    fail("release of a free block succeeded", i);
                } catch (const Error& e) {
                    if (e.code() != ErrorCode::InvalidArgument) fail("wrong error code", i);
                }
                break;
            }
            case 9: {  // admit a prompt: its longest cached run of pages, reused
                h.enable_index();
                if (seqs.size() >= kMaxSeqs) break;
                ++operations;
                const uint32_t tmpl = arg & 3, mode = (arg >> 2) & 3;
                const uint64_t salt = mode == 3;
                const size_t len = 1 + (arg >> 4) * 2 + (mode & 1);  // 1..32 tokens
                std::vector<int32_t> prompt;
                for (size_t j = 0; j < len; ++j)
                    prompt.push_back(template_token(tmpl, j));
                // KVManager leaves a token to compute; mode 2 asks for every full page.
                const size_t max_pages = mode == 2 ? len / bs : (len - 1) / bs;
                const std::vector<BlockId> hit = h.prefix->match(prompt, salt, max_pages);
                if (hit != model.match(prompt, salt, max_pages, bs))
                    fail("match differs from the model", i);
                Seq fresh{BlockTable(alloc), {}, salt, tmpl};
                hits += hit.size();
                for (BlockId b : hit) {
                    alloc.reuse(b);
                    model.reuse(b);
                }
                fresh.table.adopt_back(hit);
                fresh.tokens.assign(prompt.begin(), prompt.begin() + ptrdiff_t(hit.size() * bs));
                seqs.push_back(std::move(fresh));
                break;
            }
            case 10: {  // grow a sequence by 1..8 tokens, then register its full pages
                if (!s) break;
                ++operations;
                const size_t count = 1 + (arg >> 5), len = s->tokens.size();
                std::vector<int32_t> more;
                for (size_t j = 0; j < count; ++j)
                    more.push_back(j == 0 && (arg & 0x10) ? int32_t((arg >> 2) % 3)  // diverge
                                                          : template_token(s->tmpl, len + j));
                // A partly filled last page that is shared or cached is copied before the
                // write (the cached copy stays as it is).
                const bool copy = len % bs != 0 && (model.refs[index(s->table[len / bs])] > 1 ||
                                                    model.cached(index(s->table[len / bs])));
                const size_t pages = (len + count + bs - 1) / bs;
                std::vector<BlockId> got;
                if (!h.allocate(pages - s->table.size() + copy, got, i)) break;
                if (copy) {
                    cached_copies += model.cached(index(s->table[len / bs]));
                    model.release(s->table[len / bs]);
                    s->table.replace(len / bs, got[0]);
                }
                s->table.adopt_back(std::span(got).subspan(copy));
                s->tokens.insert(s->tokens.end(), more.begin(), more.end());
                h.register_pages(*s, (arg & 8) ? 0 : len / bs, arg & 4, i);
                break;
            }
            case 11: {  // fork a sequence
                if (!s || seqs.size() >= kMaxSeqs) break;
                ++operations;
                for (BlockId b : s->table.blocks())
                    model.retain(b);
                Seq copy{s->table.fork(), s->tokens, s->salt, s->tmpl};
                seqs.push_back(std::move(copy));
                break;
            }
            case 12: {  // truncate a sequence by 1..8 tokens; pages left empty go back
                if (!s) break;
                ++operations;
                const size_t drop = std::min<size_t>(s->tokens.size(), 1 + (arg >> 5));
                const size_t keep = s->tokens.size() - drop, pages = (keep + bs - 1) / bs;
                for (size_t j = s->table.size(); j-- > pages;)
                    model.release(s->table[j]);
                s->table.release_back(s->table.size() - pages);
                s->tokens.resize(keep);
                break;
            }
            case 13:  // free a sequence (its pages from the last)
                if (!s) break;
                ++operations;
                for (size_t j = s->table.size(); j-- > 0;)
                    model.release(s->table[j]);
                seqs.erase(seqs.begin() + std::ptrdiff_t(arg % seqs.size()));
                break;
            case 14: {  // the index: clear, remove a page, or refusals that change nothing
                h.enable_index();
                ++operations;
                const uint32_t x = uint32_t((arg >> 2) % n);
                switch (arg & 3) {
                    case 0:  // reset_prefix_cache
                        h.prefix->clear();
                        model.clear();
                        break;
                    case 1:
                        h.prefix->remove(BlockId{x});
                        if (model.cached(x)) model.drop(*model.key_of[x]);
                        break;
                    case 2:  // reuse of a block that is not cached
                        if (model.cached(x)) break;
                        try {
                            alloc.reuse(BlockId{x});
                            fail("reuse of an uncached block succeeded", i);
                        } catch (const Error& e) {
                            if (e.code() != ErrorCode::InvalidArgument) fail("wrong error code", i);
                        }
                        break;
                    case 3:  // marking a free or evictable block cached
                        if (model.refs[x] != 0) break;
                        try {
                            alloc.mark_cached(BlockId{x});
                            fail("mark_cached of an unreferenced block succeeded", i);
                        } catch (const Error& e) {
                            if (e.code() != ErrorCode::InvalidArgument) fail("wrong error code", i);
                        }
                        break;
                }
                break;
            }
            case 15:  // end every sequence, the last first
                ++operations;
                while (!seqs.empty()) {
                    for (size_t j = seqs.back().table.size(); j-- > 0;)
                        model.release(seqs.back().table[j]);
                    seqs.pop_back();
                }
                break;
        }
        h.check(i);
    }
    return 0;
}
