/*
 * store_lz4.c - a compressed page store in memory, alone or as a cache
 * tier over a lower store.
 *
 * The store is a custom store (store.c) whose callbacks live here; it is
 * recognised by its read callback. Its bytes are cut into blocks of
 * block_size; each block held is LZ4-compressed (or raw when it does not
 * compress below block_size - block_size/64), with a 32-bit checksum of
 * the uncompressed bytes so that damage that still decompresses is caught.
 * A damaged block reads as -EIO (the faulting thread gets SIGBUS) when the
 * store is alone; stacked, it is dropped and fetched from below again.
 *
 * Index: 128 stripes chosen by a hash of the block number, each an
 * open-addressing hash table (block -> stored bytes, size, checksum,
 * flags) under its own mutex. The mutex is held only to look an entry up and copy its stored
 * bytes out, or to swap an entry in: compression, decompression and the
 * checksum run with no lock held, in per-thread buffers (one set per
 * nesting level, since an lz4 store may be stacked over another), or,
 * for the inline fault handler's reads of a store alone, in scratch the
 * caller gives (upager__lz4_read_scratch: nothing allocated in a signal
 * handler).
 *
 * Writes to one block are serialised (a per-stripe list of blocks being
 * written, with a condition variable), so partial-block writes
 * (read-modify-write) never lose each other's bytes. Stacked, misses
 * take the same per-block turn, so a block read from below can never be
 * cached over a newer write, and concurrent misses on a block read the
 * lower store once.
 *
 * Stacked, every write goes through to the lower store (the exact bytes
 * written, synchronously) before the cache is updated: the cache never
 * holds the only copy, so any block can be dropped. A lower store that
 * cannot be written (a file store opened without UPAGER_STORE_WRITABLE, a
 * custom store without a write callback) makes writes fail with -EROFS.
 * When max_bytes would be exceeded, blocks are dropped in CLOCK
 * order (one reference bit per block, the hand sweeping stripe by
 * stripe); alone, the write fails with -ENOSPC instead (earlier blocks of
 * the same call stay written).
 *
 * All-zero blocks cost no memory: alone they are simply not held (never
 * written blocks read as zeros), stacked they are held with no bytes.
 * Writes past a size given to a store used alone fail with -ENOSPC.
 *
 * Lock order: evict_lock, then a stripe lock, then an allocator class
 * lock. Memory comes from lz4_alloc.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <lz4.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "lz4_alloc.h"
#include "store_lz4.h"

#define NSTRIPES_SHIFT 7
#define NSTRIPES (1u << NSTRIPES_SHIFT)
#define EMPTY_KEY UINT64_MAX
#define TAB_MIN 16u
#define BLOCK_MIN (4u * 1024)
#define BLOCK_MAX (2u * 1024 * 1024)
#define ACCEL_MAX 65537
#define BUF_ALIGN 4096u

enum {
	F_RAW = 1u,  /* stored uncompressed */
	F_ZERO = 2u, /* all zeros, nothing stored */
	F_REF = 4u,  /* used since the CLOCK hand last passed */
	F_BAD = 8u,  /* failed its check (counted once) */
};

struct ent {
	uint64_t block; /* EMPTY_KEY: free slot */
	void *data;
	uint32_t csize; /* bytes at data */
	uint32_t sum;   /* checksum of the uncompressed block */
	uint32_t gen;   /* changes whenever data does */
	uint32_t flags;
};

/* A block being written (or filled from below) by one thread. */
struct busy {
	uint64_t block;
	struct busy *next;
};

struct stripe {
	pthread_mutex_t lock;
	pthread_cond_t cv; /* a busy block was released */
	struct ent *tab;   /* cap slots, linear probing */
	uint32_t cap, n;
	uint32_t hand;     /* CLOCK position in tab */
	uint32_t waiters;
	struct busy *busy;
	uint64_t raw;
	uint64_t reads;
} __attribute__((aligned(64)));

struct lz4s {
	size_t bsize;
	unsigned bshift;
	int cap;            /* compressed sizes above this are stored raw */
	int accel;
	uint64_t max_bytes; /* 0: no limit */
	uint64_t size;      /* alone: logical size, UINT64_MAX: no end */
	upager_store_t *lower;

	atomic_uint_fast64_t stored; /* compressed bytes held */
	atomic_uint_fast64_t writes, lower_reads, corrupt, unchanged;
	atomic_uint gen;

