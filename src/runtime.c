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
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

#define DEFAULT_QD 64u
#define DEFAULT_PENDING 4096u
#define DEFAULT_PREFETCH 1024u

static bool pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static int check_config(const struct upager_config *c)
{
	if (c->workers > 256 ||
	    (c->flags & ~(UPAGER_CFG_NO_FOLLOW | UPAGER_CFG_INLINE)))
		return -EINVAL;
	if ((c->flags & UPAGER_CFG_INLINE) && c->daemon_socket)
		return -EINVAL;
	if (c->daemon_fallback > UPAGER_DAEMON_FALLBACK_SIGBUS)
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
	up->no_follow = c.flags & UPAGER_CFG_NO_FOLLOW;
	up->inline_faults = c.flags & UPAGER_CFG_INLINE;
	up->ctl_fd = -1;
	up->epfd = -1;

	pthread_rwlock_init(&up->spaces_lock, NULL);
	pthread_mutex_init(&up->qlock, NULL);
	pthread_cond_init(&up->space_cv, NULL);
	pthread_mutex_init(&up->unmap_lock, NULL);
	pthread_cond_init(&up->unmap_cv, NULL);

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
	int uffd;
	struct upager__uffd_caps caps;
	rc = upager__uffd_open(&uffd, &caps, up->inline_faults);
	if (rc)
		goto fail_uffd;
	rc = upager__space_init(up, &up->home, uffd, true);
	if (rc) {
		close(uffd);
		goto fail_uffd;
	}
	up->home.caps = caps;
	up->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	up->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (up->ctl_fd < 0 || up->epfd < 0) {
		rc = -errno;
		goto fail_ctl;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	if (epoll_ctl(up->epfd, EPOLL_CTL_ADD, up->ctl_fd, &ev)) {
		rc = -errno;
		goto fail_ctl;
	}
	ev.data.ptr = &up->home;
	if (epoll_ctl(up->epfd, EPOLL_CTL_ADD, uffd, &ev)) {
		rc = -errno;
		goto fail_ctl;
	}
	if (c.daemon_socket) {
		/* upagerd serves the faults (client.c): no manager or
		 * workers here unless the daemon dies. */
		rc = upager__client_connect(up, &c);
		if (rc)
			goto fail_workers;
		*out = up;
		return 0;
	}
	up->budget_units_4k = c.max_resident >> 12;
	if (c.max_resident && !up->budget_units_4k)
		up->budget_units_4k = 1;
	rc = upager__wb_start(up);
	if (rc)
		goto fail_ctl;
	rc = upager__workers_start(up);
	if (rc)
		goto fail_workers;
	rc = upager__manager_start(up);
	if (rc)
		goto fail_manager;
	if (up->inline_faults && (rc = upager__inline_attach(up)))
		goto fail_attach;
	*out = up;
	return 0;

fail_attach:
	atomic_store(&up->stopping, true);
	uint64_t one = 1;
	ssize_t wn = write(up->ctl_fd, &one, sizeof(one));
	(void)wn;
	pthread_join(up->manager, NULL);
fail_manager:
	upager__workers_stop(up);
fail_workers:
	atomic_store(&up->stopping, true);
	upager__wb_stop(up);
fail_ctl:
	if (up->epfd >= 0)
		close(up->epfd);
	if (up->ctl_fd >= 0)
		close(up->ctl_fd);
	close(up->home.uffd);
	upager__space_fini(&up->home);
fail_uffd:
	upager__ring_free(&up->prefetch);
fail_prefetch:
	upager__ring_free(&up->demand);
fail_demand:
	pthread_rwlock_destroy(&up->spaces_lock);
	pthread_mutex_destroy(&up->qlock);
	pthread_cond_destroy(&up->space_cv);
	pthread_mutex_destroy(&up->unmap_lock);
	pthread_cond_destroy(&up->unmap_cv);
	free(up);
	return rc;
}

/* ---- regions ---- */

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
	if (!up || !addr)
		return -EINVAL;
	int crc = upager__client_check_map(up, store, opts);
	if (crc)
		return crc;
	struct upager__region *r;
	int rc = upager__region_new(&up->home, store, offset, length, opts, &r);
	if (rc)
		return rc;
	void *mem = reserve(r->span, r->page_size);
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
	/* 2 MiB units of a region without write-protection are moved in
	 * whole from the workers' huge read buffers (worker.c, moves()),
	 * which the kernel does as one page table entry only where the
	 * range has no page table yet. A fault in a range the kernel may
	 * give huge pages to leaves none; elsewhere it leaves an empty one
	 * behind and the move goes 4 KiB page by page. Advisory: without
	 * transparent huge pages, units are copied. */
	if (r->page_size == UPAGER_PAGE_SIZE_MAX && !r->wp)
		(void)madvise(mem, r->span, MADV_HUGEPAGE);
	rc = upager__uffd_register_mode(up->home.uffd, r->base, r->span,
			UFFDIO_REGISTER_MODE_MISSING |
			(r->wp ? UFFDIO_REGISTER_MODE_WP : 0));
	if (rc)
		goto fail_advise;
	pthread_rwlock_wrlock(&up->home.table_lock);
	rc = upager__table_insert(&up->home, r);
	pthread_rwlock_unlock(&up->home.table_lock);
	if (rc)
		goto fail_insert;
	rc = upager__client_map(up, r); /* daemon mode: hand it over */
	if (rc) {
		pthread_rwlock_wrlock(&up->home.table_lock);
		upager__table_remove(&up->home, r);
		pthread_rwlock_unlock(&up->home.table_lock);
		goto fail_insert;
	}
	*addr = mem;
	return 0;

fail_insert:
	upager__uffd_unregister(up->home.uffd, r->base, r->span);
fail_advise:
	munmap(mem, r->span);
fail_mem:
	upager__region_free(r);
	return rc;
}

