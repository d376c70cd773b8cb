/*
 * wb_write.c - the write-back thread's writes to stores.
 *
 * A batch's dirty units arrive copied or moved out of the region
 * (writeback.c), with a map of which 4 KiB pages are really there; a page
 * the application dropped meanwhile is a hole and is not written. File
 * stores are written through the write-back thread's io_uring, every
 * extent of the batch in flight at once, extents merged where the units
 * sit side by side both in the scratch area and in the file; custom
 * stores get their write callback, one call per run of present pages.
 *
 * Extents of whole 4 KiB pages go through the store's O_DIRECT
 * descriptor: the page cache would only hold a second copy of bytes the
 * region has just given up, charged to the same memory cgroup, and copying
 * them in cost the kernel a worker thread per write (buffered writes to
 * ext4 are not issued inline). Such a write is done only once the device
 * has the bytes, so writeback.c keeps several batches' writes in flight
 * (WB_DEPTH) and works on the next batch meanwhile. A write the kernel
 * declines (EINVAL: a file system without O_DIRECT, or stricter alignment)
 * is done buffered, as is every later one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>

#include "internal.h"
#include "wb_write.h"

/* A custom store's write callback. */
static int store_write(upager_store_t *s, const char *buf, size_t len,
		       uint64_t off)
{
	if (!s->ops.write)
		return -EROFS;
	int rc = s->ops.write(s->ctx, buf, len, off);
	return rc > 0 ? -EIO : rc;
}

/* Writes the unit's pages that are really there to a custom store (a page
 * the application dropped meanwhile arrives as a hole: it is not
 * written). */
static int write_unit(struct upager__region *r, struct wb_item *it)
{
	size_t limit = r->length - ((size_t)it->u << r->page_shift);
	size_t len = r->page_size < limit ? r->page_size : limit;
	size_t npages = (len + PAGE - 1) / PAGE;
	const unsigned char *vec = it->vec;
	uint64_t base = r->offset + ((uint64_t)it->u << r->page_shift);
	size_t p = 0;
	while (p < npages) {
		if (!(vec[p] & 1)) {
			p++;
			continue;
		}
		size_t q = p;
		while (q < npages && (vec[q] & 1))
			q++;
		size_t a = p * PAGE, e = q * PAGE < len ? q * PAGE : len;
		int rc = store_write(r->store, it->data + a, e - a, base + a);
		if (rc)
			return rc;
		p = q;
	}
	return 0;
}

static void ext_fail(struct wb_io *io, const struct wext *e, int rc)
{
	for (unsigned i = e->first; i <= e->last; i++)
		if (!io->items[i].rc)
			io->items[i].rc = rc;
}

/* Whether the rest of extent e goes through the store's O_DIRECT
 * descriptor: all of it on 4 KiB boundaries, in memory and in the file. */
static bool goes_direct(const upager_store_t *s, const struct wext *e)
{
	uintptr_t a = (uintptr_t)(e->buf + e->done);
	uint64_t o = e->off + e->done, left = e->len - e->done;
	return upager__store_dio(s) && !((a | o | left) & (PAGE - 1));
}

/* Puts queued extents of every active batch on the ring, while it has
 * room, and submits them. */
static void submit_queued(struct wb_ring *w)
{
	for (unsigned b = 0; b < WB_DEPTH; b++) {
		struct wb_io *io = w->active[b];
		while (io && io->qn && w->inflight < WB_RING) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
			if (!sqe)
				break;
			struct wext *e = &io->ext[io->queue[--io->qn]];
			upager_store_t *s = io->r->store;
			size_t left = e->len - e->done;
			e->direct = goes_direct(s, e);
			io_uring_prep_write(sqe, e->direct ? s->dwfd : s->wfd,
					    e->buf + e->done,
					    (unsigned)(left < (1u << 30) ?
						       left : (1u << 30)),
					    e->off + e->done);
			io_uring_sqe_set_data(sqe, e);
			w->inflight++;
		}
	}
	io_uring_submit(&w->ring);
}

/* One completion: the extent is done, failed, or goes back to its queue
 * for the rest (a short write, an interrupted one, or an O_DIRECT write
 * the kernel declined: then every later write is buffered). */
static void complete(struct wb_ring *w, struct io_uring_cqe *cqe)
{
	struct wext *e = io_uring_cqe_get_data(cqe);
	struct wb_io *io = e->io;
	int res = cqe->res;
	io_uring_cqe_seen(&w->ring, cqe);
	w->inflight--;
	if (e->direct && (res == -EINVAL || res == -EOPNOTSUPP)) {
		atomic_store(&io->r->store->dw_off, true);
		res = -EAGAIN;
	}
	if (res == -EINTR || res == -EAGAIN) {
		io->queue[io->qn++] = (unsigned)(e - io->ext);
		return;
	}
	if (res <= 0) {
		ext_fail(io, e, res ? res : -EIO);
		e->done = e->len;
	} else {
		e->done += (size_t)res;
		if (e->done < e->len) {
			io->queue[io->qn++] = (unsigned)(e - io->ext);
			return;
		}
	}
	io->pending--;
}