	pthread_mutex_t evict_lock;
	unsigned hand; /* next stripe to sweep; under evict_lock */

	struct upager__lz4a alloc;
	struct stripe st[NSTRIPES];
};

/* ---- per-thread buffers ---- */

/* One set of buffers per nesting level: an lz4 store stacked over another
 * calls into it while its own buffers are in use. */
struct tls {
	uint8_t *u;    /* one uncompressed block */
	uint8_t *c;    /* one compressed block */
	size_t bsize;  /* block size the buffers hold */
	void *state;   /* LZ4 compression state */
	struct tls *deeper;
};

static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static pthread_key_t tls_key;
static int tls_key_err;
static _Thread_local struct tls *tls_top;  /* level 0 */
static _Thread_local unsigned tls_depth;   /* store calls in progress */

static void tls_free(void *p)
{
	for (struct tls *t = p, *next; t; t = next) {
		next = t->deeper;
		free(t->u);
		free(t->c);
		free(t->state);
		free(t);
	}
	tls_top = NULL;
}

static void tls_init(void)
{
	tls_key_err = pthread_key_create(&tls_key, tls_free);
}

static size_t round_up(size_t x, size_t a)
{
	return (x + a - 1) & ~(a - 1);
}

static struct tls *tls_new(void)
{
	struct tls *t = calloc(1, sizeof(*t));
	if (t && !(t->state = malloc((size_t)LZ4_sizeofState()))) {
		free(t);
		t = NULL;
	}
	return t;
}

static int tls_size(struct tls *t, size_t bsize)
{
	if (t->bsize >= bsize)
		return 0;
	size_t cb = round_up((size_t)LZ4_compressBound((int)bsize), BUF_ALIGN);
	uint8_t *u = aligned_alloc(BUF_ALIGN, bsize);
	uint8_t *c = aligned_alloc(BUF_ALIGN, cb);
	if (!u || !c) {
		free(u);
		free(c);
		return -ENOMEM;
	}
	free(t->u);
	free(t->c);
	t->u = u;
	t->c = c;
	t->bsize = bsize;
	return 0;
}

/* This thread's buffers for the current nesting level, big enough for
 * blocks of @bsize, or NULL when out of memory. Each successful call is
 * paired with tls_leave(). Freed when the thread exits. */
static struct tls *tls_enter(size_t bsize)
{
	pthread_once(&tls_once, tls_init);
	if (tls_key_err)
		return NULL;
	if (!tls_top) {
		struct tls *t = tls_new();
		if (!t)
			return NULL;
		if (pthread_setspecific(tls_key, t)) {
			tls_free(t);
			return NULL;
		}
		tls_top = t;
	}
	struct tls *t = tls_top;
	for (unsigned d = 0; d < tls_depth; d++) {
		if (!t->deeper && !(t->deeper = tls_new()))
			return NULL;
		t = t->deeper;
	}
	if (tls_size(t, bsize))
		return NULL;
	tls_depth++;
	return t;
}

static void tls_leave(void)
{
	tls_depth--;
}

/* ---- checksum and helpers ---- */

static inline uint64_t ld64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint64_t fmix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* One step of a checksum lane: a bijection of the word for any state, so
 * a changed word always changes the lane. */
static inline uint64_t lane(uint64_t a, uint64_t w)
{
	a = (a ^ w) * 0x9e3779b97f4a7c15ull;
	return a ^ (a >> 31);
}

/* Checksum of a block (@n a multiple of 32): four independent lanes keep
 * it far faster than decompression. */
static uint32_t block_sum(const uint8_t *p, size_t n)
{
	uint64_t a = 1, b = 2, c = 3, d = 4;
	for (size_t i = 0; i < n; i += 32) {
		a = lane(a, ld64(p + i));
		b = lane(b, ld64(p + i + 8));
		c = lane(c, ld64(p + i + 16));
		d = lane(d, ld64(p + i + 24));
	}
	uint64_t h = fmix(a ^ n);
	h = fmix(h ^ b);
	h = fmix(h ^ c);
	h = fmix(h ^ d);
	return (uint32_t)(h ^ (h >> 32));
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i += 64) {
		uint64_t x = 0;
		for (size_t k = 0; k < 64; k += 8)
			x |= ld64(p + i + k);
		if (x)
			return false;
	}
	return true;
}

/* ---- index: one stripe's hash table (caller holds the stripe lock) ---- */

/* Stripes are picked by a hash of the block number, so that threads
 * walking the store at a power-of-two distance from each other do not
 * meet on one lock at every step. */
