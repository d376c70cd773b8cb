/*
 * writeback.c - the write-back thread: budgets, eviction, write-back.
 *
 * One thread per runtime owns every transition out of PRESENT that is not
 * the application's own doing: it evicts units of regions over their
 * budget and writes dirty units back to their store, for eviction,
 * upager_flush, UPAGER_ADV_DONTNEED and unmap. Application threads that
 * need a write-back hand it a request and wait for it.
 *
 * A unit it works on is BUSY: faults on it (missing or write-protect) are
 * not served but left waiting, and the thread wakes the unit when it is
 * done. That is what makes write-back safe against concurrent writes: the
 * unit's pages are first moved out of the region with UFFDIO_MOVE into a
 * scratch area (no copy; the region range is empty at once, so any access
 * waits), written from there, and then either dropped (eviction) or moved
 * back and write-protected again (flush). Without UFFDIO_MOVE (Linux < 6.8)
 * the unit is write-protected and copied instead.
 *
 * Victims are chosen by a CLOCK hand over the region's state bytes. The
 * runtime cannot see accesses to installed pages, only faults, so the
 * second chance goes to units faulted again soon after an eviction (they
 * carry UNIT_HOT, set by the manager when it sees a fault on a GHOST unit):
 * like the kernel's refault detection, this keeps a re-used working set
 * resident under scans that FIFO would let evict it.
 *
 * Watermarks: eviction starts when a region holds more than its budget
 * less a slack (an eighth of a small budget, a 64th of a large one, at
 * least 128 units) and stops two slacks under the budget, in batches of at
 * most 64 units, so faults rarely wait; a worker about to install into a
 * region at its budget waits for a batch (bounded, 50 ms) before
 * installing anyway.
 *
 * A batch's writes may still be in flight while the thread takes the next
 * batch out (up to WB_DEPTH batches, each in its own slot of the scratch
 * area): file stores write whole pages with O_DIRECT, which completes only
 * once the device has them. Units of a batch stay BUSY, and resident, until
 * it ends; the thread ends every batch in flight before it lets go of a
 * region or answers a request, so a flush still returns only once the
 * store has its units.
 *
 * The writes themselves, to file and custom stores, are in wb_write.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"
#include "wb_write.h"

#define BATCH 64u
#define SCRATCH (16u << 20)
#define SLOT (SCRATCH / WB_DEPTH) /* one batch's part of scratch */

struct wb_req {
	struct upager__region *r;
	size_t first, count;
	bool evict;
	int rc;
	bool done;
	struct wb_req *next;
};

/* A batch taken out of its region, its writes maybe still in flight. */
struct wb_batch {
	struct upager__region *r;
	bool evict;
	size_t k;
	char *scratch;          /* its SLOT bytes of the scratch area */
	size_t used;
	struct wb_item items[BATCH];
	struct wb_io io;
};

struct upager__wb {
	upager_t *up;
	pthread_t thr;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cv;      /* work for the thread */
	pthread_cond_t done_cv; /* a request or an eviction batch finished */
	atomic_bool kicked;
	uint64_t batches;
	struct wb_req *reqs;
	char *scratch;          /* SCRATCH bytes, registered WP-only */
	struct wb_batch *fill;  /* the batch being taken out: its slot */
	/* Batches with writes in flight, oldest first (ring of slots), all
	 * of one region and one request; evicting: their units. */
	struct wb_batch slot[WB_DEPTH];
	unsigned head, nbusy;
	size_t evicting;
	bool move_ok;
	int move_fd;            /* scratch's descriptor (no events), or -1 */
	/* mincore() of a run of units a flush copies out (copy_run) */
	unsigned char run_vec[BATCH * (UPAGER_PAGE_SIZE_MAX / 4096)];
	struct wb_ring w;
	bool ring_ok;
};


static uintptr_t unit_addr(const struct upager__region *r, size_t u)
{
	return region_base(r) + (u << r->page_shift);
}

/* Moves len bytes between region and scratch through @fd (the one the
 * destination is registered on), retrying while the kernel reports the
 * address space changing. *moved (if not NULL) gets how many bytes from
 * the start did move, also on failure. */
