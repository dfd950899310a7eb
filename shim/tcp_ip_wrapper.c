/*
 * tcp_ip_wrapper.so: the LD_PRELOAD library of mwcomms.
 *
 * An application started with LD_PRELOAD=tcp_ip_wrapper.so gets its AF_INET and AF_INET6
 * stream and datagram sockets from mwcommsd instead of its kernel's network stack. Each such
 * socket is one end of an AF_UNIX socketpair (mwcomms/include/mwcomms/local.h): the kernel moves
 * its bytes, poll/epoll/dup/fork/exec work on it unchanged, and this library forwards only what
 * the socketpair cannot do by itself (creation, addressing, options, name resolution) over a
 * per-thread control connection to mwcommsd. AF_UNIX (and the other local families in
 * mw_family_is_local()) passes through untouched; every other way onto the network is refused.
 *
 * Layout (after Samba's socket_wrapper):
 *  - a typedef per real libc function, a table of pointers bound lazily once (pthread_once +
 *    dlsym(RTLD_NEXT)) and a libc_X() trampoline per function;
 *  - mw_X() holds the logic and hands every fd it does not manage straight to libc_X();
 *  - the exported X() is one line; shim/tcp_ip_wrapper.map exports nothing else.
 *
 * Errors: internal helpers return -errno; the exported functions set errno and return -1, as
 * the functions they replace do.
 *
 * Locks: mw_locks[] lists every global lock; pthread_atfork takes them all before fork and
 * releases them in both processes afterwards, so no lock is ever held across fork. No lock is
 * held across a blocking system call.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <limits.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mwcomms/local.h"

#define MW_PUBLIC __attribute__((visibility("default")))
#define MW_LOG_PREFIX "tcp_ip_wrapper: "

/* ------------------------------------------------------------------------------------------
 * The real libc functions: one typedef each, bound once on first use.
 */
typedef int (*__libc_socket)(int, int, int);
typedef int (*__libc_socketpair)(int, int, int, int[2]);
typedef int (*__libc_connect)(int, const struct sockaddr *, socklen_t);
typedef int (*__libc_bind)(int, const struct sockaddr *, socklen_t);
typedef int (*__libc_listen)(int, int);
typedef int (*__libc_accept)(int, struct sockaddr *, socklen_t *);
typedef int (*__libc_accept4)(int, struct sockaddr *, socklen_t *, int);
typedef int (*__libc_getsockname)(int, struct sockaddr *, socklen_t *);
typedef int (*__libc_getpeername)(int, struct sockaddr *, socklen_t *);
typedef int (*__libc_getsockopt)(int, int, int, void *, socklen_t *);
typedef int (*__libc_setsockopt)(int, int, int, const void *, socklen_t);
typedef int (*__libc_shutdown)(int, int);
typedef int (*__libc_close)(int);
typedef int (*__libc_close_range)(unsigned int, unsigned int, int);
typedef int (*__libc_dup)(int);
typedef int (*__libc_dup2)(int, int);
typedef int (*__libc_dup3)(int, int, int);
typedef int (*__libc_fcntl)(int, int, ...);
typedef int (*__libc_ioctl)(int, unsigned long, ...);
typedef ssize_t (*__libc_read)(int, void *, size_t);
typedef ssize_t (*__libc_write)(int, const void *, size_t);
typedef ssize_t (*__libc_readv)(int, const struct iovec *, int);
typedef ssize_t (*__libc_writev)(int, const struct iovec *, int);
typedef ssize_t (*__libc_send)(int, const void *, size_t, int);
typedef ssize_t (*__libc_recv)(int, void *, size_t, int);
typedef ssize_t (*__libc_sendto)(int, const void *, size_t, int, const struct sockaddr *,
                                 socklen_t);
