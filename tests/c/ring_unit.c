/*
 * Unit tests of the ring library (xen/ring.c): behaviour of each ring, and one case per receiver
 * check that triggers exactly that check. Both ends run in this one process over an area
 * allocated on the heap, so AddressSanitizer sees any access past its end; the rings under test
 * sit at the end of the data area for that reason.
 *
 *   ring_unit            run every case
 *   ring_unit NAME...    run the named cases
 *   ring_unit --list     print the case names
 *
 * Prints "PASS name" or "FAIL name: where: what" per case; exit status 1 if any failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mwcomms/ring.h"

static const char *cur;

#define CHECK(c)                                                                       \
    do {                                                                               \
        if (!(c)) {                                                                    \
            printf("FAIL %s: %s:%d: %s\n", cur, __FILE__, __LINE__, #c);               \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

#define CHECK_EQ(a, b)                                                                 \
    do {                                                                               \
        long long a_ = (long long)(a), b_ = (long long)(b);                            \
        if (a_ != b_) {                                                                \
            printf("FAIL %s: %s:%d: %s == %lld, expected %s == %lld\n", cur, __FILE__, \
                   __LINE__, #a, a_, #b, b_);                                          \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

/* ------------------------------------------------------------------------------------------
 * Fixture: a zeroed area on the heap
 */
struct fx {
    void *mem;
    size_t size;
    struct mw_area_geom g;
    struct mw_area a;
};

static void fx_close(struct fx *x)
{
    free(x->mem);
    x->mem = NULL;
}

static int fx_open(struct fx *x, uint32_t cmd_pages, uint32_t evq_pages, uint32_t nsocks,
                   uint32_t data_pages)
{
    x->g = (struct mw_area_geom){ cmd_pages, evq_pages, nsocks, data_pages };
    if (mw_area_size(&x->g, &x->size) < 0)
        return -1;
    x->mem = aligned_alloc(MW_PAGE_SIZE, x->size);
    if (!x->mem)
        return -1;
    memset(x->mem, 0, x->size);
    return mw_area_init(&x->a, x->mem, x->size, &x->g);
}

/* The byte ring of `order` at the very end of the data area. */
static uint32_t ring_off_at_end(const struct fx *x, unsigned order)
{
    return x->a.data_size - (1u << order);
}

static int open_pair(struct fx *x, uint32_t sock, enum mw_bring_dir dir, unsigned order,
                     struct mw_bring *prod, struct mw_bring *cons)
{
    uint32_t off = ring_off_at_end(x, order);
    enum mw_side ps = dir == MW_BRING_TX ? MW_SIDE_FRONT : MW_SIDE_BACK;
    enum mw_side cs = dir == MW_BRING_TX ? MW_SIDE_BACK : MW_SIDE_FRONT;

    if (mw_sock_reset(&x->a, sock) < 0)
        return -1;
    if (mw_bring_init(prod, &x->a, sock, ps, dir, off, (uint8_t)order) < 0)
        return -1;
    return mw_bring_init(cons, &x->a, sock, cs, dir, off, (uint8_t)order);
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((seed + i) * 2654435761u >> 13);
}

static struct mw_req ping_req(uint64_t arg, uint32_t sock)
{
    struct mw_req r;

    memset(&r, 0, sizeof(r));
    r.cmd = MW_CMD_PING;
    r.sock = sock;
    r.u.ping.arg = arg;
    return r;
}

static struct mw_rsp answer(const struct mw_req *q)
{
    struct mw_rsp r;

    memset(&r, 0, sizeof(r));
    r.id = q->id;
    r.cmd = q->cmd;
    r.sock = q->sock;
    r.ret = 0;
    r.u.ping.arg = q->u.ping.arg;
    return r;
}

/* ------------------------------------------------------------------------------------------
 * The area
 */
static int t_area_geometry(void)
{
    struct mw_area_geom g = { 1, 1, 32, 1 };
    struct mw_area a;
    size_t size;
    void *mem;

    CHECK_EQ(mw_area_size(&g, &size), 0);
    CHECK_EQ(size, (1 + 1 + 2 + 1 + 1) * MW_PAGE_SIZE);
    g.sock_slots = 33;   /* one more page of socket table */
    CHECK_EQ(mw_area_size(&g, &size), 0);
    CHECK_EQ(size, (1 + 1 + 2 + 2 + 1) * MW_PAGE_SIZE);

    g = (struct mw_area_geom){ 3, 1, 1, 1 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);          /* cmd pages not a power of two */
    g = (struct mw_area_geom){ 32, 1, 1, 1 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);          /* too many cmd pages */
    g = (struct mw_area_geom){ 1, 3, 1, 1 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);          /* evq pages not a power of two */
    g = (struct mw_area_geom){ 1, 128, 1, 1 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);
    g = (struct mw_area_geom){ 1, 1, 0, 1 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);
    g = (struct mw_area_geom){ 1, 1, MW_SOCK_SLOTS_MAX + 1, 1 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);
    g = (struct mw_area_geom){ 1, 1, 1, 0 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);
    g = (struct mw_area_geom){ 1, 1, 1, MW_DATA_PAGES_MAX + 1 };
    CHECK_EQ(mw_area_size(&g, &size), -EINVAL);

    g = (struct mw_area_geom){ 2, 2, 40, 3 };
    CHECK_EQ(mw_area_size(&g, &size), 0);
    mem = aligned_alloc(MW_PAGE_SIZE, size);
    CHECK(mem);
    CHECK_EQ(mw_area_init(&a, mem, size - 1, &g), -EINVAL);            /* too small */
    CHECK_EQ(mw_area_init(&a, (char *)mem + 8, size - 8, &g), -EINVAL); /* not aligned */
    CHECK_EQ(mw_area_init(&a, mem, size, &g), 0);
    CHECK((char *)a.ctrl == (char *)mem);
    CHECK((char *)a.slots == (char *)mem + MW_PAGE_SIZE);
    CHECK_EQ(a.nslots, 64);
    CHECK((char *)a.fq == (char *)mem + 3 * MW_PAGE_SIZE);
    CHECK((char *)a.bq == (char *)mem + 5 * MW_PAGE_SIZE);
    CHECK_EQ(a.evq_len, 512);
    CHECK((char *)a.socks == (char *)mem + 7 * MW_PAGE_SIZE);
    CHECK((char *)a.data == (char *)mem + 9 * MW_PAGE_SIZE);
    CHECK_EQ(a.data_size, 3 * MW_PAGE_SIZE);
    CHECK_EQ(a.data + a.data_size - (uint8_t *)mem, size);
    free(mem);
    return 0;
}

static int t_sock_reset(void)
{
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 4, 1), 0);
    memset(&x.a.socks[3], 0xab, sizeof(x.a.socks[3]));
    CHECK_EQ(mw_sock_reset(&x.a, 3), 0);
    CHECK_EQ(x.a.socks[3].back.rx_prod, 0);
    CHECK_EQ(x.a.socks[3].front.tx_prod, 0);
    CHECK_EQ(mw_sock_reset(&x.a, 4), -EINVAL);
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Command ring: behaviour
 */
