/*
 * mwload: the load programs of `make bench`.
 *
 * Each mode runs both ends of one exchange over loopback in two processes (the server is a
 * forked child, so under `mwcomms run` both ends are forwarded and live in the INS) and prints
 * one JSON object with what it measured on stdout. The program is the same natively and
 * forwarded; only where its sockets live differs.
 *
 *   mwload rr      [--size B] [--count N] [--warmup N]      TCP request/response round trips
 *   mwload udp     [--size B] [--count N] [--warmup N]      UDP request/response round trips
 *   mwload bulk    [--streams S] [--seconds T] [--chunk B]  TCP throughput over S streams
 *   mwload connect [--seconds T]                            connect + accept + close rate
 *   mwload hold    [--conns N] [--port P]                   N idle connections (see below)
 *   mwload accept  [--port P] [--conns N]                   accept and hold, until stdin ends
 *   mwload wait    --port P [--seconds T]                   until 127.0.0.1:P accepts
 *
 * hold talks to its caller: it prints {"phase":"start",...} with its pids and waits for a line
 * on stdin; then it opens the connections (to its own forked server, or with --port to a
 * server that `mwload accept` runs elsewhere), prints {"phase":"ready","conns":n,...} (n may fall
 * short of N: the errno that stopped it is reported) and holds them until stdin reaches end of
 * file. The caller measures memory between the two.
 *
 * A failure prints {"error": "..."} and exits 1. Latencies are in microseconds, throughput in
 * bytes per second, rates per second.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
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

struct opts {
	size_t size;		/* request/response size, bytes */
	long count;		/* measured round trips */
	long warmup;		/* round trips before measuring */
	int streams;		/* bulk: parallel connections */
	double seconds;		/* bulk, connect, wait: duration */
	size_t chunk;		/* bulk: bytes per write */
	long conns;		/* hold: connections to open */
	int port;		/* wait: the port */
};

