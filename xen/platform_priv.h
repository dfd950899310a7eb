/*
 * mwcomms platform layer, private: the hooks a backend fills in, and the handles the core
 * shares with the backends. Only xen/platform*.c include this.
 *
 * The core (platform.c) checks arguments, picks the backend and owns the handles' memory; a
 * backend (platform_sim.c, platform_xen.c) does the work. Hooks get arguments the core has
 * already checked: non-NULL pointers, 1 <= npages <= MW_GNT_MAX_PAGES, ports > 0, domain ids
 * below MW_DOMID_SELF (or MW_DOMID_SELF where the public API allows it). They return 0 (or a
 * port) or -errno.
 */
#ifndef MWCOMMS_PLATFORM_PRIV_H
#define MWCOMMS_PLATFORM_PRIV_H

#include <stdbool.h>
#include "mwcomms/platform.h"

#define MW_DOMID_FIRST_RESERVED MW_DOMID_SELF   /* ids from here on are not domains */

struct mw_plat_ops {
    const char *name;                       /* "sim" or "xen" */
    /* open: fill plat->priv and plat->domid (-ENOSYS when unknown) */
    int (*open)(struct mw_plat *plat, const struct mw_plat_config *cfg);
    void (*close)(struct mw_plat *plat);
    /* share/map: fill g->addr and whatever of g the backend's release needs */
    int (*gnt_share)(struct mw_plat *plat, mw_domid_t remote, uint32_t npages, uint32_t *refs,
                     struct mw_gnt *g);
    int (*gnt_map)(struct mw_plat *plat, mw_domid_t remote, uint32_t npages,
                   const uint32_t *refs, struct mw_gnt *g);
    void (*gnt_release)(struct mw_gnt *g);
    /* evtchn_open: fill ec->fd (pollable) and ec->priv */
    int (*evtchn_open)(struct mw_evtchn *ec);
    void (*evtchn_close)(struct mw_evtchn *ec);
    int (*evtchn_alloc_unbound)(struct mw_evtchn *ec, mw_domid_t remote);
    int (*evtchn_bind_interdomain)(struct mw_evtchn *ec, mw_domid_t remote,
                                   uint32_t remote_port);
    int (*evtchn_notify)(struct mw_evtchn *ec, uint32_t port);
    int (*evtchn_pending)(struct mw_evtchn *ec);
    int (*evtchn_unbind)(struct mw_evtchn *ec, uint32_t port);
};

extern const struct mw_plat_ops mw_plat_sim_ops;
extern const struct mw_plat_ops mw_plat_xen_ops;

struct mw_plat {
    const struct mw_plat_ops *ops;  /* the backend */
    int domid;                      /* our domain id, or -ENOSYS where the backend cannot tell */
    void *priv;                     /* backend state */
};

struct mw_gnt {
    struct mw_plat *plat;           /* the platform it came from */
    void *addr;                     /* local mapping, npages * MW_GNT_PAGE_SIZE bytes */
    uint32_t npages;
    bool mapped;                    /* from mw_gnt_map (else from mw_gnt_share) */
    uint64_t index;                 /* xen: mmap offset in gntalloc / gntdev, for the dealloc */
    char *path;                     /* sim: the share file, unlinked at release (NULL: mapping) */
    int fd;                         /* sim: that file, held open with a shared flock: the sign
                                     * that its granter is alive */
};

struct mw_evtchn {
    struct mw_plat *plat;           /* the platform it came from */
    int fd;                         /* readable while a port is pending */
    void *priv;                     /* backend state */
};

#endif /* MWCOMMS_PLATFORM_PRIV_H */
