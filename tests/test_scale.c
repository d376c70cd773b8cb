/*
 * test_scale.c - many regions and one huge region on one runtime.
 *
 * 10,000 small regions over one shared file (every one touched and
 * checked, then all unmapped: the region count goes back to 0), and a
 * 1 TiB region over a sparse file, touched at a handful of places. Times
 * are printed, never asserted: speed belongs to the benchmarks. The two
 * are registered as separate ctest cases so the 1 TiB one can be skipped
 * on its own when the filesystem refuses a 1 TiB file.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NREGIONS 10000
#define FILE_SIZE (4 * TU_MIB)

struct small {
	uint8_t *base;
	uint64_t offset;
	size_t length;
	size_t units;
};

static void describe(size_t i, struct small *r)
{
	r->units = 1 + i % 4;
	r->length = r->units * 4096 - (i % 3) * 100;
	r->offset = ((uint64_t)i * 4099) % (FILE_SIZE - 4 * 4096);
}

static int by_base(const void *a, const void *b)
{
	const struct small *x = a, *y = b;
	return x->base < y->base ? -1 : x->base > y->base;
}

static void test_10000_regions_on_one_runtime(void **state)
{
	(void)state;
	const char *path = tu_make_file("scale.dat", FILE_SIZE);
	int fd = tu_open(path);
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(path, 0);
	struct small *r = calloc(NREGIONS, sizeof(*r));
	assert_non_null(r);
	size_t total_units = 0;

	uint64_t t0 = tu_now_ns();
	for (size_t i = 0; i < NREGIONS; i++) {
		describe(i, &r[i]);
		r[i].base = tu_map(up, s, r[i].offset, r[i].length, 4096, 0);
		total_units += r[i].units;
	}
	uint64_t t1 = tu_now_ns();
	upager_store_release(s);
	printf("  mapped %d regions in %.3f s (%.1f us each)\n", NREGIONS,
	       (double)(t1 - t0) / 1e9, (double)(t1 - t0) / 1e3 / NREGIONS);
	assert_int_equal(tu_stats(up, NULL).regions, NREGIONS);

	/* Every region touched, in an order unrelated to the map order. */
	size_t *order = malloc(NREGIONS * sizeof(*order));
	assert_non_null(order);
	tu_shuffle(order, NREGIONS, 7, true);
	for (size_t k = 0; k < NREGIONS; k++) {
		struct small *x = &r[order[k]];
		struct tu_ref ref = { .fd = fd, .offset = x->offset,
				      .length = x->length };
		if (!tu_check(&ref, x->base, 0, x->units * 4096))
			fail_msg("region %zu (offset %llu, length %zu) reads "
				 "wrong",
				 order[k], (unsigned long long)x->offset,
				 x->length);
	}
	free(order);
	uint64_t t2 = tu_now_ns();
	printf("  touched %zu units in %.3f s\n", total_units,
	       (double)(t2 - t1) / 1e9);

	for (size_t i = 0; i < NREGIONS; i += 97) {
		struct upager_stats st = tu_stats(up, r[i].base);
		assert_int_equal(st.pages_installed, r[i].units);
		assert_int_equal(st.faults, r[i].units);
		assert_true(st.bytes_fetched <= r[i].units * 4096);
		assert_true(st.bytes_fetched >= r[i].length);
	}
	struct upager_stats all = tu_stats(up, NULL);
	tu_print_stats("runtime", &all);
	assert_int_equal(all.pages_installed, total_units);
	assert_int_equal(all.regions, NREGIONS);

	/* No two regions share an address. */
	qsort(r, NREGIONS, sizeof(*r), by_base);
	for (size_t i = 1; i < NREGIONS; i++)
		assert_true(r[i - 1].base + r[i - 1].units * 4096 <=
			    r[i].base);

	uint64_t t3 = tu_now_ns();
	for (size_t i = 0; i < NREGIONS; i++)
		TU_OK(upager_unmap(up, r[i].base));
	uint64_t t4 = tu_now_ns();
	printf("  unmapped %d regions in %.3f s\n", NREGIONS,
	       (double)(t4 - t3) / 1e9);
	all = tu_stats(up, NULL);
	assert_int_equal(all.regions, 0);
	/* Runtime counters include regions since unmapped. */
	assert_int_equal(all.pages_installed, total_units);
	free(r);
	upager_destroy(up);
	close(fd);
}

/* ---- 1 TiB ---- */

#define TIB ((uint64_t)1 << 40)

static const struct tu_island tib_islands[] = {
	{ 0, 4096 + 100 },
	{ TU_GIB + 4000, 300 },
	{ 100 * (uint64_t)TU_GIB + 1, 5000 },
	{ TIB / 2 + 12345, 70000 },
	{ TIB - 8192, 8192 },
};
#define NTIB (sizeof(tib_islands) / sizeof(tib_islands[0]))

static void test_one_tib_sparse_region(void **state)
{
	(void)state;
	const char *path = tu_make_sparse("tib.dat", TIB, tib_islands, NTIB);
	if (!path)
		tu_skip("the filesystem refuses a 1 TiB sparse file: %s",
			strerror(errno));
	int fd = tu_open(path);
	static const size_t pages[] = { 2 * TU_MIB, 64 * TU_KIB, 4 * TU_KIB };

	for (size_t k = 0; k < 3; k++) {
		size_t page = pages[k];
		upager_t *up = tu_runtime(NULL);
		upager_store_t *s = tu_store_file(path, 0);
		uint64_t t0 = tu_now_ns();
		uint8_t *base = tu_map(up, s, 0, (size_t)TIB, page, 0);
		uint64_t t1 = tu_now_ns();
		upager_store_release(s);
		printf("  page %zu KiB: mapped 1 TiB in %.3f ms\n",
		       page / TU_KIB, (double)(t1 - t0) / 1e6);
		struct tu_ref ref = { .fd = fd, .offset = 0,
				      .length = (size_t)TIB };

		/* First, last, middle, the islands, a few holes. */
		uint64_t probes[NTIB * 2 + 6];
		size_t np = 0;
		probes[np++] = 0;
		probes[np++] = TIB - 1;
		probes[np++] = TIB / 2;
		probes[np++] = 3 * TIB / 4 + 777;
		probes[np++] = 10 * (uint64_t)TU_GIB;
		probes[np++] = TIB - page - 1;
		for (size_t i = 0; i < NTIB; i++) {
			probes[np++] = tib_islands[i].off;
			probes[np++] = tib_islands[i].off +
				       tib_islands[i].len - 1;
		}
		size_t touched = 0;
		for (size_t i = 0; i < np; i++) {
			uint64_t unit = probes[i] / page * page;
			bool seen = false;
			for (size_t j = 0; j < i; j++)
				seen |= probes[j] / page * page == unit;
			touched += !seen;
			if (!tu_check(&ref, base, (size_t)unit, page))
				fail_msg("page %zu: unit at %llu reads wrong",
					 page, (unsigned long long)unit);
		}
		struct upager_stats st = tu_stats(up, base);
		tu_print_stats("region", &st);
		assert_int_equal(st.pages_installed, touched);
		assert_int_equal(tu_stats(up, NULL).regions, 1);
		TU_OK(upager_unmap(up, base));
		assert_int_equal(tu_stats(up, NULL).regions, 0);
		upager_destroy(up);
	}
	close(fd);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_10000_regions_on_one_runtime),
	cmocka_unit_test(test_one_tib_sparse_region),
};

TU_MAIN("scale", tests)
