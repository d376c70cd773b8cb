/*
 * test_daemon.c - upagerd and the client side of libupager, end to end.
 *
 * Every case starts the real daemon binary (UPAGERD_PATH) on a socket in
 * the test directory and talks to it through the library (daemon mode) or
 * through raw protocol records (proto.c is compiled in) when it needs to
 * send what the library never would. Client processes are forked, so a
 * crash, a hang (caught by tu_wait_child's timeout) or a signal is
 * observed from outside.
 *
 * Cases: basic (bytes, stats, unmap, advise, custom store refused),
 * version (both directions refuse a foreign version), validate (bad
 * records and descriptors are answered with exact errors), peercred
 * (another user refused unless in --allow-group), cycles (1,000
 * connect/crash cycles, 200 under ThreadSanitizer, leak no descriptor
 * or memory in the daemon),
 * fallback_local and fallback_sigbus (kill -9 the daemon mid-run), load
 * (32 processes x 4 threads), firecracker (a client doing exactly
 * Firecracker's handshake, with balloon-style MADV_DONTNEED while other
 * threads fault).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compat.h"
#include "proto.h"
#include "testutil.h"

#ifndef UPAGERD_PATH
#error "UPAGERD_PATH must name the upagerd binary"
#endif

/* ---- the daemon ---- */

struct daemon {
	pid_t pid;
	char sock[100];
	char fc[100];
};

static bool can_connect(const char *path, int type)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	bool ok = connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(s);
	return ok;
}

/* Starts upagerd on a fresh socket with extra arguments (NULL-ended). */
static void daemon_start(struct daemon *d, const char *name, ...)
{
	char *argv[32];
	int n = 0;
	snprintf(d->sock, sizeof(d->sock), "%s", tu_path(name));
	d->fc[0] = 0;
	argv[n++] = (char *)UPAGERD_PATH;
	argv[n++] = (char *)"--socket";
	argv[n++] = d->sock;
	argv[n++] = (char *)"--socket-mode";
	argv[n++] = (char *)"0666";
	va_list ap;
	va_start(ap, name);
	for (char *a; n < 30 && (a = va_arg(ap, char *));) {
		argv[n++] = a;
		if (!strcmp(a, "--firecracker") && n < 30) {
			a = va_arg(ap, char *);
			snprintf(d->fc, sizeof(d->fc), "%s", a);
			argv[n++] = a;
		}
	}
	va_end(ap);
	argv[n] = NULL;
	d->pid = fork();
	assert_true(d->pid >= 0);
	if (d->pid == 0) {
		/* Never outlive a test that died or timed out. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execv(UPAGERD_PATH, argv);
		_exit(127);
	}
	for (int i = 0; i < 500 && !can_connect(d->sock, SOCK_SEQPACKET); i++)
		tu_sleep_ms(10);
	assert_true(can_connect(d->sock, SOCK_SEQPACKET));
}

static void daemon_stop(struct daemon *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGTERM);
	int st;
	assert_true(tu_wait_child(d->pid, 30000, &st));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	d->pid = 0;
}

static void daemon_kill(struct daemon *d)
{
	kill(d->pid, SIGKILL);
	int st;
	assert_true(tu_wait_child(d->pid, 10000, &st));
	d->pid = 0;
}

/* ---- raw protocol ---- */

static int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(s >= 0);
	assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return s;
}

static uint8_t rx[UPAGER_PROTO_MAX_MSG];

/* Sends a record and returns the reply's status (*m gets the reply);
 * -ECONNRESET when the daemon closed instead. */
static int raw_call(int s, const void *buf, size_t len, const int *fds,
		    unsigned nfds, struct upager__msg *m)
{
	assert_int_equal(upager__proto_send(s, buf, len, fds, nfds), 0);
	int junk[4];
	unsigned nj;
	long n = upager__proto_recv(s, rx, sizeof(rx), junk, 0, &nj);
	if (n <= 0)
		return -ECONNRESET;
	int rc = upager__proto_decode(rx, (size_t)n, m);
	if (rc)
		return rc;
	return m->u.reply.status;
}

/* Whether the peer closed s: end of file, not data. A signal may
 * interrupt the wait (EINTR, seen under ASan): wait again. */
static bool raw_closed(int s)
{
	char b[16];
	ssize_t n;
	do
		n = recv(s, b, sizeof(b), 0);
	while (n < 0 && errno == EINTR);
	return n == 0;
}

/* Clients the daemon serves now (LIST over a control connection). */
static unsigned daemon_clients(const char *sock)
{
	int s = raw_connect(sock);
	uint8_t buf[64];
	struct upager__msg m;
	assert_int_equal(raw_call(s, buf, upager__enc_hello(buf, 1,
			 UPAGER_ROLE_CONTROL), NULL, 0, &m), 0);
	assert_int_equal(raw_call(s, buf, upager__enc_list(buf, 2, 0), NULL, 0,
				  &m), 0);
	close(s);
	return m.u.reply.total;
}

static bool wait_clients(const char *sock, unsigned want)
{
	for (int i = 0; i < 1000; i++) {
		if (daemon_clients(sock) == want)
			return true;
		tu_sleep_ms(10);
	}
	return false;
}

/* A userfaultfd as a client (or Firecracker) makes one. */
static int make_uffd(uint64_t features)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	assert_true(fd >= 0);
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	assert_int_equal(ioctl(fd, UFFDIO_API, &api), 0);
	return fd;
}

