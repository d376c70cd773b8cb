/*
 * region.c - the region table and region lifetime.
 *
 * The table is an array of region pointers sorted by base address, so a
 * fault's region is found by binary search (O(log n); 10,000 regions take
 * 14 probes). There is one table per address space. Readers (the
 * manager, advise, stats) hold its table_lock for
 * reading; map and unmap hold it for writing only while they edit the
 * array, never while they wait.
 *
 * A region is freed only when its reference count drains: the table holds
 * one reference and every queued or in-flight fetch holds one, so a worker
 * never touches a freed region (design.md, rules 3-5).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct upager__region *upager__lookup(struct upager__space *sp, uintptr_t addr)
{
	size_t lo = 0, hi = sp->nregions;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (sp->table[mid]->base <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	struct upager__region *r = sp->table[lo - 1];
	return addr - r->base < r->span ? r : NULL;
}

/* Index where a region based at base goes (first entry with a larger
 * base). */
static size_t slot_for(struct upager__space *sp, uintptr_t base)
{
	size_t lo = 0, hi = sp->nregions;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (sp->table[mid]->base < base)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Caller holds table_lock for writing. */
int upager__table_insert(struct upager__space *sp, struct upager__region *r)
{
	if (sp->nregions == sp->table_cap) {
		size_t cap = sp->table_cap ? sp->table_cap * 2 : 64;
		void *t = realloc(sp->table, cap * sizeof(*sp->table));
		if (!t)
			return -ENOMEM;
		sp->table = t;
		sp->table_cap = cap;
	}
	size_t i = slot_for(sp, r->base);
	memmove(&sp->table[i + 1], &sp->table[i],
		(sp->nregions - i) * sizeof(*sp->table));
	sp->table[i] = r;
	sp->nregions++;
	return 0;
}

/* Caller holds table_lock for writing. Returns false if r is not there. */
bool upager__table_remove(struct upager__space *sp, struct upager__region *r)
{
	size_t i = slot_for(sp, r->base);
	if (i >= sp->nregions || sp->table[i] != r)
		return false;
	memmove(&sp->table[i], &sp->table[i + 1],
		(sp->nregions - i - 1) * sizeof(*sp->table));
	sp->nregions--;
	return true;
}

void upager__region_put(struct upager__region *r)
{
	/* Read before letting go: once only one reference is left, an
	 * unmap that sees it may free r at once. */
	upager_t *up = r->up;
	if (atomic_fetch_sub(&r->refs, 1) != 2)
		return;
	/* Only the table's (or the unmapper's) reference is left: wake an
	 * unmap waiting for in-flight work to drain. */
	pthread_mutex_lock(&up->unmap_lock);
	pthread_cond_broadcast(&up->unmap_cv);
	pthread_mutex_unlock(&up->unmap_lock);
}

void upager__units_of(const struct upager__region *r, uintptr_t a, uintptr_t b,
		      size_t *first, size_t *count)
{
	uintptr_t lo = a < r->base ? r->base : a;
	uintptr_t hi = b > r->base + r->span ? r->base + r->span : b;
	if (hi <= lo) {
		*first = 0;
		*count = 0;
		return;
	}
	size_t f = (lo - r->base) >> r->page_shift;
	size_t l = (hi - 1 - r->base) >> r->page_shift;
	*first = f;
	*count = l - f + 1;
}

int upager__space_init(upager_t *up, struct upager__space *sp, int uffd,
		       bool local)
{
	memset(sp, 0, sizeof(*sp));
	sp->up = up;
	sp->uffd = uffd;
	sp->local = local;
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	/* map/unmap must not starve behind a busy manager. */
	pthread_rwlockattr_setkind_np(&ra,
		PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	int rc = -pthread_rwlock_init(&sp->table_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	return rc;
}

void upager__space_fini(struct upager__space *sp)
{
	free(sp->table);
	sp->table = NULL;
	pthread_rwlock_destroy(&sp->table_lock);
}
