/*
 * Ring stress test driver. See tests/c/README.md for the command line, and ring_stress.h for
 * what each side checks.
 *
 * Where the area and the doorbell come from:
 *   --role=both                fork(): a memfd mapped MAP_SHARED, and an eventfd per side;
 *   --role=both --platform     fork(): the frontend shares the area and an unbound event
 *                              channel through the platform layer (sim or xen backend, from
 *                              MW_BACKEND / MW_SIM_DIR), the INS maps and binds them;
 *   --role=front|back --platform --xchg=FILE
 *                              two processes, or two domains: the frontend writes the grant
 *                              references and its port to FILE, the INS reads them from there.
 *
 * Output, from the frontend:
 *   RING-RATE mode=<poll|doorbell> bell=<eventfd|evtchn|none> msgs=N msgs_per_s=X bytes=N
 *     gb_per_s=Y kicks=N sleeps=N lost_wakeups=N events_posted=N events_taken=N rescans=N
 *   RING-RTT mode=... bell=... spin_ns=N round_trips=N rtt_us=X   (with --pingpong=N)
 *   RING-HASH front=<hex> back=<hex> expected=<hex>      (role both)
 *   RING-STRESS OK | RING-STRESS FAIL <side>: <why>
 * Exit status 0 only when both sides checked out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mwcomms/platform.h"
#include "ring_stress.h"

struct opts {
    const char *role;          /* both, front, back */
    const char *mode;          /* poll, doorbell */
    int platform;              /* area and doorbell from the platform layer */
    const char *xchg;          /* file carrying refs and port (front/back roles) */
    int domid, remote;         /* sim domain ids (platform); remote for the xen backend too */
    struct rs_cfg cfg;
};

/* ------------------------------------------------------------------------------------------
 * Doorbells
 */

struct efd_bell {
    int mine;                  /* readable when kicked */
    int peer;                  /* the other side's */
};