static upager_t *client_runtime(const char *sock, unsigned fallback)
{
	struct upager_config c = {
		.daemon_socket = sock, .daemon_fallback = fallback,
	};
	upager_t *up = NULL;
	int rc = upager_create(&c, &up);
	if (rc)
		fail_msg("upager_create(daemon %s): %s", sock, upager_strerror(rc));
	return up;
}

/* ---- basic ---- */

static int ctx_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	(void)ctx;
	tu_fill(buf, off, len);
	return 0;
}

static void test_basic(void **state)
{
	(void)state;
	struct daemon d;
	daemon_start(&d, "basic.sock", NULL);
	const uint64_t fsize = 8 * TU_MIB + 1234;
	const char *path = tu_make_file("basic.dat", fsize);
	upager_t *up = client_runtime(d.sock, UPAGER_DAEMON_FALLBACK_LOCAL);
	upager_store_t *s = tu_store_file(path, 0);

	/* Custom stores cannot be handed over: refused before any change. */
	struct upager_store_ops ops = { .read = ctx_read };
	upager_store_t *cs;
	TU_OK(upager_store_custom(&ops, NULL, &cs));
	void *addr = NULL;
	TU_ERR(upager_map(up, cs, 0, TU_MIB, NULL, &addr), -EOPNOTSUPP);
	assert_null(addr);
	upager_store_release(cs);

	/* 4 KiB units, an odd offset, past the end of the file. */
	size_t len1 = 3 * TU_MIB;
	uint64_t off1 = fsize - 2 * TU_MIB + 77;
	char *a = tu_map(up, s, off1, len1, 0, 0);
	struct tu_ref r1 = { .fd = tu_open(path), .offset = off1, .length = len1 };
	assert_true(tu_check(&r1, a, 0, tu_round_up(len1, 4096)));
	/* 64 KiB units with readahead. */
	char *b = tu_map(up, s, 4096, 4 * TU_MIB, 64 * TU_KIB, 256 * TU_KIB);
	struct tu_ref r2 = { .fd = r1.fd, .offset = 4096, .length = 4 * TU_MIB };
	assert_true(tu_check(&r2, b, 0, 4 * TU_MIB));

	struct upager_stats st = tu_stats(up, NULL);
	assert_true(st.faults > 0); /* counted by the daemon */
	assert_int_equal(st.regions, 2);
	assert_true(st.bytes_fetched >= 4 * TU_MIB);

	/* DONTNEED is the client's madvise; the daemon refetches. */
	memset(b, 0xee, 128 * TU_KIB);
	TU_OK(upager_advise(up, b, 128 * TU_KIB, UPAGER_ADV_DONTNEED));
	assert_true(tu_check(&r2, b, 0, 256 * TU_KIB));
	TU_OK(upager_advise(up, b + TU_MIB, TU_MIB, UPAGER_ADV_WILLNEED));
	TU_ERR(upager_advise(up, b + 4 * TU_MIB, 4096, UPAGER_ADV_WILLNEED),
	       -EINVAL);

	TU_ERR(upager_unmap(up, b + 4096), -EINVAL);
	TU_OK(upager_unmap(up, b));
	assert_int_equal(daemon_clients(d.sock), 1);
	upager_store_release(s);
	upager_destroy(up);
	assert_true(wait_clients(d.sock, 0));
	close(r1.fd);
	daemon_stop(&d);
}

/* ---- protocol versions ---- */

static void *fake_daemon(void *arg)
{
	int ls = *(int *)arg;
	int s = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	uint8_t buf[512];
	int fds[2];
	unsigned n;
	long len = upager__proto_recv(s, buf, sizeof(buf), fds, 2, &n);
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
	if (len > 0) {
		struct upager__msg m;
		upager__proto_decode(buf, (size_t)len, &m);
		size_t r = upager__enc_reply(buf, UPAGER_MSG_HELLO, m.seq, 0,
					     NULL, NULL, 0, 0);
		upager__enc_set_version(buf, UPAGER_PROTO_VERSION + 1);
		upager__proto_send(s, buf, r, NULL, 0);
	}
	tu_sleep_ms(100);
	close(s);
	return NULL;
}

