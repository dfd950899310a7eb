/*
 * plat_sim_test: the platform API on the sim backend, in one process playing several domains
 * and in forked processes.
 *
 *   plat_sim_test DIR            every test; each uses its own fresh directory under DIR
 *   plat_sim_test rtt DIR N      doorbell round trip between two processes, N rounds:
 *                                prints "PLAT-RATE doorbell_rtt_us=..."
 *
 * Prints "PLAT PASS: ..." / "PLAT FAIL: ..." per check and "PLAT RESULT: PASS|FAIL"; exit
 * status 0 iff every check passed. Meant to run under AddressSanitizer and UBSan.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "mwcomms/platform.h"

#define PG MW_GNT_PAGE_SIZE

static int failures;
static const char *top;         /* DIR */
static char dir[4096];          /* the current test's sim directory */

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

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A fresh, empty sim directory for the next test (left over from an earlier run: emptied). */
static void new_dir(const char *name)
{
    snprintf(dir, sizeof(dir), "%s/%s", top, name);
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    printf("PLAT INFO: --- %s (%s)\n", name, dir);
}

static struct mw_plat *open_dom(int domid)
{
    struct mw_plat_config cfg = { .backend = "sim", .sim_dir = dir, .sim_domid = domid };
    struct mw_plat *plat = NULL;
    int rc = mw_plat_open(&cfg, &plat);

    if (rc < 0) {
        check(false, rc, "open sim domain %d in %s", domid, dir);
        exit(1);
    }
    return plat;
}

static struct mw_evtchn *open_ec(struct mw_plat *plat)
{
    struct mw_evtchn *ec = NULL;
    int rc = mw_evtchn_open(plat, &ec);

    if (rc < 0) {
        check(false, rc, "open event channel");
        exit(1);
    }
    return ec;
}

