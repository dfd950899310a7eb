/*
 * mwcomms platform layer, sim backend: Xen grants and event channels between the processes
 * of one host, no hypervisor.
 *
 * A domain is a process (or several) that says which domain id it is. The simulated machine
 * is one directory, the sim directory, that every simulated domain opens:
 *
 *   lock                       flock()ed around every change of the state below
 *   gnt.<dom>.next             the next grant reference domain <dom> hands out (decimal text)
 *   gnt.<dom>.<ref>.<n>.<to>   one share: references ref .. ref+n-1 of domain <dom>, granted
 *                              to domain <to>; the file's n pages are the granted pages
 *   ev.<dom>.<port>            FIFO: the doorbell of event channel port <port> of domain <dom>
 *   ev.<dom>.<port>.st         symlink whose target is that port's state:
 *                              "unbound:<rdom>" (offered to domain rdom) or
 *                              "bound:<rdom>:<rport>" (connected to port rport of rdom)
 *   gnt-new.<dom>.<ref>, ev.<dom>.<port>.new
 *                              a share file, a state link, while they are being made
 *
 * The rules that make this safe across processes:
 * - A share file appears whole (created under a temporary name, sized, renamed) and is
 *   unlinked at release. Mapping opens it by name without the lock: the name says who
 *   granted which references to whom. A mapping made stays valid after the granter's release,
 *   as a Xen grant stays mapped until the mapper unmaps it.
 * - The granter holds a shared flock on its share file while the grant lives; a share file
 *   nobody holds so belongs to a process that died, and the next share removes it.
 * - The owner of a port keeps its FIFO open read-write for as long as the port lives. So the
 *   FIFO never shows its owner a hangup, and a writer gets EPIPE exactly when the owner has
 *   gone (unbound the port, closed the handle, or died): that is how a kick sees a dead peer.
 * - A kick writes one byte without blocking; a full FIFO means the port is pending already.
 *   Taking a pending port drains its FIFO, so the kicks before it coalesce into one event,
 *   and any kick after it fires again (the take also unmasks, as read+write of evtchn do).
 *   A port made by bind_interdomain starts pending, as on Xen.
 * - Port states change only under the lock, and the two ends of a channel change together.
 *   Under the lock, a port FIFO with no reader belongs to a process that died: its number is
 *   reclaimed when allocation reaches it.
 * - Grant references are never reused (a counter per domain, under the lock).
 *
 * The sim is a test bed, not an isolation boundary: every simulated domain can read the whole
 * directory. A handle must not be used across fork() (the flock would be shared).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "platform_priv.h"

#define SIM_FIRST_REF 8u        /* Linux keeps the first grant references for itself */
#define SIM_MAX_PORTS 4096u     /* ports per domain, as Xen's 2-level ABI on 64-bit */
#define SIM_NAME_MAX 64         /* longest file name in the sim directory, with its NUL */

struct sim_plat {
    int dirfd;                  /* the sim directory: every file is opened relative to it */
    int lockfd;                 /* its "lock" file, flock()ed around state changes */
    pthread_mutex_t lock;       /* the same among threads: flock is per open file, not thread */
    mw_domid_t domid;           /* the domain this process is */
};

/* A port bound through a handle. */
struct sim_port {
    uint32_t port;
    int rfd;                    /* our FIFO, read-write (see the rules above) */
    int peer_fd;                /* the other end's FIFO, write-only; -1 until a kick needs it */
};

struct sim_evtchn {
    pthread_mutex_t lock;       /* guards ports; taken before the platform's lock */
    struct sim_port *ports;
    size_t nports, cap;
};

/* The state of a port, as its .st link says. */
struct sim_state {
    bool bound;                 /* bound to rdom:rport, else offered to rdom */
    mw_domid_t rdom;
    uint32_t rport;
};

static struct sim_plat *sim_of(const struct mw_plat *plat)
{
    return plat->priv;
}

static int sim_lock(struct sim_plat *sp)
{
    pthread_mutex_lock(&sp->lock);
    while (flock(sp->lockfd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            int rc = -errno;

            pthread_mutex_unlock(&sp->lock);
            return rc;
        }
    }
    return 0;
}

static void sim_unlock(struct sim_plat *sp)
{
    flock(sp->lockfd, LOCK_UN);
    pthread_mutex_unlock(&sp->lock);
}

