/*
 * mwcomms ring library: the rings of the shared area of proto.h, used the same way by the
 * frontend (mwcommsd) and the backend (the INS).
 *
 *   area        where each part of the shared area starts (struct mw_area)
 *   cmd ring    requests and responses in the discipline of Xen's io/ring.h, with the ids of
 *               outstanding requests tracked by the frontend (struct mw_cmd_front / _back)
 *   event queue one SPSC queue of struct mw_event each way, with an overflow counter
 *               (struct mw_evq)
 *   byte ring   one direction of one socket's data, stream or datagram records (struct mw_bring)
 *   waiting     spin briefly on shared indices before sleeping on the event channel
 *
 * Hostile peer. Everything in the area may be written by the other domain at any time, including
 * the fields that "belong" to us. So:
 *  - each side keeps its own indices in private memory (the *_pvt fields below) and only ever
 *    writes them to the shared page, never reads them back;
 *  - the peer's index is read once per call (one atomic load), then checked against what is
 *    possible; a message is copied out of its slot before anything looks at it;
 *  - a check that fails returns -EPROTO and marks the object broken: every later call on it
 *    returns -EPROTO too. The caller then disconnects the peer (or closes the socket).
 *  - event indices (*_event) written by the peer only decide whether we kick the event channel;
 *    any value there is harmless to us, so they are not checked.
 *
 * What is checked where. The ring checks what its own work depends on: indices, record framing,
 * and that a response answers an outstanding request. The content of a message (commands,
 * pads, addresses, event flags, datagram header fields) is checked by the codec (codec.h:
 * mw_req_check, mw_rsp_check, mw_event_check, mw_dgram_check) on the copy the ring returns.
 *
 * Notification. Every "publish" call returns 1 when the peer asked to be told (its event
 * index lies in (old, new] of ours, as in io/ring.h), 0 when it did not. For the command ring
 * and the event queues the caller then kicks the event channel (mw_evtchn_notify); for a byte
 * ring it posts an MW_EV_DATA / MW_EV_SPACE event on its event queue, whose push says whether
 * to kick (protocol.md 10). Before sleeping, a side calls the matching "final check" /
 * "prepare wait" function, which writes the event index it waits for and then looks again, so
 * that a publish in between is never missed.
 *
 * Errors: functions return a non-negative value on success and a negative errno on failure; they
 * never set errno. -EPROTO always means "the peer broke the protocol" (or did before).
 *
 * Threads: an object belongs to one thread at a time; the library takes no locks.
 */
#ifndef MWCOMMS_RING_H
#define MWCOMMS_RING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "mwcomms/proto.h"

/* ------------------------------------------------------------------------------------------
 * The shared area.
 *
 * Its geometry comes from XenStore (never from the area itself). mw_area_init() checks it and
 * computes where each part starts; the other init functions take their pointers from there.
 */

/* Which end of the connection a process is. */
enum mw_side {
    MW_SIDE_FRONT = 0,     /* mwcommsd: produces requests, tx bytes and the fq event queue */
    MW_SIDE_BACK = 1       /* the INS: produces responses, rx bytes and the bq event queue */
};

struct mw_area_geom {
    uint32_t cmd_pages;    /* command ring pages C: a power of two, 1 .. MW_CMD_RING_PAGES_MAX */
    uint32_t evq_pages;    /* pages of each event queue E: a power of two, 1 .. MW_EVQ_PAGES_MAX */
    uint32_t sock_slots;   /* socket table entries: 1 .. MW_SOCK_SLOTS_MAX */
    uint32_t data_pages;   /* data area pages D: 1 .. MW_DATA_PAGES_MAX */
};

struct mw_area {
    struct mw_ctrl_page *ctrl;    /* page 0 */
    union mw_cmd_slot *slots;     /* command ring slots */
    uint32_t nslots;              /* cmd_pages * MW_CMD_SLOTS_PER_PAGE, a power of two */
    uint32_t evq_len;             /* events per queue, a power of two */
    struct mw_event *fq;          /* frontend -> INS event queue */
    struct mw_event *bq;          /* INS -> frontend event queue */
    struct mw_sock_shared *socks; /* socket table */
    uint32_t nsocks;              /* entries in it (sock_slots) */
    uint32_t data_size;           /* bytes of the data area (data_pages * MW_PAGE_SIZE) */
    uint8_t *data;                /* data area */
};