static int efd_kick(void *ctx)
{
    struct efd_bell *b = ctx;
    uint64_t one = 1;

    return write(b->peer, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}

static int efd_sleep(void *ctx, int timeout_ms)
{
    struct efd_bell *b = ctx;
    struct pollfd p = { .fd = b->mine, .events = POLLIN };
    uint64_t v;
    int n;

    n = poll(&p, 1, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (n == 0)
        return 0;
    if (read(b->mine, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return -errno;
    return 1;
}

struct ec_bell {
    struct mw_evtchn *ec;
    uint32_t port;             /* our local port */
};

static int ec_kick(void *ctx)
{
    struct ec_bell *b = ctx;

    return mw_evtchn_notify(b->ec, b->port);
}

static int ec_sleep(void *ctx, int timeout_ms)
{
    struct ec_bell *b = ctx;
    int ret, kicked = 0;

    ret = mw_evtchn_wait(b->ec, timeout_ms);
    if (ret <= 0)
        return ret == -EINTR ? 0 : ret;
    while ((ret = mw_evtchn_pending(b->ec)) > 0)
        kicked |= (uint32_t)ret == b->port;
    return ret == -EAGAIN ? kicked : ret;
}

/* ------------------------------------------------------------------------------------------
 * Output
 */

static void print_rate(const struct opts *o, const struct rs_result *fr, const char *bell)
{
    double mps = fr->msg_secs > 0 ? fr->msgs / fr->msg_secs : 0;
    double gbps = fr->byte_secs > 0 ? fr->bytes / fr->byte_secs / 1e9 : 0;

    printf("RING-RATE mode=%s bell=%s msgs=%llu msgs_per_s=%.0f bytes=%llu gb_per_s=%.3f "
           "kicks=%llu sleeps=%llu lost_wakeups=%llu events_posted=%llu events_taken=%llu "
           "rescans=%llu\n",
           o->mode, bell, (unsigned long long)fr->msgs, mps, (unsigned long long)fr->bytes, gbps,
           (unsigned long long)fr->kicks, (unsigned long long)fr->sleeps,
           (unsigned long long)fr->sleep_timeouts, (unsigned long long)fr->events_posted,
           (unsigned long long)fr->events_taken, (unsigned long long)fr->rescans);
    if (o->cfg.pingpong)
        printf("RING-RTT mode=%s bell=%s spin_ns=%u round_trips=%llu rtt_us=%.2f\n", o->mode,
               bell, o->cfg.poll ? 0 : o->cfg.spin_ns, (unsigned long long)o->cfg.pingpong,
               fr->rtt_secs / o->cfg.pingpong * 1e6);
}

static int report(const char *side, int ret, const struct rs_result *r)
{
    if (ret < 0)
        printf("RING-STRESS FAIL %s: %s\n", side, r->error);
    return ret;
}

/* ------------------------------------------------------------------------------------------
 * Area and doorbell through the platform layer
 */

struct plat_side {
    struct mw_plat *plat;
    struct mw_gnt *gnt;
    struct mw_evtchn *ec;
    struct ec_bell bell;
    struct rs_bell rs;
};

static void plat_close(struct plat_side *p)
{
    mw_evtchn_close(p->ec);
    mw_gnt_release(p->gnt);
    mw_plat_close(p->plat);
}

static int plat_open(struct plat_side *p, int domid)
{
    struct mw_plat_config pc = { .backend = NULL, .sim_dir = NULL, .sim_domid = domid };
    int ret;

    memset(p, 0, sizeof(*p));
    ret = mw_plat_open(&pc, &p->plat);
    if (ret < 0)
        return ret;
    ret = mw_evtchn_open(p->plat, &p->ec);
    if (ret < 0) {
        mw_plat_close(p->plat);
        return ret;
    }
    p->bell.ec = p->ec;
    p->rs = (struct rs_bell){ &p->bell, ec_kick, ec_sleep };
    return 0;
}

/* Frontend: share the area, offer a port. Writes "npages port ref..." into msg. */
static int plat_front(struct plat_side *p, struct opts *o, size_t size, char **msg)
{
    uint32_t npages = (uint32_t)(size / MW_PAGE_SIZE), *refs;
    size_t cap = 32 + (size_t)npages * 11, len;
    void *addr;
    int ret;

    refs = calloc(npages, sizeof(*refs));
    *msg = malloc(cap);
    if (!refs || !*msg)
        return -ENOMEM;
    ret = mw_gnt_share(p->plat, (mw_domid_t)o->remote, npages, refs, &addr, &p->gnt);
    if (ret < 0)
        goto out_refs;
    ret = mw_evtchn_alloc_unbound(p->ec, (mw_domid_t)o->remote);
    if (ret < 0)
        goto out_refs;
    p->bell.port = (uint32_t)ret;
    o->cfg.area = addr;
    o->cfg.area_size = size;
    len = (size_t)snprintf(*msg, cap, "%u %u", npages, p->bell.port);
    for (uint32_t i = 0; i < npages; i++)
        len += (size_t)snprintf(*msg + len, cap - len, " %u", refs[i]);
    snprintf(*msg + len, cap - len, "\n");
    ret = 0;
out_refs:
    free(refs);
    return ret;
}

/* INS: map the area and bind the port named in msg. */
static int plat_back(struct plat_side *p, struct opts *o, size_t size, const char *msg)
{
    uint32_t npages, port, *refs;
    const char *s = msg;
    void *addr;
    int n, ret;

    if (sscanf(s, "%u %u%n", &npages, &port, &n) != 2 || npages != size / MW_PAGE_SIZE)
        return -EINVAL;
    s += n;
    refs = calloc(npages, sizeof(*refs));
    if (!refs)
        return -ENOMEM;
    for (uint32_t i = 0; i < npages; i++, s += n) {
        if (sscanf(s, "%u%n", &refs[i], &n) != 1) {
            free(refs);
            return -EINVAL;
        }
    }
    ret = mw_gnt_map(p->plat, (mw_domid_t)o->remote, npages, refs, &addr, &p->gnt);
    free(refs);
    if (ret < 0)
        return ret;
    ret = mw_evtchn_bind_interdomain(p->ec, (mw_domid_t)o->remote, port);
    if (ret < 0)
        return ret;
    p->bell.port = (uint32_t)ret;
    o->cfg.area = addr;
    o->cfg.area_size = size;
    return 0;
}

static char *slurp(int fd)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ssize_t n;

    while (buf && (n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (len + 1 == cap) {
            char *bigger = realloc(buf, cap *= 2);

            if (!bigger)
                free(buf);
            buf = bigger;
        }
    }
    if (buf)
        buf[len] = 0;
    return buf;
}

/* ------------------------------------------------------------------------------------------
 * Roles
 */

/* Both sides by fork(): the child is the INS and sends its result back through a pipe. */
static int run_both(struct opts *o, size_t size)
{
    struct rs_result fr, br;
    int res_pipe[2], xchg_pipe[2], efd_front, efd_back, status, ret, bret;
    struct efd_bell fbell, bbell;
    struct rs_bell frs, brs;
    struct plat_side plat;
    const char *bell = "none";
    char *msg = NULL;
    pid_t pid;

    if (pipe(res_pipe) < 0 || pipe(xchg_pipe) < 0)
        return -errno;
    efd_front = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    efd_back = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_front < 0 || efd_back < 0)
        return -errno;
    fbell = (struct efd_bell){ efd_front, efd_back };
    bbell = (struct efd_bell){ efd_back, efd_front };
    frs = (struct rs_bell){ &fbell, efd_kick, efd_sleep };
    brs = (struct rs_bell){ &bbell, efd_kick, efd_sleep };

    if (!o->platform) {
        int mfd = memfd_create("mwcomms-ring-stress", MFD_CLOEXEC);

        if (mfd < 0 || ftruncate(mfd, (off_t)size) < 0)
            return -errno;
        o->cfg.area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
        close(mfd);
        if (o->cfg.area == MAP_FAILED)
            return -errno;
        o->cfg.area_size = size;
        bell = o->cfg.poll ? "none" : "eventfd";
    } else {
        bell = o->cfg.poll ? "none" : "evtchn";
    }

    fflush(stdout);
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* the INS: platform handles are opened after fork(), never shared across it */
        close(res_pipe[0]);
        close(xchg_pipe[1]);
        o->cfg.side = MW_SIDE_BACK;
        o->cfg.bell = &brs;
        if (o->platform) {
            o->remote = o->domid;
            ret = plat_open(&plat, o->domid + 1);
            msg = ret < 0 ? NULL : slurp(xchg_pipe[0]);
            if (ret == 0)
                ret = msg ? plat_back(&plat, o, size, msg) : -EIO;
            if (ret < 0) {
                printf("RING-STRESS FAIL back: platform: %s\n", strerror(-ret));
                _exit(2);
            }
            o->cfg.bell = &plat.rs;
        }
        bret = rs_run(&o->cfg, &br);
        if (write(res_pipe[1], &br, sizeof(br)) != sizeof(br))
            _exit(3);
        if (o->platform)
            plat_close(&plat);
        _exit(bret < 0 ? 1 : 0);
    }
    close(res_pipe[1]);
    close(xchg_pipe[0]);
    o->cfg.side = MW_SIDE_FRONT;
    o->cfg.bell = &frs;
    if (o->platform) {
        o->remote = o->domid + 1;
        ret = plat_open(&plat, o->domid);
        if (ret == 0)
            ret = plat_front(&plat, o, size, &msg);
        if (ret == 0 && write(xchg_pipe[1], msg, strlen(msg)) != (ssize_t)strlen(msg))
            ret = -errno;
        close(xchg_pipe[1]);
        free(msg);
        if (ret < 0) {
            printf("RING-STRESS FAIL front: platform: %s\n", strerror(-ret));
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return ret;
        }
        o->cfg.bell = &plat.rs;
    } else {
        close(xchg_pipe[1]);
    }
    ret = rs_run(&o->cfg, &fr);
    if (ret < 0)
        kill(pid, SIGKILL);   /* the INS would wait for us until its own timeout */
    if (read(res_pipe[0], &br, sizeof(br)) != sizeof(br)) {
        memset(&br, 0, sizeof(br));
        snprintf(br.error, sizeof(br.error), "INS side died");
        bret = -EIO;
    } else {
        bret = br.error[0] ? -EIO : 0;
    }
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        bret = bret < 0 ? bret : -EIO;
    if (o->platform)
        plat_close(&plat);

    report("front", ret, &fr);
    report("back", bret, &br);
    if (ret < 0 || bret < 0)
        return -EIO;
    print_rate(o, &fr, bell);
    printf("RING-HASH front=%016llx back=%016llx expected=%016llx\n",
           (unsigned long long)fr.hash, (unsigned long long)br.hash,
           (unsigned long long)rs_stream_hash(o->cfg.seed, o->cfg.bytes));
    if (fr.hash != br.hash || br.msgs != fr.msgs || br.bytes != fr.bytes) {
        printf("RING-STRESS FAIL both: the sides disagree\n");
        return -EIO;
    }
    printf("RING-STRESS OK\n");
    return 0;
}

/* One side, the other in another process or domain; the area comes from the platform. */
static int run_one(struct opts *o, size_t size)
{
    struct plat_side plat;
    struct rs_result r;
    char *msg = NULL;
    int fd, ret;

    if (!o->platform || !o->xchg) {
        fprintf(stderr, "--role=front|back needs --platform and --xchg=FILE\n");
        return -EINVAL;
    }
    o->cfg.side = strcmp(o->role, "front") == 0 ? MW_SIDE_FRONT : MW_SIDE_BACK;
    ret = plat_open(&plat, o->domid);
    if (ret < 0)
        goto out;
    if (o->cfg.side == MW_SIDE_FRONT) {
        char tmp[4096];

        ret = plat_front(&plat, o, size, &msg);
        if (ret < 0)
            goto out_plat;
        snprintf(tmp, sizeof(tmp), "%s.tmp", o->xchg);
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, msg, strlen(msg)) != (ssize_t)strlen(msg) ||
            close(fd) < 0 || rename(tmp, o->xchg) < 0) {
            ret = -errno;
            goto out_plat;
        }
    } else {
        for (int i = 0; (fd = open(o->xchg, O_RDONLY | O_CLOEXEC)) < 0; i++) {
            if (errno != ENOENT || i > 100 * (int)o->cfg.timeout_s) {
                ret = -errno;
                goto out_plat;
            }
            usleep(10000);
        }
        msg = slurp(fd);
        close(fd);
        ret = msg ? plat_back(&plat, o, size, msg) : -ENOMEM;
        if (ret < 0)
            goto out_plat;
    }
    o->cfg.bell = &plat.rs;
    ret = rs_run(&o->cfg, &r);
    report(o->role, ret, &r);
    if (ret == 0) {
        if (o->cfg.side == MW_SIDE_FRONT)
            print_rate(o, &r, o->cfg.poll ? "none" : "evtchn");
        printf("RING-HASH %s=%016llx expected=%016llx\n", o->role, (unsigned long long)r.hash,
               (unsigned long long)rs_stream_hash(o->cfg.seed, o->cfg.bytes));
        ret = r.hash == rs_stream_hash(o->cfg.seed, o->cfg.bytes) ? 0 : -EIO;
        printf(ret == 0 ? "RING-STRESS OK\n" : "RING-STRESS FAIL %s: hash\n", o->role);
    }
out_plat:
    free(msg);
    plat_close(&plat);
out:
    if (ret < 0 && ret != -EIO && ret != -EPROTO && ret != -ETIMEDOUT)
        printf("RING-STRESS FAIL %s: %s\n", o->role, strerror(-ret));
    return ret;
}

