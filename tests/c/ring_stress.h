/*
 * The ring stress test's core, one side at a time, over any mapping of the shared area: a
 * fork() and a memfd (ring_stress.c), two processes sharing a file, or two domains sharing
 * granted pages. The caller maps the area, gives the doorbell, and runs one side in each
 * process; both sides must be given the same geometry, counts and seed.
 *
 * Phase 0, round trips (when pingpong > 0): the frontend sends one PING at a time and waits
 * for its response, `pingpong` times: the latency of a wake-up, spinning or sleeping.
 * Phase 1, messages: the frontend sends `msgs` PING requests (arg = sequence number, the rest
 * of the body a pattern of it) as fast as the command ring takes them; the INS checks that
 * they arrive in order and intact, and answers them out of order (a random subset each round,
 * one request held back for a thousand answers now and then); the frontend checks that every
 * response answers its own request, once, with its own pattern.
 * Phase 2, bytes: the frontend writes `bytes` bytes of a pseudo-random stream (a function of
 * the seed and the position, so the INS can generate it too) into the tx byte ring of socket 0
 * in random-sized pieces; the INS reads them in other random-sized pieces and compares. Each
 * side computes FNV-1a-64 over the stream's 64-bit words as it sent / received them. In doorbell
 * mode the byte ring's wake-ups go through the event queues, as protocol.md 10 has it: DATA
 * events on fq, SPACE events on bq.
 */
#ifndef RING_STRESS_H
#define RING_STRESS_H

#include <stddef.h>
#include <stdint.h>

#include "mwcomms/ring.h"

/* How a side kicks its peer and sleeps until kicked (an eventfd pair, an event channel...). */
struct rs_bell {
    void *ctx;
    int (*kick)(void *ctx);                    /* @return 0 or -errno */
    int (*sleep)(void *ctx, int timeout_ms);   /* @return 1 kicked (and consumed), 0 timeout,
                                                * -errno */
};

struct rs_cfg {
    enum mw_side side;
    void *area;                /* the mapped shared area, zeroed before either side starts */
    size_t area_size;
    struct mw_area_geom geom;
    uint64_t pingpong;         /* round trips of one message at a time (phase 0) */
    uint64_t msgs;             /* request/response pairs */
    uint64_t bytes;            /* through the tx ring of socket 0 */
    uint8_t order;             /* that ring's size, at offset 0 of the data area */
    int poll;                  /* 1: never sleep: spin, yield now and then */
    uint32_t spin_ns;          /* doorbell: spin this long before sleeping */
    const struct rs_bell *bell;/* doorbell mode only */
    uint64_t seed;
    unsigned int timeout_s;    /* a side that makes no progress this long fails (hang) */
};

struct rs_result {
    uint64_t msgs;             /* messages completed (answered / received) */
    uint64_t bytes;            /* bytes sent / received and checked */
    double rtt_secs;           /* wall time of phase 0 */
    double msg_secs;           /* wall time of phase 1 */
    double byte_secs;          /* wall time of phase 2 (the frontend: until all was consumed) */
    uint64_t hash;             /* FNV-1a-64 of the stream as sent / received */
    uint64_t kicks;            /* doorbell kicks sent */
    uint64_t sleeps;           /* times the side slept on its doorbell */
    uint64_t sleep_timeouts;   /* sleeps that ended without a kick: lost wake-ups */
    uint64_t events_posted;    /* phase 2: DATA / SPACE events put on our queue */
    uint64_t events_taken;     /* phase 2: events taken from the peer's queue */
    uint64_t rescans;          /* phase 2: overflows reported by the peer's queue */
    char error[160];           /* what went wrong, when rs_run() fails */
};

/**
 * Run one side of the stress over a mapped area.
 * @return 0 when everything checked out, -EPROTO (the ring reported a protocol error), -EIO
 *         (wrong data), -ETIMEDOUT, -EINVAL (bad config); res->error says more
 */
int rs_run(const struct rs_cfg *cfg, struct rs_result *res);

/** @return the hash both sides must report for this seed and length */
uint64_t rs_stream_hash(uint64_t seed, uint64_t bytes);

#endif /* RING_STRESS_H */
