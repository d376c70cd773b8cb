/*
 * workload.c - the workloads, run by the application threads of one run.
 *
 * Owns which pages each workload reads and in what order (the same for
 * every engine, so that checksums compare), the application threads, the
 * timing of the whole run and of each read, and the progress counters the
 * parent process polls. Engines plug in through struct access_ops; the
 * device engine, which cannot read page by page, walks the same pages
 * with workload_pages().
 *
 * Per-read latency is taken with clock_gettime around each read of the
 * rand, rand-hinted and stride workloads only: on the full scans (seq,
 * warm) a timer per 4 KiB page would cost as much as the warm read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

static const char *const wl_names[WL_COUNT] = {
	[WL_SEQ] = "seq",
	[WL_RAND] = "rand",
	[WL_RAND_HINTED] = "rand-hinted",
	[WL_STRIDE] = "stride",
	[WL_WARM] = "warm",
};

const char *workload_name(enum workload w)
{
	return w < WL_COUNT ? wl_names[w] : "?";
}

int workload_parse(const char *name, enum workload *out)
{
	for (int w = 0; w < WL_COUNT; w++) {
		if (strcmp(name, wl_names[w]) == 0) {
			*out = (enum workload)w;
			return 0;
		}
	}
	return -EINVAL;
}

bool workload_is_cold(enum workload w)
{
	return w != WL_WARM;
}

bool workload_has_latency(enum workload w)
{
	return w == WL_RAND || w == WL_RAND_HINTED || w == WL_STRIDE;
}

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double now_sec(void)
{
	return (double)now_ns() / 1e9;
}

double cpu_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void progress_add(const struct run_spec *s, unsigned t, uint64_t n)
{
	if (s->progress && t < BENCH_MAX_THREADS)
		atomic_fetch_add_explicit(&s->progress->slot[t].done, n,
					  memory_order_relaxed);
}

static uint64_t stride_count(const struct run_spec *s)
{
	return (s->npages + s->stride - 1) / s->stride;
}

uint64_t workload_ops_total(const struct run_spec *s)
{
	switch (s->wl) {
	case WL_SEQ:
	case WL_WARM:
		return s->npages;
	case WL_STRIDE:
		return stride_count(s);
	case WL_RAND:
	case WL_RAND_HINTED:
		return s->ops * s->threads;
	default:
		return 0;
	}
}

void workload_pages(const struct run_spec *s, unsigned t,
		    void (*fn)(void *arg, uint64_t page), void *arg)
{
	struct rng rng;

	switch (s->wl) {
	case WL_SEQ:
	case WL_WARM:
		if (t == 0)
			for (uint64_t p = 0; p < s->npages; p++)
				fn(arg, p);
		break;
	case WL_STRIDE:
		if (t == 0)
			for (uint64_t p = 0; p < s->npages; p += s->stride)
				fn(arg, p);
		break;
	case WL_RAND:
	case WL_RAND_HINTED:
		rng_init(&rng, s->seed, t);
		for (uint64_t i = 0; i < s->ops; i++)
			fn(arg, rng_next(&rng) % s->npages);
		break;
	default:
		break;
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

void latency_percentiles(uint32_t *lat, size_t n, double *p50, double *p99)
{
	if (n == 0) {
		*p50 = *p99 = -1;
		return;
	}
	qsort(lat, n, sizeof(*lat), cmp_u32);
	*p50 = lat[(n - 1) * 50 / 100] / 1000.0;
	*p99 = lat[(n - 1) * 99 / 100] / 1000.0;
}

/* ---- application threads ---- */

/* Start gate: threads wait until the run starts (go = 1) or is called
 * off because a sibling could not be created (go = -1). */
struct gate {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	int go;
};

struct app_thread {
	pthread_t tid;
	unsigned t;
	const struct run_spec *s;
	const struct access_ops *a;
	void *ctx;
	struct gate *gate;
	uint32_t *lat;   /* one sample per timed read */
	size_t nlat;
	uint64_t *batch; /* rand-hinted: the offsets known ahead */
	uint64_t sum;
};

static int gate_wait(struct gate *g)
{
	int go;

	pthread_mutex_lock(&g->lock);
	while (g->go == 0)
		pthread_cond_wait(&g->cv, &g->lock);
	go = g->go;
	pthread_mutex_unlock(&g->lock);
	return go;
}

static void gate_open(struct gate *g, int go)
{
	pthread_mutex_lock(&g->lock);
	g->go = go;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->lock);
}

