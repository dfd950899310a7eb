/*
 * Waiting for work in the two engines' epoll loops without paying for a wake-up.
 *
 * A forwarded round trip passes through mwcommsd and the INS twice each. When an engine sleeps
 * in epoll_wait between those passes, each pass costs a wake-up: on a small virtual machine an
 * idle vCPU takes tens of microseconds to come back (make bench measured a ring round trip of
 * 42 us sleeping vs 0.7 us polling). So an engine that just did work polls its epoll set for a
 * short while before it sleeps, giving the CPU to anything else runnable between polls
 * (sched_yield). An idle engine sleeps as before.
 *
 * Polling pays only while a CPU would otherwise idle: when the machine has more runnable tasks
 * than CPUs, the engine itself included (the kernel's count in /proc/loadavg, read at most
 * every 10 ms), the engine sleeps at once, because a poller then holds a CPU that the next process of the chain
 * is waiting for (make bench --hog 2: round trips 2.3 times slower polling than not).
 *
 * Header-only: both engines are in the same _native build and in the C test programs, which
 * list their sources.
 */
#ifndef MWCOMMS_SPIN_H
#define MWCOMMS_SPIN_H

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

/* the default poll budget after the last work done, in microseconds */
#define MW_SPIN_US_DEFAULT 50u
/* at most this, whatever the configuration says: a poll budget is not a way to burn a core */
#define MW_SPIN_US_MAX 1000u
/* how often the machine's runnable count is read again */
#define MW_SPIN_BUSY_CHECK_NS 10000000u

struct mw_spin {
    uint64_t budget_ns;        /* 0: never poll */
    uint64_t until_ns;         /* poll until then (CLOCK_MONOTONIC) */
    uint64_t checked_ns;       /* when /proc/loadavg was last read */
    long ncpu;
    int busy;                  /* more runnable tasks than CPUs at the last reading */
};

static inline uint64_t mw_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/**
 * mw_spin_budget_us() - the poll budget: @configured when set (> 0; UINT32_MAX turns polling
 * off), else the MW_SPIN_US environment variable (a decimal number of microseconds; anything
 * else is ignored), else MW_SPIN_US_DEFAULT; capped at MW_SPIN_US_MAX.
 */
static inline uint32_t mw_spin_budget_us(uint32_t configured)
{
    const char *env = getenv("MW_SPIN_US");
    unsigned long v = MW_SPIN_US_DEFAULT;

    if (configured == UINT32_MAX)
        return 0;
    if (configured)
        v = configured;
    else if (env && *env >= '0' && *env <= '9') {
        char *end;

        errno = 0;
        v = strtoul(env, &end, 10);
        if (*end || errno)
            v = MW_SPIN_US_DEFAULT;
    }
    return v > MW_SPIN_US_MAX ? MW_SPIN_US_MAX : (uint32_t)v;
}

static inline void mw_spin_init(struct mw_spin *s, uint32_t configured)
{
    memset(s, 0, sizeof(*s));
    s->budget_ns = (uint64_t)mw_spin_budget_us(configured) * 1000u;
    s->ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (s->ncpu < 1)
        s->ncpu = 1;
}

/* Whether the machine has more runnable tasks than CPUs (the caller among them): the 4th
 * field of /proc/loadavg, "runnable/total". Unknown counts as not busy. */
static inline int mw_spin_machine_busy(const struct mw_spin *s)
{
    char buf[128], *slash;
    ssize_t n;
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    slash = strchr(buf, '/');
    if (!slash)
        return 0;
    while (slash > buf && slash[-1] >= '0' && slash[-1] <= '9')
        slash--;
    return strtol(slash, NULL, 10) > s->ncpu;
}

/**
 * mw_spin_worked() - the loop has just done work: poll for up to the budget from now on,
 * unless the machine is busy.
 */
static inline void mw_spin_worked(struct mw_spin *s)
{
    uint64_t now;

    if (!s->budget_ns)
        return;
    now = mw_now_ns();
    if (now - s->checked_ns >= MW_SPIN_BUSY_CHECK_NS) {
        s->busy = mw_spin_machine_busy(s);
        s->checked_ns = now;
    }
    s->until_ns = s->busy ? 0 : now + s->budget_ns;
}

/**
 * mw_epoll_spin() - epoll_wait() that first polls until the end of @s's budget.
 *
 * Returns as epoll_wait() does. With @timeout 0, or the budget over, it is one plain
 * epoll_wait().
 */
static inline int mw_epoll_spin(struct mw_spin *s, int ep, struct epoll_event *evs, int max,
                                int timeout)
{
    if (timeout != 0) {
        while (mw_now_ns() < s->until_ns) {
            int n = epoll_wait(ep, evs, max, 0);

            if (n != 0)
                return n;
            sched_yield();
        }
    }
    s->until_ns = 0;
    return epoll_wait(ep, evs, max, timeout);
}

#endif
