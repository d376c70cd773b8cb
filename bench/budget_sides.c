/*
 * budget_sides.c - the two sides of upager-budget-bench, each run in a
 * child process by run_child(): upager (a runtime, a store, one region
 * with a budget, a thread watching its resident bytes) and the kernel
 * (mmap in a v1 memory cgroup). Both run the same workload functions.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "budget_bench.h"
#include "kernel_env.h"

/* ---- upager side ---- */

struct up_ctx {
	upager_t *up;
	struct result *r;
};

static void up_hint(void *ctx, uint8_t *base, size_t len, bool seq)
{
	struct up_ctx *c = ctx;
	int rc = upager_advise(c->up, base, len,
			       seq ? UPAGER_ADV_SEQUENTIAL : UPAGER_ADV_RANDOM);
	if (rc)
		fail_res(c->r, "upager_advise: %s", upager_strerror(rc));
}

static void up_sync(void *ctx, uint8_t *base, size_t len, struct result *r)
{
	struct up_ctx *c = ctx;
	int rc = upager_flush(c->up, base, len);
	if (rc)
		fail_res(r, "upager_flush: %s", upager_strerror(rc));
}

/* Polls resident_bytes while the workload runs. */
struct watcher {
	upager_t *up;
	void *addr;
	volatile bool stop;
	uint64_t max;
};

static void *watch_main(void *arg)
{
	struct watcher *w = arg;
	while (!w->stop) {
		struct upager_stats st;
		if (upager_stats(w->up, w->addr, &st) == 0 &&
		    st.resident_bytes > w->max)
			w->max = st.resident_bytes;
		usleep(2000);
	}
	return NULL;
}

void upager_side(struct result *r, const void *argp)
{
	const struct up_args *a = argp;
	upager_t *up = NULL;
	upager_store_t *s = NULL;
	uint8_t *base = NULL;
	int rc;
	if (a->cg && (rc = cg_join(a->cg))) {
		fail_res(r, "joining %s: %s", a->cg, strerror(-rc));
		return;
	}
	struct upager_config cfg = {
		.workers = O.workers,
		.flags = (O.no_follow ? UPAGER_CFG_NO_FOLLOW : 0) |
			 (O.inline_faults ? UPAGER_CFG_INLINE : 0),
	};
	rc = upager_create(&cfg, &up);
	if (rc) {
		fail_res(r, "upager_create: %s", upager_strerror(rc));
		return;
	}
	if (a->lz4) {
		struct upager_lz4_opts lo = { .size = O.size };
		rc = upager_store_lz4(&lo, NULL, &s);
	} else {
		rc = upager_store_file(a->path, UPAGER_STORE_WRITABLE |
				       (O.direct ? UPAGER_STORE_DIRECT : 0), &s);
	}
	if (rc) {
		fail_res(r, "store: %s", upager_strerror(rc));
		goto out;
	}
	struct upager_map_opts mo = {
		.page_size = a->page,
		.readahead = O.readahead,
		.flags = UPAGER_MAP_WRITEBACK,
		.max_resident = a->budget,
	};
	rc = upager_map(up, s, 0, O.size, &mo, (void **)&base);
	if (rc) {
		fail_res(r, "upager_map: %s", upager_strerror(rc));
		goto out;
	}
	struct up_ctx c = { .up = up, .r = r };
	struct side_ops so = { .hint = up_hint, .sync = up_sync, .ctx = &c };
	struct watcher w = { .up = up, .addr = base };
	pthread_t wt;
	bool watching = pthread_create(&wt, NULL, watch_main, &w) == 0;
	if (a->lz4)
		lz4_workload(base, O.size, &so, r, a->no_random);
	else
		file_workload(base, O.size, &so, r);
	if (watching) {
		w.stop = true;
		pthread_join(wt, NULL);
	}
	r->max_resident_seen = w.max;
	upager_stats(up, base, &r->st);
	if (a->lz4)
		upager_store_lz4_stats(s, &r->lz);
	rc = upager_unmap(up, base);
	if (rc)
		fail_res(r, "upager_unmap: %s", upager_strerror(rc));
out:
	upager_store_release(s);
	upager_destroy(up);
}

/* ---- kernel side ---- */

static void k_hint(void *ctx, uint8_t *base, size_t len, bool seq)
{
	(void)ctx;
	madvise(base, len, seq ? MADV_SEQUENTIAL : MADV_RANDOM);
}

static void k_sync(void *ctx, uint8_t *base, size_t len, struct result *r)
{
	(void)ctx;
	if (msync(base, len, MS_SYNC))
		fail_res(r, "msync: %s", strerror(errno));
}

void kernel_side(struct result *r, const void *argp)
{
	const struct k_args *a = argp;
	int rc = cg_join(a->cg);
	if (rc) {
		fail_res(r, "joining %s: %s", a->cg, strerror(-rc));
		return;
	}
	int fd = -1;
	if (!a->lz4) {
		fd = open(a->path, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			fail_res(r, "open %s: %s", a->path, strerror(errno));
			return;
		}
	}
	uint8_t *base = mmap(NULL, O.size, PROT_READ | PROT_WRITE,
			     a->lz4 ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_SHARED,
			     fd, 0);
	if (base == MAP_FAILED) {
		fail_res(r, "mmap: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	struct side_ops so = { .hint = k_hint, .sync = k_sync };
	if (a->lz4) {
		lz4_workload(base, O.size, &so, r, false);
		zram_mm_stat(&r->zram_orig, &r->zram_compr, &r->zram_used);
	} else {
		file_workload(base, O.size, &so, r);
	}
	munmap(base, O.size);
	if (fd >= 0)
		close(fd);
}
