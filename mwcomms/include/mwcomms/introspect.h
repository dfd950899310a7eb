/*
 * Introspection ops of the local protocol (mwctl <-> mwcommsd): what mwcommsd's engine is
 * doing, without reading logs. docs/local-protocol.md section 8 is their prose; mwctl
 * (tools/mwctl.py) is their client.
 *
 * They travel on the control socket like every other op (struct mwl_hdr, SOCK_SEQPACKET, host
 * byte order) but never come from the shim: their numbers lie outside enum mwl_op.
 *
 *   MWL_INFO      no body -> struct mwl_info: link, negotiated features, uptime, ring
 *                 occupancy, event channel counts, counters, calls by op, errors by errno.
 *   MWL_SOCKETS   struct mwl_req_sockets -> struct mwl_rsp_sockets then `count` struct
 *                 mwl_sockinfo: one page of the socket table, from index `start` on.
 *   MWL_TRACE     struct mwl_req_trace -> hdr.ret 0, then, on the same connection, one packet
 *                 per trace record (struct mwl_hdr with op MWL_TRACE and seq the record
 *                 number, struct mwl_trace_rec, payload) until the client closes it.
 *
 * Rights (SO_PEERCRED): INFO is open to every client of the domain. SOCKETS shows a client of
 * uid 0 or of mwcommsd's own uid every socket, any other client its own uid's only. TRACE
 * (it shows every application's bytes) is for uid 0 and mwcommsd's uid: -EPERM otherwise.
 */
#ifndef MWCOMMS_INTROSPECT_H
#define MWCOMMS_INTROSPECT_H

#include <stdint.h>

#include "mwcomms/local.h"

#define MWL_INFO 64
#define MWL_SOCKETS 65
#define MWL_TRACE 66

#define MWL_INFO_OPS 32       /* calls counted by op: ops 0..31 (18 and above: none yet) */
#define MWL_INFO_CMDS 16      /* INS requests counted by enum mw_cmd */
#define MWL_INFO_ERRNOS 48    /* distinct errnos reported (the first ones seen) */

struct mwl_errno_count {
    int32_t err;              /* negative errno */
    uint32_t pad;
    uint64_t count;           /* local answers that carried it */
};

struct mwl_info {
    uint32_t version;         /* MWL_VERSION */
    uint32_t features;        /* MWL_FEAT_*, as HELLO answers */
    int32_t link;             /* 1 attached, 0 detached, -EPROTO detached by a violation,
                               * -EPIPE detached because the INS vanished */
    uint32_t pid;             /* mwcommsd's */
    uint64_t now_ns;          /* CLOCK_REALTIME, at the answer */
    uint64_t started_ns;      /* when the engine was created */
    uint64_t attached_ns;     /* when the current (or last) INS connection was attached; 0 never */
    uint32_t port;            /* local event channel port (attached) */
    uint32_t cmd_slots;       /* command ring: slots */
    uint32_t cmd_outstanding; /* requests in the ring not answered yet */
    uint32_t cmd_queued;      /* requests waiting for a free slot */
    uint32_t fq_len, fq_used; /* frontend -> INS event queue: records, not yet taken */
    uint32_t bq_len, bq_used; /* INS -> frontend event queue: records, published not taken */
    uint32_t sock_slots;      /* socket table entries */
    uint32_t slots_used;      /* entries in use */
    uint32_t data_pages;      /* data area pages */
    uint32_t data_free;       /* of which free */
    uint32_t clients;         /* control connections now */
    uint32_t sockets;         /* forwarded sockets now (ended ones remembered included) */
    uint32_t zombies;         /* ended sockets remembered */
    uint32_t tracers;         /* MWL_TRACE connections now */
    uint64_t notifies;        /* event channel notifications sent to the INS */
    uint64_t wakeups;         /* event channel notifications received from it */
    uint64_t trace_records;   /* records handed to tracers */
    uint64_t trace_dropped;   /* records lost because a tracer was slow */
    /* the counters of struct mwfe_stats (mwfront.h) */
    uint64_t sockets_total, bytes_tx, bytes_rx, calls, call_errors, clients_dropped;
    uint64_t ins_requests, attaches, violations, dgrams_dropped;
    uint64_t calls_by_op[MWL_INFO_OPS];     /* local calls answered, by enum mwl_op */
    uint64_t ins_by_cmd[MWL_INFO_CMDS];     /* requests put in the command ring, by mw_cmd */
    uint64_t errors_other;    /* errors beyond the MWL_INFO_ERRNOS distinct ones */
    uint32_t nerrnos;         /* entries used in errors[] */
    uint32_t pad;
    struct mwl_errno_count errors[MWL_INFO_ERRNOS];     /* local answers, by errno */
    uint64_t ins_errors_other;
    uint32_t nins_errnos;
    uint32_t pad2;
    struct mwl_errno_count ins_errors[MWL_INFO_ERRNOS]; /* INS responses, by errno */
    char why[200];            /* the reason of the last self-detach, "" if none */
};

struct mwl_req_sockets {      /* MWL_SOCKETS */
    uint32_t start;           /* first table index to report (0 at first) */
    uint32_t pad;
};

struct mwl_rsp_sockets {
    uint32_t count;           /* struct mwl_sockinfo that follow */
    uint32_t next;            /* index to ask for next; 0: that was the last page */
};