static int t_cmd_roundtrip(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req q, qs[64];
    struct mw_rsp r;
    uint64_t cookie;
    struct fx x;
    int i;

    CHECK_EQ(fx_open(&x, 2, 1, 8, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    CHECK_EQ(mw_cmd_front_init(&f, &x.a), 0);
    CHECK_EQ(mw_cmd_front_space(&f), 64);
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 0);

    for (i = 0; i < 64; i++) {
        q = ping_req(1000 + i, i % 8);
        CHECK_EQ(mw_cmd_front_put_req(&f, &q, 5000 + i), 0);
        CHECK(q.id != 0);
    }
    q = ping_req(0, 0);
    CHECK_EQ(mw_cmd_front_put_req(&f, &q, 0), -ENOSPC);
    CHECK_EQ(mw_cmd_front_space(&f), 0);
    CHECK_EQ(mw_cmd_front_push(&f), 1);      /* the back asked at init (req_event = 1) */

    for (i = 0; i < 64; i++)
        CHECK_EQ(mw_cmd_back_take_req(&b, &qs[i]), 1);
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 0);
    CHECK_EQ(mw_cmd_back_unanswered(&b), 64);
    for (i = 63; i >= 0; i--) {               /* answer in reverse order */
        r = answer(&qs[i]);
        CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    }
    CHECK_EQ(mw_cmd_back_push(&b), 1);       /* the front asked at init (rsp_event = 1) */

    for (i = 63; i >= 0; i--) {
        CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, &cookie), 1);
        CHECK_EQ(cookie, 5000 + i);
        CHECK_EQ(r.u.ping.arg, 1000 + i);
        CHECK_EQ(r.sock, i % 8);
    }
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, &cookie), 0);
    CHECK_EQ(mw_cmd_front_outstanding(&f), 0);
    CHECK_EQ(mw_cmd_front_space(&f), 64);
    fx_close(&x);
    return 0;
}

static int t_cmd_notify_suppression(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req q;
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    CHECK_EQ(mw_cmd_front_init(&f, &x.a), 0);

    q = ping_req(1, 0);
    CHECK_EQ(mw_cmd_front_put_req(&f, &q, 0), 0);
    CHECK_EQ(mw_cmd_front_push(&f), 1);
    q = ping_req(2, 0);
    CHECK_EQ(mw_cmd_front_put_req(&f, &q, 0), 0);
    CHECK_EQ(mw_cmd_front_push(&f), 0);     /* the back has not gone to sleep since */
    CHECK_EQ(mw_cmd_front_push(&f), 0);     /* nothing new */

    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    CHECK_EQ(mw_cmd_back_final_check(&b), 1);   /* one more is there: don't sleep */
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    CHECK_EQ(mw_cmd_back_final_check(&b), 0);   /* sleep; req_event = req_cons + 1 */
    q = ping_req(3, 0);
    CHECK_EQ(mw_cmd_front_put_req(&f, &q, 0), 0);
    CHECK_EQ(mw_cmd_front_push(&f), 1);

    /* responses: the front has not slept since init's rsp_event = 1 was consumed */
    r.id = 0;
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    CHECK_EQ(mw_cmd_front_final_check(&f), 0);
    r = answer(&q);
    CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    CHECK_EQ(mw_cmd_back_push(&b), 1);
    fx_close(&x);
    return 0;
}

/* One request stays pending while the ring wraps many times around it. */
static int t_cmd_late_response(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req q, held;
    struct mw_rsp r;
    uint64_t cookie;
    struct fx x;
    int round, i, n;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    CHECK_EQ(mw_cmd_front_init(&f, &x.a), 0);
    q = ping_req(777, 0);
    q.cmd = MW_CMD_ACCEPT;
    CHECK_EQ(mw_cmd_front_put_req(&f, &q, 777), 0);
    mw_cmd_front_push(&f);
    CHECK_EQ(mw_cmd_back_take_req(&b, &held), 1);

    for (round = 0; round < 10; round++) {
        n = mw_cmd_front_space(&f);
        CHECK_EQ(n, 31);
        for (i = 0; i < n; i++) {
            q = ping_req(round * 100 + i, 0);
            CHECK_EQ(mw_cmd_front_put_req(&f, &q, round * 100 + i), 0);
        }
        mw_cmd_front_push(&f);
        for (i = 0; i < n; i++) {
            CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
            r = answer(&q);
            CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
        }
        mw_cmd_back_push(&b);
        for (i = 0; i < n; i++) {
            CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, &cookie), 1);
            CHECK_EQ(r.u.ping.arg, cookie);
        }
    }
    r = answer(&held);
    CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    mw_cmd_back_push(&b);
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, &cookie), 1);
    CHECK_EQ(cookie, 777);
    CHECK_EQ(r.cmd, MW_CMD_ACCEPT);
    CHECK_EQ(mw_cmd_front_outstanding(&f), 0);
    fx_close(&x);
    return 0;
}

static int t_cmd_back_put_without_request(void)
{
    struct mw_cmd_back b;
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    memset(&r, 0, sizeof(r));
    CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), -ENOSPC);
    CHECK_EQ(mw_cmd_back_push(&b), 0);    /* a local error does not break the ring */
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Command ring: each frontend check
 */

/* A front with 3 requests outstanding, all taken by the back. */
static int cmd_setup3(struct fx *x, struct mw_cmd_front *f, struct mw_cmd_back *b,
                      struct mw_req qs[3])
{
    if (fx_open(x, 1, 1, 8, 1) < 0 || mw_cmd_back_init(b, &x->a) < 0 ||
        mw_cmd_front_init(f, &x->a) < 0)
        return -1;
    for (int i = 0; i < 3; i++) {
        qs[i] = ping_req(i, i);
        if (mw_cmd_front_put_req(f, &qs[i], i) < 0)
            return -1;
    }
    mw_cmd_front_push(f);
    for (int i = 0; i < 3; i++)
        if (mw_cmd_back_take_req(b, &qs[i]) != 1)
            return -1;
    return 0;
}

/* The front is broken: every call says -EPROTO. */
static int front_is_broken(struct mw_cmd_front *f)
{
    struct mw_req q = ping_req(0, 0);
    struct mw_rsp r;

    return mw_cmd_front_take_rsp(f, &r, NULL) == -EPROTO &&
           mw_cmd_front_put_req(f, &q, 0) == -EPROTO && mw_cmd_front_push(f) == -EPROTO &&
           mw_cmd_front_final_check(f) == -EPROTO && mw_cmd_front_space(f) == -EPROTO;
}

static int t_cmd_front_rsp_prod_too_far(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req qs[3];
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(cmd_setup3(&x, &f, &b, qs), 0);
    r = answer(&qs[0]);
    mw_cmd_back_put_rsp(&b, &r);
    mw_cmd_back_push(&b);
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), 1);
    /* 2 outstanding: rsp_prod may claim 2 more responses, not 3 */
    x.a.ctrl->back.rsp_prod = 3;
    CHECK_EQ(mw_cmd_front_final_check(&f), 1);
    x.a.ctrl->back.rsp_prod = 4;
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), -EPROTO);
    CHECK(front_is_broken(&f));
    x.a.ctrl->back.rsp_prod = 1;       /* even once the value is sane again */
    CHECK(front_is_broken(&f));
    fx_close(&x);
    return 0;
}

static int t_cmd_front_rsp_prod_backwards(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req qs[3];
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(cmd_setup3(&x, &f, &b, qs), 0);
    r = answer(&qs[1]);
    mw_cmd_back_put_rsp(&b, &r);
    mw_cmd_back_push(&b);
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), 1);
    x.a.ctrl->back.rsp_prod = 0;
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), -EPROTO);
    CHECK(front_is_broken(&f));
    fx_close(&x);
    return 0;
}

