/*
 * plat_fakexen: a model of Linux's /dev/xen/{gntalloc,gntdev,evtchn} inside one process, so
 * that xen/platform_xen.c can run on a host without Xen. It is linked into a test program
 * with -Wl,--wrap=open,--wrap=access,--wrap=ioctl,--wrap=mmap,--wrap=read,--wrap=write,
 * --wrap=close: calls on the model's fds come here, every other call goes to libc.
 *
 * It models one domain, 0, that grants to and maps from itself, with the behaviour the
 * platform relies on, as the Linux drivers and Xen show it:
 *   gntalloc  ALLOC_GREF gives `count` refs and an mmap offset; mmap must cover exactly that
 *             allocation; DEALLOC_GREF ends it (pages stay while mapped).
 *   gntdev    MAP_GRANT_REF only records refs and gives an offset; the grant map happens at
 *             mmap, which fails with EINVAL if a ref is not granted to us; UNMAP_GRANT_REF
 *             ends the record.
 *   evtchn    ports of the domain; BIND_INTERDOMAIN sets the new port pending (Xen makes up
 *             for lost kicks); a delivered port is masked until written back; a kick on a
 *             pending or masked port only sets pending (delivered on unmask); NOTIFY and
 *             UNBIND of a port the file did not bind: ENOTCONN; read() without O_NONBLOCK
 *             is not modelled (the platform opens it non-blocking). The fd is an eventfd in
 *             semaphore mode, so poll() on it works unchanged.
 * This is a test double: the real drivers are exercised by the real-Xen harness.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

typedef uint16_t domid_t;
typedef uint32_t grant_ref_t;
#include <xen/evtchn.h>
#include <xen/gntalloc.h>
#include <xen/gntdev.h>

#define PG 4096u
#define MAX_FDS 1024
#define MAX_GREFS 4096
#define MAX_PORTS 256
#define FIRST_GREF 8

int __real_open(const char *path, int flags, ...);
int __real_access(const char *path, int mode);
int __real_ioctl(int fd, unsigned long req, ...);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
ssize_t __real_read(int fd, void *buf, size_t n);
ssize_t __real_write(int fd, const void *buf, size_t n);
int __real_close(int fd);

enum dev { NONE, GNTALLOC, GNTDEV, EVTCHN };

static enum dev devs[MAX_FDS];

/* gntalloc: one allocation per ALLOC_GREF, backed by a memfd */
struct alloc {
    bool live;
    int fd;                     /* the gntalloc fd it was made on */
    uint64_t index;
    uint32_t count, first;      /* refs first .. first+count-1 */
    uint16_t domid;             /* who may map them */
    int memfd;
};
static struct alloc allocs[MAX_GREFS];
static uint32_t next_gref = FIRST_GREF;
static uint64_t next_index = 1u << 20;

/* gntdev: one record per MAP_GRANT_REF */
struct gmap {
    bool live;
    int fd;
    uint64_t index;
    uint32_t count;
    struct ioctl_gntdev_grant_ref *refs;
};
static struct gmap gmaps[MAX_GREFS];

/* evtchn ports of domain 0 */
struct port {
    int fd;                     /* the evtchn file that holds it; -1: free */
    bool bound;                 /* else unbound */
    uint32_t peer;              /* bound: the other end */
    bool pending, masked;
};
static struct port ports[MAX_PORTS];
static uint32_t ring[MAX_FDS][MAX_PORTS];   /* delivered ports per evtchn file */
static unsigned ring_n[MAX_FDS];

static bool self_domid(unsigned d)
{
    return d == 0 || d == 0x7ff0;
}

static void ports_init(void)
{
    static bool done;
    int i;

    if (done)
        return;
    for (i = 0; i < MAX_PORTS; i++)
        ports[i].fd = -1;
    done = true;
}

int __wrap_access(const char *path, int mode)
{
    if (strncmp(path, "/dev/xen/", 9) == 0)
        return 0;
    return __real_access(path, mode);
}