/**
 * Size of the shared area of a geometry.
 * @param geom   the geometry negotiated through XenStore
 * @param bytes  receives the size in bytes, a multiple of MW_PAGE_SIZE
 * @return 0, or -EINVAL when a field is out of its range or not a power of two where it must be
 */
int mw_area_size(const struct mw_area_geom *geom, size_t *bytes);

/**
 * Find the parts of a mapped shared area.
 * @param area  receives the pointers
 * @param base  the mapping, page aligned
 * @param size  bytes mapped at base
 * @param geom  the geometry negotiated through XenStore
 * @return 0, -EINVAL (bad geometry, base not page aligned, or size smaller than the geometry)
 */
int mw_area_init(struct mw_area *area, void *base, size_t size, const struct mw_area_geom *geom);

/**
 * Zero a socket table entry before the frontend hands the slot to a SOCKET or ACCEPT request.
 * Only the frontend calls it, and only while the INS does not use the slot (before the
 * request, or after the CLOSE response), so that both byte rings start at index 0.
 * @return 0, -EINVAL (sock out of range)
 */
int mw_sock_reset(const struct mw_area *area, uint32_t sock);

/* ------------------------------------------------------------------------------------------
 * The command ring.
 *
 * Frontend:                                Backend (INS):
 *   mw_cmd_front_put_req()  (n times)        mw_cmd_back_take_req()  until it returns 0
 *   mw_cmd_front_push()  -> kick if 1        ... execute, now or later, in any order ...
 *   mw_cmd_front_take_rsp() until 0          mw_cmd_back_put_rsp()   (n times)
 *   mw_cmd_front_final_check() before        mw_cmd_back_push()      -> kick if 1
 *     sleeping: 1 = don't sleep              mw_cmd_back_final_check() before sleeping
 *
 * The frontend assigns request ids itself: an id names one of nslots tags (the low 16 bits)
 * and a generation (the high 16 bits) that changes each time the tag is reused. For each tag
 * in use it remembers cmd, sock and the caller's cookie; a response whose id is not
 * outstanding, or whose cmd or sock differ from its request's, is a protocol error. The
 * number of requests outstanding never exceeds nslots, which is what keeps the frontend from
 * overrunning slots holding responses it has not read yet (io/ring.h's RING_FULL), however
 * late and out of order the responses come.
 */

#define MW_CMD_TAG_BITS 16
#define MW_CMD_SLOTS_MAX (MW_CMD_RING_PAGES_MAX * MW_CMD_SLOTS_PER_PAGE)

/* What the frontend remembers about one outstanding request. */
struct mw_cmd_pending {
    uint64_t cookie;       /* the caller's, handed back with the response */
    uint32_t id;           /* the id given to the request; 0 marks a free tag */
    uint16_t cmd;          /* to check against the response */
    uint16_t gen;          /* generation of the tag, part of the next id */
    uint32_t sock;         /* to check against the response */
    uint32_t idx;          /* the request's ring index: answered only once published */
};

/* The frontend's end (about 13 KiB with its table of outstanding requests: allocate it
 * statically or on the heap rather than on a small stack). */
struct mw_cmd_front {
    struct mw_ctrl_page *ctrl;
    union mw_cmd_slot *slots;
    uint32_t nslots;
    uint32_t req_prod_pvt; /* requests written to slots; published by push */
    uint32_t req_prod_pub; /* req_prod as we last published it: the shared copy could have been
                            * overwritten by the peer, so the "old" value of the notify
                            * decision is kept here */
    uint32_t rsp_cons;     /* responses consumed; io/ring.h keeps it private too */
    uint32_t outstanding;  /* requests sent and not answered yet (<= nslots) */
    uint32_t nfree;        /* entries in free_tags */
    int broken;            /* a protocol error was seen: everything returns -EPROTO */
    uint16_t free_tags[MW_CMD_SLOTS_MAX];           /* tags not in use, a stack */
    struct mw_cmd_pending pending[MW_CMD_SLOTS_MAX]; /* by tag */
};

