/*
 * tcp_ip_wrapper.so under threads and fork: 4 threads make control calls without pause while
 * the main thread forks 40 times and goes on making calls; each child makes its own control
 * calls at the same time (on its own connection) and uses an inherited socket. A lock held across fork, or a child answering on its parent's
 * control connection, shows as a hang (alarm: exit 3) or a wrong answer (exit 1).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { printf("FAIL %s:%d: %s (errno %d %s)\n", __FILE__, \
    __LINE__, #c, errno, strerror(errno)); exit(1); } } while (0)

static atomic_int stop;
static atomic_long calls;

static int udp_bound(struct sockaddr_in *bound)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(*bound);
    int s = socket(AF_INET, SOCK_DGRAM, 0);

    CHECK(s >= 0);
    CHECK(bind(s, (struct sockaddr *)&a, sizeof(a)) == 0);
    CHECK(getsockname(s, (struct sockaddr *)bound, &len) == 0 && bound->sin_port != 0);
    return s;
}

static void *worker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        struct sockaddr_in a;
        int s = udp_bound(&a);
        int sv[2];

        CHECK(close(s) == 0);
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        close(sv[0]);
        close(sv[1]);
        atomic_fetch_add(&calls, 3);
    }
    return NULL;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "FAIL deadlock (alarm)\n";

    if (write(1, m, sizeof(m) - 1) < 0)
        _exit(3);
    _exit(3);
}

int main(void)
{
    pthread_t th[4];
    struct sockaddr_in pa;
    int ps, forks = 40;

    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGALRM, on_alarm);
    alarm(60);
    ps = udp_bound(&pa);
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&th[i], NULL, worker, NULL) == 0);
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        int st;

        CHECK(pid >= 0);
        if (pid == 0) {
            struct sockaddr_in ca;
            int cs;

            alarm(20);
            for (int k = 0; k < 20; k++) {         /* while the parent's thread does too */
                cs = udp_bound(&ca);
                close(cs);
            }
            cs = udp_bound(&ca);
            CHECK(sendto(cs, "child", 5, 0, (struct sockaddr *)&pa, sizeof(pa)) == 5);
            CHECK(sendto(ps, "inherited", 9, 0, (struct sockaddr *)&pa, sizeof(pa)) == 9);
            close(cs);
            _exit(0);
        }
        for (int k = 0; k < 20; k++) {             /* the forking thread's own connection */
            struct sockaddr_in x;

            close(udp_bound(&x));
        }
        CHECK(waitpid(pid, &st, 0) == pid);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("FAIL child %d status 0x%x\n", i, st);
            exit(1);
        }
        {
            char buf[16];
            int got = 0;

            for (int k = 0; k < 2; k++) {
                ssize_t n = recv(ps, buf, sizeof(buf), 0);

                CHECK(n == 5 || n == 9);
                got |= n == 5 ? 1 : 2;
            }
            CHECK(got == 3);
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    printf("OK fork_threads forks=%d calls=%ld\n", forks, atomic_load(&calls));
    printf("DONE\n");
    return 0;
}