int upager_unmap(upager_t *up, void *addr)
{
	if (!up || !addr)
		return -EINVAL;
	if (up->client)
		return upager__client_unmap(up, (uintptr_t)addr);
	return upager__region_remove(&up->home, (uintptr_t)addr);
}

void upager_destroy(upager_t *up)
{
	if (!up)
		return;
	/* Daemon mode: stop the watcher and let the daemon drop us. */
	upager__client_close(up);
	/* Adopted spaces first, then our own regions: nothing registered
	 * may outlive the threads (design.md, rule 6). */
	for (;;) {
		pthread_rwlock_rdlock(&up->spaces_lock);
		struct upager__space *sp = up->spaces;
		pthread_rwlock_unlock(&up->spaces_lock);
		if (!sp)
			break;
		upager_space_close((upager_space_t *)sp);
	}
	upager__space_clear(&up->home);
	if (up->inline_faults)
		upager__inline_detach(up);
	atomic_store(&up->stopping, true);
	uint64_t one = 1;
	ssize_t n = write(up->ctl_fd, &one, sizeof(one));
	(void)n;
	if (up->manager_started)
		pthread_join(up->manager, NULL);
	upager__workers_stop(up);
	upager__wb_stop(up);
	close(up->epfd);
	close(up->ctl_fd);
	close(up->home.uffd);
	upager__space_fini(&up->home);
	upager__ring_free(&up->prefetch);
	upager__ring_free(&up->demand);
	pthread_rwlock_destroy(&up->spaces_lock);
	pthread_mutex_destroy(&up->qlock);
	pthread_cond_destroy(&up->space_cv);
	pthread_mutex_destroy(&up->unmap_lock);
	pthread_cond_destroy(&up->unmap_cv);
	free(up);
}

int upager_flush(upager_t *up, void *addr, size_t len)
{
	if (!up)
		return -EINVAL;
	return upager__space_flush(&up->home, (uintptr_t)addr, len);
}

int upager_advise(upager_t *up, void *addr, size_t len, int advice)
{
	if (!up)
		return -EINVAL;
	if (up->client)
		return upager__client_advise(up, (uintptr_t)addr, len, advice);
	return upager__space_advise(&up->home, (uintptr_t)addr, len, advice);
}

int upager_stats(upager_t *up, void *addr, struct upager_stats *out)
{
	if (!up || !out)
		return -EINVAL;
	struct upager_stats st;
	memset(&st, 0, sizeof(st));
	int rc = upager__space_stats_add(&up->home, (uintptr_t)addr, &st);
	if (rc)
		return rc;
	if (!addr) {
		/* The whole runtime: adopted spaces too. */
		pthread_rwlock_rdlock(&up->spaces_lock);
		for (struct upager__space *sp = up->spaces; sp; sp = sp->next)
			upager__space_stats_add(sp, 0, &st);
		pthread_rwlock_unlock(&up->spaces_lock);
		rc = upager__client_stats_add(up, &st); /* daemon mode */
		if (rc)
			return rc;
	}
	*out = st;
	return 0;
}
