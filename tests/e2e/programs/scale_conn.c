/*
 * scale_conn: N concurrent TCP connections, each moving BYTES in both directions, every byte
 * checked. Run under `mwcomms run` it puts both ends of every connection in the INS: 2N
 * forwarded sockets and a listener.
 *
 *   scale_conn N BYTES [TIMEOUT_S [hold|idle]]
 *
 * The process listens on 127.0.0.1 (port 0), then forks: the child is the client, the parent
 * the server. The client opens N non-blocking connections and waits until every one is
 * established; then each sends a 4-byte connection number and BYTES of a pseudo-random stream
 * of its own, and reads BYTES of the server's stream for that number, then end of file. The
 * server accepts all N connections before it reads or sends anything (so all N are open at
 * once at both ends), then on each reads the number and BYTES, and sends BYTES of its stream,
 * then shuts down its sending side. Both sides compare every byte received with the stream it
 * must be (a mismatch names the connection and the offset) and fold the bytes into a 64-bit
 * checksum, compared with the expected one.
 *
 * With "hold", the server prints "HOLD <pid>" once every connection is open at both ends and
 * nothing has moved yet, and waits for SIGUSR1 before either side sends a byte (for measuring
 * the memory an idle connection costs). With "idle", every connection stays open both ways
 * after its bytes moved (no shutdown, no end of file): the server prints "IDLE <pid>" once
 * all are done and waits for SIGUSR1 before both sides close them (the memory a connection
 * costs once it went idle).
 *
 * Output: "CLIENT ok=<k> of=<N> ..." and "SERVER ok=<k> of=<N> open_max=<m> ..." lines, then
 * "RESULT ok=<both ok> of=<N> secs=<s>"; exit status 0 only when every connection succeeded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static uint32_t nconn;
static uint64_t nbytes;
static const char *side = "?";

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    printf("%s FATAL %s: %s\n", side, what, strerror(errno));
    fflush(stdout);
    exit(2);
}

/* Word k of stream (conn, dir): splitmix64 of a per-stream seed, so any offset is computable. */
static uint64_t word(uint32_t conn, int dir, uint64_t k)
{
    uint64_t z = ((uint64_t)conn << 1 | (uint64_t)dir) * 0x9e3779b97f4a7c15ull + k + 1;

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Bytes off .. off+n-1 of stream (conn, dir) into buf. */
static void fill(uint8_t *buf, uint32_t conn, int dir, uint64_t off, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint64_t k = (off + i) / 8, w = word(conn, dir, k);
        unsigned int b = (unsigned int)((off + i) % 8);

        if (b == 0 && n - i >= 8) {
            memcpy(buf + i, &w, 8);
            i += 8;
            continue;
        }
        for (; b < 8 && i < n; b++, i++)
            buf[i] = (uint8_t)(w >> (8 * b));
    }
}

/* The checksum of a stream, fed in order: Fletcher's two running sums, 64 bits each (the
 * second one weighs every byte by its distance from the end, so order matters). */
struct csum {
    uint64_t a, b;
};

static void csum_add(struct csum *c, const uint8_t *p, size_t n)
{
    uint64_t a = c->a, b = c->b;

    for (size_t i = 0; i < n; i++) {
        a += p[i];
        b += a;
    }
    c->a = a;
    c->b = b;
}

struct conn {
    int fd;
    uint32_t id;            /* the connection number (server: learnt from the header) */
    uint8_t hdr[4];
    uint32_t hdr_done;      /* header bytes sent (client) or received (server) */
    uint64_t sent, rcvd;
    struct csum csum;       /* of the bytes received */
    int connected;          /* client: established */
    int shut, eof, done, failed;
};

static uint8_t *gen, *got, *want;
static int hold;            /* hold mode: the server releases the client through go[] */
static int idle;            /* idle mode: connections stay open until SIGUSR1 (go[] too) */
static int go[2];
static pid_t client_pid;    /* server: the client, watched so that its failure ends the run */
static int client_status = -1;

/* Server: give up when the client failed (its connections will never finish). */
static void check_client(void)
{
    if (client_pid > 0 && waitpid(client_pid, &client_status, WNOHANG) == client_pid) {
        client_pid = -1;
        if (!WIFEXITED(client_status) || WEXITSTATUS(client_status) != 0) {
            printf("SERVER the client failed (status %d)\n", client_status);
            exit(1);
        }
    }
}

