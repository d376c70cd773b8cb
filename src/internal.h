/*
 * internal.h - types shared by upager's subsystems. Not installed.
 *
 * Naming: public symbols are upager_*, internal non-static ones upager__*.
 * Ownership in one line each (docs/design.md has the full rules):
 *  - runtime.c owns upager_t, the region table and the public entry points.
 *  - manager.c owns the userfaultfd read loop (one thread).
 *  - worker.c owns the worker threads and their io_uring instances.
 *  - queue.c owns the two bounded queues between them.
 *  - uffd.c is the only file that issues userfaultfd ioctls.
 */
#ifndef UPAGER_INTERNAL_H
#define UPAGER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "upager.h"

#define UPAGER__HIDDEN __attribute__((visibility("hidden")))

/* ---- stores ---- */

enum upager__store_kind {
	UPAGER__STORE_FILE = 1,
	UPAGER__STORE_CUSTOM = 2,
};

struct upager_store {
	atomic_uint refs;
	enum upager__store_kind kind;
	int fd;         /* file store: reads */
	int wfd;        /* file store: writes (-1: read-only) */
	/* Writable file store: O_DIRECT descriptor for write-back extents
	 * on 4 KiB boundaries (wb_write.c) and for reads of uncached ranges
	 * (upager__store_read_direct()), -1 if the file cannot be opened
	 * so; dw_off is set once the kernel declines such a read or write. */
	int dwfd;
	atomic_bool dw_off;
	/* upager__store_read_direct(): page-cache lookups in a row that
	 * found nothing cached, and lookups left to skip. */
	atomic_uint dw_cold, dw_skip;
	unsigned flags; /* UPAGER_STORE_* */
	struct upager_store_ops ops; /* custom store */
	void *ctx;
	bool in_memory; /* custom store whose reads never wait (lz4 without
			   a lower store): the manager may serve it */
	/* Buffered file store: the file mapped read-only, so a worker
	 * installs large reads from the page cache itself instead of
	 * copying them into its buffer first (worker.c mapped_src()):
	 * map for a stream's readahead (a miss reads its folio and the
	 * next), map_one for other reads (a miss reads its own folio).
	 * NULL where the file could not be mapped; map_off is set once
	 * the kernel declines populating them. */
	const char *map, *map_one;
	uint64_t map_len;
	atomic_bool map_off;
};

/* Whether store s installs large reads from its maps of the file (worker.c
 * mapped_src()), whose page cache holds it in 2 MiB folios. */
#define UPAGER__FOLIO_SHIFT 21
static inline bool upager__store_mapped(const upager_store_t *s)
{
	return s->map &&
	       !atomic_load_explicit(&s->map_off, memory_order_relaxed);
}

/* Reads of an lz4 store alone with the caller's buffers (store_lz4.c),
 * for a signal handler, which must not allocate: @scratch holds
 * upager__lz4_scratch_size(s) bytes (0: s is not an lz4 store alone).
 * Returns 0, -EIO (a damaged block) or -EINVAL. */
size_t upager__lz4_scratch_size(upager_store_t *s) UPAGER__HIDDEN;
int upager__lz4_read_scratch(upager_store_t *s, void *buf, size_t len,
			     uint64_t off, void *scratch) UPAGER__HIDDEN;

/* Bytes the store holds, or UINT64_MAX when it has no end. */
int upager__store_size(upager_store_t *s, uint64_t *size) UPAGER__HIDDEN;
void upager__store_ref(upager_store_t *s) UPAGER__HIDDEN;
/* Whether file store s may use its O_DIRECT descriptor (dwfd). */
static inline bool upager__store_dio(const upager_store_t *s)
{
	return s->dwfd >= 0 &&
	       !atomic_load_explicit(&s->dw_off, memory_order_relaxed);
}
/* Whether a read of [off, off + len) of buffered file store s, no stream's
 * readahead, goes through its O_DIRECT descriptor instead: off and len on
 * 4 KiB boundaries, the range inside the file's map and none of it in the
 * page cache (which then would only hold a second copy of what the region
 * gets). Once a run of lookups found nothing cached, only one read in
 * DIO_SAMPLE looks (store.c). Async-signal-safe. */
bool upager__store_read_direct(upager_store_t *s, uint64_t off,
			       size_t len) UPAGER__HIDDEN;

/* ---- per-unit state: one byte per install unit ---- */

