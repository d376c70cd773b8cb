/*
 * test_migrate.c - the remote store, the page server and vm-migrate.
 *
 * remote_*: a page server over a buffer in this process and remote stores
 * reading from it over loopback TCP: bytes compared with the buffer, the
 * push stream with its bounded cache, the push-first map (order checked
 * block by block), protocol version refusal in both
 * directions, and a server that goes away (SIGBUS, never zeros).
 * mig_*: the vm-migrate demo run end to end with a 64 MiB guest in every
 * mode; the demo exits 0 only when the guest's final checksum equals the
 * host model's, 3 when a guest page could not be fetched (SIGBUS).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define BUF_SIZE (8 * TU_MIB)
#define BLOCK (64 * TU_KIB)

/* ---- helpers ---- */

static int listen_local(char port[16])
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 16), 0);
	socklen_t sl = sizeof(sin);
	getsockname(fd, (struct sockaddr *)&sin, &sl);
	snprintf(port, 16, "%d", ntohs(sin.sin_port));
	return fd;
}

static char *pattern_buf(void)
{
	char *b = malloc(BUF_SIZE);
	assert_non_null(b);
	tu_fill(b, 0, BUF_SIZE);
	return b;
}

struct served {
	int lfd;
	char port[16];
	char *buf;
	upager_page_server_t *srv;
};

static void serve(struct served *s, size_t block)
{
	s->lfd = listen_local(s->port);
	s->buf = pattern_buf();
	struct upager_page_server_opts so = { .block_size = block };
	TU_OK(upager_page_server_mem(s->lfd, s->buf, BUF_SIZE, &so, &s->srv));
}

static void unserve(struct served *s)
{
	upager_page_server_stop(s->srv);
	close(s->lfd);
	free(s->buf);
}

/* ---- remote store ---- */

static void remote_roundtrip(void **state)
{
	(void)state;
	struct served s;
	serve(&s, BLOCK);
	upager_store_t *st;
	TU_ERR(upager_store_remote(NULL, s.port, NULL, &st), -EINVAL);
	TU_OK(upager_store_remote("127.0.0.1", s.port, NULL, &st));
	struct upager_remote_stats rs;
	TU_OK(upager_store_remote_stats(st, &rs));
	assert_int_equal(rs.size, BUF_SIZE);
	assert_int_equal(rs.block_size, BLOCK);

	upager_t *up = tu_runtime(&(struct upager_config){ .workers = 4 });
	char *r = tu_map(up, st, 0, BUF_SIZE, BLOCK, 0);
	/* Touch units in a scattered order, then compare every byte. */
	for (size_t u = 0; u < BUF_SIZE / BLOCK; u += 7)
		assert_int_equal(r[u * BLOCK + 5], s.buf[u * BLOCK + 5]);
	assert_memory_equal(r, s.buf, BUF_SIZE);
	TU_OK(upager_store_remote_stats(st, &rs));
	assert_int_equal(rs.demand_reads, BUF_SIZE / BLOCK);
	assert_int_equal(rs.demand_bytes, BUF_SIZE);
	assert_int_equal(rs.broken, 0);
	/* A read past the end is refused before touching the network. */
	char tmp[16];
	TU_ERR(upager_store_remote_read(st, tmp, sizeof(tmp), BUF_SIZE - 8),
	       -EINVAL);
	TU_OK(upager_unmap(up, r));
	upager_store_release(st);
	upager_destroy(up);
	struct upager_page_server_stats ps;
	TU_OK(upager_page_server_stats(s.srv, &ps));
	assert_int_equal(ps.reads, BUF_SIZE / BLOCK);
	unserve(&s);
}

struct push_ctx {
	upager_t *up;
	char *region;
};

static void advise_pushed(void *arg, uint64_t off, size_t len)
{
	struct push_ctx *c = arg;
	upager_advise(c->up, c->region + off, len, UPAGER_ADV_WILLNEED);
}