/*
 * Parse a decimal u32 (no sign, no leading zero) at *s that ends at `sep`, and step over it.
 * @return true when it parsed
 */
static bool take_u32(const char **s, char sep, uint32_t *v)
{
    const char *p = *s;
    uint64_t x = 0;

    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        x = x * 10 + (uint64_t)(*p - '0');
        if (x > UINT32_MAX)
            return false;
    }
    if (*p != sep)
        return false;
    *s = sep ? p + 1 : p;
    *v = (uint32_t)x;
    return true;
}

static int sim_parse_domid(const char *s, mw_domid_t *out)
{
    uint32_t v;

    if (!s || !take_u32(&s, '\0', &v) || v >= MW_DOMID_FIRST_RESERVED)
        return -EINVAL;
    *out = (mw_domid_t)v;
    return 0;
}

static int sim_open(struct mw_plat *plat, const struct mw_plat_config *cfg)
{
    const char *dir = cfg && cfg->sim_dir ? cfg->sim_dir : getenv("MW_SIM_DIR");
    struct sim_plat *sp;
    mw_domid_t domid;
    int rc;

    if (!dir || !*dir)
        return -EINVAL;
    if (cfg && cfg->sim_domid >= 0) {
        if (cfg->sim_domid >= (int)MW_DOMID_FIRST_RESERVED)
            return -EINVAL;
        domid = (mw_domid_t)cfg->sim_domid;
    } else {
        rc = sim_parse_domid(getenv("MW_SIM_DOMID"), &domid);
        if (rc < 0)
            return rc;
    }
    sp = calloc(1, sizeof(*sp));
    if (!sp)
        return -ENOMEM;
    sp->domid = domid;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        rc = -errno;
        goto out_free_sp;
    }
    sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dirfd < 0) {
        rc = -errno;
        goto out_free_sp;
    }
    sp->lockfd = openat(sp->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (sp->lockfd < 0) {
        rc = -errno;
        goto out_close_dir;
    }
    pthread_mutex_init(&sp->lock, NULL);
    plat->priv = sp;
    plat->domid = domid;
    return 0;

out_close_dir:
    close(sp->dirfd);
out_free_sp:
    free(sp);
    return rc;
}

static void sim_close(struct mw_plat *plat)
{
    struct sim_plat *sp = sim_of(plat);

    pthread_mutex_destroy(&sp->lock);
    close(sp->lockfd);
    close(sp->dirfd);
    free(sp);
}

/* ------------------------------------------------------------------------------------------
 * Grants
 */

/* Reserve references first .. first+npages-1 of our domain. Lock held. */
static int sim_alloc_refs(struct sim_plat *sp, uint32_t npages, uint32_t *first)
{
    char name[SIM_NAME_MAX], buf[16];
    const char *p = buf;
    uint32_t next = SIM_FIRST_REF;
    ssize_t n;
    int fd, len, rc = 0;

    snprintf(name, sizeof(name), "gnt.%u.next", sp->domid);
    fd = openat(sp->dirfd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return -errno;
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n < 0) {
        rc = -errno;
        goto out_close;
    }
    buf[n] = '\0';
    if (n > 0 && !take_u32(&p, '\n', &next)) {
        rc = -EIO;              /* not written by us: someone broke the sim directory */
        goto out_close;
    }
    if (next > UINT32_MAX - npages) {
        rc = -ENOSPC;
        goto out_close;
    }
    len = snprintf(buf, sizeof(buf), "%u\n", next + npages);
    n = pwrite(fd, buf, (size_t)len, 0);
    if (n != len) {
        rc = n < 0 ? -errno : -EIO;
        goto out_close;
    }
    if (ftruncate(fd, len) < 0) {
        rc = -errno;
        goto out_close;
    }
    *first = next;
out_close:
    close(fd);
    return rc;
}

/* One share of the granting domain, as its file name says. */
struct sim_share {
    uint32_t first, count;
    uint32_t to;
};

/* Parse "gnt.<dom>.<first>.<count>.<to>". @return true when `name` is a share file */
static bool parse_share(const char *name, uint32_t *dom, struct sim_share *s)
{
    const char *p = name;

    if (strncmp(p, "gnt.", 4) != 0)
        return false;
    p += 4;
    return take_u32(&p, '.', dom) && take_u32(&p, '.', &s->first) &&
           take_u32(&p, '.', &s->count) && take_u32(&p, '\0', &s->to) && s->count > 0;
}

