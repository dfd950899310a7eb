/*
 * The INS resolver pool: getaddrinfo() and getnameinfo() block, so a few threads run them.
 * The loop hands a job (a private copy of the query) to ins_dns_submit(); a worker resolves
 * it, lays the answer out in the job's own buffer (docs/protocol.md 12), puts the job on the
 * done list and writes the DNS eventfd; the loop then copies the answer into the frontend's
 * out-of-line buffer, if that frontend is still attached. Workers never touch shared memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ins_priv.h"

void ins_dns_job_free(struct ins_dns_job *job)
{
    if (!job)
        return;
    free(job->ans);
    free(job);
}

/* Fill job->ans with a GETADDRINFO answer from a glibc result list. */
static void gai_answer(struct ins_dns_job *job, const struct addrinfo *res)
{
    struct mw_ai_entry entries[MW_AI_ENTRIES_MAX];
    const char *canon = NULL;
    uint32_t count = 0;
    size_t canon_len = 0;
    int n;

    for (const struct addrinfo *ai = res; ai && count < MW_AI_ENTRIES_MAX; ai = ai->ai_next) {
        struct mw_sockaddr a;

        if (ai->ai_family == AF_INET6 && !(job->features & INS_F_IPV6))
            continue;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (ai->ai_socktype != SOCK_STREAM && ai->ai_socktype != SOCK_DGRAM &&
            ai->ai_socktype != SOCK_RAW)
            continue;
        if (ai->ai_protocol != 0 && ai->ai_protocol != IPPROTO_TCP &&
            ai->ai_protocol != IPPROTO_UDP)
            continue;
        ins_sockaddr_from(ai->ai_addr, &a);
        mw_ai_entry_build(&entries[count++], ai->ai_socktype, ai->ai_protocol, &a);
    }
    if (res && res->ai_canonname) {
        canon = res->ai_canonname;
        canon_len = strlen(canon);
        if (canon_len > MW_AI_CANON_MAX)
            goto out_overflow;
    }
    if (count == 0) {
        job->status = EAI_NONAME;
        return;
    }
    n = mw_ai_answer_build(job->ans, job->ool_len, entries, count, canon, (uint32_t)canon_len);
    if (n < 0)
        goto out_overflow;
    job->status = 0;
    job->ans_len = (uint32_t)n;
    return;

out_overflow:
    job->status = EAI_OVERFLOW;
}

static void run_job(struct ins_dns_job *job)
{
    job->status = 0;
    job->sys_errno = 0;
    job->ans_len = 0;
    if (job->cmd == MW_CMD_GETADDRINFO) {
        struct addrinfo *res = NULL;
        int rc = getaddrinfo(job->has_node ? job->node : NULL,
                             job->has_service ? job->service : NULL, &job->hints, &res);

        if (rc == 0) {
            gai_answer(job, res);
            freeaddrinfo(res);
        } else {
            job->status = rc;
            if (rc == EAI_SYSTEM)
                job->sys_errno = errno > 0 && errno <= MW_ERRNO_MAX ? -errno : -EIO;
        }
    } else {
        char host[MW_NI_HOST_MAX + 1], serv[MW_NI_SERV_MAX + 1];
        int rc = getnameinfo((struct sockaddr *)&job->addr, job->addrlen, host, sizeof(host),
                             serv, sizeof(serv), job->ni_flags);

        if (rc == 0) {
            int n = mw_ni_answer_build(job->ans, job->ool_len, host, (uint32_t)strlen(host),
                                       serv, (uint32_t)strlen(serv));

            if (n < 0)
                job->status = EAI_OVERFLOW;
            else
                job->ans_len = (uint32_t)n;
        } else {
            job->status = rc;
            if (rc == EAI_SYSTEM)
                job->sys_errno = errno > 0 && errno <= MW_ERRNO_MAX ? -errno : -EIO;
        }
    }
    /* the wire carries glibc's negative EAI_* codes in -105 .. -1 */
    if (job->status > 0 || job->status < MW_EAI_MIN)
        job->status = EAI_FAIL;
    if (job->status != EAI_SYSTEM)
        job->sys_errno = 0;
    if (job->status != 0)
        job->ans_len = 0;
}

static void *worker(void *arg)
{
    struct ins_engine *e = arg;
    uint64_t one = 1;

    pthread_mutex_lock(&e->dns_lock);
    for (;;) {
        struct ins_dns_job *job;

        while (!e->dns_queue && !e->dns_quit)
            pthread_cond_wait(&e->dns_cond, &e->dns_lock);
        if (e->dns_quit)
            break;
        job = e->dns_queue;
        e->dns_queue = job->next;
        if (!e->dns_queue)
            e->dns_queue_tail = &e->dns_queue;
        pthread_mutex_unlock(&e->dns_lock);

        run_job(job);

        pthread_mutex_lock(&e->dns_lock);
        job->next = e->dns_done;
        e->dns_done = job;
        /* the job is on the list /then/ the loop is woken: it takes the list under the lock */
        if (write(e->dns_fd, &one, sizeof(one)) < 0) {
            /* an eventfd write fails only when the counter would overflow: already readable */
        }
    }
    pthread_mutex_unlock(&e->dns_lock);
    return NULL;
}

int ins_dns_start(struct ins_engine *e)
{
    uint32_t i;
    int rc;

    e->dns_queue = NULL;
    e->dns_queue_tail = &e->dns_queue;
    e->dns_nthreads = 0;
    e->dns_threads = calloc(e->cfg.dns_workers, sizeof(*e->dns_threads));
    if (!e->dns_threads)
        return -ENOMEM;
    for (i = 0; i < e->cfg.dns_workers; i++) {
        rc = pthread_create(&e->dns_threads[i], NULL, worker, e);
        if (rc) {
            ins_dns_stop(e);
            return -rc;
        }
        e->dns_nthreads++;
    }
    return 0;
}

void ins_dns_stop(struct ins_engine *e)
{
    uint32_t i;
    struct ins_dns_job *job;

    pthread_mutex_lock(&e->dns_lock);
    e->dns_quit = 1;
    pthread_cond_broadcast(&e->dns_cond);
    pthread_mutex_unlock(&e->dns_lock);
    for (i = 0; i < e->dns_nthreads; i++)
        pthread_join(e->dns_threads[i], NULL);
    free(e->dns_threads);
    e->dns_threads = NULL;
    e->dns_nthreads = 0;
    while ((job = e->dns_queue)) {
        e->dns_queue = job->next;
        ins_dns_job_free(job);
    }
    e->dns_queue_tail = &e->dns_queue;
    while ((job = ins_dns_take_done(e)))
        ins_dns_job_free(job);
}

void ins_dns_submit(struct ins_engine *e, struct ins_dns_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&e->dns_lock);
    *e->dns_queue_tail = job;
    e->dns_queue_tail = &job->next;
    pthread_cond_signal(&e->dns_cond);
    pthread_mutex_unlock(&e->dns_lock);
}

struct ins_dns_job *ins_dns_take_done(struct ins_engine *e)
{
    struct ins_dns_job *job;

    pthread_mutex_lock(&e->dns_lock);
    job = e->dns_done;
    if (job)
        e->dns_done = job->next;
    pthread_mutex_unlock(&e->dns_lock);
    return job;
}
