// KVManager::export_sequence / import_sequence: a sequence as a SequenceMessage, in memory or
// over a UcxConnection. Over a connection the sender posts the header, the meta and the pages
// (straight from the pool's mapped memory where it has some, else a staged copy), and the
// receiver takes the whole message into host memory before touching its pool, then answers
// with an acknowledgement: a code (0: imported, else ErrorCode + 1) and the error's message.
#include <fmt/format.h>

#include <array>
#include <cstring>
#include <optional>

#include "cache/manager/manager_state.hpp"
#include "cache/manager/page_bytes.hpp"
#include "cache/transfer/sequence_message.hpp"
#include "cache/transfer/ucx_connection.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/kv_manager.hpp"
#include "pagedkv/transfer.hpp"

namespace pagedkv {

using detail::ManagerState;
using detail::Sequence;
using detail::SequenceMessage;

namespace {

using Lock = detail::ManagerLock;
using detail::host_memory_guard;

// The importer's answer has a fixed size, so that the sender receives it whole in the one
// receive it posts before sending: u32 code, u32 text bytes, the text (padded).
constexpr size_t kReplyBytes = 1024;
constexpr uint32_t kMaxReplyText = kReplyBytes - 8;

// The message of seq without its checksum, and the blocks whose bytes follow it.
SequenceMessage describe(const ManagerState& m, SeqId id, std::vector<uint32_t>& blocks,
                         const char* op) {
    m.ps->refuse_hybrid(op);
    const Sequence* s = m.seqs.find(id);
    if (!s) throw Error(ErrorCode::InvalidArgument, fmt::format("{}: unknown sequence {}", op, id));
    if (detail::is_swapped(m, *s))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: sequence {} is swapped out to the host tier (swap_in it "
                                "first)",
                                op, id));
    SequenceMessage msg;
    msg.format = m.ps->format;
    msg.length = detail::length_of(*s);
    msg.len = s->len;
    msg.start = s->start;
    const uint32_t bs = m.ps->config.block_size;
    msg.num_pages = (uint64_t(msg.length) + bs - 1) / bs;  // reserved pages past them stay
    for (uint64_t i = 0; i < msg.num_pages; ++i)
        blocks.push_back(index(s->table[i]));
    // Token ids travel when prefix caching knows them and every token's K/V is written.
    if (const auto it = m.tracks.find(id); it != m.tracks.end()) {
        const ManagerState::Track& t = it->second;
        if (t.known && t.written >= size_t(msg.length) && t.tokens.size() >= size_t(msg.length)) {
            msg.has_tokens = true;
            msg.salt = t.salt;
            msg.tokens.assign(t.tokens.begin(), t.tokens.begin() + msg.length);
        }
    }
    return msg;
}

// Header and meta, with the checksum of meta and these pages.
std::vector<uint8_t> head_of(SequenceMessage& msg,
                             std::span<const std::span<const uint8_t>> pages) {
    std::vector<uint8_t> head = detail::encode_sequence_head(msg);
    msg.body_hash = detail::body_hash_of(
        std::span<const uint8_t>(head).subspan(detail::kSequenceHeaderBytes), pages);
    return detail::encode_sequence_head(msg);
}

// The answer: 0 for imported, else the error's code + 1 and its message.
void reply(detail::UcxConnection& c, uint32_t code, const std::string& text) noexcept {
    try {
        std::vector<uint8_t> r(kReplyBytes, 0);
        const auto n = uint32_t(std::min<size_t>(text.size(), kMaxReplyText));
        std::memcpy(r.data(), &code, 4);
        std::memcpy(r.data() + 4, &n, 4);
        std::memcpy(r.data() + 8, text.data(), n);
        c.send(r.data(), r.size(), "import_sequence");
    } catch (...) {
        c.failed = true;  // the sender will see the connection fail instead
    }
}

uint32_t code_of(const Error& e) {
    return uint32_t(e.code()) + 1;
}

Error closed_midway(const char* op, size_t got, uint64_t want, const detail::UcxConnection& c) {
    return Error(ErrorCode::CorruptSnapshot,
                 fmt::format("{}: the connection closed after {} of the message's {} bytes ({}); "
                             "the pool is unchanged",
                             op, got, want, ucs_status_string(c.failure)));
}

}  // namespace

