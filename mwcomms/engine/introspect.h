/*
 * mwcommsd's introspection (mwcomms/include/mwcomms/introspect.h, for mwctl): the counters the
 * engine keeps for it, the socket table snapshot and the live trace. Private to
 * mwcomms/engine/.
 *
 * front.c calls the fe_is_* hooks below at the few places where the engine sends or takes a
 * message, moves bytes, answers a call or makes a socket. Each hook counts, then traces only
 * when a tracer is connected (one load and a branch otherwise). Everything runs in the loop's
 * thread, like the engine itself; mwfe_destroy() frees the state (fe_is_free).
 *
 * A tracer is a control connection that asked MWL_TRACE: from then on the engine writes one
 * packet per record to it with MSG_DONTWAIT, never waiting; a record that does not fit in its
 * socket buffer is counted as dropped and the count travels in the next record. A record
 * copies what the engine sent or took (the INS's bytes before any check: a violation shows
 * up in the trace).
 */
#ifndef MWCOMMS_FE_INTROSPECT_H
#define MWCOMMS_FE_INTROSPECT_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "mwcomms/introspect.h"
#include "fe_priv.h"

#define FE_IS_TRACERS 4            /* tracers at once */

struct fe_is_tracer {
    struct fe_client *c;           /* NULL: free */
    uint32_t snaplen;
    uint32_t kinds;                /* mask of 1 << MWL_TR_* */
    uint32_t seq;                  /* records sent */
    uint32_t dropped;              /* since the last record that got through */
};

struct fe_is_sock {                /* per socket table index; valid while gen matches */
    uint32_t gen;
    int32_t pid;
    uint64_t bytes_tx, bytes_rx;
    uint64_t created_ns;
    struct mw_sockaddr local;      /* accepted: the listener's address */
};

struct fe_is {
    uint64_t started_ns, attached_ns;
    uint64_t notifies, wakeups;
    uint64_t calls_by_op[MWL_INFO_OPS];
    uint64_t ins_by_cmd[MWL_INFO_CMDS];
    struct mwl_errno_count errors[MWL_INFO_ERRNOS];      /* local answers */
    uint32_t nerrnos;
    uint64_t errors_other;
    struct mwl_errno_count ins_errors[MWL_INFO_ERRNOS];  /* INS responses */
    uint32_t nins_errnos;
    uint64_t ins_errors_other;
    uint64_t trace_records, trace_dropped;
    int ntracers;
    struct fe_is_tracer tracers[FE_IS_TRACERS];
    struct fe_is_sock *socks;      /* cfg.max_sockets entries, by fe_sock.idx */
    uint32_t nsocks;
};

/** The state, made on first use. @return NULL when out of memory (hooks then do nothing) */
struct fe_is *fe_is_get(struct mwfe *e);
/** Free the state (mwfe_destroy). Accepts an engine without one. */
void fe_is_free(struct mwfe *e);

/**
 * Serve an introspection op (MWL_INFO, MWL_SOCKETS, MWL_TRACE) of client `c`: answers it.
 * @param body, blen  the request's body
 */
void fe_is_serve(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                 const uint8_t *body, size_t blen);
/** A client goes away: stop tracing to it. */
void fe_is_client_gone(struct mwfe *e, struct fe_client *c);

/* ---- hooks of front.c ---------------------------------------------------------------------- */

/** A local call answered with `ret`. */
void fe_is_call(struct mwfe *e, uint16_t lop, int32_t ret);
/** A socket was made for process `pid` (SOCKET). */
void fe_is_sock_new(struct mwfe *e, const struct fe_sock *sk, int32_t pid);
/** A socket was made to receive a connection of listener `l` (a pre-posted ACCEPT). */
void fe_is_sock_accepting(struct mwfe *e, const struct fe_sock *sk, const struct fe_sock *l);
/** The INS connection was attached. */
void fe_is_attached(struct mwfe *e);

