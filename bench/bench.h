/*
 * bench.h - types shared by the parts of upager-bench.
 *
 * The parent process (main.c, runner.c) owns the plan: one run per
 * (workload, engine, threads) and repeat. Each run executes in a forked
 * child so that its peak RSS can be read from wait4() and engines cannot
 * disturb each other; the child fills a struct run_result and writes it
 * back through a pipe. Engines live in one small file each and share the
 * workload driver in workload.c, except the device engine, which issues
 * its own reads.
 *
 * Every run adds up a checksum of the 4 KiB pages it read (page_sum()
 * below, combined by addition so that order and threading do not matter);
 * the parent compares it with a reference computed with plain preads.
 */
#ifndef UPAGER_BENCH_H
#define UPAGER_BENCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BENCH_PAGE 4096u
#define BENCH_MAX_THREADS 64u
#define BENCH_MAX_ENGINES 32u
#define KIB 1024ull
#define MIB (1024ull * 1024)
#define GIB (1024ull * 1024 * 1024)

/* ---- workloads ---- */

enum workload {
	WL_SEQ,         /* cold: touch every byte, in order */
	WL_RAND,        /* cold: random 4 KiB reads */
	WL_RAND_HINTED, /* cold: random reads, next batch advised first */
	WL_STRIDE,      /* cold: every k-th page, in order */
	WL_WARM,        /* data already in memory: full scan */
	WL_COUNT
};

const char *workload_name(enum workload w);
int workload_parse(const char *name, enum workload *out);
bool workload_is_cold(enum workload w);
bool workload_has_latency(enum workload w);

/* ---- engines ---- */

enum engine_kind {
	ENG_UPAGER,
	ENG_MMAP,
	ENG_PREAD,
	ENG_DEVICE,
	ENG_RAW_UFFD,
	ENG_RAW_SIGBUS,
};

struct run_spec;
struct run_result;

struct engine {
	const char *name;
	enum engine_kind kind;
	size_t unit;     /* install unit (upager, raw-uffd) */
	int advice;      /* madvise advice (mmap) */
	bool direct;     /* upager: O_DIRECT file store */
	bool inline_faults; /* upager: UPAGER_CFG_INLINE */
	int (*run)(const struct engine *e, const struct run_spec *s,
		   struct run_result *r);
};

extern const struct engine bench_engines[];
extern const size_t bench_nengines;

bool engine_supports(const struct engine *e, enum workload w);
const struct engine *engine_find(const char *name);

int engine_upager_run(const struct engine *e, const struct run_spec *s,
		      struct run_result *r);
int engine_mmap_run(const struct engine *e, const struct run_spec *s,
		    struct run_result *r);
int engine_pread_run(const struct engine *e, const struct run_spec *s,
		     struct run_result *r);
int engine_device_run(const struct engine *e, const struct run_spec *s,
		      struct run_result *r);
int engine_raw_uffd_run(const struct engine *e, const struct run_spec *s,
			struct run_result *r);
int engine_raw_sigbus_run(const struct engine *e, const struct run_spec *s,
			  struct run_result *r);

/* ---- progress shared between a run's child and the parent ---- */

struct progress_slot {
	_Atomic uint64_t done;
	char pad[56];
};

struct progress {
	struct progress_slot slot[BENCH_MAX_THREADS];
	uint64_t total; /* ops the run will do, all threads */
};

/* ---- a run ---- */

struct run_spec {
	enum workload wl;
	const struct engine *eng;
	unsigned threads;
	const char *path;
	uint64_t file_size;
	uint64_t npages;     /* whole 4 KiB pages of the file */
	uint64_t ops;        /* rand workloads: reads per thread */
	uint64_t seed;
	unsigned stride;     /* stride workload: every k-th page */
	unsigned hint_batch; /* rand-hinted: offsets known ahead */
	size_t readahead;    /* upager map option */
	bool no_advice;      /* upager: no SEQUENTIAL/RANDOM advice */
	unsigned qd;         /* device queue depth */
	size_t seq_io;       /* device I/O size of the scans */
	unsigned timeout;    /* seconds before the child is killed */
	struct progress *progress;
};

struct run_result {
	char workload[16];
	char engine[32];
	unsigned threads;
	uint64_t page_size;  /* install unit or I/O size in bytes */
	bool cold;
	double seconds;
	double cpu_seconds;  /* CPU time of the child (every thread) meanwhile */
	uint64_t ops;        /* pages read by the application */
	uint64_t bytes;      /* bytes read by the application */
	double p50_us, p99_us; /* per-op latency; < 0 when not measured */
	uint64_t checksum;
	/* Memory: peak RSS from wait4 (parent), RSS of the child before the
	 * engine started (the bench's own pages), bytes of data resident in
	 * the engine's own region (upager, raw-uffd: mincore), and bytes of
	 * auxiliary buffers the engine allocated on purpose (the in-memory
	 * copy of the file used by warm upager and raw-uffd). */
	long peak_rss_kb;
	long base_rss_kb;
	uint64_t data_bytes;
	uint64_t aux_bytes;
	/* upager_stats() of the region, when the engine is upager. */
	bool has_stats;
	uint64_t faults, installed, fetched, prefetched;
	double fault_p50_us, fault_p99_us;
	int error;           /* 0, or a negative errno */
	char message[160];
};

/* ---- options ---- */

enum out_format { FMT_TABLE, FMT_CSV, FMT_JSON };