/* Parse "gnt-new.<dom>.<first>": a share being made (or left half made by a dead process). */
static bool parse_new_share(const char *name)
{
    const char *p = name;
    uint32_t dom, first;

    if (strncmp(p, "gnt-new.", 8) != 0)
        return false;
    p += 8;
    return take_u32(&p, '.', &dom) && take_u32(&p, '\0', &first);
}

static DIR *sim_opendir(struct sim_plat *sp)
{
    int fd = openat(sp->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d;

    if (fd < 0)
        return NULL;
    d = fdopendir(fd);
    if (!d) {
        int err = errno;

        close(fd);
        errno = err;
    }
    return d;
}

/* List the shares of domain `granter`. */
static int sim_list_shares(struct sim_plat *sp, mw_domid_t granter, struct sim_share **out,
                           size_t *nout)
{
    struct sim_share *shares = NULL, *bigger, s;
    size_t n = 0, cap = 0;
    struct dirent *de;
    uint32_t dom;
    DIR *d;
    int rc = 0;

    d = sim_opendir(sp);
    if (!d)
        return -errno;
    while ((de = readdir(d)) != NULL) {
        if (!parse_share(de->d_name, &dom, &s) || dom != granter)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            bigger = realloc(shares, cap * sizeof(*shares));
            if (!bigger) {
                rc = -ENOMEM;
                goto out_closedir;
            }
            shares = bigger;
        }
        shares[n++] = s;
    }
out_closedir:
    closedir(d);
    if (rc < 0) {
        free(shares);
        return rc;
    }
    *out = shares;
    *nout = n;
    return 0;
}

/*
 * Remove the share files of processes that died without releasing them. A granter holds a
 * shared flock on its share file for the grant's lifetime (taken under the lock, when the
 * file is made), so an exclusive one can be had exactly when no granter is left. Mappings
 * made of a removed file stay valid. Lock held.
 */
static void sim_sweep_shares(struct sim_plat *sp)
{
    struct sim_share s;
    struct dirent *de;
    uint32_t dom;
    DIR *d;
    int fd;

    d = sim_opendir(sp);
    if (!d)
        return;
    while ((de = readdir(d)) != NULL) {
        if (!parse_share(de->d_name, &dom, &s) && !parse_new_share(de->d_name))
            continue;
        fd = openat(sp->dirfd, de->d_name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            unlinkat(sp->dirfd, de->d_name, 0);
        close(fd);
    }
    closedir(d);
}

/*
 * Make the share file under a temporary name and take its granter's flock; the pages are
 * sized and mapped, /then/ the file is renamed to the name that makes the grant visible.
 */
static int sim_gnt_share(struct mw_plat *plat, mw_domid_t remote, uint32_t npages,
                         uint32_t *refs, struct mw_gnt *g)
{
    struct sim_plat *sp = sim_of(plat);
    size_t len = (size_t)npages * MW_GNT_PAGE_SIZE;
    char tmp[SIM_NAME_MAX], name[SIM_NAME_MAX];
    uint32_t first = 0, i;
    void *addr;
    int fd, rc;

    rc = sim_lock(sp);
    if (rc < 0)
        return rc;
    sim_sweep_shares(sp);
    rc = sim_alloc_refs(sp, npages, &first);
    if (rc < 0)
        goto out_unlock;
    snprintf(tmp, sizeof(tmp), "gnt-new.%u.%u", sp->domid, first);
    fd = openat(sp->dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        rc = -errno;
        goto out_unlock;
    }
    if (flock(fd, LOCK_SH) < 0) {
        rc = -errno;
        goto out_unlink_tmp;
    }
    sim_unlock(sp);

    snprintf(name, sizeof(name), "gnt.%u.%u.%u.%u", sp->domid, first, npages, remote);
    g->path = strdup(name);
    if (!g->path) {
        rc = -ENOMEM;
        goto out_unlink_tmp;
    }
    if (ftruncate(fd, (off_t)len) < 0) {
        rc = -errno;
        goto out_free_path;
    }
    addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
        rc = -errno;
        goto out_free_path;
    }
    if (renameat(sp->dirfd, tmp, sp->dirfd, name) < 0) {
        rc = -errno;
        goto out_unmap;
    }
    for (i = 0; i < npages; i++)
        refs[i] = first + i;
    g->addr = addr;
    g->fd = fd;
    return 0;

out_unmap:
    munmap(addr, len);
out_free_path:
    free(g->path);
    g->path = NULL;
    unlinkat(sp->dirfd, tmp, 0);
    close(fd);
    return rc;

out_unlink_tmp:
    unlinkat(sp->dirfd, tmp, 0);
    close(fd);
out_unlock:
    sim_unlock(sp);
    return rc;
}