static struct stripe *stripe_of(struct lz4s *s, uint64_t block)
{
	return &s->st[fmix(block) >> (64 - NSTRIPES_SHIFT)];
}

static uint32_t home(const struct stripe *st, uint64_t block)
{
	return (uint32_t)fmix(block) & (st->cap - 1);
}

static struct ent *find(struct stripe *st, uint64_t block)
{
	if (!st->tab)
		return NULL;
	for (uint32_t i = home(st, block);; i = (i + 1) & (st->cap - 1)) {
		struct ent *e = &st->tab[i];
		if (e->block == block)
			return e;
		if (e->block == EMPTY_KEY)
			return NULL;
	}
}

static int rehash(struct stripe *st, uint32_t cap)
{
	struct ent *tab = malloc((size_t)cap * sizeof(*tab));
	if (!tab)
		return -ENOMEM;
	for (uint32_t i = 0; i < cap; i++)
		tab[i] = (struct ent){ .block = EMPTY_KEY };
	struct ent *old = st->tab;
	uint32_t ocap = st->cap;
	st->tab = tab;
	st->cap = cap;
	st->hand = 0;
	for (uint32_t i = 0; i < ocap; i++) {
		if (old[i].block == EMPTY_KEY)
			continue;
		uint32_t j = home(st, old[i].block);
		while (tab[j].block != EMPTY_KEY)
			j = (j + 1) & (cap - 1);
		tab[j] = old[i];
	}
	free(old);
	return 0;
}

/* A new zeroed entry for @block, which is not in the table; NULL when out
 * of memory. */
static struct ent *insert(struct stripe *st, uint64_t block)
{
	if ((uint64_t)(st->n + 1) * 4 > (uint64_t)st->cap * 3 &&
	    rehash(st, st->cap ? st->cap * 2 : TAB_MIN))
		return NULL;
	uint32_t i = home(st, block);
	while (st->tab[i].block != EMPTY_KEY)
		i = (i + 1) & (st->cap - 1);
	st->tab[i] = (struct ent){ .block = block };
	st->n++;
	return &st->tab[i];
}

/* Removes @e (backward-shift deletion: no tombstones). Entries after it
 * may move into its slot. */
static void remove_ent(struct stripe *st, struct ent *e)
{
	uint32_t mask = st->cap - 1, i = (uint32_t)(e - st->tab), j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (st->tab[j].block == EMPTY_KEY)
			break;
		uint32_t k = home(st, st->tab[j].block);
		/* Entry j may fill hole i unless its home lies in (i, j]. */
		bool stays = i <= j ? (k > i && k <= j) : (k > i || k <= j);
		if (!stays) {
			st->tab[i] = st->tab[j];
			i = j;
		}
	}
	st->tab[i] = (struct ent){ .block = EMPTY_KEY };
	st->n--;
}

/* Gives a mostly empty table back (best effort). */
static void maybe_shrink(struct stripe *st)
{
	if (st->n == 0 && st->tab) {
		free(st->tab);
		st->tab = NULL;
		st->cap = 0;
		st->hand = 0;
	} else if (st->cap > TAB_MIN && st->n < st->cap / 8) {
		(void)rehash(st, st->cap / 2);
	}
}

/* Drops entry @e: its memory is freed, the counters follow. */
static void drop_ent(struct lz4s *s, struct stripe *st, struct ent *e)
{
	if (e->flags & F_RAW)
		st->raw--;
	if (e->csize) {
		atomic_fetch_sub_explicit(&s->stored, e->csize,
					  memory_order_relaxed);
		upager__lz4a_free(&s->alloc, e->data, e->csize);
	}
	remove_ent(st, e);
}

static void cache_drop(struct lz4s *s, uint64_t block)
{
	struct stripe *st = stripe_of(s, block);
	pthread_mutex_lock(&st->lock);
	struct ent *e = find(st, block);
	if (e) {
		drop_ent(s, st, e);
		maybe_shrink(st);
	}
	pthread_mutex_unlock(&st->lock);
}

/* ---- per-block turns ---- */

static void busy_enter(struct stripe *st, uint64_t block, struct busy *me)
{
	pthread_mutex_lock(&st->lock);
	for (;;) {
		struct busy *x = st->busy;
		while (x && x->block != block)
			x = x->next;
		if (!x)
			break;
		st->waiters++;
		pthread_cond_wait(&st->cv, &st->lock);
		st->waiters--;
	}
	me->block = block;
	me->next = st->busy;
	st->busy = me;
	pthread_mutex_unlock(&st->lock);
}

