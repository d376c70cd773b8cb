/*
 * test_writeback.c - budgets, dirty tracking and write-back
 * (src/writeback.c, the write-protect faults in src/manager.c).
 *
 * What is checked:
 *  - Random reads and writes from four threads over a WRITEBACK region
 *    four times its budget, for 4 KiB, 64 KiB and 2 MiB units, over a
 *    writable file, an lz4 store alone and an lz4 store stacked over a
 *    writable file. Each thread owns one partition of the region and keeps
 *    its own shadow copy, so every read is checked against the shadow as it
 *    happens and the whole region (and the store, after a flush) is
 *    compared byte for byte at the end. The budget must have forced both
 *    evictions and write-backs.
 *  - The budget is respected while the threads run: a monitor thread polls
 *    the region's resident_bytes every millisecond; the most it saw must
 *    stay within the budget plus one eviction batch (64 units). Also for a
 *    read-only region with a budget, and for the runtime-wide budget over
 *    two regions (one batch of slack per region). Below its budget a
 *    region's faults never wake the write-back thread.
 *  - upager_flush is durable: once it returns 0 a forked child reading the
 *    file with pread finds exactly the bytes that were in memory; a flush of
 *    part of a region writes that part only; a flush right after a write
 *    fault stores that write.
 *  - A store write error is reported (flush and unmap return -EIO), counted,
 *    and loses nothing: the units stay dirty and readable, eviction keeps
 *    them, and a later flush stores them once writes succeed.
 *  - A dirty unit pinned for I/O (an io_uring fixed buffer), which
 *    UFFDIO_MOVE cannot take, is evicted by copy, also in a ZERO_REMOVED
 *    region, and reads back intact.
 *  - UPAGER_ADV_DONTNEED writes back before dropping; UPAGER_ADV_DISCARD
 *    drops the writes; upager_unmap and upager_destroy write back.
 *  - Write streams (src/manager.c): a sequential writer over a region four
 *    times its budget takes less than one fault per unit (readahead goes in
 *    writable and dirty, a write-protect fault un-protects the clean units
 *    ahead), stays within the budget, and after upager_flush the file holds
 *    exactly what was written. A sequential read scan marks nothing dirty
 *    and writes nothing back; a write stream that reaches the end of the
 *    file does not grow it.
 *  - Bad input gets -EINVAL before anything changes.
 *
 * Data written is text-like (words from a small list) so that the lz4
 * store really compresses it.
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
#include <linux/io_uring.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define NTHREADS 4u
#define BATCH_UNITS 64u /* eviction batch of src/writeback.c */

/* ---- data ---- */

/* Offset of the first byte where a and b differ, or SIZE_MAX. */
static size_t first_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
	if (memcmp(a, b, len) == 0)
		return SIZE_MAX;
	for (size_t i = 0; i < len; i++)
		if (a[i] != b[i])
			return i;
	return SIZE_MAX;
}

static void assert_same(const void *got, const void *want, size_t len,
			const char *what)
{
	size_t d = first_diff(got, want, len);
	if (d != SIZE_MAX)
		fail_msg("%s: first difference at byte %zu (unit-4K %zu): "
			 "got %#x want %#x", what, d, d / 4096,
			 ((const uint8_t *)got)[d], ((const uint8_t *)want)[d]);
}

/* Reads [off, off + len) of the file at @path with pread. */
static void pread_all(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = tu_open(path);
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, len - got,
				  (off_t)(off + got));
		assert_true(r > 0);
		got += (size_t)r;
	}
	close(fd);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	assert_non_null(p);
	return p;
}

/* Maps with the given options; skips when the kernel lacks write-protect
 * support (upager_map says -EOPNOTSUPP). */
static void *map_or_skip(upager_t *up, upager_store_t *s, size_t len,
			 size_t page, unsigned flags, uint64_t budget)
{
	struct upager_map_opts o = { .page_size = page, .flags = flags,
				     .max_resident = budget };
	void *addr = NULL;
	int rc = upager_map(up, s, 0, len, &o, &addr);
	if (rc == -EOPNOTSUPP)
		tu_skip("userfaultfd write-protection unavailable: %s",
			upager_strerror(rc));
	if (rc)
		fail_msg("upager_map(len %zu, page %zu, flags %#x, budget "
			 "%llu): %d (%s)", len, page, flags,
			 (unsigned long long)budget, rc, upager_strerror(rc));
	return addr;
}

/* ---- the budget monitor ---- */

struct monitor {
	upager_t *up;
	void *addr[2]; /* regions whose resident bytes are summed */
	unsigned n;
	atomic_bool stop;
	uint64_t max;    /* most resident bytes seen */
	uint64_t polls;
	int err;
	pthread_t thr;
};

static void *monitor_main(void *arg)
{
	struct monitor *m = arg;
	while (!atomic_load(&m->stop)) {
		uint64_t sum = 0;
		for (unsigned i = 0; i < m->n; i++) {
			struct upager_stats st;
			int rc = upager_stats(m->up, m->addr[i], &st);
			if (rc) {
				m->err = rc;
				return NULL;
			}
			sum += st.resident_bytes;
		}
		if (sum > m->max)
			m->max = sum;
		m->polls++;
		tu_sleep_ms(1);
	}
	return NULL;
}

static void monitor_start(struct monitor *m, upager_t *up, void *a, void *b)
{
	memset(m, 0, sizeof(*m));
	m->up = up;
	m->addr[0] = a;
	m->addr[1] = b;
	m->n = b ? 2 : 1;
	atomic_init(&m->stop, false);
	assert_int_equal(pthread_create(&m->thr, NULL, monitor_main, m), 0);
}

/* Stops the monitor and checks the most it saw against @limit. */
static void monitor_check(struct monitor *m, uint64_t limit, const char *what)
{
	atomic_store(&m->stop, true);
	assert_int_equal(pthread_join(m->thr, NULL), 0);
	TU_OK(m->err);
	printf("  %s: max resident %llu KiB over %llu polls (limit %llu "
	       "KiB)\n", what, (unsigned long long)(m->max >> 10),
	       (unsigned long long)m->polls,
	       (unsigned long long)(limit >> 10));
	assert_true(m->polls > 0);
	if (m->max > limit)
		fail_msg("%s: resident bytes reached %llu, over the limit "
			 "%llu (budget + one batch)", what,
			 (unsigned long long)m->max,
			 (unsigned long long)limit);
}

/* ---- random reads and writes against per-thread shadows ---- */

struct rw_thread {
	uint8_t *base;   /* region */
	uint8_t *shadow; /* whole-region shadow; this thread owns [lo, hi) */
	size_t lo, hi;
	size_t page;
	unsigned ops;
	unsigned write_pct; /* share of ops that write */
	uint64_t seed;
	/* Result: the first stale read seen, if any. */
	bool bad;
	size_t bad_off;
	uint8_t got, want;
};

static void rw_check(struct rw_thread *t, size_t off, size_t len)
{
	if (t->bad)
		return;
	size_t d = first_diff(t->base + off, t->shadow + off, len);
	if (d != SIZE_MAX) {
		t->bad = true;
		t->bad_off = off + d;
		t->got = t->base[off + d];
		t->want = t->shadow[off + d];
	}
}

static void rw_write(struct rw_thread *t, size_t off, size_t len,
		     uint64_t *rng)
{
	uint8_t buf[512];
	tu_fill_text(buf, len, rng);
	memcpy(t->shadow + off, buf, len);
	memcpy(t->base + off, buf, len);
}

static void *rw_main(void *arg)
{
	struct rw_thread *t = arg;
	uint64_t rng = t->seed;
	size_t span = t->hi - t->lo;
	/* A sweep that dirties every unit of the partition: with the region
	 * four times its budget this forces dirty evictions. */
	for (size_t u = t->lo; u < t->hi; u += t->page) {
		size_t room = t->hi - u < t->page ? t->hi - u : t->page;
		size_t len = room < 96 ? room : 96;
		size_t off = u + (size_t)(tu_rand(&rng) % (room - len + 1));
		rw_write(t, off, len, &rng);
	}
	for (unsigned i = 0; i < t->ops && !t->bad; i++) {
		size_t off = t->lo + (size_t)(tu_rand(&rng) % span);
		size_t len = 1 + (size_t)(tu_rand(&rng) % 512);
		if (len > t->hi - off)
			len = t->hi - off;
		if (tu_rand(&rng) % 100 < t->write_pct)
			rw_write(t, off, len, &rng);
		else
			rw_check(t, off, len);
	}
	/* Read the whole partition back while the others still run. */
	rw_check(t, t->lo, span);
	return NULL;
}

/* Runs NTHREADS rw threads over [0, len) of @base, each on its own
 * partition, and fails on the first stale read any of them saw. */
static void run_rw(uint8_t *base, uint8_t *shadow, size_t len, size_t page,
		   unsigned ops, uint64_t seed)
{
	struct rw_thread t[NTHREADS];
	size_t part = len / NTHREADS;
	for (unsigned i = 0; i < NTHREADS; i++) {
		t[i] = (struct rw_thread){
			.base = base, .shadow = shadow,
			.lo = i * part,
			.hi = i + 1 == NTHREADS ? len : (i + 1) * part,
			.page = page, .ops = ops, .write_pct = 60,
			.seed = seed * 977 + i + 1,
		};
	}
	tu_run_threads(NTHREADS, rw_main, t, sizeof(t[0]));
	for (unsigned i = 0; i < NTHREADS; i++)
		if (t[i].bad)
			fail_msg("thread %u read %#x at region byte %zu, its "
				 "shadow says %#x", i, t[i].got, t[i].bad_off,
				 t[i].want);
}

