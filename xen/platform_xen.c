/*
 * mwcomms platform layer, xen backend: the Linux devices of a real Xen domain.
 *
 *   /dev/xen/gntalloc  share: IOCTL_GNTALLOC_ALLOC_GREF for N pages, then one mmap of them
 *   /dev/xen/gntdev    map: IOCTL_GNTDEV_MAP_GRANT_REF with N references, then one mmap (the
 *                      hypercall happens there); release: munmap, then the unmap ioctl
 *   /dev/xen/evtchn    one open file per handle: the BIND_UNBOUND_PORT, BIND_INTERDOMAIN,
 *                      NOTIFY and UNBIND ioctls; read() takes a pending port (which masks
 *                      it) and write() of the same port unmasks it
 *
 * No libxen: the kernel's UAPI headers (linux-libc-dev) are all it needs. The grant devices
 * are opened once per platform; a domain that lacks one (gntalloc is often missing in a
 * backend domain) can still use the other, and the calls that need it give the open's error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

typedef uint16_t domid_t;       /* the UAPI headers use these Xen types without defining them */
typedef uint32_t grant_ref_t;
#include <xen/evtchn.h>
#include <xen/gntalloc.h>
#include <xen/gntdev.h>

#include "platform_priv.h"

#define EVTCHN_DEV "/dev/xen/evtchn"

struct xen_plat {
    int gntalloc_fd;            /* /dev/xen/gntalloc, or -errno of its open */
    int gntdev_fd;              /* /dev/xen/gntdev, or -errno of its open */
};

static struct xen_plat *xen_of(const struct mw_plat *plat)
{
    return plat->priv;
}

static int open_dev(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);

    return fd < 0 ? -errno : fd;
}

static int xen_open(struct mw_plat *plat, const struct mw_plat_config *cfg)
{
    struct xen_plat *xp;

    (void)cfg;                  /* nothing to configure: the devices are the machine's */
    if (access(EVTCHN_DEV, F_OK) < 0)
        return -ENODEV;
    xp = calloc(1, sizeof(*xp));
    if (!xp)
        return -ENOMEM;
    xp->gntalloc_fd = open_dev("/dev/xen/gntalloc");
    xp->gntdev_fd = open_dev("/dev/xen/gntdev");
    plat->priv = xp;
    plat->domid = -ENOSYS;
    return 0;
}

static void xen_close(struct mw_plat *plat)
{
    struct xen_plat *xp = xen_of(plat);

    if (xp->gntalloc_fd >= 0)
        close(xp->gntalloc_fd);
    if (xp->gntdev_fd >= 0)
        close(xp->gntdev_fd);
    free(xp);
}

static int xen_gnt_share(struct mw_plat *plat, mw_domid_t remote, uint32_t npages,
                         uint32_t *refs, struct mw_gnt *g)
{
    struct xen_plat *xp = xen_of(plat);
    size_t len = (size_t)npages * MW_GNT_PAGE_SIZE;
    struct ioctl_gntalloc_alloc_gref *a;
    struct ioctl_gntalloc_dealloc_gref d;
    void *addr;
    int rc = 0;

    if (xp->gntalloc_fd < 0)
        return xp->gntalloc_fd;
    /* gref_ids is a variable array declared with one element */
    a = calloc(1, sizeof(*a) + (npages - 1) * sizeof(a->gref_ids[0]));
    if (!a)
        return -ENOMEM;
    a->domid = remote;
    a->flags = GNTALLOC_FLAG_WRITABLE;
    a->count = npages;
    if (ioctl(xp->gntalloc_fd, IOCTL_GNTALLOC_ALLOC_GREF, a) < 0) {
        rc = -errno;
        goto out_free_req;
    }
    addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, xp->gntalloc_fd,
                (off_t)a->index);
    if (addr == MAP_FAILED) {
        rc = -errno;
        goto out_dealloc;
    }
    memcpy(refs, a->gref_ids, npages * sizeof(refs[0]));
    g->addr = addr;
    g->index = a->index;
    goto out_free_req;

out_dealloc:
    d = (struct ioctl_gntalloc_dealloc_gref){ .index = a->index, .count = npages };
    ioctl(xp->gntalloc_fd, IOCTL_GNTALLOC_DEALLOC_GREF, &d);
out_free_req:
    free(a);
    return rc;
}

static int xen_gnt_map(struct mw_plat *plat, mw_domid_t remote, uint32_t npages,
                       const uint32_t *refs, struct mw_gnt *g)
{
    struct xen_plat *xp = xen_of(plat);
    size_t len = (size_t)npages * MW_GNT_PAGE_SIZE;
    struct ioctl_gntdev_map_grant_ref *m;
    struct ioctl_gntdev_unmap_grant_ref u;
    uint32_t i;
    void *addr;
    int rc = 0;

    if (xp->gntdev_fd < 0)
        return xp->gntdev_fd;
    m = calloc(1, sizeof(*m) + (npages - 1) * sizeof(m->refs[0]));
    if (!m)
        return -ENOMEM;
    m->count = npages;
    for (i = 0; i < npages; i++) {
        m->refs[i].domid = remote;
        m->refs[i].ref = refs[i];
    }
    if (ioctl(xp->gntdev_fd, IOCTL_GNTDEV_MAP_GRANT_REF, m) < 0) {
        rc = -errno;
        goto out_free_req;
    }
    /* the grant hypercall happens here: a bad or foreign reference fails the mmap */
    addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, xp->gntdev_fd, (off_t)m->index);
    if (addr == MAP_FAILED) {
        rc = -errno;
        goto out_unmap_refs;
    }
    g->addr = addr;
    g->index = m->index;
    goto out_free_req;

