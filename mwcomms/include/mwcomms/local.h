/*
 * The local protocol between tcp_ip_wrapper.so (the shim, inside each application) and
 * mwcommsd (the frontend driver of the protected domain). docs/local-protocol.md is its prose.
 *
 * Transport: an AF_UNIX SOCK_SEQPACKET connection to mwcommsd's control socket (path in the
 * environment variable MWCOMMS_SOCKET, else MWL_DEFAULT_SOCKET). One message per packet. The
 * shim opens one connection per thread, lazily, and makes one call at a time on it; a child
 * after fork() opens its own. Requests carry a sequence number that the response echoes, so a
 * shim that gave up waiting (EINTR) can drop a late response.
 *
 * File descriptors travel as SCM_RIGHTS: mwcommsd creates each forwarded socket as an
 * AF_UNIX socketpair, keeps one end and sends the other to the application in the response to
 * SOCKET or ACCEPT. That end is the application's socket: the kernel moves its bytes.
 * IDENTIFY carries an fd the other way, so that a process that inherited a socket across exec
 * (and so lost the shim's table) can ask mwcommsd which socket it is.
 *
 * Stream sockets: the application's fd is a SOCK_STREAM socketpair end; bytes flow raw.
 * Datagram sockets: a SOCK_SEQPACKET socketpair end; every packet starts with struct
 * mwl_dgram (destination on send, source on receive), which the shim adds and strips in its
 * send and receive calls.
 *
 * Fixed-width fields, host byte order (both ends are on the same machine), except the port and
 * address bytes of struct mw_sockaddr (network order, as proto.h). Errors are negative errno.
 * mwcommsd trusts nothing a shim sends: any process of the domain may connect, and it may only
 * name sockets created for a process of the same user (checked with SO_PEERCRED).
 */
#ifndef MWCOMMS_LOCAL_H
#define MWCOMMS_LOCAL_H

#include <stdint.h>

#include "mwcomms/proto.h"

#define MWL_VERSION 1
#define MWL_DEFAULT_SOCKET "/run/mwcomms/control.sock"
#define MWL_MSG_MAX 65536u       /* largest packet either way */

enum mwl_op {
    MWL_HELLO = 1,        /* version check; answers the daemon's version and features */
    MWL_SOCKET = 2,       /* -> fd (SCM_RIGHTS) + handle */
    MWL_IDENTIFY = 3,     /* fd (SCM_RIGHTS) -> handle, family, type; -ENOTSOCK if not ours */
    MWL_CONNECT = 4,
    MWL_BIND = 5,
    MWL_LISTEN = 6,
    MWL_ACCEPT = 7,       /* -> fd (SCM_RIGHTS) + handle + peer; -EAGAIN when none is queued */
    MWL_GETSOCKNAME = 8,
    MWL_GETPEERNAME = 9,
    MWL_GETSOCKOPT = 10,
    MWL_SETSOCKOPT = 11,
    MWL_SHUTDOWN = 12,
    MWL_CLOSE = 13,       /* the last fd of the socket is being closed (a hint; HUP also tells) */
    MWL_GETADDRINFO = 14,
    MWL_GETNAMEINFO = 15,
    MWL_IOCTL = 16,
    MWL_STATUS = 17,      /* pending error and state of a socket (SO_ERROR, read after EOF) */
    MWL_OP_MAX_ = 18
};
/* Ops 64..66 are mwctl's introspection ops (mwcomms/introspect.h); the shim never sends them. */

struct mwl_hdr {
    uint32_t len;         /* bytes of the whole message, header included */
    uint16_t op;          /* enum mwl_op; a response repeats its request's */
    uint16_t flags;       /* MWL_F_* */
    uint32_t seq;         /* chosen by the shim, echoed */
    int32_t ret;          /* response: >= 0 or -errno; request: 0 */
};

#define MWL_F_NONBLOCK 0x1u   /* CONNECT/ACCEPT: the application's socket is non-blocking */
#define MWL_F_CLOEXEC 0x2u    /* SOCKET/ACCEPT: receive the fd close-on-exec */
#define MWL_F_IDLE_TOKEN 0x4u /* SOCKET, stream: X holds one byte (readable) until the socket
                               * connects or listens; the shim then sends X with CONNECT and
                               * LISTEN, and mwcommsd takes the byte back out of it (the
                               * shim fails reads of a never connected socket: ENOTCONN) */

/* A forwarded socket as mwcommsd names it: slot and generation, never reused while the
 * application may still hold the old one. */
typedef uint64_t mwl_handle_t;

struct mwl_hello {            /* MWL_HELLO, both ways */
    uint32_t version;         /* MWL_VERSION */
    uint32_t features;        /* answer: MWL_FEAT_*; request: 0 */
};

#define MWL_FEAT_IPV6 0x1u    /* negotiated with the INS now */
#define MWL_FEAT_UDP 0x2u
#define MWL_FEAT_DNS 0x4u
#define MWL_FEAT_INS_UP 0x100u /* an INS is connected */

struct mwl_req_socket {       /* MWL_SOCKET */
    int32_t family;           /* AF_INET, AF_INET6 */
    int32_t type;             /* SOCK_STREAM, SOCK_DGRAM (flags stripped) */
    int32_t protocol;
    uint32_t pad;
};