/* INLINE: a file store in a runtime whose faults are served by the
 * faulting threads (UPAGER_CFG_INLINE); INLINE_DIRECT with O_DIRECT;
 * INLINE_LZ4 an lz4 store alone, decompressed by the faulting threads. */
enum store_kind { ST_FILE, ST_LZ4, ST_LZ4_FILE, ST_DIRECT, ST_INLINE,
		  ST_INLINE_DIRECT, ST_INLINE_LZ4 };

static const char *const kind_name[] = { "file", "lz4", "lz4+file",
					 "direct", "inline",
					 "inline-direct", "inline-lz4" };

static bool kind_inline(enum store_kind k)
{
	return k == ST_INLINE || k == ST_INLINE_DIRECT || k == ST_INLINE_LZ4;
}

struct rw_case {
	enum store_kind kind;
	size_t page;
	size_t len;   /* region bytes: four budgets */
	unsigned ops; /* random ops per thread after the sweep */
};

static void rw_case_run(const struct rw_case *c)
{
	size_t budget = c->len / 4;
	char name[64];
	snprintf(name, sizeof(name), "rw-%s-%zu.dat", kind_name[c->kind],
		 c->page);
	uint8_t *shadow = xmalloc(c->len);
	const char *path = NULL;
	upager_store_t *file = NULL, *lz = NULL, *s;
	bool alone = c->kind == ST_LZ4 || c->kind == ST_INLINE_LZ4;
	if (alone) {
		memset(shadow, 0, c->len); /* never written blocks: zeros */
	} else {
		path = tu_make_file(name, c->len);
		tu_fill(shadow, 0, c->len);
		/* Direct: reads bypass the cache the write-backs go to. */
		file = tu_store_file(path, UPAGER_STORE_WRITABLE |
				     (c->kind == ST_DIRECT ||
				      c->kind == ST_INLINE_DIRECT ?
				      UPAGER_STORE_DIRECT : 0));
	}
	if (alone || c->kind == ST_LZ4_FILE) {
		struct upager_lz4_opts lo = { .size = c->len };
		TU_OK(upager_store_lz4(&lo, file, &lz));
	}
	s = lz ? lz : file;

	struct upager_config cfg = {
		.flags = kind_inline(c->kind) ? UPAGER_CFG_INLINE : 0,
	};
	upager_t *up = tu_runtime(&cfg);
	uint8_t *a = map_or_skip(up, s, c->len, c->page, UPAGER_MAP_WRITEBACK,
				 budget);
	struct monitor m;
	monitor_start(&m, up, a, NULL);
	run_rw(a, shadow, c->len, c->page, c->ops, c->page ^ c->kind);
	monitor_check(&m, budget + BATCH_UNITS * c->page, "rw");

	struct upager_stats st = tu_stats(up, a);
	tu_print_stats(kind_name[c->kind], &st);
	printf("  evictions %llu writebacks %llu write_errors %llu dirty "
	       "%llu resident %llu KiB\n",
	       (unsigned long long)st.evictions,
	       (unsigned long long)st.writebacks,
	       (unsigned long long)st.write_errors,
	       (unsigned long long)st.dirty_units,
	       (unsigned long long)(st.resident_bytes >> 10));
	assert_true(st.evictions > 0);
	assert_true(st.writebacks > 0);
	assert_int_equal(st.write_errors, 0);
	/* Evictions send no userfaultfd events (victims move into a scratch
	 * area on a descriptor without them), so no install had to wait for
	 * the manager to read one: hundreds did before. */
	assert_int_equal(st.retries, 0);
	assert_true(st.resident_bytes <= budget + BATCH_UNITS * c->page);

	/* Every byte, in memory (refaulting what was evicted)... */
	assert_same(a, shadow, c->len, "region vs shadow");
	/* ... and in the store once flushed. */
	TU_OK(upager_flush(up, a, c->len));
	st = tu_stats(up, a);
	assert_int_equal(st.dirty_units, 0);
	if (path) {
		uint8_t *f = xmalloc(c->len);
		pread_all(path, f, c->len, 0);
		assert_same(f, shadow, c->len, "file vs shadow");
		free(f);
	}
	if (lz) {
		struct upager_lz4_stats ls;
		TU_OK(upager_store_lz4_stats(lz, &ls));
		printf("  lz4: %llu blocks, %llu bytes stored, ratio %.2f\n",
		       (unsigned long long)ls.blocks,
		       (unsigned long long)ls.bytes_stored, ls.ratio);
		assert_true(ls.writes > 0);
		assert_true(ls.blocks > 0);
		assert_int_equal(ls.corrupt, 0);
	}
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	upager_store_release(lz);
	upager_store_release(file);
	free(shadow);
}

#define RW_TEST(fn, k, pg, ln, n)                                  \
	static void fn(void **state)                               \
	{                                                          \
		(void)state;                                       \
		struct rw_case c = { .kind = k, .page = pg,        \
				     .len = ln, .ops = n };        \
		rw_case_run(&c);                                   \
	}

RW_TEST(test_rw_file_4k, ST_FILE, 4 * TU_KIB, 8 * TU_MIB, 3000)
RW_TEST(test_rw_file_64k, ST_FILE, 64 * TU_KIB, 16 * TU_MIB, 800)
RW_TEST(test_rw_file_2m, ST_FILE, 2 * TU_MIB, 32 * TU_MIB, 60)
RW_TEST(test_rw_direct_4k, ST_DIRECT, 4 * TU_KIB, 8 * TU_MIB, 3000)
RW_TEST(test_rw_direct_64k, ST_DIRECT, 64 * TU_KIB, 16 * TU_MIB, 800)
RW_TEST(test_rw_lz4_4k, ST_LZ4, 4 * TU_KIB, 8 * TU_MIB, 3000)
RW_TEST(test_rw_lz4_64k, ST_LZ4, 64 * TU_KIB, 16 * TU_MIB, 800)
RW_TEST(test_rw_lz4_2m, ST_LZ4, 2 * TU_MIB, 32 * TU_MIB, 60)
RW_TEST(test_rw_lz4file_4k, ST_LZ4_FILE, 4 * TU_KIB, 8 * TU_MIB, 3000)
RW_TEST(test_rw_lz4file_64k, ST_LZ4_FILE, 64 * TU_KIB, 16 * TU_MIB, 800)
RW_TEST(test_rw_lz4file_2m, ST_LZ4_FILE, 2 * TU_MIB, 32 * TU_MIB, 60)
RW_TEST(test_rw_inline_4k, ST_INLINE, 4 * TU_KIB, 8 * TU_MIB, 3000)
RW_TEST(test_rw_inline_64k, ST_INLINE, 64 * TU_KIB, 16 * TU_MIB, 800)
RW_TEST(test_rw_inline_2m, ST_INLINE, 2 * TU_MIB, 32 * TU_MIB, 60)
RW_TEST(test_rw_inline_direct_4k, ST_INLINE_DIRECT, 4 * TU_KIB, 8 * TU_MIB,
	3000)
RW_TEST(test_rw_inline_lz4_4k, ST_INLINE_LZ4, 4 * TU_KIB, 8 * TU_MIB, 3000)
RW_TEST(test_rw_inline_lz4_64k, ST_INLINE_LZ4, 64 * TU_KIB, 16 * TU_MIB, 800)
RW_TEST(test_rw_inline_lz4_2m, ST_INLINE_LZ4, 2 * TU_MIB, 32 * TU_MIB, 60)

/* ---- budget of a read-only region ---- */

struct ro_thread {
	const uint8_t *base;
	size_t len, page;
	unsigned ops;
	uint64_t seed;
	bool bad;
	size_t bad_off;
};

static void *ro_main(void *arg)
{
	struct ro_thread *t = arg;
	uint64_t rng = t->seed;
	uint8_t want[256];
	for (unsigned i = 0; i < t->ops && !t->bad; i++) {
		size_t off = (size_t)(tu_rand(&rng) % (t->len - sizeof(want)));
		tu_fill(want, off, sizeof(want));
		if (memcmp(t->base + off, want, sizeof(want))) {
			t->bad = true;
			t->bad_off = off;
		}
	}
	return NULL;
}

static void ro_budget_run(size_t page, size_t len, unsigned ops)
{
	size_t budget = len / 4;
	char name[64];
	snprintf(name, sizeof(name), "ro-%zu.dat", page);
	const char *path = tu_make_file(name, len);
	upager_store_t *s = tu_store_file(path, 0);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, 0, budget);
	upager_store_release(s);

	struct monitor m;
	monitor_start(&m, up, a, NULL);
	struct ro_thread t[NTHREADS];
	for (unsigned i = 0; i < NTHREADS; i++)
		t[i] = (struct ro_thread){ .base = a, .len = len, .page = page,
					   .ops = ops, .seed = 31 + i };
	tu_run_threads(NTHREADS, ro_main, t, sizeof(t[0]));
	monitor_check(&m, budget + BATCH_UNITS * page, "read-only");
	for (unsigned i = 0; i < NTHREADS; i++)
		if (t[i].bad)
			fail_msg("thread %u read wrong bytes at %zu", i,
				 t[i].bad_off);

	struct upager_stats st = tu_stats(up, a);
	tu_print_stats("read-only", &st);
	assert_true(st.evictions > 0);
	assert_int_equal(st.writebacks, 0);
	assert_int_equal(st.dirty_units, 0);
	assert_int_equal(st.retries, 0); /* as in rw_case_run() */
	/* Flushing a region without WRITEBACK has nothing to do. */
	TU_OK(upager_flush(up, a, len));
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
}

