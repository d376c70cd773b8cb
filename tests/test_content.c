/*
 * test_content.c - a region reads byte for byte as its store: every
 * install unit size, sequential and random order, one and eight
 * application threads, unaligned offsets and lengths, the O_DIRECT file
 * store, readahead on and off, a custom store, 2 MiB units moved into
 * the region or copied where the kernel will not move. After a full
 * scan the counters say each unit was fetched and installed exactly
 * once, also when many threads fault on the same unit at once.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FILE_SIZE (16 * TU_MIB)

static const char *data_path;
static int data_fd = -1;

static void need_file(void)
{
	if (!data_path) {
		data_path = tu_make_file("content.dat", FILE_SIZE);
		data_fd = tu_open(data_path);
	}
}

/* ---- a custom store serving the pattern, with a size ---- */

struct pattern_store {
	uint64_t size;
	atomic_uint_fast64_t reads;
	atomic_uint_fast64_t bytes;
	atomic_uint_fast64_t past_end; /* reads asking for bytes past size */
};

static int pattern_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct pattern_store *ps = ctx;

	atomic_fetch_add(&ps->reads, 1);
	atomic_fetch_add(&ps->bytes, len);
	if (off + len > ps->size)
		atomic_fetch_add(&ps->past_end, 1);
	tu_fill(buf, off, len);
	return 0;
}

static int pattern_size(void *ctx, uint64_t *size)
{
	struct pattern_store *ps = ctx;
	*size = ps->size;
	return 0;
}

/* ---- one scan case ---- */

enum store_kind { STORE_FILE, STORE_DIRECT, STORE_CUSTOM };

struct scase {
	size_t page;
	size_t readahead;
	uint64_t offset;
	size_t length;
	unsigned threads;
	bool random;
	enum store_kind store;
};


static const char *store_name(enum store_kind k)
{
	return k == STORE_FILE	   ? "file"
	       : k == STORE_DIRECT ? "direct"
				   : "custom";
}

static void run_case(const struct scase *c)
{
	size_t page = c->page ? c->page : UPAGER_PAGE_SIZE_MIN;
	size_t nunits = tu_round_up(c->length, page) / page;
	uint64_t store_size = FILE_SIZE;
	struct pattern_store pst = { .size = FILE_SIZE };
	upager_store_t *s = NULL;

	printf("  %s store, page %zu KiB, offset %llu, length %zu, "
	       "readahead %zu KiB, %u thread(s), %s\n",
	       store_name(c->store), page / TU_KIB,
	       (unsigned long long)c->offset, c->length,
	       c->readahead / TU_KIB, c->threads,
	       c->random ? "random" : "sequential");
	need_file();
	upager_t *up = tu_runtime(NULL);
	if (c->store == STORE_CUSTOM) {
		struct upager_store_ops ops = { .read = pattern_read,
						.size = pattern_size };
		TU_OK(upager_store_custom(&ops, &pst, &s));
	} else {
		s = tu_store_file(data_path, c->store == STORE_DIRECT ?
						     UPAGER_STORE_DIRECT : 0);
	}
	uint8_t *base = tu_map(up, s, c->offset, c->length, c->page,
			       c->readahead);
	upager_store_release(s);

	struct tu_ref ref = { .fd = c->store == STORE_CUSTOM ? -1 : data_fd,
			      .offset = c->offset, .length = c->length,
			      .store_size = store_size };
	tu_scan_units(&ref, base, page, nunits, c->threads, c->random,
		    c->offset ^ page ^ c->length);

	struct upager_stats st = tu_stats_settled(up, base);
	tu_print_stats("region", &st);
	assert_int_equal(st.pages_installed, nunits);
	assert_int_equal(st.read_errors, 0);
	assert_int_equal(st.zero_pages, 0);
	assert_true(st.faults >= 1);
	assert_true(st.faults >= st.pages_installed - st.prefetched);
	assert_true(st.prefetched <= nunits);
	if (!c->readahead)
		assert_int_equal(st.prefetched, 0);
	if (!c->readahead && c->threads == 1)
		assert_int_equal(st.faults, nunits);

	/* Each unit was fetched once: the bytes read are the region's,
	 * give or take the part of the last unit past the length. */
	size_t full = nunits * page;
	size_t tail = c->length % page;
	size_t least = tail ? full - page + tail : full;
	bool aligned = c->store != STORE_DIRECT || c->offset % 4096 == 0;
	if (aligned && !tail)
		assert_int_equal(st.bytes_fetched, full);
	assert_true(st.bytes_fetched >= least);
	if (aligned)
		assert_true(st.bytes_fetched <= full);
	if (c->store == STORE_CUSTOM) {
		assert_int_equal(atomic_load(&pst.bytes), st.bytes_fetched);
		assert_int_equal(atomic_load(&pst.past_end), 0);
	}

	/* Everything reads the same the second time, with no new fetch. */
	assert_true(tu_check(&ref, base, 0, full));
	struct upager_stats again = tu_stats(up, base);
	assert_int_equal(again.bytes_fetched, st.bytes_fetched);
	assert_int_equal(again.pages_installed, st.pages_installed);

	TU_OK(upager_unmap(up, base));
	upager_destroy(up);
}

