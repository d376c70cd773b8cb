/*
 * wb_write.h - the write-back thread's writes to stores (wb_write.c),
 * shared with writeback.c. Internal.
 */
#ifndef UPAGER_WB_WRITE_H
#define UPAGER_WB_WRITE_H

#include <liburing.h>

#include "internal.h"

#define PAGE 4096u
#define WB_RING 64 /* the write-back ring's entries: writes in flight */
#define WB_DEPTH 4 /* batches whose writes may be in flight at once */
#define MAX_EXT 256 /* extents of one batch's writes */

/* One unit being worked on. */
struct wb_item {
	size_t u;
	uint8_t b;      /* state byte when claimed */
	char *data;     /* its bytes in the scratch area, or NULL */
	bool moved;     /* pages were moved out of the region */
	int rc;
	/* Which 4 KiB pages of data are real (a page the application
	 * dropped meanwhile is a hole and is not written). */
	unsigned char vec[UPAGER_PAGE_SIZE_MAX / 4096];
};

struct wb_io;

/* A file write: contiguous scratch bytes that are contiguous in the file
 * too, covering items [first, last] of its batch. */
struct wext {
	struct wb_io *io;
	const char *buf;
	size_t len, done;
	uint64_t off;
	unsigned first, last;
	bool direct;    /* in flight on the store's O_DIRECT descriptor */
};

/* One batch's writes: extents queued for the ring or in flight. */
struct wb_io {
	struct upager__region *r;
	struct wb_item *items;
	struct wext ext[MAX_EXT];
	unsigned n;               /* extents */
	unsigned queue[MAX_EXT];  /* extents to (re)submit */
	unsigned qn;
	unsigned pending;         /* extents not done */
};

/* The write-back thread's ring and the batches with writes on it. */
struct wb_ring {
	struct io_uring ring;
	unsigned inflight;
	struct wb_io *active[WB_DEPTH];
	int failed;               /* the ring itself failed: its error */
};

/* Starts writing back the dirty items of a batch of region r into @io
 * (items[i].rc gets each one's result once upager__wb_io_wait() has
 * returned; clean items and items without data are skipped). File
 * stores: every extent of the batch goes on the ring, whole pages
 * through the store's O_DIRECT descriptor; custom stores get one call per
 * run of present pages, done before this returns. */
void upager__wb_io_start(struct wb_ring *w, struct wb_io *io,
			 struct upager__region *r, struct wb_item *items,
			 size_t k) UPAGER__HIDDEN;

/* Waits until every write of @io is done (serving the ring's other
 * batches' completions meanwhile). */
void upager__wb_io_wait(struct wb_ring *w, struct wb_io *io) UPAGER__HIDDEN;

/* Takes the completions there are, without waiting. */
void upager__wb_poll(struct wb_ring *w) UPAGER__HIDDEN;

/* Whether every write of @io is done. */
static inline bool upager__wb_io_done(const struct wb_io *io)
{
	return io->pending == 0;
}

#endif /* UPAGER_WB_WRITE_H */
