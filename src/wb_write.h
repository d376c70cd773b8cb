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

/* Writes back the dirty items of a batch of region r (items[i].rc gets
 * each one's result; clean items and items without data are skipped).
 * File stores go through @ring, every write in flight at once; custom
 * stores get one call per run of present pages. */
void upager__wb_write_items(struct io_uring *ring, struct upager__region *r,
			    struct wb_item *items, size_t k) UPAGER__HIDDEN;

#endif /* UPAGER_WB_WRITE_H */
