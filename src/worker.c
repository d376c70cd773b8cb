/*
 * worker.c - worker threads: fetch units from the store and install them.
 *
 * Each worker owns one io_uring instance and a fixed set of read slots
 * (at most queue_depth) whose buffers come from a fixed arena, so
 * a worker's memory is bounded whatever the load. It takes demand fetches
 * first, then prefetch batches, keeps as many reads in flight as it has
 * slots, and installs each unit as its read completes. A whole 2 MiB
 * unit is read into a huge page of its own and moved into the region
 * rather than copied (readbuf.c).
 *
 * Sleeping: a worker blocks only inside io_uring_submit_and_wait(), with a
 * read on its eventfd always armed in the ring. Before blocking it sets
 * `sleeping` and re-checks the queues; the manager, after queueing work,
 * writes the eventfd of workers that had set it. With sequentially
 * consistent atomics on both sides no wake-up is lost.
 *
 * Custom stores are read synchronously by the worker (their callbacks may
 * block); file stores go through the ring. Large reads of a buffered
 * file store are installed from the page cache through the store's
 * mapping of the file (mapped_src()). A custom store with a map
 * callback is read only where map declines: elsewhere its units are
 * installed straight from the memory map returns (see run_mapped()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define HUGE_BYTES (2u << 20)  /* a PMD-mapped transparent huge page */
#define RUN_BYTES (1u << 20)   /* largest prefetch read */
#define MANAGER_INFLIGHT 2u    /* demand reads the manager does itself */
#define MANAGER_SYNC_MAX (64u << 10) /* in-memory reads it does itself */
#define MAPPED_MIN (1u << 20)  /* smallest read installed from a file map */
#define ALIGN 4096u
#define EFD_TAG 0ull
#define POLL_TAG UINT64_MAX /* the manager's poll on the epoll descriptor */

struct slot {
	struct upager__req job;
	char *buf;      /* in the worker's arena */
	size_t pages;   /* arena pages it holds */
	uint64_t foff;  /* file offset of buf[0] */
	size_t skip;    /* unit data starts at buf + skip */
	size_t want;    /* store bytes in the unit */
	size_t io_len;  /* bytes to read from foff */
	size_t got;
	const char *src; /* mapped read: the bytes in the store's map */
	int fd;         /* read from: the store's descriptor, or its O_DIRECT
			   one (upager__store_read_direct()) */
	int next_free;
};

struct upager__worker {
	upager_t *up;
	pthread_t thr;
	bool started;
	bool ring_ok;
	struct io_uring ring;
	int efd;
	uint64_t efd_val;
	bool efd_armed;
	atomic_int sleeping;
	bool manager;      /* the manager's worker (see manager.c) */
	bool poll_armed;
	struct slot *slots;
	unsigned nslots;
	int free_head;
	unsigned inflight;
	/* Read buffers (readbuf.c): bounded whatever the mix of unit
	 * sizes; a read of one whole 2 MiB unit may go to a huge page that
	 * is then moved into the region, not copied. */
	struct upager__rbufs rb;
	struct upager__req held; /* demand fetch taken, waiting for a slot */
	bool has_held;
	struct upager__pf cur; /* prefetch batch being worked through */
	bool cur_valid;
};

