/*
 * runtime.c - upager_t and the public entry points for regions.
 *
 * Owns creation and teardown (threads, descriptor, queues), upager_map /
 * upager_unmap (the region's memory, its registration and its place in the
 * table), upager_advise and upager_stats. Every entry point validates all
 * of its input before changing anything.
 *
 * Unmap order (design.md, rules 3-5): out of the table (no new fault finds
 * it) -> marked dead (queued work is dropped, installs stop retrying) ->
 * PROT_NONE (a late access faults with SIGSEGV rather than reading zeros)
 * -> unregistered (wakes any thread still waiting in the range) -> wait
 * until no fetch holds a reference -> munmap and free.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_QD 64u
#define DEFAULT_PENDING 4096u
#define DEFAULT_PREFETCH 1024u
#define MAX_READAHEAD (1ull << 30)

static bool pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static int check_config(const struct upager_config *c)
{
	if (c->workers > 256 || c->flags)
		return -EINVAL;
	if (c->queue_depth && (!pow2(c->queue_depth) || c->queue_depth > 4096))
		return -EINVAL;
	if (c->max_pending && (c->max_pending < 16 || c->max_pending > (1u << 20)))
		return -EINVAL;
	if (c->max_prefetch &&
	    (c->max_prefetch < 16 || c->max_prefetch > (1u << 20)))
		return -EINVAL;
	return 0;
}

static unsigned default_workers(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	return n > 8 ? 8 : (unsigned)n;
}

int upager_create(const struct upager_config *cfg, upager_t **out)
{
	struct upager_config c = { 0 };
	if (!out)
		return -EINVAL;
	if (cfg)
		c = *cfg;
	int rc = check_config(&c);
	if (rc)
		return rc;

	upager_t *up = calloc(1, sizeof(*up));
	if (!up)
		return -ENOMEM;
	up->nworkers = c.workers ? c.workers : default_workers();
	up->queue_depth = c.queue_depth ? c.queue_depth : DEFAULT_QD;
	up->uffd = -1;
	up->ctl_fd = -1;

	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	/* map/unmap must not starve behind a busy manager. */
	pthread_rwlockattr_setkind_np(&ra,
		PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&up->table_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&up->qlock, NULL);
	pthread_cond_init(&up->space_cv, NULL);
	pthread_mutex_init(&up->unmap_lock, NULL);
	pthread_cond_init(&up->unmap_cv, NULL);
	pthread_mutex_init(&up->retired_lock, NULL);

	rc = upager__ring_init(&up->demand,
			       c.max_pending ? c.max_pending : DEFAULT_PENDING,
			       sizeof(struct upager__req));
	if (rc)
		goto fail_demand;
	rc = upager__ring_init(&up->prefetch,
			       c.max_prefetch ? c.max_prefetch : DEFAULT_PREFETCH,
			       sizeof(struct upager__pf));
	if (rc)
		goto fail_prefetch;
	rc = upager__uffd_open(&up->uffd, &up->caps);
	if (rc)
		goto fail_uffd;
	up->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (up->ctl_fd < 0) {
		rc = -errno;
		goto fail_ctl;
	}
	rc = upager__workers_start(up);
	if (rc)
		goto fail_workers;
	rc = -pthread_create(&up->manager, NULL, upager__manager_main, up);
	if (rc)
		goto fail_manager;
	up->manager_started = true;
	*out = up;
	return 0;

fail_manager:
	upager__workers_stop(up);
fail_workers:
	close(up->ctl_fd);
fail_ctl:
	close(up->uffd);
fail_uffd:
	upager__ring_free(&up->prefetch);
fail_prefetch:
	upager__ring_free(&up->demand);
fail_demand:
	pthread_rwlock_destroy(&up->table_lock);
	pthread_mutex_destroy(&up->qlock);
	pthread_cond_destroy(&up->space_cv);
	pthread_mutex_destroy(&up->unmap_lock);
	pthread_cond_destroy(&up->unmap_cv);
	pthread_mutex_destroy(&up->retired_lock);
	free(up);
	return rc;
}

/* ---- regions ---- */

static void region_free(struct upager__region *r)
{
	if (r->state)
		free(r->state);
	upager_store_release(r->store);
	free(r);
}

