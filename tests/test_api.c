/*
 * test_api.c - the public API's argument checking: every bad input returns
 * the documented negative errno and changes nothing (no region appears or
 * disappears, out parameters stay untouched, store references are not
 * taken), and the NULL-accepting calls accept NULL.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define FILE_SIZE (1 * TU_MIB)

static const char *data_path;
static void *const SENTINEL = (void *)(uintptr_t)0x5e5e5e5e;

static const char *data_file(void)
{
	if (!data_path)
		data_path = tu_make_file("api.dat", FILE_SIZE);
	return data_path;
}

static uint64_t regions_of(upager_t *up)
{
	return tu_stats(up, NULL).regions;
}

/* ---- runtime ---- */

static void test_create_rejects_null_out(void **state)
{
	(void)state;
	struct upager_config cfg = { 0 };
	TU_ERR(upager_create(NULL, NULL), -EINVAL);
	TU_ERR(upager_create(&cfg, NULL), -EINVAL);
}

static void expect_bad_config(struct upager_config cfg, const char *what)
{
	upager_t *up = SENTINEL;
	int rc = upager_create(&cfg, &up);
	if (rc != -EINVAL)
		fail_msg("config with %s: %d (%s), want -EINVAL", what, rc,
			 upager_strerror(rc));
	assert_ptr_equal(up, SENTINEL);
}

static void test_create_rejects_bad_config(void **state)
{
	(void)state;
	expect_bad_config((struct upager_config){ .queue_depth = 3 },
			  "queue_depth 3");
	expect_bad_config((struct upager_config){ .queue_depth = 48 },
			  "queue_depth 48");
	expect_bad_config((struct upager_config){ .queue_depth = 8192 },
			  "queue_depth 8192");
	expect_bad_config((struct upager_config){ .workers = 257 },
			  "workers 257");
	expect_bad_config((struct upager_config){ .workers = UINT_MAX },
			  "workers UINT_MAX");
	expect_bad_config((struct upager_config){ .flags = 4 }, "flags 4");
	expect_bad_config((struct upager_config){ .flags = 0x80000000u },
			  "flags 1<<31");
	expect_bad_config((struct upager_config){ .max_pending = 15 },
			  "max_pending 15");
	expect_bad_config((struct upager_config){ .max_pending = 1048577 },
			  "max_pending 1<<20 + 1");
	expect_bad_config((struct upager_config){ .max_prefetch = 1 },
			  "max_prefetch 1");
	expect_bad_config((struct upager_config){ .max_prefetch = 1048577 },
			  "max_prefetch 1<<20 + 1");
	expect_bad_config((struct upager_config){ .daemon_fallback = 2 },
			  "daemon_fallback 2");
}

static void test_create_accepts_boundary_config(void **state)
{
	(void)state;
	/* The smallest legal values of every field: a runtime that works. */
	struct upager_config cfg = { .workers = 1, .queue_depth = 1,
				     .max_pending = 16, .max_prefetch = 16 };
	upager_t *up = tu_runtime(&cfg);
	upager_store_t *s = tu_store_file(data_file(), 0);
	void *a = tu_map(up, s, 0, FILE_SIZE, 0, 64 * TU_KIB);
	upager_store_release(s);
	int fd = tu_open(data_file());
	struct tu_ref ref = { .fd = fd, .offset = 0, .length = FILE_SIZE };
	assert_true(tu_check(&ref, a, 0, FILE_SIZE));
	close(fd);
	upager_destroy(up);

	struct upager_config big = { .workers = 2, .queue_depth = 4096,
				     .max_pending = 1u << 20,
				     .max_prefetch = 1u << 20 };
	up = tu_runtime(&big);
	upager_destroy(up);
}

static void test_destroy_and_release_accept_null(void **state)
{
	(void)state;
	upager_destroy(NULL);
	upager_store_release(NULL);
}

/* ---- stores ---- */