static size_t round_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static bool all_zero(const char *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

size_t upager__run_want(const struct upager__region *r, size_t u, size_t n)
{
	uint64_t start = (uint64_t)u << r->page_shift;
	if (start >= r->data_end)
		return 0;
	uint64_t len = (uint64_t)n << r->page_shift;
	uint64_t avail = r->data_end - start;
	return (size_t)(avail < len ? avail : len);
}

static size_t job_units(const struct upager__req *j)
{
	return j->count ? j->count : 1;
}

/* ---- finishing a fetch ---- */

/* The read of job j failed. */
static void fail_job(const struct upager__req *j)
{
	struct upager__region *r = j->r;
	size_t u = j->unit;
	CNT_INC(&r->cnt, read_errors, 1);
	if (!j->demand) {
		/* A failed prefetch costs nothing: the fault will try
		 * again and report the error then. */
		for (size_t i = 0; i < job_units(j); i++)
			unit_cas(r->state, u + i, UNIT_FETCHING, UNIT_EMPTY);
		return;
	}
	int prc = r->sp->caps.poison ?
		  upager__install(r, u, 1, NULL, FILL_POISON, false) : -1;
	if (prc == -EAGAIN && upager__on_manager) {
		/* A worker will read (and fail) again, and poison then. */
		atomic_fetch_add(&r->refs, 1);
		upager__manager_defer(r->up, j);
		return;
	}
	if (prc == 0) {
		if (unit_cas(r->state, u, UNIT_FETCHING, UNIT_PRESENT))
			resident_add(r, 1);
		upager__space_wake(r->sp, region_base(r) +
				   (u << r->page_shift), r->page_size);
		return;
	}
	/* No UFFDIO_POISON (kernel < 6.6): signal the faulting thread,
	 * then release the unit's waiters so that they fault again and
	 * meet the error themselves. */
	if (j->tid && r->sp->local)
		syscall(SYS_tgkill, getpid(), (pid_t)j->tid, SIGBUS);
	unit_cas(r->state, u, UNIT_FETCHING, UNIT_EMPTY);
	upager__space_wake(r->sp, region_base(r) + (u << r->page_shift),
			   r->page_size);
}

static void count_install(struct upager__region *r,
			  const struct upager__req *j, bool zero)
{
	CNT_INC(&r->cnt, installed, 1);
	if (zero)
		CNT_INC(&r->cnt, zero, 1);
	if (!j->demand)
		CNT_INC(&r->cnt, prefetched, 1);
	resident_add(r, 1);
}

/* Units [u, u+n) are installed (ok) or could not be: their state and
 * counters. A demand unit was counted before its install. */
static void settle_units(const struct upager__req *j, size_t u, size_t n,
			 bool zero, bool ok)
{
	struct upager__region *r = j->r;
	for (size_t i = u; i < u + n; i++) {
		if (!ok) {
			/* The range is gone or going: nobody can be
			 * waiting on it any more. */
			unit_cas(r->state, i, UNIT_FETCHING, UNIT_EMPTY);
			continue;
		}
		count_install(r, j, zero);
		uint8_t set = installs_dirty(j) ? UNIT_DIRTY : 0;
		uint8_t prev;
		if (unit_update_prev(r->state, i, UNIT_FETCHING, UNIT_PRESENT,
				     set, 0, &prev)) {
			/* A write fault may have marked it while the
			 * install was waking waiters. */
			if (set || (prev & UNIT_DIRTY))
				atomic_fetch_add(&r->dirty, 1);
		} else {
			/* Dropped by the application meanwhile. */
			resident_add(r, -1);
		}
	}
}

void upager__settle(const struct upager__req *j, size_t u, size_t n, bool ok)
{
	settle_units(j, u, n, false, ok);
}

/* Whether unit i of a job's data (want store bytes, then zeros) is all
 * zeros. */
static bool unit_zero(const char *data, size_t want, size_t i, size_t ps)
{
	size_t have = want > i * ps ? want - i * ps : 0;
	return all_zero(data + i * ps, have < ps ? have : ps);
}

/* The start of the map of store s's file (map or map_one) that holds p,
 * or NULL. */
static const char *map_base(const upager_store_t *s, const char *p)
{
	if (s->map && p >= s->map && p < s->map + s->map_len)
		return s->map;
	if (s->map_one && p >= s->map_one && p < s->map_one + s->map_len)
		return s->map_one;
	return NULL;
}

/* Unmaps [p, p+len) of store s's file map, widened to the 2 MiB
 * boundaries around it (within the map): the kernel maps the page
 * cache's huge folios whole, so a narrower unmap would leave the rest of
 * a folio mapped, and counted in the process's RSS, for good. A
 * neighbouring read in flight that loses its mapping this way is not
 * harmed: UFFDIO_COPY faults its source in again. Nothing for p outside
 * the maps. */
static void unmap_source(const upager_store_t *s, const char *p, size_t len)
{
	const char *base = map_base(s, p);
	if (!base)
		return;
	size_t lo = (size_t)(p - base) & ~(size_t)(HUGE_BYTES - 1);
	size_t hi = round_up((size_t)(p - base) + len, HUGE_BYTES);
	if (hi > s->map_len)
		hi = (size_t)s->map_len;
	madvise((void *)(base + lo), hi - lo, MADV_DONTNEED);
}

/* After an install: a huge slot moved is empty, but where the kernel
 * declined (or for zeros) its page goes now, so that the slots hold
 * memory only while a read is in flight. A mapped read's range of the
 * store's file map is unmapped (the page cache keeps it), and before
 * the job's region reference goes, which may release the store and its
 * map. */
static void drop_source(const struct upager__worker *w,
			const struct upager__req *j, const char *data)
{
	const upager_store_t *s = j->r->store;
	if (upager__rbufs_in_huge(&w->rb, data))
		madvise((void *)data, HUGE_BYTES, MADV_DONTNEED);
	else if (data)
		unmap_source(s, data, job_units(j) << j->r->page_shift);
}

/* Installs the units of job j. data: the units' bytes (store bytes, then
 * zeros); want: how many came from the store. Consecutive units with data
 * go in with one ioctl; all-zero units as zero pages. */
static void finish(struct upager__worker *w, const struct upager__req *j,
		   const char *data, size_t want)
{
	struct upager__region *r = j->r;
	size_t n = job_units(j), ps = r->page_size;
	if (atomic_load(&r->dead))
		goto out;
	if (r->budget_units || w->up->budget_units_4k) {
		/* The manager only kicks the write-back thread, and only at
		 * the high watermark (a kick below it is a wake-up on every
		 * fault's path for nothing); waiting for it could mean
		 * waiting for itself. */
		if (w->manager)
			upager__wb_kick_over(w->up, r);
		else
			upager__wb_wait_room(w->up, r);
	}
	bool wp = r->wp && !installs_dirty(j);
	bool next_zero = false; /* unit i is known to be all zeros */
	for (size_t i = 0; i < n;) {
		bool zero = next_zero || unit_zero(data, want, i, ps);
		next_zero = false;
		size_t k = 1;
		while (!zero && i + k < n) {
			if (unit_zero(data, want, i + k, ps)) {
				next_zero = true; /* scanned once, not again */
				break;
			}
			k++;
		}
		/* Installed without waking; counted; then woken: a thread
		 * that has seen its data sees it counted, and whoever waits
		 * for a count finds the pages there. */
		enum upager__fill how = zero ? FILL_ZERO :
					upager__rbufs_in_huge(&w->rb, data) ? FILL_MOVE : FILL_COPY;
		int rc = upager__install(r, j->unit + i, k,
					 zero ? NULL : data + i * ps, how, wp);
		if (rc == -EAGAIN && w->manager) {
			/* An event is unread and the manager is the one to
			 * read it: a worker installs this job instead. */
			drop_source(w, j, data);
			upager__manager_defer(w->up, j);
			return;
		}
		settle_units(j, j->unit + i, k, zero, rc == 0);
		if (rc == 0 && j->demand)
			upager__hist_add(&r->cnt, upager__now_ns() - j->t0);
		upager__space_wake(r->sp, region_base(r) +
				   ((j->unit + i) << r->page_shift), k * ps);
		i += k;
	}
out:
	drop_source(w, j, data);
	upager__region_put(r);
}

/* ---- starting a fetch ---- */

/* Zero-copy: a custom store whose map callback hands out its bytes. A run
 * the store covers to its last byte is installed straight from them by
 * finish(): one UFFDIO_COPY per run of data units, the only copy. A run
 * that ends inside the store's last unit needs zeros after the data, so
 * it is copied once into the arena (no read call; at most one run per
 * region). Returns false, having done nothing, when map declines: the
 * caller reads instead.
 *
 * finish() still looks for all-zero units in the mapped bytes: the scan
 * stops at the first non-zero byte, so a data unit costs next to nothing
 * (a profile of the warm benchmark with 2 MiB units put it under 0.01%
 * of the samples, against 12% for the kernel's copy), while a zero unit
 * becomes the shared zero page: no memory, no copy. */
static bool run_mapped(struct upager__worker *w, const struct upager__req *j,
		       size_t want)
{
	struct upager__region *r = j->r;
	upager_store_t *s = r->store;
	size_t len = job_units(j) << r->page_shift, np = len / 4096;
	const char *src = s->ops.map(s->ctx, want,
				     r->offset + ((uint64_t)j->unit << r->page_shift));
	if (!src)
		return false;
	char *buf = NULL;
	if (want < len) {
		buf = upager__rbufs_arena_alloc(&w->rb, np, false); /* fits: can_start said so */
		if (!buf)
			return false;
		memcpy(buf, src, want);
		memset(buf + want, 0, len - want);
		src = buf;
	}
	CNT_INC(&r->cnt, bytes_fetched, want);
	finish(w, j, src, want);
	if (buf)
		upager__rbufs_arena_free(&w->rb, buf, np);
	return true;
}

/* Custom stores are read synchronously, into arena pages held only for
 * the call. The caller checked that they fit. */
static void run_custom(struct upager__worker *w, const struct upager__req *j,
		       size_t want)
{
	struct upager__region *r = j->r;
	upager_store_t *s = r->store;
	size_t len = job_units(j) << r->page_shift, np = len / 4096;
	if (s->ops.map && run_mapped(w, j, want))
		return;
	char *buf = upager__rbufs_alloc(&w->rb, r, job_units(j), 0, np, false);
	int rc = buf ? 0 : -ENOMEM;
	if (rc == 0 && want)
		rc = s->ops.read(s->ctx, buf, want,
				 r->offset + ((uint64_t)j->unit << r->page_shift));
	if (rc != 0) {
		fail_job(j);
		upager__region_put(r);
	} else {
		CNT_INC(&r->cnt, bytes_fetched, want);
		memset(buf + want, 0, len - want);
		finish(w, j, buf, want);
	}
	if (buf)
		upager__rbufs_free(&w->rb, buf, np);
}

static struct io_uring_sqe *get_sqe(struct upager__worker *w)
{
	/* The ring has twice as many entries as slots plus the eventfd
	 * read can use, so this loops at most once. */
	struct io_uring_sqe *sqe;
	while (!(sqe = io_uring_get_sqe(&w->ring)))
		io_uring_submit(&w->ring);
	return sqe;
}

/* Mapped reads. A read of a buffered file store of at least MAPPED_MIN
 * bytes, all in the file, goes into the region straight from the page
 * cache: the ring maps the range into the store's mapping of the file
 * (MADV_POPULATE_READ, run by the ring's own threads, which start the
 * I/O, in 2 MiB folios: see store.c map_file(), and wait for it), and
 * finish() copies from that mapping: one copy, where a
 * read into the arena and its install make two. After the install the
 * range is unmapped again: the page cache keeps the data, the process's
 * RSS does not. The slot still holds arena pages for the read, so a
 * populate the kernel declines falls back to reading into them, and the
 * worker's reads in flight stay what its arena allows. Returns where the
 * range is mapped, or NULL to read as usual. */
static const char *mapped_src(const struct upager__region *r, uint64_t off,
			      size_t len, size_t want, bool stream)
{
	const upager_store_t *s = r->store;
	const char *map = stream ? s->map : s->map_one;
	if (!map || !upager__store_mapped(s) || len < MAPPED_MIN || want != len || (off & (ALIGN - 1)) ||
	    off > s->map_len || len > s->map_len - off)
		return NULL;
	return map + off;
}

/* mapped_src() for a run of n units of r from unit u; stream: a stream's
 * readahead, whose misses may read the next folio too. Any other read
 * (a demand fetch, UPAGER_ADV_WILLNEED) may well be alone: its miss
 * reads no folio past its own (store.c map_file()). */
static const char *run_mapped_src(const struct upager__region *r, size_t u,
				  size_t n, bool stream)
{
	return mapped_src(r, r->offset + ((uint64_t)u << r->page_shift),
			  n << r->page_shift, upager__run_want(r, u, n),
			  stream);
}

static void submit_populate(struct upager__worker *w, struct slot *sl)
{
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_madvise(sqe, (void *)sl->src, (off_t)sl->want,
			      MADV_POPULATE_READ);
	io_uring_sqe_set_data64(sqe, (uint64_t)(sl - w->slots) + 1);
}

static void submit_read(struct upager__worker *w, struct slot *sl)
{
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_read(sqe, sl->fd, sl->buf + sl->got,
			   (unsigned)(sl->io_len - sl->got), sl->foff + sl->got);
	io_uring_sqe_set_data64(sqe, (uint64_t)(sl - w->slots) + 1);
}

/* The arena pages a read of units [u, u+n) of r takes: the units, and
 * with O_DIRECT from a store offset inside a page, the bytes before it
 * in that page (*skip, when asked for). */
static size_t read_pages(const struct upager__region *r, size_t u, size_t n,
			 size_t *skip)
{
	size_t sk = 0;
	if (r->store->kind != UPAGER__STORE_CUSTOM &&
	    (r->store->flags & UPAGER_STORE_DIRECT))
		sk = (size_t)((r->offset + ((uint64_t)u << r->page_shift)) &
			      (ALIGN - 1));
	if (skip)
		*skip = sk;
	return round_up(sk + (n << r->page_shift), ALIGN) / 4096;
}

/* Whether start() can take n units of r from u now: a read needs a free
 * slot and room in the worker's byte budget (one read is always
 * allowed). */
static bool can_start(struct upager__worker *w, const struct upager__region *r,
		      size_t u, size_t n)
{
	if (atomic_load(&r->dead) || upager__run_want(r, u, n) == 0)
		return true;
	size_t skip;
	size_t np = read_pages(r, u, n, &skip);
	if (r->store->kind == UPAGER__STORE_CUSTOM)
		return upager__rbufs_fits(&w->rb, r, n, skip, np);
	return w->free_head >= 0 && upager__rbufs_fits(&w->rb, r, n, skip, np);
}

/* Starts the fetch j; the job's region reference passes to the fetch.
 * Returns false, having started nothing, when can_start() is false. */
static bool start(struct upager__worker *w, const struct upager__req *j)
{
	struct upager__region *r = j->r;
	size_t u = j->unit, n = job_units(j);
	if (atomic_load(&r->dead)) {
		upager__region_put(r);
		return true;
	}
	size_t want = upager__run_want(r, u, n);
	/* Dropped by the application in a ZERO_REMOVED region: zeros, no
	 * read (demand jobs are single units). */
	if (n == 1 && (unit_byte(r->state, u) & UNIT_ZEROED))
		want = 0;
	if (want == 0) {
		finish(w, j, NULL, 0);
		return true;
	}
	if (r->store->kind == UPAGER__STORE_CUSTOM) {
		run_custom(w, j, want);
		return true;
	}
	if (!can_start(w, r, u, n))
		return false;
	struct slot *sl = &w->slots[w->free_head];
	uint64_t off = r->offset + ((uint64_t)u << r->page_shift);
	sl->pages = read_pages(r, u, n, &sl->skip);
	sl->foff = off - sl->skip;
	/* O_DIRECT reads whole pages: at most sl->pages of them. */
	sl->io_len = r->store->flags & UPAGER_STORE_DIRECT ?
		     round_up(sl->skip + want, ALIGN) : want;
	sl->src = mapped_src(r, off, n << r->page_shift, want, j->stream);
	/* A miss that is no stream's: around the page cache where none of
	 * it is cached (upager__store_read_direct() takes whole pages only,
	 * so the buffer is as for a buffered read). */
	sl->fd = r->store->fd;
	if (!sl->src && !j->stream &&
	    upager__store_read_direct(r->store, off, want))
		sl->fd = r->store->dwfd;
	/* Fits: can_start said so. */
	sl->buf = upager__rbufs_alloc(&w->rb, r, n, sl->skip, sl->pages, sl->src != NULL);
	w->free_head = sl->next_free;
	sl->job = *j;
	sl->want = want;
	sl->got = 0;
	w->inflight++;
	if (sl->src) {
		submit_populate(w, sl);
	} else {
		submit_read(w, sl);
	}
	return true;
}

static void release_slot(struct upager__worker *w, struct slot *sl)
{
	w->inflight--;
	upager__rbufs_free(&w->rb, sl->buf, sl->pages);
	sl->job.r = NULL;
	sl->next_free = w->free_head;
	w->free_head = (int)(sl - w->slots);
}

/* A mapped read's populate completed (see mapped_src()). */
static void on_populate(struct upager__worker *w, struct slot *sl, int res)
{
	struct upager__req j = sl->job;
	if (res == -EAGAIN || res == -EINTR) {
		submit_populate(w, sl);
		return;
	}
	if (res != 0) {
		/* EINVAL: this kernel cannot populate through the ring;
		 * anything else (EFAULT: the file shrank) is the read's
		 * to report. Read into the slot's buffer instead. */
		if (res == -EINVAL)
			atomic_store(&j.r->store->map_off, true);
		/* What the populate mapped before it stopped. */
		unmap_source(j.r->store, sl->src, sl->want);
		sl->src = NULL;
		submit_read(w, sl);
		return;
	}
	const char *src = sl->src;
	size_t len = sl->want;
	CNT_INC(&j.r->cnt, bytes_fetched, len);
	release_slot(w, sl);
	finish(w, &j, src, len); /* unmaps src */
}

static void on_read(struct upager__worker *w, struct slot *sl, int res)
{
	struct upager__req j = sl->job;
	struct upager__region *r = j.r;
	if (sl->src) {
		on_populate(w, sl, res);
		return;
	}
	if (res == -EINVAL && sl->fd != r->store->fd) {
		/* The kernel declines O_DIRECT here: buffered, from now on
		 * (the write-back's too). */
		atomic_store(&r->store->dw_off, true);
		sl->fd = r->store->fd;
		res = -EAGAIN;
	}
	if (res == -EAGAIN || res == -EINTR) {
		submit_read(w, sl);
		return;
	}
	if (res > 0) {
		sl->got += (size_t)res;
		bool direct = r->store->flags & UPAGER_STORE_DIRECT;
		bool eof = direct && (res % ALIGN) != 0;
		if (sl->got < sl->io_len && !eof && !atomic_load(&r->dead)) {
			submit_read(w, sl); /* short read: fetch the rest */
			return;
		}
	}
	if (res < 0) {
		release_slot(w, sl);
		fail_job(&j);
		upager__region_put(r);
		return;
	}
	/* res == 0 (end of file came early) or complete. */
	size_t have = sl->got > sl->skip ? sl->got - sl->skip : 0;
	if (have > sl->want)
		have = sl->want;
	char *data = sl->buf + sl->skip;
	memset(data + have, 0, (job_units(&j) << r->page_shift) - have);
	CNT_INC(&r->cnt, bytes_fetched, have);
	/* Install before the slot is reused: data lives in its buffer, and
	 * nothing starts on this worker until finish() returns. */
	release_slot(w, sl);
	finish(w, &j, data, have);
}

/* ---- taking work ---- */

static bool take_demand(struct upager__worker *w, struct upager__req *req)
{
	upager_t *up = w->up;
	if (atomic_load_explicit(&up->demand_count, memory_order_relaxed) == 0)
		return false;
	pthread_mutex_lock(&up->qlock);
	bool ok = upager__ring_pop(&up->demand, req);
	if (ok) {
		atomic_fetch_sub(&up->demand_count, 1);
		pthread_cond_broadcast(&up->space_cv);
	}
	pthread_mutex_unlock(&up->qlock);
	return ok;
}

static bool take_prefetch(struct upager__worker *w)
{
	upager_t *up = w->up;
	if (atomic_load_explicit(&up->prefetch_count, memory_order_relaxed) == 0)
		return false;
	pthread_mutex_lock(&up->qlock);
	bool ok = upager__ring_pop(&up->prefetch, &w->cur);
	if (ok) {
		atomic_fetch_sub(&up->prefetch_count, 1);
		pthread_cond_broadcast(&up->space_cv);
	}
	pthread_mutex_unlock(&up->qlock);
	w->cur_valid = ok;
	return ok;
}

static bool has_slot(struct upager__worker *w)
{
	/* The smallest read: one 4 KiB unit and its alignment page. */
	return w->free_head >= 0 && upager__rbufs_arena_fits(&w->rb, 2);
}

/* The most units a prefetch run from unit u reads with one request:
 * RUN_BYTES, at least one unit. From a mapped store (mapped_src()) the
 * run ends at the next 2 MiB boundary of the file instead, so that a run
 * is one of the page cache's huge folios, mapped and unmapped whole. */
static size_t run_units(const struct upager__region *r, size_t u)
{
	size_t n = RUN_BYTES >> r->page_shift;
	/* Only where mapped_src() can take the run: a store offset on a
	 * page boundary. */
	if (upager__store_mapped(r->store) && !(r->offset & (ALIGN - 1))) {
		uint64_t off = r->offset + ((uint64_t)u << r->page_shift);
		n = (size_t)((HUGE_BYTES - (off & (HUGE_BYTES - 1))) >>
			     r->page_shift);
	}
	return n ? n : 1;
}

/* Starts as much work as slots allow. Demand first; a demand fetch taken
 * but not startable waits in w->held, ahead of anything else. Returns
 * true when it stopped for want of a slot (a completion will free one),
 * false when it ran out of work. */
static bool fill(struct upager__worker *w)
{
	while (has_slot(w)) {
		if (!w->has_held && take_demand(w, &w->held))
			w->has_held = true;
		if (w->has_held) {
			if (!start(w, &w->held))
				return true;
			w->has_held = false;
			continue;
		}
		if (!w->cur_valid && !take_prefetch(w))
			return false;
		struct upager__pf *pf = &w->cur;
		struct upager__region *r = pf->r;
		while (pf->count) {
			/* Consecutive units are read with one request and
			 * installed with one ioctl: a run of up to RUN_BYTES
			 * (at least one unit). */
			size_t maxn = run_units(r, pf->first);
			if (maxn > pf->count)
				maxn = pf->count;
			/* A run that does not fit now is halved until it
			 * does, except one read from the page cache: halves
			 * of it would be read into buffers, and copied twice,
			 * while it waits only for a mapped read to finish. */
			while (maxn > 1 && !can_start(w, r, pf->first, maxn) &&
			       !run_mapped_src(r, pf->first, maxn,
					       pf->stream))
				maxn /= 2;
			if (!can_start(w, r, pf->first, maxn))
				return true; /* the batch waits for a slot */
			struct upager__req j = { .r = r, .unit = pf->first,
						 .write = pf->write,
						 .stream = pf->stream };
			/* A fault may have promoted a unit meanwhile, or a
			 * REMOVE dropped it: then it is not ours, and the
			 * run stops before it. */
			while (j.count < maxn && !atomic_load(&r->dead)) {
				size_t v = j.unit + j.count;
				/* A unit that reads as zeros is a run of
				 * its own (no read). */
				bool zeroed = unit_byte(r->state, v) & UNIT_ZEROED;
				if (zeroed && j.count)
					break;
				if (!unit_cas(r->state, v, UNIT_QUEUED,
					      UNIT_FETCHING))
					break;
				j.count++;
				if (zeroed)
					break;
			}
			size_t used = j.count ? j.count : 1;
			pf->first += used;
			pf->count -= (uint32_t)used;
			if (j.count == 0)
				continue;
			atomic_fetch_add(&r->refs, 1);
			start(w, &j);
			if (!has_slot(w))
				break;
		}
		if (pf->count == 0) {
			w->cur_valid = false;
			upager__region_put(r);
		}
	}
	return true;
}

static bool work_waiting(struct upager__worker *w)
{
	upager_t *up = w->up;
	return atomic_load(&up->demand_count) > 0 ||
	       atomic_load(&up->prefetch_count) > 0;
}

static void arm_eventfd(struct upager__worker *w)
{
	if (w->efd_armed)
		return;
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_read(sqe, w->efd, &w->efd_val, sizeof(w->efd_val), 0);
	io_uring_sqe_set_data64(sqe, EFD_TAG);
	w->efd_armed = true;
}

/* Handles every completion; returns true if the manager's poll fired. */
static bool reap(struct upager__worker *w)
{
	struct io_uring_cqe *cqe;
	bool polled = false;
	while (io_uring_peek_cqe(&w->ring, &cqe) == 0) {
		uint64_t tag = io_uring_cqe_get_data64(cqe);
		int res = cqe->res;
		io_uring_cqe_seen(&w->ring, cqe);
		if (tag == EFD_TAG) {
			w->efd_armed = false;
			continue;
		}
		if (tag == POLL_TAG) {
			w->poll_armed = false;
			polled = true;
			continue;
		}
		on_read(w, &w->slots[tag - 1], res);
	}
	return polled;
}

bool upager__worker_start_local(struct upager__worker *w,
				const struct upager__req *j)
{
	struct upager__region *r = j->r;
	/* Custom stores are read synchronously: never on the manager, whose
	 * job is to keep reading faults, unless the store is in memory and
	 * the read is short (a small unit's decompression). */
	if (r->store->kind != UPAGER__STORE_FILE &&
	    upager__run_want(r, j->unit, job_units(j)) != 0 &&
	    (!r->store->in_memory ||
	     (job_units(j) << r->page_shift) > MANAGER_SYNC_MAX))
		return false;
	/* Nor for a region at its budget: an install there waits for the
	 * write-back thread to make room. Below it, the manager only kicks
	 * the write-back thread (see finish()). */
	if ((r->budget_units || w->up->budget_units_4k) &&
	    !upager__wb_room(w->up, r))
		return false;
	/* A few reads in flight keep a lone faulting thread's latency low;
	 * beyond that the workers take the rest, so that many faulting
	 * threads are served by every CPU, not by the manager alone. */
	if (w->inflight >= MANAGER_INFLIGHT)
		return false;
	if (!has_slot(w) || !can_start(w, r, j->unit, job_units(j)))
		return false;
	return start(w, j);
}

/* The manager's loop: wait for a fault message (a poll on the epoll
 * descriptor in the ring) or a read completion, whichever comes first. */
static void manager_loop(struct upager__worker *w)
{
	upager_t *up = w->up;
	for (;;) {
		bool stopping = atomic_load(&up->stopping);
		if (stopping && w->inflight == 0)
			break;
		/* Demand the shared queue had no room for: no new messages
		 * until it is handed over; retry every millisecond. */
		bool backlog = !stopping && !upager__manager_flush(up);
		arm_eventfd(w);
		if (!stopping && !backlog && !w->poll_armed) {
			struct io_uring_sqe *sqe = get_sqe(w);
			io_uring_prep_poll_add(sqe, up->epfd, POLLIN);
			io_uring_sqe_set_data64(sqe, POLL_TAG);
			w->poll_armed = true;
		}
		int rc;
		if (backlog) {
			struct __kernel_timespec ts = { 0, 1000000 };
			struct io_uring_cqe *cqe;
			rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1,
							      &ts, NULL);
			if (rc == -ETIME)
				rc = 0;
		} else {
			rc = io_uring_submit_and_wait(&w->ring, 1);
		}
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			break; /* the ring is unusable; should not happen */
		if (reap(w) && !atomic_load(&up->stopping))
			upager__manager_serve(up);
	}
}

