/*
 * The ring stress test's core: one side (frontend or INS) over a mapped area. See
 * ring_stress.h for what it does; ring_stress.c is the command-line driver.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring_stress.h"

#define CHUNK_MAX 65536u
#define HOLD_EVERY 4096u       /* hold back one request in this many ... */
#define HOLD_FOR 1000u         /* ... for this many answers */
#define SLEEP_MS 5000          /* a sleep this long without a kick is a lost wake-up */
#define POLL_SPIN_NS 5000      /* poll mode: spin this long, then yield the core */

struct rs {
    const struct rs_cfg *cfg;
    struct rs_result *res;
    struct mw_area area;
    struct mw_cmd_front *f;    /* the command ring, frontend side (phases 0 and 1) */
    struct mw_cmd_back *b;     /* the command ring, INS side */
    struct mw_evq evout;       /* our event queue: DATA (frontend) / SPACE (INS) of phase 2 */
    struct mw_evq evin;        /* the peer's */
    uint64_t rnd;
    double deadline;           /* fail when no progress until then */
    int last_kick;             /* the INS's last kick: the frontend may be gone already */
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int fail(struct rs *s, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(s->res->error, sizeof(s->res->error), fmt, ap);
    va_end(ap);
    return err;
}

static uint64_t rnd(struct rs *s)
{
    /* xorshift64* */
    s->rnd ^= s->rnd >> 12;
    s->rnd ^= s->rnd << 25;
    s->rnd ^= s->rnd >> 27;
    return s->rnd * 0x2545f4914f6cdd1dull;
}

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ------------------------------------------------------------------------------------------
 * The byte stream and its hash
 */

/* Stream bytes [pos, pos + n): byte p is byte p % 8 (little-endian) of word p / 8. */
static void stream_fill(uint64_t seed, uint64_t pos, uint8_t *dst, size_t n)
{
    uint64_t v;

    for (; n && (pos & 7); n--, pos++) {
        v = splitmix(seed ^ (pos >> 3));
        *dst++ = (uint8_t)(v >> (8 * (pos & 7)));
    }
    for (; n >= 8; n -= 8, pos += 8, dst += 8) {
        v = splitmix(seed ^ (pos >> 3));
        memcpy(dst, &v, 8);
    }
    for (; n; n--, pos++) {
        v = splitmix(seed ^ (pos >> 3));
        *dst++ = (uint8_t)(v >> (8 * (pos & 7)));
    }
}

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

struct hash {
    uint64_t h;
    uint64_t part;             /* bytes of an incomplete word */
    unsigned int nb;           /* how many */
};

static void hash_init(struct hash *x)
{
    x->h = FNV_OFFSET;
    x->part = 0;
    x->nb = 0;
}

static void hash_update(struct hash *x, const uint8_t *p, size_t n)
{
    uint64_t w;

    while (n && x->nb) {
        x->part |= (uint64_t)*p++ << (8 * x->nb);
        n--;
        if (++x->nb == 8) {
            x->h = (x->h ^ x->part) * FNV_PRIME;
            x->part = 0;
            x->nb = 0;
        }
    }
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        x->h = (x->h ^ w) * FNV_PRIME;
    }
    for (; n; n--)
        x->part |= (uint64_t)*p++ << (8 * x->nb++);
}

static uint64_t hash_final(struct hash *x)
{
    if (x->nb)
        return (x->h ^ x->part) * FNV_PRIME;
    return x->h;
}

uint64_t rs_stream_hash(uint64_t seed, uint64_t bytes)
{
    uint8_t buf[CHUNK_MAX];
    struct hash h;
    uint64_t pos;

    hash_init(&h);
    for (pos = 0; pos < bytes; pos += CHUNK_MAX) {
        size_t n = bytes - pos < CHUNK_MAX ? bytes - pos : CHUNK_MAX;

        stream_fill(seed, pos, buf, n);
        hash_update(&h, buf, n);
    }
    return hash_final(&h);
}

