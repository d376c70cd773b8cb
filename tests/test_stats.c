/*
 * test_stats.c - the counters and the fault time histogram.
 *
 * Exact counters for a known access pattern, a histogram that counts the
 * timed faults (never more than the faults, some after faults),
 * percentiles that grow with pct and follow the documented bucket bounds,
 * per-region counters that start at zero and never exceed the runtime's,
 * runtime counters that keep what unmapped regions counted.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define FILE_SIZE (4 * TU_MIB)

static const char *data_path(void)
{
	static const char *p;
	if (!p)
		p = tu_make_file("stats.dat", FILE_SIZE);
	return p;
}

/* Every field of @a is <= the same field of @b. */
static void assert_le(const struct upager_stats *a,
		      const struct upager_stats *b)
{
	assert_true(a->faults <= b->faults);
	assert_true(a->pages_installed <= b->pages_installed);
	assert_true(a->bytes_fetched <= b->bytes_fetched);
	assert_true(a->prefetched <= b->prefetched);
	assert_true(a->zero_pages <= b->zero_pages);
	assert_true(a->read_errors <= b->read_errors);
	assert_true(a->retries <= b->retries);
	assert_true(a->evictions <= b->evictions);
	assert_true(a->writebacks <= b->writebacks);
	assert_true(a->write_errors <= b->write_errors);
	for (unsigned i = 0; i < UPAGER_HIST_BUCKETS; i++)
		assert_true(a->fault_us_hist[i] <= b->fault_us_hist[i]);
}

static void test_exact_counters_single_thread(void **state)
{
	(void)state;
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path(), 0);
	size_t page = 16 * TU_KIB, units = 64;
	uint8_t *a = tu_map(up, s, 0, units * page, page, 0);
	upager_store_release(s);
	int fd = tu_open(data_path());
	struct tu_ref ref = { .fd = fd, .length = units * page };

	struct upager_stats st = tu_stats(up, a);
	assert_int_equal(st.faults, 0);
	assert_int_equal(st.pages_installed, 0);
	assert_int_equal(tu_hist_sum(&st), 0);
	assert_int_equal(upager_stats_percentile(&st, 99), 0);

	assert_true(tu_check(&ref, a, 0, units * page));
	st = tu_stats(up, a);
	tu_print_stats("region", &st);
	/* At least one fault message per unit; the kernel occasionally
	 * delivers a second one for the same access (the thread is woken
	 * before its page is in and faults again; upager ignores it). */
	assert_true(st.faults >= units);
	assert_int_equal(st.pages_installed, units);
	assert_int_equal(st.bytes_fetched, units * page);
	assert_int_equal(st.prefetched, 0);
	assert_int_equal(st.zero_pages, 0);
	assert_int_equal(st.read_errors, 0);
	/* One thread, no prefetch: every unit's fetch was timed once. */
	assert_int_equal(tu_hist_sum(&st), units);
	assert_true(upager_stats_percentile(&st, 50) > 0);

	/* Reading again changes nothing. */
	assert_true(tu_check(&ref, a, 0, units * page));
	struct upager_stats again = tu_stats(up, a);
	assert_memory_equal(&st, &again, sizeof(st));
	close(fd);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
}

static void test_histogram_counts_timed_faults(void **state)
{
	(void)state;
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path(), 0);
	uint8_t *a = tu_map(up, s, 0, FILE_SIZE, 4096, 256 * TU_KIB);
	upager_store_release(s);
	int fd = tu_open(data_path());
	struct tu_ref ref = { .fd = fd, .length = FILE_SIZE };

	/* A mix: sequential (readahead), then drop and read backwards. */
	assert_true(tu_check(&ref, a, 0, FILE_SIZE));
	TU_OK(upager_advise(up, a, FILE_SIZE, UPAGER_ADV_DONTNEED));
	for (size_t pg = FILE_SIZE / 4096; pg-- > 0;)
		assert_true(tu_check(&ref, a, pg * 4096, 4096));

	struct upager_stats st = tu_stats(up, a);
	tu_print_stats("region", &st);
	uint64_t sum = tu_hist_sum(&st);
	assert_true(st.faults > 0);
	assert_true(sum > 0);
	assert_true(sum <= st.faults);
	struct upager_stats all = tu_stats(up, NULL);
	assert_true(tu_hist_sum(&all) <= all.faults);

	/* Percentiles grow with pct and lie within the histogram's range. */
	uint64_t prev = 0;
	for (double pct = 0.5; pct <= 100.0; pct += 0.5) {
		uint64_t p = upager_stats_percentile(&st, pct);
		if (p < prev)
			fail_msg("percentile(%.1f) = %llu < %llu", pct,
				 (unsigned long long)p,
				 (unsigned long long)prev);
		prev = p;
	}
	assert_true(upager_stats_percentile(&st, 100) >= 2);
	close(fd);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
}