void fe_is_trace_slot(struct mwfe *e, int kind, const void *slot, const struct fe_sock *sk,
                      int32_t pid);
void fe_is_trace_event(struct mwfe *e, int kind, uint32_t sock, uint16_t type, uint64_t arg);
void fe_is_trace_data(struct mwfe *e, int kind, const struct fe_sock *sk, const struct iovec *iov,
                      int niov, uint32_t len, const struct mw_sockaddr *addr);
void fe_is_count_data(struct mwfe *e, int kind, const struct fe_sock *sk, uint32_t len);
void fe_is_ins_error(struct mwfe *e, int32_t ret);

static inline int fe_is_tracing(const struct mwfe *e)
{
    return e->is && e->is->ntracers > 0;
}

/* The process a request is for: its caller's (a call without socket, e.g. GETADDRINFO, is
 * still someone's), 0 when the engine made it by itself or the caller left. */
static inline int32_t fe_is_op_pid(const struct fe_op *op)
{
    return op->client ? (int32_t)op->client->pid : 0;
}

/** A request went into the command ring (op->req, its id set). */
static inline void fe_is_req(struct mwfe *e, const struct fe_op *op)
{
    if (e->is && op->req.cmd < MWL_INFO_CMDS)
        e->is->ins_by_cmd[op->req.cmd]++;
    if (fe_is_tracing(e))
        fe_is_trace_slot(e, MWL_TR_REQ, &op->req, op->sk, fe_is_op_pid(op));
}

/** A response to `op` was taken from the command ring (a copy, not checked yet). */
static inline void fe_is_rsp(struct mwfe *e, const struct mw_rsp *rsp, const struct fe_op *op)
{
    if (rsp->ret < 0)
        fe_is_ins_error(e, rsp->ret);
    if (fe_is_tracing(e))
        fe_is_trace_slot(e, MWL_TR_RSP, rsp, op->sk, fe_is_op_pid(op));
}

/** An event was put in fq (MWL_TR_EV_TX) or taken from bq (MWL_TR_EV_RX, not checked yet). */
static inline void fe_is_event(struct mwfe *e, int kind, uint32_t sock, uint16_t type, uint64_t arg)
{
    if (fe_is_tracing(e))
        fe_is_trace_event(e, kind, sock, type, arg);
}

/** The event channel was notified (to the INS) / woke us (from it). */
static inline void fe_is_notify(struct mwfe *e)
{
    if (e->is)
        e->is->notifies++;
}

static inline void fe_is_wakeup(struct mwfe *e)
{
    if (e->is)
        e->is->wakeups++;
}

/**
 * Stream bytes moved: `n` bytes that end at the ring's private index (tx: just read from P
 * into the ring; rx: just written from the ring to P).
 */
static inline void fe_is_ring_data(struct mwfe *e, int kind, const struct fe_sock *sk,
                                   const struct mw_bring *r, uint32_t n)
{
    fe_is_count_data(e, kind, sk, n);
    if (fe_is_tracing(e)) {
        uint32_t mask = r->size - 1, start = (r->pvt - n) & mask;
        uint32_t first = n < r->size - start ? n : r->size - start;
        struct iovec iov[2] = { { r->buf + start, first }, { r->buf, n - first } };

        fe_is_trace_data(e, kind, sk, iov, n > first ? 2 : 1, n, NULL);
    }
}

/** A datagram moved: payload in `iov`, `len` bytes, `addr` its destination / source. */
static inline void fe_is_dgram(struct mwfe *e, int kind, const struct fe_sock *sk,
                               const struct iovec *iov, int niov, uint32_t len,
                               const struct mw_sockaddr *addr)
{
    fe_is_count_data(e, kind, sk, len);
    if (fe_is_tracing(e))
        fe_is_trace_data(e, kind, sk, iov, niov, len, addr);
}

#endif /* MWCOMMS_FE_INTROSPECT_H */