/* ------------------------------------------------------------------------------------------
 * Waiting: poll mode spins and yields; doorbell mode spins for spin_ns, then sets the event
 * index (final check / prepare wait) and sleeps on the doorbell.
 */

enum wait_on { WAIT_RSP, WAIT_REQ, WAIT_RING };

static int kick(struct rs *s)
{
    int ret;

    if (s->cfg->poll)
        return 0;
    s->res->kicks++;
    ret = s->cfg->bell->kick(s->cfg->bell->ctx);
    /* the frontend exits as soon as it sees the last byte consumed, maybe before this kick
     * for it arrives: its port is then gone (-EPIPE), which is no error */
    if (ret == -EPIPE && s->last_kick)
        return 0;
    return ret < 0 ? fail(s, ret, "kick: %s", strerror(-ret)) : 0;
}

/*
 * Phase 2 notifies as protocol.md 10 says: a byte ring end whose publish/release says the
 * peer waits posts an event (DATA or SPACE about socket 0) and kicks only if the peer's event
 * queue asked for it.
 */
static int post(struct rs *s, uint16_t type)
{
    int ret = mw_evq_put(&s->evout, 0, type, 0);

    if (ret < 0)
        return fail(s, ret, "evq_put: %s", strerror(-ret));
    s->res->events_posted++;
    ret = mw_evq_push(&s->evout);
    if (ret < 0)
        return fail(s, ret, "evq_push: %s", strerror(-ret));
    return ret == 1 ? kick(s) : 0;
}

/* Take every event the peer posted: all must be `type` about socket 0. */
static int drain(struct rs *s, uint16_t type)
{
    struct mw_event ev;
    int ret;

    while ((ret = mw_evq_take(&s->evin, &ev)) > 0) {
        if (ret == MW_EVQ_RESCAN) {
            s->res->rescans++;
            continue;
        }
        if (ev.sock != 0 || ev.type != type)
            return fail(s, -EIO, "unexpected event: sock %u type %u", ev.sock, ev.type);
        s->res->events_taken++;
    }
    return ret < 0 ? fail(s, ret, "evq_take: %s", strerror(-ret)) : 0;
}

static void progressed(struct rs *s)
{
    s->deadline = now_s() + s->cfg->timeout_s;
}

static int wait_for(struct rs *s, enum wait_on on, void *obj, uint32_t need)
{
    struct mw_watch w;
    int ret;

    if (now_s() > s->deadline)
        return fail(s, -ETIMEDOUT, "no progress for %u s", s->cfg->timeout_s);
    switch (on) {
    case WAIT_RSP: w = mw_cmd_front_watch(obj); break;
    case WAIT_REQ: w = mw_cmd_back_watch(obj); break;
    default: w = mw_bring_watch(obj); break;
    }
    if (s->cfg->poll) {
        if (mw_spin_wait(&w, 1, POLL_SPIN_NS) == 0)
            sched_yield();   /* the peer may be waiting for our core */
        return 0;
    }
    if (mw_spin_wait(&w, 1, s->cfg->spin_ns))
        return 0;
    switch (on) {
    case WAIT_RSP: ret = mw_cmd_front_final_check(obj); break;
    case WAIT_REQ: ret = mw_cmd_back_final_check(obj); break;
    default:
        /* the byte ring's event index, then the event queue's: the peer posts an event when
         * it moves the index past ours, and kicks when it pushes that event past the other */
        ret = mw_bring_prepare_wait(obj, need);
        if (ret == 0)
            ret = mw_evq_final_check(&s->evin);
        break;
    }
    if (ret < 0)
        return fail(s, ret, "final check: %s", strerror(-ret));
    if (ret == 1)
        return 0;
    s->res->sleeps++;
    ret = s->cfg->bell->sleep(s->cfg->bell->ctx, SLEEP_MS);
    if (ret < 0)
        return fail(s, ret, "sleep: %s", strerror(-ret));
    if (ret == 0)
        s->res->sleep_timeouts++;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Phase 1: messages
 */

static uint64_t pattern(uint64_t seq, unsigned int i)
{
    return (seq + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)i << 56 | i);
}

