/*
 * mwcomms wire codec: receiver checks and canonical builders (see mwcomms/codec.h).
 *
 * Each check function walks the fields of one message in the order of docs/protocol.md,
 * "Receiver checks", and stops at the first violation. The reason strings are shared word for
 * word with tools/codec.py; a test compares them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "mwcomms/codec.h"

#define FAIL(reason)                 \
    do {                             \
        if (why)                     \
            *why = (reason);         \
        return -EPROTO;              \
    } while (0)

/* Propagate a failed sub-check (its reason is already set). */
#define CHECK(expr)                  \
    do {                             \
        int rc_ = (expr);            \
        if (rc_ < 0)                 \
            return rc_;              \
    } while (0)

static int all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

static int has_nul(const void *p, size_t n)
{
    return n && memchr(p, 0, n) != NULL;
}

static uint64_t data_bytes(const struct mw_limits *lim)
{
    return (uint64_t)lim->data_pages * MW_PAGE_SIZE;
}

/* Commands whose `sock` names a socket slot; the others carry sock = 0. */
static int cmd_has_sock(uint32_t cmd)
{
    return cmd != MW_CMD_GETADDRINFO && cmd != MW_CMD_GETNAMEINFO && cmd != MW_CMD_PING;
}

static int cmd_known(uint32_t cmd)
{
    return cmd >= MW_CMD_SOCKET && cmd < MW_CMD_MAX_;
}

const char *mw_cmd_name(uint32_t cmd)
{
    static const char *const names[MW_CMD_MAX_] = {
        [MW_CMD_SOCKET] = "SOCKET",           [MW_CMD_CONNECT] = "CONNECT",
        [MW_CMD_BIND] = "BIND",               [MW_CMD_LISTEN] = "LISTEN",
        [MW_CMD_ACCEPT] = "ACCEPT",           [MW_CMD_SHUTDOWN] = "SHUTDOWN",
        [MW_CMD_CLOSE] = "CLOSE",             [MW_CMD_GETSOCKOPT] = "GETSOCKOPT",
        [MW_CMD_SETSOCKOPT] = "SETSOCKOPT",   [MW_CMD_GETSOCKNAME] = "GETSOCKNAME",
        [MW_CMD_GETPEERNAME] = "GETPEERNAME", [MW_CMD_GETADDRINFO] = "GETADDRINFO",
        [MW_CMD_GETNAMEINFO] = "GETNAMEINFO", [MW_CMD_IOCTL] = "IOCTL",
        [MW_CMD_PING] = "PING",
    };

    return cmd_known(cmd) ? names[cmd] : NULL;
}

/* ---- checks of the shared pieces ------------------------------------------------------------ */

int mw_sockaddr_check(const struct mw_sockaddr *sa, unsigned int families, const char **why)
{
    unsigned int fam;

    switch (sa->family) {
    case MW_AF_UNSPEC:
        fam = MW_FAMS_UNSPEC;
        break;
    case MW_AF_INET:
        fam = MW_FAMS_INET;
        break;
    case MW_AF_INET6:
        fam = MW_FAMS_INET6;
        break;
    default:
        fam = 0;
    }
    if (!(fam & families))
        FAIL("address family not allowed");
    if (sa->pad)
        FAIL("address padding not zero");
    if (fam == MW_FAMS_UNSPEC &&
        (sa->port || sa->flowinfo || sa->scope_id || !all_zero(sa->addr, sizeof(sa->addr))))
        FAIL("address unused bytes not zero");
    if (fam == MW_FAMS_INET && (sa->flowinfo || sa->scope_id || !all_zero(sa->addr + 4, 12)))
        FAIL("address unused bytes not zero");
    return 0;
}

static int ring_check(uint32_t off, uint8_t order, const struct mw_limits *lim, const char **why)
{
    if (order < MW_RING_ORDER_MIN || order > MW_RING_ORDER_MAX)
        FAIL("ring order out of range");
    if (off % MW_PAGE_SIZE)
        FAIL("ring offset not page aligned");
    if ((uint64_t)off + (1ull << order) > data_bytes(lim))
        FAIL("ring outside the data area");
    return 0;
}

static int rings_check(const struct mw_rings *r, const struct mw_limits *lim, const char **why)
{
    CHECK(ring_check(r->tx_off, r->tx_order, lim, why));
    CHECK(ring_check(r->rx_off, r->rx_order, lim, why));
    if (!all_zero(r->pad, sizeof(r->pad)))
        FAIL("body padding not zero");
    return 0;
}

static int ool_check(const struct mw_ool *o, const struct mw_limits *lim, const char **why)
{
    if (o->len > MW_OOL_MAX)
        FAIL("out-of-line buffer too long");
    if (o->off % MW_OOL_ALIGN)
        FAIL("out-of-line buffer not aligned");
    if ((uint64_t)o->off + o->len > data_bytes(lim))
        FAIL("out-of-line buffer outside the data area");
    return 0;
}

/* The bytes of a body after its struct must be zero. */
static int tail_check(const void *body, size_t used, size_t size, const char **why)
{
    if (!all_zero((const uint8_t *)body + used, size - used))
        FAIL("unused body bytes not zero");
    return 0;
}

