/*
 * eng_upager.c - the upager engines, through the public API only.
 *
 * One runtime with default options, one region over the whole file with
 * the engine's install unit. Cold workloads read from a file store
 * (buffered, or O_DIRECT for the -direct engines); the warm workload reads
 * from a custom store over a malloc'ed copy of the file, so that only the
 * fault path is measured: its map callback hands upager the copy itself,
 * which is installed from directly (read, copying into upager's buffer,
 * is there only as the fallback the API requires).
 *
 * Advice follows what the application knows, as mmap-seq and mmap-rand
 * get theirs: seq and warm advise SEQUENTIAL, rand and rand-hinted
 * RANDOM, stride keeps the region's own readahead (the map option).
 * --no-advice leaves only the map option (with --readahead 0, every unit
 * is a demand fault: the fault path alone, as raw-uffd measures it).
 * rand-hinted announces each of the next offsets with one
 * upager_advise(WILLNEED) call per 4 KiB page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "upager.h"

struct mem_copy {
	const uint8_t *data;
	uint64_t size;
};

struct upager_ctx {
	struct mem_ctx mem; /* first: the shared memory readers use it */
	upager_t *up;
	_Atomic int advise_err;
};

static int copy_read(void *ctx, void *buf, size_t len, uint64_t offset)
{
	const struct mem_copy *c = ctx;
	size_t n = 0;

	if (offset < c->size)
		n = c->size - offset < len ? c->size - offset : len;
	memcpy(buf, c->data + offset, n);
	memset((uint8_t *)buf + n, 0, len - n);
	return 0;
}

/* Zero-copy: upager installs straight from the copy (raw-uffd's one
 * copy per page). Past the copy's end it declines: read pads with zeros. */
static const void *copy_map(void *ctx, size_t len, uint64_t offset)
{
	const struct mem_copy *c = ctx;

	if (offset > c->size || c->size - offset < len)
		return NULL;
	return c->data + offset;
}

static int copy_size(void *ctx, uint64_t *size)
{
	*size = ((const struct mem_copy *)ctx)->size;
	return 0;
}

static void hint_willneed(void *ctx, uint64_t page)
{
	struct upager_ctx *u = ctx;
	int err = upager_advise(u->up, (void *)(u->mem.base + page * BENCH_PAGE),
				BENCH_PAGE, UPAGER_ADV_WILLNEED);

	if (err)
		atomic_store_explicit(&u->advise_err, err, memory_order_relaxed);
}

static int open_store(const struct engine *e, const struct run_spec *s,
		      struct mem_copy *copy, upager_store_t **store,
		      struct run_result *r)
{
	static const struct upager_store_ops ops = {
		.read = copy_read,
		.size = copy_size,
		.map = copy_map,
	};
	int err;

	if (s->wl != WL_WARM) {
		err = upager_store_file(s->path, e->direct ? UPAGER_STORE_DIRECT : 0,
					store);
		if (err)
			result_fail(r, err, "upager_store_file: %s",
				    upager_strerror(err));
		return err;
	}
	copy->size = s->file_size;
	copy->data = load_file_copy(s->path, s->file_size, s->file_size, &err);
	if (!copy->data) {
		result_fail(r, err, "reading the file: %s", strerror(-err));
		return err;
	}
	r->aux_bytes = s->file_size;
	err = upager_store_custom(&ops, copy, store);
	if (err)
		result_fail(r, err, "upager_store_custom: %s", upager_strerror(err));
	return err;
}

static int advice_for(enum workload w)
{
	switch (w) {
	case WL_SEQ:
	case WL_WARM:
		return UPAGER_ADV_SEQUENTIAL;
	case WL_RAND:
	case WL_RAND_HINTED:
		return UPAGER_ADV_RANDOM;
	default:
		return UPAGER_ADV_NORMAL;
	}
}

static void take_stats(struct upager_ctx *u, void *addr, struct run_result *r)
{
	struct upager_stats st;

	if (upager_stats(u->up, addr, &st) != 0)
		return;
	r->has_stats = true;
	r->faults = st.faults;
	r->installed = st.pages_installed;
	r->fetched = st.bytes_fetched;
	r->prefetched = st.prefetched;
	r->fault_p50_us = (double)upager_stats_percentile(&st, 50);
	r->fault_p99_us = (double)upager_stats_percentile(&st, 99);
}

static int run_mapped(const struct engine *e, const struct run_spec *s,
		      upager_store_t *store, struct upager_ctx *u,
		      struct run_result *r)
{
	const struct access_ops ops = {
		.read_page = mem_read_page,
		.read_range = mem_read_range,
		.hint = s->wl == WL_RAND_HINTED ? hint_willneed : NULL,
	};
	struct upager_map_opts mo = { .page_size = e->unit,
				      .readahead = s->readahead };
	size_t span = (s->file_size + e->unit - 1) / e->unit * e->unit;
	void *addr;
	int err;

	err = upager_map(u->up, store, 0, s->file_size, &mo, &addr);
	if (err) {
		result_fail(r, err, "upager_map: %s", upager_strerror(err));
		return err;
	}
	u->mem.base = addr;
	if (!s->no_advice)
		err = upager_advise(u->up, addr, s->file_size, advice_for(s->wl));
	if (err)
		result_fail(r, err, "upager_advise: %s", upager_strerror(err));
	if (!err)
		err = drive_workload(s, &ops, u, r);
	if (err)
		result_fail(r, err, "workload: %s", strerror(-err));
	if ((err = atomic_load(&u->advise_err)))
		result_fail(r, err, "upager_advise(WILLNEED): %s",
			    upager_strerror(err));
	take_stats(u, addr, r);
	r->data_bytes = resident_bytes(addr, span);
	upager_unmap(u->up, addr);
	return r->error;
}

int engine_upager_run(const struct engine *e, const struct run_spec *s,
		      struct run_result *r)
{
	struct mem_copy copy = { 0 };
	struct upager_ctx u = { 0 };
	upager_store_t *store = NULL;
	int err;

	r->page_size = e->unit;
	struct upager_config cfg = {
		.flags = e->inline_faults ? UPAGER_CFG_INLINE : 0,
	};
	err = upager_create(&cfg, &u.up);
	if (err) {
		result_fail(r, err, "upager_create: %s", upager_strerror(err));
		return err;
	}
	err = open_store(e, s, &copy, &store, r);
	if (!err)
		err = run_mapped(e, s, store, &u, r);
	upager_store_release(store);
	upager_destroy(u.up);
	free((void *)copy.data);
	return err;
}
