/*
 * test_sigbus.c - a store read error reaches the faulting thread as
 * SIGBUS: never zeros, never a hang, and only for the units whose read
 * failed; the runtime keeps serving every other unit.
 *
 * The store here is custom: its read fails with -EIO when the requested
 * range touches a "bad" 4 KiB block, until it is healed. The child
 * process tests fork before any runtime exists in the parent, so the
 * child may create its own runtime; the parent waits with a timeout so a
 * hang fails the test. The in-process test catches the SIGBUS with
 * testutil's catcher (sigsetjmp/siglongjmp).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define STORE_SIZE (TU_MIB)
#define REGION_LEN (64 * 4096)

static const size_t bad_blocks[] = { 5, 17, 40 };
#define NBAD (sizeof(bad_blocks) / sizeof(bad_blocks[0]))

struct flaky {
	atomic_bool healed;
	atomic_uint_fast64_t failed;
};

static bool touches_bad(uint64_t off, size_t len)
{
	for (size_t i = 0; i < NBAD; i++) {
		uint64_t a = bad_blocks[i] * 4096, b = a + 4096;
		if (off < b && off + len > a)
			return true;
	}
	return false;
}

static int flaky_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct flaky *f = ctx;
	if (!atomic_load(&f->healed) && touches_bad(off, len)) {
		atomic_fetch_add(&f->failed, 1);
		return -EIO;
	}
	tu_fill(buf, off, len);
	return 0;
}

static int flaky_size(void *ctx, uint64_t *size)
{
	(void)ctx;
	*size = STORE_SIZE;
	return 0;
}

static upager_store_t *flaky_store(struct flaky *f)
{
	struct upager_store_ops ops = { .read = flaky_read,
					.size = flaky_size };
	upager_store_t *s = NULL;
	atomic_init(&f->healed, false);
	atomic_init(&f->failed, 0);
	if (upager_store_custom(&ops, f, &s))
		return NULL;
	return s;
}

static const struct tu_ref ref = { .fd = -1, .offset = 0,
				   .length = REGION_LEN,
				   .store_size = STORE_SIZE };

/* Whether unit u of a region with @page units holds a bad block. */
static bool unit_bad(size_t u, size_t page)
{
	return touches_bad(u * page, page);
}

/* ---- in a child process ---- */

enum child_exit {
	CHILD_NO_RUNTIME = 10,
	CHILD_NO_MAP = 11,
	CHILD_BAD_CONTENT = 12,
	CHILD_SURVIVED = 13,
};

/* Runs in the child: maps the flaky store, checks every good unit, then
 * touches bad unit @bad_unit, which must kill it with SIGBUS. */
static void child_main(size_t page, size_t readahead, bool willneed,
		       size_t bad_unit)
{
	tu_child_default_signals();
	upager_t *up = NULL;
	if (upager_create(NULL, &up))
		_exit(CHILD_NO_RUNTIME);
	struct flaky f;
	upager_store_t *s = flaky_store(&f);
	struct upager_map_opts o = { .page_size = page,
				     .readahead = readahead };
	void *addr = NULL;
	if (!s || upager_map(up, s, 0, REGION_LEN, &o, &addr))
		_exit(CHILD_NO_MAP);
	const volatile uint8_t *base = addr;
	if (willneed) {
		if (upager_advise(up, addr, REGION_LEN, UPAGER_ADV_WILLNEED))
			_exit(CHILD_NO_MAP);
		tu_sleep_ms(100);
	}
	for (size_t u = 0; u < REGION_LEN / page; u++)
		if (!unit_bad(u, page) &&
		    !tu_check(&ref, addr, u * page, page))
			_exit(CHILD_BAD_CONTENT);
	/* Any byte of the bad unit: here its last one. */
	uint8_t v = base[bad_unit * page + page - 1];
	fprintf(stderr, "child: bad unit %zu read as 0x%02x\n", bad_unit, v);
	_exit(CHILD_SURVIVED);
}