/* Low three bits: the state. */
enum {
	UNIT_EMPTY = 0,    /* not present: a fault must fetch it */
	UNIT_QUEUED = 1,   /* in the prefetch queue, no read started */
	UNIT_FETCHING = 2, /* a worker owns it: read or install in flight */
	UNIT_PRESENT = 3,  /* installed (or poisoned after a read error) */
	UNIT_BUSY = 4,     /* the write-back thread owns it: being written
			      back or evicted; faults on it wait */
};
#define UNIT_STATE 0x07u
/* Flags above the state. */
#define UNIT_DIRTY 0x08u   /* written since it was last written back */
#define UNIT_HOT 0x10u     /* faulted again soon after an eviction: the
			      eviction clock passes over it once */
#define UNIT_GHOST 0x20u   /* evicted and not faulted since */
#define UNIT_REMOVED 0x40u /* zapped by the application while BUSY */
#define UNIT_ZEROED 0x80u  /* dropped by the application in a region with
			      UPAGER_MAP_ZERO_REMOVED: reads as zeros */

static inline uint8_t unit_byte(const uint8_t *st, size_t u)
{
	return __atomic_load_n(&st[u], __ATOMIC_ACQUIRE);
}

static inline uint8_t unit_get(const uint8_t *st, size_t u)
{
	return unit_byte(st, u) & UNIT_STATE;
}

/* State from -> to, setting and clearing flags on the way; false (and no
 * change) if the state is not `from`. *prev (if not NULL) gets the byte
 * the change replaced. */
static inline bool unit_update_prev(uint8_t *st, size_t u, uint8_t from,
				    uint8_t to, uint8_t set, uint8_t clear,
				    uint8_t *prev)
{
	uint8_t old = unit_byte(st, u);
	for (;;) {
		if ((old & UNIT_STATE) != from)
			return false;
		uint8_t nv = (uint8_t)((((old & ~clear) | set) & ~UNIT_STATE) | to);
		if (__atomic_compare_exchange_n(&st[u], &old, nv, false,
						__ATOMIC_ACQ_REL,
						__ATOMIC_ACQUIRE)) {
			if (prev)
				*prev = old;
			return true;
		}
	}
}

static inline bool unit_update(uint8_t *st, size_t u, uint8_t from,
			       uint8_t to, uint8_t set, uint8_t clear)
{
	return unit_update_prev(st, u, from, to, set, clear, NULL);
}

static inline bool unit_cas(uint8_t *st, size_t u, uint8_t from, uint8_t to)
{
	return unit_update(st, u, from, to, 0, 0);
}

/* ---- statistics ---- */

struct upager__counters {
	atomic_uint_fast64_t faults;
	atomic_uint_fast64_t installed;
	atomic_uint_fast64_t bytes_fetched;
	atomic_uint_fast64_t prefetched;
	atomic_uint_fast64_t zero;
	atomic_uint_fast64_t read_errors;
	atomic_uint_fast64_t retries;
	atomic_uint_fast64_t evictions;
	atomic_uint_fast64_t writebacks;
	atomic_uint_fast64_t write_errors;
	atomic_uint_fast64_t hist[UPAGER_HIST_BUCKETS];
};

void upager__hist_add(struct upager__counters *c, uint64_t ns) UPAGER__HIDDEN;
void upager__counters_add_to(const struct upager__counters *c,
			     struct upager_stats *out) UPAGER__HIDDEN;
void upager__counters_fold(struct upager__counters *dst,
			   const struct upager__counters *src) UPAGER__HIDDEN;

#define CNT_INC(c, f, n) atomic_fetch_add_explicit(&(c)->f, (n), memory_order_relaxed)

/* ---- regions ---- */

struct upager__space;

struct upager__region {
	upager_t *up;
	struct upager__space *sp; /* the address space it lives in */
	uintptr_t base;       /* first byte; aligned to page_size */
	size_t span;          /* reserved bytes: nunits * page_size */
	size_t length;        /* bytes the user asked for */
	uint64_t offset;      /* store offset of byte 0 */
	uint64_t data_end;    /* region bytes [0, data_end) come from the store */
	size_t page_size;
	unsigned page_shift;
	size_t nunits;
	uint8_t *state;       /* nunits bytes, UNIT_* */
	upager_store_t *store;

	/* Table reference plus one per queue entry or in-flight fetch. */
	atomic_uint refs;
	atomic_bool dead;     /* upager_unmap has started */
	atomic_bool app_unmapped; /* the application munmapped the whole range */
	atomic_bool no_move;  /* UFFDIO_MOVE refused its installs (uffd.c) */

