/*
 * Hostile peer test of the ring library: one process runs one side honestly (every ring of
 * that side, with the library), the other runs the other side and, in most rounds, corrupts
 * the shared pages at random between its own steps: indices and event indices of both sides,
 * ids, commands and sockets in command slots, event records, socket entries (rx_flags and
 * error too), datagram headers and ring bytes.
 *
 * The honest side must never crash, hang or touch memory it does not own:
 *  - its mapping of the area has PROT_NONE guard pages after every byte ring and after the
 *    area, so a stray access is a SIGSEGV; its own buffers are heap blocks of the exact size
 *    asked for, so AddressSanitizer sees an overrun;
 *  - a watchdog (alarm) kills it if a round does not end in time.
 * Every error it gets must be one the manual allows for that call; -EPROTO must stick.
 * A round with no corruption must see no -EPROTO at all, and move data.
 *
 *   ring_hostile [--honest=front|back|both] [--rounds=N] [--round-ms=N] [--seed=N]
 *
 * Prints one "ROUND ..." line per round, then "HOSTILE OK honest=... eproto=N" or
 * "HOSTILE FAIL ...".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mwcomms/ring.h"

#define ORDER 12u
#define RING (1u << ORDER)
/* data area: stream tx | guard | stream rx | guard | dgram tx | guard | dgram rx | guard */
#define OFF_STX (0 * RING)
#define OFF_SRX (2 * RING)
#define OFF_DTX (4 * RING)
#define OFF_DRX (6 * RING)
#define DATA_PAGES 8u
#define NSOCKS 4u
#define STEP_TAKE_MAX 64
#define MIN_PEER_STEPS 2000     /* a round lasts until the peer has made this many steps */

enum obj { O_CMD, O_EVOUT, O_EVIN, O_SOUT, O_SIN, O_DOUT, O_DIN, O_N };
static const char *obj_name[O_N] = { "cmd", "evq_out", "evq_in", "stream_out", "stream_in",
                                     "dgram_out", "dgram_in" };

/* Round control, in a page of its own shared by the two processes. */
struct ctl {
    int round;             /* parent: the round to run (after zeroing the area) */
    int started;           /* child: the round it has initialized */
    int stop;              /* parent: the round to stop */
    int done;              /* child: the round it has stopped */
    double rate;           /* corruption probability per step of the hostile side */
    int quit;              /* parent: exit */
    int steps;             /* child: steps done in this round */
};

struct agent {
    enum mw_side side;
    int honest;
    struct mw_area a;
    struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_evq out, in;
    struct mw_bring bring[O_N];      /* O_SOUT .. O_DIN */
    struct mw_req pend[MW_CMD_SLOTS_MAX];
    uint32_t np;
    uint64_t rnd;
    int broken[O_N];
    uint64_t eproto[O_N];
    uint64_t moved[O_N];             /* per object: messages, events, bytes, records through */
    int devnull;
    char fail[200];
};

static uint64_t rnd(struct agent *g)
{
    g->rnd ^= g->rnd >> 12;
    g->rnd ^= g->rnd << 25;
    g->rnd ^= g->rnd >> 27;
    return g->rnd * 0x2545f4914f6cdd1dull;
}

static uint32_t rndn(struct agent *g, uint32_t n)
{
    return (uint32_t)(rnd(g) % n);
}