/* The names in the current directory, sorted, joined by spaces. */
static const char *listing(void)
{
    static char buf[4096];
    struct dirent **names;
    int i, n;

    buf[0] = '\0';
    n = scandir(dir, &names, NULL, alphasort);
    for (i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.') {
            strncat(buf, names[i]->d_name, sizeof(buf) - strlen(buf) - 2);
            strcat(buf, " ");
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
    return buf;
}

static int pending_after_wait(struct mw_evtchn *ec, int ms)
{
    int rc = mw_evtchn_wait(ec, ms);

    return rc <= 0 ? (rc == 0 ? -ETIMEDOUT : rc) : mw_evtchn_pending(ec);
}

static void test_open(void)
{
    struct mw_plat_config cfg = { .backend = "sim", .sim_dir = NULL, .sim_domid = 1 };
    struct mw_plat *plat = (struct mw_plat *)&cfg;  /* must be overwritten with NULL */
    char path[sizeof(dir) + 64];
    int rc;

    new_dir("open");
    unsetenv("MW_SIM_DIR");
    unsetenv("MW_SIM_DOMID");
    unsetenv("MW_BACKEND");
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -EINVAL && !plat, rc, "sim without a directory: -EINVAL, *out NULL (rc=%d)", rc);
    cfg.sim_dir = dir;
    cfg.backend = "vmware";
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -EINVAL, rc, "unknown backend: -EINVAL (rc=%d)", rc);
    cfg.backend = "sim";
    cfg.sim_domid = 0x7ff0;
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -EINVAL, rc, "domain id 0x7ff0 (reserved): -EINVAL (rc=%d)", rc);
    cfg.sim_domid = -1;
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -EINVAL, rc, "no domain id and no MW_SIM_DOMID: -EINVAL (rc=%d)", rc);
    setenv("MW_SIM_DOMID", "07", 1);
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -EINVAL, rc, "MW_SIM_DOMID=07 (not canonical): -EINVAL (rc=%d)", rc);
    setenv("MW_SIM_DOMID", "7x", 1);
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -EINVAL, rc, "MW_SIM_DOMID=7x: -EINVAL (rc=%d)", rc);
    setenv("MW_SIM_DOMID", "7", 1);
    rc = mw_plat_open(&cfg, &plat);
    if (check(rc == 0, rc, "MW_SIM_DOMID=7 opens, creating the missing directory"))
        check(mw_plat_domid(plat) == 7 && strcmp(mw_plat_backend(plat), "sim") == 0, 0,
              "domid 7, backend sim");
    mw_plat_close(plat);

    /* the environment alone, as the C engines will be started */
    setenv("MW_BACKEND", "sim", 1);
    setenv("MW_SIM_DIR", dir, 1);
    rc = mw_plat_open(NULL, &plat);
    check(rc == 0 && mw_plat_domid(plat) == 7, rc, "MW_BACKEND, MW_SIM_DIR, MW_SIM_DOMID alone");
    mw_plat_close(plat);
    unsetenv("MW_BACKEND");
    unsetenv("MW_SIM_DIR");
    unsetenv("MW_SIM_DOMID");

    snprintf(path, sizeof(path), "%s/no/such/parent", top);
    cfg = (struct mw_plat_config){ .backend = "sim", .sim_dir = path, .sim_domid = 1 };
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -ENOENT, rc, "directory whose parent is missing: -ENOENT (rc=%d)", rc);
    snprintf(path, sizeof(path), "%s/lock", dir);
    cfg.sim_dir = path;
    rc = mw_plat_open(&cfg, &plat);
    check(rc == -ENOTDIR, rc, "a file as directory: -ENOTDIR (rc=%d)", rc);

    if (access("/dev/xen/evtchn", F_OK) < 0) {
        cfg.backend = "xen";
        rc = mw_plat_open(&cfg, &plat);
        check(rc == -ENODEV, rc, "xen backend on a host without /dev/xen: -ENODEV (rc=%d)", rc);
        rc = mw_plat_open(NULL, &plat);
        check(rc == -EINVAL, rc, "auto-detect picks sim here, which needs a directory (rc=%d)",
              rc);
    }
    check(mw_plat_open(NULL, NULL) == -EINVAL, 0, "open with out NULL: -EINVAL");
    mw_plat_close(NULL);
    mw_gnt_release(NULL);
    mw_evtchn_close(NULL);
    check(mw_evtchn_fd(NULL) < 0 && mw_plat_domid(NULL) < 0 && !mw_gnt_addr(NULL), 0,
          "close/release accept NULL, getters refuse it");
}

static void test_grant_args(void)
{
    struct mw_plat *p1;
    struct mw_gnt *g = (struct mw_gnt *)&g;
    void *addr = &addr;
    uint32_t refs[2];
    int rc;

    new_dir("grant-args");
    p1 = open_dom(1);
    rc = mw_gnt_share(p1, 2, 0, refs, &addr, &g);
    check(rc == -EINVAL && !g && !addr, rc, "share 0 pages: -EINVAL, outputs NULL (rc=%d)", rc);
    rc = mw_gnt_share(p1, 2, MW_GNT_MAX_PAGES + 1, refs, &addr, &g);
    check(rc == -EINVAL, rc, "share MW_GNT_MAX_PAGES+1 pages: -EINVAL (rc=%d)", rc);
    rc = mw_gnt_share(p1, MW_DOMID_SELF, 1, refs, &addr, &g);
    check(rc == -EINVAL, rc, "share with MW_DOMID_SELF: -EINVAL (rc=%d)", rc);
    rc = mw_gnt_share(p1, 2, 1, NULL, &addr, &g);
    check(rc == -EINVAL, rc, "share with refs NULL: -EINVAL (rc=%d)", rc);
    rc = mw_gnt_map(p1, 0x7fff, 1, refs, &addr, &g);
    check(rc == -EINVAL, rc, "map from a reserved domain id: -EINVAL (rc=%d)", rc);
    rc = mw_gnt_map(NULL, 2, 1, refs, &addr, &g);
    check(rc == -EINVAL, rc, "map with plat NULL: -EINVAL (rc=%d)", rc);
    check(strcmp(listing(), "lock ") == 0, 0, "refused calls leave no file: '%s'", listing());
    mw_plat_close(p1);
}

