/*
 * test_zerocopy.c - custom stores with a map callback (zero-copy reads):
 * a region reads byte for byte as the mapped memory for every install
 * unit size, including a last unit the store only partly covers; a map
 * that declines some offsets falls back to read for exactly those and the
 * bytes are still right; the mapped memory is never written (it is
 * read-only, and the application's writes to the region stay out of it);
 * all-zero units in the mapped memory are still installed as zero pages.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Not a multiple of any unit size: the last unit is partial. */
#define STORE_SIZE (5 * TU_MIB + 12345)

/* ---- a store over read-only memory ---- */

struct map_store {
	const uint8_t *data; /* PROT_READ: a write through map's pointer
				faults */
	size_t map_len;
	uint64_t size;
	uint64_t decline_every; /* map declines offsets in every other
				   block of this many bytes (0: never) */
	atomic_uint_fast64_t maps, mapped_bytes;
	atomic_uint_fast64_t declined, declined_bytes;
	atomic_uint_fast64_t reads, read_bytes;
	atomic_uint_fast64_t past_end; /* calls asking past size */
};

static bool declines(const struct map_store *ms, uint64_t off)
{
	return ms->decline_every && (off / ms->decline_every) % 2 == 1;
}

static const void *ms_map(void *ctx, size_t len, uint64_t off)
{
	struct map_store *ms = ctx;

	atomic_fetch_add(&ms->maps, 1);
	if (off > ms->size || ms->size - off < len) {
		atomic_fetch_add(&ms->past_end, 1);
		return NULL;
	}
	if (declines(ms, off)) {
		atomic_fetch_add(&ms->declined, 1);
		atomic_fetch_add(&ms->declined_bytes, len);
		return NULL;
	}
	atomic_fetch_add(&ms->mapped_bytes, len);
	return ms->data + off;
}

static int ms_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct map_store *ms = ctx;
	size_t n = 0;

	atomic_fetch_add(&ms->reads, 1);
	atomic_fetch_add(&ms->read_bytes, len);
	if (off > ms->size || ms->size - off < len)
		atomic_fetch_add(&ms->past_end, 1);
	if (off < ms->size)
		n = ms->size - off < len ? (size_t)(ms->size - off) : len;
	memcpy(buf, ms->data + off, n);
	memset((uint8_t *)buf + n, 0, len - n);
	return 0;
}

static int ms_size(void *ctx, uint64_t *size)
{
	*size = ((struct map_store *)ctx)->size;
	return 0;
}

/* Pattern bytes in read-only memory; zero_unit (if not 0) zeroes every
 * third block of that size. */
