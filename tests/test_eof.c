/*
 * test_eof.c - the edges of a store: bytes past the end of the file read
 * as zeros, holes of a sparse file read as zeros, the bytes of the last
 * unit past the region's length read as zeros even where the file has
 * data; units with no store data at all are installed as zero pages and
 * counted in zero_pages.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SHORT_SIZE (TU_MIB + 1000)

static const char *short_path(void)
{
	static const char *p;
	if (!p)
		p = tu_make_file("short.dat", SHORT_SIZE);
	return p;
}

struct mapped {
	upager_t *up;
	uint8_t *base;
	struct tu_ref ref;
	int fd;
};

static struct mapped map_file(const char *path, unsigned flags,
			      uint64_t offset, size_t length, size_t page)
{
	struct mapped m;
	m.up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(path, flags);
	m.base = tu_map(m.up, s, offset, length, page, 0);
	upager_store_release(s);
	m.fd = tu_open(path);
	m.ref = (struct tu_ref){ .fd = m.fd, .offset = offset,
				 .length = length };
	return m;
}

static void unmap_file(struct mapped *m)
{
	TU_OK(upager_unmap(m->up, m->base));
	upager_destroy(m->up);
	close(m->fd);
}

static const size_t pages[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };

static void test_region_past_end_of_file(void **state)
{
	(void)state;
	size_t length = 4 * TU_MIB;

	for (unsigned direct = 0; direct < 2; direct++)
		for (size_t i = 0; i < 3; i++) {
			size_t page = pages[i];
			struct mapped m = map_file(
				short_path(), direct ? UPAGER_STORE_DIRECT : 0,
				0, length, page);
			printf("  page %zu KiB%s\n", page / TU_KIB,
			       direct ? ", O_DIRECT" : "");
			/* Past the end first, then the data. */
			assert_true(tu_check(&m.ref, m.base, SHORT_SIZE,
					     length - SHORT_SIZE));
			assert_true(tu_check(&m.ref, m.base, 0, length));
			for (size_t b = SHORT_SIZE; b < length; b += 4096)
				assert_int_equal(m.base[b], 0);

			size_t n = length / page;
			size_t data_units =
				tu_round_up(SHORT_SIZE, page) / page;
			struct upager_stats st = tu_stats_settled(m.up, m.base);
			tu_print_stats("region", &st);
			assert_int_equal(st.pages_installed, n);
			assert_int_equal(st.zero_pages, n - data_units);
			assert_true(st.bytes_fetched >= SHORT_SIZE);
			assert_true(st.bytes_fetched <= data_units * page);
			assert_int_equal(st.read_errors, 0);
			unmap_file(&m);
		}
}

static void test_region_entirely_past_end(void **state)
{
	(void)state;
	for (size_t i = 0; i < 3; i++) {
		size_t page = pages[i], length = 2 * page + 100;
		struct mapped m = map_file(short_path(), 0, SHORT_SIZE + 12345,
					   length, page);
		assert_true(tu_check(&m.ref, m.base, 0, 3 * page));
		struct upager_stats st = tu_stats_settled(m.up, m.base);
		assert_int_equal(st.zero_pages, 3);
		assert_int_equal(st.pages_installed, 3);
		assert_int_equal(st.bytes_fetched, 0);
		unmap_file(&m);
	}
}

static void test_region_straddling_end(void **state)
{
	(void)state;
	for (size_t i = 0; i < 3; i++) {
		size_t page = pages[i];
		/* 100 bytes of data, then the end of the file mid-unit. */
		struct mapped m = map_file(short_path(), 0, SHORT_SIZE - 100,
					   page, page);
		assert_true(tu_check(&m.ref, m.base, 0, page));
		for (size_t b = 0; b < 100; b++)
			assert_int_equal(m.base[b],
					 tu_byte(SHORT_SIZE - 100 + b));
		assert_int_equal(m.base[100], 0);
		struct upager_stats st = tu_stats_settled(m.up, m.base);
		assert_int_equal(st.zero_pages, 0);
		assert_int_equal(st.pages_installed, 1);
		assert_true(st.bytes_fetched >= 100);
		assert_true(st.bytes_fetched <= page);
		unmap_file(&m);
	}
}

/* ---- sparse file ---- */

#define SPARSE_SIZE (8 * TU_MIB)
static const struct tu_island islands[] = {
	{ 100000, 5000 },
	{ TU_MIB + 7, 70000 },
	{ 5 * TU_MIB, 4096 },
	{ 6 * TU_MIB + 4000, 200 },
	{ SPARSE_SIZE - 10, 10 },
};
#define NISLANDS (sizeof(islands) / sizeof(islands[0]))

/* Units of [offset, offset + span) that hold no island byte (holes and
 * units past the end). */
