/*
 * Data calls as a program built with -O2 -D_FORTIFY_SOURCE=2 makes them: read(), recv() and
 * recvfrom() into buffers of known size become __read_chk, __recv_chk, __recvfrom_chk, which
 * the shim interposes too (the lengths come from a volatile, so the compiler cannot prove
 * them safe and keeps the checked forms). Prints one line per observation; run natively and
 * through the backbone, the outputs must be the same (tests/e2e/test_c_programs.py).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHECK(x) do { if (!(x)) { printf("FAILED %s (line %d, %s)\n", #x, __LINE__, \
                                          strerror(errno)); return 1; } } while (0)

static int bound(int type, struct sockaddr_in *sin)
{
    socklen_t len = sizeof(*sin);
    int fd = socket(AF_INET, type, 0);

    memset(sin, 0, sizeof(*sin));
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)sin, sizeof(*sin)) < 0 ||
        getsockname(fd, (struct sockaddr *)sin, &len) < 0)
        return -1;
    return fd;
}

static volatile size_t four = 4, sixty_four = 64;

int main(void)
{
    struct sockaddr_in la, ua, from;
    socklen_t flen = sizeof(from);
    char small[4], buf[64];
    int l, c, a, u, s;
    ssize_t n;

    setvbuf(stdout, NULL, _IONBF, 0);
    CHECK((l = bound(SOCK_STREAM, &la)) >= 0 && listen(l, 1) == 0);
    CHECK((c = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
    CHECK(connect(c, (struct sockaddr *)&la, sizeof(la)) == 0);
    CHECK((a = accept(l, NULL, NULL)) >= 0);
    CHECK(write(c, "fortified-stream", 16) == 16);
    n = read(a, small, four);                       /* __read_chk */
    printf("read %zd %.*s\n", n, (int)n, small);
    n = recv(a, buf, sixty_four, MSG_PEEK);                 /* __recv_chk */
    printf("recv-peek %zd %.*s\n", n, (int)n, buf);
    n = recv(a, buf, sixty_four, 0);
    printf("recv %zd %.*s\n", n, (int)n, buf);
    n = recv(a, buf, sixty_four, MSG_DONTWAIT);
    printf("recv-empty %zd %s\n", n, n < 0 && errno == EAGAIN ? "EAGAIN" : "?");
    close(c);
    n = read(a, buf, sixty_four);
    printf("read-eof %zd\n", n);

    CHECK((u = bound(SOCK_DGRAM, &ua)) >= 0);
    CHECK((s = socket(AF_INET, SOCK_DGRAM, 0)) >= 0);
    CHECK(sendto(s, "datagram-one", 12, 0, (struct sockaddr *)&ua, sizeof(ua)) == 12);
    CHECK(sendto(s, "datagram-two", 12, 0, (struct sockaddr *)&ua, sizeof(ua)) == 12);
    n = recvfrom(u, small, four, 0, (struct sockaddr *)&from, &flen); /* __recvfrom_chk */
    printf("recvfrom-truncated %zd %.*s from-loopback %d\n", n, (int)n, small,
           from.sin_addr.s_addr == htonl(INADDR_LOOPBACK));
    n = read(u, buf, sixty_four);
    printf("read-dgram %zd %.*s\n", n, (int)n, buf);
    n = recv(u, buf, sixty_four, MSG_DONTWAIT);
    printf("recv-dgram-empty %zd %s\n", n, n < 0 && errno == EAGAIN ? "EAGAIN" : "?");
    close(a);
    close(l);
    close(u);
    close(s);
    printf("DONE\n");
    return 0;
}