/* ---- requests ------------------------------------------------------------------------------- */

static int req_socket_check(const struct mw_req_socket *b, const struct mw_limits *lim,
                            const char **why)
{
    if (b->family != MW_AF_INET && b->family != MW_AF_INET6)
        FAIL("socket family not supported");
    if (b->type != MW_SOCK_STREAM && b->type != MW_SOCK_DGRAM)
        FAIL("socket type not supported");
    if (b->protocol != 0 &&
        b->protocol != (b->type == MW_SOCK_STREAM ? MW_IPPROTO_TCP : MW_IPPROTO_UDP))
        FAIL("socket protocol does not match its type");
    return rings_check(&b->rings, lim, why);
}

static int req_accept_check(const struct mw_req *req, const struct mw_limits *lim,
                            const char **why)
{
    const struct mw_req_accept *b = &req->u.accept;

    if (b->new_sock >= lim->sock_slots)
        FAIL("socket slot out of range");
    if (b->new_sock == req->sock)
        FAIL("accept into the listening socket slot");
    if (b->flags)
        FAIL("accept flags not zero");
    return rings_check(&b->rings, lim, why);
}

static int req_sockopt_check(const struct mw_req_sockopt *b, int is_set,
                             const struct mw_limits *lim, const char **why)
{
    if (b->pad)
        FAIL("body padding not zero");
    if (b->len > MW_OOL_MAX)
        FAIL("option length too long");
    if (b->len <= MW_OPT_INLINE_MAX) {
        size_t used = is_set ? b->len : 0;

        if (b->ool.off || b->ool.len)
            FAIL("inline option with an out-of-line buffer");
        if (!all_zero(b->val + used, sizeof(b->val) - used))
            FAIL("unused body bytes not zero");
        return 0;
    }
    CHECK(ool_check(&b->ool, lim, why));
    if (b->ool.len != b->len)
        FAIL("out-of-line length does not match option length");
    if (!all_zero(b->val, sizeof(b->val)))
        FAIL("unused body bytes not zero");
    return 0;
}

static int req_getaddrinfo_check(const struct mw_req_getaddrinfo *b,
                                 const struct mw_limits *lim, const char **why)
{
    CHECK(ool_check(&b->ool, lim, why));
    if (b->node_len > MW_GAI_NODE_MAX)
        FAIL("node too long");
    if (b->service_len > MW_GAI_SERVICE_MAX)
        FAIL("service too long");
    if (b->ool.len < sizeof(struct mw_ai_answer) ||
        b->ool.len < (uint32_t)b->node_len + b->service_len)
        FAIL("out-of-line buffer too short");
    if (b->ai_flags & ~MW_AI_FLAGS_ALL)
        FAIL("addrinfo flags not supported");
    if (b->ai_family != MW_AF_UNSPEC && b->ai_family != MW_AF_INET &&
        b->ai_family != MW_AF_INET6)
        FAIL("addrinfo family not supported");
    if (b->ai_socktype != 0 && b->ai_socktype != MW_SOCK_STREAM &&
        b->ai_socktype != MW_SOCK_DGRAM)
        FAIL("addrinfo socktype not supported");
    if (b->ai_protocol != 0 && b->ai_protocol != MW_IPPROTO_TCP &&
        b->ai_protocol != MW_IPPROTO_UDP)
        FAIL("addrinfo protocol not supported");
    if (b->pad)
        FAIL("body padding not zero");
    return 0;
}

static int req_getnameinfo_check(const struct mw_req_getnameinfo *b,
                                 const struct mw_limits *lim, const char **why)
{
    CHECK(ool_check(&b->ool, lim, why));
    if (b->ool.len < sizeof(struct mw_ni_answer))
        FAIL("out-of-line buffer too short");
    CHECK(mw_sockaddr_check(&b->addr, MW_FAMS_IP, why));
    if (b->flags & ~MW_NI_FLAGS_ALL)
        FAIL("nameinfo flags not supported");
    if (b->pad)
        FAIL("body padding not zero");
    return 0;
}

static int req_ioctl_check(const struct mw_req_ioctl *b, const char **why)
{
    if (b->request < MW_IOCTL_SIOCATMARK || b->request > MW_IOCTL_SIOCINQ)
        FAIL("ioctl request not supported");
    if (b->pad)
        FAIL("body padding not zero");
    if (b->ool.off || b->ool.len)
        FAIL("ioctl buffer not zero");
    return 0;
}

/* Bytes of the request body each command uses; the rest must be zero. */
static size_t req_body_used(uint32_t cmd)
{
    switch (cmd) {
    case MW_CMD_SOCKET:
        return sizeof(struct mw_req_socket);
    case MW_CMD_CONNECT:
    case MW_CMD_BIND:
        return sizeof(struct mw_req_addr);
    case MW_CMD_LISTEN:
        return sizeof(struct mw_req_listen);
    case MW_CMD_ACCEPT:
        return sizeof(struct mw_req_accept);
    case MW_CMD_SHUTDOWN:
        return sizeof(struct mw_req_shutdown);
    case MW_CMD_GETSOCKOPT:
    case MW_CMD_SETSOCKOPT:
        return sizeof(struct mw_req_sockopt);
    case MW_CMD_GETADDRINFO:
        return sizeof(struct mw_req_getaddrinfo);
    case MW_CMD_GETNAMEINFO:
        return sizeof(struct mw_req_getnameinfo);
    case MW_CMD_IOCTL:
        return sizeof(struct mw_req_ioctl);
    case MW_CMD_PING:
        return sizeof(struct mw_req_ping);
    default:                /* CLOSE, GETSOCKNAME, GETPEERNAME */
        return 0;
    }
}

