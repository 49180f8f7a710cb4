// Sequence transfer figures (pagedkv-bench --only transfer): export_sequence +
// import_sequence over UCX on loopback (two threads, a context and a pool each, one UCX worker
// each) against a plain host memcpy of the same bytes, timed in turns in one run; and the
// byte form's export and import alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pagedkv::bench {

struct TransferFigures {
    uint64_t bytes = 0;                     // page bytes of the sequence moved
    std::string shape;                      // the pool and the sequence, in words
    bool direct = false;                    // the pages went straight from pool memory
    std::vector<double> ucx_gbps;           // page bytes / (export + import over UCX), per round
    std::vector<double> memcpy_gbps;        // page bytes / memcpy of them, the same rounds
    std::vector<double> ratio;              // ucx / memcpy, per round
    std::vector<double> export_gbps;        // byte form: export_sequence(seq) alone
    std::vector<double> import_gbps;        // byte form: import_sequence(bytes) alone
    std::vector<double> ucx_ms, memcpy_ms;  // host wall time per round
};

TransferFigures measure_transfer(int rounds);

}  // namespace pagedkv::bench