static void conn_fail(struct conn *c, const char *what, int err, uint32_t *nfail)
{
    if (c->failed)
        return;
    c->failed = 1;
    if (*nfail < 10)
        printf("%s conn %u FAIL %s: %s (sent %llu rcvd %llu)\n", side, c->id, what,
               err ? strerror(err) : "-", (unsigned long long)c->sent,
               (unsigned long long)c->rcvd);
    (*nfail)++;
}

/*
 * Move bytes on one connection: send our stream (after the header when we are the client),
 * receive and check the peer's. dir_out / dir_in are the stream directions.
 * @return 1 when the connection is finished (done or failed)
 */
static int conn_io(struct conn *c, int dir_out, int dir_in, int is_client, uint32_t *nfail)
{
    ssize_t n;

    /* receive */
    for (;;) {
        if (!is_client && c->hdr_done < 4) {
            n = recv(c->fd, c->hdr + c->hdr_done, 4 - c->hdr_done, 0);
            if (n > 0) {
                c->hdr_done += (uint32_t)n;
                if (c->hdr_done == 4) {
                    memcpy(&c->id, c->hdr, 4);
                    if (c->id >= nconn) {
                        conn_fail(c, "bad connection number", 0, nfail);
                        return 1;
                    }
                }
                continue;
            }
        } else {
            size_t room = c->rcvd < nbytes ? (size_t)(nbytes - c->rcvd) : 1;

            n = recv(c->fd, got, room < CHUNK ? room : CHUNK, 0);
            if (n > 0) {
                if (c->rcvd + (uint64_t)n > nbytes) {
                    conn_fail(c, "more bytes than sent", 0, nfail);
                    return 1;
                }
                fill(want, c->id, dir_in, c->rcvd, (size_t)n);
                if (memcmp(got, want, (size_t)n) != 0) {
                    size_t i = 0;

                    while (got[i] == want[i])
                        i++;
                    printf("%s conn %u byte %llu differs\n", side, c->id,
                           (unsigned long long)(c->rcvd + i));
                    conn_fail(c, "corrupt byte", 0, nfail);
                    return 1;
                }
                csum_add(&c->csum, got, (size_t)n);
                c->rcvd += (uint64_t)n;
                continue;
            }
        }
        if (n == 0) {
            if (c->rcvd != nbytes || (!is_client && c->hdr_done < 4)) {
                conn_fail(c, "early end of file", 0, nfail);
                return 1;
            }
            c->eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        conn_fail(c, "recv", errno, nfail);
        return 1;
    }
    /* send (the server only once it knows whose stream to send) */
    while (!c->shut && (is_client || c->hdr_done == 4)) {
        if (is_client && c->hdr_done < 4) {
            memcpy(c->hdr, &c->id, 4);
            n = send(c->fd, c->hdr + c->hdr_done, 4 - c->hdr_done, MSG_NOSIGNAL);
            if (n > 0) {
                c->hdr_done += (uint32_t)n;
                continue;
            }
        } else if (c->sent < nbytes) {
            size_t len = nbytes - c->sent < CHUNK ? (size_t)(nbytes - c->sent) : CHUNK;

            fill(gen, c->id, dir_out, c->sent, len);
            n = send(c->fd, gen, len, MSG_NOSIGNAL);
            if (n > 0) {
                c->sent += (uint64_t)n;
                continue;
            }
        } else {
            if (idle) {         /* stays open both ways: done once every byte moved */
                c->shut = 1;
                break;
            }
            if (shutdown(c->fd, SHUT_WR) < 0) {
                conn_fail(c, "shutdown", errno, nfail);
                return 1;
            }
            c->shut = 1;
            break;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_fail(c, "send", n < 0 ? errno : 0, nfail);
        return 1;
    }
    return c->shut && (c->eof || (idle && c->rcvd == nbytes));
}

static struct csum expected_csum(uint32_t conn, int dir)
{
    struct csum sum = { 0, 0 };
    uint64_t off = 0;

    while (off < nbytes) {
        size_t len = nbytes - off < CHUNK ? (size_t)(nbytes - off) : CHUNK;

        fill(want, conn, dir, off, len);
        csum_add(&sum, want, len);
        off += len;
    }
    return sum;
}

static void watch(int ep, int fd, uint32_t events, void *ptr, int op)
{
    struct epoll_event ev = { .events = events, .data.ptr = ptr };

    if (epoll_ctl(ep, op, fd, &ev) < 0)
        die("epoll_ctl");
}

/* A finished connection: closed, or in idle mode kept open (and unwatched) until the end. */
static void conn_close(int ep, struct conn *c)
{
    if (!idle) {
        close(c->fd);
        return;
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
}

/* Idle mode: the server waits for SIGUSR1 and lets the client go; both then close all. */
static void idle_end(struct conn *cs, int is_server)
{
    sigset_t set;
    int sig;
    char b;

    if (!idle)
        return;
    if (is_server) {
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        printf("IDLE %d\n", (int)getpid());
        fflush(stdout);
        if (sigwait(&set, &sig) != 0 || write(go[1], "g", 1) != 1)
            die("idle");
    } else {
        while (read(go[0], &b, 1) < 0 && errno == EINTR)
            ;
    }
    for (uint32_t i = 0; i < nconn; i++)
        if (cs[i].fd > 0 && !cs[i].failed)
            close(cs[i].fd);
}

/* Drive connections until every one is finished. @return connections that failed */
static uint32_t run_io(int ep, struct conn *cs, int dir_out, int dir_in, int is_client,
                       uint32_t nfail)
{
    struct epoll_event evs[256];
    uint32_t left = 0;

    for (uint32_t i = 0; i < nconn; i++) {
        if (cs[i].failed) {
            cs[i].done = 1;
            continue;
        }
        left++;
        watch(ep, cs[i].fd, EPOLLIN | EPOLLOUT, &cs[i], EPOLL_CTL_MOD);
        if (conn_io(&cs[i], dir_out, dir_in, is_client, &nfail)) {
            cs[i].done = 1;
            left--;
            conn_close(ep, &cs[i]);
        }
    }
    while (left > 0) {
        int n = epoll_wait(ep, evs, 256, 1000);

        if (n == 0 && !is_client)
            check_client();
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;

            if (c->done)
                continue;
            if (conn_io(c, dir_out, dir_in, is_client, &nfail)) {
                c->done = 1;
                left--;
                conn_close(ep, c);
                continue;
            }
            if (c->shut)         /* only reading now */
                watch(ep, c->fd, EPOLLIN, c, EPOLL_CTL_MOD);
        }
    }
    return nfail;
}

static uint32_t verify(struct conn *cs, int dir_in, uint32_t nfail)
{
    uint32_t ok = 0;

    for (uint32_t i = 0; i < nconn; i++) {
        if (cs[i].failed)
            continue;
        struct csum x = expected_csum(cs[i].id, dir_in);

        if (cs[i].csum.a != x.a || cs[i].csum.b != x.b) {
            conn_fail(&cs[i], "checksum", 0, &nfail);
            continue;
        }
        ok++;
    }
    return ok;
}

static int client(uint16_t port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct conn *cs = calloc(nconn, sizeof(*cs));
    struct epoll_event evs[256];
    uint32_t nfail = 0, pending = 0, ok, seen[2] = { 0, 0 };
    double t0 = now();
    int ep = epoll_create1(0);

    side = "CLIENT";
    if (!cs || ep < 0)
        die("setup");
    for (uint32_t i = 0; i < nconn; i++) {
        struct conn *c = &cs[i];

        c->id = i;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0)
            die("socket");
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            c->connected = 1;
        } else if (errno == EINPROGRESS) {
            pending++;
        } else {
            conn_fail(c, "connect", errno, &nfail);
            close(c->fd);
            continue;
        }
        watch(ep, c->fd, EPOLLOUT, c, EPOLL_CTL_ADD);
    }
    while (pending > 0) {
        int n = epoll_wait(ep, evs, 256, -1);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            int err = 0;
            socklen_t l = sizeof(err);

            if (c->connected || c->failed)
                continue;
            pending--;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
                err = errno;
            if (err) {
                conn_fail(c, "connect (SO_ERROR)", err, &nfail);
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                continue;
            }
            c->connected = 1;
            watch(ep, c->fd, 0, c, EPOLL_CTL_MOD);
        }
    }
    seen[0] = nconn - nfail;
    printf("CLIENT connected=%u of=%u in %.2f s\n", seen[0], nconn, now() - t0);
    fflush(stdout);
    if (hold) {
        char b;

        while (read(go[0], &b, 1) < 0 && errno == EINTR)
            ;
    }
    nfail = run_io(ep, cs, 0, 1, 1, nfail);
    ok = verify(cs, 1, nfail);
    idle_end(cs, 0);
    seen[1] = ok;
    printf("CLIENT ok=%u of=%u bytes_each_way=%llu secs=%.2f\n", seen[1], nconn,
           (unsigned long long)nbytes, now() - t0);
    fflush(stdout);
    return ok == nconn ? 0 : 1;
}