static void make_req(struct mw_req *q, uint64_t seq, uint32_t nsocks)
{
    uint64_t w;

    memset(q, 0, sizeof(*q));
    q->cmd = MW_CMD_PING;
    q->sock = (uint32_t)(seq % nsocks);
    q->u.ping.arg = seq;
    for (unsigned int i = 1; i < MW_REQ_BODY_SIZE / 8; i++) {
        w = pattern(seq, i);
        memcpy(q->u.raw + 8 * i, &w, 8);
    }
}

static int req_ok(const struct mw_req *q, uint64_t seq, uint32_t nsocks)
{
    struct mw_req want;

    make_req(&want, seq, nsocks);
    want.id = q->id;
    return memcmp(q, &want, sizeof(want)) == 0;
}

static void make_rsp(struct mw_rsp *r, const struct mw_req *q)
{
    uint64_t seq = q->u.ping.arg, w;

    memset(r, 0, sizeof(*r));
    r->id = q->id;
    r->cmd = q->cmd;
    r->sock = q->sock;
    r->ret = (int32_t)(seq & 0xffff);
    r->u.ping.arg = seq;
    for (unsigned int i = 1; i < MW_RSP_BODY_SIZE / 8; i++) {
        w = ~pattern(seq, i);
        memcpy(r->u.raw + 8 * i, &w, 8);
    }
}

static int front_messages(struct rs *s)
{
    struct mw_cmd_front *f = s->f;
    uint64_t msgs = s->cfg->msgs, sent = 0, done = 0, cookie;
    uint32_t nsocks = s->area.nsocks;
    uint8_t *answered;
    struct mw_req q, orig;
    struct mw_rsp r, want;
    int ret = 0, put, got;

    answered = calloc(msgs / 8 + 1, 1);
    if (!answered)
        return fail(s, -ENOMEM, "out of memory");

    while (done < msgs) {
        put = 0;
        while (sent < msgs && (ret = mw_cmd_front_space(f)) > 0) {
            make_req(&q, sent, nsocks);
            ret = mw_cmd_front_put_req(f, &q, sent);
            if (ret < 0)
                goto out_ring;
            sent++;
            put++;
        }
        if (ret < 0)
            goto out_ring;
        if (put) {
            ret = mw_cmd_front_push(f);
            if (ret < 0)
                goto out_ring;
            if (ret == 1 && (ret = kick(s)) < 0)
                goto out_free;
        }
        got = 0;
        while ((ret = mw_cmd_front_take_rsp(f, &r, &cookie)) == 1) {
            make_req(&orig, cookie, nsocks);
            orig.id = r.id;
            make_rsp(&want, &orig);
            if (memcmp(&r, &want, sizeof(r)) != 0) {
                ret = fail(s, -EIO, "response %u does not answer request %llu (arg %llu)",
                           r.id, (unsigned long long)cookie,
                           (unsigned long long)r.u.ping.arg);
                goto out_free;
            }
            if (answered[cookie / 8] & (1u << (cookie % 8))) {
                ret = fail(s, -EIO, "request %llu answered twice", (unsigned long long)cookie);
                goto out_free;
            }
            answered[cookie / 8] |= 1u << (cookie % 8);
            done++;
            got++;
        }
        if (ret < 0)
            goto out_ring;
        if (put || got)
            progressed(s);
        else if ((ret = wait_for(s, WAIT_RSP, f, 0)) < 0)
            goto out_free;
    }
    for (uint64_t i = 0; i < msgs; i++) {
        if (!(answered[i / 8] & (1u << (i % 8)))) {
            ret = fail(s, -EIO, "request %llu never answered", (unsigned long long)i);
            goto out_free;
        }
    }
    s->res->msgs = done;
    free(answered);
    return 0;

out_ring:
    ret = fail(s, ret, "command ring (front): %s after %llu responses", strerror(-ret),
               (unsigned long long)done);
out_free:
    free(answered);
    return ret;
}

