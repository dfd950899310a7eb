/*
 * The INS engine's private structures, shared by engine.c (loop, frontends, commands, sockets)
 * and dns.c (the resolver pool). Nothing here is shared memory: every field is the INS's own.
 */
#ifndef MWCOMMS_INS_PRIV_H
#define MWCOMMS_INS_PRIV_H

#include <netdb.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ins_engine.h"
#include "mwcomms/codec.h"
#include "mwcomms/proto.h"
#include "mwcomms/ring.h"

/* What an epoll registration points at: the first member of each registered object. */
enum ins_kind {
    INS_K_WAKE = 1,
    INS_K_DNS,
    INS_K_FRONT,
    INS_K_SOCK,
    INS_K_ORPHAN,
};

/* Slot states, as docs/protocol.md 8 (opening is instantaneous here: SOCKET is answered at
 * once; ACCEPT's new_sock is RESERVED until a connection arrives). */
enum ins_slot_state {
    INS_SLOT_FREE = 0,
    INS_SLOT_RESERVED,
    INS_SLOT_OPEN,
};

/* A pending ACCEPT on a listening socket, in arrival order. */
struct ins_accept {
    struct ins_accept *next;
    uint32_t id;
    uint32_t new_sock;
    struct mw_rings rings;     /* private copy of the request's rings */
};

struct ins_front;

struct ins_sock {
    int kind;                  /* INS_K_SOCK */
    struct ins_front *fe;
    struct ins_sock *next_dead;/* on the engine's graveyard until the epoll batch is over */
    uint32_t slot;
    int fd;
    int dead;                  /* closed: stale epoll events about it are ignored */
    uint16_t type;             /* MW_SOCK_STREAM or MW_SOCK_DGRAM */
    uint16_t family;           /* AF_INET or AF_INET6 */
    uint32_t ev;               /* epoll events registered (0: not registered) */
    unsigned listening:1;
    unsigned connecting:1;     /* a CONNECT is pending (connect_id) */
    unsigned connected:1;      /* stream: bytes flow between socket and rings */
    unsigned rx_ended:1;       /* rx ended with EOF or an error: nothing more is read */
    unsigned rx_full:1;        /* rx has no room: waiting for SPACE */
    unsigned tx_blocked:1;     /* the kernel refused tx bytes: waiting for EPOLLOUT */
    unsigned tx_dead:1;        /* sending failed for good: tx bytes are discarded */
    unsigned shut_pending:1;   /* SHUTDOWN(SHUT_WR) waits for tx to drain (shut_id) */
    unsigned shut_wr:1;        /* our sending side is shut down */
    unsigned linger_set:1;     /* SETSOCKOPT(SO_LINGER) was applied (here or on the listener) */
    unsigned rx_hot:2;         /* 2: bytes went into rx this period; 1: last one; 0: trimmed
                                * or never used (front_trim_rings) */
    uint32_t connect_id;
    uint32_t shut_id;
    struct ins_accept *accepts, **accepts_tail;
    struct mw_bring tx;        /* INS end: consumer */
    struct mw_bring rx;        /* INS end: producer */
    int32_t so_error;          /* an error the INS took from the kernel (a failed CONNECT's, a
                                * datagram's ICMP error met by recv()): GETSOCKOPT(SO_ERROR)
                                * reports it once, as the kernel would have */
};

/* The unsent tx bytes of a stream socket closed by the frontend: kept in private memory and
 * sent before the socket is closed for good, as close(2) leaves queued data to the kernel. */
struct ins_orphan {
    int kind;                  /* INS_K_ORPHAN */
    struct ins_front *fe;
    struct ins_orphan *next;   /* on the frontend's list */
    struct ins_orphan *next_dead;
    int dead;                  /* sent or failed: stale epoll events are ignored */
    int fd;
    int linger_set;            /* as its socket's: closing it looks at SO_LINGER */
    uint8_t *buf;
    uint32_t len, off;
};