static int server(int lfd, pid_t child)
{
    struct conn *cs = calloc(nconn, sizeof(*cs));
    struct epoll_event ev;
    uint32_t nfail = 0, naccepted = 0, ok;
    double t0 = now();
    int ep = epoll_create1(0);

    side = "SERVER";
    if (!cs || ep < 0)
        die("setup");
    watch(ep, lfd, EPOLLIN, NULL, EPOLL_CTL_ADD);
    client_pid = child;
    while (naccepted < nconn) {
        int n = epoll_wait(ep, &ev, 1, 1000);
        int fd;

        if (n == 0)
            check_client();
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        while (naccepted < nconn &&
               (fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
            cs[naccepted].fd = fd;
            cs[naccepted].id = UINT32_MAX;
            watch(ep, fd, 0, &cs[naccepted], EPOLL_CTL_ADD);
            naccepted++;
        }
        if (naccepted < nconn && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
            errno != ECONNABORTED) {
            printf("SERVER accept: %s after %u\n", strerror(errno), naccepted);
            fflush(stdout);
            kill(child, SIGTERM);
            return 1;
        }
    }
    close(lfd);
    printf("SERVER accepted=%u of=%u in %.2f s; all open at once\n", naccepted, nconn,
           now() - t0);
    fflush(stdout);
    if (hold) {
        sigset_t set;
        int sig;

        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        printf("HOLD %d\n", (int)getpid());
        fflush(stdout);
        if (sigwait(&set, &sig) != 0 || write(go[1], "g", 1) != 1)
            die("hold");
        t0 = now();
    }
    nfail = run_io(ep, cs, 1, 0, 0, nfail);
    ok = verify(cs, 0, nfail);
    idle_end(cs, 1);
    printf("SERVER ok=%u of=%u open_max=%u bytes_each_way=%llu secs=%.2f\n", ok, nconn,
           naccepted, (unsigned long long)nbytes, now() - t0);
    fflush(stdout);
    return ok == nconn ? 0 : 1;
}

static void on_alarm(int sig)
{
    static const char msg[] = "TIMEOUT\n";

    (void)sig;
    if (write(1, msg, sizeof(msg) - 1) < 0)
        _exit(3);
    _exit(3);
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof(sa);
    struct rlimit rl;
    int lfd, one = 1, status, rc;
    unsigned int timeout;
    double t0;
    pid_t pid;

    if (argc < 3) {
        fprintf(stderr, "usage: %s N BYTES [TIMEOUT_S]\n", argv[0]);
        return 2;
    }
    nconn = (uint32_t)strtoul(argv[1], NULL, 0);
    nbytes = strtoull(argv[2], NULL, 0);
    timeout = argc > 3 ? (unsigned int)strtoul(argv[3], NULL, 0) : 120;
    hold = argc > 4 && strcmp(argv[4], "hold") == 0;
    idle = argc > 4 && strcmp(argv[4], "idle") == 0;
    if (hold || idle) {
        sigset_t set;

        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigprocmask(SIG_BLOCK, &set, NULL);   /* taken by sigwait */
        if (pipe(go) < 0)
            die("pipe");
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    gen = malloc(CHUNK);
    got = malloc(CHUNK);
    want = malloc(CHUNK);
    if (!gen || !got || !want)
        die("malloc");
    signal(SIGALRM, on_alarm);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (lfd < 0)
        die("socket");
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0)
        die("listen");
    t0 = now();
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(lfd);
        alarm(timeout);
        _exit(client(ntohs(sa.sin_port)));
    }
    alarm(timeout);
    rc = server(lfd, pid);
    if (client_pid > 0 && waitpid(pid, &client_status, 0) < 0)
        die("waitpid");
    status = client_status;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        rc = 1;
    printf("RESULT ok=%u of=%u secs=%.2f\n", rc == 0 ? nconn : 0, nconn, now() - t0);
    return rc;
}