static bool page_is(const uint8_t *p, uint8_t v)
{
    uint32_t i;

    for (i = 0; i < PG; i++)
        if (p[i] != v)
            return false;
    return true;
}

static void test_grants(void)
{
    struct mw_gnt *ga, *gb, *m = NULL, *m2 = NULL, *x = NULL;
    uint32_t ra[3], rb[2], all[5], mix[2], i;
    struct mw_plat *p1, *p2, *p3;
    char path[sizeof(dir) + 64];
    uint8_t *a, *b, *ma;
    void *addr;
    int rc, fd;

    new_dir("grants");
    p1 = open_dom(1);
    p2 = open_dom(2);
    p3 = open_dom(3);
    rc = mw_gnt_share(p1, 2, 3, ra, &addr, &ga);
    a = addr;
    check(rc == 0 && ra[0] == 8 && ra[1] == 9 && ra[2] == 10, rc,
          "domain 1 shares 3 pages with 2: refs %u %u %u", ra[0], ra[1], ra[2]);
    rc = mw_gnt_share(p1, 2, 2, rb, &addr, &gb);
    b = addr;
    check(rc == 0 && rb[0] == 11 && rb[1] == 12, rc, "and 2 more: refs %u %u", rb[0], rb[1]);
    check(mw_gnt_addr(ga) == a && mw_gnt_npages(ga) == 3, 0, "getters give address and count");
    for (i = 0; i < 3; i++)
        memset(a + i * PG, 0xa0 + (int)i, PG);
    for (i = 0; i < 2; i++)
        memset(b + i * PG, 0xb0 + (int)i, PG);

    memcpy(all, ra, sizeof(ra));
    memcpy(all + 3, rb, sizeof(rb));
    rc = mw_gnt_map(p2, 1, 5, all, &addr, &m);
    ma = addr;
    if (check(rc == 0, rc, "domain 2 maps all 5 refs (two shares) in one region")) {
        check(page_is(ma, 0xa0) && page_is(ma + 2 * PG, 0xa2) && page_is(ma + 3 * PG, 0xb0) &&
              page_is(ma + 4 * PG, 0xb1), 0, "the region holds both shares' pages in order");
        memset(ma + 3 * PG, 0x5b, PG);
        check(page_is(b, 0x5b), 0, "a write by domain 2 shows in domain 1's page");
    }
    mix[0] = rb[1];
    mix[1] = ra[0];
    rc = mw_gnt_map(p2, 1, 2, mix, &addr, &m2);
    check(rc == 0 && page_is(addr, 0xb1) && page_is((uint8_t *)addr + PG, 0xa0), rc,
          "scattered refs (%u, %u) map in the order given", mix[0], mix[1]);
    mw_gnt_release(m2);

    rc = mw_gnt_map(p3, 1, 3, ra, &addr, &x);
    check(rc == -EPERM && !x, rc, "domain 3 maps refs granted to 2: -EPERM (rc=%d)", rc);
    mix[0] = ra[0];
    mix[1] = 4000;
    rc = mw_gnt_map(p2, 1, 2, mix, &addr, &x);
    check(rc == -ENOENT && !x, rc, "a good ref then a ref never granted: -ENOENT (rc=%d)", rc);
    rc = mw_gnt_map(p2, 3, 1, ra, &addr, &x);
    check(rc == -ENOENT, rc, "refs of a domain that granted nothing: -ENOENT (rc=%d)", rc);

    mw_gnt_release(ga);
    rc = mw_gnt_map(p2, 1, 1, ra, &addr, &x);
    check(rc == -ENOENT, rc, "after domain 1 releases the share, its refs: -ENOENT (rc=%d)", rc);
    check(page_is(ma, 0xa0) && page_is(ma + 2 * PG, 0xa2), 0,
          "an existing mapping keeps the released pages");
    rc = mw_gnt_map(p2, 1, 2, rb, &addr, &x);
    check(rc == 0, rc, "the other share still maps");
    mw_gnt_release(x);
    mw_gnt_release(m);
    mw_gnt_release(gb);
    check(strcmp(listing(), "gnt.1.next lock ") == 0, 0, "released: no share file left: '%s'",
          listing());

    /* a counter near the end of the reference space */
    snprintf(path, sizeof(path), "%s/gnt.3.next", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd >= 0) {
        rc = (int)write(fd, "4294967290\n", 11);
        close(fd);
    }
    rc = mw_gnt_share(p3, 1, 10, ra, &addr, &x);
    check(rc == -ENOSPC && !x, rc, "out of grant references: -ENOSPC (rc=%d)", rc);
    mw_plat_close(p3);
    mw_plat_close(p2);
    mw_plat_close(p1);
}