static int move_some(upager_t *up, int fd, uintptr_t dst, uintptr_t src,
		     size_t len, size_t *moved)
{
	size_t off = 0;
	unsigned tries = 0;
	int rc = 0;
	while (off < len) {
		size_t done = 0;
		rc = upager__uffd_move(fd, dst + off, src + off, len - off,
				       &done);
		off += done;
		if (rc == 0)
			break;
		if (done)
			continue;
		if ((rc == -EAGAIN) && ++tries < 10000 &&
		    !atomic_load(&up->stopping)) {
			struct timespec ts = { 0, 20000 };
			nanosleep(&ts, NULL);
			continue;
		}
		break;
	}
	if (moved)
		*moved = rc ? off : len;
	return rc;
}

/* Moves bytes back from scratch into the region. */
static int move_back(upager_t *up, uintptr_t dst, uintptr_t src, size_t len)
{
	return move_some(up, up->home.uffd, dst, src, len, NULL);
}

/* ---- one batch ---- */

/* Claims up to n units (evict: any PRESENT one; else dirty ones). */
static size_t claim(struct upager__region *r, const size_t *units, size_t n,
		    bool evict, struct wb_item *items)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		size_t u = units[i];
		uint8_t b = unit_byte(r->state, u);
		if ((b & UNIT_STATE) != UNIT_PRESENT)
			continue;
		if (!evict && !(b & UNIT_DIRTY))
			continue;
		if (evict && (b & UNIT_DIRTY) && !r->writeback)
			continue; /* its writes exist nowhere else */
		/* The byte the claim replaced, not the one read above: a
		 * write fault may have made the unit dirty in between. */
		if (!unit_update_prev(r->state, u, UNIT_PRESENT, UNIT_BUSY, 0,
				      UNIT_REMOVED, &b))
			continue;
		if (evict && (b & UNIT_DIRTY) && !r->writeback) {
			unit_update(r->state, u, UNIT_BUSY, UNIT_PRESENT, 0, 0);
			continue;
		}
		items[k++] = (struct wb_item){ .u = u, .b = b };
	}
	return k;
}

/* Whether copying item @it out needs its bytes (else it is only
 * dropped, or left as it is). */
static bool needs_data(const struct upager__region *r, const struct wb_item *it)
{
	return (it->b & UNIT_DIRTY) && r->writeback;
}

/* Copies the pages of the item's unit that it->vec marks present to
 * @slot. */
static void copy_pages(const struct upager__region *r, struct wb_item *it,
		       char *slot)
{
	const char *src = (const char *)unit_addr(r, it->u);
	for (size_t p = 0; p < r->page_size / PAGE; p++)
		if (it->vec[p] & 1)
			memcpy(slot + p * PAGE, src + p * PAGE, PAGE);
	it->data = slot;
}

/* Takes the unit's bytes out of the region by copy, into @slot (a flush;
 * an eviction without UFFDIO_MOVE, or of a unit the kernel would not
 * move): write-protects the unit (later writes fault and wait) and copies
 * the pages that are there; eviction then zaps them. Sets it->data if it
 * used @slot. */
static void copy_out(struct upager__wb *wb, struct upager__region *r,
		     struct wb_item *it, bool evict, char *slot)
{
	upager_t *up = wb->up;
	bool need_data = needs_data(r, it);
	uintptr_t ua = unit_addr(r, it->u);
	size_t npages = r->page_size / PAGE;
	if (need_data) {
		upager__uffd_writeprotect(up->home.uffd, ua, r->page_size, true);
		if (mincore((void *)ua, r->page_size, it->vec))
			memset(it->vec, 0, npages);
		copy_pages(r, it, slot);
	}
	if (evict) {
		/* The REMOVE event of our own zap is not the application
		 * dropping the unit (which makes it read zeros in a
		 * ZERO_REMOVED region): once the manager has handled it,
		 * forget the mark it left, unless one was there before. */
		bool before = unit_byte(r->state, it->u) & UNIT_REMOVED;
		madvise((void *)ua, r->page_size, MADV_DONTNEED);
		if (!before) {
			upager__manager_barrier(up);
			unit_update(r->state, it->u, UNIT_BUSY, UNIT_BUSY, 0,
				    UNIT_REMOVED);
		}
	}
}

/* Eviction moves its victims out in spans: victims in ascending order
 * whose gaps hold only EMPTY units (claimed BUSY for the move, so that no
 * install lands inside the span meanwhile) go out with one UFFDIO_MOVE
 * (source holes allowed), for which the kernel flushes the TLB once, where
 * a move per unit costs a flush each: an inter-processor interrupt to every
 * CPU running the application, 10 us a unit here against 0.4 us in spans
 * of 64. A gap may be at most MAX_GAP units; gaps use the scratch room the
 * batch's items leave free. */
