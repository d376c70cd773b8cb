/*
 * space.c - regions within an address space, and adopted address spaces.
 *
 * A space is one userfaultfd descriptor and the regions registered on it.
 * The home space is the runtime's own memory (upager_map); an adopted
 * space is another process's, whose descriptor was handed to us
 * (upager_space_adopt): its owner maps and registers the memory, we only
 * serve faults on it. The fault path does not care which: workers install
 * through r->sp->uffd and the kernel resolves the target address space
 * from the descriptor.
 *
 * Differences for adopted spaces: we never mmap, madvise, mprotect or
 * munmap their memory (it isn't ours), a fault on a unit we believe present
 * is fetched again instead of being checked with mincore(), and a space
 * whose process has exited is marked gone and its work dropped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define MAX_READAHEAD (1ull << 30)

static struct upager__region *get_range(struct upager__space *sp, uintptr_t a,
					size_t len);

static bool pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

int upager__region_new(struct upager__space *sp, upager_store_t *store,
		       uint64_t offset, size_t length,
		       const struct upager_map_opts *opts,
		       struct upager__region **out)
{
	struct upager_map_opts o = { 0 };
	if (!store || length == 0)
		return -EINVAL;
	if (opts)
		o = *opts;
	if (o.flags & ~(UPAGER_MAP_WRITEBACK | UPAGER_MAP_ZERO_REMOVED))
		return -EINVAL;
	bool writeback = o.flags & UPAGER_MAP_WRITEBACK;
	if (o.page_size == 0)
		o.page_size = UPAGER_PAGE_SIZE_MIN;
	if (!pow2(o.page_size) || o.page_size < UPAGER_PAGE_SIZE_MIN ||
	    o.page_size > UPAGER_PAGE_SIZE_MAX)
		return -EINVAL;
	if (o.readahead > MAX_READAHEAD)
		return -EINVAL;
	if (offset + length < offset || length > SIZE_MAX - o.page_size)
		return -EINVAL;

	/* Inline faults read in a signal handler: file stores (pread(2))
	 * and lz4 stores alone (in-memory decompression) only; any other
	 * custom store's callbacks may block, lock or allocate. */
	if (sp == &sp->up->home && sp->up->inline_faults &&
	    store->kind != UPAGER__STORE_FILE &&
	    !upager__lz4_scratch_size(store))
		return -EOPNOTSUPP;
	if (writeback && !(store->kind == UPAGER__STORE_FILE ? store->wfd >= 0 :
					   store->ops.write != NULL))
		return -EINVAL; /* nowhere to write back to */
	/* Budgets and write-back need write-protect faults. */
	bool wp = writeback || o.max_resident || sp->up->budget_units_4k;
	if (wp && (!sp->caps.wp || !sp->local))
		return -EOPNOTSUPP;

	uint64_t size;
	int rc = upager__store_size(store, &size);
	if (rc)
		return rc < 0 ? rc : -EIO;
	/* Written-back units may extend the store up to the region's end,
	 * so a writable region reads up to there (short reads give zeros). */
	if (writeback)
		size = UINT64_MAX;

	struct upager__region *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->up = sp->up;
	r->sp = sp;
	r->page_size = o.page_size;
	r->page_shift = (unsigned)__builtin_ctzll(o.page_size);
	r->span = (length + o.page_size - 1) & ~(o.page_size - 1);
	r->nunits = r->span >> r->page_shift;
	r->length = length;
	r->offset = offset;
	r->data_end = size <= offset ? 0 :
		      (size - offset < length ? size - offset : length);
	r->ra_units = (o.readahead + o.page_size - 1) >> r->page_shift;
	r->last_fault = SIZE_MAX - 1;
	r->writeback = writeback;
	r->zero_removed = o.flags & UPAGER_MAP_ZERO_REMOVED;
	r->wp = wp;
	/* Over a store that keeps its bytes in memory and knows when it is
	 * handed the bytes it holds (lz4 alone), a write-back of an unchanged
	 * unit costs a comparison, not a write; tracking first writes costs a
	 * write-protect fault, a round trip through the manager, per unit
	 * written. So such units go in writable and dirty: the store tells
	 * them apart at write-back (design.md, section 8). */
	r->dirty_at_install = writeback && store->in_memory;
	if (o.max_resident) {
		uint64_t b = o.max_resident >> r->page_shift;
		r->budget_units = b ? (size_t)b : 1;
	}
	atomic_init(&r->refs, 1);
	atomic_init(&r->advice, UPAGER_ADV_NORMAL);
	/* One byte per unit; calloc of a large array maps zero pages lazily,
	 * so a 1 TiB region costs nothing until touched. */
	r->state = calloc(r->nunits, 1);
	if (!r->state) {
		free(r);
		return -ENOMEM;
	}
	upager__store_ref(store);
	r->store = store;
	*out = r;
	return 0;
}

