// UcxConnection: the ucp side of a Connection: a UCX context and worker (shared with the
// Listener that accepted it), one endpoint, and blocking sends and receives over the ucp
// stream API with a timeout. Sequence transfer (sequence_transfer.cpp) is built on it.
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pagedkv/transfer.hpp"

namespace pagedkv::detail {

struct UcxWorker {
    explicit UcxWorker(const TransferOptions& options);
    ~UcxWorker();
    UcxWorker(const UcxWorker&) = delete;
    UcxWorker& operator=(const UcxWorker&) = delete;
    // One round of progress; yields the thread when nothing happened.
    void progress();

    ucp_context_h context = nullptr;
    ucp_worker_h worker = nullptr;
};

// A request's outcome, filled by the completion callbacks.
struct UcxOp {
    void* request = nullptr;  // null: completed at once (or not posted)
    bool done = false;
    ucs_status_t status = UCS_OK;
    size_t length = 0;  // received bytes
};

struct UcxConnection {
    UcxConnection(std::shared_ptr<UcxWorker> w, TransferOptions o)
        : worker(std::move(w)), options(std::move(o)) {}
    ~UcxConnection() { close(); }
    UcxConnection(const UcxConnection&) = delete;
    UcxConnection& operator=(const UcxConnection&) = delete;

    // InvalidArgument naming op when the connection is closed or failed.
    void check_open(const char* op) const;
    bool open() const noexcept { return ep != nullptr && !failed; }

    // Posts a send of these bytes (in order after the ones posted before); the memory must stay
    // as it is until wait() says the op is done. memh: the region registered with map(), or null.
    void post_send(UcxOp& op, const void* data, size_t bytes, ucp_mem_h memh = nullptr);
    // Posts a receive of up to `bytes` bytes (op.length says how many came); `all`: completes
    // only once all of them came (or the connection failed).
    void post_receive(UcxOp& op, void* data, size_t bytes, bool all = false);
    // Progresses until every op is done or `stop` (if given) is; throws a transport Error naming
    // op_name on timeout (no progress for options.timeout). Returns false when `stop` ended it
    // first; pending ops are then cancelled. Callers check each op's status.
    bool wait(std::span<UcxOp* const> ops, const char* op_name, const UcxOp* stop = nullptr);
    // Completes every op still pending (cancelled, or by closing the endpoint): none of their
    // callbacks can run after this.
    void settle_pending(std::span<UcxOp* const> ops) noexcept;
    // Receives exactly `bytes` bytes: fewer only when the peer closed (or failed) first.
    size_t receive(void* data, size_t bytes, const char* op_name);
    // Sends these bytes and waits until they are out.
    void send(const void* data, size_t bytes, const char* op_name);

    // Registers host memory with UCX for sends straight from it (ucp_mem_map); null when UCX
    // cannot register it (the send then works unregistered).
    ucp_mem_h map(const void* data, size_t bytes) noexcept;
    void unmap(ucp_mem_h memh) noexcept;

    // Closes the endpoint (forcibly after a failure); waits briefly for what was sent.
    void close() noexcept;

    std::shared_ptr<UcxWorker> worker;
    TransferOptions options;
    ucp_ep_h ep = nullptr;
    bool failed = false;  // the peer went away or a transfer broke the stream
    ucs_status_t failure = UCS_OK;
    // Where import_sequence receives a message (kept: the next one of that size reuses it).
    std::vector<uint8_t> inbox;
};

struct UcxListener {
    UcxListener(uint16_t port, const std::string& address, TransferOptions options);
    ~UcxListener();

    std::shared_ptr<UcxWorker> worker;
    TransferOptions options;
    ucp_listener_h listener = nullptr;
    uint16_t port = 0;
    std::vector<ucp_conn_request_h> pending;  // peers that connected, not yet accepted
};

// How sequence transfer reaches a Connection's endpoint.
struct TransferAccess {
    static UcxConnection& of(Connection& c, const char* op);
};

}  // namespace pagedkv::detail