	/* Write-back and budget. */
	bool writeback;       /* UPAGER_MAP_WRITEBACK */
	bool zero_removed;    /* UPAGER_MAP_ZERO_REMOVED */
	bool wp;              /* registered for write-protect faults */
	bool dirty_at_install; /* units go in writable and dirty (space.c) */
	size_t budget_units;  /* max resident units, 0: none */
	atomic_size_t resident; /* units installed */
	atomic_size_t dirty;    /* units with UNIT_DIRTY */
	size_t clock_hand;    /* write-back thread only */

	/* Readahead, touched by the manager only (advice: any thread). */
	size_t ra_units;      /* window from the map options */
	atomic_int advice;    /* UPAGER_ADV_NORMAL/SEQUENTIAL/RANDOM */
	size_t last_fault;
	size_t ra_next;       /* first unit the window has not queued yet */
	size_t wp_next;       /* first unit a write window has not
				 un-protected yet (manager.c) */
	size_t inline_ra;     /* first unit inline faults' readahead has
				 not queued (any faulting thread, atomic) */

	struct upager__counters cnt;
};

/* The region's address. The manager moves it (a whole-region mremap)
 * under the table lock; threads that read it without that lock (workers,
 * the write-back thread) read it atomically. */
static inline uintptr_t region_base(const struct upager__region *r)
{
	return __atomic_load_n(&r->base, __ATOMIC_RELAXED);
}

void upager__region_put(struct upager__region *r) UPAGER__HIDDEN;

/* Table edits; caller holds sp->table_lock for writing. */
int upager__table_insert(struct upager__space *sp, struct upager__region *r) UPAGER__HIDDEN;
bool upager__table_remove(struct upager__space *sp, struct upager__region *r) UPAGER__HIDDEN;
/* Region containing addr; caller holds sp->table_lock (read). */
struct upager__region *upager__lookup(struct upager__space *sp, uintptr_t addr) UPAGER__HIDDEN;
/* Units [first, first+count) that hold region bytes [a, b). */
void upager__units_of(const struct upager__region *r, uintptr_t a, uintptr_t b,
		      size_t *first, size_t *count) UPAGER__HIDDEN;

/* ---- queues (queue.c) ---- */

/* A demand fetch: a thread is waiting on this unit. */
struct upager__req {
	struct upager__region *r;
	size_t unit;
	uint64_t t0;     /* CLOCK_MONOTONIC ns when the fault was read */
	uint32_t tid;    /* faulting thread (0 if unknown) */
	bool write;      /* a write fault: install writable and dirty */
	bool demand;     /* a thread waits (else a prefetch) */
	bool stream;     /* a prefetch of a stream's readahead (else of
			    UPAGER_ADV_WILLNEED, or a demand fetch) */
	uint32_t count;  /* units from `unit` on (prefetch runs); 0 means 1 */
};

/* Whether job j's units go in writable and dirty, rather than (in a
 * write-protected region) protected, so that the first write is seen: a
 * write fault's do, and every install in a region whose store compares at
 * write-back (dirty_at_install). The install (worker.c finish, inline.c
 * fetch) and the state it leaves (upager__settle) must agree: a unit
 * writable but clean would lose its writes at eviction. */
static inline bool installs_dirty(const struct upager__req *j)
{
	return j->r->wp && (j->write || j->r->dirty_at_install);
}

/* A prefetch batch: units [first, first+count) marked UNIT_QUEUED. */
struct upager__pf {
	struct upager__region *r;
	size_t first;
	uint32_t count;
	bool write;      /* ahead of a write stream: install writable, dirty */
	bool stream;     /* a stream's readahead (else UPAGER_ADV_WILLNEED) */
};

#define UPAGER__PF_CHUNK 256u

struct upager__ring {
	void *slots;
	size_t elem;
	uint32_t cap, head, count;
};

int upager__ring_init(struct upager__ring *q, uint32_t cap, size_t elem) UPAGER__HIDDEN;
void upager__ring_free(struct upager__ring *q) UPAGER__HIDDEN;
bool upager__ring_push(struct upager__ring *q, const void *e) UPAGER__HIDDEN;
bool upager__ring_pop(struct upager__ring *q, void *e) UPAGER__HIDDEN;

/* ---- workers (worker.c) ---- */

/* A worker's read buffers (readbuf.c): an arena of pages and, where
 * there are transparent huge pages, huge slots for whole 2 MiB units.
 * Used by the owning worker's thread alone. */