static const struct sim_share *sim_find_share(const struct sim_share *shares, size_t n,
                                              uint32_t ref)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (ref - shares[i].first < shares[i].count)
            return &shares[i];
    return NULL;
}

/* Map `run` pages of share `s` from reference `ref` on, at `at` (inside our reservation). */
static int sim_map_run(struct sim_plat *sp, mw_domid_t granter, const struct sim_share *s,
                       uint32_t ref, uint32_t run, void *at)
{
    char name[SIM_NAME_MAX];
    struct stat st;
    void *p;
    int fd, rc = 0;

    snprintf(name, sizeof(name), "gnt.%u.%u.%u.%u", granter, s->first, s->count, s->to);
    fd = openat(sp->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ENOENT : -errno;  /* ENOENT: released since we looked */
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out_close;
    }
    if (st.st_size != (off_t)s->count * MW_GNT_PAGE_SIZE) {
        rc = -EIO;              /* not a share file we made */
        goto out_close;
    }
    p = mmap(at, (size_t)run * MW_GNT_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
             fd, (off_t)(ref - s->first) * MW_GNT_PAGE_SIZE);
    if (p == MAP_FAILED)
        rc = -errno;
out_close:
    close(fd);
    return rc;
}

/*
 * Reserve one region, then map each run of consecutive references that lies in one share
 * with one mmap over its part of the region.
 */
static int sim_gnt_map(struct mw_plat *plat, mw_domid_t remote, uint32_t npages,
                       const uint32_t *refs, struct mw_gnt *g)
{
    struct sim_plat *sp = sim_of(plat);
    size_t len = (size_t)npages * MW_GNT_PAGE_SIZE;
    const struct sim_share *s;
    struct sim_share *shares = NULL;
    size_t nshares = 0;
    uint32_t i, run;
    char *base;
    int rc;

    rc = sim_list_shares(sp, remote, &shares, &nshares);
    if (rc < 0)
        return rc;
    base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        goto out_free_shares;
    }
    for (i = 0; i < npages; i += run) {
        s = sim_find_share(shares, nshares, refs[i]);
        if (!s) {
            rc = -ENOENT;
            goto out_unmap;
        }
        if (s->to != sp->domid) {
            rc = -EPERM;
            goto out_unmap;
        }
        for (run = 1; i + run < npages; run++)
            if (refs[i + run] != refs[i] + run || refs[i + run] - s->first >= s->count)
                break;
        rc = sim_map_run(sp, remote, s, refs[i], run, base + (size_t)i * MW_GNT_PAGE_SIZE);
        if (rc < 0)
            goto out_unmap;
    }
    free(shares);
    g->addr = base;
    return 0;

out_unmap:
    munmap(base, len);
out_free_shares:
    free(shares);
    return rc;
}

static void sim_gnt_release(struct mw_gnt *g)
{
    munmap(g->addr, (size_t)g->npages * MW_GNT_PAGE_SIZE);
    if (g->path) {
        unlinkat(sim_of(g->plat)->dirfd, g->path, 0);
        free(g->path);
        close(g->fd);           /* drops the granter's flock */
    }
}

/* ------------------------------------------------------------------------------------------
 * Event channels: port states (callers hold the lock)
 */

static void port_name(char *buf, mw_domid_t dom, uint32_t port, const char *suffix)
{
    snprintf(buf, SIM_NAME_MAX, "ev.%u.%u%s", dom, port, suffix);
}

/* @return 0, -ENOENT (no such port), -EIO (a link we did not write) */
static int sim_read_state(struct sim_plat *sp, mw_domid_t dom, uint32_t port,
                          struct sim_state *st)
{
    char name[SIM_NAME_MAX], target[SIM_NAME_MAX];
    const char *p = target;
    uint32_t rdom, rport = 0;
    ssize_t n;

