/*
 * mwcomms wire codec: the receiver checks of docs/protocol.md for one message at a time, and a
 * canonical encoder per message kind.
 *
 * Checking. A receiver copies a message out of shared memory once (a struct assignment or a
 * memcpy into a local), then hands the copy to the mw_*_check function of its kind. The
 * function returns 0 when the message is valid, or -EPROTO and sets *why to a static string
 * naming the first check that failed, in the order of docs/protocol.md "Receiver checks". The
 * strings are the same as the Python codec's (mwcomms.tools.codec), word for word, so a log
 * line names the same rule whichever side wrote it. A -EPROTO means: tear the connection down
 * and log *why; the message must not be acted upon.
 *
 * The checks here see one message. Checks that need more state (is the socket slot open, does
 * a response answer an outstanding request) are the engines' job; mw_rsp_match covers the
 * part of the latter that only needs the request.
 *
 * Building. mw_*_build functions write a whole message from explicit field values: the buffer
 * is zeroed first, so pads and unused bytes are always zero, and ports and flow labels are
 * given in host order and stored in network order. mw_*_normalize decodes a message field by
 * field, checks it and re-encodes it with the builders; a valid message normalizes to itself,
 * byte for byte (every valid message has exactly one encoding). The tests use the pair to
 * show that this codec and the Python codec agree on every offset.
 *
 * None of these functions touch shared memory, allocate or block. `why` may be NULL.
 */
#ifndef MWCOMMS_CODEC_H
#define MWCOMMS_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "mwcomms/proto.h"

/* What the checks need to know about one connection: values negotiated through XenStore. */
struct mw_limits {
    uint32_t sock_slots;   /* socket slots (sock-slots): a valid slot is < sock_slots */
    uint32_t data_pages;   /* pages of the data area (data-pages): rings and OOL live inside */
};

/* Address families a check accepts, as a mask (mw_sockaddr_check). */
#define MW_FAMS_UNSPEC 0x1u
#define MW_FAMS_INET 0x2u
#define MW_FAMS_INET6 0x4u
#define MW_FAMS_IP (MW_FAMS_INET | MW_FAMS_INET6)

/* ---- checks ------------------------------------------------------------------------------- */

/**
 * Check an address: family in `families`, pad zero, the bytes the family does not use zero
 * (an AF_INET address uses port and addr[0..3]; "no address" uses nothing).
 * @return 0 or -EPROTO
 */
int mw_sockaddr_check(const struct mw_sockaddr *sa, unsigned int families, const char **why);

/**
 * Check a request, as the INS does on its copy of a command slot.
 * @return 0 (valid), -EOPNOTSUPP (well formed but `cmd` is not a command of this version: the
 *         INS answers it with ret = -EOPNOTSUPP and goes on), -EPROTO (violation)
 */
int mw_req_check(const struct mw_req *req, const struct mw_limits *lim, const char **why);

/**
 * Check a response, as the frontend does on its copy of a command slot.
 * @return 0 or -EPROTO
 */
int mw_rsp_check(const struct mw_rsp *rsp, const struct mw_limits *lim, const char **why);

/**
 * Check that a valid response answers `req`, the copy the frontend kept of the outstanding
 * request with the same id: same cmd and sock, and an answer no longer than the room given.
 * @return 0 or -EPROTO
 */
int mw_rsp_match(const struct mw_rsp *rsp, const struct mw_req *req, const char **why);

/**
 * Check an event record.
 * @param from_ins  nonzero for the INS -> frontend queue (the frontend checking), zero for the
 *                  frontend -> INS queue (the INS checking): MW_EV_STATE only travels from the INS
 * @return 0 or -EPROTO
 */
int mw_event_check(const struct mw_event *ev, const struct mw_limits *lim, int from_ins,
                   const char **why);