#define MAX_GAP 64u

/* Gives the units [a, b) back, EMPTY as they were (a fault that came
 * meanwhile was left waiting: it is woken and fetches them). */
static void release_gap(upager_t *up, struct upager__region *r, size_t a,
			size_t b)
{
	if (a == b)
		return;
	for (size_t u = a; u < b; u++)
		unit_update(r->state, u, UNIT_BUSY, UNIT_EMPTY, 0,
			    UNIT_REMOVED);
	upager__space_wake(&up->home, unit_addr(r, a),
			   (b - a) << r->page_shift);
}

/* A span's move stopped inside or before this unit, at a page the kernel
 * would not move (one pinned for I/O, or shared with another process);
 * @have bytes of the unit are at @slot, its place in the span, already.
 * Puts them back and copies the unit out into that place instead. */
static void span_failed(struct upager__wb *wb, struct upager__region *r,
			struct wb_item *it, char *slot, size_t have)
{
	uintptr_t ua = unit_addr(r, it->u);
	if (have && move_back(wb->up, ua, (uintptr_t)slot, have) != 0)
		/* Cannot happen short of a kernel change: keep the bytes. */
		upager__install(r, it->u, 1, slot, FILL_COPY, false);
	copy_out(wb, r, it, true, slot);
}

/* Claims the EMPTY units [a, b) of r for a move; all or none. */
static bool claim_gap(upager_t *up, struct upager__region *r, size_t a,
		      size_t b)
{
	for (size_t u = a; u < b; u++) {
		if (!unit_cas(r->state, u, UNIT_EMPTY, UNIT_BUSY)) {
			release_gap(up, r, a, u);
			return false;
		}
	}
	return true;
}

/* Copies out items[i..j), adjacent units already write-protected, page
 * by page where one mincore() says a page is there. */
static void copy_run(struct upager__wb *wb, struct upager__region *r,
		     struct wb_item *items, size_t i, size_t j)
{
	uintptr_t ua = unit_addr(r, items[i].u);
	size_t len = (j - i) << r->page_shift, npages = r->page_size / PAGE;
	if (mincore((void *)ua, len, wb->run_vec))
		memset(wb->run_vec, 0, len / PAGE);
	for (size_t q = i; q < j; q++) {
		memcpy(items[q].vec, wb->run_vec + (q - i) * npages, npages);
		copy_pages(r, &items[q], wb->fill->scratch + wb->fill->used);
		wb->fill->used += r->page_size;
	}
}

/* A flush's copy-out of items[i..j): units in ascending order that all
 * need their bytes, at most MAX_GAP units apart. The whole span from the
 * first to the last is write-protected with one ioctl, so one TLB flush
 * (an interrupt to every CPU running the application) where a unit at a
 * time cost one each (benchmarks.md, section 2: the flush after random
 * writes). Protecting the units in the gaps changes nothing for them:
 * an EMPTY unit has no page to protect (the descriptor does not ask for
 * WP_UNPOPULATED), a clean one is protected already, and one written
 * since the batch was chosen (dirty, or FETCHING for a write) takes one
 * more write-protect fault, which finds it dirty and un-protects it
 * (wp_claim: WP_MARKED). Then each run of adjacent items is copied. */
static void copy_out_span(struct upager__wb *wb, struct upager__region *r,
			  struct wb_item *items, size_t i, size_t j)
{
	uintptr_t ua = unit_addr(r, items[i].u);
	size_t len = (items[j - 1].u - items[i].u + 1) << r->page_shift;
	upager__uffd_writeprotect(wb->up->home.uffd, ua, len, true);
	for (size_t a = i, b; a < j; a = b) {
		b = a + 1;
		while (b < j && items[b].u == items[b - 1].u + 1)
			b++;
		copy_run(wb, r, items, a, b);
	}
}

/* Takes the items out of the region: eviction moves them into scratch in
 * spans (above; the region range is empty at once, so accesses fault and
 * wait), everything else is copied out (for a flush, spans of nearby
 * units protected at once), into the slot of wb->fill. At entry that slot
 * is empty and has room for the k items (process()). */
