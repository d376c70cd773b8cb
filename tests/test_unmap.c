/*
 * test_unmap.c - region and runtime lifetimes.
 *
 * Unmapping a region while other threads fault on other regions; map and
 * unmap churn without leaking regions, mappings, descriptors or store
 * references; upager_destroy() with regions still mapped and with reads
 * in flight (no thread, mapping or store survives it); the application
 * unmapping a region itself (UFFD_EVENT_UNMAP) and moving it with mremap
 * (UFFD_EVENT_REMAP: the region keeps serving at its new address).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FILE_SIZE (8 * TU_MIB)

static const char *data_path;
static int data_fd = -1;

static void need_file(void)
{
	if (!data_path) {
		data_path = tu_make_file("unmap.dat", FILE_SIZE);
		data_fd = tu_open(data_path);
	}
}

static size_t count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	size_t n = 0;
	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static size_t count_lines(const char *path)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;
	int c;
	assert_non_null(f);
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

/* True when no byte of [p, p + len) is mapped. */
static bool unmapped(const void *p, size_t len)
{
	unsigned char vec[64];
	for (size_t off = 0; off < len; off += 4096) {
		if (mincore((char *)p + off, 4096, vec) == 0)
			return false;
		if (errno != ENOMEM)
			return false;
	}
	return true;
}

/* ---- counting custom store ---- */

struct counted {
	atomic_int releases;
	atomic_uint_fast64_t reads;
	unsigned delay_us;
};

static int counted_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct counted *c = ctx;
	atomic_fetch_add(&c->reads, 1);
	if (c->delay_us)
		usleep(c->delay_us);
	tu_fill(buf, off, len);
	return 0;
}

static int counted_size(void *ctx, uint64_t *size)
{
	(void)ctx;
	*size = FILE_SIZE;
	return 0;
}

static void counted_release(void *ctx)
{
	struct counted *c = ctx;
	atomic_fetch_add(&c->releases, 1);
}

static upager_store_t *counted_store(struct counted *c, unsigned delay_us)
{
	struct upager_store_ops ops = { .read = counted_read,
					.size = counted_size,
					.release = counted_release };
	upager_store_t *s = NULL;
	atomic_init(&c->releases, 0);
	atomic_init(&c->reads, 0);
	c->delay_us = delay_us;
	TU_OK(upager_store_custom(&ops, c, &s));
	return s;
}

/* ---- unmap while others fault ---- */

struct churn {
	upager_t *up;
	upager_store_t *s;
	atomic_uint failures;
	atomic_bool stop;
	uint8_t *long_lived;
	size_t long_len;
};

struct churn_arg {
	struct churn *c;
	unsigned id;
};

/* Maps its own regions one after another, reads each fully in random
 * order, unmaps it. */
static void *churn_thread(void *p)
{
	struct churn_arg *a = p;
	struct churn *c = a->c;
	size_t order[64];

	for (unsigned it = 0; it < 25; it++) {
		size_t len = 64 * 4096;
		uint64_t off = ((uint64_t)(a->id * 131 + it) * 12289) %
			       (FILE_SIZE - len);
		struct upager_map_opts o = { .page_size = 4096 };
		void *addr = NULL;
		int rc = upager_map(c->up, c->s, off, len, &o, &addr);
		if (rc) {
			fprintf(stderr, "thread %u: map: %d\n", a->id, rc);
			atomic_fetch_add(&c->failures, 1);
			return NULL;
		}
		struct tu_ref ref = { .fd = data_fd, .offset = off,
				      .length = len };
		tu_shuffle(order, 64, a->id * 1000 + it, true);
		for (size_t i = 0; i < 64; i++)
			if (!tu_check(&ref, addr, order[i] * 4096, 4096))
				atomic_fetch_add(&c->failures, 1);
		rc = upager_unmap(c->up, addr);
		if (rc) {
			fprintf(stderr, "thread %u: unmap: %d\n", a->id, rc);
			atomic_fetch_add(&c->failures, 1);
		}
	}
	return NULL;
}

/* Keeps reading the long-lived region, dropping pages so that it keeps
 * faulting, until told to stop. */
static void *long_reader(void *p)
{
	struct churn *c = p;
	struct tu_ref ref = { .fd = data_fd, .offset = 0,
			      .length = c->long_len };
	uint64_t rnd = 99;
	size_t npages = c->long_len / 4096;

	while (!atomic_load(&c->stop)) {
		size_t pg = (size_t)(tu_rand(&rnd) % npages);
		if (!tu_check(&ref, c->long_lived, pg * 4096, 4096))
			atomic_fetch_add(&c->failures, 1);
		if (madvise(c->long_lived + pg * 4096, 4096, MADV_DONTNEED))
			atomic_fetch_add(&c->failures, 1);
	}
	return NULL;
}