static void test_evtchn(void)
{
    struct mw_plat *p1, *p2, *p3;
    struct mw_evtchn *e1, *e2, *e3;
    int p, q, q2, u, v, rc, i, got1, got2;

    new_dir("evtchn");
    p1 = open_dom(1);
    p2 = open_dom(2);
    p3 = open_dom(3);
    e1 = open_ec(p1);
    e2 = open_ec(p2);
    e3 = open_ec(p3);

    p = mw_evtchn_alloc_unbound(e1, 2);
    check(p == 1, p, "domain 1 offers port %d to domain 2", p);
    rc = mw_evtchn_bind_interdomain(e3, 1, (uint32_t)p);
    check(rc == -EINVAL, rc, "domain 3 cannot bind a port offered to 2: -EINVAL (rc=%d)", rc);
    rc = mw_evtchn_bind_interdomain(e2, 1, (uint32_t)p + 50);
    check(rc == -EINVAL, rc, "binding a port that does not exist: -EINVAL (rc=%d)", rc);
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == -ENOTCONN, rc, "kick on a port nobody bound yet: -ENOTCONN (rc=%d)", rc);
    q = mw_evtchn_bind_interdomain(e2, 1, (uint32_t)p);
    check(q == 1, q, "domain 2 binds it -> its port %d", q);
    rc = pending_after_wait(e2, 1000);
    check(rc == q && mw_evtchn_pending(e2) == -EAGAIN, rc,
          "the fresh binding starts with one event, as on Xen");
    check(mw_evtchn_pending(e1) == -EAGAIN, 0, "and the offering end gets none");
    rc = mw_evtchn_bind_interdomain(e3, 1, (uint32_t)p);
    check(rc == -EINVAL, rc, "binding a bound port: -EINVAL (rc=%d)", rc);

    rc = mw_evtchn_wait(e2, 0);
    check(rc == 0, rc, "wait(0) with nothing pending: 0");
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == 0, rc, "kick 1 -> 2");
    rc = mw_evtchn_wait(e2, 1000);
    check(rc == 1, rc, "wait sees it");
    rc = mw_evtchn_wait(e2, 0);
    check(rc == 1, rc, "wait does not consume it");
    rc = mw_evtchn_pending(e2);
    check(rc == q, rc, "pending gives port %d", rc);
    rc = mw_evtchn_pending(e2);
    check(rc == -EAGAIN, rc, "then nothing: -EAGAIN");

    for (i = 0, rc = 0; i < 100 && rc == 0; i++)
        rc = mw_evtchn_notify(e2, (uint32_t)q);
    check(rc == 0, rc, "100 kicks 2 -> 1");
    rc = pending_after_wait(e1, 1000);
    check(rc == p, rc, "coalesce: one event");
    rc = mw_evtchn_pending(e1);
    check(rc == -EAGAIN && mw_evtchn_wait(e1, 20) == 0, rc, "and no second one");
    for (i = 0, rc = 0; i < 70000 && rc == 0; i++)
        rc = mw_evtchn_notify(e2, (uint32_t)q);
    check(rc == 0, rc, "70000 kicks without taking (more than a FIFO holds) all succeed");
    rc = mw_evtchn_pending(e1);
    check(rc == p && mw_evtchn_pending(e1) == -EAGAIN, rc, "and still make one event");

    rc = mw_evtchn_notify(e1, 0);
    check(rc == -EINVAL, rc, "kick port 0: -EINVAL");
    rc = mw_evtchn_notify(e1, 77);
    check(rc == -EINVAL, rc, "kick a port of no handle: -EINVAL");
    rc = mw_evtchn_notify(e3, (uint32_t)p);
    check(rc == -EINVAL, rc, "kick a port of another handle: -EINVAL");
    rc = mw_evtchn_unbind(e1, 77);
    check(rc == -EINVAL, rc, "unbind a port of no handle: -EINVAL");

    /* two ports on one handle: each fires, each is taken once */
    u = mw_evtchn_alloc_unbound(e1, MW_DOMID_SELF);
    v = mw_evtchn_bind_interdomain(e2, 1, (uint32_t)u);
    check(u > 0 && v == -EINVAL, v, "a port offered to ourselves is not for domain 2");
    v = mw_evtchn_bind_interdomain(e1, MW_DOMID_SELF, (uint32_t)u);
    check(v > 0 && v != u, v, "bind our own port %d through MW_DOMID_SELF -> %d", u, v);
    check(pending_after_wait(e1, 1000) == v, 0, "take the binding's first event");
    mw_evtchn_notify(e2, (uint32_t)q);
    mw_evtchn_notify(e1, (uint32_t)v);
    got1 = pending_after_wait(e1, 1000);
    got2 = pending_after_wait(e1, 1000);
    check((got1 == p && got2 == u) || (got1 == u && got2 == p), 0,
          "two ports of one handle both fire: %d, %d", got1, got2);
    check(mw_evtchn_pending(e1) == -EAGAIN, 0, "each once");
    mw_evtchn_unbind(e1, (uint32_t)v);
    mw_evtchn_unbind(e1, (uint32_t)u);

    /* the peer leaves: its port is offered to it again, as on Xen */
    rc = mw_evtchn_unbind(e2, (uint32_t)q);
    check(rc == 0, rc, "domain 2 unbinds port %d", q);
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == -ENOTCONN, rc, "kick after the peer unbound: -ENOTCONN (rc=%d)", rc);
    q2 = mw_evtchn_bind_interdomain(e2, 1, (uint32_t)p);
    check(q2 > 0, q2, "domain 2 binds the same port again -> %d", q2);
    check(pending_after_wait(e2, 1000) == q2, 0, "take the binding's first event");
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == 0 && pending_after_wait(e2, 1000) == q2, rc, "and kicks reach it again");
    mw_evtchn_close(e2);
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == -ENOTCONN, rc, "kick after the peer closed its handle: -ENOTCONN (rc=%d)", rc);
    mw_evtchn_close(e3);
    mw_evtchn_close(e1);
    check(strcmp(listing(), "lock ") == 0, 0, "all closed: no port file left: '%s'", listing());
    mw_plat_close(p3);
    mw_plat_close(p2);
    mw_plat_close(p1);
}