static void test_ro_budget_4k(void **state)
{
	(void)state;
	ro_budget_run(4 * TU_KIB, 8 * TU_MIB, 4000);
}

static void test_ro_budget_64k(void **state)
{
	(void)state;
	ro_budget_run(64 * TU_KIB, 16 * TU_MIB, 1500);
}

/* ---- nothing to do below the budget ---- */

/* Context switches so far of this process's thread named @name, or -1
 * if there is none. */
static long thread_switches(const char *name)
{
	pid_t tid = tu_thread_tid(name);
	if (tid <= 0)
		return -1;
	char path[64], buf[256];
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)tid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	long total = 0;
	while (fgets(buf, sizeof(buf), f)) {
		long v;
		if (sscanf(buf, "voluntary_ctxt_switches: %ld", &v) == 1 ||
		    sscanf(buf, "nonvoluntary_ctxt_switches: %ld", &v) == 1)
			total += v;
	}
	fclose(f);
	return total;
}

/* A region well below its budget: faults never wake the write-back thread
 * (it has nothing to evict; it wakes on its own every 100 ms to look).
 * A kick per install put a wake-up, often one that crosses CPUs, on every
 * fault's path. */
static void test_quiet_below_budget(void **state)
{
	(void)state;
	size_t len = 16 * TU_MIB, page = 4 * TU_KIB, npages = len / page;
	unsigned touches = 2048;
	const char *path = tu_make_file("quiet.dat", len);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK, len);
	upager_store_release(s);
	TU_OK(upager_advise(up, a, len, UPAGER_ADV_RANDOM));
	long before = thread_switches("upager-wb");
	assert_true(before >= 0);
	for (unsigned i = 0; i < touches; i++) {
		size_t off = (size_t)i * 1031 % npages * page + i % page;
		if (a[off] != tu_byte(off))
			fail_msg("byte %zu reads %#x, not %#x", off, a[off],
				 tu_byte(off));
	}
	long woke = thread_switches("upager-wb") - before;
	struct upager_stats st = tu_stats(up, a);
	print_message("%u faults, write-back thread switched %ld times\n",
		      (unsigned)st.faults, woke);
	assert_true(st.faults >= touches);
	assert_int_equal(st.evictions, 0);
	/* One a fault would be 2048 or more; its own timer gives a few. */
	if (woke >= (long)touches / 8)
		fail_msg("the write-back thread switched %ld times over %u "
			 "faults below the budget", woke, touches);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
}

/* ---- the runtime-wide budget ---- */

static void test_runtime_budget_two_regions(void **state)
{
	(void)state;
	size_t page = 4 * TU_KIB, len = 8 * TU_MIB;
	uint64_t budget = 4 * TU_MIB; /* the two regions hold 4x that */
	const char *p1 = tu_make_file("global-1.dat", len);
	const char *p2 = tu_make_file("global-2.dat", len);
	upager_store_t *s1 = tu_store_file(p1, UPAGER_STORE_WRITABLE);
	upager_store_t *s2 = tu_store_file(p2, UPAGER_STORE_WRITABLE);
	struct upager_config cfg = { .max_resident = budget };
	upager_t *up = tu_runtime(&cfg);
	uint8_t *a = map_or_skip(up, s1, len, page, UPAGER_MAP_WRITEBACK, 0);
	uint8_t *b = map_or_skip(up, s2, len, page, UPAGER_MAP_WRITEBACK, 0);
	upager_store_release(s1);
	upager_store_release(s2);
	uint8_t *sa = xmalloc(len), *sb = xmalloc(len);
	tu_fill(sa, 0, len);
	tu_fill(sb, 0, len);

	struct monitor m;
	monitor_start(&m, up, a, b);
	/* Two threads per region, each on its own half. */
	struct rw_thread t[4];
	for (unsigned i = 0; i < 4; i++) {
		uint8_t *base = i < 2 ? a : b, *sh = i < 2 ? sa : sb;
		size_t half = len / 2, lo = (i & 1) * half;
		t[i] = (struct rw_thread){
			.base = base, .shadow = sh, .lo = lo, .hi = lo + half,
			.page = page, .ops = 3000, .write_pct = 50,
			.seed = 101 + i,
		};
	}
	tu_run_threads(4, rw_main, t, sizeof(t[0]));
	monitor_check(&m, budget + 2 * BATCH_UNITS * page, "runtime budget");
	for (unsigned i = 0; i < 4; i++)
		if (t[i].bad)
			fail_msg("thread %u read %#x at byte %zu, shadow %#x",
				 i, t[i].got, t[i].bad_off, t[i].want);

	struct upager_stats st = tu_stats(up, NULL);
	tu_print_stats("runtime", &st);
	assert_true(st.evictions > 0);
	assert_true(st.writebacks > 0);
	assert_same(a, sa, len, "region 1 vs shadow");
	assert_same(b, sb, len, "region 2 vs shadow");
	TU_OK(upager_unmap(up, a));
	TU_OK(upager_unmap(up, b));
	upager_destroy(up);
	/* unmap wrote everything back. */
	uint8_t *f = xmalloc(len);
	pread_all(p1, f, len, 0);
	assert_same(f, sa, len, "file 1");
	pread_all(p2, f, len, 0);
	assert_same(f, sb, len, "file 2");
	free(f);
	free(sa);
	free(sb);
}

/* ---- flush durability ---- */

/* In a forked child: reads [off, off + len) of @path with pread and
 * compares it with want (a private malloc'ed copy, inherited by fork; the
 * region itself is not mapped in the child). Fails unless the child exits
 * 0. */
static void child_compare(const char *path, const uint8_t *want, size_t len,
			  uint64_t off)
{
	fflush(stdout);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		tu_child_default_signals();
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			_exit(2);
		uint8_t buf[65536];
		size_t done = 0;
		while (done < len) {
			size_t n = len - done < sizeof(buf) ? len - done :
							      sizeof(buf);
			ssize_t r = pread(fd, buf, n, (off_t)(off + done));
			if (r <= 0)
				_exit(3);
			if (memcmp(buf, want + done, (size_t)r))
				_exit(4);
			done += (size_t)r;
		}
		_exit(0);
	}
	int status = 0;
	char desc[64];
	assert_true(tu_wait_child(pid, 30000, &status));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("reader child: %s (2 open, 3 short read, 4 bytes "
			 "differ)", tu_status_str(status, desc, sizeof(desc)));
}

static void test_flush_durable_under_budget(void **state)
{
	(void)state;
	size_t page = 64 * TU_KIB, len = 8 * TU_MIB;
	const char *path = tu_make_file("flush-budget.dat", len);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK,
				 len / 4);
	upager_store_release(s);

	uint8_t *shadow = xmalloc(len);
	tu_fill(shadow, 0, len);
	run_rw(a, shadow, len, page, 500, 7);
	/* Expected bytes from memory itself, in a private buffer. */
	uint8_t *want = xmalloc(len);
	memcpy(want, a, len);
	assert_same(want, shadow, len, "region vs shadow");
	TU_OK(upager_flush(up, a, len));
	child_compare(path, want, len, 0);
	assert_int_equal(tu_stats(up, a).dirty_units, 0);

	/* Flushed units are write-protected again: new writes are seen. */
	uint64_t rng = 99;
	for (size_t off = 3 * page + 17; off < len; off += 5 * page + 333) {
		tu_fill_text(want + off, 200, &rng);
		memcpy(a + off, want + off, 200);
	}
	assert_true(tu_stats(up, a).dirty_units > 0);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	child_compare(path, want, len, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
	free(shadow);
}

static void test_flush_durable_partial(void **state)
{
	(void)state;
	size_t page = 64 * TU_KIB, units = 16, len = units * page;
	const char *path = tu_make_file("flush-part.dat", len);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK, 0);
	upager_store_release(s);
	uint8_t *orig = xmalloc(len), *want = xmalloc(len);
	tu_fill(orig, 0, len);
	memcpy(want, orig, len);

	/* Units 2 and 6 are only read; 1, 3, 5 (first half) and 9, 12 are
	 * written, 3 after a read (a write-protect fault). */
	assert_same(a + 2 * page, orig + 2 * page, page, "read unit 2");
	assert_same(a + 3 * page, orig + 3 * page, page, "read unit 3");
	assert_same(a + 6 * page, orig + 6 * page, page, "read unit 6");
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	static const size_t wr[] = { 1, 3, 5, 9, 12 };
	uint64_t rng = 5;
	for (size_t i = 0; i < sizeof(wr) / sizeof(wr[0]); i++) {
		size_t off = wr[i] * page + 1000;
		tu_fill_text(want + off, 3000, &rng);
		memcpy(a + off, want + off, 3000);
	}
	assert_int_equal(tu_stats(up, a).dirty_units, 5);

	/* Flush the first half (given as an unaligned range inside it). */
	TU_OK(upager_flush(up, a + 100, len / 2 - 200));
	assert_int_equal(tu_stats(up, a).dirty_units, 2);
	child_compare(path, want, len / 2, 0);
	/* The second half is still the old bytes in the file. */
	child_compare(path, orig + len / 2, len / 2, len / 2);
	assert_same(a, want, len, "region");

	/* Write a flushed unit again, then flush everything. */
	tu_fill_text(want + page, 64, &rng);
	memcpy(a + page, want + page, 64);
	assert_int_equal(tu_stats(up, a).dirty_units, 3);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	child_compare(path, want, len, 0);
	struct upager_stats st = tu_stats(up, a);
	assert_int_equal(st.writebacks, 6);
	assert_int_equal(st.write_errors, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(orig);
	free(want);
}

