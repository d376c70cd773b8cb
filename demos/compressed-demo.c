/*
 * compressed-demo.c - a data set four times the memory it may use, kept in
 * an anonymous upager region whose cold pages are compressed with lz4 in
 * memory (user-space zswap).
 *
 * The region is mapped with UPAGER_MAP_WRITEBACK over an lz4 store used
 * alone and a resident budget (max_resident): when the region holds too
 * much, upager evicts the least recently faulted pages into the compressed
 * store, and a later touch decompresses them back. The program fills the
 * region with text-like pages, then runs passes of random page touches
 * (some of which write) and sequential scans, printing once a second the
 * resident memory, evictions, what the lz4 store holds and its ratio, and
 * the throughput. At the end it checks every byte against what it wrote
 * (pages are regenerated; each page carries a write counter) and exits 1
 * on any difference. Uses the public API only.
 *
 * usage: upager-compressed-demo [--size 1G] [--budget 256M] [--passes 4]
 *                               [--ops N] [--page 4K] [--inline]
 * Every value is a number in the syntax of cli/size.h (suffixes K, M, G,
 * T: powers of 1024), and must be positive. --inline creates the runtime
 * with UPAGER_CFG_INLINE: each fault is decompressed by the thread that
 * made it, with no hand-off to the manager thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <upager.h>
#include "size.h"
#include "textpool.h"

#define PG 4096u
#define MIB ((uint64_t)1 << 20)
#define POOL_PAGES 512u
#define COUNTER_OFF 8u /* bytes 8..15 of a page: how often it was written */

static uint64_t size_opt = 1024 * MIB, budget_opt = 256 * MIB, ops_opt;
static unsigned passes_opt = 4;
static size_t page_opt = PG;
static bool inline_opt;

static uint8_t *pool;
static uint32_t *writes; /* per page: times the random passes wrote it */

/* Progress shared with the reporter thread. */
static atomic_uint_fast64_t progress_bytes;
static _Atomic(const char *) phase_name;
static atomic_bool done;

struct ctx {
	upager_t *up;
	upager_store_t *store;
	uint8_t *base;
	double t0;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int make_pool(void)
{
	pool = textpool_make(POOL_PAGES, 42);
	return pool ? 0 : -ENOMEM;
}

/* What page pg must hold: a pool page, its number, its write counter. */
static void expected_page(uint8_t *dst, uint64_t pg)
{
	memcpy(dst, pool + (textpool_mix64(pg) % POOL_PAGES) * PG, PG);
	uint64_t cnt = writes[pg];
	memcpy(dst, &pg, 8);
	memcpy(dst + COUNTER_OFF, &cnt, 8);
}

/* ---- the reporter: one line a second ---- */

static void *reporter(void *arg)
{
	struct ctx *c = arg;
	uint64_t last_bytes = 0;
	double last_t = now_s();
	while (!atomic_load(&done)) {
		for (int i = 0; i < 20 && !atomic_load(&done); i++)
			usleep(50000);
		struct upager_stats st;
		struct upager_lz4_stats lz;
		if (upager_stats(c->up, c->base, &st) ||
		    upager_store_lz4_stats(c->store, &lz))
			continue;
		double t = now_s();
		uint64_t b = atomic_load(&progress_bytes);
		double rate = (double)(b - last_bytes) / (t - last_t) / 1e6;
		printf("[%6.1fs] %-10s resident %5" PRIu64 " MiB  evictions "
		       "%9" PRIu64 "  lz4 holds %5" PRIu64 " MiB in %5" PRIu64
		       " MiB (ratio %.2f)  %8.1f MB/s\n",
		       t - c->t0, atomic_load(&phase_name),
		       st.resident_bytes / MIB, st.evictions,
		       lz.bytes_logical / MIB, lz.bytes_stored / MIB,
		       lz.ratio, rate);
		fflush(stdout);
		last_bytes = b;
		last_t = t;
	}
	return NULL;
}

/* ---- passes ---- */

struct tally {
	const char *name;
	double secs;
	uint64_t bytes;
};

static struct tally tallies[64];
static unsigned ntallies;

static void begin(const char *name)
{
	atomic_store(&phase_name, name);
}

static void end(const char *name, double t0, uint64_t bytes)
{
	if (ntallies < 64)
		tallies[ntallies++] = (struct tally){ name, now_s() - t0, bytes };
}

static void fill(uint8_t *base, uint64_t npages)
{
	begin("fill");
	double t0 = now_s();
	for (uint64_t pg = 0; pg < npages; pg++) {
		expected_page(base + pg * PG, pg);
		atomic_fetch_add_explicit(&progress_bytes, PG,
					  memory_order_relaxed);
	}
	end("fill", t0, npages * PG);
}

/* Random 4 KiB page touches; one in four bumps the page's counter. */
static uint64_t random_pass(uint8_t *base, uint64_t npages, uint64_t ops,
			    uint64_t seed)
{
	begin("random");
	uint64_t s = seed | 1, sum = 0;
	double t0 = now_s();
	for (uint64_t i = 0; i < ops; i++) {
		uint64_t r = textpool_rnd(&s), pg = r % npages;
		uint8_t *p = base + pg * PG;
		sum += *(volatile uint64_t *)(p + ((r >> 40) % (PG / 8)) * 8);
		if ((r >> 20) % 4 == 0) {
			uint64_t cnt;
			memcpy(&cnt, p + COUNTER_OFF, 8);
			cnt++;
			memcpy(p + COUNTER_OFF, &cnt, 8);
			writes[pg]++;
		}
		atomic_fetch_add_explicit(&progress_bytes, PG,
					  memory_order_relaxed);
	}
	end("random", t0, ops * PG);
	return sum;
}

static uint64_t seq_pass(uint8_t *base, uint64_t len)
{
	begin("sequential");
	uint64_t sum = 0;
	double t0 = now_s();
	for (uint64_t off = 0; off < len; off += PG) {
		for (unsigned k = 0; k < PG; k += 64)
			sum += *(volatile uint64_t *)(base + off + k);
		atomic_fetch_add_explicit(&progress_bytes, PG,
					  memory_order_relaxed);
	}
	end("sequential", t0, len);
	return sum;
}

/* Every page against its expected bytes. Returns the pages that differ. */
static uint64_t verify(uint8_t *base, uint64_t npages)
{
	begin("verify");
	uint8_t want[PG];
	uint64_t bad = 0;
	double t0 = now_s();
	for (uint64_t pg = 0; pg < npages; pg++) {
		expected_page(want, pg);
		if (memcmp(base + pg * PG, want, PG)) {
			if (bad < 5)
				fprintf(stderr, "page %" PRIu64 " differs\n",
					pg);
			bad++;
		}
		atomic_fetch_add_explicit(&progress_bytes, PG,
					  memory_order_relaxed);
	}
	end("verify", t0, npages * PG);
	return bad;
}

/* ---- main ---- */

/* Every option of this demo is a count or a size that must be positive. */
static bool parse_size(const char *s, uint64_t *out)
{
	uint64_t v;

	if (cli_parse_size(s, &v) || v == 0)
		return false;
	*out = v;
	return true;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: upager-compressed-demo [--size 1G] [--budget 256M] "
		   "[--passes 4] [--ops N] [--page 4K] [--inline]\n"
		   "  --ops: random page touches per random pass "
		   "(default: as many as the data set has pages)\n"
		   "  --inline: faults served by the faulting thread "
		   "(UPAGER_CFG_INLINE)\n"
		   "  values are decimal, with an optional K, M, G or T "
		   "(powers of 1024;\n  also KiB or KB, any case)\n");
}

