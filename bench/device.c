/*
 * device.c - the physical limit: raw O_DIRECT reads through io_uring at a
 * deep queue (--qd, default 32) from one thread, no page cache and no
 * mapping. Scans read --device-io bytes (1 MiB) per request, the other workloads 4 KiB per
 * page the workload names (for rand with N threads: the pages of all N
 * threads' streams, from the same single submitting thread).
 *
 * Each request records its own submit-to-completion time, so its p50/p99
 * are per-request latencies at that queue depth.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

struct req_list {
	uint64_t *page; /* first page of each request */
	size_t n, cap;
};

struct slot {
	uint8_t *buf;
	uint64_t page;
	uint32_t npages;
	uint64_t t0;
};

struct dev {
	struct io_uring ring;
	int fd;
	unsigned qd;
	size_t io_bytes;
	struct slot *slots;
	unsigned *free_slots, nfree;
	uint32_t *lat;
	size_t nlat;
	uint64_t sum;
};

static void list_add(void *arg, uint64_t page)
{
	struct req_list *l = arg;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 4096;
		uint64_t *p = realloc(l->page, cap * sizeof(*p));

		if (!p) {
			l->cap = SIZE_MAX; /* marks the failure */
			return;
		}
		l->page = p;
		l->cap = cap;
	}
	l->page[l->n++] = page;
}

/* The requests of the run, built before the clock starts. */
static int build_requests(const struct run_spec *s, size_t io_pages,
			  struct req_list *l)
{
	if (s->wl == WL_SEQ) {
		for (uint64_t p = 0; p < s->npages && l->cap != SIZE_MAX; p += io_pages)
			list_add(l, p);
	} else {
		unsigned n = s->wl == WL_STRIDE ? 1 : s->threads;

		for (unsigned t = 0; t < n; t++)
			workload_pages(s, t, list_add, l);
	}
	return l->cap == SIZE_MAX ? -ENOMEM : 0;
}

static int dev_setup(struct dev *d, const struct run_spec *s)
{
	int err;

	d->fd = open(s->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (d->fd < 0)
		return -errno;
	d->slots = calloc(d->qd, sizeof(*d->slots));
	d->free_slots = calloc(d->qd, sizeof(*d->free_slots));
	if (!d->slots || !d->free_slots)
		return -ENOMEM;
	for (unsigned i = 0; i < d->qd; i++) {
		if (posix_memalign((void **)&d->slots[i].buf, BENCH_PAGE, d->io_bytes))
			return -ENOMEM;
		memset(d->slots[i].buf, 0, d->io_bytes);
		d->free_slots[d->nfree++] = i;
	}
	err = io_uring_queue_init(d->qd, &d->ring, 0);
	return err;
}

static void dev_teardown(struct dev *d, bool ring_up)
{
	if (ring_up)
		io_uring_queue_exit(&d->ring);
	if (d->slots)
		for (unsigned i = 0; i < d->qd; i++)
			free(d->slots[i].buf);
	free(d->slots);
	free(d->free_slots);
	free(d->lat);
	if (d->fd >= 0)
		close(d->fd);
}

static void submit_one(struct dev *d, const struct run_spec *s, uint64_t page)
{
	unsigned i = d->free_slots[--d->nfree];
	struct slot *sl = &d->slots[i];
	uint64_t left = s->npages - page;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);

	sl->page = page;
	sl->npages = (uint32_t)(left < d->io_bytes / BENCH_PAGE
					? left : d->io_bytes / BENCH_PAGE);
	sl->t0 = now_ns();
	io_uring_prep_read(sqe, d->fd, sl->buf, sl->npages * BENCH_PAGE,
			   page * BENCH_PAGE);
	io_uring_sqe_set_data64(sqe, i);
}

static int complete_one(struct dev *d, const struct run_spec *s,
			struct io_uring_cqe *cqe)
{
	unsigned i = (unsigned)io_uring_cqe_get_data64(cqe);
	struct slot *sl = &d->slots[i];
	int res = cqe->res;
	uint64_t ns = now_ns() - sl->t0;

	io_uring_cqe_seen(&d->ring, cqe);
	if (res < 0)
		return res;
	if ((unsigned)res != sl->npages * BENCH_PAGE)
		return -EIO; /* short O_DIRECT read inside the file */
	if (d->lat)
		d->lat[d->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
	for (uint32_t p = 0; p < sl->npages; p++)
		d->sum += page_sum(sl->buf + p * BENCH_PAGE, sl->page + p);
	progress_add(s, 0, s->wl == WL_SEQ ? sl->npages : 1);
	d->free_slots[d->nfree++] = i;
	return 0;
}

static int dev_loop(struct dev *d, const struct run_spec *s,
		    const struct req_list *l)
{
	size_t next = 0, done = 0;
	struct io_uring_cqe *cqe;
	int err;

	while (done < l->n) {
		unsigned queued = 0;

		while (d->nfree && next < l->n) {
			submit_one(d, s, l->page[next++]);
			queued++;
		}
		if (queued && (err = io_uring_submit(&d->ring)) < 0)
			return err;
		if ((err = io_uring_wait_cqe(&d->ring, &cqe)) < 0)
			return err;
		do {
			if ((err = complete_one(d, s, cqe)) != 0)
				return err;
			done++;
		} while (io_uring_peek_cqe(&d->ring, &cqe) == 0);
	}
	return 0;
}

int engine_device_run(const struct engine *e, const struct run_spec *s,
		      struct run_result *r)
{
	struct dev d = { .fd = -1, .qd = s->qd };
	struct req_list l = { 0 };
	bool ring_up = false;
	double t0;
	int err;

	(void)e;
	d.io_bytes = s->wl == WL_SEQ ? s->seq_io : BENCH_PAGE;
	r->page_size = d.io_bytes;
	err = build_requests(s, d.io_bytes / BENCH_PAGE, &l);
	if (!err && workload_has_latency(s->wl) &&
	    !(d.lat = malloc(l.n * sizeof(*d.lat))))
		err = -ENOMEM;
	if (!err) {
		err = dev_setup(&d, s);
		ring_up = err == 0;
	}
	if (err) {
		result_fail(r, err, "device set-up: %s", strerror(-err));
	} else {
		t0 = now_sec();
		double c0 = cpu_sec();
		err = dev_loop(&d, s, &l);
		r->seconds = now_sec() - t0;
		r->cpu_seconds = cpu_sec() - c0;
		if (err)
			result_fail(r, err, "device read: %s", strerror(-err));
	}
	r->checksum = d.sum;
	r->ops = workload_ops_total(s);
	r->bytes = r->ops * BENCH_PAGE;
	r->p50_us = r->p99_us = -1;
	if (!err && d.lat)
		latency_percentiles(d.lat, d.nlat, &r->p50_us, &r->p99_us);
	dev_teardown(&d, ring_up);
	free(l.page);
	return r->error;
}