static void test_version(void **state)
{
	(void)state;
	struct daemon d;
	daemon_start(&d, "version.sock", NULL);
	/* A client of another version: the daemon answers -EPROTO in its
	 * own version, then hangs up. */
	int s = raw_connect(d.sock);
	uint8_t buf[64];
	size_t len = upager__enc_hello(buf, 7, UPAGER_ROLE_CONTROL);
	upager__enc_set_version(buf, UPAGER_PROTO_VERSION + 1);
	struct upager__msg m;
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), -EPROTO);
	assert_int_equal(m.version, UPAGER_PROTO_VERSION);
	assert_int_equal(m.type, UPAGER_MSG_REPLY | UPAGER_MSG_HELLO);
	assert_true(raw_closed(s));
	close(s);
	daemon_stop(&d);

	/* A daemon of another version: upager_create refuses it. */
	const char *path = tu_path("fake.sock");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int ls = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(ls, 4), 0);
	pthread_t t;
	pthread_create(&t, NULL, fake_daemon, &ls);
	struct upager_config c = { .daemon_socket = path };
	upager_t *up = NULL;
	TU_ERR(upager_create(&c, &up), -EPROTO);
	assert_null(up);
	pthread_join(t, NULL);
	close(ls);
	/* No daemon at all. */
	c.daemon_socket = tu_path("nobody.sock");
	TU_ERR(upager_create(&c, &up), -ENOENT);
	c.daemon_socket = path;
	c.daemon_fallback = 2;
	TU_ERR(upager_create(&c, &up), -EINVAL);
}

/* ---- validation ---- */

static void test_validate(void **state)
{
	(void)state;
	struct daemon d;
	daemon_start(&d, "validate.sock", "--max-regions", "3", NULL);
	const char *path = tu_make_file("validate.dat", TU_MIB);
	uint8_t buf[128];
	struct upager__msg m;
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);

	/* A HELLO whose descriptor is not a userfaultfd. */
	int s = raw_connect(d.sock);
	size_t len = upager__enc_hello(buf, 1, UPAGER_ROLE_CLIENT);
	assert_int_equal(raw_call(s, buf, len, &p[0], 1, &m), -EBADF);
	assert_true(raw_closed(s));
	close(s);
	/* A request before HELLO. */
	s = raw_connect(d.sock);
	len = upager__enc_unmap(buf, 1, 4096);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), -EPROTO);
	assert_true(raw_closed(s));
	close(s);
	/* Garbage. */
	s = raw_connect(d.sock);
	memset(buf, 0x5a, 40);
	assert_int_equal(raw_call(s, buf, 40, NULL, 0, &m), -EPROTO);
	assert_true(raw_closed(s));
	close(s);

	/* A real client: a uffd and a registered range. */
	int uffd = make_uffd(UFFD_FEATURE_EVENT_REMOVE);
	size_t span = 256 * TU_KIB;
	char *mem = mmap(NULL, span, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	struct uffdio_register reg = {
		.range = { (uintptr_t)mem, span }, .mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	assert_int_equal(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
	s = raw_connect(d.sock);
	len = upager__enc_hello(buf, 1, UPAGER_ROLE_CLIENT);
	assert_int_equal(raw_call(s, buf, len, &uffd, 1, &m), 0);
	assert_int_equal(m.u.reply.version, UPAGER_PROTO_VERSION);
	int f = tu_open(path);
	uint64_t base = (uintptr_t)mem;
	/* Out of range fields: answered, the connection stays. */
	len = upager__enc_map(buf, 2, base + 100, 4096, 0, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), -EINVAL);
	len = upager__enc_map(buf, 3, base, 4096, 0, 0, 3000, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), -EINVAL);
	len = upager__enc_map(buf, 4, base, 4096, UINT64_MAX - 10, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), -EINVAL);
	len = upager__enc_map(buf, 5, base, 4096, 0, 0, 4096, 0x80);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), -EINVAL);
	/* Descriptors: missing, two, or not a file. */
	len = upager__enc_map(buf, 6, base, 4096, 0, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), -EBADF);
	int two[2] = { f, f };
	assert_int_equal(raw_call(s, buf, len, two, 2, &m), -EBADF);
	assert_int_equal(raw_call(s, buf, len, &p[0], 1, &m), -EINVAL);
	/* Valid, then overlapping, then the region limit. */
	len = upager__enc_map(buf, 7, base, 64 * TU_KIB, 0, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), 0);
	len = upager__enc_map(buf, 8, base + 60 * TU_KIB, 8192, 0, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), -EEXIST);
	len = upager__enc_map(buf, 9, base + 64 * TU_KIB, 4096, 0, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), 0);
	len = upager__enc_map(buf, 10, base + 68 * TU_KIB, 4096, 0, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), 0);
	len = upager__enc_map(buf, 11, base + 72 * TU_KIB, 4096, 0, 0, 4096, 0);
	assert_int_equal(raw_call(s, buf, len, &f, 1, &m), -ENOSPC);
	/* The pages served are the file's. */
	uint8_t want[4096];
	tu_fill(want, 12288, sizeof(want));
	assert_memory_equal(mem + 12288, want, sizeof(want));
	/* Bounds: unmap and advise only what was registered. */
	len = upager__enc_unmap(buf, 12, base + 4096);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), -EINVAL);
	len = upager__enc_advise(buf, 13, base + 60 * TU_KIB, 8192,
				 UPAGER_ADV_WILLNEED);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), -EINVAL);
	len = upager__enc_advise(buf, 14, base, 8192, UPAGER_ADV_DONTNEED);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), -EOPNOTSUPP);
	len = upager__enc_advise(buf, 15, base, 8192, UPAGER_ADV_WILLNEED);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), 0);
	len = upager__enc_unmap(buf, 16, base + 64 * TU_KIB);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), 0);
	len = upager__enc_stats(buf, 17);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), 0);
	assert_true(m.u.reply.st.faults >= 1);
	/* A second HELLO is a protocol error. */
	len = upager__enc_hello(buf, 18, UPAGER_ROLE_CONTROL);
	assert_int_equal(raw_call(s, buf, len, NULL, 0, &m), -EPROTO);
	assert_true(raw_closed(s));
	close(s);
	assert_true(wait_clients(d.sock, 0));
	munmap(mem, span);
	close(uffd);
	close(f);
	close(p[0]);
	close(p[1]);
	daemon_stop(&d);
}