int mw_req_check(const struct mw_req *req, const struct mw_limits *lim, const char **why)
{
    if (req->flags)
        FAIL("request flags not zero");
    if (req->pad)
        FAIL("request padding not zero");
    if (!cmd_known(req->cmd)) {
        if (why)
            *why = "command unknown";
        return -EOPNOTSUPP;
    }
    if (cmd_has_sock(req->cmd) && req->sock >= lim->sock_slots)
        FAIL("socket slot out of range");
    if (!cmd_has_sock(req->cmd) && req->sock)
        FAIL("socket slot not zero for a command without socket");

    switch (req->cmd) {
    case MW_CMD_SOCKET:
        CHECK(req_socket_check(&req->u.socket, lim, why));
        break;
    case MW_CMD_CONNECT:
        CHECK(mw_sockaddr_check(&req->u.addr.addr, MW_FAMS_UNSPEC | MW_FAMS_IP, why));
        break;
    case MW_CMD_BIND:
        CHECK(mw_sockaddr_check(&req->u.addr.addr, MW_FAMS_IP, why));
        break;
    case MW_CMD_LISTEN:
        if (req->u.listen.pad)
            FAIL("body padding not zero");
        break;
    case MW_CMD_ACCEPT:
        CHECK(req_accept_check(req, lim, why));
        break;
    case MW_CMD_SHUTDOWN:
        if (req->u.shutdown.how < 0 || req->u.shutdown.how > 2)
            FAIL("shutdown how out of range");
        if (req->u.shutdown.pad)
            FAIL("body padding not zero");
        break;
    case MW_CMD_GETSOCKOPT:
    case MW_CMD_SETSOCKOPT:
        CHECK(req_sockopt_check(&req->u.sockopt, req->cmd == MW_CMD_SETSOCKOPT, lim, why));
        break;
    case MW_CMD_GETADDRINFO:
        CHECK(req_getaddrinfo_check(&req->u.getaddrinfo, lim, why));
        break;
    case MW_CMD_GETNAMEINFO:
        CHECK(req_getnameinfo_check(&req->u.getnameinfo, lim, why));
        break;
    case MW_CMD_IOCTL:
        CHECK(req_ioctl_check(&req->u.ioctl, why));
        break;
    default:                /* CLOSE, GETSOCKNAME, GETPEERNAME, PING: no field to check */
        break;
    }
    return tail_check(req->u.raw, req_body_used(req->cmd), MW_REQ_BODY_SIZE, why);
}

/* ---- responses ------------------------------------------------------------------------------ */

static int rsp_gai_check(const struct mw_rsp_gai *g, const char **why)
{
    if (g->status > 0 || g->status < MW_EAI_MIN)
        FAIL("resolver status out of range");
    if (g->status == MW_EAI_SYSTEM ? (g->sys_errno >= 0 || g->sys_errno < -MW_ERRNO_MAX)
                                   : g->sys_errno != 0)
        FAIL("system errno does not match status");
    if (g->status == 0 ? (g->len < sizeof(struct mw_ai_answer) || g->len > MW_OOL_MAX)
                       : g->len != 0)
        FAIL("answer length out of range");
    if (g->pad)
        FAIL("body padding not zero");
    return 0;
}

static int rsp_sockopt_check(const struct mw_rsp_sockopt *o, const char **why)
{
    size_t used;

    if (o->pad)
        FAIL("body padding not zero");
    if (o->len > MW_OOL_MAX)
        FAIL("option length too long");
    used = o->len <= MW_OPT_INLINE_MAX ? o->len : 0;
    if (!all_zero(o->val + used, sizeof(o->val) - used))
        FAIL("unused body bytes not zero");
    return 0;
}

