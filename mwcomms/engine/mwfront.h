/*
 * mwcommsd's engine: the frontend side of one mwcomms connection, in one epoll loop.
 *
 * The loop serves
 *   - the control socket (an AF_UNIX SOCK_SEQPACKET listener) and every shim connection to it,
 *     speaking the local protocol of mwcomms/local.h (docs/local-protocol.md);
 *   - P, mwcommsd's end of the socketpair of every forwarded socket, pumped to and from the
 *     socket's byte rings with flow control both ways (nothing is buffered outside the rings);
 *   - the event channel of the attached INS connection: the command ring, the two event
 *     queues and the socket table of docs/protocol.md, through the ring library and the codec.
 *
 * Python (mwcomms/daemon.py) owns the handshake: it creates the engine, makes it listen, runs
 * mwfe_run() in a thread, and calls mwfe_attach() once the connection is Connected and
 * mwfe_detach() before it ends the sharing. Everything the INS writes is hostile: a violation
 * detaches the connection by itself (mwfe_link() then says why) and fails every socket, as the
 * loss of the INS does.
 *
 * Threads: mwfe_run() runs the loop in the calling thread. mwfe_attach(), mwfe_detach(),
 * mwfe_stop(), mwfe_stats() and mwfe_link() may be called from any other thread while it runs:
 * attach and detach are carried out by the loop and wait for it. Without a running loop they
 * act at once.
 *
 * Errors: functions return 0 or a non-negative value on success and a negative errno.
 */
#ifndef MWCOMMS_MWFRONT_H
#define MWCOMMS_MWFRONT_H

#include <stddef.h>
#include <stdint.h>

#include "mwcomms/local.h"
#include "mwcomms/ring.h"
#include "mwcomms/platform.h"

struct mwfe;

struct mwfe_config {
    uint8_t stream_order;  /* log2 of each byte ring of a stream socket (0: 18, 256 KiB) */
    uint8_t dgram_order;   /* datagram sockets (0: 17, so that any datagram fits) */
    uint16_t accept_max;   /* most ACCEPTs pre-posted per listener (0: 8) */
    uint32_t max_clients;  /* shim connections at once (0: 1024) */
    uint32_t max_sockets;  /* forwarded sockets at once, this side (0: 65536) */
    uint32_t max_zombies;  /* dead sockets remembered for STATUS until CLOSE (0: 1024) */
    uint32_t spin_us;      /* poll this long after work before sleeping (0: MW_SPIN_US or
                            * 50; UINT32_MAX: never poll): mwcomms/spin.h */
};

struct mwfe_stats {
    uint64_t sockets;         /* forwarded sockets open now */
    uint64_t sockets_total;   /* created since start (SOCKET and accepted) */
    uint64_t bytes_tx;        /* application -> INS bytes put in tx rings */
    uint64_t bytes_rx;        /* INS -> application bytes written to socketpairs */
    uint64_t calls;           /* local protocol requests served */
    uint64_t call_errors;     /* answered with an error */
    uint64_t clients;         /* shim connections now */
    uint64_t clients_dropped; /* dropped for malformed requests */
    uint64_t ins_requests;    /* requests sent to the INS */
    uint64_t attaches;        /* INS connections attached since start */
    uint64_t violations;      /* INS protocol violations seen */
    uint64_t dgrams_dropped;  /* malformed datagrams from applications */
};

/* Feature bits given to mwfe_attach: the negotiated features (MWL_FEAT_* of local.h). */

/**
 * Create an engine.
 * @param cfg  NULL for the defaults
 * @return 0, -EINVAL (an order outside MW_RING_ORDER_MIN..MAX), -ENOMEM, -EMFILE
 */
int mwfe_create(const struct mwfe_config *cfg, struct mwfe **out);

/** Destroy an engine whose loop is not running (detaches first). Accepts NULL. */
void mwfe_destroy(struct mwfe *e);

/**
 * Listen on the control socket `path` (a stale socket file there is replaced; mode 0666:
 * every user of the domain may connect, SO_PEERCRED decides what each may name).
 * @return 0, -EALREADY (listening already), -ENAMETOOLONG, -errno of socket/bind/listen
 */
int mwfe_listen(struct mwfe *e, const char *path);

/**
 * Attach a connected INS connection.
 * @param base, size  the shared area (as shared by FrontLink)
 * @param geom        its geometry, from the keys published in XenStore
 * @param ec, port    the event channel handle and local port bound to the INS
 * @param features    MWL_FEAT_IPV6 | MWL_FEAT_UDP | MWL_FEAT_DNS as negotiated
 * @return 0, -EBUSY (attached already), -EINVAL (bad geometry or area), -ENOMEM
 */
int mwfe_attach(struct mwfe *e, void *base, size_t size, const struct mw_area_geom *geom,
                struct mw_evtchn *ec, uint32_t port, uint32_t features);

/**
 * Detach: fail every socket and pending call (docs/local-protocol.md 7); the area and the
 * event channel are not touched afterwards. A no-op when not attached.
 * @return 0
 */
int mwfe_detach(struct mwfe *e);

/**
 * Run the loop until mwfe_stop().
 * @return 0, -EBUSY (running already), -errno of epoll
 */
int mwfe_run(struct mwfe *e);

/** Make mwfe_run() return (from any thread, or a signal handler). */
void mwfe_stop(struct mwfe *e);

/** Copy the counters. */
void mwfe_stats(struct mwfe *e, struct mwfe_stats *st);

/**
 * State of the INS link.
 * @param why  receives the reason of the last self-detach (violation), "" if none
 * @return 1 attached, 0 detached, -EPROTO detached by a violation, -EPIPE detached because
 *         the INS vanished (sim: its event channel end closed), until the next attach
 */
int mwfe_link(struct mwfe *e, char *why, size_t len);

/** @return an eventfd that becomes readable when the engine detached itself (violation or
 *          INS gone; read it to clear) */
int mwfe_link_fd(struct mwfe *e);

#endif /* MWCOMMS_MWFRONT_H */