/* A peer process that dies without closing anything. */
static void test_peer_death(void)
{
    struct mw_plat *p1, *p2;
    struct mw_evtchn *e1, *e2;
    sigset_t mask, pend;
    int p, rc, st, reused;
    pid_t pid;

    new_dir("peer-death");
    p1 = open_dom(1);
    e1 = open_ec(p1);
    p = mw_evtchn_alloc_unbound(e1, 2);
    pid = fork();
    if (pid == 0) {
        /* the child is domain 2: its own handles, opened after the fork */
        struct mw_plat *c = open_dom(2);
        struct mw_evtchn *ce = open_ec(c);
        int cp = mw_evtchn_bind_interdomain(ce, 1, (uint32_t)p);

        mw_evtchn_notify(ce, (uint32_t)cp);
        _exit(cp == 1 ? 0 : 1);
    }
    rc = pending_after_wait(e1, 5000);
    check(rc == p, rc, "the child (domain 2) bound and kicked");
    waitpid(pid, &st, 0);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, 0, "the child exited without closing");

    signal(SIGPIPE, SIG_DFL);
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == -ENOTCONN, rc, "kick to the dead peer: -ENOTCONN, no SIGPIPE death (rc=%d)", rc);
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == -ENOTCONN, rc, "and again (rc=%d)", rc);
    sigprocmask(SIG_SETMASK, NULL, &mask);
    sigpending(&pend);
    check(!sigismember(&mask, SIGPIPE) && !sigismember(&pend, SIGPIPE), 0,
          "SIGPIPE neither left blocked nor pending");

    p2 = open_dom(2);
    e2 = open_ec(p2);
    reused = mw_evtchn_alloc_unbound(e2, 1);
    check(reused == 1, reused, "the dead child's port number is reclaimed: %d", reused);
    rc = mw_evtchn_notify(e1, (uint32_t)p);
    check(rc == -ENOTCONN, rc, "the reused number does not reconnect the old channel");
    mw_evtchn_close(e2);
    mw_plat_close(p2);
    mw_evtchn_close(e1);
    mw_plat_close(p1);
}