struct mw_cmd_back {
    struct mw_ctrl_page *ctrl;
    union mw_cmd_slot *slots;
    uint32_t nslots;
    uint32_t req_cons;     /* requests copied out of their slots */
    uint32_t rsp_prod_pvt; /* responses written to slots; published by push */
    uint32_t rsp_prod_pub; /* rsp_prod as we last published it (see req_prod_pub) */
    int broken;
};

/**
 * Start the frontend side of the command ring of an area. The shared indices are expected to be
 * zero (fresh pages); rsp_event is set to 1.
 * @return 0, -EINVAL (area without slots)
 */
int mw_cmd_front_init(struct mw_cmd_front *f, const struct mw_area *area);

/** @return free request slots (requests that may be put now), or -EPROTO */
int mw_cmd_front_space(const struct mw_cmd_front *f);

/** @return requests sent and not answered yet */
uint32_t mw_cmd_front_outstanding(const struct mw_cmd_front *f);

/**
 * Write a request into the next slot; it is not visible to the INS before mw_cmd_front_push().
 * @param req     the request; its id field is set here (the caller's value is ignored)
 * @param cookie  any value; mw_cmd_front_take_rsp() returns it with the response
 * @return 0, -ENOSPC (nslots requests outstanding: take responses first), -EPROTO
 */
int mw_cmd_front_put_req(struct mw_cmd_front *f, struct mw_req *req, uint64_t cookie);

/**
 * Publish the requests put so far.
 * @return 1 when the INS asked to be kicked (notify its event channel), 0 when not, -EPROTO
 */
int mw_cmd_front_push(struct mw_cmd_front *f);

/**
 * Copy out the next response and check it.
 * @param rsp     receives the response
 * @param cookie  receives the cookie given with its request (may be NULL)
 * @return 1 (a response), 0 (none), -EPROTO (rsp_prod claims more responses than requests
 *         were published and not answered, or the response's id/cmd/sock match no outstanding
 *         published request)
 */
int mw_cmd_front_take_rsp(struct mw_cmd_front *f, struct mw_rsp *rsp, uint64_t *cookie);

/**
 * Before sleeping: ask for a kick on the next response, then look again.
 * @return 1 when a response arrived meanwhile (don't sleep), 0 (sleep), -EPROTO
 */
int mw_cmd_front_final_check(struct mw_cmd_front *f);

/**
 * Start the INS side of the command ring of an area. Sets req_event to 1.
 * @return 0, -EINVAL
 */
int mw_cmd_back_init(struct mw_cmd_back *b, const struct mw_area *area);

/**
 * Copy out the next request. Its content is the caller's to check (cmd, sock, lengths).
 * @param req  receives the request
 * @return 1 (a request), 0 (none), -EPROTO (req_prod claims more requests than fit in the
 *         slots not holding unanswered requests or unread responses)
 */
int mw_cmd_back_take_req(struct mw_cmd_back *b, struct mw_req *req);

/** @return requests taken and not answered yet */
uint32_t mw_cmd_back_unanswered(const struct mw_cmd_back *b);

/**
 * Write a response into the next slot; not visible before mw_cmd_back_push().
 * @return 0, -ENOSPC (more responses than requests taken: a bug of the caller), -EPROTO
 */
int mw_cmd_back_put_rsp(struct mw_cmd_back *b, const struct mw_rsp *rsp);

/** Publish the responses put so far. @return 1 (kick the frontend), 0, -EPROTO */
int mw_cmd_back_push(struct mw_cmd_back *b);

/** Before sleeping. @return 1 (a request arrived meanwhile), 0 (sleep), -EPROTO */
int mw_cmd_back_final_check(struct mw_cmd_back *b);