/* ---- peer credentials ---- */

/* In a child running as nobody: the status of a HELLO (control role:
 * no userfaultfd needed) as exit code. */
static int hello_as_nobody(const char *sock)
{
	pid_t pid = fork();
	if (pid == 0) {
		if (setgid(65534) || setuid(65534))
			_exit(100);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
		int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)))
			_exit(101);
		uint8_t buf[64];
		struct upager__msg m;
		size_t len = upager__enc_hello(buf, 1, UPAGER_ROLE_CONTROL);
		if (upager__proto_send(s, buf, len, NULL, 0))
			_exit(102);
		int junk[1];
		unsigned nj;
		long n = upager__proto_recv(s, rx, sizeof(rx), junk, 0, &nj);
		if (n <= 0 || upager__proto_decode(rx, (size_t)n, &m))
			_exit(103);
		_exit(-m.u.reply.status);
	}
	int st;
	assert_true(tu_wait_child(pid, 30000, &st));
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static void test_peercred(void **state)
{
	(void)state;
	if (geteuid() != 0)
		tu_skip("needs root to run a client as another user");
	/* Let nobody reach the sockets, so that only the daemon's own
	 * check can refuse it. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", tu_path("x"));
	*strrchr(dir, '/') = 0;
	assert_int_equal(chmod(dir, 0711), 0);
	struct daemon d;
	daemon_start(&d, "cred.sock", NULL);
	assert_int_equal(hello_as_nobody(d.sock), EACCES);
	daemon_stop(&d);
	daemon_start(&d, "cred2.sock", "--allow-group", "65534", NULL);
	assert_int_equal(hello_as_nobody(d.sock), 0);
	daemon_stop(&d);
}

/* ---- connect/crash cycles ---- */

static unsigned count_fds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	unsigned n = 0;
	DIR *dir = opendir(path);
	assert_non_null(dir);
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

/* The daemon's descriptors once the last connection (ours, from LIST)
 * has been closed: the same count three times 50 ms apart. */
static unsigned settled_fds(pid_t pid)
{
	unsigned last = count_fds(pid), same = 0;
	for (int i = 0; i < 100 && same < 3; i++) {
		tu_sleep_ms(50);
		unsigned n = count_fds(pid);
		same = n == last ? same + 1 : 0;
		last = n;
	}
	return last;
}

static uint64_t rss_kib(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	uint64_t v = 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %lu", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* One client that maps, faults and dies without saying goodbye. */
static void crash_child(const char *sock, const char *path, unsigned i)
{
	pid_t pid = fork();
	if (pid)
		return;
	tu_child_default_signals();
	struct upager_config c = { .daemon_socket = sock };
	upager_t *up;
	if (upager_create(&c, &up))
		_exit(1);
	upager_store_t *s;
	void *a;
	if (upager_store_file(path, 0, &s) ||
	    upager_map(up, s, 0, 256 * TU_KIB, NULL, &a))
		_exit(2);
	volatile uint8_t *p = a;
	uint8_t want = tu_byte((i % 64) * 4096);
	if (p[(i % 64) * 4096] != want)
		_exit(3);
	if (i % 2)
		kill(getpid(), SIGKILL);
	_exit(0);
}

static void run_cycles(const char *sock, const char *path, unsigned n)
{
	const unsigned batch = 8;
	for (unsigned i = 0; i < n; i += batch) {
		for (unsigned k = 0; k < batch; k++)
			crash_child(sock, path, i + k);
		for (unsigned k = 0; k < batch; k++) {
			int st;
			pid_t pid = wait(&st);
			assert_true(pid > 0);
			char why[64];
			if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) &&
			    !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
				fail_msg("cycle %u: client %s", i,
					 tu_status_str(st, why, sizeof(why)));
		}
	}
}

/* Each cycle forks a client; under ThreadSanitizer a fork costs about
 * 0.1 s, so that build runs fewer (a leak of one descriptor per cycle
 * shows either way). */
#if defined(__SANITIZE_THREAD__)
#define CYCLES 200u
#else
#define CYCLES 1000u
#endif

static void test_cycles(void **state)
{
	(void)state;
	struct daemon d;
	daemon_start(&d, "cycles.sock", NULL);
	const char *path = tu_make_file("cycles.dat", TU_MIB);
	run_cycles(d.sock, path, 64); /* warm up allocator caches */
	assert_true(wait_clients(d.sock, 0));
	unsigned fds0 = settled_fds(d.pid);
	uint64_t rss0 = rss_kib(d.pid);
	run_cycles(d.sock, path, CYCLES);
	assert_true(wait_clients(d.sock, 0));
	unsigned fds1 = settled_fds(d.pid);
	uint64_t rss1 = rss_kib(d.pid);
	printf("daemon after %u connect/crash cycles: fds %u -> %u, "
	       "RSS %lu -> %lu KiB\n", CYCLES, fds0, fds1, rss0, rss1);
	assert_int_equal(fds1, fds0);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	/* Sanitizer allocators keep freed memory in quarantine: RSS says
	 * nothing here; LeakSanitizer checks the daemon's exit instead
	 * (daemon_stop asserts exit status 0). */
#else
	assert_true(rss1 < rss0 + 4096);
#endif
	daemon_stop(&d);
}

/* ---- the daemon dies ---- */

struct fb {
	char *base;
	size_t len;
	unsigned id;
	struct tu_ref *ref;
	atomic_uint *done;
	bool ok;
};

static void *fb_thread(void *arg)
{
	struct fb *f = arg;
	size_t pages = f->len / 4096;
	size_t *idx = malloc(pages * sizeof(*idx));
	tu_shuffle(idx, pages, 1000 + f->id, true);
	f->ok = true;
	for (size_t i = 0; i < pages && f->ok; i++) {
		f->ok = tu_check(f->ref, f->base, idx[i] * 4096, 4096);
		atomic_fetch_add(f->done, 1);
		if (i % 8 == 0)
			usleep(100);
	}
	free(idx);
	return NULL;
}

/* Child: 4 threads read every page in shuffled orders while the parent
 * kills the daemon (after the first 10% of the reads). */
static int fallback_local_child(const char *sock, const char *path, int tell)
{
	upager_t *up = client_runtime(sock, UPAGER_DAEMON_FALLBACK_LOCAL);
	upager_store_t *s = tu_store_file(path, 0);
	size_t len = 16 * TU_MIB;
	char *a = tu_map(up, s, 0, len, 0, 0);
	struct tu_ref ref = { .fd = tu_open(path), .offset = 0, .length = len };
	atomic_uint done = 0;
	struct fb f[4];
	pthread_t t[4];
	for (unsigned i = 0; i < 4; i++) {
		f[i] = (struct fb){ a, len, i, &ref, &done, false };
		pthread_create(&t[i], NULL, fb_thread, &f[i]);
	}
	while (atomic_load(&done) < 4 * len / 4096 / 10)
		usleep(200);
	char c = 'k';
	if (write(tell, &c, 1) != 1)
		return 10;
	bool ok = true;
	for (unsigned i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		ok = ok && f[i].ok;
	}
	/* Faults served here after the fallback are counted locally. */
	struct upager_stats st;
	upager_stats(up, a, &st);
	printf("child: %lu faults served locally after the daemon died\n",
	       (unsigned long)st.faults);
	if (!ok)
		return 1;
	if (st.faults == 0)
		return 2;
	upager_unmap(up, a);
	upager_store_release(s);
	upager_destroy(up);
	return 0;
}

static void test_fallback_local(void **state)
{
	(void)state;
	struct daemon d;
	daemon_start(&d, "fbl.sock", NULL);
	const char *path = tu_make_file("fbl.dat", 16 * TU_MIB);
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(p[0]);
		fflush(stdout);
		_exit(fallback_local_child(d.sock, path, p[1]));
	}
	close(p[1]);
	char c;
	assert_int_equal(read(p[0], &c, 1), 1);
	daemon_kill(&d);
	int st;
	char why[64];
	assert_true(tu_wait_child(pid, 120000, &st));
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail_msg("client: %s", tu_status_str(st, why, sizeof(why)));
	close(p[0]);
}