/* The socket states of mwcommsd (fe_priv.h enum fe_sk_state). */
#define MWL_SK_OPENING 1      /* SOCKET or ACCEPT sent to the INS, not answered */
#define MWL_SK_OPEN 2         /* created, not connected (or datagram) */
#define MWL_SK_CONNECTING 3
#define MWL_SK_CONNECTED 4
#define MWL_SK_LISTENING 5
#define MWL_SK_QUEUED 6       /* accepted by the INS, waiting for the application's accept */
#define MWL_SK_CLOSING 7
#define MWL_SK_ENDED 8        /* closed or failed, remembered for STATUS */

#define MWL_SKF_P_EOF 0x1u    /* the application shut its writing side */
#define MWL_SKF_P_HUP 0x2u    /* every copy of X is closed */
#define MWL_SKF_RX_DONE 0x4u  /* the end of the incoming stream was delivered */
#define MWL_SKF_SHUT_WR 0x8u  /* SHUTDOWN(SHUT_WR) sent to the INS */
#define MWL_SKF_LOST 0x10u    /* ended by the loss of the INS */
#define MWL_SKF_TX_WAIT 0x20u /* tx ring full: waiting for SPACE */
#define MWL_SKF_RX_WAIT 0x40u /* the application is not reading: P is full */
#define MWL_SKF_PREACCEPT 0x80u /* a listener's pre-posted ACCEPT: not yet a connection */

struct mwl_sockinfo {
    mwl_handle_t handle;
    uint32_t uid;             /* owner (SO_PEERCRED of the creating process) */
    int32_t pid;              /* the creating process (accepted: the listener's); 0 unknown */
    uint64_t x_ino;           /* inode of X: "socket:[x_ino]" in /proc/PID/fd of its holders */
    int32_t family, type, protocol;
    uint32_t state;           /* MWL_SK_* */
    uint32_t flags;           /* MWL_SKF_* */
    uint32_t slot;            /* INS socket slot; ~0u: none */
    int32_t error;            /* pending error (negative errno) */
    uint32_t tx_size, tx_used; /* tx byte ring: size, bytes the INS has not taken yet */
    uint32_t rx_size, rx_used; /* rx byte ring: size, bytes not yet written to P (both from
                                * the INS's index as read now, capped at the size) */
    uint32_t p_inq;           /* P: bytes the application wrote, not yet moved to tx */
    uint32_t p_outq;          /* P: bytes moved to the application, not yet read by it */
    uint32_t queued;          /* listener: accepted connections waiting for accept() */
    uint32_t accepts;         /* listener: ACCEPTs pre-posted in the INS */
    uint32_t pad;
    uint64_t bytes_tx;        /* application -> INS, payload bytes */
    uint64_t bytes_rx;        /* INS -> application, payload bytes */
    uint64_t created_ns;      /* CLOCK_REALTIME */
    struct mw_sockaddr local; /* as last learnt (BIND, CONNECT; accepted: the listener's);
                               * family 0: unknown */
    struct mw_sockaddr peer;
};

#define MWL_TRACE_SNAP_MAX 65536u

struct mwl_req_trace {        /* MWL_TRACE */
    uint32_t snaplen;         /* data bytes kept per data record (0: none, at most
                               * MWL_TRACE_SNAP_MAX) */
    uint32_t kinds;           /* mask of 1 << MWL_TR_*; 0: every kind */
};

/* Record kinds: the payload that follows struct mwl_trace_rec. */
#define MWL_TR_REQ 1          /* mwcommsd -> INS: the command slot as put in the ring (128 B) */
#define MWL_TR_RSP 2          /* INS -> mwcommsd: the response slot as taken (128 B), before
                               * any check: a violating response is traced too */
#define MWL_TR_EV_TX 3        /* mwcommsd -> INS: an event record (16 B) */
#define MWL_TR_EV_RX 4        /* INS -> mwcommsd: an event record (16 B), before checks */
#define MWL_TR_DATA_TX 5      /* application bytes put in a tx ring: struct mw_sockaddr
                               * (datagram: its destination; stream: zero), then the first
                               * min(len, snaplen) bytes */
#define MWL_TR_DATA_RX 6      /* bytes taken from an rx ring to the application: as DATA_TX,
                               * the address being a datagram's source */

#define MWL_TRF_TRUNC 0x1u    /* data record: fewer bytes follow than `len` */

struct mwl_trace_rec {
    uint64_t ns;              /* CLOCK_REALTIME */
    uint16_t kind;            /* MWL_TR_* */
    uint16_t flags;           /* MWL_TRF_* */
    uint32_t slot;            /* INS socket slot the record is about; ~0u: none */
    mwl_handle_t handle;      /* the forwarded socket; 0: none or unknown */
    int32_t pid;              /* its creating process; 0: unknown */
    uint32_t len;             /* data records: bytes moved; others: payload bytes */
    uint32_t dropped;         /* records this tracer lost since its previous record */
    uint32_t pad;
};

_Static_assert(sizeof(struct mwl_errno_count) == 16, "errno count");
_Static_assert(sizeof(struct mwl_info) == 2368, "engine info");
_Static_assert(sizeof(struct mwl_sockinfo) == 176, "socket info");
_Static_assert(sizeof(struct mwl_trace_rec) == 40, "trace record");
_Static_assert(sizeof(struct mwl_req_trace) == 8, "trace request");

#endif /* MWCOMMS_INTROSPECT_H */