static void test_store_file_rejects_bad_input(void **state)
{
	(void)state;
	upager_store_t *s = SENTINEL;

	TU_ERR(upager_store_file(NULL, 0, &s), -EINVAL);
	TU_ERR(upager_store_file(data_file(), 0, NULL), -EINVAL);
	TU_ERR(upager_store_file(data_file(), 0x4, &s), -EINVAL);
	TU_ERR(upager_store_file(data_file(), 0x80000000u, &s), -EINVAL);
	TU_ERR(upager_store_file(data_file(),
				 UPAGER_STORE_DIRECT | UPAGER_STORE_WRITABLE |
					 0x8,
				 &s),
	       -EINVAL);
	TU_ERR(upager_store_file(tu_path("does-not-exist"), 0, &s), -ENOENT);
	TU_ERR(upager_store_file(tu_path("no-dir/file"), 0, &s), -ENOENT);
	TU_ERR(upager_store_file("/", 0, &s), -EINVAL);
	TU_ERR(upager_store_file("/tmp", UPAGER_STORE_DIRECT, &s), -EINVAL);
	TU_ERR(upager_store_file("/dev/null", 0, &s), -EINVAL);
	assert_ptr_equal(s, SENTINEL);
}

struct counted_ctx {
	atomic_int releases;
	int size_rc;
};

static int counted_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	(void)ctx;
	tu_fill(buf, off, len);
	return 0;
}

static int counted_size(void *ctx, uint64_t *size)
{
	struct counted_ctx *c = ctx;
	if (c->size_rc)
		return c->size_rc;
	*size = FILE_SIZE;
	return 0;
}

static void counted_release(void *ctx)
{
	struct counted_ctx *c = ctx;
	atomic_fetch_add(&c->releases, 1);
}

static void test_store_custom_rejects_bad_input(void **state)
{
	(void)state;
	struct counted_ctx c = { 0 };
	struct upager_store_ops ops = { .read = NULL, .size = counted_size,
					.release = counted_release };
	upager_store_t *s = SENTINEL;

	TU_ERR(upager_store_custom(NULL, &c, &s), -EINVAL);
	TU_ERR(upager_store_custom(&ops, &c, &s), -EINVAL);
	ops.read = counted_read;
	TU_ERR(upager_store_custom(&ops, &c, NULL), -EINVAL);
	assert_ptr_equal(s, SENTINEL);
	/* "On failure ops->release is not called." */
	assert_int_equal(atomic_load(&c.releases), 0);

	TU_OK(upager_store_custom(&ops, &c, &s));
	assert_ptr_not_equal(s, SENTINEL);
	upager_store_release(s);
	assert_int_equal(atomic_load(&c.releases), 1);
}

/* ---- map ---- */

struct map_fixture {
	upager_t *up;
	upager_store_t *s;
};

static struct map_fixture map_fixture(void)
{
	struct map_fixture f = { tu_runtime(NULL),
				 tu_store_file(data_file(), 0) };
	return f;
}

static void expect_bad_map(struct map_fixture *f, uint64_t off, size_t len,
			   const struct upager_map_opts *o, const char *what)
{
	void *addr = SENTINEL;
	uint64_t before = regions_of(f->up);
	int rc = upager_map(f->up, f->s, off, len, o, &addr);
	if (rc != -EINVAL)
		fail_msg("upager_map with %s: %d (%s), want -EINVAL", what, rc,
			 upager_strerror(rc));
	assert_ptr_equal(addr, SENTINEL);
	assert_int_equal(regions_of(f->up), before);
}

static void test_map_rejects_null_arguments(void **state)
{
	(void)state;
	struct map_fixture f = map_fixture();
	void *addr = SENTINEL;

	TU_ERR(upager_map(NULL, f.s, 0, 4096, NULL, &addr), -EINVAL);
	TU_ERR(upager_map(f.up, NULL, 0, 4096, NULL, &addr), -EINVAL);
	TU_ERR(upager_map(f.up, f.s, 0, 4096, NULL, NULL), -EINVAL);
	assert_ptr_equal(addr, SENTINEL);
	assert_int_equal(regions_of(f.up), 0);
	upager_store_release(f.s);
	upager_destroy(f.up);
}