static void ms_init(struct map_store *ms, size_t zero_unit)
{
	memset(ms, 0, sizeof(*ms));
	ms->size = STORE_SIZE;
	ms->map_len = tu_round_up(STORE_SIZE, 4096);
	uint8_t *p = mmap(NULL, ms->map_len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	tu_fill(p, 0, STORE_SIZE);
	if (zero_unit)
		for (size_t o = 0; o + zero_unit <= STORE_SIZE;
		     o += 3 * zero_unit)
			memset(p + o, 0, zero_unit);
	assert_int_equal(mprotect(p, ms->map_len, PROT_READ), 0);
	ms->data = p;
}

static void ms_fini(struct map_store *ms)
{
	munmap((void *)ms->data, ms->map_len);
}

static upager_store_t *ms_store(struct map_store *ms)
{
	struct upager_store_ops ops = { .read = ms_read, .size = ms_size,
					.map = ms_map };
	upager_store_t *s = NULL;
	TU_OK(upager_store_custom(&ops, ms, &s));
	return s;
}

/* The mapped memory still holds the pattern (zero_unit as in ms_init). */
static bool ms_intact(const struct map_store *ms, size_t zero_unit)
{
	uint8_t *want = malloc(STORE_SIZE);
	assert_non_null(want);
	tu_fill(want, 0, STORE_SIZE);
	if (zero_unit)
		for (size_t o = 0; o + zero_unit <= STORE_SIZE;
		     o += 3 * zero_unit)
			memset(want + o, 0, zero_unit);
	bool ok = memcmp(want, ms->data, STORE_SIZE) == 0;
	free(want);
	return ok;
}


struct zcase {
	size_t page;
	uint64_t offset;
	size_t readahead;
	unsigned threads;
	uint64_t decline_every;
};

static const size_t pages[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };

/* Maps the whole store from c->offset to its end, reads it all, writes
 * over it all, and checks the store's memory and the counters. */
static void run_case(const struct zcase *c)
{
	struct map_store ms;
	size_t length = STORE_SIZE - c->offset;
	size_t nunits = tu_round_up(length, c->page) / c->page;

	printf("  page %zu KiB, offset %llu, readahead %zu KiB, %u thread(s)"
	       ", map declines every other %llu bytes\n",
	       c->page / TU_KIB, (unsigned long long)c->offset,
	       c->readahead / TU_KIB, c->threads,
	       (unsigned long long)c->decline_every);
	ms_init(&ms, 0);
	ms.decline_every = c->decline_every;
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = ms_store(&ms);
	uint8_t *base = tu_map(up, s, c->offset, length, c->page,
			       c->readahead);
	upager_store_release(s);

	struct tu_ref ref = { .fd = -1, .offset = c->offset,
			      .length = length, .store_size = STORE_SIZE };
	/* The partial last unit first, on its own, then everything. */
	assert_true(tu_check(&ref, base, (nunits - 1) * c->page, c->page));
	tu_scan_units(&ref, base, c->page, nunits, c->threads, c->threads > 1,
		      c->page + c->threads);
	assert_true(tu_check(&ref, base, 0, nunits * c->page));

	struct upager_stats st = tu_stats(up, base);
	tu_print_stats("region", &st);
	printf("  store: %llu maps (%llu declined), %llu reads\n",
	       (unsigned long long)atomic_load(&ms.maps),
	       (unsigned long long)atomic_load(&ms.declined),
	       (unsigned long long)atomic_load(&ms.reads));
	assert_int_equal(st.pages_installed, nunits);
	assert_int_equal(st.read_errors, 0);
	assert_int_equal(st.zero_pages, 0);
	assert_int_equal(st.bytes_fetched, length);
	assert_int_equal(atomic_load(&ms.past_end), 0);
	/* Each unit came through map once, or (declined) through read. */
	assert_int_equal(atomic_load(&ms.mapped_bytes) +
				 atomic_load(&ms.read_bytes),
			 length);
	assert_int_equal(atomic_load(&ms.reads), atomic_load(&ms.declined));
	assert_int_equal(atomic_load(&ms.read_bytes),
			 atomic_load(&ms.declined_bytes));
	if (c->decline_every)
		assert_true(atomic_load(&ms.declined) > 0);
	else
		assert_int_equal(atomic_load(&ms.reads), 0);
	assert_true(atomic_load(&ms.mapped_bytes) > 0);

	/* The region's pages are copies: writing them leaves the store's
	 * memory as it was. */
	memset(base, 0xa5, length);
	for (size_t o = 0; o < length; o += 4096)
		assert_int_equal(base[o], 0xa5);
	assert_true(ms_intact(&ms, 0));

	TU_OK(upager_unmap(up, base));
	upager_destroy(up);
	assert_true(ms_intact(&ms, 0));
	ms_fini(&ms);
}

/* ---- tests ---- */

static void test_map_store_each_page_size(void **state)
{
	(void)state;
	for (size_t i = 0; i < 3; i++) {
		struct zcase c = { .page = pages[i], .threads = 1 };
		run_case(&c);
		c.offset = 12345; /* not page aligned: a shifted source */
		run_case(&c);
	}
}

static void test_map_store_prefetch_runs(void **state)
{
	(void)state;
	/* Readahead makes multi-unit runs, the last one ending inside the
	 * store's last unit. */
	for (size_t i = 0; i < 3; i++) {
		struct zcase c = { .page = pages[i], .readahead = 4 * TU_MIB,
				   .threads = 1 };
		run_case(&c);
		c.threads = 4;
		c.offset = 4096;
		run_case(&c);
	}
}

static void test_map_declines_some_offsets(void **state)
{
	(void)state;
	for (size_t i = 0; i < 3; i++) {
		/* Declines every other unit... */
		struct zcase c = { .page = pages[i], .threads = 1,
				   .decline_every = pages[i] };
		run_case(&c);
		/* ...and whole stretches, under prefetch and threads. */
		c.decline_every = pages[i] < TU_MIB ? TU_MIB : 2 * pages[i];
		c.readahead = TU_MIB;
		c.threads = 4;
		run_case(&c);
	}
}

/* All-zero units of the mapped memory are installed as zero pages (no
 * allocation, counted in zero_pages), the others copied. */
static void test_map_zero_units_become_zero_pages(void **state)
{
	(void)state;
	for (size_t i = 0; i < 3; i++) {
		size_t page = pages[i];
		struct map_store ms;
		ms_init(&ms, page);
		upager_t *up = tu_runtime(NULL);
		upager_store_t *s = ms_store(&ms);
		uint8_t *base = tu_map(up, s, 0, STORE_SIZE, page, 0);
		upager_store_release(s);
		printf("  page %zu KiB\n", page / TU_KIB);

		size_t nunits = tu_round_up(STORE_SIZE, page) / page;
		size_t zeros = 0;
		for (size_t o = 0; o + page <= STORE_SIZE; o += 3 * page)
			zeros++;
		assert_memory_equal(base, ms.data, STORE_SIZE);
		for (size_t o = STORE_SIZE; o < nunits * page; o++)
			assert_int_equal(base[o], 0);

		struct upager_stats st = tu_stats(up, base);
		tu_print_stats("region", &st);
		assert_int_equal(st.pages_installed, nunits);
		assert_int_equal(st.zero_pages, zeros);
		assert_int_equal(atomic_load(&ms.reads), 0);
		TU_OK(upager_unmap(up, base));
		upager_destroy(up);
		assert_true(ms_intact(&ms, page));
		ms_fini(&ms);
	}
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_map_store_each_page_size),
	cmocka_unit_test(test_map_store_prefetch_runs),
	cmocka_unit_test(test_map_declines_some_offsets),
	cmocka_unit_test(test_map_zero_units_become_zero_pages),
};

TU_MAIN("zerocopy", tests)