    port_name(name, dom, port, ".st");
    n = readlinkat(sp->dirfd, name, target, sizeof(target) - 1);
    if (n < 0)
        return -errno;
    target[n] = '\0';
    if (strncmp(p, "unbound:", 8) == 0) {
        p += 8;
        if (!take_u32(&p, '\0', &rdom))
            return -EIO;
        st->bound = false;
    } else if (strncmp(p, "bound:", 6) == 0) {
        p += 6;
        if (!take_u32(&p, ':', &rdom) || !take_u32(&p, '\0', &rport))
            return -EIO;
        st->bound = true;
    } else {
        return -EIO;
    }
    if (rdom >= MW_DOMID_FIRST_RESERVED)
        return -EIO;
    st->rdom = (mw_domid_t)rdom;
    st->rport = rport;
    return 0;
}

/* Replace the state link in one step: a new link under a temporary name, renamed over. */
static int sim_write_state(struct sim_plat *sp, mw_domid_t dom, uint32_t port,
                           const struct sim_state *st)
{
    char name[SIM_NAME_MAX], tmp[SIM_NAME_MAX], target[SIM_NAME_MAX];

    if (st->bound)
        snprintf(target, sizeof(target), "bound:%u:%u", st->rdom, st->rport);
    else
        snprintf(target, sizeof(target), "unbound:%u", st->rdom);
    port_name(name, dom, port, ".st");
    port_name(tmp, dom, port, ".new");
    unlinkat(sp->dirfd, tmp, 0);        /* left by a process that died here */
    if (symlinkat(target, sp->dirfd, tmp) < 0)
        return -errno;
    if (renameat(sp->dirfd, tmp, sp->dirfd, name) < 0) {
        int rc = -errno;

        unlinkat(sp->dirfd, tmp, 0);
        return rc;
    }
    return 0;
}

static void sim_port_remove(struct sim_plat *sp, mw_domid_t dom, uint32_t port)
{
    char name[SIM_NAME_MAX];

    port_name(name, dom, port, ".st");
    unlinkat(sp->dirfd, name, 0);
    port_name(name, dom, port, "");
    unlinkat(sp->dirfd, name, 0);
}

/*
 * A port that exists: is its owner alive? Its owner keeps the FIFO open for reading, so
 * opening it for writing fails with ENXIO exactly when the owner died. Remove a dead one.
 * @return 0 (alive), 1 (free now), -errno
 */