static void test_fallback_sigbus(void **state)
{
	(void)state;
	struct daemon d;
	daemon_start(&d, "fbs.sock", NULL);
	const char *path = tu_make_file("fbs.dat", 2 * TU_MIB);
	int up_[2], down[2];
	assert_int_equal(pipe(up_), 0);
	assert_int_equal(pipe(down), 0);
	pid_t pid = fork();
	if (pid == 0) {
		tu_child_default_signals();
		upager_t *up = client_runtime(d.sock, UPAGER_DAEMON_FALLBACK_SIGBUS);
		upager_store_t *s = tu_store_file(path, 0);
		char *a = tu_map(up, s, 0, 2 * TU_MIB, 0, 0);
		struct tu_ref ref = { .fd = tu_open(path), .length = 2 * TU_MIB };
		if (!tu_check(&ref, a, 0, TU_MIB))
			_exit(1);
		char c = 'r';
		if (write(up_[1], &c, 1) != 1 || read(down[0], &c, 1) != 1)
			_exit(2);
		volatile char x = a[TU_MIB + 8192]; /* SIGBUS here */
		(void)x;
		_exit(3);
	}
	char c;
	assert_int_equal(read(up_[0], &c, 1), 1);
	daemon_kill(&d);
	assert_int_equal(write(down[1], &c, 1), 1);
	int st;
	char why[64];
	assert_true(tu_wait_child(pid, 30000, &st));
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGBUS)
		fail_msg("client: %s, want SIGBUS", tu_status_str(st, why, sizeof(why)));
	close(up_[0]);
	close(up_[1]);
	close(down[0]);
	close(down[1]);
}

