/*
 * The link probe (mwcomms/probe.h): PING round trips, pipelined PINGs and a hashed byte stream
 * over a connected area, each side waking the other through the event channel.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "mwcomms/probe.h"

#define PROBE_DONE 0xd0d0d0d0d0d0d0d0ull   /* arg of the frontend's last PING */
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
#define CHUNK 65536u

/* FNV-1a over the stream's 64-bit little-endian words, fed in pieces of any length. */
struct hasher {
    uint64_t h;
    uint8_t part[8];           /* bytes of a word not complete yet */
    unsigned int n;
};

/* One side's view of the area while the probe runs. */
struct probe {
    const struct mw_probe_cfg *cfg;
    struct mw_probe_result *res;
    struct mw_area area;
    struct mw_cmd_front front;
    struct mw_cmd_back back;
    struct mw_evq out;         /* events I post */
    struct mw_evq in;          /* events the peer posts */
    struct mw_bring stream;    /* tx of the last socket slot */
    struct hasher hash;        /* of the stream as sent / received */
    uint32_t sock;
};

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(struct probe *p, int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(p->res->why, sizeof(p->res->why), fmt, ap);
    va_end(ap);
    return rc;
}

static int kick(struct probe *p)
{
    p->res->kicks++;
    return mw_evtchn_notify(p->cfg->evtchn, p->cfg->port);
}

static void hash_word(struct hasher *hs, uint64_t w)
{
    hs->h = (hs->h ^ w) * FNV_PRIME;
}

static void hash_update(struct hasher *hs, const uint8_t *buf, uint32_t len)
{
    uint64_t w;

    while (len && hs->n) {
        hs->part[hs->n++] = *buf++;
        len--;
        if (hs->n == 8) {
            memcpy(&w, hs->part, 8);
            hash_word(hs, w);
            hs->n = 0;
        }
    }
    for (; len >= 8; buf += 8, len -= 8) {
        memcpy(&w, buf, 8);
        hash_word(hs, w);
    }
    while (len--)
        hs->part[hs->n++] = *buf++;
}

/* A stream's last partial word counts too, zero padded. */
static uint64_t hash_final(struct hasher *hs)
{
    uint64_t w = 0;

    if (hs->n) {
        memcpy(&w, hs->part, hs->n);
        hash_word(hs, w);
        hs->n = 0;
    }
    return hs->h;
}

