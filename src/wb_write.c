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

/* A file write in flight: contiguous scratch bytes that are contiguous in
 * the file too, covering items [first, last] of the batch. */
struct wext {
	const char *buf;
	size_t len, done;
	uint64_t off;
	unsigned first, last;
};

#define MAX_EXT 256

static void ext_fail(struct wb_item *items, const struct wext *e, int rc)
{
	for (unsigned i = e->first; i <= e->last; i++)
		if (!items[i].rc)
			items[i].rc = rc;
}

/* Writes the extents through the ring, all in flight at once (up to the
 * ring's size); a short write is resubmitted for the rest. */
static void ext_write(struct io_uring *ring, int fd, struct wext *ext,
		      unsigned n, struct wb_item *items)
{
	unsigned inflight = 0;
	unsigned queue[MAX_EXT], qn = 0; /* extents to (re)submit */
	for (unsigned i = 0; i < n; i++)
		queue[qn++] = i;
	while (qn || inflight) {
		while (qn && inflight < WB_RING) {
			struct wext *e = &ext[queue[--qn]];
			struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
			size_t left = e->len - e->done;
			io_uring_prep_write(sqe, fd, e->buf + e->done,
					    (unsigned)(left < (1u << 30) ? left : (1u << 30)),
					    e->off + e->done);
			io_uring_sqe_set_data64(sqe, (uint64_t)(e - ext));
			inflight++;
		}
		struct io_uring_cqe *cqe;
		int rc = io_uring_submit_and_wait(ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
			/* The ring failed: whatever has not completed fails. */
			for (unsigned i = 0; i < n; i++)
				if (ext[i].done < ext[i].len)
					ext_fail(items, &ext[i], rc);
			return;
		}
		while (io_uring_peek_cqe(ring, &cqe) == 0) {
			struct wext *e = &ext[io_uring_cqe_get_data64(cqe)];
			int res = cqe->res;
			io_uring_cqe_seen(ring, cqe);
			inflight--;
			if (res == -EINTR || res == -EAGAIN) {
				queue[qn++] = (unsigned)(e - ext);
			} else if (res <= 0) {
				ext_fail(items, e, res ? res : -EIO);
				e->done = e->len;
			} else {
				e->done += (size_t)res;
				if (e->done < e->len)
					queue[qn++] = (unsigned)(e - ext);
			}
		}
	}
}

/* Writes back the dirty items of a batch. File stores: every page run of
 * every item, merged where adjacent in memory and in the file (units the
 * clock picked in order sit side by side in scratch), all in flight at
 * once. Custom stores: one call per run. Sets items[i].rc. */
void upager__wb_write_items(struct io_uring *ring, struct upager__region *r,
			    struct wb_item *items, size_t k)
{
	upager_store_t *s = r->store;
	struct wext ext[MAX_EXT];
	unsigned n = 0;
	for (size_t i = 0; i < k; i++) {
		struct wb_item *it = &items[i];
		if (!it->data || !(it->b & UNIT_DIRTY) || !r->writeback)
			continue;
		if (s->kind == UPAGER__STORE_CUSTOM) {
			it->rc = write_unit(r, it);
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
			struct wext *last = n ? &ext[n - 1] : NULL;
			if (last && last->buf + last->len == it->data + a &&
			    last->off + last->len == base + a) {
				last->len += e - a;
				last->last = (unsigned)i;
			} else {
				if (n == MAX_EXT) {
					ext_write(ring, s->wfd, ext, n, items);
					n = 0;
				}
				ext[n++] = (struct wext){
					.buf = it->data + a, .len = e - a,
					.off = base + a, .first = (unsigned)i,
					.last = (unsigned)i,
				};
			}
			p = q;
		}
	}
	if (n)
		ext_write(ring, s->wfd, ext, n, items);
}
