/*
 * mwcommsd's engine: one epoll loop over the control socket, the shim connections, every P
 * (mwcommsd's end of a forwarded socket's socketpair) and the INS's event channel. See
 * mwfront.h for the interface, docs/local-protocol.md for what the shims see and
 * docs/protocol.md for the rings.
 *
 * Layout of this file:
 *   helpers        epoll interest, stats, logging
 *   sockets        table, handles, zombies, rings and slots
 *   the INS        ops (requests) and their completion, violations, detach
 *   pumps          P <-> byte rings, with flow control both ways
 *   clients        the local protocol: one handler per op, each ending in one answer
 *   the loop       and the public functions
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mwcomms/fdlimit.h"
#include "mwcomms/spin.h"
#include "fe_priv.h"
#include "introspect.h"

#define FE_MAX_FDS_IN 4            /* control data room: more fds than this is malformed */
#define FE_PUMP_BUDGET (1u << 20)  /* bytes moved per socket per wake-up, for fairness */
#define FE_GAI_OOL_ORDER 1         /* 8 KiB: the largest GETADDRINFO answer is 7176 bytes */
#define FE_GNI_OOL_ORDER 0
#define FE_PROBE_MS 1000           /* kick an idle INS this often: a dead one is noticed */
#define FE_TRIM_Q 4096             /* freed rings remembered for the next sweep (rings_trim) */

#define ST_ADD(e, f, n) __atomic_add_fetch(&(e)->st.f, (n), __ATOMIC_RELAXED)
#define ST_SUB(e, f, n) __atomic_sub_fetch(&(e)->st.f, (n), __ATOMIC_RELAXED)