/* Write-back writes whole pages with O_DIRECT and the rest (a partial
 * last unit, every extent of a region at an unaligned store offset)
 * through the page cache, whether the store reads with O_DIRECT (@flags
 * UPAGER_STORE_DIRECT) or not: units evicted and read again must come back
 * as written, and a flush must reach the file, for aligned regions, a
 * region with a partial last unit and one at an unaligned store offset. */
static void flush_run(unsigned flags, uint64_t offset, size_t len)
{
	size_t page = 4 * TU_KIB, file_len = offset + len + 5000;
	const char *path = tu_make_file("flush-direct.dat", file_len);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE | flags);
	upager_t *up = tu_runtime(NULL);
	void *addr = NULL;
	struct upager_map_opts o = { .page_size = page,
				     .flags = UPAGER_MAP_WRITEBACK,
				     .max_resident = 4 * page };
	TU_OK(upager_map(up, s, offset, len, &o, &addr));
	upager_store_release(s);
	uint8_t *a = addr, *want = xmalloc(file_len);
	tu_fill(want, 0, file_len);
	/* Every other unit rewritten, through the budget (evictions write
	 * some back), the last one up to the region's last byte. */
	uint64_t rng = offset ^ len;
	for (size_t off = 0; off < len; off += 2 * page) {
		size_t n = len - off < page ? len - off : page;
		tu_fill_text(want + offset + off, n, &rng);
		memcpy(a + off, want + offset + off, n);
	}
	size_t last = (len - 1) & ~(page - 1);
	tu_fill_text(want + offset + last, len - last, &rng);
	memcpy(a + last, want + offset + last, len - last);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).write_errors, 0);
	/* The file around the region is untouched. */
	child_compare(path, want, file_len, 0);
	assert_same(a, want + offset, len, "region");
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
}

static void test_flush_durable_direct(void **state)
{
	(void)state;
	flush_run(UPAGER_STORE_DIRECT, 0, 64 * TU_KIB);
	flush_run(UPAGER_STORE_DIRECT, 8 * TU_KIB, 64 * TU_KIB + 1000);
	flush_run(UPAGER_STORE_DIRECT, 1000, 48 * TU_KIB);
}

static void test_flush_durable_offsets(void **state)
{
	(void)state;
	flush_run(0, 0, 64 * TU_KIB);
	flush_run(0, 8 * TU_KIB, 64 * TU_KIB + 1000); /* a tail */
	flush_run(0, 1000, 48 * TU_KIB);              /* unaligned */
}

/* Skips the test where the file lives in memory (tmpfs, ramfs): there
 * the page cache is the file, and no write or read goes around it. */
static void skip_in_memory(const char *path)
{
	struct statfs fs;
	assert_int_equal(statfs(path, &fs), 0);
	if (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC)
		tu_skip("%s is in memory: its page cache is the file", path);
}

/* Pages of the file cached in the page cache (mincore of a map). */
static size_t cached_pages(const char *path, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	size_t n = len / 4096, k = 0;
	unsigned char *vec = xmalloc(n);
	assert_int_equal(mincore(m, len, vec), 0);
	for (size_t i = 0; i < n; i++)
		k += vec[i] & 1;
	free(vec);
	munmap(m, len);
	close(fd);
	return k;
}

/* Write-back of whole pages bypasses the page cache: after a region four
 * times its budget is written through and flushed, the file holds every
 * byte and the page cache does not hold them a second time (a buffered
 * write-back leaves every page of it cached: 1024 of 1024 here). */
static void test_flush_bypasses_page_cache(void **state)
{
	(void)state;
	size_t page = 4 * TU_KIB, len = 4 * TU_MIB;
	const char *path = tu_make_file("flush-nocache.dat", len);
	skip_in_memory(path);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK,
				 len / 4);
	upager_store_release(s);
	uint8_t *want = xmalloc(len);
	uint64_t rng = 21;
	tu_fill_text(want, len, &rng);
	for (size_t off = 0; off < len; off += page)
		memcpy(a + off, want + off, page);
	TU_OK(upager_flush(up, a, len));
	struct upager_stats st = tu_stats(up, a);
	assert_int_equal(st.write_errors, 0);
	assert_true(st.evictions > 0);
	/* Before the comparison below, which reads the file into the
	 * page cache. */
	size_t cached = cached_pages(path, len);
	if (cached > len / page / 4)
		fail_msg("%zu of %zu pages of the file cached after write-back",
			 cached, len / page);
	child_compare(path, want, len, 0);
	assert_same(a, want, len, "region");
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
}

/* ---- write errors ---- */

/* A custom store in memory whose writes fail with -EIO while fail is set. */
struct mem_store {
	uint8_t *bytes;
	size_t size;
	pthread_mutex_t lock;
	atomic_bool fail;
	atomic_uint writes_tried;
};

static int mem_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct mem_store *m = ctx;
	if (off > m->size || len > m->size - off)
		return -EIO;
	pthread_mutex_lock(&m->lock);
	memcpy(buf, m->bytes + off, len);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int mem_write(void *ctx, const void *buf, size_t len, uint64_t off)
{
	struct mem_store *m = ctx;
	atomic_fetch_add(&m->writes_tried, 1);
	if (atomic_load(&m->fail))
		return -EIO;
	if (off > m->size || len > m->size - off)
		return -ENOSPC;
	pthread_mutex_lock(&m->lock);
	memcpy(m->bytes + off, buf, len);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int mem_size(void *ctx, uint64_t *size)
{
	struct mem_store *m = ctx;
	*size = m->size;
	return 0;
}

static upager_store_t *mem_store_new(struct mem_store *m, size_t size,
				     bool writable)
{
	m->size = size;
	m->bytes = xmalloc(size);
	tu_fill(m->bytes, 0, size);
	pthread_mutex_init(&m->lock, NULL);
	atomic_init(&m->fail, false);
	atomic_init(&m->writes_tried, 0);
	struct upager_store_ops ops = {
		.read = mem_read,
		.write = writable ? mem_write : NULL,
		.size = mem_size,
	};
	upager_store_t *s = NULL;
	TU_OK(upager_store_custom(&ops, m, &s));
	return s;
}

static void mem_store_free(struct mem_store *m)
{
	pthread_mutex_destroy(&m->lock);
	free(m->bytes);
}

/* Store bytes [off, off + len) under the store's lock. */
static void mem_snapshot(struct mem_store *m, uint8_t *out, size_t off,
			 size_t len)
{
	pthread_mutex_lock(&m->lock);
	memcpy(out, m->bytes + off, len);
	pthread_mutex_unlock(&m->lock);
}

static void test_write_error_flush_and_unmap(void **state)
{
	(void)state;
	size_t page = 4 * TU_KIB, len = TU_MIB;
	struct mem_store ms;
	upager_store_t *s = mem_store_new(&ms, len, true);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK, 0);
	upager_store_release(s);
	uint8_t *orig = xmalloc(len), *want = xmalloc(len),
		*got = xmalloc(len);
	tu_fill(orig, 0, len);
	memcpy(want, orig, len);
	uint64_t rng = 11;
	for (size_t u = 0; u < 8; u++) {
		size_t off = u * 17 * page + 100;
		tu_fill_text(want + off, 1000, &rng);
		memcpy(a + off, want + off, 1000);
	}
	assert_int_equal(tu_stats(up, a).dirty_units, 8);

	/* Writes fail: flush says so, counts it, keeps everything dirty. */
	atomic_store(&ms.fail, true);
	TU_ERR(upager_flush(up, a, len), -EIO);
	assert_true(atomic_load(&ms.writes_tried) > 0);
	struct upager_stats st = tu_stats(up, a);
	assert_true(st.write_errors > 0);
	assert_int_equal(st.writebacks, 0);
	assert_int_equal(st.dirty_units, 8);
	assert_same(a, want, len, "region after failed flush");
	mem_snapshot(&ms, got, 0, len);
	assert_same(got, orig, len, "store after failed flush");
	/* A failed flush is retried by the next one, which fails again. */
	TU_ERR(upager_flush(up, a + 100, 10), -EIO);
	assert_int_equal(tu_stats(up, a).dirty_units, 8);

	/* Unmap fails too and leaves the region usable. */
	TU_ERR(upager_unmap(up, a), -EIO);
	assert_same(a, want, len, "region after failed unmap");
	tu_fill_text(want + 40 * page, 500, &rng);
	memcpy(a + 40 * page, want + 40 * page, 500);
	assert_int_equal(tu_stats(up, a).dirty_units, 9);

	/* Writes work again: the next flush stores every unit. */
	atomic_store(&ms.fail, false);
	TU_OK(upager_flush(up, a, len));
	st = tu_stats(up, a);
	assert_int_equal(st.dirty_units, 0);
	assert_int_equal(st.writebacks, 9);
	mem_snapshot(&ms, got, 0, len);
	assert_same(got, want, len, "store after flush");

	/* Dirty again with failing writes: DISCARD forgets the writes, then
	 * unmap has nothing to write and succeeds. */
	uint8_t *stored = xmalloc(len);
	memcpy(stored, want, len);
	tu_fill_text(a + 3 * page, 700, &rng);
	atomic_store(&ms.fail, true);
	TU_ERR(upager_unmap(up, a), -EIO);
	TU_OK(upager_advise(up, a, len, UPAGER_ADV_DISCARD));
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	/* Discarded: the store's bytes read back. */
	assert_same(a, stored, len, "region after discard");
	TU_OK(upager_unmap(up, a));
	mem_snapshot(&ms, got, 0, len);
	assert_same(got, stored, len, "store after discard + unmap");
	upager_destroy(up);
	mem_store_free(&ms);
	free(stored);
	free(orig);
	free(want);
	free(got);
}

