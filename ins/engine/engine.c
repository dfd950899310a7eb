/*
 * The INS engine: one epoll loop serving every attached frontend (see ins_engine.h).
 *
 * Layout of this file:
 *   helpers       logging, addresses, responses, events, violations
 *   sockets       creation, epoll interest, the pumps between sockets and byte rings, close
 *   commands      one handler per command; each ends at `out:`, which writes the response
 *   frontends     requests and fq events of one frontend, push and kick
 *   engine        create, attach, detach, the loop, stats
 *
 * Trust. A request is copied out of its slot by the ring library and checked by the codec
 * (mw_req_check, docs/protocol.md 14.3) before anything looks at it; the handlers then make
 * the checks of 14.4 (the slot's state). Offsets and lengths of rings and out-of-line buffers
 * were bounded by the codec against the negotiated data-pages, which come from XenStore,
 * never from the area. A violation marks the frontend broken: nothing more is read from its
 * area, and at the end of the loop iteration its sockets are closed and the control plane is
 * told (notify_fd).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <linux/sockios.h>
#include <time.h>
#include <unistd.h>

#include "ins_priv.h"
#include "mwcomms/fdlimit.h"
#include "mwcomms/spin.h"

#define DEFAULT_DNS_WORKERS 4u
#define DEFAULT_MAX_BUF (64ull << 20)
#define EPOLL_BATCH 64
#define SERVICE_BUDGET 512       /* requests + events of one frontend per turn */
#define PROBE_MS 1000            /* kick idle frontends this often: a dead one is noticed */

/* ------------------------------------------------------------------------------------------
 * Helpers
 */

void ins_log(struct ins_engine *e, const char *fmt, ...)
{
    char line[512];
    struct timespec ts;
    va_list ap;
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    n = snprintf(line, sizeof(line), "%lld.%03ld ins: ", (long long)ts.tv_sec,
                 ts.tv_nsec / 1000000);
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    if (write(e->cfg.log_fd >= 0 ? e->cfg.log_fd : 2, line, (size_t)n) < 0) {
        /* nowhere else to say it */
    }
}

void ins_sockaddr_from(const struct sockaddr *sa, struct mw_sockaddr *out)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

        mw_sockaddr_build(out, MW_AF_INET, ntohs(in->sin_port),
                          (const uint8_t *)&in->sin_addr, 0, 0);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

        mw_sockaddr_build(out, MW_AF_INET6, ntohs(in6->sin6_port),
                          (const uint8_t *)&in6->sin6_addr, ntohl(in6->sin6_flowinfo),
                          in6->sin6_scope_id);
    } else {
        mw_sockaddr_build(out, MW_AF_UNSPEC, 0, NULL, 0, 0);
    }
}

int ins_sockaddr_to(const struct mw_sockaddr *a, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    switch (a->family) {
    case MW_AF_INET: {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;

        in->sin_family = AF_INET;
        in->sin_port = a->port;             /* both in network order */
        memcpy(&in->sin_addr, a->addr, 4);
        *len = sizeof(*in);
        return 0;
    }
    case MW_AF_INET6: {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

        in6->sin6_family = AF_INET6;
        in6->sin6_port = a->port;
        in6->sin6_flowinfo = a->flowinfo;
        memcpy(&in6->sin6_addr, a->addr, 16);
        in6->sin6_scope_id = a->scope_id;
        *len = sizeof(*in6);
        return 0;
    }
    case MW_AF_UNSPEC:
        ss->ss_family = AF_UNSPEC;
        *len = sizeof(sa_family_t);
        return 0;
    }
    return -EAFNOSUPPORT;
}

/* An address of a request the frontend may not use without the ipv6 feature (3.3). */
static int family_allowed(const struct ins_front *fe, uint16_t family)
{
    return family != MW_AF_INET6 || (fe->features & INS_F_IPV6);
}

/**
 * Record a violation of the protocol by this frontend (docs/protocol.md 14.9): log it, stop
 * reading its area; its sockets are closed at the end of the loop iteration.
 * @return -EPROTO, for the caller to return
 */
static int __attribute__((format(printf, 2, 3))) violation(struct ins_front *fe,
                                                           const char *fmt, ...)
{
    va_list ap;

    if (fe->broken)
        return -EPROTO;
    va_start(ap, fmt);
    vsnprintf(fe->st.why, sizeof(fe->st.why), fmt, ap);
    va_end(ap);
    fe->broken = 1;
    fe->st.broken = 1;
    fe->st.proto_errors++;
    ins_log(fe->eng, "frontend %u (handle %d): protocol violation: %s; disconnecting it",
            fe->front_id, fe->handle, fe->st.why);
    return -EPROTO;
}

/* Queue a response (published by front_flush). */
static int respond(struct ins_front *fe, const struct mw_rsp *rsp)
{
    int rc;

    if (fe->broken)
        return -EPROTO;
    rc = mw_cmd_back_put_rsp(&fe->cmd, rsp);
    if (rc < 0)
        return violation(fe, "command ring: cannot put a response (%s)", strerror(-rc));
    fe->dirty = 1;
    return 0;
}

static int respond_ret(struct ins_front *fe, uint32_t id, uint16_t cmd, uint32_t sock,
                       int32_t ret)
{
    struct mw_rsp rsp;

    mw_rsp_build(&rsp, id, cmd, sock, ret);
    return respond(fe, &rsp);
}

