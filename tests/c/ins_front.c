/*
 * ins_front: a test frontend in C driving the INS engine (ins/engine/) over real shared areas
 * on the sim platform, built with the engine, the ring library, the codec and the platform
 * layer into one program so that AddressSanitizer + UBSan watch the engine while hostile
 * frontends attack it.
 *
 *   ins_front SIMDIR [CASE...]      (no case: all but bench, the throughput run)
 *
 * The engine loop runs in a thread; each test frontend is a sim domain (1, 3, 4...) sharing an
 * area with the INS (domain 2) and an event channel bound to it. All traffic is on loopback.
 * Prints "ok CASE" per case and "INS-FRONT OK" at the end; "FAIL CASE: why" and exit 1 on the
 * first failure.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ins_engine.h"
#include "mwcomms/codec.h"
#include "mwcomms/platform.h"
#include "mwcomms/proto.h"
#include "mwcomms/ring.h"

#define INS_DOM 2
#define SLOTS 32
#define DATA_PAGES 512
#define ORDER 14                   /* 16 KiB byte rings: flow control is exercised */
#define TIMEOUT_S 10.0
#define BENCH_ORDER 18             /* 256 KiB rings for the throughput run */

static const char *simdir;
static struct mw_plat *ins_plat;
static struct ins_engine *eng;
static const char *current = "?";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    printf("FAIL %s: ", current);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(1);
}

#define CHECK(c, ...) do { if (!(c)) die(__VA_ARGS__); } while (0)

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------------
 * One test frontend
 */
struct sock_rings {
    struct mw_bring tx, rx;
    uint32_t tx_off, rx_off;
};

struct front {
    struct mw_plat *plat;
    struct mw_gnt *share, *map;
    struct mw_evtchn *fec, *bec;
    uint32_t port;
    struct mw_area area;
    struct mw_cmd_front *cmd;
    struct mw_evq fq, bq;
    struct mw_limits lim;
    uint32_t next_page;
    int handle;
    struct mw_req sent[MW_CMD_SLOTS_MAX];   /* copies of requests, by cookie */
    uint32_t nsent;
    struct mw_rsp got[64];
    int ngot;
    struct sock_rings socks[SLOTS];
};

static void front_open(struct front *f, int dom)
{
    struct mw_plat_config cfg = { .backend = "sim", .sim_dir = simdir, .sim_domid = dom };
    struct mw_area_geom geom = { 1, 1, SLOTS, DATA_PAGES };
    uint32_t refs[1 + 1 + 2 + 1 + DATA_PAGES];
    size_t size;
    void *faddr, *baddr;
    int rc, bport;

    memset(f, 0, sizeof(*f));
    CHECK(mw_area_size(&geom, &size) == 0, "area size");
    CHECK(size / MW_PAGE_SIZE <= sizeof(refs) / sizeof(refs[0]), "refs");
    CHECK(mw_plat_open(&cfg, &f->plat) == 0, "platform dom%d", dom);
    rc = mw_gnt_share(f->plat, INS_DOM, (uint32_t)(size / MW_PAGE_SIZE), refs, &faddr,
                      &f->share);
    CHECK(rc == 0, "share: %s", strerror(-rc));
    rc = mw_gnt_map(ins_plat, (mw_domid_t)dom, (uint32_t)(size / MW_PAGE_SIZE), refs, &baddr,
                    &f->map);
    CHECK(rc == 0, "map: %s", strerror(-rc));
    CHECK(mw_evtchn_open(f->plat, &f->fec) == 0, "evtchn");
    CHECK(mw_evtchn_open(ins_plat, &f->bec) == 0, "evtchn");
    rc = mw_evtchn_alloc_unbound(f->fec, INS_DOM);
    CHECK(rc > 0, "alloc unbound: %s", strerror(-rc));
    f->port = (uint32_t)rc;
    bport = mw_evtchn_bind_interdomain(f->bec, (mw_domid_t)dom, f->port);
    CHECK(bport > 0, "bind: %s", strerror(-bport));
    CHECK(mw_area_init(&f->area, faddr, size, &geom) == 0, "area init");
    f->cmd = calloc(1, sizeof(*f->cmd));
    CHECK(f->cmd && mw_cmd_front_init(f->cmd, &f->area) == 0, "cmd init");
    CHECK(mw_evq_init(&f->fq, &f->area, MW_SIDE_FRONT, 1) == 0, "fq");
    CHECK(mw_evq_init(&f->bq, &f->area, MW_SIDE_FRONT, 0) == 0, "bq");
    f->lim.sock_slots = SLOTS;
    f->lim.data_pages = DATA_PAGES;
    f->handle = ins_engine_attach(eng, (uint32_t)dom, baddr, size, &geom, f->bec,
                                  (uint32_t)bport, INS_F_IPV6 | INS_F_UDP | INS_F_DNS);
    CHECK(f->handle > 0, "attach: %s", strerror(-f->handle));
}