void upager__region_free(struct upager__region *r)
{
	free(r->state);
	upager_store_release(r->store);
	free(r);
}

/* Design.md rule 4. r is out of the table already. */
static void region_teardown(struct upager__region *r)
{
	struct upager__space *sp = r->sp;
	upager_t *up = r->up;
	atomic_store(&r->dead, true);
	bool ours = sp->local && !atomic_load(&r->app_unmapped);
	if (ours) {
		mprotect((void *)r->base, r->span, PROT_NONE);
		upager__uffd_unregister(sp->uffd, r->base, r->span);
	}
	/* Queued fetches see `dead` and drop their references; reads in
	 * flight complete first. Workers may be asleep with dead entries
	 * queued: kick them all. */
	upager__workers_kick(up, up->nworkers);
	pthread_mutex_lock(&up->unmap_lock);
	while (atomic_load(&r->refs) > 1)
		pthread_cond_wait(&up->unmap_cv, &up->unmap_lock);
	pthread_mutex_unlock(&up->unmap_lock);
	if (ours)
		munmap((void *)r->base, r->span);
	upager__counters_fold(&sp->retired, &r->cnt);
	upager__region_free(r);
}

int upager__region_remove(struct upager__space *sp, uintptr_t base)
{
	/* If the application unmapped the range itself, its UNMAP event has
	 * been read, but maybe not handled: wait, or we could unmap whatever
	 * the application has mapped there since. */
	upager__manager_barrier(sp->up);
	pthread_rwlock_wrlock(&sp->table_lock);
	struct upager__region *r = upager__lookup(sp, base);
	if (!r || r->base != base || atomic_load(&r->dead)) {
		pthread_rwlock_unlock(&sp->table_lock);
		return -EINVAL;
	}
	if (r->writeback) {
		/* Write back while the region still serves faults; on
		 * failure it stays mapped and dirty: nothing lost. */
		atomic_fetch_add(&r->refs, 1);
		pthread_rwlock_unlock(&sp->table_lock);
		int rc = upager__region_flush(r, 0, r->nunits);
		pthread_rwlock_wrlock(&sp->table_lock);
		upager__region_put(r);
		if (rc) {
			pthread_rwlock_unlock(&sp->table_lock);
			return rc;
		}
		/* Unmapped by another thread meanwhile? */
		struct upager__region *again = upager__lookup(sp, base);
		if (again != r || atomic_load(&r->dead)) {
			pthread_rwlock_unlock(&sp->table_lock);
			return -EINVAL;
		}
	}
	upager__table_remove(sp, r);
	pthread_rwlock_unlock(&sp->table_lock);
	region_teardown(r);
	return 0;
}

int upager__region_flush(struct upager__region *r, size_t first,
			  size_t count)
{
	if (!r->writeback)
		return 0;
	int rc = upager__wb_range(r->up, r, first, count, false);
	if (rc == 0 && r->store->kind == UPAGER__STORE_FILE &&
	    fdatasync(r->store->wfd))
		rc = -errno;
	return rc;
}

int upager__space_flush(struct upager__space *sp, uintptr_t a, size_t len)
{
	if (!a || len == 0 || a + len < a)
		return -EINVAL;
	struct upager__region *r = get_range(sp, a, len);
	if (!r)
		return -EINVAL;
	size_t first, count;
	upager__units_of(r, a, a + len, &first, &count);
	int rc = upager__region_flush(r, first, count);
	upager__region_put(r);
	return rc;
}