static void take_out_all(struct upager__wb *wb, struct upager__region *r,
			 struct wb_item *items, size_t k, bool evict)
{
	if (!evict) {
		for (size_t i = 0, j; i < k; i = j) {
			j = i + 1;
			if (!needs_data(r, &items[i]))
				continue; /* a clean unit stays as it is */
			while (j < k && needs_data(r, &items[j]) &&
			       items[j].u > items[j - 1].u &&
			       items[j].u - items[j - 1].u <= MAX_GAP + 1)
				j++;
			copy_out_span(wb, r, items, i, j);
		}
		return;
	}
	if (!wb->move_ok) {
		for (size_t i = 0; i < k; i++) {
			copy_out(wb, r, &items[i], evict,
				 wb->fill->scratch + wb->fill->used);
			if (items[i].data)
				wb->fill->used += r->page_size;
		}
		return;
	}
	/* Scratch units the items do not need: room for gaps. */
	size_t spare = (SLOT >> r->page_shift) - k;
	for (size_t i = 0, j; i < k; i = j) {
		size_t first = items[i].u;
		j = i + 1;
		while (j < k && items[j].u > items[j - 1].u) {
			size_t a = items[j - 1].u + 1, b = items[j].u;
			if (b - a > MAX_GAP || b - a > spare ||
			    !claim_gap(wb->up, r, a, b))
				break;
			spare -= b - a;
			j++;
		}
		size_t last = items[j - 1].u;
		size_t len = (last - first + 1) << r->page_shift, moved;
		char *slot = wb->fill->scratch + wb->fill->used;
		move_some(wb->up, wb->move_fd, (uintptr_t)slot,
			  unit_addr(r, first), len, &moved);
		wb->fill->used += len;
		for (size_t q = i; q + 1 < j; q++)
			release_gap(wb->up, r, items[q].u + 1, items[q + 1].u);
		for (size_t q = i; q < j; q++) {
			struct wb_item *it = &items[q];
			size_t off = (it->u - first) << r->page_shift;
			if (off + r->page_size > moved) {
				span_failed(wb, r, it, slot + off,
					    moved > off ? moved - off : 0);
				continue;
			}
			it->data = slot + off;
			it->moved = true;
			if ((it->b & UNIT_DIRTY) && r->writeback &&
			    mincore(it->data, r->page_size, it->vec))
				memset(it->vec, 0, r->page_size / PAGE);
		}
	}
}

/* Ends the work on a unit: state, accounting, wake. */
static void settle(struct upager__wb *wb, struct upager__region *r,
		   struct wb_item *it, bool evict)
{
	upager_t *up = wb->up;
	uintptr_t ua = unit_addr(r, it->u);
	bool was_dirty = it->b & UNIT_DIRTY;
	bool removed = unit_byte(r->state, it->u) & UNIT_REMOVED;
	bool keep = !evict || it->rc != 0; /* failed write: keep the data */
	if (removed) {
		/* The application dropped (part of) it meanwhile: drop the
		 * rest, so the next access fetches the store's bytes. */
		keep = false;
		if (!it->moved)
			madvise((void *)ua, r->page_size, MADV_DONTNEED);
	}
	if (keep && it->moved &&
	    move_back(up, ua, (uintptr_t)it->data, r->page_size) != 0)
		/* Cannot happen short of a kernel change; copy instead of
		 * losing the only copy of the data. */
		upager__install(r, it->u, 1, it->data, FILL_COPY, false);
	if (keep) {
		bool dirty = was_dirty && (it->rc != 0 || !r->writeback);
		/* A unit copied out was protected before the copy (and any
		 * write since waits for us): protecting it again would be
		 * one more ioctl and TLB flush a unit. */
		bool protected = it->data && !it->moved;
		if (!dirty && r->wp && !protected)
			upager__uffd_writeprotect(up->home.uffd, ua,
						  r->page_size, true);
		unit_update(r->state, it->u, UNIT_BUSY, UNIT_PRESENT,
			    dirty ? UNIT_DIRTY : 0,
			    UNIT_REMOVED | (dirty ? 0 : UNIT_DIRTY));
		if (was_dirty && !dirty)
			atomic_fetch_sub(&r->dirty, 1);
	} else {
		uint8_t set = evict && !removed ? UNIT_GHOST : 0;
		if (removed && r->zero_removed)
			set |= UNIT_ZEROED;
		unit_update(r->state, it->u, UNIT_BUSY, UNIT_EMPTY, set,
			    UNIT_DIRTY | UNIT_HOT | UNIT_REMOVED);
		resident_add(r, -1);
		if (was_dirty)
			atomic_fetch_sub(&r->dirty, 1);
		if (evict)
			CNT_INC(&r->cnt, evictions, 1);
	}
	upager__space_wake(&up->home, ua, r->page_size);
}