/* Publish one response crafted from qs[which], with `mutate` applied; expect what. */
static int cmd_front_bad_rsp(int mutation)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req qs[3];
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(cmd_setup3(&x, &f, &b, qs), 0);
    r = answer(&qs[1]);
    switch (mutation) {
    case 0: r.id = (r.id & 0xffff0000u) | 3; break;      /* a free tag */
    case 1: r.id -= 1u << MW_CMD_TAG_BITS; break;       /* an older generation */
    case 2: r.id = (r.id & 0xffff0000u) | 40; break;     /* tag >= nslots */
    case 3: r.cmd = MW_CMD_CONNECT; break;
    case 4: r.sock = 7; break;
    case 5: r.id = 0; break;
    }
    CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    mw_cmd_back_push(&b);
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), -EPROTO);
    CHECK(front_is_broken(&f));
    fx_close(&x);
    return 0;
}

static int t_cmd_front_unknown_id(void) { return cmd_front_bad_rsp(0); }
static int t_cmd_front_stale_generation(void) { return cmd_front_bad_rsp(1); }
static int t_cmd_front_tag_out_of_range(void) { return cmd_front_bad_rsp(2); }
static int t_cmd_front_wrong_cmd(void) { return cmd_front_bad_rsp(3); }
static int t_cmd_front_wrong_sock(void) { return cmd_front_bad_rsp(4); }
static int t_cmd_front_zero_id(void) { return cmd_front_bad_rsp(5); }

/* A response to a request put but not pushed yet: the INS cannot have seen it. */
static int t_cmd_front_answer_to_unpublished(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req qs[3], late;
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(cmd_setup3(&x, &f, &b, qs), 0);
    late = ping_req(9, 1);
    CHECK_EQ(mw_cmd_front_put_req(&f, &late, 9), 0);   /* not pushed */
    r = answer(&late);                                  /* a guessed id */
    CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    mw_cmd_back_push(&b);
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), -EPROTO);
    CHECK(front_is_broken(&f));
    fx_close(&x);
    return 0;
}

/* rsp_prod may not count requests put but not pushed */
static int t_cmd_front_rsp_prod_counts_unpublished(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req qs[3], late;
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(cmd_setup3(&x, &f, &b, qs), 0);
    late = ping_req(9, 1);
    CHECK_EQ(mw_cmd_front_put_req(&f, &late, 9), 0);   /* 4 outstanding, 3 published */
    x.a.ctrl->back.rsp_prod = 3;
    CHECK_EQ(mw_cmd_front_final_check(&f), 1);
    x.a.ctrl->back.rsp_prod = 4;
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), -EPROTO);
    CHECK(front_is_broken(&f));
    fx_close(&x);
    return 0;
}

static int t_cmd_front_duplicate_response(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req qs[3];
    struct mw_rsp r;
    struct fx x;

    CHECK_EQ(cmd_setup3(&x, &f, &b, qs), 0);
    r = answer(&qs[2]);
    CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    mw_cmd_back_push(&b);
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), 1);
    CHECK_EQ(mw_cmd_front_take_rsp(&f, &r, NULL), -EPROTO);
    CHECK(front_is_broken(&f));
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Command ring: each backend check
 */
static int back_is_broken(struct mw_cmd_back *b)
{
    struct mw_req q;
    struct mw_rsp r;

    memset(&r, 0, sizeof(r));
    return mw_cmd_back_take_req(b, &q) == -EPROTO && mw_cmd_back_put_rsp(b, &r) == -EPROTO &&
           mw_cmd_back_push(b) == -EPROTO && mw_cmd_back_final_check(b) == -EPROTO;
}

static int t_cmd_back_req_prod_past_ring(void)
{
    struct mw_cmd_back b;
    struct mw_req q;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    x.a.ctrl->front.req_prod = 32;     /* a full ring is fine */
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    x.a.ctrl->front.req_prod = 33;     /* 32 unread + 1 unanswered: one too many */
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), -EPROTO);
    CHECK(back_is_broken(&b));
    fx_close(&x);
    return 0;
}

/* Slots of requests taken but not answered are not free for new requests. */
static int t_cmd_back_req_prod_over_unanswered(void)
{
    struct mw_cmd_back b;
    struct mw_req q;
    struct mw_rsp r;
    struct fx x;
    int i;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    x.a.ctrl->front.req_prod = 10;
    for (i = 0; i < 10; i++)
        CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    memset(&r, 0, sizeof(r));
    for (i = 0; i < 4; i++)
        CHECK_EQ(mw_cmd_back_put_rsp(&b, &r), 0);
    /* 6 unanswered: req_prod may go up to rsp_prod_pvt + 32 = 36 */
    x.a.ctrl->front.req_prod = 36;
    CHECK_EQ(mw_cmd_back_final_check(&b), 1);
    x.a.ctrl->front.req_prod = 37;
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), -EPROTO);
    CHECK(back_is_broken(&b));
    fx_close(&x);
    return 0;
}

static int t_cmd_back_req_prod_backwards(void)
{
    struct mw_cmd_back b;
    struct mw_req q;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    x.a.ctrl->front.req_prod = 2;
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    x.a.ctrl->front.req_prod = 1;
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), -EPROTO);
    CHECK(back_is_broken(&b));
    fx_close(&x);
    return 0;
}

/* The request is copied out of its slot: changing the slot afterwards changes nothing. */
static int t_cmd_back_copies_request(void)
{
    static struct mw_cmd_front f;
    struct mw_cmd_back b;
    struct mw_req q;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(mw_cmd_back_init(&b, &x.a), 0);
    CHECK_EQ(mw_cmd_front_init(&f, &x.a), 0);
    q = ping_req(42, 0);
    CHECK_EQ(mw_cmd_front_put_req(&f, &q, 0), 0);
    mw_cmd_front_push(&f);
    CHECK_EQ(mw_cmd_back_take_req(&b, &q), 1);
    x.a.slots[0].req.u.ping.arg = 666;
    CHECK_EQ(q.u.ping.arg, 42);
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Event queues
 */
static int evq_pair(struct fx *x, struct mw_evq *p, struct mw_evq *c, enum mw_side prod_side)
{
    enum mw_side cons_side = prod_side == MW_SIDE_FRONT ? MW_SIDE_BACK : MW_SIDE_FRONT;

    if (fx_open(x, 1, 1, 16, 1) < 0)
        return -1;
    if (mw_evq_init(c, &x->a, cons_side, 0) < 0)
        return -1;
    return mw_evq_init(p, &x->a, prod_side, 1);
}

static int evq_roundtrip(enum mw_side side)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, side), 0);
    CHECK_EQ(mw_evq_take(&c, &ev), 0);
    CHECK_EQ(mw_evq_put(&p, 3, MW_EV_DATA, 100), 1);
    CHECK_EQ(mw_evq_put(&p, 4, MW_EV_SPACE, 200), 1);
    CHECK_EQ(mw_evq_take(&c, &ev), 0);          /* not pushed yet */
    CHECK_EQ(mw_evq_push(&p), 1);               /* consumer asked at init */
    CHECK_EQ(mw_evq_take(&c, &ev), 1);
    CHECK_EQ(ev.sock, 3);
    CHECK_EQ(ev.type, MW_EV_DATA);
    CHECK_EQ(ev.arg, 100);
    CHECK_EQ(mw_evq_take(&c, &ev), 1);
    CHECK_EQ(ev.sock, 4);
    CHECK_EQ(mw_evq_take(&c, &ev), 0);
    CHECK_EQ(mw_evq_put(&p, 5, MW_EV_SPACE, 0), 1);
    CHECK_EQ(mw_evq_push(&p), 0);               /* consumer has not slept since */
    CHECK_EQ(mw_evq_final_check(&c), 1);
    CHECK_EQ(mw_evq_take(&c, &ev), 1);
    CHECK_EQ(mw_evq_final_check(&c), 0);
    CHECK_EQ(mw_evq_put(&p, 5, MW_EV_SPACE, 0), 1);
    CHECK_EQ(mw_evq_push(&p), 1);
    /* local misuse */
    CHECK_EQ(mw_evq_put(&p, 16, MW_EV_DATA, 0), -EINVAL);
    CHECK_EQ(mw_evq_put(&p, 1, 0, 0), -EINVAL);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_MAX_, 0), -EINVAL);
    CHECK_EQ(mw_evq_put(&c, 1, MW_EV_DATA, 0), -EINVAL);
    CHECK_EQ(mw_evq_take(&p, &ev), -EINVAL);
    fx_close(&x);
    return 0;
}

