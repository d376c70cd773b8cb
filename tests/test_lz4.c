/*
 * test_lz4.c - the lz4 compressed store (src/store_lz4.c): alone and
 * stacked over a file or a custom store, from several threads at once,
 * through the runtime, and with damaged blocks.
 *
 * The store's read and write callbacks are called directly through the
 * store's ops (this test links upager_static and includes internal.h):
 * that is how a region's fetch reaches them, and it lets every byte
 * written be compared with a shadow copy. Data comes in three kinds that
 * exercise the store's three encodings: text-like (compressed), random
 * (stored raw) and zeros (stored as nothing).
 *
 * Multi-threaded tests keep each byte owned by one thread (whole blocks,
 * or one slice of a shared block that every thread writes with partial
 * block writes), so the final contents are known exactly even though the
 * writes race on the same blocks; a lost read-modify-write shows up as a
 * wrong slice. Threads record failures and the main thread asserts.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/internal.h"
#include "../src/store_lz4.h"

#define BS 4096u

/* ---- data and store helpers ---- */

static void fill_random(uint8_t *p, size_t len, uint64_t *rng)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(tu_rand(rng) >> 56);
}

enum kind { K_TEXT, K_RANDOM, K_ZERO };

static void fill_kind(uint8_t *p, size_t len, enum kind k, uint64_t *rng)
{
	if (k == K_TEXT)
		tu_fill_text(p, len, rng);
	else if (k == K_RANDOM)
		fill_random(p, len, rng);
	else
		memset(p, 0, len);
}

static int st_read(upager_store_t *s, void *buf, size_t len, uint64_t off)
{
	return s->ops.read(s->ctx, buf, len, off);
}

static int st_write(upager_store_t *s, const void *buf, size_t len,
		    uint64_t off)
{
	return s->ops.write(s->ctx, buf, len, off);
}

static upager_store_t *lz4_store(size_t bsize, uint64_t max_bytes,
				 uint64_t size, upager_store_t *lower)
{
	struct upager_lz4_opts o = { .block_size = bsize,
				     .max_bytes = max_bytes,
				     .size = size };
	upager_store_t *s = NULL;
	TU_OK(upager_store_lz4(&o, lower, &s));
	assert_non_null(s);
	return s;
}

static struct upager_lz4_stats lz4_stats(upager_store_t *s)
{
	struct upager_lz4_stats st;
	TU_OK(upager_store_lz4_stats(s, &st));
	return st;
}

/* Fails with the first differing offset unless the buffers match. */
static void expect_same(const uint8_t *got, const uint8_t *want, size_t n,
			uint64_t base, const char *what)
{
	if (memcmp(got, want, n) == 0)
		return;
	size_t i = 0;
	while (got[i] == want[i])
		i++;
	fail_msg("%s: byte %llu is 0x%02x, want 0x%02x", what,
		 (unsigned long long)(base + i), got[i], want[i]);
}

/* Reads [off, off+len) from @s and compares it with @shadow + off. */
static void check_range(upager_store_t *s, const uint8_t *shadow,
			uint64_t off, size_t len, const char *what)
{
	uint8_t *buf = malloc(len ? len : 1);
	assert_non_null(buf);
	memset(buf, 0xa5, len);
	TU_OK(st_read(s, buf, len, off));
	expect_same(buf, shadow + off, len, off, what);
	free(buf);
}

/* ---- a custom lower store in memory ---- */

#define MEM_MAX_BLOCKS 1024

struct mem {
	uint8_t *buf;
	size_t size;
	atomic_int fail_reads; /* reads return -EIO while set */
	atomic_uint_fast64_t reads, writes;
	atomic_uint_fast64_t block_reads[MEM_MAX_BLOCKS];
};

static int mem_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct mem *m = ctx;
	if (atomic_load(&m->fail_reads))
		return -EIO;
	if (off > m->size || len > m->size - off)
		return -ERANGE; /* the contract: never past size */
	atomic_fetch_add(&m->reads, 1);
	atomic_fetch_add(&m->block_reads[(off / BS) % MEM_MAX_BLOCKS], 1);
	memcpy(buf, m->buf + off, len);
	return 0;
}

static int mem_write(void *ctx, const void *buf, size_t len, uint64_t off)
{
	struct mem *m = ctx;
	if (off > m->size || len > m->size - off)
		return -ENOSPC;
	atomic_fetch_add(&m->writes, 1);
	memcpy(m->buf + off, buf, len);
	return 0;
}

static int mem_size(void *ctx, uint64_t *size)
{
	*size = ((struct mem *)ctx)->size;
	return 0;
}

/* A custom store over @m (size bytes, filled with text when @seed != 0).
 * @writable: with a write callback. */
static upager_store_t *mem_store(struct mem *m, size_t size, uint64_t seed,
				 bool writable)
{
	memset(m, 0, sizeof(*m));
	m->buf = calloc(1, size);
	assert_non_null(m->buf);
	m->size = size;
	if (seed)
		tu_fill_text(m->buf, size, &seed);
	struct upager_store_ops ops = { .read = mem_read,
					.write = writable ? mem_write : NULL,
					.size = mem_size };
	upager_store_t *s = NULL;
	TU_OK(upager_store_custom(&ops, m, &s));
	return s;
}

/* ---- options ---- */

static void test_bad_options_are_rejected(void **state)
{
	(void)state;
	static const struct upager_lz4_opts bad[] = {
		{ .block_size = 2048 },
		{ .block_size = 6 * 1024 },
		{ .block_size = 4 * 1024 * 1024 },
		{ .acceleration = -1 },
		{ .acceleration = 65538 },
		{ .flags = 1 },
	};
	upager_store_t *sentinel = (upager_store_t *)&bad, *s = sentinel;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		TU_ERR(upager_store_lz4(&bad[i], NULL, &s), -EINVAL);
		assert_ptr_equal(s, sentinel);
	}
	TU_ERR(upager_store_lz4(NULL, NULL, NULL), -EINVAL);

	/* Limits are accepted. */
	struct upager_lz4_opts ok = { .block_size = 2 * 1024 * 1024,
				      .acceleration = 65537 };
	TU_OK(upager_store_lz4(&ok, NULL, &s));
	upager_store_release(s);
	TU_OK(upager_store_lz4(NULL, NULL, &s));

	/* Stats: only lz4 stores. */
	struct upager_lz4_stats st;
	TU_ERR(upager_store_lz4_stats(NULL, &st), -EINVAL);
	TU_ERR(upager_store_lz4_stats(s, NULL), -EINVAL);
	struct mem m;
	upager_store_t *c = mem_store(&m, BS, 0, true);
	TU_ERR(upager_store_lz4_stats(c, &st), -EINVAL);
	TU_ERR(upager__lz4_corrupt(c, 0), -EINVAL);
	upager_store_t *f = tu_store_file(tu_make_file("opts", BS), 0);
	TU_ERR(upager_store_lz4_stats(f, &st), -EINVAL);
	TU_OK(upager_store_lz4_stats(s, &st));
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.bytes_allocated, 0);
	upager_store_release(f);
	upager_store_release(c);
	upager_store_release(s);
	free(m.buf);
}