void upager__space_clear(struct upager__space *sp)
{
	upager__manager_barrier(sp->up); /* as in upager__region_remove */
	for (;;) {
		pthread_rwlock_wrlock(&sp->table_lock);
		struct upager__region *r = sp->nregions ?
			sp->table[--sp->nregions] : NULL;
		pthread_rwlock_unlock(&sp->table_lock);
		if (!r)
			break;
		/* Best effort: nobody is left to report an error to. */
		upager__region_flush(r, 0, r->nunits);
		region_teardown(r);
	}
}

/* The live region holding [a, a+len), with a reference, or NULL. */
static struct upager__region *get_range(struct upager__space *sp, uintptr_t a,
					size_t len)
{
	pthread_rwlock_rdlock(&sp->table_lock);
	struct upager__region *r = upager__lookup(sp, a);
	if (r && (len > r->span || a - r->base > r->span - len ||
		  atomic_load(&r->dead)))
		r = NULL;
	if (r)
		atomic_fetch_add(&r->refs, 1);
	pthread_rwlock_unlock(&sp->table_lock);
	return r;
}

int upager__space_advise(struct upager__space *sp, uintptr_t a, size_t len,
			 int advice)
{
	if (!a || len == 0 || a + len < a)
		return -EINVAL;
	if (advice < UPAGER_ADV_NORMAL || advice > UPAGER_ADV_DISCARD)
		return -EINVAL;
	if ((advice == UPAGER_ADV_DONTNEED || advice == UPAGER_ADV_DISCARD) &&
	    !sp->local)
		return -EOPNOTSUPP; /* another process's pages */
	struct upager__region *r = get_range(sp, a, len);
	if (!r)
		return -EINVAL;
	int rc = 0;
	size_t first, count;
	upager__units_of(r, a, a + len, &first, &count);
	switch (advice) {
	case UPAGER_ADV_WILLNEED:
		upager__prefetch(sp->up, r, first, count, true);
		break;
	case UPAGER_ADV_DONTNEED:
		if (r->writeback) {
			/* Written back, then dropped. */
			rc = upager__wb_range(sp->up, r, first, count, true);
			break;
		}
		/* fall through */
	case UPAGER_ADV_DISCARD: {
		/* The kernel reports the zap to the manager as a REMOVE
		 * event, which resets the units' state, but the madvise
		 * returns as soon as the event is read, maybe before the
		 * manager handled it: wait for that, so that what the
		 * caller does next (WILLNEED) sees the units gone. */
		void *p = (void *)(r->base + (first << r->page_shift));
		if (madvise(p, count << r->page_shift, MADV_DONTNEED))
			rc = -errno;
		upager__manager_barrier(sp->up);
		break;
	}
	default:
		atomic_store(&r->advice, advice);
		break;
	}
	upager__region_put(r);
	return rc;
}

static void region_stats_add(struct upager__region *r,
			     struct upager_stats *acc)
{
	upager__counters_add_to(&r->cnt, acc);
	acc->dirty_units += atomic_load(&r->dirty);
	acc->resident_bytes += (uint64_t)atomic_load(&r->resident)
			       << r->page_shift;
}

int upager__space_stats_add(struct upager__space *sp, uintptr_t addr,
			    struct upager_stats *acc)
{
	pthread_rwlock_rdlock(&sp->table_lock);
	if (addr) {
		struct upager__region *r = upager__lookup(sp, addr);
		if (!r) {
			pthread_rwlock_unlock(&sp->table_lock);
			return -EINVAL;
		}
		region_stats_add(r, acc);
		acc->regions += 1;
	} else {
		for (size_t i = 0; i < sp->nregions; i++)
			region_stats_add(sp->table[i], acc);
		acc->regions += sp->nregions;
		upager__counters_add_to(&sp->retired, acc);
	}
	pthread_rwlock_unlock(&sp->table_lock);
	return 0;
}

/* ---- adopted spaces: the public API ---- */

static struct upager__space *SP(upager_space_t *p)
{
	return (struct upager__space *)p;
}