static void fail(const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printf("{\"error\": \"%s (errno %d: %s)\"}\n", msg, errno, strerror(errno));
	fflush(stdout);
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A TCP listener or UDP socket bound to 127.0.0.1 on a port the kernel picks (@port). */
static int bound_socket(int type, struct sockaddr_in *addr)
{
	socklen_t len = sizeof(*addr);
	int one = 1;
	int fd;

	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, type, 0);
	if (fd < 0)
		fail("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)addr, sizeof(*addr)) < 0)
		fail("bind");
	if (type == SOCK_STREAM && listen(fd, 4096) < 0)
		fail("listen");
	if (getsockname(fd, (struct sockaddr *)addr, &len) < 0)
		fail("getsockname");
	return fd;
}

/* A connected TCP socket to @addr, Nagle off; -errno when connect fails. */
static int dial(const struct sockaddr_in *addr)
{
	int one = 1;
	int fd, err;

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* Read exactly @len bytes: 0, -1 at end of file, -errno on error. */
static int read_full(int fd, char *buf, size_t len)
{
	while (len) {
		ssize_t n = read(fd, buf, len);

		if (n == 0)
			return -1;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= n;
	}
	return 0;
}

static int write_full(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= n;
	}
	return 0;
}

/* Fork a server child running @fn(@fd, @arg); the parent closes nothing. */
static pid_t spawn(void (*fn)(int, void *), int fd, void *arg)
{
	pid_t pid = fork();

	if (pid < 0)
		fail("fork");
	if (pid == 0) {
		fn(fd, arg);
		_exit(0);
	}
	return pid;
}

static void reap(pid_t pid)
{
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Percentile @p (0..100) of the sorted @v[@n]; 0 without samples. */
static double pct(const double *v, long n, double p)
{
	long i = (long)(p / 100.0 * n);

	if (n <= 0)
		return 0;
	return v[i < n ? i : n - 1];
}

static void print_latency(const char *mode, const struct opts *o, double *lat, long n,
			  long lost, double elapsed)
{
	double sum = 0;
	long i;

	qsort(lat, n, sizeof(*lat), cmp_double);
	for (i = 0; i < n; i++)
		sum += lat[i];
	printf("{\"mode\": \"%s\", \"size\": %zu, \"count\": %ld, \"lost\": %ld, "
	       "\"p50_us\": %.3f, \"p90_us\": %.3f, \"p99_us\": %.3f, \"mean_us\": %.3f, "
	       "\"min_us\": %.3f, \"max_us\": %.3f, \"per_s\": %.1f}\n",
	       mode, o->size, n, lost, pct(lat, n, 50), pct(lat, n, 90), pct(lat, n, 99),
	       n ? sum / n : 0, n ? lat[0] : 0, n ? lat[n - 1] : 0, elapsed > 0 ? n / elapsed : 0);
}

static void rr_server(int lfd, void *arg)
{
	size_t size = *(size_t *)arg;
	char *buf = malloc(size);
	int one = 1;
	int fd = accept(lfd, NULL, NULL);

	if (fd < 0 || !buf)
		_exit(1);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	while (read_full(fd, buf, size) == 0)
		if (write_full(fd, buf, size) < 0)
			break;
	_exit(0);
}

static int mode_rr(const struct opts *o)
{
	struct sockaddr_in addr;
	size_t size = o->size;
	int lfd = bound_socket(SOCK_STREAM, &addr);
	pid_t srv = spawn(rr_server, lfd, &size);
	double *lat = calloc(o->count, sizeof(*lat));
	char *buf = calloc(1, o->size);
	double start, t0;
	long i;
	int fd, err;

	if (!lat || !buf)
		fail("calloc");
	fd = dial(&addr);
	if (fd < 0) {
		errno = -fd;
		fail("connect");
	}
	for (i = 0; i < o->warmup; i++)
		if (write_full(fd, buf, size) < 0 || read_full(fd, buf, size) < 0)
			fail("warm-up round trip");
	start = now();
	for (i = 0; i < o->count; i++) {
		t0 = now();
		err = write_full(fd, buf, size);
		if (!err)
			err = read_full(fd, buf, size);
		if (err) {
			errno = err < -1 ? -err : EPIPE;
			fail("round trip %ld", i);
		}
		lat[i] = (now() - t0) * 1e6;
	}
	print_latency("rr", o, lat, o->count, 0, now() - start);
	close(fd);
	reap(srv);
	free(buf);
	free(lat);
	return 0;
}

static void udp_server(int fd, void *arg)
{
	size_t size = *(size_t *)arg;
	char *buf = malloc(size + 1);
	struct sockaddr_in peer;

	if (!buf)
		_exit(1);
	for (;;) {
		socklen_t len = sizeof(peer);
		ssize_t n = recvfrom(fd, buf, size + 1, 0, (struct sockaddr *)&peer, &len);

		if (n < 0 && errno != EINTR)
			_exit(1);
		if (n >= 0)
			sendto(fd, buf, n, 0, (struct sockaddr *)&peer, len);
	}
}

static int mode_udp(const struct opts *o)
{
	struct sockaddr_in addr;
	size_t size = o->size;
	int sfd = bound_socket(SOCK_DGRAM, &addr);
	pid_t srv = spawn(udp_server, sfd, &size);
	struct timeval tv = { .tv_sec = 1 };
	double *lat = calloc(o->count, sizeof(*lat));
	char *buf = calloc(1, o->size + 1);
	long i, n = 0, lost = 0;
	double start, t0;
	int fd;

	if (!lat || !buf)
		fail("calloc");
	close(sfd);
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		fail("udp socket");
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	start = now();
	for (i = 0; i < o->warmup + o->count; i++) {
		if (i == o->warmup)
			start = now();
		t0 = now();
		if (send(fd, buf, size, 0) != (ssize_t)size)
			fail("send");
		if (recv(fd, buf, size + 1, 0) != (ssize_t)size) {
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				fail("recv");
			lost++;
			continue;
		}
		if (i >= o->warmup)
			lat[n++] = (now() - t0) * 1e6;
	}
	print_latency("udp", o, lat, n, lost, now() - start);
	close(fd);
	reap(srv);
	free(buf);
	free(lat);
	return 0;
}

struct bulk_result {
	unsigned long long bytes;
	double first;		/* when the first byte arrived */
	double last;		/* when the last stream ended */
	int ended;		/* streams that reached end of file */
};

struct bulk_args {
	int streams;		/* connections to accept */
	int out;		/* the result pipe's write end */
};

/* Accept every stream, read them all in one epoll loop until each ends. */
static void bulk_server(int lfd, void *arg)
{
	const struct bulk_args *a = arg;
	struct bulk_result r = { 0 };
	size_t cap = 1 << 18;
	char *buf = malloc(cap);
	struct epoll_event ev;
	int ep = epoll_create1(0);
	ssize_t n;
	int i;

	if (!buf || ep < 0)
		_exit(1);
	for (i = 0; i < a->streams; i++) {
		int fd = accept(lfd, NULL, NULL);

		if (fd < 0)
			_exit(1);
		ev.events = EPOLLIN;
		ev.data.fd = fd;
		epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	}
	while (r.ended < a->streams) {
		if (epoll_wait(ep, &ev, 1, -1) != 1)
			continue;
		n = read(ev.data.fd, buf, cap);

		if (n > 0) {
			if (!r.bytes)
				r.first = now();
			r.bytes += n;
		} else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
			epoll_ctl(ep, EPOLL_CTL_DEL, ev.data.fd, NULL);
			close(ev.data.fd);
			r.ended++;
			r.last = now();
		}
	}
	if (write(a->out, &r, sizeof(r)) != sizeof(r))
		_exit(1);
	_exit(0);
}

static int mode_bulk(const struct opts *o)
{
	struct sockaddr_in addr;
	struct bulk_args args = { .streams = o->streams };
	struct bulk_result r;
	pid_t writers[64];
	int lfd = bound_socket(SOCK_STREAM, &addr);
	int res[2];
	double deadline;
	pid_t srv;
	int i;

	if (o->streams < 1 || o->streams > 64)
		fail("--streams must be 1..64");
	if (pipe(res) < 0)
		fail("pipe");
	args.out = res[1];
	srv = spawn(bulk_server, lfd, &args);
	close(res[1]);
	close(lfd);
	deadline = now() + o->seconds;
	for (i = 0; i < o->streams; i++) {
		writers[i] = fork();
		if (writers[i] < 0)
			fail("fork");
		if (writers[i] == 0) {
			char *buf = calloc(1, o->chunk);
			int fd = dial(&addr);

			if (fd < 0 || !buf)
				_exit(1);
			while (now() < deadline)
				if (write_full(fd, buf, o->chunk) < 0)
					_exit(1);
			close(fd);
			_exit(0);
		}
	}
	for (i = 0; i < o->streams; i++) {
		int st;

		if (waitpid(writers[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
			fail("writer %d failed", i);
	}
	if (read(res[0], &r, sizeof(r)) != sizeof(r))
		fail("no result from the reader");
	waitpid(srv, NULL, 0);
	printf("{\"mode\": \"bulk\", \"streams\": %d, \"chunk\": %zu, \"bytes\": %llu, "
	       "\"seconds\": %.4f, \"bytes_per_s\": %.1f}\n", o->streams, o->chunk, r.bytes,
	       r.last - r.first, r.bytes / (r.last - r.first));
	return 0;
}

static void connect_server(int lfd, void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept(lfd, NULL, NULL);

		if (fd < 0 && errno != EINTR && errno != ECONNABORTED)
			_exit(1);
		if (fd >= 0)
			close(fd);
	}
}

/* connect, wait for the server's accept and close (end of file), close: per second. */
static int mode_connect(const struct opts *o)
{
	struct sockaddr_in addr;
	int lfd = bound_socket(SOCK_STREAM, &addr);
	pid_t srv = spawn(connect_server, lfd, NULL);
	double start = now(), end = start + o->seconds, t;
	long n = 0;
	char c;

	close(lfd);
	while ((t = now()) < end) {
		int fd = dial(&addr);

		if (fd < 0) {
			errno = -fd;
			fail("connect %ld", n);
		}
		if (read(fd, &c, 1) != 0)
			fail("expected end of file after the server's close");
		close(fd);
		n++;
	}
	printf("{\"mode\": \"connect\", \"count\": %ld, \"seconds\": %.4f, \"per_s\": %.1f}\n",
	       n, t - start, n / (t - start));
	reap(srv);
	return 0;
}

/* Accept until the parent says how many connections it opened (@ctl), then say so (@ack). */
static void hold_server(int lfd, void *arg)
{
	int *pipes = arg;
	struct pollfd p[2] = { { .fd = lfd, .events = POLLIN }, { .fd = pipes[0], .events = POLLIN } };
	long accepted = 0, want = -1;

	for (;;) {
		if (want >= 0 && accepted >= want)
			break;
		if (poll(p, 2, -1) < 0)
			continue;
		if (p[0].revents & POLLIN) {
			if (accept(lfd, NULL, NULL) >= 0)
				accepted++;
			else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS)
				break;
		}
		if ((p[1].revents & POLLIN) && want < 0) {
			if (read(pipes[0], &want, sizeof(want)) != sizeof(want))
				_exit(1);
			p[1].fd = -1;
		}
	}
	if (write(pipes[1], &accepted, sizeof(accepted)) != sizeof(accepted))
		_exit(1);
	/* hold every socket until the parent ends us */
	for (;;)
		pause();
}

/* Let this process hold @n more fds than it has (as far as the hard limit allows). */
static void nofile_at_least(long n)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= (rlim_t)n)
		return;
	rl.rlim_cur = (rlim_t)n;
	if (rl.rlim_max < rl.rlim_cur)
		rl.rlim_max = rl.rlim_cur;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/*
 * hold: without --port, both ends here (a forked server accepts); with --port, only the
 * client side, to a server elsewhere (`mwload accept`), e.g. natively in the INS's network
 * namespace, so that each connection is one forwarded socket.
 */
static int mode_hold(const struct opts *o)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(o->port),
				    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int ctl[2], ack[2], pipes[2];
	long opened = 0, accepted = -1;
	int stop_errno = 0;
	char line[64];
	pid_t srv = 0;
	int lfd;

	nofile_at_least((o->port ? 1 : 2) * o->conns + 256);
	if (!o->port) {
		lfd = bound_socket(SOCK_STREAM, &addr);
		if (pipe(ctl) < 0 || pipe(ack) < 0)
			fail("pipe");
		pipes[0] = ctl[0];
		pipes[1] = ack[1];
		srv = spawn(hold_server, lfd, pipes);
		close(lfd);
		printf("{\"phase\": \"start\", \"pids\": [%d, %d]}\n", (int)getpid(), (int)srv);
	} else {
		printf("{\"phase\": \"start\", \"pids\": [%d]}\n", (int)getpid());
	}
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		goto out_reap;
	while (opened < o->conns) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd < 0) {
			stop_errno = errno;
			break;
		}
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
			stop_errno = errno;
			close(fd);
			break;
		}
		opened++;
	}
	if (srv && (write(ctl[1], &opened, sizeof(opened)) != sizeof(opened) ||
		    read(ack[0], &accepted, sizeof(accepted)) != sizeof(accepted)))
		fail("the server child died");
	printf("{\"phase\": \"ready\", \"mode\": \"hold\", \"conns\": %ld, \"accepted\": %ld, "
	       "\"wanted\": %ld, \"stopped_by\": \"%s\"}\n", opened, accepted, o->conns,
	       stop_errno ? strerror(stop_errno) : "");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
		;
