/*
 * mwcomms platform layer: grant tables and event channels, one API over two backends.
 *
 *   xen  /dev/xen/gntalloc, /dev/xen/gntdev and /dev/xen/evtchn of a real Xen domain.
 *   sim  one host, no hypervisor: a domain is a process (or a group of them) that says which
 *        domain id it is; a grant is a page of a shared-memory file under the simulation
 *        directory; an event channel is a doorbell (a FIFO per port) with the semantics of
 *        /dev/xen/evtchn: notifications coalesce, one fd per handle to poll.
 *
 * Everything above this header (the ring library, the engines, the Python control plane) is
 * the same code on both backends. The backend is picked at run time (struct mw_plat_config,
 * else the environment: MW_BACKEND=sim|xen, else "xen" when /dev/xen/evtchn exists, else
 * "sim").
 *
 * Error convention: functions return 0 or a non-negative value on success and a negative
 * errno on failure; they never set errno for the caller. Every close/release accepts NULL.
 *
 * Lifetime: release every grant and close every event channel handle of a platform before
 * closing the platform. A platform, its grants and its handles may be used from several
 * threads; mw_evtchn_notify is safe to call concurrently with the other evtchn calls. They
 * belong to the process that opened them: a child of fork() opens its own.
 *
 * The sim directory holds the whole simulated machine (see xen/platform_sim.c): put it on a
 * tmpfs (e.g. under /dev/shm) and give each simulation its own. A process that dies without
 * closing leaves files there: its ports are reclaimed when their numbers are needed again,
 * its shares at the next share by anyone.
 */
#ifndef MWCOMMS_PLATFORM_H
#define MWCOMMS_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

typedef uint16_t mw_domid_t;

#define MW_DOMID_SELF 0x7ff0u      /* "my own domain": accepted by the event channel calls */
#define MW_GNT_PAGE_SIZE 4096u     /* size of one granted page */
#define MW_GNT_MAX_PAGES (1u << 20) /* most pages in one share or map call (4 GiB) */

struct mw_plat_config {
    const char *backend;   /* "sim", "xen" or NULL: MW_BACKEND, else auto-detect */
    const char *sim_dir;   /* sim: directory shared by the simulated domains (NULL: MW_SIM_DIR);
                            * created when missing */
    int sim_domid;         /* sim: the domain this process belongs to, 0 .. 0x7fef
                            * (-1: MW_SIM_DOMID) */
};

struct mw_plat;            /* one open platform: backend, domain id */
struct mw_gnt;             /* a set of pages shared with, or mapped from, another domain */
struct mw_evtchn;          /* an event channel handle: any number of ports, one pollable fd */

/**
 * Open the platform.
 * @param cfg  may be NULL (all defaults)
 * @param out  receives the handle
 * @return 0, -ENODEV (the chosen backend is not available here), -EINVAL (unknown backend;
 *         sim: no directory or domain id given, or a domain id out of range), -ENOENT,
 *         -ENOTDIR, -EACCES (sim: the directory cannot be made or used), -ENOMEM
 */
int mw_plat_open(const struct mw_plat_config *cfg, struct mw_plat **out);
/** Close the platform (its grants and handles must be gone already). Accepts NULL. */
void mw_plat_close(struct mw_plat *plat);
/** @return "sim" or "xen" */
const char *mw_plat_backend(const struct mw_plat *plat);
/** @return this domain's id on the sim backend, or -ENOSYS on xen (ask XenStore there) */
int mw_plat_domid(const struct mw_plat *plat);

/**
 * Grant `npages` fresh zeroed pages to domain `remote` (read-write).
 * @param remote  the domain that may map them (a real id, not MW_DOMID_SELF)
 * @param refs    receives npages grant references, in page order; pass them on as a list:
 *                they need not be ascending or contiguous (Xen's gntalloc gave 9 8 10 11)
 * @param addr    receives the local mapping, npages * MW_GNT_PAGE_SIZE bytes, page aligned
 * @param out     receives the grant, for mw_gnt_release
 * @return 0, -ENOMEM, -ENOSPC (out of grant entries: on xen, gntalloc hands out 1024 pages
 *         in all unless /sys/module/xen_gntalloc/parameters/limit is raised, and Xen gives a
 *         domain 64 grant frames, 32768 entries, by default), -EINVAL (npages 0 or above
 *         MW_GNT_MAX_PAGES, remote out of range)
 */