/* Post an event on bq (published by front_flush). */
static int post(struct ins_front *fe, uint32_t slot, uint16_t type, uint64_t arg)
{
    int rc;

    if (fe->broken)
        return -EPROTO;
    rc = mw_evq_put(&fe->bq, slot, type, arg);
    if (rc < 0)
        return violation(fe, "bq event queue: %s", strerror(-rc));
    fe->dirty = 1;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Sockets
 */

/* Close a socket without ever blocking the loop: close(2) waits up to the linger time when a
 * frontend set SO_LINGER {on, N > 0}, even on a non-blocking socket. The INS drops the wait and
 * lets its kernel finish sending in the background; {on, 0} (reset at once) is kept.
 * @param linger_set  the frontend set SO_LINGER on it (or its listener): else nothing to ask */
static void sock_close_fd(int fd, int linger_set)
{
    struct linger lg = { 0 };
    socklen_t l = sizeof(lg);

    if (linger_set && getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &l) == 0 && lg.l_onoff &&
        lg.l_linger > 0) {
        lg.l_onoff = 0;
        lg.l_linger = 0;
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(fd);
}

/*
 * The errno of a failed socket() or accept4() for the frontend. The INS running out of fds
 * (its RLIMIT_NOFILE, raised to the hard limit at create time) is -ENFILE: for the application
 * that is a system-wide limit, not its own table being full; -EMFILE stays the frontend's own
 * socket limit (max_socks). Logged, at most every 10 s.
 */
static int32_t fd_errno(struct ins_front *fe, const char *what)
{
    int err = errno;
    struct timespec ts;

    if (err != EMFILE && err != ENFILE)
        return -err;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (!fe->eng->nofile_logged || ts.tv_sec >= fe->eng->nofile_logged + 10) {
        fe->eng->nofile_logged = ts.tv_sec;
        ins_log(fe->eng, "frontend %u: %s: the INS is out of file descriptors (%u sockets "
                "open): answered ENFILE", fe->front_id, what, fe->st.sockets);
    }
    return -ENFILE;
}

/*
 * Whether the INS may accept a connection for a pending ACCEPT now. Every stream socket may,
 * once closed with unsent bytes, make the INS hold up to its tx ring in private memory
 * (sock_orphan): a connection is accepted only while that much of the frontend's budget is
 * free, or when nothing is held at all (a ring larger than the budget must not wait forever;
 * sock_orphan enforces the budget anyway). Otherwise it waits in the kernel's listen backlog,
 * as it would natively behind a slow accept(), and the listener is not polled until orphans
 * release memory (front_resume_accepts). Kernel socket buffers are not counted: the kernel
 * bounds them itself (tcp_wmem/tcp_rmem, tcp_mem), and max_socks bounds their number.
 */
static int accept_room(const struct ins_front *fe, const struct ins_accept *a)
{
    return !fe->st.buf_bytes || fe->st.buf_bytes + (1ull << a->rings.tx_order) <= fe->max_buf;
}

/* Make the epoll registration match what the socket waits for. A socket that waits for
 * nothing is not registered at all: a hung-up socket would otherwise report EPOLLHUP forever. */
static void sock_update_epoll(struct ins_sock *s)
{
    struct ins_engine *e = s->fe->eng;
    struct epoll_event ev = { .data.ptr = s };
    uint32_t want = 0;

    if (s->dead)
        return;
    if (s->listening)
        want = s->accepts && accept_room(s->fe, s->accepts) ? EPOLLIN : 0;
    else if (s->connecting)
        want = EPOLLOUT;
    else if (s->type == MW_SOCK_DGRAM || s->connected)
        want = (!s->rx_ended && !s->rx_full ? EPOLLIN : 0) |
               (s->tx_blocked ? EPOLLOUT : 0);
    if (!want && s->type == MW_SOCK_STREAM && s->connected && s->rx.flags == MW_RXF_EOF &&
        !s->tx_dead && !s->shut_wr)
        want = EPOLLERR;            /* rx ended, tx open: a reset must still be seen */
    if (want == s->ev)
        return;
    ev.events = want;
    if (!want)
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    else if (epoll_ctl(e->epfd, s->ev ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev) < 0)
        ins_log(e, "frontend %u socket %u: epoll_ctl: %s", s->fe->front_id, s->slot,
                strerror(errno));
    s->ev = want;
}

/* The stream's incoming direction ended (EOF: error 0). */
static int stream_end_rx(struct ins_sock *s, int32_t error)
{
    int rc;

    if (s->rx_ended)
        return 0;
    s->rx_ended = 1;
    rc = mw_bring_end_rx(&s->rx, error);
    if (rc == -EPROTO)
        return violation(s->fe, "socket %u: rx ring (ending it)", s->slot);
    return post(s->fe, s->slot, MW_EV_STATE, (uint64_t)(uint32_t)error);
}

static int shutdown_done(struct ins_sock *s)
{
    int ret = 0;

    s->shut_pending = 0;
    s->shut_wr = 1;
    if (shutdown(s->fd, SHUT_WR) < 0)
        ret = -errno;
    return respond_ret(s->fe, s->shut_id, MW_CMD_SHUTDOWN, s->slot, ret);
}

/*
 * The sending side of a stream failed (EPIPE, ECONNRESET) after its incoming side ended with
 * EOF (the peer closed, then reset our writes): rx_flags cannot say more, so the error is
 * kept for GETSOCKOPT(SO_ERROR) and announced with STATE, as for datagrams (docs/protocol.md
 * 7.5); the frontend makes the application's writes fail with EPIPE, as native ones do.
 */
static int stream_tx_failed(struct ins_sock *s, int32_t err)
{
    s->tx_dead = 1;
    if (s->rx.flags != MW_RXF_EOF)
        return 0;                   /* an error ended rx: the frontend knows already */
    s->so_error = err;
    return post(s->fe, s->slot, MW_EV_STATE, (uint64_t)(uint32_t)err);
}

/* tx ring -> socket, stream. */
static int pump_tx_stream(struct ins_sock *s)
{
    struct ins_front *fe = s->fe;
    uint32_t moved = 0;
    int n, rc;

    s->tx_blocked = 0;
    for (;;) {
        if (s->tx_dead) {
            /* the connection cannot send: discard what the frontend writes */
            n = mw_bring_avail(&s->tx);
            if (n > 0)
                n = mw_bring_consume(&s->tx, (uint32_t)n) ?: n;
        } else {
            n = mw_bring_write_fd(&s->tx, s->fd, UINT32_MAX);
        }
        if (n > 0) {
            moved += (uint32_t)n;
            if (!s->tx_dead)
                fe->st.tx_bytes += (uint32_t)n;
            continue;
        }
        if (n == 0) {
            if (s->shut_pending) {
                rc = shutdown_done(s);
                if (rc < 0)
                    return rc;
            }
            /* empty: ask for a DATA event when tx_prod moves, then look again */
            rc = mw_bring_prepare_wait(&s->tx, 1);
            if (rc == 1)
                continue;
            if (rc < 0)
                return violation(fe, "socket %u: tx ring indices", s->slot);
            break;
        }
        if (n == -EAGAIN) {
            s->tx_blocked = 1;
            break;
        }
        if (n == -EPROTO || n == -EINVAL)
            return violation(fe, "socket %u: tx ring indices", s->slot);
        /* EPIPE, ECONNRESET...: the connection is gone for sending */
        s->tx_dead = 1;
        if (!s->rx_ended) {
            rc = stream_end_rx(s, n);
            if (rc < 0)
                return rc;
        } else {
            rc = stream_tx_failed(s, n);
            if (rc < 0)
                return rc;
        }
    }
    if (moved) {
        rc = mw_bring_release(&s->tx);
        if (rc < 0)
            return violation(fe, "socket %u: tx ring indices", s->slot);
        if (rc == 1)
            return post(fe, s->slot, MW_EV_SPACE, s->tx.pvt);
    }
    return 0;
}

/* socket -> rx ring, stream. */
static int pump_rx_stream(struct ins_sock *s)
{
    struct ins_front *fe = s->fe;
    uint32_t moved = 0;
    int n, rc = 0;

    s->rx_full = 0;
    while (!s->rx_ended) {
        int space = mw_bring_space(&s->rx);

        n = space > 0 ? mw_bring_read_fd(&s->rx, s->fd, (uint32_t)space) : space == 0 ?
            -ENOBUFS : space;
        if (n > 0) {
            moved += (uint32_t)n;
            fe->st.rx_bytes += (uint32_t)n;
            /* A short read emptied the socket: epoll (level-triggered) says when there is
             * more (or the end), so no read that would only say EAGAIN. */
            if (n < space)
                break;
            continue;
        }
        if (n == -ENOBUFS) {
            /* full: ask for a SPACE event when rx_cons moves, then look again */
            rc = mw_bring_prepare_wait(&s->rx, 1);
            if (rc == 1)
                continue;
            if (rc < 0)
                return violation(fe, "socket %u: rx ring indices", s->slot);
            s->rx_full = 1;
            break;
        }
        if (n == -EAGAIN)
            break;
        if (n == -EPROTO || n == -EINVAL)
            return violation(fe, "socket %u: rx ring indices", s->slot);
        if (moved) {
            s->rx_hot = 2;
            rc = mw_bring_publish(&s->rx);
            if (rc < 0)
                return violation(fe, "socket %u: rx ring indices", s->slot);
            moved = 0;
        }
        rc = stream_end_rx(s, n);       /* 0: EOF; else the connection's error */
        if (rc < 0)
            return rc;
    }
    if (moved) {
        s->rx_hot = 2;
        rc = mw_bring_publish(&s->rx);
        if (rc < 0)
            return violation(fe, "socket %u: rx ring indices", s->slot);
        if (rc == 1)
            return post(fe, s->slot, MW_EV_DATA, s->rx.pvt);
    }
    return 0;
}

/* A datagram socket met a pending error (an ICMP error of an earlier datagram) in the INS:
 * keep it for GETSOCKOPT(SO_ERROR) and tell the frontend with a STATE event (rx_flags stay 0:
 * they are for streams), docs/protocol.md 7.5. */
static int dgram_error(struct ins_sock *s, int32_t err)
{
    s->so_error = err;
    return post(s->fe, s->slot, MW_EV_STATE, (uint64_t)(uint32_t)err);
}

/* tx ring -> socket, datagrams: one sendmsg() per record, payload straight from the ring. */
static int pump_tx_dgram(struct ins_sock *s)
{
    struct ins_front *fe = s->fe;
    int moved = 0, rc;

    s->tx_blocked = 0;
    for (;;) {
        struct mw_dgram_hdr hdr;
        struct sockaddr_storage ss;
        struct iovec iov[2];
        struct msghdr msg = { 0 };
        const char *why = NULL;
        socklen_t sl = 0;
        int niov = 0;
        ssize_t sent;

        rc = mw_bring_dgram_peek(&s->tx, &hdr, iov, &niov);
        if (rc < 0)
            return violation(fe, "socket %u: tx datagram record", s->slot);
        if (rc == 0) {
            rc = mw_bring_prepare_wait(&s->tx, 1);
            if (rc == 1)
                continue;
            if (rc < 0)
                return violation(fe, "socket %u: tx ring indices", s->slot);
            break;
        }
        if (mw_dgram_check(&hdr, s->tx.size, 0, &why) < 0)
            return violation(fe, "socket %u: tx datagram: %s", s->slot, why);
        if (hdr.addr.family != MW_AF_UNSPEC) {
            if (!family_allowed(fe, hdr.addr.family) ||
                ins_sockaddr_to(&hdr.addr, &ss, &sl) < 0)
                goto skip;          /* as a send that fails: the datagram is lost */
            msg.msg_name = &ss;
            msg.msg_namelen = sl;
        }
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)niov;
        sent = sendmsg(s->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            s->tx_blocked = 1;      /* the record stays: peeked again on EPOLLOUT */
            break;
        }
        if (sent < 0 && errno == ECONNREFUSED) {
            rc = dgram_error(s, -errno);    /* an earlier datagram's ICMP error */
            if (rc < 0)
                return rc;
        } else if (sent >= 0)
            fe->st.tx_bytes += (uint64_t)sent;
skip:
        if (mw_bring_dgram_skip(&s->tx) < 0)
            return violation(fe, "socket %u: tx datagram record", s->slot);
        moved = 1;
    }
    if (moved) {
        rc = mw_bring_release(&s->tx);
        if (rc < 0)
            return violation(fe, "socket %u: tx ring indices", s->slot);
        if (rc == 1)
            return post(fe, s->slot, MW_EV_SPACE, s->tx.pvt);
    }
    return 0;
}

