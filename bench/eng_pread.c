/*
 * eng_pread.c - plain buffered pread(2) into a private buffer per thread.
 * Scans read 1 MiB per call (what a sensible application scanning a file
 * does); the other workloads read each 4 KiB page with its own call.
 * rand-hinted gets no hint: the application just reads in a loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define SCAN_BYTES (256u * BENCH_PAGE) /* the driver scans 256 pages a call */

struct pread_ctx {
	int fd;
	uint8_t *buf[BENCH_MAX_THREADS];
	_Atomic int err;
};

static int read_full(struct pread_ctx *c, uint8_t *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(c->fd, buf + done, len - done, (off_t)(off + done));

		if (n <= 0) {
			atomic_store(&c->err, n < 0 ? -errno : -EIO);
			memset(buf + done, 0, len - done);
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

static uint64_t pread_page(void *ctx, unsigned t, uint64_t page)
{
	struct pread_ctx *c = ctx;

	read_full(c, c->buf[t], BENCH_PAGE, page * BENCH_PAGE);
	return page_sum(c->buf[t], page);
}

static uint64_t pread_range(void *ctx, unsigned t, uint64_t first, uint64_t n)
{
	struct pread_ctx *c = ctx;
	uint64_t sum = 0;

	read_full(c, c->buf[t], n * BENCH_PAGE, first * BENCH_PAGE);
	for (uint64_t i = 0; i < n; i++)
		sum += page_sum(c->buf[t] + i * BENCH_PAGE, first + i);
	return sum;
}

int engine_pread_run(const struct engine *e, const struct run_spec *s,
		     struct run_result *r)
{
	const struct access_ops ops = { .read_page = pread_page,
					.read_range = pread_range };
	struct pread_ctx c = { .fd = -1 };
	int err = 0;

	(void)e;
	r->page_size = (s->wl == WL_SEQ || s->wl == WL_WARM) ? SCAN_BYTES
							      : BENCH_PAGE;
	c.fd = open(s->path, O_RDONLY | O_CLOEXEC);
	if (c.fd < 0) {
		result_fail(r, -errno, "open: %s", strerror(errno));
		return r->error;
	}
	for (unsigned t = 0; t < s->threads && !err; t++)
		if (posix_memalign((void **)&c.buf[t], BENCH_PAGE, SCAN_BYTES))
			err = -ENOMEM;
	if (!err)
		err = drive_workload(s, &ops, &c, r);
	if (err)
		result_fail(r, err, "workload: %s", strerror(-err));
	else if ((err = atomic_load(&c.err)) != 0)
		result_fail(r, err, "pread: %s", strerror(-err));
	for (unsigned t = 0; t < s->threads; t++)
		free(c.buf[t]);
	close(c.fd);
	return r->error;
}