/* ---- load ---- */

struct ld {
	char *base;
	size_t len;
	unsigned id;
	struct tu_ref *ref;
	bool ok;
};

static void *load_thread(void *arg)
{
	struct ld *l = arg;
	size_t pages = l->len / 4096;
	size_t *idx = malloc(pages * sizeof(*idx));
	tu_shuffle(idx, pages, 77 + l->id, true);
	l->ok = true;
	for (size_t i = 0; i < pages && l->ok; i++)
		l->ok = tu_check(l->ref, l->base, idx[i] * 4096, 4096);
	free(idx);
	return NULL;
}

static int load_child(const char *sock, const char *path, unsigned i)
{
	upager_t *up = client_runtime(sock, UPAGER_DAEMON_FALLBACK_SIGBUS);
	upager_store_t *s = tu_store_file(path, 0);
	size_t len = TU_MIB;
	uint64_t off = (uint64_t)i * 192 * TU_KIB + 512;
	char *a = tu_map(up, s, off, len, 0, 0);
	struct tu_ref ref = { .fd = tu_open(path), .offset = off, .length = len };
	struct ld l[4];
	pthread_t t[4];
	for (unsigned k = 0; k < 4; k++) {
		l[k] = (struct ld){ a, len, k, &ref, false };
		pthread_create(&t[k], NULL, load_thread, &l[k]);
	}
	bool ok = true;
	for (unsigned k = 0; k < 4; k++) {
		pthread_join(t[k], NULL);
		ok = ok && l[k].ok;
	}
	upager_destroy(up);
	upager_store_release(s);
	return ok ? 0 : 1;
}

static void test_load(void **state)
{
	(void)state;
	struct daemon d;
	daemon_start(&d, "load.sock", NULL);
	const char *path = tu_make_file("load.dat", 8 * TU_MIB);
	enum { NPROC = 32 };
	pid_t pids[NPROC];
	uint64_t t0 = tu_now_ns();
	for (unsigned i = 0; i < NPROC; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			_exit(load_child(d.sock, path, i));
	}
	unsigned bad = 0;
	for (unsigned i = 0; i < NPROC; i++) {
		int st;
		char why[64];
		if (!tu_wait_child(pids[i], 120000, &st) || !WIFEXITED(st) ||
		    WEXITSTATUS(st)) {
			printf("client %u: %s\n", i, tu_status_str(st, why, sizeof(why)));
			bad++;
		}
	}
	printf("32 clients x 4 threads x 256 pages: %.2f s\n",
	       (double)(tu_now_ns() - t0) / 1e9);
	assert_int_equal(bad, 0);
	assert_true(wait_clients(d.sock, 0));
	daemon_stop(&d);
}

/* ---- Firecracker ---- */