static int sim_port_reclaim(struct sim_plat *sp, mw_domid_t dom, uint32_t port)
{
    char name[SIM_NAME_MAX];
    int fd;

    port_name(name, dom, port, "");
    fd = openat(sp->dirfd, name, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    if (errno == ENOENT)
        return 1;
    if (errno != ENXIO)
        return -errno;
    sim_port_remove(sp, dom, port);
    return 1;
}

/*
 * Allocate the lowest free port of our domain, in state `st`: its FIFO, opened read-write
 * into *rfd, and its state link.
 * @return the port, -ENOSPC, -errno
 */
static int sim_port_alloc(struct sim_plat *sp, const struct sim_state *st, int *rfd)
{
    char name[SIM_NAME_MAX];
    uint32_t port;
    int fd, rc;

    for (port = 1; port < SIM_MAX_PORTS; port++) {
        port_name(name, sp->domid, port, "");
        if (mkfifoat(sp->dirfd, name, 0666) < 0) {
            if (errno != EEXIST)
                return -errno;
            rc = sim_port_reclaim(sp, sp->domid, port);
            if (rc < 0)
                return rc;
            if (rc == 0)
                continue;
            if (mkfifoat(sp->dirfd, name, 0666) < 0)
                return -errno;
        }
        fd = openat(sp->dirfd, name, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            rc = -errno;
            goto out_remove_port;
        }
        rc = sim_write_state(sp, sp->domid, port, st);
        if (rc < 0)
            goto out_close_fifo;
        *rfd = fd;
        return (int)port;
    }
    return -ENOSPC;

out_close_fifo:
    close(fd);
out_remove_port:
    sim_port_remove(sp, sp->domid, port);
    return rc;
}

/*
 * Close our `port`: its peer, if still bound to it, is offered to us again (as on Xen, where
 * the surviving end goes back to unbound), then the port's files go.
 */
static void sim_port_close(struct sim_plat *sp, uint32_t port)
{
    struct sim_state mine, theirs;

    if (sim_read_state(sp, sp->domid, port, &mine) == 0 && mine.bound &&
        sim_read_state(sp, mine.rdom, mine.rport, &theirs) == 0 && theirs.bound &&
        theirs.rdom == sp->domid && theirs.rport == port) {
        theirs.bound = false;
        sim_write_state(sp, mine.rdom, mine.rport, &theirs);
    }
    sim_port_remove(sp, sp->domid, port);
}

/*
 * Open, for kicking, the FIFO of the other end of our `port`, if both ends say they are bound
 * to each other (a port number may have been reused since our state was written).
 * @return the fd, -ENOTCONN, -errno
 */
static int sim_open_peer(struct sim_plat *sp, uint32_t port)
{
    struct sim_state mine, theirs;
    char name[SIM_NAME_MAX];
    int fd, rc;

    rc = sim_read_state(sp, sp->domid, port, &mine);
    if (rc < 0)
        return rc;
    if (!mine.bound)
        return -ENOTCONN;
    rc = sim_read_state(sp, mine.rdom, mine.rport, &theirs);
    if (rc < 0 || !theirs.bound || theirs.rdom != sp->domid || theirs.rport != port)
        return -ENOTCONN;
    port_name(name, mine.rdom, mine.rport, "");
    fd = openat(sp->dirfd, name, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ENXIO || errno == ENOENT ? -ENOTCONN : -errno;
    return fd;
}

/*
 * Ring the doorbell behind `fd`: one byte, never blocking; EAGAIN means the FIFO is full, so
 * the port is pending anyway. A FIFO whose owner is gone answers EPIPE and raises SIGPIPE,
 * which must not kill the caller: SIGPIPE stays blocked across the write, and one raised by
 * the write is taken back before the mask is restored.
 * @return 0, -EPIPE (the owner is gone), -errno
 */
static int sim_kick(int fd)
{
    static const char bell = 1;
    const struct timespec zero = { 0, 0 };
    sigset_t pipe_set, old, pend;
    bool was_pending = false;
    ssize_t n;
    int rc = 0;

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    if (sigismember(&old, SIGPIPE) && sigpending(&pend) == 0)
        was_pending = sigismember(&pend, SIGPIPE);
    do
        n = write(fd, &bell, 1);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        rc = errno == EAGAIN ? 0 : -errno;
    if (rc == -EPIPE && !was_pending)
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Event channels: handles
 */

static struct sim_evtchn *se_of(const struct mw_evtchn *ec)
{
    return ec->priv;
}

static struct sim_port *find_port(struct sim_evtchn *se, uint32_t port)
{
    size_t i;

    for (i = 0; i < se->nports; i++)
        if (se->ports[i].port == port)
            return &se->ports[i];
    return NULL;
}

/* Make room for one more port, so that adding it later cannot fail. */
static int reserve_port(struct sim_evtchn *se)
{
    struct sim_port *bigger;
    size_t cap;

    if (se->nports < se->cap)
        return 0;
    cap = se->cap ? 2 * se->cap : 4;
    bigger = realloc(se->ports, cap * sizeof(*bigger));
    if (!bigger)
        return -ENOMEM;
    se->ports = bigger;
    se->cap = cap;
    return 0;
}

static int watch_port(struct mw_evtchn *ec, uint32_t port, int rfd)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u32 = port;
    return epoll_ctl(ec->fd, EPOLL_CTL_ADD, rfd, &ev) < 0 ? -errno : 0;
}

static int sim_evtchn_open(struct mw_evtchn *ec)
{
    struct sim_evtchn *se;

    se = calloc(1, sizeof(*se));
    if (!se)
        return -ENOMEM;
    ec->fd = epoll_create1(EPOLL_CLOEXEC);
    if (ec->fd < 0) {
        int rc = -errno;

        free(se);
        return rc;
    }
    pthread_mutex_init(&se->lock, NULL);
    ec->priv = se;
    return 0;
}

static void forget_port(struct mw_evtchn *ec, struct sim_port *p)
{
    struct sim_evtchn *se = se_of(ec);

    epoll_ctl(ec->fd, EPOLL_CTL_DEL, p->rfd, NULL);
    close(p->rfd);
    if (p->peer_fd >= 0)
        close(p->peer_fd);
    *p = se->ports[--se->nports];
}

static void sim_evtchn_close(struct mw_evtchn *ec)
{
    struct sim_plat *sp = sim_of(ec->plat);
    struct sim_evtchn *se = se_of(ec);
    size_t i;

    pthread_mutex_lock(&se->lock);
    if (se->nports && sim_lock(sp) == 0) {
        for (i = 0; i < se->nports; i++)
            sim_port_close(sp, se->ports[i].port);
        sim_unlock(sp);
    }
    while (se->nports)
        forget_port(ec, &se->ports[0]);
    pthread_mutex_unlock(&se->lock);
    pthread_mutex_destroy(&se->lock);
    free(se->ports);
    free(se);
    close(ec->fd);
}

static mw_domid_t resolve_domid(struct sim_plat *sp, mw_domid_t dom)
{
    return dom == MW_DOMID_SELF ? sp->domid : dom;
}

static int sim_evtchn_alloc_unbound(struct mw_evtchn *ec, mw_domid_t remote)
{
    struct sim_plat *sp = sim_of(ec->plat);
    struct sim_evtchn *se = se_of(ec);
    struct sim_state st = { .bound = false, .rdom = resolve_domid(sp, remote) };
    int port, rfd, rc;

    pthread_mutex_lock(&se->lock);
    rc = reserve_port(se);
    if (rc < 0)
        goto out_unlock;
    rc = sim_lock(sp);
    if (rc < 0)
        goto out_unlock;
    port = sim_port_alloc(sp, &st, &rfd);
    if (port < 0) {
        rc = port;
        goto out_unlock_sim;
    }
    rc = watch_port(ec, (uint32_t)port, rfd);
    if (rc < 0)
        goto out_free_port;
    se->ports[se->nports++] = (struct sim_port){ .port = (uint32_t)port, .rfd = rfd,
                                                 .peer_fd = -1 };
    rc = port;
    goto out_unlock_sim;

out_free_port:
    close(rfd);
    sim_port_remove(sp, sp->domid, (uint32_t)port);
out_unlock_sim:
    sim_unlock(sp);
out_unlock:
    pthread_mutex_unlock(&se->lock);
    return rc;
}

static int sim_evtchn_bind_interdomain(struct mw_evtchn *ec, mw_domid_t remote,
                                       uint32_t remote_port)
{
    struct sim_plat *sp = sim_of(ec->plat);
    struct sim_evtchn *se = se_of(ec);
    struct sim_state theirs, mine;
    char name[SIM_NAME_MAX];
    int port, rfd, peer_fd, rc;

    mine = (struct sim_state){ .bound = true, .rdom = resolve_domid(sp, remote),
                               .rport = remote_port };
    pthread_mutex_lock(&se->lock);
    rc = reserve_port(se);
    if (rc < 0)
        goto out_unlock;
    rc = sim_lock(sp);
    if (rc < 0)
        goto out_unlock;
    rc = sim_read_state(sp, mine.rdom, remote_port, &theirs);
    if (rc == -ENOENT || (rc == 0 && (theirs.bound || theirs.rdom != sp->domid)))
        rc = -EINVAL;
    if (rc < 0)
        goto out_unlock_sim;
    port_name(name, mine.rdom, remote_port, "");
    peer_fd = openat(sp->dirfd, name, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (peer_fd < 0) {
        rc = errno == ENXIO ? -ESRCH : errno == ENOENT ? -EINVAL : -errno;
        goto out_unlock_sim;
    }
    port = sim_port_alloc(sp, &mine, &rfd);
    if (port < 0) {
        rc = port;
        goto out_close_peer;
    }
    rc = watch_port(ec, (uint32_t)port, rfd);
    if (rc < 0)
        goto out_free_port;
    theirs = (struct sim_state){ .bound = true, .rdom = sp->domid, .rport = (uint32_t)port };
    rc = sim_write_state(sp, mine.rdom, remote_port, &theirs);
    if (rc < 0)
        goto out_unwatch;
    se->ports[se->nports++] = (struct sim_port){ .port = (uint32_t)port, .rfd = rfd,
                                                 .peer_fd = peer_fd };
    /* Xen sets the new port pending, to make up for kicks lost while the other end was
     * unbound: do the same, so that code above meets this spurious event here too */
    sim_kick(rfd);
    rc = port;
    goto out_unlock_sim;

out_unwatch:
    epoll_ctl(ec->fd, EPOLL_CTL_DEL, rfd, NULL);
out_free_port:
    close(rfd);
    sim_port_remove(sp, sp->domid, (uint32_t)port);
out_close_peer:
    close(peer_fd);
out_unlock_sim:
    sim_unlock(sp);
out_unlock:
    pthread_mutex_unlock(&se->lock);
    return rc;
}

/* Open the other end's FIFO into p->peer_fd. */
static int connect_peer(struct sim_plat *sp, struct sim_port *p)
{
    int fd, rc;

    rc = sim_lock(sp);
    if (rc < 0)
        return rc;
    fd = sim_open_peer(sp, p->port);
    sim_unlock(sp);
    if (fd < 0)
        return fd;
    p->peer_fd = fd;
    return 0;
}

static int sim_evtchn_notify(struct mw_evtchn *ec, uint32_t port)
{
    struct sim_plat *sp = sim_of(ec->plat);
    struct sim_evtchn *se = se_of(ec);
    struct sim_port *p;
    int rc;

    pthread_mutex_lock(&se->lock);
    p = find_port(se, port);
    if (!p) {
        rc = -EINVAL;
        goto out_unlock;
    }
    if (p->peer_fd < 0) {
        rc = connect_peer(sp, p);
        if (rc < 0)
            goto out_unlock;
    }
    rc = sim_kick(p->peer_fd);
    if (rc != -EPIPE)
        goto out_unlock;
    /* the end we knew has gone; our port may have been bound anew since: look once more */
    close(p->peer_fd);
    p->peer_fd = -1;
    rc = connect_peer(sp, p);
    if (rc < 0)
        goto out_unlock;
    rc = sim_kick(p->peer_fd);
    if (rc == -EPIPE) {
        close(p->peer_fd);
        p->peer_fd = -1;
        rc = -ENOTCONN;
    }
out_unlock:
    pthread_mutex_unlock(&se->lock);
    return rc;
}

/* Empty a FIFO: taking the port unmasks it, kicks from now on fire again. */
static void drain(int fd)
{
    char buf[256];
    ssize_t n;

    do
        n = read(fd, buf, sizeof(buf));
    while (n == (ssize_t)sizeof(buf) || (n < 0 && errno == EINTR));
}

static int sim_evtchn_pending(struct mw_evtchn *ec)
{
    struct sim_evtchn *se = se_of(ec);
    struct epoll_event ev;
    struct sim_port *p;
    int n, rc;

    pthread_mutex_lock(&se->lock);
    n = epoll_wait(ec->fd, &ev, 1, 0);
    if (n < 0) {
        rc = -errno;
        goto out_unlock;
    }
    p = n ? find_port(se, ev.data.u32) : NULL;
    if (!p) {
        rc = -EAGAIN;
        goto out_unlock;
    }
    drain(p->rfd);
    rc = (int)p->port;
out_unlock:
    pthread_mutex_unlock(&se->lock);
    return rc;
}

static int sim_evtchn_unbind(struct mw_evtchn *ec, uint32_t port)
{
    struct sim_plat *sp = sim_of(ec->plat);
    struct sim_evtchn *se = se_of(ec);
    struct sim_port *p;
    int rc;

    pthread_mutex_lock(&se->lock);
    p = find_port(se, port);
    if (!p) {
        rc = -EINVAL;
        goto out_unlock;
    }
    rc = sim_lock(sp);
    if (rc < 0)
        goto out_unlock;
    sim_port_close(sp, port);
    sim_unlock(sp);
    forget_port(ec, p);
out_unlock:
    pthread_mutex_unlock(&se->lock);
    return rc;
}

const struct mw_plat_ops mw_plat_sim_ops = {
    .name = "sim",
    .open = sim_open,
    .close = sim_close,
    .gnt_share = sim_gnt_share,
    .gnt_map = sim_gnt_map,
    .gnt_release = sim_gnt_release,
    .evtchn_open = sim_evtchn_open,
    .evtchn_close = sim_evtchn_close,
    .evtchn_alloc_unbound = sim_evtchn_alloc_unbound,
    .evtchn_bind_interdomain = sim_evtchn_bind_interdomain,
    .evtchn_notify = sim_evtchn_notify,
    .evtchn_pending = sim_evtchn_pending,
    .evtchn_unbind = sim_evtchn_unbind,
};