typedef ssize_t (*__libc_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef ssize_t (*__libc_sendmsg)(int, const struct msghdr *, int);
typedef ssize_t (*__libc_recvmsg)(int, struct msghdr *, int);
typedef int (*__libc_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
typedef int (*__libc_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
typedef ssize_t (*__libc___read_chk)(int, void *, size_t, size_t);
typedef ssize_t (*__libc___recv_chk)(int, void *, size_t, size_t, int);
typedef ssize_t (*__libc___recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *,
                                         socklen_t *);
typedef int (*__libc_getaddrinfo)(const char *, const char *, const struct addrinfo *,
                                  struct addrinfo **);
typedef void (*__libc_freeaddrinfo)(struct addrinfo *);
typedef int (*__libc_getnameinfo)(const struct sockaddr *, socklen_t, char *, socklen_t, char *,
                                  socklen_t, int);

#define MW_SYMBOL_ENTRY(name) \
    union { \
        __libc_##name f; \
        void *obj; \
    } _libc_##name

static struct {
    MW_SYMBOL_ENTRY(socket);
    MW_SYMBOL_ENTRY(socketpair);
    MW_SYMBOL_ENTRY(connect);
    MW_SYMBOL_ENTRY(bind);
    MW_SYMBOL_ENTRY(listen);
    MW_SYMBOL_ENTRY(accept);
    MW_SYMBOL_ENTRY(accept4);
    MW_SYMBOL_ENTRY(getsockname);
    MW_SYMBOL_ENTRY(getpeername);
    MW_SYMBOL_ENTRY(getsockopt);
    MW_SYMBOL_ENTRY(setsockopt);
    MW_SYMBOL_ENTRY(shutdown);
    MW_SYMBOL_ENTRY(close);
    MW_SYMBOL_ENTRY(close_range);
    MW_SYMBOL_ENTRY(dup);
    MW_SYMBOL_ENTRY(dup2);
    MW_SYMBOL_ENTRY(dup3);
    MW_SYMBOL_ENTRY(fcntl);
    MW_SYMBOL_ENTRY(ioctl);
    MW_SYMBOL_ENTRY(read);
    MW_SYMBOL_ENTRY(write);
    MW_SYMBOL_ENTRY(readv);
    MW_SYMBOL_ENTRY(writev);
    MW_SYMBOL_ENTRY(send);
    MW_SYMBOL_ENTRY(recv);
    MW_SYMBOL_ENTRY(sendto);
    MW_SYMBOL_ENTRY(recvfrom);
    MW_SYMBOL_ENTRY(sendmsg);
    MW_SYMBOL_ENTRY(recvmsg);
    MW_SYMBOL_ENTRY(sendmmsg);
    MW_SYMBOL_ENTRY(recvmmsg);
    MW_SYMBOL_ENTRY(__read_chk);
    MW_SYMBOL_ENTRY(__recv_chk);
    MW_SYMBOL_ENTRY(__recvfrom_chk);
    MW_SYMBOL_ENTRY(getaddrinfo);
    MW_SYMBOL_ENTRY(freeaddrinfo);
    MW_SYMBOL_ENTRY(getnameinfo);
} mw_libc;

static pthread_once_t mw_libc_once = PTHREAD_ONCE_INIT;

#define MW_BIND(name) mw_libc._libc_##name.obj = dlsym(RTLD_NEXT, #name)

static void mw_libc_bind_all(void)
{
    MW_BIND(socket);
    MW_BIND(socketpair);
    MW_BIND(connect);
    MW_BIND(bind);
    MW_BIND(listen);
    MW_BIND(accept);
    MW_BIND(accept4);
    MW_BIND(getsockname);
    MW_BIND(getpeername);
    MW_BIND(getsockopt);
    MW_BIND(setsockopt);
    MW_BIND(shutdown);
    MW_BIND(close);
    MW_BIND(close_range);     /* glibc >= 2.34; NULL before */
    MW_BIND(dup);
    MW_BIND(dup2);
    MW_BIND(dup3);
    MW_BIND(fcntl);
    MW_BIND(ioctl);
    MW_BIND(read);
    MW_BIND(write);
    MW_BIND(readv);
    MW_BIND(writev);
    MW_BIND(send);
    MW_BIND(recv);
    MW_BIND(sendto);
    MW_BIND(recvfrom);
    MW_BIND(sendmsg);
    MW_BIND(recvmsg);
    MW_BIND(sendmmsg);
    MW_BIND(recvmmsg);
    MW_BIND(__read_chk);
    MW_BIND(__recv_chk);
    MW_BIND(__recvfrom_chk);
    MW_BIND(getaddrinfo);
    MW_BIND(freeaddrinfo);
    MW_BIND(getnameinfo);
}

static inline void mw_libc_init(void)
{
    pthread_once(&mw_libc_once, mw_libc_bind_all);
}

/* Trampolines: the real function, bound on first use. */
#define MW_LIBC(name) (mw_libc_init(), mw_libc._libc_##name.f)

static int libc_socket(int d, int t, int p) { return MW_LIBC(socket)(d, t, p); }
static int libc_socketpair(int d, int t, int p, int sv[2])
{
    return MW_LIBC(socketpair)(d, t, p, sv);
}
static int libc_connect(int fd, const struct sockaddr *a, socklen_t l)
{
    return MW_LIBC(connect)(fd, a, l);
}
static int libc_bind(int fd, const struct sockaddr *a, socklen_t l)
{
    return MW_LIBC(bind)(fd, a, l);
}
static int libc_listen(int fd, int backlog) { return MW_LIBC(listen)(fd, backlog); }
static int libc_accept(int fd, struct sockaddr *a, socklen_t *l)
{
    return MW_LIBC(accept)(fd, a, l);
}
static int libc_accept4(int fd, struct sockaddr *a, socklen_t *l, int flags)
{
    return MW_LIBC(accept4)(fd, a, l, flags);
}
static int libc_getsockname(int fd, struct sockaddr *a, socklen_t *l)
{
    return MW_LIBC(getsockname)(fd, a, l);
}
static int libc_getpeername(int fd, struct sockaddr *a, socklen_t *l)
{
    return MW_LIBC(getpeername)(fd, a, l);
}
static int libc_getsockopt(int fd, int level, int name, void *v, socklen_t *l)
{
    return MW_LIBC(getsockopt)(fd, level, name, v, l);
}
static int libc_setsockopt(int fd, int level, int name, const void *v, socklen_t l)
{
    return MW_LIBC(setsockopt)(fd, level, name, v, l);
}
static int libc_shutdown(int fd, int how) { return MW_LIBC(shutdown)(fd, how); }
static int libc_close(int fd) { return MW_LIBC(close)(fd); }
static int libc_close_range(unsigned int first, unsigned int last, int flags)
{
    mw_libc_init();
    if (mw_libc._libc_close_range.f == NULL) {
        errno = ENOSYS;
        return -1;
    }
    return mw_libc._libc_close_range.f(first, last, flags);
}
static int libc_dup(int fd) { return MW_LIBC(dup)(fd); }
static int libc_dup2(int fd, int fd2) { return MW_LIBC(dup2)(fd, fd2); }
static int libc_dup3(int fd, int fd2, int flags) { return MW_LIBC(dup3)(fd, fd2, flags); }
static int libc_fcntl(int fd, int cmd, void *arg) { return MW_LIBC(fcntl)(fd, cmd, arg); }
static int libc_ioctl(int fd, unsigned long req, void *arg) { return MW_LIBC(ioctl)(fd, req, arg); }
static ssize_t libc_read(int fd, void *b, size_t n) { return MW_LIBC(read)(fd, b, n); }
static ssize_t libc_write(int fd, const void *b, size_t n) { return MW_LIBC(write)(fd, b, n); }
static ssize_t libc_readv(int fd, const struct iovec *v, int n) { return MW_LIBC(readv)(fd, v, n); }
static ssize_t libc_writev(int fd, const struct iovec *v, int n)
{
    return MW_LIBC(writev)(fd, v, n);
}
static ssize_t libc_send(int fd, const void *b, size_t n, int f) { return MW_LIBC(send)(fd, b, n, f); }
static ssize_t libc_recv(int fd, void *b, size_t n, int f) { return MW_LIBC(recv)(fd, b, n, f); }
static ssize_t libc_sendto(int fd, const void *b, size_t n, int f, const struct sockaddr *a,
                           socklen_t l)
{
    return MW_LIBC(sendto)(fd, b, n, f, a, l);
}
static ssize_t libc_recvfrom(int fd, void *b, size_t n, int f, struct sockaddr *a, socklen_t *l)
{
    return MW_LIBC(recvfrom)(fd, b, n, f, a, l);
}
static ssize_t libc_sendmsg(int fd, const struct msghdr *m, int f) { return MW_LIBC(sendmsg)(fd, m, f); }
static ssize_t libc_recvmsg(int fd, struct msghdr *m, int f) { return MW_LIBC(recvmsg)(fd, m, f); }
static int libc_sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int f)
{
    return MW_LIBC(sendmmsg)(fd, v, n, f);
}
static int libc_recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int f, struct timespec *t)
{
    return MW_LIBC(recvmmsg)(fd, v, n, f, t);
}
static ssize_t libc___read_chk(int fd, void *b, size_t n, size_t bl)
{
    return MW_LIBC(__read_chk)(fd, b, n, bl);
}
static ssize_t libc___recv_chk(int fd, void *b, size_t n, size_t bl, int f)
{
    return MW_LIBC(__recv_chk)(fd, b, n, bl, f);
}
static ssize_t libc___recvfrom_chk(int fd, void *b, size_t n, size_t bl, int f,
                                   struct sockaddr *a, socklen_t *l)
{
    return MW_LIBC(__recvfrom_chk)(fd, b, n, bl, f, a, l);
}
static int libc_getaddrinfo(const char *n, const char *s, const struct addrinfo *h,
                            struct addrinfo **r)
{
    return MW_LIBC(getaddrinfo)(n, s, h, r);
}
static void libc_freeaddrinfo(struct addrinfo *ai) { MW_LIBC(freeaddrinfo)(ai); }
static int libc_getnameinfo(const struct sockaddr *sa, socklen_t sl, char *h, socklen_t hl,
                            char *s, socklen_t svl, int flags)
{
    return MW_LIBC(getnameinfo)(sa, sl, h, hl, s, svl, flags);
}

/* ------------------------------------------------------------------------------------------
 * Global locks. Every lock of this file is in mw_locks[]; the fork handlers take them in that
 * order and release them in the reverse.
 */
static pthread_mutex_t mw_fd_lock = PTHREAD_MUTEX_INITIALIZER;   /* mw_fds[] writers */
static pthread_mutex_t mw_ctl_lock = PTHREAD_MUTEX_INITIALIZER;  /* mw_ctl_list */
static pthread_mutex_t mw_ai_lock = PTHREAD_MUTEX_INITIALIZER;   /* mw_ai_list */

static pthread_mutex_t *const mw_locks[] = { &mw_fd_lock, &mw_ctl_lock, &mw_ai_lock };
#define MW_NLOCKS (sizeof(mw_locks) / sizeof(mw_locks[0]))

/* ------------------------------------------------------------------------------------------
 * Logging: one line on stderr, written with the real write().
 */
static void mw_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void mw_log(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    int n, saved = errno;

    memcpy(line, MW_LOG_PREFIX, sizeof(MW_LOG_PREFIX) - 1);
    va_start(ap, fmt);
    n = vsnprintf(line + sizeof(MW_LOG_PREFIX) - 1, sizeof(line) - sizeof(MW_LOG_PREFIX) - 1,
                  fmt, ap);
    va_end(ap);
    if (n < 0)
        goto out;
    n += sizeof(MW_LOG_PREFIX) - 1;
    if (n > (int)sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    if (libc_write(STDERR_FILENO, line, n) < 0) {
        /* nowhere else to say it */
    }
out:
    errno = saved;
}

/* ------------------------------------------------------------------------------------------
 * The fd table: what the shim knows of each fd, indexed by fd number.
 *
 * MW_FD_UNKNOWN: never looked at (or closed since); the first socket call looks (mw_fd_lookup).
 * MW_FD_LOCAL:   not ours: every call goes straight to libc.
 * MW_FD_MW:      a forwarded socket: the socketpair end of mwcommsd's socket `handle`.
 * MW_FD_CTL:     one of the shim's own control connections (LOCAL to everything else; a close
 *                or dup2 over it makes its thread open a new one).
 *
 * `kind` is one byte, read and written atomically. Marking an fd LOCAL, CTL or UNKNOWN is that
 * one store, without a lock, so that close(), read() and write() stay async-signal-safe on fds
 * that are not forwarded sockets. A forwarded entry is written and copied whole under
 * mw_fd_lock, its `kind` stored last: the worst a stale read does is one extra IDENTIFY. A forwarded entry
 * also records the inode of its socketpair end, checked before any call that would treat a
 * file as a socket, so that an fd closed behind the shim's back (fclose of an fdopen'd socket)
 * and reused for a file is never mistaken for the socket it replaced.
 */
enum { MW_FD_UNKNOWN = 0, MW_FD_LOCAL = 1, MW_FD_MW = 2, MW_FD_CTL = 3 };

struct mw_fd {
    uint8_t kind;          /* MW_FD_* */
    uint8_t type;          /* SOCK_STREAM or SOCK_DGRAM */
    uint8_t listening;     /* listen() succeeded: readable means a token is queued */
    uint8_t connected;     /* datagram: connect() set a peer; stream: connect() issued or
                            * accepted (only then does the data fast path take it) */
    uint8_t identified;    /* learnt by IDENTIFY (inherited across exec): state unknown */
    uint8_t pad[3];
    int32_t family;        /* AF_INET or AF_INET6 */
    mwl_handle_t handle;   /* mwcommsd's name of the socket */
    uint64_t ino;          /* inode of the socketpair end (st_ino) */
};

static struct mw_fd *mw_fds;
static unsigned int mw_nfds;
static pthread_once_t mw_fds_once = PTHREAD_ONCE_INIT;

static void mw_fds_alloc(void)
{
    struct rlimit rl;
    size_t n = 65536;
    void *p;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && rl.rlim_max > n)
        n = rl.rlim_max;
    if (n > (1u << 20))
        n = 1u << 20;
    /* untouched pages cost nothing: only fds in use are ever written */
    p = mmap(NULL, n * sizeof(struct mw_fd), PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return;
    mw_fds = p;
    mw_nfds = n;
}

static inline bool mw_fd_in_table(int fd)
{
    pthread_once(&mw_fds_once, mw_fds_alloc);
    return fd >= 0 && (unsigned int)fd < mw_nfds;
}

static inline uint8_t mw_fd_kind(int fd)
{
    if (!mw_fd_in_table(fd))
        return MW_FD_LOCAL;
    return __atomic_load_n(&mw_fds[fd].kind, __ATOMIC_ACQUIRE);
}

/* Not a forwarded socket: straight to libc. */
static inline bool mw_fd_passthrough(int fd)
{
    uint8_t k = mw_fd_kind(fd);

    return k == MW_FD_LOCAL || k == MW_FD_CTL;
}

static void mw_fd_set_kind(int fd, uint8_t kind)
{
    if (mw_fd_in_table(fd))
        __atomic_store_n(&mw_fds[fd].kind, kind, __ATOMIC_RELEASE);
}

static void mw_fd_set(int fd, const struct mw_fd *e)
{
    struct mw_fd *d;

    if (!mw_fd_in_table(fd))
        return;
    if (e->kind != MW_FD_MW) {
        mw_fd_set_kind(fd, e->kind);
        return;
    }
    d = &mw_fds[fd];
    pthread_mutex_lock(&mw_fd_lock);
    d->type = e->type;
    d->listening = e->listening;
    __atomic_store_n(&d->connected, e->connected, __ATOMIC_RELAXED);
    d->identified = e->identified;
    d->family = e->family;
    d->handle = e->handle;
    d->ino = e->ino;
    /* the fields /then/ the kind that makes readers trust them */
    __atomic_store_n(&d->kind, MW_FD_MW, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&mw_fd_lock);
}

static void mw_fd_copy(int from, int to)
{
    if (!mw_fd_in_table(from) || !mw_fd_in_table(to))
        return;
    pthread_mutex_lock(&mw_fd_lock);
    mw_fds[to] = mw_fds[from];
    if (mw_fds[to].kind == MW_FD_CTL)
        mw_fds[to].kind = MW_FD_LOCAL;     /* a copy of a control connection is not one */
    pthread_mutex_unlock(&mw_fd_lock);
}

static void mw_fd_update(int fd, int listening, int connected)
{
    if (!mw_fd_in_table(fd))
        return;
    pthread_mutex_lock(&mw_fd_lock);
    if (mw_fds[fd].kind == MW_FD_MW) {
        if (listening >= 0)
            mw_fds[fd].listening = listening;
        if (connected >= 0)
            __atomic_store_n(&mw_fds[fd].connected, (uint8_t)connected, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&mw_fd_lock);
}

static void mw_fd_forget_range(unsigned int first, unsigned int last)
{
    pthread_once(&mw_fds_once, mw_fds_alloc);
    if (first >= mw_nfds)
        return;
    if (last >= mw_nfds)
        last = mw_nfds - 1;
    pthread_mutex_lock(&mw_fd_lock);
    for (unsigned int fd = first; fd <= last; fd++) {
        if (mw_fds[fd].kind != MW_FD_UNKNOWN)
            memset(&mw_fds[fd], 0, sizeof(mw_fds[fd]));
    }
    pthread_mutex_unlock(&mw_fd_lock);
}

/* Inodes of AF_UNIX sockets that mwcommsd said are not its own: IDENTIFY is asked once per
 * socket, not once per fd or per fd number reuse. A small ring; a miss costs one IDENTIFY. */
#define MW_NEG_CACHE 64
static uint64_t mw_neg_ino[MW_NEG_CACHE];
static unsigned int mw_neg_next;

static bool mw_neg_cached(uint64_t ino)
{
    bool hit = false;

    pthread_mutex_lock(&mw_fd_lock);
    for (unsigned int i = 0; i < MW_NEG_CACHE; i++)
        if (mw_neg_ino[i] == ino)
            hit = true;
    pthread_mutex_unlock(&mw_fd_lock);
    return hit;
}

static void mw_neg_add(uint64_t ino)
{
    pthread_mutex_lock(&mw_fd_lock);
    mw_neg_ino[mw_neg_next++ % MW_NEG_CACHE] = ino;
    pthread_mutex_unlock(&mw_fd_lock);
}

/* ------------------------------------------------------------------------------------------
 * The control connection: one AF_UNIX SOCK_SEQPACKET connection to mwcommsd per thread,
 * opened on first use, closed when the thread exits. All of them sit in mw_ctl_list so that
 * the child of fork() can close the ones it inherited (they belong to the parent's threads).
 */
struct mw_ctl {
    int fd;                /* -1: not connected (or closed by the application) */
    uint32_t seq;          /* last sequence number used */
    struct mw_ctl *next;   /* mw_ctl_list */
    uint8_t buf[MWL_MSG_MAX]; /* the response being read */
};

static struct mw_ctl *mw_ctl_list;
static __thread struct mw_ctl *mw_ctl_tls;
static pthread_key_t mw_ctl_key;
static pthread_once_t mw_ctl_key_once = PTHREAD_ONCE_INIT;

static void mw_ctl_unlink(struct mw_ctl *c)
{
    struct mw_ctl **pp;

    for (pp = &mw_ctl_list; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
}

/* Thread exit: close and free this thread's connection. */
static void mw_ctl_destroy(void *arg)
{
    struct mw_ctl *c = arg;
    int fd;

    pthread_mutex_lock(&mw_ctl_lock);
    mw_ctl_unlink(c);
    fd = c->fd;
    c->fd = -1;
    pthread_mutex_unlock(&mw_ctl_lock);
    if (fd >= 0) {
        mw_fd_set_kind(fd, MW_FD_UNKNOWN);
        libc_close(fd);
    }
    free(c);
}

static void mw_ctl_key_create(void)
{
    pthread_key_create(&mw_ctl_key, mw_ctl_destroy);
}

/* The application closes (or dup2's over) fd: if it was a control connection, forget it. */
static void mw_ctl_fd_closing(int fd)
{
    struct mw_ctl *c;

    pthread_mutex_lock(&mw_ctl_lock);
    for (c = mw_ctl_list; c != NULL; c = c->next)
        if (c->fd == fd)
            c->fd = -1;
    pthread_mutex_unlock(&mw_ctl_lock);
}

static const char *mw_ctl_path(void)
{
    const char *p = getenv("MWCOMMS_SOCKET");

    return (p != NULL && p[0] != '\0') ? p : MWL_DEFAULT_SOCKET;
}

/**
 * Open this thread's control connection if it has none.
 * @param quiet no log line when mwcommsd cannot be reached (IDENTIFY of an fd that is most
 *        likely not ours)
 * @return the connection, or NULL with errno ENETDOWN (mwcommsd not running: logged) or
 *         ENOMEM / EMFILE.
 */
static struct mw_ctl *mw_ctl_get(bool quiet)
{
    struct mw_ctl *c = mw_ctl_tls;
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    const char *path = mw_ctl_path();
    int fd, err;

    if (c != NULL && c->fd >= 0)
        return c;
    if (c == NULL) {
        pthread_once(&mw_ctl_key_once, mw_ctl_key_create);
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            errno = ENOMEM;
            return NULL;
        }
        c->fd = -1;
        pthread_mutex_lock(&mw_ctl_lock);
        c->next = mw_ctl_list;
        mw_ctl_list = c;
        pthread_mutex_unlock(&mw_ctl_lock);
        mw_ctl_tls = c;
        pthread_setspecific(mw_ctl_key, c);
    }
    if (strlen(path) >= sizeof(sun.sun_path)) {
        mw_log("MWCOMMS_SOCKET path too long: %s", path);
        errno = ENETDOWN;
        return NULL;
    }
    strcpy(sun.sun_path, path);
    fd = libc_socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    while ((err = libc_connect(fd, (struct sockaddr *)&sun, sizeof(sun))) < 0 && errno == EINTR)
        ;
    if (err < 0) {
        err = errno;
        libc_close(fd);
        if (!quiet)
            mw_log("mwcommsd is not running (cannot connect to %s: %s); network access refused",
               path, strerror(err));
        errno = ENETDOWN;
        return NULL;
    }
    mw_fd_set_kind(fd, MW_FD_CTL);
    pthread_mutex_lock(&mw_ctl_lock);
    c->fd = fd;
    pthread_mutex_unlock(&mw_ctl_lock);
    return c;
}

/* A transport failure: drop the connection, the next call opens a new one. */
static void mw_ctl_drop(struct mw_ctl *c)
{
    int fd;

    pthread_mutex_lock(&mw_ctl_lock);
    fd = c->fd;
    c->fd = -1;
    pthread_mutex_unlock(&mw_ctl_lock);
    if (fd >= 0) {
        mw_fd_set_kind(fd, MW_FD_UNKNOWN);
        libc_close(fd);
    }
}

/* One request/response exchange. */
struct mw_call {
    uint16_t op;           /* MWL_* */
    uint16_t flags;        /* MWL_F_* */
    const void *req;       /* fixed body */
    size_t req_len;
    const void *tail;      /* bytes after the fixed body (option value, names) */
    size_t tail_len;
    int send_fd;           /* fd to pass by SCM_RIGHTS, or -1 */
    size_t rsp_len;        /* fixed body expected when ret >= 0 */
    bool quiet;            /* no log line when mwcommsd cannot be reached */
    /* results */
    int32_t ret;           /* >= 0 or -errno, as mwcommsd answered */
    int recv_fd;           /* fd received by SCM_RIGHTS (close-on-exec), or -1 */
    const uint8_t *rsp;    /* the fixed body (in the thread's buffer) */
    const uint8_t *extra;  /* bytes after it */
    size_t extra_len;
};

static void mw_close_fds_in(struct msghdr *msg)
{
    struct cmsghdr *cm;

    for (cm = CMSG_FIRSTHDR(msg); cm != NULL; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int fds[n > 0 ? n : 1];

            memcpy(fds, CMSG_DATA(cm), n * sizeof(int));
            for (size_t i = 0; i < n; i++)
                libc_close(fds[i]);
        }
    }
}

/**
 * Send a request on this thread's control connection and wait for its response.
 * @return 0 when mwcommsd answered (its answer in call->ret), -ENETDOWN when it cannot be
 *         reached, -EPROTO when its answer breaks the protocol (the connection is dropped),
 *         -ENOMEM.
 */
static int mw_call(struct mw_call *call)
{
    struct mw_ctl *c;
    struct mwl_hdr hdr;
    struct iovec iov[3];
    struct msghdr msg;
    union {
        char buf[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } cmsg;
    ssize_t n;
    int saved = errno;

    call->recv_fd = -1;
    call->rsp = call->extra = NULL;
    call->extra_len = 0;
    c = mw_ctl_get(call->quiet);
    if (c == NULL) {
        int err = errno == ENOMEM ? -ENOMEM : -ENETDOWN;

        errno = saved;
        return err;
    }
    memset(&hdr, 0, sizeof(hdr));
    hdr.len = sizeof(hdr) + call->req_len + call->tail_len;
    hdr.op = call->op;
    hdr.flags = call->flags;
    hdr.seq = ++c->seq;
    if (hdr.len > MWL_MSG_MAX)
        return -EMSGSIZE;
    iov[0] = (struct iovec){ .iov_base = &hdr, .iov_len = sizeof(hdr) };
    iov[1] = (struct iovec){ .iov_base = (void *)call->req, .iov_len = call->req_len };
    iov[2] = (struct iovec){ .iov_base = (void *)call->tail, .iov_len = call->tail_len };
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = 3;
    if (call->send_fd >= 0) {
        struct cmsghdr *cm;

        memset(&cmsg, 0, sizeof(cmsg));
        msg.msg_control = cmsg.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int));
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &call->send_fd, sizeof(int));
    }
    do {
        n = libc_sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)hdr.len)
        goto out_drop;

    for (;;) {
        struct mwl_hdr rh;
        struct cmsghdr *cm;

        iov[0] = (struct iovec){ .iov_base = c->buf, .iov_len = sizeof(c->buf) };
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.buf;
        msg.msg_controllen = sizeof(cmsg.buf);
        do {
            n = libc_recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
        } while (n < 0 && errno == EINTR);
        if (n <= 0)
            goto out_drop;
        if ((size_t)n < sizeof(rh) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            mw_close_fds_in(&msg);
            goto out_proto;
        }
        memcpy(&rh, c->buf, sizeof(rh));
        if (rh.seq != hdr.seq) {
            /* a late answer to a call this thread gave up on */
            mw_close_fds_in(&msg);
            continue;
        }
        if (rh.op != hdr.op || rh.len != (uint32_t)n || rh.ret < -4095 ||
            (rh.ret >= 0 && (size_t)n < sizeof(rh) + call->rsp_len)) {
            mw_close_fds_in(&msg);
            goto out_proto;
        }
        for (cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            size_t nfd;

            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < nfd; i++) {
                int fd;

                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (call->recv_fd < 0)
                    call->recv_fd = fd;
                else
                    libc_close(fd);   /* more than one: not in this protocol */
            }
        }
        call->ret = rh.ret;
        call->rsp = c->buf + sizeof(rh);
        if (rh.ret >= 0) {
            call->extra = call->rsp + call->rsp_len;
            call->extra_len = n - sizeof(rh) - call->rsp_len;
        }
        errno = saved;
        return 0;
    }