static void test_map_rejects_bad_options(void **state)
{
	(void)state;
	struct map_fixture f = map_fixture();
	static const size_t bad_pages[] = {
		1, 512, 2048, 3000, 4095, 4097, 6144, 12288, 100000,
		4 * TU_MIB, 1 * TU_GIB, (size_t)1 << 63,
	};
	char what[64];

	expect_bad_map(&f, 0, 0, NULL, "length 0");
	for (size_t i = 0; i < sizeof(bad_pages) / sizeof(bad_pages[0]); i++) {
		struct upager_map_opts o = { .page_size = bad_pages[i] };
		snprintf(what, sizeof(what), "page_size %zu", bad_pages[i]);
		expect_bad_map(&f, 0, 4096, &o, what);
	}
	struct upager_map_opts o = { .readahead = TU_GIB + 1 };
	expect_bad_map(&f, 0, 4096, &o, "readahead 1 GiB + 1");
	o = (struct upager_map_opts){ .readahead = SIZE_MAX };
	expect_bad_map(&f, 0, 4096, &o, "readahead SIZE_MAX");
	o = (struct upager_map_opts){ .flags = 0x4 };
	expect_bad_map(&f, 0, 4096, &o, "flags 0x4");
	o = (struct upager_map_opts){ .flags = UPAGER_MAP_WRITEBACK | 0x8 };
	expect_bad_map(&f, 0, 4096, &o, "flags WRITEBACK | 0x8");
	o = (struct upager_map_opts){ .flags = 0x80000000u };
	expect_bad_map(&f, 0, 4096, &o, "flags 1<<31");
	expect_bad_map(&f, UINT64_MAX - 100, 4096, NULL,
		       "offset + length overflowing");
	expect_bad_map(&f, UINT64_MAX, 1, NULL, "offset UINT64_MAX, length 1");

	/* The largest legal values are accepted. */
	o = (struct upager_map_opts){ .page_size = UPAGER_PAGE_SIZE_MAX,
				      .readahead = TU_GIB };
	void *addr = NULL;
	TU_OK(upager_map(f.up, f.s, 0, 4096, &o, &addr));
	assert_int_equal((uintptr_t)addr % UPAGER_PAGE_SIZE_MAX, 0);
	assert_int_equal(regions_of(f.up), 1);
	TU_OK(upager_unmap(f.up, addr));
	assert_int_equal(regions_of(f.up), 0);

	upager_store_release(f.s);
	upager_destroy(f.up);
}

static void test_map_failure_takes_no_store_reference(void **state)
{
	(void)state;
	upager_t *up = tu_runtime(NULL);
	struct counted_ctx c = { .size_rc = -EIO };
	struct upager_store_ops ops = { .read = counted_read,
					.size = counted_size,
					.release = counted_release };
	upager_store_t *s = NULL;
	void *addr = SENTINEL;

	TU_OK(upager_store_custom(&ops, &c, &s));
	/* An error from the size callback is returned as is. */
	TU_ERR(upager_map(up, s, 0, 4096, NULL, &addr), -EIO);
	struct upager_map_opts bad = { .page_size = 5000 };
	TU_ERR(upager_map(up, s, 0, 4096, &bad, &addr), -EINVAL);
	assert_ptr_equal(addr, SENTINEL);
	assert_int_equal(regions_of(up), 0);
	/* No failed map kept a reference: releasing ours frees the store. */
	upager_store_release(s);
	assert_int_equal(atomic_load(&c.releases), 1);
	upager_destroy(up);
}

static void test_store_outlives_caller_reference(void **state)
{
	(void)state;
	upager_t *up = tu_runtime(NULL);
	struct counted_ctx c = { 0 };
	struct upager_store_ops ops = { .read = counted_read,
					.size = counted_size,
					.release = counted_release };
	upager_store_t *s = NULL;

	TU_OK(upager_store_custom(&ops, &c, &s));
	void *a = tu_map(up, s, 0, 64 * TU_KIB, 0, 0);
	void *b = tu_map(up, s, 4096, 64 * TU_KIB, 0, 0);
	upager_store_release(s);
	assert_int_equal(atomic_load(&c.releases), 0);

	struct tu_ref ra = { .fd = -1, .offset = 0, .length = 64 * TU_KIB,
			     .store_size = FILE_SIZE };
	struct tu_ref rb = ra;
	rb.offset = 4096;
	assert_true(tu_check(&ra, a, 0, 64 * TU_KIB));
	TU_OK(upager_unmap(up, a));
	assert_int_equal(atomic_load(&c.releases), 0);
	assert_true(tu_check(&rb, b, 0, 64 * TU_KIB));
	TU_OK(upager_unmap(up, b));
	assert_int_equal(atomic_load(&c.releases), 1);
	upager_destroy(up);
}

/* ---- unmap ---- */

