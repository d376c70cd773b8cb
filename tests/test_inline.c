/*
 * test_inline.c - UPAGER_CFG_INLINE: faults served by the faulting thread
 * in a SIGBUS handler.
 *
 * Every unit read from several threads equals the file; a read stream
 * gets readahead from the workers without more faults; a store read
 * error reaches the faulting thread as SIGBUS (never zeros, never a
 * hang); a SIGBUS that is not the runtime's reaches the handler the
 * application had; the handler the application had is back after
 * upager_destroy; two runtimes serve their regions side by side; bad
 * input is refused. Write-back regions under a budget are covered by
 * test_writeback's rw_inline cases.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FILE_LEN (8 * TU_MIB + 12345) /* a partial last unit */

/* The application's own SIGBUS handler is testutil's catcher
 * (tu_sigbus_catch), installed before the runtime is created. */

/* ---- reads ---- */

static void test_inline_read_threads(void **state)
{
	(void)state;
	const char *path = tu_make_file("inline-read.dat", FILE_LEN);
	int fd = tu_open(path);
	struct tu_ref ref = { .fd = fd, .length = FILE_LEN,
			      .store_size = FILE_LEN };
	static const size_t pages[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };
	for (size_t k = 0; k < 3; k++) {
		size_t page = pages[k];
		upager_t *up = tu_inline_runtime();
		upager_store_t *s = tu_store_file(path, 0);
		uint8_t *a = tu_map(up, s, 0, FILE_LEN, page, 0);
		upager_store_release(s);
		size_t nunits = tu_round_up(FILE_LEN, page) / page;
		/* Random order from 4 threads, then every byte again. */
		tu_scan_units(&ref, a, page, nunits, 4, true, page);
		assert_true(tu_check(&ref, a, 0, FILE_LEN));
		struct upager_stats st = tu_stats_settled(up, a);
		tu_print_stats("inline", &st);
		assert_true(st.faults >= 1);
		assert_int_equal(st.pages_installed, nunits);
		assert_int_equal(st.read_errors, 0);
		assert_int_equal(st.resident_bytes, nunits * page);
		TU_OK(upager_unmap(up, a));
		upager_destroy(up);
	}
	close(fd);
}

/* A sequential scan reads runs of units per fault; a scan of units
 * already there must not fault at all. */
static void test_inline_sequential_runs(void **state)
{
	(void)state;
	const char *path = tu_make_file("inline-seq.dat", FILE_LEN);
	int fd = tu_open(path);
	struct tu_ref ref = { .fd = fd, .length = FILE_LEN,
			      .store_size = FILE_LEN };
	upager_t *up = tu_inline_runtime();
	upager_store_t *s = tu_store_file(path, 0);
	uint8_t *a = tu_map(up, s, 0, FILE_LEN, 4 * TU_KIB, 0);
	upager_store_release(s);
	TU_OK(upager_advise(up, a, FILE_LEN, UPAGER_ADV_SEQUENTIAL));
	assert_true(tu_check(&ref, a, 0, FILE_LEN));
	/* Settled: the workers' readahead installs are counted just after
	 * the pages are there. */
	struct upager_stats st = tu_stats_settled(up, a);
	size_t nunits = tu_round_up(FILE_LEN, 4096) / 4096;
	tu_print_stats("seq", &st);
	assert_int_equal(st.pages_installed, nunits);
	/* A fault reads 64 KiB (16 units) itself; one that meets a
	 * worker's readahead read in flight waits for it in the handler,
	 * counted once. */
	if (st.faults * 8 > nunits)
		fail_msg("%" PRIu64 " faults for a sequential scan of %zu units",
			 st.faults, nunits);
	assert_true(tu_check(&ref, a, 0, FILE_LEN));
	assert_int_equal(tu_stats(up, a).faults, st.faults);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	close(fd);
}

/* A read stream of a file region gets readahead from the workers: after
 * two faults in order, units far past what those faults read themselves
 * arrive with no fault. Then threads scanning in order from different
 * places (racing for the readahead window, and taking over units queued
 * for a worker that has not started them) read every byte right. */