out_proto:
    mw_log("mwcommsd broke the local protocol (op %u); connection dropped", hdr.op);
    mw_ctl_drop(c);
    errno = saved;
    return -EPROTO;
out_drop:
    mw_log("lost the connection to mwcommsd at %s", mw_ctl_path());
    mw_ctl_drop(c);
    errno = saved;
    return -ENETDOWN;
}

/* mw_call for requests that name a socket: -errno either way. */
static int mw_call_ret(struct mw_call *call)
{
    int err = mw_call(call);

    if (err < 0)
        return err;
    if (call->recv_fd >= 0 && call->op != MWL_SOCKET && call->op != MWL_ACCEPT) {
        libc_close(call->recv_fd);
        call->recv_fd = -1;
    }
    return call->ret;
}

/* ------------------------------------------------------------------------------------------
 * Addresses: struct sockaddr <-> struct mw_sockaddr.
 */

/**
 * Convert an application's address for a socket of `family`.
 * @param allow_unspec AF_UNSPEC accepted (connect: dissolve a datagram association)
 * @return 0, -EFAULT, -EINVAL (too short), -EAFNOSUPPORT (not an inet family)
 */
static int mw_addr_in(const struct sockaddr *sa, socklen_t len, int family, bool allow_unspec,
                      struct mw_sockaddr *out)
{
    sa_family_t f;

    memset(out, 0, sizeof(*out));
    if (sa == NULL)
        return -EFAULT;
    if (len < sizeof(sa_family_t))
        return -EINVAL;
    memcpy(&f, sa, sizeof(f));
    switch (f) {
    case AF_INET: {
        struct sockaddr_in in;

        if (len < sizeof(in))
            return -EINVAL;
        if (family == AF_INET6)
            return -EAFNOSUPPORT;
        memcpy(&in, sa, sizeof(in));
        out->family = MW_AF_INET;
        out->port = in.sin_port;
        memcpy(out->addr, &in.sin_addr, 4);
        return 0;
    }
    case AF_INET6: {
        struct sockaddr_in6 in6;

        if (len < 24)              /* SIN6_LEN_RFC2133: without sin6_scope_id */
            return -EINVAL;
        if (family == AF_INET)
            return -EAFNOSUPPORT;
        memset(&in6, 0, sizeof(in6));
        memcpy(&in6, sa, len < sizeof(in6) ? len : sizeof(in6));
        out->family = MW_AF_INET6;
        out->port = in6.sin6_port;
        out->flowinfo = in6.sin6_flowinfo;
        memcpy(out->addr, &in6.sin6_addr, 16);
        out->scope_id = in6.sin6_scope_id;
        return 0;
    }
    case AF_UNSPEC:
        if (allow_unspec)
            return 0;
        return -EAFNOSUPPORT;
    default:
        return -EAFNOSUPPORT;
    }
}

/**
 * Give an address to the application as getsockname() does: at most *len bytes written,
 * *len set to the full size. A family-0 address is written as AF_UNSPEC of the socket's size.
 * @return 0 or -EINVAL (address of an unknown family)
 */
static int mw_addr_out(const struct mw_sockaddr *a, int family, struct sockaddr *sa,
                       socklen_t *len)
{
    struct sockaddr_storage ss;
    socklen_t full;

    memset(&ss, 0, sizeof(ss));
    switch (a->family) {
    case MW_AF_INET: {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;

        in->sin_family = AF_INET;
        in->sin_port = a->port;
        memcpy(&in->sin_addr, a->addr, 4);
        full = sizeof(*in);
        break;
    }
    case MW_AF_INET6: {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

        in6->sin6_family = AF_INET6;
        in6->sin6_port = a->port;
        in6->sin6_flowinfo = a->flowinfo;
        memcpy(&in6->sin6_addr, a->addr, 16);
        in6->sin6_scope_id = a->scope_id;
        full = sizeof(*in6);
        break;
    }
    case MW_AF_UNSPEC:
        full = family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        break;
    default:
        return -EINVAL;
    }
    if (sa == NULL || len == NULL)
        return 0;
    memcpy(sa, &ss, *len < full ? *len : full);
    *len = full;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Knowing an fd: table first; an unknown AF_UNIX socket is asked about (it may be a forwarded
 * socket inherited across exec, which empties the table).
 */

static int mw_identify(int fd, struct mw_fd *e)
{
    struct stat st;
    int domain, type;
    socklen_t len = sizeof(int);
    struct mw_call call = { .op = MWL_IDENTIFY, .send_fd = fd, .quiet = true,
                            .rsp_len = sizeof(struct mwl_rsp_socket) };
    struct mwl_rsp_socket rsp;
    int saved = errno, ret;

    memset(e, 0, sizeof(*e));
    e->kind = MW_FD_LOCAL;
    if (fstat(fd, &st) < 0) {
        errno = saved;
        return -EBADF;             /* not open: nothing to remember */
    }
    if (!S_ISSOCK(st.st_mode))
        goto out_local;
    if (libc_getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX)
        goto out_local;
    len = sizeof(int);
    if (libc_getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        (type != SOCK_STREAM && type != SOCK_SEQPACKET))
        goto out_local;
    if (mw_neg_cached(st.st_ino))
        goto out_local;
    ret = mw_call_ret(&call);
    if (ret < 0) {
        if (ret == -ENOTSOCK || ret == -EBADF || ret == -EPERM)
            mw_neg_add(st.st_ino);
        goto out_local;
    }
    memcpy(&rsp, call.rsp, sizeof(rsp));
    if ((rsp.family != AF_INET && rsp.family != AF_INET6) ||
        (rsp.type != SOCK_STREAM && rsp.type != SOCK_DGRAM))
        goto out_local;
    e->kind = MW_FD_MW;
    e->family = rsp.family;
    e->type = rsp.type;
    e->handle = rsp.handle;
    e->ino = st.st_ino;
    /* a datagram socket may have a peer: let its sends through (the INS decides); a stream
     * socket's state is asked for at connect/accept (STATUS) */
    e->connected = rsp.type == SOCK_DGRAM || rsp.peer.family != MW_AF_UNSPEC;
    e->identified = 1;
    mw_fd_set(fd, e);
    errno = saved;
    return 0;
out_local:
    mw_fd_set(fd, e);
    errno = saved;
    return 0;
}

/**
 * What the shim knows of fd, looking if it does not know yet.
 * @param check the entry is about to be used as a socket: confirm its inode first
 * @return MW_FD_MW (e filled) or MW_FD_LOCAL
 */
static int mw_fd_lookup(int fd, struct mw_fd *e, bool check)
{
    if (!mw_fd_in_table(fd))
        return MW_FD_LOCAL;
    switch (mw_fd_kind(fd)) {
    case MW_FD_LOCAL:
    case MW_FD_CTL:
        return MW_FD_LOCAL;
    case MW_FD_MW:
        pthread_mutex_lock(&mw_fd_lock);
        *e = mw_fds[fd];
        pthread_mutex_unlock(&mw_fd_lock);
        if (e->kind != MW_FD_MW)
            break;
        if (check) {
            struct stat st;

            if (fstat(fd, &st) < 0 || st.st_ino != e->ino)
                break;
        }
        return MW_FD_MW;
    default:
        break;
    }
    mw_identify(fd, e);
    return e->kind == MW_FD_MW ? MW_FD_MW : MW_FD_LOCAL;
}

/* Set errno from a -errno and return -1: the exported functions' convention. */
static inline int mw_fail(int err)
{
    errno = -err;
    return -1;
}

static bool mw_is_nonblocking(int fd)
{
    int fl = libc_fcntl(fd, F_GETFL, NULL);

    return fl >= 0 && (fl & O_NONBLOCK);
}

/* ------------------------------------------------------------------------------------------
 * Status of a forwarded socket (SO_ERROR, and what a read of 0 really means).
 */
static int mw_status(const struct mw_fd *e, struct mwl_rsp_status *st)
{
    struct mwl_req_handle req = { .handle = e->handle };
    struct mw_call call = { .op = MWL_STATUS, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1, .rsp_len = sizeof(*st) };
    int ret = mw_call_ret(&call);

    if (ret < 0)
        return ret;
    memcpy(st, call.rsp, sizeof(*st));
    if (st->error > 0 || st->error < -4095)
        st->error = -EPROTO;
    return 0;
}

/* A read of a forwarded stream socket returned 0: EOF, or the pending error of a failed one. */
static ssize_t mw_eof_or_error(int fd)
{
    struct pollfd p = { .fd = fd, .events = 0 };
    struct mw_fd e;
    struct mwl_rsp_status st;
    int ret, saved = errno;

    /* A clean end of the stream is mwcommsd's shutdown(P, SHUT_WR): X is shut for reading
     * only. A failed connection (shutdown of both ways), a dead mwcommsd (P closed) or the
     * application's own SHUT_WR leave X shut both ways, which poll() reports as POLLHUP:
     * only then is mwcommsd asked (a round trip saved on every clean close). */
    ret = poll(&p, 1, 0);      /* no events asked: 1 only for POLLHUP, POLLERR, POLLNVAL */
    errno = saved;
    if (ret == 0)
        return 0;
    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return 0;
    ret = mw_status(&e, &st);
    /* mwcommsd is gone, and this connection with it (the INS drops a dead frontend's
     * sockets): nobody can vouch for a clean end, and a truncated transfer must not pass
     * for a complete one */
    if (ret == -ENETDOWN)
        return mw_fail(-ECONNRESET);
    if (ret < 0 || st.error == 0)
        return 0;
    return mw_fail(st.error);
}

/**
 * May data move on a forwarded stream socket? Natively a TCP socket that never connected, or
 * that listens, fails recv() with ENOTCONN and send() with EPIPE, while X, a socketpair end,
 * is always connected. The table says connected once connect() was issued or the socket was
 * accepted; otherwise mwcommsd is asked (the socket may have been connected by another
 * process, or inherited across exec) and what it says is recorded. Asking takes the pending
 * error, which the native call would report (and clear) first too.
 * @param e the fd's entry (a stream socket)
 * @return 0 (let the call go to X), -ENOTCONN (never connected, or listening), or the
 *         socket's pending error
 */
static int mw_stream_check(int fd, struct mw_fd *e)
{
    struct mwl_rsp_status st;
    struct stat sb;

    if (e->connected)
        return 0;
    if (fstat(fd, &sb) < 0 || sb.st_ino != e->ino)
        return 0;                  /* no longer the socket: the kernel answers for the fd */
    if (mw_status(e, &st) < 0)
        return 0;                  /* mwcommsd unreachable: X tells what it can */
    if (st.error < 0)
        return st.error;
    if (st.state == MWL_ST_LISTENING) {
        mw_fd_update(fd, 1, -1);
        return -ENOTCONN;
    }
    if (st.state == 0)
        return -ENOTCONN;
    mw_fd_update(fd, -1, 1);
    e->connected = 1;
    return 0;
}

/* A send on a stream socket that may not send: EPIPE comes with SIGPIPE, as from the kernel,
 * unless MSG_NOSIGNAL. */
static ssize_t mw_stream_send_fail(int err, int flags)
{
    if (err == -ENOTCONN)
        err = -EPIPE;
    if (err == -EPIPE && !(flags & MSG_NOSIGNAL))
        raise(SIGPIPE);
    return mw_fail(err);
}

/* ------------------------------------------------------------------------------------------
 * Socket creation.
 */

/* Families that never reach a network: passed to libc untouched. Everything else that is not
 * AF_INET/AF_INET6 is refused (fail closed: a new family must be added here on purpose). */
static bool mw_family_is_local(int domain)
{
    return domain == AF_UNIX || domain == AF_NETLINK || domain == AF_ALG;
}

static const char *mw_family_name(int domain)
{
    switch (domain) {
    case AF_PACKET: return "AF_PACKET";
    case AF_INET: return "AF_INET";
    case AF_INET6: return "AF_INET6";
    case AF_VSOCK: return "AF_VSOCK";
    case AF_BLUETOOTH: return "AF_BLUETOOTH";
    case AF_CAN: return "AF_CAN";
    default: return "this address family";
    }
}

/* Receive fd from a SOCKET/ACCEPT answer and enter it in the table. */
static int mw_adopt(int fd, const struct mwl_rsp_socket *rsp, int flags)
{
    struct mw_fd e = { .kind = MW_FD_MW };
    struct stat st;

    if (!mw_fd_in_table(fd) || fstat(fd, &st) < 0) {
        libc_close(fd);
        return -EMFILE;
    }
    if (!(flags & SOCK_CLOEXEC))
        libc_fcntl(fd, F_SETFD, (void *)0L);
    if (flags & SOCK_NONBLOCK) {
        int fl = libc_fcntl(fd, F_GETFL, NULL);

        libc_fcntl(fd, F_SETFL, (void *)(long)(fl | O_NONBLOCK));
    }
    e.family = rsp->family;
    e.type = rsp->type;
    e.handle = rsp->handle;
    e.ino = st.st_ino;
    mw_fd_set(fd, &e);
    return fd;
}

static int mw_socket(int domain, int type, int protocol)
{
    int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct mwl_req_socket req = { .family = domain, .type = base, .protocol = protocol };
    struct mw_call call = { .op = MWL_SOCKET, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1, .rsp_len = sizeof(struct mwl_rsp_socket),
                            .flags = MWL_F_CLOEXEC | MWL_F_IDLE_TOKEN };
    struct mwl_rsp_socket rsp;
    int ret, fd;

    if (mw_family_is_local(domain)) {
        fd = libc_socket(domain, type, protocol);
        if (fd >= 0)
            mw_fd_set_kind(fd, MW_FD_LOCAL);
        return fd;
    }
    if (domain != AF_INET && domain != AF_INET6) {
        mw_log("%s sockets are refused: only AF_INET/AF_INET6 stream and datagram sockets go "
               "through mwcomms (socket(%d, %d, %d))", mw_family_name(domain), domain, type,
               protocol);
        return mw_fail(-EAFNOSUPPORT);
    }
    if (base == SOCK_RAW) {
        mw_log("raw sockets are refused: they would reach the local network stack "
               "(socket(%s, SOCK_RAW, %d))", mw_family_name(domain), protocol);
        return mw_fail(-EPERM);
    }
    if ((base != SOCK_STREAM && base != SOCK_DGRAM) ||
        (base == SOCK_STREAM && protocol != 0 && protocol != IPPROTO_TCP) ||
        (base == SOCK_DGRAM && protocol != 0 && protocol != IPPROTO_UDP)) {
        mw_log("socket(%s, %d, %d) is refused: only TCP and UDP go through mwcomms",
               mw_family_name(domain), type, protocol);
        return mw_fail(base == SOCK_STREAM || base == SOCK_DGRAM ? -EPROTONOSUPPORT
                                                                 : -ESOCKTNOSUPPORT);
    }
    ret = mw_call_ret(&call);
    if (ret < 0) {
        if (call.recv_fd >= 0)
            libc_close(call.recv_fd);
        if (ret == -ENETDOWN && call.ret == -ENETDOWN)
            mw_log("mwcommsd at %s has no INS connected; network access refused",
                   mw_ctl_path());
        return mw_fail(ret);
    }
    memcpy(&rsp, call.rsp, sizeof(rsp));
    if (call.recv_fd < 0)
        return mw_fail(-EPROTO);
    rsp.family = domain;
    rsp.type = base;
    fd = mw_adopt(call.recv_fd, &rsp, type);
    return fd < 0 ? mw_fail(fd) : fd;
}

static int mw_socketpair(int domain, int type, int protocol, int sv[2])
{
    int ret;

    if (domain == AF_INET || domain == AF_INET6)
        return mw_fail(-EOPNOTSUPP);      /* as native */
    if (!mw_family_is_local(domain)) {
        mw_log("socketpair(%s) is refused", mw_family_name(domain));
        return mw_fail(-EAFNOSUPPORT);
    }
    ret = libc_socketpair(domain, type, protocol, sv);
    if (ret == 0) {
        mw_fd_set_kind(sv[0], MW_FD_LOCAL);
        mw_fd_set_kind(sv[1], MW_FD_LOCAL);
    }
    return ret;
}

/* ------------------------------------------------------------------------------------------
 * Connect, bind, listen, accept.
 */

/* Shrink X's send buffer and fill it until it is unwritable: X becomes writable again only
 * when mwcommsd has the answer to CONNECT (it discards the filler and restores the buffer). */
static int mw_fill(int fd, uint32_t *filler, uint32_t *sndbuf)
{
    int orig, zero = 0;
    socklen_t len = sizeof(orig);
    /* one send of this fills the shrunk buffer (two skbs, ~4.5 KB) and the next one says
     * EAGAIN: 2 system calls, where 1-byte sends took ~7 */
    static const char block[8192];

    if (libc_getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &orig, &len) < 0)
        return -errno;
    if (libc_setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &zero, sizeof(zero)) < 0)
        return -errno;
    *sndbuf = orig;                /* as getsockopt gave it: mwcommsd halves it back */
    *filler = 0;
    for (;;) {
        ssize_t n = libc_send(fd, block, sizeof(block), MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n > 0) {
            *filler += (uint32_t)n;
            if (*filler > 65536)
                return -EIO;       /* the buffer never filled: mwcommsd is reading it */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return n < 0 ? -errno : -EIO;
    }
}