static void front_close(struct front *f)
{
    if (f->handle > 0)
        ins_engine_detach(eng, f->handle);
    mw_evtchn_close(f->bec);
    mw_evtchn_close(f->fec);
    mw_gnt_release(f->map);
    mw_gnt_release(f->share);
    mw_plat_close(f->plat);
    free(f->cmd);
}

static uint8_t *data_at(struct front *f, uint32_t off)
{
    return f->area.data + off;
}

static uint32_t alloc_pages(struct front *f, uint32_t n)
{
    uint32_t off = f->next_page * MW_PAGE_SIZE;

    f->next_page += n;
    CHECK(f->next_page <= DATA_PAGES, "test data area exhausted");
    return off;
}

static void kick(struct front *f)
{
    int rc = mw_evtchn_notify(f->fec, f->port);

    CHECK(rc == 0 || rc == -ENOTCONN, "notify: %s", strerror(-rc));
}

/* Take every response and bq event; sleep on the event channel when nothing came. */
static int front_poll(struct front *f, int ms)
{
    struct mw_event ev;
    struct mw_rsp rsp;
    const char *why;
    uint64_t cookie;
    int got = 0, rc;

    while ((rc = mw_cmd_front_take_rsp(f->cmd, &rsp, &cookie)) == 1) {
        why = NULL;
        if (!mw_cmd_name(f->sent[cookie].cmd)) {
            /* our unknown command: echoed with -EOPNOTSUPP and a zero body (7.4) */
            CHECK(rsp.cmd == f->sent[cookie].cmd && rsp.ret == -EOPNOTSUPP, "unknown cmd");
        } else {
            CHECK(mw_rsp_check(&rsp, &f->lim, &why) == 0, "INS sent a bad response: %s", why);
            CHECK(mw_rsp_match(&rsp, &f->sent[cookie], &why) == 0, "response mismatch: %s",
                  why);
        }
        CHECK(f->ngot < 64, "too many responses");
        f->got[f->ngot++] = rsp;
        got = 1;
    }
    CHECK(rc == 0, "take response: %s", strerror(-rc));
    while ((rc = mw_evq_take(&f->bq, &ev)) > 0) {
        if (rc == 1) {
            why = NULL;
            CHECK(mw_event_check(&ev, &f->lim, 1, &why) == 0, "INS sent a bad event: %s", why);
        }
        got = 1;
    }
    CHECK(rc == 0, "take event: %s", strerror(-rc));
    if (got || mw_cmd_front_final_check(f->cmd) || mw_evq_final_check(&f->bq))
        return 1;
    struct pollfd pfd = { .fd = mw_evtchn_fd(f->fec), .events = POLLIN };
    if (poll(&pfd, 1, ms) > 0) {
        while (mw_evtchn_pending(f->fec) > 0)
            ;
        return 1;
    }
    return 0;
}

static uint32_t send_req(struct front *f, struct mw_req *req)
{
    uint32_t slot = f->nsent++ % MW_CMD_SLOTS_MAX;
    int rc;

    /* the cookie names our copy of the request (fewer than MW_CMD_SLOTS_MAX outstanding) */
    rc = mw_cmd_front_put_req(f->cmd, req, slot);
    CHECK(rc == 0, "put request: %s", strerror(-rc));
    f->sent[slot] = *req;
    if (mw_cmd_front_push(f->cmd) == 1)
        kick(f);
    return req->id;
}

static struct mw_rsp wait_rsp(struct front *f, uint32_t id)
{
    double end = now_s() + TIMEOUT_S;

    for (;;) {
        for (int i = 0; i < f->ngot; i++) {
            if (f->got[i].id == id) {
                struct mw_rsp r = f->got[i];

                f->got[i] = f->got[--f->ngot];
                return r;
            }
        }
        CHECK(now_s() < end, "no response to request %#x", id);
        front_poll(f, 100);
    }
}

static struct mw_rsp call(struct front *f, struct mw_req *req)
{
    return wait_rsp(f, send_req(f, req));
}