static void fe_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fe_log(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("mwcommsd engine: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* Make epoll watch `src` for `events` (0: still registered, so HUP and errors are seen). */
static void src_watch(struct mwfe *e, struct fe_src *src, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = src };

    if (src->fd < 0)
        return;
    if (src->in_epoll && src->events == events)
        return;
    if (epoll_ctl(e->ep, src->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, src->fd, &ev) == 0) {
        src->in_epoll = 1;
        src->events = events;
    }
}

static void src_unwatch(struct mwfe *e, struct fe_src *src)
{
    if (src->in_epoll && src->fd >= 0)
        epoll_ctl(e->ep, EPOLL_CTL_DEL, src->fd, NULL);
    src->in_epoll = 0;
    src->events = 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void violation(struct mwfe *e, const char *what, const char *why)
{
    if (e->broken)
        return;
    e->broken = 1;
    snprintf(e->why, sizeof(e->why), "%s: %s", what, why ? why : "protocol error");
    fe_log("INS protocol violation, detaching: %s", e->why);
    ST_ADD(e, violations, 1);
}

/* The INS is gone without a word (its domain died): detach as for a violation, with
 * -EPIPE as the link state, at the next safe point. */
static void ins_gone(struct mwfe *e, const char *why)
{
    if (e->broken)
        return;
    e->broken = 1;
    e->gone = 1;
    snprintf(e->why, sizeof(e->why), "%s", why);
    fe_log("%s, detaching", why);
}

static int ins_ok(const struct mwfe *e)
{
    return e->attached && !e->broken;
}

/* ---- sockets ------------------------------------------------------------------------------ */

static uint64_t sk_handle(const struct fe_sock *sk)
{
    return (uint64_t)sk->gen << 32 | sk->idx;
}

static struct fe_sock *sk_new(struct mwfe *e, uid_t uid, int family, int type, int protocol)
{
    struct fe_sock *sk;
    uint32_t idx;

    if (e->nfree_idx == 0)
        return NULL;
    sk = calloc(1, sizeof(*sk));
    if (!sk)
        return NULL;
    idx = e->free_idx[--e->nfree_idx];
    sk->idx = idx;
    /* a new generation each time the entry is used, from this instance's random base: a
     * handle given out by an earlier mwcommsd (programs outlive a restart) names nothing */
    sk->gen = e->gen_base + ++e->gens[idx];
    if (sk->gen == 0)              /* never a zero handle */
        sk->gen = e->gen_base + ++e->gens[idx];
    e->socks[idx] = sk;
    sk->src.kind = SRC_SOCK;
    sk->src.fd = -1;
    sk->x = sk->nb_x = -1;
    sk->uid = uid;
    sk->family = family;
    sk->type = type;
    sk->protocol = protocol;
    sk->state = SK_OPENING;
    ST_ADD(e, sockets, 1);
    ST_ADD(e, sockets_total, 1);
    return sk;
}

/* Forget a socket. Its memory goes to the graveyard, freed at the end of the loop's round:
 * an epoll event of the same round may still name it (it then finds src.fd == -1). */
static void sk_free(struct mwfe *e, struct fe_sock *sk)
{
    src_unwatch(e, &sk->src);
    close_fd(&sk->src.fd);
    close_fd(&sk->x);
    close_fd(&sk->nb_x);
    e->socks[sk->idx] = NULL;
    e->free_idx[e->nfree_idx++] = sk->idx;
    if (sk->accept_starved && e->nstarved)
        e->nstarved--;
    if (e->nstarved && !sk->preaccept)
        e->refill_due = 1;       /* it held an INS socket or fds: retry starved listeners */
    ST_SUB(e, sockets, 1);
    sk->znext = e->grave_sk;
    e->grave_sk = sk;
}

static int sk_is_entry(const struct mwfe *e, uint32_t idx)
{
    return e->socks[idx] != NULL;
}

static struct fe_sock *sk_lookup(struct mwfe *e, mwl_handle_t h, uid_t uid, int *err)
{
    uint32_t idx = (uint32_t)h, gen = (uint32_t)(h >> 32);
    struct fe_sock *sk;

    *err = -EBADF;
    if (idx >= e->cfg.max_sockets || !sk_is_entry(e, idx))
        return NULL;
    sk = e->socks[idx];
    if (sk->gen != gen || sk->uid != uid || sk->state == SK_OPENING || sk->state == SK_QUEUED)
        return NULL;
    *err = 0;
    return sk;
}

static void zombie_unlink(struct mwfe *e, struct fe_sock *sk)
{
    if (sk->zprev)
        sk->zprev->znext = sk->znext;
    else
        e->zhead = sk->znext;
    if (sk->znext)
        sk->znext->zprev = sk->zprev;
    else
        e->ztail = sk->zprev;
    sk->zprev = sk->znext = NULL;
    e->nzombies--;
}

/* A socket with no slot and no P: kept (in a bounded FIFO) so that STATUS can still report
 * how it ended, until the shim's CLOSE hint or eviction. */
static void sk_to_zombie(struct mwfe *e, struct fe_sock *sk)
{
    src_unwatch(e, &sk->src);
    close_fd(&sk->src.fd);
    close_fd(&sk->x);
    sk->state = SK_ZOMBIE;
    sk->live = 0;
    sk->zprev = e->ztail;
    if (e->ztail)
        e->ztail->znext = sk;
    else
        e->zhead = sk;
    e->ztail = sk;
    e->nzombies++;
    while (e->nzombies > e->cfg.max_zombies) {
        struct fe_sock *old = e->zhead;

        zombie_unlink(e, old);
        if (old->refs == 0)
            sk_free(e, old);
        else
            old->state = SK_CLOSING;   /* freed when its last op completes */
    }
}

/* One byte ring of 2^order bytes, or the largest smaller one down to MW_RING_ORDER_MIN that
 * the data area still has room for. @return its first page, or -ENOBUFS */
static int32_t ring_alloc(struct mwfe *e, uint8_t order, uint8_t *got)
{
    for (unsigned int o = order; o >= MW_RING_ORDER_MIN; o--) {
        int32_t page = fe_buddy_alloc(&e->buddy, o - MW_RING_ORDER_MIN);

        if (page >= 0) {
            *got = (uint8_t)o;
            return page;
        }
    }
    return -ENOBUFS;
}

/* Rate-limited log line about the data area, the socket slots or fds running short.
 * @param refused  0: sockets get smaller rings; 1: sockets are refused (each kind is logged
 *                 at most every 10 s) */
static void short_log(struct mwfe *e, int refused, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void short_log(struct mwfe *e, int refused, const char *fmt, ...)
{
    struct timespec ts;
    char line[200];
    va_list ap;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (e->short_logged[refused] && ts.tv_sec < e->short_logged[refused] + 10)
        return;
    e->short_logged[refused] = ts.tv_sec;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fe_log("%s (%u free pages, %u free slots; logged at most every 10 s)", line,
           e->buddy.free_pages, e->nfree_slots);
}

/*
 * The ring order a new socket gets when it asks for `order`. Pages are set aside so that every
 * other free slot can still get two 4 KiB rings (at most a quarter of the data area: a slot
 * that finds a free slot never gets ENOBUFS because of earlier sockets' rings); of the rest,
 * the "room", a socket gets `order` while at least 1/8 of it is free, half as much each time
 * the free part halves below that, down to MW_RING_ORDER_MIN, and never more than fits.
 * With 32768 slots and 256 KiB rings (order 18), a 512 MiB area gives 673 sockets 256 KiB
 * rings each way, ~475 more 128 to 8 KiB and ~16,500 more 4 KiB; a 1 GiB area 1366 sockets
 * 256 KiB, then rings for every slot.
 */
static uint8_t ring_order_for(const struct mwfe *e, uint8_t order)
{
    uint64_t total = e->buddy.npages, cap = total / 4, free = e->buddy.free_pages;
    uint64_t reserve = 2ull * (e->nfree_slots > 0 ? e->nfree_slots - 1 : 0);
    uint64_t reserve0 = 2ull * (e->area.nsocks - 1);
    uint64_t room, usable, need, scaled;

    if (reserve > cap)
        reserve = cap;
    if (reserve0 > cap)
        reserve0 = cap;
    room = free > reserve ? free - reserve : 0;
    usable = total - reserve0;
    need = 2ull << (order - MW_RING_ORDER_MIN);     /* pages of both rings */
    scaled = room * 8;
    while (order > MW_RING_ORDER_MIN && (scaled < usable || need > room)) {
        order--;
        need /= 2;
        scaled *= 2;
    }
    return order;
}

/* A slot and two rings for a new socket, of 2^order bytes while the data area has room
 * (ring_order_for), smaller ones otherwise: many sockets degrade gracefully instead of
 * failing. @return 0, -ENOBUFS (no slot free, or not even the smallest rings fit: as Linux
 * when out of buffer memory; logged) */
static int slot_alloc(struct mwfe *e, struct fe_sock *sk, uint8_t want)
{
    uint8_t order = ring_order_for(e, want), tx_order, rx_order;
    int32_t tx, rx;

    if (e->nfree_slots == 0) {
        short_log(e, 1, "no INS socket slot free: new sockets get ENOBUFS");
        return -ENOBUFS;
    }
    tx = ring_alloc(e, order, &tx_order);
    if (tx < 0)
        goto out_short;
    rx = ring_alloc(e, order, &rx_order);
    if (rx < 0) {
        fe_buddy_free(&e->buddy, (uint32_t)tx, tx_order - MW_RING_ORDER_MIN);
        goto out_short;
    }
    if (tx_order < want || rx_order < want)
        short_log(e, 0, "data area short: rings of %u/%u bytes instead of %u",
                  1u << tx_order, 1u << rx_order, 1u << want);
    sk->slot = e->free_slots[--e->nfree_slots];
    sk->has_slot = 1;
    e->by_slot[sk->slot] = sk;
    sk->tx_page = (uint32_t)tx;
    sk->rx_page = (uint32_t)rx;
    sk->tx_order = tx_order;
    sk->rx_order = rx_order;
    sk->has_rings = 1;
    mw_sock_reset(&e->area, sk->slot);
    return 0;
out_short:
    short_log(e, 1, "data area full: new sockets get ENOBUFS");
    return -ENOBUFS;
}

/* Pages of a ring that carried bytes go back to the system when it is idle or freed (on sim
 * the area is a shared file: MADV_REMOVE takes them out of both daemons' memory; they come
 * back zeroed when used again). Where the area cannot (Xen grants), the first failure turns
 * it off. */
static void ring_trim(struct mwfe *e, uint32_t page, uint8_t order)
{
    if (e->trim_off)
        return;
    if (madvise(e->area.data + (size_t)page * MW_PAGE_SIZE, (size_t)1 << order,
                MADV_REMOVE) < 0) {
        fe_log("rings keep their pages: madvise(MADV_REMOVE): %s", strerror(errno));
        e->trim_off = 1;
    }
}

/* A used ring being freed: its pages go back at the next sweep if it is still free then
 * (rings_trim). Not at once: a busy daemon reuses freed rings within milliseconds, and
 * removing pages costs a system call (~15 us on a disk-backed sim area) per ring. */
static void ring_trim_later(struct mwfe *e, uint32_t page, uint8_t order)
{
    if (e->trim_off || e->ntrim_q == FE_TRIM_Q)
        return;                  /* full: those pages stay until the ring is used again */
    e->trim_q[e->ntrim_q].page = page;
    e->trim_q[e->ntrim_q].order = order;
    e->ntrim_q++;
}

/* Rings about to be freed (the INS no longer touches them): give back what they used. */
static void rings_forget(struct mwfe *e, struct fe_sock *sk)
{
    if (sk->tx_used)
        ring_trim_later(e, sk->tx_page, sk->tx_order);
    if (sk->rx_used)
        ring_trim_later(e, sk->rx_page, sk->rx_order);
    sk->tx_used = sk->rx_used = sk->tx_hot = 0;
}

/* Give the slot and the rings back: only once the INS no longer touches them (the CLOSE
 * response, an error response to SOCKET/ACCEPT), or when the area itself is gone. */
static void slot_release(struct mwfe *e, struct fe_sock *sk)
{
    if (sk->has_slot && e->attached) {
        e->by_slot[sk->slot] = NULL;
        e->free_slots[e->nfree_slots++] = sk->slot;
    }
    if (sk->has_rings && e->attached) {
        rings_forget(e, sk);
        fe_buddy_free(&e->buddy, sk->tx_page, sk->tx_order - 12u);
        fe_buddy_free(&e->buddy, sk->rx_page, sk->rx_order - 12u);
        if (e->nstarved && !sk->preaccept)
            e->refill_due = 1;   /* a listener waits for room for its ACCEPTs */
    }
    sk->has_slot = sk->has_rings = sk->live = 0;
}

static int rings_open(struct mwfe *e, struct fe_sock *sk)
{
    int rc;

    rc = mw_bring_init(&sk->tx, &e->area, sk->slot, MW_SIDE_FRONT, MW_BRING_TX,
                       sk->tx_page * MW_PAGE_SIZE, sk->tx_order);
    if (rc == 0)
        rc = mw_bring_init(&sk->rx, &e->area, sk->slot, MW_SIDE_FRONT, MW_BRING_RX,
                           sk->rx_page * MW_PAGE_SIZE, sk->rx_order);
    if (rc == 0)
        sk->live = 1;
    return rc;
}

/* A socketpair for `sk`: P (non-blocking, ours) and X (the application's, blocking).
 * @return 0, -ENFILE (mwcommsd is out of fds: for the application that is a system-wide
 *         limit, not its own table being full), -errno of socketpair */
static int sk_make_pair(struct mwfe *e, struct fe_sock *sk)
{
    int sv[2];
    struct stat st;

    if (socketpair(AF_UNIX, (sk->type == SOCK_STREAM ? SOCK_STREAM : SOCK_SEQPACKET) |
                   SOCK_CLOEXEC, 0, sv) < 0) {
        if (errno != EMFILE && errno != ENFILE)
            return -errno;
        short_log(e, 1, "out of file descriptors (RLIMIT_NOFILE): new sockets get ENFILE");
        return -ENFILE;
    }
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0 || fstat(sv[1], &st) < 0) {
        int err = -errno;

        close(sv[0]);
        close(sv[1]);
        return err;
    }
    sk->src.fd = mw_fd_high(sv[0]);  /* the low fds stay for the daemon's Python side */
    sk->x = mw_fd_high(sv[1]);
    sk->x_dev = st.st_dev;
    sk->x_ino = st.st_ino;
    return 0;
}

/* ---- the INS: ops ------------------------------------------------------------------------- */

static struct fe_op *op_new(struct mwfe *e, int kind, struct fe_sock *sk)
{
    struct fe_op *op = calloc(1, sizeof(*op));

    if (!op)
        return NULL;
    op->kind = kind;
    op->sk = sk;
    op->ool_page = -1;
    if (sk)
        sk->refs++;
    op->next = e->ops;
    if (e->ops)
        e->ops->prev = op;
    e->ops = op;
    return op;
}

static void sk_put(struct mwfe *e, struct fe_sock *sk)
{
    if (sk && --sk->refs == 0 && sk->state == SK_CLOSING && !sk->has_slot && !sk->zprev &&
        e->zhead != sk)
        sk_free(e, sk);   /* an evicted zombie whose last op just finished */
}

static void op_free(struct mwfe *e, struct fe_op *op)
{
    if (op->ool_page >= 0 && e->attached)
        fe_buddy_free(&e->buddy, (uint32_t)op->ool_page, op->ool_order);
    if (op->prev)
        op->prev->next = op->next;
    else
        e->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    if (op->client && op->client->parked == op)
        op->client->parked = NULL;
    sk_put(e, op->sk);
    sk_put(e, op->newsk);
    free(op);
}

static int op_ool(struct mwfe *e, struct fe_op *op, unsigned int order)
{
    int32_t page = fe_buddy_alloc(&e->buddy, order);

    if (page < 0)
        return -ENOBUFS;
    op->ool_page = page;
    op->ool_order = (uint8_t)order;
    op->ool_len = MW_PAGE_SIZE << order;
    if (op->ool_len > MW_OOL_MAX)
        op->ool_len = MW_OOL_MAX;
    return 0;
}

static uint8_t *ool_ptr(struct mwfe *e, const struct fe_op *op)
{
    return e->area.data + (size_t)op->ool_page * MW_PAGE_SIZE;
}

/* Queue a built request; it goes into the ring now, or when a slot frees up. The request is
 * checked with the INS's own rules first: we never send what the INS would call a violation.
 * @return 0, -EINVAL (the request breaks a rule: the caller's values were bad) */
static int op_send(struct mwfe *e, struct fe_op *op)
{
    const char *why = NULL;

    if (mw_req_check(&op->req, &e->lim, &why) != 0) {
        fe_log("refusing to send %s: %s", mw_cmd_name(op->req.cmd), why ? why : "?");
        return -EINVAL;
    }
    op->qnext = NULL;
    if (e->q_tail)
        e->q_tail->qnext = op;
    else
        e->q_head = op;
    e->q_tail = op;
    ST_ADD(e, ins_requests, 1);
    return 0;
}

/* Move queued requests into the command ring while it has room, publish, kick. */
static void ins_flush(struct mwfe *e)
{
    int rc;

    while (ins_ok(e) && e->q_head) {
        struct fe_op *op = e->q_head;

        rc = mw_cmd_front_put_req(e->cmd, &op->req, (uint64_t)(uintptr_t)op);
        if (rc == -ENOSPC)
            break;
        if (rc < 0) {
            violation(e, "command ring", "put failed");
            return;
        }
        /* mw_cmd_front_put_req set op->req.id: the copy mw_rsp_match compares with */
        op->sent = 1;
        fe_is_req(e, op);
        e->q_head = op->qnext;
        if (!e->q_head)
            e->q_tail = NULL;
    }
    if (!ins_ok(e))
        return;
    rc = mw_cmd_front_push(e->cmd);
    if (rc < 0)
        violation(e, "command ring", "push");
    else if (rc > 0)
        e->kick = 1;
    rc = mw_evq_push(&e->fq);
    if (rc < 0)
        violation(e, "event queue fq", "push");
    else if (rc > 0)
        e->kick = 1;
    if (e->kick && ins_ok(e)) {
        rc = mw_evtchn_notify(e->ec, e->port);
        fe_is_notify(e);
        if (rc == -ENOTCONN)     /* sim: the INS's end died with it (its domain is gone) */
            ins_gone(e, "the INS's event channel end is closed: the INS is gone");
        else if (rc < 0)
            fe_log("event channel notify: %s", strerror(-rc));
        e->kick = 0;
    }
}

static void post_event(struct mwfe *e, struct fe_sock *sk, uint16_t type)
{
    if (ins_ok(e) && mw_evq_put(&e->fq, sk->slot, type, 0) < 0)
        violation(e, "event queue fq", "put");
    fe_is_event(e, MWL_TR_EV_TX, sk->slot, type, 0);
}

/* ---- answers to clients ------------------------------------------------------------------- */

static void client_drop(struct mwfe *e, struct fe_client *c, const char *why);

/* Send one answer (header, body parts, at most one fd) to a client. */
static void reply(struct mwfe *e, struct fe_client *c, uint32_t seq, uint16_t lop, int32_t ret,
                  const void *body, size_t blen, const void *extra, size_t elen, int fd)
{
    struct mwl_hdr h = { .len = (uint32_t)(sizeof(h) + blen + elen), .op = lop, .seq = seq,
                         .ret = ret };
    struct iovec iov[3] = { { &h, sizeof(h) }, { (void *)body, blen }, { (void *)extra, elen } };
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } cm;
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 3 };

    if (!c)
        return;
    ST_ADD(e, calls, 1);
    fe_is_call(e, lop, ret);
    if (ret < 0)
        ST_ADD(e, call_errors, 1);
    if (fd >= 0) {
        struct cmsghdr *cmsg;

        memset(&cm, 0, sizeof(cm));
        mh.msg_control = cm.buf;
        mh.msg_controllen = sizeof(cm.buf);
        cmsg = CMSG_FIRSTHDR(&mh);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    }
    if (sendmsg(c->src.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        client_drop(e, c, "cannot answer");
}

static void reply_err(struct mwfe *e, struct fe_client *c, uint32_t seq, uint16_t lop, int32_t ret)
{
    reply(e, c, seq, lop, ret, NULL, 0, NULL, 0, -1);
}

static void client_unpark(struct mwfe *e, struct fe_client *c)
{
    c->parked = NULL;
    src_watch(e, &c->src, EPOLLIN);
}

/* ---- pumps -------------------------------------------------------------------------------- */

static void sk_update_watch(struct mwfe *e, struct fe_sock *sk);
static void sk_begin_close(struct mwfe *e, struct fe_sock *sk);
static void sk_send_close(struct mwfe *e, struct fe_sock *sk);
static void sk_fail(struct mwfe *e, struct fe_sock *sk, int32_t err, int tell_ins);

/* DATA for tx. Also after the first bytes ever, whatever tx_prod_event says: an INS that
 * has not looked at a fresh ring yet leaves its event index at 0, which 0 -> n never passes
 * (the INS of this tree does so for a datagram socket until its first pump); an extra hint
 * costs nothing, a missing one stalls the socket. */
static void tx_posted(struct mwfe *e, struct fe_sock *sk)
{
    sk->tx_posted = 1;
    post_event(e, sk, MW_EV_DATA);
}

static int sk_may_tx(const struct fe_sock *sk)
{
    if (!sk->live || sk->p_eof || sk->src.fd < 0)
        return 0;
    if (sk->type == SOCK_STREAM)
        return sk->state == SK_CONNECTED || (sk->state == SK_QUEUED);
    return sk->state == SK_OPEN || sk->state == SK_CONNECTED;
}

static void stream_eof(struct mwfe *e, struct fe_sock *sk)
{
    struct fe_op *op;

    sk->p_eof = 1;
    if (sk->p_hup || sk->rx_done) {   /* both directions are over: the socket is done */
        sk_begin_close(e, sk);
        return;
    }
    if (sk->shut_wr_sent || !ins_ok(e))
        return;
    op = op_new(e, OP_SHUT_WR, sk);
    if (!op)
        return;
    mw_req_build_shutdown(&op->req, 0, sk->slot, SHUT_WR);
    if (op_send(e, op) < 0)
        op_free(e, op);
    else
        sk->shut_wr_sent = 1;
}

/* P -> tx, stream: read straight into the ring while it has room. */
static void pump_tx_stream(struct mwfe *e, struct fe_sock *sk)
{
    uint32_t moved = 0, space;

    while (sk_may_tx(sk) && moved < FE_PUMP_BUDGET) {
        int rc = mw_bring_space(&sk->tx);

        if (rc == 0) {
            rc = mw_bring_prepare_wait(&sk->tx, sk->tx.size / 4);
            if (rc == 1)
                continue;
            if (rc == 0) {
                sk->tx_wait = 1;
                return;
            }
        }
        if (rc < 0)
            goto out_proto;
        space = (uint32_t)rc;
        rc = mw_bring_read_fd(&sk->tx, sk->src.fd, space);
        if (rc > 0) {
            sk->tx_hot = 2;
            sk->tx_used = 1;
            moved += (uint32_t)rc;
            ST_ADD(e, bytes_tx, (uint64_t)rc);
            fe_is_ring_data(e, MWL_TR_DATA_TX, sk, &sk->tx, (uint32_t)rc);
            int pub = mw_bring_publish(&sk->tx);

            if (pub < 0)
                goto out_proto;
            if (pub > 0 || !sk->tx_posted)
                tx_posted(e, sk);
            /* A short read emptied P: epoll (level-triggered) says when there is more, so
             * no read that would only say EAGAIN. After HUP nothing is watched: read on to
             * the end of file. */
            if ((uint32_t)rc < space && !sk->p_hup)
                return;
            continue;
        }
        if (rc == -EAGAIN || rc == -ENOBUFS)
            return;
        if (rc == -EPROTO)
            goto out_proto;
        stream_eof(e, sk);   /* 0: end of file; an error on P reads as the end too */
        return;
    }
    return;
out_proto:
    violation(e, "tx ring", "index");
}

/* P -> tx, datagrams: one packet (struct mwl_dgram + payload) per record. */
static void pump_tx_dgram(struct mwfe *e, struct fe_sock *sk)
{
    unsigned int n = 0;

    while (sk_may_tx(sk) && n++ < 256) {
        struct mwl_dgram d;
        struct mw_dgram_hdr h;
        const char *why = NULL;
        ssize_t len = recv(sk->src.fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
        int rc;

        if (len < 0 && errno == EINTR)
            continue;
        if (len < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (len <= 0) {
            sk->p_eof = 1;
            if (sk->p_hup)
                sk_begin_close(e, sk);
            return;
        }
        if ((size_t)len >= sizeof(d) && (size_t)len - sizeof(d) <= MW_DGRAM_MAX &&
            MW_DGRAM_RECORD(len - sizeof(d)) <= sk->tx.size) {
            rc = mw_bring_space(&sk->tx);
            if (rc < 0)
                goto out_proto;
            if ((uint64_t)rc < MW_DGRAM_RECORD(len - sizeof(d))) {
                rc = mw_bring_prepare_wait(&sk->tx, (uint32_t)MW_DGRAM_RECORD(len - sizeof(d)));
                if (rc == 1) {
                    n--;
                    continue;
                }
                if (rc < 0)
                    goto out_proto;
                sk->tx_wait = 1;
                return;
            }
        }
        len = recv(sk->src.fd, e->scratch, MW_DGRAM_MAX + sizeof(d) + 8, MSG_DONTWAIT);
        if (len < 0)
            continue;
        if ((size_t)len < sizeof(d) || (size_t)len - sizeof(d) > MW_DGRAM_MAX)
            goto drop;
        memcpy(&d, e->scratch, sizeof(d));
        if (d.len != (size_t)len - sizeof(d) || d.flags != 0)
            goto drop;
        mw_dgram_build(&h, d.len, &d.addr);
        if (mw_dgram_check(&h, sk->tx.size, 0, &why) != 0 ||
            memcmp(&h.addr, &d.addr, sizeof(d.addr)) != 0)
            goto drop;
        if (d.addr.family == MW_AF_UNSPEC && sk->state != SK_CONNECTED)
            goto drop;   /* the shim answers EDESTADDRREQ itself */
        rc = mw_bring_dgram_put(&sk->tx, &h, e->scratch + sizeof(d));
        if (rc == -EPROTO)
            goto out_proto;
        if (rc < 0)
            goto drop;
        sk->tx_hot = 2;
        sk->tx_used = 1;
        ST_ADD(e, bytes_tx, d.len);
        fe_is_dgram(e, MWL_TR_DATA_TX, sk, &(struct iovec){ e->scratch + sizeof(d), d.len }, 1,
                    d.len, &d.addr);
        rc = mw_bring_publish(&sk->tx);
        if (rc < 0)
            goto out_proto;
        if (rc > 0 || !sk->tx_posted)
            tx_posted(e, sk);
        continue;
drop:
        ST_ADD(e, dgrams_dropped, 1);
    }
    return;
out_proto:
    violation(e, "tx ring", "index");
}

static void pump_tx(struct mwfe *e, struct fe_sock *sk)
{
    if (sk->close_wait) {        /* closing: CLOSE once the INS took every datagram */
        int space = mw_bring_space(&sk->tx);

        if (space < 0)
            violation(e, "tx ring", "index");
        else if ((uint32_t)space == sk->tx.size ||
                 mw_bring_prepare_wait(&sk->tx, sk->tx.size) != 0)
            sk_send_close(e, sk);
        return;
    }
    sk->tx_wait = 0;
    if (sk->type == SOCK_STREAM)
        pump_tx_stream(e, sk);
    else
        pump_tx_dgram(e, sk);
    if (sk->state != SK_ZOMBIE && sk->state != SK_CLOSING)
        sk_update_watch(e, sk);
}

/* The INS ended rx (after every byte was delivered to P). */
static void rx_end(struct mwfe *e, struct fe_sock *sk, int flags, int32_t err)
{
    sk->rx_done = 1;
    if (flags & MW_RXF_ERROR) {
        sk_fail(e, sk, err, 1);
        return;
    }
    shutdown(sk->src.fd, SHUT_WR);
    if (sk->p_eof)
        sk_begin_close(e, sk);
}

/* rx -> P, stream: write straight out of the ring while P takes bytes. */
static void pump_rx_stream(struct mwfe *e, struct fe_sock *sk)
{
    uint32_t moved = 0;

    while (sk->live && !sk->rx_done && moved < FE_PUMP_BUDGET) {
        int rc;

        if (sk->rx_discard) {
            rc = mw_bring_avail(&sk->rx);
            if (rc > 0)
                rc = mw_bring_consume(&sk->rx, (uint32_t)rc) == 0 ? rc : -EPROTO;
        } else {
            rc = mw_bring_write_fd(&sk->rx, sk->src.fd, FE_PUMP_BUDGET - moved);
        }
        if (rc > 0) {
            moved += (uint32_t)rc;
            sk->rx_used = 1;
            if (!sk->rx_discard) {
                ST_ADD(e, bytes_rx, (uint64_t)rc);
                fe_is_ring_data(e, MWL_TR_DATA_RX, sk, &sk->rx, (uint32_t)rc);
            }
            int rel = mw_bring_release(&sk->rx);

            if (rel < 0)
                goto out_proto;
            if (rel > 0)
                post_event(e, sk, MW_EV_SPACE);
            continue;
        }
        if (rc == 0) {          /* empty: the end of the stream, or wait for DATA */
            int32_t err = 0;
            int flags = mw_bring_rx_state(&sk->rx, &err);

            if (flags < 0)
                goto out_proto;
            if (flags) {
                if (mw_bring_avail(&sk->rx) > 0)
                    continue;   /* bytes published before the flag are still to go */
                rx_end(e, sk, flags, err);
                return;
            }
            rc = mw_bring_prepare_wait(&sk->rx, 1);
            if (rc == 1)
                continue;
            if (rc < 0)
                goto out_proto;
            return;
        }
        if (rc == -EAGAIN) {
            sk->rx_wait = 1;
            return;
        }
        if (rc == -EPROTO)
            goto out_proto;
        sk->rx_discard = 1;     /* EPIPE & co: the application no longer reads */
    }
    return;
out_proto:
    violation(e, "rx ring", "index or end of stream");
}

/* A pending datagram error (ICMP) to P: a struct mwl_dgram with MWL_DGRAM_F_ERROR and the
 * errno, no payload; the shim's next receive call fails with it.
 * @return 0 (sent, or P takes nothing any more), -EAGAIN (P is full: wait for EPOLLOUT) */
static int dgram_error_out(struct fe_sock *sk)
{
    struct mwl_dgram d;

    sk->err_pkt = 0;
    if (sk->rx_discard || sk->error == 0)
        return 0;
    memset(&d, 0, sizeof(d));
    d.flags = MWL_DGRAM_F_ERROR;
    d.len = (uint32_t)-sk->error;
    if (send(sk->src.fd, &d, sizeof(d), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            sk->err_pkt = 1;
            return -EAGAIN;
        }
        sk->rx_discard = 1;
    }
    return 0;
}

/* rx -> P, datagrams: a struct mwl_dgram then the payload, straight from the ring. */
static void pump_rx_dgram(struct mwfe *e, struct fe_sock *sk)
{
    unsigned int n = 0;

    if (sk->err_pkt && dgram_error_out(sk) == -EAGAIN) {
        sk->rx_wait = 1;
        return;
    }
    while (sk->live && n++ < 256) {
        struct mw_dgram_hdr h;
        struct mwl_dgram d;
        struct iovec iov[3];
        struct msghdr mh = { .msg_iov = iov };
        const char *why = NULL;
        int niov = 0, rc;

        rc = mw_bring_dgram_peek(&sk->rx, &h, iov + 1, &niov);
        if (rc == 0) {
            rc = mw_bring_prepare_wait(&sk->rx, 1);
            if (rc == 1) {
                n--;
                continue;
            }
            if (rc < 0)
                goto out_proto;
            return;
        }
        if (rc < 0)
            goto out_proto;
        if (mw_dgram_check(&h, sk->rx.size, 1, &why) != 0) {
            violation(e, "rx datagram", why);
            return;
        }
        if (!sk->rx_discard) {
            memset(&d, 0, sizeof(d));
            d.addr = h.addr;
            d.len = h.len;
            iov[0].iov_base = &d;
            iov[0].iov_len = sizeof(d);
            mh.msg_iovlen = (size_t)niov + 1;
            if (sendmsg(sk->src.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                    sk->rx_wait = 1;
                    return;
                }
                sk->rx_discard = 1;
            } else {
                ST_ADD(e, bytes_rx, h.len);
                fe_is_dgram(e, MWL_TR_DATA_RX, sk, iov + 1, niov, h.len, &h.addr);
            }
        }
        sk->rx_used = 1;
        mw_bring_dgram_skip(&sk->rx);
        rc = mw_bring_release(&sk->rx);
        if (rc < 0)
            goto out_proto;
        if (rc > 0)
            post_event(e, sk, MW_EV_SPACE);
    }
    return;
out_proto:
    violation(e, "rx ring", "datagram record");
}

static void pump_rx(struct mwfe *e, struct fe_sock *sk)
{
    if (!sk->live || sk->src.fd < 0)
        return;
    sk->rx_wait = 0;
    if (sk->type == SOCK_STREAM)
        pump_rx_stream(e, sk);
    else
        pump_rx_dgram(e, sk);
    if (sk->state != SK_ZOMBIE && sk->state != SK_CLOSING)
        sk_update_watch(e, sk);
}

static void sk_update_watch(struct mwfe *e, struct fe_sock *sk)
{
    uint32_t ev = 0;

    if (sk->src.fd < 0)
        return;
    if (sk->p_hup) {             /* draining after HUP: driven by SPACE events only */
        src_unwatch(e, &sk->src);
        return;
    }
    if (sk->state == SK_LISTENING)
        ev |= EPOLLIN;           /* bytes written to a listener are dropped */
    else if (sk_may_tx(sk) && !sk->tx_wait)
        ev |= EPOLLIN;
    if (sk->rx_wait)
        ev |= EPOLLOUT;
    src_watch(e, &sk->src, ev);
}

/* A socket just connected or accepted. A stream's P has nothing for the INS yet (the
 * application could not write before): epoll says when it has, instead of a read that would
 * only say EAGAIN. A datagram socket may have sent before connecting; after HUP nothing is
 * watched: those are pumped now. */
static void tx_start(struct mwfe *e, struct fe_sock *sk)
{
    if (sk->type == SOCK_STREAM && !sk->p_hup && !sk->p_eof)
        sk_update_watch(e, sk);
    else
        pump_tx(e, sk);
}

/* HUP (or an error) on P: every copy of X is closed. Move what P still holds into tx, then
 * CLOSE. */
static void sk_hup(struct mwfe *e, struct fe_sock *sk)
{
    sk->p_hup = 1;
    src_unwatch(e, &sk->src);
    if (sk_may_tx(sk)) {
        pump_tx(e, sk);       /* ends in sk_begin_close at end of file */
        return;
    }
    sk_begin_close(e, sk);
}

static void sk_close_queue(struct mwfe *e, struct fe_sock *l)
{
    while (l->aq_head) {
        struct fe_sock *n = l->aq_head;

        l->aq_head = n->aq_next;
        n->aq_next = NULL;
        n->listener = NULL;
        n->state = SK_CONNECTED;
        sk_begin_close(e, n);
        sk_put(e, l);
    }
    l->aq_tail = NULL;
    l->queued = 0;
}

/* The socket is done on this side: close P, CLOSE it in the INS, and keep it as a zombie. */
static void sk_begin_close(struct mwfe *e, struct fe_sock *sk)
{
    if (sk->state == SK_CLOSING || sk->state == SK_ZOMBIE)
        return;
    src_unwatch(e, &sk->src);
    close_fd(&sk->src.fd);
    close_fd(&sk->x);
    sk_close_queue(e, sk);
    sk->state = SK_CLOSING;
    if (sk->live && sk->type == SOCK_DGRAM && ins_ok(e)) {
        /* datagrams the application sent before closing are sent, as the kernel does: the
         * INS drops a datagram socket's tx at CLOSE, so wait until it took them all */
        int space = mw_bring_space(&sk->tx);

        if (space >= 0 && (uint32_t)space < sk->tx.size &&
            mw_bring_prepare_wait(&sk->tx, sk->tx.size) == 0) {
            sk->close_wait = 1;
            sk->tx_wait = 1;
            return;
        }
    }
    sk_send_close(e, sk);
}

/* CLOSE to the INS, or straight to a zombie when the INS is gone. */
static void sk_send_close(struct mwfe *e, struct fe_sock *sk)
{
    struct fe_op *op;

    sk->live = 0;
    sk->close_wait = 0;
    if (sk->has_slot && ins_ok(e)) {
        op = op_new(e, OP_CLOSE, sk);
        if (op) {
            mw_req_build_close(&op->req, 0, sk->slot);
            if (op_send(e, op) == 0)
                return;
            op_free(e, op);
        }
    }
    slot_release(e, sk);
    sk_to_zombie(e, sk);
}

/* The connection failed: remember the error (SO_ERROR / STATUS), end P so that the
 * application sees end of file and EPIPE, and close the INS socket. */
static void sk_fail(struct mwfe *e, struct fe_sock *sk, int32_t err, int tell_ins)
{
    sk->error = err;
    if (sk->src.fd >= 0)
        shutdown(sk->src.fd, SHUT_RDWR);
    if (!tell_ins)
        slot_release(e, sk);
    sk_begin_close(e, sk);
}

static void refill_accepts(struct mwfe *e, struct fe_sock *l)
{
    while (ins_ok(e) && l->state == SK_LISTENING &&
           l->accepts_pending + l->queued < l->accept_max) {
        struct fe_sock *n = sk_new(e, l->uid, l->family, l->type, l->protocol);
        struct mw_rings rings;
        struct fe_op *op;

        if (n)
            n->preaccept = 1;    /* it takes what was free: its end makes no new room */
        if (!n || slot_alloc(e, n, e->cfg.stream_order) < 0) {
            if (n)
                sk_free(e, n);
            if (l->accepts_pending + l->queued == 0 && !l->accept_starved) {
                l->accept_starved = 1;   /* retried when a socket gives its rings back */
                e->nstarved++;
            }
            return;
        }
        op = op_new(e, OP_PREACCEPT, l);
        if (!op) {
            slot_release(e, n);
            sk_free(e, n);
            return;
        }
        op->newsk = n;
        n->refs++;
        n->listener = l;
        fe_is_sock_accepting(e, n, l);
        mw_rings_build(&rings, n->tx_page * MW_PAGE_SIZE, n->rx_page * MW_PAGE_SIZE,
                       n->tx_order, n->rx_order);
        mw_req_build_accept(&op->req, 0, l->slot, n->slot, &rings);
        if (op_send(e, op) < 0) {
            slot_release(e, n);
            n->state = SK_CLOSING;
            op_free(e, op);      /* frees n with its last reference */
            return;
        }
        l->accepts_pending++;
    }
}

/*
 * Sockets that held an INS socket, fds or rings went away: listeners left without any pending
 * ACCEPT (so that the application's accept() would wait forever) try again, at most once per
 * FE_PROBE_MS. A pre-accept socket that failed gives back only what was free before it, so
 * it does not count: otherwise an INS out of fds fails the retried ACCEPT at once, that
 * failure triggers the next retry, and both daemons spin. The scan stops once it has seen
 * every starved listener.
 */
static void refill_starved(struct mwfe *e)
{
    struct timespec ts;
    int64_t now;
    uint32_t left = e->nstarved;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (now < e->refill_at)
        return;                  /* the loop wakes at least every FE_PROBE_MS */
    e->refill_at = now + FE_PROBE_MS;
    e->refill_due = 0;
    e->nstarved = 0;
    for (uint32_t i = 0; left && i < e->cfg.max_sockets && ins_ok(e); i++) {
        struct fe_sock *l = e->socks[i];

        if (!l || !l->accept_starved)
            continue;
        left--;
        l->accept_starved = 0;
        refill_accepts(e, l);    /* marks it again while still short */
    }
}

/* ---- the idle token ----------------------------------------------------------------------- */

/* A new stream socket: one byte into P makes X readable until the socket connects or listens.
 * A native TCP socket that never connected polls POLLOUT|POLLHUP, so a caller that polls before
 * recv() (Python with a timeout, event loops) goes on to recv() and its ENOTCONN; X would
 * otherwise never wake it. The shim never delivers that byte (it fails such reads itself). */
static void idle_token_put(struct fe_sock *sk)
{
    if (!sk->want_token || sk->idle_token || sk->src.fd < 0)
        return;
    if (send(sk->src.fd, "u", 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1)
        sk->idle_token = 1;
}

/* CONNECT or LISTEN: take the byte back out of X (an fd the shim sent, checked to be X),
 * before anything else can be queued behind it. */
static void idle_token_take(struct fe_sock *sk, int x)
{
    char b;

    if (!sk->idle_token || x < 0)
        return;
    if (recv(x, &b, 1, MSG_DONTWAIT) == 1)
        sk->idle_token = 0;
}

/* ---- the INS: completions ----------------------------------------------------------------- */

static void nb_connect_finish(struct mwfe *e, struct fe_sock *sk, uint32_t filler)
{
    while (filler > 0 && sk->src.fd >= 0) {
        /* the loop's scratch buffer (64 KiB) takes any filler in one call */
        ssize_t n = recv(sk->src.fd, e->scratch, filler < MW_OOL_MAX ? filler : MW_OOL_MAX,
                         MSG_DONTWAIT);

        if (n <= 0)
            break;
        filler -= (uint32_t)n;
    }
    if (sk->nb_x >= 0 && sk->sndbuf > 0) {
        int v = (int)(sk->sndbuf / 2);

        setsockopt(sk->nb_x, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
    }
    close_fd(&sk->nb_x);
}

/* Answer a client call that the INS answered with a plain ret. */
static void call_done(struct mwfe *e, struct fe_op *op, int32_t ret, const void *body,
                      size_t blen, const void *extra, size_t elen)
{
    struct fe_client *c = op->client;

    if (!c)
        return;
    reply(e, c, op->seq, op->lop, ret, body, blen, extra, elen, -1);
    if (op->client)
        client_unpark(e, c);
    op->client = NULL;
}

/* @param rsp  checked (or made up by detach: from_loss) */
static void op_complete(struct mwfe *e, struct fe_op *op, const struct mw_rsp *rsp, int from_loss)
{
    struct fe_sock *sk = op->sk, *n = op->newsk;
    int32_t ret = rsp->ret;
    const char *why = NULL;

    switch (op->req.cmd) {
    case MW_CMD_SOCKET:
        if (ret == 0 && !from_loss && rings_open(e, sk) < 0) {
            call_done(e, op, -ENOBUFS, NULL, 0, NULL, 0);
            sk->state = SK_OPEN;
            sk_begin_close(e, sk);       /* opened in the INS but unusable here */
            break;
        }
        if (ret == 0 && !from_loss) {
            struct mwl_rsp_socket r = { .handle = sk_handle(sk), .family = sk->family,
                                        .type = sk->type };

            sk->state = SK_OPEN;
            if (op->client) {
                struct fe_client *c = op->client;

                idle_token_put(sk);
                reply(e, c, op->seq, op->lop, 0, &r, sizeof(r), NULL, 0, sk->x);
                if (op->client)
                    client_unpark(e, c);
                op->client = NULL;
                close_fd(&sk->x);
                pump_rx(e, sk);
                sk_update_watch(e, sk);
            } else {
                sk_begin_close(e, sk);   /* nobody took it */
            }
            break;
        }
        call_done(e, op, ret < 0 ? ret : -ENETDOWN, NULL, 0, NULL, 0);
        if (!from_loss)
            slot_release(e, sk);         /* an error response: the slot stays free */
        sk->state = SK_CLOSING;          /* never handed out: freed with the op */
        break;
    case MW_CMD_CONNECT:
        if (ret == 0)
            sk->local = rsp->u.addr.addr;
        if (op->kind == OP_NB_CONNECT) {
            nb_connect_finish(e, sk, sk->filler);
            if (sk->state != SK_CONNECTING)
                break;                    /* closed meanwhile */
            if (ret == 0) {
                sk->state = SK_CONNECTED;
                sk->connected_once = 1;
                tx_start(e, sk);
                pump_rx(e, sk);
            } else {
                sk_fail(e, sk, ret, !from_loss);
            }
            break;
        }
        if (sk->state == SK_CONNECTING || sk->type != SOCK_STREAM) {
            if (ret == 0) {
                int unspec = op->req.u.addr.addr.family == MW_AF_UNSPEC;

                sk->state = unspec ? SK_OPEN : SK_CONNECTED;
                sk->connected_once = 1;
                if (!unspec)
                    sk->peer = op->req.u.addr.addr;
            } else if (sk->state == SK_CONNECTING) {
                sk->state = SK_OPEN;
            }
        }
        call_done(e, op, ret, NULL, 0, NULL, 0);
        if (sk->state == SK_CONNECTED) {
            tx_start(e, sk);
            pump_rx(e, sk);
        }
        break;
    case MW_CMD_BIND:
        if (ret == 0)
            sk->local = rsp->u.addr.addr;
        call_done(e, op, ret, NULL, 0, NULL, 0);
        break;
    case MW_CMD_LISTEN:
        if (ret == 0 && (sk->state == SK_OPEN || sk->state == SK_LISTENING)) {
            int backlog = op->req.u.listen.backlog;

            sk->state = SK_LISTENING;
            sk->accept_max = backlog < 1 ? 1 : backlog > e->cfg.accept_max ?
                             e->cfg.accept_max : backlog;
            sk_update_watch(e, sk);
        } else if (ret < 0 && sk->state == SK_OPEN && sk->live) {
            idle_token_put(sk);          /* still never connected: X readable again */
        }
        call_done(e, op, ret, NULL, 0, NULL, 0);
        refill_accepts(e, sk);
        break;
    case MW_CMD_ACCEPT:
        sk->accepts_pending--;
        if (ret == 0 && !from_loss) {
            n->preaccept = 0;           /* the INS holds a socket for it now */
            n->peer = rsp->u.addr.addr;
            n->listener = NULL;
            if (rings_open(e, n) < 0 || sk->state != SK_LISTENING || sk_make_pair(e, n) < 0) {
                n->state = SK_OPEN;
                sk_begin_close(e, n);
                break;
            }
            n->state = SK_QUEUED;
            n->listener = sk;
            sk->refs++;
            if (sk->aq_tail)
                sk->aq_tail->aq_next = n;
            else
                sk->aq_head = n;
            sk->aq_tail = n;
            sk->queued++;
            if (write(sk->src.fd, "a", 1) != 1)
                fe_log("listener token: %s", strerror(errno));
            pump_rx(e, n);
            refill_accepts(e, sk);
            break;
        }
        if (!from_loss)
            slot_release(e, n);
        n->state = SK_CLOSING;          /* freed with the op's reference */
        n->listener = NULL;
        if ((ret == -ENFILE || ret == -EMFILE || ret == -ENOBUFS || ret == -ENOMEM) &&
            !from_loss && sk->accepts_pending + sk->queued == 0 && !sk->accept_starved) {
            sk->accept_starved = 1;     /* the INS is short: retry once a socket is gone */
            e->nstarved++;
        }
        break;
    case MW_CMD_SHUTDOWN:
        if (op->kind == OP_CALL)
            call_done(e, op, ret, NULL, 0, NULL, 0);
        break;
    case MW_CMD_CLOSE:
        slot_release(e, sk);
        sk_to_zombie(e, sk);
        break;
    case MW_CMD_GETSOCKOPT: {
        struct mwl_rsp_sockopt r = { 0 };
        uint32_t len = rsp->u.sockopt.len;
        const void *val = rsp->u.sockopt.val;

        if (op->kind == OP_DGRAM_ERR) {
            int v = 0;

            sk->err_fetch = 0;
            if (ret < 0 || from_loss || !sk->live || len != sizeof(v))
                break;
            memcpy(&v, val, sizeof(v));
            if (v <= 0 || v > 4095)
                break;                   /* none (taken by the app's SO_ERROR meanwhile) */
            if (sk->type == SOCK_STREAM) {
                /* the peer closed, then reset our writes: the application's next writes fail
                 * with EPIPE (and SIGPIPE) as native ones do, its reads still give 0; the
                 * error itself is not kept (native send() consumed it) */
                if (sk->src.fd >= 0)
                    shutdown(sk->src.fd, SHUT_RD);
                break;
            }
            sk->error = -v;
            sk->err_pkt = 1;
            pump_rx(e, sk);
            break;
        }
        if (ret < 0) {
            call_done(e, op, ret, NULL, 0, NULL, 0);
            break;
        }
        r.len = len;
        if (len > MW_OPT_INLINE_MAX) {
            memcpy(e->scratch, ool_ptr(e, op), len);   /* copied once, never read again */
            val = e->scratch;
        }
        call_done(e, op, 0, &r, sizeof(r), val, len);
        break;
    }
    case MW_CMD_SETSOCKOPT:
        call_done(e, op, ret, NULL, 0, NULL, 0);
        break;
    case MW_CMD_GETSOCKNAME:
    case MW_CMD_GETPEERNAME: {
        struct mwl_rsp_addr r;

        if (ret < 0) {
            call_done(e, op, ret, NULL, 0, NULL, 0);
            break;
        }
        r.addr = rsp->u.addr.addr;
        call_done(e, op, 0, &r, sizeof(r), NULL, 0);
        break;
    }
    case MW_CMD_GETADDRINFO:
    case MW_CMD_GETNAMEINFO: {
        struct mwl_rsp_gai r = { 0 };
        int bad;

        if (ret < 0) {
            call_done(e, op, ret, NULL, 0, NULL, 0);
            break;
        }
        r.status = rsp->u.gai.status;
        r.sys_errno = rsp->u.gai.sys_errno;
        r.len = rsp->u.gai.len;
        if (r.len > 0) {
            memcpy(e->scratch, ool_ptr(e, op), r.len);   /* copied once, then checked */
            bad = op->req.cmd == MW_CMD_GETADDRINFO ?
                  mw_ai_answer_check(e->scratch, r.len, &why) :
                  mw_ni_answer_check(e->scratch, r.len, &why);
            if (bad) {
                violation(e, mw_cmd_name(op->req.cmd), why);
                call_done(e, op, -ENETDOWN, NULL, 0, NULL, 0);
                break;
            }
        }
        call_done(e, op, 0, &r, sizeof(r), e->scratch, r.len);
        break;
    }
    case MW_CMD_IOCTL:
        if (ret >= 0 && sk->live) {
            int extra = op->req.u.ioctl.request == MW_IOCTL_SIOCINQ ? mw_bring_avail(&sk->rx) :
                        op->req.u.ioctl.request == MW_IOCTL_SIOCOUTQ ?
                        (int)sk->tx.size - mw_bring_space(&sk->tx) : 0;

            if (extra > 0 && op->req.u.ioctl.request != MW_IOCTL_SIOCATMARK)
                ret += extra;
        }
        call_done(e, op, ret, NULL, 0, NULL, 0);
        break;
    default:
        call_done(e, op, ret, NULL, 0, NULL, 0);
        break;
    }
}

/* STATE on a datagram socket, or on a stream whose rx ended: the INS holds a pending error
 * (protocol.md 7.5). Take it with GETSOCKOPT(SO_ERROR), which clears it there; its answer
 * hands it to the application. */
static void dgram_error_fetch(struct mwfe *e, struct fe_sock *sk)
{
    struct fe_op *op;

    if (sk->err_fetch)
        return;
    op = op_new(e, OP_DGRAM_ERR, sk);
    if (!op)
        return;
    mw_req_build_getsockopt(&op->req, 0, sk->slot, SOL_SOCKET, SO_ERROR, sizeof(int), 0, 0);
    if (op_send(e, op) < 0) {
        op_free(e, op);
        return;
    }
    sk->err_fetch = 1;
}

/* Take every response and event the INS published. */
static void ins_process(struct mwfe *e)
{
    struct mw_rsp rsp;
    struct mw_event ev;
    uint64_t cookie;
    const char *why = NULL;
    int rc, budget = 4096, was_done;

    while (ins_ok(e) && budget-- > 0) {
        struct fe_op *op;

        rc = mw_cmd_front_take_rsp(e->cmd, &rsp, &cookie);
        if (rc == 0)
            break;
        if (rc < 0) {
            violation(e, "command ring", "response index or id");
            return;
        }
        op = (struct fe_op *)(uintptr_t)cookie;
        fe_is_rsp(e, &rsp, op);
        if (mw_rsp_check(&rsp, &e->lim, &why) != 0 || mw_rsp_match(&rsp, &op->req, &why) != 0) {
            violation(e, "response", why);
            return;
        }
        op_complete(e, op, &rsp, 0);
        op_free(e, op);
    }
    while (ins_ok(e) && budget-- > 0) {
        struct fe_sock *sk;

        rc = mw_evq_take(&e->bq, &ev);
        if (rc == 0)
            break;
        if (rc < 0) {
            violation(e, "event queue bq", "index or event");
            return;
        }
        if (rc > 0)
            fe_is_event(e, MWL_TR_EV_RX, ev.sock, ev.type, ev.arg);
        if (rc == MW_EVQ_RESCAN) {
            for (uint32_t s = 0; s < e->area.nsocks && ins_ok(e); s++) {
                sk = e->by_slot[s];
                if (sk && sk->live) {
                    pump_rx(e, sk);
                    if (sk->tx_wait)
                        pump_tx(e, sk);
                }
            }
            continue;
        }
        if (mw_event_check(&ev, &e->lim, 1, &why) != 0) {
            violation(e, "event", why);
            return;
        }
        sk = e->by_slot[ev.sock];
        if (!sk || !sk->live)
            continue;    /* stale: the slot was closed meanwhile */
        was_done = sk->rx_done;
        if (ev.type == MW_EV_SPACE)
            pump_tx(e, sk);
        else
            pump_rx(e, sk);
        /* STATE without news in rx_flags: a pending error in the INS (a datagram's ICMP
         * error; a stream's sending side that failed after its incoming side ended) */
        if (ev.type == MW_EV_STATE && sk->live && (sk->type == SOCK_DGRAM || was_done))
            dgram_error_fetch(e, sk);
    }
}

/* Forget the INS connection: complete every op as the loss of the path does, end every
 * socket. Nothing in the area is touched from here on. */
static void do_detach(struct mwfe *e, int by_violation)
{
    if (!e->attached)
        return;
    e->broken = 1;               /* from here on nothing is sent or read */
    e->q_head = e->q_tail = NULL;
    while (e->ops) {
        struct fe_op *op = e->ops;
        struct mw_rsp rsp;
        int32_t err = op->req.cmd == MW_CMD_CONNECT ? -ENETUNREACH :
                      op->req.cmd == MW_CMD_ACCEPT ? -ECANCELED : -ENETDOWN;

        mw_rsp_build(&rsp, op->req.id, op->req.cmd, op->req.sock, err);
        op_complete(e, op, &rsp, 1);
        op_free(e, op);
    }
    for (uint32_t i = 0; i < e->cfg.max_sockets; i++) {
        struct fe_sock *sk;

        if (!sk_is_entry(e, i))
            continue;
        sk = e->socks[i];
        sk->has_slot = sk->has_rings = sk->live = 0;
        if (sk->state == SK_ZOMBIE || sk->state == SK_QUEUED)
            continue;            /* a queued connection is ended by its listener */
        if (sk->state == SK_CLOSING) {
            if (sk->refs == 0)   /* never handed out, or an evicted zombie */
                sk_free(e, sk);
            continue;
        }
        sk->lost = 1;
        if (sk->state == SK_CONNECTED || sk->state == SK_LISTENING || sk->state == SK_CONNECTING)
            sk->error = -ECONNRESET;
        sk_fail(e, sk, sk->error, 0);
    }
    src_unwatch(e, &e->evsrc);
    e->evsrc.fd = -1;
    e->attached = 0;
    e->broken = 0;
    e->lost_errno = !by_violation ? 0 : e->gone ? -EPIPE : -EPROTO;
    e->gone = 0;
    fe_buddy_fini(&e->buddy);
    free(e->cmd);
    free(e->by_slot);
    free(e->free_slots);
    free(e->trim_q);
    e->cmd = NULL;
    e->by_slot = NULL;
    e->free_slots = NULL;
    e->trim_q = NULL;
    e->ntrim_q = 0;
    e->ec = NULL;
    if (by_violation) {
        uint64_t one = 1;

        if (write(e->link_efd, &one, sizeof(one)) < 0)
            fe_log("link eventfd: %s", strerror(errno));
    }
}

static int do_attach(struct mwfe *e, const struct fe_ctl *r)
{
    int rc;

    if (e->attached)
        return -EBUSY;
    rc = mw_area_init(&e->area, r->base, r->size, &r->geom);
    if (rc < 0)
        return rc;
    e->cmd = calloc(1, sizeof(*e->cmd));
    e->by_slot = calloc(e->area.nsocks, sizeof(*e->by_slot));
    e->free_slots = calloc(e->area.nsocks, sizeof(*e->free_slots));
    e->trim_q = calloc(FE_TRIM_Q, sizeof(*e->trim_q));
    e->ntrim_q = 0;
    if (!e->cmd || !e->by_slot || !e->free_slots || !e->trim_q) {
        rc = -ENOMEM;
        goto out_free;
    }
    rc = fe_buddy_init(&e->buddy, r->geom.data_pages);
    if (rc < 0)
        goto out_free;
    if ((rc = mw_cmd_front_init(e->cmd, &e->area)) < 0 ||
        (rc = mw_evq_init(&e->fq, &e->area, MW_SIDE_FRONT, 1)) < 0 ||
        (rc = mw_evq_init(&e->bq, &e->area, MW_SIDE_FRONT, 0)) < 0)
        goto out_buddy;
    /* Slots handed out from the lowest up. */
    e->nfree_slots = 0;
    for (uint32_t s = e->area.nsocks; s-- > 0;)
        e->free_slots[e->nfree_slots++] = s;
    e->lim.sock_slots = r->geom.sock_slots;
    e->lim.data_pages = r->geom.data_pages;
    e->ec = r->ec;
    e->port = r->port;
    e->features = r->features;
    e->evsrc.kind = SRC_EVTCHN;
    e->evsrc.fd = mw_evtchn_fd(r->ec);
    e->evsrc.in_epoll = 0;
    e->attached = 1;
    e->broken = 0;
    e->lost_errno = 0;
    e->gone = 0;
    e->why[0] = 0;
    src_watch(e, &e->evsrc, EPOLLIN);
    ST_ADD(e, attaches, 1);
    fe_is_attached(e);
    return 0;
out_buddy:
    fe_buddy_fini(&e->buddy);
out_free:
    free(e->cmd);
    free(e->by_slot);
    free(e->free_slots);
    free(e->trim_q);
    e->cmd = NULL;
    e->by_slot = NULL;
    e->free_slots = NULL;
    e->trim_q = NULL;
    return rc;
}

/* ---- clients ------------------------------------------------------------------------------ */

static void client_drop(struct mwfe *e, struct fe_client *c, const char *why)
{
    if (why) {
        fe_log("dropping client pid %d uid %u: %s", (int)c->pid, (unsigned)c->uid, why);
        ST_ADD(e, clients_dropped, 1);
    }
    if (c->parked)
        c->parked->client = NULL;  /* the call completes; its answer is discarded */
    fe_is_client_gone(e, c);
    src_unwatch(e, &c->src);
    close_fd(&c->src.fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        e->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    e->nclients--;
    ST_SUB(e, clients, 1);
    c->next = e->grave_c;          /* freed at the end of the round (see sk_free) */
    e->grave_c = c;
}

static void park(struct mwfe *e, struct fe_client *c, struct fe_op *op, uint32_t seq, uint16_t lop)
{
    op->kind = OP_CALL;
    op->client = c;
    op->seq = seq;
    op->lop = lop;
    c->parked = op;
    src_watch(e, &c->src, 0);     /* the next request waits in the socket buffer */
}

/* Send `op` for a parked call, or answer the error. */
static void send_call(struct mwfe *e, struct fe_client *c, struct fe_op *op, uint32_t seq,
                      uint16_t lop)
{
    if (op_send(e, op) < 0) {
        op_free(e, op);
        reply_err(e, c, seq, lop, -EINVAL);
        return;
    }
    park(e, c, op, seq, lop);
}

static int sk_ins_usable(struct mwfe *e, struct fe_sock *sk)
{
    if (sk->state == SK_ZOMBIE || sk->state == SK_CLOSING)
        return sk->lost || !ins_ok(e) ? -ENETDOWN : -EBADF;
    if (!ins_ok(e) || !sk->has_slot)
        return -ENETDOWN;
    return 0;
}

static int addr_ok(const struct fe_sock *sk, const struct mw_sockaddr *a, int unspec_ok)
{
    const char *why;

    if (mw_sockaddr_check(a, MW_FAMS_IP | (unspec_ok ? MW_FAMS_UNSPEC : 0), &why) != 0)
        return -EINVAL;
    if (a->family != MW_AF_UNSPEC && a->family != sk->family)
        return -EAFNOSUPPORT;
    return 0;
}

static void do_socket(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                      const struct mwl_req_socket *q)
{
    struct fe_sock *sk;
    struct fe_op *op;
    struct mw_rings rings;
    int rc;

    if (q->family != AF_INET && q->family != AF_INET6)
        return reply_err(e, c, h->seq, h->op, -EAFNOSUPPORT);
    if (q->type != SOCK_STREAM && q->type != SOCK_DGRAM)
        return reply_err(e, c, h->seq, h->op, -ESOCKTNOSUPPORT);
    if (q->protocol != 0 && q->protocol != (q->type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP))
        return reply_err(e, c, h->seq, h->op, -EPROTONOSUPPORT);
    if (!ins_ok(e))
        return reply_err(e, c, h->seq, h->op, -ENETDOWN);
    if (q->family == AF_INET6 && !(e->features & MWL_FEAT_IPV6))
        return reply_err(e, c, h->seq, h->op, -EAFNOSUPPORT);
    if (q->type == SOCK_DGRAM && !(e->features & MWL_FEAT_UDP))
        return reply_err(e, c, h->seq, h->op, -EPROTONOSUPPORT);
    sk = sk_new(e, c->uid, q->family, q->type, q->protocol);
    if (!sk)
        return reply_err(e, c, h->seq, h->op, -EMFILE);
    fe_is_sock_new(e, sk, c->pid);
    sk->want_token = q->type == SOCK_STREAM && (h->flags & MWL_F_IDLE_TOKEN);
    rc = slot_alloc(e, sk, q->type == SOCK_STREAM ? e->cfg.stream_order : e->cfg.dgram_order);
    if (rc == 0)
        rc = sk_make_pair(e, sk);
    op = rc == 0 ? op_new(e, OP_CALL, sk) : NULL;
    if (!op) {
        slot_release(e, sk);
        sk_free(e, sk);
        return reply_err(e, c, h->seq, h->op, rc < 0 ? rc : -ENOMEM);
    }
    mw_rings_build(&rings, sk->tx_page * MW_PAGE_SIZE, sk->rx_page * MW_PAGE_SIZE,
                   sk->tx_order, sk->rx_order);
    mw_req_build_socket(&op->req, 0, sk->slot, (uint16_t)q->family, (uint16_t)q->type,
                        q->protocol, &rings);
    if (op_send(e, op) < 0) {
        slot_release(e, sk);
        sk->state = SK_CLOSING;
        op_free(e, op);
        return reply_err(e, c, h->seq, h->op, -EINVAL);
    }
    park(e, c, op, h->seq, h->op);
}

/* An fd sent by a client must be the X of `sk`. */
static int fd_is_x(const struct fe_sock *sk, int fd)
{
    struct stat st;

    return fd >= 0 && fstat(fd, &st) == 0 && st.st_ino == sk->x_ino && st.st_dev == sk->x_dev;
}

static void do_connect(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                       struct fe_sock *sk, const struct mwl_req_addr *q, int *fd)
{
    struct fe_op *op;
    int rc, nb = (h->flags & MWL_F_NONBLOCK) && sk->type == SOCK_STREAM;

    if (sk->state == SK_ZOMBIE && sk->connected_once == 0 && sk->type == SOCK_STREAM &&
        sk->error == 0 && ins_ok(e))
        return reply_err(e, c, h->seq, h->op, -ECONNABORTED);
    if ((rc = sk_ins_usable(e, sk)) < 0)
        return reply_err(e, c, h->seq, h->op, sk->state == SK_ZOMBIE && ins_ok(e) ?
                         -ECONNABORTED : rc == -ENETDOWN ? -ENETUNREACH : rc);
    if (sk->state == SK_CONNECTING)
        return reply_err(e, c, h->seq, h->op, -EALREADY);
    if (sk->type == SOCK_STREAM && sk->state == SK_CONNECTED)
        return reply_err(e, c, h->seq, h->op, -EISCONN);
    if (sk->state == SK_LISTENING)
        return reply_err(e, c, h->seq, h->op, -EINVAL);
    if ((rc = addr_ok(sk, &q->addr, sk->type == SOCK_DGRAM)) < 0)
        return reply_err(e, c, h->seq, h->op, rc);
    if (nb && (!fd_is_x(sk, *fd) || q->filler > MW_OOL_MAX))
        return reply_err(e, c, h->seq, h->op, -EBADF);
    op = op_new(e, nb ? OP_NB_CONNECT : OP_CALL, sk);
    if (!op)
        return reply_err(e, c, h->seq, h->op, -ENOMEM);
    mw_req_build_connect(&op->req, 0, sk->slot, &q->addr);
    if (!nb) {
        if (sk->type == SOCK_STREAM)
            sk->state = SK_CONNECTING;
        sk_update_watch(e, sk);
        return send_call(e, c, op, h->seq, h->op);
    }
    if (op_send(e, op) < 0) {
        op_free(e, op);
        return reply_err(e, c, h->seq, h->op, -EINVAL);
    }
    idle_token_take(sk, *fd);
    sk->nb_x = mw_fd_high(*fd);
    *fd = -1;
    sk->filler = q->filler;
    sk->sndbuf = q->sndbuf;
    sk->peer = q->addr;
    sk->state = SK_CONNECTING;
    sk_update_watch(e, sk);
    reply_err(e, c, h->seq, h->op, -EINPROGRESS);
}

static void do_accept(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                      struct fe_sock *l)
{
    struct fe_sock *n = l->aq_head;
    struct mwl_rsp_socket r;

    if (l->state == SK_ZOMBIE)
        return reply_err(e, c, h->seq, h->op, -ECONNABORTED);
    if (l->state != SK_LISTENING)
        return reply_err(e, c, h->seq, h->op, -EINVAL);
    if (!n) {
        refill_accepts(e, l);
        return reply_err(e, c, h->seq, h->op, -EAGAIN);
    }
    l->aq_head = n->aq_next;
    if (!l->aq_head)
        l->aq_tail = NULL;
    l->queued--;
    n->aq_next = NULL;
    n->listener = NULL;
    n->state = SK_CONNECTED;
    n->connected_once = 1;
    sk_put(e, l);
    memset(&r, 0, sizeof(r));
    r.handle = sk_handle(n);
    r.family = n->family;
    r.type = n->type;
    r.peer = n->peer;
    reply(e, c, h->seq, h->op, 0, &r, sizeof(r), NULL, 0, n->x);
    close_fd(&n->x);
    tx_start(e, n);
    pump_rx(e, n);
    refill_accepts(e, l);
}

static uint32_t st_state(const struct fe_sock *sk)
{
    switch (sk->state) {
    case SK_CONNECTING: return MWL_ST_CONNECTING;
    case SK_CONNECTED: return MWL_ST_CONNECTED;
    case SK_LISTENING: return MWL_ST_LISTENING;
    case SK_ZOMBIE:
    case SK_CLOSING: return MWL_ST_CLOSED;
    default: return 0;
    }
}

static void do_identify(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h, int fd)
{
    struct stat st;

    if (fd < 0 || fstat(fd, &st) < 0)
        return reply_err(e, c, h->seq, h->op, -ENOTSOCK);
    for (uint32_t i = 0; i < e->cfg.max_sockets; i++) {
        struct fe_sock *sk;

        if (!sk_is_entry(e, i))
            continue;
        sk = e->socks[i];
        if (sk->x_ino == st.st_ino && sk->x_dev == st.st_dev && sk->state != SK_QUEUED &&
            sk->state != SK_OPENING) {
            struct mwl_rsp_socket r;

            if (sk->uid != c->uid)
                return reply_err(e, c, h->seq, h->op, -EBADF);
            memset(&r, 0, sizeof(r));
            r.handle = sk_handle(sk);
            r.family = sk->family;
            r.type = sk->type;
            return reply(e, c, h->seq, h->op, 0, &r, sizeof(r), NULL, 0, -1);
        }
    }
    reply_err(e, c, h->seq, h->op, -ENOTSOCK);
}

static void do_gai(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                   const struct mwl_req_getaddrinfo *q, const uint8_t *names)
{
    struct mwl_rsp_gai r = { 0 };
    struct fe_op *op;
    const char *why;

    if (q->flags & ~MW_AI_FLAGS_ALL)
        r.status = EAI_BADFLAGS;
    else if (q->family != AF_UNSPEC && q->family != AF_INET && q->family != AF_INET6)
        r.status = EAI_FAMILY;
    else if (q->socktype != 0 && q->socktype != SOCK_STREAM && q->socktype != SOCK_DGRAM)
        r.status = EAI_SOCKTYPE;
    else if (q->node_len == 0 && q->service_len == 0)
        r.status = EAI_NONAME;
    if (r.status)
        return reply(e, c, h->seq, h->op, 0, &r, sizeof(r), NULL, 0, -1);
    if (q->node_len > MW_GAI_NODE_MAX || q->service_len > MW_GAI_SERVICE_MAX ||
        mw_gai_query_check(names, q->node_len + q->service_len, q->node_len, q->service_len,
                           &why) != 0)
        return reply_err(e, c, h->seq, h->op, -EINVAL);
    if (!ins_ok(e))
        return reply_err(e, c, h->seq, h->op, -ENETDOWN);
    if (!(e->features & MWL_FEAT_DNS))
        return reply_err(e, c, h->seq, h->op, -EOPNOTSUPP);
    op = op_new(e, OP_CALL, NULL);
    if (!op || op_ool(e, op, FE_GAI_OOL_ORDER) < 0) {
        if (op)
            op_free(e, op);
        return reply_err(e, c, h->seq, h->op, -ENOBUFS);
    }
    mw_gai_query_build(ool_ptr(e, op), op->ool_len, names, q->node_len, names + q->node_len,
                       q->service_len);
    mw_req_build_getaddrinfo(&op->req, 0, (uint32_t)op->ool_page * MW_PAGE_SIZE, op->ool_len,
                             q->node_len, q->service_len, q->flags, q->family, q->socktype,
                             q->protocol);
    send_call(e, c, op, h->seq, h->op);
}

static void do_gni(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                   const struct mwl_req_getnameinfo *q)
{
    struct mwl_rsp_gai r = { 0 };
    struct fe_op *op;
    const char *why;

    if (q->flags & ~MW_NI_FLAGS_ALL) {
        r.status = EAI_BADFLAGS;
        return reply(e, c, h->seq, h->op, 0, &r, sizeof(r), NULL, 0, -1);
    }
    if (mw_sockaddr_check(&q->addr, MW_FAMS_IP, &why) != 0) {
        r.status = EAI_FAMILY;
        return reply(e, c, h->seq, h->op, 0, &r, sizeof(r), NULL, 0, -1);
    }
    if (!ins_ok(e))
        return reply_err(e, c, h->seq, h->op, -ENETDOWN);
    if (!(e->features & MWL_FEAT_DNS))
        return reply_err(e, c, h->seq, h->op, -EOPNOTSUPP);
    op = op_new(e, OP_CALL, NULL);
    if (!op || op_ool(e, op, FE_GNI_OOL_ORDER) < 0) {
        if (op)
            op_free(e, op);
        return reply_err(e, c, h->seq, h->op, -ENOBUFS);
    }
    mw_req_build_getnameinfo(&op->req, 0, (uint32_t)op->ool_page * MW_PAGE_SIZE, op->ool_len,
                             &q->addr, q->flags);
    send_call(e, c, op, h->seq, h->op);
}

static void do_sockopt(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                       struct fe_sock *sk, const struct mwl_req_sockopt *q, const uint8_t *val)
{
    struct fe_op *op;
    uint32_t ool_off = 0, ool_len = 0;
    int rc;

    if (q->len > MW_OOL_MAX)
        return reply_err(e, c, h->seq, h->op, -EINVAL);
    if (h->op == MWL_GETSOCKOPT && q->level == SOL_SOCKET && q->name == SO_ERROR &&
        (sk->error || sk->state == SK_ZOMBIE)) {
        struct mwl_rsp_sockopt r = { .len = sizeof(int) };
        int v = -sk->error;

        if (q->len < sizeof(int))
            return reply_err(e, c, h->seq, h->op, -EINVAL);
        sk->error = 0;
        return reply(e, c, h->seq, h->op, 0, &r, sizeof(r), &v, sizeof(v), -1);
    }
    if ((rc = sk_ins_usable(e, sk)) < 0)
        return reply_err(e, c, h->seq, h->op, rc);
    op = op_new(e, OP_CALL, sk);
    if (!op)
        return reply_err(e, c, h->seq, h->op, -ENOMEM);
    if (q->len > MW_OPT_INLINE_MAX) {
        if (op_ool(e, op, (unsigned int)fe_buddy_order_for(q->len)) < 0) {
            op_free(e, op);
            return reply_err(e, c, h->seq, h->op, -ENOBUFS);
        }
        ool_off = (uint32_t)op->ool_page * MW_PAGE_SIZE;
        ool_len = q->len;
        if (h->op == MWL_SETSOCKOPT)
            memcpy(ool_ptr(e, op), val, q->len);
    }
    if (h->op == MWL_GETSOCKOPT)
        mw_req_build_getsockopt(&op->req, 0, sk->slot, q->level, q->name, q->len, ool_off,
                                ool_len);
    else
        mw_req_build_setsockopt(&op->req, 0, sk->slot, q->level, q->name, q->len, ool_off,
                                ool_len, val);
    send_call(e, c, op, h->seq, h->op);
}

/* Calls that name a socket and only need the INS to run one command. */
static void do_simple(struct mwfe *e, struct fe_client *c, const struct mwl_hdr *h,
                      struct fe_sock *sk, const void *body)
{
    const struct mwl_req_handle *qh = body;
    const struct mwl_req_addr *qa = body;
    struct fe_op *op;
    int rc;

    if (h->op == MWL_GETSOCKNAME && sk->state == SK_ZOMBIE && sk->local.family) {
        struct mwl_rsp_addr r = { .addr = sk->local };

        return reply(e, c, h->seq, h->op, 0, &r, sizeof(r), NULL, 0, -1);
    }
    if ((rc = sk_ins_usable(e, sk)) < 0)
        return reply_err(e, c, h->seq, h->op, rc);
    switch (h->op) {
    case MWL_BIND:
        if ((rc = addr_ok(sk, &qa->addr, 0)) < 0)
            return reply_err(e, c, h->seq, h->op, rc);
        break;
    case MWL_LISTEN:
        if (sk->type != SOCK_STREAM)
            return reply_err(e, c, h->seq, h->op, -EOPNOTSUPP);
        if (sk->state != SK_OPEN && sk->state != SK_LISTENING)
            return reply_err(e, c, h->seq, h->op, -EINVAL);
        break;
    case MWL_SHUTDOWN:
        if (qh->arg < SHUT_RD || qh->arg > SHUT_RDWR)
            return reply_err(e, c, h->seq, h->op, -EINVAL);
        if (sk->state != SK_CONNECTED)
            return reply_err(e, c, h->seq, h->op, -ENOTCONN);
        if (qh->arg == SHUT_WR)   /* the shim shuts X; EOF on P does the rest */
            return reply_err(e, c, h->seq, h->op, 0);
        break;
    case MWL_IOCTL: {
        const struct mwl_req_ioctl *qi = body;

        if (qi->request < MW_IOCTL_SIOCATMARK || qi->request > MW_IOCTL_SIOCINQ)
            return reply_err(e, c, h->seq, h->op, -ENOTTY);
        break;
    }
    }
    op = op_new(e, OP_CALL, sk);
    if (!op)
        return reply_err(e, c, h->seq, h->op, -ENOMEM);
    switch (h->op) {
    case MWL_BIND:
        mw_req_build_bind(&op->req, 0, sk->slot, &qa->addr);
        break;
    case MWL_LISTEN:
        mw_req_build_listen(&op->req, 0, sk->slot, qh->arg);
        break;
    case MWL_GETSOCKNAME:
        mw_req_build_getsockname(&op->req, 0, sk->slot);
        break;
    case MWL_GETPEERNAME:
        mw_req_build_getpeername(&op->req, 0, sk->slot);
        break;
    case MWL_SHUTDOWN:
        mw_req_build_shutdown(&op->req, 0, sk->slot, SHUT_RD);
        break;
    case MWL_IOCTL:
        mw_req_build_ioctl(&op->req, 0, sk->slot, ((const struct mwl_req_ioctl *)body)->request);
        break;
    }
    send_call(e, c, op, h->seq, h->op);
}

/* The body size an op must have (variable ops: the fixed part). */
static size_t body_size(uint16_t op)
{
    switch (op) {
    case MWL_HELLO: return sizeof(struct mwl_hello);
    case MWL_SOCKET: return sizeof(struct mwl_req_socket);
    case MWL_IDENTIFY: return 0;
    case MWL_CONNECT:
    case MWL_BIND: return sizeof(struct mwl_req_addr);
    case MWL_GETSOCKOPT:
    case MWL_SETSOCKOPT: return sizeof(struct mwl_req_sockopt);
    case MWL_GETADDRINFO: return sizeof(struct mwl_req_getaddrinfo);
    case MWL_GETNAMEINFO: return sizeof(struct mwl_req_getnameinfo);
    case MWL_IOCTL: return sizeof(struct mwl_req_ioctl);
    default: return sizeof(struct mwl_req_handle);
    }
}

/* Read and serve one request. @return 0, or -1 when the client was dropped */
static int client_serve(struct mwfe *e, struct fe_client *c)
{
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int) * FE_MAX_FDS_IN)]; } cm;
    struct iovec iov = { e->msg, MWL_MSG_MAX };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                         .msg_controllen = sizeof(cm.buf) };
    int fds[FE_MAX_FDS_IN], nfds = 0, fd = -1, bad = 0, err;
    const char *malformed = NULL;
    struct mwl_hdr h;
    const uint8_t *body = e->msg + sizeof(h);
    struct fe_sock *sk = NULL;
    ssize_t n;
    size_t blen;

    n = recvmsg(c->src.fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh); n > 0 && cmsg; cmsg = CMSG_NXTHDR(&mh, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
            size_t k = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);

            for (size_t i = 0; i < k; i++) {
                int f;

                memcpy(&f, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
                if (nfds < FE_MAX_FDS_IN)
                    fds[nfds++] = f;
                else
                    close(f);
            }
        } else {
            bad = 1;
        }
    }
    if (n <= 0) {
        client_drop(e, c, n < 0 && errno != ECONNRESET ? "receive error" : NULL);
        goto out_close_fds;
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
        malformed = "truncated message or control data";
    else if (bad)
        malformed = "unexpected control data";
    else if ((size_t)n < sizeof(h))
        malformed = "shorter than the header";
    if (!malformed) {
        memcpy(&h, e->msg, sizeof(h));
        blen = (size_t)n - sizeof(h);
        if (h.len != (size_t)n)
            malformed = "length field does not match the packet";
        else if (h.ret != 0)
            malformed = "request with a result";
        else if (nfds > 1 || (nfds == 1 && h.op != MWL_IDENTIFY && h.op != MWL_CONNECT &&
                              h.op != MWL_LISTEN))
            malformed = "unexpected file descriptors";
        else if (h.op == 0 || h.op >= MWL_OP_MAX_)
            ;
        else if (h.op == MWL_SETSOCKOPT && (blen < sizeof(struct mwl_req_sockopt) ||
                 blen != sizeof(struct mwl_req_sockopt) +
                         ((const struct mwl_req_sockopt *)body)->len))
            malformed = "option length does not match the packet";
        else if (h.op == MWL_GETADDRINFO && (blen < sizeof(struct mwl_req_getaddrinfo) ||
                 blen != sizeof(struct mwl_req_getaddrinfo) +
                         ((const struct mwl_req_getaddrinfo *)body)->node_len +
                         ((const struct mwl_req_getaddrinfo *)body)->service_len))
            malformed = "name lengths do not match the packet";
        else if (h.op != MWL_SETSOCKOPT && h.op != MWL_GETADDRINFO && blen != body_size(h.op))
            malformed = "body size wrong for the op";
    }
    if (malformed) {
        client_drop(e, c, malformed);
        goto out_close_fds;
    }
    if (nfds == 1)
        fd = fds[0];
    nfds = 0;
    if (h.op >= MWL_INFO && h.op <= MWL_TRACE) {
        fe_is_serve(e, c, &h, body, blen);
        goto out_close_fd;
    }
    if (h.op == 0 || h.op >= MWL_OP_MAX_) {
        reply_err(e, c, h.seq, h.op, -EOPNOTSUPP);
        goto out_close_fd;
    }
    /* Ops naming a handle: look it up (uid checked) first. */
    if (h.op != MWL_HELLO && h.op != MWL_SOCKET && h.op != MWL_IDENTIFY &&
        h.op != MWL_GETADDRINFO && h.op != MWL_GETNAMEINFO) {
        sk = sk_lookup(e, *(const mwl_handle_t *)(const void *)body, c->uid, &err);
        if (!sk) {
            reply_err(e, c, h.seq, h.op, err);
            goto out_close_fd;
        }
    }
    if (h.op == MWL_LISTEN && sk->state == SK_OPEN && fd_is_x(sk, fd))
        idle_token_take(sk, fd);
    switch (h.op) {
    case MWL_HELLO: {
        struct mwl_hello r = { .version = MWL_VERSION,
                               .features = ins_ok(e) ? e->features | MWL_FEAT_INS_UP : 0 };

        if (((const struct mwl_hello *)body)->version != MWL_VERSION)
            reply_err(e, c, h.seq, h.op, -EPROTONOSUPPORT);
        else
            reply(e, c, h.seq, h.op, 0, &r, sizeof(r), NULL, 0, -1);
        break;
    }
    case MWL_SOCKET:
        do_socket(e, c, &h, (const void *)body);
        break;
    case MWL_IDENTIFY:
        do_identify(e, c, &h, fd);
        break;
    case MWL_CONNECT:
        do_connect(e, c, &h, sk, (const void *)body, &fd);
        break;
    case MWL_ACCEPT:
        do_accept(e, c, &h, sk);
        break;
    case MWL_GETSOCKOPT:
    case MWL_SETSOCKOPT:
        do_sockopt(e, c, &h, sk, (const void *)body, body + sizeof(struct mwl_req_sockopt));
        break;
    case MWL_CLOSE:
        if (sk->state == SK_ZOMBIE && sk->refs == 0) {
            zombie_unlink(e, sk);
            sk_free(e, sk);
        }
        reply_err(e, c, h.seq, h.op, 0);
        break;
    case MWL_STATUS: {
        struct mwl_rsp_status r = { .error = sk->error, .state = st_state(sk) };

        sk->error = 0;
        reply(e, c, h.seq, h.op, 0, &r, sizeof(r), NULL, 0, -1);
        break;
    }
    case MWL_GETADDRINFO:
        do_gai(e, c, &h, (const void *)body, body + sizeof(struct mwl_req_getaddrinfo));
        break;
    case MWL_GETNAMEINFO:
        do_gni(e, c, &h, (const void *)body);
        break;
    default:
        do_simple(e, c, &h, sk, body);
        break;
    }
out_close_fd:
    if (fd >= 0)
        close(fd);
out_close_fds:
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    return 0;
}

static void client_accept(struct mwfe *e)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(e->listen.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct ucred cred;
        socklen_t len = sizeof(cred);
        struct fe_client *c;

        if (fd < 0)
            return;
        fd = mw_fd_high(fd);
        if (e->nclients >= e->cfg.max_clients ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
            !(c = calloc(1, sizeof(*c)))) {
            close(fd);
            continue;
        }
        c->src.kind = SRC_CLIENT;
        c->src.fd = fd;
        c->uid = cred.uid;
        c->pid = cred.pid;
        c->next = e->clients;
        if (e->clients)
            e->clients->prev = c;
        e->clients = c;
        e->nclients++;
        ST_ADD(e, clients, 1);
        src_watch(e, &c->src, EPOLLIN);
    }
}

/* ---- the loop ----------------------------------------------------------------------------- */

/* Free what the round let go of. */
static void bury(struct mwfe *e)
{
    while (e->grave_sk) {
        struct fe_sock *sk = e->grave_sk;

        e->grave_sk = sk->znext;
        free(sk);
    }
    while (e->grave_c) {
        struct fe_client *c = e->grave_c;

        e->grave_c = c->next;
        free(c);
    }
}

static void serve_ctl(struct mwfe *e)
{
    uint64_t v;

    if (read(e->ctl.fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        fe_log("control eventfd: %s", strerror(errno));
    pthread_mutex_lock(&e->lock);
    if (e->ctl_req && !e->ctl_req->done) {
        struct fe_ctl *r = e->ctl_req;

        r->ret = r->op == 1 ? do_attach(e, r) : (do_detach(e, 0), 0);
        r->done = 1;
        pthread_cond_broadcast(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
}

/* Trim queue order: by page, then order (equal entries end up side by side). */
static int trim_cmp(const void *a, const void *b)
{
    const struct fe_trim *x = a, *y = b;

    return x->page != y->page ? (x->page < y->page ? -1 : 1) : (int)x->order - (int)y->order;
}

/*
 * Give back the memory of tx rings that went idle: a ring that carried bytes, has been empty
 * (the INS took everything) and got nothing new for a FE_PROBE_MS period has its pages
 * removed (ring_trim). Safe because we are the only producer: the INS reads only bytes
 * between tx_cons and tx_prod, and there are none. The INS does the same for rx rings (it
 * produces them; we cannot know when it writes next): an idle connection costs no ring
 * memory, whatever it carried before.
 */
static void rings_trim(struct mwfe *e)
{
    /* rings freed since the last sweep and still free, each once (a busy daemon frees the
     * same few blocks over and over) */
    qsort(e->trim_q, e->ntrim_q, sizeof(*e->trim_q), trim_cmp);
    for (uint32_t i = 0; i < e->ntrim_q && !e->trim_off; i++) {
        const struct fe_trim *t = &e->trim_q[i];

        if (i > 0 && t->page == t[-1].page && t->order == t[-1].order)
            continue;
        if (fe_buddy_is_free(&e->buddy, t->page, t->order - MW_RING_ORDER_MIN))
            ring_trim(e, t->page, t->order);
    }
    e->ntrim_q = 0;
    for (uint32_t s = 0; s < e->area.nsocks && !e->trim_off && ins_ok(e); s++) {
        struct fe_sock *sk = e->by_slot[s];

        if (!sk || !sk->live || !sk->tx_hot || --sk->tx_hot > 0)
            continue;
        /* Drained: tx_cons (read once) has reached what we produced. Only equality is used
         * and we never read tx bytes back, so a lying INS only loses bytes it should send. */
        if (sk->tx.pvt != sk->tx.pub ||
            __atomic_load_n(sk->tx.peer_idx, __ATOMIC_ACQUIRE) != sk->tx.pvt) {
            sk->tx_hot = 1;      /* not drained yet: look again next time */
            continue;
        }
        ring_trim(e, sk->tx_page, sk->tx_order);
    }
}

/*
 * Kick the INS when nothing else did for FE_PROBE_MS. The sim platform reports a peer whose
 * process died (its end of the event channel closed) only on a kick, and an application
 * blocked in recv() or accept() makes none: without this probe its socket would wait for
 * ever. A spurious kick only makes the INS look at its queues. (Real Xen drops kicks to a
 * dead domain silently; there XenStore tells the daemon.)
 */
static void ins_probe(struct mwfe *e)
{
    int64_t now = (int64_t)(mw_now_ns() / 1000000u);

    if (now < e->probe_at)
        return;
    e->probe_at = now + FE_PROBE_MS;
    e->kick = 1;                 /* ins_flush notifies, and sees -ENOTCONN */
    rings_trim(e);
}

int mwfe_run(struct mwfe *e)
{
    struct epoll_event evs[64];
    struct mw_spin spin;
    int worked = 0;

    pthread_mutex_lock(&e->lock);
    if (e->running) {
        pthread_mutex_unlock(&e->lock);
        return -EBUSY;
    }
    e->running = 1;
    pthread_mutex_unlock(&e->lock);
    mw_spin_init(&spin, e->cfg.spin_us);

    while (!__atomic_load_n(&e->stopping, __ATOMIC_ACQUIRE)) {
        int timeout = -1, n;

        if (ins_ok(e)) {
            timeout = FE_PROBE_MS;
            ins_probe(e);
            if (e->refill_due)
                refill_starved(e);
            ins_flush(e);
            int r1 = mw_cmd_front_final_check(e->cmd);
            int r2 = mw_evq_final_check(&e->bq);

            if (r1 < 0 || r2 < 0)
                violation(e, "final check", "index");
            else if (r1 > 0 || r2 > 0)
                timeout = 0;
        }
        if (e->broken && e->attached) {
            do_detach(e, 1);
            continue;
        }
        if (worked)
            mw_spin_worked(&spin);     /* the budget starts once the work is done */
        n = mw_epoll_spin(&spin, e->ep, evs, 64, timeout);
        if (n < 0 && errno != EINTR)
            break;
        worked = n > 0 || timeout == 0;
        for (int i = 0; i < n; i++) {
            struct fe_src *src = evs[i].data.ptr;
            uint32_t ev = evs[i].events;

            switch (src->kind) {
            case SRC_LISTEN:
                client_accept(e);
                break;
            case SRC_CTL:
                serve_ctl(e);
                break;
            case SRC_EVTCHN:
                fe_is_wakeup(e);
                while (e->attached && mw_evtchn_pending(e->ec) > 0)
                    ;
                break;
            case SRC_CLIENT: {
                struct fe_client *c = (struct fe_client *)src;

                if (c->src.fd < 0)
                    break;             /* dropped earlier in this round */
                if (c->parked) {           /* gone while waiting: hang up */
                    if (ev & (EPOLLHUP | EPOLLERR))
                        client_drop(e, c, NULL);
                    break;
                }
                client_serve(e, c);
                break;
            }
            case SRC_SOCK: {
                struct fe_sock *sk = (struct fe_sock *)src;

                if (sk->src.fd < 0)
                    break;             /* closed or freed earlier in this round */
                if (sk->state == SK_LISTENING && (ev & EPOLLIN) && !(ev & EPOLLHUP)) {
                    char junk[256];

                    while (read(sk->src.fd, junk, sizeof(junk)) > 0)
                        ;
                    break;
                }
                if (ev & EPOLLOUT)
                    pump_rx(e, sk);
                if ((ev & (EPOLLHUP | EPOLLERR)) && sk->src.fd >= 0 && !sk->p_hup)
                    sk_hup(e, sk);
                else if ((ev & EPOLLIN) && sk->src.fd >= 0)
                    pump_tx(e, sk);
                break;
            }
            }
        }
        if (ins_ok(e))
            ins_process(e);
        bury(e);
    }

    pthread_mutex_lock(&e->lock);
    e->running = 0;
    if (e->ctl_req && !e->ctl_req->done) {
        e->ctl_req->ret = e->ctl_req->op == 1 ? do_attach(e, e->ctl_req) : (do_detach(e, 0), 0);
        e->ctl_req->done = 1;
        pthread_cond_broadcast(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}

/* ---- public ------------------------------------------------------------------------------- */

int mwfe_create(const struct mwfe_config *cfg, struct mwfe **out)
{
    struct mwfe *e = calloc(1, sizeof(*e));
    struct epoll_event ev;
    int rc;

    if (!e)
        return -ENOMEM;
    if (cfg)
        e->cfg = *cfg;
    if (!e->cfg.stream_order)
        e->cfg.stream_order = 18;
    if (!e->cfg.dgram_order)
        e->cfg.dgram_order = 17;
    if (!e->cfg.accept_max)
        e->cfg.accept_max = 8;
    if (!e->cfg.max_clients)
        e->cfg.max_clients = 1024;
    if (!e->cfg.max_sockets)
        e->cfg.max_sockets = 65536;
    if (!e->cfg.max_zombies)
        e->cfg.max_zombies = 1024;
    if (e->cfg.stream_order < MW_RING_ORDER_MIN || e->cfg.stream_order > MW_RING_ORDER_MAX ||
        e->cfg.dgram_order < MW_RING_ORDER_MIN || e->cfg.dgram_order > MW_RING_ORDER_MAX ||
        e->cfg.max_sockets > (1u << 24)) {
        free(e);
        return -EINVAL;
    }
    rc = mw_nofile_raise();          /* every forwarded socket holds one fd here (P) */
    if (rc < 0)
        fe_log("raising RLIMIT_NOFILE: %s", strerror(-rc));
    if (getrandom(&e->gen_base, sizeof(e->gen_base), GRND_NONBLOCK) != sizeof(e->gen_base))
        e->gen_base = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 16;
    e->listen.fd = e->ctl.fd = e->evsrc.fd = e->link_efd = e->ep = -1;
    e->listen.kind = SRC_LISTEN;
    e->ctl.kind = SRC_CTL;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);
    e->socks = calloc(e->cfg.max_sockets, sizeof(*e->socks));
    e->gens = calloc(e->cfg.max_sockets, sizeof(*e->gens));
    e->free_idx = calloc(e->cfg.max_sockets, sizeof(*e->free_idx));
    e->scratch = malloc(MW_OOL_MAX + 64);
    e->msg = malloc(MWL_MSG_MAX);
    if (!e->socks || !e->gens || !e->free_idx || !e->scratch || !e->msg)
        goto out_destroy;
    for (uint32_t i = e->cfg.max_sockets; i-- > 0;)
        e->free_idx[e->nfree_idx++] = i;
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    e->ctl.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->link_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->ep < 0 || e->ctl.fd < 0 || e->link_efd < 0)
        goto out_destroy;
    ev.events = EPOLLIN;
    ev.data.ptr = &e->ctl;
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, e->ctl.fd, &ev) < 0)
        goto out_destroy;
    e->ctl.in_epoll = 1;
    fe_is_get(e);                  /* the introspection's clock starts now */
    *out = e;
    return 0;
out_destroy:
    mwfe_destroy(e);
    return -ENOMEM;
}

void mwfe_destroy(struct mwfe *e)
{
    if (!e)
        return;
    do_detach(e, 0);
    while (e->clients)
        client_drop(e, e->clients, NULL);
    for (uint32_t i = 0; e->socks && i < e->cfg.max_sockets; i++)
        if (sk_is_entry(e, i)) {
            struct fe_sock *sk = e->socks[i];

            src_unwatch(e, &sk->src);
            close_fd(&sk->src.fd);
            close_fd(&sk->x);
            close_fd(&sk->nb_x);
            free(sk);
        }
    while (e->ops) {
        struct fe_op *op = e->ops;

        e->ops = op->next;
        free(op);
    }
    bury(e);
    fe_is_free(e);
    if (e->path) {
        unlink(e->path);
        free(e->path);
    }
    close_fd(&e->listen.fd);
    close_fd(&e->ctl.fd);
    close_fd(&e->link_efd);
    close_fd(&e->ep);
    free(e->socks);
    free(e->gens);
    free(e->free_idx);
    free(e->scratch);
    free(e->msg);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->cond);
    free(e);
}

int mwfe_listen(struct mwfe *e, const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd, err;

    if (e->listen.fd >= 0)
        return -EALREADY;
    if (strlen(path) >= sizeof(sun.sun_path))
        return -ENAMETOOLONG;
    strcpy(sun.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || chmod(path, 0666) < 0 ||
        listen(fd, 128) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    e->path = strdup(path);
    e->listen.fd = fd;
    src_watch(e, &e->listen, EPOLLIN);
    return 0;
}

/* Run a ctl request in the loop's thread, or here when no loop runs. */
static int ctl_call(struct mwfe *e, struct fe_ctl *r)
{
    uint64_t one = 1;
    int ret;

    pthread_mutex_lock(&e->lock);
    if (!e->running) {
        ret = r->op == 1 ? do_attach(e, r) : (do_detach(e, 0), 0);
        pthread_mutex_unlock(&e->lock);
        return ret;
    }
    while (e->ctl_req)     /* one at a time */
        pthread_cond_wait(&e->cond, &e->lock);
    e->ctl_req = r;
    if (write(e->ctl.fd, &one, sizeof(one)) < 0)
        fe_log("control eventfd: %s", strerror(errno));
    while (!r->done)
        pthread_cond_wait(&e->cond, &e->lock);
    e->ctl_req = NULL;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    return r->ret;
}

int mwfe_attach(struct mwfe *e, void *base, size_t size, const struct mw_area_geom *geom,
                struct mw_evtchn *ec, uint32_t port, uint32_t features)
{
    struct fe_ctl r = { .op = 1, .base = base, .size = size, .geom = *geom, .ec = ec,
                        .port = port, .features = features };

    if (!ec || !base)
        return -EINVAL;
    return ctl_call(e, &r);
}

int mwfe_detach(struct mwfe *e)
{
    struct fe_ctl r = { .op = 2 };

    return ctl_call(e, &r);
}

void mwfe_stop(struct mwfe *e)
{
    uint64_t one = 1;

    __atomic_store_n(&e->stopping, 1, __ATOMIC_RELEASE);
    if (write(e->ctl.fd, &one, sizeof(one)) < 0)
        return;
}

void mwfe_stats(struct mwfe *e, struct mwfe_stats *st)
{
    uint64_t *dst = (uint64_t *)st, *src = (uint64_t *)&e->st;

    for (size_t i = 0; i < sizeof(*st) / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

int mwfe_link(struct mwfe *e, char *why, size_t len)
{
    int ret;

    pthread_mutex_lock(&e->lock);
    ret = e->attached ? 1 : e->lost_errno;
    if (why && len) {
        strncpy(why, e->why, len - 1);
        why[len - 1] = 0;
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int mwfe_link_fd(struct mwfe *e)
{
    return e->link_efd;
}