struct mwl_rsp_socket {       /* MWL_SOCKET, MWL_ACCEPT, MWL_IDENTIFY */
    mwl_handle_t handle;
    int32_t family;
    int32_t type;
    struct mw_sockaddr peer;  /* ACCEPT: the peer's address */
};

struct mwl_req_addr {         /* CONNECT, BIND */
    mwl_handle_t handle;
    struct mw_sockaddr addr;
    uint32_t filler;          /* CONNECT with MWL_F_NONBLOCK: bytes the shim wrote into the
                               * socketpair (after shrinking its SO_SNDBUF) to make it
                               * unwritable until the connection is established; mwcommsd
                               * discards exactly these bytes when it is */
    uint32_t sndbuf;          /* CONNECT with MWL_F_NONBLOCK: the SO_SNDBUF value to put back
                               * then (the request carries the application's fd as SCM_RIGHTS
                               * for that, which mwcommsd closes once done) */
};

/* IDENTIFY has no body: the header and one fd. */

struct mwl_req_handle {       /* GETSOCKNAME, GETPEERNAME, CLOSE, STATUS, ACCEPT, LISTEN, SHUTDOWN */
    mwl_handle_t handle;
    int32_t arg;              /* LISTEN: backlog; SHUTDOWN: how; ACCEPT: accept4 flags */
    uint32_t pad;
};

struct mwl_rsp_addr {         /* GETSOCKNAME, GETPEERNAME */
    struct mw_sockaddr addr;
};

struct mwl_req_sockopt {      /* GETSOCKOPT, SETSOCKOPT: the value follows (SET) */
    mwl_handle_t handle;
    int32_t level;
    int32_t name;
    uint32_t len;             /* SET: bytes that follow; GET: room for the value */
    uint32_t pad;
};

struct mwl_rsp_sockopt {      /* GETSOCKOPT: len bytes of value follow */
    uint32_t len;
    uint32_t pad;
};

struct mwl_rsp_status {       /* STATUS */
    int32_t error;            /* pending socket error (negative errno), 0 if none; reading it
                               * clears it, as SO_ERROR does */
    uint32_t state;           /* MWL_ST_* */
};

#define MWL_ST_CONNECTING 1
#define MWL_ST_CONNECTED 2
#define MWL_ST_LISTENING 3
#define MWL_ST_CLOSED 4       /* the INS connection is gone: the socket is dead */

struct mwl_req_getaddrinfo {  /* node_len bytes of node then service_len bytes of service follow */
    int32_t flags;
    int32_t family;
    int32_t socktype;
    int32_t protocol;
    uint16_t node_len;        /* 0: NULL */
    uint16_t service_len;     /* 0: NULL */
    uint32_t pad;
};
/* GETADDRINFO and GETNAMEINFO response: hdr.ret = 0, then struct mwl_rsp_gai and the answer of
 * proto.h (struct mw_ai_answer, entries, canonical name). */
struct mwl_rsp_gai {
    int32_t status;           /* 0 or EAI_* */
    int32_t sys_errno;        /* with EAI_SYSTEM */
    uint32_t len;             /* answer bytes that follow */
    uint32_t pad;
};

struct mwl_req_getnameinfo {
    struct mw_sockaddr addr;
    int32_t flags;
    uint32_t hostlen;         /* room the caller has (0: host not wanted) */
    uint32_t servlen;
    uint32_t pad;
};

struct mwl_req_ioctl {
    mwl_handle_t handle;
    uint32_t request;         /* MW_IOCTL_* of proto.h */
    uint32_t pad;
};

/* The header of every packet of a datagram socket's socketpair. */
struct mwl_dgram {
    struct mw_sockaddr addr;  /* send: destination (family 0: the connected peer);
                               * receive: source */
    uint32_t flags;           /* receive: MSG_TRUNC when the datagram was cut; MWL_DGRAM_F_ERROR */
    uint32_t len;             /* receive: the datagram's full length; with MWL_DGRAM_F_ERROR the
                               * errno */
};

/* Receive: not a datagram but the socket's pending error (an ICMP error the INS met, e.g.
 * ECONNREFUSED for a connected UDP socket), errno in `len`, no payload. The receive call that
 * reads it fails with that errno, as native recv() reports a pending error once; the shim
 * first takes the error with STATUS (which clears it, as SO_ERROR does) and skips the packet
 * when STATUS has none any more (SO_ERROR already reported it). */
#define MWL_DGRAM_F_ERROR 0x80000000u

_Static_assert(sizeof(struct mwl_hdr) == 16, "local header");
_Static_assert(sizeof(struct mwl_dgram) == 40, "datagram header");
_Static_assert(sizeof(struct mwl_rsp_socket) == 48, "socket response");
_Static_assert(sizeof(struct mwl_req_addr) == 48, "address request");
_Static_assert(sizeof(struct mwl_req_handle) == 16, "handle request");
_Static_assert(sizeof(struct mwl_req_sockopt) == 24, "sockopt request");
_Static_assert(sizeof(struct mwl_req_getaddrinfo) == 24, "getaddrinfo request");
_Static_assert(sizeof(struct mwl_req_getnameinfo) == 48, "getnameinfo request");
_Static_assert(sizeof(struct mwl_rsp_gai) == 16, "resolver response");

#endif /* MWCOMMS_LOCAL_H */