out_reap:
	if (srv)
		reap(srv);
	return 0;
}

/* accept: listen on 127.0.0.1:--port (0: any), say which, accept and hold every connection
 * until stdin reaches end of file. */
static int mode_accept(const struct opts *o)
{
	struct sockaddr_in addr;
	struct pollfd p[2] = { { .events = POLLIN }, { .fd = 0, .events = POLLIN } };
	long accepted = 0;
	char buf[64];

	nofile_at_least(o->conns + 256);
	p[0].fd = bound_socket(SOCK_STREAM, &addr);
	fcntl(p[0].fd, F_SETFL, O_NONBLOCK);
	printf("{\"phase\": \"listening\", \"port\": %d, \"pids\": [%d]}\n",
	       ntohs(addr.sin_port), (int)getpid());
	fflush(stdout);
	for (;;) {
		if (poll(p, 2, -1) < 0)
			continue;
		/* every connection waiting, so none is left behind when stdin ends */
		while ((p[0].revents & POLLIN) && p[0].fd >= 0) {
			if (accept(p[0].fd, NULL, NULL) >= 0)
				accepted++;
			else if (errno == EMFILE || errno == ENFILE)
				p[0].fd = -1;	/* full: hold what we have */
			else
				break;		/* EAGAIN: none left */
		}
		if (p[1].revents & (POLLIN | POLLHUP)) {
			if (read(0, buf, sizeof(buf)) <= 0)
				break;
		}
	}
	printf("{\"mode\": \"accept\", \"accepted\": %ld}\n", accepted);
	return 0;
}

