/*
 * mwcomms ring library: command ring, event queues, byte rings and waiting over the shared area
 * of proto.h. The manual is include/mwcomms/ring.h.
 *
 * How shared memory is touched here, and nowhere else:
 *  - the peer's indices (and rx_flags / error) by one __atomic_load_n(ACQUIRE) per call
 *    (peer_index()), then checked;
 *  - our own indices by __atomic_store_n(RELEASE) only (publish_index()), never read back;
 *  - slots, event records and datagram headers by a copy into private memory, followed by a
 *    compiler barrier (copy_in()), before any check;
 *  - payload bytes by memcpy/readv/writev: they are never interpreted, so a peer that changes
 *    them under us only corrupts its own data.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mwcomms/ring.h"

#define DGRAM_HDR_SIZE ((uint32_t)sizeof(struct mw_dgram_hdr))

static bool is_pow2(uint32_t x)
{
    return x != 0 && (x & (x - 1)) == 0;
}

static uint32_t min_u32(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

static uint32_t dgram_record_size(uint32_t len)
{
    return DGRAM_HDR_SIZE + ((len + MW_DGRAM_ALIGN - 1) & ~(MW_DGRAM_ALIGN - 1));
}

/* One read of an index the peer writes. Acquire: what the index covers (slots, records,
 * bytes, or freed space) is read or overwritten only /after/ the index itself. */
static uint32_t peer_index(const uint32_t *idx)
{
    return __atomic_load_n(idx, __ATOMIC_ACQUIRE);
}

/* Copy a message out of shared memory. The compiler barrier after it keeps the compiler from
 * reading the shared copy again instead of ours: each field is read from memory exactly once. */