static void test_unmap_rejects_non_regions(void **state)
{
	(void)state;
	struct map_fixture f = map_fixture();
	size_t len = 256 * TU_KIB;
	uint8_t *a = tu_map(f.up, f.s, 0, len, 16 * TU_KIB, 0);
	int on_stack = 0;
	int fd = tu_open(data_file());
	struct tu_ref ref = { .fd = fd, .offset = 0, .length = len };

	TU_ERR(upager_unmap(NULL, a), -EINVAL);
	TU_ERR(upager_unmap(f.up, NULL), -EINVAL);
	TU_ERR(upager_unmap(f.up, a + 1), -EINVAL);
	TU_ERR(upager_unmap(f.up, a + 4096), -EINVAL);
	TU_ERR(upager_unmap(f.up, a + 16 * TU_KIB), -EINVAL);
	TU_ERR(upager_unmap(f.up, a + len - 1), -EINVAL);
	TU_ERR(upager_unmap(f.up, a + len), -EINVAL);
	TU_ERR(upager_unmap(f.up, &on_stack), -EINVAL);
	TU_ERR(upager_unmap(f.up, (void *)(uintptr_t)0x10000), -EINVAL);
	/* None of that touched the region. */
	assert_int_equal(regions_of(f.up), 1);
	assert_true(tu_check(&ref, a, 0, len));

	TU_OK(upager_unmap(f.up, a));
	assert_int_equal(regions_of(f.up), 0);
	TU_ERR(upager_unmap(f.up, a), -EINVAL);
	assert_int_equal(regions_of(f.up), 0);

	/* A region of another runtime is not a region of this one. */
	upager_t *other = tu_runtime(NULL);
	uint8_t *b = tu_map(other, f.s, 0, len, 0, 0);
	TU_ERR(upager_unmap(f.up, b), -EINVAL);
	assert_int_equal(regions_of(other), 1);
	assert_true(tu_check(&ref, b, 0, len));
	upager_destroy(other);

	close(fd);
	upager_store_release(f.s);
	upager_destroy(f.up);
}

/* ---- advise ---- */

static void test_advise_rejects_bad_input(void **state)
{
	(void)state;
	struct map_fixture f = map_fixture();
	size_t unit = 16 * TU_KIB, len = 16 * unit;
	uint8_t *a = tu_map(f.up, f.s, 0, len, unit, 0);
	int on_stack = 0;

	TU_ERR(upager_advise(NULL, a, unit, UPAGER_ADV_WILLNEED), -EINVAL);
	TU_ERR(upager_advise(f.up, a, 0, UPAGER_ADV_WILLNEED), -EINVAL);
	TU_ERR(upager_advise(f.up, a, unit, -1), -EINVAL);
	TU_ERR(upager_advise(f.up, a, unit, 6), -EINVAL);
	TU_ERR(upager_advise(f.up, a, unit, INT_MIN), -EINVAL);
	TU_ERR(upager_advise(f.up, a, unit, 99), -EINVAL);
	TU_ERR(upager_advise(f.up, a, unit, INT_MAX), -EINVAL);
	TU_ERR(upager_advise(f.up, NULL, unit, UPAGER_ADV_WILLNEED), -EINVAL);
	TU_ERR(upager_advise(f.up, &on_stack, 1, UPAGER_ADV_WILLNEED), -EINVAL);
	/* Ranges that leave the region, at either end. */
	TU_ERR(upager_advise(f.up, a + len - unit, 2 * unit,
			     UPAGER_ADV_WILLNEED),
	       -EINVAL);
	TU_ERR(upager_advise(f.up, a + len - 1, 2, UPAGER_ADV_DONTNEED),
	       -EINVAL);
	TU_ERR(upager_advise(f.up, a, len + 1, UPAGER_ADV_SEQUENTIAL), -EINVAL);
	TU_ERR(upager_advise(f.up, a + len, 1, UPAGER_ADV_WILLNEED), -EINVAL);
	TU_ERR(upager_advise(f.up, a - 1, 2, UPAGER_ADV_WILLNEED), -EINVAL);
	TU_ERR(upager_advise(f.up, a, SIZE_MAX, UPAGER_ADV_WILLNEED), -EINVAL);
	/* None of the rejected calls fetched anything. */
	tu_sleep_ms(50);
	struct upager_stats st = tu_stats(f.up, NULL);
	assert_int_equal(st.bytes_fetched, 0);
	assert_int_equal(st.pages_installed, 0);

	/* Every defined advice is accepted on a range inside one region. */
	TU_OK(upager_advise(f.up, a, len, UPAGER_ADV_NORMAL));
	TU_OK(upager_advise(f.up, a + 1, 1, UPAGER_ADV_SEQUENTIAL));
	TU_OK(upager_advise(f.up, a, len, UPAGER_ADV_RANDOM));
	TU_OK(upager_advise(f.up, a + len - 1, 1, UPAGER_ADV_WILLNEED));
	TU_OK(upager_advise(f.up, a, len, UPAGER_ADV_DONTNEED));
	TU_OK(upager_advise(f.up, a, len, UPAGER_ADV_DISCARD));
	/* Next to another region, a range crossing into it is still out. */
	uint8_t *b = tu_map(f.up, f.s, 0, len, unit, 0);
	TU_OK(upager_advise(f.up, b, len, UPAGER_ADV_NORMAL));
	if (b + len == a || a + len == b) {
		uint8_t *lo = b < a ? b : a;
		TU_ERR(upager_advise(f.up, lo + len - 1, 2,
				     UPAGER_ADV_WILLNEED),
		       -EINVAL);
	}

	TU_OK(upager_unmap(f.up, a));
	/* A range that used to be a region no longer is one. */
	TU_ERR(upager_advise(f.up, a, unit, UPAGER_ADV_WILLNEED), -EINVAL);
	upager_store_release(f.s);
	upager_destroy(f.up);
}