static int t_evq_roundtrip_fq(void) { return evq_roundtrip(MW_SIDE_FRONT); }
static int t_evq_roundtrip_bq(void) { return evq_roundtrip(MW_SIDE_BACK); }

static int t_evq_overflow_rescan(void)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;
    uint32_t i;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_BACK), 0);
    CHECK_EQ(c.len, 256);
    CHECK_EQ(mw_evq_final_check(&c), 0);     /* consumer sleeps */
    for (i = 0; i < 256; i++)
        CHECK_EQ(mw_evq_put(&p, i % 16, MW_EV_DATA, i), 1);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 999), 0);    /* full: dropped */
    CHECK_EQ(mw_evq_put(&p, 2, MW_EV_DATA, 999), 0);
    CHECK_EQ(x.a.ctrl->back.bq_overflow, 2);
    CHECK_EQ(mw_evq_push(&p), 1);
    CHECK_EQ(mw_evq_take(&c, &ev), MW_EVQ_RESCAN);
    for (i = 0; i < 256; i++) {
        CHECK_EQ(mw_evq_take(&c, &ev), 1);
        CHECK_EQ(ev.arg, i);
    }
    CHECK_EQ(mw_evq_take(&c, &ev), 0);
    /* a later overflow is reported again, once */
    for (i = 0; i < 257; i++)
        mw_evq_put(&p, 0, MW_EV_DATA, i);
    CHECK_EQ(mw_evq_push(&p), 1);
    CHECK_EQ(mw_evq_final_check(&c), 1);
    CHECK_EQ(mw_evq_take(&c, &ev), MW_EVQ_RESCAN);
    CHECK_EQ(mw_evq_take(&c, &ev), 1);
    fx_close(&x);
    return 0;
}

static int evq_is_broken(struct mw_evq *q)
{
    struct mw_event ev;

    if (q->producer)
        return mw_evq_put(q, 0, MW_EV_DATA, 0) == -EPROTO && mw_evq_push(q) == -EPROTO;
    return mw_evq_take(q, &ev) == -EPROTO && mw_evq_final_check(q) == -EPROTO;
}

static int t_evq_cons_prod_past_queue(void)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_FRONT), 0);
    x.a.ctrl->front.fq_prod = 256;
    CHECK_EQ(mw_evq_final_check(&c), 1);
    x.a.ctrl->front.fq_prod = 257;
    CHECK_EQ(mw_evq_take(&c, &ev), -EPROTO);
    CHECK(evq_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_evq_cons_prod_backwards(void)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_FRONT), 0);
    for (int i = 0; i < 4; i++)
        mw_evq_put(&p, 1, MW_EV_DATA, 0);
    mw_evq_push(&p);
    CHECK_EQ(mw_evq_take(&c, &ev), 1);    /* sees prod = 4 */
    x.a.ctrl->front.fq_prod = 3;          /* still ahead of cons, but moved back */
    CHECK_EQ(mw_evq_take(&c, &ev), -EPROTO);
    CHECK(evq_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int evq_bad_event(int mutation)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_BACK), 0);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), 1);
    mw_evq_push(&p);
    if (mutation == 0)
        x.a.bq[0].sock = 16;
    else if (mutation == 1)
        x.a.bq[0].type = 0;
    else
        x.a.bq[0].type = MW_EV_MAX_;
    CHECK_EQ(mw_evq_take(&c, &ev), -EPROTO);
    CHECK(evq_is_broken(&c));
    fx_close(&x);
    return 0;
}

/* STATE travels only from the INS: on fq it is a violation, and the frontend cannot post it */
static int t_evq_state_on_fq(void)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_FRONT), 0);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_STATE, 0), -EINVAL);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), 1);
    mw_evq_push(&p);
    x.a.fq[0].type = MW_EV_STATE;
    CHECK_EQ(mw_evq_take(&c, &ev), -EPROTO);
    CHECK(evq_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_evq_event_sock_out_of_range(void) { return evq_bad_event(0); }
static int t_evq_event_type_zero(void) { return evq_bad_event(1); }
static int t_evq_event_type_too_big(void) { return evq_bad_event(2); }

/* flags and arg are not interpreted: any value is fine */
static int t_evq_event_flags_ignored(void)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_BACK), 0);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), 1);
    mw_evq_push(&p);
    x.a.bq[0].flags = 0xffff;
    x.a.bq[0].arg = ~0ull;
    CHECK_EQ(mw_evq_take(&c, &ev), 1);
    fx_close(&x);
    return 0;
}

static int t_evq_prod_cons_past_prod(void)
{
    struct mw_evq p, c;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_BACK), 0);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), 1);
    mw_evq_push(&p);
    x.a.ctrl->front.bq_cons = 2;          /* consumed more than was produced */
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), -EPROTO);
    CHECK(evq_is_broken(&p));
    fx_close(&x);
    return 0;
}

static int t_evq_prod_cons_backwards(void)
{
    struct mw_evq p, c;
    struct mw_event ev;
    struct fx x;

    CHECK_EQ(evq_pair(&x, &p, &c, MW_SIDE_BACK), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), 1);
    mw_evq_push(&p);
    CHECK_EQ(mw_evq_take(&c, &ev), 1);
    CHECK_EQ(mw_evq_take(&c, &ev), 1);
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), 1);   /* sees cons = 2 */
    x.a.ctrl->front.bq_cons = 1;
    CHECK_EQ(mw_evq_put(&p, 1, MW_EV_DATA, 0), -EPROTO);
    CHECK(evq_is_broken(&p));
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Byte rings: behaviour
 */
static int t_bring_init_checks(void)
{
    struct mw_bring r;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 2, 4), 0);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 0, 12), 0);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 0, 14), 0);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 4096, 14), -EINVAL);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 3 * 4096, 12), 0);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 4 * 4096, 12), -EINVAL);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 100, 12), -EINVAL);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 0, 11), -EINVAL);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 0, 25), -EINVAL);
    CHECK_EQ(mw_bring_init(&r, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 0xfffff000u, 12), -EINVAL);
    CHECK_EQ(mw_bring_init(&r, &x.a, 2, MW_SIDE_FRONT, MW_BRING_TX, 0, 12), -EINVAL);
    fx_close(&x);
    return 0;
}