static int failf(struct agent *g, const char *fmt, ...)
{
    va_list ap;

    if (g->fail[0])
        return -1;
    va_start(ap, fmt);
    vsnprintf(g->fail, sizeof(g->fail), fmt, ap);
    va_end(ap);
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * Opening the objects of one side
 */
static int open_obj(struct agent *g, int o)
{
    enum mw_side s = g->side;
    int front = s == MW_SIDE_FRONT;
    int ret = 0;

    switch (o) {
    case O_CMD:
        ret = front ? mw_cmd_front_init(&g->f, &g->a) : mw_cmd_back_init(&g->b, &g->a);
        g->np = 0;
        break;
    case O_EVOUT: ret = mw_evq_init(&g->out, &g->a, s, 1); break;
    case O_EVIN: ret = mw_evq_init(&g->in, &g->a, s, 0); break;
    case O_SOUT:
        ret = mw_bring_init(&g->bring[o], &g->a, 0, s, front ? MW_BRING_TX : MW_BRING_RX,
                            front ? OFF_STX : OFF_SRX, ORDER);
        break;
    case O_SIN:
        ret = mw_bring_init(&g->bring[o], &g->a, 0, s, front ? MW_BRING_RX : MW_BRING_TX,
                            front ? OFF_SRX : OFF_STX, ORDER);
        break;
    case O_DOUT:
        ret = mw_bring_init(&g->bring[o], &g->a, 1, s, front ? MW_BRING_TX : MW_BRING_RX,
                            front ? OFF_DTX : OFF_DRX, ORDER);
        break;
    case O_DIN:
        ret = mw_bring_init(&g->bring[o], &g->a, 1, s, front ? MW_BRING_RX : MW_BRING_TX,
                            front ? OFF_DRX : OFF_DTX, ORDER);
        break;
    }
    g->broken[o] = 0;
    return ret;
}

static int open_all(struct agent *g)
{
    for (int o = 0; o < O_N; o++)
        if (open_obj(g, o) < 0)
            return failf(g, "init of %s failed", obj_name[o]);
    return 0;
}

/*
 * Account for the result of one call on object o. -EPROTO breaks the object (and must keep
 * doing so); the other negative values must be among `allowed` (a 0-terminated list of
 * positive errnos). @return 1 when the caller may go on with this object, 0 when not, -1 on a
 * test failure.
 */
static int seen(struct agent *g, int o, int ret, const char *call, ...)
{
    va_list ap;
    int e, ok = 0;

    if (ret >= 0) {
        if (g->broken[o] && g->honest)
            return failf(g, "%s: %s returned %d on a broken object", obj_name[o], call, ret);
        return 1;
    }
    if (ret == -EPROTO) {
        if (!g->broken[o])
            g->eproto[o]++;
        g->broken[o] = 1;
        return 0;
    }
    va_start(ap, call);
    while ((e = va_arg(ap, int)) != 0)
        ok |= ret == -e;
    va_end(ap);
    if (!ok && g->honest)
        return failf(g, "%s: %s returned %d (%s)", obj_name[o], call, ret, strerror(-ret));
    return 0;
}

#define SEEN(g, o, ret, call, ...) seen(g, o, ret, call, ##__VA_ARGS__, 0)

/* ------------------------------------------------------------------------------------------
 * One step of a side: a little of everything, every call non-blocking
 */
static int step_cmd(struct agent *g)
{
    struct mw_req q;
    struct mw_rsp r;
    uint64_t cookie;
    int i, n, ret;

    if (g->side == MW_SIDE_FRONT) {
        n = (int)rndn(g, 8);
        for (i = 0; i < n; i++) {
            memset(&q, 0, sizeof(q));
            q.cmd = MW_CMD_PING;
            q.sock = rndn(g, NSOCKS);
            q.u.ping.arg = rnd(g);
            ret = mw_cmd_front_put_req(&g->f, &q, q.u.ping.arg);
            if (ret == -ENOSPC)
                break;   /* every slot outstanding: take responses first */
            if ((ret = SEEN(g, O_CMD, ret, "put_req")) <= 0)
                return ret;
        }
        if ((ret = SEEN(g, O_CMD, mw_cmd_front_push(&g->f), "push")) <= 0)
            return ret;
        for (i = 0; i < STEP_TAKE_MAX; i++) {
            ret = mw_cmd_front_take_rsp(&g->f, &r, &cookie);
            if (ret == 0)
                break;
            if ((ret = SEEN(g, O_CMD, ret, "take_rsp")) <= 0)
                return ret;
            g->moved[O_CMD]++;
        }
        if (rndn(g, 4) == 0)
            return SEEN(g, O_CMD, mw_cmd_front_final_check(&g->f), "final_check");
        return 1;
    }

    for (i = 0; i < STEP_TAKE_MAX && g->np < MW_CMD_SLOTS_MAX; i++) {
        ret = mw_cmd_back_take_req(&g->b, &g->pend[g->np]);
        if (ret == 0)
            break;
        if ((ret = SEEN(g, O_CMD, ret, "take_req")) <= 0)
            return ret;
        g->np++;
    }
    n = g->np ? (int)rndn(g, g->np + 1) : 0;
    for (i = 0; i < n; i++) {
        uint32_t j = rndn(g, g->np);

        memset(&r, 0, sizeof(r));
        r.id = g->pend[j].id;
        r.cmd = g->pend[j].cmd;
        r.sock = g->pend[j].sock;
        r.u.ping.arg = g->pend[j].u.ping.arg;
        g->pend[j] = g->pend[--g->np];
        ret = mw_cmd_back_put_rsp(&g->b, &r);
        if ((ret = SEEN(g, O_CMD, ret, "put_rsp")) <= 0)
            return ret;
        g->moved[O_CMD]++;
    }
    if ((ret = SEEN(g, O_CMD, mw_cmd_back_push(&g->b), "push")) <= 0)
        return ret;
    if (rndn(g, 4) == 0)
        return SEEN(g, O_CMD, mw_cmd_back_final_check(&g->b), "final_check");
    return 1;
}

static int step_evq(struct agent *g)
{
    struct mw_event ev;
    uint16_t type;
    int i, n, ret;

    n = (int)rndn(g, 6);
    for (i = 0; i < n && !g->broken[O_EVOUT]; i++) {
        type = g->side == MW_SIDE_BACK ? (uint16_t)(1 + rndn(g, 3)) : (uint16_t)(1 + rndn(g, 2));
        ret = mw_evq_put(&g->out, rndn(g, NSOCKS), type, rnd(g));
        if (SEEN(g, O_EVOUT, ret, "evq_put") < 0)
            return -1;
    }
    if (!g->broken[O_EVOUT] && SEEN(g, O_EVOUT, mw_evq_push(&g->out), "evq_push") < 0)
        return -1;
    for (i = 0; i < STEP_TAKE_MAX && !g->broken[O_EVIN]; i++) {
        ret = mw_evq_take(&g->in, &ev);
        if (SEEN(g, O_EVIN, ret, "evq_take") < 0)
            return -1;
        if (ret == 0)
            break;
        if (ret == 1) {
            g->moved[O_EVIN]++;
            if (ev.sock >= NSOCKS || ev.type == 0 || ev.type >= MW_EV_MAX_)
                return failf(g, "evq_take handed out a bad event (sock %u type %u)", ev.sock,
                             ev.type);
        }
    }
    if (!g->broken[O_EVIN] && rndn(g, 4) == 0)
        return SEEN(g, O_EVIN, mw_evq_final_check(&g->in), "evq_final_check") < 0 ? -1 : 1;
    return 1;
}

static int step_stream(struct agent *g)
{
    struct mw_bring *out = &g->bring[O_SOUT], *in = &g->bring[O_SIN];
    uint32_t n = 1 + rndn(g, 5000);
    uint8_t *buf = malloc(n);        /* exactly n bytes: ASan sees an overrun */
    int ret = 1;

    if (!buf)
        return failf(g, "out of memory");
    memset(buf, (int)rndn(g, 256), n);
    if (!g->broken[O_SOUT]) {
        ret = mw_bring_write(out, buf, n);
        if (SEEN(g, O_SOUT, ret, "write") < 0)
            goto out_free;
        if (ret > (int)n) {
            ret = failf(g, "write took %d of %u bytes", ret, n);
            goto out_free;
        }
        if (!g->broken[O_SOUT] && SEEN(g, O_SOUT, mw_bring_publish(out), "publish") < 0)
            goto out_fail;
        if (!g->broken[O_SOUT] && rndn(g, 4) == 0 &&
            SEEN(g, O_SOUT, mw_bring_prepare_wait(out, 1 + rndn(g, RING)), "prepare_wait") < 0)
            goto out_fail;
    }
    if (!g->broken[O_SIN]) {
        switch (rndn(g, 3)) {
        case 0:
            ret = mw_bring_read(in, buf, n);
            break;
        case 1:
            ret = mw_bring_peek(in, buf, n);
            if (ret > 0 && SEEN(g, O_SIN, mw_bring_consume(in, (uint32_t)ret), "consume") < 0)
                goto out_fail;
            break;
        default:
            ret = mw_bring_write_fd(in, g->devnull, n);
            break;
        }
        if (SEEN(g, O_SIN, ret, "read") < 0)
            goto out_fail;
        if (ret > (int)n) {
            ret = failf(g, "read gave %d bytes for %u", ret, n);
            goto out_free;
        }
        if (ret > 0)
            g->moved[O_SIN] += (uint32_t)ret;
        if (!g->broken[O_SIN] && SEEN(g, O_SIN, mw_bring_release(in), "release") < 0)
            goto out_fail;
        if (!g->broken[O_SIN] && g->side == MW_SIDE_FRONT) {
            int32_t err = 0;

            ret = mw_bring_rx_state(in, &err);
            if (SEEN(g, O_SIN, ret, "rx_state") < 0)
                goto out_fail;
            if (ret > 0 && ((ret & ~(int)MW_RXF_ALL_) ||
                            ((ret & MW_RXF_ERROR) && (err >= 0 || err < -MW_ERRNO_MAX)))) {
                ret = failf(g, "rx_state handed out flags %d error %d", ret, err);
                goto out_free;
            }
        }
        if (!g->broken[O_SIN] && rndn(g, 4) == 0 &&
            SEEN(g, O_SIN, mw_bring_prepare_wait(in, 1 + rndn(g, RING)), "prepare_wait") < 0)
            goto out_fail;
    }
    ret = 1;
out_free:
    free(buf);
    return ret;
out_fail:
    free(buf);
    return -1;
}

static int step_dgram(struct agent *g)
{
    struct mw_bring *out = &g->bring[O_DOUT], *in = &g->bring[O_DIN];
    uint32_t len = rndn(g, 3000), room = rndn(g, 3000);
    uint8_t *payload = malloc(len + 1), *buf = malloc(room + 1);
    struct mw_dgram_hdr h;
    struct iovec iov[2];
    int ret = 1, niov;

    if (!payload || !buf) {
        ret = failf(g, "out of memory");
        goto out_free;
    }
    if (!g->broken[O_DOUT]) {
        memset(&h, 0, sizeof(h));
        h.len = len;
        h.addr.family = MW_AF_INET;
        memset(payload, 0x5a, len + 1);
        ret = mw_bring_dgram_put(out, &h, payload);
        if (SEEN(g, O_DOUT, ret, "dgram_put", EAGAIN) < 0)
            goto out_fail;
        if (!g->broken[O_DOUT] && SEEN(g, O_DOUT, mw_bring_publish(out), "publish") < 0)
            goto out_fail;
    }
    if (!g->broken[O_DIN]) {
        if (rndn(g, 2)) {
            /* buf has room + 1 bytes; tell the ring `room`: a write past it is caught by the
             * check below, one past the block by ASan */
            buf[room] = 0xee;
            ret = mw_bring_dgram_get(in, &h, buf, room);
            if (SEEN(g, O_DIN, ret, "dgram_get") < 0)
                goto out_fail;
            if (buf[room] != 0xee) {
                ret = failf(g, "dgram_get wrote past the room given");
                goto out_free;
            }
        } else {
            ret = mw_bring_dgram_peek(in, &h, iov, &niov);
            if (SEEN(g, O_DIN, ret, "dgram_peek") < 0)
                goto out_fail;
            if (ret == 1) {
                size_t total = iov[0].iov_len + (niov == 2 ? iov[1].iov_len : 0);
                uint8_t *lo = in->buf, *hi = in->buf + in->size;

                if (h.len > MW_DGRAM_MAX || total != h.len || niov < 1 || niov > 2) {
                    ret = failf(g, "dgram_peek handed out a bad record (len %u)", h.len);
                    goto out_free;
                }
                for (int i = 0; i < niov; i++) {
                    uint8_t *b = iov[i].iov_base;

                    if (iov[i].iov_len && (b < lo || b + iov[i].iov_len > hi)) {
                        ret = failf(g, "dgram_peek iovec outside the ring");
                        goto out_free;
                    }
                }
                if (SEEN(g, O_DIN, mw_bring_dgram_skip(in), "dgram_skip") < 0)
                    goto out_fail;
            }
        }
        if (ret == 1) {
            if (h.len > MW_DGRAM_MAX) {
                ret = failf(g, "dgram with len %u handed out", h.len);
                goto out_free;
            }
            g->moved[O_DIN]++;
        }
        if (!g->broken[O_DIN] && SEEN(g, O_DIN, mw_bring_release(in), "release") < 0)
            goto out_fail;
    }
    ret = 1;
out_free:
    free(payload);
    free(buf);
    return ret;
out_fail:
    ret = -1;
    goto out_free;
}

static int step_wait(struct agent *g)
{
    struct mw_watch w[3];

    w[0] = g->side == MW_SIDE_FRONT ? mw_cmd_front_watch(&g->f) : mw_cmd_back_watch(&g->b);
    w[1] = mw_evq_watch(&g->in);
    w[2] = mw_bring_watch(&g->bring[O_SIN]);
    mw_spin_wait(w, 3, rndn(g, 2) ? 0 : 1000);
    return 1;
}

static int step(struct agent *g)
{
    if (!g->broken[O_CMD] && step_cmd(g) < 0)
        return -1;
    if (step_evq(g) < 0 || step_stream(g) < 0 || step_dgram(g) < 0 || step_wait(g) < 0)
        return -1;
    if (g->fail[0])
        return -1;
    if (!g->honest) {
        /* the hostile side keeps going whatever happened to its own view */
        for (int o = 0; o < O_N; o++)
            if (g->broken[o])
                open_obj(g, o);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Corruption
 */
static uint32_t evil_value(struct agent *g, uint32_t cur)
{
    static const int32_t deltas[] = { 1, -1, 2, -2, 8, -8, 40, 4095, 4096, 4097, -4096,
                                      65536, 256, 512, -512 };

    switch (rndn(g, 6)) {
    case 0: return (uint32_t)rnd(g);
    case 1: return 0;
    case 2: return ~0u;
    case 3: return 0x80000000u + rndn(g, 3) - 1;
    default: return cur + (uint32_t)deltas[rndn(g, sizeof(deltas) / sizeof(deltas[0]))];
    }
}

static void poke32(struct agent *g, void *p)
{
    uint32_t cur = __atomic_load_n((uint32_t *)p, __ATOMIC_RELAXED);

    __atomic_store_n((uint32_t *)p, evil_value(g, cur), __ATOMIC_RELAXED);
}

static void corrupt(struct agent *g)
{
    struct mw_area *a = &g->a;
    uint32_t *w;

    switch (rndn(g, 7)) {
    case 0:   /* an index or event index of either side */
        poke32(g, (uint32_t *)a->ctrl + rndn(g, 6) + (rndn(g, 2) ? 16 : 0));
        break;
    case 1:   /* id, cmd/flags, sock or ret of a command slot */
        w = (uint32_t *)&a->slots[rndn(g, a->nslots)];
        poke32(g, w + rndn(g, 4));
        break;
    case 2:   /* sock or type/flags of an event record */
        w = (uint32_t *)(rndn(g, 2) ? a->fq : a->bq) + 4 * rndn(g, a->evq_len);
        poke32(g, w + rndn(g, 2));
        break;
    case 3:   /* a field of a socket entry */
        w = (uint32_t *)&a->socks[rndn(g, 2)];
        poke32(g, w + (rndn(g, 2) ? 16 : 0) + rndn(g, 6));
        break;
    case 4: { /* the len of the datagram header the peer reads next */
        uint32_t off = g->side == MW_SIDE_FRONT ? OFF_DTX : OFF_DRX;
        uint32_t cons = g->side == MW_SIDE_FRONT ? a->socks[1].back.tx_cons :
                                                   a->socks[1].front.rx_cons;

        poke32(g, a->data + off + (cons & (RING - 1) & ~7u));
        break;
    }
    case 5: { /* anywhere in a ring the peer reads */
        uint32_t off = rndn(g, 2) ? (g->side == MW_SIDE_FRONT ? OFF_DTX : OFF_DRX) :
                                    (g->side == MW_SIDE_FRONT ? OFF_STX : OFF_SRX);

        poke32(g, a->data + off + 4 * rndn(g, RING / 4));
        break;
    }
    default:  /* many at once */
        for (int i = 0; i < 8; i++)
            poke32(g, (uint32_t *)a->ctrl + rndn(g, 32));
        break;
    }
}

/* ------------------------------------------------------------------------------------------
 * The two processes
 */
static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int ld(int *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void st(int *p, int v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static void hostile_main(struct agent *g, struct ctl *c)
{
    int round = 0;

    for (;;) {
        while (ld(&c->round) == round && !ld(&c->quit))
            usleep(200);
        if (ld(&c->quit))
            _exit(0);
        round = ld(&c->round);
        open_all(g);
        st(&c->steps, 0);
        st(&c->started, round);
        while (ld(&c->stop) != round) {
            step(g);
            st(&c->steps, ld(&c->steps) + 1);
            if (c->rate > 0 && (double)rndn(g, 1000000) < c->rate * 1e6)
                corrupt(g);
            if (rndn(g, 64) == 0)
                sched_yield();
        }
        st(&c->done, round);
    }
}

static int wait_for(int *p, int v, double secs)
{
    double end = now_s() + secs;

    while (ld(p) != v) {
        if (now_s() > end)
            return -1;
        usleep(100);
    }
    return 0;
}

static int run_honest(enum mw_side side, int rounds, int round_ms, uint64_t seed,
                      uint64_t *eproto_total)
{
    static const double rates[] = { 0, 0.001, 0.01, 0.05, 0.2, 1.0 };
    const char *who = side == MW_SIDE_FRONT ? "front" : "back";
    struct mw_area_geom geom = { 1, 1, NSOCKS, DATA_PAGES };
    static struct agent honest, hostile;
    size_t size, page = MW_PAGE_SIZE;
    uint8_t *map, *hmap;
    struct ctl *c;
    pid_t pid;
    int mfd, status, ret = 0;

    mw_area_size(&geom, &size);
    mfd = memfd_create("mwcomms-ring-hostile", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, (off_t)size) < 0)
        return -1;
    c = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    /* the honest view: the area, then a guard page; guards between the rings */
    map = mmap(NULL, size + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    hmap = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (c == MAP_FAILED || map == MAP_FAILED || hmap == MAP_FAILED)
        return -1;
    if (mmap(map, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, mfd, 0) == MAP_FAILED)
        return -1;
    close(mfd);
    memset(c, 0, sizeof(*c));

    memset(&honest, 0, sizeof(honest));
    memset(&hostile, 0, sizeof(hostile));
    honest.side = side;
    honest.honest = 1;
    hostile.side = side == MW_SIDE_FRONT ? MW_SIDE_BACK : MW_SIDE_FRONT;
    honest.rnd = seed * 2 + 1;
    hostile.rnd = seed * 2 + 2;
    honest.devnull = hostile.devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (mw_area_init(&honest.a, map, size, &geom) < 0 ||
        mw_area_init(&hostile.a, hmap, size, &geom) < 0)
        return -1;
    for (uint32_t p = 1; p < DATA_PAGES; p += 2)
        mprotect(honest.a.data + p * page, page, PROT_NONE);

    fflush(stdout);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        munmap(map, size + page);
        hostile_main(&hostile, c);
    }
    munmap(hmap, size);

    for (int r = 1; r <= rounds && ret == 0; r++) {
        double rate = r == 1 ? 0 : rates[1 + (r - 2) % 5], end;
        uint64_t steps = 0, eproto = 0;
        char line[512];
        int len;

        /* the INS is idle between rounds: start both sides from a zeroed area */
        memset(honest.a.ctrl, 0, (size_t)(honest.a.data - (uint8_t *)honest.a.ctrl));
        for (uint32_t p = 0; p < DATA_PAGES; p += 2)
            memset(honest.a.data + p * page, 0, page);
        memset(honest.eproto, 0, sizeof(honest.eproto));
        memset(honest.moved, 0, sizeof(honest.moved));
        if (open_all(&honest) < 0)
            break;
        c->rate = rate;
        st(&c->round, r);
        if (wait_for(&c->started, r, 5) < 0) {
            failf(&honest, "the peer did not start round %d", r);
            ret = -1;
            break;
        }
        alarm(20 + round_ms / 1000);    /* a hang in the honest side kills it */
        end = now_s() + round_ms / 1000.0;
        /* at least round_ms, and until the peer has made MIN_PEER_STEPS steps (a loaded
         * machine may not give it a core for a while), but not more than 10 s */
        while (now_s() < end || (ld(&c->steps) < MIN_PEER_STEPS && now_s() < end + 10)) {
            if (step(&honest) < 0) {
                ret = -1;
                break;
            }
            steps++;
            if ((steps & 63) == 0)
                sched_yield();
        }
        alarm(0);
        st(&c->stop, r);
        if (wait_for(&c->done, r, 5) < 0) {
            failf(&honest, "the peer did not stop round %d", r);
            ret = -1;
        }
        len = snprintf(line, sizeof(line),
                       "ROUND honest=%s round=%d rate=%g steps=%llu peer_steps=%d moved=%llu",
                       who, r, rate, (unsigned long long)steps, ld(&c->steps),
                       (unsigned long long)(honest.moved[O_CMD] + honest.moved[O_EVIN] +
                                            honest.moved[O_SIN] + honest.moved[O_DIN]));
        for (int o = 0; o < O_N; o++) {
            eproto += honest.eproto[o];
            len += snprintf(line + len, sizeof(line) - len, " %s=%llu", obj_name[o],
                            (unsigned long long)honest.eproto[o]);
        }
        printf("%s\n", line);
        if (rate == 0 && eproto != 0) {
            failf(&honest, "protocol errors in a round without corruption");
            ret = -1;
        }
        if (rate == 0 && (!honest.moved[O_CMD] || !honest.moved[O_EVIN] ||
                          !honest.moved[O_SIN] || !honest.moved[O_DIN])) {
            failf(&honest, "a ring moved nothing in a round without corruption "
                  "(cmd %llu events %llu bytes %llu datagrams %llu)",
                  (unsigned long long)honest.moved[O_CMD],
                  (unsigned long long)honest.moved[O_EVIN],
                  (unsigned long long)honest.moved[O_SIN],
                  (unsigned long long)honest.moved[O_DIN]);
            ret = -1;
        }
        *eproto_total += eproto;
    }
    st(&c->quit, 1);
    waitpid(pid, &status, 0);
    if (ret < 0)
        printf("HOSTILE FAIL honest=%s: %s\n", who, honest.fail);
    munmap(map, size + page);
    munmap(c, page);
    close(honest.devnull);
    return ret;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "honest", required_argument, NULL, 'h' },
        { "rounds", required_argument, NULL, 'r' },
        { "round-ms", required_argument, NULL, 'm' },
        { "seed", required_argument, NULL, 's' },
        { NULL, 0, NULL, 0 },
    };
    const char *honest = "both";
    int rounds = 11, round_ms = 150, c, ret = 0;
    uint64_t seed = (uint64_t)time(NULL), eproto = 0;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': honest = optarg; break;
        case 'r': rounds = atoi(optarg); break;
        case 'm': round_ms = atoi(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        default:
            fprintf(stderr, "usage: ring_hostile [--honest=front|back|both] [--rounds=N] "
                            "[--round-ms=N] [--seed=N]\n");
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    printf("SEED %llu\n", (unsigned long long)seed);
    if (strcmp(honest, "back") != 0)
        ret |= run_honest(MW_SIDE_FRONT, rounds, round_ms, seed, &eproto);
    if (ret == 0 && strcmp(honest, "front") != 0)
        ret |= run_honest(MW_SIDE_BACK, rounds, round_ms, seed + 1, &eproto);
    if (ret == 0)
        printf("HOSTILE OK honest=%s eproto=%llu\n", honest, (unsigned long long)eproto);
    return ret ? 1 : 0;
}