#define UPAGER__ARENA_BYTES (4u << 20)
#define UPAGER__ARENA_PAGES (UPAGER__ARENA_BYTES / 4096)
#define UPAGER__HUGE_SLOTS 4u
struct upager__rbufs {
	char *arena;
	uint64_t used[UPAGER__ARENA_PAGES / 64]; /* arena pages in use */
	char *huge;         /* UPAGER__HUGE_SLOTS huge pages, or NULL; empty
			       but while a read is in flight */
	unsigned huge_used; /* bitmap */
};
/* 0 or -ENOMEM. */
int upager__rbufs_init(struct upager__rbufs *b) UPAGER__HIDDEN;
void upager__rbufs_destroy(struct upager__rbufs *b) UPAGER__HIDDEN;
/* n contiguous arena pages (last fit if @spare); NULL if none. */
char *upager__rbufs_arena_alloc(struct upager__rbufs *b, size_t n,
				bool spare) UPAGER__HIDDEN;
void upager__rbufs_arena_free(struct upager__rbufs *b, char *buf,
			      size_t n) UPAGER__HIDDEN;
bool upager__rbufs_arena_fits(const struct upager__rbufs *b,
			      size_t n) UPAGER__HIDDEN;
/* A buffer of np pages for units [u, u+n) of r, whose data starts @skip
 * bytes in: a huge slot where the read's pages can be moved into the
 * region, else arena pages; NULL if neither. */
char *upager__rbufs_alloc(struct upager__rbufs *b,
			  const struct upager__region *r, size_t n, size_t skip,
			  size_t np, bool spare) UPAGER__HIDDEN;
void upager__rbufs_free(struct upager__rbufs *b, char *buf,
			size_t np) UPAGER__HIDDEN;
bool upager__rbufs_fits(const struct upager__rbufs *b,
			const struct upager__region *r, size_t n, size_t skip,
			size_t np) UPAGER__HIDDEN;
/* Whether p is in a huge slot (its unit is installed by a move). */
bool upager__rbufs_in_huge(const struct upager__rbufs *b,
			   const char *p) UPAGER__HIDDEN;

struct upager__worker;
int upager__workers_start(upager_t *up) UPAGER__HIDDEN;
/* The manager's own worker: a ring, slots and arena for the demand reads
 * it starts itself; it takes nothing from the shared queues. */
int upager__worker_new_manager(upager_t *up, struct upager__worker **out) UPAGER__HIDDEN;
void upager__worker_free_manager(struct upager__worker *w) UPAGER__HIDDEN;
void *upager__worker_run(struct upager__worker *w) UPAGER__HIDDEN;
/* Starts demand fetch j on w now if w can (a file store read, or a unit
 * past the store's end, with a slot free); the job's region reference
 * passes to it. False: nothing started, the caller keeps the job. */
bool upager__worker_start_local(struct upager__worker *w,
				const struct upager__req *j) UPAGER__HIDDEN;
void upager__workers_stop(upager_t *up) UPAGER__HIDDEN;
/* Wakes up to n sleeping workers after work was queued. */
void upager__workers_kick(upager_t *up, unsigned n) UPAGER__HIDDEN;
/* Bytes of store data in units [u, u+n) of r (the rest reads as zeros). */
size_t upager__run_want(const struct upager__region *r, size_t u,
			size_t n) UPAGER__HIDDEN;
/* Units [u, u+n) of job j were installed (ok) or could not be: they leave
 * FETCHING, counted. Shared by the workers and inline.c. */
void upager__settle(const struct upager__req *j, size_t u, size_t n,
		    bool ok) UPAGER__HIDDEN;

/* ---- manager (manager.c) ---- */

/* The manager thread. It is a worker of its own: it reads the
 * descriptors, starts demand reads of file stores itself, and hands
 * everything else to the workers. upager__manager_init prepares it,
 * upager__manager_start starts and names it (setting manager_started;
 * 0 or -errno), upager__manager_fini frees it (after it ended). */
int upager__manager_start(upager_t *up) UPAGER__HIDDEN;
int upager__manager_init(upager_t *up) UPAGER__HIDDEN;
void upager__manager_fini(upager_t *up) UPAGER__HIDDEN;
/* Reads what the descriptors have (epoll, no waiting) and handles it. */
void upager__manager_serve(upager_t *up) UPAGER__HIDDEN;
/* Hands pending demand fetches to the shared queue; true when none is
 * left (the manager may read more messages). */
bool upager__manager_flush(upager_t *up) UPAGER__HIDDEN;
/* From the manager thread: a demand fetch it started cannot be installed
 * without waiting (EAGAIN): hand it to the workers (it keeps its region
 * reference and its FETCHING unit). */