static void test_write_error_eviction_keeps_data(void **state)
{
	(void)state;
	size_t page = 64 * TU_KIB, units = 16, len = units * page;
	uint64_t budget = 4 * page;
	struct mem_store ms;
	upager_store_t *s = mem_store_new(&ms, len, true);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK,
				 budget);
	upager_store_release(s);
	uint8_t *want = xmalloc(len), *got = xmalloc(len);
	tu_fill(want, 0, len);

	/* Every unit dirty while the store refuses writes: over the budget,
	 * but nothing may be dropped. */
	atomic_store(&ms.fail, true);
	uint64_t rng = 23;
	for (size_t u = 0; u < units; u++) {
		tu_fill_text(want + u * page + 64, 2000, &rng);
		memcpy(a + u * page + 64, want + u * page + 64, 2000);
	}
	/* Give the eviction thread time to try (it re-checks every 100 ms). */
	uint64_t t0 = tu_now_ns();
	while (tu_stats(up, a).write_errors == 0 &&
	       tu_now_ns() - t0 < 5000000000ull)
		tu_sleep_ms(5);
	struct upager_stats st = tu_stats(up, a);
	tu_print_stats("failing store", &st);
	assert_true(st.write_errors > 0);
	assert_int_equal(st.evictions, 0);
	assert_int_equal(st.dirty_units, units);
	assert_int_equal(st.resident_bytes, len);
	assert_same(a, want, len, "region while writes fail");

	/* Writes succeed: flush stores it, and eviction can catch up. */
	atomic_store(&ms.fail, false);
	TU_OK(upager_flush(up, a, len));
	mem_snapshot(&ms, got, 0, len);
	assert_same(got, want, len, "store after flush");
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	t0 = tu_now_ns();
	while (tu_stats(up, a).resident_bytes > budget &&
	       tu_now_ns() - t0 < 5000000000ull)
		tu_sleep_ms(5);
	st = tu_stats(up, a);
	assert_true(st.resident_bytes <= budget);
	assert_true(st.evictions > 0);
	assert_same(a, want, len, "region after eviction");
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	mem_store_free(&ms);
	free(want);
	free(got);
}

/* A flush of dirty units scattered among clean, untouched and (in the
 * concurrent part) just-written units: the write-back thread protects
 * spans of nearby dirty units with one ioctl, so the units between them
 * are protected too. Every write made after the flush, to any unit, must
 * still be seen and reach the file with the next flush. */
struct sparse_writer {
	uint8_t *a;
	size_t len, page;
	atomic_bool stop;
	atomic_uint writes;
};

static void *sparse_writer_main(void *arg)
{
	struct sparse_writer *w = arg;
	uint64_t rng = 4242;
	while (!atomic_load(&w->stop)) {
		size_t u = (size_t)(tu_rand(&rng) % (w->len / w->page));
		size_t off = u * w->page + (size_t)(tu_rand(&rng) % (w->page - 8));
		uint64_t v = tu_rand(&rng);
		memcpy(w->a + off, &v, 8);
		atomic_fetch_add(&w->writes, 1);
	}
	return NULL;
}

static void flush_sparse_run(bool inline_faults)
{
	size_t page = 4 * TU_KIB, units = 1024, len = units * page;
	const char *path = tu_make_file(inline_faults ? "flush-sparse-i.dat" :
					"flush-sparse.dat", len);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_t *up = inline_faults ? tu_inline_runtime() : tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK, 0);
	upager_store_release(s);
	uint8_t *want = xmalloc(len);
	tu_fill(want, 0, len);
	uint64_t rng = 7;
	/* Units 0 mod 4 written, 1 mod 4 read (clean), 2 and 3 mod 4 left
	 * alone, except every eighth 3 mod 4 written; units 600-699 left
	 * alone (a gap wider than a span may bridge). */
	size_t dirty = 0;
	for (size_t u = 0; u < units; u++) {
		bool gap = u >= 600 && u < 700;
		size_t off = u * page + (u * 37) % (page - 64);
		if (!gap && (u % 4 == 0 || (u % 4 == 3 && u % 32 == 3))) {
			tu_fill_text(want + off, 64, &rng);
			memcpy(a + off, want + off, 64);
			dirty++;
		} else if (!gap && u % 4 == 1) {
			assert_same(a + off, want + off, 64, "clean unit");
		}
	}
	assert_int_equal(tu_stats(up, a).dirty_units, dirty);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	child_compare(path, want, len, 0);

	/* A write to every unit, flushed or not: each is seen. */
	for (size_t u = 0; u < units; u++) {
		size_t off = u * page + (u * 53) % (page - 64);
		tu_fill_text(want + off, 64, &rng);
		memcpy(a + off, want + off, 64);
	}
	assert_int_equal(tu_stats(up, a).dirty_units, units);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	child_compare(path, want, len, 0);

	/* Writes from another thread while flushes run: whatever the last
	 * flush after the writer stopped left in the file is memory. */
	struct sparse_writer w = { .a = a, .len = len, .page = page };
	atomic_init(&w.stop, false);
	atomic_init(&w.writes, 0);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, sparse_writer_main, &w), 0);
	/* At least 40 flushes, and until the writer has made 20,000 writes
	 * (bounded: a writer that stops making progress fails the test). */
	uint64_t t0 = tu_now_ns();
	unsigned flushes = 0;
	while (flushes < 40 || atomic_load(&w.writes) < 20000) {
		TU_OK(upager_flush(up, a, len));
		flushes++;
		if (tu_now_ns() - t0 > 20ull * 1000000000ull)
			break;
	}
	atomic_store(&w.stop, true);
	pthread_join(t, NULL);
	if (atomic_load(&w.writes) < 20000)
		fail_msg("writer made %u writes in 20 s of flushes",
			 atomic_load(&w.writes));
	memcpy(want, a, len);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	child_compare(path, want, len, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
}

static void test_flush_durable_sparse(void **state)
{
	(void)state;
	flush_sparse_run(false);
}

static void test_flush_durable_sparse_inline(void **state)
{
	(void)state;
	flush_sparse_run(true);
}

/* A flush right after a write that faulted the unit in must store that
 * write: the faulting thread has seen its write done, so the unit is dirty
 * for every later call, even if the worker that installed it has not
 * finished its bookkeeping yet. */
static void test_flush_durable_after_write_fault(void **state)
{
	(void)state;
	size_t page = 4 * TU_KIB, units = 256, len = units * page;
	struct mem_store ms;
	upager_store_t *s = mem_store_new(&ms, len, true);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK, 0);
	upager_store_release(s);
	unsigned missed = 0, first = 0;
	for (unsigned round = 0; round < 4; round++) {
		for (size_t u = 0; u < units; u++) {
			uint8_t v = (uint8_t)(0xa0 + round), got;
			a[u * page + 7] = v; /* write fault, missing unit */
			TU_OK(upager_flush(up, a + u * page, page));
			mem_snapshot(&ms, &got, u * page + 7, 1);
			if (got != v && missed++ == 0)
				first = (unsigned)u;
		}
		/* Drop everything so the next round faults again. */
		TU_OK(upager_advise(up, a, len, UPAGER_ADV_DONTNEED));
	}
	if (missed)
		fail_msg("%u of %zu flushes returned 0 without the write just "
			 "made (first: unit %u)", missed, 4 * units, first);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	mem_store_free(&ms);
}

/* ---- write streams ---- */

/* Maps a WRITEBACK region of len bytes over the writable file at path,
 * with readahead ra and budget len / 4. */
static uint8_t *map_stream(upager_t *up, const char *path, size_t len,
			   size_t page, size_t ra)
{
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	struct upager_map_opts o = { .page_size = page, .readahead = ra,
				     .flags = UPAGER_MAP_WRITEBACK,
				     .max_resident = len / 4 };
	void *addr = NULL;
	int rc = upager_map(up, s, 0, len, &o, &addr);
	upager_store_release(s);
	if (rc == -EOPNOTSUPP)
		tu_skip("userfaultfd write-protection unavailable: %s",
			upager_strerror(rc));
	if (rc)
		fail_msg("upager_map(len %zu, page %zu): %d (%s)", len, page,
			 rc, upager_strerror(rc));
	return addr;
}

/* Writes want's [0, len) into a front to back, 512 bytes at a time (so a
 * unit takes many stores). */
static void write_in_order(uint8_t *a, const uint8_t *want, size_t len)
{
	for (size_t off = 0; off < len; off += 512)
		memcpy(a + off, want + off, 512);
}

/* A write-back region of the file at path with a 64-unit readahead
 * window, every unit read in (present and clean, write-protected); @want
 * gets the file's bytes. Skips where write-protection is unavailable. */
static uint8_t *map_all_clean(upager_t *up, const char *path, size_t len,
			      size_t page, uint8_t *want)
{
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	struct upager_map_opts o = { .page_size = page,
				     .readahead = 64 * page,
				     .flags = UPAGER_MAP_WRITEBACK };
	uint8_t *a = NULL;
	int rc = upager_map(up, s, 0, len, &o, (void **)&a);
	upager_store_release(s);
	if (rc == -EOPNOTSUPP)
		tu_skip("userfaultfd write-protection unavailable: %s",
			upager_strerror(rc));
	TU_OK(rc);
	TU_OK(upager_advise(up, a, len, UPAGER_ADV_WILLNEED));
	tu_fill(want, 0, len);
	assert_same(a, want, len, "region read first");
	return a;
}