/* A granter that dies without releasing: its share file goes at the next share. */
static void test_stale_share(void)
{
    struct mw_gnt *live, *m = NULL, *x = NULL, *y = NULL;
    uint32_t refs[3], lref;
    struct mw_plat *p1, *p2;
    int fds[2], st, rc;
    uint8_t *mp;
    void *addr;
    pid_t pid;

    new_dir("stale-share");
    p1 = open_dom(1);
    rc = mw_gnt_share(p1, 2, 1, &lref, &addr, &live);
    check(rc == 0, rc, "domain 1 keeps a live share");
    if (pipe(fds) < 0)
        return;
    pid = fork();
    if (pid == 0) {
        struct mw_plat *c = open_dom(3);
        struct mw_gnt *g;

        if (mw_gnt_share(c, 2, 3, refs, &addr, &g) < 0)
            _exit(1);
        memset(addr, 0x33, 3 * PG);
        if (write(fds[1], refs, sizeof(refs)) != (ssize_t)sizeof(refs))
            _exit(1);
        _exit(0);               /* no release */
    }
    close(fds[1]);
    rc = (int)read(fds[0], refs, sizeof(refs));
    close(fds[0]);
    waitpid(pid, &st, 0);
    check(rc == (int)sizeof(refs) && WIFEXITED(st) && WEXITSTATUS(st) == 0, 0,
          "a child (domain 3) shared 3 pages and died without releasing them");
    p2 = open_dom(2);
    rc = mw_gnt_map(p2, 3, 3, refs, &addr, &m);
    mp = addr;
    check(rc == 0 && page_is(mp, 0x33), rc, "its pages still map until someone shares again");
    rc = mw_gnt_share(p2, 1, 1, &lref, &addr, &x);
    check(rc == 0, rc, "domain 2 shares a page");
    rc = mw_gnt_map(p2, 3, 3, refs, &addr, &y);
    check(rc == -ENOENT && !y, rc, "that removed the dead granter's share file: -ENOENT (rc=%d)", rc);
    check(m && page_is(mp + 2 * PG, 0x33), 0, "a mapping made before stays valid");
    check(strstr(listing(), "gnt.1.8.1.2 ") != NULL, 0, "the live share survives: '%s'",
          listing());
    mw_gnt_release(m);
    mw_gnt_release(x);
    mw_gnt_release(live);
    check(strcmp(listing(), "gnt.1.next gnt.2.next gnt.3.next lock ") == 0, 0,
          "all released: '%s'", listing());
    mw_plat_close(p2);
    mw_plat_close(p1);
}