void upager__manager_defer(upager_t *up, const struct upager__req *j) UPAGER__HIDDEN;
/* Returns once every message the manager had read when it was called has
 * been handled. madvise/munmap/mremap return as soon as their event is
 * read, maybe before it is handled; a caller that must see the effect
 * (state reset, whole-region unmap noted) waits here first. */
void upager__manager_barrier(upager_t *up) UPAGER__HIDDEN;

/* ---- readahead (readahead.c) ---- */

/* Whether a fault on unit u continues a sequential stream, under advice
 * adv: SEQUENTIAL says so (RANDOM says no); otherwise the previous fault
 * (last) was on the unit before, or u lies inside what the stream's
 * readahead has queued, up to queued (the application caught up with
 * it, or reached the unit left out halfway). The manager passes its own
 * last_fault and ra_next, inline faults theirs. */
static inline bool upager__stream_continues(int adv, size_t last,
					    size_t queued, size_t u)
{
	if (adv == UPAGER_ADV_RANDOM || adv == UPAGER_ADV_SEQUENTIAL)
		return adv == UPAGER_ADV_SEQUENTIAL;
	return last + 1 == u || (u > last && u <= queued);
}

/* Queues units [first, first+count) of r for prefetch; units not EMPTY are
 * skipped. wait: block while the queue is full (else drop what does not
 * fit). Caller must keep r alive. Returns units queued. */
size_t upager__prefetch(upager_t *up, struct upager__region *r, size_t first,
			size_t count, bool wait) UPAGER__HIDDEN;
/* Units of r that lie wholly inside its store as it is now: only those
 * may be marked dirty before they are written (a write-back of any other
 * would make the file longer). Async-signal-safe. */
size_t upager__stored_units(const struct upager__region *r) UPAGER__HIDDEN;
/* Makes the PRESENT clean units in [a, b) of r dirty and writable: each
 * held (hold_clean), a run of adjacent ones un-protected with one ioctl,
 * then PRESENT and counted dirty. Units in any other state are left
 * alone: a unit another thread owns may be protected on purpose (a flush
 * copying it out, an eviction), and an un-protect over it would let a
 * write go unseen. Returns the end of the last run made writable, or a.
 * Async-signal-safe. */
size_t upager__unprotect_clean(struct upager__region *r, size_t a,
			       size_t b) UPAGER__HIDDEN;
/* How many units after unit u a write stream of r may make dirty and
 * writable ahead of the writer: the readahead window (at most a quarter
 * of the budget), within the store; 0 without write-back. For the inline
 * write-protect fault (inline.c). Async-signal-safe. */
size_t upager__write_window(const struct upager__region *r, size_t u) UPAGER__HIDDEN;
/* Readahead for a read stream served inline (inline.c): @next is the
 * first unit after what the fault reads itself. Any thread, in the SIGBUS
 * handler too. */
void upager__inline_readahead(upager_t *up, struct upager__region *r,
			      size_t next) UPAGER__HIDDEN;
/* Readahead on a sequential stream, for a fault the manager read: queues
 * the window beyond unit u (write: the fault is a write; see "Write
 * streams" in readahead.c). *stream: whether the fault continued one.
 * Returns the end of the stretch after u that the write stream may mark
 * dirty (u + 1: none, or not a write stream). Manager thread only. */
size_t upager__fault_readahead(upager_t *up, struct upager__region *r,
			       size_t u, bool write, bool *stream) UPAGER__HIDDEN;

/* ---- userfaultfd layer (uffd.c) ---- */

struct upager__uffd_caps {
	uint64_t features;
	bool poison;
	bool move;
	bool thread_id;
	bool wp;        /* write-protect faults on anonymous memory */
	bool sigbus;    /* faults raise SIGBUS: nothing ever waits on it */
};

/* sigbus: faults raise SIGBUS in the faulting thread instead of queueing
 * a message (UFFD_FEATURE_SIGBUS; -EOPNOTSUPP without it). */
int upager__uffd_open(int *fd, struct upager__uffd_caps *caps,
		      bool sigbus) UPAGER__HIDDEN;
/* A descriptor with UFFD_FEATURE_MOVE and no events, for a private
 * destination of UFFDIO_MOVE: madvise or munmap there sends no event, so
 * nothing waits for a reader and installs elsewhere never see EAGAIN
 * because of it. -EOPNOTSUPP without UFFDIO_MOVE. */
int upager__uffd_open_mover(int *fd) UPAGER__HIDDEN;
int upager__uffd_unregister(int fd, uintptr_t base, size_t len) UPAGER__HIDDEN;
int upager__uffd_wake(int fd, uintptr_t base, size_t len) UPAGER__HIDDEN;
/* One ioctl each; *done gets the bytes handled before the error (never a
 * negative errno from the kernel's field). */