/* A sequential writer over a region four times its budget: every byte
 * written once, front to back, in 512-byte stores (so a unit takes many
 * stores). advice: UPAGER_ADV_NORMAL (the stream is found from the faults
 * and the map's readahead window) or UPAGER_ADV_SEQUENTIAL. */
static void seq_write_run(size_t page, int advice)
{
	size_t len = 32 * TU_MIB, units = len / page, budget = len / 4;
	char name[64];
	snprintf(name, sizeof(name), "seqw-%zu-%d.dat", page, advice);
	const char *path = tu_make_file(name, len);
	/* Readahead is installed in batches of up to BATCH_UNITS, each
	 * checked against the budget once: with two workers, two batches at
	 * most are on their way in above it. */
	struct upager_config cfg = { .workers = 2 };
	upager_t *up = tu_runtime(&cfg);
	/* A window of 64 units or 256 KiB, whichever is more. */
	size_t ra = 64 * page > 256 * TU_KIB ? 64 * page : 256 * TU_KIB;
	uint8_t *a = map_stream(up, path, len, page, ra);
	TU_OK(upager_advise(up, a, len, advice));
	uint8_t *want = xmalloc(len);
	uint64_t rng = 4242 + page;
	tu_fill_text(want, len, &rng);

	/* The budget is checked with the map's own window only: with
	 * UPAGER_ADV_SEQUENTIAL a quarter of the budget is read ahead, and
	 * when eviction lags (a loaded machine, a sanitizer build) a worker
	 * installs after waiting 50 ms for room (design.md section 8), so
	 * no bound holds whatever the load. */
	bool watch = advice == UPAGER_ADV_NORMAL;
	struct monitor m;
	if (watch)
		monitor_start(&m, up, a, NULL);
	write_in_order(a, want, len);
	if (watch)
		monitor_check(&m, budget + 2 * BATCH_UNITS * page,
			      "sequential write");
	struct upager_stats st = tu_stats(up, a);
	tu_print_stats("sequential write", &st);
	/* Without write streams every unit costs at least one fault (a
	 * missing write fault, or a write-protect fault on a unit read
	 * ahead), most of them two. How far below one per unit depends on
	 * how far readahead keeps ahead, so only that is checked here; the
	 * un-protected window is checked exactly by seq_write_window. */
	if (st.faults >= units)
		fail_msg("%llu faults for %zu units written in order: the "
			 "write stream was not followed",
			 (unsigned long long)st.faults, units);
	assert_true(st.evictions > 0);

	TU_OK(upager_flush(up, a, len));
	st = tu_stats(up, a);
	assert_int_equal(st.dirty_units, 0);
	/* Every unit was written, so every unit was written back. */
	assert_true(st.writebacks >= units);
	child_compare(path, want, len, 0);
	assert_same(a, want, len, "region after flush");
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	uint8_t *got = xmalloc(len);
	pread_all(path, got, len, 0);
	assert_same(got, want, len, "file after unmap");
	free(got);
	free(want);
}

static void test_seq_write_4k(void **state)
{
	(void)state;
	seq_write_run(4 * TU_KIB, UPAGER_ADV_NORMAL);
}

static void test_seq_write_4k_advised(void **state)
{
	(void)state;
	seq_write_run(4 * TU_KIB, UPAGER_ADV_SEQUENTIAL);
}

static void test_seq_write_64k(void **state)
{
	(void)state;
	seq_write_run(64 * TU_KIB, UPAGER_ADV_NORMAL);
}

/* Units all present and clean (read first), then written in order: each
 * write-protect fault un-protects the clean units after it up to the end
 * of the readahead window (64 units), so the writer takes one fault per
 * window instead of one per unit. Nothing is fetched meanwhile, so the
 * count does not depend on timing. */
static void seq_write_window_run(bool inline_faults)
{
	size_t page = 4 * TU_KIB, len = 4 * TU_MIB, units = len / page;
	const char *path = tu_make_file("seqw-window.dat", len);
	upager_t *up = inline_faults ? tu_inline_runtime() : tu_runtime(NULL);
	uint8_t *want = xmalloc(len);
	uint8_t *a = map_all_clean(up, path, len, page, want);
	struct upager_stats st0 = tu_stats_settled(up, a);
	assert_int_equal(st0.resident_bytes, len);
	assert_int_equal(st0.dirty_units, 0);

	uint64_t rng = 5;
	tu_fill_text(want, len, &rng);
	write_in_order(a, want, len);
	struct upager_stats st1 = tu_stats(up, a);
	uint64_t wp = st1.faults - st0.faults;
	printf("  %llu write-protect faults for %zu units\n",
	       (unsigned long long)wp, units);
	if (wp > units / 32)
		fail_msg("%llu write-protect faults for %zu clean units "
			 "written in order (one per 64-unit window expected)",
			 (unsigned long long)wp, units);
	assert_int_equal(st1.dirty_units, units);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).writebacks, units);
	child_compare(path, want, len, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
}

static void test_seq_write_window(void **state)
{
	(void)state;
	seq_write_window_run(false);
}

/* The same with faults served in the faulting thread (UPAGER_CFG_INLINE):
 * its write-protect faults make the window writable too (inline.c
 * wp_fault(); one fault a unit before). */
static void test_seq_write_window_inline(void **state)
{
	(void)state;
	seq_write_window_run(true);
}

/* Clean units scattered among dirty ones (every other unit written
 * before, with RANDOM advice so that no write window forms), then all
 * written in order (SEQUENTIAL): the write window un-protects the clean
 * units ahead of the writer, across the dirty ones, so the writer takes
 * about one fault per window. Un-protecting only the run of clean units
 * right after each fault cost one write-protect fault per clean unit here
 * (and in upager-budget-bench's sequential write after its random phase,
 * about 31,000 round trips). Every unit is present throughout: no read,
 * no timing in the count. */
static void seq_write_scattered_run(bool inline_faults)
{
	size_t page = 4 * TU_KIB, len = 4 * TU_MIB, units = len / page;
	const char *path = tu_make_file("seqw-scattered.dat", len);
	upager_t *up = inline_faults ? tu_inline_runtime() : tu_runtime(NULL);
	uint8_t *want = xmalloc(len);
	uint8_t *a = map_all_clean(up, path, len, page, want);
	TU_OK(upager_advise(up, a, len, UPAGER_ADV_RANDOM));
	for (size_t u = 0; u < units; u += 2)
		a[u * page] = want[u * page] = (uint8_t)~want[u * page];
	struct upager_stats st0 = tu_stats_settled(up, a);
	assert_int_equal(st0.dirty_units, units / 2);

	/* SEQUENTIAL: under NORMAL advice faults two units apart are not
	 * taken for a stream in the first place. */
	TU_OK(upager_advise(up, a, len, UPAGER_ADV_SEQUENTIAL));
	uint64_t rng = 9;
	tu_fill_text(want, len, &rng);
	write_in_order(a, want, len);
	struct upager_stats st1 = tu_stats(up, a);
	uint64_t wp = st1.faults - st0.faults;
	printf("  %llu write-protect faults for %zu clean units among dirty "
	       "ones\n", (unsigned long long)wp, units / 2);
	if (wp > units / 16)
		fail_msg("%llu write-protect faults for %zu clean units "
			 "written in order among dirty ones (about one per "
			 "window expected)", (unsigned long long)wp,
			 units / 2);
	assert_int_equal(st1.dirty_units, units);
	TU_OK(upager_flush(up, a, len));
	child_compare(path, want, len, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
}

static void test_seq_write_window_scattered(void **state)
{
	(void)state;
	seq_write_scattered_run(false);
}

static void test_seq_write_window_scattered_inline(void **state)
{
	(void)state;
	seq_write_scattered_run(true);
}

/* A sequential read scan over the same kind of region is not a write
 * stream: nothing becomes dirty, nothing is written back, though the
 * budget evicts most of what was read. A second scan from the start reads
 * ahead as the first did: the window the first pass left queued to the
 * end of the region once stopped every later pass from reading ahead at
 * all (a fault per unit). */
static void seq_read_run(int advice, bool inline_faults)
{
	size_t page = 4 * TU_KIB, len = 32 * TU_MIB, units = len / page;
	char name[64];
	snprintf(name, sizeof(name), "seqr-%d%s.dat", advice,
		 inline_faults ? "-i" : "");
	const char *path = tu_make_file(name, len);
	upager_t *up = inline_faults ? tu_inline_runtime() : tu_runtime(NULL);
	uint8_t *a = map_stream(up, path, len, page, 256 * TU_KIB);
	TU_OK(upager_advise(up, a, len, advice));
	int fd = tu_open(path);
	struct tu_ref ref = { .fd = fd, .length = len, .store_size = len };
	assert_true(tu_check(&ref, a, 0, len)); /* a scan, front to back */
	struct upager_stats st = tu_stats_settled(up, a);
	tu_print_stats("sequential read", &st);
	assert_true(tu_check(&ref, a, 0, len));
	close(fd);
	struct upager_stats st2 = tu_stats_settled(up, a);
	tu_print_stats("second pass", &st2);
	uint64_t faults = st2.faults - st.faults;
	if (faults > units / 2)
		fail_msg("second scan: %llu faults for %zu units (readahead "
			 "should have served most)",
			 (unsigned long long)faults, units);
	assert_true(st2.prefetched - st.prefetched > units / 2);
	st = st2;
	assert_true(st.evictions > 0);
	assert_int_equal(st.dirty_units, 0);
	assert_int_equal(st.writebacks, 0);
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).writebacks, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
}