static void copy_in(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/*
 * Publish our index and decide whether the peer wants a kick: it does when its event index
 * lies in (old, new], as RING_PUSH_REQUESTS_AND_CHECK_NOTIFY decides. `pub` is our private
 * record of what we last published (the shared copy may have been overwritten).
 */
static int publish_index(uint32_t *shared, uint32_t *pub, uint32_t new,
                         const uint32_t *peer_event)
{
    uint32_t old = *pub;
    uint32_t ev;

    /* write the data (or finish copying it out) /then/ publish the index that hands it over */
    __atomic_store_n(shared, new, __ATOMIC_RELEASE);
    *pub = new;
    /* publish the index /before/ reading the peer's event index: pairs with the fence in the
     * peer's final check, so either we see its event index or it sees our new index */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    ev = __atomic_load_n(peer_event, __ATOMIC_RELAXED);
    return (uint32_t)(new - ev) < (uint32_t)(new - old);
}

/* Ask to be kicked when the peer's index reaches `want`, then let the caller look again. */
static void set_event(uint32_t *my_event, uint32_t want)
{
    __atomic_store_n(my_event, want, __ATOMIC_RELAXED);
    /* write the event index /before/ reading the peer's index again: pairs with the fence in
     * publish_index() on the other side, so a publish in between is never missed */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------------------------------------
 * The shared area
 */

static int geom_check(const struct mw_area_geom *g)
{
    if (!is_pow2(g->cmd_pages) || g->cmd_pages > MW_CMD_RING_PAGES_MAX)
        return -EINVAL;
    if (!is_pow2(g->evq_pages) || g->evq_pages > MW_EVQ_PAGES_MAX)
        return -EINVAL;
    if (g->sock_slots == 0 || g->sock_slots > MW_SOCK_SLOTS_MAX)
        return -EINVAL;
    if (g->data_pages == 0 || g->data_pages > MW_DATA_PAGES_MAX)
        return -EINVAL;
    return 0;
}

static uint32_t sock_pages(const struct mw_area_geom *g)
{
    return (g->sock_slots + MW_SOCKS_PER_PAGE - 1) / MW_SOCKS_PER_PAGE;
}

int mw_area_size(const struct mw_area_geom *geom, size_t *bytes)
{
    int ret = geom_check(geom);
    size_t pages;

    if (ret < 0)
        return ret;
    pages = 1 + (size_t)geom->cmd_pages + 2 * (size_t)geom->evq_pages + sock_pages(geom) +
            geom->data_pages;
    *bytes = pages * MW_PAGE_SIZE;
    return 0;
}

int mw_area_init(struct mw_area *area, void *base, size_t size, const struct mw_area_geom *geom)
{
    uint8_t *p = base;
    size_t need;
    int ret;

    ret = mw_area_size(geom, &need);
    if (ret < 0)
        return ret;
    if (((uintptr_t)base & (MW_PAGE_SIZE - 1)) != 0 || size < need)
        return -EINVAL;

    area->ctrl = (struct mw_ctrl_page *)p;
    p += MW_PAGE_SIZE;
    area->slots = (union mw_cmd_slot *)p;
    area->nslots = geom->cmd_pages * MW_CMD_SLOTS_PER_PAGE;
    p += (size_t)geom->cmd_pages * MW_PAGE_SIZE;
    area->evq_len = geom->evq_pages * (uint32_t)MW_EVENTS_PER_PAGE;
    area->fq = (struct mw_event *)p;
    p += (size_t)geom->evq_pages * MW_PAGE_SIZE;
    area->bq = (struct mw_event *)p;
    p += (size_t)geom->evq_pages * MW_PAGE_SIZE;
    area->socks = (struct mw_sock_shared *)p;
    area->nsocks = geom->sock_slots;
    p += (size_t)sock_pages(geom) * MW_PAGE_SIZE;
    area->data = p;
    area->data_size = geom->data_pages * MW_PAGE_SIZE;
    return 0;
}

int mw_sock_reset(const struct mw_area *area, uint32_t sock)
{
    if (sock >= area->nsocks)
        return -EINVAL;
    memset(&area->socks[sock], 0, sizeof(area->socks[sock]));
    /* the zeroed entry is visible /before/ the request that hands the slot to the INS: the
     * request is published by a release store, which orders this too; the fence documents it */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * The command ring, frontend side
 */

static bool cmd_geometry_ok(const struct mw_area *area)
{
    return area->ctrl && area->slots && is_pow2(area->nslots) &&
           area->nslots <= MW_CMD_SLOTS_MAX;
}

int mw_cmd_front_init(struct mw_cmd_front *f, const struct mw_area *area)
{
    uint32_t i;

    if (!cmd_geometry_ok(area))
        return -EINVAL;
    memset(f, 0, sizeof(*f));
    f->ctrl = area->ctrl;
    f->slots = area->slots;
    f->nslots = area->nslots;
    for (i = 0; i < f->nslots; i++) {
        f->free_tags[i] = (uint16_t)(f->nslots - 1 - i);   /* tag 0 is handed out first */
        f->pending[i].gen = 1;
    }
    f->nfree = f->nslots;
    __atomic_store_n(&f->ctrl->front.req_prod, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&f->ctrl->front.rsp_event, 1, __ATOMIC_RELAXED);
    return 0;
}

int mw_cmd_front_space(const struct mw_cmd_front *f)
{
    if (f->broken)
        return -EPROTO;
    return (int)(f->nslots - f->outstanding);
}

uint32_t mw_cmd_front_outstanding(const struct mw_cmd_front *f)
{
    return f->outstanding;
}

int mw_cmd_front_put_req(struct mw_cmd_front *f, struct mw_req *req, uint64_t cookie)
{
    struct mw_cmd_pending *p;
    uint16_t tag;

    if (f->broken)
        return -EPROTO;
    /* outstanding == req_prod_pvt - rsp_cons: at most nslots slots hold requests not answered
     * or responses not read, so the next slot is free */
    if (f->outstanding == f->nslots)
        return -ENOSPC;

    tag = f->free_tags[--f->nfree];
    p = &f->pending[tag];
    p->id = ((uint32_t)p->gen << MW_CMD_TAG_BITS) | tag;
    if (++p->gen == 0)
        p->gen = 1;    /* keeps every id non-zero */
    p->cmd = req->cmd;
    p->sock = req->sock;
    p->cookie = cookie;
    p->idx = f->req_prod_pvt;

    req->id = p->id;
    memcpy(&f->slots[f->req_prod_pvt & (f->nslots - 1)].req, req, sizeof(*req));
    f->req_prod_pvt++;
    f->outstanding++;
    return 0;
}

int mw_cmd_front_push(struct mw_cmd_front *f)
{
    if (f->broken)
        return -EPROTO;
    return publish_index(&f->ctrl->front.req_prod, &f->req_prod_pub, f->req_prod_pvt,
                         &f->ctrl->back.req_event);
}

/*
 * Responses published and not read yet; -EPROTO when rsp_prod claims more than were asked for:
 * req_prod_pub - rsp_cons requests are published and not answered-and-read (the ones put but
 * not pushed yet are not the INS's to answer).
 */
static int64_t front_unread(struct mw_cmd_front *f)
{
    uint32_t unread = peer_index(&f->ctrl->back.rsp_prod) - f->rsp_cons;

    if (unread > f->req_prod_pub - f->rsp_cons) {
        f->broken = 1;
        return -EPROTO;
    }
    return unread;
}

int mw_cmd_front_take_rsp(struct mw_cmd_front *f, struct mw_rsp *rsp, uint64_t *cookie)
{
    struct mw_cmd_pending *p;
    int64_t unread;
    uint32_t tag;

    if (f->broken)
        return -EPROTO;
    unread = front_unread(f);
    if (unread <= 0)
        return (int)unread;

    copy_in(rsp, &f->slots[f->rsp_cons & (f->nslots - 1)].rsp, sizeof(*rsp));
    tag = rsp->id & ((1u << MW_CMD_TAG_BITS) - 1);
    if (tag >= f->nslots)
        goto out_broken;
    p = &f->pending[tag];
    if (p->id == 0 || p->id != rsp->id || p->cmd != rsp->cmd || p->sock != rsp->sock)
        goto out_broken;
    /* the request was published: its index is not among the ones put since the last push */
    if (p->idx - f->req_prod_pub < f->req_prod_pvt - f->req_prod_pub)
        goto out_broken;

    if (cookie)
        *cookie = p->cookie;
    p->id = 0;
    f->free_tags[f->nfree++] = (uint16_t)tag;
    f->outstanding--;
    f->rsp_cons++;
    return 1;

out_broken:
    f->broken = 1;
    return -EPROTO;
}

int mw_cmd_front_final_check(struct mw_cmd_front *f)
{
    int64_t unread;

    if (f->broken)
        return -EPROTO;
    set_event(&f->ctrl->front.rsp_event, f->rsp_cons + 1);
    unread = front_unread(f);
    if (unread < 0)
        return (int)unread;
    return unread != 0;
}

struct mw_watch mw_cmd_front_watch(const struct mw_cmd_front *f)
{
    struct mw_watch w = { &f->ctrl->back.rsp_prod, f->rsp_cons };
    return w;
}

/* ------------------------------------------------------------------------------------------
 * The command ring, INS side
 */

int mw_cmd_back_init(struct mw_cmd_back *b, const struct mw_area *area)
{
    if (!cmd_geometry_ok(area))
        return -EINVAL;
    memset(b, 0, sizeof(*b));
    b->ctrl = area->ctrl;
    b->slots = area->slots;
    b->nslots = area->nslots;
    __atomic_store_n(&b->ctrl->back.rsp_prod, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->ctrl->back.req_event, 1, __ATOMIC_RELAXED);
    return 0;
}

/*
 * Requests published and not taken yet. The frontend may fill only the slots that hold
 * neither a request we have not answered (req_cons - rsp_prod_pvt of them) nor a response it
 * has not read; so req_prod - req_cons can never exceed nslots - (req_cons - rsp_prod_pvt),
 * and a req_prod that moved backwards shows up as a huge difference.
 */
static int64_t back_unread(struct mw_cmd_back *b)
{
    uint32_t unread = peer_index(&b->ctrl->front.req_prod) - b->req_cons;
    uint32_t room = b->nslots - (b->req_cons - b->rsp_prod_pvt);

    if (unread > room) {
        b->broken = 1;
        return -EPROTO;
    }
    return unread;
}

int mw_cmd_back_take_req(struct mw_cmd_back *b, struct mw_req *req)
{
    int64_t unread;

    if (b->broken)
        return -EPROTO;
    unread = back_unread(b);
    if (unread <= 0)
        return (int)unread;
    copy_in(req, &b->slots[b->req_cons & (b->nslots - 1)].req, sizeof(*req));
    b->req_cons++;
    return 1;
}

uint32_t mw_cmd_back_unanswered(const struct mw_cmd_back *b)
{
    return b->req_cons - b->rsp_prod_pvt;
}

int mw_cmd_back_put_rsp(struct mw_cmd_back *b, const struct mw_rsp *rsp)
{
    if (b->broken)
        return -EPROTO;
    if (b->rsp_prod_pvt == b->req_cons)
        return -ENOSPC;
    /* the slot held a request we already copied out (rsp_prod_pvt < req_cons) */
    memcpy(&b->slots[b->rsp_prod_pvt & (b->nslots - 1)].rsp, rsp, sizeof(*rsp));
    b->rsp_prod_pvt++;
    return 0;
}

int mw_cmd_back_push(struct mw_cmd_back *b)
{
    if (b->broken)
        return -EPROTO;
    return publish_index(&b->ctrl->back.rsp_prod, &b->rsp_prod_pub, b->rsp_prod_pvt,
                         &b->ctrl->front.rsp_event);
}

int mw_cmd_back_final_check(struct mw_cmd_back *b)
{
    int64_t unread;

    if (b->broken)
        return -EPROTO;
    set_event(&b->ctrl->back.req_event, b->req_cons + 1);
    unread = back_unread(b);
    if (unread < 0)
        return (int)unread;
    return unread != 0;
}

struct mw_watch mw_cmd_back_watch(const struct mw_cmd_back *b)
{
    struct mw_watch w = { &b->ctrl->front.req_prod, b->req_cons };
    return w;
}

/* ------------------------------------------------------------------------------------------
 * Event queues
 */

int mw_evq_init(struct mw_evq *q, const struct mw_area *area, enum mw_side side, int produce)
{
    struct mw_ctrl_front *fr = &area->ctrl->front;
    struct mw_ctrl_back *bk = &area->ctrl->back;

    if (!area->ctrl || !area->fq || !area->bq || !is_pow2(area->evq_len))
        return -EINVAL;
    if (side != MW_SIDE_FRONT && side != MW_SIDE_BACK)
        return -EINVAL;
    memset(q, 0, sizeof(*q));
    q->len = area->evq_len;
    q->nsocks = area->nsocks;
    q->bq = area->bq;
    q->producer = produce != 0;

    if (side == MW_SIDE_FRONT && produce) {
        q->ring = area->fq;
        q->my_idx = &fr->fq_prod;
        q->peer_idx = &bk->fq_cons;
        q->peer_event = &bk->fq_event;
        q->my_overflow = &fr->fq_overflow;
    } else if (side == MW_SIDE_FRONT) {
        q->ring = area->bq;
        q->my_idx = &fr->bq_cons;
        q->peer_idx = &bk->bq_prod;
        q->my_event = &fr->bq_event;
        q->peer_overflow = &bk->bq_overflow;
    } else if (produce) {
        q->ring = area->bq;
        q->my_idx = &bk->bq_prod;
        q->peer_idx = &fr->bq_cons;
        q->peer_event = &fr->bq_event;
        q->my_overflow = &bk->bq_overflow;
    } else {
        q->ring = area->fq;
        q->my_idx = &bk->fq_cons;
        q->peer_idx = &fr->fq_prod;
        q->my_event = &bk->fq_event;
        q->peer_overflow = &fr->fq_overflow;
    }

    __atomic_store_n(q->my_idx, 0, __ATOMIC_RELAXED);
    if (q->producer)
        __atomic_store_n(q->my_overflow, 0, __ATOMIC_RELAXED);
    else
        __atomic_store_n(q->my_event, 1, __ATOMIC_RELAXED);
    return 0;
}

/* DATA and SPACE travel both ways, STATE only from the INS (on bq). */
static bool event_type_ok(const struct mw_evq *q, uint16_t type)
{
    if (type == MW_EV_STATE)
        return q->ring == q->bq;
    return type == MW_EV_DATA || type == MW_EV_SPACE;
}

/* Read and check the peer's index; returns prod - cons, or -EPROTO. */
static int64_t evq_fill(struct mw_evq *q)
{
    uint32_t idx = peer_index(q->peer_idx);
    uint32_t fill, last;

    if (q->producer) {
        /* the consumer's index moves forward, never past what we produced */
        fill = q->pvt - idx;
        last = q->pvt - q->peer;
        if (fill > last)
            goto out_broken;
    } else {
        /* the producer's index moves forward, never more than len ahead of us */
        fill = idx - q->pvt;
        last = q->peer - q->pvt;
        if (fill > q->len || fill < last)
            goto out_broken;
    }
    q->peer = idx;
    return fill;

out_broken:
    q->broken = 1;
    return -EPROTO;
}

int mw_evq_put(struct mw_evq *q, uint32_t sock, uint16_t type, uint64_t arg)
{
    struct mw_event ev = { .sock = sock, .type = type, .flags = 0, .arg = arg };
    int64_t fill;

    if (q->broken)
        return -EPROTO;
    if (!q->producer || !event_type_ok(q, type) || sock >= q->nsocks)
        return -EINVAL;
    fill = evq_fill(q);
    if (fill < 0)
        return (int)fill;
    if (fill == q->len) {
        /* the socket state this event is about was written /before/ the overflow count that
         * makes the consumer rescan it */
        __atomic_store_n(q->my_overflow, ++q->overflow, __ATOMIC_RELEASE);
        q->overflowed = 1;
        return 0;
    }
    memcpy(&q->ring[q->pvt & (q->len - 1)], &ev, sizeof(ev));
    q->pvt++;
    return 1;
}

int mw_evq_push(struct mw_evq *q)
{
    int notify;

    if (q->broken)
        return -EPROTO;
    if (!q->producer)
        return -EINVAL;
    notify = publish_index(q->my_idx, &q->pub, q->pvt, q->peer_event);
    if (q->overflowed) {
        /* a rescan is due: kick even if the consumer did not ask, it may be asleep */
        q->overflowed = 0;
        notify = 1;
    }
    return notify;
}

int mw_evq_take(struct mw_evq *q, struct mw_event *ev)
{
    uint32_t ov;
    int64_t fill;

    if (q->broken)
        return -EPROTO;
    if (q->producer)
        return -EINVAL;
    /* read the overflow count /before/ the socket entries the caller rescans */
    ov = peer_index(q->peer_overflow);
    if (ov != q->overflow) {
        q->overflow = ov;
        return MW_EVQ_RESCAN;
    }
    fill = evq_fill(q);
    if (fill <= 0)
        return (int)fill;
    copy_in(ev, &q->ring[q->pvt & (q->len - 1)], sizeof(*ev));
    if (!event_type_ok(q, ev->type) || ev->sock >= q->nsocks) {
        q->broken = 1;
        return -EPROTO;
    }
    q->pvt++;
    q->pub = q->pvt;
    /* copy the record out /before/ handing its slot back to the producer */
    __atomic_store_n(q->my_idx, q->pvt, __ATOMIC_RELEASE);
    return 1;
}

int mw_evq_final_check(struct mw_evq *q)
{
    int64_t fill;

    if (q->broken)
        return -EPROTO;
    if (q->producer)
        return -EINVAL;
    set_event(q->my_event, q->pvt + 1);
    if (peer_index(q->peer_overflow) != q->overflow)
        return 1;
    fill = evq_fill(q);
    if (fill < 0)
        return (int)fill;
    return fill != 0;
}

struct mw_watch mw_evq_watch(const struct mw_evq *q)
{
    struct mw_watch w = { q->peer_idx, q->peer };
    return w;
}

/* ------------------------------------------------------------------------------------------
 * Byte rings
 */

int mw_bring_init(struct mw_bring *r, const struct mw_area *area, uint32_t sock,
                  enum mw_side side, enum mw_bring_dir dir, uint32_t off, uint8_t order)
{
    struct mw_sock_shared *e;
    uint64_t end;

    if (sock >= area->nsocks || (side != MW_SIDE_FRONT && side != MW_SIDE_BACK) ||
        (dir != MW_BRING_TX && dir != MW_BRING_RX))
        return -EINVAL;
    if (order < MW_RING_ORDER_MIN || order > MW_RING_ORDER_MAX)
        return -EINVAL;
    end = (uint64_t)off + (1ull << order);
    if ((off & (MW_PAGE_SIZE - 1)) != 0 || end > area->data_size)
        return -EINVAL;

    e = &area->socks[sock];
    memset(r, 0, sizeof(*r));
    r->buf = area->data + off;
    r->size = 1u << order;
    r->producer = (side == MW_SIDE_FRONT) == (dir == MW_BRING_TX);
    if (dir == MW_BRING_TX && side == MW_SIDE_FRONT) {
        r->my_idx = &e->front.tx_prod;
        r->peer_idx = &e->back.tx_cons;
        r->my_event = &e->front.tx_cons_event;
        r->peer_event = &e->back.tx_prod_event;
    } else if (dir == MW_BRING_TX) {
        r->my_idx = &e->back.tx_cons;
        r->peer_idx = &e->front.tx_prod;
        r->my_event = &e->back.tx_prod_event;
        r->peer_event = &e->front.tx_cons_event;
    } else if (side == MW_SIDE_BACK) {
        r->my_idx = &e->back.rx_prod;
        r->peer_idx = &e->front.rx_cons;
        r->my_event = &e->back.rx_cons_event;
        r->peer_event = &e->front.rx_prod_event;
    } else {
        r->my_idx = &e->front.rx_cons;
        r->peer_idx = &e->back.rx_prod;
        r->my_event = &e->front.rx_prod_event;
        r->peer_event = &e->back.rx_cons_event;
    }
    if (dir == MW_BRING_RX && side == MW_SIDE_BACK) {
        r->flags_w = &e->back.rx_flags;
        r->error_w = &e->back.error;
    } else if (dir == MW_BRING_RX) {
        r->flags_r = &e->back.rx_flags;
        r->error_r = &e->back.error;
    }
    return 0;
}

/* Read and check the peer's index; returns prod - cons (0 .. size), or -EPROTO. */
static int64_t bring_fill(struct mw_bring *r)
{
    uint32_t idx = peer_index(r->peer_idx);
    uint32_t fill, last;

    if (r->producer) {
        /* cons moves forward, never past our prod */
        fill = r->pvt - idx;
        last = r->pvt - r->peer;
        if (fill > last)
            goto out_broken;
    } else {
        /* prod moves forward, never more than size ahead of our cons; once final, not at all */
        fill = idx - r->pvt;
        last = r->peer - r->pvt;
        if (fill > r->size || fill < last || (r->sealed && idx != r->peer))
            goto out_broken;
    }
    r->peer = idx;
    return fill;

out_broken:
    r->broken = 1;
    return -EPROTO;
}

/* Copy between the ring at index idx and private memory, wrapping at the end. */
static void ring_to_buf(const struct mw_bring *r, uint32_t idx, void *dst, uint32_t len)
{
    uint32_t off = idx & (r->size - 1);
    uint32_t first = min_u32(len, r->size - off);

    memcpy(dst, r->buf + off, first);
    memcpy((uint8_t *)dst + first, r->buf, len - first);
}

static void buf_to_ring(struct mw_bring *r, uint32_t idx, const void *src, uint32_t len)
{
    uint32_t off = idx & (r->size - 1);
    uint32_t first = min_u32(len, r->size - off);

    memcpy(r->buf + off, src, first);
    memcpy(r->buf, (const uint8_t *)src + first, len - first);
}

/* The ring bytes [idx, idx + len) as one or two iovecs. @return the iovec count */
static int ring_iov(const struct mw_bring *r, uint32_t idx, uint32_t len, struct iovec iov[2])
{
    uint32_t off = idx & (r->size - 1);
    uint32_t first = min_u32(len, r->size - off);

    iov[0].iov_base = r->buf + off;
    iov[0].iov_len = first;
    if (first == len)
        return 1;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = len - first;
    return 2;
}

int mw_bring_space(struct mw_bring *r)
{
    int64_t fill;

    if (r->broken)
        return -EPROTO;
    if (!r->producer)
        return -EINVAL;
    if (r->flags)
        return -EPIPE;
    fill = bring_fill(r);
    if (fill < 0)
        return (int)fill;
    return (int)(r->size - (uint32_t)fill);
}

int mw_bring_write(struct mw_bring *r, const void *buf, uint32_t len)
{
    int space = mw_bring_space(r);
    uint32_t n;

    if (space < 0)
        return space;
    n = min_u32(len, (uint32_t)space);
    buf_to_ring(r, r->pvt, buf, n);
    r->pvt += n;
    return (int)n;
}

int mw_bring_read_fd(struct mw_bring *r, int fd, uint32_t max)
{
    int space = mw_bring_space(r);
    struct iovec iov[2];
    ssize_t got;
    int niov;

    if (space < 0)
        return space;
    if (space == 0)
        return -ENOBUFS;
    niov = ring_iov(r, r->pvt, min_u32((uint32_t)space, max), iov);
    got = readv(fd, iov, niov);
    if (got < 0)
        return -errno;
    r->pvt += (uint32_t)got;
    return (int)got;
}

int mw_bring_publish(struct mw_bring *r)
{
    if (r->broken)
        return -EPROTO;
    if (!r->producer)
        return -EINVAL;
    return publish_index(r->my_idx, &r->pub, r->pvt, r->peer_event);
}

int mw_bring_avail(struct mw_bring *r)
{
    int64_t fill;

    if (r->broken)
        return -EPROTO;
    if (r->producer)
        return -EINVAL;
    fill = bring_fill(r);
    return (int)fill;
}

int mw_bring_peek(struct mw_bring *r, void *buf, uint32_t len)
{
    int avail = mw_bring_avail(r);
    uint32_t n;

    if (avail < 0)
        return avail;
    n = min_u32(len, (uint32_t)avail);
    ring_to_buf(r, r->pvt, buf, n);
    return (int)n;
}

int mw_bring_consume(struct mw_bring *r, uint32_t n)
{
    if (r->broken)
        return -EPROTO;
    /* r->peer - r->pvt: the bytes readable when the peer's index was last checked */
    if (r->producer || n > r->peer - r->pvt)
        return -EINVAL;
    r->pvt += n;
    r->rec = 0;
    return 0;
}

int mw_bring_read(struct mw_bring *r, void *buf, uint32_t len)
{
    int n = mw_bring_peek(r, buf, len);

    if (n <= 0)
        return n;
    r->pvt += (uint32_t)n;
    r->rec = 0;
    return n;
}

int mw_bring_write_fd(struct mw_bring *r, int fd, uint32_t max)
{
    int avail = mw_bring_avail(r);
    struct iovec iov[2];
    ssize_t put;
    int niov;

    if (avail <= 0)
        return avail;
    niov = ring_iov(r, r->pvt, min_u32((uint32_t)avail, max), iov);
    put = writev(fd, iov, niov);
    if (put < 0)
        return -errno;
    r->pvt += (uint32_t)put;
    r->rec = 0;
    return (int)put;
}

int mw_bring_release(struct mw_bring *r)
{
    if (r->broken)
        return -EPROTO;
    if (r->producer)
        return -EINVAL;
    return publish_index(r->my_idx, &r->pub, r->pvt, r->peer_event);
}

int mw_bring_prepare_wait(struct mw_bring *r, uint32_t need)
{
    int64_t fill;

    if (r->broken)
        return -EPROTO;
    if (need == 0 || need > r->size)
        return -EINVAL;
    /* producer: `need` bytes are free once cons reaches prod + need - size;
     * consumer: `need` bytes are readable once prod reaches cons + need */
    if (r->producer)
        set_event(r->my_event, r->pvt + need - r->size);
    else
        set_event(r->my_event, r->pvt + need);
    fill = bring_fill(r);
    if (fill < 0)
        return (int)fill;
    if (r->producer)
        return r->size - (uint32_t)fill >= need;
    return (uint32_t)fill >= need;
}

int mw_bring_seal(struct mw_bring *r)
{
    int avail = mw_bring_avail(r);

    if (avail >= 0)
        r->sealed = 1;
    return avail;
}

int mw_bring_end_rx(struct mw_bring *r, int32_t error)
{
    int ret;

    if (r->broken)
        return -EPROTO;
    if (!r->flags_w || error > 0 || error < -MW_ERRNO_MAX)
        return -EINVAL;
    if (r->flags)
        return -EALREADY;
    /* the last bytes /then/ the final rx_prod (publish_index's release store) */
    ret = publish_index(r->my_idx, &r->pub, r->pvt, r->peer_event);
    if (ret < 0)
        return ret;
    r->error = error;
    r->flags = error ? MW_RXF_ERROR : MW_RXF_EOF;
    /* the final rx_prod /then/ the error /then/ the flag that makes both valid */
    __atomic_store_n(r->error_w, error, __ATOMIC_RELEASE);
    __atomic_store_n(r->flags_w, r->flags, __ATOMIC_RELEASE);
    return 0;
}

int mw_bring_rx_state(struct mw_bring *r, int32_t *error)
{
    uint32_t flags;
    int32_t err = 0;
    int64_t fill;

    if (r->broken)
        return -EPROTO;
    if (!r->flags_r)
        return -EINVAL;
    /* rx_flags /before/ error and rx_prod: a flag seen means they are final */
    flags = __atomic_load_n(r->flags_r, __ATOMIC_ACQUIRE);
    if ((flags & ~MW_RXF_ALL_) != 0 || (flags & r->flags) != r->flags)
        goto out_broken;
    if (flags & MW_RXF_ERROR) {
        err = __atomic_load_n(r->error_r, __ATOMIC_ACQUIRE);
        if (err >= 0 || err < -MW_ERRNO_MAX || (r->error && err != r->error))
            goto out_broken;
    }
    fill = bring_fill(r);
    if (fill < 0)
        return (int)fill;
    r->flags = flags;
    r->error = err;
    if (flags)
        r->sealed = 1;
    if (error)
        *error = err;
    return (int)flags;

out_broken:
    r->broken = 1;
    return -EPROTO;
}

struct mw_watch mw_bring_watch(const struct mw_bring *r)
{
    struct mw_watch w = { r->peer_idx, r->peer };
    return w;
}

int mw_bring_dgram_put(struct mw_bring *r, const struct mw_dgram_hdr *hdr, const void *payload)
{
    static const uint8_t zero[MW_DGRAM_ALIGN];
    uint32_t len = hdr->len;
    uint32_t rec, idx;
    int space;

    if (len > MW_DGRAM_MAX)
        return -EMSGSIZE;
    rec = dgram_record_size(len);
    space = mw_bring_space(r);
    if (space < 0)
        return space;
    if (rec > r->size)
        return -EMSGSIZE;
    if ((uint32_t)space < rec)
        return -EAGAIN;
    idx = r->pvt;
    buf_to_ring(r, idx, hdr, DGRAM_HDR_SIZE);
    idx += DGRAM_HDR_SIZE;
    buf_to_ring(r, idx, payload, len);
    idx += len;
    buf_to_ring(r, idx, zero, r->pvt + rec - idx);
    r->pvt += rec;
    return (int)rec;
}

int mw_bring_dgram_peek(struct mw_bring *r, struct mw_dgram_hdr *hdr, struct iovec iov[2],
                        int *niov)
{
    struct mw_dgram_hdr h;
    int avail = mw_bring_avail(r);
    uint32_t rec;

    r->rec = 0;
    if (avail <= 0)
        return avail;
    /* records are published whole: a partial header or record is the producer's error */
    if ((uint32_t)avail < DGRAM_HDR_SIZE)
        goto out_broken;
    ring_to_buf(r, r->pvt, &h, DGRAM_HDR_SIZE);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);   /* h.len is read once, from our copy */
    if (h.len > MW_DGRAM_MAX)
        goto out_broken;
    rec = dgram_record_size(h.len);
    if (rec > r->size || rec > (uint32_t)avail)
        goto out_broken;

    *hdr = h;
    *niov = ring_iov(r, r->pvt + DGRAM_HDR_SIZE, h.len, iov);
    r->rec = rec;
    return 1;

out_broken:
    r->broken = 1;
    return -EPROTO;
}

int mw_bring_dgram_skip(struct mw_bring *r)
{
    if (r->broken)
        return -EPROTO;
    if (r->producer || r->rec == 0)
        return -EINVAL;
    r->pvt += r->rec;
    r->rec = 0;
    return 0;
}

int mw_bring_dgram_get(struct mw_bring *r, struct mw_dgram_hdr *hdr, void *buf,
                       uint32_t buflen)
{
    struct iovec iov[2] = { { NULL, 0 }, { NULL, 0 } };
    uint32_t want, first;
    int niov, ret;

    ret = mw_bring_dgram_peek(r, hdr, iov, &niov);
    if (ret <= 0)
        return ret;
    want = min_u32(hdr->len, buflen);
    first = min_u32(want, (uint32_t)iov[0].iov_len);
    memcpy(buf, iov[0].iov_base, first);
    if (want > first)
        memcpy((uint8_t *)buf + first, iov[1].iov_base, want - first);
    return mw_bring_dgram_skip(r) < 0 ? -EPROTO : 1;
}

/* ------------------------------------------------------------------------------------------
 * Waiting
 */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int mw_spin_wait(const struct mw_watch *w, unsigned int n, uint32_t budget_ns)
{
    uint64_t start = 0;
    unsigned int i;
    uint32_t spins;

    for (spins = 0;; spins++) {
        for (i = 0; i < n; i++) {
            /* relaxed: this only tells the caller to look; its next call reads the index
             * again with acquire semantics before touching what it covers */
            if (__atomic_load_n(w[i].idx, __ATOMIC_RELAXED) != w[i].seen)
                return (int)i + 1;
        }
        if (budget_ns == 0)
            return 0;
        if ((spins & 63) == 0) {
            uint64_t now = mono_ns();

            if (spins == 0)
                start = now;
            else if (now - start >= budget_ns)
                return 0;
        }
        cpu_relax();
    }
}