static const size_t pages[] = { 4 * TU_KIB, 16 * TU_KIB, 64 * TU_KIB,
				2 * TU_MIB };
#define NPAGES (sizeof(pages) / sizeof(pages[0]))

/* ---- tests ---- */

static void test_file_matches_pattern(void **state)
{
	(void)state;
	need_file();
	/* The reference the other tests compare with is the pattern. */
	struct tu_ref file = { .fd = data_fd, .length = FILE_SIZE };
	struct tu_ref pattern = { .fd = -1, .length = FILE_SIZE,
				  .store_size = FILE_SIZE };
	uint8_t *a = malloc(TU_MIB), *b = malloc(TU_MIB);
	assert_non_null(a);
	assert_non_null(b);
	for (size_t off = 0; off < FILE_SIZE; off += TU_MIB) {
		tu_expected(&file, off, a, TU_MIB);
		tu_expected(&pattern, off, b, TU_MIB);
		assert_memory_equal(a, b, TU_MIB);
	}
	/* Neighbouring words differ, so shifted data cannot match. */
	assert_true(memcmp(a, a + 8, 64) != 0);
	assert_true(memcmp(a, a + 4096, 64) != 0);
	free(a);
	free(b);
}

static void test_page_sizes_sequential_one_thread(void **state)
{
	(void)state;
	for (size_t i = 0; i < NPAGES; i++) {
		struct scase c = { .page = pages[i], .length = 8 * TU_MIB,
				   .threads = 1 };
		run_case(&c);
	}
}

static void test_page_sizes_random_eight_threads(void **state)
{
	(void)state;
	for (size_t i = 0; i < NPAGES; i++) {
		struct scase c = { .page = pages[i], .length = 8 * TU_MIB,
				   .threads = 8, .random = true };
		run_case(&c);
	}
}

static void test_page_sizes_sequential_eight_threads(void **state)
{
	(void)state;
	for (size_t i = 0; i < NPAGES; i++) {
		struct scase c = { .page = pages[i], .length = 4 * TU_MIB,
				   .offset = 2 * TU_MIB, .threads = 8 };
		run_case(&c);
	}
}

static void test_unaligned_offsets(void **state)
{
	(void)state;
	static const uint64_t offs[] = { 1, 4095, 12345 };
	static const size_t ps[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };

	for (size_t i = 0; i < 3; i++)
		for (size_t j = 0; j < 3; j++) {
			struct scase c = { .page = ps[j], .offset = offs[i],
					   .length = 3 * TU_MIB + 777,
					   .threads = 1 };
			run_case(&c);
			c.threads = 8;
			c.random = true;
			c.length = 2 * TU_MIB;
			run_case(&c);
		}
}

static void test_lengths_not_multiple_of_page(void **state)
{
	(void)state;
	static const size_t lens[] = { 1, 4097, 65535, 2 * TU_MIB + 1 };
	static const size_t ps[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };

	for (size_t i = 0; i < 4; i++)
		for (size_t j = 0; j < 3; j++) {
			struct scase c = { .page = ps[j], .offset = 8 * TU_MIB,
					   .length = lens[i], .threads = 1 };
			run_case(&c);
		}
	/* The default page size (0: 4 KiB). */
	struct scase c = { .page = 0, .length = 5 * 4096 + 3, .threads = 1 };
	run_case(&c);
}

