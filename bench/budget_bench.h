/*
 * budget_bench.h - what the parts of upager-budget-bench share: options,
 * the phases and results a side's child sends back, running a side in a
 * child, the two sides (budget_sides.c), the report, and the two
 * comparisons (budget_lz4.c, budget_file.c). budget_bench.c has main().
 */
#ifndef UPAGER_BUDGET_BENCH_H
#define UPAGER_BUDGET_BENCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "upager.h"

#define KIB 1024ull
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)
#define PG 4096u
#define POOL_PAGES 1024u
#define CHILD_TIMEOUT_S 900

struct opts {
	uint64_t budget, size;
	uint64_t ops, file_ops, file_write_every;
	size_t page, seq_page, file_page, readahead;
	uint64_t headroom;
	bool headroom_auto; /* not given; 0 when the budget leaves no room */
	unsigned workers;
	const char *dir;
	bool csv, direct, inline_faults;
	bool do_lz4, do_file, kernel, no_follow;
};

extern struct opts O;

/* ---- helpers (budget_bench.c) ---- */

void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double now_s(void);
double cpu_s(void);
/* Page @pg of the data set (text-like), into dst (PG bytes). */
void gen_page(uint8_t *dst, uint64_t pg);
/* An 8-byte text-like word for a write (keeps pages compressible). */
uint64_t text_word(uint64_t r);

/* Set by SIGINT, SIGTERM or SIGHUP: stop after the running child. */
extern volatile sig_atomic_t stop_flag;
/* A checksum or file differed; a side failed (exit status 1). */
extern bool any_mismatch, any_failed;

/* ---- results passed from a child to the parent ---- */

/* PH_SCAN and PH_FULL are the file comparison's only: a sequential read
 * of the whole region, and random read/write after it (the budget full). */
enum { PH_FILL, PH_RAND, PH_SEQ, PH_SCAN, PH_FULL, PH_N };

struct phase {
	double secs;     /* the whole phase, sync included */
	double sync_secs; /* of which the flush (upager) or msync (kernel) */
	double cpu_secs, sync_cpu_secs; /* process CPU time of the same */
	uint64_t units;  /* pages touched or bytes moved */
	uint64_t sum;    /* checksum of the words read */
	bool ran;
};

struct result {
	bool ok;
	char err[200];
	struct phase ph[PH_N];
	/* upager side */
	struct upager_stats st;
	struct upager_lz4_stats lz;
	uint64_t max_resident_seen;
	/* kernel side */
	uint64_t zram_orig, zram_compr, zram_used;
	/* both */
	long peak_rss_kib;
};

void fail_res(struct result *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

typedef void (*side_fn)(struct result *r, const void *arg);
/* Runs fn in a child process and returns its result. */
bool run_child(side_fn fn, const void *arg, struct result *out);

/* ---- workloads (run in the children, on any memory) ---- */

/* Hints for a phase: upager advice or madvise, by side. */
struct side_ops {
	void (*hint)(void *ctx, uint8_t *base, size_t len, bool seq);
	void (*sync)(void *ctx, uint8_t *base, size_t len, struct result *r);
	void *ctx;
};

void phase_fill(uint8_t *base, size_t len, struct phase *ph);
/* Random 4 KiB page touches from @seed: a word read from each, one in
 * @write_every also writes a word (none if 0). */
void phase_random(uint8_t *base, size_t len, uint64_t ops,
		  unsigned write_every, uint64_t seed, struct phase *ph);
void phase_scan(uint8_t *base, size_t len, struct phase *ph);
void lz4_workload(uint8_t *base, size_t len, const struct side_ops *so,
		  struct result *r, bool no_random);
void file_workload(uint8_t *base, size_t len, const struct side_ops *so,
		   struct result *r);

/* ---- the two sides (budget_sides.c), each run by run_child() ---- */

struct up_args {
	bool lz4;        /* else the file comparison */
	size_t page;     /* install unit */
	bool no_random;  /* lz4: fill and scan only */
	const char *path;
	const char *cg;  /* cgroup to join, or NULL */
	uint64_t budget;
};
void upager_side(struct result *r, const void *argp);

struct k_args {
	bool lz4;
	const char *path;
	const char *cg;
};
void kernel_side(struct result *r, const void *argp);

/* ---- report (budget_bench.c) ---- */

/* One row of the table (or CSV): upager's phase @u against the kernel's
 * @k, which counts only if @k_ok; @kwhy follows the row when it does
 * not. */
void row(const char *cmp, const char *work, const char *unit,
	 const struct phase *u, const struct phase *k, bool k_ok,
	 const char *kwhy);
void check_sums(const char *what, const struct result *u,
		const struct result *k);
/* Whether the kernel side can run here; if not, why. */
bool kernel_possible(char *why, size_t wl);

/* ---- the comparisons ---- */

void compare_lz4(void);  /* budget_lz4.c */
void compare_file(void); /* budget_file.c */

#endif