/* ---- alone ---- */

static void test_alone_round_trips(void **state)
{
	(void)state;
	const size_t nb = 40, total = nb * BS;
	upager_store_t *s = lz4_store(0, 0, 0, NULL);
	uint8_t *shadow = calloc(1, total), *buf = malloc(total);
	assert_non_null(shadow);
	assert_non_null(buf);
	uint64_t rng = 0x1234;

	/* Never written: zeros, and the store has no end. */
	check_range(s, shadow, 0, total, "fresh store");
	uint64_t size = 0;
	TU_OK(s->ops.size(s->ctx, &size));
	assert_true(size == UINT64_MAX);
	memset(buf, 1, BS);
	TU_OK(st_read(s, buf, BS, (uint64_t)1 << 50));
	assert_true(buf[0] == 0 && buf[BS - 1] == 0);

	/* Aligned, unaligned, inside one block, across several. */
	static const struct { uint64_t off; size_t len; } w[] = {
		{ 0, BS },          { 5 * BS, 3 * BS }, { 100, 50 },
		{ BS - 7, 14 },     { 9 * BS + 1, 2 * BS + 3 },
		{ 20 * BS + 4095, 1 }, { 30 * BS - 1, 5 * BS + 2 },
		{ 12 * BS, 1 },     { 2 * BS + 17, BS - 17 },
	};
	for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
		fill_kind(shadow + w[i].off, w[i].len, (enum kind)(i % 2),
			  &rng);
		TU_OK(st_write(s, shadow + w[i].off, w[i].len, w[i].off));
		check_range(s, shadow, 0, total, "after a write");
	}
	/* Reads at odd offsets and lengths. */
	for (unsigned i = 0; i < 300; i++) {
		uint64_t off = tu_rand(&rng) % total;
		size_t len = 1 + tu_rand(&rng) % (3 * BS);
		if (len > total - off)
			len = total - off;
		check_range(s, shadow, off, len, "odd read");
	}
	/* Overwrites that change each block's kind, partial and whole. */
	for (unsigned i = 0; i < 200; i++) {
		uint64_t off = tu_rand(&rng) % total;
		size_t len = 1 + tu_rand(&rng) % (2 * BS);
		if (len > total - off)
			len = total - off;
		fill_kind(shadow + off, len, (enum kind)(tu_rand(&rng) % 3),
			  &rng);
		TU_OK(st_write(s, shadow + off, len, off));
	}
	check_range(s, shadow, 0, total, "after overwrites");
	TU_OK(st_write(s, buf, 0, 3)); /* empty write: no effect */
	TU_ERR(st_write(s, buf, 2, UINT64_MAX), -EINVAL);
	TU_ERR(st_read(s, buf, 2, UINT64_MAX), -EINVAL);
	check_range(s, shadow, 0, total, "after empty writes");
	free(shadow);
	free(buf);
	upager_store_release(s);
}

static void test_alone_stats_follow_contents(void **state)
{
	(void)state;
	const size_t nb = 64, total = nb * BS;
	upager_store_t *s = lz4_store(BS, 0, 0, NULL);
	uint8_t *data = malloc(total), *back = malloc(total);
	assert_non_null(data);
	assert_non_null(back);
	uint64_t rng = 77;

	tu_fill_text(data, total, &rng);
	TU_OK(st_write(s, data, total, 0));
	struct upager_lz4_stats st = lz4_stats(s);
	printf("text: %llu blocks, %llu stored, %llu allocated, ratio %.2f\n",
	       (unsigned long long)st.blocks,
	       (unsigned long long)st.bytes_stored,
	       (unsigned long long)st.bytes_allocated, st.ratio);
	assert_int_equal(st.blocks, nb);
	assert_int_equal(st.raw_blocks, 0);
	assert_int_equal(st.bytes_logical, total);
	assert_int_equal(st.writes, nb);
	assert_true(st.ratio > 1.5);
	assert_true(st.bytes_stored < total);
	assert_true(st.bytes_allocated >= st.bytes_stored);
	TU_OK(st_read(s, back, total, 0));
	expect_same(back, data, total, 0, "text");
	assert_int_equal(lz4_stats(s).reads, nb);
	uint64_t text_alloc = st.bytes_allocated;

	/* Random data does not compress: stored raw, byte for byte. */
	fill_random(data, total, &rng);
	TU_OK(st_write(s, data, total, 0));
	st = lz4_stats(s);
	assert_int_equal(st.blocks, nb);
	assert_int_equal(st.raw_blocks, nb);
	assert_int_equal(st.bytes_stored, total);
	assert_true(st.ratio == 1.0);
	assert_true(st.bytes_allocated > text_alloc);
	TU_OK(st_read(s, back, total, 0));
	expect_same(back, data, total, 0, "random");

	/* Zeroing the first half frees those blocks, and the slabs that
	 * held only them go back to the system. */
	memset(data, 0, total / 2);
	TU_OK(st_write(s, data, total / 2, 0));
	struct upager_lz4_stats half = lz4_stats(s);
	assert_int_equal(half.blocks, nb / 2);
	assert_int_equal(half.raw_blocks, nb / 2);
	assert_int_equal(half.bytes_stored, total / 2);
	assert_true(half.bytes_allocated < st.bytes_allocated);
	TU_OK(st_read(s, back, total, 0));
	expect_same(back, data, total, 0, "half zeroed");

	/* Back to text in a few blocks: raw count follows the kind. */
	tu_fill_text(data + BS * (nb - 2), 2 * BS, &rng);
	TU_OK(st_write(s, data + BS * (nb - 2), 2 * BS, BS * (nb - 2)));
	st = lz4_stats(s);
	assert_int_equal(st.raw_blocks, nb / 2 - 2);

	memset(data, 0, total);
	TU_OK(st_write(s, data, total, 0));
	st = lz4_stats(s);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.bytes_stored, 0);
	assert_int_equal(st.bytes_allocated, 0);
	assert_true(st.ratio == 0.0);
	TU_OK(st_read(s, back, total, 0));
	expect_same(back, data, total, 0, "all zeroed");
	free(data);
	free(back);
	upager_store_release(s);
}