/* socket -> rx ring, datagrams: a record per datagram, dropped when it can never fit. */
static int pump_rx_dgram(struct ins_sock *s)
{
    struct ins_front *fe = s->fe;
    uint8_t *buf = fe->eng->scratch;
    int moved = 0, rc;

    s->rx_full = 0;
    for (;;) {
        struct sockaddr_storage ss;
        struct mw_dgram_hdr hdr;
        struct mw_sockaddr from;
        struct iovec iov = { .iov_base = buf, .iov_len = MW_DGRAM_MAX };
        struct msghdr msg = { .msg_name = &ss, .msg_namelen = sizeof(ss), .msg_iov = &iov,
                              .msg_iovlen = 1 };
        ssize_t len;
        uint64_t rec;
        int space;

        len = recv(s->fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
        if (len < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            rc = dgram_error(s, -errno);    /* e.g. ECONNREFUSED */
            if (rc < 0)
                return rc;
            continue;
        }
        rec = MW_DGRAM_RECORD(len);
        if (len > MW_DGRAM_MAX || rec > s->rx.size) {
            recv(s->fd, buf, 1, MSG_DONTWAIT);      /* can never fit: dropped */
            continue;
        }
        space = mw_bring_space(&s->rx);
        if (space < 0)
            return violation(fe, "socket %u: rx ring indices", s->slot);
        if ((uint64_t)space < rec) {
            rc = mw_bring_prepare_wait(&s->rx, (uint32_t)rec);
            if (rc == 1)
                continue;
            if (rc < 0)
                return violation(fe, "socket %u: rx ring indices", s->slot);
            s->rx_full = 1;
            break;
        }
        len = recvmsg(s->fd, &msg, MSG_DONTWAIT);
        if (len < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            rc = dgram_error(s, -errno);
            if (rc < 0)
                return rc;
            continue;
        }
        ins_sockaddr_from((struct sockaddr *)&ss, &from);
        if (from.family == MW_AF_UNSPEC)
            continue;               /* no source address: nothing the wire can carry */
        mw_dgram_build(&hdr, (uint32_t)len, &from);
        rc = mw_bring_dgram_put(&s->rx, &hdr, buf);
        if (rc < 0)
            return violation(fe, "socket %u: rx ring indices", s->slot);
        fe->st.rx_bytes += (uint64_t)len;
        moved = 1;
    }
    if (moved) {
        s->rx_hot = 2;
        rc = mw_bring_publish(&s->rx);
        if (rc < 0)
            return violation(fe, "socket %u: rx ring indices", s->slot);
        if (rc == 1)
            return post(fe, s->slot, MW_EV_DATA, s->rx.pvt);
    }
    return 0;
}

static struct ins_sock *sock_new(struct ins_front *fe, uint32_t slot, int fd, uint16_t type,
                                 uint16_t family, const struct mw_rings *rings)
{
    struct ins_sock *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->kind = INS_K_SOCK;
    s->fe = fe;
    s->slot = slot;
    s->fd = fd;
    s->type = type;
    s->family = family;
    s->accepts_tail = &s->accepts;
    /* the codec checked orders, alignment and bounds; this cannot fail */
    if (mw_bring_init(&s->tx, &fe->area, slot, MW_SIDE_BACK, MW_BRING_TX, rings->tx_off,
                      rings->tx_order) < 0 ||
        mw_bring_init(&s->rx, &fe->area, slot, MW_SIDE_BACK, MW_BRING_RX, rings->rx_off,
                      rings->rx_order) < 0) {
        free(s);
        return NULL;
    }
    fe->socks[slot] = s;
    fe->slot_state[slot] = INS_SLOT_OPEN;
    fe->st.sockets++;
    return s;
}

/* Move what a socket can move now, then wait for what it waits for. */
#define PUMP_TX 1u
#define PUMP_RX 2u
static int sock_pump(struct ins_sock *s);
static int sock_pump_some(struct ins_sock *s, unsigned int what);

/* Close the socket for good: no event about it is acted upon any more, its slot is free. */
static void sock_free(struct ins_sock *s, int close_fd)
{
    struct ins_front *fe = s->fe;
    struct ins_engine *e = fe->eng;
    struct ins_accept *a;

    if (s->ev)
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    if (close_fd)
        sock_close_fd(s->fd, s->linger_set);
    while ((a = s->accepts)) {
        s->accepts = a->next;
        fe->slot_state[a->new_sock] = INS_SLOT_FREE;
        fe->st.sockets--;
        free(a);
    }
    fe->socks[s->slot] = NULL;
    fe->slot_state[s->slot] = INS_SLOT_FREE;
    fe->st.sockets--;
    s->dead = 1;
    /* freed after this epoll batch: an event of the batch may still point at it */
    s->next_dead = e->dead_socks;
    e->dead_socks = s;
}

static void orphan_free(struct ins_orphan *o)
{
    struct ins_orphan **pp;

    for (pp = &o->fe->orphans; *pp; pp = &(*pp)->next) {
        if (*pp == o) {
            *pp = o->next;
            break;
        }
    }
    epoll_ctl(o->fe->eng->epfd, EPOLL_CTL_DEL, o->fd, NULL);
    sock_close_fd(o->fd, o->linger_set);
    o->fe->st.buf_bytes -= o->len;
    free(o->buf);
    o->buf = NULL;
    o->dead = 1;
    /* freed after this epoll batch, as sockets are */
    o->next_dead = o->fe->eng->dead_orphans;
    o->fe->eng->dead_orphans = o;
}

/* Memory held for the frontend was released: listeners whose ACCEPTs waited for room accept
 * again (connections that arrived meanwhile are in their backlog). */
static void front_resume_accepts(struct ins_front *fe)
{
    uint32_t slot;

    if (fe->dead || fe->broken)
        return;
    for (slot = 0; slot < fe->lim.sock_slots; slot++) {
        struct ins_sock *s = fe->socks[slot];

        if (s && s->listening && s->accepts && !s->ev && sock_pump(s) < 0)
            return;
    }
}

/* Send what an orphan still holds; close it when done or when the connection fails. */
static void orphan_pump(struct ins_orphan *o)
{
    while (o->off < o->len) {
        ssize_t n = send(o->fd, o->buf + o->off, o->len - o->off, MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0)
            break;
        o->off += (uint32_t)n;
    }
    orphan_free(o);
    front_resume_accepts(o->fe);
}

/*
 * CLOSE of a stream socket with unsent tx bytes: copy them out of the ring (the frontend may
 * reuse its memory once the CLOSE is answered) and keep the connection until they are sent.
 * @return 1 (the fd now belongs to an orphan), 0 (nothing to keep: close the fd)
 */
static int sock_orphan(struct ins_sock *s)
{
    struct ins_front *fe = s->fe;
    struct linger lg = { 0 };
    socklen_t l = sizeof(lg);
    struct ins_orphan *o;
    struct epoll_event ev;
    int avail;

    if (s->type != MW_SOCK_STREAM || !s->connected || s->tx_dead)
        return 0;
    if (s->linger_set && getsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, &l) == 0 &&
        lg.l_onoff && !lg.l_linger)
        return 0;                   /* SO_LINGER {on, 0}: discard and reset */
    while (mw_bring_write_fd(&s->tx, s->fd, UINT32_MAX) > 0)
        ;
    avail = mw_bring_avail(&s->tx);
    if (avail <= 0)
        return 0;
    if (fe->st.buf_bytes + (uint64_t)avail > fe->max_buf) {
        ins_log(fe->eng, "frontend %u socket %u: %d unsent bytes dropped at close (buffer "
                "limit)", fe->front_id, s->slot, avail);
        return 0;
    }
    o = calloc(1, sizeof(*o));
    if (!o)
        return 0;
    o->buf = malloc((size_t)avail);
    if (!o->buf) {
        free(o);
        return 0;
    }
    o->len = (uint32_t)mw_bring_peek(&s->tx, o->buf, (uint32_t)avail);
    o->kind = INS_K_ORPHAN;
    o->linger_set = s->linger_set;
    o->fe = fe;
    o->fd = s->fd;
    if (s->ev)
        epoll_ctl(fe->eng->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    s->ev = 0;
    ev.events = EPOLLOUT;
    ev.data.ptr = o;
    if (epoll_ctl(fe->eng->epfd, EPOLL_CTL_ADD, o->fd, &ev) < 0) {
        free(o->buf);
        free(o);
        return 0;
    }
    fe->st.buf_bytes += o->len;
    o->next = fe->orphans;
    fe->orphans = o;
    return 1;
}

/* Accept connections into the pending ACCEPTs of a listening socket, in arrival order. */
static int pump_accept(struct ins_sock *s)
{
    struct ins_front *fe = s->fe;
    int rc;

    while (s->accepts && accept_room(fe, s->accepts)) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct ins_accept *a;
        struct ins_sock *ns = NULL;
        struct mw_sockaddr peer;
        struct mw_rsp rsp;
        int32_t ret = 0;
        int fd;

        fd = accept4(s->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            fd = mw_fd_high(fd);    /* the low fds stay for the daemon's Python side */
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            if (errno == ECONNABORTED || errno == EPROTO || errno == EPERM)
                continue;           /* that connection went away: wait for the next */
            ret = fd_errno(fe, "ACCEPT");   /* ENFILE, ENOBUFS, EINVAL (not listening)... */
        }
        a = s->accepts;
        s->accepts = a->next;
        if (!s->accepts)
            s->accepts_tail = &s->accepts;
        /* the reserved slot is handed over (or freed): one count either way */
        fe->slot_state[a->new_sock] = INS_SLOT_FREE;
        fe->st.sockets--;
        if (ret == 0) {
            ns = sock_new(fe, a->new_sock, fd, MW_SOCK_STREAM, s->family, &a->rings);
            if (!ns)
                ret = -ENOMEM;
        }
        if (ret < 0) {
            if (fd >= 0)
                close(fd);
            rc = respond_ret(fe, a->id, MW_CMD_ACCEPT, s->slot, ret);
            free(a);
            if (rc < 0)
                return rc;
            continue;
        }
        ns->connected = 1;
        ns->linger_set = s->linger_set;     /* accepted sockets inherit the listener's */
        ins_sockaddr_from((struct sockaddr *)&ss, &peer);
        mw_rsp_build_addr(&rsp, a->id, MW_CMD_ACCEPT, s->slot, &peer);
        free(a);
        rc = respond(fe, &rsp);
        if (rc < 0)
            return rc;
        /* the connection may have brought bytes already: the INS may produce into new_sock's
         * rx ring from the moment its response is written (docs/protocol.md 7.4); epoll
         * (EPOLLIN, registered here) reports them, so no read that would mostly say EAGAIN */
        rc = sock_pump_some(ns, PUMP_TX);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * Move what can move on a socket: tx ring -> socket (PUMP_TX) and socket -> rx ring (PUMP_RX),
 * or accept into pending ACCEPTs. Callers that know why they were called ask for one way only:
 * a DATA event from the frontend has nothing to do with the socket's incoming bytes, and a
 * read there would mostly say EAGAIN (epoll, level-triggered, reports those).
 */
static int sock_pump_some(struct ins_sock *s, unsigned int what)
{
    int rc = 0;

    if (s->dead || s->fe->broken)
        return s->fe->broken ? -EPROTO : 0;
    if (s->listening) {
        rc = pump_accept(s);
    } else if (s->type == MW_SOCK_DGRAM) {
        if (what & PUMP_TX)
            rc = pump_tx_dgram(s);
        if (rc == 0 && (what & PUMP_RX))
            rc = pump_rx_dgram(s);
    } else if (s->connected) {
        if (what & PUMP_TX)
            rc = pump_tx_stream(s);
        if (rc == 0 && (what & PUMP_RX))
            rc = pump_rx_stream(s);
    }
    sock_update_epoll(s);
    return rc;
}

static int sock_pump(struct ins_sock *s)
{
    return sock_pump_some(s, PUMP_TX | PUMP_RX);
}

/* A connecting socket became writable or failed: answer its CONNECT. */
static int sock_connect_done(struct ins_sock *s)
{
    struct mw_sockaddr local;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(int);
    struct mw_rsp rsp;
    int err = 0;

    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
        err = errno;
    s->connecting = 0;
    if (err) {
        s->so_error = -err;
        mw_rsp_build(&rsp, s->connect_id, MW_CMD_CONNECT, s->slot, -err);
    } else {
        sl = sizeof(ss);
        if (getsockname(s->fd, (struct sockaddr *)&ss, &sl) < 0)
            ss.ss_family = AF_UNSPEC;
        ins_sockaddr_from((struct sockaddr *)&ss, &local);
        s->connected = 1;
        if (local.family == MW_AF_UNSPEC)
            mw_rsp_build(&rsp, s->connect_id, MW_CMD_CONNECT, s->slot, -ENOTCONN);
        else
            mw_rsp_build_addr(&rsp, s->connect_id, MW_CMD_CONNECT, s->slot, &local);
    }
    if (respond(s->fe, &rsp) < 0)
        return -EPROTO;
    return sock_pump_some(s, PUMP_TX);  /* epoll (EPOLLIN from now) reports incoming bytes */
}

static void sock_event(struct ins_sock *s, uint32_t events)
{
    if (s->dead || s->fe->broken)
        return;
    if (s->connecting) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            sock_connect_done(s);
        return;
    }
    if ((events & (EPOLLERR | EPOLLHUP)) && s->type == MW_SOCK_STREAM && s->connected &&
        s->rx_ended && !s->tx_dead) {
        int err = 0;
        socklen_t sl = sizeof(err);

        /* the peer reset a connection whose incoming side had ended */
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0 || err <= 0)
            err = EPIPE;
        if (stream_tx_failed(s, -err) < 0)
            return;
    }
    sock_pump_some(s, (events & EPOLLIN ? PUMP_RX : 0) | (events & EPOLLOUT ? PUMP_TX : 0) |
                   (events & (EPOLLERR | EPOLLHUP) ? PUMP_TX | PUMP_RX : 0));
}