static struct mw_rings new_rings_order(struct front *f, uint32_t sock, uint8_t order)
{
    struct sock_rings *s = &f->socks[sock];
    struct mw_rings r;

    s->tx_off = alloc_pages(f, 1u << (order - 12));
    s->rx_off = alloc_pages(f, 1u << (order - 12));
    CHECK(mw_sock_reset(&f->area, sock) == 0, "sock reset");
    CHECK(mw_bring_init(&s->tx, &f->area, sock, MW_SIDE_FRONT, MW_BRING_TX, s->tx_off,
                        order) == 0, "tx init");
    CHECK(mw_bring_init(&s->rx, &f->area, sock, MW_SIDE_FRONT, MW_BRING_RX, s->rx_off,
                        order) == 0, "rx init");
    mw_rings_build(&r, s->tx_off, s->rx_off, order, order);
    return r;
}

static struct mw_rings new_rings(struct front *f, uint32_t sock)
{
    return new_rings_order(f, sock, ORDER);
}

static int32_t do_socket_order(struct front *f, uint32_t sock, uint16_t type, uint8_t order)
{
    struct mw_rings r = new_rings_order(f, sock, order);
    struct mw_req req;

    mw_req_build_socket(&req, 0, sock, MW_AF_INET, type, 0, &r);
    return call(f, &req).ret;
}

static int32_t do_socket(struct front *f, uint32_t sock, uint16_t type)
{
    struct mw_rings r = new_rings(f, sock);
    struct mw_req req;

    mw_req_build_socket(&req, 0, sock, MW_AF_INET, type, 0, &r);
    return call(f, &req).ret;
}

static struct mw_sockaddr loop_addr(uint16_t port)
{
    static const uint8_t lo[4] = { 127, 0, 0, 1 };
    struct mw_sockaddr a;

    mw_sockaddr_build(&a, MW_AF_INET, port, lo, 0, 0);
    return a;
}

static struct mw_rsp do_addr_cmd(struct front *f, uint16_t cmd, uint32_t sock, uint16_t port)
{
    struct mw_sockaddr a = loop_addr(port);
    struct mw_req req;

    if (cmd == MW_CMD_CONNECT)
        mw_req_build_connect(&req, 0, sock, &a);
    else
        mw_req_build_bind(&req, 0, sock, &a);
    return call(f, &req);
}

static int32_t do_simple(struct front *f, uint16_t cmd, uint32_t sock, int32_t arg)
{
    struct mw_req req;

    switch (cmd) {
    case MW_CMD_CLOSE:
        mw_req_build_close(&req, 0, sock);
        break;
    case MW_CMD_LISTEN:
        mw_req_build_listen(&req, 0, sock, arg);
        break;
    default:
        mw_req_build_shutdown(&req, 0, sock, arg);
        break;
    }
    return call(f, &req).ret;
}

static void post(struct front *f, uint32_t sock, uint16_t type)
{
    CHECK(mw_evq_put(&f->fq, sock, type, 0) >= 0, "evq put");
    if (mw_evq_push(&f->fq) == 1)
        kick(f);
}

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Write n pseudo-random bytes (seeded) into tx, waiting for room; return their hash. */
static uint64_t write_stream(struct front *f, uint32_t sock, size_t n, uint32_t seed)
{
    struct mw_bring *tx = &f->socks[sock].tx;
    uint64_t h = 0xcbf29ce484222325ull;
    double end = now_s() + TIMEOUT_S;
    uint8_t buf[4096];
    size_t done = 0;

    while (done < n) {
        uint32_t chunk = (uint32_t)(n - done < sizeof(buf) ? n - done : sizeof(buf));
        int w;

        for (uint32_t i = 0; i < chunk; i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = (uint8_t)(seed >> 16);
        }
        for (uint32_t put = 0; put < chunk; ) {
            w = mw_bring_write(tx, buf + put, chunk - put);
            CHECK(w >= 0, "tx write: %s", strerror(-w));
            put += (uint32_t)w;
            if (w && mw_bring_publish(tx) == 1)
                post(f, sock, MW_EV_DATA);
            if (put < chunk) {
                CHECK(now_s() < end, "tx stays full");
                if (mw_bring_prepare_wait(tx, 1) == 0)
                    front_poll(f, 100);
            }
        }
        h = fnv(h, buf, chunk);
        done += chunk;
    }
    return h;
}