/* Which shared fields each end writes. */
static int t_bring_roles(void)
{
    struct mw_bring ftx, btx, brx, frx;
    struct mw_sock_shared *e;
    uint8_t byte = 1;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 2), 0);
    e = &x.a.socks[0];
    CHECK_EQ(mw_bring_init(&ftx, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 0, 12), 0);
    CHECK_EQ(mw_bring_init(&btx, &x.a, 0, MW_SIDE_BACK, MW_BRING_TX, 0, 12), 0);
    CHECK_EQ(mw_bring_init(&brx, &x.a, 0, MW_SIDE_BACK, MW_BRING_RX, 4096, 12), 0);
    CHECK_EQ(mw_bring_init(&frx, &x.a, 0, MW_SIDE_FRONT, MW_BRING_RX, 4096, 12), 0);
    CHECK_EQ(mw_bring_write(&ftx, &byte, 1), 1);
    mw_bring_publish(&ftx);
    CHECK_EQ(e->front.tx_prod, 1);
    CHECK_EQ(mw_bring_write(&brx, &byte, 1), 1);
    CHECK_EQ(mw_bring_write(&brx, &byte, 1), 1);
    mw_bring_publish(&brx);
    CHECK_EQ(e->back.rx_prod, 2);
    CHECK_EQ(mw_bring_read(&btx, &byte, 1), 1);
    mw_bring_release(&btx);
    CHECK_EQ(e->back.tx_cons, 1);
    CHECK_EQ(mw_bring_read(&frx, &byte, 1), 1);
    mw_bring_release(&frx);
    CHECK_EQ(e->front.rx_cons, 1);
    CHECK_EQ(mw_bring_prepare_wait(&frx, 2), 0);
    CHECK_EQ(e->front.rx_prod_event, 3);
    CHECK_EQ(mw_bring_prepare_wait(&btx, 1), 0);
    CHECK_EQ(e->back.tx_prod_event, 2);
    CHECK_EQ(mw_bring_prepare_wait(&ftx, 4096), 1);   /* all it wrote was read */
    CHECK_EQ(e->front.tx_cons_event, 1);
    CHECK_EQ(mw_bring_prepare_wait(&brx, 4096), 0);
    CHECK_EQ(e->back.rx_cons_event, 2);
    /* wrong end */
    CHECK_EQ(mw_bring_avail(&ftx), -EINVAL);
    CHECK_EQ(mw_bring_space(&frx), -EINVAL);
    CHECK_EQ(mw_bring_write(&btx, &byte, 1), -EINVAL);
    CHECK_EQ(mw_bring_read(&brx, &byte, 1), -EINVAL);
    CHECK_EQ(mw_bring_publish(&frx), -EINVAL);
    CHECK_EQ(mw_bring_release(&ftx), -EINVAL);
    fx_close(&x);
    return 0;
}

static int t_bring_stream_wrap(void)
{
    static uint8_t src[(1 << 16) + 8192], dst[8192];
    struct mw_bring p, c;
    uint32_t sent = 0, got = 0, total = 200000, step = 1;
    struct fx x;

    /* periodic: src[k + i] is stream byte (k + i) mod 2^16 for any k < 2^16, i < 8192 */
    fill_pattern(src, 1 << 16, 7);
    memcpy(src + (1 << 16), src, 8192);
    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    while (got < total) {
        uint32_t n = (step * 977) % 5000 + 1;
        int w, r;

        step++;
        if (n > total - sent)
            n = total - sent;
        w = mw_bring_write(&p, src + sent % 65536, n);
        CHECK(w >= 0 && (uint32_t)w <= n);
        sent += w;
        mw_bring_publish(&p);
        CHECK_EQ(mw_bring_avail(&c), sent - got);
        n = (step * 613) % 3000 + 1;
        if (step % 3 == 0) {
            r = mw_bring_peek(&c, dst, n);
            CHECK(r >= 0);
            CHECK_EQ(mw_bring_consume(&c, r), 0);
        } else {
            r = mw_bring_read(&c, dst, n);
        }
        CHECK(r >= 0);
        for (int i = 0; i < r; i++)
            CHECK_EQ(dst[i], src[(got + i) % 65536]);
        got += r;
        mw_bring_release(&c);
        CHECK_EQ(mw_bring_space(&p), 4096 - (sent - got));
    }
    fx_close(&x);
    return 0;
}

static int t_bring_consume_too_much(void)
{
    struct mw_bring p, c;
    uint8_t buf[10] = { 0 };
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    mw_bring_write(&p, buf, 10);
    mw_bring_publish(&p);
    CHECK_EQ(mw_bring_avail(&c), 10);
    CHECK_EQ(mw_bring_consume(&c, 11), -EINVAL);
    CHECK_EQ(mw_bring_consume(&c, 10), 0);
    CHECK_EQ(mw_bring_avail(&c), 0);
    fx_close(&x);
    return 0;
}

static int t_bring_notify(void)
{
    struct mw_bring p, c;
    uint8_t buf[4096] = { 0 };
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    /* consumer asleep waiting for 100 bytes */
    CHECK_EQ(mw_bring_prepare_wait(&c, 100), 0);
    mw_bring_write(&p, buf, 99);
    CHECK_EQ(mw_bring_publish(&p), 0);        /* 99 < 100: no kick */
    CHECK_EQ(mw_bring_prepare_wait(&c, 100), 0);
    mw_bring_write(&p, buf, 1);
    CHECK_EQ(mw_bring_publish(&p), 1);
    mw_bring_write(&p, buf, 1);
    CHECK_EQ(mw_bring_publish(&p), 0);        /* already kicked */
    CHECK_EQ(mw_bring_prepare_wait(&c, 100), 1);   /* 101 readable: don't sleep */

    /* producer asleep waiting for 1000 bytes of space */
    CHECK_EQ(mw_bring_write(&p, buf, 4096), 4096 - 101);
    mw_bring_publish(&p);
    CHECK_EQ(mw_bring_prepare_wait(&p, 1000), 0);
    CHECK_EQ(mw_bring_read(&c, buf, 999), 999);
    CHECK_EQ(mw_bring_release(&c), 0);
    CHECK_EQ(mw_bring_read(&c, buf, 1), 1);
    CHECK_EQ(mw_bring_release(&c), 1);
    CHECK_EQ(mw_bring_prepare_wait(&p, 1000), 1);
    CHECK_EQ(mw_bring_prepare_wait(&p, 0), -EINVAL);
    CHECK_EQ(mw_bring_prepare_wait(&p, 4097), -EINVAL);
    fx_close(&x);
    return 0;
}

