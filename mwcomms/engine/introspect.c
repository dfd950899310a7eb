/*
 * mwcommsd's introspection: the MWL_INFO, MWL_SOCKETS and MWL_TRACE ops of
 * mwcomms/include/mwcomms/introspect.h and the counters behind them. See introspect.h (this
 * folder) for how front.c feeds it. Runs in the loop's thread only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sockios.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "introspect.h"

#define FE_IS_SNDBUF (4 << 20)     /* a tracer's socket buffer: bursts of records fit */

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct fe_is *fe_is_get(struct mwfe *e)
{
    struct fe_is *is = e->is;

    if (is)
        return is;
    is = calloc(1, sizeof(*is));
    if (!is)
        return NULL;
    is->socks = calloc(e->cfg.max_sockets, sizeof(*is->socks));
    if (!is->socks) {
        free(is);
        return NULL;
    }
    is->nsocks = e->cfg.max_sockets;
    is->started_ns = now_ns();
    e->is = is;
    return is;
}

void fe_is_free(struct mwfe *e)
{
    if (!e->is)
        return;
    free(e->is->socks);
    free(e->is);
    e->is = NULL;
}

/* ---- counters -------------------------------------------------------------------------------- */

/* Count one error in a table of the first MWL_INFO_ERRNOS distinct errnos. */
static void count_errno(struct mwl_errno_count *tab, uint32_t *n, uint64_t *other, int32_t err)
{
    uint32_t i;

    for (i = 0; i < *n; i++)
        if (tab[i].err == err)
            break;
    if (i == *n) {
        if (i == MWL_INFO_ERRNOS) {
            (*other)++;
            return;
        }
        tab[i].err = err;
        (*n)++;
    }
    tab[i].count++;
}

void fe_is_call(struct mwfe *e, uint16_t lop, int32_t ret)
{
    struct fe_is *is = fe_is_get(e);

    if (!is)
        return;
    if (lop < MWL_INFO_OPS)
        is->calls_by_op[lop]++;
    if (ret < 0)
        count_errno(is->errors, &is->nerrnos, &is->errors_other, ret);
}

void fe_is_ins_error(struct mwfe *e, int32_t ret)
{
    struct fe_is *is = e->is;

    /* ret is the INS's, not checked yet: only counted, in a bounded table */
    if (is)
        count_errno(is->ins_errors, &is->nins_errnos, &is->ins_errors_other, ret);
}

/* The per-socket record of `sk`, reset when its index was given a new generation. */
static struct fe_is_sock *is_sock(struct mwfe *e, const struct fe_sock *sk)
{
    struct fe_is *is = fe_is_get(e);
    struct fe_is_sock *s;

    if (!is || sk->idx >= is->nsocks)
        return NULL;
    s = &is->socks[sk->idx];
    if (s->gen != sk->gen) {
        memset(s, 0, sizeof(*s));
        s->gen = sk->gen;
    }
    return s;
}

void fe_is_sock_new(struct mwfe *e, const struct fe_sock *sk, int32_t pid)
{
    struct fe_is_sock *s = is_sock(e, sk);

    if (!s)
        return;
    s->pid = pid;
    s->created_ns = now_ns();
}

static int32_t sock_pid(struct mwfe *e, const struct fe_sock *sk)
{
    struct fe_is_sock *s = is_sock(e, sk);

    return s ? s->pid : 0;
}

void fe_is_sock_accepting(struct mwfe *e, const struct fe_sock *sk, const struct fe_sock *l)
{
    struct fe_is_sock *s = is_sock(e, sk);

    if (!s)
        return;
    s->pid = sock_pid(e, l);
    s->local = l->local;
    s->created_ns = now_ns();
}

void fe_is_attached(struct mwfe *e)
{
    struct fe_is *is = fe_is_get(e);

    if (is)
        is->attached_ns = now_ns();
}

void fe_is_count_data(struct mwfe *e, int kind, const struct fe_sock *sk, uint32_t len)
{
    struct fe_is_sock *s = is_sock(e, sk);

    if (!s)
        return;
    if (kind == MWL_TR_DATA_TX)
        s->bytes_tx += len;
    else
        s->bytes_rx += len;
}

/* ---- the trace ------------------------------------------------------------------------------- */