/* Empties a batch's scratch slot. No event: scratch is registered on a
 * descriptor without them. */
static void slot_reset(struct wb_batch *bt)
{
	if (bt->used)
		madvise(bt->scratch, bt->used, MADV_DONTNEED);
	bt->used = 0;
}

/* Ends the oldest batch in flight: waits for its writes, then settles its
 * units. Returns 0 or its first write error. */
static int finish_oldest(struct upager__wb *wb)
{
	struct wb_batch *bt = &wb->slot[wb->head];
	struct upager__region *r = bt->r;
	int first_err = 0;
	upager__wb_io_wait(&wb->w, &bt->io);
	for (size_t i = 0; i < bt->k; i++) {
		struct wb_item *it = &bt->items[i];
		if (!it->data || !(it->b & UNIT_DIRTY) || !r->writeback)
			continue;
		if (it->rc) {
			CNT_INC(&r->cnt, write_errors, 1);
			if (!first_err)
				first_err = it->rc;
		} else {
			CNT_INC(&r->cnt, writebacks, 1);
			/* The store has its bytes now. */
			unit_update(r->state, it->u, UNIT_BUSY, UNIT_BUSY, 0,
				    UNIT_ZEROED);
		}
	}
	for (size_t i = 0; i < bt->k; i++)
		settle(wb, r, &bt->items[i], bt->evict);
	slot_reset(bt);
	if (bt->evict)
		wb->evicting -= bt->k;
	wb->head = (wb->head + 1) % WB_DEPTH;
	wb->nbusy--;
	pthread_mutex_lock(&wb->lock);
	wb->batches++;
	pthread_cond_broadcast(&wb->done_cv);
	pthread_mutex_unlock(&wb->lock);
	return first_err;
}

/* Ends every batch in flight. Returns 0 or the first write error. */
static int drain(struct upager__wb *wb)
{
	int first_err = 0;
	while (wb->nbusy) {
		int rc = finish_oldest(wb);
		if (rc && !first_err)
			first_err = rc;
	}
	return first_err;
}

/* Writes back (and with evict, drops) the given units of r, in batches
 * that one slot of scratch holds. Each batch's writes are left in flight
 * while the next is taken out; the caller ends them with drain() before
 * it lets go of r or answers a request. Returns 0 or the first write
 * error of the batches ended here. */
static int process(struct upager__wb *wb, struct upager__region *r,
		   const size_t *units, size_t n, bool evict)
{
	int first_err = 0;
	size_t per = SLOT / r->page_size;
	if (per > BATCH)
		per = BATCH;
	for (size_t done = 0; done < n;) {
		size_t take = n - done < per ? n - done : per;
		if (wb->nbusy == WB_DEPTH) {
			int rc = finish_oldest(wb);
			if (rc && !first_err)
				first_err = rc;
		}
		struct wb_batch *bt =
			&wb->slot[(wb->head + wb->nbusy) % WB_DEPTH];
		size_t k = claim(r, units + done, take, evict, bt->items);
		done += take;
		if (!k)
			continue;
		wb->fill = bt; /* its slot is empty (slot_reset) */
		take_out_all(wb, r, bt->items, k, evict);
		bt->r = r;
		bt->k = k;
		bt->evict = evict;
		if (evict)
			wb->evicting += k;
		wb->nbusy++;
		upager__wb_io_start(&wb->w, &bt->io, r, bt->items, k);
		/* Batches whose writes are done already (a custom store's,
		 * a batch of clean units, a quick device) end now: the
		 * region gets its room back, the faults waiting on their
		 * units go on. */
		upager__wb_poll(&wb->w);
		while (wb->nbusy &&
		       upager__wb_io_done(&wb->slot[wb->head].io)) {
			int rc = finish_oldest(wb);
			if (rc && !first_err)
				first_err = rc;
		}
	}
	return first_err;
}

/* ---- eviction ---- */