static int back_messages(struct rs *s)
{
    struct mw_cmd_back *b = s->b;
    static struct mw_req pending[MW_CMD_SLOTS_MAX];
    struct mw_req q, held = { 0 };
    struct mw_rsp r;
    uint64_t msgs = s->cfg->msgs, next = 0, answered = 0, held_at = 0;
    uint32_t nsocks = s->area.nsocks, np = 0, k, j;
    int ret, got, have_held = 0, answered_now;

    while (answered < msgs) {
        got = 0;
        while ((ret = mw_cmd_back_take_req(b, &q)) == 1) {
            if (!req_ok(&q, next, nsocks))
                return fail(s, -EIO, "request %llu lost, duplicated, reordered or damaged "
                            "(got arg %llu)", (unsigned long long)next,
                            (unsigned long long)q.u.ping.arg);
            next++;
            got++;
            if (!have_held && q.u.ping.arg % HOLD_EVERY == 1) {
                held = q;
                held_at = answered;
                have_held = 1;
            } else {
                pending[np++] = q;
            }
        }
        if (ret < 0)
            return fail(s, ret, "command ring (back): %s", strerror(-ret));

        /* answer a random subset in random order; everything when nothing new came */
        k = got ? (np ? 1 + (uint32_t)(rnd(s) % np) : 0) : np;
        answered_now = 0;
        while (k--) {
            j = (uint32_t)(rnd(s) % np);
            make_rsp(&r, &pending[j]);
            pending[j] = pending[--np];
            if ((ret = mw_cmd_back_put_rsp(b, &r)) < 0)
                return fail(s, ret, "put_rsp: %s", strerror(-ret));
            answered++;
            answered_now++;
        }
        if (have_held && (answered >= held_at + HOLD_FOR || (!got && np == 0))) {
            make_rsp(&r, &held);
            if ((ret = mw_cmd_back_put_rsp(b, &r)) < 0)
                return fail(s, ret, "put_rsp: %s", strerror(-ret));
            have_held = 0;
            answered++;
            answered_now++;
        }
        if (answered_now) {
            ret = mw_cmd_back_push(b);
            if (ret < 0)
                return fail(s, ret, "push: %s", strerror(-ret));
            if (ret == 1 && (ret = kick(s)) < 0)
                return ret;
        }
        if (got || answered_now)
            progressed(s);
        else if ((ret = wait_for(s, WAIT_REQ, b, 0)) < 0)
            return ret;
    }
    s->res->msgs = answered;
    return 0;
}

/* Phase 0: one request in flight at a time, on the ring objects phase 1 goes on with. */
static int front_pingpong(struct rs *s)
{
    struct mw_cmd_front *f = s->f;
    struct mw_req q;
    struct mw_rsp r;
    uint64_t i, cookie;
    int ret;

    for (i = 0; i < s->cfg->pingpong; i++) {
        make_req(&q, i, s->area.nsocks);
        if ((ret = mw_cmd_front_put_req(f, &q, i)) < 0 || (ret = mw_cmd_front_push(f)) < 0)
            return fail(s, ret, "ping %llu: %s", (unsigned long long)i, strerror(-ret));
        if (ret == 1 && (ret = kick(s)) < 0)
            return ret;
        while ((ret = mw_cmd_front_take_rsp(f, &r, &cookie)) == 0) {
            if ((ret = wait_for(s, WAIT_RSP, f, 0)) < 0)
                return ret;
        }
        if (ret < 0)
            return fail(s, ret, "pong %llu: %s", (unsigned long long)i, strerror(-ret));
        if (cookie != i || r.u.ping.arg != i)
            return fail(s, -EIO, "pong %llu answers %llu", (unsigned long long)i,
                        (unsigned long long)r.u.ping.arg);
        progressed(s);
    }
    return 0;
}