static void remote_push(void **state)
{
	(void)state;
	struct served s;
	serve(&s, BLOCK);
	struct push_ctx c;
	c.up = tu_runtime(&(struct upager_config){ .workers = 4 });
	/* A cache of 4 blocks: the push must stall and resume on it. */
	struct upager_remote_opts ro = {
		.cache_bytes = 4 * BLOCK, .on_pushed = advise_pushed, .arg = &c,
	};
	upager_store_t *st;
	TU_OK(upager_store_remote("localhost", s.port, &ro, &st));
	c.region = tu_map(c.up, st, 0, BUF_SIZE, BLOCK, 0);
	/* One fault before the push: the stream restarts after it. */
	assert_int_equal(c.region[BUF_SIZE / 2], s.buf[BUF_SIZE / 2]);
	TU_OK(upager_store_remote_push(st));
	TU_OK(upager_store_remote_push(st)); /* a second call does nothing */
	uint64_t end = tu_now_ns() + 30ull * 1000000000ull;
	struct upager_stats us;
	do {
		tu_sleep_ms(5);
		us = tu_stats(c.up, c.region);
		assert_true(tu_now_ns() < end);
	} while (us.pages_installed < BUF_SIZE / BLOCK);
	struct upager_remote_stats rs;
	TU_OK(upager_store_remote_stats(st, &rs));
	assert_int_equal(rs.demand_reads, 1);
	assert_true(rs.cache_reads >= BUF_SIZE / BLOCK - 1 - rs.pushed_dropped);
	assert_true(rs.cache_blocks <= 4);
	assert_memory_equal(c.region, s.buf, BUF_SIZE);
	struct upager_page_server_stats ps;
	TU_OK(upager_page_server_stats(s.srv, &ps));
	assert_true(ps.restarts >= 1);
	assert_int_equal(ps.pushed_blocks + ps.reads, BUF_SIZE / BLOCK);
	TU_OK(upager_unmap(c.up, c.region));
	upager_store_release(st);
	upager_destroy(c.up);
	unserve(&s);
}

/* Order in which pushed blocks reached the store. */
struct push_log {
	_Atomic unsigned n;
	uint64_t block[BUF_SIZE / BLOCK];
};

static void log_pushed(void *arg, uint64_t off, size_t len)
{
	struct push_log *l = arg;
	assert_int_equal(len, BLOCK);
	unsigned i = atomic_fetch_add(&l->n, 1);
	if (i < BUF_SIZE / BLOCK)
		l->block[i] = off / BLOCK;
}

static void set_bit8(uint8_t *m, unsigned b)
{
	m[b / 8] |= (uint8_t)(1u << (b % 8));
}

/* The push-first map: its blocks (those also in the push map) are pushed
 * before any other, starting after the last demand read; then the rest. */
static void remote_push_first(void **state)
{
	(void)state;
	enum { NB = BUF_SIZE / BLOCK };
	struct served s;
	serve(&s, BLOCK);
	uint8_t first[NB / 8] = { 0 }, map[NB / 8];
	memset(map, 0xff, sizeof(map));
	map[90 / 8] &= (uint8_t)~(1u << (90 % 8)); /* never pushed */
	const unsigned hot[] = { 5, 40, 41, 42, 43, 44, 45, 46, 47, 90, 127 };
	for (unsigned i = 0; i < sizeof(hot) / sizeof(hot[0]); i++)
		set_bit8(first, hot[i]);
	uint64_t n;
	TU_ERR(upager_page_server_set_push_first(NULL, first, NB), -EINVAL);
	TU_ERR(upager_page_server_set_push_first(s.srv, first, NB - 1), -EINVAL);
	TU_ERR(upager_page_server_set_push_first(s.srv, first, NB + 1), -EINVAL);
	TU_ERR(upager_page_server_pushed_first(NULL, &n), -EINVAL);
	TU_ERR(upager_page_server_pushed_first(s.srv, NULL), -EINVAL);
	TU_OK(upager_page_server_set_push_first(s.srv, NULL, 0));
	TU_OK(upager_page_server_set_push_first(s.srv, first, NB));
	TU_OK(upager_page_server_set_push_map(s.srv, map, NB));

	static struct push_log log;
	atomic_store(&log.n, 0);
	struct upager_remote_opts ro = {
		.cache_bytes = BUF_SIZE, .on_pushed = log_pushed, .arg = &log,
	};
	upager_store_t *st;
	TU_OK(upager_store_remote("127.0.0.1", s.port, &ro, &st));
	/* A demand read first: the stream starts at the next hot block. */
	char *got = malloc(BUF_SIZE);
	assert_non_null(got);
	TU_OK(upager_store_remote_read(st, got + 100 * BLOCK, BLOCK, 100 * BLOCK));
	TU_OK(upager_store_remote_push(st));
	struct upager_remote_stats rs;
	uint64_t end = tu_now_ns() + 30ull * 1000000000ull;
	do {
		tu_sleep_ms(5);
		TU_OK(upager_store_remote_stats(st, &rs));
		assert_true(tu_now_ns() < end);
	} while (!rs.push_done);
	/* Every block but 90 (outside the push map) and 100 (read). */
	assert_int_equal(atomic_load(&log.n), NB - 2);
	const uint64_t want_first[] = { 127, 5, 40, 41, 42, 43, 44, 45, 46, 47 };
	for (unsigned i = 0; i < 10; i++)
		assert_int_equal(log.block[i], want_first[i]);
	/* Then the others, in order from the end of the hot run. */
	uint64_t b = 48;
	for (unsigned i = 10; i < NB - 2; i++, b = (b + 1) % NB) {
		while (b == 90 || b == 100 || b == 127 || b == 5 ||
		       (b >= 40 && b <= 47))
			b = (b + 1) % NB;
		assert_int_equal(log.block[i], b);
	}
	TU_OK(upager_page_server_pushed_first(s.srv, &n));
	assert_int_equal(n, 10);
	/* The bytes: pushed blocks from the cache, 90 on demand. */
	for (unsigned i = 0; i < NB; i++)
		if (i != 100)
			TU_OK(upager_store_remote_read(st, got + i * BLOCK, BLOCK,
						       (uint64_t)i * BLOCK));
	assert_memory_equal(got, s.buf, BUF_SIZE);
	TU_OK(upager_store_remote_stats(st, &rs));
	assert_int_equal(rs.demand_reads, 2);
	assert_int_equal(rs.cache_reads, NB - 2);
	struct upager_page_server_stats ps;
	TU_OK(upager_page_server_stats(s.srv, &ps));
	assert_int_equal(ps.pushed_blocks, NB - 2);
	free(got);
	upager_store_release(st);
	unserve(&s);
}

