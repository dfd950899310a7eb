/*
 * mwcommsd engine internals: the objects of the loop. Private to mwcomms/engine/.
 *
 *   struct fe_client  one shim connection to the control socket (one call at a time)
 *   struct fe_sock    one forwarded socket: P, its INS slot, its byte rings, its state
 *   struct fe_op      one request to the INS, from its creation until its response (or the
 *                     loss of the INS) completes it
 *
 * Every fd the loop watches carries a struct fe_src as epoll data, naming its kind.
 */
#ifndef MWCOMMS_FE_PRIV_H
#define MWCOMMS_FE_PRIV_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "mwcomms/codec.h"
#include "mwcomms/local.h"
#include "mwcomms/ring.h"
#include "fe_buddy.h"
#include "mwfront.h"

enum fe_src_kind { SRC_LISTEN = 1, SRC_CLIENT, SRC_SOCK, SRC_EVTCHN, SRC_CTL };

struct fe_src {
    int kind;                  /* enum fe_src_kind */
    int fd;
    uint32_t events;           /* as registered with epoll; 0 and !in_epoll: not registered */
    int in_epoll;
};

struct fe_op;

struct fe_client {
    struct fe_src src;
    uid_t uid;                 /* SO_PEERCRED at accept */
    pid_t pid;
    struct fe_op *parked;      /* the call waiting for the INS, or NULL */
    uint32_t seq;              /* of the parked call */
    uint16_t lop;              /* its op (enum mwl_op) */
    struct fe_client *prev, *next;
};

enum fe_sk_state {
    SK_OPENING = 1,            /* SOCKET or ACCEPT sent, not answered */
    SK_OPEN,                   /* created, not connected (or a datagram socket) */
    SK_CONNECTING,             /* CONNECT outstanding */
    SK_CONNECTED,
    SK_LISTENING,
    SK_QUEUED,                 /* accepted by the INS, waiting for the application's accept */
    SK_CLOSING,                /* CLOSE sent (P may still be draining before it) */
    SK_ZOMBIE                  /* no slot, no P: remembered for STATUS until CLOSE/eviction */
};

struct fe_sock {
    struct fe_src src;         /* P */
    uint32_t idx, gen;         /* handle = gen << 32 | idx */
    int family, type, protocol;
    uid_t uid;
    int state;
    int x;                     /* our copy of X until it is handed over, else -1 */
    dev_t x_dev;               /* X's identity, for IDENTIFY and fds sent back */
    ino_t x_ino;
    uint32_t slot;             /* INS socket slot, when has_slot */
    int has_slot;
    uint32_t tx_page, rx_page; /* rings: first pages in the data area, when has_rings */
    uint8_t tx_order, rx_order;
    int has_rings;
    int live;                  /* the rings are open (the INS answered SOCKET/ACCEPT) */
    struct mw_bring tx, rx;
    int32_t error;             /* pending error (negative errno), cleared by STATUS/SO_ERROR */
    int p_eof;                 /* end of file read from P (the app shut its writing side) */
    int p_hup;                 /* HUP on P: every X is closed; drain then CLOSE */
    int rx_done;               /* the end of rx was delivered (P's writing side shut) */
    int rx_discard;            /* P refuses bytes (the app shut its reading side): drop rx */
    int shut_wr_sent;
    int tx_posted;
    int close_wait;            /* closing: CLOSE waits until the INS took every datagram */             /* DATA was posted for tx at least once */
    int tx_wait, rx_wait;      /* waiting for SPACE on tx / for P to take rx bytes */
    int tx_hot;                /* 2: bytes went into tx this period, 1: the last one, 0:
                                * pages given back or never used (rings_trim) */
    int tx_used, rx_used;      /* the ring carried bytes: trim its pages when freed */
    int connected_once;
    int want_token;            /* SOCKET asked for the idle token (MWL_F_IDLE_TOKEN) */
    int idle_token;            /* stream never connected nor listening: X holds one byte
                                * (readable, as a native one polls POLLHUP; the shim answers
                                * its reads ENOTCONN); taken through X at CONNECT/LISTEN */
    int err_fetch;             /* datagram: a GETSOCKOPT(SO_ERROR) after STATE is outstanding */
    int err_pkt;               /* datagram: sk->error is still to be announced on P */
    int lost;                  /* ended by the loss of the INS */
    int nb_x;                  /* non-blocking connect: our dup of X, else -1 */
    uint32_t filler, sndbuf;
    int accept_max, accepts_pending;
    int accept_starved;        /* listening, no ACCEPT pending: no slot or rings were free */
    int preaccept;             /* made for an ACCEPT the INS has not answered with success */
    int queued;                /* accepted connections waiting in aq */
    struct fe_sock *aq_head, *aq_tail, *aq_next; /* listener's queue / link in it */
    struct fe_sock *listener;  /* SK_QUEUED or an ACCEPT outstanding: its listener */
    int refs;                  /* ops naming this socket */
    struct mw_sockaddr local, peer; /* as last learnt (CONNECT, BIND, ACCEPT) */
    struct fe_sock *zprev, *znext; /* zombie FIFO */
};

