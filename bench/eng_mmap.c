/*
 * eng_mmap.c - the kernel's own paging: a shared read-only mapping of the
 * file with MADV_NORMAL (mmap), MADV_SEQUENTIAL (mmap-seq) or MADV_RANDOM
 * (mmap-rand) over the whole range. rand-hinted announces each of the next
 * offsets with madvise(MADV_WILLNEED) on its 4 KiB page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

struct mmap_ctx {
	struct mem_ctx mem;
	_Atomic int hint_err;
};

static void hint_willneed(void *ctx, uint64_t page)
{
	struct mmap_ctx *m = ctx;

	if (madvise((void *)(m->mem.base + page * BENCH_PAGE), BENCH_PAGE,
		    MADV_WILLNEED) != 0)
		atomic_store_explicit(&m->hint_err, -errno, memory_order_relaxed);
}

int engine_mmap_run(const struct engine *e, const struct run_spec *s,
		    struct run_result *r)
{
	const struct access_ops ops = {
		.read_page = mem_read_page,
		.read_range = mem_read_range,
		.hint = s->wl == WL_RAND_HINTED ? hint_willneed : NULL,
	};
	struct mmap_ctx m = { 0 };
	void *addr;
	int fd, err;

	r->page_size = BENCH_PAGE;
	fd = open(s->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		result_fail(r, -errno, "open: %s", strerror(errno));
		return r->error;
	}
	addr = mmap(NULL, s->file_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (addr == MAP_FAILED) {
		result_fail(r, -errno, "mmap: %s", strerror(errno));
		return r->error;
	}
	m.mem.base = addr;
	if (madvise(addr, s->file_size, e->advice) != 0)
		result_fail(r, -errno, "madvise: %s", strerror(errno));
	else if ((err = drive_workload(s, &ops, &m, r)) != 0)
		result_fail(r, err, "workload: %s", strerror(-err));
	else if ((err = atomic_load(&m.hint_err)) != 0)
		result_fail(r, err, "madvise(MADV_WILLNEED): %s", strerror(-err));
	munmap(addr, s->file_size);
	return r->error;
}
