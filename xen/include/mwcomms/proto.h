/*
 * mwcomms wire protocol, version 1: the C reference of docs/protocol.md.
 *
 * This header describes the bytes that mwcommsd (the frontend, in the protected domain) and the
 * INS (the backend, in the isolated network stack domain) exchange through shared memory. The
 * prose in docs/protocol.md is the authority; where the two disagree, both are wrong until fixed.
 *
 * Rules that hold for every structure below:
 *  - Fixed-width fields, little-endian (both ends run on the same machine), except the port and
 *    address bytes of struct mw_sockaddr, which keep network byte order as in struct sockaddr.
 *  - Explicit padding, always written as zero and checked on receipt: a pad or an unused byte of a
 *    message body that is not zero is a protocol violation, so that a later version can give it
 *    a meaning (negotiated as a feature) and so that every valid message has exactly one
 *    encoding.
 *  - Every size is pinned by a static assert at the bottom of this file.
 *  - Errors travel as negative Linux errno values (int32_t).
 *  - Nothing read from shared memory is trusted: the receiver copies a message or an index once,
 *    then checks it (docs/protocol.md, "Receiver checks"). A peer that breaks a rule is
 *    disconnected.
 *
 * The shared area is granted by the frontend and mapped by the INS. It is laid out in pages:
 *
 *     page 0                     struct mw_ctrl_page: the indices of the rings below
 *     pages 1 .. C               command ring slots (C = cmd-ring-pages)
 *     next E pages               event queue, frontend -> INS (E = evq-pages)
 *     next E pages               event queue, INS -> frontend
 *     next T pages               socket table: sock-slots entries of struct mw_sock_shared
 *     next D pages               data area: per-socket byte rings and out-of-line buffers
 *
 * C, E, T and D come from XenStore (docs/protocol.md, "Negotiation"), never from shared memory.
 * C and E are powers of two (indices run free and are reduced modulo the slot count);
 * T = ceil(sock-slots / MW_SOCKS_PER_PAGE).
 */
#ifndef MWCOMMS_PROTO_H
#define MWCOMMS_PROTO_H

#include <stdint.h>

#define MW_PROTO_VERSION 1
#define MW_PAGE_SIZE 4096u

/* Limits of version 1. A value outside them in XenStore is a negotiation failure. */
#define MW_CMD_RING_PAGES_MAX 16u          /* up to 512 command slots */
#define MW_EVQ_PAGES_MAX 64u               /* up to 16384 events queued per direction */
#define MW_SOCK_SLOTS_MAX 65536u           /* sockets per frontend connection */
#define MW_DATA_PAGES_MAX (1u << 18)       /* 1 GiB of data area */
#define MW_RING_ORDER_MIN 12u              /* smallest byte ring: 4 KiB */
#define MW_RING_ORDER_MAX 24u              /* largest byte ring: 16 MiB */
#define MW_OPT_INLINE_MAX 88u              /* socket option values carried in the slot itself */
#define MW_OOL_MAX 65536u                  /* largest out-of-line buffer */
#define MW_DGRAM_MAX 65535u                /* largest datagram payload in a byte ring */
#define MW_OOL_ALIGN 8u                    /* out-of-line buffers start 8-byte aligned */
#define MW_ERRNO_MAX 4095                  /* errors are -1 .. -MW_ERRNO_MAX */
#define MW_GAI_NODE_MAX 1024u              /* GETADDRINFO query: node bytes */
#define MW_GAI_SERVICE_MAX 64u             /* GETADDRINFO query: service bytes */
#define MW_AI_ENTRIES_MAX 128u             /* GETADDRINFO answer: entries */
#define MW_AI_CANON_MAX 1024u              /* GETADDRINFO answer: canonical name bytes */
#define MW_NI_HOST_MAX 1024u               /* GETNAMEINFO answer: host bytes (NI_MAXHOST - 1) */
#define MW_NI_SERV_MAX 31u                 /* GETNAMEINFO answer: service bytes (NI_MAXSERV - 1) */

