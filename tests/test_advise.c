/*
 * test_advise.c - access hints and readahead.
 *
 * WILLNEED fetches a range ahead of any access: once the counters say it
 * is prefetched, reading it raises no fault. SEQUENTIAL turns readahead on
 * for a region, RANDOM turns it off, NORMAL restores the region's own
 * window. With readahead a sequential scan fetches far fewer units on
 * demand than it reads, and (with SEQUENTIAL advice) faults on far fewer.
 * Waits for asynchronous prefetch are bounded (10 s).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#define FILE_SIZE (16 * TU_MIB)
#define WAIT_MS 10000

static const char *data_path;
static int data_fd = -1;

struct fixture {
	upager_t *up;
	uint8_t *base;
	size_t page;
	size_t length;
	size_t units;
	struct tu_ref ref;
};

static void setup_cfg(struct fixture *f, const struct upager_config *cfg,
		      size_t page, uint64_t offset, size_t length,
		      size_t readahead)
{
	if (!data_path) {
		data_path = tu_make_file("advise.dat", FILE_SIZE);
		data_fd = tu_open(data_path);
	}
	f->up = tu_runtime(cfg);
	upager_store_t *s = tu_store_file(data_path, 0);
	f->base = tu_map(f->up, s, offset, length, page, readahead);
	upager_store_release(s);
	f->page = page;
	f->length = length;
	f->units = tu_round_up(length, page) / page;
	f->ref = (struct tu_ref){ .fd = data_fd, .offset = offset,
				  .length = length };
}

static void setup(struct fixture *f, size_t page, uint64_t offset,
		  size_t length, size_t readahead)
{
	setup_cfg(f, NULL, page, offset, length, readahead);
}

static void teardown(struct fixture *f)
{
	TU_OK(upager_unmap(f->up, f->base));
	upager_destroy(f->up);
}

/* Polls the region's counters until @want units were prefetched. */
static struct upager_stats wait_prefetched(struct fixture *f, uint64_t want)
{
	uint64_t deadline = tu_now_ns() + WAIT_MS * 1000000ull;
	struct upager_stats st;

	for (;;) {
		st = tu_stats(f->up, f->base);
		if (st.prefetched >= want)
			return tu_stats_settled(f->up, f->base);
		if (tu_now_ns() > deadline)
			break;
		tu_sleep_ms(2);
	}
	tu_print_stats("region", &st);
	fail_msg("only %llu of %llu units prefetched after %d ms",
		 (unsigned long long)st.prefetched, (unsigned long long)want,
		 WAIT_MS);
	return st;
}

/* Reads the region front to back, as a sequential reader does, checking
 * every unit as it goes. */
static void sequential_scan(struct fixture *f)
{
	for (size_t u = 0; u < f->units; u++)
		if (!tu_check(&f->ref, f->base, u * f->page, f->page))
			fail_msg("unit %zu reads wrong", u);
}

static void willneed_whole_region(size_t page)
{
	struct fixture f;
	setup(&f, page, 0, 4 * TU_MIB, 0);
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_WILLNEED));
	struct upager_stats st0 = wait_prefetched(&f, f.units);
	tu_print_stats("after WILLNEED", &st0);
	assert_int_equal(st0.prefetched, f.units);
	assert_int_equal(st0.pages_installed, f.units);
	assert_int_equal(st0.bytes_fetched, f.length);

	assert_true(tu_check(&f.ref, f.base, 0, f.length));
	struct upager_stats st1 = tu_stats(f.up, f.base);
	assert_int_equal(st1.faults, st0.faults);
	assert_int_equal(st1.faults, 0);
	assert_int_equal(st1.pages_installed, f.units);
	assert_int_equal(st1.bytes_fetched, f.length);
	teardown(&f);
}

static void test_willneed_prefetches_without_faults_4k(void **state)
{
	(void)state;
	willneed_whole_region(4 * TU_KIB);
}

static void test_willneed_prefetches_without_faults_16k(void **state)
{
	(void)state;
	willneed_whole_region(16 * TU_KIB);
}

static void test_willneed_prefetches_without_faults_2m(void **state)
{
	(void)state;
	willneed_whole_region(2 * TU_MIB);
}

static void test_willneed_subrange(void **state)
{
	(void)state;
	struct fixture f;
	setup(&f, 4096, 777, 2 * TU_MIB, 0);

	/* Bytes [10000, 60000) lie in units 2..14. */
	TU_OK(upager_advise(f.up, f.base + 10000, 50000, UPAGER_ADV_WILLNEED));
	wait_prefetched(&f, 13);
	tu_sleep_ms(50);
	struct upager_stats st0 = tu_stats(f.up, f.base);
	assert_int_equal(st0.prefetched, 13);
	assert_int_equal(st0.pages_installed, 13);
	assert_int_equal(st0.bytes_fetched, 13 * 4096);

	assert_true(tu_check(&f.ref, f.base, 2 * 4096, 13 * 4096));
	struct upager_stats st1 = tu_stats(f.up, f.base);
	assert_int_equal(st1.faults, st0.faults);

	/* Advice on units already present fetches nothing. */
	TU_OK(upager_advise(f.up, f.base + 2 * 4096, 13 * 4096,
			    UPAGER_ADV_WILLNEED));
	tu_sleep_ms(100);
	struct upager_stats st2 = tu_stats(f.up, f.base);
	assert_int_equal(st2.bytes_fetched, st1.bytes_fetched);
	assert_int_equal(st2.pages_installed, st1.pages_installed);

	/* Outside the advised range, a read faults. */
	assert_true(tu_check(&f.ref, f.base, 20 * 4096, 4096));
	struct upager_stats st3 = tu_stats(f.up, f.base);
	assert_int_equal(st3.faults, st2.faults + 1);
	assert_int_equal(st3.prefetched, 13);
	teardown(&f);
}