/* CLOCK: up to max victims of r. */
static size_t pick(struct upager__region *r, size_t *units, size_t max)
{
	size_t n = 0;
	for (size_t scanned = 0; n < max && scanned < 2 * r->nunits; scanned++) {
		size_t u = r->clock_hand;
		r->clock_hand = u + 1 < r->nunits ? u + 1 : 0;
		uint8_t b = unit_byte(r->state, u);
		if ((b & UNIT_STATE) != UNIT_PRESENT)
			continue;
		if (b & UNIT_HOT) {
			unit_update(r->state, u, UNIT_PRESENT, UNIT_PRESENT, 0,
				    UNIT_HOT);
			continue;
		}
		if ((b & UNIT_DIRTY) && !r->writeback)
			continue;
		units[n++] = u;
	}
	return n;
}

/* Units between a region budget of b units and its high watermark: an
 * eighth of a small budget, a 64th of a large one, never under two
 * batches (nor over the eighth). The write-back thread evicts from the
 * high watermark down to two slacks under the budget, so a large region
 * keeps ~97% of its budget resident (an eighth-wide band kept it at 81%
 * on average: more misses than the kernel with the same memory), while
 * the band stays wide enough that faults rarely find the region full. */
static size_t slack(size_t b)
{
	size_t s = b / 64;
	if (s < 2 * BATCH)
		s = 2 * BATCH;
	return s < b / 8 ? s : b / 8;
}

/* Whether r, or the runtime as a whole, is at its high watermark (full:
 * at its budget). The runtime's watermark is 7/8 of its budget. */
static bool at_level(upager_t *up, const struct upager__region *r, bool full)
{
	size_t b = r->budget_units;
	if (b && atomic_load(&r->resident) >= b - (full ? 0 : slack(b)))
		return true;
	uint64_t g = up->budget_units_4k;
	unsigned eighths = full ? 8 : 7;
	return g && (uint64_t)atomic_load(&up->resident_4k) * 8 >= g * eighths;
}

/* Evicts from r until it is at its low watermark (or n victims). */
static void evict_region(struct upager__wb *wb, struct upager__region *r,
			 size_t low)
{
	size_t units[BATCH];
	for (int rounds = 0; rounds < 64; rounds++) {
		/* Units whose batch is in flight are resident until it ends. */
		size_t res = atomic_load(&r->resident);
		res = res > wb->evicting ? res - wb->evicting : 0;
		if (res <= low)
			break;
		size_t want = res - low < BATCH ? res - low : BATCH;
		size_t n = pick(r, units, want);
		if (n == 0)
			break;
		process(wb, r, units, n, true);
	}
	drain(wb);
}

/* Regions over their high watermark, with a reference each. */
static size_t over_budget(upager_t *up, struct upager__region **out,
			  size_t max, size_t *lows)
{
	struct upager__space *sp = &up->home;
	size_t n = 0;
	pthread_rwlock_rdlock(&sp->table_lock);
	uint64_t global = up->budget_units_4k;
	bool global_over = global &&
		(uint64_t)atomic_load(&up->resident_4k) * 8 > global * 7;
	for (size_t i = 0; i < sp->nregions && n < max; i++) {
		struct upager__region *r = sp->table[i];
		size_t res = atomic_load(&r->resident);
		size_t b = r->budget_units;
		size_t low = 0;
		bool over = false;
		if (b && res > b - slack(b)) { /* as at_level() */
			over = true;
			low = b - 2 * slack(b);
		}
		if (global_over && res) {
			/* Every region gives back a quarter of what it holds
			 * over the runtime's budget share. */
			size_t l = res - res / 4;
			if (!over || l < low)
				low = l;
			over = true;
		}
		if (!over || atomic_load(&r->dead))
			continue;
		atomic_fetch_add(&r->refs, 1);
		lows[n] = low;
		out[n++] = r;
	}
	pthread_rwlock_unlock(&sp->table_lock);
	return n;
}

/* ---- the thread ---- */

/* Whether a request has work for unit u of r: a PRESENT unit to drop
 * (evict), or a PRESENT dirty one to write back. */
static bool has_work(const struct upager__region *r, size_t u, bool evict)
{
	uint8_t b = unit_byte(r->state, u);
	return (b & UNIT_STATE) == UNIT_PRESENT && (evict || (b & UNIT_DIRTY));
}