static int mode_wait(const struct opts *o)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(o->port),
				    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	double end = now() + o->seconds;
	int fd;

	while ((fd = dial(&addr)) < 0) {
		if (now() > end) {
			errno = -fd;
			fail("nothing accepts on port %d", o->port);
		}
		usleep(20000);
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { .size = 64, .count = 10000, .warmup = 1000, .streams = 1,
			  .seconds = 2, .chunk = 65536, .conns = 1000 };
	const char *mode;
	int i;

	if (argc < 2)
		fail("usage: mwload rr|udp|bulk|connect|hold|wait [--option value]...");
	mode = argv[1];
	for (i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];

		if (!strcmp(k, "--size"))
			o.size = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--count"))
			o.count = strtol(v, NULL, 0);
		else if (!strcmp(k, "--warmup"))
			o.warmup = strtol(v, NULL, 0);
		else if (!strcmp(k, "--streams"))
			o.streams = atoi(v);
		else if (!strcmp(k, "--seconds"))
			o.seconds = atof(v);
		else if (!strcmp(k, "--chunk"))
			o.chunk = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--conns"))
			o.conns = strtol(v, NULL, 0);
		else if (!strcmp(k, "--port"))
			o.port = atoi(v);
		else
			fail("unknown option %s", k);
	}
	if (i != argc)
		fail("option %s needs a value", argv[i]);
	if (o.size < 1 || o.count < 1 || o.chunk < 1 || o.seconds <= 0)
		fail("sizes, counts and durations must be positive");
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(mode, "rr"))
		return mode_rr(&o);
	if (!strcmp(mode, "udp"))
		return mode_udp(&o);
	if (!strcmp(mode, "bulk"))
		return mode_bulk(&o);
	if (!strcmp(mode, "connect"))
		return mode_connect(&o);
	if (!strcmp(mode, "hold"))
		return mode_hold(&o);
	if (!strcmp(mode, "accept"))
		return mode_accept(&o);
	if (!strcmp(mode, "wait"))
		return mode_wait(&o);
	fail("unknown mode %s", mode);
	return 1;
}