/**
 * Check a datagram record header read from a byte ring of `ring_size` bytes.
 * @param from_ins  nonzero for an rx record (source address: always AF_INET/AF_INET6), zero
 *                  for a tx record (destination, or MW_AF_UNSPEC for the connected peer)
 * @return 0 or -EPROTO
 */
int mw_dgram_check(const struct mw_dgram_hdr *h, uint32_t ring_size, int from_ins,
                   const char **why);

/**
 * Check the GETADDRINFO query in an out-of-line buffer (a copy of its `len` bytes).
 * @return 0 or -EPROTO
 */
int mw_gai_query_check(const void *buf, uint32_t len, uint32_t node_len, uint32_t service_len,
                       const char **why);

/**
 * Check a GETADDRINFO answer: `len` bytes (rsp.gai.len) copied out of the out-of-line buffer.
 * @return 0 or -EPROTO
 */
int mw_ai_answer_check(const void *buf, uint32_t len, const char **why);

/**
 * Check a GETNAMEINFO answer: `len` bytes (rsp.gai.len) copied out of the out-of-line buffer.
 * @return 0 or -EPROTO
 */
int mw_ni_answer_check(const void *buf, uint32_t len, const char **why);

/* ---- builders ----------------------------------------------------------------------------- */

/**
 * Build an address. `addr` holds 4 bytes (MW_AF_INET), 16 (MW_AF_INET6) or is ignored
 * (MW_AF_UNSPEC). port and flowinfo in host order; stored in network order.
 */
void mw_sockaddr_build(struct mw_sockaddr *sa, uint16_t family, uint16_t port,
                       const uint8_t *addr, uint32_t flowinfo, uint32_t scope_id);
void mw_rings_build(struct mw_rings *r, uint32_t tx_off, uint32_t rx_off, uint8_t tx_order,
                    uint8_t rx_order);

/* Requests: one builder per command; the whole slot is written. */
void mw_req_build_socket(struct mw_req *r, uint32_t id, uint32_t sock, uint16_t family,
                         uint16_t type, int32_t protocol, const struct mw_rings *rings);
void mw_req_build_connect(struct mw_req *r, uint32_t id, uint32_t sock,
                          const struct mw_sockaddr *addr);
void mw_req_build_bind(struct mw_req *r, uint32_t id, uint32_t sock,
                       const struct mw_sockaddr *addr);
void mw_req_build_listen(struct mw_req *r, uint32_t id, uint32_t sock, int32_t backlog);
void mw_req_build_accept(struct mw_req *r, uint32_t id, uint32_t sock, uint32_t new_sock,
                         const struct mw_rings *rings);
void mw_req_build_shutdown(struct mw_req *r, uint32_t id, uint32_t sock, int32_t how);
void mw_req_build_close(struct mw_req *r, uint32_t id, uint32_t sock);
void mw_req_build_getsockopt(struct mw_req *r, uint32_t id, uint32_t sock, int32_t level,
                             int32_t name, uint32_t len, uint32_t ool_off, uint32_t ool_len);
/* `val` holds len bytes when len <= MW_OPT_INLINE_MAX; otherwise the value is out of line. */
void mw_req_build_setsockopt(struct mw_req *r, uint32_t id, uint32_t sock, int32_t level,
                             int32_t name, uint32_t len, uint32_t ool_off, uint32_t ool_len,
                             const void *val);
void mw_req_build_getsockname(struct mw_req *r, uint32_t id, uint32_t sock);
void mw_req_build_getpeername(struct mw_req *r, uint32_t id, uint32_t sock);
void mw_req_build_getaddrinfo(struct mw_req *r, uint32_t id, uint32_t ool_off, uint32_t ool_len,
                              uint16_t node_len, uint16_t service_len, int32_t ai_flags,
                              int32_t ai_family, int32_t ai_socktype, int32_t ai_protocol);
void mw_req_build_getnameinfo(struct mw_req *r, uint32_t id, uint32_t ool_off, uint32_t ool_len,
                              const struct mw_sockaddr *addr, int32_t flags);