void *upager__worker_run(struct upager__worker *w)
{
	upager_t *up = w->up;
	if (w->manager) {
		manager_loop(w);
		return NULL;
	}
	for (;;) {
		bool stopping = atomic_load(&up->stopping);
		bool blocked = !stopping && fill(w);
		if (stopping && w->inflight == 0)
			break;
		arm_eventfd(w);
		/* Out of work with slots free: ask to be woken for more. */
		bool can_take = !blocked && !stopping;
		if (can_take)
			atomic_store(&w->sleeping, 1);
		if (can_take && work_waiting(w)) {
			atomic_store(&w->sleeping, 0);
			continue;
		}
		int rc = io_uring_submit_and_wait(&w->ring, 1);
		atomic_store(&w->sleeping, 0);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			break; /* the ring is unusable; should not happen */
		reap(w);
	}
	return NULL;
}

static void *worker_main(void *arg)
{
	return upager__worker_run(arg);
}

void upager__workers_kick(upager_t *up, unsigned n)
{
	for (unsigned i = 0; i < up->nworkers && n > 0; i++) {
		struct upager__worker *w = &up->workers[i];
		if (atomic_exchange(&w->sleeping, 0) == 1) {
			uint64_t one = 1;
			ssize_t rc = write(w->efd, &one, sizeof(one));
			(void)rc; /* cannot fail short of a counter overflow */
			n--;
		}
	}
}

