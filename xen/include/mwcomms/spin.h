/*
 * Waiting for work in the two engines' epoll loops without paying for a wake-up.
 *
 * A forwarded round trip passes through mwcommsd and the INS twice each. When an engine sleeps
 * in epoll_wait between those passes, each pass costs a wake-up: on a small virtual machine an
 * idle vCPU takes tens of microseconds to come back (make bench measured a ring round trip of
 * 42 us sleeping vs 0.7 us polling). So an engine that just did work polls its epoll set for a
 * short while before it sleeps, giving the CPU to anything else runnable between polls
 * (sched_yield), so a busy machine loses little to it; an idle engine sleeps as before.
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
#include <sys/epoll.h>
#include <time.h>

/* the default poll budget after the last work done, in microseconds */
#define MW_SPIN_US_DEFAULT 50u
/* at most this, whatever the configuration says: a poll budget is not a way to burn a core */
#define MW_SPIN_US_MAX 1000u

static inline uint64_t mw_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/**
 * mw_spin_budget_us() - the poll budget: @configured when set (> 0; UINT32_MAX turns polling
 * off), else the MW_SPIN_US environment variable, else MW_SPIN_US_DEFAULT; capped at
 * MW_SPIN_US_MAX.
 */
static inline uint32_t mw_spin_budget_us(uint32_t configured)
{
    const char *env = getenv("MW_SPIN_US");
    unsigned long v = MW_SPIN_US_DEFAULT;

    if (configured == UINT32_MAX)
        return 0;
    if (configured)
        v = configured;
    else if (env && *env) {
        char *end;

        v = strtoul(env, &end, 10);
        if (*end)
            v = MW_SPIN_US_DEFAULT;
    }
    return v > MW_SPIN_US_MAX ? MW_SPIN_US_MAX : (uint32_t)v;
}

/**
 * mw_epoll_spin() - epoll_wait() that first polls until @until_ns (CLOCK_MONOTONIC).
 *
 * Returns as epoll_wait() does. With @timeout 0, or @until_ns in the past, it is one plain
 * epoll_wait().
 */
static inline int mw_epoll_spin(int ep, struct epoll_event *evs, int max, int timeout,
                                uint64_t until_ns)
{
    if (timeout != 0) {
        while (mw_now_ns() < until_ns) {
            int n = epoll_wait(ep, evs, max, 0);

            if (n != 0)
                return n;
            sched_yield();
        }
    }
    return epoll_wait(ep, evs, max, timeout);
}

#endif