int mw_rsp_check(const struct mw_rsp *rsp, const struct mw_limits *lim, const char **why)
{
    size_t used = 0;

    if (rsp->flags)
        FAIL("response flags not zero");
    if (rsp->pad[0] || rsp->pad[1])
        FAIL("response padding not zero");
    if (!cmd_known(rsp->cmd))
        FAIL("response command unknown");
    if (cmd_has_sock(rsp->cmd) && rsp->sock >= lim->sock_slots)
        FAIL("socket slot out of range");
    if (!cmd_has_sock(rsp->cmd) && rsp->sock)
        FAIL("socket slot not zero for a command without socket");
    if (rsp->ret < -MW_ERRNO_MAX)
        FAIL("error code out of range");
    if (rsp->ret > 0 && rsp->cmd != MW_CMD_IOCTL)
        FAIL("positive result for a command without one");
    if (rsp->ret < 0) {
        if (!all_zero(rsp->u.raw, sizeof(rsp->u.raw)))
            FAIL("error response with a body");
        return 0;
    }

    switch (rsp->cmd) {
    case MW_CMD_CONNECT:
    case MW_CMD_BIND:
    case MW_CMD_ACCEPT:
    case MW_CMD_GETSOCKNAME:
    case MW_CMD_GETPEERNAME:
        CHECK(mw_sockaddr_check(&rsp->u.addr.addr, MW_FAMS_IP, why));
        used = sizeof(struct mw_rsp_addr);
        break;
    case MW_CMD_GETSOCKOPT:
        CHECK(rsp_sockopt_check(&rsp->u.sockopt, why));
        used = sizeof(struct mw_rsp_sockopt);
        break;
    case MW_CMD_GETADDRINFO:
    case MW_CMD_GETNAMEINFO:
        CHECK(rsp_gai_check(&rsp->u.gai, why));
        used = sizeof(struct mw_rsp_gai);
        break;
    case MW_CMD_PING:
        used = sizeof(struct mw_rsp_ping);
        break;
    default:                /* SOCKET, LISTEN, SHUTDOWN, CLOSE, SETSOCKOPT, IOCTL: no body */
        break;
    }
    return tail_check(rsp->u.raw, used, MW_RSP_BODY_SIZE, why);
}

int mw_rsp_match(const struct mw_rsp *rsp, const struct mw_req *req, const char **why)
{
    if (rsp->id != req->id || rsp->cmd != req->cmd || rsp->sock != req->sock)
        FAIL("response does not match its request");
    if (rsp->ret < 0)
        return 0;
    if (rsp->cmd == MW_CMD_GETSOCKOPT && rsp->u.sockopt.len > req->u.sockopt.len)
        FAIL("option longer than the room given");
    if (rsp->cmd == MW_CMD_GETADDRINFO && rsp->u.gai.len > req->u.getaddrinfo.ool.len)
        FAIL("answer longer than its buffer");
    if (rsp->cmd == MW_CMD_GETNAMEINFO && rsp->u.gai.len > req->u.getnameinfo.ool.len)
        FAIL("answer longer than its buffer");
    return 0;
}

/* ---- events, datagram headers --------------------------------------------------------------- */

int mw_event_check(const struct mw_event *ev, const struct mw_limits *lim, int from_ins,
                   const char **why)
{
    if (ev->flags)
        FAIL("event flags not zero");
    if (ev->type < MW_EV_DATA || ev->type >= MW_EV_MAX_)
        FAIL("event type unknown");
    if (ev->type == MW_EV_STATE && !from_ins)
        FAIL("state event from the frontend");
    if (ev->sock >= lim->sock_slots)
        FAIL("socket slot out of range");
    return 0;
}

int mw_dgram_check(const struct mw_dgram_hdr *h, uint32_t ring_size, int from_ins,
                   const char **why)
{
    if (h->flags)
        FAIL("datagram flags not zero");
    if (h->len > MW_DGRAM_MAX)
        FAIL("datagram too long");
    if (MW_DGRAM_RECORD(h->len) > ring_size)
        FAIL("datagram record larger than its ring");
    return mw_sockaddr_check(&h->addr, from_ins ? MW_FAMS_IP : MW_FAMS_UNSPEC | MW_FAMS_IP, why);
}

/* ---- out-of-line blobs ---------------------------------------------------------------------- */

int mw_gai_query_check(const void *buf, uint32_t len, uint32_t node_len, uint32_t service_len,
                       const char **why)
{
    if (node_len > MW_GAI_NODE_MAX)
        FAIL("node too long");
    if (service_len > MW_GAI_SERVICE_MAX)
        FAIL("service too long");
    if (node_len + service_len > len)
        FAIL("query longer than its buffer");
    if (has_nul(buf, node_len + service_len))
        FAIL("name contains a NUL byte");
    return 0;
}

static int ai_entry_check(const struct mw_ai_entry *e, const char **why)
{
    if (e->family != MW_AF_INET && e->family != MW_AF_INET6)
        FAIL("addrinfo entry family not supported");
    if (e->socktype != MW_SOCK_STREAM && e->socktype != MW_SOCK_DGRAM &&
        e->socktype != MW_SOCK_RAW)
        FAIL("addrinfo entry socktype not supported");
    if (e->protocol != 0 && e->protocol != MW_IPPROTO_TCP && e->protocol != MW_IPPROTO_UDP)
        FAIL("addrinfo entry protocol not supported");
    if (e->pad)
        FAIL("addrinfo entry padding not zero");
    if (e->addr.family != e->family)
        FAIL("addrinfo entry address family mismatch");
    return mw_sockaddr_check(&e->addr, MW_FAMS_IP, why);
}

int mw_ai_answer_check(const void *buf, uint32_t len, const char **why)
{
    const uint8_t *p = buf;
    struct mw_ai_answer hdr;
    struct mw_ai_entry e;

    if (len < sizeof(hdr))
        FAIL("answer shorter than its header");
    memcpy(&hdr, p, sizeof(hdr));
    if (hdr.count > MW_AI_ENTRIES_MAX)
        FAIL("too many addrinfo entries");
    if (hdr.canon_len > MW_AI_CANON_MAX)
        FAIL("canonical name too long");
    if (sizeof(hdr) + (uint64_t)hdr.count * sizeof(e) + hdr.canon_len != len)
        FAIL("answer length does not match its contents");
    for (uint32_t i = 0; i < hdr.count; i++) {
        memcpy(&e, p + sizeof(hdr) + i * sizeof(e), sizeof(e));
        CHECK(ai_entry_check(&e, why));
    }
    if (has_nul(p + len - hdr.canon_len, hdr.canon_len))
        FAIL("name contains a NUL byte");
    return 0;
}