int mw_gnt_share(struct mw_plat *plat, mw_domid_t remote, uint32_t npages, uint32_t *refs,
                 void **addr, struct mw_gnt **out);

/**
 * Map `npages` pages granted by domain `remote`, in the order of `refs`, into one contiguous
 * read-write region.
 * @param remote  the granting domain (a real id, not MW_DOMID_SELF)
 * @return 0, -ENOENT (sim: a reference that does not exist), -EPERM (sim: a reference granted
 *         to another domain), -EINVAL (bad arguments; xen: either case, as gntdev's mmap
 *         reports a failed grant map), -ENOMEM
 */
int mw_gnt_map(struct mw_plat *plat, mw_domid_t remote, uint32_t npages, const uint32_t *refs,
               void **addr, struct mw_gnt **out);

/**
 * Unmap, or end the sharing of, pages from mw_gnt_share / mw_gnt_map. Accepts NULL. Pages
 * mapped by the other domain stay valid for it until it unmaps them, as on Xen.
 */
void mw_gnt_release(struct mw_gnt *g);

/** @return the address and page count of a share or a mapping */
void *mw_gnt_addr(const struct mw_gnt *g);
uint32_t mw_gnt_npages(const struct mw_gnt *g);

/**
 * Open an event channel handle. Its fd (mw_evtchn_fd) becomes readable when any of its ports
 * has a pending notification; poll/epoll may watch it, only this API may read it.
 * @return 0, -ENODEV, -EMFILE, -ENOMEM
 */
int mw_evtchn_open(struct mw_plat *plat, struct mw_evtchn **out);
/** Close a handle and every port bound through it. Accepts NULL. */
void mw_evtchn_close(struct mw_evtchn *ec);
int mw_evtchn_fd(const struct mw_evtchn *ec);

/**
 * Allocate a port that domain `remote` may bind to.
 * @param remote  a domain id or MW_DOMID_SELF
 * @return the local port (> 0), -EINVAL (remote out of range), -ENOSPC, -errno
 */
int mw_evtchn_alloc_unbound(struct mw_evtchn *ec, mw_domid_t remote);

/**
 * Bind to `remote_port` of domain `remote`, which must be an unbound port allocated for us.
 * The new local port starts pending, on both backends: Xen sets it so to make up for kicks
 * sent to the unbound end, so expect one event on it that carries no news.
 * @param remote  a domain id or MW_DOMID_SELF
 * @return the local port (> 0), -EINVAL (no such port, already bound, or not offered to us),
 *         -ESRCH (sim: the remote port's owner is gone), -errno
 */
int mw_evtchn_bind_interdomain(struct mw_evtchn *ec, mw_domid_t remote, uint32_t remote_port);

/**
 * Kick the other end of a bound local port. Kicks coalesce while the other end has one
 * pending: it sees one event for any number of kicks before it takes the pending port.
 * @return 0, -EINVAL (port not bound through this handle), -ENOTCONN (sim: the other end is
 *         not bound yet, or has unbound or died; real Xen drops such a kick and returns 0, so
 *         liveness is XenStore's business there)
 */
int mw_evtchn_notify(struct mw_evtchn *ec, uint32_t port);

/**
 * Take one pending port, if any, and unmask it (it can fire again).
 * @return the port (> 0), -EAGAIN when none is pending, or -errno
 */
int mw_evtchn_pending(struct mw_evtchn *ec);

/**
 * Wait until some port is pending or `timeout_ms` passes (-1: forever); does not consume it.
 * @return 1 when pending, 0 on timeout, -EINTR, -errno
 */
int mw_evtchn_wait(struct mw_evtchn *ec, int timeout_ms);

/** Close a local port bound through this handle. @return 0 or -EINVAL */
int mw_evtchn_unbind(struct mw_evtchn *ec, uint32_t port);

#endif /* MWCOMMS_PLATFORM_H */