/* ------------------------------------------------------------------------------------------
 * Addresses. One fixed 32-byte form for IPv4 and IPv6; unused bytes are zero.
 * family is AF_INET (2) or AF_INET6 (10), or 0 for "no address" (an unspecified msg_name).
 * For AF_INET the four address bytes sit in addr[0..3].
 */
struct mw_sockaddr {
    uint16_t family;       /* MW_AF_INET, MW_AF_INET6 or MW_AF_UNSPEC */
    uint16_t port;         /* network byte order, as sin_port / sin6_port */
    uint32_t flowinfo;     /* IPv6 only, network byte order as sin6_flowinfo; 0 for IPv4 */
    uint8_t addr[16];      /* network byte order */
    uint32_t scope_id;     /* IPv6 only; 0 for IPv4 */
    uint32_t pad;
};

#define MW_AF_UNSPEC 0
#define MW_AF_INET 2
#define MW_AF_INET6 10

/* Socket types on the wire: SOCK_STREAM and SOCK_DGRAM only (no flags; the INS sockets are
 * always non-blocking and close-on-exec). MW_SOCK_RAW appears only in GETADDRINFO answers. */
#define MW_SOCK_STREAM 1
#define MW_SOCK_DGRAM 2
#define MW_SOCK_RAW 3

/* Protocols on the wire: 0 (the type's default), TCP with SOCK_STREAM, UDP with SOCK_DGRAM. */
#define MW_IPPROTO_TCP 6
#define MW_IPPROTO_UDP 17

/* ------------------------------------------------------------------------------------------
 * The command ring: requests from the frontend, responses from the INS, in the discipline of
 * Xen's io/ring.h. Slots are shared by requests and responses; indices run free (they wrap at
 * 2^32 and are reduced modulo the slot count, a power of two). The frontend produces requests
 * at req_prod and consumes responses; the INS consumes requests and produces responses at
 * rsp_prod. A response carries the id of its request; responses may come in any order, and a
 * request may stay pending for a long time (CONNECT, ACCEPT), so the frontend never has more
 * requests outstanding than there are slots.
 *
 * Notification suppression as in io/ring.h: a consumer about to sleep writes the index it
 * waits for into req_event / rsp_event; the producer kicks the event channel only when its new
 * producer index passes that value.
 */

enum mw_cmd {
    MW_CMD_SOCKET = 1,       /* create socket `sock` with its byte rings */
    MW_CMD_CONNECT = 2,      /* answered when the connection is established or has failed */
    MW_CMD_BIND = 3,
    MW_CMD_LISTEN = 4,
    MW_CMD_ACCEPT = 5,       /* answered when a connection has been accepted into new_sock */
    MW_CMD_SHUTDOWN = 6,     /* SHUT_WR takes effect after the tx ring is drained */
    MW_CMD_CLOSE = 7,        /* answered once the INS no longer touches the socket's memory */
    MW_CMD_GETSOCKOPT = 8,
    MW_CMD_SETSOCKOPT = 9,
    MW_CMD_GETSOCKNAME = 10,
    MW_CMD_GETPEERNAME = 11,
    MW_CMD_GETADDRINFO = 12, /* name resolution by the INS; query and answer out of line */
    MW_CMD_GETNAMEINFO = 13, /* address to name by the INS; answer out of line */
    MW_CMD_IOCTL = 14,       /* the few ioctls the INS answers: MW_IOCTL_* below */
    MW_CMD_PING = 15,        /* liveness and ring test; echoes arg */
    MW_CMD_MAX_ = 16
};

/* An out-of-line buffer: bytes of the data area named by offset and length. The frontend
 * allocates it before the request and frees it after the response. */
struct mw_ool {
    uint32_t off;          /* byte offset in the data area */
    uint32_t len;          /* length in bytes, <= MW_OOL_MAX */
};