struct ins_front {
    int kind;                  /* INS_K_FRONT */
    struct ins_engine *eng;
    struct ins_front *next;    /* the engine's list */
    struct ins_front *next_dead;
    int handle;
    uint32_t front_id;
    uint32_t features;
    int dead;                  /* detached: stale epoll events are ignored */
    int broken;                /* a violation: nothing more is read from the area */
    int disabled;              /* broken and its sockets already closed */
    int dirty;                 /* responses or events to push */
    int again;                 /* its last turn ended on the budget: more may be waiting */
    struct mw_area area;
    struct mw_limits lim;
    struct mw_cmd_back cmd;
    struct mw_evq fq;          /* consumer */
    struct mw_evq bq;          /* producer */
    struct mw_evtchn *ec;
    uint32_t port;
    int ec_fd;
    uint8_t *slot_state;       /* enum ins_slot_state, by slot */
    struct ins_sock **socks;   /* by slot, NULL when not open */
    struct ins_orphan *orphans;
    struct ins_dns_job *dns_wait, **dns_wait_tail;  /* resolver jobs not handed out yet */
    uint32_t dns_inflight;     /* jobs in the pool (at most half the workers) */
    uint32_t max_socks;
    uint64_t max_buf;
    struct ins_front_stats st;
};

/* A resolver job: built by the loop from a private copy of the query, run by a worker, handed
 * back through the done list and the DNS eventfd. */
struct ins_dns_job {
    struct ins_dns_job *next;
    uint64_t serial;           /* the frontend's; a detached frontend's results are dropped */
    uint32_t id;
    uint16_t cmd;              /* MW_CMD_GETADDRINFO or MW_CMD_GETNAMEINFO */
    uint32_t ool_off, ool_len;
    uint32_t features;
    /* query */
    char node[MW_GAI_NODE_MAX + 1];
    char service[MW_GAI_SERVICE_MAX + 1];
    int has_node, has_service;
    struct addrinfo hints;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int ni_flags;
    /* answer */
    int32_t status;
    int32_t sys_errno;
    uint32_t ans_len;
    uint8_t *ans;              /* ool_len bytes */
};

struct ins_engine {
    int kind_wake;             /* INS_K_WAKE: &kind_wake is the wake eventfd's tag */
    int kind_dns;              /* INS_K_DNS */
    struct ins_config cfg;
    int epfd;
    int wake_fd;               /* eventfd: stop, attach */
    int dns_fd;                /* eventfd: DNS results are on dns_done */
    int notify_fd;             /* eventfd: a frontend broke */
    pthread_mutex_t lock;      /* held by the loop while it works, by attach/detach/stats */
    int running;
    volatile int stop;
    struct ins_front *fronts;
    struct ins_front *dead_fronts;
    struct ins_sock *dead_socks;
    struct ins_orphan *dead_orphans;
    int next_handle;
    int64_t probe_at;          /* CLOCK_MONOTONIC ms of the next liveness kick */
    long nofile_logged;        /* CLOCK_MONOTONIC second of the last "out of fds" line */
    int trim_off;              /* idle rings cannot give their pages back here (Xen) */
    uint64_t next_serial;
    uint8_t scratch[MW_OOL_MAX + 64];   /* datagrams, socket options: the loop's only buffer */
    /* the resolver pool */
    pthread_mutex_t dns_lock;
    pthread_cond_t dns_cond;
    struct ins_dns_job *dns_queue, **dns_queue_tail;
    struct ins_dns_job *dns_done;
    int dns_quit;
    uint32_t dns_nthreads;
    pthread_t *dns_threads;
};

/* dns.c */
int ins_dns_start(struct ins_engine *e);
void ins_dns_stop(struct ins_engine *e);
void ins_dns_submit(struct ins_engine *e, struct ins_dns_job *job);
struct ins_dns_job *ins_dns_take_done(struct ins_engine *e);
void ins_dns_job_free(struct ins_dns_job *job);

/* engine.c */
void ins_log(struct ins_engine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ins_sockaddr_from(const struct sockaddr *sa, struct mw_sockaddr *out);
int ins_sockaddr_to(const struct mw_sockaddr *a, struct sockaddr_storage *ss, socklen_t *len);

#endif /* MWCOMMS_INS_PRIV_H */