/* Several processes of one domain allocate ports and grant refs at once: all distinct. */
static void test_concurrent_alloc(void)
{
    enum { KIDS = 4, EACH = 25 };
    int fds[2], hold[2], i, j, n, st, clean = 0;
    uint32_t got[KIDS * EACH * 2];
    bool dup = false;
    pid_t pids[KIDS];

    new_dir("concurrent");
    if (pipe(fds) < 0 || pipe(hold) < 0)
        return;
    for (i = 0; i < KIDS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            struct mw_plat *c = open_dom(5);
            struct mw_evtchn *ce = open_ec(c);
            struct mw_gnt *g[EACH];
            uint32_t vals[2 * EACH];
            void *addr;

            close(fds[0]);
            close(hold[1]);
            for (j = 0; j < EACH; j++) {
                vals[j] = (uint32_t)mw_evtchn_alloc_unbound(ce, 6);
                if (mw_gnt_share(c, 6, 1, &vals[EACH + j], &addr, &g[j]) < 0)
                    _exit(1);
            }
            if (write(fds[1], vals, sizeof(vals)) != (ssize_t)sizeof(vals))
                _exit(1);
            /* keep everything until all have allocated: then the parent closes `hold` */
            while (read(hold[0], vals, 1) < 0 && errno == EINTR)
                ;
            for (j = 0; j < EACH; j++)
                mw_gnt_release(g[j]);
            mw_evtchn_close(ce);
            mw_plat_close(c);
            _exit(0);
        }
    }
    close(fds[1]);
    close(hold[0]);
    for (n = 0; n < (int)sizeof(got);) {
        ssize_t r = read(fds[0], (char *)got + n, sizeof(got) - (size_t)n);

        if (r <= 0)
            break;
        n += (int)r;
    }
    close(hold[1]);
    for (i = 0; i < KIDS; i++)
        if (waitpid(pids[i], &st, 0) == pids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0)
            clean++;
    close(fds[0]);
    check(n == (int)sizeof(got), 0, "%d processes allocated %d ports and %d refs each", KIDS,
          EACH, EACH);
    for (i = 0; i < KIDS * EACH * 2; i++) {
        int grp = (i / EACH) % 2;   /* 0: ports, 1: refs, per child block */

        for (j = i + 1; j < KIDS * EACH * 2; j++)
            if ((j / EACH) % 2 == grp && got[i] == got[j] && (int)got[i] > 0)
                dup = true;
        if ((int)got[i] <= 0)
            dup = true;
    }
    check(!dup, 0, "no port and no grant ref was handed out twice");
    check(clean == KIDS, 0, "all %d processes exited cleanly", clean);
    check(strcmp(listing(), "gnt.5.next lock ") == 0, 0, "and left no share or port: '%s'",
          listing());
}

/* One thread kicks while another takes: no lost wake-up, no crash. */
struct kicker {
    struct mw_evtchn *ec;
    uint32_t port;
    volatile int stop;
    long kicks;
};

static void *kick_loop(void *arg)
{
    struct kicker *k = arg;

    while (!k->stop) {
        if (mw_evtchn_notify(k->ec, k->port) < 0)
            break;
        k->kicks++;
    }
    return NULL;
}