/* ------------------------------------------------------------------------------------------
 * Commands: one handler each. A handler returns 0 once the request is answered or pending,
 * -EPROTO after a violation (no answer: the frontend is being disconnected).
 */

/* The socket a request is about: open (docs/protocol.md 14.4 (2)), else a violation. */
static struct ins_sock *open_sock(struct ins_front *fe, const struct mw_req *req)
{
    if (fe->slot_state[req->sock] != INS_SLOT_OPEN || !fe->socks[req->sock]) {
        violation(fe, "request %s id %u: socket slot %u is not open",
                  mw_cmd_name(req->cmd), req->id, req->sock);
        return NULL;
    }
    return fe->socks[req->sock];
}

static int free_slot_check(struct ins_front *fe, const struct mw_req *req, uint32_t slot)
{
    if (fe->slot_state[slot] != INS_SLOT_FREE)
        return violation(fe, "request %s id %u: socket slot %u is not free",
                         mw_cmd_name(req->cmd), req->id, slot);
    return 0;
}

static int do_socket(struct ins_front *fe, const struct mw_req *req)
{
    const struct mw_req_socket *b = &req->u.socket;
    struct ins_sock *s = NULL;
    int32_t ret = 0;
    int fd, rc;

    if (free_slot_check(fe, req, req->sock) < 0)
        return -EPROTO;
    if (!family_allowed(fe, b->family)) {
        ret = -EAFNOSUPPORT;
        goto out;
    }
    if (b->type == MW_SOCK_DGRAM && !(fe->features & INS_F_UDP)) {
        ret = -EPROTONOSUPPORT;
        goto out;
    }
    if (fe->st.sockets >= fe->max_socks) {
        ret = -EMFILE;
        goto out;
    }
    fd = socket(b->family, b->type | SOCK_NONBLOCK | SOCK_CLOEXEC, b->protocol);
    if (fd < 0) {
        ret = fd_errno(fe, "SOCKET");
        goto out;
    }
    fd = mw_fd_high(fd);            /* the low fds stay for the daemon's Python side */
    s = sock_new(fe, req->sock, fd, b->type, b->family, &b->rings);
    if (!s) {
        ret = -ENOMEM;
        goto out_close;
    }
    goto out;

out_close:
    close(fd);
out:
    rc = respond_ret(fe, req->id, req->cmd, req->sock, ret);
    /* a datagram socket may send at once: ask for DATA on its tx ring, watch its rx (epoll
     * reports incoming datagrams) */
    if (rc == 0 && ret == 0)
        rc = sock_pump_some(s, PUMP_TX);
    return rc;
}

static int do_connect(struct ins_front *fe, const struct mw_req *req)
{
    struct ins_sock *s = open_sock(fe, req);
    struct sockaddr_storage ss;
    struct mw_sockaddr local;
    struct mw_rsp rsp;
    socklen_t sl;
    int32_t ret = 0;

    if (!s)
        return -EPROTO;
    if (!family_allowed(fe, req->u.addr.addr.family)) {
        ret = -EAFNOSUPPORT;
        goto out;
    }
    if (s->connecting) {
        ret = -EALREADY;
        goto out;
    }
    ins_sockaddr_to(&req->u.addr.addr, &ss, &sl);
    if (connect(s->fd, (struct sockaddr *)&ss, sl) < 0) {
        if (errno == EINPROGRESS && s->type == MW_SOCK_STREAM) {
            /* answered by sock_connect_done when the socket becomes writable */
            s->connecting = 1;
            s->connect_id = req->id;
            sock_update_epoll(s);
            return 0;
        }
        ret = -errno;
        goto out;
    }
    if (s->type == MW_SOCK_STREAM)
        s->connected = 1;

out:
    if (ret == 0) {
        sl = sizeof(ss);
        if (getsockname(s->fd, (struct sockaddr *)&ss, &sl) < 0)
            ss.ss_family = AF_UNSPEC;
        ins_sockaddr_from((struct sockaddr *)&ss, &local);
        if (local.family == MW_AF_UNSPEC)
            ret = -ENOTCONN;
    }
    if (ret < 0)
        mw_rsp_build(&rsp, req->id, req->cmd, req->sock, ret);
    else
        mw_rsp_build_addr(&rsp, req->id, req->cmd, req->sock, &local);
    if (respond(fe, &rsp) < 0)
        return -EPROTO;
    return ret == 0 ? sock_pump_some(s, PUMP_TX) : 0;    /* epoll reports incoming bytes */
}