static void worker_free(struct upager__worker *w)
{
	if (w->ring_ok)
		io_uring_queue_exit(&w->ring);
	if (w->efd >= 0)
		close(w->efd);
	free(w->slots);
	upager__rbufs_destroy(&w->rb);
}

static int worker_init(upager_t *up, struct upager__worker *w)
{
	w->up = up;
	w->efd = eventfd(0, EFD_CLOEXEC);
	if (w->efd < 0)
		return -errno;
	w->nslots = up->queue_depth;
	w->slots = calloc(w->nslots, sizeof(*w->slots));
	if (!w->slots)
		return -ENOMEM;
	int rc = upager__rbufs_init(&w->rb);
	if (rc)
		return rc;
	for (unsigned i = 0; i < w->nslots; i++)
		w->slots[i].next_free = i + 1 < w->nslots ? (int)i + 1 : -1;
	w->free_head = 0;
	/* Slots plus the eventfd read, with room to spare. */
	rc = io_uring_queue_init(up->queue_depth * 2, &w->ring, 0);
	if (rc < 0)
		return rc;
	w->ring_ok = true;
	return 0;
}

int upager__worker_new_manager(upager_t *up, struct upager__worker **out)
{
	struct upager__worker *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->efd = -1;
	w->manager = true;
	int rc = worker_init(up, w);
	if (rc) {
		worker_free(w);
		free(w);
		return rc;
	}
	*out = w;
	return 0;
}