/* A deadline sec + nsec from now, on the monotonic clock. */
static void mw_deadline(struct timespec *end, time_t sec, long nsec)
{
    clock_gettime(CLOCK_MONOTONIC, end);
    end->tv_sec += sec + nsec / 1000000000L;
    end->tv_nsec += nsec % 1000000000L;
    if (end->tv_nsec >= 1000000000L) {
        end->tv_sec++;
        end->tv_nsec -= 1000000000L;
    }
}

/* Nanoseconds until the deadline (<= 0: passed). */
static long long mw_ns_left(const struct timespec *end)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)(end->tv_sec - now.tv_sec) * 1000000000LL + (end->tv_nsec - now.tv_nsec);
}

/*
 * Would the kernel restart a blocking connect() that a signal interrupted? It does when the
 * handler has SA_RESTART and the socket has no SO_SNDTIMEO; the shim waits in poll(), which
 * is never restarted, and cannot tell which signal came. It restarts when every caught
 * signal's handler has SA_RESTART (glibc's signal() sets it: a C program's SIGCHLD handler
 * must not turn its connects into EINTR), and fails with EINTR as soon as one has not.
 */
static bool mw_signals_restart(void)
{
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;

        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) < 0)
            continue;
        if (!(sa.sa_flags & SA_SIGINFO) &&
            (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN))
            continue;
        if (!(sa.sa_flags & SA_RESTART))
            return false;
    }
    return true;
}

static int mw_connect_mw(int fd, struct mw_fd *e, const struct sockaddr *sa, socklen_t len)
{
    struct mwl_req_addr req;
    struct mw_call call = { .op = MWL_CONNECT, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1 };
    bool nonblock = mw_is_nonblocking(fd), timed;
    struct timespec end;
    int ret;

    memset(&req, 0, sizeof(req));
    req.handle = e->handle;
    ret = mw_addr_in(sa, len, e->family, e->type == SOCK_DGRAM, &req.addr);
    if (ret < 0)
        return mw_fail(ret);

    if (e->type == SOCK_DGRAM) {
        ret = mw_call_ret(&call);
        if (ret < 0)
            return mw_fail(ret);
        mw_fd_update(fd, -1, req.addr.family != MW_AF_UNSPEC);
        return 0;
    }
    if (e->listening)
        return mw_fail(-EISCONN);      /* as native for a listening socket */
    if (e->identified && !e->connected) {
        struct mwl_rsp_status st;

        /* inherited across exec: never write filler into a connected stream */
        ret = mw_status(e, &st);
        if (ret < 0)
            return mw_fail(ret);
        e->connected = st.state != 0;
    }
    if (e->connected) {
        /* a connect is pending or done: mwcommsd says which (EALREADY, EISCONN) */
        ret = mw_call_ret(&call);
        return ret < 0 ? mw_fail(ret) : 0;
    }

    /* stream: always the non-blocking protocol; a blocking caller then waits for X to become
     * writable, which makes EINTR, SO_SNDTIMEO-free waiting and signals behave as native */
    ret = mw_fill(fd, &req.filler, &req.sndbuf);
    if (ret < 0)
        return mw_fail(ret);
    call.flags = MWL_F_NONBLOCK;
    call.send_fd = fd;
    ret = mw_call_ret(&call);
    if (ret < 0 && ret != -EINPROGRESS)
        return mw_fail(ret);
    mw_fd_update(fd, -1, 1);
    if (ret == 0)
        return 0;
    if (nonblock)
        return mw_fail(-EINPROGRESS);
    /* SO_SNDTIMEO (kept on X) bounds a blocking connect: EINPROGRESS when it runs out, and
     * the connect goes on, as native */
    {
        struct timeval tv = { 0, 0 };
        socklen_t tl = sizeof(tv);
        int saved = errno;

        if (libc_getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &tl) < 0 || tl != sizeof(tv))
            tv = (struct timeval){ 0, 0 };
        errno = saved;
        timed = tv.tv_sec != 0 || tv.tv_usec != 0;
        mw_deadline(&end, tv.tv_sec, tv.tv_usec * 1000L);
    }
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        struct mwl_rsp_status st;
        int wait = -1;

        if (timed) {
            long long ns = mw_ns_left(&end);

            if (ns <= 0)
                return mw_fail(-EINPROGRESS);
            wait = ns / 1000000 >= INT_MAX ? INT_MAX : (int)((ns + 999999) / 1000000);
        }
        ret = poll(&p, 1, wait);
        if (ret < 0 && errno == EINTR && !timed && mw_signals_restart())
            continue;              /* as the kernel restarts it */
        if (ret < 0)
            return -1;             /* EINTR: as native, the connect goes on */
        if (ret == 0)
            return mw_fail(-EINPROGRESS);
        ret = mw_status(e, &st);
        if (ret < 0)
            return mw_fail(ret);
        if (st.error < 0)
            return mw_fail(st.error);
        if (st.state == MWL_ST_CONNECTED)
            return 0;
        if (st.state != MWL_ST_CONNECTING)
            return mw_fail(-ECONNABORTED);
        /* writable a moment before mwcommsd records the state: let it */
        {
            struct timespec ts = { .tv_nsec = 1000000 };

            nanosleep(&ts, NULL);
        }
    }
}

static int mw_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    struct mw_fd e;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_connect(fd, sa, len);
    return mw_connect_mw(fd, &e, sa, len);
}

static int mw_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
    struct mw_fd e;
    struct mwl_req_addr req;
    struct mw_call call = { .op = MWL_BIND, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1 };
    int ret;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_bind(fd, sa, len);
    memset(&req, 0, sizeof(req));
    req.handle = e.handle;
    ret = mw_addr_in(sa, len, e.family, false, &req.addr);
    if (ret == -EAFNOSUPPORT && e.family == AF_INET6)
        ret = -EINVAL;             /* as native for an AF_INET address on an AF_INET6 socket */
    if (ret < 0)
        return mw_fail(ret);
    ret = mw_call_ret(&call);
    return ret < 0 ? mw_fail(ret) : 0;
}

static int mw_simple(uint16_t op, const struct mw_fd *e, int arg)
{
    struct mwl_req_handle req = { .handle = e->handle, .arg = arg };
    struct mw_call call = { .op = op, .req = &req, .req_len = sizeof(req), .send_fd = -1 };

    return mw_call_ret(&call);
}

static int mw_listen(int fd, int backlog)
{
    struct mw_fd e;
    struct mwl_req_handle req = { .arg = backlog };
    struct mw_call call = { .op = MWL_LISTEN, .req = &req, .req_len = sizeof(req),
                            .send_fd = fd };
    int ret;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_listen(fd, backlog);
    if (e.type != SOCK_STREAM)
        return mw_fail(-EOPNOTSUPP);
    req.handle = e.handle;
    /* X goes along: mwcommsd takes the idle token of a never connected socket out of it */
    ret = mw_call_ret(&call);
    if (ret < 0)
        return mw_fail(ret);
    mw_fd_update(fd, 1, -1);
    return 0;
}

/* A native accepted socket is a clone of its listener: SO_RCVTIMEO and SO_SNDTIMEO, which
 * live on X, come along. */
static void mw_inherit_timeouts(int listener, int fd)
{
    static const int opts[] = { SO_RCVTIMEO, SO_SNDTIMEO };
    int saved = errno;

    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        struct timeval tv;
        socklen_t len = sizeof(tv);

        if (libc_getsockopt(listener, SOL_SOCKET, opts[i], &tv, &len) == 0 &&
            len == sizeof(tv) && (tv.tv_sec != 0 || tv.tv_usec != 0))
            libc_setsockopt(fd, SOL_SOCKET, opts[i], &tv, sizeof(tv));
    }
    errno = saved;
}