static void parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "size", required_argument, 0, 's' },
		{ "budget", required_argument, 0, 'b' },
		{ "passes", required_argument, 0, 'p' },
		{ "ops", required_argument, 0, 'o' },
		{ "page", required_argument, 0, 'u' },
		{ "inline", no_argument, 0, 'i' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case 's': ok = parse_size(optarg, &size_opt); break;
		case 'b': ok = parse_size(optarg, &budget_opt); break;
		case 'o': ok = parse_size(optarg, &ops_opt); break;
		case 'p':
			ok = parse_size(optarg, &v) && v <= 1000;
			passes_opt = (unsigned)v;
			break;
		case 'u':
			ok = parse_size(optarg, &v) && v >= PG &&
			     v <= UPAGER_PAGE_SIZE_MAX && !(v & (v - 1));
			page_opt = (size_t)v;
			break;
		case 'i': inline_opt = true; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
		if (!ok) {
			fprintf(stderr, "bad value '%s'\n", optarg);
			exit(2);
		}
	}
	size_opt &= ~(uint64_t)(page_opt - 1);
	if (optind < argc || size_opt == 0 || budget_opt < page_opt) {
		usage(stderr);
		exit(2);
	}
	if (!ops_opt)
		ops_opt = size_opt / PG;
}

/* Sets up runtime, store and region. Returns 0, 77 (skip) or 1. */
static int setup(struct ctx *c)
{
	struct upager_config cfg = {
		.flags = inline_opt ? UPAGER_CFG_INLINE : 0,
	};
	int rc = upager_create(&cfg, &c->up);
	if (rc == -EPERM || rc == -ENOSYS || rc == -EOPNOTSUPP) {
		printf("skipped: userfaultfd unavailable: %s\n",
		       upager_strerror(rc));
		return 77;
	}
	if (rc) {
		fprintf(stderr, "upager_create: %s\n", upager_strerror(rc));
		return 1;
	}
	struct upager_lz4_opts lo = { .size = size_opt };
	rc = upager_store_lz4(&lo, NULL, &c->store);
	if (rc) {
		fprintf(stderr, "upager_store_lz4: %s\n", upager_strerror(rc));
		return 1;
	}
	struct upager_map_opts mo = {
		.page_size = page_opt,
		.readahead = 1 * MIB,
		.flags = UPAGER_MAP_WRITEBACK,
		.max_resident = budget_opt,
	};
	rc = upager_map(c->up, c->store, 0, size_opt, &mo, (void **)&c->base);
	if (rc == -EOPNOTSUPP) {
		printf("skipped: userfaultfd write-protection unavailable\n");
		return 77;
	}
	if (rc) {
		fprintf(stderr, "upager_map: %s\n", upager_strerror(rc));
		return 1;
	}
	return 0;
}

