/*
 * Calls on sockets that native Linux fails at once: a TCP socket that never connected (or
 * listens), and a connected UDP socket whose peer port is closed (ICMP port unreachable).
 * Prints one line per observation; run natively and under the shim, the outputs must match.
 *
 *   unconnected            the whole run
 *   unconnected child FD   (after exec) calls on an inherited, never connected socket
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t sigpipes;

static void on_sigpipe(int sig)
{
    (void)sig;
    sigpipes++;
}

static void show(const char *what, long ret)
{
    if (ret < 0)
        printf("%s: -1 %s\n", what, strerrorname_np(errno));
    else
        printf("%s: %ld\n", what, ret);
    fflush(stdout);
}

static void rcvtimeo(int fd, long ms)
{
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static int so_error(int fd)
{
    int v = -1;
    socklen_t len = sizeof(v);

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &len) < 0)
        return -1;
    return v;
}

static void stream_calls(int s, const char *tag)
{
    char buf[16], what[64];

    snprintf(what, sizeof(what), "%s recv", tag);
    show(what, recv(s, buf, sizeof(buf), 0));
    snprintf(what, sizeof(what), "%s read", tag);
    show(what, read(s, buf, sizeof(buf)));
    snprintf(what, sizeof(what), "%s send-nosignal", tag);
    show(what, send(s, "x", 1, MSG_NOSIGNAL));
    printf("%s sigpipes: %d\n", tag, (int)sigpipes);
    snprintf(what, sizeof(what), "%s send", tag);
    show(what, send(s, "x", 1, 0));
    snprintf(what, sizeof(what), "%s write", tag);
    show(what, write(s, "x", 1));
    printf("%s sigpipes: %d\n", tag, (int)sigpipes);
    fflush(stdout);
    sigpipes = 0;
}

/* A connected UDP socket to a port nobody listens on; one datagram sent. */
static int udp_to_closed(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    int dead = socket(AF_INET, SOCK_DGRAM, 0), c;
    struct timespec ts = { .tv_nsec = 300 * 1000 * 1000 };

    bind(dead, (struct sockaddr *)&a, sizeof(a));
    getsockname(dead, (struct sockaddr *)&a, &len);
    close(dead);
    c = socket(AF_INET, SOCK_DGRAM, 0);
    connect(c, (struct sockaddr *)&a, sizeof(a));
    send(c, "ping", 4, 0);
    nanosleep(&ts, NULL);
    rcvtimeo(c, 300);
    return c;
}

int main(int argc, char **argv)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    char buf[16];
    int s, c, l, n;
    pid_t pid;

    signal(SIGPIPE, on_sigpipe);
    if (argc == 3 && strcmp(argv[1], "child") == 0) {
        stream_calls(atoi(argv[2]), "inherited");
        return 0;
    }

    /* never connected */
    s = socket(AF_INET, SOCK_STREAM, 0);
    {
        struct pollfd p = { .fd = s, .events = POLLIN };

        printf("poll-unconnected wakes: %d\n", poll(&p, 1, 2000) == 1);
    }
    stream_calls(s, "unconnected");

    /* inherited across exec, never connected */
    pid = fork();
    if (pid == 0) {
        char fd[16];

        snprintf(fd, sizeof(fd), "%d", s);
        execl("/proc/self/exe", argv[0], "child", fd, (char *)NULL);
        _exit(127);
    }
    waitpid(pid, NULL, 0);

    /* listening: no connection pending is not readable; data calls fail */
    show("listen", listen(s, 4));
    getsockname(s, (struct sockaddr *)&a, &len);
    {
        struct pollfd p = { .fd = s, .events = POLLIN };

        show("poll-listener-idle", poll(&p, 1, 200));
    }
    stream_calls(s, "listening");

    /* connected afterwards: the bytes are the peer's, nothing else */
    c = socket(AF_INET, SOCK_STREAM, 0);
    show("connect", connect(c, (struct sockaddr *)&a, sizeof(a)));
    l = accept(s, NULL, NULL);
    printf("accepted: %d\n", l >= 0);
    show("send-accepted", send(l, "hi", 2, 0));
    close(l);
    n = 0;
    for (;;) {
        ssize_t r = recv(c, buf + n, sizeof(buf) - n, 0);

        if (r <= 0)
            break;
        n += r;
    }
    printf("client got: %.*s (%d bytes)\n", n, buf, n);
    close(c);
    close(s);
    s = socket(AF_INET, SOCK_STREAM, 0);
    show("unconnected shutdown", shutdown(s, SHUT_RDWR));
    close(s);

    /* UDP: the error once, on the next receive */
    c = udp_to_closed();
    show("udp recv", recv(c, buf, sizeof(buf), 0));
    show("udp recv-again", recv(c, buf, sizeof(buf), 0));
    close(c);
    /* ... or with SO_ERROR, once */
    c = udp_to_closed();
    n = so_error(c);
    printf("udp so_error: %s\n", n > 0 ? strerrorname_np(n) : "0");
    printf("udp so_error-again: %d\n", so_error(c));
    show("udp recv-after-so_error", recv(c, buf, sizeof(buf), 0));
    close(c);
    /* ... a peek takes it too */
    c = udp_to_closed();
    show("udp peek", recv(c, buf, sizeof(buf), MSG_PEEK));
    show("udp recv-after-peek", recv(c, buf, sizeof(buf), MSG_DONTWAIT));
    close(c);
    return 0;
}
