/*
 * xen/include/mwcomms/spin.h: the poll budget from configuration and MW_SPIN_US, and
 * mw_epoll_spin returning an event that arrives while it polls, sleeping once the budget is
 * over or once another task wants the CPU, and not polling at all without a budget.
 *
 * Prints "SPIN FAIL <what>" per failure and "SPIN RESULT: PASS" at the end.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mwcomms/spin.h"

static int fails;

#define CHECK(cond) do { if (!(cond)) { printf("SPIN FAIL %s (line %d)\n", #cond, __LINE__); fails++; } } while (0)

static uint32_t budget_with_env(const char *v, uint32_t configured)
{
    if (v)
        setenv("MW_SPIN_US", v, 1);
    else
        unsetenv("MW_SPIN_US");
    return mw_spin_budget_us(configured);
}

static int stop_busy;

static void *busy(void *arg)
{
    while (!__atomic_load_n(&stop_busy, __ATOMIC_ACQUIRE))
        ;
    return arg;
}

static void *write_later(void *arg)
{
    uint64_t one = 1;
    struct timespec ts = { 0, 5000 };     /* 5 us */

    nanosleep(&ts, NULL);
    if (write(*(int *)arg, &one, sizeof(one)) != sizeof(one))
        printf("SPIN FAIL eventfd write\n");
    return NULL;
}

int main(void)
{
    struct epoll_event ev = { .events = EPOLLIN }, out[4];
    struct mw_spin s;
    pthread_t t;
    uint64_t t0, v;
    int ep, efd, n;

    /* the budget */
    CHECK(budget_with_env(NULL, 0) == MW_SPIN_US_DEFAULT);
    CHECK(budget_with_env("75", 0) == 75);
    CHECK(budget_with_env("0", 0) == 0);
    CHECK(budget_with_env("99999", 0) == MW_SPIN_US_MAX);
    CHECK(budget_with_env("-1", 0) == MW_SPIN_US_DEFAULT);
    CHECK(budget_with_env("50us", 0) == MW_SPIN_US_DEFAULT);
    CHECK(budget_with_env("abc", 0) == MW_SPIN_US_DEFAULT);
    CHECK(budget_with_env("99999999999999999999999", 0) == MW_SPIN_US_DEFAULT);
    CHECK(budget_with_env("75", 20) == 20);                 /* configuration first */
    CHECK(budget_with_env("75", UINT32_MAX) == 0);          /* off */
    unsetenv("MW_SPIN_US");

    ep = epoll_create1(EPOLL_CLOEXEC);
    efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ev.data.fd = efd;
    CHECK(ep >= 0 && efd >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) == 0);

    /* an event that comes while polling is returned by the poll */
    mw_spin_init(&s, MW_SPIN_US_MAX);
    mw_spin_worked(&s);
    CHECK(s.until_ns > mw_now_ns());
    CHECK(pthread_create(&t, NULL, write_later, &efd) == 0);
    n = mw_epoll_spin(&s, ep, out, 4, 2000);
    CHECK(n == 1 && out[0].data.fd == efd);
    pthread_join(t, NULL);
    CHECK(read(efd, &v, sizeof(v)) == sizeof(v));

    /* nothing comes: the budget runs out, then the timeout of the sleep */
    mw_spin_worked(&s);
    s.until_ns = mw_now_ns() + 1000000u;     /* 1 ms, whatever the machine's load */
    t0 = mw_now_ns();
    n = mw_epoll_spin(&s, ep, out, 4, 20);
    CHECK(n == 0);
    CHECK(mw_now_ns() - t0 >= 20000000u);   /* it slept the timeout after polling */
    CHECK(s.until_ns == 0);                  /* the budget is used up */

    /* no budget: one plain epoll_wait, nothing set */
    mw_spin_init(&s, UINT32_MAX);
    mw_spin_worked(&s);
    CHECK(s.budget_ns == 0 && s.until_ns == 0);
    CHECK(mw_epoll_spin(&s, ep, out, 4, 0) == 0);

    /* a CPU wanted by another task ends the poll at once: a busy thread on this CPU */
    {
        cpu_set_t one;

        CPU_ZERO(&one);
        CPU_SET(sched_getcpu() < 0 ? 0 : sched_getcpu(), &one);
        if (sched_setaffinity(0, sizeof(one), &one) == 0) {
            pthread_t hog;

            CHECK(pthread_create(&hog, NULL, busy, NULL) == 0);
            pthread_setaffinity_np(hog, sizeof(one), &one);
            mw_spin_init(&s, MW_SPIN_US_MAX);
            mw_spin_worked(&s);
            s.until_ns = mw_now_ns() + 500000000u;     /* 0.5 s of budget */
            t0 = mw_now_ns();
            CHECK(mw_epoll_spin(&s, ep, out, 4, 1) == 0);
            CHECK(s.yielded == 1);                     /* it gave up polling ... */
            CHECK(mw_now_ns() - t0 < 400000000u);      /* ... long before the budget */
            __atomic_store_n(&stop_busy, 1, __ATOMIC_RELEASE);
            pthread_join(hog, NULL);
        }
    }

    close(efd);
    close(ep);
    printf("SPIN RESULT: %s\n", fails ? "FAIL" : "PASS");
    return fails != 0;
}