/* Byte rings of one socket: two regions of the data area, each 2^order bytes. */
struct mw_rings {
    uint32_t tx_off;       /* frontend -> INS bytes; page aligned offset in the data area */
    uint32_t rx_off;       /* INS -> frontend bytes; page aligned offset in the data area */
    uint8_t tx_order;      /* MW_RING_ORDER_MIN .. MW_RING_ORDER_MAX */
    uint8_t rx_order;
    uint8_t pad[6];
};

struct mw_req_socket {
    uint16_t family;       /* MW_AF_INET or MW_AF_INET6 */
    uint16_t type;         /* MW_SOCK_STREAM or MW_SOCK_DGRAM */
    int32_t protocol;      /* 0, IPPROTO_TCP or IPPROTO_UDP */
    struct mw_rings rings;
};

struct mw_req_addr {       /* CONNECT, BIND */
    struct mw_sockaddr addr;
};

struct mw_req_listen {
    int32_t backlog;       /* any value; the INS clamps it as listen(2) does */
    uint32_t pad;
};

struct mw_req_accept {
    uint32_t new_sock;     /* a free socket slot that receives the connection */
    uint32_t flags;        /* 0 (accept4 flags stay in the protected domain) */
    struct mw_rings rings; /* byte rings of new_sock */
};

struct mw_req_shutdown {
    int32_t how;           /* SHUT_RD (0), SHUT_WR (1) or SHUT_RDWR (2) */
    uint32_t pad;
};

struct mw_req_sockopt {    /* GETSOCKOPT, SETSOCKOPT */
    int32_t level;
    int32_t name;
    uint32_t len;          /* value length (SET) or room for it (GET), <= MW_OOL_MAX */
    uint32_t pad;
    struct mw_ool ool;     /* when len > MW_OPT_INLINE_MAX: ool.len == len; else zero */
    uint8_t val[MW_OPT_INLINE_MAX]; /* SET: the value when len <= MW_OPT_INLINE_MAX */
};

/* GETADDRINFO: the out-of-line buffer holds node_len bytes of node then service_len bytes of
 * service, no terminators; the INS overwrites it with the answer (struct mw_ai_answer). */
struct mw_req_getaddrinfo {
    struct mw_ool ool;
    uint16_t node_len;     /* 0 = NULL node; <= MW_GAI_NODE_MAX */
    uint16_t service_len;  /* 0 = NULL service; <= MW_GAI_SERVICE_MAX */
    int32_t ai_flags;      /* AI_* of the hints: a subset of MW_AI_FLAGS_ALL */
    int32_t ai_family;     /* AF_UNSPEC, AF_INET or AF_INET6 */
    int32_t ai_socktype;   /* 0, SOCK_STREAM or SOCK_DGRAM */
    int32_t ai_protocol;
    uint32_t pad;
};

/* GETNAMEINFO: the answer (struct mw_ni_answer) is written into the out-of-line buffer. */
struct mw_req_getnameinfo {
    struct mw_ool ool;
    struct mw_sockaddr addr;
    int32_t flags;         /* NI_*: a subset of MW_NI_FLAGS_ALL */
    uint32_t pad;
};

/* glibc's AI_* hint flags the INS accepts: PASSIVE, CANONNAME, NUMERICHOST, V4MAPPED, ALL,
 * ADDRCONFIG, IDN, CANONIDN, NUMERICSERV. */
#define MW_AI_FLAGS_ALL 0x04ff
/* glibc's NI_* flags the INS accepts: NUMERICHOST, NUMERICSERV, NOFQDN, NAMEREQD, DGRAM, IDN. */
#define MW_NI_FLAGS_ALL 0x003f

struct mw_req_ioctl {
    uint32_t request;      /* MW_IOCTL_* */
    uint32_t pad;
    struct mw_ool ool;     /* zero in version 1: every MW_IOCTL_* answers in ret */
};