static void expect_child_sigbus(size_t page, size_t readahead, bool willneed,
				size_t bad_unit)
{
	char buf[64];
	int status = 0;

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		child_main(page, readahead, willneed, bad_unit);
	if (!tu_wait_child(pid, 30000, &status))
		fail_msg("child hung (page %zu): killed after 30 s", page);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGBUS)
		fail_msg("child (page %zu, readahead %zu, willneed %d) ended "
			 "with %s, want SIGBUS (exit 12: good units read "
			 "wrong, 13: bad unit read without a signal)",
			 page, readahead, willneed,
			 tu_status_str(status, buf, sizeof(buf)));
}

static void test_read_error_kills_child_with_sigbus(void **state)
{
	(void)state;
	expect_child_sigbus(4096, 0, false, 5);
	expect_child_sigbus(4096, 0, false, 40);
	expect_child_sigbus(64 * TU_KIB, 0, false, 1);
}

static void test_read_error_with_readahead_spares_good_units(void **state)
{
	(void)state;
	/* Readahead and WILLNEED batches that include a bad unit must not
	 * fail the good units read with it. */
	expect_child_sigbus(4096, 64 * TU_KIB, false, 17);
	expect_child_sigbus(4096, 0, true, 40);
	expect_child_sigbus(16 * TU_KIB, 128 * TU_KIB, true, 1);
}

/* ---- in process ---- */

static void test_read_error_sigbus_in_process(void **state)
{
	(void)state;
	struct sigaction old;
	tu_sigbus_catch(&old);

	static const size_t pages[] = { 4096, 64 * TU_KIB };
	for (size_t k = 0; k < 2; k++) {
		size_t page = pages[k];
		upager_t *up = tu_runtime(NULL);
		struct flaky f;
		upager_store_t *s = flaky_store(&f);
		assert_non_null(s);
		uint8_t *base = tu_map(up, s, 0, REGION_LEN, page, 0);
		upager_store_release(s);
		size_t bad = bad_blocks[0] * 4096 / page;
		uint8_t v = 0;

		tu_sigbus_count = 0;
		assert_false(unit_bad(REGION_LEN / page - 1, page));
		assert_true(tu_check(&ref, base, REGION_LEN - page, page));
		/* The first byte of the bad unit, whichever 4 KiB page of the
		 * unit holds the bad block. */
		uint8_t *p = base + bad * page;
		if (!tu_read_raises_sigbus(p, &v))
			fail_msg("page %zu: bad unit read 0x%02x, no SIGBUS",
				 page, v);
		assert_int_equal(tu_sigbus_count, 1);
		assert_ptr_equal((uint8_t *)tu_sigbus_addr, p);
		/* Again: still an error, not zeros and not a hang. */
		assert_true(tu_read_raises_sigbus(p + page - 1, &v));
		assert_int_equal(tu_sigbus_count, 2);

		/* The runtime still serves every good unit. */
		for (size_t u = 0; u < REGION_LEN / page; u++)
			if (!unit_bad(u, page))
				assert_true(tu_check(&ref, base, u * page,
						     page));
		struct upager_stats st = tu_stats(up, base);
		tu_print_stats("region", &st);
		assert_true(st.read_errors >= 1);
		assert_true(atomic_load(&f.failed) >= 1);
		assert_true(tu_stats(up, NULL).read_errors >= st.read_errors);

		/* Once the store recovers, dropping the unit lets the next
		 * touch fetch it again. */
		atomic_store(&f.healed, true);
		TU_OK(upager_advise(up, p, page, UPAGER_ADV_DONTNEED));
		if (tu_read_raises_sigbus(p, &v))
			fail_msg("page %zu: unit still raises SIGBUS after "
				 "DONTNEED with a healed store",
				 page);
		assert_true(tu_check(&ref, base, 0, REGION_LEN));

		TU_OK(upager_unmap(up, base));
		upager_destroy(up);
	}
	assert_int_equal(sigaction(SIGBUS, &old, NULL), 0);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_read_error_kills_child_with_sigbus),
	cmocka_unit_test(test_read_error_with_readahead_spares_good_units),
	cmocka_unit_test(test_read_error_sigbus_in_process),
};

TU_MAIN("sigbus", tests)