static void serve_requests(struct upager__wb *wb)
{
	pthread_mutex_lock(&wb->lock);
	struct wb_req *list = wb->reqs;
	wb->reqs = NULL;
	pthread_mutex_unlock(&wb->lock);
	while (list) {
		struct wb_req *q = list;
		list = q->next;
		size_t units[BATCH];
		int rc = 0;
		/* Batches of units there is work for (claim() checks again):
		 * a flush of a range where dirty units are sparse then costs
		 * a few full batches, not a batch, a ring round trip and a
		 * scratch reset for every 64 units of the range. */
		for (size_t u = q->first; u < q->first + q->count;) {
			size_t n = 0;
			for (; n < BATCH && u < q->first + q->count; u++)
				if (has_work(q->r, u, q->evict))
					units[n++] = u;
			int e = n ? process(wb, q->r, units, n, q->evict) : 0;
			if (e && !rc)
				rc = e;
		}
		int e = drain(wb);
		if (e && !rc)
			rc = e;
		pthread_mutex_lock(&wb->lock);
		q->rc = rc;
		q->done = true;
		pthread_cond_broadcast(&wb->done_cv);
		pthread_mutex_unlock(&wb->lock);
	}
}

static void *wb_main(void *arg)
{
	struct upager__wb *wb = arg;
	upager_t *up = wb->up;
	atomic_store(&up->wb_tid, (int)gettid());
	for (;;) {
		pthread_mutex_lock(&wb->lock);
		while (!atomic_load(&wb->kicked) && !wb->reqs &&
		       !atomic_load(&up->stopping)) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 100 * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&wb->cv, &wb->lock, &ts);
			break; /* re-check budgets every 100 ms anyway */
		}
		atomic_store(&wb->kicked, false);
		pthread_mutex_unlock(&wb->lock);
		serve_requests(wb);
		if (atomic_load(&up->stopping))
			break;
		struct upager__region *regs[16];
		size_t lows[16];
		size_t n = over_budget(up, regs, 16, lows);
		for (size_t i = 0; i < n; i++) {
			evict_region(wb, regs[i], lows[i]);
			upager__region_put(regs[i]);
		}
	}
	return NULL;
}

static void wb_kick(upager_t *up)
{
	struct upager__wb *wb = up->wb;
	if (atomic_exchange(&wb->kicked, true))
		return;
	pthread_mutex_lock(&wb->lock);
	pthread_cond_signal(&wb->cv);
	pthread_mutex_unlock(&wb->lock);
}

bool upager__wb_room(upager_t *up, const struct upager__region *r)
{
	return !at_level(up, r, false);
}

bool upager__wb_full(upager_t *up, const struct upager__region *r)
{
	return at_level(up, r, true);
}

void upager__wb_kick_over(upager_t *up, const struct upager__region *r)
{
	if (at_level(up, r, false))
		wb_kick(up);
}

void upager__wb_wait_room(upager_t *up, struct upager__region *r)
{
	struct upager__wb *wb = up->wb;
	upager__wb_kick_over(up, r);
	if (!at_level(up, r, true) || !r->sp->local)
		return;
	/* At the budget: wait for an eviction batch, but never for long
	 * (the write-back thread may itself be waiting for the manager,
	 * which may be waiting for us). */
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 50 * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&wb->lock);
	while (at_level(up, r, true) && !atomic_load(&up->stopping) &&
	       !atomic_load(&r->dead)) {
		if (pthread_cond_timedwait(&wb->done_cv, &wb->lock, &ts))
			break;
	}
	pthread_mutex_unlock(&wb->lock);
}

/* Waits until no unit of r in [first, first+count) is FETCHING. An
 * install maps a unit before it marks it PRESENT (and dirty, where it goes
 * in writable), and only then wakes the faulting thread; but the kernel
 * does not hold a faulting thread until that wake: once the page is mapped,
 * any wake-up (a signal, a retry) lets it go on. Readahead puts units in
 * that a thread reaches with no fault at all, and a write-protect fault
 * un-protects a unit it holds FETCHING. So a thread may have written a unit
 * that is still FETCHING and then ask for a write-back that must include
 * it, while the write-back thread claims only PRESENT units. (Seen: 1 in
 * about 4000 flushes right after a write fault missed the write, under
 * load.) The wait ends when the fetch does. */