static void test_seq_read_scan_writes_nothing(void **state)
{
	(void)state;
	seq_read_run(UPAGER_ADV_NORMAL, false);
}

/* Inline faults: the workers' readahead for a read stream, under the
 * budget, marks nothing dirty either. */
static void test_seq_read_scan_inline_writes_nothing(void **state)
{
	(void)state;
	seq_read_run(UPAGER_ADV_NORMAL, true);
}

static void test_seq_read_scan_advised_writes_nothing(void **state)
{
	(void)state;
	seq_read_run(UPAGER_ADV_SEQUENTIAL, false);
}

/* A region reaching past the end of its file: a write stream that ends at
 * the end of the file marks nothing after it, so the file keeps its size
 * (write-back of a unit marked ahead would extend it with zeros). */
static void test_seq_write_file_end(void **state)
{
	(void)state;
	size_t page = 4 * TU_KIB, flen = 2 * TU_MIB, len = 8 * TU_MIB;
	const char *path = tu_make_file("seqw-end.dat", flen);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_stream(up, path, len, page, 1 * TU_MIB);
	TU_OK(upager_advise(up, a, len, UPAGER_ADV_SEQUENTIAL));
	uint8_t *want = xmalloc(flen);
	uint64_t rng = 77;
	tu_fill_text(want, flen, &rng);
	write_in_order(a, want, flen);
	TU_OK(upager_flush(up, a, len));
	struct stat sb;
	assert_int_equal(stat(path, &sb), 0);
	if ((size_t)sb.st_size != flen)
		fail_msg("file grew from %zu to %lld bytes", flen,
			 (long long)sb.st_size);
	child_compare(path, want, flen, 0);
	/* Past the end the region reads zeros and stays clean. */
	assert_int_equal(tu_stats(up, a).dirty_units, 0);
	for (size_t off = flen; off < len; off += page)
		assert_int_equal(a[off], 0);
	TU_OK(upager_unmap(up, a));
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, flen);
	upager_destroy(up);
	free(want);
}

/* ---- DONTNEED, DISCARD, unmap, destroy ---- */

static void test_advice_dontneed_writes_back(void **state)
{
	(void)state;
	size_t page = 64 * TU_KIB, len = 16 * page;
	const char *path = tu_make_file("dontneed.dat", len);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page, UPAGER_MAP_WRITEBACK, 0);
	upager_store_release(s);
	uint8_t *want = xmalloc(len), *got = xmalloc(len);
	tu_fill(want, 0, len);
	uint64_t rng = 3;
	tu_fill_text(want + 2 * page + 500, page + 1000, &rng);
	memcpy(a + 2 * page + 500, want + 2 * page + 500, page + 1000);
	assert_same(a + 8 * page, want + 8 * page, page, "read unit 8");
	struct upager_stats st0 = tu_stats(up, a);
	assert_int_equal(st0.dirty_units, 2);
	assert_int_equal(st0.resident_bytes, 3 * page);

	/* Units 2, 3 (dirty) and 8 (clean) dropped; 2 and 3 written first. */
	TU_OK(upager_advise(up, a + 2 * page, 7 * page, UPAGER_ADV_DONTNEED));
	struct upager_stats st1 = tu_stats(up, a);
	assert_int_equal(st1.dirty_units, 0);
	assert_int_equal(st1.writebacks - st0.writebacks, 2);
	assert_int_equal(st1.resident_bytes, 0);
	pread_all(path, got, len, 0);
	assert_same(got, want, len, "file after DONTNEED");
	/* Fetched again from the store. */
	assert_same(a + 2 * page, want + 2 * page, 2 * page, "refetched");
	struct upager_stats st2 = tu_stats(up, a);
	assert_int_equal(st2.bytes_fetched - st1.bytes_fetched, 2 * page);

	/* DISCARD forgets writes: the store's bytes come back. */
	tu_fill_text(a + 5 * page, 800, &rng);
	assert_int_equal(tu_stats(up, a).dirty_units, 1);
	TU_OK(upager_advise(up, a + 5 * page, page, UPAGER_ADV_DISCARD));
	struct upager_stats st3 = tu_stats(up, a);
	assert_int_equal(st3.dirty_units, 0);
	assert_int_equal(st3.writebacks, st2.writebacks);
	assert_same(a, want, len, "region after DISCARD");
	pread_all(path, got, len, 0);
	assert_same(got, want, len, "file after DISCARD");
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
	free(got);
}

/* Pins the page at @p for I/O the way an io_uring fixed buffer does;
 * returns the ring's descriptor (closing it unpins), or skips. */
static int pin_page(void *p)
{
	struct io_uring_params prm;
	memset(&prm, 0, sizeof(prm));
	int fd = (int)syscall(__NR_io_uring_setup, 1, &prm);
	if (fd < 0)
		tu_skip("io_uring_setup: %s", strerror(errno));
	struct iovec iov = { .iov_base = p, .iov_len = 4096 };
	if (syscall(__NR_io_uring_register, fd, IORING_REGISTER_BUFFERS, &iov,
		    1) != 0)
		fail_msg("IORING_REGISTER_BUFFERS: %s", strerror(errno));
	return fd;
}

/* A dirty unit whose page is pinned for I/O cannot be moved out of the
 * region: eviction takes it out by copy instead, in a ZERO_REMOVED region
 * too (where its own zap must not read as the application's drop), and
 * nothing is lost. The units around it are evicted in spans with it. */
static void test_pinned_unit_evicted_intact(void **state)
{
	(void)state;
	size_t page = 4 * TU_KIB, len = 4 * TU_MIB, pinned = 100 * page;
	const char *path = tu_make_file("pinned.dat", len);
	upager_store_t *s = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s, len, page,
				 UPAGER_MAP_WRITEBACK | UPAGER_MAP_ZERO_REMOVED,
				 len / 4);
	upager_store_release(s);
	uint8_t *want = xmalloc(len), *got = xmalloc(len);
	tu_fill(want, 0, len);
	uint64_t rng = 11;
	tu_fill_text(want + pinned, page, &rng);
	memcpy(a + pinned, want + pinned, page);
	int ring = pin_page(a + pinned);

	/* Write every other unit until the pinned one has been evicted. */
	uint64_t end = tu_now_ns() + 60 * 1000000000ull;
	unsigned char in = 1;
	for (unsigned pass = 0; in & 1; pass++) {
		if (tu_now_ns() > end)
			fail_msg("pinned unit still resident after 60 s");
		for (size_t off = 0; off < len; off += page) {
			if (off == pinned)
				continue;
			a[off + pass % page] = want[off + pass % page] =
				(uint8_t)(pass * 7 + 1);
		}
		assert_int_equal(mincore(a + pinned, page, &in), 0);
	}
	assert_same(a, want, len, "region after evicting the pinned unit");
	close(ring);
	TU_OK(upager_flush(up, a, len));
	pread_all(path, got, len, 0);
	assert_same(got, want, len, "file after flush");
	struct upager_stats st = tu_stats(up, a);
	assert_int_equal(st.write_errors, 0);
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	free(want);
	free(got);
}

/* Misses that are no stream's read around the page cache where none of
 * the unit is cached: after random reads of a cold file (and, @writable,
 * a write in every fourth unit read), the region holds the file's bytes
 * and the page cache none of them (a buffered read leaves each unit read
 * cached, and some around it: 652 of 1024 pages for 446 units of 4 KiB
 * with the library before). Units the page cache does
 * hold (written to the file after the region was mapped, not yet on the
 * disk) still read as the file has them, also where a read skips the
 * lookup. Without @writable the store is read-only and the region has no
 * write-back: the same holds (the test's process owns the file, so the
 * store may trust mincore()). */
static void demand_direct_run(unsigned cfg_flags, size_t page, bool writable)
{
	size_t len = 4 * TU_MIB, units = len / page;
	const char *path = tu_make_file("demand-direct.dat", len);
	skip_in_memory(path);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	assert_int_equal(cached_pages(path, len), 0);
	upager_store_t *s =
		tu_store_file(path, writable ? UPAGER_STORE_WRITABLE : 0);
	struct upager_config cfg = { .flags = cfg_flags };
	upager_t *up = tu_runtime(&cfg);
	uint8_t *a = map_or_skip(up, s, len, page,
				 writable ? UPAGER_MAP_WRITEBACK : 0, 0);
	upager_store_release(s);
	TU_OK(upager_advise(up, a, len, UPAGER_ADV_RANDOM));
	uint8_t *want = xmalloc(len);
	tu_fill(want, 0, len);

	/* Units 7, 7 + 8, ... are rewritten in the file, through the page
	 * cache, before the region reads them. */
	uint64_t rng = 3;
	for (size_t u = 7; u < units; u += 8) {
		tu_fill_text(want + u * page, page, &rng);
		assert_true(pwrite(fd, want + u * page, page,
				   (off_t)(u * page)) == (ssize_t)page);
	}
	size_t written = units / 8, order[1024];
	assert_true(units <= 1024);
	tu_shuffle(order, units, 17, true);
	size_t read = 0;
	for (size_t i = 0; i < units / 2; i++) {
		size_t u = order[i];
		if (u % 8 == 7)
			continue;
		assert_same(a + u * page, want + u * page, page, "unit read");
		if (writable && i % 4 == 0)
			a[u * page + 5] = want[u * page + 5] ^= 0x5a;
		read++;
	}
	/* Then the units rewritten through the page cache, in random order.
	 * After a run of reads that found the file cold, most reads skip the
	 * page-cache lookup (store.c, DIO_COLD_RUN) and read with O_DIRECT,
	 * so some of these do, on dirty cached pages: the kernel writes
	 * those back before it reads, and the bytes are still the file's. */
	for (size_t i = 0; i < units; i++) {
		size_t u = order[i];
		if (u % 8 == 7)
			assert_same(a + u * page, want + u * page, page,
				    "unit rewritten through the page cache");
	}
	size_t cached = cached_pages(path, len);
	if (cached > written * (page / 4096))
		fail_msg("%zu pages cached after reading %zu cold units (%zu "
			 "pages written through the page cache)", cached, read,
			 written * (page / 4096));
	assert_same(a, want, len, "region");
	if (writable) {
		TU_OK(upager_flush(up, a, len));
		child_compare(path, want, len, 0);
	}
	TU_OK(upager_unmap(up, a));
	upager_destroy(up);
	close(fd);
	free(want);
}