static void test_inline_readahead(void **state)
{
	(void)state;
	const char *path = tu_make_file("inline-ra.dat", FILE_LEN);
	int fd = tu_open(path);
	struct tu_ref ref = { .fd = fd, .length = FILE_LEN,
			      .store_size = FILE_LEN };
	size_t page = 4 * TU_KIB;
	upager_t *up = tu_inline_runtime();
	upager_store_t *s = tu_store_file(path, 0);
	uint8_t *a = tu_map(up, s, 0, FILE_LEN, page, TU_MIB);
	upager_store_release(s);
	assert_true(tu_check(&ref, a, 0, page));        /* unit 0: alone */
	assert_true(tu_check(&ref, a, page, page));     /* 1: a stream */
	uint64_t faults = tu_stats(up, a).faults;
	assert_int_equal(faults, 2);
	/* The second fault read 16 units (64 KiB) itself; the window (1 MiB,
	 * 256 units, less the one left out halfway) comes from the workers. */
	size_t want = (17 + 200) * page;
	uint64_t t0 = tu_now_ns();
	struct upager_stats st = tu_stats(up, a);
	while (st.resident_bytes < want &&
	       tu_now_ns() - t0 < 5ull * 1000000000ull) {
		usleep(1000);
		st = tu_stats(up, a);
	}
	tu_print_stats("readahead", &st);
	if (st.resident_bytes < want)
		fail_msg("resident %" PRIu64 " bytes after a stream's two faults, "
			 "%zu expected from readahead", st.resident_bytes, want);
	assert_int_equal(st.faults, faults);
	assert_true(tu_check(&ref, a, 0, FILE_LEN));
	assert_int_equal(tu_stats(up, a).read_errors, 0);
	TU_OK(upager_unmap(up, a));

	for (size_t k = 0; k < 3; k++) {
		size_t pg = k == 2 ? 64 * TU_KIB : page;
		size_t n = tu_round_up(FILE_LEN, pg) / pg;
		s = tu_store_file(path, 0);
		a = tu_map(up, s, 0, FILE_LEN, pg, k == 0 ? TU_MIB : 4 * TU_MIB);
		upager_store_release(s);
		if (k == 1)
			TU_OK(upager_advise(up, a, FILE_LEN,
					    UPAGER_ADV_SEQUENTIAL));
		tu_scan_units(&ref, a, pg, n, 4, false, 77 + k);
		assert_true(tu_check(&ref, a, 0, FILE_LEN));
		st = tu_stats_settled(up, a);
		tu_print_stats("readahead, 4 threads", &st);
		assert_int_equal(st.pages_installed, n);
		assert_int_equal(st.read_errors, 0);
		assert_int_equal(st.resident_bytes, n * pg);
		TU_OK(upager_unmap(up, a));
	}
	upager_destroy(up);
	close(fd);
}

/* The documented limit: the kernel's own access to a page not yet there
 * fails with EFAULT instead of waiting; once the page is there it works. */
static void test_inline_syscall_efault(void **state)
{
	(void)state;
	const char *path = tu_make_file("inline-efault.dat", 64 * TU_KIB);
	upager_t *up = tu_inline_runtime();
	upager_store_t *s = tu_store_file(path, 0);
	uint8_t *a = tu_map(up, s, 0, 64 * TU_KIB, 4 * TU_KIB, 0);
	upager_store_release(s);
	int p[2];
	assert_int_equal(pipe(p), 0);
	errno = 0;
	assert_int_equal(write(p[1], a + 8192, 16), -1);
	assert_int_equal(errno, EFAULT);
	volatile uint8_t v = a[8192]; /* faulted in by the thread */
	(void)v;
	assert_int_equal(write(p[1], a + 8192, 16), 16);
	uint8_t got[16], want[16];
	assert_int_equal(read(p[0], got, 16), 16);
	tu_fill(want, 8192, 16);
	assert_memory_equal(got, want, 16);
	close(p[0]);
	close(p[1]);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
}

/* ---- errors ---- */

/* A read error: the thread gets SIGBUS, again on every touch of the unit;
 * other units read fine; once the store reads again, the next touch
 * fetches the unit. The store's descriptor is made unreadable by
 * putting a write-only one in its place. */
static void test_inline_read_error_sigbus(void **state)
{
	(void)state;
	const char *path = tu_make_file("inline-err.dat", 256 * TU_KIB);
	int fd = tu_open(path);
	struct tu_ref ref = { .fd = fd, .length = 256 * TU_KIB,
			      .store_size = 256 * TU_KIB };
	int sfd = tu_open(path);
	struct sigaction old;
	tu_sigbus_catch(&old);
	upager_t *up = tu_inline_runtime();
	upager_store_t *s = NULL;
	TU_OK(upager_store_fd(sfd, 0, &s));
	uint8_t *a = tu_map(up, s, 0, 256 * TU_KIB, 16 * TU_KIB, 0);
	TU_OK(upager_advise(up, a, 256 * TU_KIB, UPAGER_ADV_RANDOM));
	assert_true(tu_check(&ref, a, 0, 16 * TU_KIB)); /* unit 0 is in */

	int wfd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(wfd >= 0);
	int rfd = dup(sfd);
	assert_true(rfd >= 0);
	assert_int_equal(dup2(wfd, sfd), sfd); /* reads now fail: EBADF */
	uint8_t v = 0;
	uint8_t *bad = a + 5 * 16 * TU_KIB + 100;
	if (!tu_read_raises_sigbus(bad, &v))
		fail_msg("unreadable unit read as 0x%02x, no SIGBUS", v);
	assert_int_equal(tu_sigbus_count, 1);
	assert_true(tu_read_raises_sigbus(bad + 4096, &v));
	assert_int_equal(tu_sigbus_count, 2);
	struct upager_stats st = tu_stats(up, a);
	assert_true(st.read_errors >= 1);
	/* A unit already there is untouched by the error. */
	assert_true(tu_check(&ref, a, 0, 16 * TU_KIB));

	assert_int_equal(dup2(rfd, sfd), sfd); /* readable again */
	if (tu_read_raises_sigbus(bad, &v))
		fail_msg("unit still raises SIGBUS once the store reads");
	assert_true(tu_check(&ref, a, 0, 256 * TU_KIB));
	assert_int_equal(tu_sigbus_count, 2);

	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	upager_store_release(s);
	assert_true(tu_sigbus_catching());
	assert_int_equal(sigaction(SIGBUS, &old, NULL), 0);
	close(wfd);
	close(rfd);
	close(sfd);
	close(fd);
}