static void fetches_settle(struct upager__region *r, size_t first,
			   size_t count)
{
	for (size_t u = first; u < first + count; u++) {
		while ((unit_byte(r->state, u) & UNIT_STATE) == UNIT_FETCHING &&
		       !atomic_load(&r->dead) &&
		       !atomic_load(&r->up->stopping)) {
			struct timespec ts = { 0, 20000 };
			nanosleep(&ts, NULL);
		}
	}
}

int upager__wb_range(upager_t *up, struct upager__region *r, size_t first,
		     size_t count, bool evict)
{
	struct upager__wb *wb = up->wb;
	fetches_settle(r, first, count);
	struct wb_req q = {
		.r = r, .first = first, .count = count, .evict = evict,
	};
	pthread_mutex_lock(&wb->lock);
	q.next = wb->reqs;
	wb->reqs = &q;
	pthread_cond_signal(&wb->cv);
	while (!q.done)
		pthread_cond_wait(&wb->done_cv, &wb->lock);
	pthread_mutex_unlock(&wb->lock);
	return q.rc;
}

int upager__wb_start(upager_t *up)
{
	struct upager__wb *wb = calloc(1, sizeof(*wb));
	if (!wb)
		return -ENOMEM;
	wb->up = up;
	wb->move_fd = -1;
	pthread_mutex_init(&wb->lock, NULL);
	pthread_cond_init(&wb->cv, NULL);
	pthread_cond_init(&wb->done_cv, NULL);
	int rc = io_uring_queue_init(WB_RING, &wb->w.ring, 0);
	if (rc < 0)
		goto fail;
	wb->ring_ok = true;
	wb->scratch = mmap(NULL, SCRATCH, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (wb->scratch == MAP_FAILED) {
		wb->scratch = NULL;
		rc = -ENOMEM;
		goto fail;
	}
	madvise(wb->scratch, SCRATCH, MADV_DONTFORK);
	for (unsigned i = 0; i < WB_DEPTH; i++)
		wb->slot[i].scratch = wb->scratch + (size_t)i * SLOT;
	/* UFFDIO_MOVE needs its destination registered on the descriptor
	 * it is issued on. Scratch has one of its own, without events: the
	 * madvise that empties it after every batch would otherwise be a
	 * REMOVE event on the runtime's descriptor, which the madvise waits
	 * for the manager to read and which makes every install meanwhile
	 * fail with EAGAIN and retry. Write-protect mode only, so that
	 * touching a hole in the scratch area is an ordinary zero-fill, not
	 * a fault, and with the same page protection as the write-protected
	 * regions (the kernel moves only between vmas that agree on it). */
	if (up->home.caps.move &&
	    upager__uffd_open_mover(&wb->move_fd) == 0 &&
	    upager__uffd_register_mode(wb->move_fd, (uintptr_t)wb->scratch,
				       SCRATCH, UFFDIO_REGISTER_MODE_WP) != 0) {
		close(wb->move_fd);
		wb->move_fd = -1;
	}
	wb->move_ok = wb->move_fd >= 0;
	up->wb = wb;
	rc = -pthread_create(&wb->thr, NULL, wb_main, wb);
	if (rc) {
		up->wb = NULL;
		goto fail;
	}
	pthread_setname_np(wb->thr, "upager-wb");
	wb->started = true;
	return 0;
fail:
	if (wb->move_fd >= 0)
		close(wb->move_fd);
	if (wb->scratch)
		munmap(wb->scratch, SCRATCH);
	if (wb->ring_ok)
		io_uring_queue_exit(&wb->w.ring);
	pthread_mutex_destroy(&wb->lock);
	pthread_cond_destroy(&wb->cv);
	pthread_cond_destroy(&wb->done_cv);
	free(wb);
	return rc;
}

void upager__wb_stop(upager_t *up)
{
	struct upager__wb *wb = up->wb;
	if (!wb)
		return;
	pthread_mutex_lock(&wb->lock);
	pthread_cond_signal(&wb->cv);
	pthread_mutex_unlock(&wb->lock);
	if (wb->started)
		pthread_join(wb->thr, NULL);
	if (wb->move_fd >= 0)
		close(wb->move_fd);
	munmap(wb->scratch, SCRATCH);
	io_uring_queue_exit(&wb->w.ring);
	pthread_mutex_destroy(&wb->lock);
	pthread_cond_destroy(&wb->cv);
	pthread_cond_destroy(&wb->done_cv);
	free(wb);
	up->wb = NULL;
}
