/*
 * The INS engine: the data plane of the isolated network stack.
 *
 * One thread runs one epoll loop (ins_engine_run) over
 *   - the event channel of every attached frontend (requests, fq events),
 *   - every real socket the frontends opened (non-blocking, level-triggered, with an interest
 *     set that follows flow control: no EPOLLIN while the rx ring is full, no EPOLLOUT unless
 *     the kernel refused tx bytes),
 *   - an eventfd that wakes it (stop, attach) and one through which the DNS workers hand back
 *     their results (getaddrinfo blocks, so it runs on a small pool of threads).
 *
 * A frontend is attached after the XenStore handshake (BackLink.connect) with its mapped area,
 * the layout negotiated, its event channel handle and port, and the features negotiated; it is
 * detached on teardown, which closes all its sockets. Everything read from the area is hostile
 * (docs/protocol.md 1 and 14): a violation marks that frontend broken, closes its sockets,
 * stops touching its area, logs the reason and makes ins_engine_notify_fd() readable so the
 * control plane can close the connection. Nothing a frontend does reaches another frontend.
 *
 * Threads: ins_engine_run() in one thread; attach, detach, stats and stop from any other. They
 * take the engine's lock, which the loop holds while it works (never while it sleeps), so when
 * ins_engine_detach() returns the engine no longer touches that frontend's area or event
 * channel: the caller may unmap and close them.
 *
 * Errors: every function returns 0 / a non-negative value, or a negative errno.
 */
#ifndef MWCOMMS_INS_ENGINE_H
#define MWCOMMS_INS_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "mwcomms/platform.h"
#include "mwcomms/ring.h"

/* Features negotiated with one frontend (docs/protocol.md 3.3). */
#define INS_F_IPV6 0x1u
#define INS_F_UDP 0x2u
#define INS_F_DNS 0x4u

struct ins_config {
    int log_fd;                /* where log lines go (-1: stderr) */
    uint32_t dns_workers;      /* resolver threads (0: 4); one frontend uses at most half */
    uint32_t max_socks;        /* sockets per frontend (0: the frontend's sock-slots) */
    uint64_t max_buf_bytes;    /* memory the INS holds for one frontend (unsent bytes of closed
                                * sockets; kernel socket buffers are not counted): an ACCEPT
                                * waits while its tx ring would not fit (0: the frontend's
                                * data area, at most 64 MiB) */
    uint32_t spin_us;          /* poll this long after work before sleeping (0: MW_SPIN_US or
                                * 50; UINT32_MAX: never poll): mwcomms/spin.h */
};

struct ins_front_stats {
    uint32_t front_id;         /* as given to attach */
    uint32_t sockets;          /* open sockets (and slots reserved by pending ACCEPTs) */
    uint64_t tx_bytes;         /* frontend -> network */
    uint64_t rx_bytes;         /* network -> frontend */
    uint64_t buf_bytes;        /* held in INS memory, counted against max_buf_bytes */
    uint64_t requests[16];     /* by command (index = enum mw_cmd; 0 = unknown commands) */
    uint64_t proto_errors;     /* violations seen (0 or 1: the first one disconnects) */
    int32_t broken;            /* 1 once a violation disconnected the frontend */
    char why[200];             /* the violation, for the log and the XenStore error key */
};

struct ins_engine;

/**
 * Create an engine (its DNS threads start here).
 * @param cfg  may be NULL (defaults)
 * @return 0, -ENOMEM, -EMFILE, or the errno of epoll_create1 / eventfd / pthread_create
 */
int ins_engine_create(const struct ins_config *cfg, struct ins_engine **out);

/** Destroy an engine that is not running: detaches every frontend. Accepts NULL. */
void ins_engine_destroy(struct ins_engine *e);

/**
 * Attach a frontend.
 * @param front_id  the frontend's domain id (for logs and stats)
 * @param base      the mapped area, @size bytes, laid out as @geom
 * @param ec        the event channel handle bound to the frontend, @port its local port
 * @param features  INS_F_* negotiated
 * @return a handle (> 0), -EINVAL (geometry or area), -ENOMEM, or the errno of epoll_ctl
 */
int ins_engine_attach(struct ins_engine *e, uint32_t front_id, void *base, size_t size,
                      const struct mw_area_geom *geom, struct mw_evtchn *ec, uint32_t port,
                      uint32_t features);

/**
 * Detach a frontend: every socket of it is closed (pending requests are not answered), and
 * the engine touches neither its area nor its event channel once this returns.
 * @return 0, -ENOENT (no such handle)
 */
int ins_engine_detach(struct ins_engine *e, int handle);

/**
 * Run the loop until ins_engine_stop(). @return 0, -EBUSY (already running), -errno of
 * epoll_wait
 */
int ins_engine_run(struct ins_engine *e);

/** Ask the loop to return (from any thread, or a signal handler). */
void ins_engine_stop(struct ins_engine *e);

/**
 * A file descriptor that becomes readable when a frontend was disconnected by a violation:
 * read 8 bytes from it, then look at the stats of each handle (broken, why).
 */
int ins_engine_notify_fd(const struct ins_engine *e);

/** @return 0, -ENOENT (no such handle) */
int ins_engine_stats(struct ins_engine *e, int handle, struct ins_front_stats *out);

#endif /* MWCOMMS_INS_ENGINE_H */