/* The ring failed: every write not done fails, now and from here on.
 * (Cannot happen short of a kernel change: it takes no more entries in
 * flight than its completion queue holds.) */
static void ring_failed(struct wb_ring *w, int rc)
{
	w->failed = rc;
	for (unsigned b = 0; b < WB_DEPTH; b++) {
		struct wb_io *io = w->active[b];
		if (!io)
			continue;
		for (unsigned i = 0; i < io->n; i++)
			if (io->ext[i].done < io->ext[i].len)
				ext_fail(io, &io->ext[i], rc);
		io->qn = io->pending = 0;
	}
}

/* Puts io among the ring's batches (writeback.c has at most WB_DEPTH). */
static void activate(struct wb_ring *w, struct wb_io *io)
{
	for (unsigned b = 0; b < WB_DEPTH; b++) {
		if (!w->active[b]) {
			w->active[b] = io;
			return;
		}
	}
}

static void deactivate(struct wb_ring *w, struct wb_io *io)
{
	for (unsigned b = 0; b < WB_DEPTH; b++)
		if (w->active[b] == io)
			w->active[b] = NULL;
}

void upager__wb_io_wait(struct wb_ring *w, struct wb_io *io)
{
	while (io->pending && !w->failed) {
		submit_queued(w);
		struct io_uring_cqe *cqe;
		int rc = io_uring_wait_cqe(&w->ring, &cqe);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
			ring_failed(w, rc);
			break;
		}
		while (io_uring_peek_cqe(&w->ring, &cqe) == 0)
			complete(w, cqe);
	}
	deactivate(w, io);
}

void upager__wb_poll(struct wb_ring *w)
{
	struct io_uring_cqe *cqe;
	while (!w->failed && io_uring_peek_cqe(&w->ring, &cqe) == 0)
		complete(w, cqe);
	submit_queued(w);
}

/* Queues extents [0, io->n) of io. */
static void queue_all(struct wb_io *io)
{
	for (unsigned i = 0; i < io->n; i++)
		io->queue[io->qn++] = io->n - 1 - i;
	io->pending += io->n;
}

/* Starts the writes of a batch. File stores: every page run of every
 * item, merged where adjacent in memory and in the file (units the clock
 * picked in order sit side by side in scratch), all queued at once.
 * Custom stores: one call per run, here. */
void upager__wb_io_start(struct wb_ring *w, struct wb_io *io,
			 struct upager__region *r, struct wb_item *items,
			 size_t k)
{
	upager_store_t *s = r->store;
	*io = (struct wb_io){ .r = r, .items = items };
	activate(w, io);
	for (size_t i = 0; i < k; i++) {
		struct wb_item *it = &items[i];
		if (!it->data || !(it->b & UNIT_DIRTY) || !r->writeback)
			continue;
		if (s->kind == UPAGER__STORE_CUSTOM) {
			it->rc = write_unit(r, it);
			continue;
		}
		if (w->failed) {
			it->rc = w->failed;
			continue;
		}
		size_t limit = r->length - ((size_t)it->u << r->page_shift);
		size_t len = r->page_size < limit ? r->page_size : limit;
		size_t npages = (len + PAGE - 1) / PAGE;
		uint64_t base = r->offset + ((uint64_t)it->u << r->page_shift);
		for (size_t p = 0; p < npages;) {
			if (!(it->vec[p] & 1)) {
				p++;
				continue;
			}
			size_t q = p;
			while (q < npages && (it->vec[q] & 1))
				q++;
			size_t a = p * PAGE, e = q * PAGE < len ? q * PAGE : len;
			struct wext *last = io->n ? &io->ext[io->n - 1] : NULL;
			if (last && last->buf + last->len == it->data + a &&
			    last->off + last->len == base + a) {
				last->len += e - a;
				last->last = (unsigned)i;
			} else {
				if (io->n == MAX_EXT) {
					/* Rare (units with many holes):
					 * these first, then the rest. */
					queue_all(io);
					upager__wb_io_wait(w, io);
					io->n = 0;
					activate(w, io);
				}
				io->ext[io->n++] = (struct wext){
					.io = io, .buf = it->data + a,
					.len = e - a, .off = base + a,
					.first = (unsigned)i,
					.last = (unsigned)i,
				};
			}
			p = q;
		}
	}
	queue_all(io);
	if (io->pending)
		submit_queued(w);
}