int mw_ni_answer_check(const void *buf, uint32_t len, const char **why)
{
    const uint8_t *p = buf;
    struct mw_ni_answer hdr;

    if (len < sizeof(hdr))
        FAIL("answer shorter than its header");
    memcpy(&hdr, p, sizeof(hdr));
    if (hdr.host_len > MW_NI_HOST_MAX)
        FAIL("host name too long");
    if (hdr.serv_len > MW_NI_SERV_MAX)
        FAIL("service name too long");
    if (sizeof(hdr) + (uint64_t)hdr.host_len + hdr.serv_len != len)
        FAIL("answer length does not match its contents");
    if (has_nul(p + sizeof(hdr), hdr.host_len + hdr.serv_len))
        FAIL("name contains a NUL byte");
    return 0;
}

/* ---- builders ------------------------------------------------------------------------------- */

void mw_sockaddr_build(struct mw_sockaddr *sa, uint16_t family, uint16_t port,
                       const uint8_t *addr, uint32_t flowinfo, uint32_t scope_id)
{
    memset(sa, 0, sizeof(*sa));
    sa->family = family;
    if (family == MW_AF_INET) {
        sa->port = htons(port);
        memcpy(sa->addr, addr, 4);
    } else if (family == MW_AF_INET6) {
        sa->port = htons(port);
        sa->flowinfo = htonl(flowinfo);
        memcpy(sa->addr, addr, 16);
        sa->scope_id = scope_id;
    }
}

void mw_rings_build(struct mw_rings *r, uint32_t tx_off, uint32_t rx_off, uint8_t tx_order,
                    uint8_t rx_order)
{
    memset(r, 0, sizeof(*r));
    r->tx_off = tx_off;
    r->rx_off = rx_off;
    r->tx_order = tx_order;
    r->rx_order = rx_order;
}

static void req_header(struct mw_req *r, uint32_t id, uint16_t cmd, uint32_t sock)
{
    memset(r, 0, sizeof(*r));
    r->id = id;
    r->cmd = cmd;
    r->sock = sock;
}

void mw_req_build_socket(struct mw_req *r, uint32_t id, uint32_t sock, uint16_t family,
                         uint16_t type, int32_t protocol, const struct mw_rings *rings)
{
    req_header(r, id, MW_CMD_SOCKET, sock);
    r->u.socket.family = family;
    r->u.socket.type = type;
    r->u.socket.protocol = protocol;
    mw_rings_build(&r->u.socket.rings, rings->tx_off, rings->rx_off, rings->tx_order,
                   rings->rx_order);
}

void mw_req_build_connect(struct mw_req *r, uint32_t id, uint32_t sock,
                          const struct mw_sockaddr *addr)
{
    req_header(r, id, MW_CMD_CONNECT, sock);
    r->u.addr.addr = *addr;
}

void mw_req_build_bind(struct mw_req *r, uint32_t id, uint32_t sock,
                       const struct mw_sockaddr *addr)
{
    req_header(r, id, MW_CMD_BIND, sock);
    r->u.addr.addr = *addr;
}

void mw_req_build_listen(struct mw_req *r, uint32_t id, uint32_t sock, int32_t backlog)
{
    req_header(r, id, MW_CMD_LISTEN, sock);
    r->u.listen.backlog = backlog;
}

void mw_req_build_accept(struct mw_req *r, uint32_t id, uint32_t sock, uint32_t new_sock,
                         const struct mw_rings *rings)
{
    req_header(r, id, MW_CMD_ACCEPT, sock);
    r->u.accept.new_sock = new_sock;
    mw_rings_build(&r->u.accept.rings, rings->tx_off, rings->rx_off, rings->tx_order,
                   rings->rx_order);
}

void mw_req_build_shutdown(struct mw_req *r, uint32_t id, uint32_t sock, int32_t how)
{
    req_header(r, id, MW_CMD_SHUTDOWN, sock);
    r->u.shutdown.how = how;
}

void mw_req_build_close(struct mw_req *r, uint32_t id, uint32_t sock)
{
    req_header(r, id, MW_CMD_CLOSE, sock);
}

static void req_sockopt(struct mw_req *r, int32_t level, int32_t name, uint32_t len,
                        uint32_t ool_off, uint32_t ool_len)
{
    r->u.sockopt.level = level;
    r->u.sockopt.name = name;
    r->u.sockopt.len = len;
    r->u.sockopt.ool.off = ool_off;
    r->u.sockopt.ool.len = ool_len;
}

void mw_req_build_getsockopt(struct mw_req *r, uint32_t id, uint32_t sock, int32_t level,
                             int32_t name, uint32_t len, uint32_t ool_off, uint32_t ool_len)
{
    req_header(r, id, MW_CMD_GETSOCKOPT, sock);
    req_sockopt(r, level, name, len, ool_off, ool_len);
}