static int do_bind(struct ins_front *fe, const struct mw_req *req)
{
    struct ins_sock *s = open_sock(fe, req);
    struct sockaddr_storage ss;
    struct mw_sockaddr local;
    struct mw_rsp rsp;
    socklen_t sl;
    int32_t ret = 0;

    if (!s)
        return -EPROTO;
    if (!family_allowed(fe, req->u.addr.addr.family)) {
        ret = -EAFNOSUPPORT;
        goto out;
    }
    ins_sockaddr_to(&req->u.addr.addr, &ss, &sl);
    if (bind(s->fd, (struct sockaddr *)&ss, sl) < 0) {
        ret = -errno;
        goto out;
    }
    sl = sizeof(ss);
    if (getsockname(s->fd, (struct sockaddr *)&ss, &sl) < 0)
        ret = -errno;
    else
        ins_sockaddr_from((struct sockaddr *)&ss, &local);

out:
    if (ret < 0)
        mw_rsp_build(&rsp, req->id, req->cmd, req->sock, ret);
    else
        mw_rsp_build_addr(&rsp, req->id, req->cmd, req->sock, &local);
    return respond(fe, &rsp);
}

static int do_listen(struct ins_front *fe, const struct mw_req *req)
{
    struct ins_sock *s = open_sock(fe, req);
    int32_t ret = 0;

    if (!s)
        return -EPROTO;
    if (listen(s->fd, req->u.listen.backlog) < 0) {
        ret = -errno;
        goto out;
    }
    s->listening = 1;
    sock_update_epoll(s);

out:
    return respond_ret(fe, req->id, req->cmd, req->sock, ret);
}

static int do_accept(struct ins_front *fe, const struct mw_req *req)
{
    const struct mw_req_accept *b = &req->u.accept;
    struct ins_sock *s = open_sock(fe, req);
    struct ins_accept *a;
    int32_t ret = 0;

    if (!s)
        return -EPROTO;
    if (free_slot_check(fe, req, b->new_sock) < 0)
        return -EPROTO;
    if (!s->listening) {
        ret = -EINVAL;
        goto out;
    }
    if (fe->st.sockets >= fe->max_socks) {
        ret = -EMFILE;
        goto out;
    }
    a = calloc(1, sizeof(*a));
    if (!a) {
        ret = -ENOMEM;
        goto out;
    }
    a->id = req->id;
    a->new_sock = b->new_sock;
    a->rings = b->rings;
    *s->accepts_tail = a;
    s->accepts_tail = &a->next;
    fe->slot_state[b->new_sock] = INS_SLOT_RESERVED;
    fe->st.sockets++;
    /* answered by pump_accept when a connection arrives: epoll (level-triggered) reports
     * one already waiting, so no accept4() here that would mostly say EAGAIN */
    sock_update_epoll(s);
    return 0;

out:
    return respond_ret(fe, req->id, req->cmd, req->sock, ret);
}

static int do_shutdown(struct ins_front *fe, const struct mw_req *req)
{
    struct ins_sock *s = open_sock(fe, req);
    int how = req->u.shutdown.how;
    int32_t ret = 0;
    int rem;

    if (!s)
        return -EPROTO;
    if (how == SHUT_RD || s->type != MW_SOCK_STREAM || !s->connected) {
        if (shutdown(s->fd, how) < 0)
            ret = -errno;
        goto out;
    }
    if (s->shut_pending) {
        ret = -EALREADY;
        goto out;
    }
    if (how == SHUT_RDWR && shutdown(s->fd, SHUT_RD) < 0) {
        ret = -errno;
        goto out;
    }
    /* the write half takes effect once tx is drained up to the tx_prod read now (7.4);
     * from here tx_prod may not move (14.4 (3)) */
    rem = mw_bring_seal(&s->tx);
    if (rem < 0)
        return violation(fe, "socket %u: tx ring indices at SHUTDOWN", s->slot);
    s->shut_pending = 1;
    s->shut_id = req->id;
    return sock_pump(s);            /* answers via shutdown_done when tx is empty */

out:
    return respond_ret(fe, req->id, req->cmd, req->sock, ret);
}

static int do_close(struct ins_front *fe, const struct mw_req *req)
{
    struct ins_sock *s = open_sock(fe, req);
    struct ins_accept *a;
    int rc;

    if (!s)
        return -EPROTO;
    /* pending requests about the socket are answered first (7.4) */
    if (s->connecting) {
        s->connecting = 0;
        if (respond_ret(fe, s->connect_id, MW_CMD_CONNECT, s->slot, -ECANCELED) < 0)
            return -EPROTO;
    }
    if (s->shut_pending) {
        s->shut_pending = 0;
        if (respond_ret(fe, s->shut_id, MW_CMD_SHUTDOWN, s->slot, -ECANCELED) < 0)
            return -EPROTO;
    }
    while ((a = s->accepts)) {
        s->accepts = a->next;
        fe->slot_state[a->new_sock] = INS_SLOT_FREE;
        fe->st.sockets--;
        rc = respond_ret(fe, a->id, MW_CMD_ACCEPT, s->slot, -ECANCELED);
        free(a);
        if (rc < 0)
            return -EPROTO;
    }
    s->accepts_tail = &s->accepts;
    /* unsent tx bytes go on from private memory; after this the ring is not touched */
    sock_free(s, !sock_orphan(s));
    return respond_ret(fe, req->id, req->cmd, req->sock, 0);
}

/* The socket options the INS applies (docs/protocol.md 7.4); everything else is ENOPROTOOPT
 * and never reaches the kernel. */
struct opt_rule {
    int level, name;
    unsigned get:1, set:1;
};

static const struct opt_rule opt_rules[] = {
    { SOL_SOCKET, SO_REUSEADDR, 1, 1 },   { SOL_SOCKET, SO_REUSEPORT, 1, 1 },
    { SOL_SOCKET, SO_KEEPALIVE, 1, 1 },   { SOL_SOCKET, SO_LINGER, 1, 1 },
    { SOL_SOCKET, SO_SNDBUF, 1, 1 },      { SOL_SOCKET, SO_RCVBUF, 1, 1 },
    { SOL_SOCKET, SO_BROADCAST, 1, 1 },   { SOL_SOCKET, SO_OOBINLINE, 1, 1 },
    { SOL_SOCKET, SO_ERROR, 1, 0 },       { SOL_SOCKET, SO_TYPE, 1, 0 },
    { SOL_SOCKET, SO_ACCEPTCONN, 1, 0 },  { SOL_SOCKET, SO_DOMAIN, 1, 0 },
    { SOL_SOCKET, SO_PROTOCOL, 1, 0 },    { SOL_SOCKET, SO_PRIORITY, 1, 1 },
    { IPPROTO_TCP, TCP_NODELAY, 1, 1 },   { IPPROTO_TCP, TCP_MAXSEG, 1, 1 },
    { IPPROTO_TCP, TCP_KEEPIDLE, 1, 1 },  { IPPROTO_TCP, TCP_KEEPINTVL, 1, 1 },
    { IPPROTO_TCP, TCP_KEEPCNT, 1, 1 },   { IPPROTO_TCP, TCP_CORK, 1, 1 },
    { IPPROTO_TCP, TCP_QUICKACK, 1, 1 },  { IPPROTO_TCP, TCP_USER_TIMEOUT, 1, 1 },
    { IPPROTO_TCP, TCP_INFO, 1, 0 },      { IPPROTO_TCP, TCP_DEFER_ACCEPT, 1, 1 },
    { IPPROTO_IP, IP_TOS, 1, 1 },         { IPPROTO_IP, IP_TTL, 1, 1 },
    { IPPROTO_IP, IP_MULTICAST_TTL, 1, 1 }, { IPPROTO_IP, IP_MULTICAST_LOOP, 1, 1 },
    { IPPROTO_IPV6, IPV6_V6ONLY, 1, 1 },  { IPPROTO_IPV6, IPV6_UNICAST_HOPS, 1, 1 },
    { IPPROTO_IPV6, IPV6_TCLASS, 1, 1 },
};

static const struct opt_rule *opt_rule(int level, int name)
{
    for (size_t i = 0; i < sizeof(opt_rules) / sizeof(opt_rules[0]); i++)
        if (opt_rules[i].level == level && opt_rules[i].name == name)
            return &opt_rules[i];
    return NULL;
}

static int do_getsockopt(struct ins_front *fe, const struct mw_req *req)
{
    const struct mw_req_sockopt *b = &req->u.sockopt;
    struct ins_sock *s = open_sock(fe, req);
    const struct opt_rule *rule;
    uint8_t *val = fe->eng->scratch;
    socklen_t len = b->len;
    struct mw_rsp rsp;
    int32_t ret = 0;

    if (!s)
        return -EPROTO;
    rule = opt_rule(b->level, b->name);
    if (!rule || !rule->get) {
        ret = -ENOPROTOOPT;
        goto out;
    }
    if (b->level == SOL_SOCKET && b->name == SO_ERROR && s->so_error && len >= sizeof(int)) {
        int err = -s->so_error;

        s->so_error = 0;
        memcpy(val, &err, sizeof(err));
        len = sizeof(err);
        goto out;
    }
    if (getsockopt(s->fd, b->level, b->name, val, &len) < 0) {
        ret = -errno;
        goto out;
    }
    if (len > b->len)
        len = b->len;
    if (len > MW_OPT_INLINE_MAX)
        memcpy(fe->area.data + b->ool.off, val, len);  /* ool.len == b->len, checked */

out:
    if (ret < 0)
        mw_rsp_build(&rsp, req->id, req->cmd, req->sock, ret);
    else
        mw_rsp_build_sockopt(&rsp, req->id, req->sock, len, val);
    return respond(fe, &rsp);
}

