/*
 * queue.c - fixed-capacity rings between the manager and the workers.
 *
 * Capacity is set at creation and never grows: a full ring is the
 * backpressure signal (the manager stops reading faults, readahead is
 * dropped, upager_advise waits). The rings carry no lock of their own;
 * callers hold upager_t.qlock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int upager__ring_init(struct upager__ring *q, uint32_t cap, size_t elem)
{
	q->slots = calloc(cap, elem);
	if (!q->slots)
		return -ENOMEM;
	q->elem = elem;
	q->cap = cap;
	q->head = 0;
	q->count = 0;
	return 0;
}

void upager__ring_free(struct upager__ring *q)
{
	free(q->slots);
	q->slots = NULL;
}

bool upager__ring_push(struct upager__ring *q, const void *e)
{
	if (q->count == q->cap)
		return false;
	uint32_t tail = (q->head + q->count) % q->cap;
	memcpy((char *)q->slots + (size_t)tail * q->elem, e, q->elem);
	q->count++;
	return true;
}

bool upager__ring_pop(struct upager__ring *q, void *e)
{
	if (q->count == 0)
		return false;
	memcpy(e, (char *)q->slots + (size_t)q->head * q->elem, q->elem);
	q->head = (q->head + 1) % q->cap;
	q->count--;
	return true;
}