static int t_bring_fd(void)
{
    static uint8_t src[300000], dst[300000];
    int in[2], out[2];
    struct mw_bring p, c;
    size_t sent = 0, moved = 0, got = 0;
    struct fx x;
    int n;

    fill_pattern(src, sizeof(src), 99);
    CHECK_EQ(pipe2(in, O_NONBLOCK), 0);
    CHECK_EQ(pipe2(out, O_NONBLOCK), 0);
    CHECK_EQ(fx_open(&x, 1, 1, 1, 4), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 13, &p, &c), 0);

    CHECK_EQ(mw_bring_write_fd(&c, out[1], 100), 0);     /* empty ring */
    CHECK_EQ(mw_bring_read_fd(&p, in[0], 100), -EAGAIN); /* empty pipe */
    while (got < sizeof(src)) {
        if (sent < sizeof(src)) {
            size_t n = sizeof(src) - sent < 3001 ? sizeof(src) - sent : 3001;
            ssize_t w = write(in[1], src + sent, n);

            CHECK(w > 0 || errno == EAGAIN);
            if (w > 0)
                sent += w;
        }
        n = mw_bring_read_fd(&p, in[0], 5003);
        CHECK(n > 0 || n == -EAGAIN || n == -ENOBUFS);
        mw_bring_publish(&p);
        n = mw_bring_write_fd(&c, out[1], 1999);
        CHECK(n >= 0 || n == -EAGAIN);
        if (n > 0)
            moved += n;
        mw_bring_release(&c);
        while ((n = read(out[0], dst + got, sizeof(dst) - got)) > 0)
            got += n;
    }
    CHECK_EQ(moved, sizeof(src));
    CHECK(memcmp(src, dst, sizeof(src)) == 0);

    /* a full ring: -ENOBUFS, without reading from the fd */
    memset(dst, 0, 8192);
    CHECK_EQ(mw_bring_write(&p, dst, 8192), 8192);
    mw_bring_publish(&p);
    CHECK_EQ(write(in[1], "x", 1), 1);
    CHECK_EQ(mw_bring_read_fd(&p, in[0], 100), -ENOBUFS);
    close(in[1]);
    CHECK_EQ(mw_bring_read(&c, dst, 8192), 8192);
    mw_bring_release(&c);
    CHECK_EQ(mw_bring_read_fd(&p, in[0], 100), 1);
    CHECK_EQ(mw_bring_read_fd(&p, in[0], 100), 0);          /* end of file */
    close(out[0]);
    mw_bring_publish(&p);
    signal(SIGPIPE, SIG_IGN);
    CHECK_EQ(mw_bring_write_fd(&c, out[1], 100), -EPIPE);
    close(in[0]);
    close(out[1]);
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Byte rings: each check
 */
static int bring_is_broken(struct mw_bring *r)
{
    uint8_t b = 0;

    if (r->producer)
        return mw_bring_space(r) == -EPROTO && mw_bring_write(r, &b, 1) == -EPROTO &&
               mw_bring_publish(r) == -EPROTO && mw_bring_prepare_wait(r, 1) == -EPROTO &&
               mw_bring_read_fd(r, 0, 1) == -EPROTO;
    return mw_bring_avail(r) == -EPROTO && mw_bring_read(r, &b, 1) == -EPROTO &&
           mw_bring_release(r) == -EPROTO && mw_bring_prepare_wait(r, 1) == -EPROTO &&
           mw_bring_consume(r, 0) == -EPROTO && mw_bring_write_fd(r, 1, 1) == -EPROTO;
}

static int t_bring_cons_prod_past_size(void)
{
    struct mw_bring p, c;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    x.a.socks[0].back.rx_prod = 4096;
    CHECK_EQ(mw_bring_avail(&c), 4096);
    x.a.socks[0].back.rx_prod = 4097;
    CHECK_EQ(mw_bring_avail(&c), -EPROTO);
    CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_bring_cons_prod_backwards(void)
{
    struct mw_bring p, c;
    uint8_t buf[100];
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    x.a.socks[0].front.tx_prod = 100;
    CHECK_EQ(mw_bring_read(&c, buf, 10), 10);
    x.a.socks[0].front.tx_prod = 50;      /* behind what we saw, still ahead of cons */
    CHECK_EQ(mw_bring_avail(&c), -EPROTO);
    CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_bring_cons_prod_behind_cons(void)
{
    struct mw_bring p, c;
    uint8_t buf[100];
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    x.a.socks[0].front.tx_prod = 100;
    CHECK_EQ(mw_bring_read(&c, buf, 100), 100);
    x.a.socks[0].front.tx_prod = 99;      /* prod - cons < 0 */
    CHECK_EQ(mw_bring_avail(&c), -EPROTO);
    CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_bring_prod_cons_past_prod(void)
{
    struct mw_bring p, c;
    uint8_t buf[100] = { 0 };
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_write(&p, buf, 100), 100);
    mw_bring_publish(&p);
    x.a.socks[0].back.tx_cons = 101;
    CHECK_EQ(mw_bring_space(&p), -EPROTO);
    CHECK(bring_is_broken(&p));
    fx_close(&x);
    return 0;
}

static int t_bring_prod_cons_backwards(void)
{
    struct mw_bring p, c;
    uint8_t buf[100] = { 0 };
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_write(&p, buf, 100), 100);
    mw_bring_publish(&p);
    x.a.socks[0].front.rx_cons = 60;
    CHECK_EQ(mw_bring_space(&p), 4096 - 40);
    x.a.socks[0].front.rx_cons = 59;
    CHECK_EQ(mw_bring_write(&p, buf, 1), -EPROTO);
    CHECK(bring_is_broken(&p));
    fx_close(&x);
    return 0;
}

/* Event indices are only advice: any value is harmless. */
static int t_bring_event_garbage_harmless(void)
{
    struct mw_bring p, c;
    uint8_t buf[100] = { 0 };
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    x.a.socks[0].back.tx_prod_event = 0xdeadbeef;
    x.a.socks[0].front.tx_cons_event = 0x7fffffff;
    CHECK_EQ(mw_bring_write(&p, buf, 100), 100);
    CHECK(mw_bring_publish(&p) >= 0);
    CHECK_EQ(mw_bring_read(&c, buf, 100), 100);
    CHECK(mw_bring_release(&c) >= 0);
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * End of the incoming stream, and sealed producer indices
 */
static int t_bring_rx_eof(void)
{
    struct mw_bring p, c;
    uint8_t buf[200] = { 0 };
    int32_t err = 7;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_write(&p, buf, 100), 100);
    CHECK_EQ(mw_bring_rx_state(&c, &err), 0);
    CHECK_EQ(mw_bring_avail(&c), 0);          /* not published yet */
    CHECK_EQ(mw_bring_end_rx(&p, 0), 0);      /* publishes the 100 bytes, then the flag */
    CHECK_EQ(x.a.socks[0].back.rx_prod, 100);
    CHECK_EQ(x.a.socks[0].back.rx_flags, MW_RXF_EOF);
    CHECK_EQ(mw_bring_rx_state(&c, &err), MW_RXF_EOF);
    CHECK_EQ(err, 0);
    CHECK_EQ(mw_bring_read(&c, buf, 200), 100);
    CHECK_EQ(mw_bring_avail(&c), 0);
    CHECK_EQ(mw_bring_rx_state(&c, &err), MW_RXF_EOF);
    CHECK_EQ(mw_bring_write(&p, buf, 1), -EPIPE);
    CHECK_EQ(mw_bring_end_rx(&p, 0), -EALREADY);
    fx_close(&x);
    return 0;
}

static int t_bring_rx_error(void)
{
    struct mw_bring p, c, ftx, btx;
    int32_t err = 0;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 2), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_init(&ftx, &x.a, 0, MW_SIDE_FRONT, MW_BRING_TX, 0, 12), 0);
    CHECK_EQ(mw_bring_init(&btx, &x.a, 0, MW_SIDE_BACK, MW_BRING_TX, 0, 12), 0);
    CHECK_EQ(mw_bring_end_rx(&p, 1), -EINVAL);
    CHECK_EQ(mw_bring_end_rx(&p, -MW_ERRNO_MAX - 1), -EINVAL);
    CHECK_EQ(mw_bring_end_rx(&ftx, 0), -EINVAL);     /* only the INS's rx end */
    CHECK_EQ(mw_bring_end_rx(&c, 0), -EINVAL);
    CHECK_EQ(mw_bring_rx_state(&btx, &err), -EINVAL); /* only the frontend's rx end */
    CHECK_EQ(mw_bring_rx_state(&p, &err), -EINVAL);
    CHECK_EQ(mw_bring_end_rx(&p, -ECONNRESET), 0);
    CHECK_EQ(mw_bring_rx_state(&c, &err), MW_RXF_ERROR);
    CHECK_EQ(err, -ECONNRESET);
    fx_close(&x);
    return 0;
}