static void busy_exit(struct stripe *st, struct busy *me)
{
	pthread_mutex_lock(&st->lock);
	struct busy **pp = &st->busy;
	while (*pp != me)
		pp = &(*pp)->next;
	*pp = me->next;
	if (st->waiters)
		pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->lock);
}

/* ---- eviction (stacked stores with max_bytes) ---- */

/* Sweeps @st once from its hand: clears reference bits and drops blocks
 * not used since the last sweep, until at most @target bytes are held. */
static void evict_stripe(struct lz4s *s, struct stripe *st, uint64_t target)
{
	uint32_t seen = 0, steps = 0, i = st->cap ? st->hand & (st->cap - 1) : 0;
	while (seen < st->cap && steps++ < 2 * st->cap &&
	       atomic_load_explicit(&s->stored, memory_order_relaxed) > target) {
		struct ent *e = &st->tab[i];
		if (e->block != EMPTY_KEY && !(e->flags & F_REF)) {
			drop_ent(s, st, e); /* slot i now holds a later entry */
			continue;
		}
		e->flags &= ~F_REF;
		i = (i + 1) & (st->cap - 1);
		seen++;
	}
	st->hand = i;
	maybe_shrink(st);
}

/* Drops blocks until @need more bytes fit under max_bytes, with some
 * slack so that the next writes do not sweep again at once. */
static void evict(struct lz4s *s, uint64_t need)
{
	uint64_t target = s->max_bytes - need, slack = s->max_bytes / 64;
	target = target > slack ? target - slack : 0;
	pthread_mutex_lock(&s->evict_lock);
	for (unsigned v = 0; v <= 2 * NSTRIPES &&
	     atomic_load_explicit(&s->stored, memory_order_relaxed) > target;
	     v++) {
		struct stripe *st = &s->st[s->hand];
		s->hand = (s->hand + 1) % NSTRIPES;
		pthread_mutex_lock(&st->lock);
		evict_stripe(s, st, target);
		pthread_mutex_unlock(&st->lock);
	}
	pthread_mutex_unlock(&s->evict_lock);
}

/* Accounts @d more stored bytes unless that would pass max_bytes. */
static bool reserve(struct lz4s *s, uint64_t d)
{
	if (!s->max_bytes) {
		atomic_fetch_add_explicit(&s->stored, d, memory_order_relaxed);
		return true;
	}
	uint_fast64_t cur = atomic_load_explicit(&s->stored,
						 memory_order_relaxed);
	do {
		if (d > s->max_bytes || cur > s->max_bytes - d)
			return false;
	} while (!atomic_compare_exchange_weak_explicit(
		&s->stored, &cur, cur + d, memory_order_relaxed,
		memory_order_relaxed));
	return true;
}

/* ---- the lower store ---- */

static int lower_read(struct lz4s *s, uint64_t block, uint8_t *buf)
{
	upager_store_t *lo = s->lower;
	uint64_t off = block << s->bshift;
	size_t want = s->bsize, got = 0;
	atomic_fetch_add_explicit(&s->lower_reads, 1, memory_order_relaxed);
	if (lo->kind == UPAGER__STORE_FILE) {
		/* Short reads are the end of the file: zeros follow. */
		while (got < want) {
			ssize_t r = pread(lo->fd, buf + got, want - got,
					  (off_t)(off + got));
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -errno;
			if (r == 0)
				break;
			got += (size_t)r;
		}
	} else {
		uint64_t end;
		int rc = upager__store_size(lo, &end);
		if (rc)
			return rc;
		if (off < end) {
			got = end - off < want ? (size_t)(end - off) : want;
			rc = lo->ops.read(lo->ctx, buf, got, off);
			if (rc)
				return rc < 0 ? rc : -EIO;
		}
	}
	memset(buf + got, 0, want - got);
	return 0;
}