/* Larger blocks: partial writes are read-modify-write of a big block. */
static void round_trip_block_size(size_t bsize)
{
	const size_t total = 3 * bsize;
	upager_store_t *s = lz4_store(bsize, 0, 0, NULL);
	uint8_t *shadow = calloc(1, total);
	assert_non_null(shadow);
	uint64_t rng = bsize;
	tu_fill_text(shadow, total, &rng);
	TU_OK(st_write(s, shadow, total, 0));
	const size_t offs[] = { 1, bsize - 3, bsize / 2, 2 * bsize + 100 };
	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		size_t len = bsize / 3 + i;
		if (offs[i] + len > total)
			len = total - offs[i];
		fill_kind(shadow + offs[i], len, (enum kind)(i % 3), &rng);
		TU_OK(st_write(s, shadow + offs[i], len, offs[i]));
	}
	check_range(s, shadow, 0, total, "big blocks");
	check_range(s, shadow, bsize - 5, 10, "big blocks, across");
	struct upager_lz4_stats st = lz4_stats(s);
	assert_int_equal(st.blocks, 3);
	assert_int_equal(st.bytes_logical, total);
	free(shadow);
	upager_store_release(s);
}

static void test_alone_large_blocks(void **state)
{
	(void)state;
	round_trip_block_size(64 * 1024);
	round_trip_block_size(256 * 1024);
	round_trip_block_size(2 * 1024 * 1024);
}

static void test_alone_size_and_max_bytes(void **state)
{
	(void)state;
	uint8_t buf[3 * BS];
	uint64_t rng = 5, size = 0;

	/* A size: writes past it fail, the size callback reports it. */
	upager_store_t *s = lz4_store(BS, 0, 10 * BS + 100, NULL);
	TU_OK(s->ops.size(s->ctx, &size));
	assert_int_equal(size, 10 * BS + 100);
	tu_fill_text(buf, sizeof(buf), &rng);
	TU_OK(st_write(s, buf, 100, 10 * BS));
	TU_ERR(st_write(s, buf, 101, 10 * BS), -ENOSPC);
	TU_ERR(st_write(s, buf, 1, 20 * BS), -ENOSPC);
	upager_store_release(s);

	/* max_bytes: random blocks are stored raw, two fit. */
	s = lz4_store(BS, 2 * BS + 100, 0, NULL);
	uint8_t shadow[4 * BS] = { 0 };
	fill_random(shadow, 2 * BS, &rng);
	TU_OK(st_write(s, shadow, 2 * BS, 0));
	fill_random(buf, BS, &rng);
	TU_ERR(st_write(s, buf, BS, 2 * BS), -ENOSPC);
	struct upager_lz4_stats st = lz4_stats(s);
	assert_int_equal(st.blocks, 2);
	assert_int_equal(st.bytes_stored, 2 * BS);
	check_range(s, shadow, 0, sizeof(shadow), "after -ENOSPC");
	/* Overwriting a held block within budget still works. */
	fill_random(shadow, BS, &rng);
	TU_OK(st_write(s, shadow, BS, 0));
	/* Zeros need no room, and free the block's. */
	memset(shadow + BS, 0, BS);
	TU_OK(st_write(s, shadow + BS, BS, BS));
	/* Text compresses: it fits where a raw block would not. */
	tu_fill_text(shadow + 2 * BS, BS, &rng);
	TU_OK(st_write(s, shadow + 2 * BS, BS, 2 * BS));
	TU_ERR(st_write(s, buf, BS, 3 * BS), -ENOSPC);
	st = lz4_stats(s);
	assert_true(st.bytes_stored <= 2 * BS + 100);
	assert_int_equal(st.blocks, 2);
	assert_int_equal(st.raw_blocks, 1);
	check_range(s, shadow, 0, sizeof(shadow), "within max_bytes");
	upager_store_release(s);
}

/* ---- stacked ---- */

static void test_stacked_over_file(void **state)
{
	(void)state;
	const size_t nb = 48, fsize = nb * BS + 1000; /* partial last block */
	const char *path = tu_make_file("lower", fsize);
	upager_store_t *f = tu_store_file(path, UPAGER_STORE_WRITABLE);
	upager_store_t *s = lz4_store(BS, 0, 0, f);
	upager_store_release(f); /* the lz4 store holds its own reference */
	int fd = tu_open(path);

	uint8_t *want = calloc(1, (nb + 2) * BS), *buf = malloc((nb + 2) * BS);
	assert_non_null(want);
	assert_non_null(buf);
	tu_fill(want, 0, fsize);
	uint64_t size = 0;
	TU_OK(s->ops.size(s->ctx, &size));
	assert_int_equal(size, fsize);

	TU_OK(st_read(s, buf, fsize, 0));
	expect_same(buf, want, fsize, 0, "first read");
	struct upager_lz4_stats st = lz4_stats(s);
	assert_int_equal(st.lower_reads, nb + 1);
	assert_int_equal(st.blocks, nb + 1);
	/* Held now: read again (unaligned) without touching the file. */
	TU_OK(st_read(s, buf, fsize - 333, 333));
	expect_same(buf, want + 333, fsize - 333, 333, "cached read");
	assert_int_equal(lz4_stats(s).lower_reads, nb + 1);

	/* Writes go through to the file at once, exactly the bytes
	 * written; the file grows only when written past its end. */
	uint64_t rng = 9;
	static const struct { uint64_t off; size_t len; } w[] = {
		{ 3 * BS + 10, 100 }, { 7 * BS - 50, BS }, { 20 * BS, 2 * BS },
		{ nb * BS + 900, 50 },
	};
	for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
		fill_kind(want + w[i].off, w[i].len, (enum kind)(i % 3), &rng);
		TU_OK(st_write(s, want + w[i].off, w[i].len, w[i].off));
		memset(buf, 0xa5, w[i].len);
		assert_int_equal(pread(fd, buf, w[i].len, (off_t)w[i].off),
				 (ssize_t)w[i].len);
		expect_same(buf, want + w[i].off, w[i].len, w[i].off,
			    "file after write-through");
	}
	struct stat sb;
	assert_int_equal(fstat(fd, &sb), 0);
	assert_int_equal(sb.st_size, fsize);
	check_range(s, want, 0, fsize, "after writes");
	assert_int_equal(lz4_stats(s).lower_reads, nb + 1);

	/* Past the end: the file grows. A later read sees the bytes. */
	uint64_t past = (nb + 1) * BS + 5;
	tu_fill_text(want + past, 20, &rng);
	TU_OK(st_write(s, want + past, 20, past));
	assert_int_equal(fstat(fd, &sb), 0);
	assert_int_equal(sb.st_size, past + 20);
	check_range(s, want, 0, past + 20, "after growing the file");
	assert_int_equal(pread(fd, buf, past + 20, 0), (ssize_t)(past + 20));
	expect_same(buf, want, past + 20, 0, "grown file");
	upager_store_release(s);

	/* Over a read-only file store, writes are refused and the file
	 * and the cache keep their bytes. */
	f = tu_store_file(path, 0);
	s = lz4_store(BS, 0, 0, f);
	upager_store_release(f);
	check_range(s, want, 0, BS, "read-only lower");
	TU_ERR(st_write(s, buf, 10, 5), -EROFS);
	check_range(s, want, 0, BS, "after a refused write");
	assert_int_equal(pread(fd, buf, BS, 0), (ssize_t)BS);
	expect_same(buf, want, BS, 0, "file after a refused write");
	upager_store_release(s);
	close(fd);
	free(want);
	free(buf);
}