/* ------------------------------------------------------------------------------------------
 * Event queues.
 *
 * Each side produces one queue (the frontend fq, the INS bq) and consumes the other. A
 * producer that finds its queue full drops the event and bumps the overflow counter; the
 * consumer reports the change once as MW_EVQ_RESCAN, and then rescans the shared entry of
 * every socket it has. Events are hints: their sock and type are checked (a socket out of
 * range, an unknown type, or MW_EV_STATE on fq is a protocol error), their flags and arg are
 * not interpreted.
 *
 *   producer: mw_evq_put() ... mw_evq_push() -> kick if 1
 *   consumer: mw_evq_take() until 0; mw_evq_final_check() before sleeping
 */

#define MW_EVQ_RESCAN 2    /* mw_evq_take(): events were dropped, rescan every socket */

struct mw_evq {
    struct mw_event *ring;     /* the queue's records */
    const struct mw_event *bq; /* the INS -> frontend queue: the only one carrying STATE */
    uint32_t len;              /* records, a power of two */
    uint32_t nsocks;           /* events naming a socket >= this are protocol errors */
    uint32_t *my_idx;          /* shared: producer -> its prod, consumer -> its cons */
    const uint32_t *peer_idx;  /* shared: the other side's index */
    uint32_t *my_event;        /* consumer: its event index (kick me when prod passes it) */
    const uint32_t *peer_event;/* producer: the consumer's event index */
    uint32_t *my_overflow;     /* producer: the overflow counter it bumps */
    const uint32_t *peer_overflow; /* consumer: the producer's overflow counter */
    uint32_t pvt;              /* my index, private (the shared copy is write-only to us) */
    uint32_t pub;              /* my index as last published (old value for notify) */
    uint32_t peer;             /* peer's index as last read and checked */
    uint32_t overflow;         /* producer: overflow as last written; consumer: as last seen */
    int overflowed;            /* producer: bumped since the last push */
    int producer;              /* 1: this is the producing end */
    int broken;
};

/**
 * Open this side's producing end (produce = 1: fq for the frontend, bq for the INS) or
 * consuming end (produce = 0) of an event queue.
 * @return 0, -EINVAL
 */
int mw_evq_init(struct mw_evq *q, const struct mw_area *area, enum mw_side side, int produce);

/**
 * Queue an event (not visible before mw_evq_push()).
 * @return 1 (queued), 0 (queue full: dropped, overflow bumped; the consumer will rescan),
 *         -EINVAL (not the producing end, sock or type out of range, STATE from the frontend),
 *         -EPROTO (consumer index impossible)
 */
int mw_evq_put(struct mw_evq *q, uint32_t sock, uint16_t type, uint64_t arg);

/** Publish the events queued so far. @return 1 (kick the consumer), 0, -EPROTO */
int mw_evq_push(struct mw_evq *q);

/**
 * Take the next event.
 * @param ev  receives the event (when 1 is returned)
 * @return 1 (*ev is an event), MW_EVQ_RESCAN (the producer dropped events since the last
 *         call: rescan every socket, then keep taking), 0 (empty), -EPROTO (producer index
 *         impossible, or an event with a socket or type out of range)
 */
int mw_evq_take(struct mw_evq *q, struct mw_event *ev);

/** Before sleeping. @return 1 (events or an overflow arrived meanwhile), 0 (sleep), -EPROTO */
int mw_evq_final_check(struct mw_evq *q);