struct options {
	uint64_t size;
	const char *file;     /* existing file, or NULL to generate */
	const char *dir;      /* where to generate */
	bool keep;
	bool wl_on[WL_COUNT];
	bool eng_on[BENCH_MAX_ENGINES];
	unsigned threads;
	unsigned repeat;
	uint64_t ops;
	uint64_t seed;
	unsigned stride;
	unsigned hint_batch;
	size_t readahead;
	unsigned qd;
	size_t seq_io;
	unsigned timeout;
	enum out_format format;
	const char *out_dir;
	bool quiet;
	bool no_drop;         /* do not write /proc/sys/vm/drop_caches */
	bool no_reference;    /* compare engines with each other only */
	bool no_advice;       /* upager: demand faults and map readahead only */
	const char *corrupt;  /* self-test: engine whose checksum is altered */
};

int options_parse(int argc, char **argv, struct options *o);

/* ---- checksum and PRNG (inline: used in the hot loops) ---- */

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

/* Checksum of one 4 KiB page: reads all 512 words, then binds the sum to
 * the page's index so that a page read from the wrong place counts
 * differently. */
static inline uint64_t page_sum(const void *p, uint64_t page)
{
	const uint64_t *w = p;
	uint64_t s = 0;

	for (unsigned i = 0; i < BENCH_PAGE / 8; i++)
		s += w[i];
	return mix64(s ^ (page * 0x9e3779b97f4a7c15ull));
}

/* The file's bytes: word i is mix64(seed + i). */
static inline uint64_t data_word(uint64_t seed, uint64_t i)
{
	return mix64(seed + i);
}

struct rng {
	uint64_t s;
};

static inline void rng_init(struct rng *r, uint64_t seed, unsigned thread)
{
	r->s = mix64(seed ^ (0x5851f42d4c957f2dull * (thread + 1)));
}

static inline uint64_t rng_next(struct rng *r)
{
	r->s += 0x9e3779b97f4a7c15ull;
	return mix64(r->s);
}

/* ---- workload driver (workload.c) ---- */

/* How an engine reads. read_page returns page_sum() of page @page;
 * read_range returns the sum of page_sum() over [first, first + n);
 * hint (optional) announces that @page will be read soon. */
struct access_ops {
	uint64_t (*read_page)(void *ctx, unsigned thread, uint64_t page);
	uint64_t (*read_range)(void *ctx, unsigned thread, uint64_t first,
			       uint64_t n);
	void (*hint)(void *ctx, uint64_t page);
};

/* Runs spec's workload through @a, filling seconds, ops, bytes,
 * latencies and checksum of @r. Returns 0 or -errno. */
int drive_workload(const struct run_spec *s, const struct access_ops *a,
		   void *ctx, struct run_result *r);

/* Pages a workload reads, in the order thread @t reads them: calls
 * fn(arg, page) for each. The device engine and the reference use it. */
void workload_pages(const struct run_spec *s, unsigned t,
		    void (*fn)(void *arg, uint64_t page), void *arg);
uint64_t workload_ops_total(const struct run_spec *s);

void progress_add(const struct run_spec *s, unsigned t, uint64_t n);
double now_sec(void);
/* CPU time of this process, every thread (the kernel's io_uring workers
 * too), in seconds. */
double cpu_sec(void);
uint64_t now_ns(void);
/* Sorts @lat (n nanosecond samples) and stores p50/p99 in us. */
void latency_percentiles(uint32_t *lat, size_t n, double *p50, double *p99);

/* ---- shared by the engines (engines.c) ---- */

/* Engines that expose the file as memory: the context starts with the
 * address of the file's byte 0. */
struct mem_ctx {
	const uint8_t *base;
};

uint64_t mem_read_page(void *ctx, unsigned thread, uint64_t page);
uint64_t mem_read_range(void *ctx, unsigned thread, uint64_t first,
			uint64_t n);

/* Reads the whole file into a fresh buffer of @cap >= file_size bytes
 * (tail zeroed). Returns NULL and sets *err on failure. */
void *load_file_copy(const char *path, uint64_t size, size_t cap, int *err);
/* Bytes of [addr, addr + len) resident, by mincore(). */
uint64_t resident_bytes(void *addr, size_t len);
void result_fail(struct run_result *r, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- data file and page cache (datafile.c) ---- */

int datafile_pick_dir(const char *want, char *out, size_t outlen,
		      char *why, size_t whylen);
int datafile_generate(const char *path, uint64_t size, uint64_t seed,
		      bool quiet);
const char *fs_type_name(const char *path);
/* Drops the file's pages from the page cache; *method names what was
 * used. Returns 0 or -errno. */
int cache_evict(const char *path, bool allow_drop, const char **method);
/* Reads the file so that it is in the page cache. */
int cache_warm(const char *path);
/* Fraction of the file's pages in the page cache (0..1), or < 0. */
double cache_resident(const char *path);
/* Checksum a correct engine must report, computed with plain preads. */
int reference_checksum(const struct run_spec *s, uint64_t *out);

/* ---- runs (runner.c) ---- */

/* Forks a child that runs @s, and fills @r (including peak RSS). */
int runner_run(const struct run_spec *s, const char *label, bool quiet,
	       struct run_result *r);

/* ---- reporting (report.c) ---- */

struct report_meta {
	const char *path;
	uint64_t file_size;
	const char *fs_type;
	const char *evict_method;
	unsigned repeat;
	uint64_t ops;
	unsigned threads;
	unsigned qd;
	const char *cmdline;
};

void report_table(FILE *f, const struct report_meta *m,
		  const struct run_result *r, size_t n);
void report_csv(FILE *f, const struct run_result *r, size_t n);
void report_json(FILE *f, const struct report_meta *m,
		 const struct run_result *r, size_t n);
void report_goals(FILE *f, const struct run_result *r, size_t n);

#endif /* UPAGER_BENCH_H */