#define MW_IOCTL_SIOCATMARK 1   /* ret = 0 or 1 */
#define MW_IOCTL_SIOCOUTQ 2     /* ret = bytes unsent in the INS socket */
#define MW_IOCTL_SIOCINQ 3      /* ret = bytes unread in the INS socket */

struct mw_req_ping {
    uint64_t arg;
};

#define MW_REQ_BODY_SIZE 112

struct mw_req {
    uint32_t id;           /* chosen by the frontend, unique among outstanding requests */
    uint16_t cmd;          /* enum mw_cmd */
    uint16_t flags;        /* 0 in version 1 */
    uint32_t sock;         /* socket slot the request is about (0 where unused) */
    uint32_t pad;
    union {
        struct mw_req_socket socket;
        struct mw_req_addr addr;
        struct mw_req_listen listen;
        struct mw_req_accept accept;
        struct mw_req_shutdown shutdown;
        struct mw_req_sockopt sockopt;
        struct mw_req_getaddrinfo getaddrinfo;
        struct mw_req_getnameinfo getnameinfo;
        struct mw_req_ioctl ioctl;
        struct mw_req_ping ping;
        uint8_t raw[MW_REQ_BODY_SIZE];
    } u;
};

struct mw_rsp_addr {       /* GETSOCKNAME, GETPEERNAME, ACCEPT (peer), BIND/CONNECT (local) */
    struct mw_sockaddr addr;
};

struct mw_rsp_sockopt {    /* GETSOCKOPT: ret = 0 */
    uint32_t len;          /* bytes of value, <= the request's len; inline when
                            * <= MW_OPT_INLINE_MAX, else in the request's ool */
    uint32_t pad;
    uint8_t val[MW_OPT_INLINE_MAX];
};

struct mw_rsp_gai {        /* GETADDRINFO, GETNAMEINFO: ret = 0 once the resolver ran */
    int32_t status;        /* 0 or a glibc EAI_* code (negative, MW_EAI_MIN .. -1) */
    int32_t sys_errno;     /* negative errno when status is MW_EAI_SYSTEM, else 0 */
    uint32_t len;          /* bytes of answer in the out-of-line buffer; 0 when status != 0 */
    uint32_t pad;
};

#define MW_EAI_SYSTEM (-11)     /* glibc's EAI_SYSTEM */
#define MW_EAI_MIN (-105)       /* glibc's lowest EAI_* code (EAI_IDN_ENCODE) */

struct mw_rsp_ping {
    uint64_t arg;
};

#define MW_RSP_BODY_SIZE 104

struct mw_rsp {
    uint32_t id;           /* id of the request this answers */
    uint16_t cmd;          /* cmd of that request */
    uint16_t flags;        /* 0 in version 1 */
    uint32_t sock;         /* sock of that request */
    int32_t ret;           /* 0 success (> 0 only for IOCTL), < 0 negative Linux errno */
    uint32_t pad[2];
    union {
        struct mw_rsp_addr addr;
        struct mw_rsp_sockopt sockopt;
        struct mw_rsp_gai gai;
        struct mw_rsp_ping ping;
        uint8_t raw[MW_RSP_BODY_SIZE];
    } u;
};

#define MW_CMD_SLOT_SIZE 128u
#define MW_CMD_SLOTS_PER_PAGE (MW_PAGE_SIZE / MW_CMD_SLOT_SIZE)

union mw_cmd_slot {
    struct mw_req req;
    struct mw_rsp rsp;
};

/* ------------------------------------------------------------------------------------------
 * Event queues: one each way, of 16-byte records, single producer and single consumer. An
 * event names a socket and what changed; it is a hint: the receiver then reads the socket's
 * shared entry, which holds the truth. A producer that finds its queue full sets nothing in
 * the queue but bumps `overflow` in the control page; a consumer that sees overflow change
 * rescans every socket it has. So events are never lost, only merged.
 */