/* ------------------------------------------------------------------------------------------
 * Byte rings.
 *
 * One struct mw_bring is one end of one direction of a socket's data: the frontend produces
 * tx and consumes rx, the INS consumes tx and produces rx. Both ends use the same functions;
 * mw_bring_init() points my_idx / peer_idx / my_event / peer_event at the right fields of the
 * socket's shared entry:
 *
 *                       my_idx     peer_idx   my_event        peer_event
 *   front, tx (prod)    tx_prod    tx_cons    tx_cons_event   tx_prod_event
 *   INS,   tx (cons)    tx_cons    tx_prod    tx_prod_event   tx_cons_event
 *   INS,   rx (prod)    rx_prod    rx_cons    rx_cons_event   rx_prod_event
 *   front, rx (cons)    rx_cons    rx_prod    rx_prod_event   rx_cons_event
 *
 * Producer: mw_bring_space(), mw_bring_write() / mw_bring_read_fd() / mw_bring_dgram_put(),
 *           then mw_bring_publish() -> post MW_EV_DATA if 1.
 * Consumer: mw_bring_avail(), mw_bring_peek() + mw_bring_consume(), mw_bring_read(),
 *           mw_bring_write_fd(), mw_bring_dgram_get(), then mw_bring_release() -> post
 *           MW_EV_SPACE if 1.
 * Both:     mw_bring_prepare_wait() before sleeping.
 *
 * Every read of the peer's index is checked: 0 <= prod - cons <= size, and the peer's index
 * never moves backwards; a violation is -EPROTO and breaks the ring. Once a producer index is
 * final (the INS sealed tx after SHUTDOWN(SHUT_WR), or the frontend saw an rx flag) it may not
 * move at all.
 *
 * End of the incoming stream (protocol.md 10): the INS ends rx with mw_bring_end_rx() (EOF or an
 * error, published after the last byte); the frontend asks mw_bring_rx_state() when rx is
 * empty, which reads rx_flags /before/ rx_prod, so the bytes it then finds are all there is.
 */

enum mw_bring_dir {
    MW_BRING_TX = 0,       /* frontend -> INS */
    MW_BRING_RX = 1        /* INS -> frontend */
};

struct mw_bring {
    uint8_t *buf;              /* the ring's bytes in the data area */
    uint32_t size;             /* 2^order */
    uint32_t *my_idx;          /* shared: my producer or consumer index (written only) */
    const uint32_t *peer_idx;  /* shared: the other end's index (read once per call) */
    uint32_t *my_event;        /* shared: "notify me when peer_idx passes this" */
    const uint32_t *peer_event;/* shared: the peer's wish; only decides whether we notify */
    uint32_t pvt;              /* my index, private: the shared copy is never read back */
    uint32_t pub;              /* my index as last published (old value for notify) */
    uint32_t peer;             /* the peer's index as last read and checked */
    uint32_t rec;              /* consumer: bytes of the datagram record peeked, 0 if none */
    uint32_t *flags_w;         /* INS rx producer: rx_flags and error of the entry */
    int32_t *error_w;
    const uint32_t *flags_r;   /* frontend rx consumer: the same, read only */
    const int32_t *error_r;
    uint32_t flags;            /* MW_RXF_* as set (INS) or as last seen and checked (frontend) */
    int32_t error;             /* the error that went with MW_RXF_ERROR */
    int sealed;                /* the peer's index is final: it must stay at `peer` */
    int producer;              /* 1: this end produces */
    int broken;
};

/**
 * Open one end of a socket's byte ring.
 * @param area   the shared area
 * @param sock   socket slot
 * @param side   which side this process is
 * @param dir    MW_BRING_TX or MW_BRING_RX
 * @param off    the ring's offset in the data area (from the SOCKET / ACCEPT request)
 * @param order  log2 of its size
 * @return 0, -EINVAL (sock out of range, order outside MW_RING_ORDER_MIN..MAX, off not page
 *         aligned, or the ring not inside the data area). The INS gets off and order from the
 *         frontend: it answers -EINVAL to the request.
 */
int mw_bring_init(struct mw_bring *r, const struct mw_area *area, uint32_t sock,
                  enum mw_side side, enum mw_bring_dir dir, uint32_t off, uint8_t order);

/** @return bytes free for the producer, -EINVAL (a consuming end), -EPROTO */
int mw_bring_space(struct mw_bring *r);

/**
 * Copy up to len bytes into the ring (not visible before mw_bring_publish()).
 * @return bytes copied (less than len when the ring is full), -EINVAL (wrong end), -EPIPE (rx
 *         ended by mw_bring_end_rx()), -EPROTO
 */
int mw_bring_write(struct mw_bring *r, const void *buf, uint32_t len);