int upager__uffd_zero(int fd, uintptr_t dst, size_t len, size_t *done) UPAGER__HIDDEN;
int upager__uffd_poison(int fd, uintptr_t dst, size_t len, size_t *done) UPAGER__HIDDEN;

/* Installs `count` units from `unit` on (src NULL: zeros; poison:
 * UFFDIO_POISON), skipping pages already present and retrying while the
 * kernel reports the address space changing. It does not wake anyone: the
 * caller wakes the units once their state and counters say they are in,
 * so that a woken thread never sees stale counters. Returns 0, or -errno
 * when the range is gone or the runtime stops. */
/* FILL_MOVE: src is private anonymous memory of this process (a worker's
 * read buffer), whose pages are moved into the region rather than
 * copied; it falls back to FILL_COPY where the kernel will not move. */
enum upager__fill { FILL_COPY, FILL_MOVE, FILL_ZERO, FILL_POISON };
/* True on the manager thread (which must never wait for an event to be
 * read: it is the one that reads them). */
extern _Thread_local bool upager__on_manager UPAGER__HIDDEN;

int upager__install(struct upager__region *r, size_t unit, size_t count,
		    const void *src, enum upager__fill how, bool wp) UPAGER__HIDDEN;
int upager__uffd_register_mode(int fd, uintptr_t base, size_t len,
			       uint64_t mode) UPAGER__HIDDEN;
int upager__uffd_writeprotect(int fd, uintptr_t base, size_t len,
			      bool protect) UPAGER__HIDDEN;
/* Un-protects without waking the range's waiters (the caller wakes them
 * once its state says the pages are writable). */
int upager__uffd_unprotect_nowake(int fd, uintptr_t base, size_t len) UPAGER__HIDDEN;
/* Moves len bytes of pages from src to dst (holes allowed); *done gets
 * the bytes handled. */
int upager__uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len,
		      size_t *done) UPAGER__HIDDEN;

/* ---- write-back thread (writeback.c) ---- */

int upager__wb_start(upager_t *up) UPAGER__HIDDEN;
void upager__wb_stop(upager_t *up) UPAGER__HIDDEN;
/* Wakes the write-back thread if r (or the runtime) is at its high
 * watermark; below it the thread has nothing to do. */
void upager__wb_kick_over(upager_t *up, const struct upager__region *r) UPAGER__HIDDEN;
/* Whether r (or the runtime) is at its budget: an install now would go
 * over it. */
bool upager__wb_full(upager_t *up, const struct upager__region *r) UPAGER__HIDDEN;
/* Waits (briefly, bounded) until r is under its budget. */
void upager__wb_wait_room(upager_t *up, struct upager__region *r) UPAGER__HIDDEN;
/* Whether r (and the runtime) are below the level that wakes the write-back
 * thread: an install now needs no room made first. */
bool upager__wb_room(upager_t *up, const struct upager__region *r) UPAGER__HIDDEN;
/* Writes back the dirty units of r in [first, first+count); evict: drop
 * them too (clean ones as well). Waits first for units of the range still
 * FETCHING (a thread may have written one already). Blocks until done.
 * Returns 0 or the first write error. Caller holds a reference on r. */
int upager__wb_range(upager_t *up, struct upager__region *r, size_t first,
		     size_t count, bool evict) UPAGER__HIDDEN;

/* ---- address spaces ---- */

/* One userfaultfd descriptor and the regions registered on it. The home
 * space is this process's own memory; adopted spaces are other processes'
 * (their descriptor was passed to us), whose memory we reach only through
 * the descriptor's ioctls. */
struct upager__space {
	upager_t *up;
	int uffd;
	struct upager__uffd_caps caps;
	bool local;          /* regions are this process's memory */
	uint64_t adopted_ns; /* adopted spaces: when (manager.c, on_fault) */
	atomic_bool gone;    /* the address space exited (ESRCH/ENOSPC) */

	/* Region table: sorted by base; read by the manager, written by
	 * map/unmap. */
	pthread_rwlock_t table_lock;
	struct upager__region **table;
	size_t nregions, table_cap;

	/* Counters of regions since removed. */
	struct upager__counters retired;

	struct upager__space *next; /* up->spaces list */
};

/* Wakes faults waiting on [base, base + len) of the space; none can wait
 * on a SIGBUS descriptor, so there it is no system call at all. */