int __wrap_open(const char *path, int flags, ...)
{
    enum dev d = NONE;
    mode_t mode = 0;
    va_list ap;
    int fd;

    if (strcmp(path, "/dev/xen/gntalloc") == 0)
        d = GNTALLOC;
    else if (strcmp(path, "/dev/xen/gntdev") == 0)
        d = GNTDEV;
    else if (strcmp(path, "/dev/xen/evtchn") == 0)
        d = EVTCHN;
    if (d == NONE) {
        if (flags & (O_CREAT | __O_TMPFILE)) {
            va_start(ap, flags);
            mode = va_arg(ap, mode_t);
            va_end(ap);
        }
        return __real_open(path, flags, mode);
    }
    ports_init();
    if (d == EVTCHN) {
        if (!(flags & O_NONBLOCK)) {
            errno = EOPNOTSUPP;         /* blocking reads are not modelled */
            return -1;
        }
        fd = eventfd(0, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
    } else {
        fd = __real_open("/dev/null", O_RDWR | O_CLOEXEC);
    }
    if (fd < 0 || fd >= MAX_FDS)
        return -1;
    devs[fd] = d;
    ring_n[fd] = 0;
    return fd;
}

/* Deliver a kick to port p: Xen sets it pending; Linux queues it for its file unless masked. */
static void set_pending(uint32_t p)
{
    static const uint64_t one = 1;
    struct port *pt = &ports[p];

    if (pt->pending)
        return;
    pt->pending = true;
    if (pt->masked || pt->fd < 0 || ring_n[pt->fd] >= MAX_PORTS)
        return;
    pt->pending = false;
    pt->masked = true;
    ring[pt->fd][ring_n[pt->fd]++] = p;
    __real_write(pt->fd, &one, sizeof(one));
}

static uint32_t new_port(int fd)
{
    uint32_t p;

    for (p = 1; p < MAX_PORTS; p++)
        if (ports[p].fd < 0) {
            ports[p] = (struct port){ .fd = fd };
            return p;
        }
    return 0;
}

static int close_port(uint32_t p)
{
    struct port *pt = &ports[p];

    if (pt->bound && ports[pt->peer].bound && ports[pt->peer].peer == p)
        ports[pt->peer].bound = false;      /* the other end goes back to unbound */
    *pt = (struct port){ .fd = -1 };
    return 0;
}

static int evtchn_ioctl(int fd, unsigned long req, void *arg)
{
    uint32_t p;

    switch (req) {
    case IOCTL_EVTCHN_BIND_UNBOUND_PORT: {
        struct ioctl_evtchn_bind_unbound_port *b = arg;

        if (!self_domid(b->remote_domain))
            return errno = ESRCH, -1;
        p = new_port(fd);
        return p ? (int)p : (errno = ENOSPC, -1);
    }
    case IOCTL_EVTCHN_BIND_INTERDOMAIN: {
        struct ioctl_evtchn_bind_interdomain *b = arg;
        uint32_t r = b->remote_port;

        if (!self_domid(b->remote_domain) || r == 0 || r >= MAX_PORTS || ports[r].fd < 0 ||
            ports[r].bound)
            return errno = EINVAL, -1;
        p = new_port(fd);
        if (!p)
            return errno = ENOSPC, -1;
        ports[p].bound = ports[r].bound = true;
        ports[p].peer = r;
        ports[r].peer = p;
        set_pending(p);
        return (int)p;
    }
    case IOCTL_EVTCHN_NOTIFY: {
        struct ioctl_evtchn_notify *n = arg;

        p = n->port;
        if (p == 0 || p >= MAX_PORTS || ports[p].fd != fd)
            return errno = ENOTCONN, -1;
        if (ports[p].bound)
            set_pending(ports[p].peer);
        return 0;               /* Xen drops a kick on an unbound port */
    }
    case IOCTL_EVTCHN_UNBIND: {
        struct ioctl_evtchn_unbind *u = arg;

        p = u->port;
        if (p == 0 || p >= MAX_PORTS || ports[p].fd != fd)
            return errno = ENOTCONN, -1;
        return close_port(p);
    }
    }
    return errno = ENOTTY, -1;
}

static int gntalloc_ioctl(int fd, unsigned long req, void *arg)
{
    int i;

    if (req == IOCTL_GNTALLOC_ALLOC_GREF) {
        struct ioctl_gntalloc_alloc_gref *a = arg;
        uint32_t k;

        if (a->count == 0 || a->count > 1024 || !(a->flags & GNTALLOC_FLAG_WRITABLE))
            return errno = EINVAL, -1;
        for (i = 0; i < MAX_GREFS && allocs[i].live; i++)
            ;
        if (i == MAX_GREFS)
            return errno = ENOSPC, -1;
        allocs[i] = (struct alloc){ .live = true, .fd = fd, .index = next_index,
                                    .count = a->count, .first = next_gref, .domid = a->domid };
        allocs[i].memfd = memfd_create("fakexen-gntalloc", MFD_CLOEXEC);
        if (allocs[i].memfd < 0 || ftruncate(allocs[i].memfd, (off_t)a->count * PG) < 0)
            return -1;
        a->index = next_index;
        for (k = 0; k < a->count; k++)
            a->gref_ids[k] = next_gref + k;
        next_gref += a->count;
        next_index += (uint64_t)a->count * PG;
        return 0;
    }
    if (req == IOCTL_GNTALLOC_DEALLOC_GREF) {
        struct ioctl_gntalloc_dealloc_gref *d = arg;

        for (i = 0; i < MAX_GREFS; i++)
            if (allocs[i].live && allocs[i].fd == fd && allocs[i].index == d->index &&
                allocs[i].count == d->count) {
                allocs[i].live = false;
                __real_close(allocs[i].memfd);  /* the pages live on while mapped */
                return 0;
            }
        return errno = EINVAL, -1;
    }
    return errno = ENOTTY, -1;
}

static int gntdev_ioctl(int fd, unsigned long req, void *arg)
{
    int i;

    if (req == IOCTL_GNTDEV_MAP_GRANT_REF) {
        struct ioctl_gntdev_map_grant_ref *m = arg;

        if (m->count == 0)
            return errno = EINVAL, -1;
        for (i = 0; i < MAX_GREFS && gmaps[i].live; i++)
            ;
        if (i == MAX_GREFS)
            return errno = ENOMEM, -1;
        gmaps[i] = (struct gmap){ .live = true, .fd = fd, .index = next_index,
                                  .count = m->count };
        gmaps[i].refs = malloc(m->count * sizeof(m->refs[0]));
        if (!gmaps[i].refs)
            return errno = ENOMEM, -1;
        memcpy(gmaps[i].refs, m->refs, m->count * sizeof(m->refs[0]));
        m->index = next_index;
        next_index += (uint64_t)m->count * PG;
        return 0;
    }
    if (req == IOCTL_GNTDEV_UNMAP_GRANT_REF) {
        struct ioctl_gntdev_unmap_grant_ref *u = arg;

        for (i = 0; i < MAX_GREFS; i++)
            if (gmaps[i].live && gmaps[i].fd == fd && gmaps[i].index == u->index &&
                gmaps[i].count == u->count) {
                gmaps[i].live = false;
                free(gmaps[i].refs);
                return 0;
            }
        return errno = EINVAL, -1;
    }
    return errno = ENOTTY, -1;
}

int __wrap_ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    void *arg;

    va_start(ap, req);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (fd < 0 || fd >= MAX_FDS || devs[fd] == NONE)
        return __real_ioctl(fd, req, arg);
    if (devs[fd] == EVTCHN)
        return evtchn_ioctl(fd, req, arg);
    if (devs[fd] == GNTALLOC)
        return gntalloc_ioctl(fd, req, arg);
    return gntdev_ioctl(fd, req, arg);
}

