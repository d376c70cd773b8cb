/*
 * region.c - the region table and region lifetime.
 *
 * The table is an array of region pointers sorted by base address, so a
 * fault's region is found by binary search (O(log n); 10,000 regions take
 * 14 probes). Readers (the manager, advise, stats) hold table_lock for
 * reading; map and unmap hold it for writing only while they edit the
 * array, never while they wait.
 *
 * A region is freed only when its reference count drains: the table holds
 * one reference and every queued or in-flight fetch holds one, so a worker
 * never touches a freed region (design.md, rules 3-5).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct upager__region *upager__lookup(upager_t *up, uintptr_t addr)
{
	size_t lo = 0, hi = up->nregions;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (up->table[mid]->base <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	struct upager__region *r = up->table[lo - 1];
	return addr - r->base < r->span ? r : NULL;
}

/* Index where a region based at base goes (first entry with a larger
 * base). */
static size_t slot_for(upager_t *up, uintptr_t base)
{
	size_t lo = 0, hi = up->nregions;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (up->table[mid]->base < base)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Caller holds table_lock for writing. */
int upager__table_insert(upager_t *up, struct upager__region *r)
{
	if (up->nregions == up->table_cap) {
		size_t cap = up->table_cap ? up->table_cap * 2 : 64;
		void *t = realloc(up->table, cap * sizeof(*up->table));
		if (!t)
			return -ENOMEM;
		up->table = t;
		up->table_cap = cap;
	}
	size_t i = slot_for(up, r->base);
	memmove(&up->table[i + 1], &up->table[i],
		(up->nregions - i) * sizeof(*up->table));
	up->table[i] = r;
	up->nregions++;
	return 0;
}

/* Caller holds table_lock for writing. Returns false if r is not there. */
bool upager__table_remove(upager_t *up, struct upager__region *r)
{
	size_t i = slot_for(up, r->base);
	if (i >= up->nregions || up->table[i] != r)
		return false;
	memmove(&up->table[i], &up->table[i + 1],
		(up->nregions - i - 1) * sizeof(*up->table));
	up->nregions--;
	return true;
}

void upager__region_put(struct upager__region *r)
{
	if (atomic_fetch_sub(&r->refs, 1) != 2)
		return;
	/* Only the table's (or the unmapper's) reference is left: wake an
	 * unmap waiting for in-flight work to drain. */
	upager_t *up = r->up;
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