/* ------------------------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: ring_stress [--role=both|front|back] [--mode=poll|doorbell] [--platform]\n"
            "         [--xchg=FILE] [--domid=N] [--remote=N] [--pingpong=N] [--msgs=N]\n"
            "         [--bytes=N] [--order=N] [--cmd-pages=N] [--spin-ns=N] [--seed=N]\n"
            "         [--timeout=S]\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "role", required_argument, NULL, 'r' },
        { "mode", required_argument, NULL, 'm' },
        { "platform", no_argument, NULL, 'P' },
        { "xchg", required_argument, NULL, 'x' },
        { "domid", required_argument, NULL, 'd' },
        { "remote", required_argument, NULL, 'R' },
        { "pingpong", required_argument, NULL, 'p' },
        { "msgs", required_argument, NULL, 'n' },
        { "bytes", required_argument, NULL, 'b' },
        { "order", required_argument, NULL, 'o' },
        { "cmd-pages", required_argument, NULL, 'c' },
        { "spin-ns", required_argument, NULL, 's' },
        { "seed", required_argument, NULL, 'S' },
        { "timeout", required_argument, NULL, 't' },
        { NULL, 0, NULL, 0 },
    };
    struct opts o = {
        .role = "both",
        .mode = "poll",
        .domid = 1,
        .remote = -1,
        .cfg = {
            .msgs = 1000000,
            .bytes = 1ull << 28,
            .order = 18,
            .spin_ns = 5000,
            .seed = 1,
            .timeout_s = 20,
            .geom = { 16, 1, 32, 0 },
        },
    };
    size_t size;
    int c, ret;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'r': o.role = optarg; break;
        case 'm': o.mode = optarg; break;
        case 'P': o.platform = 1; break;
        case 'x': o.xchg = optarg; break;
        case 'd': o.domid = atoi(optarg); break;
        case 'R': o.remote = atoi(optarg); break;
        case 'p': o.cfg.pingpong = strtoull(optarg, NULL, 0); break;
        case 'n': o.cfg.msgs = strtoull(optarg, NULL, 0); break;
        case 'b': o.cfg.bytes = strtoull(optarg, NULL, 0); break;
        case 'o': o.cfg.order = (uint8_t)atoi(optarg); break;
        case 'c': o.cfg.geom.cmd_pages = (uint32_t)atoi(optarg); break;
        case 's': o.cfg.spin_ns = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'S': o.cfg.seed = strtoull(optarg, NULL, 0); break;
        case 't': o.cfg.timeout_s = (unsigned int)atoi(optarg); break;
        default: usage(); return 2;
        }
    }
    if (strcmp(o.mode, "poll") != 0 && strcmp(o.mode, "doorbell") != 0) {
        usage();
        return 2;
    }
    if (strcmp(o.role, "both") != 0 && strcmp(o.role, "front") != 0 &&
        strcmp(o.role, "back") != 0) {
        usage();
        return 2;
    }
    o.cfg.poll = strcmp(o.mode, "poll") == 0;
    o.cfg.geom.data_pages = o.cfg.order >= 12 ? (1u << o.cfg.order) / MW_PAGE_SIZE : 1;
    if (mw_area_size(&o.cfg.geom, &size) < 0) {
        fprintf(stderr, "ring_stress: bad geometry (cmd-pages a power of two <= 16)\n");
        return 2;
    }
    if (o.remote < 0 && strcmp(o.role, "both") != 0) {
        fprintf(stderr, "ring_stress: --role=front|back needs --remote=DOMID\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(o.role, "both") == 0)
        ret = run_both(&o, size);
    else
        ret = run_one(&o, size);
    return ret < 0 ? 1 : 0;
}