static void test_stacked_over_custom(void **state)
{
	(void)state;
	const size_t nb = 32, size = nb * BS;
	struct mem m;
	upager_store_t *c = mem_store(&m, size, 31, true);
	upager_store_t *s = lz4_store(BS, 0, 0, c);
	upager_store_release(c);
	uint8_t *want = malloc(size), *buf = malloc(size);
	assert_non_null(want);
	assert_non_null(buf);
	memcpy(want, m.buf, size);

	/* Reads come from below once per block, then from the cache. */
	TU_OK(st_read(s, buf, 10, 5 * BS + 3));
	expect_same(buf, want + 5 * BS + 3, 10, 5 * BS + 3, "small read");
	assert_int_equal(atomic_load(&m.block_reads[5]), 1);
	check_range(s, want, 0, size, "whole store");
	check_range(s, want, 0, size, "whole store again");
	struct upager_lz4_stats st = lz4_stats(s);
	assert_int_equal(st.lower_reads, nb);
	assert_int_equal(atomic_load(&m.reads), nb);
	assert_int_equal(st.blocks, nb);
	assert_true(st.ratio > 1.5);

	/* Writes go through, and only the bytes written. */
	uint64_t rng = 4;
	fill_random(want + 2 * BS + 7, 3 * BS, &rng);
	TU_OK(st_write(s, want + 2 * BS + 7, 3 * BS, 2 * BS + 7));
	expect_same(m.buf, want, size, 0, "lower after write-through");
	check_range(s, want, 0, size, "after write");
	assert_int_equal(lz4_stats(s).lower_reads, nb);
	/* Zero blocks stay held (with no bytes) when stacked. */
	memset(want + 8 * BS, 0, 2 * BS);
	TU_OK(st_write(s, want + 8 * BS, 2 * BS, 8 * BS));
	st = lz4_stats(s);
	assert_int_equal(st.blocks, nb);
	check_range(s, want, 0, size, "after zeros");
	expect_same(m.buf, want, size, 0, "lower after zeros");
	assert_int_equal(lz4_stats(s).lower_reads, nb);

	/* A write past the lower store's end fails as the lower store
	 * says, and the cache keeps no trace of it. */
	TU_ERR(st_write(s, buf, 10, size), -ENOSPC);
	assert_int_equal(lz4_stats(s).blocks, nb);
	upager_store_release(s);
	free(m.buf);

	/* A read error below reaches the caller, and nothing is cached. */
	c = mem_store(&m, size, 0, false);
	s = lz4_store(BS, 0, 0, c);
	upager_store_release(c);
	atomic_store(&m.fail_reads, 1);
	TU_ERR(st_read(s, buf, BS, 0), -EIO);
	assert_int_equal(lz4_stats(s).blocks, 0);
	atomic_store(&m.fail_reads, 0);
	TU_OK(st_read(s, buf, BS, 0));
	assert_int_equal(lz4_stats(s).blocks, 1);
	/* A lower store without a write callback: writes are refused. */
	TU_ERR(st_write(s, buf, 10, 0), -EROFS);
	upager_store_release(s);
	free(m.buf);
	free(want);
	free(buf);
}

static void test_stacked_max_bytes_evicts(void **state)
{
	(void)state;
	const size_t nb = 256, size = nb * BS, max = 12 * BS;
	struct mem m;
	upager_store_t *c = mem_store(&m, size, 0, true);
	uint64_t rng = 8;
	fill_random(m.buf, size, &rng); /* raw: 4 KiB each */
	upager_store_t *s = lz4_store(BS, max, 0, c);
	upager_store_release(c);
	uint8_t *want = malloc(size), *buf = malloc(BS);
	assert_non_null(want);
	assert_non_null(buf);
	memcpy(want, m.buf, size);

	/* Stream through every block, touching block 0 between each: the
	 * hot block keeps its reference bit and stays. */
	for (size_t b = 1; b < nb; b++) {
		check_range(s, want, 0, BS, "hot block");
		check_range(s, want, b * BS, BS, "cold block");
		struct upager_lz4_stats st = lz4_stats(s);
		if (st.bytes_stored > max)
			fail_msg("%llu bytes held, max_bytes %zu",
				 (unsigned long long)st.bytes_stored, max);
	}
	struct upager_lz4_stats st = lz4_stats(s);
	printf("evicting cache: %llu blocks held, %llu lower reads, block 0 "
	       "read %llu times from below\n",
	       (unsigned long long)st.blocks,
	       (unsigned long long)st.lower_reads,
	       (unsigned long long)atomic_load(&m.block_reads[0]));
	assert_true(st.blocks <= max / BS);
	assert_true(st.blocks >= 2);
	assert_int_equal(st.lower_reads, nb);
	assert_true(atomic_load(&m.block_reads[0]) == 1);
	assert_true(st.bytes_allocated <= 2 * max + 64 * 1024);

	/* Writes over a full cache: through to the lower store, and what
	 * does not fit is dropped, never kept as the only copy. */
	for (size_t b = 0; b < nb; b += 3) {
		fill_random(want + b * BS, BS, &rng);
		TU_OK(st_write(s, want + b * BS, BS, b * BS));
		assert_true(lz4_stats(s).bytes_stored <= max);
	}
	expect_same(m.buf, want, size, 0, "lower after writes");
	check_range(s, want, 0, size, "after writes");
	upager_store_release(s);
	free(m.buf);
	free(want);
	free(buf);
}