/* Read rx until n bytes or the end of the stream; return the hash, *flags the rx flags. */
static uint64_t read_stream(struct front *f, uint32_t sock, size_t n, size_t *got, int *flags,
                            int32_t *err)
{
    struct mw_bring *rx = &f->socks[sock].rx;
    uint64_t h = 0xcbf29ce484222325ull;
    double end = now_s() + TIMEOUT_S;
    uint8_t buf[4096];

    *got = 0;
    *flags = 0;
    while (*got < n) {
        int r = mw_bring_read(rx, buf, sizeof(buf) < n - *got ? sizeof(buf) : (uint32_t)(n - *got));

        CHECK(r >= 0, "rx read: %s", strerror(-r));
        if (r > 0) {
            h = fnv(h, buf, (size_t)r);
            *got += (size_t)r;
            if (mw_bring_release(rx) == 1)
                post(f, sock, MW_EV_SPACE);
            continue;
        }
        *flags = mw_bring_rx_state(rx, err);
        CHECK(*flags >= 0, "rx state");
        if (*flags && mw_bring_avail(rx) == 0)
            break;
        CHECK(now_s() < end, "rx: %zu bytes, then nothing", *got);
        if (mw_bring_prepare_wait(rx, 1) == 0)
            front_poll(f, 100);
    }
    return h;
}

/* ------------------------------------------------------------------------------------------
 * Local peers
 */
static int tcp_listener(uint16_t *port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t l = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 8) == 0,
          "listener");
    getsockname(fd, (struct sockaddr *)&a, &l);
    *port = ntohs(a.sin_port);
    return fd;
}

struct echo {
    int fd;
    size_t n;                  /* bytes to read, then echo back as their hash's source */
    uint64_t hash;
};