static void test_region_ending_at_end_of_file(void **state)
{
	(void)state;
	for (size_t i = 0; i < NPAGES; i++) {
		struct scase c = { .page = pages[i], .length = 4 * TU_MIB,
				   .offset = FILE_SIZE - 4 * TU_MIB,
				   .threads = 8, .random = true };
		run_case(&c);
		c.offset = FILE_SIZE - 4 * TU_MIB + 1;
		c.length = 4 * TU_MIB - 1;
		c.threads = 1;
		c.random = false;
		run_case(&c);
	}
}

static void test_readahead(void **state)
{
	(void)state;
	static const size_t ps[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };
	static const size_t ras[] = { 256 * TU_KIB, 4 * TU_MIB };

	for (size_t i = 0; i < 3; i++)
		for (size_t j = 0; j < 2; j++) {
			struct scase c = { .page = ps[i], .readahead = ras[j],
					   .length = 8 * TU_MIB, .threads = 1 };
			run_case(&c);
			c.threads = 8;
			c.random = true;
			c.offset = 4095;
			run_case(&c);
		}
}

static void test_direct_store(void **state)
{
	(void)state;
	static const uint64_t offs[] = { 0, 1, 4095, 12345 };
	static const size_t ps[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };

	for (size_t i = 0; i < 4; i++)
		for (size_t j = 0; j < 3; j++) {
			struct scase c = { .page = ps[j], .offset = offs[i],
					   .length = 4 * TU_MIB,
					   .threads = 1,
					   .store = STORE_DIRECT };
			run_case(&c);
			c.threads = 8;
			c.random = true;
			c.length = 3 * TU_MIB + 1001;
			c.readahead = (i & 1) ? 512 * TU_KIB : 0;
			run_case(&c);
		}
}

/* 2 MiB units of an O_DIRECT store are moved into the region whole from
 * the workers' huge read buffers where the kernel allows it, and copied
 * where it does not:
 * it moves pages only between vmas that agree on protection and mlock, so
 * a range the application made read-only or locked (on fault) gets its
 * units copied. Each reads as the store, each unit installed once. */
static void test_huge_units_moved_or_copied(void **state)
{
	(void)state;
	need_file();
	const size_t page = 2 * TU_MIB, n = FILE_SIZE / page;
	struct tu_ref ref = { .fd = data_fd, .length = FILE_SIZE,
			      .store_size = FILE_SIZE };
	upager_t *up = tu_runtime(NULL);
	for (int k = 0; k < 3; k++) {
		upager_store_t *s = tu_store_file(data_path,
						  UPAGER_STORE_DIRECT);
		uint8_t *a = tu_map(up, s, 0, FILE_SIZE, page,
				    k == 0 ? 4 * TU_MIB : 0);
		upager_store_release(s);
		if (k == 1)
			assert_int_equal(mprotect(a, FILE_SIZE, PROT_READ), 0);
		if (k == 2)
			assert_int_equal(mlock2(a, FILE_SIZE, MLOCK_ONFAULT), 0);
		tu_scan_units(&ref, a, page, n, 4, k != 0, 31 + k);
		assert_true(tu_check(&ref, a, 0, FILE_SIZE));
		struct upager_stats st = tu_stats_settled(up, a);
		tu_print_stats(k == 0 ? "moved" : k == 1 ? "read-only" : "locked",
			       &st);
		assert_int_equal(st.pages_installed, n);
		assert_int_equal(st.read_errors, 0);
		if (k == 2)
			assert_int_equal(munlock(a, FILE_SIZE), 0);
		TU_OK(upager_unmap(up, a));
	}
	upager_destroy(up);
}

/* Resident kB of the mappings of @path in this process (smaps Rss), or
 * -1 when none maps it. */
static long file_map_rss(const char *path)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	assert_non_null(f);
	char line[4096];
	bool in = false, found = false;
	long kb = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char name[4096];
		long v;
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %4095s", &lo, &hi,
			   name) == 3) {
			in = strcmp(name, path) == 0;
			found |= in;
		} else if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 &&
			   strchr(line, '-') < strchr(line, ' ')) {
			in = false; /* a mapping without a name */
		} else if (in && sscanf(line, "Rss: %ld kB", &v) == 1) {
			kb += v;
		}
	}
	fclose(f);
	return found ? kb : -1;
}