/* One lz4 store over another: the upper one calls into the lower one
 * while its own per-thread buffers are in use. */
static void stack_lz4(size_t upper_bs, size_t lower_bs)
{
	const size_t size = 512 * 1024;
	upager_store_t *lo = lz4_store(lower_bs, 0, size, NULL);
	upager_store_t *s = lz4_store(upper_bs, 8 * upper_bs, 0, lo);
	upager_store_release(lo);
	uint8_t *shadow = calloc(1, size);
	assert_non_null(shadow);
	uint64_t rng = upper_bs ^ lower_bs;
	for (unsigned i = 0; i < 150; i++) {
		uint64_t off = tu_rand(&rng) % size;
		size_t len = 1 + tu_rand(&rng) % (upper_bs + lower_bs);
		if (len > size - off)
			len = size - off;
		fill_kind(shadow + off, len, (enum kind)(tu_rand(&rng) % 3),
			  &rng);
		TU_OK(st_write(s, shadow + off, len, off));
		if (i % 16 == 0)
			check_range(s, shadow, 0, size, "upper store");
	}
	check_range(s, shadow, 0, size, "upper store");
	check_range(lo, shadow, 0, size, "lower store");
	assert_true(lz4_stats(s).lower_reads > 0);
	upager_store_release(s);
	free(shadow);
}

static void test_stacked_over_lz4(void **state)
{
	(void)state;
	stack_lz4(BS, 64 * 1024);
	stack_lz4(64 * 1024, BS);
}

/* ---- threads ---- */

#define CT_THREADS 4u
#define CT_OWN 64u     /* blocks [0, CT_OWN): block b is thread b % T's */
#define CT_SHARED 8u   /* blocks after: thread i owns slice i of each */
#define CT_BLOCKS (CT_OWN + CT_SHARED)
#define CT_SLICE (BS / CT_THREADS)
#define CT_ITERS 1200u

struct ct_shared {
	upager_store_t *s;
	uint8_t *shadow; /* CT_BLOCKS * BS; each byte written by its owner */
	atomic_uint failures;
	char msg[160];
	pthread_mutex_t msg_lock;
};

struct ct_arg {
	struct ct_shared *sh;
	unsigned id;
};

static void ct_fail(struct ct_shared *sh, const char *fmt, long a, long b)
{
	if (atomic_fetch_add(&sh->failures, 1) == 0) {
		pthread_mutex_lock(&sh->msg_lock);
		snprintf(sh->msg, sizeof(sh->msg), fmt, a, b);
		pthread_mutex_unlock(&sh->msg_lock);
	}
}

static bool ct_owns(unsigned id, size_t byte)
{
	size_t b = byte / BS;
	if (b < CT_OWN)
		return b % CT_THREADS == id;
	return (byte % BS) / CT_SLICE == id;
}

/* Reads [off, off+len) and checks the bytes this thread owns. */
static void ct_read_check(struct ct_arg *a, uint8_t *buf, size_t off,
			  size_t len)
{
	int rc = st_read(a->sh->s, buf, len, off);
	if (rc) {
		ct_fail(a->sh, "read at %ld: %ld", (long)off, rc);
		return;
	}
	for (size_t i = 0; i < len; i++)
		if (ct_owns(a->id, off + i) &&
		    buf[i] != a->sh->shadow[off + i]) {
			ct_fail(a->sh, "byte %ld read as 0x%lx: wrong",
				(long)(off + i), buf[i]);
			return;
		}
}

static void ct_write(struct ct_arg *a, size_t off, size_t len,
		     uint64_t *rng)
{
	fill_kind(a->sh->shadow + off, len, (enum kind)(tu_rand(rng) % 3),
		  rng);
	int rc = st_write(a->sh->s, a->sh->shadow + off, len, off);
	if (rc)
		ct_fail(a->sh, "write at %ld: %ld", (long)off, rc);
}

static void *ct_main(void *p)
{
	struct ct_arg *a = p;
	uint64_t rng = 0x9e37 + a->id;
	uint8_t *buf = malloc(3 * BS);
	if (!buf) {
		ct_fail(a->sh, "out of memory (%ld, %ld)", 0, 0);
		return NULL;
	}
	for (unsigned it = 0; it < CT_ITERS; it++) {
		unsigned op = (unsigned)(tu_rand(&rng) % 10);
		size_t own = (tu_rand(&rng) % (CT_OWN / CT_THREADS)) *
			     CT_THREADS + a->id;
		size_t shared = CT_OWN + tu_rand(&rng) % CT_SHARED;
		if (op < 3) {
			/* Part or all of one of my blocks. */
			size_t from = tu_rand(&rng) % 2 ? 0
							: tu_rand(&rng) % BS;
			size_t len = 1 + tu_rand(&rng) % (BS - from);
			ct_write(a, own * BS + from, len, &rng);
		} else if (op < 6) {
			/* My slice of a shared block: partial-block writes
			 * racing with every other thread's. */
			size_t from = tu_rand(&rng) % CT_SLICE;
			size_t len = 1 + tu_rand(&rng) % (CT_SLICE - from);
			ct_write(a, shared * BS + a->id * CT_SLICE + from, len,
				 &rng);
		} else {
			/* Any range up to three blocks long. */
			size_t off = tu_rand(&rng) % (CT_BLOCKS * BS);
			size_t len = 1 + tu_rand(&rng) % (3 * BS);
			if (len > CT_BLOCKS * BS - off)
				len = CT_BLOCKS * BS - off;
			ct_read_check(a, buf, off, len);
		}
	}
	free(buf);
	return NULL;
}