/* The peer: read n bytes, hash them, send them back (so both directions carry the data). */
static void *echo_peer(void *arg)
{
    struct echo *e = arg;
    uint8_t buf[8192];
    size_t got = 0;

    e->hash = 0xcbf29ce484222325ull;
    while (got < e->n) {
        ssize_t r = recv(e->fd, buf, sizeof(buf), 0);

        if (r <= 0)
            break;
        e->hash = fnv(e->hash, buf, (size_t)r);
        for (ssize_t off = 0; off < r; ) {
            ssize_t w = send(e->fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);

            if (w <= 0)
                return NULL;
            off += w;
        }
        got += (size_t)r;
    }
    shutdown(e->fd, SHUT_WR);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * Cases
 */
static void case_ping(struct front *f)
{
    struct mw_req req;
    struct mw_rsp rsp;

    mw_req_build_ping(&req, 0, 0xfeedfacecafebeefull);
    rsp = call(f, &req);
    CHECK(rsp.ret == 0 && rsp.u.ping.arg == 0xfeedfacecafebeefull, "ping");
    memset(&req, 0, sizeof(req));
    req.cmd = 99;
    rsp = call(f, &req);
    CHECK(rsp.ret == -EOPNOTSUPP, "unknown command: %d", rsp.ret);
}

static void case_tcp(struct front *f)
{
    const size_t n = 1u << 20;
    struct echo e = { .n = n };
    uint64_t sent, back;
    size_t got;
    pthread_t t;
    uint16_t port;
    int32_t err;
    int lfd = tcp_listener(&port), flags;
    struct mw_rsp rsp;

    CHECK(do_socket(f, 0, MW_SOCK_STREAM) == 0, "socket");
    rsp = do_addr_cmd(f, MW_CMD_CONNECT, 0, port);
    CHECK(rsp.ret == 0 && rsp.u.addr.addr.family == MW_AF_INET, "connect: %d", rsp.ret);
    e.fd = accept(lfd, NULL, NULL);
    CHECK(e.fd >= 0, "accept");
    pthread_create(&t, NULL, echo_peer, &e);
    sent = write_stream(f, 0, n, 7);
    back = read_stream(f, 0, n + 1, &got, &flags, &err);
    pthread_join(t, NULL);
    CHECK(e.hash == sent, "the peer got other bytes than were sent");
    CHECK(got == n && back == sent, "echo: %zu bytes back, hash %s", got,
          back == sent ? "same" : "differs");
    CHECK(flags == MW_RXF_EOF && err == 0, "EOF after the echo: flags %d", flags);
    CHECK(do_simple(f, MW_CMD_SHUTDOWN, 0, SHUT_WR) == 0, "shutdown");
    CHECK(do_simple(f, MW_CMD_CLOSE, 0, 0) == 0, "close");
    close(e.fd);
    close(lfd);
}

static void case_accept(struct front *f)
{
    struct mw_rings r;
    struct mw_req req;
    struct mw_rsp rsp;
    uint32_t id;
    uint16_t port;
    size_t got;
    int32_t err;
    int c, flags;

    CHECK(do_socket(f, 1, MW_SOCK_STREAM) == 0, "socket");
    rsp = do_addr_cmd(f, MW_CMD_BIND, 1, 0);
    CHECK(rsp.ret == 0, "bind: %d", rsp.ret);
    port = ntohs(rsp.u.addr.addr.port);
    CHECK(do_simple(f, MW_CMD_LISTEN, 1, 4) == 0, "listen");
    r = new_rings(f, 2);
    mw_req_build_accept(&req, 0, 1, 2, &r);
    id = send_req(f, &req);
    {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

        c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(connect(c, (struct sockaddr *)&a, sizeof(a)) == 0, "client connect");
    }
    rsp = wait_rsp(f, id);
    CHECK(rsp.ret == 0 && rsp.u.addr.addr.family == MW_AF_INET, "accept: %d", rsp.ret);
    CHECK(send(c, "accepted!", 9, 0) == 9, "client send");
    close(c);
    read_stream(f, 2, 100, &got, &flags, &err);
    CHECK(got == 9 && flags == MW_RXF_EOF, "accepted data: %zu bytes, flags %d", got, flags);
    CHECK(memcmp(data_at(f, f->socks[2].rx_off), "accepted!", 9) == 0, "accepted bytes");
    CHECK(do_simple(f, MW_CMD_CLOSE, 2, 0) == 0, "close");
    CHECK(do_simple(f, MW_CMD_CLOSE, 1, 0) == 0, "close");
}

static void case_udp(struct front *f)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct mw_dgram_hdr hdr;
    struct mw_sockaddr dst;
    struct mw_rsp rsp;
    socklen_t l = sizeof(a);
    uint16_t ins_port, peer_port;
    char buf[256];
    double end;
    int p, rc;

    CHECK(do_socket(f, 3, MW_SOCK_DGRAM) == 0, "socket");
    rsp = do_addr_cmd(f, MW_CMD_BIND, 3, 0);
    CHECK(rsp.ret == 0, "bind");
    ins_port = ntohs(rsp.u.addr.addr.port);
    p = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(bind(p, (struct sockaddr *)&a, sizeof(a)) == 0, "peer bind");
    getsockname(p, (struct sockaddr *)&a, &l);
    peer_port = ntohs(a.sin_port);
    a.sin_port = htons(ins_port);
    CHECK(sendto(p, "to the front", 12, 0, (struct sockaddr *)&a, sizeof(a)) == 12, "sendto");
    end = now_s() + TIMEOUT_S;
    while ((rc = mw_bring_dgram_get(&f->socks[3].rx, &hdr, buf, sizeof(buf))) == 0) {
        CHECK(now_s() < end, "no datagram");
        if (mw_bring_prepare_wait(&f->socks[3].rx, 1) == 0)
            front_poll(f, 100);
    }
    CHECK(rc == 1 && hdr.len == 12 && memcmp(buf, "to the front", 12) == 0, "datagram in");
    CHECK(hdr.addr.family == MW_AF_INET && ntohs(hdr.addr.port) == peer_port, "source");
    if (mw_bring_release(&f->socks[3].rx) == 1)
        post(f, 3, MW_EV_SPACE);
    dst = loop_addr(peer_port);
    mw_dgram_build(&hdr, 11, &dst);
    CHECK(mw_bring_dgram_put(&f->socks[3].tx, &hdr, "to the peer") > 0, "dgram put");
    if (mw_bring_publish(&f->socks[3].tx) == 1)
        post(f, 3, MW_EV_DATA);
    {
        struct timeval tv = { 5, 0 };

        setsockopt(p, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    l = sizeof(a);
    CHECK(recvfrom(p, buf, sizeof(buf), 0, (struct sockaddr *)&a, &l) == 11 &&
          memcmp(buf, "to the peer", 11) == 0 && ntohs(a.sin_port) == ins_port, "datagram out");
    CHECK(do_simple(f, MW_CMD_CLOSE, 3, 0) == 0, "close");
    close(p);
}

static void case_dns(struct front *f)
{
    uint32_t off = alloc_pages(f, 1);
    struct mw_req req;
    struct mw_rsp rsp;
    const char *why = NULL;
    const struct mw_ai_entry *e;

    memcpy(data_at(f, off), "localhost", 9);
    mw_req_build_getaddrinfo(&req, 0, off, 4096, 9, 0, 0, MW_AF_INET, MW_SOCK_STREAM, 0);
    rsp = call(f, &req);
    CHECK(rsp.ret == 0 && rsp.u.gai.status == 0, "getaddrinfo: %d/%d", rsp.ret,
          rsp.u.gai.status);
    CHECK(mw_ai_answer_check(data_at(f, off), rsp.u.gai.len, &why) == 0, "answer: %s", why);
    e = (const struct mw_ai_entry *)(data_at(f, off) + sizeof(struct mw_ai_answer));
    CHECK(e->family == MW_AF_INET && e->addr.addr[0] == 127, "localhost is not 127.x");
}

static void case_errors(struct front *f)
{
    uint16_t port;
    int lfd = tcp_listener(&port);
    struct mw_rsp rsp;

    CHECK(do_socket(f, 4, MW_SOCK_STREAM) == 0, "socket");
    rsp = do_addr_cmd(f, MW_CMD_BIND, 4, port);
    CHECK(rsp.ret == -EADDRINUSE, "bind to a port in use: %d", rsp.ret);
    close(lfd);
    CHECK(do_socket(f, 5, MW_SOCK_STREAM) == 0, "socket");
    rsp = do_addr_cmd(f, MW_CMD_CONNECT, 5, port);
    CHECK(rsp.ret == -ECONNREFUSED, "connect to a closed port: %d", rsp.ret);
    CHECK(do_simple(f, MW_CMD_CLOSE, 4, 0) == 0 && do_simple(f, MW_CMD_CLOSE, 5, 0) == 0,
          "close");
}

/* A hostile frontend is disconnected, with its sockets; `good` is still served. */
static void hostile(const char *what, void (*attack)(struct front *f), struct front *good)
{
    struct ins_front_stats st;
    struct front *bad = calloc(1, sizeof(*bad));
    uint16_t port;
    int lfd = tcp_listener(&port), victim;
    char c;
    double end;

    current = what;
    front_open(bad, 5);
    CHECK(do_socket(bad, 0, MW_SOCK_STREAM) == 0, "socket");
    CHECK(do_addr_cmd(bad, MW_CMD_CONNECT, 0, port).ret == 0, "connect");
    victim = accept(lfd, NULL, NULL);
    attack(bad);
    end = now_s() + TIMEOUT_S;
    for (;;) {
        CHECK(ins_engine_stats(eng, bad->handle, &st) == 0, "stats");
        if (st.broken)
            break;
        CHECK(now_s() < end, "not disconnected");
        usleep(10000);
    }
    CHECK(st.sockets == 0 && st.proto_errors == 1, "sockets %u left", st.sockets);
    {
        struct timeval tv = { 5, 0 };

        setsockopt(victim, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    CHECK(recv(victim, &c, 1, 0) == 0, "its connection was not closed");
    printf("ok %s (%s)\n", what, st.why);
    close(victim);
    close(lfd);
    front_close(bad);
    free(bad);
    current = "still serving";
    case_ping(good);
}

static void atk_slot_range(struct front *f)
{
    struct mw_req req;

    mw_req_build_close(&req, 0, 0);
    req.sock = 100000;         /* past sock-slots */
    send_req(f, &req);
}

static void atk_slot_state(struct front *f)
{
    struct mw_req req;

    mw_req_build_close(&req, 0, 17);   /* never opened */
    send_req(f, &req);
}

static void atk_ring_offsets(struct front *f)
{
    struct mw_rings r;
    struct mw_req req;

    mw_rings_build(&r, (DATA_PAGES - 1) * MW_PAGE_SIZE, 0, 13, 12);   /* runs off the end */
    mw_req_build_socket(&req, 0, 3, MW_AF_INET, MW_SOCK_STREAM, 0, &r);
    send_req(f, &req);
}

static void atk_req_index(struct front *f)
{
    __atomic_store_n(&f->area.ctrl->front.req_prod, 0x80000000u, __ATOMIC_RELEASE);
    kick(f);
}

static void atk_tx_index(struct front *f)
{
    __atomic_store_n(&f->area.socks[0].front.tx_prod, 0x7fff0000u, __ATOMIC_RELEASE);
    post(f, 0, MW_EV_DATA);
}

static void atk_rx_cons(struct front *f)
{
    /* the consumer index runs ahead of what was produced */
    __atomic_store_n(&f->area.socks[0].front.rx_cons, 5000u, __ATOMIC_RELEASE);
    post(f, 0, MW_EV_SPACE);
}

static void atk_fq_event(struct front *f)
{
    /* an event naming a slot out of range, written straight into the queue */
    struct mw_event *ev = &f->area.fq[0];

    ev->sock = 1u << 30;
    ev->type = MW_EV_DATA;
    __atomic_store_n(&f->area.ctrl->front.fq_prod, 1u, __ATOMIC_RELEASE);
    kick(f);
}

static void atk_ool(struct front *f)
{
    struct mw_req req;

    mw_req_build_getaddrinfo(&req, 0, DATA_PAGES * MW_PAGE_SIZE - 8, 64, 9, 0, 0, 0, 0, 0);
    send_req(f, &req);
}

static void case_hostile(struct front *good)
{
    hostile("hostile slot out of range", atk_slot_range, good);
    hostile("hostile slot not open", atk_slot_state, good);
    hostile("hostile ring offsets", atk_ring_offsets, good);
    hostile("hostile request index", atk_req_index, good);
    hostile("hostile tx index", atk_tx_index, good);
    hostile("hostile rx consumer index", atk_rx_cons, good);
    hostile("hostile fq event", atk_fq_event, good);
    hostile("hostile out-of-line buffer", atk_ool, good);
}


/* Throughput through the engine (run at -O2, not part of the default cases): N bytes from the
 * frontend to a loopback peer, then N bytes back. */
struct sink {
    int fd;
    size_t n;
    volatile int done;
};

static void *sink_peer(void *arg)
{
    struct sink *k = arg;
    static uint8_t buf[1 << 16];
    size_t got = 0;

    while (got < k->n) {
        ssize_t r = recv(k->fd, buf, sizeof(buf), 0);

        if (r <= 0)
            break;
        got += (size_t)r;
    }
    __atomic_store_n(&k->done, 1, __ATOMIC_RELEASE);
    for (size_t sent = 0; sent < k->n; ) {
        size_t chunk = k->n - sent < sizeof(buf) ? k->n - sent : sizeof(buf);
        ssize_t w = send(k->fd, buf, chunk, MSG_NOSIGNAL);

        if (w <= 0)
            break;
        sent += (size_t)w;
    }
    return NULL;
}

static void case_bench(struct front *f)
{
    const size_t n = (size_t)256 << 20;
    static uint8_t buf[1 << 16];
    struct sink k = { .n = n };
    struct mw_bring *tx = &f->socks[6].tx, *rx = &f->socks[6].rx;
    double t0, t1, t2, end;
    size_t done = 0;
    pthread_t t;
    uint16_t port;
    int lfd = tcp_listener(&port);

    CHECK(do_socket_order(f, 6, MW_SOCK_STREAM, BENCH_ORDER) == 0, "socket");
    CHECK(do_addr_cmd(f, MW_CMD_CONNECT, 6, port).ret == 0, "connect");
    k.fd = accept(lfd, NULL, NULL);
    pthread_create(&t, NULL, sink_peer, &k);
    t0 = now_s();
    end = t0 + 120;
    while (done < n) {
        uint32_t chunk = (uint32_t)(n - done < sizeof(buf) ? n - done : sizeof(buf));
        int w = mw_bring_write(tx, buf, chunk);

        CHECK(w >= 0 && now_s() < end, "tx");
        done += (size_t)w;
        if (w && mw_bring_publish(tx) == 1)
            post(f, 6, MW_EV_DATA);
        if (!w && mw_bring_prepare_wait(tx, 1) == 0)
            front_poll(f, 100);
    }
    while (!__atomic_load_n(&k.done, __ATOMIC_ACQUIRE)) {
        CHECK(now_s() < end, "peer did not get everything");
        usleep(100);
    }
    t1 = now_s();
    for (done = 0; done < n; ) {
        int r = mw_bring_read(rx, buf, sizeof(buf));

        CHECK(r >= 0 && now_s() < end, "rx");
        done += (size_t)r;
        if (r && mw_bring_release(rx) == 1)
            post(f, 6, MW_EV_SPACE);
        if (!r && mw_bring_prepare_wait(rx, 1) == 0)
            front_poll(f, 100);
    }
    t2 = now_s();
    pthread_join(t, NULL);
    printf("INS-RATE bytes=%zu ring_order=%d up_mb_s=%.0f down_mb_s=%.0f\n", n, BENCH_ORDER,
           n / (t1 - t0) / 1e6, n / (t2 - t1) / 1e6);
    CHECK(do_simple(f, MW_CMD_CLOSE, 6, 0) == 0, "close");
    close(k.fd);
    close(lfd);
}

/* A frontend that scribbles random bytes over its whole area (control page, command slots,
 * event queues, socket table, rings) while it has live sockets, kicking the INS after each
 * burst: the engine must neither crash nor touch memory it should not (ASan watches), and the
 * good frontend is served throughout. */
static void case_chaos(struct front *good)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    struct ins_front_stats st;
    uint16_t port;
    int lfd = tcp_listener(&port);
    int broken = 0;

    for (int round = 0; round < 20; round++) {
        struct front *bad = calloc(1, sizeof(*bad));
        int peers[3], np = 0;
        size_t span;

        front_open(bad, 6);
        for (uint32_t i = 0; i < 3; i++) {
            CHECK(do_socket(bad, i, i == 2 ? MW_SOCK_DGRAM : MW_SOCK_STREAM) == 0, "socket");
            if (i < 2) {
                CHECK(do_addr_cmd(bad, MW_CMD_CONNECT, i, port).ret == 0, "connect");
                peers[np++] = accept(lfd, NULL, NULL);
                send(peers[np - 1], "some bytes", 10, MSG_NOSIGNAL);
            }
        }
        /* everything but the data area's tail: indices, slots, events, entries, rings */
        span = (size_t)((uint8_t *)bad->area.data - (uint8_t *)bad->area.ctrl) +
               16 * MW_PAGE_SIZE;
        for (int burst = 0; burst < 200; burst++) {
            for (int k = 0; k < 8; k++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((uint8_t *)bad->area.ctrl)[x % span] = (uint8_t)(x >> 40);
            }
            kick(bad);
            if (burst % 50 == 0) {
                CHECK(ins_engine_stats(eng, bad->handle, &st) == 0, "stats");
                if (st.broken)
                    break;
            }
        }
        usleep(20000);
        CHECK(ins_engine_stats(eng, bad->handle, &st) == 0, "stats");
        broken += st.broken;
        for (int i = 0; i < np; i++)
            close(peers[i]);
        front_close(bad);
        free(bad);
        case_ping(good);
    }
    printf("ok chaos: %d of 20 scribbling frontends disconnected\n", broken);
    CHECK(broken > 0, "no scribbling frontend was ever caught");
    close(lfd);
}

static void *loop(void *arg)
{
    int rc = ins_engine_run(eng);

    (void)arg;
    if (rc < 0) {
        printf("FAIL engine loop: %s\n", strerror(-rc));
        exit(1);
    }
    return NULL;
}

static int wanted(int argc, char **argv, const char *name)
{
    if (argc <= 2)
        return strcmp(name, "bench") != 0;
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], name))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    struct mw_plat_config cfg = { .backend = "sim", .sim_domid = INS_DOM };
    struct ins_config icfg = { .log_fd = 1, .dns_workers = 2 };
    static const struct { const char *name; void (*fn)(struct front *f); } cases[] = {
        { "ping", case_ping }, { "tcp", case_tcp }, { "accept", case_accept },
        { "udp", case_udp }, { "dns", case_dns }, { "errors", case_errors },
        { "hostile", case_hostile }, { "chaos", case_chaos }, { "bench", case_bench },
    };
    struct front *f;
    pthread_t t;

    if (argc < 2) {
        fprintf(stderr, "usage: ins_front SIMDIR [CASE...]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    simdir = argv[1];
    cfg.sim_dir = simdir;
    CHECK(mw_plat_open(&cfg, &ins_plat) == 0, "INS platform");
    CHECK(ins_engine_create(&icfg, &eng) == 0, "engine");
    pthread_create(&t, NULL, loop, NULL);
    f = calloc(1, sizeof(*f));
    front_open(f, 1);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (!wanted(argc, argv, cases[i].name))
            continue;
        current = cases[i].name;
        cases[i].fn(f);
        printf("ok %s\n", cases[i].name);
    }
    front_close(f);
    free(f);
    ins_engine_stop(eng);
    pthread_join(t, NULL);
    ins_engine_destroy(eng);
    mw_plat_close(ins_plat);
    printf("INS-FRONT OK\n");
    return 0;
}