/* Hand one record to every tracer that wants its kind; never waits. */
static void trace_emit(struct mwfe *e, struct mwl_trace_rec *rec, const void *fixed, size_t flen,
                       const struct iovec *data, int ndata)
{
    struct fe_is *is = e->is;
    struct mwl_hdr h = { .op = MWL_TRACE };
    struct iovec iov[5];
    struct msghdr mh = { .msg_iov = iov };

    rec->ns = now_ns();
    for (int t = 0; t < FE_IS_TRACERS; t++) {
        struct fe_is_tracer *tr = &is->tracers[t];
        size_t room, total;
        int n = 0;

        if (!tr->c || !(tr->kinds & (1u << rec->kind)))
            continue;
        rec->dropped = tr->dropped;
        rec->flags = 0;
        iov[n++] = (struct iovec){ &h, sizeof(h) };
        iov[n++] = (struct iovec){ rec, sizeof(*rec) };
        if (flen)
            iov[n++] = (struct iovec){ (void *)fixed, flen };
        total = sizeof(h) + sizeof(*rec) + flen;
        room = tr->snaplen;
        for (int i = 0; i < ndata && room > 0 && n < (int)(sizeof(iov) / sizeof(iov[0])); i++) {
            size_t take = data[i].iov_len < room ? data[i].iov_len : room;

            if (take) {
                iov[n++] = (struct iovec){ data[i].iov_base, take };
                total += take;
                room -= take;
            }
        }
        if (ndata && total - sizeof(h) - sizeof(*rec) - flen < rec->len)
            rec->flags |= MWL_TRF_TRUNC;
        h.len = (uint32_t)total;
        h.seq = tr->seq;
        mh.msg_iovlen = (size_t)n;
        if (sendmsg(tr->c->src.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                tr->dropped++;
                is->trace_dropped++;
            } else {
                tr->c = NULL;      /* gone: its HUP drops the client */
                is->ntracers--;
            }
            continue;
        }
        tr->seq++;
        tr->dropped = 0;
        is->trace_records++;
    }
}

static void rec_about(struct mwfe *e, struct mwl_trace_rec *rec, const struct fe_sock *sk)
{
    if (!sk)
        return;
    rec->handle = (uint64_t)sk->gen << 32 | sk->idx;
    rec->pid = sock_pid(e, sk);
    if (sk->has_slot)
        rec->slot = sk->slot;
}

void fe_is_trace_slot(struct mwfe *e, int kind, const void *slot, const struct fe_sock *sk,
                      int32_t pid)
{
    struct mwl_trace_rec rec = { .kind = (uint16_t)kind, .slot = ~0u, .len = MW_CMD_SLOT_SIZE };

    rec_about(e, &rec, sk);
    if (!rec.pid)
        rec.pid = pid;
    trace_emit(e, &rec, slot, MW_CMD_SLOT_SIZE, NULL, 0);
}

void fe_is_trace_event(struct mwfe *e, int kind, uint32_t sock, uint16_t type, uint64_t arg)
{
    struct mw_event ev = { .sock = sock, .type = type, .arg = arg };
    struct mwl_trace_rec rec = { .kind = (uint16_t)kind, .slot = sock,
                                 .len = sizeof(ev) };

    if (kind == MWL_TR_EV_TX && (!e->attached || e->broken))
        return;                    /* post_event put nothing: no INS to send it to */
    /* sock comes from the INS unchecked when kind is EV_RX: look it up only in range */
    if (e->attached && e->by_slot && sock < e->area.nsocks)
        rec_about(e, &rec, e->by_slot[sock]);
    rec.slot = sock;
    trace_emit(e, &rec, &ev, sizeof(ev), NULL, 0);
}

void fe_is_trace_data(struct mwfe *e, int kind, const struct fe_sock *sk, const struct iovec *iov,
                      int niov, uint32_t len, const struct mw_sockaddr *addr)
{
    struct mwl_trace_rec rec = { .kind = (uint16_t)kind, .slot = ~0u, .len = len };
    struct mw_sockaddr none;

    memset(&none, 0, sizeof(none));
    rec_about(e, &rec, sk);
    trace_emit(e, &rec, addr ? addr : &none, sizeof(none), iov, niov);
}

/* ---- answers --------------------------------------------------------------------------------- */