/* A SIGBUS that is not a fault of the runtime's (a shared mapping past
 * its file's end) goes to the handler the application had. */
static void test_inline_foreign_sigbus_passed_on(void **state)
{
	(void)state;
	const char *path = tu_make_file("inline-foreign.dat", 4096);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	uint8_t *m = mmap(NULL, 8192, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	struct sigaction old;
	tu_sigbus_catch(&old);
	upager_t *up = tu_inline_runtime();
	assert_false(tu_sigbus_catching()); /* the runtime's is in front */
	uint8_t v = 0;
	assert_true(tu_read_raises_sigbus(m + 4096, &v)); /* past the end */
	assert_int_equal(tu_sigbus_count, 1);
	assert_ptr_equal(tu_sigbus_addr, m + 4096);
	upager_destroy(up);
	assert_true(tu_sigbus_catching());
	assert_int_equal(sigaction(SIGBUS, &old, NULL), 0);
	munmap(m, 8192);
	close(fd);
}

/* Two inline runtimes at once, each serving its own region; destroying
 * one leaves the other working. */
static void test_inline_two_runtimes(void **state)
{
	(void)state;
	const char *path = tu_make_file("inline-two.dat", TU_MIB);
	int fd = tu_open(path);
	struct tu_ref ref = { .fd = fd, .length = TU_MIB, .store_size = TU_MIB };
	upager_t *u1 = tu_inline_runtime(), *u2 = tu_inline_runtime();
	upager_store_t *s = tu_store_file(path, 0);
	uint8_t *a1 = tu_map(u1, s, 0, TU_MIB, 4 * TU_KIB, 0);
	uint8_t *a2 = tu_map(u2, s, 0, TU_MIB, 64 * TU_KIB, 0);
	upager_store_release(s);
	assert_true(tu_check(&ref, a1, 0, TU_MIB / 2));
	assert_true(tu_check(&ref, a2, 0, TU_MIB / 2));
	upager_destroy(u1);
	assert_true(tu_check(&ref, a2, 0, TU_MIB));
	assert_int_equal(tu_stats_settled(u2, a2).pages_installed,
			 TU_MIB / (64 * TU_KIB));
	upager_destroy(u2);
	close(fd);
}

static int nop_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	(void)ctx;
	(void)off;
	memset(buf, 0, len);
	return 0;
}

static int nop_size(void *ctx, uint64_t *size)
{
	(void)ctx;
	*size = TU_MIB;
	return 0;
}

static void test_inline_bad_input(void **state)
{
	(void)state;
	upager_t *up = NULL;
	struct upager_config c = { .flags = UPAGER_CFG_INLINE,
				   .daemon_socket = "/nonexistent" };
	TU_ERR(upager_create(&c, &up), -EINVAL);
	assert_null(up);
	c = (struct upager_config){ .flags = 0x80000000u };
	TU_ERR(upager_create(&c, &up), -EINVAL);

	up = tu_inline_runtime();
	struct upager_store_ops ops = { .read = nop_read, .size = nop_size };
	upager_store_t *s = NULL;
	TU_OK(upager_store_custom(&ops, NULL, &s));
	void *a = NULL;
	TU_ERR(upager_map(up, s, 0, TU_MIB, NULL, &a), -EOPNOTSUPP);
	assert_null(a);
	upager_store_release(s);
	/* An lz4 store alone is served inline (test_lz4); stacked over a
	 * store whose reads may block, it is not. */
	upager_store_t *f = NULL;
	const char *path = tu_make_file("inline-bad.dat", TU_MIB);
	f = tu_store_file(path, 0);
	TU_OK(upager_store_lz4(NULL, f, &s));
	TU_ERR(upager_map(up, s, 0, TU_MIB, NULL, &a), -EOPNOTSUPP);
	assert_null(a);
	upager_store_release(s);
	upager_store_release(f);
	struct upager_stats st = tu_stats(up, NULL);
	assert_int_equal(st.regions, 0);
	upager_destroy(up);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_inline_read_threads),
	cmocka_unit_test(test_inline_sequential_runs),
	cmocka_unit_test(test_inline_readahead),
	cmocka_unit_test(test_inline_syscall_efault),
	cmocka_unit_test(test_inline_read_error_sigbus),
	cmocka_unit_test(test_inline_foreign_sigbus_passed_on),
	cmocka_unit_test(test_inline_two_runtimes),
	cmocka_unit_test(test_inline_bad_input),
};

TU_MAIN("inline", tests)