enum mw_ev_type {
    MW_EV_DATA = 1,        /* the producer of a byte ring of `sock` advanced its producer index */
    MW_EV_SPACE = 2,       /* the consumer of a byte ring of `sock` advanced its consumer index */
    MW_EV_STATE = 3,       /* INS -> frontend: rx_flags / error of `sock` changed */
    MW_EV_MAX_ = 4
};

struct mw_event {
    uint32_t sock;
    uint16_t type;         /* enum mw_ev_type */
    uint16_t flags;        /* 0 in version 1 */
    uint64_t arg;          /* informational (for traces): the new index; never trusted */
};

#define MW_EVENTS_PER_PAGE (MW_PAGE_SIZE / sizeof(struct mw_event))

/* ------------------------------------------------------------------------------------------
 * The control page (page 0). Fields are grouped by writer on separate cache lines, so that the
 * two sides never write the same line. All indices run free.
 */
struct mw_ctrl_front {     /* written by the frontend only */
    uint32_t req_prod;     /* command ring: requests produced */
    uint32_t rsp_event;    /* command ring: kick me when rsp_prod passes this */
    uint32_t fq_prod;      /* frontend -> INS event queue: events produced */
    uint32_t fq_overflow;  /* bumped when that queue was full; the INS rescans */
    uint32_t bq_cons;      /* INS -> frontend event queue: events consumed */
    uint32_t bq_event;     /* kick me when bq_prod passes this */
    uint32_t pad[10];
};

struct mw_ctrl_back {      /* written by the INS only */
    uint32_t rsp_prod;     /* command ring: responses produced */
    uint32_t req_event;    /* command ring: kick me when req_prod passes this */
    uint32_t bq_prod;      /* INS -> frontend event queue: events produced */
    uint32_t bq_overflow;  /* bumped when that queue was full; the frontend rescans */
    uint32_t fq_cons;      /* frontend -> INS event queue: events consumed */
    uint32_t fq_event;     /* kick me when fq_prod passes this */
    uint32_t pad[10];
};

struct mw_ctrl_page {
    struct mw_ctrl_front front;   /* cache line 0 */
    struct mw_ctrl_back back;     /* cache line 1 */
    uint8_t pad[MW_PAGE_SIZE - 128];
};

/* ------------------------------------------------------------------------------------------
 * The socket table: one 128-byte entry per socket slot. Each socket has two byte rings in the
 * data area, named by the SOCKET or ACCEPT request that created it:
 *   tx: frontend -> INS (the application's outgoing bytes)
 *   rx: INS -> frontend (the application's incoming bytes)
 * A byte ring is 2^order bytes; producer and consumer indices run free and count bytes;
 * prod - cons is the fill level and never exceeds the size. The `event` indices give
 * notification suppression per ring: a consumer that finds the ring empty writes the producer
 * index it waits for (prod_event) and a producer that finds it full writes the consumer index
 * it waits for (cons_event); the other side posts an MW_EV_DATA / MW_EV_SPACE event only when
 * it moves its index past that value.
 *
 * Stream sockets carry raw bytes. Datagram sockets carry records: struct mw_dgram_hdr, then
 * len bytes of payload, then zero padding to a multiple of 8; a record may wrap around the end
 * of the ring, and is never larger than the ring (a datagram that cannot fit is refused by the
 * frontend with EMSGSIZE, dropped by the INS).
 */
struct mw_sock_front {     /* written by the frontend only */
    uint32_t tx_prod;      /* bytes written into tx */
    uint32_t tx_cons_event;/* post SPACE when tx_cons passes this */
    uint32_t rx_cons;      /* bytes read from rx */
    uint32_t rx_prod_event;/* post DATA when rx_prod passes this */
    uint32_t pad[12];
};

struct mw_sock_back {      /* written by the INS only */
    uint32_t rx_prod;      /* bytes written into rx */
    uint32_t rx_cons_event;/* post SPACE when rx_cons passes this */
    uint32_t tx_cons;      /* bytes read from tx */
    uint32_t tx_prod_event;/* post DATA when tx_prod passes this */
    uint32_t rx_flags;     /* MW_RXF_*: what follows the last byte at rx_prod */
    int32_t error;         /* pending socket error (negative errno) when MW_RXF_ERROR is set */
    uint32_t pad[10];
};