static inline void upager__space_wake(const struct upager__space *sp,
				      uintptr_t base, size_t len)
{
	if (!sp->caps.sigbus)
		upager__uffd_wake(sp->uffd, base, len);
}

int upager__space_init(upager_t *up, struct upager__space *sp, int uffd,
		       bool local) UPAGER__HIDDEN;
void upager__space_fini(struct upager__space *sp) UPAGER__HIDDEN;

/* space.c: regions of a space. region_new validates the options and
 * builds a region (state array, store reference) with no memory or table
 * entry yet; region_remove takes one out of the table and tears it down
 * (design.md rule 4); space_clear removes them all. */
int upager__region_new(struct upager__space *sp, upager_store_t *store,
		       uint64_t offset, size_t length,
		       const struct upager_map_opts *opts,
		       struct upager__region **out) UPAGER__HIDDEN;
void upager__region_free(struct upager__region *r) UPAGER__HIDDEN;
int upager__region_remove(struct upager__space *sp, uintptr_t base) UPAGER__HIDDEN;
void upager__space_clear(struct upager__space *sp) UPAGER__HIDDEN;
/* Writes back r's dirty units in [first, first+count) and syncs. */
int upager__region_flush(struct upager__region *r, size_t first,
			 size_t count) UPAGER__HIDDEN;
int upager__space_flush(struct upager__space *sp, uintptr_t a, size_t len) UPAGER__HIDDEN;
int upager__space_advise(struct upager__space *sp, uintptr_t a, size_t len,
			 int advice) UPAGER__HIDDEN;
/* Adds the counters of the region holding addr (0: of every region and
 * the retired ones) to *acc. */
int upager__space_stats_add(struct upager__space *sp, uintptr_t addr,
			    struct upager_stats *acc) UPAGER__HIDDEN;

/* ---- the runtime ---- */

struct upager {
	int ctl_fd;          /* eventfd: wakes the manager to stop */
	int epfd;            /* epoll over ctl_fd and every space's uffd */
	unsigned nworkers;
	unsigned queue_depth;
	atomic_bool stopping;

	struct upager__space home;
	/* Adopted spaces; the manager holds spaces_lock (read) while it
	 * serves them, removal takes it for writing. */
	pthread_rwlock_t spaces_lock;
	struct upager__space *spaces;

	/* Queues: one lock for both. Workers prefer demand. */
	pthread_mutex_t qlock;
	pthread_cond_t space_cv;   /* a slot became free */
	struct upager__ring demand;
	struct upager__ring prefetch;
	/* Entries in each ring, readable without qlock (workers peek before
	 * locking, and re-check before sleeping). */
	atomic_uint demand_count;
	atomic_uint prefetch_count;

	/* Region teardown waits here for refs to drain. */
	pthread_mutex_t unmap_lock;
	pthread_cond_t unmap_cv;

	pthread_t manager;
	bool manager_started;
	bool no_follow;               /* UPAGER_CFG_NO_FOLLOW */
	bool inline_faults;           /* UPAGER_CFG_INLINE (inline.c) */
	struct upager__worker *workers;
	struct upager__worker *mgr_w; /* the manager's own ring and slots */
	struct mgr *mgr;              /* manager.c's state */
	/* client.c: set when upagerd serves this runtime's faults. */
	struct upager__client *client;
	struct upager__wb *wb;
	uint64_t budget_units_4k; /* runtime-wide budget in 4 KiB pages */
	atomic_int wb_tid;        /* the write-back thread's id */
	atomic_size_t resident_4k; /* all regions' resident units, in 4 KiB */
	/* Odd while the manager is reading or handling a batch, even while
	 * it is not: see upager__manager_barrier(). */
	atomic_uint_fast64_t mgr_epoch;
};

uint64_t upager__now_ns(void) UPAGER__HIDDEN;

/* ---- inline.c: faults served by the faulting thread (UPAGER_CFG_INLINE) ---- */

/* Makes up's regions served by the SIGBUS handler (installing it if no
 * other runtime has). -EBUSY when too many runtimes are attached. */
int upager__inline_attach(upager_t *up) UPAGER__HIDDEN;
/* Undoes attach; returns once no handler is serving one of up's faults. */
void upager__inline_detach(upager_t *up) UPAGER__HIDDEN;

/* ---- client.c: a runtime served by upagerd (config.daemon_socket) ---- */

struct upager__client;
/* Connects, hands over home.uffd, starts the watcher; sets up->client and
 * up->nworkers = 0 (workers start only on a LOCAL fallback). */
