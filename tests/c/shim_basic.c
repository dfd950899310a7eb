/*
 * tcp_ip_wrapper.so without mwcommsd: what works and what is refused. Run under LD_PRELOAD by
 * tests/shim/test_shim.py; prints "OK <case>" per case, "FAIL ..." and exits 1 otherwise.
 *
 *   shim_basic unix     AF_UNIX stream/seqpacket/dgram, socketpair, dup/dup2/fcntl, poll:
 *                       everything passes through to libc untouched
 *   shim_basic refuse   raw, packet, ping, SCTP, vsock sockets: refused with EPERM /
 *                       EAFNOSUPPORT / EPROTONOSUPPORT
 *   shim_basic absent   mwcommsd not running: socket(AF_INET*) fails with ENETDOWN,
 *                       getaddrinfo with EAI_AGAIN
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { printf("FAIL %s:%d: %s (errno %d %s)\n", __FILE__, \
    __LINE__, #c, errno, strerror(errno)); exit(1); } } while (0)
#define OK(name) printf("OK %s\n", name)

static void unix_cases(void)
{
    int sv[2], l, c, a, d, d2;
    char buf[16];
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct pollfd p;

    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(write(sv[0], "abc", 3) == 3);
    CHECK(read(sv[1], buf, sizeof(buf)) == 3 && memcmp(buf, "abc", 3) == 0);
    CHECK(send(sv[1], "xy", 2, 0) == 2);
    CHECK(recv(sv[0], buf, sizeof(buf), MSG_PEEK) == 2);
    CHECK(recv(sv[0], buf, sizeof(buf), 0) == 2);
    d = dup(sv[0]);
    CHECK(d >= 0);
    d2 = fcntl(sv[0], F_DUPFD_CLOEXEC, 100);
    CHECK(d2 >= 100);
    CHECK(dup2(sv[0], 90) == 90);
    CHECK(close(sv[0]) == 0);
    CHECK(write(d, "q", 1) == 1 && read(sv[1], buf, 1) == 1 && buf[0] == 'q');
    CHECK(write(90, "r", 1) == 1 && read(sv[1], buf, 1) == 1 && buf[0] == 'r');
    CHECK(write(d2, "s", 1) == 1 && read(sv[1], buf, 1) == 1 && buf[0] == 's');
    close(d);
    close(d2);
    close(90);
    CHECK(read(sv[1], buf, 1) == 0);            /* every copy closed: EOF */
    close(sv[1]);
    OK("socketpair_dup");

    snprintf(sun.sun_path, sizeof(sun.sun_path), "/tmp/shim_basic.%d", (int)getpid());
    unlink(sun.sun_path);
    l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    CHECK(l >= 0);
    CHECK(bind(l, (struct sockaddr *)&sun, sizeof(sun)) == 0);
    CHECK(listen(l, 4) == 0);
    c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
    CHECK(c >= 0 && (fcntl(c, F_GETFL) & O_NONBLOCK));
    CHECK(connect(c, (struct sockaddr *)&sun, sizeof(sun)) == 0);
    a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(a >= 0 && (fcntl(a, F_GETFD) & FD_CLOEXEC));
    CHECK(send(c, "hello", 5, 0) == 5);
    p = (struct pollfd){ .fd = a, .events = POLLIN };
    CHECK(poll(&p, 1, 1000) == 1);
    CHECK(recv(a, buf, 2, 0) == 2);             /* seqpacket: the rest is cut */
    CHECK(recv(a, buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno == EAGAIN);
    {
        int t;
        socklen_t tl = sizeof(t);

        CHECK(getsockopt(a, SOL_SOCKET, SO_TYPE, &t, &tl) == 0 && t == SOCK_SEQPACKET);
    }
    close(a);
    close(c);
    close(l);
    unlink(sun.sun_path);
    OK("unix_seqpacket_listen");

    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0);
    {
        struct iovec iov[2] = { { "ab", 2 }, { "cd", 2 } };
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };

        CHECK(sendmsg(sv[0], &m, 0) == 4);
        CHECK(recvfrom(sv[1], buf, sizeof(buf), 0, NULL, NULL) == 4);
        CHECK(memcmp(buf, "abcd", 4) == 0);
    }
    close(sv[0]);
    close(sv[1]);
    OK("unix_dgram");
}

static void expect_refused(const char *name, int d, int t, int p, int err)
{
    int fd = socket(d, t, p);

    if (fd >= 0 || errno != err) {
        printf("FAIL %s: socket() = %d errno %d (%s), want errno %d\n", name, fd, errno,
               strerror(errno), err);
        exit(1);
    }
    OK(name);
}

static void refuse_cases(void)
{
    int sv[2];

    expect_refused("raw_inet", AF_INET, SOCK_RAW, IPPROTO_ICMP, EPERM);
    expect_refused("raw_inet6", AF_INET6, SOCK_RAW, IPPROTO_ICMPV6, EPERM);
    expect_refused("raw_inet_cloexec", AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW, EPERM);
    expect_refused("packet", AF_PACKET, SOCK_RAW, 0, EAFNOSUPPORT);
    expect_refused("packet_dgram", AF_PACKET, SOCK_DGRAM, 0, EAFNOSUPPORT);
    expect_refused("ping", AF_INET, SOCK_DGRAM, IPPROTO_ICMP, EPROTONOSUPPORT);
    expect_refused("sctp", AF_INET, SOCK_STREAM, IPPROTO_SCTP, EPROTONOSUPPORT);
    expect_refused("sctp_seqpacket", AF_INET6, SOCK_SEQPACKET, 0, ESOCKTNOSUPPORT);
    expect_refused("vsock", 40 /* AF_VSOCK */, SOCK_STREAM, 0, EAFNOSUPPORT);
    CHECK(socketpair(AF_INET, SOCK_STREAM, 0, sv) < 0 && errno == EOPNOTSUPP);
    OK("socketpair_inet");
}

static void absent_cases(void)
{
    struct addrinfo *res = NULL;
    int fd;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd < 0 && errno == ENETDOWN);
    fd = socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    CHECK(fd < 0 && errno == ENETDOWN);
    OK("socket_fails_closed");
    CHECK(getaddrinfo("localhost", "80", NULL, &res) == EAI_AGAIN && res == NULL);
    OK("getaddrinfo_fails_closed");
    CHECK(gethostbyname("localhost") == NULL && h_errno == TRY_AGAIN);
    OK("gethostbyname_fails_closed");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2)
        return 2;
    if (strcmp(argv[1], "unix") == 0)
        unix_cases();
    else if (strcmp(argv[1], "refuse") == 0)
        refuse_cases();
    else if (strcmp(argv[1], "absent") == 0)
        absent_cases();
    else
        return 2;
    printf("DONE\n");
    return 0;
}