static int mw_accept_mw(int fd, struct mw_fd *e, struct sockaddr *sa, socklen_t *len, int flags)
{
    struct mwl_req_handle req = { .handle = e->handle, .arg = flags };
    struct mwl_rsp_socket rsp;
    bool nonblock = mw_is_nonblocking(fd);
    int ret, newfd;

    if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))
        return mw_fail(-EINVAL);
    if (e->type != SOCK_STREAM)
        return mw_fail(-EOPNOTSUPP);
    if (!e->listening) {
        struct mwl_rsp_status st;

        /* inherited across exec, or listen() made by another process */
        if (mw_status(e, &st) < 0 || st.state != MWL_ST_LISTENING)
            return mw_fail(-EINVAL);
        mw_fd_update(fd, 1, -1);
    }
    for (;;) {
        struct mw_call call = { .op = MWL_ACCEPT, .req = &req, .req_len = sizeof(req),
                                .send_fd = -1, .rsp_len = sizeof(rsp) };
        char token;
        ssize_t n;

        /* one token byte is queued per connection mwcommsd holds for us: a blocking read
         * waits as accept() waits (EINTR, SO_RCVTIMEO included) */
        n = libc_recv(fd, &token, 1, nonblock ? MSG_DONTWAIT : 0);
        if (n < 0)
            return -1;
        /* n == 0: the listener is dead (INS gone); ACCEPT says how (ECONNABORTED) */
        call.flags = (nonblock ? MWL_F_NONBLOCK : 0) | MWL_F_CLOEXEC;
        ret = mw_call_ret(&call);
        if (ret == -EAGAIN && n == 0)
            ret = -ECONNABORTED;
        if (ret == -EAGAIN) {
            if (call.recv_fd >= 0)
                libc_close(call.recv_fd);
            if (nonblock)
                return mw_fail(-EAGAIN);
            continue;
        }
        if (ret < 0) {
            if (call.recv_fd >= 0)
                libc_close(call.recv_fd);
            return mw_fail(ret);
        }
        if (call.recv_fd < 0)
            return mw_fail(-EPROTO);
        memcpy(&rsp, call.rsp, sizeof(rsp));
        rsp.family = e->family;
        rsp.type = SOCK_STREAM;
        newfd = mw_adopt(call.recv_fd, &rsp, flags);
        if (newfd < 0)
            return mw_fail(newfd);
        mw_fd_update(newfd, 0, 1);
        mw_inherit_timeouts(fd, newfd);
        if (sa != NULL && len != NULL)
            mw_addr_out(&rsp.peer, e->family, sa, len);
        return newfd;
    }
}

static int mw_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
    struct mw_fd e;
    int newfd;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW) {
        newfd = libc_accept4(fd, sa, len, flags);
        if (newfd >= 0)
            mw_fd_set_kind(newfd, MW_FD_LOCAL);
        return newfd;
    }
    return mw_accept_mw(fd, &e, sa, len, flags);
}

static int mw_accept(int fd, struct sockaddr *sa, socklen_t *len)
{
    struct mw_fd e;
    int newfd;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW) {
        newfd = libc_accept(fd, sa, len);
        if (newfd >= 0)
            mw_fd_set_kind(newfd, MW_FD_LOCAL);
        return newfd;
    }
    return mw_accept_mw(fd, &e, sa, len, 0);
}

/* ------------------------------------------------------------------------------------------
 * Names, options, shutdown.
 */
static int mw_name(uint16_t op, int fd, struct sockaddr *sa, socklen_t *len)
{
    struct mw_fd e;
    struct mwl_req_handle req;
    struct mw_call call = { .op = op, .req = &req, .req_len = sizeof(req), .send_fd = -1,
                            .rsp_len = sizeof(struct mwl_rsp_addr) };
    struct mwl_rsp_addr rsp;
    int ret;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW) {
        return op == MWL_GETSOCKNAME ? libc_getsockname(fd, sa, len)
                                     : libc_getpeername(fd, sa, len);
    }
    if (sa == NULL || len == NULL)
        return mw_fail(-EFAULT);
    if ((int)*len < 0)
        return mw_fail(-EINVAL);
    memset(&req, 0, sizeof(req));
    req.handle = e.handle;
    ret = mw_call_ret(&call);
    if (ret < 0)
        return mw_fail(ret);
    memcpy(&rsp, call.rsp, sizeof(rsp));
    ret = mw_addr_out(&rsp.addr, e.family, sa, len);
    return ret < 0 ? mw_fail(-EPROTO) : 0;
}

/* Options that belong to the socketpair end itself (they govern how the application's own
 * reads and writes wait), not to the INS socket. */
static bool mw_opt_is_local(int level, int name)
{
    return level == SOL_SOCKET && (name == SO_RCVTIMEO_OLD || name == SO_SNDTIMEO_OLD ||
                                   name == SO_RCVTIMEO_NEW || name == SO_SNDTIMEO_NEW);
}

static int mw_int_opt(int v, void *val, socklen_t *len)
{
    if (val == NULL || len == NULL)
        return mw_fail(-EFAULT);
    if ((int)*len < 0)
        return mw_fail(-EINVAL);
    memcpy(val, &v, *len < sizeof(v) ? *len : sizeof(v));
    if (*len > sizeof(v))
        *len = sizeof(v);
    return 0;
}

static int mw_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    struct mw_fd e;
    struct mwl_req_sockopt req;
    struct mw_call call = { .op = MWL_GETSOCKOPT, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1, .rsp_len = sizeof(struct mwl_rsp_sockopt) };
    struct mwl_rsp_sockopt rsp;
    int ret;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_getsockopt(fd, level, name, val, len);
    if (mw_opt_is_local(level, name))
        return libc_getsockopt(fd, level, name, val, len);
    if (level == SOL_SOCKET) {
        switch (name) {
        case SO_TYPE:
            return mw_int_opt(e.type, val, len);
        case SO_DOMAIN:
            return mw_int_opt(e.family, val, len);
        case SO_PROTOCOL:
            return mw_int_opt(e.type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP, val, len);
        case SO_ACCEPTCONN:
            return mw_int_opt(e.listening, val, len);
        case SO_ERROR: {
            struct mwl_rsp_status st;

            ret = mw_status(&e, &st);
            if (ret < 0)
                return mw_fail(ret);
            return mw_int_opt(-st.error, val, len);
        }
        default:
            break;
        }
    }
    /* an IPv4 socket's protocol hands a level it does not know to ip_getsockopt, which
     * answers EOPNOTSUPP (IPv6 and setsockopt say ENOPROTOOPT, as the INS does) */
    if (e.family == AF_INET && level != SOL_SOCKET && level != IPPROTO_IP &&
        level != (e.type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP) &&
        !(e.type == SOCK_DGRAM && level == IPPROTO_UDPLITE))
        return mw_fail(-EOPNOTSUPP);
    if (val == NULL || len == NULL)
        return mw_fail(-EFAULT);
    if ((int)*len < 0)
        return mw_fail(-EINVAL);
    memset(&req, 0, sizeof(req));
    req.handle = e.handle;
    req.level = level;
    req.name = name;
    req.len = *len > 1024 ? 1024 : *len;
    ret = mw_call_ret(&call);
    if (ret < 0)
        return mw_fail(ret);
    memcpy(&rsp, call.rsp, sizeof(rsp));
    if (rsp.len > req.len || rsp.len > call.extra_len)
        return mw_fail(-EPROTO);
    memcpy(val, call.extra, rsp.len);
    *len = rsp.len;
    return 0;
}

static int mw_setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    struct mw_fd e;
    struct mwl_req_sockopt req;
    struct mw_call call = { .op = MWL_SETSOCKOPT, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1 };
    int ret;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_setsockopt(fd, level, name, val, len);
    if (mw_opt_is_local(level, name))
        return libc_setsockopt(fd, level, name, val, len);
    if ((int)len < 0 || len > 1024)
        return mw_fail(-EINVAL);
    if (val == NULL && len > 0)
        return mw_fail(-EFAULT);
    memset(&req, 0, sizeof(req));
    req.handle = e.handle;
    req.level = level;
    req.name = name;
    req.len = len;
    call.tail = val;
    call.tail_len = len;
    ret = mw_call_ret(&call);
    return ret < 0 ? mw_fail(ret) : 0;
}