static struct alloc *find_gref(uint32_t ref)
{
    int i;

    for (i = 0; i < MAX_GREFS; i++)
        if (allocs[i].live && ref - allocs[i].first < allocs[i].count)
            return &allocs[i];
    return NULL;
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    uint32_t k;
    char *base;
    int i;

    if (fd < 0 || fd >= MAX_FDS || devs[fd] == NONE)
        return __real_mmap(addr, len, prot, flags, fd, off);
    if (!(flags & MAP_SHARED))
        return errno = EINVAL, MAP_FAILED;
    if (devs[fd] == GNTALLOC) {
        for (i = 0; i < MAX_GREFS; i++)
            if (allocs[i].live && allocs[i].fd == fd && allocs[i].index == (uint64_t)off &&
                (size_t)allocs[i].count * PG == len)
                return __real_mmap(addr, len, prot, flags, allocs[i].memfd, 0);
        return errno = EINVAL, MAP_FAILED;
    }
    if (devs[fd] != GNTDEV)
        return errno = ENODEV, MAP_FAILED;
    for (i = 0; i < MAX_GREFS; i++)
        if (gmaps[i].live && gmaps[i].fd == fd && gmaps[i].index == (uint64_t)off &&
            (size_t)gmaps[i].count * PG == len)
            break;
    if (i == MAX_GREFS)
        return errno = EINVAL, MAP_FAILED;
    /* the grant map hypercall: every ref must be granted by that domain, to us */
    for (k = 0; k < gmaps[i].count; k++) {
        struct alloc *a = find_gref(gmaps[i].refs[k].ref);

        if (!a || !self_domid(gmaps[i].refs[k].domid) || !self_domid(a->domid))
            return errno = EINVAL, MAP_FAILED;
    }
    base = __real_mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return MAP_FAILED;
    for (k = 0; k < gmaps[i].count; k++) {
        uint32_t ref = gmaps[i].refs[k].ref;
        struct alloc *a = find_gref(ref);

        if (__real_mmap(base + (size_t)k * PG, PG, prot, MAP_SHARED | MAP_FIXED, a->memfd,
                        (off_t)(ref - a->first) * PG) == MAP_FAILED) {
            munmap(base, len);
            return MAP_FAILED;
        }
    }
    return base;
}