struct fcmem {
	char *base;
	size_t size;
	uint64_t offset;
	/* 64 KiB chunks the balloon has taken: they read as zeros from
	 * then on (UPAGER_MAP_ZERO_REMOVED, as Firecracker expects). */
	atomic_uchar ballooned[4 * TU_MIB / (64 * TU_KIB)];
};

struct fct {
	struct fcmem *m;
	unsigned nm;
	int fd;
	unsigned id;
	atomic_bool *stop;
	bool ok;
};

static bool page_is_zero(const char *p)
{
	for (size_t i = 0; i < 4096; i++)
		if (p[i])
			return false;
	return true;
}

/* Whether every byte of the page is its snapshot byte or zero: a copy
 * that races the balloon's zap of the page sees part of each. */
static bool page_is_torn_zero(const uint8_t *have, const uint8_t *want)
{
	for (size_t i = 0; i < 4096; i++)
		if (have[i] && have[i] != want[i])
			return false;
	return true;
}

/* Guest reads: random pages, compared with the snapshot file; a page of
 * a chunk the balloon took may read as zeros instead (in part, when the
 * read races the zap), never anything else. */
static void *fc_reader(void *arg)
{
	struct fct *t = arg;
	uint64_t rs = 0x9e3779b97f4a7c15ull * (t->id + 1);
	uint8_t want[4096], have[4096];
	t->ok = true;
	for (unsigned i = 0; i < 20000 && t->ok && !atomic_load(t->stop); i++) {
		struct fcmem *m = &t->m[tu_rand(&rs) % t->nm];
		size_t pg = (size_t)(tu_rand(&rs) % (m->size / 4096)) * 4096;
		assert_int_equal(pread(t->fd, want, 4096, (off_t)(m->offset + pg)),
				 4096);
		memcpy(have, m->base + pg, 4096);
		bool taken = atomic_load(&m->ballooned[pg / (64 * TU_KIB)]);
		t->ok = memcmp(have, want, 4096) == 0 ||
			(taken && page_is_torn_zero(have, want));
	}
	return NULL;
}

/* The balloon: MADV_DONTNEED on random 64 KiB ranges. */
static void *fc_balloon(void *arg)
{
	struct fct *t = arg;
	uint64_t rs = 12345;
	t->ok = true;
	while (!atomic_load(t->stop)) {
		struct fcmem *m = &t->m[tu_rand(&rs) % t->nm];
		size_t off = (size_t)(tu_rand(&rs) % (m->size / (64 * TU_KIB))) *
			     64 * TU_KIB;
		atomic_store(&m->ballooned[off / (64 * TU_KIB)], 1);
		if (madvise(m->base + off, 64 * TU_KIB, MADV_DONTNEED))
			t->ok = false;
		usleep(200);
	}
	return NULL;
}

/* Does what Firecracker does on snapshot load with a UFFD backend, then
 * acts as the guest. Returns an exit code. */
static int fc_child(const char *sock, const char *memfile)
{
	/* Firecracker creates the uffd, non-blocking, and asks for REMOVE
	 * events (the balloon); registers guest memory for MISSING faults. */
	int uffd = make_uffd(UFFD_FEATURE_EVENT_REMOVE);
	static struct fcmem m[2] = {
		{ .size = 4 * TU_MIB, .offset = 0 },
		{ .size = 2 * TU_MIB, .offset = 4 * TU_MIB },
	};
	char json[512];
	size_t jl = 0;
	jl += (size_t)snprintf(json + jl, sizeof(json) - jl, "[");
	for (int i = 0; i < 2; i++) {
		m[i].base = mmap(NULL, m[i].size, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m[i].base == MAP_FAILED)
			return 10;
		struct uffdio_register reg = {
			.range = { (uintptr_t)m[i].base, m[i].size },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		if (ioctl(uffd, UFFDIO_REGISTER, &reg))
			return 11;
		jl += (size_t)snprintf(json + jl, sizeof(json) - jl,
			"%s{\"base_host_virt_addr\":%lu,\"size\":%zu,"
			"\"offset\":%lu,\"page_size\":4096}", i ? "," : "",
			(unsigned long)(uintptr_t)m[i].base, m[i].size,
			(unsigned long)m[i].offset);
	}
	jl += (size_t)snprintf(json + jl, sizeof(json) - jl, "]");
	/* Connect to the handler's stream socket and send the mappings
	 * with the descriptor, in one message. */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)))
		return 12;
	if (upager__proto_send(s, json, jl, &uffd, 1))
		return 13;
	int fd = open(memfile, O_RDONLY | O_CLOEXEC);
	/* Restore touches all of memory once. */
	uint8_t *want = malloc(m[0].size);
	for (int i = 0; i < 2; i++) {
		if (pread(fd, want, m[i].size, (off_t)m[i].offset) != (ssize_t)m[i].size ||
		    memcmp(m[i].base, want, m[i].size))
			return 14;
	}
	free(want);
	/* The guest runs while the balloon inflates. */
	atomic_bool stop = false;
	struct fct t[4];
	pthread_t th[4];
	for (unsigned i = 0; i < 4; i++) {
		t[i] = (struct fct){ m, 2, fd, i, &stop, false };
		pthread_create(&th[i], NULL, i == 3 ? fc_balloon : fc_reader, &t[i]);
	}
	for (unsigned i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	atomic_store(&stop, true);
	pthread_join(th[3], NULL);
	for (unsigned i = 0; i < 4; i++)
		if (!t[i].ok)
			return 20 + (int)i;
	/* What the balloon took reads as zeros, as Firecracker expects. */
	unsigned taken = 0;
	for (int i = 0; i < 2; i++)
		for (size_t c = 0; c < m[i].size / (64 * TU_KIB); c++) {
			if (!atomic_load(&m[i].ballooned[c]))
				continue;
			taken++;
			for (size_t p = 0; p < 64 * TU_KIB; p += 4096)
				if (!page_is_zero(m[i].base + c * 64 * TU_KIB + p))
					return 30;
		}
	return taken ? 0 : 31;
}

