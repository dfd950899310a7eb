/*
 * plat_xentest: grants and event channels through the mwcomms platform API, on whichever
 * backend mw_plat_open picks (MW_BACKEND; on sim also MW_SIM_DIR and MW_SIM_DOMID).
 *
 *   plat_xentest self [DOMID]            share and map our own pages, event channel both ways
 *                                        between two handles of this domain. DOMID is this
 *                                        domain's id, which grants need (xen: required, e.g. 0
 *                                        in dom0; sim: defaults to MW_SIM_DOMID)
 *   plat_xentest offer REMOTE FILE [N]   grant N (default 4) pages and an unbound port to
 *                                        domain REMOTE, write "REF,REF,... PORT\n" to FILE,
 *                                        wait for the peer's write and kick, reply, kick back,
 *                                        wait for the peer's last kick
 *   plat_xentest map REMOTE REFS PORT    the other side: map REFS (comma separated) of domain
 *                                        REMOTE, check and reply, bind to PORT and kick, wait
 *                                        for the reply and kick, check it, kick a last time
 *
 * Prints "PLAT PASS: ..." / "PLAT FAIL: ..." per check and "PLAT RESULT: PASS|FAIL" at the
 * end; exit status 0 iff every check passed. Timeouts: 60 s for the peer to show up, 30 s for
 * each later step.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mwcomms/platform.h"

#define PG MW_GNT_PAGE_SIZE
#define MAX_PAGES 64
#define OFFER_AREA 0            /* bytes [0, 2048) of each page: written by the offering side */
#define MAP_AREA 2048           /* bytes [2048, 3072): written by the mapping side */
#define ACK_AREA 3072           /* bytes [3072, 3584) of page 0: the offering side's reply */

static int failures;