/* Runs the threads on @s, then checks every byte of it. */
static void run_ct(upager_store_t *s)
{
	struct ct_shared sh = { .s = s };
	sh.shadow = calloc(CT_BLOCKS, BS);
	assert_non_null(sh.shadow);
	atomic_init(&sh.failures, 0);
	pthread_mutex_init(&sh.msg_lock, NULL);
	struct ct_arg args[CT_THREADS];
	for (unsigned i = 0; i < CT_THREADS; i++)
		args[i] = (struct ct_arg){ .sh = &sh, .id = i };
	tu_run_threads(CT_THREADS, ct_main, args, sizeof(args[0]));
	if (atomic_load(&sh.failures))
		fail_msg("%u failures in threads, first: %s",
			 atomic_load(&sh.failures), sh.msg);
	check_range(s, sh.shadow, 0, CT_BLOCKS * BS, "after the threads");
	pthread_mutex_destroy(&sh.msg_lock);
	free(sh.shadow);
}

static void test_threads_alone(void **state)
{
	(void)state;
	upager_store_t *s = lz4_store(BS, 0, 0, NULL);
	run_ct(s);
	struct upager_lz4_stats st = lz4_stats(s);
	assert_true(st.writes > 0 && st.reads > 0);
	assert_int_equal(st.corrupt, 0);
	upager_store_release(s);
}

static void test_threads_stacked_evicting(void **state)
{
	(void)state;
	struct mem m;
	upager_store_t *c = mem_store(&m, CT_BLOCKS * BS, 0, true);
	/* Room for a quarter of the blocks: evictions race with fills and
	 * writes all the time. */
	upager_store_t *s = lz4_store(BS, CT_BLOCKS * BS / 4, 0, c);
	upager_store_release(c);
	uint8_t *copy = malloc(CT_BLOCKS * BS);
	assert_non_null(copy);
	run_ct(s);
	struct upager_lz4_stats st = lz4_stats(s);
	assert_true(st.bytes_stored <= CT_BLOCKS * BS / 4);
	assert_int_equal(st.corrupt, 0);
	/* The lower store holds every byte: the cache had no only copy.
	 * (run_ct compared the store with the shadow; compare the lower
	 * store with the store.) */
	TU_OK(st_read(s, copy, CT_BLOCKS * BS, 0));
	expect_same(m.buf, copy, CT_BLOCKS * BS, 0, "lower store");
	upager_store_release(s);
	free(copy);
	free(m.buf);
}

/* Concurrent misses on one block read the lower store once. */
struct miss_arg {
	upager_store_t *s;
	unsigned id;
	atomic_uint *errors;
};

static void *miss_main(void *p)
{
	struct miss_arg *a = p;
	uint8_t buf[BS];
	for (unsigned k = 0; k < 64; k++) {
		unsigned b = (k * 7 + a->id * 13) % 64;
		if (st_read(a->s, buf, BS, (uint64_t)b * BS))
			atomic_fetch_add(a->errors, 1);
	}
	return NULL;
}

static void test_threads_miss_once(void **state)
{
	(void)state;
	struct mem m;
	upager_store_t *c = mem_store(&m, 64 * BS, 3, true);
	upager_store_t *s = lz4_store(BS, 0, 0, c);
	upager_store_release(c);
	atomic_uint errors;
	atomic_init(&errors, 0);
	struct miss_arg args[CT_THREADS];
	for (unsigned i = 0; i < CT_THREADS; i++)
		args[i] = (struct miss_arg){ s, i, &errors };
	tu_run_threads(CT_THREADS, miss_main, args, sizeof(args[0]));
	assert_int_equal(atomic_load(&errors), 0);
	struct upager_lz4_stats st = lz4_stats(s);
	assert_int_equal(st.lower_reads, 64);
	assert_int_equal(st.reads, 64 * CT_THREADS);
	for (unsigned b = 0; b < 64; b++)
		assert_int_equal(atomic_load(&m.block_reads[b]), 1);
	check_range(s, m.buf, 0, 64 * BS, "after concurrent misses");
	upager_store_release(s);
	free(m.buf);
}

/* ---- damaged blocks ---- */

static void test_corrupt_block_reads_eio(void **state)
{
	(void)state;
	upager_store_t *s = lz4_store(BS, 0, 0, NULL);
	uint8_t data[4 * BS], buf[BS];
	uint64_t rng = 11;
	tu_fill_text(data, 2 * BS, &rng);
	fill_random(data + 2 * BS, BS, &rng);
	memset(data + 3 * BS, 0, BS);
	TU_OK(st_write(s, data, sizeof(data), 0));

	TU_ERR(upager__lz4_corrupt(s, 3), -ENOENT); /* zeros: not held */
	TU_ERR(upager__lz4_corrupt(s, 99), -ENOENT);
	TU_OK(upager__lz4_corrupt(s, 1)); /* compressed */
	TU_OK(upager__lz4_corrupt(s, 2)); /* raw */
	TU_ERR(st_read(s, buf, BS, BS), -EIO);
	TU_ERR(st_read(s, buf, 1, 2 * BS + 100), -EIO);
	TU_ERR(st_read(s, buf, 1, 2 * BS + 100), -EIO);
	TU_ERR(st_read(s, buf, 2, BS - 1), -EIO); /* spans into block 1 */
	assert_int_equal(lz4_stats(s).corrupt, 2); /* counted once each */
	check_range(s, data, 0, BS, "undamaged block");
	check_range(s, data, 3 * BS, BS, "zero block");
	/* A partial write needs the damaged bytes: refused. */
	TU_ERR(st_write(s, data, 10, BS + 5), -EIO);
	/* A whole-block write replaces them. */
	TU_OK(st_write(s, data + BS, 2 * BS, BS));
	check_range(s, data, 0, sizeof(data), "rewritten");
	assert_int_equal(lz4_stats(s).corrupt, 2);
	upager_store_release(s);
}

static void test_corrupt_block_stacked_refetches(void **state)
{
	(void)state;
	struct mem m;
	upager_store_t *c = mem_store(&m, 8 * BS, 21, true);
	upager_store_t *s = lz4_store(BS, 0, 0, c);
	upager_store_release(c);
	check_range(s, m.buf, 0, 8 * BS, "first read");
	assert_int_equal(lz4_stats(s).lower_reads, 8);
	TU_OK(upager__lz4_corrupt(s, 4));
	check_range(s, m.buf, 4 * BS + 1, BS - 1, "damaged block");
	struct upager_lz4_stats st = lz4_stats(s);
	assert_int_equal(st.corrupt, 1);
	assert_int_equal(st.lower_reads, 9);
	assert_int_equal(st.blocks, 8);
	check_range(s, m.buf, 0, 8 * BS, "after refetch");
	assert_int_equal(lz4_stats(s).lower_reads, 9);
	upager_store_release(s);
	free(m.buf);
}