int upager_space_adopt(upager_t *up, int uffd, upager_space_t **out)
{
	if (!up || uffd < 0 || !out)
		return -EINVAL;
	/* The kernel polls a userfaultfd only in non-blocking mode. */
	int fl = fcntl(uffd, F_GETFL);
	if (fl < 0)
		return -errno;
	struct upager__space *sp = malloc(sizeof(*sp));
	if (!sp)
		return -ENOMEM;
	int rc = upager__space_init(up, sp, uffd, false);
	if (rc) {
		free(sp);
		return rc;
	}
	/* The owner negotiated the features; try the useful ones and let
	 * the kernel refuse (POISON failing falls back to a wake). */
	sp->caps.poison = true;
	sp->caps.thread_id = false;
	sp->adopted_ns = upager__now_ns();
	if (!(fl & O_NONBLOCK) && fcntl(uffd, F_SETFL, fl | O_NONBLOCK)) {
		rc = -errno;
		goto fail;
	}
	pthread_rwlock_wrlock(&up->spaces_lock);
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = sp };
	if (epoll_ctl(up->epfd, EPOLL_CTL_ADD, uffd, &ev)) {
		rc = -errno;
		pthread_rwlock_unlock(&up->spaces_lock);
		goto fail;
	}
	sp->next = up->spaces;
	up->spaces = sp;
	pthread_rwlock_unlock(&up->spaces_lock);
	*out = (upager_space_t *)sp;
	return 0;
fail:
	upager__space_fini(sp);
	free(sp);
	return rc;
}

int upager_space_add(upager_space_t *space, uint64_t base, size_t length,
		     upager_store_t *store, uint64_t offset,
		     const struct upager_map_opts *opts)
{
	struct upager__space *sp = SP(space);
	if (!sp || !base)
		return -EINVAL;
	struct upager__region *r;
	int rc = upager__region_new(sp, store, offset, length, opts, &r);
	if (rc)
		return rc;
	r->base = (uintptr_t)base;
	rc = -EINVAL;
	if ((r->base & (r->page_size - 1)) || r->base + r->span < r->base)
		goto fail;
	pthread_rwlock_wrlock(&sp->table_lock);
	/* No overlap with a region already there. */
	struct upager__region *lo = upager__lookup(sp, r->base);
	struct upager__region *hi = upager__lookup(sp, r->base + r->span - 1);
	bool clash = lo || hi;
	for (size_t i = 0; !clash && i < sp->nregions; i++)
		clash = sp->table[i]->base >= r->base &&
			sp->table[i]->base < r->base + r->span;
	rc = clash ? -EEXIST : upager__table_insert(sp, r);
	pthread_rwlock_unlock(&sp->table_lock);
	if (rc)
		goto fail;
	return 0;
fail:
	upager__region_free(r);
	return rc;
}

int upager_space_remove(upager_space_t *space, uint64_t base)
{
	if (!space || !base)
		return -EINVAL;
	return upager__region_remove(SP(space), (uintptr_t)base);
}

int upager_space_advise(upager_space_t *space, uint64_t base, size_t len,
			int advice)
{
	if (!space)
		return -EINVAL;
	return upager__space_advise(SP(space), (uintptr_t)base, len, advice);
}

int upager_space_stats(upager_space_t *space, struct upager_stats *out)
{
	if (!space || !out)
		return -EINVAL;
	struct upager_stats st;
	memset(&st, 0, sizeof(st));
	upager__space_stats_add(SP(space), 0, &st);
	*out = st;
	return 0;
}

int upager_space_status(upager_space_t *space)
{
	if (!space)
		return -EINVAL;
	return atomic_load(&SP(space)->gone) ? -ESRCH : 0;
}

void upager_space_close(upager_space_t *space)
{
	struct upager__space *sp = SP(space);
	if (!sp)
		return;
	upager_t *up = sp->up;
	/* Out of the manager's sight first: after this it never reads the
	 * descriptor again. */
	pthread_rwlock_wrlock(&up->spaces_lock);
	struct upager__space **pp = &up->spaces;
	while (*pp && *pp != sp)
		pp = &(*pp)->next;
	if (*pp)
		*pp = sp->next;
	epoll_ctl(up->epfd, EPOLL_CTL_DEL, sp->uffd, NULL);
	pthread_rwlock_unlock(&up->spaces_lock);
	upager__space_clear(sp);
	close(sp->uffd);
	upager__space_fini(sp);
	free(sp);
}
