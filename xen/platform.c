/*
 * mwcomms platform layer, core: handles, argument checks, the choice of backend.
 *
 * Every public function checks its arguments here and then calls the backend's hook
 * (platform_priv.h), so that both backends see the same, already validated, requests and
 * give the same errors for bad ones. Nothing in this file knows which backend runs.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platform_priv.h"

static const struct mw_plat_ops *const backends[] = {
    &mw_plat_xen_ops,
    &mw_plat_sim_ops,
};

/* The backend named by the configuration, else by MW_BACKEND, else the one this host has. */
static const struct mw_plat_ops *pick_backend(const struct mw_plat_config *cfg)
{
    const char *name = cfg ? cfg->backend : NULL;
    size_t i;

    if (!name || !*name)
        name = getenv("MW_BACKEND");
    if (!name || !*name)
        name = access("/dev/xen/evtchn", F_OK) == 0 ? "xen" : "sim";
    for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (strcmp(backends[i]->name, name) == 0)
            return backends[i];
    return NULL;
}

int mw_plat_open(const struct mw_plat_config *cfg, struct mw_plat **out)
{
    const struct mw_plat_ops *ops;
    struct mw_plat *plat;
    int rc;

    if (!out)
        return -EINVAL;
    *out = NULL;
    ops = pick_backend(cfg);
    if (!ops)
        return -EINVAL;
    plat = calloc(1, sizeof(*plat));
    if (!plat)
        return -ENOMEM;
    plat->ops = ops;
    plat->domid = -ENOSYS;
    rc = ops->open(plat, cfg);
    if (rc < 0)
        goto out_free_plat;
    *out = plat;
    return 0;

out_free_plat:
    free(plat);
    return rc;
}

void mw_plat_close(struct mw_plat *plat)
{
    if (!plat)
        return;
    plat->ops->close(plat);
    free(plat);
}

const char *mw_plat_backend(const struct mw_plat *plat)
{
    return plat ? plat->ops->name : NULL;
}

int mw_plat_domid(const struct mw_plat *plat)
{
    return plat ? plat->domid : -EINVAL;
}

/* A grant names a real domain: MW_DOMID_SELF and the other reserved ids are refused. */
static int check_grant_args(struct mw_plat *plat, mw_domid_t remote, uint32_t npages,
                            const void *refs, void **addr, struct mw_gnt **out)
{
    if (out)
        *out = NULL;
    if (addr)
        *addr = NULL;
    if (!plat || !refs || !addr || !out)
        return -EINVAL;
    if (npages == 0 || npages > MW_GNT_MAX_PAGES || remote >= MW_DOMID_FIRST_RESERVED)
        return -EINVAL;
    return 0;
}

/* Allocate the handle and run the backend's share (in_refs NULL) or map (in_refs set). */
static int grant(struct mw_plat *plat, mw_domid_t remote, uint32_t npages, uint32_t *out_refs,
                 const uint32_t *in_refs, void **addr, struct mw_gnt **out)
{
    struct mw_gnt *g;
    int rc;

    g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->plat = plat;
    g->npages = npages;
    g->mapped = in_refs != NULL;
    if (g->mapped)
        rc = plat->ops->gnt_map(plat, remote, npages, in_refs, g);
    else
        rc = plat->ops->gnt_share(plat, remote, npages, out_refs, g);
    if (rc < 0)
        goto out_free_gnt;
    *addr = g->addr;
    *out = g;
    return 0;

out_free_gnt:
    free(g);
    return rc;
}

int mw_gnt_share(struct mw_plat *plat, mw_domid_t remote, uint32_t npages, uint32_t *refs,
                 void **addr, struct mw_gnt **out)
{
    int rc = check_grant_args(plat, remote, npages, refs, addr, out);

    if (rc < 0)
        return rc;
    return grant(plat, remote, npages, refs, NULL, addr, out);
}

int mw_gnt_map(struct mw_plat *plat, mw_domid_t remote, uint32_t npages, const uint32_t *refs,
               void **addr, struct mw_gnt **out)
{
    int rc = check_grant_args(plat, remote, npages, refs, addr, out);

    if (rc < 0)
        return rc;
    return grant(plat, remote, npages, NULL, refs, addr, out);
}

void mw_gnt_release(struct mw_gnt *g)
{
    if (!g)
        return;
    g->plat->ops->gnt_release(g);
    free(g);
}

void *mw_gnt_addr(const struct mw_gnt *g)
{
    return g ? g->addr : NULL;
}

uint32_t mw_gnt_npages(const struct mw_gnt *g)
{
    return g ? g->npages : 0;
}

int mw_evtchn_open(struct mw_plat *plat, struct mw_evtchn **out)
{
    struct mw_evtchn *ec;
    int rc;

    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!plat)
        return -EINVAL;
    ec = calloc(1, sizeof(*ec));
    if (!ec)
        return -ENOMEM;
    ec->plat = plat;
    ec->fd = -1;
    rc = plat->ops->evtchn_open(ec);
    if (rc < 0)
        goto out_free_ec;
    *out = ec;
    return 0;

out_free_ec:
    free(ec);
    return rc;
}

void mw_evtchn_close(struct mw_evtchn *ec)
{
    if (!ec)
        return;
    ec->plat->ops->evtchn_close(ec);
    free(ec);
}

int mw_evtchn_fd(const struct mw_evtchn *ec)
{
    return ec ? ec->fd : -EINVAL;
}

/* An event channel names a real domain or MW_DOMID_SELF. */
static bool evtchn_domid_ok(mw_domid_t remote)
{
    return remote < MW_DOMID_FIRST_RESERVED || remote == MW_DOMID_SELF;
}

int mw_evtchn_alloc_unbound(struct mw_evtchn *ec, mw_domid_t remote)
{
    if (!ec || !evtchn_domid_ok(remote))
        return -EINVAL;
    return ec->plat->ops->evtchn_alloc_unbound(ec, remote);
}

int mw_evtchn_bind_interdomain(struct mw_evtchn *ec, mw_domid_t remote, uint32_t remote_port)
{
    if (!ec || !evtchn_domid_ok(remote) || remote_port == 0 || remote_port > INT32_MAX)
        return -EINVAL;
    return ec->plat->ops->evtchn_bind_interdomain(ec, remote, remote_port);
}

int mw_evtchn_notify(struct mw_evtchn *ec, uint32_t port)
{
    if (!ec || port == 0 || port > INT32_MAX)
        return -EINVAL;
    return ec->plat->ops->evtchn_notify(ec, port);
}

int mw_evtchn_pending(struct mw_evtchn *ec)
{
    if (!ec)
        return -EINVAL;
    return ec->plat->ops->evtchn_pending(ec);
}

/* Both backends hand out a pollable fd, so waiting is the same poll() for both. */
int mw_evtchn_wait(struct mw_evtchn *ec, int timeout_ms)
{
    struct pollfd pfd;
    int n;

    if (!ec)
        return -EINVAL;
    pfd.fd = ec->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    n = poll(&pfd, 1, timeout_ms < 0 ? -1 : timeout_ms);
    if (n < 0)
        return -errno;
    if (n > 0 && (pfd.revents & (POLLERR | POLLNVAL)))
        return -EIO;
    return n > 0;
}

int mw_evtchn_unbind(struct mw_evtchn *ec, uint32_t port)
{
    if (!ec || port == 0 || port > INT32_MAX)
        return -EINVAL;
    return ec->plat->ops->evtchn_unbind(ec, port);
}