struct early_reader {
	const uint8_t *base;
	struct tu_ref ref;
	bool ok;
};

static void *early_read(void *arg)
{
	struct early_reader *e = arg;
	e->ok = tu_check(&e->ref, e->base, 0, e->ref.length);
	return NULL;
}

/* Firecracker resumes the VM right after the handshake, so its memory may
 * fault before the handler has added the regions. In process, through the
 * public API: a thread reads registered memory of an adopted descriptor
 * 100 ms before upager_space_add() covers it; it must wait and then read
 * the store's bytes. Such a fault was answered with UFFDIO_POISON (the
 * thread died of SIGBUS): seen once in the Firecracker test above, under
 * a loaded sanitizer run. */
static void test_firecracker_fault_before_regions(void **state)
{
	(void)state;
	size_t len = 1 * TU_MIB;
	const char *mem = tu_make_file("fc-early.mem", len);
	upager_t *up = tu_runtime(NULL);
	uint8_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(base != MAP_FAILED);
	int uffd = make_uffd(UFFD_FEATURE_POISON);
	struct uffdio_register reg = {
		.range = { (uintptr_t)base, len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	assert_int_equal(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
	upager_space_t *sp = NULL;
	TU_OK(upager_space_adopt(up, uffd, &sp));
	int fd = tu_open(mem);
	struct early_reader e = {
		.base = base,
		.ref = { .fd = fd, .length = len, .store_size = len },
	};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, early_read, &e), 0);
	tu_sleep_ms(100);
	upager_store_t *s = tu_store_file(mem, 0);
	struct upager_map_opts o = { .page_size = 4096 };
	TU_OK(upager_space_add(sp, (uintptr_t)base, len, s, 0, &o));
	upager_store_release(s);
	pthread_join(th, NULL);
	close(fd);
	assert_true(e.ok); /* the store's bytes, every one */
	upager_space_close(sp);
	munmap(base, len);
	upager_destroy(up);
}

static void test_firecracker(void **state)
{
	(void)state;
	const char *mem = tu_make_file("fc.mem", 6 * TU_MIB);
	struct daemon d;
	daemon_start(&d, "fcctl.sock", "--firecracker", tu_path("fc.sock"),
		     "--mem-file", mem, NULL);
	pid_t pid = fork();
	if (pid == 0)
		_exit(fc_child(d.fc, mem));
	int st;
	char why[64];
	assert_true(tu_wait_child(pid, 120000, &st));
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail_msg("firecracker client: %s", tu_status_str(st, why, sizeof(why)));
	/* The VM's exit (its pidfd) dropped it. */
	assert_true(wait_clients(d.sock, 0));
	/* A bad handshake is refused, and the daemon lives on. */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d.fc);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	const char *bad = "[{\"base_host_virt_addr\":4097,\"size\":4096,"
			  "\"offset\":0,\"page_size\":4096}]";
	assert_int_equal(send(s, bad, strlen(bad), 0), (ssize_t)strlen(bad));
	assert_true(raw_closed(s));
	close(s);
	assert_int_equal(daemon_clients(d.sock), 0);
	daemon_stop(&d);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_basic),
		cmocka_unit_test(test_version),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_peercred),
		cmocka_unit_test(test_cycles),
		cmocka_unit_test(test_fallback_local),
		cmocka_unit_test(test_fallback_sigbus),
		cmocka_unit_test(test_load),
		cmocka_unit_test(test_firecracker),
		cmocka_unit_test(test_firecracker_fault_before_regions),
	};
	signal(SIGPIPE, SIG_IGN);
	return tu_main(argc, argv, "daemon", tests,
		       sizeof(tests) / sizeof(tests[0]));
}