/* ---- through the runtime ---- */

/* A store alone, filled through its write callback. */
static upager_store_t *filled_store(size_t bsize, uint8_t *shadow,
				    size_t size, uint64_t seed)
{
	upager_store_t *s = lz4_store(bsize, 0, size, NULL);
	tu_fill_text(shadow, size, &seed);
	for (size_t b = 5; b < size / bsize; b += 7)
		fill_random(shadow + b * bsize, bsize / 2, &seed);
	memset(shadow + 3 * bsize, 0, bsize);
	TU_OK(st_write(s, shadow, size, 0));
	return s;
}

static void test_runtime_maps_lz4_store(void **state)
{
	(void)state;
	const size_t size = 1 * TU_MIB;
	uint8_t *shadow = malloc(size);
	assert_non_null(shadow);
	upager_store_t *s = filled_store(BS, shadow, size, 123);
	upager_t *up = tu_runtime(NULL);

	uint64_t size_seen = 0;
	TU_OK(s->ops.size(s->ctx, &size_seen));
	assert_int_equal(size_seen, size);
	/* Whole store, 4 KiB units, with readahead. */
	const uint8_t *a = tu_map(up, s, 0, size, BS, 64 * 1024);
	expect_same(a, shadow, size, 0, "region over the store");
	/* An unaligned offset and 16 KiB units: each fetch spans blocks. */
	const uint64_t off = 5000;
	const uint8_t *b = tu_map(up, s, off, size - off - 3000, 16384, 0);
	expect_same(b, shadow + off, size - off - 3000, off,
		    "region at an unaligned offset");
	upager_store_release(s); /* the regions hold references */
	struct upager_stats rs = tu_stats(up, NULL);
	assert_int_equal(rs.read_errors, 0);
	TU_OK(upager_unmap(up, (void *)a));
	TU_OK(upager_unmap(up, (void *)b));
	upager_destroy(up);
	free(shadow);
}

static void test_runtime_maps_stacked_store(void **state)
{
	(void)state;
	const size_t size = 512 * 1024 + 123;
	const char *path = tu_make_file("mapped-lower", size);
	upager_store_t *f = tu_store_file(path, 0);
	struct upager_lz4_opts o = { .block_size = 16384 };
	upager_store_t *s = NULL;
	TU_OK(upager_store_lz4(&o, f, &s));
	upager_store_release(f);
	upager_t *up = tu_runtime(NULL);
	const uint8_t *a = tu_map(up, s, 0, size, 16384, 0);
	struct tu_ref ref = { .fd = tu_open(path), .offset = 0,
			      .length = size, .store_size = size };
	assert_true(tu_check(&ref, a, 0, size));
	struct upager_lz4_stats st = lz4_stats(s);
	assert_int_equal(st.lower_reads, (size + 16383) / 16384);
	upager_store_release(s);
	TU_OK(upager_unmap(up, (void *)a));
	upager_destroy(up);
	close(ref.fd);
}

/* The store as a compressed swap tier: a region over it with a small
 * resident budget writes its pages back to the store on eviction and
 * faults them in again. */
static void test_runtime_writeback_to_lz4(void **state)
{
	(void)state;
	const size_t size = 1 * TU_MIB;
	upager_store_t *s = lz4_store(BS, 0, size, NULL);
	uint8_t *shadow = malloc(size), *back = malloc(size);
	assert_non_null(shadow);
	assert_non_null(back);
	uint64_t rng = 2024;
	tu_fill_text(shadow, size, &rng);
	upager_t *up = tu_runtime(NULL);
	struct upager_map_opts o = { .page_size = BS,
				     .flags = UPAGER_MAP_WRITEBACK,
				     .max_resident = 128 * 1024 };
	void *addr = NULL;
	TU_OK(upager_map(up, s, 0, size, &o, &addr));
	uint8_t *a = addr;
	for (size_t off = 0; off < size; off += BS)
		memcpy(a + off, shadow + off, BS);
	/* At most 128 KiB stayed resident: the rest went to the store. */
	struct upager_lz4_stats st = lz4_stats(s);
	printf("after writing the region: %llu blocks written back\n",
	       (unsigned long long)st.writes);
	assert_true(st.writes >= (size - o.max_resident) / BS);
	expect_same(a, shadow, size, 0, "region after eviction");
	assert_true(lz4_stats(s).reads > size / BS);
	TU_OK(upager_flush(up, addr, size));
	TU_OK(st_read(s, back, size, 0));
	expect_same(back, shadow, size, 0, "store after flush");
	st = lz4_stats(s);
	assert_int_equal(st.blocks, size / BS);
	assert_true(st.ratio > 1.5);
	TU_OK(upager_unmap(up, addr));
	upager_destroy(up);
	upager_store_release(s);
	free(shadow);
	free(back);
}

/* Over the store alone, units go in writable and count as dirty from
 * their install (no write-protect fault marks the first write), and every
 * unit is written back: the store must take exactly the changed ones,
 * and recognise the rest as the bytes it holds. */
static void test_runtime_unchanged_writeback(void **state)
{
	(void)state;
	const size_t size = 512 * 1024, units = size / BS, budget = 16 * BS;
	uint8_t *shadow = malloc(size), *back = malloc(size);
	assert_non_null(shadow);
	assert_non_null(back);
	upager_store_t *s = filled_store(BS, shadow, size, 77);
	upager_t *up = tu_runtime(NULL);
	struct upager_map_opts o = { .page_size = BS,
				     .flags = UPAGER_MAP_WRITEBACK,
				     .max_resident = budget };
	void *addr = NULL;
	TU_OK(upager_map(up, s, 0, size, &o, &addr));
	uint8_t *a = addr;
	struct upager_lz4_stats st0 = lz4_stats(s);

	/* A read pass: installs are dirty, evictions write back, nothing
	 * changes in the store. */
	expect_same(a, shadow, size, 0, "read pass");
	/* Settled: an eviction still finishing drops the unit from resident
	 * and from dirty in two steps, and a read between them is one off. */
	struct upager_stats rs = tu_stats_settled(up, addr);
	assert_int_equal(rs.dirty_units, rs.resident_bytes / BS);
	struct upager_lz4_stats st1 = lz4_stats(s);
	assert_int_equal(st1.writes, st0.writes);
	assert_true(st1.unchanged >= units - budget / BS);

	/* Every 8th unit: read (installed writable), then written with no
	 * fault at all, then evicted by reading the rest. */
	size_t changed = 0;
	for (size_t u = 0; u < units; u += 8) {
		volatile uint8_t *p = a + u * BS + 100;
		assert_int_equal(*p, shadow[u * BS + 100]);
		*p = (uint8_t)(*p ^ 0x5a);
		shadow[u * BS + 100] ^= 0x5a;
		changed++;
		/* Push it out before the next one comes in. */
		for (size_t v = 1; v <= budget / BS; v++)
			(void)*(volatile uint8_t *)(a + ((u + v * 3 + 1) % units) * BS);
	}
	expect_same(a, shadow, size, 0, "after writes and evictions");
	TU_OK(upager_flush(up, addr, size));
	TU_OK(st_read(s, back, size, 0));
	expect_same(back, shadow, size, 0, "store after flush");
	/* Each changed unit reached the store once; the rest compared. */
	struct upager_lz4_stats st2 = lz4_stats(s);
	assert_int_equal(st2.writes - st1.writes, changed);
	assert_true(st2.unchanged > st1.unchanged);
	assert_int_equal(tu_stats(up, addr).dirty_units, 0);
	TU_OK(upager_unmap(up, addr));
	upager_destroy(up);
	upager_store_release(s);
	free(shadow);
	free(back);
}

