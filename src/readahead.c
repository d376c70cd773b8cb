/*
 * readahead.c - prefetch queueing and readahead windows.
 *
 * Units to read ahead go to the workers through the bounded prefetch
 * queue (prefetch_run): claimed QUEUED, one entry per chunk of EMPTY
 * units, dropped (the units given back) when the queue is full unless the
 * caller waits for room. Three callers decide what to queue: the manager
 * on every fault it reads (upager__fault_readahead, with the write
 * streams below), a thread serving its own faults inline
 * (upager__inline_readahead) and upager_advise(WILLNEED)
 * (upager__prefetch). docs/design.md sections 7 and 9 give the rules.
 *
 * The manager's per-region state (last_fault, ra_next, wp_next) is touched
 * by the manager thread only; inline readahead keeps its own (inline_ra),
 * read and moved with atomics by any faulting thread.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "internal.h"

/* Largest prefetch batch in a region under a budget: a worker checks for
 * room once per batch it installs, so a batch is what an install can go
 * over the budget by; the write-back thread evicts in batches of as many
 * units. */
#define PF_CHUNK_BUDGET 64u

/*
 * Folds. A buffered file store installs reads of 1 MiB and more from the
 * page cache, where the kernel keeps the file in 2 MiB folios (worker.c
 * mapped_src()); the workers cut prefetch runs of such a store at the
 * file's 2 MiB boundaries, so that a run is one folio, mapped and
 * unmapped whole. A readahead window that ended anywhere would leave a
 * piece of a folio at each end, read into a buffer and copied twice. So
 * for such stores a stream's window ends on a 2 MiB boundary of the file
 * (when it spans two folios or more: a smaller one is left as it is),
 * the unit left out halfway is the first of a folio, and a batch holds a
 * whole folio even of 4 KiB units.
 */

/* Units in 2 MiB of r's file where its readahead folds (above), else 0:
 * the store must read from the page cache, units must be smaller than
 * 2 MiB and start at a store offset that is a multiple of their size
 * (else no unit starts on a 2 MiB boundary). */
static size_t fold_units(const struct upager__region *r)
{
	if (!upager__store_mapped(r->store) ||
	    r->page_shift >= UPAGER__FOLIO_SHIFT ||
	    (r->offset & (((uint64_t)1 << r->page_shift) - 1)))
		return 0;
	return (size_t)1 << (UPAGER__FOLIO_SHIFT - r->page_shift);
}

/* The last unit at or before v that starts on a 2 MiB boundary of the
 * file; fold from fold_units(). */
static size_t fold_down(const struct upager__region *r, size_t fold, size_t v)
{
	size_t first = (size_t)((r->offset >> r->page_shift) % fold);
	return v - (first + v) % fold;
}

/* upager__prefetch(); write: the units are ahead of a write stream and go
 * in writable and dirty; stream: they are a stream's readahead. */
static size_t prefetch_run(upager_t *up, struct upager__region *r,
			   size_t first, size_t count, bool wait, bool write,
			   bool stream)
{
	size_t queued = 0, end = first + count;
	if (end > r->nunits)
		end = r->nunits;
	bool budget = r->budget_units || up->budget_units_4k;
	uint32_t chunk = budget ? PF_CHUNK_BUDGET : UPAGER__PF_CHUNK;
	size_t fold = fold_units(r);
	if (!budget && fold > chunk)
		chunk = (uint32_t)fold; /* a whole folio per batch */
	size_t u = first;
	while (u < end && !atomic_load(&r->dead)) {
		/* Gather up to one chunk of EMPTY units, starting at the
		 * first one. */
		while (u < end && unit_get(r->state, u) != UNIT_EMPTY)
			u++;
		if (u == end)
			break;
		struct upager__pf pf = { .r = r, .first = u, .count = 0,
					 .write = write, .stream = stream };
		while (u < end && pf.count < chunk &&
		       unit_cas(r->state, u, UNIT_EMPTY, UNIT_QUEUED)) {
			pf.count++;
			u++;
		}
		if (pf.count == 0)
			continue;
		atomic_fetch_add(&r->refs, 1);
		pthread_mutex_lock(&up->qlock);
		bool ok;
		while (!(ok = upager__ring_push(&up->prefetch, &pf)) && wait &&
		       !atomic_load(&up->stopping))
			pthread_cond_wait(&up->space_cv, &up->qlock);
		if (ok)
			atomic_fetch_add(&up->prefetch_count, 1);
		pthread_mutex_unlock(&up->qlock);
		if (!ok) {
			/* Dropped readahead: give the units back. */
			for (size_t i = 0; i < pf.count; i++)
				unit_cas(r->state, pf.first + i, UNIT_QUEUED,
					 UNIT_EMPTY);
			upager__region_put(r);
			break;
		}
		upager__workers_kick(up, 1);
		queued += pf.count;
	}
	return queued;
}