static inline uint32_t clamp_ns(uint64_t ns)
{
	return ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void run_scan(struct app_thread *at)
{
	const struct run_spec *s = at->s;
	const uint64_t chunk = 256; /* 1 MiB between progress updates */

	for (uint64_t p = 0; p < s->npages; p += chunk) {
		uint64_t n = s->npages - p < chunk ? s->npages - p : chunk;

		at->sum += at->a->read_range(at->ctx, at->t, p, n);
		progress_add(s, at->t, n);
	}
}

static inline void timed_read(struct app_thread *at, uint64_t page)
{
	uint64_t t0 = now_ns();

	at->sum += at->a->read_page(at->ctx, at->t, page);
	at->lat[at->nlat++] = clamp_ns(now_ns() - t0);
}

static void run_stride(struct app_thread *at)
{
	const struct run_spec *s = at->s;

	for (uint64_t p = 0; p < s->npages; p += s->stride) {
		timed_read(at, p);
		progress_add(s, at->t, 1);
	}
}

static void run_rand(struct app_thread *at)
{
	const struct run_spec *s = at->s;
	struct rng rng;

	rng_init(&rng, s->seed, at->t);
	for (uint64_t i = 0; i < s->ops; i++) {
		timed_read(at, rng_next(&rng) % s->npages);
		if ((i & 63) == 63)
			progress_add(s, at->t, 64);
	}
	progress_add(s, at->t, s->ops & 63);
}

/* The application knows its next hint_batch offsets: it announces all of
 * them (one hint per 4 KiB page), then reads them. */
static void run_hinted(struct app_thread *at)
{
	const struct run_spec *s = at->s;
	uint64_t *batch = at->batch;
	struct rng rng;

	rng_init(&rng, s->seed, at->t);
	for (uint64_t i = 0; i < s->ops; i += s->hint_batch) {
		uint64_t n = s->ops - i < s->hint_batch ? s->ops - i
							 : s->hint_batch;

		for (uint64_t j = 0; j < n; j++)
			batch[j] = rng_next(&rng) % s->npages;
		if (at->a->hint)
			for (uint64_t j = 0; j < n; j++)
				at->a->hint(at->ctx, batch[j]);
		for (uint64_t j = 0; j < n; j++)
			timed_read(at, batch[j]);
		progress_add(s, at->t, n);
	}
}

static void *app_main(void *arg)
{
	struct app_thread *at = arg;

	if (gate_wait(at->gate) < 0)
		return NULL;
	switch (at->s->wl) {
	case WL_SEQ:
	case WL_WARM:
		run_scan(at);
		break;
	case WL_STRIDE:
		run_stride(at);
		break;
	case WL_RAND:
		run_rand(at);
		break;
	case WL_RAND_HINTED:
		run_hinted(at);
		break;
	default:
		break;
	}
	return NULL;
}

static size_t lat_capacity(const struct run_spec *s)
{
	switch (s->wl) {
	case WL_STRIDE:
		return stride_count(s);
	case WL_RAND:
	case WL_RAND_HINTED:
		return s->ops;
	default:
		return 0;
	}
}

static void collect(const struct run_spec *s, struct app_thread *at,
		    unsigned n, struct run_result *r)
{
	size_t total = 0;
	uint32_t *all;

	r->checksum = 0;
	for (unsigned i = 0; i < n; i++) {
		r->checksum += at[i].sum;
		total += at[i].nlat;
	}
	r->ops = workload_ops_total(s);
	r->bytes = r->ops * BENCH_PAGE;
	r->p50_us = r->p99_us = -1;
	if (!workload_has_latency(s->wl) || total == 0)
		return;
	all = malloc(total * sizeof(*all));
	if (!all)
		return;
	total = 0;
	for (unsigned i = 0; i < n; i++) {
		memcpy(all + total, at[i].lat, at[i].nlat * sizeof(*all));
		total += at[i].nlat;
	}
	latency_percentiles(all, total, &r->p50_us, &r->p99_us);
	free(all);
}

static void free_threads(struct app_thread *at, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		free(at[i].lat);
		free(at[i].batch);
	}
	free(at);
}

int drive_workload(const struct run_spec *s, const struct access_ops *a,
		   void *ctx, struct run_result *r)
{
	unsigned n = (s->wl == WL_RAND || s->wl == WL_RAND_HINTED) ? s->threads : 1;
	size_t cap = lat_capacity(s);
	struct app_thread *at = calloc(n, sizeof(*at));
	struct gate gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	unsigned started = 0;
	double t0;
	int err = 0;

	if (!at)
		return -ENOMEM;
	for (unsigned i = 0; i < n && !err; i++) {
		at[i] = (struct app_thread){ .t = i, .s = s, .a = a, .ctx = ctx,
					     .gate = &gate };
		if (cap && !(at[i].lat = malloc(cap * sizeof(uint32_t))))
			err = -ENOMEM;
		if (s->wl == WL_RAND_HINTED &&
		    !(at[i].batch = malloc(s->hint_batch * sizeof(uint64_t))))
			err = -ENOMEM;
	}
	for (unsigned i = 0; !err && i < n; i++) {
		err = -pthread_create(&at[i].tid, NULL, app_main, &at[i]);
		if (!err)
			started++;
	}
	t0 = now_sec();
	double c0 = cpu_sec();
	gate_open(&gate, err ? -1 : 1);
	for (unsigned i = 0; i < started; i++)
		pthread_join(at[i].tid, NULL);
	r->seconds = now_sec() - t0;
	r->cpu_seconds = cpu_sec() - c0;
	if (!err)
		collect(s, at, n, r);
	free_threads(at, n);
	return err;
}