static void test_willneed_waits_for_room_in_small_queue(void **state)
{
	(void)state;
	/* 4096 units in batches of at most 64 do not fit a 16-entry prefetch
	 * queue at once: advise waits for room and everything arrives. */
	struct upager_config cfg = { .workers = 1, .max_prefetch = 16 };
	struct fixture f;
	setup_cfg(&f, &cfg, 4096, 0, 16 * TU_MIB, 0);
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_WILLNEED));
	struct upager_stats st0 = wait_prefetched(&f, f.units);
	assert_int_equal(st0.pages_installed, f.units);
	assert_true(tu_check(&f.ref, f.base, 0, f.length));
	assert_int_equal(tu_stats(f.up, f.base).faults, st0.faults);
	teardown(&f);
}

static void test_willneed_after_dontneed_refetches(void **state)
{
	(void)state;
	struct fixture f;
	setup(&f, 64 * TU_KIB, 0, 2 * TU_MIB, 0);
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_WILLNEED));
	wait_prefetched(&f, f.units);
	f.base[5] ^= 0x5a;
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_DONTNEED));
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_WILLNEED));
	struct upager_stats st = wait_prefetched(&f, 2 * f.units);
	assert_int_equal(st.pages_installed, 2 * f.units);
	assert_true(tu_check(&f.ref, f.base, 0, f.length));
	assert_int_equal(tu_stats(f.up, f.base).faults, st.faults);
	teardown(&f);
}

/* ---- readahead ---- */

static void readahead_scan(size_t page, size_t readahead)
{
	struct fixture f;
	setup(&f, page, 0, 8 * TU_MIB, readahead);
	uint64_t t0 = tu_now_ns();
	sequential_scan(&f);
	struct upager_stats st = tu_stats_settled(f.up, f.base);
	printf("  page %zu KiB, readahead %zu KiB: %zu units in %.1f ms\n",
	       page / TU_KIB, readahead / TU_KIB, f.units,
	       (double)(tu_now_ns() - t0) / 1e6);
	tu_print_stats("region", &st);
	/* Units the scan had to fetch on a fault, readahead having not
	 * queued them first. Not the fault count: a fault on a unit whose
	 * readahead is still in flight counts too, and how many there are
	 * depends on how the CPUs are shared (68 of 128 once, with the whole
	 * suite running beside it). */
	uint64_t demand = st.pages_installed - st.prefetched;
	if (demand >= f.units / 2)
		fail_msg("sequential scan of %zu units fetched %llu of them on "
			 "demand with readahead (%llu faults)", f.units,
			 (unsigned long long)demand,
			 (unsigned long long)st.faults);
	assert_int_equal(st.pages_installed, f.units);
	assert_int_equal(st.bytes_fetched, f.length);
	teardown(&f);
}

static void test_readahead_sequential_scan_faults_less(void **state)
{
	(void)state;
	readahead_scan(4 * TU_KIB, TU_MIB);
	readahead_scan(16 * TU_KIB, 512 * TU_KIB);
	readahead_scan(64 * TU_KIB, 2 * TU_MIB);
}

static void test_sequential_advice_enables_readahead(void **state)
{
	(void)state;
	struct fixture f;
	setup(&f, 4096, 0, 8 * TU_MIB, 0);
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_SEQUENTIAL));
	sequential_scan(&f);
	struct upager_stats st = tu_stats(f.up, f.base);
	tu_print_stats("SEQUENTIAL", &st);
	assert_true(st.prefetched > 0);
	assert_true(st.faults < f.units / 2);
	teardown(&f);
}

static void test_random_advice_disables_readahead(void **state)
{
	(void)state;
	struct fixture f;
	setup(&f, 4096, 0, 4 * TU_MIB, TU_MIB);
	/* Advice on part of the region applies to the whole region. */
	TU_OK(upager_advise(f.up, f.base + 4096, 4096, UPAGER_ADV_RANDOM));
	sequential_scan(&f);
	struct upager_stats st = tu_stats(f.up, f.base);
	tu_print_stats("RANDOM", &st);
	assert_int_equal(st.prefetched, 0);
	/* Every unit faulted (the kernel may repeat a message now and
	 * then, see test_stats). */
	assert_true(st.faults >= f.units);
	assert_int_equal(st.pages_installed, f.units);

	/* NORMAL brings the region's own window back. */
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_DONTNEED));
	TU_OK(upager_advise(f.up, f.base, f.length, UPAGER_ADV_NORMAL));
	sequential_scan(&f);
	struct upager_stats st2 = tu_stats(f.up, f.base);
	tu_print_stats("NORMAL", &st2);
	assert_true(st2.prefetched > 0);
	assert_true(st2.faults - st.faults < f.units / 2);
	teardown(&f);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_willneed_prefetches_without_faults_4k),
	cmocka_unit_test(test_willneed_prefetches_without_faults_16k),
	cmocka_unit_test(test_willneed_prefetches_without_faults_2m),
	cmocka_unit_test(test_willneed_subrange),
	cmocka_unit_test(test_willneed_waits_for_room_in_small_queue),
	cmocka_unit_test(test_willneed_after_dontneed_refetches),
	cmocka_unit_test(test_readahead_sequential_scan_faults_less),
	cmocka_unit_test(test_sequential_advice_enables_readahead),
	cmocka_unit_test(test_random_advice_disables_readahead),
};

TU_MAIN("advise", tests)