/* ---- stats and strings ---- */

static void test_stats_rejects_bad_input(void **state)
{
	(void)state;
	struct map_fixture f = map_fixture();
	size_t len = 64 * TU_KIB;
	uint8_t *a = tu_map(f.up, f.s, 0, len, 0, 0);
	struct upager_stats st;
	int on_stack = 0;

	TU_ERR(upager_stats(NULL, NULL, &st), -EINVAL);
	TU_ERR(upager_stats(f.up, NULL, NULL), -EINVAL);
	TU_ERR(upager_stats(f.up, a, NULL), -EINVAL);
	TU_ERR(upager_stats(f.up, &on_stack, &st), -EINVAL);
	TU_ERR(upager_stats(f.up, a + len, &st), -EINVAL);
	TU_ERR(upager_stats(f.up, a - 1, &st), -EINVAL);
	TU_OK(upager_stats(f.up, a, &st));
	TU_OK(upager_stats(f.up, a + len - 1, &st));
	TU_OK(upager_unmap(f.up, a));
	TU_ERR(upager_stats(f.up, a, &st), -EINVAL);
	upager_store_release(f.s);
	upager_destroy(f.up);
}

static void test_strerror_never_null_or_empty(void **state)
{
	(void)state;
	static const int values[] = {
		0, -EINVAL, EINVAL, -ENOENT, -ENOMEM, -EPERM, -ENOSYS,
		-EOPNOTSUPP, -EIO, -EAGAIN, -4095, -99999, 99999, INT_MIN,
		INT_MAX,
	};

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		const char *s = upager_strerror(values[i]);
		if (!s || !*s)
			fail_msg("upager_strerror(%d) is %s", values[i],
				 s ? "empty" : "NULL");
	}
	assert_string_not_equal(upager_strerror(-EINVAL),
				upager_strerror(-ENOENT));
}

static void test_version_matches_header(void **state)
{
	(void)state;
	assert_non_null(upager_version());
	assert_string_equal(upager_version(), UPAGER_VERSION_STRING);
}

static void test_percentile_of_empty_histogram_is_zero(void **state)
{
	(void)state;
	struct upager_stats st;
	memset(&st, 0, sizeof(st));
	assert_int_equal(upager_stats_percentile(&st, 50), 0);
	assert_int_equal(upager_stats_percentile(&st, 100), 0);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_create_rejects_null_out),
	cmocka_unit_test(test_create_rejects_bad_config),
	cmocka_unit_test(test_create_accepts_boundary_config),
	cmocka_unit_test(test_destroy_and_release_accept_null),
	cmocka_unit_test(test_store_file_rejects_bad_input),
	cmocka_unit_test(test_store_custom_rejects_bad_input),
	cmocka_unit_test(test_map_rejects_null_arguments),
	cmocka_unit_test(test_map_rejects_bad_options),
	cmocka_unit_test(test_map_failure_takes_no_store_reference),
	cmocka_unit_test(test_store_outlives_caller_reference),
	cmocka_unit_test(test_unmap_rejects_non_regions),
	cmocka_unit_test(test_advise_rejects_bad_input),
	cmocka_unit_test(test_stats_rejects_bad_input),
	cmocka_unit_test(test_strerror_never_null_or_empty),
	cmocka_unit_test(test_version_matches_header),
	cmocka_unit_test(test_percentile_of_empty_histogram_is_zero),
};

TU_MAIN("api", tests)