static void test_threads(void)
{
    struct mw_plat *p1;
    struct mw_evtchn *e1, *e2;
    struct kicker k;
    pthread_t t;
    int p, q, i, takes = 0, rc = 0;

    new_dir("threads");
    p1 = open_dom(1);
    e1 = open_ec(p1);
    e2 = open_ec(p1);
    p = mw_evtchn_alloc_unbound(e1, 1);
    q = mw_evtchn_bind_interdomain(e2, 1, (uint32_t)p);
    k = (struct kicker){ .ec = e1, .port = (uint32_t)p };
    pthread_create(&t, NULL, kick_loop, &k);
    for (i = 0; i < 2000; i++) {
        rc = pending_after_wait(e2, 2000);
        if (rc != q)
            break;
        takes++;
    }
    k.stop = 1;
    pthread_join(t, NULL);
    check(takes == 2000, rc, "2000 wake-ups taken while another thread kicked %ld times",
          k.kicks);
    mw_evtchn_close(e2);
    mw_evtchn_close(e1);
    mw_plat_close(p1);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Ping-pong between two processes through the sim doorbell: wait (poll), take, kick. */
static int rtt(int rounds)
{
    int fds[2], p, q, i, rc = 0, st;
    struct mw_plat *p1;
    struct mw_evtchn *e1;
    double t0, t1;
    pid_t pid;

    new_dir("rtt");
    if (pipe(fds) < 0)
        return 1;
    pid = fork();
    if (pid == 0) {
        struct mw_plat *c;
        struct mw_evtchn *ce;

        close(fds[1]);
        if (read(fds[0], &p, sizeof(p)) != (ssize_t)sizeof(p))
            _exit(1);
        c = open_dom(2);
        ce = open_ec(c);
        q = mw_evtchn_bind_interdomain(ce, 1, (uint32_t)p);
        pending_after_wait(ce, 5000);           /* the binding's first event */
        mw_evtchn_notify(ce, (uint32_t)q);
        for (i = 0; i < rounds && rc >= 0; i++) {
            rc = pending_after_wait(ce, 5000);
            if (rc == q)
                rc = mw_evtchn_notify(ce, (uint32_t)q);
            else
                rc = -EPROTO;
        }
        /* stay bound while the parent times kicks that wake nobody: until it closes fds */
        while (read(fds[0], &p, sizeof(p)) < 0 && errno == EINTR)
            ;
        mw_evtchn_close(ce);
        mw_plat_close(c);
        _exit(rc < 0);
    }
    close(fds[0]);
    p1 = open_dom(1);
    e1 = open_ec(p1);
    p = mw_evtchn_alloc_unbound(e1, 2);
    if (write(fds[1], &p, sizeof(p)) != (ssize_t)sizeof(p))
        return 1;
    rc = pending_after_wait(e1, 5000);          /* the child is bound */
    check(rc == p, rc, "rtt: peer bound");
    t0 = now_s();
    for (i = 0; i < rounds && rc >= 0; i++) {
        rc = mw_evtchn_notify(e1, (uint32_t)p);
        if (rc == 0)
            rc = pending_after_wait(e1, 5000);
    }
    t1 = now_s();
    check(rc == p, rc, "rtt: %d round trips", i);
    printf("PLAT-RATE doorbell_rtt_us=%.2f rounds=%d\n", (t1 - t0) * 1e6 / rounds, rounds);

    /* the cost of a kick that wakes nobody: the peer has one pending and is not looking */
    mw_evtchn_notify(e1, (uint32_t)p);
    t0 = now_s();
    for (i = 0, rc = 0; i < rounds && rc == 0; i++)
        rc = mw_evtchn_notify(e1, (uint32_t)p);
    t1 = now_s();
    check(rc == 0, rc, "rtt: %d kicks without a wake-up", i);
    printf("PLAT-RATE notify_ns=%.0f\n", (t1 - t0) * 1e9 / i);
    close(fds[1]);
    waitpid(pid, &st, 0);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, 0, "rtt: peer finished cleanly");
    mw_evtchn_close(e1);
    mw_plat_close(p1);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "rtt") == 0) {
        top = argv[2];
        rtt(atoi(argv[3]) > 0 ? atoi(argv[3]) : 1000);
    } else if (argc == 2) {
        top = argv[1];
        test_open();
        test_grant_args();
        test_grants();
        test_evtchn();
        test_peer_death();
        test_stale_share();
        test_concurrent_alloc();
        test_threads();
    } else {
        fprintf(stderr, "usage: plat_sim_test DIR | plat_sim_test rtt DIR ROUNDS\n");
        return 2;
    }
    printf("PLAT RESULT: %s (%d failures)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
