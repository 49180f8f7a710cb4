// libFuzzer harness: random sequences of allocate / free / fork / copy-on-write / crop /
// truncate / reset / exhaustion over BlockAllocator and block tables. After every operation
// the allocator's own check() must hold and every reference count must equal an independent
// model's. At exit it prints how many operations all executions applied.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"
#include "pagedkv/error.hpp"

using namespace pagedkv;

namespace {

// Operations applied (allocator and block-table calls, not the checks after them) over the
// whole run: a long run is quoted in operations, since an execution's count varies with its
// input's length.
uint64_t operations = 0, executions = 0;

void print_operations() {
    std::fprintf(stderr, "fuzz_allocator: %llu operations in %llu executions\n",
                 static_cast<unsigned long long>(operations),
                 static_cast<unsigned long long>(executions));
}

[[noreturn]] void fail(const char* what, size_t op) {
    std::fprintf(stderr, "fuzz_allocator: %s after operation %zu\n", what, op);
    std::abort();
}

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
    BlockAllocator alloc(n);
    std::vector<BlockTable> tables;
    std::vector<uint32_t> model(n, 0);  // expected reference counts
    for (size_t i = 1; i + 1 < size; i += 2) {
        const uint8_t op = data[i] % 9, arg = data[i + 1];
        BlockTable* t = tables.empty() ? nullptr : &tables[arg % tables.size()];
        switch (op) {
            case 0:
                ++operations;
                tables.emplace_back(alloc);
                break;
            case 1: {  // allocate into a table, or fail as a whole
                if (!t) break;
                ++operations;
                const uint64_t want = arg % 6, free_before = alloc.free_blocks();
                std::vector<BlockId> got;
                try {
                    alloc.allocate(want, got);
                } catch (const Error& e) {
                    if (e.code() != ErrorCode::OutOfBlocks || want <= free_before || !got.empty() ||
                        alloc.free_blocks() != free_before)
                        fail("allocate failed wrongly", i);
                    break;
                }
                for (BlockId b : got) {
                    if (model[index(b)] != 0) fail("allocate returned a block in use", i);
                    model[index(b)] = 1;
                }
                t->adopt_back(got);
                break;
            }
            case 2:  // fork: share every page
                if (!t) break;
                ++operations;
                for (BlockId b : t->blocks())
                    ++model[index(b)];
                tables.push_back(t->fork());
                break;
            case 3: {  // copy-on-write: replace one page by a fresh copy
                if (!t || t->empty() || alloc.free_blocks() == 0) break;
                ++operations;
                const size_t at = arg % t->size();
                std::vector<BlockId> fresh;
                alloc.allocate(1, fresh);
                --model[index((*t)[at])];
                model[index(fresh[0])] = 1;
                t->replace(at, fresh[0]);
                break;
            }
            case 4:    // crop: drop leading pages
            case 5: {  // truncate: drop trailing pages
                if (!t) break;
                ++operations;
                const size_t k = std::min<size_t>(arg % 4, t->size());
                for (size_t j = 0; j < k; ++j)
                    --model[index(op == 4 ? (*t)[j] : (*t)[t->size() - 1 - j])];
                op == 4 ? t->release_front(k) : t->release_back(k);
                break;
            }
            case 6:  // destroy a table
                if (!t) break;
                ++operations;
                for (BlockId b : t->blocks())
                    --model[index(b)];
                tables.erase(tables.begin() + std::ptrdiff_t(arg % tables.size()));
                break;
            case 7:  // reset everything
                ++operations;
                tables.clear();
                std::fill(model.begin(), model.end(), 0);
                break;
            case 8: {  // releasing a free block is an error that changes nothing
                const BlockId b{uint32_t(arg % (n + 2))};
                if (b < BlockId(n) && model[index(b)] > 0) break;
                ++operations;
                try {
                    alloc.release(b);
                    fail("release of a free block succeeded", i);
                } catch (const Error& e) {
                    if (e.code() != ErrorCode::InvalidArgument) fail("wrong error code", i);
                }
                break;
            }
        }
        if (!alloc.validate()) fail(alloc.check().c_str(), i);
        for (uint64_t b = 0; b < n; ++b)
            if (alloc.refcount(BlockId(uint32_t(b))) != model[b]) fail("refcount drifted", i);
    }
    return 0;
}
