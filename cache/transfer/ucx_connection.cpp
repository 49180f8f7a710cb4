// Connection and Listener over the ucp stream API, and the blocking waits sequence transfer
// uses: every wait progresses the worker until its requests complete, the peer fails, or
// nothing has happened for options.timeout.
#include "cache/transfer/ucx_connection.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <cstring>
#include <thread>

#include "pagedkv/error.hpp"

namespace pagedkv {

namespace detail {

namespace {

using Clock = std::chrono::steady_clock;

Error transport(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

void check(ucs_status_t s, const char* what) {
    if (s != UCS_OK) throw transport(fmt::format("{} failed: {}", what, ucs_status_string(s)));
}

void on_send(void*, ucs_status_t status, void* user) {
    auto* op = static_cast<UcxOp*>(user);
    op->status = status;
    op->done = true;
}

void on_receive(void*, ucs_status_t status, size_t length, void* user) {
    auto* op = static_cast<UcxOp*>(user);
    op->status = status;
    op->length = length;
    op->done = true;
}

void on_error(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* c = static_cast<UcxConnection*>(arg);
    c->failed = true;
    c->failure = status;
}

// Completes a posted op: the request's status for one that completed at once.
void settle(UcxOp& op, ucs_status_ptr_t r) {
    if (r == nullptr) {
        op.done = true;
    } else if (UCS_PTR_IS_ERR(r)) {
        op.status = UCS_PTR_STATUS(r);
        op.done = true;
    } else {
        op.request = r;
    }
}

sockaddr_in resolve(const std::string& host, uint16_t port, const char* op) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int e = getaddrinfo(host.c_str(), nullptr, &hints, &res); e != 0 || !res)
        throw transport(fmt::format("{}: cannot resolve '{}': {}", op, host, gai_strerror(e)));
    sockaddr_in a{};
    std::memcpy(&a, res->ai_addr, sizeof a);
    freeaddrinfo(res);
    a.sin_port = htons(port);
    return a;
}

void set_error_handling(ucp_ep_params_t& p, UcxConnection* c) {
    p.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = on_error;
    p.err_handler.arg = c;
}

}  // namespace

UcxWorker::UcxWorker(const TransferOptions& options) {
    ucp_config_t* config = nullptr;
    check(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read");
    ucs_status_t s = ucp_config_modify(config, "TLS", options.transports.c_str());
    if (s == UCS_OK && !options.net_devices.empty())
        s = ucp_config_modify(config, "NET_DEVICES", options.net_devices.c_str());
    if (s != UCS_OK) {
        ucp_config_release(config);
        throw transport(fmt::format("UCX: transports '{}' / devices '{}': {}", options.transports,
                                    options.net_devices, ucs_status_string(s)));
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_STREAM;
    s = ucp_init(&params, config, &context);
    ucp_config_release(config);
    check(s, "ucp_init");
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    s = ucp_worker_create(context, &wp, &worker);
    if (s != UCS_OK) {
        ucp_cleanup(context);
        check(s, "ucp_worker_create");
    }
}

UcxWorker::~UcxWorker() {
    ucp_worker_destroy(worker);
    ucp_cleanup(context);
}

void UcxWorker::progress() {
    if (ucp_worker_progress(worker) == 0) std::this_thread::yield();
}

void UcxConnection::check_open(const char* op) const {
    if (!ep) throw transport(fmt::format("{}: the connection is closed", op));
    if (failed)
        throw transport(fmt::format("{}: the connection failed ({}); open a new one", op,
                                    ucs_status_string(failure)));
}

void UcxConnection::post_send(UcxOp& op, const void* data, size_t bytes, ucp_mem_h memh) {
    if (!ep) {  // closed by a failure before
        op.done = true;
        op.status = UCS_ERR_NOT_CONNECTED;
        return;
    }
    ucp_request_param_t p{};
    p.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE;
    p.cb.send = on_send;
    p.user_data = &op;
    p.datatype = ucp_dt_make_contig(1);
    if (memh) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        p.memh = memh;
    }
    settle(op, ucp_stream_send_nbx(ep, data, bytes, &p));
}

void UcxConnection::post_receive(UcxOp& op, void* data, size_t bytes, bool all) {
    if (!ep) {
        op.done = true;
        op.status = UCS_ERR_NOT_CONNECTED;
        return;
    }
    ucp_request_param_t p{};
    p.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE;
    if (all) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
        p.flags = UCP_STREAM_RECV_FLAG_WAITALL;
    }
    p.cb.recv_stream = on_receive;
    p.user_data = &op;
    p.datatype = ucp_dt_make_contig(1);
    size_t length = 0;
    ucs_status_ptr_t r = ucp_stream_recv_nbx(ep, data, bytes, &length, &p);
    settle(op, r);
    if (r == nullptr) op.length = length;
}

void UcxConnection::settle_pending(std::span<UcxOp* const> ops) noexcept {
    const auto pending = [&] {
        for (const UcxOp* op : ops)
            if (!op->done) return true;
        return false;
    };
    const auto progress_for = [&](std::chrono::milliseconds d) {
        const auto deadline = Clock::now() + d;
        while (pending() && Clock::now() < deadline)
            worker->progress();
    };
    // Cancelled first; a stream receive does not cancel, but closing the endpoint completes
    // every request on it; one that still has not completed is given back to UCX, which then
    // calls nothing more for it.
    for (UcxOp* op : ops)
        if (!op->done && op->request) ucp_request_cancel(worker->worker, op->request);
    progress_for(std::chrono::milliseconds(100));
    if (pending()) {
        failed = true;
        if (failure == UCS_OK) failure = UCS_ERR_CANCELED;
        close();
        progress_for(std::chrono::milliseconds(1000));
    }
    for (UcxOp* op : ops) {
        if (!op->done) {
            op->done = true;
            op->status = UCS_ERR_CANCELED;
        }
        if (op->request) {
            ucp_request_free(op->request);
            op->request = nullptr;
        }
    }
}

bool UcxConnection::wait(std::span<UcxOp* const> ops, const char* op_name, const UcxOp* stop) {
    auto last = Clock::now();
    size_t done = 0;
    for (;;) {
        size_t now_done = 0;
        for (const UcxOp* op : ops)
            now_done += op->done;
        if (now_done != done) last = Clock::now();
        done = now_done;
        const bool stopped = stop && stop->done;
        const bool broken = failed && done < ops.size();
        const bool late = Clock::now() - last > options.timeout;
        if (done == ops.size() || stopped || broken || late) {
            settle_pending(ops);
            if (late && done < ops.size() && !stopped) {
                failed = true;
                failure = UCS_ERR_TIMED_OUT;
                throw transport(fmt::format("{}: the peer made no progress for {} ms", op_name,
                                            options.timeout.count()));
            }
            return !(stopped && done < ops.size());
        }
        worker->progress();
    }
}

size_t UcxConnection::receive(void* data, size_t bytes, const char* op_name) {
    size_t got = 0;
    // Bytes that came before the peer closed are still read.
    while (got < bytes) {
        UcxOp op;
        post_receive(op, static_cast<uint8_t*>(data) + got, bytes - got);
        UcxOp* ops[] = {&op};
        wait(ops, op_name);
        if (op.status != UCS_OK) {
            failed = true;
            failure = op.status;
            break;
        }
        got += op.length;
    }
    return got;
}

void UcxConnection::send(const void* data, size_t bytes, const char* op_name) {
    UcxOp op;
    post_send(op, data, bytes);
    UcxOp* ops[] = {&op};
    wait(ops, op_name);
    if (op.status != UCS_OK) {
        failed = true;
        failure = op.status;
        throw transport(
            fmt::format("{}: sending failed: {}", op_name, ucs_status_string(op.status)));
    }
}

ucp_mem_h UcxConnection::map(const void* data, size_t bytes) noexcept {
    ucp_mem_map_params_t p{};
    p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    p.address = const_cast<void*>(data);
    p.length = bytes;
    ucp_mem_h memh = nullptr;
    if (ucp_mem_map(worker->context, &p, &memh) != UCS_OK) return nullptr;
    return memh;
}

void UcxConnection::unmap(ucp_mem_h memh) noexcept {
    if (memh) ucp_mem_unmap(worker->context, memh);
}

void UcxConnection::close() noexcept {
    if (!ep) return;
    // Gracefully when the connection works, so that the peer learns of it; that completes only
    // when the peer progresses its worker, so it is waited for a moment and then given back to
    // UCX, which finishes it on its own.
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = failed ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    const ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    ep = nullptr;
    if (r == nullptr || UCS_PTR_IS_ERR(r)) return;
    const auto deadline = Clock::now() + std::chrono::milliseconds(500);
    while (ucp_request_check_status(r) == UCS_INPROGRESS && Clock::now() < deadline)
        worker->progress();
    ucp_request_free(r);
}

namespace {

void on_connection(ucp_conn_request_h request, void* arg) {
    auto* l = static_cast<UcxListener*>(arg);
    try {
        l->pending.push_back(request);
    } catch (...) {
        ucp_listener_reject(l->listener, request);
    }
}

}  // namespace

UcxListener::UcxListener(uint16_t port_wanted, const std::string& address, TransferOptions o)
    : worker(std::make_shared<UcxWorker>(o)), options(std::move(o)) {
    const sockaddr_in a = resolve(address, port_wanted, "Listener");
    ucp_listener_params_t p{};
    p.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&a);
    p.sockaddr.addrlen = sizeof a;
    p.conn_handler.cb = on_connection;
    p.conn_handler.arg = this;
    if (ucs_status_t s = ucp_listener_create(worker->worker, &p, &listener); s != UCS_OK)
        throw transport(fmt::format("Listener: cannot listen on {}:{}: {}", address, port_wanted,
                                    ucs_status_string(s)));
    ucp_listener_attr_t attr{};
    attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    if (ucs_status_t s = ucp_listener_query(listener, &attr); s != UCS_OK) {
        ucp_listener_destroy(listener);
        check(s, "ucp_listener_query");
    }
    port = ntohs(reinterpret_cast<const sockaddr_in*>(&attr.sockaddr)->sin_port);
}