void mw_req_build_setsockopt(struct mw_req *r, uint32_t id, uint32_t sock, int32_t level,
                             int32_t name, uint32_t len, uint32_t ool_off, uint32_t ool_len,
                             const void *val)
{
    req_header(r, id, MW_CMD_SETSOCKOPT, sock);
    req_sockopt(r, level, name, len, ool_off, ool_len);
    if (len <= MW_OPT_INLINE_MAX && len)
        memcpy(r->u.sockopt.val, val, len);
}

void mw_req_build_getsockname(struct mw_req *r, uint32_t id, uint32_t sock)
{
    req_header(r, id, MW_CMD_GETSOCKNAME, sock);
}

void mw_req_build_getpeername(struct mw_req *r, uint32_t id, uint32_t sock)
{
    req_header(r, id, MW_CMD_GETPEERNAME, sock);
}

void mw_req_build_getaddrinfo(struct mw_req *r, uint32_t id, uint32_t ool_off, uint32_t ool_len,
                              uint16_t node_len, uint16_t service_len, int32_t ai_flags,
                              int32_t ai_family, int32_t ai_socktype, int32_t ai_protocol)
{
    req_header(r, id, MW_CMD_GETADDRINFO, 0);
    r->u.getaddrinfo.ool.off = ool_off;
    r->u.getaddrinfo.ool.len = ool_len;
    r->u.getaddrinfo.node_len = node_len;
    r->u.getaddrinfo.service_len = service_len;
    r->u.getaddrinfo.ai_flags = ai_flags;
    r->u.getaddrinfo.ai_family = ai_family;
    r->u.getaddrinfo.ai_socktype = ai_socktype;
    r->u.getaddrinfo.ai_protocol = ai_protocol;
}

void mw_req_build_getnameinfo(struct mw_req *r, uint32_t id, uint32_t ool_off, uint32_t ool_len,
                              const struct mw_sockaddr *addr, int32_t flags)
{
    req_header(r, id, MW_CMD_GETNAMEINFO, 0);
    r->u.getnameinfo.ool.off = ool_off;
    r->u.getnameinfo.ool.len = ool_len;
    r->u.getnameinfo.addr = *addr;
    r->u.getnameinfo.flags = flags;
}

void mw_req_build_ioctl(struct mw_req *r, uint32_t id, uint32_t sock, uint32_t request)
{
    req_header(r, id, MW_CMD_IOCTL, sock);
    r->u.ioctl.request = request;
}

void mw_req_build_ping(struct mw_req *r, uint32_t id, uint64_t arg)
{
    req_header(r, id, MW_CMD_PING, 0);
    r->u.ping.arg = arg;
}

void mw_rsp_build(struct mw_rsp *r, uint32_t id, uint16_t cmd, uint32_t sock, int32_t ret)
{
    memset(r, 0, sizeof(*r));
    r->id = id;
    r->cmd = cmd;
    r->sock = sock;
    r->ret = ret;
}

void mw_rsp_build_addr(struct mw_rsp *r, uint32_t id, uint16_t cmd, uint32_t sock,
                       const struct mw_sockaddr *addr)
{
    mw_rsp_build(r, id, cmd, sock, 0);
    r->u.addr.addr = *addr;
}

void mw_rsp_build_sockopt(struct mw_rsp *r, uint32_t id, uint32_t sock, uint32_t len,
                          const void *val)
{
    mw_rsp_build(r, id, MW_CMD_GETSOCKOPT, sock, 0);
    r->u.sockopt.len = len;
    if (len <= MW_OPT_INLINE_MAX && len)
        memcpy(r->u.sockopt.val, val, len);
}

void mw_rsp_build_gai(struct mw_rsp *r, uint32_t id, uint16_t cmd, int32_t status,
                      int32_t sys_errno, uint32_t len)
{
    mw_rsp_build(r, id, cmd, 0, 0);
    r->u.gai.status = status;
    r->u.gai.sys_errno = sys_errno;
    r->u.gai.len = len;
}

void mw_rsp_build_ping(struct mw_rsp *r, uint32_t id, uint64_t arg)
{
    mw_rsp_build(r, id, MW_CMD_PING, 0, 0);
    r->u.ping.arg = arg;
}

void mw_event_build(struct mw_event *ev, uint32_t sock, uint16_t type, uint64_t arg)
{
    memset(ev, 0, sizeof(*ev));
    ev->sock = sock;
    ev->type = type;
    ev->arg = arg;
}

void mw_dgram_build(struct mw_dgram_hdr *h, uint32_t len, const struct mw_sockaddr *addr)
{
    memset(h, 0, sizeof(*h));
    h->len = len;
    h->addr = *addr;
}

void mw_ai_entry_build(struct mw_ai_entry *e, int32_t socktype, int32_t protocol,
                       const struct mw_sockaddr *addr)
{
    memset(e, 0, sizeof(*e));
    e->family = addr->family;
    e->socktype = socktype;
    e->protocol = protocol;
    e->addr = *addr;
}