/* file_map_rss() once it equals @want, failing after 2 s. */
static void wait_map_rss(const char *path, long want)
{
	long kb = 0;
	for (int i = 0; i < 200; i++) {
		if ((kb = file_map_rss(path)) == want)
			return;
		tu_sleep_ms(10);
	}
	fail_msg("mappings of %s: %ld kB resident (-1: none), want %ld", path,
		 kb, want);
}

/* A buffered file store installs reads of 1 MiB and more straight from
 * the page cache through its own read-only mapping of the file
 * (worker.c mapped_src()), its readahead runs cut at the file's 2 MiB
 * boundaries. For each unit size, from a file offset on such a boundary
 * and off it, to the file's end (the last unit partly past it, read as
 * before), one thread in order (prefetch runs) and eight in random order
 * (demand reads, through the store's second map; units of neighbouring
 * reads then share folios, and one read's unmapping takes the other's
 * pages away): the region reads as the file, each unit
 * installed once; what the store mapped for a read is unmapped again
 * after its install, so after the scan its mapping holds no page; the
 * mapping goes with the store. */
static void mapped_case(upager_t *up, size_t page, uint64_t off,
			unsigned threads)
{
	size_t len = FILE_SIZE - (size_t)off;
	size_t n = tu_round_up(len, page) / page;
	struct tu_ref ref = { .fd = data_fd, .offset = off, .length = len,
			      .store_size = FILE_SIZE };
	upager_store_t *s = tu_store_file(data_path, 0);
	uint8_t *a = tu_map(up, s, off, len, page, 4 * TU_MIB);
	upager_store_release(s);
	printf("  page %zu KiB, offset %llu, %u thread(s)\n", page / TU_KIB,
	       (unsigned long long)off, threads);
	tu_scan_units(&ref, a, page, n, threads, threads > 1, 7 + page + off);
	assert_true(tu_check(&ref, a, 0, len));
	struct upager_stats st = tu_stats_settled(up, a);
	tu_print_stats("region", &st);
	assert_int_equal(st.pages_installed, n);
	assert_int_equal(st.read_errors, 0);
	assert_int_equal(st.bytes_fetched, len);
	wait_map_rss(data_path, 0);
	TU_OK(upager_unmap(up, a));
	wait_map_rss(data_path, -1);
}

static void test_mapped_reads(void **state)
{
	(void)state;
	static const size_t ps[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };
	static const uint64_t offs[] = { 0, 3 * 4096 };
	need_file();
	upager_t *up = tu_runtime(NULL);
	for (size_t i = 0; i < 3; i++)
		for (size_t k = 0; k < 2; k++) {
			mapped_case(up, ps[i], offs[k], 1);
			mapped_case(up, ps[i], offs[k], 8);
		}
	upager_destroy(up);
}

/* A file shrunk under a region: a read the store would have installed
 * from its mapping finds the pages past the new end missing and is read
 * instead, as it would have been without the mapping: the bytes still in
 * the file as they are, those past its end as zeros (pread's short read),
 * and nothing is left mapped. */
static void test_mapped_read_of_shrunk_file(void **state)
{
	(void)state;
	const size_t page = 2 * TU_MIB, size = 8 * TU_MIB;
	const size_t keep = 3 * TU_MIB + 100;
	const char *path = tu_make_file("shrink.dat", size);
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(path, 0);
	uint8_t *a = tu_map(up, s, 0, size, page, 0);
	upager_store_release(s);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)keep), 0);
	struct tu_ref ref = { .fd = fd, .length = size, .store_size = keep };
	assert_true(tu_check(&ref, a, 0, size));
	close(fd);
	struct upager_stats st = tu_stats_settled(up, a);
	tu_print_stats("region", &st);
	assert_int_equal(st.pages_installed, size / page);
	assert_int_equal(st.read_errors, 0);
	wait_map_rss(path, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
}

static void test_custom_store(void **state)
{
	(void)state;
	static const uint64_t offs[] = { 0, 12345 };
	static const size_t ps[] = { 4 * TU_KIB, 64 * TU_KIB, 2 * TU_MIB };

	for (size_t i = 0; i < 2; i++)
		for (size_t j = 0; j < 3; j++) {
			struct scase c = { .page = ps[j], .offset = offs[i],
					   .length = 4 * TU_MIB, .threads = 1,
					   .store = STORE_CUSTOM };
			run_case(&c);
			c.threads = 8;
			c.random = true;
			c.readahead = i ? 256 * TU_KIB : 0;
			run_case(&c);
		}
}