void mw_req_build_ioctl(struct mw_req *r, uint32_t id, uint32_t sock, uint32_t request);
void mw_req_build_ping(struct mw_req *r, uint32_t id, uint64_t arg);

/* Responses. mw_rsp_build: any response without a body (every error, and SOCKET, LISTEN,
 * SHUTDOWN, CLOSE, SETSOCKOPT, IOCTL on success). */
void mw_rsp_build(struct mw_rsp *r, uint32_t id, uint16_t cmd, uint32_t sock, int32_t ret);
void mw_rsp_build_addr(struct mw_rsp *r, uint32_t id, uint16_t cmd, uint32_t sock,
                       const struct mw_sockaddr *addr);
/* `val` holds len bytes when len <= MW_OPT_INLINE_MAX; otherwise the value is out of line. */
void mw_rsp_build_sockopt(struct mw_rsp *r, uint32_t id, uint32_t sock, uint32_t len,
                          const void *val);
void mw_rsp_build_gai(struct mw_rsp *r, uint32_t id, uint16_t cmd, int32_t status,
                      int32_t sys_errno, uint32_t len);
void mw_rsp_build_ping(struct mw_rsp *r, uint32_t id, uint64_t arg);

void mw_event_build(struct mw_event *ev, uint32_t sock, uint16_t type, uint64_t arg);
void mw_dgram_build(struct mw_dgram_hdr *h, uint32_t len, const struct mw_sockaddr *addr);
void mw_ai_entry_build(struct mw_ai_entry *e, int32_t socktype, int32_t protocol,
                       const struct mw_sockaddr *addr);

/**
 * Lay out a GETADDRINFO query (node bytes, then service bytes) in `buf`.
 * @return bytes written, or -ENOSPC when they do not fit in `room`
 */
int mw_gai_query_build(void *buf, uint32_t room, const void *node, uint32_t node_len,
                       const void *service, uint32_t service_len);
/**
 * Lay out a GETADDRINFO answer: header, `count` entries, then the canonical name.
 * @return bytes written (the rsp.gai.len to send), or -ENOSPC
 */
int mw_ai_answer_build(void *buf, uint32_t room, const struct mw_ai_entry *entries,
                       uint32_t count, const void *canon, uint32_t canon_len);
/**
 * Lay out a GETNAMEINFO answer: header, host bytes, service bytes.
 * @return bytes written (the rsp.gai.len to send), or -ENOSPC
 */
int mw_ni_answer_build(void *buf, uint32_t room, const void *host, uint32_t host_len,
                       const void *serv, uint32_t serv_len);

/* ---- normalizers: decode, check, re-encode with the builders ------------------------------ */

/**
 * Normalize one 128-byte request from `in` into `out` (they may not overlap).
 * A request with an unknown cmd normalizes to its header with a zero body.
 * @return as mw_req_check; `out` is written only on 0 or -EOPNOTSUPP
 */
int mw_req_normalize(const void *in, void *out, const struct mw_limits *lim, const char **why);
int mw_rsp_normalize(const void *in, void *out, const struct mw_limits *lim, const char **why);
int mw_event_normalize(const void *in, void *out, const struct mw_limits *lim, int from_ins,
                       const char **why);
int mw_dgram_normalize(const void *in, void *out, uint32_t ring_size, int from_ins,
                       const char **why);
int mw_sockaddr_normalize(const void *in, void *out, unsigned int families, const char **why);
/** @return the answer's length (== len), or -EPROTO; out has room for len bytes */
int mw_ai_answer_normalize(const void *in, uint32_t len, void *out, const char **why);
int mw_ni_answer_normalize(const void *in, uint32_t len, void *out, const char **why);

/** @return the command's name ("SOCKET", ...) or NULL for an unknown command */
const char *mw_cmd_name(uint32_t cmd);

#endif /* MWCOMMS_CODEC_H */