static int mw_shutdown(int fd, int how)
{
    struct mw_fd e;
    int ret;

    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_shutdown(fd, how);
    if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
        return mw_fail(-EINVAL);
    /* mwcommsd checks the state (ENOTCONN) and records the request; the write side then ends
     * with EOF on its end after the bytes already written, so nothing is overtaken */
    ret = mw_simple(MWL_SHUTDOWN, &e, how);
    if (ret < 0)
        return mw_fail(ret);
    if (e.type == SOCK_STREAM)
        libc_shutdown(fd, how);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * close, dup*, fcntl, ioctl: the table follows the fds.
 *
 * Except in the child of vfork() (Python's subprocess, for one): it shares its parent's
 * memory but not its fds, runs no atfork handler, and closes or dup2's fds before exec. Were
 * the table or the control list updated there, the parent would forget its own sockets and
 * control connections (and leak one of those per child). mw_pid is the process the table
 * belongs to.
 */
static pid_t mw_pid;

static inline bool mw_in_vfork_child(void)
{
    return getpid() != __atomic_load_n(&mw_pid, __ATOMIC_RELAXED);
}

static int mw_close(int fd)
{
    uint8_t kind = mw_fd_kind(fd);

    if (kind != MW_FD_UNKNOWN && mw_in_vfork_child())
        return libc_close(fd);
    if (kind != MW_FD_UNKNOWN)
        mw_fd_set_kind(fd, MW_FD_UNKNOWN);
    if (kind == MW_FD_CTL)
        mw_ctl_fd_closing(fd);
    return libc_close(fd);
}

static int mw_close_range(unsigned int first, unsigned int last, int flags)
{
    int ret = libc_close_range(first, last, flags);

    if (ret == 0 && !(flags & CLOSE_RANGE_CLOEXEC) && !mw_in_vfork_child()) {
        mw_fd_forget_range(first, last);
        pthread_mutex_lock(&mw_ctl_lock);
        for (struct mw_ctl *c = mw_ctl_list; c != NULL; c = c->next)
            if (c->fd >= 0 && (unsigned int)c->fd >= first && (unsigned int)c->fd <= last)
                c->fd = -1;
        pthread_mutex_unlock(&mw_ctl_lock);
    }
    return ret;
}

static int mw_dup(int fd)
{
    int nfd = libc_dup(fd);

    if (nfd >= 0 && !mw_in_vfork_child())
        mw_fd_copy(fd, nfd);
    return nfd;
}

static int mw_dup3(int fd, int fd2, int flags, bool is_dup2)
{
    int ret;

    if (mw_in_vfork_child())
        return is_dup2 ? libc_dup2(fd, fd2) : libc_dup3(fd, fd2, flags);
    if (fd != fd2 && mw_fd_kind(fd2) == MW_FD_CTL)
        mw_ctl_fd_closing(fd2);
    ret = is_dup2 ? libc_dup2(fd, fd2) : libc_dup3(fd, fd2, flags);
    if (ret >= 0 && fd != fd2)
        mw_fd_copy(fd, ret);
    return ret;
}

static int mw_fcntl(int fd, int cmd, void *arg)
{
    int ret = libc_fcntl(fd, cmd, arg);

    if (ret >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && !mw_in_vfork_child())
        mw_fd_copy(fd, ret);
    return ret;
}

/* FIONREAD of a UDP socket is the length of the next datagram (0 if none); X's SEQPACKET
 * end would count every queued packet with its header: peek at the next header instead. */
static int mw_dgram_next_len(int fd)
{
    struct mwl_dgram h;
    int saved = errno;
    ssize_t n = libc_recv(fd, &h, sizeof(h), MSG_PEEK | MSG_DONTWAIT);

    errno = saved;
    if (n < (ssize_t)sizeof(h) || (h.flags & MWL_DGRAM_F_ERROR) || h.len > INT_MAX)
        return 0;
    return (int)h.len;
}

/*
 * SIOCGIFADDR, SIOCGIFNETMASK, SIOCGIFBRDADDR, SIOCGIFDSTADDR as an AF_INET socket answers
 * them (devinet_ioctl), from getifaddrs() (netlink: no inet socket is made).
 * @param req one of the four
 * @param ifr the caller's struct ifreq: ifr_name in, ifr_addr out
 * @return 0; -ENODEV (no such interface), -EADDRNOTAVAIL (no IPv4 address), -errno
 */
static int mw_ifaddr_query(unsigned long req, struct ifreq *ifr)
{
    struct ifaddrs *list;
    struct sockaddr_in out = { .sin_family = AF_INET };
    char name[IFNAMSIZ + 1];
    bool known = false;
    int ret = -EADDRNOTAVAIL;

    memcpy(name, ifr->ifr_name, IFNAMSIZ);
    name[IFNAMSIZ] = '\0';
    if (getifaddrs(&list) < 0)
        return -errno;
    for (struct ifaddrs *ifa = list; ifa != NULL; ifa = ifa->ifa_next) {
        const struct sockaddr *src = NULL;
        size_t base = strcspn(name, ":");

        if (strncmp(ifa->ifa_name, name, base) == 0 &&
            (ifa->ifa_name[base] == '\0' || ifa->ifa_name[base] == ':'))
            known = true;       /* the device exists (its label may differ) */
        if (strcmp(ifa->ifa_name, name) != 0 || ifa->ifa_addr == NULL ||
            ifa->ifa_addr->sa_family != AF_INET)
            continue;
        if (req == SIOCGIFADDR)
            src = ifa->ifa_addr;
        else if (req == SIOCGIFNETMASK)
            src = ifa->ifa_netmask;
        else if (req == SIOCGIFBRDADDR)
            src = (ifa->ifa_flags & IFF_BROADCAST) ? ifa->ifa_broadaddr : NULL;
        else            /* the peer of a point-to-point link, else the local address */
            src = (ifa->ifa_flags & IFF_POINTOPOINT) ? ifa->ifa_dstaddr : ifa->ifa_addr;
        if (src != NULL && src->sa_family == AF_INET)
            memcpy(&out, src, sizeof(out));
        memcpy(&ifr->ifr_addr, &out, sizeof(out));
        ret = 0;
        break;
    }
    freeifaddrs(list);
    return known ? ret : -ENODEV;
}

static int mw_ioctl(int fd, unsigned long req, void *arg)
{
    struct mw_fd e;
    struct mwl_req_ioctl rq;
    struct mw_call call = { .op = MWL_IOCTL, .req = &rq, .req_len = sizeof(rq), .send_fd = -1 };
    int ret;

    if (mw_fd_passthrough(fd) || mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_ioctl(fd, req, arg);
    switch (req) {
    case FIONREAD:
        if (e.type == SOCK_DGRAM) {
            int v;

            if (arg == NULL)
                return mw_fail(-EFAULT);
            v = mw_dgram_next_len(fd);
            memcpy(arg, &v, sizeof(v));
            return 0;
        }
        /* bytes already in the socketpair: what read() can return now */
        ret = libc_ioctl(fd, req, arg);
        if (ret < 0)
            return ret;
        /* stream: plus what mwcommsd's ring and the INS socket hold */
        rq = (struct mwl_req_ioctl){ .handle = e.handle, .request = MW_IOCTL_SIOCINQ };
        break;
    case FIONBIO:
    case FIOCLEX:
    case FIONCLEX:
    case FIOASYNC:
    case FIOSETOWN:
    case SIOCSPGRP:
    case FIOGETOWN:
    case SIOCGPGRP:
        return libc_ioctl(fd, req, arg);
    case SIOCATMARK:
        rq = (struct mwl_req_ioctl){ .handle = e.handle, .request = MW_IOCTL_SIOCATMARK };
        break;
    case SIOCOUTQ:
        /* what X's socketpair still holds, plus mwcommsd's ring and the INS socket */
        ret = libc_ioctl(fd, req, arg);
        if (ret < 0)
            return ret;
        rq = (struct mwl_req_ioctl){ .handle = e.handle, .request = MW_IOCTL_SIOCOUTQ };
        break;
    default:
        /* interface queries (SIOCGIF*) are answered by the local kernel on any socket, the
         * socketpair end included: they read, never reach the network; setters are refused */
        if ((req == SIOCGIFNAME || req == SIOCGIFCONF || req == SIOCGIFFLAGS ||
             req == SIOCGIFMETRIC || req == SIOCGIFMTU || req == SIOCGIFHWADDR ||
             req == SIOCGIFINDEX || req == SIOCGIFTXQLEN || req == SIOCGIFMAP))
            return libc_ioctl(fd, req, arg);
        /* the IPv4 address queries belong to inet sockets (X is AF_UNIX: ENOTTY) */
        if (req == SIOCGIFADDR || req == SIOCGIFDSTADDR || req == SIOCGIFBRDADDR ||
            req == SIOCGIFNETMASK) {
            ret = arg == NULL ? -EFAULT : mw_ifaddr_query(req, arg);
            return ret < 0 ? mw_fail(ret) : 0;
        }
        mw_log("ioctl 0x%lx on a forwarded socket is refused", req);
        return mw_fail(-EPERM);
    }
    if (arg == NULL)
        return mw_fail(-EFAULT);
    ret = mw_call_ret(&call);
    if (ret < 0 && (req == FIONREAD || req == SIOCOUTQ))
        return 0;                  /* a dead socket: what X holds is the answer */
    if (ret < 0)
        return mw_fail(ret);
    if (req == FIONREAD || req == SIOCOUTQ) {
        int local;

        memcpy(&local, arg, sizeof(local));
        ret = ret > INT_MAX - local ? INT_MAX : ret + local;
    }
    memcpy(arg, &ret, sizeof(int));
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Data. Stream sockets move bytes natively (only a read of 0 is looked at). Datagram sockets
 * carry struct mwl_dgram in front of every packet: added on send, stripped on receive.
 */

/* Recipients of SCM_RIGHTS fds are new fds the table must not confuse with old ones. */
static void mw_forget_received(struct msghdr *msg)
{
    struct cmsghdr *cm;

    if (msg->msg_controllen == 0)
        return;
    for (cm = CMSG_FIRSTHDR(msg); cm != NULL; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

            for (size_t i = 0; i < n; i++) {
                int fd;

                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (mw_fd_kind(fd) != MW_FD_UNKNOWN)
                    mw_fd_set_kind(fd, MW_FD_UNKNOWN);
            }
        }
    }
}

static ssize_t mw_dgram_send(int fd, const struct mw_fd *e, const struct msghdr *m, int flags)
{
    struct mwl_dgram h;
    size_t total = 0;
    ssize_t n;
    int ret;

    if (m->msg_iovlen >= IOV_MAX)
        return mw_fail(-EMSGSIZE);
    struct iovec iov[m->msg_iovlen + 1];
    struct msghdr out = { .msg_iov = iov, .msg_iovlen = m->msg_iovlen + 1 };

    memset(&h, 0, sizeof(h));
    if (m->msg_name != NULL && m->msg_namelen > 0) {
        ret = mw_addr_in(m->msg_name, m->msg_namelen, e->family, false, &h.addr);
        if (ret == -EAFNOSUPPORT && e->family == AF_INET6)
            ret = -EINVAL;
        if (ret < 0)
            return mw_fail(ret);
    } else if (!e->connected) {
        return mw_fail(-EDESTADDRREQ);
    }
    iov[0] = (struct iovec){ .iov_base = &h, .iov_len = sizeof(h) };
    for (size_t i = 0; i < m->msg_iovlen; i++) {
        iov[i + 1] = m->msg_iov[i];
        total += m->msg_iov[i].iov_len;
    }
    if (total > (e->family == AF_INET ? 65507u : 65527u))
        return mw_fail(-EMSGSIZE);
    h.len = total;
    n = libc_sendmsg(fd, &out, (flags & (MSG_DONTWAIT | MSG_NOSIGNAL)) | MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EPIPE) {
            struct mwl_rsp_status st;

            if (mw_status(e, &st) == 0 && st.error < 0)
                return mw_fail(st.error);
        }
        return -1;
    }
    return n >= (ssize_t)sizeof(h) ? n - (ssize_t)sizeof(h) : 0;
}

/* A pending-error packet (MWL_DGRAM_F_ERROR) was read: the error, taken from mwcommsd so that
 * it is reported once; 0 when SO_ERROR reported it already (the packet is then skipped). */
static int mw_dgram_error(const struct mw_fd *e, uint32_t err)
{
    struct mwl_rsp_status st;

    if (mw_status(e, &st) == 0)
        return st.error;
    return (err > 0 && err <= 4095) ? -(int)err : -EPROTO;
}

static ssize_t mw_dgram_recv(int fd, const struct mw_fd *e, struct msghdr *m, int flags)
{
    struct mwl_dgram h;
    ssize_t n;
    int err;

    if (m->msg_iovlen >= IOV_MAX)
        return mw_fail(-EMSGSIZE);
    struct iovec iov[m->msg_iovlen + 1];
    struct msghdr in = { .msg_iov = iov, .msg_iovlen = m->msg_iovlen + 1,
                         .msg_control = m->msg_control, .msg_controllen = m->msg_controllen };

    iov[0] = (struct iovec){ .iov_base = &h, .iov_len = sizeof(h) };
    for (size_t i = 0; i < m->msg_iovlen; i++)
        iov[i + 1] = m->msg_iov[i];
again:
    in.msg_controllen = m->msg_controllen;
    n = libc_recvmsg(fd, &in, flags & (MSG_DONTWAIT | MSG_PEEK | MSG_CMSG_CLOEXEC | MSG_WAITALL));
    if (n < 0)
        return -1;
    if (n == 0)
        return mw_eof_or_error(fd);
    if ((size_t)n < sizeof(h))
        return mw_fail(-EPROTO);
    if (h.flags & MWL_DGRAM_F_ERROR) {
        if (flags & MSG_PEEK)      /* a pending error is consumed even by a peek */
            libc_recv(fd, &h, sizeof(h), MSG_DONTWAIT);
        err = mw_dgram_error(e, h.len);
        if (err < 0)
            return mw_fail(err);
        goto again;
    }
    n -= sizeof(h);
    m->msg_controllen = in.msg_controllen;
    m->msg_flags = in.msg_flags & ~MSG_TRUNC;
    if ((in.msg_flags & MSG_TRUNC) || (h.flags & MSG_TRUNC) || (size_t)n < h.len)
        m->msg_flags |= MSG_TRUNC;
    if (m->msg_name != NULL) {
        socklen_t len = m->msg_namelen;

        if (mw_addr_out(&h.addr, e->family, m->msg_name, &len) == 0)
            m->msg_namelen = h.addr.family == MW_AF_UNSPEC ? 0 : len;
    }
    if (flags & MSG_TRUNC)
        return h.len;
    return n;
}

/* How a data call on fd goes: straight to libc, the stream fast path, or the full lookup.
 * Lock-free: a forwarded entry's fields are stored before its kind (mw_fd_set). A stream
 * socket needs no inode check here: were the fd now a file, the kernel itself answers the
 * call as it would for that file (ENOTSOCK for send/recv). */
enum { MW_PATH_LIBC, MW_PATH_STREAM, MW_PATH_LOOKUP };

static inline int mw_data_path(int fd)
{
    uint8_t k;

    if (!mw_fd_in_table(fd))
        return MW_PATH_LIBC;
    k = __atomic_load_n(&mw_fds[fd].kind, __ATOMIC_ACQUIRE);
    if (k == MW_FD_LOCAL || k == MW_FD_CTL)
        return MW_PATH_LIBC;
    if (k == MW_FD_MW && __atomic_load_n(&mw_fds[fd].type, __ATOMIC_RELAXED) == SOCK_STREAM &&
        __atomic_load_n(&mw_fds[fd].connected, __ATOMIC_RELAXED))
        return MW_PATH_STREAM;     /* not connected (yet): the lookup path checks the state */
    return MW_PATH_LOOKUP;
}

static size_t mw_iov_len(const struct iovec *iov, size_t cnt)
{
    size_t want = 0;

    for (size_t i = 0; i < cnt; i++)
        want += iov[i].iov_len;
    return want;
}

/* A forwarded stream socket received n bytes of the want asked: 0 may hide an error. */
static inline ssize_t mw_stream_got(int fd, ssize_t n, size_t want)
{
    return (n == 0 && want > 0) ? mw_eof_or_error(fd) : n;
}

/* Stream sockets: a connected TCP socket ignores a destination address; no source address
 * is reported (the socketpair would report its own AF_UNIX one). */
/* TCP urgent data is not carried: an MSG_OOB byte goes inline (as a peer with SO_OOBINLINE
 * would read it) instead of into X's own out-of-band slot, where mwcommsd never reads it. */
#define MW_STREAM_SEND_FLAGS(f) ((f) & ~MSG_OOB)

static ssize_t mw_stream_sendmsg(int fd, const struct msghdr *m, int flags)
{
    struct msghdr s = *m;

    s.msg_name = NULL;
    s.msg_namelen = 0;
    return libc_sendmsg(fd, &s, MW_STREAM_SEND_FLAGS(flags));
}

static ssize_t mw_stream_recvmsg(int fd, struct msghdr *m, int flags)
{
    struct msghdr r = *m;
    ssize_t n;

    r.msg_name = NULL;
    r.msg_namelen = 0;
    n = libc_recvmsg(fd, &r, flags);
    if (n < 0)
        return n;
    m->msg_namelen = 0;
    m->msg_controllen = r.msg_controllen;
    m->msg_flags = r.msg_flags;
    return mw_stream_got(fd, n, mw_iov_len(m->msg_iov, m->msg_iovlen));
}

static ssize_t mw_sendmsg(int fd, const struct msghdr *m, int flags)
{
    struct mw_fd e;
    int ret;

    switch (mw_data_path(fd)) {
    case MW_PATH_LIBC:
        return libc_sendmsg(fd, m, flags);
    case MW_PATH_STREAM:
        return mw_stream_sendmsg(fd, m, flags);
    default:
        break;
    }
    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_sendmsg(fd, m, flags);
    if (e.type == SOCK_DGRAM)
        return mw_dgram_send(fd, &e, m, flags);
    ret = mw_stream_check(fd, &e);
    if (ret < 0)
        return mw_stream_send_fail(ret, flags);
    return mw_stream_sendmsg(fd, m, flags);
}

static ssize_t mw_recvmsg_mw(int fd, struct mw_fd *e, struct msghdr *m, int flags)
{
    int ret;

    if (e->type == SOCK_DGRAM)
        return mw_dgram_recv(fd, e, m, flags);
    ret = mw_stream_check(fd, e);
    if (ret < 0)
        return mw_fail(ret);
    return mw_stream_recvmsg(fd, m, flags);
}

static ssize_t mw_recvmsg(int fd, struct msghdr *m, int flags)
{
    struct mw_fd e;
    ssize_t n;

    switch (mw_data_path(fd)) {
    case MW_PATH_STREAM:
        return mw_stream_recvmsg(fd, m, flags);
    case MW_PATH_LOOKUP:
        if (mw_fd_lookup(fd, &e, true) == MW_FD_MW)
            return mw_recvmsg_mw(fd, &e, m, flags);
        break;
    default:
        break;
    }
    n = libc_recvmsg(fd, m, flags);
    if (n >= 0)
        mw_forget_received(m);
    return n;
}

static ssize_t mw_sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *sa,
                         socklen_t salen)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr m = { .msg_name = (void *)sa, .msg_namelen = salen, .msg_iov = &iov,
                        .msg_iovlen = 1 };

    switch (mw_data_path(fd)) {
    case MW_PATH_LIBC:
        return libc_sendto(fd, buf, len, flags, sa, salen);
    case MW_PATH_STREAM:
        return libc_send(fd, buf, len, MW_STREAM_SEND_FLAGS(flags));
    default:
        return mw_sendmsg(fd, &m, flags);
    }
}

static ssize_t mw_recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *sa,
                           socklen_t *salen)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr m = { .msg_name = sa, .msg_namelen = salen ? *salen : 0, .msg_iov = &iov,
                        .msg_iovlen = 1 };
    struct mw_fd e;
    ssize_t n;

    switch (mw_data_path(fd)) {
    case MW_PATH_LIBC:
        return libc_recvfrom(fd, buf, len, flags, sa, salen);
    case MW_PATH_STREAM:
        n = libc_recv(fd, buf, len, flags);
        if (n >= 0 && sa != NULL && salen != NULL)
            *salen = 0;
        return n < 0 ? n : mw_stream_got(fd, n, len);
    default:
        break;
    }
    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_recvfrom(fd, buf, len, flags, sa, salen);
    if (sa == NULL)
        m.msg_namelen = 0;
    n = mw_recvmsg_mw(fd, &e, &m, flags);
    if (n >= 0 && salen != NULL && sa != NULL)
        *salen = m.msg_namelen;
    return n;
}