/* Poke rx_flags / error as a hostile INS would; expect rx_state to say `expect`. */
static int rx_state_after(uint32_t flags, int32_t error, int expect)
{
    struct mw_bring p, c;
    int32_t err;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    x.a.socks[0].back.error = error;
    x.a.socks[0].back.rx_flags = flags;
    CHECK_EQ(mw_bring_rx_state(&c, &err), expect);
    if (expect == -EPROTO)
        CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_bring_rx_flags_unknown(void) { return rx_state_after(4, 0, -EPROTO); }
static int t_bring_rx_error_zero(void) { return rx_state_after(MW_RXF_ERROR, 0, -EPROTO); }
static int t_bring_rx_error_positive(void) { return rx_state_after(MW_RXF_ERROR, 5, -EPROTO); }
static int t_bring_rx_error_too_low(void)
{
    return rx_state_after(MW_RXF_ERROR, -MW_ERRNO_MAX - 1, -EPROTO);
}
static int t_bring_rx_error_lowest_ok(void)
{
    return rx_state_after(MW_RXF_ERROR, -MW_ERRNO_MAX, MW_RXF_ERROR);
}
/* the error field means nothing without MW_RXF_ERROR */
static int t_bring_rx_eof_ignores_error(void) { return rx_state_after(MW_RXF_EOF, 5, MW_RXF_EOF); }

static int t_bring_rx_flag_cleared(void)
{
    struct mw_bring p, c;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_end_rx(&p, 0), 0);
    CHECK_EQ(mw_bring_rx_state(&c, NULL), MW_RXF_EOF);
    x.a.socks[0].back.rx_flags = MW_RXF_EOF | MW_RXF_ERROR;   /* adding a bit is fine... */
    x.a.socks[0].back.error = -EPIPE;
    CHECK_EQ(mw_bring_rx_state(&c, NULL), MW_RXF_EOF | MW_RXF_ERROR);
    x.a.socks[0].back.rx_flags = MW_RXF_ERROR;                /* ...clearing one is not */
    CHECK_EQ(mw_bring_rx_state(&c, NULL), -EPROTO);
    CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_bring_rx_error_changed(void)
{
    struct mw_bring p, c;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_end_rx(&p, -ETIMEDOUT), 0);
    CHECK_EQ(mw_bring_rx_state(&c, NULL), MW_RXF_ERROR);
    x.a.socks[0].back.error = -ECONNRESET;
    CHECK_EQ(mw_bring_rx_state(&c, NULL), -EPROTO);
    fx_close(&x);
    return 0;
}

static int t_bring_rx_prod_moves_after_flag(void)
{
    struct mw_bring p, c;
    uint8_t buf[10] = { 0 };
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_write(&p, buf, 10), 10);
    CHECK_EQ(mw_bring_end_rx(&p, 0), 0);
    CHECK_EQ(mw_bring_rx_state(&c, NULL), MW_RXF_EOF);
    x.a.socks[0].back.rx_prod = 20;
    CHECK_EQ(mw_bring_avail(&c), -EPROTO);
    CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_bring_seal(void)
{
    struct mw_bring p, c;
    uint8_t buf[100] = { 0 };
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    CHECK_EQ(mw_bring_write(&p, buf, 50), 50);
    mw_bring_publish(&p);
    CHECK_EQ(mw_bring_seal(&c), 50);             /* SHUTDOWN(SHUT_WR) came: 50 to drain */
    CHECK_EQ(mw_bring_read(&c, buf, 100), 50);
    CHECK_EQ(mw_bring_avail(&c), 0);
    CHECK_EQ(mw_bring_seal(&p), -EINVAL);
    CHECK_EQ(mw_bring_write(&p, buf, 1), 1);     /* a frontend that goes on writing */
    mw_bring_publish(&p);
    CHECK_EQ(mw_bring_avail(&c), -EPROTO);
    CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Datagram records
 */
static int t_dgram_roundtrip(void)
{
    static uint8_t payload[4000], got[2000];
    struct mw_dgram_hdr h, g;
    struct mw_bring p, c;
    struct iovec iov[2];
    struct fx x;
    int niov, wrapped = 0;

    fill_pattern(payload, sizeof(payload), 3);
    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    for (uint32_t len = 0; len < 1500; len += 37) {
        memset(&h, 0, sizeof(h));
        h.len = len;
        h.addr.family = MW_AF_INET6;
        h.addr.port = (uint16_t)len;
        CHECK_EQ(mw_bring_dgram_put(&p, &h, payload + len), (int)(40 + ((len + 7) & ~7u)));
        mw_bring_publish(&p);
        if (len % 2) {
            CHECK_EQ(mw_bring_dgram_get(&c, &g, got, sizeof(got)), 1);
            CHECK(memcmp(got, payload + len, len) == 0);
        } else {
            CHECK_EQ(mw_bring_dgram_peek(&c, &g, iov, &niov), 1);
            wrapped |= niov == 2;
            CHECK_EQ(iov[0].iov_len + (niov == 2 ? iov[1].iov_len : 0), len);
            CHECK(memcmp(iov[0].iov_base, payload + len, iov[0].iov_len) == 0);
            if (niov == 2)
                CHECK(memcmp(iov[1].iov_base, payload + len + iov[0].iov_len,
                             iov[1].iov_len) == 0);
            CHECK_EQ(mw_bring_dgram_skip(&c), 0);
            CHECK_EQ(mw_bring_dgram_skip(&c), -EINVAL);
        }
        CHECK_EQ(g.len, len);
        CHECK_EQ(g.addr.family, MW_AF_INET6);
        CHECK_EQ(g.addr.port, (uint16_t)len);
        mw_bring_release(&c);
    }
    CHECK(wrapped);
    CHECK_EQ(mw_bring_dgram_get(&c, &g, got, sizeof(got)), 0);

    /* truncation: the rest of the payload is dropped, the full length reported */
    h.len = 1000;
    CHECK(mw_bring_dgram_put(&p, &h, payload) > 0);
    h.len = 5;
    CHECK(mw_bring_dgram_put(&p, &h, payload + 1) > 0);
    mw_bring_publish(&p);
    memset(got, 0, sizeof(got));
    CHECK_EQ(mw_bring_dgram_get(&c, &g, got, 10), 1);
    CHECK_EQ(g.len, 1000);
    CHECK(memcmp(got, payload, 10) == 0);
    CHECK_EQ(got[10], 0);
    CHECK_EQ(mw_bring_dgram_get(&c, &g, got, 10), 1);
    CHECK_EQ(g.len, 5);
    CHECK(memcmp(got, payload + 1, 5) == 0);
    fx_close(&x);
    return 0;
}

static int t_dgram_put_limits(void)
{
    static uint8_t payload[MW_DGRAM_MAX + 1];
    struct mw_dgram_hdr h;
    struct mw_bring p, c;
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_TX, 12, &p, &c), 0);
    memset(&h, 0, sizeof(h));
    h.len = MW_DGRAM_MAX + 1;
    CHECK_EQ(mw_bring_dgram_put(&p, &h, payload), -EMSGSIZE);
    h.len = 4096 - 40 + 1;                 /* record larger than the ring */
    CHECK_EQ(mw_bring_dgram_put(&p, &h, payload), -EMSGSIZE);
    h.len = 4096 - 40;                     /* exactly fills it */
    CHECK_EQ(mw_bring_dgram_put(&p, &h, payload), 4096);
    h.len = 0;
    CHECK_EQ(mw_bring_dgram_put(&p, &h, payload), -EAGAIN);
    CHECK_EQ(mw_bring_space(&p), 0);
    fx_close(&x);
    return 0;
}