/* Reserves span bytes aligned to align (a power of two). */
static void *reserve(size_t span, size_t align)
{
	size_t extra = align > 4096 ? align : 0;
	char *p = mmap(NULL, span + extra, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (!extra)
		return p;
	uintptr_t a = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
	size_t head = a - (uintptr_t)p, tail = extra - head;
	if (head)
		munmap(p, head);
	if (tail)
		munmap((char *)a + span, tail);
	return (void *)a;
}

int upager_map(upager_t *up, upager_store_t *store, uint64_t offset,
	       size_t length, const struct upager_map_opts *opts, void **addr)
{
	struct upager_map_opts o = { 0 };
	if (!up || !store || !addr || length == 0)
		return -EINVAL;
	if (opts)
		o = *opts;
	if (o.flags)
		return -EINVAL;
	if (o.page_size == 0)
		o.page_size = UPAGER_PAGE_SIZE_MIN;
	if (!pow2(o.page_size) || o.page_size < UPAGER_PAGE_SIZE_MIN ||
	    o.page_size > UPAGER_PAGE_SIZE_MAX)
		return -EINVAL;
	if (o.readahead > MAX_READAHEAD)
		return -EINVAL;
	if (offset + length < offset || length > SIZE_MAX - o.page_size)
		return -EINVAL;

	uint64_t size;
	int rc = upager__store_size(store, &size);
	if (rc)
		return rc < 0 ? rc : -EIO;

	struct upager__region *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->up = up;
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
	atomic_init(&r->refs, 1);
	atomic_init(&r->advice, UPAGER_ADV_NORMAL);
	/* One byte per unit; calloc of a large array maps zero pages lazily,
	 * so a 1 TiB region costs nothing until touched. */
	r->state = calloc(r->nunits, 1);
	if (!r->state) {
		rc = -ENOMEM;
		goto fail_state;
	}
	void *mem = reserve(r->span, o.page_size);
	if (!mem) {
		rc = -ENOMEM;
		goto fail_mem;
	}
	r->base = (uintptr_t)mem;
	/* fork(): the child must not see this range as plain anonymous
	 * memory (unregistered, it would read zeros); without a mapping it
	 * gets SIGSEGV instead. */
	if (madvise(mem, r->span, MADV_DONTFORK)) {
		rc = -errno;
		goto fail_advise;
	}
	rc = upager__uffd_register(up->uffd, r->base, r->span);
	if (rc)
		goto fail_advise;
	upager__store_ref(store);
	r->store = store;
	pthread_rwlock_wrlock(&up->table_lock);
	rc = upager__table_insert(up, r);
	pthread_rwlock_unlock(&up->table_lock);
	if (rc)
		goto fail_insert;
	*addr = mem;
	return 0;

fail_insert:
	upager_store_release(store);
	r->store = NULL;
	upager__uffd_unregister(up->uffd, r->base, r->span);
fail_advise:
	munmap(mem, r->span);
fail_mem:
	free(r->state);
fail_state:
	free(r);
	return rc;
}

static void region_teardown(upager_t *up, struct upager__region *r)
{
	atomic_store(&r->dead, true);
	bool mapped = !atomic_load(&r->app_unmapped);
	if (mapped) {
		mprotect((void *)r->base, r->span, PROT_NONE);
		upager__uffd_unregister(up->uffd, r->base, r->span);
	}
	/* Queued fetches see `dead` and drop their references; reads in
	 * flight complete first. Workers may be asleep with dead entries
	 * queued: kick them all. */
	upager__workers_kick(up, up->nworkers);
	pthread_mutex_lock(&up->unmap_lock);
	while (atomic_load(&r->refs) > 1)
		pthread_cond_wait(&up->unmap_cv, &up->unmap_lock);
	pthread_mutex_unlock(&up->unmap_lock);
	if (mapped)
		munmap((void *)r->base, r->span);
	pthread_mutex_lock(&up->retired_lock);
	upager__counters_fold(&up->retired, &r->cnt);
	pthread_mutex_unlock(&up->retired_lock);
	region_free(r);
}

int upager_unmap(upager_t *up, void *addr)
{
	if (!up || !addr)
		return -EINVAL;
	pthread_rwlock_wrlock(&up->table_lock);
	struct upager__region *r = upager__lookup(up, (uintptr_t)addr);
	if (!r || r->base != (uintptr_t)addr || atomic_load(&r->dead)) {
		pthread_rwlock_unlock(&up->table_lock);
		return -EINVAL;
	}
	upager__table_remove(up, r);
	pthread_rwlock_unlock(&up->table_lock);
	region_teardown(up, r);
	return 0;
}

void upager_destroy(upager_t *up)
{
	if (!up)
		return;
	for (;;) {
		pthread_rwlock_wrlock(&up->table_lock);
		struct upager__region *r = up->nregions ?
			up->table[up->nregions - 1] : NULL;
		if (r)
			up->nregions--;
		pthread_rwlock_unlock(&up->table_lock);
		if (!r)
			break;
		region_teardown(up, r);
	}
	atomic_store(&up->stopping, true);
	uint64_t one = 1;
	ssize_t n = write(up->ctl_fd, &one, sizeof(one));
	(void)n;
	if (up->manager_started)
		pthread_join(up->manager, NULL);
	upager__workers_stop(up);
	close(up->ctl_fd);
	close(up->uffd);
	upager__ring_free(&up->prefetch);
	upager__ring_free(&up->demand);
	free(up->table);
	pthread_rwlock_destroy(&up->table_lock);
	pthread_mutex_destroy(&up->qlock);
	pthread_cond_destroy(&up->space_cv);
	pthread_mutex_destroy(&up->unmap_lock);
	pthread_cond_destroy(&up->unmap_cv);
	pthread_mutex_destroy(&up->retired_lock);
	free(up);
}

/* ---- advice and statistics ---- */

/* The live region holding [a, a+len), with a reference, or NULL. */
static struct upager__region *get_range(upager_t *up, uintptr_t a, size_t len)
{
	pthread_rwlock_rdlock(&up->table_lock);
	struct upager__region *r = upager__lookup(up, a);
	if (r && (len > r->span || a - r->base > r->span - len ||
		  atomic_load(&r->dead)))
		r = NULL;
	if (r)
		atomic_fetch_add(&r->refs, 1);
	pthread_rwlock_unlock(&up->table_lock);
	return r;
}

int upager_advise(upager_t *up, void *addr, size_t len, int advice)
{
	if (!up || !addr || len == 0)
		return -EINVAL;
	if (advice < UPAGER_ADV_NORMAL || advice > UPAGER_ADV_DONTNEED)
		return -EINVAL;
	uintptr_t a = (uintptr_t)addr;
	if (a + len < a)
		return -EINVAL;
	struct upager__region *r = get_range(up, a, len);
	if (!r)
		return -EINVAL;
	int rc = 0;
	size_t first, count;
	upager__units_of(r, a, a + len, &first, &count);
	switch (advice) {
	case UPAGER_ADV_WILLNEED:
		upager__prefetch(up, r, first, count, true);
		break;
	case UPAGER_ADV_DONTNEED: {
		/* The kernel reports the zap to the manager as a REMOVE
		 * event, which resets the units' state. */
		void *p = (void *)(r->base + (first << r->page_shift));
		if (madvise(p, count << r->page_shift, MADV_DONTNEED))
			rc = -errno;
		break;
	}
	default:
		atomic_store(&r->advice, advice);
		break;
	}
	upager__region_put(r);
	return rc;
}

int upager_stats(upager_t *up, void *addr, struct upager_stats *out)
{
	if (!up || !out)
		return -EINVAL;
	struct upager_stats st;
	memset(&st, 0, sizeof(st));
	pthread_rwlock_rdlock(&up->table_lock);
	if (addr) {
		struct upager__region *r = upager__lookup(up, (uintptr_t)addr);
		if (!r) {
			pthread_rwlock_unlock(&up->table_lock);
			return -EINVAL;
		}
		upager__counters_add_to(&r->cnt, &st);
		st.regions = 1;
	} else {
		for (size_t i = 0; i < up->nregions; i++)
			upager__counters_add_to(&up->table[i]->cnt, &st);
		st.regions = up->nregions;
		pthread_mutex_lock(&up->retired_lock);
		upager__counters_add_to(&up->retired, &st);
		pthread_mutex_unlock(&up->retired_lock);
	}
	pthread_rwlock_unlock(&up->table_lock);
	*out = st;
	return 0;
}