/**
 * Zero copy: readv() from fd straight into the free space (at most max bytes).
 * @return bytes read (> 0), 0 (end of file on fd), -ENOBUFS (ring full), -EPROTO, -EINVAL,
 *         -EPIPE (rx ended), or the negative errno of readv (-EAGAIN, ...)
 */
int mw_bring_read_fd(struct mw_bring *r, int fd, uint32_t max);

/**
 * Publish the producer index.
 * @return 1 (the consumer waits for this data: post MW_EV_DATA / kick), 0, -EPROTO
 */
int mw_bring_publish(struct mw_bring *r);

/** @return bytes readable by the consumer, -EINVAL (wrong end), -EPROTO */
int mw_bring_avail(struct mw_bring *r);

/**
 * Copy up to len readable bytes out without consuming them.
 * @return bytes copied, -EINVAL, -EPROTO
 */
int mw_bring_peek(struct mw_bring *r, void *buf, uint32_t len);

/**
 * Consume n bytes (after mw_bring_peek() or mw_bring_write_fd()); not visible to the producer
 * before mw_bring_release().
 * @return 0, -EINVAL (n more than the bytes readable, or wrong end), -EPROTO
 */
int mw_bring_consume(struct mw_bring *r, uint32_t n);

/** mw_bring_peek() then mw_bring_consume(). @return bytes read, -EINVAL, -EPROTO */
int mw_bring_read(struct mw_bring *r, void *buf, uint32_t len);

/**
 * Zero copy: writev() readable bytes (at most max) straight to fd, and consume what was written.
 * @return bytes written, 0 (the ring is empty), -EINVAL, -EPROTO, or the negative errno of
 *         writev (-EAGAIN, -EPIPE, ...)
 */
int mw_bring_write_fd(struct mw_bring *r, int fd, uint32_t max);

/**
 * Publish the consumer index.
 * @return 1 (the producer waits for this space: post MW_EV_SPACE / kick), 0, -EPROTO
 */
int mw_bring_release(struct mw_bring *r);

/**
 * Before sleeping: write the peer index this end waits for into my_event, then look again.
 * A producer waits until `need` bytes are free, a consumer until `need` bytes are readable.
 * @param need  1 .. size
 * @return 1 (the condition already holds: don't sleep), 0 (sleep until kicked), -EINVAL, -EPROTO
 */
int mw_bring_prepare_wait(struct mw_bring *r, uint32_t need);

/**
 * Consumer: take the peer's producer index as final (the INS on tx, once SHUTDOWN(SHUT_WR) has
 * arrived): from now on a producer index that moves is a protocol error.
 * @return bytes still readable up to the final index, -EINVAL (a producing end), -EPROTO
 */
int mw_bring_seal(struct mw_bring *r);

/**
 * INS, rx ring of a stream socket: end the incoming stream after the bytes written so far.
 * Publishes rx_prod, then error, then the flag (each /after/ the one before), as protocol.md 10
 * orders. The caller then posts MW_EV_STATE (always) and kicks. Later writes fail with -EPIPE.
 * @param error  0: end of file (MW_RXF_EOF); -1 .. -MW_ERRNO_MAX: the connection failed
 *               (MW_RXF_ERROR)
 * @return 0, -EINVAL (not the INS's rx end, error out of range), -EALREADY (ended before),
 *         -EPROTO
 */
int mw_bring_end_rx(struct mw_bring *r, int32_t error);

/**
 * Frontend, rx ring: read rx_flags once, then rx_prod once; when a flag is set, the bytes
 * readable now are the last ones (mw_bring_avail() and the reads that follow see the same
 * final index, or -EPROTO if the INS moves it).
 * @param error  receives the connection's error when MW_RXF_ERROR is returned, else 0
 * @return the MW_RXF_* flags (0: more bytes may come), -EINVAL (not the frontend's rx end),
 *         -EPROTO (an unknown flag bit, a flag cleared after it was set, an error outside
 *         -1 .. -MW_ERRNO_MAX with MW_RXF_ERROR, or rx_prod moving after a flag)
 */