static int back_pingpong(struct rs *s)
{
    struct mw_cmd_back *b = s->b;
    struct mw_req q;
    struct mw_rsp r;
    uint64_t i;
    int ret;

    for (i = 0; i < s->cfg->pingpong; i++) {
        while ((ret = mw_cmd_back_take_req(b, &q)) == 0) {
            if ((ret = wait_for(s, WAIT_REQ, b, 0)) < 0)
                return ret;
        }
        if (ret < 0)
            return fail(s, ret, "ping %llu: %s", (unsigned long long)i, strerror(-ret));
        if (!req_ok(&q, i, s->area.nsocks))
            return fail(s, -EIO, "ping %llu damaged", (unsigned long long)i);
        make_rsp(&r, &q);
        if ((ret = mw_cmd_back_put_rsp(b, &r)) < 0 || (ret = mw_cmd_back_push(b)) < 0)
            return fail(s, ret, "pong %llu: %s", (unsigned long long)i, strerror(-ret));
        if (ret == 1 && (ret = kick(s)) < 0)
            return ret;
        progressed(s);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Phase 2: bytes
 */

static int front_bytes(struct rs *s)
{
    static uint8_t stage[CHUNK_MAX];
    uint64_t bytes = s->cfg->bytes, generated = 0, sent = 0;
    uint32_t off = 0, len = 0, need;
    struct mw_bring tx;
    struct hash h;
    int ret;

    ret = mw_bring_init(&tx, &s->area, 0, MW_SIDE_FRONT, MW_BRING_TX, 0, s->cfg->order);
    if (ret < 0)
        return fail(s, ret, "mw_bring_init: %d", ret);
    hash_init(&h);
    while (sent < bytes) {
        if (off == len) {
            len = 1 + (uint32_t)(rnd(s) % CHUNK_MAX);
            if (len > bytes - generated)
                len = (uint32_t)(bytes - generated);
            stream_fill(s->cfg->seed, generated, stage, len);
            generated += len;
            off = 0;
        }
        ret = mw_bring_write(&tx, stage + off, len - off);
        if (ret < 0)
            return fail(s, ret, "byte ring (front): %s", strerror(-ret));
        if (ret > 0) {
            hash_update(&h, stage + off, (size_t)ret);
            off += (uint32_t)ret;
            sent += (uint32_t)ret;
            ret = mw_bring_publish(&tx);
            if (ret < 0)
                return fail(s, ret, "publish: %s", strerror(-ret));
            if (ret == 1 && (ret = post(s, MW_EV_DATA)) < 0)
                return ret;
            progressed(s);
            continue;
        }
        if ((ret = drain(s, MW_EV_SPACE)) < 0)
            return ret;
        need = len - off < tx.size / 2 ? len - off : tx.size / 2;
        if ((ret = wait_for(s, WAIT_RING, &tx, need)) < 0)
            return ret;
    }
    /* wait until the INS has consumed everything */
    while ((ret = mw_bring_space(&tx)) != (int)tx.size) {
        if (ret < 0)
            return fail(s, ret, "byte ring (front): %s", strerror(-ret));
        if ((ret = drain(s, MW_EV_SPACE)) < 0 ||
            (ret = wait_for(s, WAIT_RING, &tx, tx.size)) < 0)
            return ret;
    }
    s->res->bytes = sent;
    s->res->hash = hash_final(&h);
    return 0;
}

static int back_bytes(struct rs *s)
{
    static uint8_t buf[CHUNK_MAX], want[CHUNK_MAX];
    uint64_t bytes = s->cfg->bytes, got = 0;
    struct mw_bring tx;
    struct hash h;
    uint32_t n;
    int ret;

    ret = mw_bring_init(&tx, &s->area, 0, MW_SIDE_BACK, MW_BRING_TX, 0, s->cfg->order);
    if (ret < 0)
        return fail(s, ret, "mw_bring_init: %d", ret);
    hash_init(&h);
    while (got < bytes) {
        n = 1 + (uint32_t)(rnd(s) % CHUNK_MAX);
        ret = mw_bring_read(&tx, buf, n);
        if (ret < 0)
            return fail(s, ret, "byte ring (back): %s after %llu bytes", strerror(-ret),
                        (unsigned long long)got);
        if (ret == 0) {
            if ((ret = drain(s, MW_EV_DATA)) < 0 || (ret = wait_for(s, WAIT_RING, &tx, 1)) < 0)
                return ret;
            continue;
        }
        if ((uint64_t)ret > bytes - got)
            return fail(s, -EIO, "more bytes than were sent");
        stream_fill(s->cfg->seed, got, want, (size_t)ret);
        if (memcmp(buf, want, (size_t)ret) != 0)
            return fail(s, -EIO, "stream differs within bytes %llu..%llu",
                        (unsigned long long)got, (unsigned long long)got + ret);
        hash_update(&h, buf, (size_t)ret);
        got += (uint32_t)ret;
        s->last_kick = got == bytes;
        ret = mw_bring_release(&tx);
        if (ret < 0)
            return fail(s, ret, "release: %s", strerror(-ret));
        if (ret == 1 && (ret = post(s, MW_EV_SPACE)) < 0)
            return ret;
        progressed(s);
    }
    s->res->bytes = got;
    s->res->hash = hash_final(&h);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

int rs_run(const struct rs_cfg *cfg, struct rs_result *res)
{
    struct rs s = { .cfg = cfg, .res = res };
    double t0, t1;
    int ret;

    memset(res, 0, sizeof(*res));
    if (!cfg->poll && (!cfg->bell || !cfg->bell->kick || !cfg->bell->sleep))
        return fail(&s, -EINVAL, "doorbell mode without a doorbell");
    ret = mw_area_init(&s.area, cfg->area, cfg->area_size, &cfg->geom);
    if (ret < 0)
        return fail(&s, ret, "mw_area_init: bad geometry or area too small");
    if (cfg->order < MW_RING_ORDER_MIN || cfg->order > MW_RING_ORDER_MAX ||
        (1ull << cfg->order) > s.area.data_size)
        return fail(&s, -EINVAL, "ring order %u does not fit the data area", cfg->order);
    s.rnd = splitmix(cfg->seed * 2 + cfg->side) | 1;
    if (cfg->side == MW_SIDE_FRONT) {
        static struct mw_cmd_front f;

        mw_sock_reset(&s.area, 0);
        s.f = &f;
        ret = mw_cmd_front_init(s.f, &s.area);
    } else {
        static struct mw_cmd_back b;

        s.b = &b;
        ret = mw_cmd_back_init(s.b, &s.area);
    }
    if (ret < 0)
        return fail(&s, ret, "command ring init: %d", ret);
    if ((ret = mw_evq_init(&s.evout, &s.area, cfg->side, 1)) < 0 ||
        (ret = mw_evq_init(&s.evin, &s.area, cfg->side, 0)) < 0)
        return fail(&s, ret, "event queue init: %d", ret);

    progressed(&s);
    t0 = now_s();
    if (cfg->pingpong) {
        ret = cfg->side == MW_SIDE_FRONT ? front_pingpong(&s) : back_pingpong(&s);
        t1 = now_s();
        res->rtt_secs = t1 - t0;
        if (ret < 0)
            return ret;
        t0 = now_s();
    }
    ret = cfg->side == MW_SIDE_FRONT ? front_messages(&s) : back_messages(&s);
    t1 = now_s();
    res->msg_secs = t1 - t0;
    if (ret < 0)
        return ret;

    progressed(&s);
    ret = cfg->side == MW_SIDE_FRONT ? front_bytes(&s) : back_bytes(&s);
    res->byte_secs = now_s() - t1;
    return ret;
}