#define MW_RXF_EOF 0x1u    /* the peer closed its sending side: no byte follows rx_prod */
#define MW_RXF_ERROR 0x2u  /* the connection failed with `error` (e.g. -ECONNRESET) */
#define MW_RXF_ALL_ (MW_RXF_EOF | MW_RXF_ERROR)

struct mw_sock_shared {
    struct mw_sock_front front;
    struct mw_sock_back back;
};

#define MW_SOCKS_PER_PAGE (MW_PAGE_SIZE / sizeof(struct mw_sock_shared))

struct mw_dgram_hdr {
    uint32_t len;          /* payload bytes, <= MW_DGRAM_MAX */
    uint32_t flags;        /* MSG_TRUNC-style flags: 0 in version 1 */
    struct mw_sockaddr addr; /* destination (tx) or source (rx); family 0 = connected peer */
};

#define MW_DGRAM_ALIGN 8u
#define MW_DGRAM_RECORD(len) (sizeof(struct mw_dgram_hdr) + \
                              (((uint64_t)(len) + MW_DGRAM_ALIGN - 1) & ~(uint64_t)(MW_DGRAM_ALIGN - 1)))

/* ------------------------------------------------------------------------------------------
 * Out-of-line answers of name resolution.
 *
 * GETADDRINFO: struct mw_ai_answer, then `count` struct mw_ai_entry, then canon_len bytes of
 * the canonical name (of the first entry, as glibc reports it), no terminator.
 * GETNAMEINFO: struct mw_ni_answer, then host_len bytes of host, then serv_len bytes of
 * service, no terminators.
 */
struct mw_ai_answer {
    uint32_t count;
    uint32_t canon_len;
};

struct mw_ai_entry {
    int32_t family;
    int32_t socktype;
    int32_t protocol;
    uint32_t pad;
    struct mw_sockaddr addr;
};

struct mw_ni_answer {
    uint32_t host_len;
    uint32_t serv_len;
};

/* ------------------------------------------------------------------------------------------ */
#define MW_STATIC_ASSERT(c, m) _Static_assert(c, m)
MW_STATIC_ASSERT(sizeof(struct mw_sockaddr) == 32, "mw_sockaddr is 32 bytes");
MW_STATIC_ASSERT(sizeof(struct mw_rings) == 16, "mw_rings is 16 bytes");
MW_STATIC_ASSERT(sizeof(struct mw_req_sockopt) == MW_REQ_BODY_SIZE, "sockopt body fills the slot");
MW_STATIC_ASSERT(sizeof(struct mw_req) == MW_CMD_SLOT_SIZE, "a request fills one slot");
MW_STATIC_ASSERT(sizeof(struct mw_rsp) == MW_CMD_SLOT_SIZE, "a response fills one slot");
MW_STATIC_ASSERT(sizeof(union mw_cmd_slot) == MW_CMD_SLOT_SIZE, "slot size");
MW_STATIC_ASSERT(sizeof(struct mw_event) == 16, "event record is 16 bytes");
MW_STATIC_ASSERT(sizeof(struct mw_ctrl_front) == 64, "front line");
MW_STATIC_ASSERT(sizeof(struct mw_ctrl_back) == 64, "back line");
MW_STATIC_ASSERT(sizeof(struct mw_ctrl_page) == MW_PAGE_SIZE, "control page is one page");
MW_STATIC_ASSERT(sizeof(struct mw_sock_shared) == 128, "socket entry is two cache lines");
MW_STATIC_ASSERT(sizeof(struct mw_dgram_hdr) == 40, "datagram header");
MW_STATIC_ASSERT(sizeof(struct mw_ai_entry) == 48, "addrinfo entry");

#endif /* MWCOMMS_PROTO_H */
