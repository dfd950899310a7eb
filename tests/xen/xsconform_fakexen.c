/*
 * A fake hypervisor for running the real C xenstored (Debian's xen-utils-4.17 binary) on a
 * host without Xen, so that the XenStore conformance suite can be checked against it
 * (tests/xen/test_xsconform.py). LD_PRELOAD it into xenstored; it stands in for libxenctrl,
 * libxenevtchn, libxengnttab and the two /proc/xen files xenstored opens.
 *
 * Everything lives in the directory $FAKEXEN_DIR:
 *   dom<N>.ring   a 4096-byte file: domain N's XenStore ring page. A domain exists (for
 *                 xc_domain_getinfo) iff its ring file exists; domain 0 always exists.
 *   evtchn        a FIFO: a byte written here wakes xenstored (a domain's "notify").
 *   dom<N>.kick   a FIFO: xenstored's notify of domain N writes a byte here.
 *
 * Not part of the product: a test double, kept as small as xenstored allows.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PORT_BASE 100       /* local port of domain N is PORT_BASE + N */
#define VIRQ_PORT 99

static const char *dir(void)
{
	const char *d = getenv("FAKEXEN_DIR");

	return d ? d : ".";
}

static int path_of(char *buf, size_t len, const char *fmt, unsigned int n)
{
	char name[64];

	snprintf(name, sizeof(name), fmt, n);
	return snprintf(buf, len, "%s/%s", dir(), name) >= (int)len ? -ENAMETOOLONG : 0;
}

/* ---- /proc/xen/xsd_port and /proc/xen/xsd_kva ----------------------------------------- */

int open(const char *pathname, int flags, ...)
{
	static int (*real_open)(const char *, int, ...);
	char buf[4096];
	mode_t mode = 0;
	va_list ap;

	if (!real_open)
		real_open = dlsym(RTLD_NEXT, "open");
	if (flags & O_CREAT) {
		va_start(ap, flags);
		mode = va_arg(ap, int);
		va_end(ap);
	}
	if (!strcmp(pathname, "/proc/xen/xsd_port")) {
		path_of(buf, sizeof(buf), "xsd_port", 0);
		return real_open(buf, O_RDONLY);
	}
	if (!strcmp(pathname, "/proc/xen/xsd_kva")) {
		path_of(buf, sizeof(buf), "dom%u.ring", 0);
		return real_open(buf, O_RDWR);
	}
	return real_open(pathname, flags, mode);
}

/* ---- libxenctrl ------------------------------------------------------------------------ */

struct fake_dominfo {          /* the head of xc_dominfo_t */
	uint32_t domid;
	uint32_t ssidref;
	unsigned int flags;         /* dying:1, crashed:1, shutdown:1, ... */
	unsigned int shutdown_reason;
};

static int dummy_handle;

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned int open_flags)
{
	return &dummy_handle;
}

int xc_interface_close(void *xch)
{
	return 0;
}

int xc_domain_getinfo(void *xch, uint32_t first_domid, unsigned int max_doms, void *info)
{
	struct fake_dominfo *di = info;
	char buf[4096];

	if (!max_doms)
		return 0;
	if (first_domid && (path_of(buf, sizeof(buf), "dom%u.ring", first_domid) ||
			    access(buf, F_OK)))
		return 0;
	memset(di, 0, sizeof(*di));
	di->domid = first_domid;
	return 1;
}

/* ---- libxengnttab: map domain N's ring file ------------------------------------------- */

void *xengnttab_open(void *logger, unsigned int open_flags)
{
	return &dummy_handle;
}

int xengnttab_close(void *xgt)
{
	return 0;
}

int xengnttab_set_max_grants(void *xgt, uint32_t nr_grants)
{
	return 0;
}

void *xengnttab_map_grant_ref(void *xgt, uint32_t domid, uint32_t ref, int prot)
{
	char buf[4096];
	void *page;
	int fd;

	if (path_of(buf, sizeof(buf), "dom%u.ring", domid))
		return NULL;
	fd = open(buf, O_RDWR);
	if (fd < 0)
		return NULL;
	page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return page == MAP_FAILED ? NULL : page;
}

int xengnttab_unmap(void *xgt, void *start_address, uint32_t count)
{
	return munmap(start_address, 4096UL * count);
}

/* ---- libxenevtchn: one FIFO into xenstored, one per domain out of it ------------------- */

struct fake_evtchn {
	int fd;                     /* the read side of $FAKEXEN_DIR/evtchn */
	uint32_t pending;
};

static struct fake_evtchn *evtchn_new(void)
{
	struct fake_evtchn *xce = calloc(1, sizeof(*xce));
	char buf[4096];

	if (!xce || path_of(buf, sizeof(buf), "evtchn", 0))
		goto out_free;
	xce->fd = open(buf, O_RDWR | O_NONBLOCK);
	if (xce->fd < 0)
		goto out_free;
	return xce;

out_free:
	free(xce);
	return NULL;
}

void *xenevtchn_open(void *logger, unsigned int open_flags)
{
	return evtchn_new();
}

void *xenevtchn_fdopen(void *logger, int fd, unsigned int open_flags)
{
	return evtchn_new();
}

int xenevtchn_fd(struct fake_evtchn *xce)
{
	return xce->fd;
}

int xenevtchn_bind_virq(struct fake_evtchn *xce, unsigned int virq)
{
	return VIRQ_PORT;
}

int xenevtchn_bind_interdomain(struct fake_evtchn *xce, uint32_t domid, uint32_t remote_port)
{
	return PORT_BASE + domid;
}

int xenevtchn_unbind(struct fake_evtchn *xce, uint32_t port)
{
	return 0;
}

int xenevtchn_notify(struct fake_evtchn *xce, uint32_t port)
{
	char buf[4096];
	int fd;

	if (port < PORT_BASE || path_of(buf, sizeof(buf), "dom%u.kick", port - PORT_BASE))
		return 0;
	fd = open(buf, O_WRONLY | O_NONBLOCK);
	if (fd >= 0) {
		/* A full FIFO already holds a wake-up: losing this one is fine. */
		if (write(fd, "k", 1) < 0 && errno != EAGAIN)
			perror("fakexen notify");
		close(fd);
	}
	return 0;
}

int xenevtchn_pending(struct fake_evtchn *xce)
{
	char drain[256];

	/* Any byte is "some domain's port": xenstored polls every ring each loop anyway. */
	while (read(xce->fd, drain, sizeof(drain)) > 0)
		;
	return PORT_BASE;
}

int xenevtchn_unmask(struct fake_evtchn *xce, uint32_t port)
{
	return 0;
}