int mw_bring_rx_state(struct mw_bring *r, int32_t *error);

/**
 * Datagram sockets: append one record (header, payload, zero padding to MW_DGRAM_ALIGN).
 * The record may wrap around the end of the ring. Not visible before mw_bring_publish().
 * @param hdr      its len is the payload length; flags and addr are copied as given
 * @param payload  hdr->len bytes
 * @return bytes of the record, -EAGAIN (not enough space now), -EMSGSIZE (len > MW_DGRAM_MAX or
 *         a record larger than the ring), -EINVAL, -EPIPE (rx ended), -EPROTO
 */
int mw_bring_dgram_put(struct mw_bring *r, const struct mw_dgram_hdr *hdr, const void *payload);

/**
 * Datagram sockets: copy out the header of the next record, check it, and give the payload
 * in place (zero copy, e.g. for sendmsg()): iov[0..*niov) cover hdr->len bytes of the ring.
 * The payload bytes may still change under the caller (they are never interpreted); the
 * header may not: use *hdr, never the ring's copy.
 * @param niov  receives 1 or 2
 * @return 1 (a record), 0 (ring empty), -EPROTO (a partial header or record, len >
 *         MW_DGRAM_MAX, or a record larger than the ring), -EINVAL
 */
int mw_bring_dgram_peek(struct mw_bring *r, struct mw_dgram_hdr *hdr, struct iovec iov[2],
                        int *niov);

/** Datagram sockets: consume the record peeked last. @return 0, -EINVAL (none peeked) */
int mw_bring_dgram_skip(struct mw_bring *r);

/**
 * Datagram sockets: take the next record, copying at most buflen bytes of payload (the rest is
 * dropped, as recvfrom() truncates).
 * @return 1 (hdr->len holds the full payload length), 0 (empty), -EPROTO, -EINVAL
 */
int mw_bring_dgram_get(struct mw_bring *r, struct mw_dgram_hdr *hdr, void *buf,
                       uint32_t buflen);

/* ------------------------------------------------------------------------------------------
 * Waiting.
 *
 * A sleep on the event channel costs ~10 us per wake-up across cores, a spin that sees the
 * index move ~0.2 us. So a side with nothing to do first spins for a short budget on the shared
 * indices it waits for, and only then sleeps:
 *
 *     struct mw_watch w[3] = { mw_cmd_front_watch(&f), mw_evq_watch(&bq), mw_bring_watch(&rx) };
 *     if (mw_spin_wait(w, 3, spin_ns) == 0 &&      // nothing moved while spinning
 *         mw_bring_prepare_wait(&rx, 1) == 0 &&   // the INS will post DATA for rx, ...
 *         mw_cmd_front_final_check(&f) == 0 &&    // ... and kick for a response or an event
 *         mw_evq_final_check(&bq) == 0)
 *             poll(event channel fd)               // sleep until kicked
 *
 * spin_ns is the caller's: 0 sleeps at once (the least CPU), a few microseconds catch a peer
 * that answers quickly (the least latency when both sides have a core of their own).
 */

struct mw_watch {
    const uint32_t *idx;   /* a shared index written by the peer */
    uint32_t seen;         /* its value when there was nothing to do */
};

/** @return a watch on rsp_prod: it moves when a response arrives */
struct mw_watch mw_cmd_front_watch(const struct mw_cmd_front *f);
/** @return a watch on req_prod */
struct mw_watch mw_cmd_back_watch(const struct mw_cmd_back *b);
/** @return a watch on the producer index of a consuming end */
struct mw_watch mw_evq_watch(const struct mw_evq *q);
/** @return a watch on the peer's index of a byte ring end */
struct mw_watch mw_bring_watch(const struct mw_bring *r);

/**
 * Spin until one of the watched indices differs from its `seen` value, at most budget_ns.
 * @param budget_ns  0: look once, don't spin
 * @return 1 + the position of the first watch that moved, 0 when none did within the budget
 */
int mw_spin_wait(const struct mw_watch *w, unsigned int n, uint32_t budget_ns);

#endif /* MWCOMMS_RING_H */