UcxListener::~UcxListener() {
    for (ucp_conn_request_h r : pending)
        ucp_listener_reject(listener, r);
    ucp_listener_destroy(listener);
}

UcxConnection& TransferAccess::of(Connection& c, const char* op) {
    if (!c.impl_) throw transport(fmt::format("{}: the connection was moved from", op));
    return *c.impl_;
}

}  // namespace detail

// ---- Listener

Listener::Listener(uint16_t port, const std::string& address, TransferOptions options)
    : impl_(std::make_unique<detail::UcxListener>(port, address, std::move(options))) {}
Listener::~Listener() = default;
Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;

uint16_t Listener::port() const {
    if (!impl_) throw detail::transport("Listener::port: the listener was moved from");
    return impl_->port;
}

Connection Listener::accept() {
    if (!impl_) throw detail::transport("Listener::accept: the listener was moved from");
    detail::UcxListener& l = *impl_;
    const auto deadline = detail::Clock::now() + l.options.timeout;
    while (l.pending.empty()) {
        if (detail::Clock::now() > deadline)
            throw detail::transport(
                fmt::format("Listener::accept: no peer connected to port {} within {} ms", l.port,
                            l.options.timeout.count()));
        l.worker->progress();
    }
    const ucp_conn_request_h request = l.pending.front();
    l.pending.erase(l.pending.begin());
    auto c = std::make_unique<detail::UcxConnection>(l.worker, l.options);
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST;
    p.conn_request = request;
    detail::set_error_handling(p, c.get());
    detail::check(ucp_ep_create(l.worker->worker, &p, &c->ep), "Listener::accept: ucp_ep_create");
    return Connection(std::move(c));
}

