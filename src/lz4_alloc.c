/*
 * lz4_alloc.c - size classes carved from mmap'ed slabs for the lz4 store.
 *
 * Layout: a slab is slab_size bytes aligned to slab_size, so the slab of
 * any slot is found by masking its address. Its first 64 bytes are the
 * header; slots follow. Slots are handed out first from the slab's free
 * list, then by carving the next never-used slot (so a fresh slab touches
 * only the pages it needs).
 *
 * Invariants, under the class lock:
 *  - a slab is on its class's partial list iff it has a free or uncarved
 *    slot;
 *  - a slab with no slot in use is unmapped at once: memory of freed
 *    blocks goes back to the system, never to a cache of empty slabs.
 * Requests larger than `big` (only for block sizes over 128 KiB) get a
 * mapping of their own, rounded up to whole pages.
 */
#define _GNU_SOURCE
#include "lz4_alloc.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLAB_HDR 64u
#define SLAB_MIN (64u * 1024)
#define SLAB_MAX (1024u * 1024)
#define PAGE 4096u

struct upager__lz4a_slab {
	struct upager__lz4a_slab *prev, *next; /* partial list */
	void *free;        /* free slots, linked through their first word */
	uint32_t used;     /* slots handed out */
	uint32_t carved;   /* slots ever handed out (free list + used) */
	uint32_t cls;
};

_Static_assert(sizeof(struct upager__lz4a_slab) <= SLAB_HDR,
	       "slab header must fit in SLAB_HDR bytes");

int upager__lz4a_init(struct upager__lz4a *a, size_t block_size)
{
	memset(a, 0, sizeof(*a));
	a->gran = block_size / UPAGER__LZ4A_CLASSES;
	size_t s = block_size * 16;
	a->slab_size = s < SLAB_MIN ? SLAB_MIN : s > SLAB_MAX ? SLAB_MAX : s;
	a->big = a->slab_size / 8;
	atomic_init(&a->bytes, 0);
	for (unsigned i = 0; i < UPAGER__LZ4A_CLASSES; i++) {
		struct upager__lz4a_class *c = &a->cls[i];
		int rc = pthread_mutex_init(&c->lock, NULL);
		if (rc) {
			while (i--)
				pthread_mutex_destroy(&a->cls[i].lock);
			return -rc;
		}
		c->slot = (i + 1) * a->gran;
		c->nslots = (uint32_t)((a->slab_size - SLAB_HDR) / c->slot);
	}
	return 0;
}

void upager__lz4a_destroy(struct upager__lz4a *a)
{
	for (unsigned i = 0; i < UPAGER__LZ4A_CLASSES; i++)
		pthread_mutex_destroy(&a->cls[i].lock);
}

uint64_t upager__lz4a_bytes(struct upager__lz4a *a)
{
	return atomic_load_explicit(&a->bytes, memory_order_relaxed);
}

static size_t page_round(size_t n)
{
	return (n + PAGE - 1) & ~(size_t)(PAGE - 1);
}

/* A mapping of @size bytes aligned to @size (a power of two). */
static void *map_aligned(size_t size)
{
	uint8_t *p = mmap(NULL, 2 * size, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	uintptr_t start = ((uintptr_t)p + size - 1) & ~(uintptr_t)(size - 1);
	size_t head = start - (uintptr_t)p;
	if (head)
		munmap(p, head);
	if (size - head)
		munmap((uint8_t *)start + size, size - head);
	return (void *)start;
}

static void partial_add(struct upager__lz4a_class *c,
			struct upager__lz4a_slab *sl)
{
	sl->prev = NULL;
	sl->next = c->partial;
	if (c->partial)
		c->partial->prev = sl;
	c->partial = sl;
}

static void partial_remove(struct upager__lz4a_class *c,
			   struct upager__lz4a_slab *sl)
{
	if (sl->prev)
		sl->prev->next = sl->next;
	else
		c->partial = sl->next;
	if (sl->next)
		sl->next->prev = sl->prev;
	sl->prev = sl->next = NULL;
}

/* Takes a slot from @sl, which has one. */
static void *slab_take(struct upager__lz4a_class *c,
		       struct upager__lz4a_slab *sl)
{
	void *p;
	if (sl->free) {
		p = sl->free;
		memcpy(&sl->free, p, sizeof(void *));
	} else {
		p = (uint8_t *)sl + SLAB_HDR + (size_t)sl->carved * c->slot;
		sl->carved++;
	}
	sl->used++;
	if (!sl->free && sl->carved == c->nslots)
		partial_remove(c, sl);
	return p;
}

void *upager__lz4a_alloc(struct upager__lz4a *a, size_t n)
{
	if (n == 0)
		return NULL;
	if (n > a->big) {
		size_t len = page_round(n);
		void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			       -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		atomic_fetch_add_explicit(&a->bytes, len, memory_order_relaxed);
		return p;
	}
	unsigned ci = (unsigned)((n + a->gran - 1) / a->gran - 1);
	struct upager__lz4a_class *c = &a->cls[ci];
	pthread_mutex_lock(&c->lock);
	struct upager__lz4a_slab *sl = c->partial;
	if (!sl) {
		sl = map_aligned(a->slab_size);
		if (!sl) {
			pthread_mutex_unlock(&c->lock);
			return NULL;
		}
		atomic_fetch_add_explicit(&a->bytes, a->slab_size,
					  memory_order_relaxed);
		memset(sl, 0, sizeof(*sl));
		sl->cls = ci;
		partial_add(c, sl);
	}
	void *p = slab_take(c, sl);
	pthread_mutex_unlock(&c->lock);
	return p;
}

void upager__lz4a_free(struct upager__lz4a *a, void *p, size_t n)
{
	if (!p)
		return;
	if (n > a->big) {
		size_t len = page_round(n);
		munmap(p, len);
		atomic_fetch_sub_explicit(&a->bytes, len, memory_order_relaxed);
		return;
	}
	struct upager__lz4a_slab *sl =
		(void *)((uintptr_t)p & ~(uintptr_t)(a->slab_size - 1));
	struct upager__lz4a_class *c = &a->cls[sl->cls];
	pthread_mutex_lock(&c->lock);
	int was_full = !sl->free && sl->carved == c->nslots;
	memcpy(p, &sl->free, sizeof(void *));
	sl->free = p;
	sl->used--;
	if (sl->used == 0) {
		if (!was_full)
			partial_remove(c, sl);
		pthread_mutex_unlock(&c->lock);
		munmap(sl, a->slab_size);
		atomic_fetch_sub_explicit(&a->bytes, a->slab_size,
					  memory_order_relaxed);
		return;
	}
	if (was_full)
		partial_add(c, sl);
	pthread_mutex_unlock(&c->lock);
}
