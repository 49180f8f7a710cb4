// Connection and Listener: a UCX endpoint between two processes (or two threads), over which
// KVManager::export_sequence / import_sequence move a sequence's pages and block table from
// one pool to another (disaggregated prefill and decode, moving a sequence to a less loaded
// instance). The library links UCX (Debian libucx-dev, the ucp stream API).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "pagedkv/export.h"

namespace pagedkv {

namespace detail {
struct UcxConnection;
struct UcxListener;
struct TransferAccess;
}  // namespace detail

struct TransferOptions {
    // The UCX transports (what UCX_TLS would say); set explicitly so that a transfer does not
    // depend on the machine's environment. "tcp" works wherever there is a network interface,
    // loopback included (containers too); "tcp,sm" adds shared memory between local processes.
    std::string transports = "tcp";
    // The network devices UCX may use (UCX_NET_DEVICES), e.g. "lo" or "eth0"; empty: all.
    std::string net_devices;
    // How long connect, accept, and each send or receive wait for the peer to make progress
    // before throwing.
    std::chrono::milliseconds timeout{30000};
};

class Connection;

// Accepts connections on a TCP port (0: one the system picks; port() says which).
class PAGEDKV_API Listener {
  public:
    explicit Listener(uint16_t port = 0, const std::string& address = "0.0.0.0",
                      TransferOptions options = {});
    ~Listener();
    Listener(Listener&&) noexcept;
    Listener& operator=(Listener&&) noexcept;

    // The port it listens on.
    uint16_t port() const;
    // The next peer that connects (waits up to options.timeout; InvalidArgument after it).
    // The connection shares the listener's UCX worker: use both from one thread at a time.
    Connection accept();

  private:
    std::unique_ptr<detail::UcxListener> impl_;
};

// One end of a connection. Move-only; closing (the destructor) waits briefly for what was sent.
// One thread at a time. After a transfer failed midway the connection is closed: calls throw.
class PAGEDKV_API Connection {
  public:
    // Connects to a Listener (waits up to options.timeout for the peer).
    static Connection connect(const std::string& host, uint16_t port, TransferOptions options = {});
    Connection(Connection&&) noexcept;
    Connection& operator=(Connection&&) noexcept;
    ~Connection();

    // Whether the connection still works (false once the peer closed or a transfer failed).
    bool open() const noexcept;

  private:
    friend class Listener;
    friend struct detail::TransferAccess;
    PAGEDKV_LOCAL explicit Connection(std::unique_ptr<detail::UcxConnection> impl);
    std::unique_ptr<detail::UcxConnection> impl_;
};

}  // namespace pagedkv