/* Many threads fault on the same few units at the same moment: each unit
 * is still read and installed once. */
struct herd {
	uint8_t *base;
	const struct tu_ref *ref;
	size_t span;
	pthread_barrier_t start;
	atomic_uint failures;
};

struct herd_arg {
	struct herd *h;
	unsigned id;
};

static void *herd_thread(void *p)
{
	struct herd_arg *a = p;
	struct herd *h = a->h;
	size_t npg = h->span / 4096;
	size_t order[512];

	tu_shuffle(order, npg, a->id, true);
	pthread_barrier_wait(&h->start);
	for (size_t i = 0; i < npg; i++)
		if (!tu_check(h->ref, h->base, order[i] * 4096, 4096))
			atomic_fetch_add(&h->failures, 1);
	return NULL;
}

static void test_concurrent_faults_fetch_each_unit_once(void **state)
{
	(void)state;
	static const struct {
		size_t page, units;
	} shapes[] = { { 4 * TU_KIB, 8 }, { 64 * TU_KIB, 4 },
		       { 2 * TU_MIB, 1 } };
	enum { THREADS = 8, ROUNDS = 12 };

	need_file();
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path, 0);
	for (size_t k = 0; k < 3; k++) {
		for (unsigned round = 0; round < ROUNDS; round++) {
			size_t page = shapes[k].page;
			size_t span = page * shapes[k].units;
			uint64_t off = ((uint64_t)round * 3 * page) %
				       (FILE_SIZE - span + 1);
			struct herd h = { .span = span };
			struct tu_ref ref = { .fd = data_fd, .offset = off,
					      .length = span };
			struct herd_arg args[THREADS];

			h.base = tu_map(up, s, off, span, page, 0);
			h.ref = &ref;
			atomic_init(&h.failures, 0);
			assert_int_equal(pthread_barrier_init(&h.start, NULL,
							      THREADS),
					 0);
			for (unsigned i = 0; i < THREADS; i++)
				args[i] = (struct herd_arg){ &h,
							     round * 100 + i };
			tu_run_threads(THREADS, herd_thread, args,
				       sizeof(args[0]));
			pthread_barrier_destroy(&h.start);
			assert_int_equal(atomic_load(&h.failures), 0);

			struct upager_stats st = tu_stats(up, h.base);
			if (st.bytes_fetched != span ||
			    st.pages_installed != shapes[k].units) {
				tu_print_stats("region", &st);
				fail_msg("page %zu round %u: fetched %llu bytes "
					 "and installed %llu units; want %zu "
					 "and %zu",
					 page, round,
					 (unsigned long long)st.bytes_fetched,
					 (unsigned long long)st.pages_installed,
					 span, shapes[k].units);
			}
			assert_true(st.faults >= shapes[k].units);
			TU_OK(upager_unmap(up, h.base));
		}
	}
	struct upager_stats all = tu_stats(up, NULL);
	tu_print_stats("runtime", &all);
	assert_int_equal(all.regions, 0);
	upager_store_release(s);
	upager_destroy(up);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_file_matches_pattern),
	cmocka_unit_test(test_page_sizes_sequential_one_thread),
	cmocka_unit_test(test_page_sizes_random_eight_threads),
	cmocka_unit_test(test_page_sizes_sequential_eight_threads),
	cmocka_unit_test(test_unaligned_offsets),
	cmocka_unit_test(test_lengths_not_multiple_of_page),
	cmocka_unit_test(test_region_ending_at_end_of_file),
	cmocka_unit_test(test_readahead),
	cmocka_unit_test(test_direct_store),
	cmocka_unit_test(test_huge_units_moved_or_copied),
	cmocka_unit_test(test_mapped_reads),
	cmocka_unit_test(test_mapped_read_of_shrunk_file),
	cmocka_unit_test(test_custom_store),
	cmocka_unit_test(test_concurrent_faults_fetch_each_unit_once),
};

TU_MAIN("content", tests)