out_unmap_refs:
    u = (struct ioctl_gntdev_unmap_grant_ref){ .index = m->index, .count = npages };
    ioctl(xp->gntdev_fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &u);
out_free_req:
    free(m);
    return rc;
}

static void xen_gnt_release(struct mw_gnt *g)
{
    struct xen_plat *xp = xen_of(g->plat);

    munmap(g->addr, (size_t)g->npages * MW_GNT_PAGE_SIZE);
    if (g->mapped) {
        struct ioctl_gntdev_unmap_grant_ref u = { .index = g->index, .count = g->npages };

        ioctl(xp->gntdev_fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &u);
    } else {
        /* pages the other domain still maps are freed by the kernel when it unmaps them */
        struct ioctl_gntalloc_dealloc_gref d = { .index = g->index, .count = g->npages };

        ioctl(xp->gntalloc_fd, IOCTL_GNTALLOC_DEALLOC_GREF, &d);
    }
}

static int xen_evtchn_open(struct mw_evtchn *ec)
{
    ec->fd = open(EVTCHN_DEV, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (ec->fd < 0)
        return errno == ENOENT ? -ENODEV : -errno;
    return 0;
}

static void xen_evtchn_close(struct mw_evtchn *ec)
{
    close(ec->fd);              /* the kernel unbinds every port of this file */
}

/* The evtchn ioctls return the port, or -1 with errno. */
static int evtchn_ioctl(struct mw_evtchn *ec, unsigned long req, void *arg)
{
    int rc = ioctl(ec->fd, req, arg);

    return rc < 0 ? -errno : rc;
}

static int xen_evtchn_alloc_unbound(struct mw_evtchn *ec, mw_domid_t remote)
{
    struct ioctl_evtchn_bind_unbound_port b = { .remote_domain = remote };

    return evtchn_ioctl(ec, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &b);
}

static int xen_evtchn_bind_interdomain(struct mw_evtchn *ec, mw_domid_t remote,
                                       uint32_t remote_port)
{
    struct ioctl_evtchn_bind_interdomain b = { .remote_domain = remote,
                                               .remote_port = remote_port };

    return evtchn_ioctl(ec, IOCTL_EVTCHN_BIND_INTERDOMAIN, &b);
}

/*
 * The driver answers -ENOTCONN for a port this file did not bind; the API says -EINVAL there
 * (and keeps -ENOTCONN for a peer that is gone, which only sim can tell).
 */
static int not_ours_is_einval(int rc)
{
    return rc == -ENOTCONN ? -EINVAL : rc;
}

static int xen_evtchn_notify(struct mw_evtchn *ec, uint32_t port)
{
    struct ioctl_evtchn_notify n = { .port = port };

    return not_ours_is_einval(evtchn_ioctl(ec, IOCTL_EVTCHN_NOTIFY, &n));
}

static int xen_evtchn_pending(struct mw_evtchn *ec)
{
    unsigned int port;
    ssize_t n;

    n = read(ec->fd, &port, sizeof(port));
    if (n < 0)
        return -errno;
    if (n != (ssize_t)sizeof(port) || port == 0 || port > INT32_MAX)
        return -EIO;
    /* the port is masked since the read: unmask it so that it can fire again */
    n = write(ec->fd, &port, sizeof(port));
    if (n != (ssize_t)sizeof(port))
        return n < 0 ? -errno : -EIO;
    return (int)port;
}

static int xen_evtchn_unbind(struct mw_evtchn *ec, uint32_t port)
{
    struct ioctl_evtchn_unbind u = { .port = port };

    return not_ours_is_einval(evtchn_ioctl(ec, IOCTL_EVTCHN_UNBIND, &u));
}

const struct mw_plat_ops mw_plat_xen_ops = {
    .name = "xen",
    .open = xen_open,
    .close = xen_close,
    .gnt_share = xen_gnt_share,
    .gnt_map = xen_gnt_map,
    .gnt_release = xen_gnt_release,
    .evtchn_open = xen_evtchn_open,
    .evtchn_close = xen_evtchn_close,
    .evtchn_alloc_unbound = xen_evtchn_alloc_unbound,
    .evtchn_bind_interdomain = xen_evtchn_bind_interdomain,
    .evtchn_notify = xen_evtchn_notify,
    .evtchn_pending = xen_evtchn_pending,
    .evtchn_unbind = xen_evtchn_unbind,
};