static void test_unmap_while_other_regions_fault(void **state)
{
	(void)state;
	need_file();
	struct churn c = { .up = tu_runtime(NULL),
			   .s = tu_store_file(data_path, 0),
			   .long_len = TU_MIB };
	struct churn_arg args[4];
	pthread_t reader;

	atomic_init(&c.failures, 0);
	atomic_init(&c.stop, false);
	c.long_lived = tu_map(c.up, c.s, 0, c.long_len, 4096, 0);
	assert_int_equal(pthread_create(&reader, NULL, long_reader, &c), 0);
	for (unsigned i = 0; i < 4; i++)
		args[i] = (struct churn_arg){ &c, i };
	tu_run_threads(4, churn_thread, args, sizeof(args[0]));
	atomic_store(&c.stop, true);
	assert_int_equal(pthread_join(reader, NULL), 0);
	assert_int_equal(atomic_load(&c.failures), 0);

	struct upager_stats st = tu_stats(c.up, NULL);
	tu_print_stats("runtime", &st);
	assert_int_equal(st.regions, 1);
	TU_OK(upager_unmap(c.up, c.long_lived));
	assert_int_equal(tu_stats(c.up, NULL).regions, 0);
	upager_store_release(c.s);
	upager_destroy(c.up);
}

/* ---- churn ---- */

static void test_map_unmap_churn_does_not_leak(void **state)
{
	(void)state;
	enum { CYCLES = 500 };
	static const size_t pages[] = { 4096, 16384, 65536, 2 * TU_MIB };
	need_file();
	upager_t *up = tu_runtime(NULL);
	struct counted cs;
	upager_store_t *custom = counted_store(&cs, 0);
	size_t maps0 = 0, fds0 = count_entries("/proc/self/fd");

	for (unsigned i = 0; i < CYCLES; i++) {
		/* Mappings are counted from the second half on: under a
		 * sanitizer the runtime's own shadow mappings split and grow
		 * while the first regions' addresses are new to it (+9 to +16
		 * lines under TSan), where a leak would add one or more per
		 * cycle. */
		if (i == CYCLES / 2)
			maps0 = count_lines("/proc/self/maps");
		size_t page = pages[i % 4];
		size_t len = page * (1 + i % 3) - (i % 5) * 7;
		uint64_t off = ((uint64_t)i * 5003) % (FILE_SIZE / 2);
		upager_store_t *s = (i & 1) ? tu_store_file(data_path, 0)
					    : custom;
		uint8_t *a = tu_map(up, s, off, len, page, 0);
		if (i & 1)
			upager_store_release(s);
		struct tu_ref ref = { .fd = data_fd, .offset = off,
				      .length = len };
		/* Touch the first and last unit. */
		assert_true(tu_check(&ref, a, 0, 64));
		assert_true(tu_check(&ref, a, tu_round_up(len, page) - 64, 64));
		TU_OK(upager_unmap(up, a));
		if (i % 100 == 99)
			assert_int_equal(tu_stats(up, NULL).regions, 0);
	}
	assert_int_equal(tu_stats(up, NULL).regions, 0);
	size_t maps1 = count_lines("/proc/self/maps");
	size_t fds1 = count_entries("/proc/self/fd");
	printf("  mappings %zu -> %zu, descriptors %zu -> %zu\n", maps0, maps1,
	       fds0, fds1);
	assert_true(maps1 <= maps0 + 8);
	assert_int_equal(fds1, fds0);
	assert_int_equal(atomic_load(&cs.releases), 0);
	upager_store_release(custom);
	assert_int_equal(atomic_load(&cs.releases), 1);
	upager_destroy(up);
}

/* ---- destroy ---- */

static void test_destroy_with_regions_mapped(void **state)
{
	(void)state;
	assert_int_equal(tu_wait_threads("upager-", 0), 0); /* earlier cases' */
	size_t threads0 = tu_count_threads(NULL);
	size_t fds0 = count_entries("/proc/self/fd");
	upager_t *up = tu_runtime(NULL);
	struct counted cs;
	upager_store_t *s = counted_store(&cs, 0);
	uint8_t *r[3];
	size_t len = 256 * TU_KIB;
	struct tu_ref ref = { .fd = -1, .offset = 0, .length = len,
			      .store_size = FILE_SIZE };

	for (int i = 0; i < 3; i++)
		r[i] = tu_map(up, s, 0, len, 64 * TU_KIB, 0);
	upager_store_release(s);
	assert_true(tu_check(&ref, r[0], 0, len));
	assert_true(tu_check(&ref, r[1], 0, 4096));
	assert_int_equal(atomic_load(&cs.releases), 0);

	upager_destroy(up);
	assert_int_equal(atomic_load(&cs.releases), 1);
	for (int i = 0; i < 3; i++)
		if (!unmapped(r[i], len))
			fail_msg("region %d at %p is still mapped after "
				 "upager_destroy",
				 i, (void *)r[i]);
	assert_int_equal(tu_wait_threads("upager-", 0), 0);
	/* At most as many as before: one of an earlier case may have
	 * been on its way out then. */
	assert_true(tu_wait_threads(NULL, threads0) <= threads0);
	assert_int_equal(count_entries("/proc/self/fd"), fds0);
}