static int do_setsockopt(struct ins_front *fe, const struct mw_req *req)
{
    const struct mw_req_sockopt *b = &req->u.sockopt;
    struct ins_sock *s = open_sock(fe, req);
    const struct opt_rule *rule;
    const void *val = b->val;
    int32_t ret = 0;

    if (!s)
        return -EPROTO;
    rule = opt_rule(b->level, b->name);
    if (!rule || !rule->set) {
        ret = -ENOPROTOOPT;
        goto out;
    }
    if (b->len > MW_OPT_INLINE_MAX) {
        /* copied once out of the area, then handed to the kernel */
        memcpy(fe->eng->scratch, fe->area.data + b->ool.off, b->len);
        val = fe->eng->scratch;
    }
    /* SO_SNDBUF/SO_RCVBUF: the kernel caps them (net.core.wmem_max/rmem_max) */
    if (setsockopt(s->fd, b->level, b->name, val, b->len) < 0)
        ret = -errno;
    else if (b->level == SOL_SOCKET && b->name == SO_LINGER)
        s->linger_set = 1;          /* closing it must look at SO_LINGER (sock_close_fd) */

out:
    return respond_ret(fe, req->id, req->cmd, req->sock, ret);
}

static int do_getname(struct ins_front *fe, const struct mw_req *req)
{
    struct ins_sock *s = open_sock(fe, req);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    struct mw_sockaddr a;
    struct mw_rsp rsp;
    int32_t ret = 0;
    int rc;

    if (!s)
        return -EPROTO;
    if (req->cmd == MW_CMD_GETSOCKNAME)
        rc = getsockname(s->fd, (struct sockaddr *)&ss, &sl);
    else
        rc = getpeername(s->fd, (struct sockaddr *)&ss, &sl);
    if (rc < 0) {
        ret = -errno;
        goto out;
    }
    ins_sockaddr_from((struct sockaddr *)&ss, &a);
    if (a.family == MW_AF_UNSPEC)
        ret = -ENOTCONN;

out:
    if (ret < 0)
        mw_rsp_build(&rsp, req->id, req->cmd, req->sock, ret);
    else
        mw_rsp_build_addr(&rsp, req->id, req->cmd, req->sock, &a);
    return respond(fe, &rsp);
}

static int do_ioctl(struct ins_front *fe, const struct mw_req *req)
{
    struct ins_sock *s = open_sock(fe, req);
    unsigned long op;
    int32_t ret = 0;
    int v = 0;

    if (!s)
        return -EPROTO;
    switch (req->u.ioctl.request) {
    case MW_IOCTL_SIOCATMARK:
        op = SIOCATMARK;
        break;
    case MW_IOCTL_SIOCOUTQ:
        op = SIOCOUTQ;
        break;
    default:
        op = SIOCINQ;
        break;
    }
    if (ioctl(s->fd, op, &v) < 0)
        ret = -errno;
    else
        ret = v < 0 ? 0 : v;
    return respond_ret(fe, req->id, req->cmd, req->sock, ret);
}

static int do_ping(struct ins_front *fe, const struct mw_req *req)
{
    struct mw_rsp rsp;

    mw_rsp_build_ping(&rsp, req->id, req->u.ping.arg);
    return respond(fe, &rsp);
}

/* Hand a resolver job to the pool, or keep it in the frontend's own queue while the frontend
 * already has half the workers busy: one frontend's slow names cannot take the resolver from
 * the others. */
static void dns_queue(struct ins_front *fe, struct ins_dns_job *job)
{
    uint32_t cap = fe->eng->cfg.dns_workers / 2 ? fe->eng->cfg.dns_workers / 2 : 1;

    job->next = NULL;
    if (fe->dns_inflight < cap) {
        fe->dns_inflight++;
        ins_dns_submit(fe->eng, job);
        return;
    }
    *fe->dns_wait_tail = job;
    fe->dns_wait_tail = &job->next;
}

static int do_getaddrinfo(struct ins_front *fe, const struct mw_req *req)
{
    const struct mw_req_getaddrinfo *b = &req->u.getaddrinfo;
    uint8_t *q = fe->eng->scratch;
    struct ins_dns_job *job;
    const char *why = NULL;
    int32_t ret = 0;

    if (!(fe->features & INS_F_DNS)) {
        ret = -EOPNOTSUPP;
        goto out;
    }
    /* the query is copied once (14.4 (4)), then checked and used from the copy */
    memcpy(q, fe->area.data + b->ool.off, (size_t)b->node_len + b->service_len);
    if (mw_gai_query_check(q, b->ool.len, b->node_len, b->service_len, &why) < 0)
        return violation(fe, "GETADDRINFO id %u: %s", req->id, why);
    job = calloc(1, sizeof(*job));
    if (!job || !(job->ans = malloc(b->ool.len))) {
        free(job);
        ret = -ENOMEM;
        goto out;
    }
    job->cmd = MW_CMD_GETADDRINFO;
    job->id = req->id;
    job->serial = (uint64_t)fe->handle;
    job->ool_off = b->ool.off;
    job->ool_len = b->ool.len;
    job->features = fe->features;
    job->has_node = b->node_len > 0;
    job->has_service = b->service_len > 0;
    memcpy(job->node, q, b->node_len);
    memcpy(job->service, q + b->node_len, b->service_len);
    job->hints.ai_flags = b->ai_flags;
    job->hints.ai_family = b->ai_family;
    if (job->hints.ai_family == AF_UNSPEC && !(fe->features & INS_F_IPV6))
        job->hints.ai_family = AF_INET;
    job->hints.ai_socktype = b->ai_socktype;
    job->hints.ai_protocol = b->ai_protocol;
    dns_queue(fe, job);
    return 0;

out:
    return respond_ret(fe, req->id, req->cmd, 0, ret);
}

static int do_getnameinfo(struct ins_front *fe, const struct mw_req *req)
{
    const struct mw_req_getnameinfo *b = &req->u.getnameinfo;
    struct ins_dns_job *job;
    int32_t ret = 0;

    if (!(fe->features & INS_F_DNS)) {
        ret = -EOPNOTSUPP;
        goto out;
    }
    if (!family_allowed(fe, b->addr.family)) {
        ret = -EAFNOSUPPORT;
        goto out;
    }
    job = calloc(1, sizeof(*job));
    if (!job || !(job->ans = malloc(b->ool.len))) {
        free(job);
        ret = -ENOMEM;
        goto out;
    }
    job->cmd = MW_CMD_GETNAMEINFO;
    job->id = req->id;
    job->serial = (uint64_t)fe->handle;
    job->ool_off = b->ool.off;
    job->ool_len = b->ool.len;
    job->features = fe->features;
    ins_sockaddr_to(&b->addr, &job->addr, &job->addrlen);
    job->ni_flags = b->flags;
    dns_queue(fe, job);
    return 0;

out:
    return respond_ret(fe, req->id, req->cmd, 0, ret);
}

typedef int (*handler_fn)(struct ins_front *fe, const struct mw_req *req);

static const handler_fn handlers[MW_CMD_MAX_] = {
    [MW_CMD_SOCKET] = do_socket,
    [MW_CMD_CONNECT] = do_connect,
    [MW_CMD_BIND] = do_bind,
    [MW_CMD_LISTEN] = do_listen,
    [MW_CMD_ACCEPT] = do_accept,
    [MW_CMD_SHUTDOWN] = do_shutdown,
    [MW_CMD_CLOSE] = do_close,
    [MW_CMD_GETSOCKOPT] = do_getsockopt,
    [MW_CMD_SETSOCKOPT] = do_setsockopt,
    [MW_CMD_GETSOCKNAME] = do_getname,
    [MW_CMD_GETPEERNAME] = do_getname,
    [MW_CMD_GETADDRINFO] = do_getaddrinfo,
    [MW_CMD_GETNAMEINFO] = do_getnameinfo,
    [MW_CMD_IOCTL] = do_ioctl,
    [MW_CMD_PING] = do_ping,
};

static int handle_request(struct ins_front *fe, const struct mw_req *req)
{
    const char *why = NULL;
    int rc = mw_req_check(req, &fe->lim, &why);

    if (rc == -EOPNOTSUPP) {
        fe->st.requests[0]++;
        return respond_ret(fe, req->id, req->cmd, req->sock, -EOPNOTSUPP);
    }
    if (rc < 0)
        return violation(fe, "request id %u cmd %u sock %u: %s", req->id, req->cmd,
                         req->sock, why ? why : "invalid");
    fe->st.requests[req->cmd]++;
    return handlers[req->cmd](fe, req);
}

/* ------------------------------------------------------------------------------------------
 * Frontends
 */

/* Publish responses and events; kick the frontend when it asked for it. */
static void front_flush(struct ins_front *fe)
{
    int r1, r2, rc;

    if (!fe->dirty || fe->broken)
        return;
    fe->dirty = 0;
    r1 = mw_cmd_back_push(&fe->cmd);
    r2 = mw_evq_push(&fe->bq);
    if (r1 < 0 || r2 < 0) {
        violation(fe, "publishing: %s", r1 < 0 ? "command ring" : "bq event queue");
        return;
    }
    if (r1 || r2) {
        rc = mw_evtchn_notify(fe->ec, fe->port);
        if (rc < 0 && rc != -ENOTCONN)
            ins_log(fe->eng, "frontend %u: notify: %s", fe->front_id, strerror(-rc));
    }
}