size_t upager__prefetch(upager_t *up, struct upager__region *r, size_t first,
			size_t count, bool wait)
{
	return prefetch_run(up, r, first, count, wait, false, false);
}

/*
 * Write streams.
 *
 * In a write-protected region every unit a read fault or readahead installs
 * is protected, so a program writing sequentially would pay two round trips
 * per unit: a missing fault (or none, where readahead came first) and then
 * a write-protect fault. So when a fault that continues a sequential stream
 * is a write (a write to a missing page, or any write-protect fault), the
 * stream is taken for a write stream, and
 *  - the readahead it queues goes in writable and already dirty, as the
 *    faulting unit itself does (prefetch jobs with `write` set), and
 *  - on a write-protect fault, the clean present units right after the
 *    faulting one are marked dirty and un-protected together with it, in
 *    one UFFDIO_WRITEPROTECT.
 * What it costs: a unit marked dirty ahead of the writer that the writer
 * never reaches (the stream stops, or turns back) is written back anyway,
 * its own bytes again, and an eviction must write it before dropping it.
 * That is bounded: a fault marks at most one write window past itself (the
 * readahead window, and at most a quarter of the budget, so that units
 * written ahead never crowd out the rest of the budget), the next window
 * only when the writer comes back with another fault, and never a unit
 * past the end of a file store (writing it back would grow the file by
 * bytes nobody wrote). A read stream marks nothing: a read fault is never
 * taken for a write.
 */

/* The readahead window of r under advice adv, in units (0: none). Under a
 * budget it is at most a quarter of it (of the region's, and of the
 * runtime's): a window as large as the budget would have the write-back
 * thread evict units read ahead before they are used, and installs outrun
 * eviction; a write stream's window (all of it dirty) would crowd out the
 * rest of the budget. */
static size_t ra_window(const struct upager__region *r, int adv)
{
	size_t win = r->ra_units;
	if (adv == UPAGER_ADV_RANDOM)
		return 0;
	if (adv == UPAGER_ADV_SEQUENTIAL) {
		/* At least 16 MiB (and two units) ahead. */
		size_t seq_win = (16u << 20) >> r->page_shift;
		if (seq_win < 2)
			seq_win = 2;
		if (win < seq_win)
			win = seq_win;
	}
	if (r->budget_units && win > r->budget_units / 4)
		win = r->budget_units / 4;
	uint64_t g = r->up->budget_units_4k >> (r->page_shift - 12);
	if (r->up->budget_units_4k && win > g / 4)
		win = (size_t)(g / 4);
	return win;
}

/* A file's size is one fstat(); a custom store's size callback might
 * block and is not called here: its region's length is the limit. */
size_t upager__stored_units(const struct upager__region *r)
{
	if (r->store->kind != UPAGER__STORE_FILE)
		return r->nunits;
	uint64_t size;
	if (upager__store_size(r->store, &size) || size <= r->offset)
		return 0;
	uint64_t n = (size - r->offset) >> r->page_shift;
	return n < r->nunits ? (size_t)n : r->nunits;
}

/* The end of a window of win units that would end at unit end: within
 * the region, and on a 2 MiB boundary of the file where r folds (see
 * "Folds") and the window spans two folios or more, so that the end
 * moves on by whole folios and never falls behind where it began. */
static size_t fold_end(const struct upager__region *r, size_t win, size_t end)
{
	if (end >= r->nunits)
		return r->nunits;
	size_t fold = fold_units(r);
	if (fold && win >= 2 * fold)
		end = fold_down(r, fold, end);
	return end;
}

/* Queues units [a, b) of r for prefetch: those before wend for writing
 * (see "Write streams"), the rest for reading. */
static void queue_span(upager_t *up, struct upager__region *r, size_t a,
		       size_t b, size_t wend)
{
	size_t w = wend < a ? a : (wend > b ? b : wend);
	if (w > a)
		prefetch_run(up, r, a, w - a, false, true, true);
	if (b > w)
		prefetch_run(up, r, w, b - w, false, false, true);
}

size_t upager__unprotect_clean(struct upager__region *r, size_t a, size_t b)
{
	size_t end = a;
	for (size_t v = a; v < b;) {
		if (!hold_clean(r, v)) {
			v++;
			continue;
		}
		size_t w = v + 1;
		while (w < b && hold_clean(r, w))
			w++;
		upager__uffd_unprotect_nowake(r->sp->uffd,
					      region_base(r) +
						      (v << r->page_shift),
					      (w - v) << r->page_shift);
		for (size_t q = v; q < w; q++)
			release_dirty(r, q);
		end = w;
		v = w;
	}
	return end;
}