static void test_demand_reads_direct(void **state)
{
	(void)state;
	demand_direct_run(0, 4 * TU_KIB, true);
	demand_direct_run(0, 64 * TU_KIB, true);
}

static void test_demand_reads_direct_inline(void **state)
{
	(void)state;
	demand_direct_run(UPAGER_CFG_INLINE, 4 * TU_KIB, true);
	demand_direct_run(UPAGER_CFG_INLINE, 64 * TU_KIB, true);
}

static void test_demand_reads_direct_read_only(void **state)
{
	(void)state;
	demand_direct_run(0, 4 * TU_KIB, false);
	demand_direct_run(UPAGER_CFG_INLINE, 4 * TU_KIB, false);
	demand_direct_run(UPAGER_CFG_INLINE, 64 * TU_KIB, false);
}

static void test_unmap_and_destroy_write_back(void **state)
{
	(void)state;
	size_t page = 4 * TU_KIB, len = 2 * TU_MIB;
	const char *p1 = tu_make_file("unmap-wb.dat", len);
	const char *p2 = tu_make_file("destroy-wb.dat", len);
	upager_store_t *s1 = tu_store_file(p1, UPAGER_STORE_WRITABLE);
	upager_store_t *s2 = tu_store_file(p2, UPAGER_STORE_WRITABLE);
	upager_t *up = tu_runtime(NULL);
	uint8_t *a = map_or_skip(up, s1, len, page, UPAGER_MAP_WRITEBACK, 0);
	uint8_t *b = map_or_skip(up, s2, len, page, UPAGER_MAP_WRITEBACK, 0);
	upager_store_release(s1);
	upager_store_release(s2);
	uint8_t *wa = xmalloc(len), *wb = xmalloc(len), *got = xmalloc(len);
	tu_fill(wa, 0, len);
	tu_fill(wb, 0, len);
	uint64_t rng = 77;
	for (size_t off = 123; off + 300 < len; off += 37 * page + 71) {
		tu_fill_text(wa + off, 300, &rng);
		memcpy(a + off, wa + off, 300);
		tu_fill_text(wb + off, 300, &rng);
		memcpy(b + off, wb + off, 300);
	}
	TU_OK(upager_unmap(up, a));
	pread_all(p1, got, len, 0);
	assert_same(got, wa, len, "file after unmap");
	upager_destroy(up); /* b still mapped */
	pread_all(p2, got, len, 0);
	assert_same(got, wb, len, "file after destroy");
	free(wa);
	free(wb);
	free(got);
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
	(void)state;
	size_t len = 256 * TU_KIB;
	const char *path = tu_make_file("bad.dat", len);
	upager_t *up = tu_runtime(NULL);
	struct upager_map_opts wo = { .flags = UPAGER_MAP_WRITEBACK };
	void *addr = NULL;

	/* Nowhere to write back to. */
	upager_store_t *ro = tu_store_file(path, 0);
	TU_ERR(upager_map(up, ro, 0, len, &wo, &addr), -EINVAL);
	assert_null(addr);
	struct mem_store ms;
	upager_store_t *nw = mem_store_new(&ms, len, false);
	TU_ERR(upager_map(up, nw, 0, len, &wo, &addr), -EINVAL);
	assert_null(addr);
	assert_int_equal(tu_stats(up, NULL).regions, 0);

	/* An lz4 cache over a read-only file maps (the lz4 store has a
	 * write callback), but its write-backs fail with -EROFS: reported,
	 * never dropped. */
	upager_store_t *lz = NULL;
	TU_OK(upager_store_lz4(NULL, ro, &lz));
	uint8_t *c = map_or_skip(up, lz, len, 4096, UPAGER_MAP_WRITEBACK, 0);
	memset(c + 5000, 'x', 10);
	TU_ERR(upager_flush(up, c, len), -EROFS);
	assert_int_equal(tu_stats(up, c).dirty_units, 1);
	assert_int_equal(c[5009], 'x');
	TU_OK(upager_advise(up, c, len, UPAGER_ADV_DISCARD));
	TU_OK(upager_unmap(up, c));
	upager_store_release(lz);

	/* Flush arguments. */
	upager_store_t *rw = tu_store_file(path, UPAGER_STORE_WRITABLE);
	uint8_t *a = map_or_skip(up, rw, len, 4096, UPAGER_MAP_WRITEBACK, 0);
	uint8_t *r = map_or_skip(up, ro, len, 4096, 0, 0);
	a[10] = 1;
	TU_ERR(upager_flush(NULL, a, len), -EINVAL);
	TU_ERR(upager_flush(up, a, 0), -EINVAL);
	TU_ERR(upager_flush(up, NULL, len), -EINVAL);
	TU_ERR(upager_flush(up, a, len + 1), -EINVAL);
	TU_ERR(upager_flush(up, a + len - 10, 4096), -EINVAL);
	TU_ERR(upager_flush(up, &addr, 8), -EINVAL);
	/* None of these wrote anything. */
	assert_int_equal(tu_stats(up, a).dirty_units, 1);
	assert_int_equal(tu_stats(up, a).writebacks, 0);
	/* A region without WRITEBACK has nothing to flush. */
	r[10] = 1;
	TU_OK(upager_flush(up, r, len));
	TU_OK(upager_flush(up, a, len));
	assert_int_equal(tu_stats(up, a).dirty_units, 0);

	TU_OK(upager_unmap(up, a));
	TU_OK(upager_unmap(up, r));
	upager_store_release(ro);
	upager_store_release(rw);
	upager_store_release(nw);
	upager_destroy(up);
	mem_store_free(&ms);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_rw_file_4k),
	cmocka_unit_test(test_rw_file_64k),
	cmocka_unit_test(test_rw_file_2m),
	cmocka_unit_test(test_rw_direct_4k),
	cmocka_unit_test(test_rw_direct_64k),
	cmocka_unit_test(test_rw_lz4_4k),
	cmocka_unit_test(test_rw_lz4_64k),
	cmocka_unit_test(test_rw_lz4_2m),
	cmocka_unit_test(test_rw_lz4file_4k),
	cmocka_unit_test(test_rw_lz4file_64k),
	cmocka_unit_test(test_rw_lz4file_2m),
	cmocka_unit_test(test_rw_inline_4k),
	cmocka_unit_test(test_rw_inline_64k),
	cmocka_unit_test(test_rw_inline_2m),
	cmocka_unit_test(test_rw_inline_direct_4k),
	cmocka_unit_test(test_rw_inline_lz4_4k),
	cmocka_unit_test(test_rw_inline_lz4_64k),
	cmocka_unit_test(test_rw_inline_lz4_2m),
	cmocka_unit_test(test_ro_budget_4k),
	cmocka_unit_test(test_ro_budget_64k),
	cmocka_unit_test(test_quiet_below_budget),
	cmocka_unit_test(test_runtime_budget_two_regions),
	cmocka_unit_test(test_flush_durable_under_budget),
	cmocka_unit_test(test_flush_durable_partial),
	cmocka_unit_test(test_flush_durable_direct),
	cmocka_unit_test(test_flush_durable_offsets),
	cmocka_unit_test(test_flush_bypasses_page_cache),
	cmocka_unit_test(test_flush_durable_after_write_fault),
	cmocka_unit_test(test_flush_durable_sparse),
	cmocka_unit_test(test_flush_durable_sparse_inline),
	cmocka_unit_test(test_seq_write_4k),
	cmocka_unit_test(test_seq_write_4k_advised),
	cmocka_unit_test(test_seq_write_64k),
	cmocka_unit_test(test_seq_write_window),
	cmocka_unit_test(test_seq_write_window_inline),
	cmocka_unit_test(test_seq_write_window_scattered),
	cmocka_unit_test(test_seq_write_window_scattered_inline),
	cmocka_unit_test(test_seq_write_file_end),
	cmocka_unit_test(test_seq_read_scan_writes_nothing),
	cmocka_unit_test(test_seq_read_scan_inline_writes_nothing),
	cmocka_unit_test(test_seq_read_scan_advised_writes_nothing),
	cmocka_unit_test(test_write_error_flush_and_unmap),
	cmocka_unit_test(test_write_error_eviction_keeps_data),
	cmocka_unit_test(test_advice_dontneed_writes_back),
	cmocka_unit_test(test_pinned_unit_evicted_intact),
	cmocka_unit_test(test_demand_reads_direct),
	cmocka_unit_test(test_demand_reads_direct_inline),
	cmocka_unit_test(test_demand_reads_direct_read_only),
	cmocka_unit_test(test_unmap_and_destroy_write_back),
	cmocka_unit_test(test_bad_input),
};

TU_MAIN("writeback", tests)