std::vector<std::byte> KVManager::export_sequence(SeqId seq) const {
    const char* op = "export_sequence";
    const ManagerState& m = *state_;
    Lock l(m);
    return host_memory_guard(op, [&] {
        std::vector<uint32_t> blocks;
        SequenceMessage msg = describe(m, seq, blocks, op);
        // The pages where the host maps them, copied once into the message; else staged.
        std::vector<std::span<const uint8_t>> runs;
        std::vector<uint8_t> staged;
        if (!blocks.empty()) runs = detail::mapped_pages(*m.ps, blocks);
        if (runs.empty() && !blocks.empty()) {
            staged = detail::read_pages(*m.ps, blocks);
            runs.emplace_back(staged);
        }
        const std::vector<uint8_t> head = head_of(msg, runs);
        size_t size = head.size();
        for (const auto& r : runs)
            size += r.size();
        std::vector<std::byte> out(size);
        std::memcpy(out.data(), head.data(), head.size());
        size_t at = head.size();
        for (const auto& r : runs) {
            std::memcpy(out.data() + at, r.data(), r.size());
            at += r.size();
        }
        return out;
    });
}

SeqId KVManager::import_sequence(std::span<const std::byte> message) {
    const char* op = "import_sequence";
    ManagerState& m = *state_;
    Lock l(m);
    detail::PoolState& ps = *m.ps;
    ps.refuse_hybrid(op);
    return host_memory_guard(op, [&] {
        const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(message.data()),
                                             message.size());
        const SequenceMessage msg =
            detail::decode_sequence(bytes, ps.format, ps.config.num_blocks, op);
        // Everything that can fail is done before the pool changes.
        std::vector<uint8_t> relaid;
        std::span<const uint8_t> pages = msg.pages;
        if (msg.format.layout != ps.format.layout) {
            relaid = detail::relayout_pages(msg.pages, msg.format, ps.format);
            pages = relaid;
        }
        if (msg.num_pages > ps.allocator.available_blocks())
            throw Error(
                ErrorCode::OutOfBlocks,
                fmt::format(
                    "{}: the sequence needs {} pages, the pool has {} free{}", op, msg.num_pages,
                    ps.allocator.available_blocks(),
                    ps.allocator.counters().cached_blocks ? " (evictable ones included)" : ""));
        std::optional<ManagerState::Track> track;
        if (m.index) {
            track.emplace();
            if (msg.has_tokens) {
                track->tokens = msg.tokens;
                track->salt = msg.salt;
                track->written = size_t(msg.length);  // written below
            } else {
                track->known = false;  // its token ids are not known: nothing to register
            }
        }
        Sequence s(ps.allocator, ps.config.num_layers);
        s.table.reserve(msg.num_pages);
        std::vector<BlockId> fresh;
        fresh.reserve(msg.num_pages);
        std::vector<uint32_t> blocks;
        blocks.reserve(msg.num_pages);

        ps.allocator.allocate(msg.num_pages, fresh);  // cannot fail: checked above
        s.table.adopt_back(fresh);                    // s gives them back if a step below throws
        for (BlockId b : fresh)
            blocks.push_back(index(b));
        // Fresh pages (free or evicted): no stale host-tier pairing may name them.
        if (!ps.links.empty())
            for (uint32_t b : blocks)
                ps.links.unlink_device(b);
        detail::write_pages(ps, blocks, pages);
        detail::set_length(s, msg.length);
        return detail::add_sequence_of(m, std::move(s), std::move(track));
    });
}