/* A write stream's window [a, b) holds units installed clean (read
 * before, or written back by a flush): write-protected, each would cost
 * the writer a write-protect fault, a round trip through this thread,
 * when it gets there. Un-protect them now, as the write fault would
 * (upager__unprotect_clean()), from where the last window left off. */
static void unprotect_ahead(struct upager__region *r, size_t a, size_t b)
{
	size_t lo = a > r->wp_next ? a : r->wp_next;
	if (r->wp_next > b)
		lo = a; /* an earlier pass's, as ra_next in fault_readahead */
	upager__unprotect_clean(r, lo, b);
	r->wp_next = b;
}

/* Queues the stretch [start, end) of a stream whose window is win units,
 * those before wend for writing (queue_span). Asynchronous readahead: the
 * unit halfway through the stretch is left out. The application faults
 * there while half of the window is still ahead of it, and that fault
 * queues the next stretch, so reads keep running ahead of a sequential
 * reader instead of it stalling at the end of every window. A short
 * stretch gets no such unit: the stream faults often enough without it (a
 * writer meeting clean units it must un-protect), and each left-out unit
 * would cost one more read the stream waits for. */
static void queue_window(upager_t *up, struct upager__region *r, size_t start,
			 size_t end, size_t win, size_t wend)
{
	size_t n = end - start;
	size_t mark = n >= 4 && n >= win / 4 ? start + n / 2 : end;
	size_t fold = fold_units(r);
	if (fold && mark < end && fold_down(r, fold, mark) > start)
		mark = fold_down(r, fold, mark); /* see "Folds" */
	queue_span(up, r, start, mark, wend);
	if (mark + 1 < end)
		queue_span(up, r, mark + 1, end, wend);
}

size_t upager__fault_readahead(upager_t *up, struct upager__region *r,
			       size_t u, bool write, bool *stream)
{
	*stream = false;
	int adv = atomic_load_explicit(&r->advice, memory_order_relaxed);
	size_t win = ra_window(r, adv);
	if (win == 0)
		return u + 1;
	bool seq = upager__stream_continues(adv, r->last_fault, r->ra_next, u);
	r->last_fault = u;
	if (!seq)
		return u + 1;
	*stream = true;
	size_t wend = u + 1;
	/* Only where dirty units can be written back: elsewhere a unit
	 * marked dirty could never be evicted. */
	if (write && r->writeback) {
		size_t lim = upager__stored_units(r);
		wend += win;
		if (wend > lim)
			wend = lim > u + 1 ? lim : u + 1;
		if (r->wp)
			unprotect_ahead(r, u + 1, wend);
	}
	size_t end = fold_end(r, win, u + 1 + win);
	/* The window queued so far ends beyond this one: it was an earlier
	 * pass's (a scan again from the start, or after a jump back), not
	 * this stream's, which starts over here. Kept, it stopped every
	 * later pass over the region from reading ahead at all. */
	if (r->ra_next > end)
		r->ra_next = u + 1;
	size_t start = u + 1 > r->ra_next ? u + 1 : r->ra_next;
	if (start >= end)
		return wend;
	queue_window(up, r, start, end, win, wend);
	r->ra_next = end;
	return wend;
}

size_t upager__write_window(const struct upager__region *r, size_t u)
{
	if (!r->writeback)
		return 0;
	size_t win = ra_window(r, atomic_load(&r->advice)),
	       lim = upager__stored_units(r);
	if (u + 1 >= lim)
		return 0;
	return win < lim - u - 1 ? win : lim - u - 1;
}

/* Readahead for a read stream served by inline faults (inline.c), which
 * this thread never hears of: @next is the first unit after what the
 * fault reads itself. Once less than half a window is left queued ahead
 * of @next, queues for the workers from the end of what inline readahead
 * queued before (from @next after a jump, or on an earlier pass's) to one
 * window past @next, leaving out the unit halfway (queue_window): the
 * reader faults there and queues the next stretch while half of this one
 * is still ahead. Threads race for a stretch with one
 * compare-and-swap; the loser queues nothing. Called in the SIGBUS
 * handler: prefetch_run without waiting for room takes only the queue
 * lock, which no thread holds while it touches region memory. */
void upager__inline_readahead(upager_t *up, struct upager__region *r,
			      size_t next)
{
	size_t win = ra_window(r, atomic_load(&r->advice));
	if (win < 2 || next >= r->nunits)
		return;
	size_t end = fold_end(r, win, next + win);
	size_t q = __atomic_load_n(&r->inline_ra, __ATOMIC_RELAXED), start = q;
	if (q < next || q > end)
		start = next;
	else if (q - next >= win / 2)
		return;
	if (start >= end ||
	    !__atomic_compare_exchange_n(&r->inline_ra, &q, end, false,
					 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		return;
	queue_window(up, r, start, end, win, start); /* nothing for writing */
}