enum fe_op_kind {
    OP_CALL = 1,               /* a client's call: answer the client */
    OP_NB_CONNECT,             /* non-blocking connect: finish the filler scheme */
    OP_PREACCEPT,              /* a pre-posted ACCEPT */
    OP_CLOSE,                  /* CLOSE after HUP or a failure */
    OP_SHUT_WR,                /* SHUTDOWN(SHUT_WR) after EOF on P */
    OP_DGRAM_ERR               /* GETSOCKOPT(SO_ERROR) after STATE on a datagram socket */
};

struct fe_op {
    int kind;
    struct fe_client *client;  /* OP_CALL: NULL once the client is gone */
    uint32_t seq;
    uint16_t lop;
    struct fe_sock *sk;        /* the socket the request is about (refs held) */
    struct fe_sock *newsk;     /* ACCEPT: the socket receiving the connection (refs held) */
    struct mw_req req;         /* the request as sent: mw_rsp_match checks the answer */
    int32_t ool_page;          /* out-of-line buffer: first page, or -1 */
    uint8_t ool_order;
    uint32_t ool_len;
    int sent;                  /* in the command ring (else waiting in the queue) */
    struct fe_op *qnext;       /* waiting for ring space */
    struct fe_op *prev, *next; /* every live op */
};

struct fe_ctl {                /* a call from another thread, carried out by the loop */
    int op;                    /* 1 attach, 2 detach */
    void *base;
    size_t size;
    struct mw_area_geom geom;
    struct mw_evtchn *ec;
    uint32_t port, features;
    int ret;
    int done;
};

struct mwfe {
    struct mwfe_config cfg;
    int ep;                    /* epoll */
    struct fe_src listen;      /* control socket */
    struct fe_src ctl;         /* eventfd: stop and attach/detach requests */
    int link_efd;              /* eventfd: the engine detached itself */
    char *path;
    int running, stopping;
    pthread_mutex_t lock;      /* guards ctl_req, running, link_why */
    pthread_cond_t cond;
    struct fe_ctl *ctl_req;

    struct fe_client *clients;
    uint32_t nclients;
    struct fe_sock **socks;    /* by local index; NULL: free */
    uint32_t *gens;            /* generation last given out at each index (from gen_base) */
    uint32_t gen_base;         /* random per instance: old handles do not alias new ones */
    struct fe_sock *grave_sk;  /* freed at the end of the round */
    struct fe_client *grave_c;
    uint32_t *free_idx, nfree_idx;
    struct fe_sock *zhead, *ztail;
    uint32_t nzombies;
    struct fe_op *ops;         /* every live op */
    struct fe_op *q_head, *q_tail; /* ops waiting for command ring space */
    uint8_t *scratch;          /* one datagram or one local message */
    uint8_t *msg;

    /* The INS connection, when attached. */
    int attached;
    int broken;                /* a violation was seen: detach at the next safe point */
    char why[200];
    int gone;                  /* broken because the INS vanished, not by a violation */
    int lost_errno;            /* how the engine detached itself: -EPROTO, -EPIPE, 0 */
    struct mw_area area;
    struct mw_limits lim;
    struct mw_cmd_front *cmd;
    struct mw_evq fq, bq;
    struct fe_src evsrc;       /* the event channel's fd */
    struct mw_evtchn *ec;
    uint32_t port, features;
    int kick;                  /* notify the INS before sleeping */
    int trim_off;              /* idle rings cannot give their pages back here (Xen) */
    struct fe_trim {           /* rings freed since the last sweep: trimmed if still free */
        uint32_t page;
        uint8_t order;
    } *trim_q;
    uint32_t ntrim_q;
    int64_t probe_at;          /* CLOCK_MONOTONIC ms of the next liveness kick (ins_probe) */
    struct fe_buddy buddy;
    struct fe_sock **by_slot;
    uint32_t *free_slots, nfree_slots;
    uint32_t nstarved;         /* listeners marked accept_starved */
    int refill_due;            /* rings or entries were given back: retry those listeners */
    int64_t refill_at;         /* CLOCK_MONOTONIC ms before which refill_starved waits */
    long short_logged[2];      /* CLOCK_MONOTONIC second of the last short_log line, by kind */

    struct mwfe_stats st;
    struct fe_is *is;          /* introspection (introspect.c): counters, tracers */
};

#endif /* MWCOMMS_FE_PRIV_H */
