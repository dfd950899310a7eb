/*
 * The resolver calls of C programs: gethostbyname(_r), gethostbyname2(_r), gethostbyaddr(_r)
 * with their h_errno, getaddrinfo flags, getnameinfo. Names come from /etc/hosts or fail
 * (no network in either namespace). Prints one line per observation; run natively and
 * through the backbone, the outputs must be the same (tests/e2e/test_c_programs.py).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static void show_hostent(const char *what, const struct hostent *he, int herr)
{
    char a[INET6_ADDRSTRLEN];

    if (he == NULL) {
        printf("%s NULL h_errno=%d\n", what, herr);
        return;
    }
    printf("%s name=%s type=%d len=%d", what, he->h_name, he->h_addrtype, he->h_length);
    for (char **p = he->h_addr_list; *p != NULL; p++)
        printf(" %s", inet_ntop(he->h_addrtype, *p, a, sizeof(a)));
    printf("\n");
}

/* h_errno read after the call (argument evaluation order is unspecified) */
#define SHOW_HOSTENT(what, call) do { struct hostent *he_ = (call); \
                                      show_hostent(what, he_, h_errno); } while (0)

static void show_gai(const char *what, const char *node, const char *serv, int family,
                     int socktype, int flags)
{
    struct addrinfo hints = { .ai_family = family, .ai_socktype = socktype, .ai_flags = flags };
    struct addrinfo *res;
    char a[INET6_ADDRSTRLEN];
    int rc = getaddrinfo(node, serv, &hints, &res);

    if (rc != 0) {
        printf("%s rc=%d (%s)\n", what, rc, gai_strerror(rc));
        return;
    }
    printf("%s", what);
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        const void *addr = ai->ai_family == AF_INET ?
            (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr :
            (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        printf(" [%d %d %d %s %s]", ai->ai_family, ai->ai_socktype, ai->ai_protocol,
               inet_ntop(ai->ai_family, addr, a, sizeof(a)),
               ai->ai_canonname ? ai->ai_canonname : "-");
    }
    printf("\n");
    freeaddrinfo(res);
}

int main(void)
{
    struct hostent he, *r;
    struct in_addr lo = { htonl(INADDR_LOOPBACK) }, unknown = { htonl(0x7f000002) };
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(80),
                               .sin_addr = { htonl(INADDR_LOOPBACK) } };
    struct sockaddr_in other = sin;
    char buf[2048], host[NI_MAXHOST], serv[NI_MAXSERV];
    int herr, rc;

    setvbuf(stdout, NULL, _IONBF, 0);
    SHOW_HOSTENT("gethostbyname", gethostbyname("localhost"));
    SHOW_HOSTENT("gethostbyname-unknown", gethostbyname("no-such-host.invalid"));
    SHOW_HOSTENT("gethostbyname2-inet", gethostbyname2("localhost", AF_INET));
    SHOW_HOSTENT("gethostbyname2-inet6", gethostbyname2("localhost", AF_INET6));
    rc = gethostbyname_r("localhost", &he, buf, sizeof(buf), &r, &herr);
    printf("gethostbyname_r rc=%d found=%d\n", rc, r != NULL);
    show_hostent("  result", r, herr);
    rc = gethostbyname_r("localhost", &he, buf, 8, &r, &herr);
    printf("gethostbyname_r-small-buffer rc=%d found=%d\n", rc, r != NULL);
    rc = gethostbyname2_r("vm", AF_INET, &he, buf, sizeof(buf), &r, &herr);
    printf("gethostbyname2_r-alias rc=%d\n", rc);
    show_hostent("  result", r, herr);
    SHOW_HOSTENT("gethostbyaddr", gethostbyaddr(&lo, sizeof(lo), AF_INET));
    SHOW_HOSTENT("gethostbyaddr-unknown", gethostbyaddr(&unknown, sizeof(unknown), AF_INET));
    rc = gethostbyaddr_r(&lo, sizeof(lo), AF_INET, &he, buf, sizeof(buf), &r, &herr);
    printf("gethostbyaddr_r rc=%d\n", rc);
    show_hostent("  result", r, herr);
    show_gai("gai-canon", "localhost", "http", AF_INET, SOCK_STREAM, AI_CANONNAME);
    show_gai("gai-passive", NULL, "8080", AF_INET, SOCK_DGRAM, AI_PASSIVE);
    show_gai("gai-numeric-bad", "localhost", NULL, AF_UNSPEC, 0, AI_NUMERICHOST);
    show_gai("gai-unknown", "no-such-host.invalid", NULL, AF_UNSPEC, 0, 0);
    show_gai("gai-v4mapped", "localhost", "7", AF_INET6, SOCK_STREAM, AI_V4MAPPED);
    rc = getnameinfo((struct sockaddr *)&sin, sizeof(sin), host, sizeof(host), serv,
                     sizeof(serv), 0);
    printf("getnameinfo rc=%d %s %s\n", rc, rc ? "-" : host, rc ? "-" : serv);
    rc = getnameinfo((struct sockaddr *)&sin, sizeof(sin), host, 3, NULL, 0, 0);
    printf("getnameinfo-small rc=%d\n", rc);
    other.sin_addr.s_addr = htonl(0x7f000002);
    rc = getnameinfo((struct sockaddr *)&other, sizeof(other), host, sizeof(host), NULL, 0,
                     NI_NAMEREQD);
    printf("getnameinfo-namereqd rc=%d\n", rc);
    rc = getnameinfo((struct sockaddr *)&other, sizeof(other), host, sizeof(host), NULL, 0, 0);
    printf("getnameinfo-fallback rc=%d %s\n", rc, rc ? "-" : host);
    printf("DONE\n");
    return 0;
}