struct faulting {
	upager_t *up;
	uint8_t *base;
	size_t len;
	unsigned id;
	atomic_uint *failures;
};

static void *fault_region(void *p)
{
	struct faulting *f = p;
	struct tu_ref ref = { .fd = -1, .offset = 0, .length = f->len,
			      .store_size = FILE_SIZE };
	size_t order[256];
	size_t n = f->len / 4096;

	tu_shuffle(order, n, f->id, true);
	for (size_t i = 0; i < n; i++)
		if (!tu_check(&ref, f->base, order[i] * 4096, 4096))
			atomic_fetch_add(f->failures, 1);
	return NULL;
}

static void test_destroy_with_reads_in_flight(void **state)
{
	(void)state;
	assert_int_equal(tu_wait_threads("upager-", 0), 0); /* earlier cases' */
	size_t threads0 = tu_count_threads(NULL);
	upager_t *up = tu_runtime(NULL);
	struct counted cs;
	upager_store_t *s = counted_store(&cs, 200);
	struct faulting f[4];
	atomic_uint failures;

	/* Threads fault on their own regions and finish (joined first). */
	atomic_init(&failures, 0);
	for (unsigned i = 0; i < 4; i++) {
		f[i] = (struct faulting){ .up = up, .len = TU_MIB, .id = i,
					  .failures = &failures };
		f[i].base = tu_map(up, s, 0, f[i].len, 4096, 0);
	}
	tu_run_threads(4, fault_region, f, sizeof(f[0]));
	assert_int_equal(atomic_load(&failures), 0);

	/* Then slow prefetch reads are queued and in flight: destroy must
	 * not wait for a reader that will never come, nor leave any. */
	uint8_t *big = tu_map(up, s, 0, FILE_SIZE, 4096, 0);
	upager_store_release(s);
	TU_OK(upager_advise(up, big, FILE_SIZE, UPAGER_ADV_WILLNEED));
	uint64_t t0 = tu_now_ns();
	upager_destroy(up);
	printf("  destroy with %llu reads done took %.1f ms\n",
	       (unsigned long long)atomic_load(&cs.reads),
	       (double)(tu_now_ns() - t0) / 1e6);
	assert_int_equal(atomic_load(&cs.releases), 1);
	assert_true(unmapped(big, FILE_SIZE));
	for (unsigned i = 0; i < 4; i++)
		assert_true(unmapped(f[i].base, f[i].len));
	assert_int_equal(tu_wait_threads("upager-", 0), 0);
	/* At most as many as before: one of an earlier case may have
	 * been on its way out then. */
	assert_true(tu_wait_threads(NULL, threads0) <= threads0);
}

/* ---- the application unmaps or moves a region ---- */

static void test_app_munmap_then_upager_unmap(void **state)
{
	(void)state;
	need_file();
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path, 0);
	static const size_t pages[] = { 4096, 64 * TU_KIB };

	for (size_t k = 0; k < 2; k++) {
		size_t page = pages[k], len = 16 * page;
		uint8_t *a = tu_map(up, s, 0, len, page, 0);
		struct tu_ref ref = { .fd = data_fd, .offset = 0,
				      .length = len };
		assert_true(tu_check(&ref, a, 0, len / 2));
		assert_int_equal(munmap(a, len), 0);
		int rc = upager_unmap(up, a);
		if (rc != 0 && rc != -EINVAL)
			fail_msg("upager_unmap after munmap: %d (%s)", rc,
				 upager_strerror(rc));
		assert_int_equal(tu_stats(up, NULL).regions, 0);
		TU_ERR(upager_unmap(up, a), -EINVAL);
	}

	/* The runtime still works, also at an address that was a region. */
	size_t len = 32 * 4096;
	struct tu_ref ref = { .fd = data_fd, .offset = 4096, .length = len };
	for (int i = 0; i < 20; i++) {
		uint8_t *a = tu_map(up, s, 4096, len, 4096, 0);
		assert_true(tu_check(&ref, a, 0, len));
		TU_OK(upager_unmap(up, a));
	}
	upager_store_release(s);
	upager_destroy(up);
}