/* The stream's word number `word`: a xorshift of its index. */
static uint64_t stream_word(uint64_t word)
{
    uint64_t x = word + 0x9e3779b97f4a7c15ull;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

/* The stream's bytes [pos, pos + len): whole words where aligned, bytes at the edges. */
static void fill(uint8_t *buf, uint64_t pos, uint32_t len)
{
    for (; len && (pos % 8); len--, pos++)
        *buf++ = (uint8_t)(stream_word(pos / 8) >> (8 * (pos % 8)));
    for (; len >= 8; buf += 8, pos += 8, len -= 8) {
        uint64_t w = stream_word(pos / 8);

        memcpy(buf, &w, 8);
    }
    for (; len; len--, pos++)
        *buf++ = (uint8_t)(stream_word(pos / 8) >> (8 * (pos % 8)));
}

/* Take every event the peer posted: they are hints, the indices hold the truth. */
static int drain_events(struct probe *p)
{
    struct mw_event ev;
    int rc;

    while ((rc = mw_evq_take(&p->in, &ev)) > 0)
        ;
    return rc;
}

/*
 * Sleep until kicked, unless something moved while spinning or the final checks say it did.
 * `rx` (may be NULL) is the byte ring end this side waits on, with `need` bytes.
 */
static int wait_for_peer(struct probe *p, int front, struct mw_bring *r, uint32_t need)
{
    struct mw_watch w[3];
    unsigned int n = 0;
    int rc;

    w[n++] = front ? mw_cmd_front_watch(&p->front) : mw_cmd_back_watch(&p->back);
    w[n++] = mw_evq_watch(&p->in);
    if (r)
        w[n++] = mw_bring_watch(r);
    if (mw_spin_wait(w, n, p->cfg->spin_ns))
        return 0;
    if (r) {
        rc = mw_bring_prepare_wait(r, need);
        if (rc)
            return rc < 0 ? fail(p, rc, "byte ring: %s", strerror(-rc)) : 0;
    }
    rc = front ? mw_cmd_front_final_check(&p->front) : mw_cmd_back_final_check(&p->back);
    if (rc)
        return rc < 0 ? fail(p, rc, "command ring: %s", strerror(-rc)) : 0;
    rc = mw_evq_final_check(&p->in);
    if (rc)
        return rc < 0 ? fail(p, rc, "event queue: %s", strerror(-rc)) : 0;
    p->res->sleeps++;
    rc = mw_evtchn_wait(p->cfg->evtchn, p->cfg->timeout_ms);
    if (rc == 0)
        return fail(p, -ETIMEDOUT, "no word from the peer for %d ms", p->cfg->timeout_ms);
    if (rc < 0 && rc != -EINTR)
        return fail(p, rc, "event channel wait: %s", strerror(-rc));
    while (mw_evtchn_pending(p->cfg->evtchn) > 0)
        ;
    return 0;
}

static int probe_open(struct probe *p, const struct mw_probe_cfg *cfg,
                      struct mw_probe_result *res, enum mw_side side)
{
    int rc;

    memset(p, 0, sizeof(*p));
    memset(res, 0, sizeof(*res));
    p->cfg = cfg;
    p->res = res;
    if (!cfg->evtchn || cfg->timeout_ms <= 0)
        return fail(p, -EINVAL, "no event channel or no timeout");
    rc = mw_area_init(&p->area, cfg->area, cfg->area_size, &cfg->geom);
    if (rc)
        return fail(p, rc, "area geometry refused");
    rc = side == MW_SIDE_FRONT ? mw_cmd_front_init(&p->front, &p->area)
                               : mw_cmd_back_init(&p->back, &p->area);
    if (!rc)
        rc = mw_evq_init(&p->out, &p->area, side, 1);
    if (!rc)
        rc = mw_evq_init(&p->in, &p->area, side, 0);
    if (rc)
        return fail(p, rc, "ring set-up: %s", strerror(-rc));
    p->sock = p->area.nsocks - 1;
    if (side == MW_SIDE_FRONT) {
        rc = mw_sock_reset(&p->area, p->sock);
        if (rc)
            return fail(p, rc, "socket slot reset");
    }
    if (cfg->bytes) {
        rc = mw_bring_init(&p->stream, &p->area, p->sock, side, MW_BRING_TX, 0, cfg->order);
        if (rc)
            return fail(p, rc, "stream ring of order %u does not fit", cfg->order);
    }
    return 0;
}

/* Frontend: put one PING and push it. */
static int ping(struct probe *p, uint64_t arg)
{
    struct mw_req req;
    int rc;

    memset(&req, 0, sizeof(req));
    req.cmd = MW_CMD_PING;
    req.u.ping.arg = arg;
    rc = mw_cmd_front_put_req(&p->front, &req, arg);
    if (rc)
        return rc;
    rc = mw_cmd_front_push(&p->front);
    return rc > 0 ? kick(p) : rc;
}

/* Frontend: take every response there is; check each echoes its PING. */
static int take_pongs(struct probe *p, uint64_t *done, int *finished)
{
    struct mw_rsp rsp;
    uint64_t cookie;
    int rc;

    while ((rc = mw_cmd_front_take_rsp(&p->front, &rsp, &cookie)) > 0) {
        if (rsp.ret != 0 || rsp.u.ping.arg != cookie)
            return fail(p, -EPROTO, "PING %llu answered ret=%d arg=%llu",
                        (unsigned long long)cookie, rsp.ret,
                        (unsigned long long)rsp.u.ping.arg);
        if (cookie == PROBE_DONE)
            *finished = 1;
        else
            (*done)++;
    }
    return rc < 0 ? fail(p, rc, "command ring: %s", strerror(-rc)) : 0;
}

static int front_pings(struct probe *p, uint64_t count, int one_at_a_time)
{
    uint64_t sent = 0, done = 0;
    int finished = 0, rc;

    while (done < count) {
        while (sent < count && (!one_at_a_time || sent == done)) {
            rc = ping(p, sent);
            if (rc == -ENOSPC)
                break;
            if (rc < 0)
                return fail(p, rc, "PING %llu: %s", (unsigned long long)sent, strerror(-rc));
            sent++;
        }
        rc = take_pongs(p, &done, &finished);
        if (rc)
            return rc;
        if (done < count && done < sent && (rc = wait_for_peer(p, 1, NULL, 0)) < 0)
            return rc;
        if ((rc = drain_events(p)) < 0)
            return fail(p, rc, "event queue: %s", strerror(-rc));
    }
    return 0;
}

static int front_stream(struct probe *p)
{
    static uint8_t buf[CHUNK];
    const uint64_t total = p->cfg->bytes;
    uint64_t pos = 0;
    int rc;

    p->hash.h = FNV_OFFSET;
    while (pos < total) {
        int space = mw_bring_space(&p->stream);

        if (space < 0)
            return fail(p, space, "stream: %s", strerror(-space));
        if (space == 0) {
            if ((rc = wait_for_peer(p, 1, &p->stream, 1)) < 0)
                return rc;
            if ((rc = drain_events(p)) < 0)
                return fail(p, rc, "event queue: %s", strerror(-rc));
            continue;
        }
        uint32_t len = (uint32_t)(total - pos < (uint64_t)space ? total - pos : (uint64_t)space);

        if (len > CHUNK)
            len = CHUNK;
        fill(buf, pos, len);
        rc = mw_bring_write(&p->stream, buf, len);
        if (rc < 0)
            return fail(p, rc, "stream write: %s", strerror(-rc));
        hash_update(&p->hash, buf, (uint32_t)rc);
        pos += (uint64_t)rc;
        rc = mw_bring_publish(&p->stream);
        if (rc < 0)
            return fail(p, rc, "stream publish: %s", strerror(-rc));
        if (rc > 0) {
            mw_evq_put(&p->out, p->sock, MW_EV_DATA, pos);
            rc = mw_evq_push(&p->out);
            if (rc < 0)
                return fail(p, rc, "event queue: %s", strerror(-rc));
            if (rc > 0 && (rc = kick(p)) < 0)
                return fail(p, rc, "kick: %s", strerror(-rc));
        }
    }
    p->res->bytes = pos;
    p->res->hash = hash_final(&p->hash);
    return 0;
}

int mw_probe_front(const struct mw_probe_cfg *cfg, struct mw_probe_result *res)
{
    struct probe p;
    uint64_t done = 0;
    int finished = 0;
    double t;
    int rc;

    rc = probe_open(&p, cfg, res, MW_SIDE_FRONT);
    if (rc)
        return rc;
    t = now();
    rc = front_pings(&p, cfg->round_trips, 1);
    if (rc)
        return rc;
    res->round_trips = cfg->round_trips;
    res->rtt_secs = now() - t;
    t = now();
    rc = front_pings(&p, cfg->pings, 0);
    if (rc)
        return rc;
    res->pings = cfg->pings;
    res->ping_secs = now() - t;
    t = now();
    if (cfg->bytes && (rc = front_stream(&p)))
        return rc;
    /* The last PING goes after the stream's last byte: the INS answers it once it has them. */
    rc = ping(&p, PROBE_DONE);
    if (rc < 0)
        return fail(&p, rc, "last PING: %s", strerror(-rc));
    while (!finished) {
        if ((rc = take_pongs(&p, &done, &finished)))
            return rc;
        if (!finished && (rc = wait_for_peer(&p, 1, NULL, 0)) < 0)
            return rc;
        if ((rc = drain_events(&p)) < 0)
            return fail(&p, rc, "event queue: %s", strerror(-rc));
    }
    res->byte_secs = now() - t;
    return 0;
}

/* INS: take what the stream holds, hash it, give the space back. */
static int back_stream(struct probe *p)
{
    static uint8_t buf[CHUNK];
    int rc, moved = 0;

    for (;;) {
        rc = mw_bring_read(&p->stream, buf, CHUNK);
        if (rc < 0)
            return fail(p, rc, "stream read: %s", strerror(-rc));
        if (rc == 0)
            break;
        if (!p->res->bytes)
            p->res->byte_secs = now();
        hash_update(&p->hash, buf, (uint32_t)rc);
        p->res->bytes += (uint64_t)rc;
        moved = 1;
    }
    if (!moved)
        return 0;
    rc = mw_bring_release(&p->stream);
    if (rc < 0)
        return fail(p, rc, "stream release: %s", strerror(-rc));
    if (rc > 0) {
        mw_evq_put(&p->out, p->sock, MW_EV_SPACE, p->res->bytes);
        rc = mw_evq_push(&p->out);
        if (rc < 0)
            return fail(p, rc, "event queue: %s", strerror(-rc));
        if (rc > 0 && (rc = kick(p)) < 0)
            return fail(p, rc, "kick: %s", strerror(-rc));
    }
    return 1;
}

int mw_probe_back(const struct mw_probe_cfg *cfg, struct mw_probe_result *res)
{
    struct probe p;
    struct mw_req req;
    struct mw_rsp rsp;
    int finished = 0, held = 0, rc;
    double t = 0;

    rc = probe_open(&p, cfg, res, MW_SIDE_BACK);
    if (rc)
        return rc;
    p.hash.h = FNV_OFFSET;
    while (!finished) {
        int progress = 0;

        /* The last PING is answered only once the whole stream has arrived. */
        if (held && (!cfg->bytes || res->bytes >= cfg->bytes)) {
            memset(&rsp, 0, sizeof(rsp));
            rsp.id = req.id;
            rsp.cmd = req.cmd;
            rsp.sock = req.sock;
            rsp.u.ping.arg = req.u.ping.arg;
            finished = 1;
            if ((rc = mw_cmd_back_put_rsp(&p.back, &rsp)) < 0)
                return fail(&p, rc, "respond: %s", strerror(-rc));
        }
        while (!held && (rc = mw_cmd_back_take_req(&p.back, &req)) > 0) {
            if (req.cmd != MW_CMD_PING)
                return fail(&p, -EPROTO, "the probe got command %u", req.cmd);
            if (!t)
                t = now();
            if (req.u.ping.arg == PROBE_DONE) {
                held = 1;
                break;
            }
            memset(&rsp, 0, sizeof(rsp));
            rsp.id = req.id;
            rsp.cmd = req.cmd;
            rsp.sock = req.sock;
            rsp.u.ping.arg = req.u.ping.arg;
            if ((rc = mw_cmd_back_put_rsp(&p.back, &rsp)) < 0)
                return fail(&p, rc, "respond: %s", strerror(-rc));
            res->pings++;
            progress = 1;
        }
        if (rc < 0)
            return fail(&p, rc, "command ring: %s", strerror(-rc));
        rc = mw_cmd_back_push(&p.back);
        if (rc < 0)
            return fail(&p, rc, "command ring: %s", strerror(-rc));
        if (rc > 0 && (rc = kick(&p)) < 0)
            return fail(&p, rc, "kick: %s", strerror(-rc));
        if (cfg->bytes) {
            rc = back_stream(&p);
            if (rc < 0)
                return rc;
            progress |= rc;
        }
        if ((rc = drain_events(&p)) < 0)
            return fail(&p, rc, "event queue: %s", strerror(-rc));
        if (!progress && !finished && !(held && res->bytes >= cfg->bytes)) {
            rc = wait_for_peer(&p, 0, cfg->bytes ? &p.stream : NULL, 1);
            if (rc < 0)
                return rc;
        }
    }
    res->hash = hash_final(&p.hash);
    res->ping_secs = t ? now() - t : 0;
    if (res->bytes)
        res->byte_secs = now() - res->byte_secs;
    return 0;
}