/* Inline faults (UPAGER_CFG_INLINE): the faulting threads decompress
 * their units themselves. Random order from 4 threads at every unit size,
 * each unit compared with the bytes written (kept in a file for
 * tu_scan_units' reference). */
static void test_runtime_inline_threads(void **state)
{
	(void)state;
	const size_t size = 4 * TU_MIB + 3 * BS;
	uint8_t *shadow = malloc(size);
	assert_non_null(shadow);
	upager_store_t *s = filled_store(BS, shadow, size, 321);
	const char *path = tu_make_file("lz4-inline.ref", size);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, shadow, size, 0), (ssize_t)size);
	close(fd);
	int rfd = tu_open(path);
	struct tu_ref ref = { .fd = rfd, .length = size, .store_size = size };
	static const size_t pages[] = { BS, 64 * TU_KIB, 2 * TU_MIB };
	for (size_t k = 0; k < 3; k++) {
		upager_t *up = tu_inline_runtime();
		uint8_t *a = tu_map(up, s, 0, size, pages[k], 0);
		size_t nunits = tu_round_up(size, pages[k]) / pages[k];
		tu_scan_units(&ref, a, pages[k], nunits, 4, true, pages[k]);
		expect_same(a, shadow, size, 0, "inline region");
		struct upager_stats st = tu_stats_settled(up, a);
		tu_print_stats("inline lz4", &st);
		assert_true(st.faults >= 1);
		assert_int_equal(st.pages_installed, nunits);
		assert_int_equal(st.read_errors, 0);
		TU_OK(upager_unmap(up, a));
		upager_destroy(up);
	}
	close(rfd);
	upager_store_release(s);
	free(shadow);
}

enum { CHILD_NO_RUNTIME = 10, CHILD_BAD_CONTENT = 12, CHILD_SURVIVED = 13 };

static void corrupt_child(upager_store_t *s, const uint8_t *shadow,
			  size_t size, size_t bad, unsigned flags)
{
	tu_child_default_signals();
	upager_t *up = NULL;
	void *addr = NULL;
	struct upager_config c = { .flags = flags };
	struct upager_map_opts o = { .page_size = BS };
	if (upager_create(&c, &up) || upager_map(up, s, 0, size, &o, &addr))
		_exit(CHILD_NO_RUNTIME);
	const volatile uint8_t *p = addr;
	for (size_t i = 0; i < size; i++)
		if (i / BS != bad && p[i] != shadow[i])
			_exit(CHILD_BAD_CONTENT);
	uint8_t v = p[bad * BS + 17];
	fprintf(stderr, "child: damaged block read as 0x%02x\n", v);
	_exit(CHILD_SURVIVED);
}

/* flags: the runtime's (UPAGER_CFG_INLINE: the faulting thread
 * decompresses the block itself). */
static void corrupt_block_raises_sigbus(unsigned flags)
{
	const size_t size = 64 * BS, bad = 9;
	uint8_t *shadow = malloc(size);
	assert_non_null(shadow);
	upager_store_t *s = filled_store(BS, shadow, size, 99);
	TU_OK(upager__lz4_corrupt(s, bad));

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		corrupt_child(s, shadow, size, bad, flags);
	int status = 0;
	char buf[64];
	if (!tu_wait_child(pid, 30000, &status))
		fail_msg("child hung: killed after 30 s");
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGBUS)
		fail_msg("child ended with %s, want SIGBUS (exit 12: good "
			 "blocks read wrong, 13: damaged block read)",
			 tu_status_str(status, buf, sizeof(buf)));
	upager_store_release(s);
	free(shadow);
}

static void test_corrupt_block_raises_sigbus(void **state)
{
	(void)state;
	corrupt_block_raises_sigbus(0);
}

static void test_corrupt_block_raises_sigbus_inline(void **state)
{
	(void)state;
	corrupt_block_raises_sigbus(UPAGER_CFG_INLINE);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_bad_options_are_rejected),
	cmocka_unit_test(test_alone_round_trips),
	cmocka_unit_test(test_alone_stats_follow_contents),
	cmocka_unit_test(test_alone_large_blocks),
	cmocka_unit_test(test_alone_size_and_max_bytes),
	cmocka_unit_test(test_stacked_over_file),
	cmocka_unit_test(test_stacked_over_custom),
	cmocka_unit_test(test_stacked_max_bytes_evicts),
	cmocka_unit_test(test_stacked_over_lz4),
	cmocka_unit_test(test_threads_alone),
	cmocka_unit_test(test_threads_stacked_evicting),
	cmocka_unit_test(test_threads_miss_once),
	cmocka_unit_test(test_corrupt_block_reads_eio),
	cmocka_unit_test(test_corrupt_block_stacked_refetches),
	cmocka_unit_test(test_runtime_maps_lz4_store),
	cmocka_unit_test(test_runtime_maps_stacked_store),
	cmocka_unit_test(test_runtime_writeback_to_lz4),
	cmocka_unit_test(test_runtime_unchanged_writeback),
	cmocka_unit_test(test_runtime_inline_threads),
	cmocka_unit_test(test_corrupt_block_raises_sigbus),
	cmocka_unit_test(test_corrupt_block_raises_sigbus_inline),
};

TU_MAIN("lz4", tests)