ssize_t __wrap_read(int fd, void *buf, size_t n)
{
    uint64_t v;
    size_t k = 0;

    if (fd < 0 || fd >= MAX_FDS || devs[fd] != EVTCHN)
        return __real_read(fd, buf, n);
    if (n % sizeof(uint32_t))
        return errno = EINVAL, -1;
    if (ring_n[fd] == 0)
        return errno = EAGAIN, -1;
    while (k < n / sizeof(uint32_t) && ring_n[fd]) {
        ((uint32_t *)buf)[k++] = ring[fd][0];
        memmove(ring[fd], ring[fd] + 1, --ring_n[fd] * sizeof(uint32_t));
        __real_read(fd, &v, sizeof(v));     /* one count off the semaphore */
    }
    return (ssize_t)(k * sizeof(uint32_t));
}

ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
    size_t k;

    if (fd < 0 || fd >= MAX_FDS || devs[fd] != EVTCHN)
        return __real_write(fd, buf, n);
    if (n % sizeof(uint32_t))
        return errno = EINVAL, -1;
    for (k = 0; k < n / sizeof(uint32_t); k++) {
        uint32_t p = ((const uint32_t *)buf)[k];

        if (p == 0 || p >= MAX_PORTS || ports[p].fd != fd)
            continue;
        ports[p].masked = false;
        if (ports[p].pending) {             /* a kick came while it was masked */
            ports[p].pending = false;
            set_pending(p);
        }
    }
    return (ssize_t)n;
}

int __wrap_close(int fd)
{
    uint32_t p;
    int i;

    if (fd >= 0 && fd < MAX_FDS && devs[fd] != NONE) {
        if (devs[fd] == EVTCHN)
            for (p = 1; p < MAX_PORTS; p++)
                if (ports[p].fd == fd)
                    close_port(p);
        for (i = 0; i < MAX_GREFS; i++) {
            if (devs[fd] == GNTALLOC && allocs[i].live && allocs[i].fd == fd) {
                allocs[i].live = false;
                __real_close(allocs[i].memfd);
            }
            if (devs[fd] == GNTDEV && gmaps[i].live && gmaps[i].fd == fd) {
                gmaps[i].live = false;
                free(gmaps[i].refs);
            }
        }
        devs[fd] = NONE;
    }
    return __real_close(fd);
}