/* A server that answers any HELLO with a version-2 WELCOME. */
static void *fake_v2_server(void *arg)
{
	int lfd = *(int *)arg;
	for (int i = 0; i < 2; i++) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			return NULL;
		char hello[48];
		ssize_t n = recv(fd, hello, sizeof(hello), MSG_WAITALL);
		(void)n;
		uint8_t w[32] = { 0x55, 0x50, 0x52, 0x50, 2, 0, 2, 0 };
		w[17] = 0x10;      /* offset: a size */
		w[26] = 0x01;      /* arg: 64 KiB block */
		ssize_t k = send(fd, w, sizeof(w), MSG_NOSIGNAL);
		(void)k;
		tu_sleep_ms(50);
		close(fd);
	}
	return NULL;
}

static void remote_version(void **state)
{
	(void)state;
	/* An old client meets a newer server. */
	char port[16];
	int lfd = listen_local(port);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, fake_v2_server, &lfd), 0);
	upager_store_t *st = NULL;
	TU_ERR(upager_store_remote("127.0.0.1", port, NULL, &st), -EPROTONOSUPPORT);
	assert_null(st);
	shutdown(lfd, SHUT_RDWR);
	pthread_join(t, NULL);
	close(lfd);

	/* A newer client meets this server: refused with a clear error. */
	struct served s;
	serve(&s, BLOCK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons((uint16_t)atoi(s.port)) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	uint8_t h[48] = { 0x55, 0x50, 0x52, 0x50, 2, 0, 1, 0 };
	h[12] = 16;
	h[40] = 1;
	assert_int_equal(send(fd, h, sizeof(h), MSG_NOSIGNAL), (ssize_t)sizeof(h));
	uint8_t r[32];
	assert_int_equal(recv(fd, r, sizeof(r), MSG_WAITALL), (ssize_t)sizeof(r));
	assert_int_equal(r[4], 1);           /* the server's version */
	assert_int_equal(r[6], 3);           /* ERROR */
	assert_int_equal(r[24], EPROTONOSUPPORT);
	close(fd);
	struct upager_page_server_stats ps;
	for (int i = 0; i < 100; i++) {
		TU_OK(upager_page_server_stats(s.srv, &ps));
		if (ps.refused)
			break;
		tu_sleep_ms(10);
	}
	assert_int_equal(ps.refused, 1);
	unserve(&s);

	/* Nobody listening: the error says so. */
	lfd = listen_local(port);
	close(lfd);
	TU_ERR(upager_store_remote("127.0.0.1", port, NULL, &st), -ECONNREFUSED);
}

/* The server's process dies while a region still misses pages: the next
 * fault raises SIGBUS in the faulting thread, never zeros. The server runs
 * in a child forked before this process starts any thread (forking a
 * threaded process is unsafe under ThreadSanitizer). */
static sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_seen;

static void on_bus(int sig)
{
	(void)sig;
	bus_seen = 1;
	siglongjmp(bus_jmp, 1);
}