static void test_percentile_follows_bucket_bounds(void **state)
{
	(void)state;
	struct upager_stats st;

	/* All in bucket 0 (under 2 us): the bound is 2. */
	memset(&st, 0, sizeof(st));
	st.fault_us_hist[0] = 10;
	assert_int_equal(upager_stats_percentile(&st, 1), 2);
	assert_int_equal(upager_stats_percentile(&st, 100), 2);

	/* Half under 2 us, half in [1024, 2048) us. */
	st.fault_us_hist[0] = 50;
	st.fault_us_hist[10] = 50;
	assert_int_equal(upager_stats_percentile(&st, 10), 2);
	assert_int_equal(upager_stats_percentile(&st, 40), 2);
	assert_int_equal(upager_stats_percentile(&st, 60), 2048);
	assert_int_equal(upager_stats_percentile(&st, 100), 2048);

	/* 98 fast, 2 slow in [2^20, 2^21) us: p90 fast, p99 slow. */
	memset(&st, 0, sizeof(st));
	st.fault_us_hist[3] = 98;
	st.fault_us_hist[20] = 2;
	assert_int_equal(upager_stats_percentile(&st, 50), 16);
	assert_int_equal(upager_stats_percentile(&st, 90), 16);
	assert_int_equal(upager_stats_percentile(&st, 99), (uint64_t)1 << 21);

	/* The last bucket holds everything longer: at least its start. */
	memset(&st, 0, sizeof(st));
	st.fault_us_hist[UPAGER_HIST_BUCKETS - 1] = 1;
	assert_true(upager_stats_percentile(&st, 50) >=
		    (uint64_t)1 << (UPAGER_HIST_BUCKETS - 1));

	/* Every bucket i alone: the bound is 2^(i+1). */
	for (unsigned i = 1; i + 1 < UPAGER_HIST_BUCKETS; i++) {
		memset(&st, 0, sizeof(st));
		st.fault_us_hist[i] = 3;
		assert_int_equal(upager_stats_percentile(&st, 50),
				 (uint64_t)1 << (i + 1));
	}
}

static void test_region_and_runtime_counters_agree(void **state)
{
	(void)state;
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path(), 0);
	size_t len = TU_MIB;
	uint8_t *a = tu_map(up, s, 0, len, 4096, 0);
	uint8_t *b = tu_map(up, s, 12345, len, 64 * TU_KIB, 0);
	uint8_t *c = tu_map(up, s, FILE_SIZE - 4096, len, 4096, 0);
	int fd = tu_open(data_path());
	struct tu_ref ra = { .fd = fd, .offset = 0, .length = len };
	struct tu_ref rb = { .fd = fd, .offset = 12345, .length = len };
	struct tu_ref rc = { .fd = fd, .offset = FILE_SIZE - 4096,
			     .length = len };

	assert_true(tu_check(&ra, a, 0, len));
	assert_true(tu_check(&rb, b, 0, len / 2));
	assert_true(tu_check(&rc, c, 0, len));
	struct upager_stats sa = tu_stats(up, a), sb = tu_stats(up, b),
			    sc = tu_stats(up, c);
	struct upager_stats all = tu_stats(up, NULL);
	assert_le(&sa, &all);
	assert_le(&sb, &all);
	assert_le(&sc, &all);
	assert_int_equal(all.regions, 3);
	/* Nothing else ran on this runtime: the runtime is the sum. */
	assert_int_equal(all.pages_installed, sa.pages_installed +
						      sb.pages_installed +
						      sc.pages_installed);
	assert_int_equal(all.bytes_fetched,
			 sa.bytes_fetched + sb.bytes_fetched +
				 sc.bytes_fetched);
	assert_int_equal(all.faults, sa.faults + sb.faults + sc.faults);
	assert_int_equal(all.zero_pages, sa.zero_pages + sb.zero_pages +
						 sc.zero_pages);
	assert_int_equal(sc.zero_pages, len / 4096 - 1);
	/* Counters are per region: a region at any address inside it. */
	struct upager_stats mid = tu_stats(up, a + len / 2 + 3);
	assert_int_equal(mid.pages_installed, sa.pages_installed);

	/* Unmapped regions stay in the runtime's counters. */
	TU_OK(upager_unmap(up, a));
	TU_OK(upager_unmap(up, c));
	struct upager_stats after = tu_stats(up, NULL);
	assert_le(&all, &after);
	assert_int_equal(after.regions, 1);
	assert_int_equal(after.pages_installed, all.pages_installed);

	/* A new region starts from zero, even at a reused address. */
	uint8_t *d = tu_map(up, s, 0, len, 4096, 0);
	struct upager_stats sd = tu_stats(up, d);
	assert_int_equal(sd.faults, 0);
	assert_int_equal(sd.pages_installed, 0);
	assert_int_equal(sd.bytes_fetched, 0);
	assert_int_equal(tu_hist_sum(&sd), 0);
	assert_true(tu_check(&ra, d, 0, 4096));
	assert_int_equal(tu_stats(up, d).pages_installed, 1);

	upager_store_release(s);
	close(fd);
	upager_destroy(up);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_exact_counters_single_thread),
	cmocka_unit_test(test_histogram_counts_timed_faults),
	cmocka_unit_test(test_percentile_follows_bucket_bounds),
	cmocka_unit_test(test_region_and_runtime_counters_agree),
};

TU_MAIN("stats", tests)