int mw_gai_query_build(void *buf, uint32_t room, const void *node, uint32_t node_len,
                       const void *service, uint32_t service_len)
{
    uint8_t *p = buf;

    if ((uint64_t)node_len + service_len > room)
        return -ENOSPC;
    if (node_len)
        memcpy(p, node, node_len);
    if (service_len)
        memcpy(p + node_len, service, service_len);
    return (int)(node_len + service_len);
}

int mw_ai_answer_build(void *buf, uint32_t room, const struct mw_ai_entry *entries,
                       uint32_t count, const void *canon, uint32_t canon_len)
{
    struct mw_ai_answer hdr = { .count = count, .canon_len = canon_len };
    uint64_t total = sizeof(hdr) + (uint64_t)count * sizeof(*entries) + canon_len;
    uint8_t *p = buf;

    if (total > room || total > MW_OOL_MAX)
        return -ENOSPC;
    memcpy(p, &hdr, sizeof(hdr));
    for (uint32_t i = 0; i < count; i++) {
        struct mw_ai_entry e;

        mw_ai_entry_build(&e, entries[i].socktype, entries[i].protocol, &entries[i].addr);
        memcpy(p + sizeof(hdr) + i * sizeof(e), &e, sizeof(e));
    }
    if (canon_len)
        memcpy(p + total - canon_len, canon, canon_len);
    return (int)total;
}

int mw_ni_answer_build(void *buf, uint32_t room, const void *host, uint32_t host_len,
                       const void *serv, uint32_t serv_len)
{
    struct mw_ni_answer hdr = { .host_len = host_len, .serv_len = serv_len };
    uint64_t total = sizeof(hdr) + (uint64_t)host_len + serv_len;
    uint8_t *p = buf;

    if (total > room || total > MW_OOL_MAX)
        return -ENOSPC;
    memcpy(p, &hdr, sizeof(hdr));
    if (host_len)
        memcpy(p + sizeof(hdr), host, host_len);
    if (serv_len)
        memcpy(p + sizeof(hdr) + host_len, serv, serv_len);
    return (int)total;
}

/* ---- normalizers ---------------------------------------------------------------------------- */

/* Re-encode an address from its decoded fields (host order in, network order out). */
static void sockaddr_rebuild(struct mw_sockaddr *out, const struct mw_sockaddr *in)
{
    mw_sockaddr_build(out, in->family, ntohs(in->port), in->addr, ntohl(in->flowinfo),
                      in->scope_id);
}

int mw_sockaddr_normalize(const void *in, void *out, unsigned int families, const char **why)
{
    struct mw_sockaddr sa, res;

    memcpy(&sa, in, sizeof(sa));
    CHECK(mw_sockaddr_check(&sa, families, why));
    sockaddr_rebuild(&res, &sa);
    memcpy(out, &res, sizeof(res));
    return 0;
}

int mw_req_normalize(const void *in, void *out, const struct mw_limits *lim, const char **why)
{
    struct mw_req q, r;
    struct mw_sockaddr sa;
    int rc;

    memcpy(&q, in, sizeof(q));
    rc = mw_req_check(&q, lim, why);
    if (rc < 0 && rc != -EOPNOTSUPP)
        return rc;

    switch (q.cmd) {
    case MW_CMD_SOCKET:
        mw_req_build_socket(&r, q.id, q.sock, q.u.socket.family, q.u.socket.type,
                            q.u.socket.protocol, &q.u.socket.rings);
        break;
    case MW_CMD_CONNECT:
        sockaddr_rebuild(&sa, &q.u.addr.addr);
        mw_req_build_connect(&r, q.id, q.sock, &sa);
        break;
    case MW_CMD_BIND:
        sockaddr_rebuild(&sa, &q.u.addr.addr);
        mw_req_build_bind(&r, q.id, q.sock, &sa);
        break;
    case MW_CMD_LISTEN:
        mw_req_build_listen(&r, q.id, q.sock, q.u.listen.backlog);
        break;
    case MW_CMD_ACCEPT:
        mw_req_build_accept(&r, q.id, q.sock, q.u.accept.new_sock, &q.u.accept.rings);
        break;
    case MW_CMD_SHUTDOWN:
        mw_req_build_shutdown(&r, q.id, q.sock, q.u.shutdown.how);
        break;
    case MW_CMD_CLOSE:
        mw_req_build_close(&r, q.id, q.sock);
        break;
    case MW_CMD_GETSOCKOPT:
        mw_req_build_getsockopt(&r, q.id, q.sock, q.u.sockopt.level, q.u.sockopt.name,
                                q.u.sockopt.len, q.u.sockopt.ool.off, q.u.sockopt.ool.len);
        break;
    case MW_CMD_SETSOCKOPT:
        mw_req_build_setsockopt(&r, q.id, q.sock, q.u.sockopt.level, q.u.sockopt.name,
                                q.u.sockopt.len, q.u.sockopt.ool.off, q.u.sockopt.ool.len,
                                q.u.sockopt.val);
        break;
    case MW_CMD_GETSOCKNAME:
        mw_req_build_getsockname(&r, q.id, q.sock);
        break;
    case MW_CMD_GETPEERNAME:
        mw_req_build_getpeername(&r, q.id, q.sock);
        break;
    case MW_CMD_GETADDRINFO:
        mw_req_build_getaddrinfo(&r, q.id, q.u.getaddrinfo.ool.off, q.u.getaddrinfo.ool.len,
                                 q.u.getaddrinfo.node_len, q.u.getaddrinfo.service_len,
                                 q.u.getaddrinfo.ai_flags, q.u.getaddrinfo.ai_family,
                                 q.u.getaddrinfo.ai_socktype, q.u.getaddrinfo.ai_protocol);
        break;
    case MW_CMD_GETNAMEINFO:
        sockaddr_rebuild(&sa, &q.u.getnameinfo.addr);
        mw_req_build_getnameinfo(&r, q.id, q.u.getnameinfo.ool.off, q.u.getnameinfo.ool.len,
                                 &sa, q.u.getnameinfo.flags);
        break;
    case MW_CMD_IOCTL:
        mw_req_build_ioctl(&r, q.id, q.sock, q.u.ioctl.request);
        break;
    case MW_CMD_PING:
        mw_req_build_ping(&r, q.id, q.u.ping.arg);
        break;
    default:                /* unknown: the header the INS echoes in its -EOPNOTSUPP answer */
        req_header(&r, q.id, q.cmd, q.sock);
        break;
    }
    memcpy(out, &r, sizeof(r));
    return rc;
}