int upager__client_connect(upager_t *up, const struct upager_config *cfg) UPAGER__HIDDEN;
/* Stops the watcher and disconnects; up->client becomes NULL. */
void upager__client_close(upager_t *up) UPAGER__HIDDEN;
/* upager_map, before anything changes: -EOPNOTSUPP for what cannot be
 * handed to the daemon. 0 when up is not a client. */
int upager__client_check_map(upager_t *up, upager_store_t *store,
			     const struct upager_map_opts *opts) UPAGER__HIDDEN;
/* upager_map, after the table insert: describes r to the daemon. */
int upager__client_map(upager_t *up, struct upager__region *r) UPAGER__HIDDEN;
/* upager_unmap / upager_advise of a client runtime (the whole call). */
int upager__client_unmap(upager_t *up, uintptr_t base) UPAGER__HIDDEN;
int upager__client_advise(upager_t *up, uintptr_t a, size_t len,
			  int advice) UPAGER__HIDDEN;
/* upager_stats(up, NULL): adds the daemon's counters for this client. */
int upager__client_stats_add(upager_t *up, struct upager_stats *acc) UPAGER__HIDDEN;

/* One unit of r more (+1) or less (-1) resident; the runtime-wide total
 * follows. */
static inline void resident_add(struct upager__region *r, int d)
{
	size_t pages = (size_t)1 << (r->page_shift - 12);
	if (d > 0) {
		atomic_fetch_add(&r->resident, 1);
		atomic_fetch_add(&r->up->resident_4k, pages);
	} else {
		atomic_fetch_sub(&r->resident, 1);
		atomic_fetch_sub(&r->up->resident_4k, pages);
	}
}

/* Accounting for a PRESENT unit (old byte b) that is no longer there. */
static inline void unit_forgotten(struct upager__region *r, uint8_t b)
{
	resident_add(r, -1);
	if (b & UNIT_DIRTY)
		atomic_fetch_sub(&r->dirty, 1);
}

/* Takes the PRESENT clean unit v for the caller alone (the manager, or a
 * thread serving its own write fault) while it is made dirty and writable: it becomes FETCHING with DIRTY set. FETCHING keeps
 * the write-back thread from claiming it meanwhile (a claim, write-back
 * and re-protection just before the un-protect would leave the unit
 * writable and clean: later writes would never be seen), and no worker
 * touches a unit it did not fetch itself. False if v is not PRESENT and
 * clean. */
static inline bool hold_clean(struct upager__region *r, size_t v)
{
	uint8_t b = unit_byte(r->state, v);
	if ((b & UNIT_STATE) != UNIT_PRESENT || (b & UNIT_DIRTY))
		return false;
	uint8_t nb = (uint8_t)((b & ~UNIT_STATE) | UNIT_FETCHING | UNIT_DIRTY);
	return __atomic_compare_exchange_n(&r->state[v], &b, nb, false,
					   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* Ends hold_clean(): the unit is PRESENT and counted dirty. */
static inline void release_dirty(struct upager__region *r, size_t v)
{
	if (unit_cas(r->state, v, UNIT_FETCHING, UNIT_PRESENT))
		atomic_fetch_add(&r->dirty, 1);
}

/* What a write fault on unit u, found write-protected, may do (the first
 * step shared by the manager's on_wp_fault and the inline handler). */
enum wp_claim {
	WP_BUSY,   /* the write-back thread owns it: wait for it */
	WP_GONE,   /* neither PRESENT nor FETCHING: fault again */
	WP_MARKED, /* already dirty, or FETCHING and now flagged dirty (the
		      install in flight counts the flag) */
	WP_HELD,   /* was PRESENT and clean: held (hold_clean) for the caller,
		      who un-protects it, then calls release_dirty */
};

static inline enum wp_claim wp_claim(struct upager__region *r, size_t u)
{
	for (;;) {
		uint8_t b = unit_byte(r->state, u), s = b & UNIT_STATE;
		if (s == UNIT_BUSY)
			return WP_BUSY;
		if (s != UNIT_PRESENT && s != UNIT_FETCHING)
			return WP_GONE;
		if (b & UNIT_DIRTY)
			return WP_MARKED;
		if (s == UNIT_PRESENT) {
			if (hold_clean(r, u))
				return WP_HELD;
			continue;
		}
		/* FETCHING: the install is waking its waiters and has not
		 * yet marked the unit PRESENT; the flag travels with it and
		 * the installer counts it. */
		if (unit_update(r->state, u, s, s, UNIT_DIRTY, 0))
			return WP_MARKED;
	}
}

#endif /* UPAGER_INTERNAL_H */