void upager__worker_free_manager(struct upager__worker *w)
{
	if (!w)
		return;
	worker_free(w);
	free(w);
}

int upager__workers_start(upager_t *up)
{
	/* The manager's worker too: it runs on the manager thread, which
	 * the caller starts once this returns. */
	int rc = upager__manager_init(up);
	if (rc)
		return rc;
	up->workers = calloc(up->nworkers, sizeof(*up->workers));
	if (!up->workers) {
		upager__manager_fini(up);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < up->nworkers; i++)
		up->workers[i].efd = -1;
	for (unsigned i = 0; i < up->nworkers && rc == 0; i++)
		rc = worker_init(up, &up->workers[i]);
	for (unsigned i = 0; i < up->nworkers && rc == 0; i++) {
		rc = -pthread_create(&up->workers[i].thr, NULL, worker_main,
				     &up->workers[i]);
		up->workers[i].started = rc == 0;
		if (rc == 0)
			pthread_setname_np(up->workers[i].thr, "upager-io");
	}
	if (rc)
		upager__workers_stop(up);
	return rc;
}

void upager__workers_stop(upager_t *up)
{
	if (!up->workers)
		return;
	atomic_store(&up->stopping, true);
	pthread_mutex_lock(&up->qlock);
	pthread_cond_broadcast(&up->space_cv);
	pthread_mutex_unlock(&up->qlock);
	for (unsigned i = 0; i < up->nworkers; i++) {
		struct upager__worker *w = &up->workers[i];
		if (w->efd >= 0) {
			uint64_t one = 1;
			ssize_t rc = write(w->efd, &one, sizeof(one));
			(void)rc;
		}
	}
	for (unsigned i = 0; i < up->nworkers; i++) {
		struct upager__worker *w = &up->workers[i];
		if (w->started)
			pthread_join(w->thr, NULL);
		worker_free(w);
	}
	free(up->workers);
	up->workers = NULL;
	upager__manager_fini(up);
}