int mw_rsp_normalize(const void *in, void *out, const struct mw_limits *lim, const char **why)
{
    struct mw_rsp q, r;
    struct mw_sockaddr sa;

    memcpy(&q, in, sizeof(q));
    CHECK(mw_rsp_check(&q, lim, why));

    if (q.ret != 0) {
        mw_rsp_build(&r, q.id, q.cmd, q.sock, q.ret);
        goto out;
    }
    switch (q.cmd) {
    case MW_CMD_CONNECT:
    case MW_CMD_BIND:
    case MW_CMD_ACCEPT:
    case MW_CMD_GETSOCKNAME:
    case MW_CMD_GETPEERNAME:
        sockaddr_rebuild(&sa, &q.u.addr.addr);
        mw_rsp_build_addr(&r, q.id, q.cmd, q.sock, &sa);
        break;
    case MW_CMD_GETSOCKOPT:
        mw_rsp_build_sockopt(&r, q.id, q.sock, q.u.sockopt.len, q.u.sockopt.val);
        break;
    case MW_CMD_GETADDRINFO:
    case MW_CMD_GETNAMEINFO:
        mw_rsp_build_gai(&r, q.id, q.cmd, q.u.gai.status, q.u.gai.sys_errno, q.u.gai.len);
        break;
    case MW_CMD_PING:
        mw_rsp_build_ping(&r, q.id, q.u.ping.arg);
        break;
    default:
        mw_rsp_build(&r, q.id, q.cmd, q.sock, q.ret);
        break;
    }
out:
    memcpy(out, &r, sizeof(r));
    return 0;
}

int mw_event_normalize(const void *in, void *out, const struct mw_limits *lim, int from_ins,
                       const char **why)
{
    struct mw_event q, r;

    memcpy(&q, in, sizeof(q));
    CHECK(mw_event_check(&q, lim, from_ins, why));
    mw_event_build(&r, q.sock, q.type, q.arg);
    memcpy(out, &r, sizeof(r));
    return 0;
}

int mw_dgram_normalize(const void *in, void *out, uint32_t ring_size, int from_ins,
                       const char **why)
{
    struct mw_dgram_hdr q, r;
    struct mw_sockaddr sa;

    memcpy(&q, in, sizeof(q));
    CHECK(mw_dgram_check(&q, ring_size, from_ins, why));
    sockaddr_rebuild(&sa, &q.addr);
    mw_dgram_build(&r, q.len, &sa);
    memcpy(out, &r, sizeof(r));
    return 0;
}

int mw_ai_answer_normalize(const void *in, uint32_t len, void *out, const char **why)
{
    struct mw_ai_entry entries[MW_AI_ENTRIES_MAX];
    struct mw_ai_answer hdr;
    const uint8_t *p = in;

    CHECK(mw_ai_answer_check(in, len, why));
    memcpy(&hdr, p, sizeof(hdr));
    for (uint32_t i = 0; i < hdr.count; i++) {
        struct mw_ai_entry e;

        memcpy(&e, p + sizeof(hdr) + i * sizeof(e), sizeof(e));
        sockaddr_rebuild(&entries[i].addr, &e.addr);
        entries[i].socktype = e.socktype;
        entries[i].protocol = e.protocol;
    }
    return mw_ai_answer_build(out, len, entries, hdr.count, p + len - hdr.canon_len,
                              hdr.canon_len);
}

int mw_ni_answer_normalize(const void *in, uint32_t len, void *out, const char **why)
{
    struct mw_ni_answer hdr;
    const uint8_t *p = in;

    CHECK(mw_ni_answer_check(in, len, why));
    memcpy(&hdr, p, sizeof(hdr));
    return mw_ni_answer_build(out, len, p + sizeof(hdr), hdr.host_len,
                              p + sizeof(hdr) + hdr.host_len, hdr.serv_len);
}