/* Report one check; rc, when negative, is the -errno that explains a failure. */
static bool check(bool ok, int rc, const char *fmt, ...)
{
    va_list ap;

    printf("PLAT %s: ", ok ? "PASS" : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (!ok && rc < 0)
        printf(" (rc=%d %s)", rc, strerror(-rc));
    printf("\n");
    fflush(stdout);
    if (!ok)
        failures++;
    return ok;
}

static uint8_t pattern(uint32_t page, uint32_t off)
{
    return (uint8_t)(page * 131u + off * 7u + 1u);
}

static void fill_offer(uint8_t *base, uint32_t npages)
{
    uint32_t i, off;

    for (i = 0; i < npages; i++) {
        uint8_t *pg = base + (size_t)i * PG;

        for (off = 64; off < MAP_AREA; off++)
            pg[off] = pattern(i, off);
        snprintf((char *)pg + OFFER_AREA, 64, "mwcomms offer page %u", i);
    }
}

/* Does page `i` of the mapping hold what the offering side wrote into its page `want`? */
static bool offer_ok(const uint8_t *pg, uint32_t want)
{
    char hdr[64];
    uint32_t off;

    snprintf(hdr, sizeof(hdr), "mwcomms offer page %u", want);
    if (strcmp((const char *)pg + OFFER_AREA, hdr) != 0)
        return false;
    for (off = 64; off < MAP_AREA; off++)
        if (pg[off] != pattern(want, off))
            return false;
    return true;
}

#define DONE_AREA 3584        /* bytes [3584, 4096) of page 0: the mapping side's "done" */

static uint32_t npages_seen;    /* pages in the exchange, for the predicates below */

static bool map_reply_ok(const uint8_t *pg, uint32_t i);

static bool all_replied(const uint8_t *base)
{
    uint32_t i;

    for (i = 0; i < npages_seen; i++)
        if (!map_reply_ok(base + (size_t)i * PG, i))
            return false;
    return true;
}

static bool acked(const uint8_t *base)
{
    return strcmp((const char *)base + ACK_AREA, "mwcomms offer ack") == 0;
}

static bool peer_done(const uint8_t *base)
{
    return strcmp((const char *)base + DONE_AREA, "mwcomms map done") == 0;
}

static void map_reply(uint8_t *pg, uint32_t i)
{
    snprintf((char *)pg + MAP_AREA, 64, "mwcomms map page %u", i);
}

static bool map_reply_ok(const uint8_t *pg, uint32_t i)
{
    char want[64];

    snprintf(want, sizeof(want), "mwcomms map page %u", i);
    return strcmp((const char *)pg + MAP_AREA, want) == 0;
}

/*
 * Wait with poll() on the handle's fd for `port` to fire, then take it.
 * @return the port taken, 0 on timeout, -errno
 */
static int wait_port(struct mw_evtchn *ec, int timeout_ms)
{
    struct pollfd pfd = { .fd = mw_evtchn_fd(ec), .events = POLLIN };
    int n;

    do
        n = poll(&pfd, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0)
        return 0;
    return mw_evtchn_pending(ec);
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/*
 * Events are hints: wait for kicks on `port` until `done(arg)` holds, at most `timeout_ms`.
 * Kicks that carry no news (the one a fresh binding starts with) are taken and skipped.
 * @return 0 when done, -ETIMEDOUT, -EPROTO (an event on another port), -errno
 */
static int wait_until(struct mw_evtchn *ec, int port, bool (*done)(const uint8_t *),
                      const uint8_t *arg, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    int got;

    while (!done(arg)) {
        int left = (int)(end - now_ms());

        if (left <= 0)
            return -ETIMEDOUT;
        got = wait_port(ec, left);
        if (got < 0)
            return got;
        if (got > 0 && got != port)
            return -EPROTO;
    }
    return 0;
}

/* Count the events that arrive on `ec` within `ms` milliseconds. */
static int count_events(struct mw_evtchn *ec, int ms)
{
    int n = 0;

    while (wait_port(ec, ms) > 0)
        n++;
    return n;
}

static int open_plat(struct mw_plat **plat)
{
    int rc = mw_plat_open(NULL, plat);

    if (!check(rc == 0, rc, "open platform"))
        return rc;
    printf("PLAT INFO: backend=%s domid=%d\n", mw_plat_backend(*plat), mw_plat_domid(*plat));
    return 0;
}

static void self_grants(struct mw_plat *plat, mw_domid_t self)
{
    enum { N = 4 };
    uint32_t refs[N], rev[N], bad = 0xfffffff0u;
    struct mw_gnt *sg = NULL, *mg = NULL, *rg = NULL, *xg = NULL;
    uint8_t *s = NULL, *m = NULL, *r = NULL;
    void *addr;
    uint32_t i;
    bool ok;
    int rc;

    rc = mw_gnt_share(plat, self, N, refs, &addr, &sg);
    s = addr;
    if (!check(rc == 0, rc, "share %d pages with domain %u -> refs %u %u %u %u", N, self,
               refs[0], refs[1], refs[2], refs[3]))
        return;
    for (ok = true, i = 0; i < (uint32_t)N * PG; i++)
        ok = ok && s[i] == 0;
    check(ok, 0, "shared pages start zeroed");
    fill_offer(s, N);

    rc = mw_gnt_map(plat, self, N, refs, &addr, &mg);
    m = addr;
    if (check(rc == 0, rc, "map the %d refs in order", N)) {
        for (ok = true, i = 0; i < N; i++)
            ok = ok && offer_ok(m + (size_t)i * PG, i);
        check(ok, 0, "mapping shows the granter's pages, in order, contiguously");
        for (i = 0; i < N; i++)
            map_reply(m + (size_t)i * PG, i);
        for (ok = true, i = 0; i < N; i++)
            ok = ok && map_reply_ok(s + (size_t)i * PG, i);
        check(ok, 0, "writes through the mapping reach the granter's pages");
    }

    for (i = 0; i < N; i++)
        rev[i] = refs[N - 1 - i];
    rc = mw_gnt_map(plat, self, N, rev, &addr, &rg);
    r = addr;
    if (check(rc == 0, rc, "map the refs in reverse order")) {
        for (ok = true, i = 0; i < N; i++)
            ok = ok && offer_ok(r + (size_t)i * PG, N - 1 - i);
        check(ok, 0, "reverse mapping holds the pages in the order of the refs");
    }

    rc = mw_gnt_map(plat, self, 1, &bad, &addr, &xg);
    check(rc < 0 && xg == NULL, rc, "map of a ref that was never granted fails (rc=%d)", rc);
    mw_gnt_release(xg);

    rc = mw_gnt_share(plat, MW_DOMID_SELF, 1, refs, &addr, &xg);
    check(rc == -EINVAL, rc, "share with MW_DOMID_SELF is refused with -EINVAL (rc=%d)", rc);
    mw_gnt_release(xg);

    mw_gnt_release(rg);
    mw_gnt_release(mg);
    mw_gnt_release(sg);
}

static void self_evtchn(struct mw_plat *plat)
{
    struct mw_evtchn *e1 = NULL, *e2 = NULL;
    int p1, p2, got, rc, n;
    double t;

    rc = mw_evtchn_open(plat, &e1);
    if (rc == 0)
        rc = mw_evtchn_open(plat, &e2);
    if (!check(rc == 0, rc, "open two event channel handles"))
        goto out_close;

    p1 = mw_evtchn_alloc_unbound(e1, MW_DOMID_SELF);
    if (!check(p1 > 0, p1, "alloc unbound port for ourselves -> %d", p1))
        goto out_close;
    p2 = mw_evtchn_bind_interdomain(e2, MW_DOMID_SELF, (uint32_t)p1);
    if (!check(p2 > 0, p2, "bind interdomain to our port %d -> %d", p1, p2))
        goto out_close;

    n = count_events(e2, 300);
    printf("PLAT INFO: the new binding started with %d event(s) (Xen sets it pending)\n", n);
    rc = mw_evtchn_pending(e2);
    check(rc == -EAGAIN, rc, "once that is taken, nothing pending before a kick (rc=%d)", rc);
    rc = mw_evtchn_notify(e1, (uint32_t)p1);
    check(rc == 0, rc, "notify %d -> %d", p1, p2);
    got = wait_port(e2, 5000);
    check(got == p2, got, "poll() on the fd wakes up, pending port %d (expect %d)", got, p2);
    rc = mw_evtchn_notify(e2, (uint32_t)p2);
    check(rc == 0, rc, "notify %d -> %d", p2, p1);
    got = wait_port(e1, 5000);
    check(got == p1, got, "poll() on the fd wakes up, pending port %d (expect %d)", got, p1);
    rc = mw_evtchn_pending(e1);
    check(rc == -EAGAIN, rc, "taken: nothing pending any more (rc=%d)", rc);

    /* Xen may deliver a kick that lands after the first event's upcall once more on unmask */
    mw_evtchn_notify(e1, (uint32_t)p1);
    mw_evtchn_notify(e1, (uint32_t)p1);
    mw_evtchn_notify(e1, (uint32_t)p1);
    n = count_events(e2, 300);
    check(n >= 1 && n <= 2, 0, "3 kicks in a row coalesce: %d event(s)", n);
    rc = mw_evtchn_notify(e1, (uint32_t)p1);
    got = wait_port(e2, 5000);
    check(rc == 0 && got == p2, got, "after taking it, the port fires again");

    rc = mw_evtchn_notify(e1, (uint32_t)p2 + 1000);
    check(rc < 0, rc, "notify on a port this handle does not hold fails (rc=%d)", rc);

    rc = mw_evtchn_unbind(e2, (uint32_t)p2);
    check(rc == 0, rc, "unbind port %d", p2);
    t = now_ms();
    rc = mw_evtchn_notify(e1, (uint32_t)p1);
    check(rc == 0 || rc == -ENOTCONN, rc,
          "notify after the peer unbound returns at once: rc=%d in %.1f ms", rc, now_ms() - t);
    rc = mw_evtchn_unbind(e1, (uint32_t)p1);
    check(rc == 0, rc, "unbind port %d", p1);
out_close:
    mw_evtchn_close(e2);
    mw_evtchn_close(e1);
}

static int do_self(int argc, char **argv)
{
    struct mw_plat *plat;
    int self;

    if (open_plat(&plat) < 0)
        return 1;
    self = argc > 2 ? atoi(argv[2]) : mw_plat_domid(plat);
    if (check(self >= 0 && self < (int)MW_DOMID_SELF, self, "own domain id %d", self))
        self_grants(plat, (mw_domid_t)self);
    self_evtchn(plat);
    mw_plat_close(plat);
    return 0;
}

/* Write FILE in one step (a temporary file renamed over it), so the peer never reads half. */
static int publish(const char *file, const uint32_t *refs, uint32_t n, int port)
{
    char tmp[4096];
    uint32_t i;
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.tmp", file);
    f = fopen(tmp, "w");
    if (!f)
        return -errno;
    for (i = 0; i < n; i++)
        fprintf(f, "%s%u", i ? "," : "", refs[i]);
    fprintf(f, " %d\n", port);
    if (fclose(f) != 0 || rename(tmp, file) != 0)
        return -errno;
    return 0;
}

static int do_offer(mw_domid_t remote, const char *file, uint32_t npages)
{
    uint32_t refs[MAX_PAGES];
    struct mw_evtchn *ec = NULL;
    struct mw_gnt *g = NULL;
    struct mw_plat *plat;
    uint8_t *p;
    void *addr;
    int port = -1, rc;

    if (open_plat(&plat) < 0)
        return 1;
    rc = mw_gnt_share(plat, remote, npages, refs, &addr, &g);
    if (!check(rc == 0, rc, "offer: share %u pages with domain %u", npages, remote))
        goto out_close;
    p = addr;
    fill_offer(p, npages);
    rc = mw_evtchn_open(plat, &ec);
    if (!check(rc == 0, rc, "offer: open event channel"))
        goto out_close;
    port = mw_evtchn_alloc_unbound(ec, remote);
    if (!check(port > 0, port, "offer: unbound port for domain %u -> %d", remote, port))
        goto out_close;
    rc = publish(file, refs, npages, port);
    if (!check(rc == 0, rc, "offer: wrote refs and port to %s", file))
        goto out_close;

    npages_seen = npages;
    rc = wait_until(ec, port, all_replied, p, 60000);
    if (!check(rc == 0, rc, "offer: kicked by domain %u, which wrote into each of our %u pages",
               remote, npages))
        goto out_close;
    /* the kick orders the peer's writes before our reads (a hypercall / a syscall) */
    snprintf((char *)p + ACK_AREA, 64, "mwcomms offer ack");
    rc = mw_evtchn_notify(ec, (uint32_t)port);
    check(rc == 0, rc, "offer: kick domain %u back", remote);
    rc = wait_until(ec, port, peer_done, p, 30000);
    check(rc == 0, rc, "offer: last kick from domain %u (peer done)", remote);
out_close:
    if (port > 0)
        mw_evtchn_unbind(ec, (uint32_t)port);
    mw_evtchn_close(ec);
    mw_gnt_release(g);
    mw_plat_close(plat);
    return 0;
}

static int parse_refs(const char *s, uint32_t *refs, uint32_t max)
{
    uint32_t n = 0;
    char *end;

    while (*s && n < max) {
        errno = 0;
        unsigned long v = strtoul(s, &end, 0);

        if (end == s || errno || v > UINT32_MAX)
            return -EINVAL;
        refs[n++] = (uint32_t)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -EINVAL;
        s = end;
    }
    return *s ? -E2BIG : (int)n;
}

static int do_map(mw_domid_t remote, const char *refs_arg, uint32_t rport)
{
    uint32_t refs[MAX_PAGES], i;
    struct mw_evtchn *ec = NULL;
    struct mw_gnt *g = NULL;
    struct mw_plat *plat;
    int n, port = -1, rc;
    uint8_t *p;
    void *addr;
    bool ok;

    n = parse_refs(refs_arg, refs, MAX_PAGES);
    if (!check(n > 0, n, "map: %d refs given", n))
        return 1;
    if (open_plat(&plat) < 0)
        return 1;
    rc = mw_gnt_map(plat, remote, (uint32_t)n, refs, &addr, &g);
    if (!check(rc == 0, rc, "map: map %d pages of domain %u", n, remote))
        goto out_close;
    p = addr;
    for (ok = true, i = 0; i < (uint32_t)n; i++)
        ok = ok && offer_ok(p + (size_t)i * PG, i);
    check(ok, 0, "map: each page holds what domain %u wrote, in order", remote);
    for (i = 0; i < (uint32_t)n; i++)
        map_reply(p + (size_t)i * PG, i);

    rc = mw_evtchn_open(plat, &ec);
    if (!check(rc == 0, rc, "map: open event channel"))
        goto out_close;
    port = mw_evtchn_bind_interdomain(ec, remote, rport);
    if (!check(port > 0, port, "map: bind to port %u of domain %u -> %d", rport, remote, port))
        goto out_close;
    rc = mw_evtchn_notify(ec, (uint32_t)port);
    check(rc == 0, rc, "map: kick domain %u", remote);
    rc = wait_until(ec, port, acked, p, 30000);
    check(rc == 0, rc, "map: kicked back by domain %u, its reply is in the page: '%.20s'",
          remote, (const char *)p + ACK_AREA);
    snprintf((char *)p + DONE_AREA, 64, "mwcomms map done");
    rc = mw_evtchn_notify(ec, (uint32_t)port);
    check(rc == 0, rc, "map: last kick to domain %u", remote);
out_close:
    mw_gnt_release(g);
    if (port > 0)
        mw_evtchn_unbind(ec, (uint32_t)port);
    mw_evtchn_close(ec);
    mw_plat_close(plat);
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: plat_xentest self [DOMID]\n"
                    "       plat_xentest offer REMOTE FILE [NPAGES]\n"
                    "       plat_xentest map REMOTE REFS PORT\n");
    return 2;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && argc <= 3 && strcmp(argv[1], "self") == 0) {
        do_self(argc, argv);
    } else if ((argc == 4 || argc == 5) && strcmp(argv[1], "offer") == 0) {
        unsigned long n = argc == 5 ? strtoul(argv[4], NULL, 0) : 4;

        if (n < 1 || n > MAX_PAGES)
            return usage();
        do_offer((mw_domid_t)atoi(argv[2]), argv[3], (uint32_t)n);
    } else if (argc == 5 && strcmp(argv[1], "map") == 0) {
        do_map((mw_domid_t)atoi(argv[2]), argv[3], (uint32_t)strtoul(argv[4], NULL, 0));
    } else {
        return usage();
    }
    printf("PLAT RESULT: %s (%d failures)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