static ssize_t mw_readv(int fd, const struct iovec *iov, int cnt)
{
    struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = cnt };
    struct mw_fd e;
    ssize_t n;

    switch (mw_data_path(fd)) {
    case MW_PATH_LIBC:
        return libc_readv(fd, iov, cnt);
    case MW_PATH_STREAM:
        n = libc_readv(fd, iov, cnt);
        return n < 0 ? n : mw_stream_got(fd, n, mw_iov_len(iov, cnt));
    default:
        break;
    }
    /* an fd never looked at: a datagram socket inherited across exec must lose its headers */
    if (mw_fd_lookup(fd, &e, false) != MW_FD_MW)
        return libc_readv(fd, iov, cnt);
    if (e.type == SOCK_STREAM) {
        size_t want = cnt > 0 ? mw_iov_len(iov, cnt) : 0;
        int ret = want > 0 ? mw_stream_check(fd, &e) : 0;  /* a socket reads 0 bytes as 0 */

        if (ret < 0)
            return mw_fail(ret);
        n = libc_readv(fd, iov, cnt);
        return n < 0 ? n : mw_stream_got(fd, n, want);
    }
    if (cnt < 0)
        return mw_fail(-EINVAL);
    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_readv(fd, iov, cnt);
    return mw_recvmsg_mw(fd, &e, &m, 0);
}

static ssize_t mw_read(int fd, void *buf, size_t len)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    ssize_t n;

    switch (mw_data_path(fd)) {
    case MW_PATH_LIBC:
        return libc_read(fd, buf, len);
    case MW_PATH_STREAM:
        n = libc_read(fd, buf, len);
        return n < 0 ? n : mw_stream_got(fd, n, len);
    default:
        return mw_readv(fd, &iov, 1);
    }
}

static ssize_t mw_writev(int fd, const struct iovec *iov, int cnt)
{
    struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = cnt };
    struct mw_fd e;

    if (mw_data_path(fd) != MW_PATH_LOOKUP || mw_fd_lookup(fd, &e, false) != MW_FD_MW)
        return libc_writev(fd, iov, cnt);
    if (e.type == SOCK_STREAM) {
        int ret = mw_stream_check(fd, &e);

        return ret < 0 ? mw_stream_send_fail(ret, 0) : libc_writev(fd, iov, cnt);
    }
    if (cnt < 0)
        return mw_fail(-EINVAL);
    if (mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_writev(fd, iov, cnt);
    return mw_dgram_send(fd, &e, &m, 0);
}

static ssize_t mw_write(int fd, const void *buf, size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };

    if (mw_data_path(fd) != MW_PATH_LOOKUP)
        return libc_write(fd, buf, len);
    return mw_writev(fd, &iov, 1);
}

static ssize_t mw_send(int fd, const void *buf, size_t len, int flags)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };

    switch (mw_data_path(fd)) {
    case MW_PATH_LIBC:
        return libc_send(fd, buf, len, flags);
    case MW_PATH_STREAM:
        return libc_send(fd, buf, len, MW_STREAM_SEND_FLAGS(flags));
    default:
        return mw_sendmsg(fd, &m, flags);
    }
}

static ssize_t mw_recv(int fd, void *buf, size_t len, int flags)
{
    ssize_t n;

    switch (mw_data_path(fd)) {
    case MW_PATH_LIBC:
        return libc_recv(fd, buf, len, flags);
    case MW_PATH_STREAM:
        n = libc_recv(fd, buf, len, flags);
        return n < 0 ? n : mw_stream_got(fd, n, len);
    default:
        return mw_recvfrom(fd, buf, len, flags, NULL, NULL);
    }
}

static int mw_sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags)
{
    struct mw_fd e;
    unsigned int i;

    if (mw_fd_passthrough(fd) || mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_sendmmsg(fd, v, n, flags);
    if (n > UIO_MAXIOV)
        n = UIO_MAXIOV;
    for (i = 0; i < n; i++) {
        ssize_t r = mw_sendmsg(fd, &v[i].msg_hdr, flags);

        if (r < 0)
            return i > 0 ? (int)i : -1;
        v[i].msg_len = r;
    }
    return i;
}

static int mw_recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags, struct timespec *t)
{
    struct mw_fd e;
    unsigned int i;

    struct timespec end;
    long long left;

    if (mw_fd_passthrough(fd) || mw_fd_lookup(fd, &e, true) != MW_FD_MW)
        return libc_recvmmsg(fd, v, n, flags, t);
    if (t != NULL) {
        if (t->tv_sec < 0 || t->tv_nsec < 0 || t->tv_nsec >= 1000000000L)
            return mw_fail(-EINVAL);
        mw_deadline(&end, t->tv_sec, t->tv_nsec);
    }
    /* the timeout is checked after each datagram, as the kernel does (recvmmsg(2), BUGS),
     * and what is left of it written back */
    for (i = 0; i < n; i++) {
        ssize_t r = mw_recvmsg_mw(fd, &e, &v[i].msg_hdr, flags & ~MSG_WAITFORONE);

        if (r < 0) {
            if (i == 0)
                return -1;
            break;
        }
        v[i].msg_len = r;
        if (flags & MSG_WAITFORONE)
            flags |= MSG_DONTWAIT;
        if (t != NULL && mw_ns_left(&end) <= 0) {
            i++;
            break;
        }
    }
    if (t != NULL) {
        left = mw_ns_left(&end);
        left = left > 0 ? left : 0;
        t->tv_sec = left / 1000000000LL;
        t->tv_nsec = left % 1000000000LL;
    }
    return i;
}

/* ------------------------------------------------------------------------------------------
 * Name resolution: answered by the INS through mwcommsd. Lists this file builds are recorded
 * in mw_ai_list so that freeaddrinfo() frees only its own and gives glibc's to glibc.
 */
struct mw_ai_block {
    struct mw_ai_block *next;  /* mw_ai_list */
    struct addrinfo *head;
};

static struct mw_ai_block *mw_ai_list;

struct mw_ai_node {
    struct addrinfo ai;
    struct sockaddr_storage sa;
};

static void mw_ai_free_list(struct addrinfo *ai)
{
    while (ai != NULL) {
        struct addrinfo *next = ai->ai_next;

        free(ai->ai_canonname);
        free(ai);                  /* the node and its address: one allocation */
        ai = next;
    }
}

static int mw_gai_build(const uint8_t *p, size_t len, const struct addrinfo *hints,
                        struct addrinfo **res)
{
    struct mw_ai_answer ans;
    struct addrinfo *head = NULL, **tail = &head;
    struct mw_ai_block *blk;

    if (len < sizeof(ans))
        return EAI_SYSTEM;
    memcpy(&ans, p, sizeof(ans));
    if (ans.count == 0 || ans.count > 1024 ||
        len != sizeof(ans) + (size_t)ans.count * sizeof(struct mw_ai_entry) + ans.canon_len)
        return EAI_SYSTEM;
    for (uint32_t i = 0; i < ans.count; i++) {
        struct mw_ai_entry ent;
        struct mw_ai_node *node;
        socklen_t salen = sizeof(node->sa);

        memcpy(&ent, p + sizeof(ans) + i * sizeof(ent), sizeof(ent));
        node = calloc(1, sizeof(*node));
        if (node == NULL)
            goto out_free;
        if (mw_addr_out(&ent.addr, ent.family, (struct sockaddr *)&node->sa, &salen) < 0 ||
            ent.addr.family == MW_AF_UNSPEC) {
            free(node);
            goto out_free;
        }
        node->ai.ai_flags = hints ? hints->ai_flags : 0;
        node->ai.ai_family = ent.family;
        node->ai.ai_socktype = ent.socktype;
        node->ai.ai_protocol = ent.protocol;
        node->ai.ai_addrlen = salen;
        node->ai.ai_addr = (struct sockaddr *)&node->sa;
        *tail = &node->ai;
        tail = &node->ai.ai_next;
    }
    if (hints != NULL && (hints->ai_flags & AI_CANONNAME)) {
        head->ai_canonname = strndup((const char *)p + sizeof(ans) +
                                     ans.count * sizeof(struct mw_ai_entry), ans.canon_len);
        if (head->ai_canonname == NULL)
            goto out_free;
    }
    blk = malloc(sizeof(*blk));
    if (blk == NULL)
        goto out_free;
    blk->head = head;
    pthread_mutex_lock(&mw_ai_lock);
    blk->next = mw_ai_list;
    mw_ai_list = blk;
    pthread_mutex_unlock(&mw_ai_lock);
    *res = head;
    return 0;
out_free:
    mw_ai_free_list(head);
    return EAI_MEMORY;
}

static int mw_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                          struct addrinfo **res)
{
    struct mwl_req_getaddrinfo req;
    struct mw_call call = { .op = MWL_GETADDRINFO, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1, .rsp_len = sizeof(struct mwl_rsp_gai) };
    struct mwl_rsp_gai rsp;
    size_t nl = node ? strlen(node) : 0, sl = service ? strlen(service) : 0;
    char tail[MW_GAI_NODE_MAX + MW_GAI_SERVICE_MAX];
    int ret;

    if (res == NULL)
        return EAI_SYSTEM;
    if (node == NULL && service == NULL)
        return EAI_NONAME;
    if (hints != NULL && hints->ai_family != AF_UNSPEC && hints->ai_family != AF_INET &&
        hints->ai_family != AF_INET6)
        return libc_getaddrinfo(node, service, hints, res);   /* AF_UNIX etc.: no network */
    if (nl > MW_GAI_NODE_MAX || sl > MW_GAI_SERVICE_MAX)
        return EAI_OVERFLOW;
    memset(&req, 0, sizeof(req));
    if (hints != NULL) {
        req.flags = hints->ai_flags;
        req.family = hints->ai_family;
        req.socktype = hints->ai_socktype;
        req.protocol = hints->ai_protocol;
    }
    req.node_len = node ? (nl > 0 ? nl : 0) : 0;
    req.service_len = sl;
    if (node != NULL && nl == 0)
        return EAI_NONAME;
    if (service != NULL && sl == 0)
        return EAI_NONAME;
    memcpy(tail, node ? node : "", nl);
    memcpy(tail + nl, service ? service : "", sl);
    call.tail = tail;
    call.tail_len = nl + sl;
    ret = mw_call(&call);
    if (ret < 0 || call.ret < 0) {
        int err = ret < 0 ? ret : call.ret;

        mw_log("name resolution through mwcomms failed: %s", strerror(-err));
        if (call.recv_fd >= 0)
            libc_close(call.recv_fd);
        errno = -err;
        return err == -ENETDOWN ? EAI_AGAIN : EAI_SYSTEM;
    }
    if (call.recv_fd >= 0)
        libc_close(call.recv_fd);
    memcpy(&rsp, call.rsp, sizeof(rsp));
    if (rsp.status != 0) {
        if (rsp.status == EAI_SYSTEM)
            errno = rsp.sys_errno < 0 ? -rsp.sys_errno : EIO;
        return rsp.status < -105 || rsp.status > 0 ? EAI_SYSTEM : rsp.status;
    }
    if (rsp.len != call.extra_len) {
        errno = EPROTO;
        return EAI_SYSTEM;
    }
    ret = mw_gai_build(call.extra, call.extra_len, hints, res);
    if (ret == EAI_SYSTEM)
        errno = EPROTO;
    return ret;
}

static void mw_freeaddrinfo(struct addrinfo *ai)
{
    struct mw_ai_block **pp, *blk = NULL;

    if (ai == NULL)
        return;
    pthread_mutex_lock(&mw_ai_lock);
    for (pp = &mw_ai_list; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->head == ai) {
            blk = *pp;
            *pp = blk->next;
            break;
        }
    }
    pthread_mutex_unlock(&mw_ai_lock);
    if (blk == NULL) {
        libc_freeaddrinfo(ai);     /* glibc's own list */
        return;
    }
    free(blk);
    mw_ai_free_list(ai);
}