static void front_rescan(struct ins_front *fe)
{
    for (uint32_t i = 0; i < fe->area.nsocks && !fe->broken; i++)
        if (fe->socks[i])
            sock_pump(fe->socks[i]);
}

/* The frontend kicked (or may have): take requests and fq events until both are empty, or
 * until its turn's budget is spent (then `again`: the loop comes back to it after looking at
 * everything else, so that a frontend that never stops sending cannot starve the others). */
static void front_service(struct ins_front *fe)
{
    int budget = SERVICE_BUDGET;
    struct ins_sock *s;
    struct mw_event ev;
    struct mw_req req;
    const char *why;
    int rc, more;

    fe->again = 0;
    while (mw_evtchn_pending(fe->ec) > 0)
        ;
    do {
        if (fe->broken)
            return;
        while (budget > 0 && (rc = mw_cmd_back_take_req(&fe->cmd, &req)) == 1) {
            budget--;
            if (handle_request(fe, &req) < 0)
                return;
        }
        if (rc < 0) {
            violation(fe, "command ring: request index out of bounds");
            return;
        }
        while (budget > 0 && (rc = mw_evq_take(&fe->fq, &ev)) > 0) {
            budget--;
            if (rc == MW_EVQ_RESCAN) {
                front_rescan(fe);
                continue;
            }
            why = NULL;
            if (mw_event_check(&ev, &fe->lim, 0, &why) < 0) {
                violation(fe, "fq event sock %u type %u: %s", ev.sock, ev.type, why);
                return;
            }
            /* a hint: an event about a slot that is not open is stale and ignored (9).
             * DATA: bytes to send. SPACE: room in rx, which matters only if it was full
             * (else epoll reports incoming bytes); its index is read and checked anyway. */
            s = fe->socks[ev.sock];
            if (s && ev.type == MW_EV_SPACE && !s->rx_full) {
                if (mw_bring_space(&s->rx) == -EPROTO)
                    violation(fe, "socket %u: rx ring indices", s->slot);
            } else if (s) {
                sock_pump_some(s, ev.type == MW_EV_DATA ? PUMP_TX :
                               ev.type == MW_EV_SPACE ? PUMP_RX : PUMP_TX | PUMP_RX);
            }
            if (fe->broken)
                return;
        }
        if (rc < 0) {
            violation(fe, "fq event queue: index out of bounds or bad event");
            return;
        }
        if (budget <= 0) {
            fe->again = 1;
            return;
        }
        /* before sleeping: ask for a kick on the next request and event, then look again */
        more = mw_cmd_back_final_check(&fe->cmd);
        rc = mw_evq_final_check(&fe->fq);
        if (more < 0 || rc < 0) {
            violation(fe, "%s: index out of bounds", more < 0 ? "command ring" : "fq");
            return;
        }
        more |= rc;
    } while (more);
}

/* A broken frontend: close its sockets, stop watching its event channel, tell Python. */
static void front_disable(struct ins_front *fe)
{
    struct ins_engine *e = fe->eng;
    uint64_t one = 1;

    if (fe->disabled)
        return;
    fe->disabled = 1;
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, fe->ec_fd, NULL);
    for (uint32_t i = 0; i < fe->area.nsocks; i++)
        if (fe->socks[i])
            sock_free(fe->socks[i], 1);
    while (fe->orphans)
        orphan_free(fe->orphans);
    if (write(e->notify_fd, &one, sizeof(one)) < 0) {
        /* already readable */
    }
}

static void front_free(struct ins_front *fe)
{
    struct ins_dns_job *job;

    while ((job = fe->dns_wait)) {
        fe->dns_wait = job->next;
        ins_dns_job_free(job);
    }
    free(fe->socks);
    free(fe->slot_state);
    free(fe);
}

/* ------------------------------------------------------------------------------------------
 * The engine
 */

static void wake(struct ins_engine *e)
{
    uint64_t one = 1;

    if (write(e->wake_fd, &one, sizeof(one)) < 0) {
        /* already readable */
    }
}

int ins_engine_create(const struct ins_config *cfg, struct ins_engine **out)
{
    struct epoll_event ev = { .events = EPOLLIN };
    struct ins_engine *e;
    int rc;

    e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    if (cfg)
        e->cfg = *cfg;
    else
        e->cfg.log_fd = -1;
    if (!e->cfg.dns_workers)
        e->cfg.dns_workers = DEFAULT_DNS_WORKERS;
    e->kind_wake = INS_K_WAKE;
    e->kind_dns = INS_K_DNS;
    e->next_handle = 1;
    e->epfd = e->wake_fd = e->dns_fd = e->notify_fd = -1;
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->dns_lock, NULL);
    pthread_cond_init(&e->dns_cond, NULL);
    /* Writes to a socket whose peer reset it must fail with EPIPE, not kill the INS (the
     * byte rings are written to sockets with writev, which has no MSG_NOSIGNAL). */
    signal(SIGPIPE, SIG_IGN);

    rc = mw_nofile_raise();         /* every socket of every frontend holds one fd here */
    if (rc < 0)
        ins_log(e, "raising RLIMIT_NOFILE: %s", strerror(-rc));
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->dns_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->wake_fd < 0 || e->dns_fd < 0 || e->notify_fd < 0) {
        rc = -errno;
        goto out_close;
    }
    ev.data.ptr = &e->kind_wake;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wake_fd, &ev) < 0) {
        rc = -errno;
        goto out_close;
    }
    ev.data.ptr = &e->kind_dns;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->dns_fd, &ev) < 0) {
        rc = -errno;
        goto out_close;
    }
    rc = ins_dns_start(e);
    if (rc < 0)
        goto out_close;
    *out = e;
    return 0;

out_close:
    for (int *fd = &e->epfd; fd <= &e->notify_fd; fd++)
        if (*fd >= 0)
            close(*fd);
    free(e);
    return rc;
}

static void free_dead(struct ins_engine *e)
{
    struct ins_orphan *o;
    struct ins_front *fe;
    struct ins_sock *s;

    while ((o = e->dead_orphans)) {
        e->dead_orphans = o->next_dead;
        free(o);
    }
    while ((s = e->dead_socks)) {
        e->dead_socks = s->next_dead;
        free(s);
    }
    while ((fe = e->dead_fronts)) {
        e->dead_fronts = fe->next_dead;
        front_free(fe);
    }
}

void ins_engine_destroy(struct ins_engine *e)
{
    if (!e)
        return;
    while (e->fronts)
        ins_engine_detach(e, e->fronts->handle);
    ins_dns_stop(e);
    free_dead(e);
    close(e->epfd);
    close(e->wake_fd);
    close(e->dns_fd);
    close(e->notify_fd);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->dns_lock);
    pthread_cond_destroy(&e->dns_cond);
    free(e);
}

int ins_engine_attach(struct ins_engine *e, uint32_t front_id, void *base, size_t size,
                      const struct mw_area_geom *geom, struct mw_evtchn *ec, uint32_t port,
                      uint32_t features)
{
    struct epoll_event ev = { .events = EPOLLIN };
    struct ins_front *fe;
    int rc;

    fe = calloc(1, sizeof(*fe));
    if (!fe)
        return -ENOMEM;
    fe->kind = INS_K_FRONT;
    fe->eng = e;
    fe->front_id = front_id;
    fe->features = features;
    fe->ec = ec;
    fe->port = port;
    fe->ec_fd = mw_evtchn_fd(ec);
    rc = mw_area_init(&fe->area, base, size, geom);
    if (rc < 0)
        goto out_free;
    fe->lim.sock_slots = geom->sock_slots;
    fe->lim.data_pages = geom->data_pages;
    if (mw_cmd_back_init(&fe->cmd, &fe->area) < 0 ||
        mw_evq_init(&fe->fq, &fe->area, MW_SIDE_BACK, 0) < 0 ||
        mw_evq_init(&fe->bq, &fe->area, MW_SIDE_BACK, 1) < 0) {
        rc = -EINVAL;
        goto out_free;
    }
    fe->slot_state = calloc(fe->area.nsocks, 1);
    fe->socks = calloc(fe->area.nsocks, sizeof(*fe->socks));
    if (!fe->slot_state || !fe->socks) {
        rc = -ENOMEM;
        goto out_free;
    }
    fe->max_socks = e->cfg.max_socks && e->cfg.max_socks < fe->area.nsocks ?
                    e->cfg.max_socks : fe->area.nsocks;
    /* By default a frontend may leave as many unsent bytes at close as its tx rings can hold
     * at once (its data area), but no more than DEFAULT_MAX_BUF: the area's size is the
     * frontend's choice (up to 1 GiB), the INS's memory is not (192 MB in its image). */
    fe->max_buf = e->cfg.max_buf_bytes;
    if (!fe->max_buf) {
        fe->max_buf = (uint64_t)geom->data_pages * MW_PAGE_SIZE;
        if (fe->max_buf > DEFAULT_MAX_BUF)
            fe->max_buf = DEFAULT_MAX_BUF;
    }
    fe->dns_wait_tail = &fe->dns_wait;
    fe->st.front_id = front_id;

    pthread_mutex_lock(&e->lock);
    fe->handle = e->next_handle++;
    ev.data.ptr = fe;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fe->ec_fd, &ev) < 0) {
        rc = -errno;
        pthread_mutex_unlock(&e->lock);
        goto out_free;
    }
    fe->next = e->fronts;
    e->fronts = fe;
    fe->dirty = 1;
    pthread_mutex_unlock(&e->lock);
    /* requests may be there already: the loop services every frontend when woken */
    wake(e);
    ins_log(e, "frontend %u attached (handle %d): %u command slots, %u socket slots, %u data "
            "pages, features 0x%x", front_id, fe->handle, fe->area.nslots, fe->area.nsocks,
            geom->data_pages, features);
    return fe->handle;