static int lower_write(struct lz4s *s, const uint8_t *buf, size_t len,
		       uint64_t off)
{
	upager_store_t *lo = s->lower;
	if (lo->kind != UPAGER__STORE_FILE) {
		if (!lo->ops.write)
			return -EROFS;
		int rc = lo->ops.write(lo->ctx, buf, len, off);
		return rc > 0 ? -EIO : rc;
	}
	if (lo->wfd < 0)
		return -EROFS; /* not opened with UPAGER_STORE_WRITABLE */
	size_t done = 0;
	while (done < len) {
		ssize_t r = pwrite(lo->wfd, buf + done, len - done,
				   (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += (size_t)r;
	}
	return 0;
}

/* ---- blocks ---- */

/* Marks the block's entry bad if it still holds version @gen: alone it
 * stays (and reads -EIO), stacked it is dropped. Counts it once. */
static void mark_bad(struct lz4s *s, uint64_t block, uint32_t gen)
{
	struct stripe *st = stripe_of(s, block);
	pthread_mutex_lock(&st->lock);
	struct ent *e = find(st, block);
	if (e && e->gen == gen && !(e->flags & F_BAD)) {
		atomic_fetch_add_explicit(&s->corrupt, 1, memory_order_relaxed);
		e->flags |= F_BAD;
		if (s->lower)
			drop_ent(s, st, e);
	}
	pthread_mutex_unlock(&st->lock);
}

/* Copies the entry of @block into *@m, and its stored bytes (unless it
 * is bad or all zeros) into @raw if they are stored raw, else into t->c:
 * under the stripe lock, which the decompression need not hold. Marks the
 * block used; @count: counts a read. Returns false if it is not held. */
static bool snapshot(struct lz4s *s, uint64_t block, struct ent *m,
		     uint8_t *raw, struct tls *t, bool count)
{
	struct stripe *st = stripe_of(s, block);

	pthread_mutex_lock(&st->lock);
	if (count)
		st->reads++;
	struct ent *e = find(st, block);
	if (e) {
		e->flags |= F_REF;
		*m = *e;
		if (!(m->flags & (F_BAD | F_ZERO)))
			memcpy((m->flags & F_RAW) ? raw : t->c, m->data,
			       m->csize);
	}
	pthread_mutex_unlock(&st->lock);
	return e != NULL;
}

/* Decompresses a snapshot's bytes (t->c) into @out, unless they were
 * stored raw (already there). Returns false if they do not decompress
 * to a whole block. */
static bool decode(const struct lz4s *s, const struct ent *m,
		   const struct tls *t, uint8_t *out)
{
	return (m->flags & F_RAW) ||
	       LZ4_decompress_safe((const char *)t->c, (char *)out,
				   (int)m->csize, (int)s->bsize) == (int)s->bsize;
}

/* Copies bytes [@boff, @boff + @n) of held block @block to @dst. Returns
 * 1 when served, 0 when the block is not held (alone: it reads as zeros),
 * -EIO when it is damaged (alone). A damaged block of a stacked store is
 * dropped and reported as not held. */
static int cached_read(struct lz4s *s, uint64_t block, uint8_t *dst,
		       size_t boff, size_t n, struct tls *t, bool count)
{
	bool full = n == s->bsize;
	uint8_t *out = full ? dst : t->u;
	struct ent m;

	if (!snapshot(s, block, &m, out, t, count))
		return 0;
	if (m.flags & F_BAD)
		return -EIO; /* only alone: stacked ones are dropped */
	if (m.flags & F_ZERO) {
		memset(dst, 0, n);
		return 1;
	}
	if (!decode(s, &m, t, out) || block_sum(out, s->bsize) != m.sum)
		goto bad;
	if (!full)
		memcpy(dst, out + boff, n);
	return 1;
bad:
	mark_bad(s, block, m.gen);
	return s->lower ? 0 : -EIO;
}

/* Stores uncompressed block @data as @block, replacing what was held.
 * @ref: mark it used (writes); a block filled from below starts unmarked,
 * so blocks read once are dropped before blocks read again.
 * Returns 0, -ENOSPC (alone, over max_bytes) or -ENOMEM (alone). Stacked
 * it cannot fail: a block that does not fit is simply not held. */
static int cache_put(struct lz4s *s, uint64_t block, const uint8_t *data,
		     struct tls *t, bool ref)
{
	struct stripe *st = stripe_of(s, block);
	uint32_t flags = ref ? F_REF : 0, size = 0, sum = 0;
	void *p = NULL;

	if (all_zero(data, s->bsize)) {
		if (!s->lower) {
			cache_drop(s, block);
			return 0;
		}
		flags |= F_ZERO;
	} else {
		sum = block_sum(data, s->bsize);
		int c = LZ4_compress_fast_extState(t->state, (const char *)data,
						   (char *)t->c, (int)s->bsize,
						   s->cap, s->accel);
		const void *src = t->c;
		if (c <= 0) {
			flags |= F_RAW;
			size = (uint32_t)s->bsize;
			src = data;
		} else {
			size = (uint32_t)c;
		}
		p = upager__lz4a_alloc(&s->alloc, size);
		if (!p)
			goto nomem;
		memcpy(p, src, size);
	}

	for (bool evicted = false;; evicted = true) {
		pthread_mutex_lock(&st->lock);
		struct ent *e = find(st, block);
		uint32_t old = e ? e->csize : 0;
		if (size > old && !reserve(s, size - old)) {
			pthread_mutex_unlock(&st->lock);
			if (s->lower && !evicted && size <= s->max_bytes) {
				evict(s, size);
				continue;
			}
			upager__lz4a_free(&s->alloc, p, size);
			if (!s->lower)
				return -ENOSPC;
			cache_drop(s, block);
			return 0;
		}
		if (!e && !(e = insert(st, block))) {
			pthread_mutex_unlock(&st->lock);
			atomic_fetch_sub_explicit(&s->stored, size,
						  memory_order_relaxed);
			upager__lz4a_free(&s->alloc, p, size);
			goto nomem;
		}
		if (size < old)
			atomic_fetch_sub_explicit(&s->stored, old - size,
						  memory_order_relaxed);
		void *oldp = e->data;
		if (e->flags & F_RAW)
			st->raw--;
		if (flags & F_RAW)
			st->raw++;
		e->data = p;
		e->csize = size;
		e->sum = sum;
		e->flags = flags;
		e->gen = atomic_fetch_add_explicit(&s->gen, 1,
						   memory_order_relaxed);
		pthread_mutex_unlock(&st->lock);
		if (old)
			upager__lz4a_free(&s->alloc, oldp, old);
		return 0;
	}
nomem:
	if (!s->lower)
		return -ENOMEM;
	cache_drop(s, block); /* what it held is stale now */
	return 0;
}

static int read_block(struct lz4s *s, uint64_t block, uint8_t *dst,
		      size_t boff, size_t n, struct tls *t)
{
	int rc = cached_read(s, block, dst, boff, n, t, true);
	if (rc)
		return rc < 0 ? rc : 0;
	if (!s->lower) {
		memset(dst, 0, n);
		return 0;
	}
	struct stripe *st = stripe_of(s, block);
	struct busy me;
	busy_enter(st, block, &me);
	rc = cached_read(s, block, dst, boff, n, t, false);
	if (rc == 0) {
		rc = lower_read(s, block, t->u);
		if (rc == 0) {
			memcpy(dst, t->u + boff, n);
			(void)cache_put(s, block, t->u, t, false);
		}
	}
	busy_exit(st, &me);
	return rc < 0 ? rc : 0;
}

/* Whether the store alone already holds exactly the bytes of full block
 * @src as @block (a never-written block holds zeros). The runtime writes
 * back every unit it installed into a region over a store alone, changed
 * or not (design.md, section 8): for an unchanged one, the checksum and a
 * decompression with a compare cost a fraction of a compression, and no
 * memory changes hands. The checksum only rules blocks out; the bytes
 * decide. The caller holds the block's turn, so the entry cannot change
 * meanwhile. */
static bool holds_same(struct lz4s *s, uint64_t block, const uint8_t *src,
		       struct tls *t)
{
	struct ent m;

	if (!snapshot(s, block, &m, t->u, t, false))
		return all_zero(src, s->bsize);
	if ((m.flags & (F_BAD | F_ZERO)) || m.sum != block_sum(src, s->bsize))
		return false;
	/* Damaged bytes do not decompress: the write replaces them. */
	return decode(s, &m, t, t->u) && memcmp(t->u, src, s->bsize) == 0;
}

static int write_block(struct lz4s *s, uint64_t block, const uint8_t *src,
		       size_t boff, size_t n, struct tls *t)
{
	struct stripe *st = stripe_of(s, block);
	const uint8_t *data = src;
	struct busy me;
	int rc = 0;

	busy_enter(st, block, &me);
	if (!s->lower && n == s->bsize && holds_same(s, block, src, t)) {
		atomic_fetch_add_explicit(&s->unchanged, 1,
					  memory_order_relaxed);
		goto out;
	}
	if (n < s->bsize) {
		rc = cached_read(s, block, t->u, 0, s->bsize, t, false);
		if (rc == 0 && s->lower)
			rc = lower_read(s, block, t->u);
		else if (rc == 0)
			memset(t->u, 0, s->bsize);
		if (rc < 0)
			goto out;
		memcpy(t->u + boff, src, n);
		data = t->u;
	}
	if (s->lower) {
		rc = lower_write(s, src, n, (block << s->bshift) + boff);
		if (rc) {
			cache_drop(s, block);
			goto out;
		}
	}
	rc = cache_put(s, block, data, t, true);
	if (rc == 0)
		atomic_fetch_add_explicit(&s->writes, 1, memory_order_relaxed);
out:
	busy_exit(st, &me);
	return rc < 0 ? rc : 0;
}

/* ---- store callbacks ---- */

static int read_range(struct lz4s *s, uint8_t *d, size_t len, uint64_t off,
		      struct tls *t)
{
	int rc = 0;
	while (len && rc == 0) {
		uint64_t block = off >> s->bshift;
		size_t boff = (size_t)(off & (s->bsize - 1));
		size_t n = s->bsize - boff < len ? s->bsize - boff : len;
		rc = read_block(s, block, d, boff, n, t);
		d += n;
		off += n;
		len -= n;
	}
	return rc;
}

static int lz4_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct lz4s *s = ctx;
	if (off + len < off)
		return -EINVAL;
	if (len == 0)
		return 0;
	struct tls *t = tls_enter(s->bsize);
	if (!t)
		return -ENOMEM;
	int rc = read_range(s, buf, len, off, t);
	tls_leave();
	return rc;
}

static int lz4_write(void *ctx, const void *buf, size_t len, uint64_t off)
{
	struct lz4s *s = ctx;
	if (off + len < off)
		return -EINVAL;
	if (!s->lower && (off > s->size || len > s->size - off))
		return -ENOSPC;
	if (len == 0)
		return 0;
	struct tls *t = tls_enter(s->bsize);
	if (!t)
		return -ENOMEM;
	const uint8_t *p = buf;
	int rc = 0;
	while (len && rc == 0) {
		uint64_t block = off >> s->bshift;
		size_t boff = (size_t)(off & (s->bsize - 1));
		size_t n = s->bsize - boff < len ? s->bsize - boff : len;
		rc = write_block(s, block, p, boff, n, t);
		p += n;
		off += n;
		len -= n;
	}
	tls_leave();
	return rc;
}

static int lz4_size(void *ctx, uint64_t *size)
{
	struct lz4s *s = ctx;
	if (s->lower)
		return upager__store_size(s->lower, size);
	*size = s->size;
	return 0;
}

/* Frees the store and everything it holds. */
static void destroy(struct lz4s *s)
{
	for (unsigned i = 0; i < NSTRIPES; i++) {
		struct stripe *st = &s->st[i];
		for (uint32_t j = 0; j < st->cap; j++) {
			struct ent *e = &st->tab[j];
			if (e->block != EMPTY_KEY && e->csize)
				upager__lz4a_free(&s->alloc, e->data, e->csize);
		}
		free(st->tab);
		pthread_cond_destroy(&st->cv);
		pthread_mutex_destroy(&st->lock);
	}
	upager__lz4a_destroy(&s->alloc);
	pthread_mutex_destroy(&s->evict_lock);
	upager_store_release(s->lower);
	free(s);
}

static void lz4_release(void *ctx)
{
	destroy(ctx);
}

/* ---- creation and stats ---- */

static int check_opts(const struct upager_lz4_opts *o)
{
	if (o->block_size < BLOCK_MIN || o->block_size > BLOCK_MAX ||
	    (o->block_size & (o->block_size - 1)))
		return -EINVAL;
	if (o->acceleration < 1 || o->acceleration > ACCEL_MAX)
		return -EINVAL;
	return o->flags ? -EINVAL : 0;
}

/* Sets up the locks; on failure destroys what it set up. */
static int init_locks(struct lz4s *s)
{
	int rc = pthread_mutex_init(&s->evict_lock, NULL);
	if (rc)
		return -rc;
	for (unsigned i = 0; i < NSTRIPES; i++) {
		struct stripe *st = &s->st[i];
		rc = pthread_mutex_init(&st->lock, NULL);
		if (rc == 0) {
			rc = pthread_cond_init(&st->cv, NULL);
			if (rc)
				pthread_mutex_destroy(&st->lock);
		}
		if (rc) {
			while (i--) {
				pthread_cond_destroy(&s->st[i].cv);
				pthread_mutex_destroy(&s->st[i].lock);
			}
			pthread_mutex_destroy(&s->evict_lock);
			return -rc;
		}
	}
	return 0;
}

int upager_store_lz4(const struct upager_lz4_opts *opts,
		     upager_store_t *lower, upager_store_t **out)
{
	struct upager_lz4_opts o = { 0 };
	if (opts)
		o = *opts;
	if (!o.block_size)
		o.block_size = BLOCK_MIN;
	if (!o.acceleration)
		o.acceleration = 1;
	if (!out || check_opts(&o))
		return -EINVAL;

	struct lz4s *s = aligned_alloc(_Alignof(struct lz4s),
				       round_up(sizeof(*s),
						_Alignof(struct lz4s)));
	if (!s)
		return -ENOMEM;
	memset(s, 0, sizeof(*s));
	s->bsize = o.block_size;
	s->bshift = (unsigned)__builtin_ctzll(o.block_size);
	s->cap = (int)(o.block_size - o.block_size / 64);
	s->accel = o.acceleration;
	s->max_bytes = o.max_bytes;
	s->size = o.size ? o.size : UINT64_MAX;

	int rc = upager__lz4a_init(&s->alloc, s->bsize);
	if (rc) {
		free(s);
		return rc;
	}
	rc = init_locks(s);
	if (rc) {
		upager__lz4a_destroy(&s->alloc);
		free(s);
		return rc;
	}
	if (lower) {
		upager__store_ref(lower);
		s->lower = lower;
	}
	struct upager_store_ops ops = { .read = lz4_read,
					.write = lz4_write,
					.size = lz4_size,
					.release = lz4_release };
	rc = upager_store_custom(&ops, s, out);
	if (rc)
		destroy(s);
	else
		(*out)->in_memory = !lower;
	return rc;
}

static struct lz4s *lz4_of(upager_store_t *st)
{
	if (!st || st->kind != UPAGER__STORE_CUSTOM || st->ops.read != lz4_read)
		return NULL;
	return st->ctx;
}

size_t upager__lz4_scratch_size(upager_store_t *st)
{
	struct lz4s *s = lz4_of(st);
	if (!s || s->lower)
		return 0;
	return s->bsize +
	       round_up((size_t)LZ4_compressBound((int)s->bsize), BUF_ALIGN);
}

int upager__lz4_read_scratch(upager_store_t *st, void *buf, size_t len,
			     uint64_t off, void *scratch)
{
	struct lz4s *s = lz4_of(st);
	if (!s || s->lower || off + len < off)
		return -EINVAL;
	/* Reads of a store alone use the buffers for the uncompressed and
	 * the compressed block only: never the compression state, never a
	 * deeper level. */
	struct tls t = { .u = scratch, .c = (uint8_t *)scratch + s->bsize,
			 .bsize = s->bsize };
	return read_range(s, buf, len, off, &t);
}

int upager_store_lz4_stats(upager_store_t *st, struct upager_lz4_stats *out)
{
	struct lz4s *s = lz4_of(st);
	if (!s || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < NSTRIPES; i++) {
		struct stripe *sp = &s->st[i];
		pthread_mutex_lock(&sp->lock);
		out->blocks += sp->n;
		out->raw_blocks += sp->raw;
		out->reads += sp->reads;
		pthread_mutex_unlock(&sp->lock);
	}
	out->bytes_logical = out->blocks << s->bshift;
	out->bytes_stored = atomic_load(&s->stored);
	out->bytes_allocated = upager__lz4a_bytes(&s->alloc);
	out->writes = atomic_load(&s->writes);
	out->lower_reads = atomic_load(&s->lower_reads);
	out->corrupt = atomic_load(&s->corrupt);
	out->unchanged = atomic_load(&s->unchanged);
	out->ratio = out->bytes_stored ?
		(double)out->bytes_logical / (double)out->bytes_stored : 0.0;
	return 0;
}

int upager__lz4_corrupt(upager_store_t *st, uint64_t block)
{
	struct lz4s *s = lz4_of(st);
	if (!s)
		return -EINVAL;
	struct stripe *sp = stripe_of(s, block);
	int rc = -ENOENT;
	pthread_mutex_lock(&sp->lock);
	struct ent *e = find(sp, block);
	if (e && e->csize) {
		/* The first byte: for a compressed block the first token,
		 * which shifts the parse of everything after it. */
		((uint8_t *)e->data)[0] ^= 0xff;
		rc = 0;
	}
	pthread_mutex_unlock(&sp->lock);
	return rc;
}