static void summary(struct ctx *c, uint64_t bad, uint64_t npages)
{
	struct upager_stats st;
	struct upager_lz4_stats lz;
	upager_stats(c->up, c->base, &st);
	upager_store_lz4_stats(c->store, &lz);
	printf("\nsummary: %" PRIu64 " MiB of data in a budget of %" PRIu64
	       " MiB (unit %zu KiB)\n", size_opt / MIB, budget_opt / MIB,
	       page_opt / 1024);
	for (unsigned i = 0; i < ntallies; i++)
		printf("  %-10s %8.2f s %10.1f MB/s\n", tallies[i].name,
		       tallies[i].secs,
		       (double)tallies[i].bytes / tallies[i].secs / 1e6);
	printf("  faults %" PRIu64 ", evictions %" PRIu64 ", write-backs %"
	       PRIu64 ", resident now %" PRIu64 " MiB, p99 fault %" PRIu64
	       " us\n", st.faults, st.evictions, st.writebacks,
	       st.resident_bytes / MIB, upager_stats_percentile(&st, 99));
	printf("  lz4: %" PRIu64 " blocks, %" PRIu64 " MiB held in %" PRIu64
	       " MiB (ratio %.2f), allocator %" PRIu64 " MiB, %" PRIu64
	       " stored raw; %" PRIu64 " write-backs found unchanged\n",
	       lz.blocks, lz.bytes_logical / MIB, lz.bytes_stored / MIB,
	       lz.ratio, lz.bytes_allocated / MIB, lz.raw_blocks,
	       lz.unchanged);
	printf("  memory in use: %" PRIu64 " MiB resident + %" PRIu64
	       " MiB compressed = %.0f%% of the data set\n",
	       st.resident_bytes / MIB, lz.bytes_allocated / MIB,
	       100.0 * (double)(st.resident_bytes + lz.bytes_allocated) /
		       (double)size_opt);
	printf("  verification: %s (%" PRIu64 " pages checked",
	       bad ? "FAILED" : "every byte matches", npages);
	if (bad)
		printf(", %" PRIu64 " differ", bad);
	printf(")\n");
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	uint64_t npages = size_opt / PG;
	writes = calloc(npages, sizeof(*writes));
	if (!writes || make_pool()) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	struct ctx c = { 0 };
	int rc = setup(&c);
	if (rc) {
		upager_store_release(c.store);
		upager_destroy(c.up);
		return rc;
	}
	printf("upager %s: %" PRIu64 " MiB of text-like data in a region "
	       "allowed %" PRIu64 " MiB resident; cold pages go to an lz4 "
	       "store in memory\n", upager_version(), size_opt / MIB,
	       budget_opt / MIB);
	c.t0 = now_s();
	atomic_store(&phase_name, "start");
	pthread_t rep;
	bool reporting = pthread_create(&rep, NULL, reporter, &c) == 0;

	fill(c.base, npages);
	uint64_t sink = 0;
	for (unsigned p = 0; p < passes_opt; p++) {
		if (p % 2 == 0) {
			upager_advise(c.up, c.base, size_opt, UPAGER_ADV_RANDOM);
			sink += random_pass(c.base, npages, ops_opt, p + 1);
		} else {
			upager_advise(c.up, c.base, size_opt,
				      UPAGER_ADV_SEQUENTIAL);
			sink += seq_pass(c.base, size_opt);
		}
	}
	upager_advise(c.up, c.base, size_opt, UPAGER_ADV_SEQUENTIAL);
	uint64_t bad = verify(c.base, npages);
	atomic_store(&done, true);
	if (reporting)
		pthread_join(rep, NULL);
	summary(&c, bad, npages);
	if (sink == 42) /* keep the reads */
		printf(" \n");

	/* Nothing to keep: discard instead of writing back on unmap. */
	upager_advise(c.up, c.base, size_opt, UPAGER_ADV_DISCARD);
	rc = upager_unmap(c.up, c.base);
	if (rc)
		fprintf(stderr, "upager_unmap: %s\n", upager_strerror(rc));
	upager_store_release(c.store);
	upager_destroy(c.up);
	free(writes);
	free(pool);
	return bad || rc ? 1 : 0;
}
