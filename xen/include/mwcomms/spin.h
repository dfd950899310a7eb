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
 * Polling pays only while a CPU would otherwise idle. A poller that holds a CPU another task
 * wants makes the whole chain wait for it (make bench --hog 2, two busy loops on two CPUs:
 * round trips 2.3 times slower polling than sleeping). So the poll gives the CPU away after
 * each look (sched_yield), and once a yield took long, i.e. another task ran on this CPU, it
 * stops polling and sleeps.
 *
 * Header-only: both engines are in the same _native build and in the C test programs, which
 * list their sources.
 */
#ifndef MWCOMMS_SPIN_H
#define MWCOMMS_SPIN_H

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>

/* the default poll budget after the last work done, in microseconds */
#define MW_SPIN_US_DEFAULT 50u
/* at most this, whatever the configuration says: a poll budget is not a way to burn a core */
#define MW_SPIN_US_MAX 1000u
/* a sched_yield that took longer than this ran another task: the CPU is wanted */
#define MW_SPIN_YIELDED_NS 5000u

struct mw_spin {
    uint64_t budget_ns;        /* 0: never poll */
    uint64_t until_ns;         /* poll until then (CLOCK_MONOTONIC) */
    uint64_t yielded;          /* polls ended because another task wanted the CPU */
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
}

/* The loop has just done work: poll for up to the budget from now on. */
static inline void mw_spin_worked(struct mw_spin *s)
{
    if (s->budget_ns)
        s->until_ns = mw_now_ns() + s->budget_ns;
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
    uint64_t now = mw_now_ns();

    if (timeout != 0 && now < s->until_ns) {
        do {
            int n = epoll_wait(ep, evs, max, 0);

            if (n != 0)
                return n;
            sched_yield();
            if (mw_now_ns() - now > MW_SPIN_YIELDED_NS) {
                s->yielded++;      /* another task ran here meanwhile: sleep */
                break;
            }
            now = mw_now_ns();
        } while (now < s->until_ns);
    }
    s->until_ns = 0;
    return epoll_wait(ep, evs, max, timeout);
}

#endif