// ---- Connection

Connection::Connection(std::unique_ptr<detail::UcxConnection> impl) : impl_(std::move(impl)) {}
Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&&) noexcept = default;
Connection::~Connection() = default;

bool Connection::open() const noexcept {
    return impl_ && impl_->open();
}

Connection Connection::connect(const std::string& host, uint16_t port, TransferOptions options) {
    const sockaddr_in a = detail::resolve(host, port, "Connection::connect");
    auto c = std::make_unique<detail::UcxConnection>(std::make_shared<detail::UcxWorker>(options),
                                                     options);
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
    p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&a);
    p.sockaddr.addrlen = sizeof a;
    detail::set_error_handling(p, c.get());
    if (ucs_status_t s = ucp_ep_create(c->worker->worker, &p, &c->ep); s != UCS_OK)
        throw detail::transport(
            fmt::format("Connection::connect: to {}:{}: {}", host, port, ucs_status_string(s)));
    // A stream endpoint connects lazily: flush it so that a peer that is not there shows now.
    ucp_request_param_t fp{};
    detail::UcxOp op;
    fp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    fp.cb.send = detail::on_send;
    fp.user_data = &op;
    detail::settle(op, ucp_ep_flush_nbx(c->ep, &fp));
    detail::UcxOp* ops[] = {&op};
    c->wait(ops, "Connection::connect");
    if (op.status != UCS_OK || c->failed)
        throw detail::transport(
            fmt::format("Connection::connect: to {}:{}: {}", host, port,
                        ucs_status_string(op.status != UCS_OK ? op.status : c->failure)));
    return Connection(std::move(c));
}

}  // namespace pagedkv