static void answer(struct fe_client *c, const struct mwl_hdr *q, int32_t ret, const void *body,
                   size_t blen, const void *extra, size_t elen)
{
    struct mwl_hdr h = { .len = (uint32_t)(sizeof(h) + blen + elen), .op = q->op,
                         .seq = q->seq, .ret = ret };
    struct iovec iov[3] = { { &h, sizeof(h) }, { (void *)body, blen }, { (void *)extra, elen } };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 3 };

    /* A client that cannot take its answer is dropped by the loop when it hangs up. */
    (void)sendmsg(c->src.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* uid 0 and mwcommsd's own uid see everything. */
static int privileged(const struct fe_client *c)
{
    return c->uid == 0 || c->uid == geteuid();
}

/* Records between our index and the INS's, the INS's read once now (capped). */
static uint32_t evq_used(const struct mw_evq *q)
{
    uint32_t peer = __atomic_load_n(q->peer_idx, __ATOMIC_RELAXED);
    uint32_t used = q->producer ? q->pvt - peer : peer - q->pvt;

    return used > q->len ? q->len : used;
}

static void serve_info(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h)
{
    struct fe_is *is = e->is;
    struct mwl_info *in = calloc(1, sizeof(*in));
    struct mwfe_stats st;

    if (!in)
        return answer(c, h, -ENOMEM, NULL, 0, NULL, 0);
    in->version = MWL_VERSION;
    in->link = mwfe_link(e, in->why, sizeof(in->why));
    in->features = e->attached && !e->broken ? e->features | MWL_FEAT_INS_UP : 0;
    in->pid = (uint32_t)getpid();
    in->now_ns = now_ns();
    in->started_ns = is->started_ns;
    in->attached_ns = is->attached_ns;
    if (e->attached) {
        in->port = e->port;
        in->cmd_slots = e->cmd->nslots;
        in->cmd_outstanding = e->cmd->outstanding;
        in->fq_len = e->fq.len;
        in->fq_used = evq_used(&e->fq);
        in->bq_len = e->bq.len;
        in->bq_used = evq_used(&e->bq);
        in->sock_slots = e->area.nsocks;
        in->slots_used = e->area.nsocks - e->nfree_slots;
        in->data_pages = e->buddy.npages;
        in->data_free = e->buddy.free_pages;
    }
    for (struct fe_op *op = e->q_head; op; op = op->qnext)
        in->cmd_queued++;
    in->clients = e->nclients;
    in->zombies = e->nzombies;
    in->sockets = e->cfg.max_sockets - e->nfree_idx;
    in->tracers = (uint32_t)is->ntracers;
    in->notifies = is->notifies;
    in->wakeups = is->wakeups;
    in->trace_records = is->trace_records;
    in->trace_dropped = is->trace_dropped;
    mwfe_stats(e, &st);
    in->sockets_total = st.sockets_total;
    in->bytes_tx = st.bytes_tx;
    in->bytes_rx = st.bytes_rx;
    in->calls = st.calls;
    in->call_errors = st.call_errors;
    in->clients_dropped = st.clients_dropped;
    in->ins_requests = st.ins_requests;
    in->attaches = st.attaches;
    in->violations = st.violations;
    in->dgrams_dropped = st.dgrams_dropped;
    memcpy(in->calls_by_op, is->calls_by_op, sizeof(in->calls_by_op));
    memcpy(in->ins_by_cmd, is->ins_by_cmd, sizeof(in->ins_by_cmd));
    in->errors_other = is->errors_other;
    in->nerrnos = is->nerrnos;
    memcpy(in->errors, is->errors, sizeof(in->errors));
    in->ins_errors_other = is->ins_errors_other;
    in->nins_errnos = is->nins_errnos;
    memcpy(in->ins_errors, is->ins_errors, sizeof(in->ins_errors));
    answer(c, h, 0, in, sizeof(*in), NULL, 0);
    free(in);
}

static uint32_t sk_state(const struct fe_sock *sk)
{
    switch (sk->state) {
    case SK_OPENING: return MWL_SK_OPENING;
    case SK_OPEN: return MWL_SK_OPEN;
    case SK_CONNECTING: return MWL_SK_CONNECTING;
    case SK_CONNECTED: return MWL_SK_CONNECTED;
    case SK_LISTENING: return MWL_SK_LISTENING;
    case SK_QUEUED: return MWL_SK_QUEUED;
    case SK_CLOSING: return MWL_SK_CLOSING;
    default: return MWL_SK_ENDED;
    }
}

/* Bytes between our index and the INS's, the INS's read once now (hostile: capped). */
static uint32_t ring_used(const struct mw_bring *r)
{
    uint32_t peer = __atomic_load_n(r->peer_idx, __ATOMIC_RELAXED);
    uint32_t used = r->producer ? r->pvt - peer : peer - r->pvt;

    return used > r->size ? r->size : used;
}

static void sock_info(struct mwfe *e, const struct fe_sock *sk, struct mwl_sockinfo *si)
{
    struct fe_is_sock *s = is_sock(e, sk);
    int n;

    memset(si, 0, sizeof(*si));
    si->handle = (uint64_t)sk->gen << 32 | sk->idx;
    si->uid = (uint32_t)sk->uid;
    si->x_ino = (uint64_t)sk->x_ino;
    si->family = sk->family;
    si->type = sk->type;
    si->protocol = sk->protocol;
    si->state = sk_state(sk);
    si->flags = (sk->p_eof ? MWL_SKF_P_EOF : 0) | (sk->p_hup ? MWL_SKF_P_HUP : 0) |
                (sk->rx_done ? MWL_SKF_RX_DONE : 0) | (sk->shut_wr_sent ? MWL_SKF_SHUT_WR : 0) |
                (sk->lost ? MWL_SKF_LOST : 0) | (sk->tx_wait ? MWL_SKF_TX_WAIT : 0) |
                (sk->rx_wait ? MWL_SKF_RX_WAIT : 0) |
                (sk->state == SK_OPENING && sk->listener ? MWL_SKF_PREACCEPT : 0);
    si->slot = sk->has_slot ? sk->slot : ~0u;
    si->error = sk->error;
    if (sk->live && e->attached) {
        si->tx_size = sk->tx.size;
        si->tx_used = ring_used(&sk->tx);
        si->rx_size = sk->rx.size;
        si->rx_used = ring_used(&sk->rx);
    }
    if (sk->src.fd >= 0) {
        if (ioctl(sk->src.fd, SIOCINQ, &n) == 0 && n > 0)
            si->p_inq = (uint32_t)n;
        if (ioctl(sk->src.fd, SIOCOUTQ, &n) == 0 && n > 0)
            si->p_outq = (uint32_t)n;
    }
    si->queued = (uint32_t)sk->queued;
    si->accepts = (uint32_t)sk->accepts_pending;
    si->local = sk->local;
    if (s) {
        si->pid = s->pid;
        si->bytes_tx = s->bytes_tx;
        si->bytes_rx = s->bytes_rx;
        si->created_ns = s->created_ns;
        if (!si->local.family)
            si->local = s->local;
    }
    si->peer = sk->peer;
}

static void serve_sockets(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                          const struct mwl_req_sockets *q)
{
    const uint32_t room = (MWL_MSG_MAX - sizeof(struct mwl_hdr) - sizeof(struct mwl_rsp_sockets)) /
                          sizeof(struct mwl_sockinfo);
    struct mwl_sockinfo *si = calloc(room, sizeof(*si));
    struct mwl_rsp_sockets r = { 0, 0 };
    int all = privileged(c);
    uint32_t i;

    if (!si)
        return answer(c, h, -ENOMEM, NULL, 0, NULL, 0);
    for (i = q->start; i < e->cfg.max_sockets; i++) {
        const struct fe_sock *sk = e->socks[i];

        if (!sk || (!all && sk->uid != c->uid))
            continue;
        if (r.count == room) {
            r.next = i;
            break;
        }
        sock_info(e, sk, &si[r.count++]);
    }
    answer(c, h, 0, &r, sizeof(r), si, r.count * sizeof(*si));
    free(si);
}

static void serve_trace(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                        const struct mwl_req_trace *q)
{
    struct fe_is *is = e->is;
    struct fe_is_tracer *tr = NULL;
    int sndbuf = FE_IS_SNDBUF;

    if (!privileged(c))
        return answer(c, h, -EPERM, NULL, 0, NULL, 0);
    if (q->snaplen > MWL_TRACE_SNAP_MAX)
        return answer(c, h, -EINVAL, NULL, 0, NULL, 0);
    for (int t = 0; t < FE_IS_TRACERS; t++) {
        if (is->tracers[t].c == c)
            return answer(c, h, -EALREADY, NULL, 0, NULL, 0);
        if (!is->tracers[t].c && !tr)
            tr = &is->tracers[t];
    }
    if (!tr)
        return answer(c, h, -EBUSY, NULL, 0, NULL, 0);
    /* Best effort: the kernel caps it at wmem_max (SO_SNDBUFFORCE for root). */
    if (setsockopt(c->src.fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        (void)setsockopt(c->src.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    answer(c, h, 0, NULL, 0, NULL, 0);
    *tr = (struct fe_is_tracer){ .c = c, .snaplen = q->snaplen,
                                 .kinds = q->kinds ? q->kinds : ~0u };
    is->ntracers++;
}

void fe_is_serve(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                 const uint8_t *body, size_t blen)
{
    if (!fe_is_get(e))
        return answer(c, h, -ENOMEM, NULL, 0, NULL, 0);
    switch (h->op) {
    case MWL_INFO:
        if (blen != 0)
            break;
        return serve_info(e, c, h);
    case MWL_SOCKETS: {
        struct mwl_req_sockets q;

        if (blen != sizeof(q))
            break;
        memcpy(&q, body, sizeof(q));
        return serve_sockets(e, c, h, &q);
    }
    case MWL_TRACE: {
        struct mwl_req_trace q;

        if (blen != sizeof(q))
            break;
        memcpy(&q, body, sizeof(q));
        return serve_trace(e, c, h, &q);
    }
    default:
        return answer(c, h, -EOPNOTSUPP, NULL, 0, NULL, 0);
    }
    answer(c, h, -EINVAL, NULL, 0, NULL, 0);
}

void fe_is_client_gone(struct mwfe *e, struct fe_client *c)
{
    struct fe_is *is = e->is;

    if (!is || !is->ntracers)
        return;
    for (int t = 0; t < FE_IS_TRACERS; t++)
        if (is->tracers[t].c == c) {
            is->tracers[t].c = NULL;
            is->ntracers--;
        }
}