static int mw_getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host,
                          socklen_t hostlen, char *serv, socklen_t servlen, int flags)
{
    struct mwl_req_getnameinfo req;
    struct mw_call call = { .op = MWL_GETNAMEINFO, .req = &req, .req_len = sizeof(req),
                            .send_fd = -1, .rsp_len = sizeof(struct mwl_rsp_gai) };
    struct mwl_rsp_gai rsp;
    struct mw_ni_answer ans;
    int ret;

    if (sa == NULL || salen < sizeof(sa_family_t) ||
        (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
        return libc_getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
    /* numeric answers never need a resolver */
    if ((host == NULL || hostlen == 0 || (flags & NI_NUMERICHOST)) &&
        (serv == NULL || servlen == 0 || (flags & NI_NUMERICSERV)))
        return libc_getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
    memset(&req, 0, sizeof(req));
    if (mw_addr_in(sa, salen, sa->sa_family, false, &req.addr) < 0)
        return EAI_FAMILY;
    req.flags = flags;
    req.hostlen = host ? hostlen : 0;
    req.servlen = serv ? servlen : 0;
    ret = mw_call(&call);
    if (ret < 0 || call.ret < 0) {
        int err = ret < 0 ? ret : call.ret;

        mw_log("name resolution through mwcomms failed: %s", strerror(-err));
        errno = -err;
        return err == -ENETDOWN ? EAI_AGAIN : EAI_SYSTEM;
    }
    memcpy(&rsp, call.rsp, sizeof(rsp));
    if (rsp.status != 0) {
        if (rsp.status == EAI_SYSTEM)
            errno = rsp.sys_errno < 0 ? -rsp.sys_errno : EIO;
        return rsp.status < -105 || rsp.status > 0 ? EAI_SYSTEM : rsp.status;
    }
    if (call.extra_len < sizeof(ans) || rsp.len != call.extra_len)
        goto out_proto;
    memcpy(&ans, call.extra, sizeof(ans));
    if (sizeof(ans) + (size_t)ans.host_len + ans.serv_len != call.extra_len ||
        ans.host_len > MW_NI_HOST_MAX || ans.serv_len > MW_NI_SERV_MAX)
        goto out_proto;
    if (host != NULL && hostlen > 0) {
        if (ans.host_len >= hostlen)
            return EAI_OVERFLOW;
        memcpy(host, call.extra + sizeof(ans), ans.host_len);
        host[ans.host_len] = '\0';
    }
    if (serv != NULL && servlen > 0) {
        if (ans.serv_len >= servlen)
            return EAI_OVERFLOW;
        memcpy(serv, call.extra + sizeof(ans) + ans.host_len, ans.serv_len);
        serv[ans.serv_len] = '\0';
    }
    return 0;
out_proto:
    errno = EPROTO;
    return EAI_SYSTEM;
}

/* gethostby*: built from the getaddrinfo/getnameinfo answers into the caller's buffer. */
static int mw_hostent_fill(const char *name, int af, struct addrinfo *list, struct hostent *he,
                           char *buf, size_t buflen)
{
    size_t alen = af == AF_INET ? 4 : 16, n = 0, need, nlen = strlen(name) + 1;
    uintptr_t p = (uintptr_t)buf, end = (uintptr_t)buf + buflen;
    char **addrs, **aliases;
    char *data;

    for (struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next)
        if (ai->ai_family == af)
            n++;
    p = (p + sizeof(char *) - 1) & ~(uintptr_t)(sizeof(char *) - 1);
    need = (n + 2) * sizeof(char *) + n * alen + nlen;
    if (p > end || end - p < need)
        return ERANGE;
    aliases = (char **)p;
    addrs = aliases + 1;
    data = (char *)(addrs + n + 1);
    aliases[0] = NULL;
    n = 0;
    for (struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_family != af)
            continue;
        addrs[n] = data;
        if (af == AF_INET)
            memcpy(data, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, 4);
        else
            memcpy(data, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, 16);
        data += alen;
        n++;
    }
    addrs[n] = NULL;
    memcpy(data, name, nlen);
    he->h_name = data;
    he->h_aliases = aliases;
    he->h_addrtype = af;
    he->h_length = alen;
    he->h_addr_list = addrs;
    return 0;
}

static int mw_gethostbyname2_r(const char *name, int af, struct hostent *he, char *buf,
                               size_t buflen, struct hostent **result, int *herr)
{
    struct addrinfo hints = { .ai_family = af, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_CANONNAME };
    struct addrinfo *list = NULL;
    int ret;

    *result = NULL;
    if (af != AF_INET && af != AF_INET6) {
        *herr = NETDB_INTERNAL;
        return EAFNOSUPPORT;
    }
    ret = mw_getaddrinfo(name, NULL, &hints, &list);
    if (ret != 0) {
        *herr = ret == EAI_AGAIN ? TRY_AGAIN : (ret == EAI_SYSTEM ? NETDB_INTERNAL
                                                                  : HOST_NOT_FOUND);
        return ret == EAI_SYSTEM ? errno : (ret == EAI_AGAIN ? EAGAIN : 0);
    }
    ret = mw_hostent_fill(list->ai_canonname && list->ai_canonname[0] ? list->ai_canonname : name,
                          af, list, he, buf, buflen);
    mw_freeaddrinfo(list);
    if (ret != 0) {
        *herr = NETDB_INTERNAL;
        return ret;
    }
    if (he->h_addr_list[0] == NULL) {
        *herr = NO_ADDRESS;
        return 0;
    }
    *herr = 0;
    *result = he;
    return 0;
}

static int mw_gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *he,
                              char *buf, size_t buflen, struct hostent **result, int *herr)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    char host[NI_MAXHOST];
    struct addrinfo ai = { 0 };
    int ret;

    *result = NULL;
    memset(&ss, 0, sizeof(ss));
    if (type == AF_INET && len == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;

        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, addr, 4);
        slen = sizeof(*in);
    } else if (type == AF_INET6 && len == 16) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, addr, 16);
        slen = sizeof(*in6);
    } else {
        *herr = NETDB_INTERNAL;
        return EINVAL;
    }
    ret = mw_getnameinfo((struct sockaddr *)&ss, slen, host, sizeof(host), NULL, 0, NI_NAMEREQD);
    if (ret != 0) {
        *herr = ret == EAI_AGAIN ? TRY_AGAIN : HOST_NOT_FOUND;
        return ret == EAI_AGAIN ? EAGAIN : 0;
    }
    ai.ai_family = type;
    ai.ai_addr = (struct sockaddr *)&ss;
    ret = mw_hostent_fill(host, type, &ai, he, buf, buflen);
    if (ret != 0) {
        *herr = NETDB_INTERNAL;
        return ret;
    }
    *herr = 0;
    *result = he;
    return 0;
}

/* The non-reentrant forms: one result per thread (glibc's is one per process). */
static __thread struct {
    struct hostent he;
    char buf[4096];
} mw_hostent_tls;

static struct hostent *mw_hostent_ret(int ret, struct hostent *result, int herr)
{
    h_errno = herr;
    if (result == NULL && ret != 0)
        errno = ret;
    return result;
}

static struct hostent *mw_gethostbyname2(const char *name, int af)
{
    struct hostent *r;
    int herr, ret = mw_gethostbyname2_r(name, af, &mw_hostent_tls.he, mw_hostent_tls.buf,
                                        sizeof(mw_hostent_tls.buf), &r, &herr);

    return mw_hostent_ret(ret, r, herr);
}

/* ------------------------------------------------------------------------------------------
 * fork: no lock held across it; the child opens its own control connections.
 */
static void mw_atfork_prepare(void)
{
    for (size_t i = 0; i < MW_NLOCKS; i++)
        pthread_mutex_lock(mw_locks[i]);
}

static void mw_atfork_parent(void)
{
    for (size_t i = MW_NLOCKS; i > 0; i--)
        pthread_mutex_unlock(mw_locks[i - 1]);
}

static void mw_atfork_child(void)
{
    struct mw_ctl *c, *next, *mine = mw_ctl_tls;

    __atomic_store_n(&mw_pid, getpid(), __ATOMIC_RELAXED);
    for (size_t i = MW_NLOCKS; i > 0; i--)
        pthread_mutex_unlock(mw_locks[i - 1]);
    /* every control connection is the parent's: a seqpacket stream shared by two processes
     * would mix their answers */
    pthread_mutex_lock(&mw_ctl_lock);
    for (c = mw_ctl_list; c != NULL; c = next) {
        next = c->next;
        if (c->fd >= 0) {
            if (mw_fd_in_table(c->fd))
                memset(&mw_fds[c->fd], 0, sizeof(mw_fds[c->fd]));
            libc_close(c->fd);
            c->fd = -1;
        }
        if (c != mine)
            free(c);               /* its thread does not exist here */
    }
    mw_ctl_list = mine;
    if (mine != NULL)
        mine->next = NULL;
    pthread_mutex_unlock(&mw_ctl_lock);
}

__attribute__((constructor)) static void mw_init(void)
{
    __atomic_store_n(&mw_pid, getpid(), __ATOMIC_RELAXED);
    pthread_atfork(mw_atfork_prepare, mw_atfork_parent, mw_atfork_child);
}

/* ------------------------------------------------------------------------------------------
 * The exported functions: one line each.
 */
MW_PUBLIC int socket(int d, int t, int p) { return mw_socket(d, t, p); }
MW_PUBLIC int socketpair(int d, int t, int p, int sv[2]) { return mw_socketpair(d, t, p, sv); }
MW_PUBLIC int connect(int fd, const struct sockaddr *a, socklen_t l) { return mw_connect(fd, a, l); }
MW_PUBLIC int bind(int fd, const struct sockaddr *a, socklen_t l) { return mw_bind(fd, a, l); }
MW_PUBLIC int listen(int fd, int backlog) { return mw_listen(fd, backlog); }
MW_PUBLIC int accept(int fd, struct sockaddr *a, socklen_t *l) { return mw_accept(fd, a, l); }
MW_PUBLIC int accept4(int fd, struct sockaddr *a, socklen_t *l, int f) { return mw_accept4(fd, a, l, f); }
MW_PUBLIC int getsockname(int fd, struct sockaddr *a, socklen_t *l)
{
    return mw_name(MWL_GETSOCKNAME, fd, a, l);
}
MW_PUBLIC int getpeername(int fd, struct sockaddr *a, socklen_t *l)
{
    return mw_name(MWL_GETPEERNAME, fd, a, l);
}
MW_PUBLIC int getsockopt(int fd, int lv, int n, void *v, socklen_t *l)
{
    return mw_getsockopt(fd, lv, n, v, l);
}
MW_PUBLIC int setsockopt(int fd, int lv, int n, const void *v, socklen_t l)
{
    return mw_setsockopt(fd, lv, n, v, l);
}
MW_PUBLIC int shutdown(int fd, int how) { return mw_shutdown(fd, how); }
MW_PUBLIC int close(int fd) { return mw_close(fd); }
MW_PUBLIC int close_range(unsigned int a, unsigned int b, int f) { return mw_close_range(a, b, f); }
MW_PUBLIC int dup(int fd) { return mw_dup(fd); }
MW_PUBLIC int dup2(int fd, int fd2) { return mw_dup3(fd, fd2, 0, true); }
MW_PUBLIC int dup3(int fd, int fd2, int flags) { return mw_dup3(fd, fd2, flags, false); }
MW_PUBLIC int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    void *arg;

    va_start(ap, cmd);
    arg = va_arg(ap, void *);      /* as glibc reads it: int or pointer */
    va_end(ap);
    return mw_fcntl(fd, cmd, arg);
}
MW_PUBLIC int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    void *arg;

    va_start(ap, cmd);
    arg = va_arg(ap, void *);
    va_end(ap);
    return mw_fcntl(fd, cmd, arg);
}
MW_PUBLIC int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    void *arg;

    va_start(ap, req);
    arg = va_arg(ap, void *);
    va_end(ap);
    return mw_ioctl(fd, req, arg);
}
MW_PUBLIC ssize_t read(int fd, void *b, size_t n) { return mw_read(fd, b, n); }
MW_PUBLIC ssize_t write(int fd, const void *b, size_t n) { return mw_write(fd, b, n); }
MW_PUBLIC ssize_t readv(int fd, const struct iovec *v, int n) { return mw_readv(fd, v, n); }
MW_PUBLIC ssize_t writev(int fd, const struct iovec *v, int n) { return mw_writev(fd, v, n); }
MW_PUBLIC ssize_t send(int fd, const void *b, size_t n, int f) { return mw_send(fd, b, n, f); }
MW_PUBLIC ssize_t recv(int fd, void *b, size_t n, int f) { return mw_recv(fd, b, n, f); }
MW_PUBLIC ssize_t sendto(int fd, const void *b, size_t n, int f, const struct sockaddr *a,
                         socklen_t l)
{
    return mw_sendto(fd, b, n, f, a, l);
}
MW_PUBLIC ssize_t recvfrom(int fd, void *b, size_t n, int f, struct sockaddr *a, socklen_t *l)
{
    return mw_recvfrom(fd, b, n, f, a, l);
}
MW_PUBLIC ssize_t sendmsg(int fd, const struct msghdr *m, int f) { return mw_sendmsg(fd, m, f); }
MW_PUBLIC ssize_t recvmsg(int fd, struct msghdr *m, int f) { return mw_recvmsg(fd, m, f); }
MW_PUBLIC int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int f)
{
    return mw_sendmmsg(fd, v, n, f);
}
MW_PUBLIC int recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int f, struct timespec *t)
{
    return mw_recvmmsg(fd, v, n, f, t);
}
/* _FORTIFY_SOURCE builds call these instead of read/recv/recvfrom */
MW_PUBLIC ssize_t __read_chk(int fd, void *b, size_t n, size_t bl)
{
    return n > bl ? libc___read_chk(fd, b, n, bl) : mw_read(fd, b, n);
}
MW_PUBLIC ssize_t __recv_chk(int fd, void *b, size_t n, size_t bl, int f)
{
    return n > bl ? libc___recv_chk(fd, b, n, bl, f) : mw_recv(fd, b, n, f);
}
MW_PUBLIC ssize_t __recvfrom_chk(int fd, void *b, size_t n, size_t bl, int f, struct sockaddr *a,
                                 socklen_t *l)
{
    return n > bl ? libc___recvfrom_chk(fd, b, n, bl, f, a, l) : mw_recvfrom(fd, b, n, f, a, l);
}
MW_PUBLIC int getaddrinfo(const char *n, const char *s, const struct addrinfo *h,
                          struct addrinfo **r)
{
    return mw_getaddrinfo(n, s, h, r);
}
MW_PUBLIC void freeaddrinfo(struct addrinfo *ai) { mw_freeaddrinfo(ai); }
MW_PUBLIC int getnameinfo(const struct sockaddr *sa, socklen_t sl, char *h, socklen_t hl, char *s,
                          socklen_t svl, int f)
{
    return mw_getnameinfo(sa, sl, h, hl, s, svl, f);
}
/* glibc's _r forms set h_errno too when they fail (callers such as CPython read it) */
MW_PUBLIC int gethostbyname2_r(const char *name, int af, struct hostent *he, char *buf,
                               size_t buflen, struct hostent **result, int *herr)
{
    int ret = mw_gethostbyname2_r(name, af, he, buf, buflen, result, herr);

    if (*result == NULL)
        h_errno = *herr;
    return ret;
}
MW_PUBLIC int gethostbyname_r(const char *name, struct hostent *he, char *buf, size_t buflen,
                              struct hostent **result, int *herr)
{
    int ret = mw_gethostbyname2_r(name, AF_INET, he, buf, buflen, result, herr);

    if (*result == NULL)
        h_errno = *herr;
    return ret;
}
MW_PUBLIC int gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *he,
                              char *buf, size_t buflen, struct hostent **result, int *herr)
{
    int ret = mw_gethostbyaddr_r(addr, len, type, he, buf, buflen, result, herr);

    if (*result == NULL)
        h_errno = *herr;
    return ret;
}
MW_PUBLIC struct hostent *gethostbyname2(const char *name, int af)
{
    return mw_gethostbyname2(name, af);
}
MW_PUBLIC struct hostent *gethostbyname(const char *name) { return mw_gethostbyname2(name, AF_INET); }
MW_PUBLIC struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type)
{
    struct hostent *r;
    int herr, ret = mw_gethostbyaddr_r(addr, len, type, &mw_hostent_tls.he, mw_hostent_tls.buf,
                                       sizeof(mw_hostent_tls.buf), &r, &herr);

    return mw_hostent_ret(ret, r, herr);
}