out_free:
    front_free(fe);
    return rc;
}

int ins_engine_detach(struct ins_engine *e, int handle)
{
    struct ins_front **pp, *fe;

    pthread_mutex_lock(&e->lock);
    for (pp = &e->fronts; *pp && (*pp)->handle != handle; pp = &(*pp)->next)
        ;
    fe = *pp;
    if (!fe) {
        pthread_mutex_unlock(&e->lock);
        return -ENOENT;
    }
    *pp = fe->next;
    if (!fe->disabled) {
        fe->disabled = 1;
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, fe->ec_fd, NULL);
        for (uint32_t i = 0; i < fe->area.nsocks; i++)
            if (fe->socks[i])
                sock_free(fe->socks[i], 1);
        while (fe->orphans)
            orphan_free(fe->orphans);
    }
    fe->dead = 1;
    if (e->running) {
        fe->next_dead = e->dead_fronts;
        e->dead_fronts = fe;
    } else {
        free_dead(e);
        front_free(fe);
    }
    pthread_mutex_unlock(&e->lock);
    ins_log(e, "frontend %u detached (handle %d)", fe->front_id, handle);
    return 0;
}

/* DNS results: copy each answer into its out-of-line buffer and respond. */
static void dns_results(struct ins_engine *e)
{
    struct ins_dns_job *job;
    uint64_t v;

    if (read(e->dns_fd, &v, sizeof(v)) < 0) {
        /* nothing pending: the list is looked at anyway */
    }
    while ((job = ins_dns_take_done(e))) {
        struct ins_front *fe;
        struct mw_rsp rsp;

        for (fe = e->fronts; fe && (uint64_t)fe->handle != job->serial; fe = fe->next)
            ;
        if (fe) {
            struct ins_dns_job *next = fe->dns_wait;

            fe->dns_inflight--;
            if (next && !fe->broken) {
                fe->dns_wait = next->next;
                if (!fe->dns_wait)
                    fe->dns_wait_tail = &fe->dns_wait;
                dns_queue(fe, next);
            }
        }
        if (fe && !fe->broken) {
            if (job->ans_len)
                memcpy(fe->area.data + job->ool_off, job->ans, job->ans_len);
            mw_rsp_build_gai(&rsp, job->id, job->cmd, job->status, job->sys_errno,
                             job->ans_len);
            respond(fe, &rsp);
        }
        ins_dns_job_free(job);
    }
}

/*
 * Give back the memory of rx rings that went idle: a ring that carried bytes, has been empty
 * (the frontend consumed everything) and got nothing new for a PROBE_MS period has its pages
 * removed from the shared area (MADV_REMOVE: on sim the area is a shared file, whose pages
 * then leave both daemons' memory; they come back zeroed when the ring is used again). Safe
 * because the INS is the only producer: the frontend reads only bytes between rx_cons and
 * rx_prod, and there are none. Where the area cannot do it (Xen grants) the first failure
 * turns it off. An idle connection then costs no ring memory, whatever it carried before.
 */
static void front_trim_rings(struct ins_front *fe)
{
    struct ins_engine *e = fe->eng;

    for (uint32_t i = 0; i < fe->area.nsocks && !e->trim_off; i++) {
        struct ins_sock *s = fe->socks[i];

        if (!s || s->dead || !s->rx_hot || --s->rx_hot > 0)
            continue;
        /* Drained: rx_cons (read once) has reached what we produced. Only equality is used
         * and the INS never reads rx bytes, so a lying frontend only loses its own bytes;
         * this also works once rx has ended (EOF), where mw_bring_space() no longer does. */
        if (s->rx.pvt != s->rx.pub ||
            __atomic_load_n(s->rx.peer_idx, __ATOMIC_ACQUIRE) != s->rx.pvt) {
            s->rx_hot = 1;          /* not drained yet: look again next time */
            continue;
        }
        if (madvise(s->rx.buf, s->rx.size, MADV_REMOVE) < 0) {
            ins_log(e, "idle rx rings keep their pages: madvise(MADV_REMOVE): %s",
                    strerror(errno));
            e->trim_off = 1;
        }
    }
}

/*
 * Kick every frontend when nothing else did for PROBE_MS. The sim platform reports a peer
 * whose process died (its end of the event channel closed) only on a kick, and a frontend
 * that died while its sockets waited for the network makes none: its sockets and budget
 * would stay held for ever. A frontend found gone is disconnected like a broken one (its
 * sockets are closed, the control plane is told through the notify fd). A spurious kick only
 * makes mwcommsd look at its queues. (Real Xen drops kicks to a dead domain silently; there
 * XenStore tells the daemon.)
 */
static void probe_fronts(struct ins_engine *e)
{
    struct ins_front *fe;
    int64_t now = (int64_t)(mw_now_ns() / 1000000u);

    if (now < e->probe_at)
        return;
    e->probe_at = now + PROBE_MS;
    for (fe = e->fronts; fe; fe = fe->next) {
        if (!fe->broken)
            front_trim_rings(fe);
        if (fe->broken || mw_evtchn_notify(fe->ec, fe->port) != -ENOTCONN)
            continue;
        snprintf(fe->st.why, sizeof(fe->st.why), "%s",
                 "the frontend's event channel end is closed: the frontend is gone");
        fe->broken = 1;
        fe->st.broken = 1;
        ins_log(e, "frontend %u (handle %d): %s; disconnecting it", fe->front_id, fe->handle,
                fe->st.why);
    }
}

int ins_engine_run(struct ins_engine *e)
{
    struct epoll_event evs[EPOLL_BATCH];
    struct ins_front *fe;
    struct mw_spin spin;
    int n, rc = 0, worked = 0;

    pthread_mutex_lock(&e->lock);
    if (e->running) {
        pthread_mutex_unlock(&e->lock);
        return -EBUSY;
    }
    e->running = 1;
    mw_spin_init(&spin, e->cfg.spin_us);
    /* every attached frontend once: requests may have come before the loop ran */
    for (fe = e->fronts; fe; fe = fe->next)
        front_service(fe);
    while (!e->stop) {
        int timeout = e->fronts ? PROBE_MS : -1;

        probe_fronts(e);
        for (fe = e->fronts; fe; fe = fe->next) {
            front_flush(fe);
            if (fe->broken)
                front_disable(fe);
            else if (fe->again)
                timeout = 0;        /* a frontend's turn was cut short: just look around */
        }
        free_dead(e);
        pthread_mutex_unlock(&e->lock);

        if (worked)
            mw_spin_worked(&spin);     /* the budget starts once the work is done */
        n = mw_epoll_spin(&spin, e->epfd, evs, EPOLL_BATCH, timeout);
        worked = n > 0 || timeout == 0;

        pthread_mutex_lock(&e->lock);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        for (int i = 0; i < n; i++) {
            int kind = *(int *)evs[i].data.ptr;

            switch (kind) {
            case INS_K_WAKE: {
                uint64_t v;

                if (read(e->wake_fd, &v, sizeof(v)) < 0) {
                    /* spurious */
                }
                /* an attach: look at every frontend (a no-op for idle ones) */
                for (fe = e->fronts; fe; fe = fe->next)
                    if (!fe->broken)
                        front_service(fe);
                break;
            }
            case INS_K_DNS:
                dns_results(e);
                break;
            case INS_K_FRONT:
                fe = evs[i].data.ptr;
                if (!fe->dead && !fe->broken)
                    front_service(fe);
                break;
            case INS_K_SOCK:
                sock_event(evs[i].data.ptr, evs[i].events);
                break;
            case INS_K_ORPHAN: {
                struct ins_orphan *o = evs[i].data.ptr;

                if (!o->dead)
                    orphan_pump(o);
                break;
            }
            }
        }
        for (fe = e->fronts; fe; fe = fe->next)
            if (fe->again && !fe->broken)
                front_service(fe);
    }
    for (fe = e->fronts; fe; fe = fe->next)
        front_flush(fe);
    e->running = 0;
    e->stop = 0;
    free_dead(e);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

void ins_engine_stop(struct ins_engine *e)
{
    e->stop = 1;
    wake(e);
}

int ins_engine_notify_fd(const struct ins_engine *e)
{
    return e->notify_fd;
}

int ins_engine_stats(struct ins_engine *e, int handle, struct ins_front_stats *out)
{
    struct ins_front *fe;
    int rc = -ENOENT;

    pthread_mutex_lock(&e->lock);
    for (fe = e->fronts; fe; fe = fe->next) {
        if (fe->handle == handle) {
            *out = fe->st;
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}