static void test_app_munmap_then_unmap_spares_reused_range(void **state)
{
	(void)state;
	need_file();
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path, 0);
	size_t len = 64 * 4096;
	uint8_t *a = tu_map(up, s, 0, len, 4096, 0);
	upager_store_release(s);
	struct tu_ref ref = { .fd = data_fd, .offset = 0, .length = len };
	assert_true(tu_check(&ref, a, 0, len / 2));

	/* The application unmaps the region and maps something else at the
	 * same place before telling upager. */
	assert_int_equal(munmap(a, len), 0);
	uint8_t *mine = mmap(a, len, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			     -1, 0);
	assert_ptr_equal(mine, a);
	memset(mine, 0x3c, len);
	int rc = upager_unmap(up, a);
	if (rc != 0 && rc != -EINVAL)
		fail_msg("upager_unmap after munmap: %d (%s)", rc,
			 upager_strerror(rc));
	/* upager must not have unmapped or changed the new mapping. */
	if (unmapped(mine, 4096))
		fail_msg("upager_unmap removed the application's new mapping");
	for (size_t i = 0; i < len; i += 997)
		assert_int_equal(mine[i], 0x3c);
	assert_int_equal(tu_stats(up, NULL).regions, 0);
	upager_destroy(up);
	for (size_t i = 0; i < len; i += 997)
		assert_int_equal(mine[i], 0x3c);
	assert_int_equal(munmap(mine, len), 0);
}

static void mremap_region(size_t page)
{
	need_file();
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path, 0);
	size_t len = 64 * page;
	uint64_t off = 3 * 4096 + 17;
	uint8_t *a = tu_map(up, s, off, len, page, 0);
	upager_store_release(s);
	struct tu_ref ref = { .fd = data_fd, .offset = off, .length = len };

	/* Half present, one byte written by the application. */
	assert_true(tu_check(&ref, a, 0, len / 2));
	a[3 * page + 5] ^= 0xff;
	struct upager_stats st0 = tu_stats(up, a);

	/* A destination aligned to the unit, away from the region. */
	size_t resv_len = len + page;
	uint8_t *resv = mmap(NULL, resv_len, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
			     0);
	assert_true(resv != MAP_FAILED);
	uint8_t *dst = (uint8_t *)tu_round_up((uintptr_t)resv, page);
	uint8_t *b = mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (b == MAP_FAILED)
		fail_msg("mremap: %s", strerror(errno));
	assert_ptr_equal(b, dst);
	if (dst > resv)
		munmap(resv, (size_t)(dst - resv));
	if (dst + len < resv + resv_len)
		munmap(dst + len, (size_t)(resv + resv_len - (dst + len)));

	/* The written byte moved with its page; everything else reads as the
	 * store, including the half never touched before the move. */
	uint8_t flipped = tu_byte(off + 3 * page + 5) ^ 0xff;
	assert_int_equal(b[3 * page + 5], flipped);
	b[3 * page + 5] ^= 0xff;
	assert_true(tu_check(&ref, b, 0, len));

	struct upager_stats st1 = tu_stats(up, b);
	tu_print_stats("after move", &st1);
	assert_int_equal(st1.pages_installed, 64);
	assert_true(st1.pages_installed > st0.pages_installed);
	struct upager_stats tmp;
	TU_ERR(upager_stats(up, a, &tmp), -EINVAL);
	assert_int_equal(tu_stats(up, NULL).regions, 1);

	/* DONTNEED at the new address refetches there. */
	TU_OK(upager_advise(up, b, page, UPAGER_ADV_DONTNEED));
	assert_true(tu_check(&ref, b, 0, page));

	TU_ERR(upager_unmap(up, a), -EINVAL);
	TU_OK(upager_unmap(up, b));
	assert_int_equal(tu_stats(up, NULL).regions, 0);
	assert_true(unmapped(b, len));
	upager_destroy(up);
}

static void test_mremap_region_keeps_serving_4k(void **state)
{
	(void)state;
	mremap_region(4096);
}

static void test_mremap_region_keeps_serving_64k(void **state)
{
	(void)state;
	mremap_region(64 * TU_KIB);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_unmap_while_other_regions_fault),
	cmocka_unit_test(test_map_unmap_churn_does_not_leak),
	cmocka_unit_test(test_destroy_with_regions_mapped),
	cmocka_unit_test(test_destroy_with_reads_in_flight),
	cmocka_unit_test(test_app_munmap_then_upager_unmap),
	cmocka_unit_test(test_app_munmap_then_unmap_spares_reused_range),
	cmocka_unit_test(test_mremap_region_keeps_serving_4k),
	cmocka_unit_test(test_mremap_region_keeps_serving_64k),
};

TU_MAIN("unmap", tests)