void KVManager::export_sequence(SeqId seq, Connection& to) const {
    const char* op = "export_sequence";
    const ManagerState& m = *state_;
    detail::UcxConnection& c = detail::TransferAccess::of(to, op);
    c.check_open(op);
    {
        Lock l(m);
        if (!m.seqs.find(seq))
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: unknown sequence {}", op, seq));
    }
    // The peer's answer is awaited from the start: a refusal (a wrong shape) stops the sends.
    std::array<uint8_t, kReplyBytes> answer{};
    detail::UcxOp answered;
    c.post_receive(answered, answer.data(), answer.size(), true);
    // If this call ends early (an exception), the answer's receive is cancelled: its callback
    // must not outlive `answered`, and the stream is out of step.
    struct AnswerGuard {
        detail::UcxConnection& c;
        detail::UcxOp& op;
        ~AnswerGuard() {
            if (!op.request) return;
            detail::UcxOp* ops[] = {&op};
            c.settle_pending(ops);
        }
    } guard{c, answered};

    std::vector<uint8_t> head, staged;
    std::vector<std::span<const uint8_t>> runs;
    std::vector<ucp_mem_h> regions;
    std::vector<detail::UcxOp> sent;
    bool stopped = false;
    auto send_all = [&] {
        sent.resize(1 + runs.size());
        c.post_send(sent[0], head.data(), head.size());
        for (size_t i = 0; i < runs.size(); ++i)
            c.post_send(sent[i + 1], runs[i].data(), runs[i].size(),
                        regions.empty() ? nullptr : regions[i]);
        std::vector<detail::UcxOp*> ops;
        for (auto& o : sent)
            ops.push_back(&o);
        stopped = !c.wait(ops, op, &answered);
    };
    {
        std::optional<Lock> l(std::in_place, m);
        host_memory_guard(op, [&] {
            std::vector<uint32_t> blocks;
            SequenceMessage msg = describe(m, seq, blocks, op);
            // Straight from the pool's memory where the host maps it: registered with UCX and
            // sent while the call lock keeps the pages as they are; else a staged copy.
            if (!blocks.empty()) runs = detail::mapped_pages(*m.ps, blocks);
            const bool direct = !runs.empty();
            if (!direct && !blocks.empty()) {
                staged = detail::read_pages(*m.ps, blocks);
                runs.emplace_back(staged);
            }
            head = head_of(msg, runs);
            if (direct) {
                for (const auto& r : runs)
                    regions.push_back(c.map(r.data(), r.size()));
                try {
                    send_all();
                } catch (...) {
                    for (ucp_mem_h h : regions)
                        c.unmap(h);
                    throw;
                }
                for (ucp_mem_h h : regions)
                    c.unmap(h);
            }
        });
        l.reset();
        if (sent.empty()) send_all();  // the staged copy, without holding the pool
    }
    for (const auto& o : sent)
        if (o.status != UCS_OK && !stopped) {
            c.failed = true;
            c.failure = o.status;
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: sending failed: {}", op, ucs_status_string(o.status)));
        }
    detail::UcxOp* wait_answer[] = {&answered};
    c.wait(wait_answer, op);
    if (answered.status != UCS_OK) {
        c.failed = true;
        c.failure = answered.status;
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: the peer closed before confirming the import: {}", op,
                                ucs_status_string(answered.status)));
    }
    if (stopped) c.failed = true;  // sends cut short: the stream is out of step
    uint32_t code = 0, length = 0;
    std::memcpy(&code, answer.data(), 4);
    std::memcpy(&length, answer.data() + 4, 4);
    if (code == 0) return;
    const std::string text(reinterpret_cast<const char*>(answer.data()) + 8,
                           std::min(length, kMaxReplyText));
    --code;
    const ErrorCode e =
        code <= uint32_t(ErrorCode::OutOfMemory) ? ErrorCode(code) : ErrorCode::InvalidArgument;
    throw Error(e, fmt::format("{}: the peer refused the sequence: {}", op, text));
}

SeqId KVManager::import_sequence(Connection& from) {
    const char* op = "import_sequence";
    detail::UcxConnection& c = detail::TransferAccess::of(from, op);
    c.check_open(op);
    state_->ps->refuse_hybrid(op);
    const PageFormat format = state_->ps->format;
    const uint64_t num_blocks = state_->ps->config.num_blocks;
    // The connection's inbox keeps its memory from one message to the next.
    std::vector<uint8_t>& message = c.inbox;
    message.resize(detail::kSequenceHeaderBytes);
    size_t got = c.receive(message.data(), message.size(), op);
    if (got < message.size()) {
        c.failed = true;
        throw closed_midway(op, got, message.size(), c);
    }
    uint64_t total = 0;
    try {
        total = detail::check_sequence_header(message, format, num_blocks, op);
        host_memory_guard(op, [&] { message.resize(total); });
    } catch (const Error& e) {
        // The rest of the message is not read: the stream is out of step from here on.
        reply(c, code_of(e), e.what());
        c.failed = true;
        throw;
    }
    got += c.receive(message.data() + got, total - got, op);
    if (got < total) {
        c.failed = true;
        throw closed_midway(op, got, total, c);
    }
    SeqId id = 0;
    try {
        id = import_sequence(std::as_bytes(std::span(message)));
    } catch (const Error& e) {
        reply(c, code_of(e), e.what());
        throw;
    }
    reply(c, 0, {});
    return id;
}

}  // namespace pagedkv