static size_t hole_units(uint64_t offset, size_t span, size_t page)
{
	size_t holes = 0;
	for (size_t u = 0; u < span / page; u++) {
		uint64_t a = offset + u * page, b = a + page;
		bool data = false;
		for (size_t i = 0; i < NISLANDS; i++)
			data |= islands[i].off < b &&
				islands[i].off + islands[i].len > a;
		holes += !data;
	}
	return holes;
}

static void test_sparse_file_reads_holes_as_zeros(void **state)
{
	(void)state;
	const char *path = tu_make_sparse("sparse.dat", SPARSE_SIZE, islands,
					  NISLANDS);
	assert_non_null(path);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(fsync(fd), 0);
	close(fd);

	static const struct {
		size_t page;
		unsigned flags;
	} cases[] = { { 4 * TU_KIB, 0 },
		      { 64 * TU_KIB, 0 },
		      { 2 * TU_MIB, 0 },
		      { 4 * TU_KIB, UPAGER_STORE_DIRECT } };
	size_t length = SPARSE_SIZE + TU_MIB; /* also past the end */

	for (size_t i = 0; i < 4; i++) {
		size_t page = cases[i].page;
		struct mapped m =
			map_file(path, cases[i].flags, 0, length, page);
		printf("  page %zu KiB%s\n", page / TU_KIB,
		       cases[i].flags ? ", O_DIRECT" : "");
		assert_true(tu_check(&m.ref, m.base, 0, length));
		for (size_t k = 0; k < NISLANDS; k++)
			assert_int_equal(m.base[islands[k].off],
					 tu_byte(islands[k].off));
		struct upager_stats st = tu_stats_settled(m.up, m.base);
		tu_print_stats("region", &st);
		size_t span = tu_round_up(length, page);
		size_t n = span / page;
		size_t holes = hole_units(0, span, page);
		assert_int_equal(st.pages_installed, n);
		if (st.zero_pages != holes)
			fail_msg("zero_pages %llu, want %zu (units with no "
				 "data: holes and past the end)",
				 (unsigned long long)st.zero_pages, holes);
		unmap_file(&m);
	}

	/* At an unaligned offset the holes shift with it. */
	uint64_t off = 4097;
	struct mapped m = map_file(path, 0, off, SPARSE_SIZE, 4 * TU_KIB);
	assert_true(tu_check(&m.ref, m.base, 0, SPARSE_SIZE));
	struct upager_stats st = tu_stats_settled(m.up, m.base);
	assert_int_equal(st.zero_pages, hole_units(off, SPARSE_SIZE, 4096));
	unmap_file(&m);
}

/* ---- the last unit ---- */

static void test_partial_last_unit_has_zeros_past_length(void **state)
{
	(void)state;
	const char *path = tu_make_file("long.dat", 16 * TU_MIB);
	static const struct {
		size_t page;
		uint64_t offset;
		size_t length;
	} cases[] = {
		{ 4 * TU_KIB, 0, 5 * 4096 + 1 },
		{ 4 * TU_KIB, 4095, 4097 },
		{ 64 * TU_KIB, 0, 3 * 64 * TU_KIB + 1234 },
		{ 64 * TU_KIB, 12345, 65535 },
		{ 2 * TU_MIB, 77, TU_MIB + 3 },
		{ 2 * TU_MIB, 0, 1 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t page = cases[i].page, length = cases[i].length;
		size_t span = tu_round_up(length, page);
		struct mapped m = map_file(path, 0, cases[i].offset, length,
					   page);
		/* The file has data past the length: it must not show. */
		assert_true(tu_check(&m.ref, m.base, length, span - length));
		assert_true(tu_check(&m.ref, m.base, 0, span));
		assert_int_equal(m.base[length - 1],
				 tu_byte(cases[i].offset + length - 1));
		assert_int_equal(m.base[length], 0);
		assert_int_equal(m.base[span - 1], 0);

		/* The same after the last unit is dropped and fetched again. */
		size_t last = span - page;
		m.base[span - 1] = 0x55;
		TU_OK(upager_advise(m.up, m.base + last, page,
				    UPAGER_ADV_DONTNEED));
		assert_true(tu_check(&m.ref, m.base, last, page));
		assert_int_equal(m.base[span - 1], 0);

		struct upager_stats st = tu_stats_settled(m.up, m.base);
		assert_int_equal(st.zero_pages, 0);
		unmap_file(&m);
	}
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_region_past_end_of_file),
	cmocka_unit_test(test_region_entirely_past_end),
	cmocka_unit_test(test_region_straddling_end),
	cmocka_unit_test(test_sparse_file_reads_holes_as_zeros),
	cmocka_unit_test(test_partial_last_unit_has_zeros_past_length),
};

TU_MAIN("eof", tests)