static void remote_dies(void **state)
{
	(void)state;
	int portp[2], quit[2];
	assert_int_equal(pipe(portp), 0);
	assert_int_equal(pipe(quit), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct served s;
		serve(&s, BLOCK);
		char c;
		if (write(portp[1], s.port, sizeof(s.port)) != sizeof(s.port))
			_exit(1);
		if (read(quit[0], &c, 1) < 0)
			_exit(1);
		_exit(0); /* dies with its connections open: no goodbye */
	}
	char port[16];
	assert_int_equal(read(portp[0], port, sizeof(port)), (ssize_t)sizeof(port));
	char *want = pattern_buf();
	upager_t *up = tu_runtime(NULL);
	upager_store_t *st;
	TU_OK(upager_store_remote("127.0.0.1", port, NULL, &st));
	volatile char *r = tu_map(up, st, 0, BUF_SIZE, BLOCK, 0);
	assert_int_equal(r[0], want[0]);
	assert_int_equal(r[BLOCK + 1], want[BLOCK + 1]);
	assert_int_equal(write(quit[1], "q", 1), 1);
	int status;
	assert_true(tu_wait_child(pid, 10000, &status));

	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_bus;
	sigaction(SIGBUS, &sa, &old);
	volatile char got = 0;
	if (sigsetjmp(bus_jmp, 1) == 0)
		got = r[3 * BLOCK + 7]; /* the server is gone */
	sigaction(SIGBUS, &old, NULL);
	if (!bus_seen)
		fail_msg("read %d from a page whose server is dead, want SIGBUS",
			 got);
	struct upager_remote_stats rs;
	TU_OK(upager_store_remote_stats(st, &rs));
	assert_int_equal(rs.broken, 1);
	/* Already-present pages still read correctly. */
	assert_int_equal(r[BLOCK + 1], want[BLOCK + 1]);
	TU_OK(upager_unmap(up, (void *)r));
	upager_store_release(st);
	upager_destroy(up);
	free(want);
}

/* ---- vm-migrate end to end ---- */

/* Runs vm-migrate with @args; returns its exit status and the output. */
static int run_demo(const char *args, char *out, size_t cap)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "%s run --mem 64M --migrate-after 300 "
				   "--run-after 300 %s 2>&1", VM_MIGRATE, args);
	printf("$ %s\n", cmd);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	fputs(out, stdout);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void expect_migration(const char *args)
{
	static char out[1 << 16];
	int rc = run_demo(args, out, sizeof(out));
	assert_int_equal(rc, 0);
	assert_non_null(strstr(out, "checksum OK"));
	assert_null(strstr(out, "MISMATCH"));
}

static void mig_stopcopy(void **state)
{
	(void)state;
	expect_migration("--mode stop-copy");
}

static void mig_precopy(void **state)
{
	(void)state;
	expect_migration("--mode precopy");
}

static void mig_postcopy(void **state)
{
	(void)state;
	static char out[1 << 16];
	int rc = run_demo("--mode postcopy", out, sizeof(out));
	assert_int_equal(rc, 0);
	assert_non_null(strstr(out, "checksum OK"));
	/* The source sampled the guest's hot units and pushed them first. */
	const char *h = strstr(out, "hot pages (sampled");
	assert_non_null(h);
	unsigned long hot = 0, first = 0;
	assert_int_equal(sscanf(strchr(h, ')') + 1, "%lu, pushed first %lu",
				&hot, &first), 2);
	assert_true(hot > 0);
	assert_true(first <= hot);
}

static void mig_hybrid(void **state)
{
	(void)state;
	expect_migration("--mode hybrid");
}

static void mig_process(void **state)
{
	(void)state;
	expect_migration("--mode postcopy --no-kvm");
}

static void mig_killsrc(void **state)
{
	(void)state;
	static char out[1 << 16];
	/* Without the push, the guest's final scan must fetch the pages it
	 * never touched, from a source that is dead by then. */
	int rc = run_demo("--mode postcopy --no-push --kill-source-after 50",
			  out, sizeof(out));
	assert_int_equal(rc, 3);
	assert_non_null(strstr(out, "SIGBUS"));
	assert_null(strstr(out, "checksum OK"));
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(remote_roundtrip),
	cmocka_unit_test(remote_push),
	cmocka_unit_test(remote_push_first),
	cmocka_unit_test(remote_version),
	cmocka_unit_test(remote_dies),
	cmocka_unit_test(mig_stopcopy),
	cmocka_unit_test(mig_precopy),
	cmocka_unit_test(mig_postcopy),
	cmocka_unit_test(mig_hybrid),
	cmocka_unit_test(mig_process),
	cmocka_unit_test(mig_killsrc),
};

TU_MAIN("migrate", tests)