/* Write a raw header at the consumer's position and publish prod = cons + fill. */
static int dgram_forge(struct fx *x, struct mw_bring *c, uint32_t len, uint32_t fill)
{
    struct mw_dgram_hdr h;
    uint8_t *ring = c->buf;

    memset(&h, 0, sizeof(h));
    h.len = len;
    memcpy(ring, &h, sizeof(h));
    x->a.socks[0].back.rx_prod = fill;
    return 0;
}

static int dgram_bad(unsigned order, uint32_t len, uint32_t fill, int expect)
{
    struct mw_dgram_hdr g;
    struct mw_bring p, c;
    static uint8_t buf[70000];
    struct fx x;

    CHECK_EQ(fx_open(&x, 1, 1, 1, (1u << order) / MW_PAGE_SIZE), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, order, &p, &c), 0);
    dgram_forge(&x, &c, len, fill);
    CHECK_EQ(mw_bring_dgram_get(&c, &g, buf, sizeof(buf)), expect);
    if (expect == -EPROTO)
        CHECK(bring_is_broken(&c));
    fx_close(&x);
    return 0;
}

static int t_dgram_len_over_max(void)
{
    /* a 1 MiB ring holds the would-be record whole: only the len check fires */
    return dgram_bad(20, MW_DGRAM_MAX + 1, 40 + MW_DGRAM_MAX + 1 + 7, -EPROTO);
}

static int t_dgram_len_max_ok(void)
{
    return dgram_bad(20, MW_DGRAM_MAX, 40 + ((MW_DGRAM_MAX + 7) & ~7u), 1);
}

static int t_dgram_record_over_ring(void)
{
    /* len is legal, the ring is full, but the record cannot fit in 4 KiB */
    return dgram_bad(12, 5000, 4096, -EPROTO);
}

static int t_dgram_partial_record(void)
{
    return dgram_bad(12, 100, 40 + 96, -EPROTO);
}

static int t_dgram_partial_header(void)
{
    return dgram_bad(12, 0, 16, -EPROTO);
}

/* The header is copied once: changing the ring after the peek changes nothing. */
static int t_dgram_header_copied(void)
{
    struct mw_dgram_hdr h, g;
    struct mw_bring p, c;
    struct iovec iov[2];
    uint8_t payload[64] = { 0 };
    struct fx x;
    int niov;

    CHECK_EQ(fx_open(&x, 1, 1, 1, 1), 0);
    CHECK_EQ(open_pair(&x, 0, MW_BRING_RX, 12, &p, &c), 0);
    memset(&h, 0, sizeof(h));
    h.len = 64;
    CHECK(mw_bring_dgram_put(&p, &h, payload) > 0);
    mw_bring_publish(&p);
    CHECK_EQ(mw_bring_dgram_peek(&c, &g, iov, &niov), 1);
    ((struct mw_dgram_hdr *)c.buf)->len = 4000;
    CHECK_EQ(g.len, 64);
    CHECK_EQ(mw_bring_dgram_skip(&c), 0);
    CHECK_EQ(mw_bring_avail(&c), 0);
    fx_close(&x);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Waiting
 */
static int t_spin_wait(void)
{
    uint32_t a = 5, b = 7;
    struct mw_watch w[2] = { { &a, 5 }, { &b, 7 } };
    struct timespec t0, t1;
    long ns;

    CHECK_EQ(mw_spin_wait(w, 2, 0), 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_EQ(mw_spin_wait(w, 2, 2000000), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ns = (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec);
    CHECK(ns >= 2000000);
    CHECK(ns < 500000000);
    b = 8;
    CHECK_EQ(mw_spin_wait(w, 2, 0), 2);
    a = 6;
    CHECK_EQ(mw_spin_wait(w, 2, 1000), 1);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
#define T(name) { #name, t_##name }
static const struct {
    const char *name;
    int (*fn)(void);
} cases[] = {
    T(area_geometry),
    T(sock_reset),
    T(cmd_roundtrip),
    T(cmd_notify_suppression),
    T(cmd_late_response),
    T(cmd_back_put_without_request),
    T(cmd_front_rsp_prod_too_far),
    T(cmd_front_rsp_prod_backwards),
    T(cmd_front_unknown_id),
    T(cmd_front_stale_generation),
    T(cmd_front_tag_out_of_range),
    T(cmd_front_wrong_cmd),
    T(cmd_front_wrong_sock),
    T(cmd_front_zero_id),
    T(cmd_front_duplicate_response),
    T(cmd_front_answer_to_unpublished),
    T(cmd_front_rsp_prod_counts_unpublished),
    T(cmd_back_req_prod_past_ring),
    T(cmd_back_req_prod_over_unanswered),
    T(cmd_back_req_prod_backwards),
    T(cmd_back_copies_request),
    T(evq_roundtrip_fq),
    T(evq_roundtrip_bq),
    T(evq_overflow_rescan),
    T(evq_cons_prod_past_queue),
    T(evq_cons_prod_backwards),
    T(evq_event_sock_out_of_range),
    T(evq_state_on_fq),
    T(evq_event_type_zero),
    T(evq_event_type_too_big),
    T(evq_event_flags_ignored),
    T(evq_prod_cons_past_prod),
    T(evq_prod_cons_backwards),
    T(bring_init_checks),
    T(bring_roles),
    T(bring_stream_wrap),
    T(bring_consume_too_much),
    T(bring_notify),
    T(bring_fd),
    T(bring_cons_prod_past_size),
    T(bring_cons_prod_backwards),
    T(bring_cons_prod_behind_cons),
    T(bring_prod_cons_past_prod),
    T(bring_prod_cons_backwards),
    T(bring_event_garbage_harmless),
    T(bring_rx_eof),
    T(bring_rx_error),
    T(bring_rx_flags_unknown),
    T(bring_rx_error_zero),
    T(bring_rx_error_positive),
    T(bring_rx_error_too_low),
    T(bring_rx_error_lowest_ok),
    T(bring_rx_eof_ignores_error),
    T(bring_rx_flag_cleared),
    T(bring_rx_error_changed),
    T(bring_rx_prod_moves_after_flag),
    T(bring_seal),
    T(dgram_roundtrip),
    T(dgram_put_limits),
    T(dgram_len_over_max),
    T(dgram_len_max_ok),
    T(dgram_record_over_ring),
    T(dgram_partial_record),
    T(dgram_partial_header),
    T(dgram_header_copied),
    T(spin_wait),
};

static int run(size_t i)
{
    int ret;

    cur = cases[i].name;
    ret = cases[i].fn();
    if (ret == 0)
        printf("PASS %s\n", cur);
    fflush(stdout);
    return ret;
}

int main(int argc, char **argv)
{
    size_t n = sizeof(cases) / sizeof(cases[0]);
    int failed = 0;

    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    if (argc == 1) {
        for (size_t i = 0; i < n; i++)
            failed |= run(i);
        return failed;
    }
    for (int a = 1; a < argc; a++) {
        size_t i;

        for (i = 0; i < n && strcmp(cases[i].name, argv[a]) != 0; i++)
            ;
        if (i == n) {
            printf("FAIL %s: no such case\n", argv[a]);
            failed = 1;
            continue;
        }
        failed |= run(i);
    }
    return failed;
}
