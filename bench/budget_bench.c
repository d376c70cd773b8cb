/*
 * budget_bench.c - upager-budget-bench: a data set four times the memory it
 * may use, served by upager and by the kernel's own answer, side by side.
 *
 * Comparison 1, compressed memory: an anonymous region on an lz4 store
 * (UPAGER_MAP_WRITEBACK, max_resident = budget: evicted pages are
 * compressed in memory) against anonymous memory in a v1 memory cgroup
 * whose limit is the budget, swapping to a zram device with lz4. Workloads:
 * a sequential fill (write), random 4 KiB page touches (reads, one in ten
 * also writes), and sequential scans.
 *
 * Comparison 2, writable file: a WRITEBACK region over a writable file
 * store against mmap(MAP_SHARED) of the same file, each in a v1 memory
 * cgroup limited to the budget (upager's own max_resident is the limit
 * minus --headroom, so the whole process, page cache included, fits the
 * same limit; its install unit is --file-page-size, 4 KiB by default).
 * Workloads: random read/write of 4 KiB pages of the cold region (which
 * stays under its budget), a sequential read of the whole file (which
 * fills it), random read/write again with the budget full, and a
 * sequential write of the whole file; the random and write phases end
 * with upager_flush or msync(MS_SYNC), which is timed.
 *
 * Every side runs in its own child process, so one side's memory never
 * helps the other. Both sides see the same data (text-like pages built from
 * a pool of generated words, so lz4 compresses them about 2.4x) and the same
 * access sequence; their read checksums must match, and for comparison 2
 * the file after each side must hold exactly what the last phase wrote,
 * else the exit status is 1.
 *
 * The kernel side needs root: the program creates the cgroups and the zram
 * swap device (hot_add, lz4, mkswap, swapon; kernel_env.c) itself, says
 * so, and removes
 * them at exit, on failure and on SIGINT/SIGTERM. Whatever is unavailable
 * is reported and that row is skipped. No timing is ever asserted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "upager.h"
#include "size.h"
#include "textpool.h"
#include "kernel_env.h"

#define KIB 1024ull
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)
#define PG 4096u
#define POOL_PAGES 1024u
#define CHILD_TIMEOUT_S 900

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

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

static struct opts O = {
	.budget = 256 * MIB,
	.size = GIB,
	.ops = 300000,
	.file_ops = 40000,
	.file_write_every = 3,
	.page = PG,
	.seq_page = 64 * KIB,
	.file_page = PG,
	.readahead = 1 * MIB,
	.headroom = UINT64_MAX, /* auto: see parse_opts() */
	.dir = "/var/tmp",
	.do_lz4 = true,
	.do_file = true,
	.kernel = true,
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: upager-budget-bench [options]\n"
"  --budget BYTES     memory allowed (default 256M)\n"
"  --size BYTES       data set (default 1G, i.e. 4x the budget)\n"
"  --ops N            random page touches, compressed comparison (300000)\n"
"  --file-ops N       random page reads/writes, file comparison (40000)\n"
"  --file-write-every N\n"
"                     file comparison: one random touch in N also\n"
"                     writes (3; 0: reads only)\n"
"  --page BYTES       upager install unit for random access (4K)\n"
"  --seq-page BYTES   upager install unit for sequential access (64K)\n"
"  --file-page-size BYTES\n"
"                     upager install unit, file comparison (4K)\n"
"  --readahead BYTES  upager readahead while scanning (1M)\n"
"  --headroom BYTES   file comparison: upager's budget is the cgroup\n"
"                     limit minus this, for its page cache and buffers\n"
"                     (default budget/8, from 16M to 32M; a budget\n"
"                     under 32M leaves no room for upager's own memory,\n"
"                     so then the file comparison runs upager alone,\n"
"                     without cgroups, unless --headroom is given)\n"
"  --direct           file comparison: upager reads with O_DIRECT\n"
"  --inline           UPAGER_CFG_INLINE: faults served by the faulting\n"
"                     thread (no manager round trip), both comparisons\n"
"  --workers N        upager worker threads (default: upager's own)\n"
"  --no-follow        UPAGER_CFG_NO_FOLLOW: the manager thread is never\n"
"                     pinned to the faulting thread's CPU\n"
"  --dir DIR          where the file comparison's file lives (/var/tmp)\n"
"  --only lz4|file    run one comparison\n"
"  --no-kernel        upager rows only (no cgroup, no zram)\n"
"  --format table|csv\n"
"BYTES and N are decimal and may end in K, M, G or T (powers of 1024;\n"
"also written KiB or KB, any case): --ops 300K is 307200 touches.\n");
}

/* Every number on this command line is a size in the shared syntax. */
static bool parse_size(const char *s, uint64_t *out)
{
	return cli_parse_size(s, out) == 0;
}

static bool unit_ok(size_t u)
{
	return u >= PG && !(u & (u - 1)) && u <= UPAGER_PAGE_SIZE_MAX &&
	       O.size % u == 0;
}

static void parse_opts(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "budget", required_argument, 0, 'b' },
		{ "size", required_argument, 0, 's' },
		{ "ops", required_argument, 0, 'o' },
		{ "file-ops", required_argument, 0, 'O' },
		{ "file-write-every", required_argument, 0, 'W' },
		{ "page", required_argument, 0, 'p' },
		{ "seq-page", required_argument, 0, 'P' },
		{ "file-page-size", required_argument, 0, 'F' },
		{ "readahead", required_argument, 0, 'r' },
		{ "headroom", required_argument, 0, 'H' },
		{ "direct", no_argument, 0, 'D' },
		{ "inline", no_argument, 0, 'I' },
		{ "workers", required_argument, 0, 'w' },
		{ "dir", required_argument, 0, 'd' },
		{ "only", required_argument, 0, 'y' },
		{ "no-kernel", no_argument, 0, 'n' },
		{ "no-follow", no_argument, 0, 'N' },
		{ "format", required_argument, 0, 'f' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case 'b': ok = parse_size(optarg, &O.budget); break;
		case 's': ok = parse_size(optarg, &O.size); break;
		case 'o': ok = parse_size(optarg, &O.ops); break;
		case 'O': ok = parse_size(optarg, &O.file_ops); break;
		case 'W':
			ok = parse_size(optarg, &O.file_write_every) &&
			     O.file_write_every <= UINT32_MAX;
			break;
		case 'p': ok = parse_size(optarg, &v); O.page = v; break;
		case 'P': ok = parse_size(optarg, &v); O.seq_page = v; break;
		case 'F': ok = parse_size(optarg, &v); O.file_page = v; break;
		case 'r': ok = parse_size(optarg, &v); O.readahead = v; break;
		case 'H': ok = parse_size(optarg, &O.headroom); break;
		case 'D': O.direct = true; break;
		case 'I': O.inline_faults = true; break;
		case 'w':
			ok = parse_size(optarg, &v) && v <= 256;
			O.workers = (unsigned)v;
			break;
		case 'd': O.dir = optarg; break;
		case 'y':
			O.do_lz4 = !strcmp(optarg, "lz4");
			O.do_file = !strcmp(optarg, "file");
			ok = O.do_lz4 || O.do_file;
			break;
		case 'n': O.kernel = false; break;
		case 'N': O.no_follow = true; break;
		case 'f':
			O.csv = !strcmp(optarg, "csv");
			ok = O.csv || !strcmp(optarg, "table");
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
		if (!ok) {
			fprintf(stderr, "upager-budget-bench: bad value '%s'\n",
				optarg);
			exit(2);
		}
	}
	O.size &= ~(uint64_t)(PG - 1);
	O.budget &= ~(uint64_t)(PG - 1);
	if (O.headroom == UINT64_MAX) {
		/* upager's own memory beyond its budget (read buffers, the
		 * program's data pool; about 12 MiB) plus room for the page
		 * cache: budget/8, from 16 to 32 MiB. */
		uint64_t h = O.budget / 8;
		h = h < 16 * MIB ? 16 * MIB : h > 32 * MIB ? 32 * MIB : h;
		O.headroom_auto = true;
		O.headroom = h * 2 <= O.budget ? h : 0; /* 0: no room */
	}
	if (optind < argc || O.size < 16 * PG || O.budget < 4 * PG ||
	    O.budget >= O.size || O.ops == 0 || O.file_ops == 0 ||
	    (!O.headroom_auto && O.headroom >= O.budget) || !unit_ok(O.page) ||
	    !unit_ok(O.seq_page) || !unit_ok(O.file_page)) {
		fprintf(stderr, "upager-budget-bench: inconsistent options "
			"(need budget < size, headroom < budget, page a "
			"power of two dividing size)\n");
		exit(2);
	}
}

/* ------------------------------------------------------------------ */
/* Messages                                                            */
/* ------------------------------------------------------------------ */

/* Notes go to stderr in csv mode, so stdout stays one table. */
static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	FILE *f = O.csv ? stderr : stdout;
	vfprintf(f, fmt, ap);
	fputc('\n', f);
	fflush(f);
	va_end(ap);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the whole process (every thread: the library's, and the
 * kernel's io_uring workers, count). */
static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ */
/* Data: text-like pages, identical on both sides                      */
/* ------------------------------------------------------------------ */

static uint8_t *pool; /* POOL_PAGES text pages */

static void make_pool(void)
{
	pool = textpool_make(POOL_PAGES, 0x1234567);
	if (!pool) {
		perror("malloc");
		exit(1);
	}
}

/* Page @pg of the data set: a pool page stamped with its number. */
static void gen_page(uint8_t *dst, uint64_t pg)
{
	memcpy(dst, pool + (textpool_mix64(pg) % POOL_PAGES) * PG, PG);
	memcpy(dst, &pg, sizeof(pg));
}

/* An 8-byte text-like word for a write (keeps pages compressible). */
static uint64_t text_word(uint64_t r)
{
	uint64_t w;
	memcpy(&w, pool + (r % ((uint64_t)POOL_PAGES * PG - 8)), 8);
	return w;
}

/* ------------------------------------------------------------------ */
/* Results passed from a child to the parent                           */
/* ------------------------------------------------------------------ */

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

static void fail_res(struct result *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void fail_res(struct result *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	r->ok = false;
}

/* ------------------------------------------------------------------ */
/* Interruption: the running child is killed, kernel_env_teardown()     */
/* (atexit) removes the cgroups and the zram device                    */
/* ------------------------------------------------------------------ */

static volatile sig_atomic_t stop_flag;
static volatile pid_t running_child;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
	if (running_child > 0)
		kill(running_child, SIGKILL);
}

/* ------------------------------------------------------------------ */
/* Children                                                            */
/* ------------------------------------------------------------------ */

typedef void (*side_fn)(struct result *r, const void *arg);

/* Runs fn in a child process and returns its result. */
static bool run_child(side_fn fn, const void *arg, struct result *out)
{
	int pfd[2];
	memset(out, 0, sizeof(*out));
	if (stop_flag)
		return false;
	if (pipe2(pfd, O_CLOEXEC)) {
		snprintf(out->err, sizeof(out->err), "pipe: %s",
			 strerror(errno));
		return false;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(out->err, sizeof(out->err), "fork: %s",
			 strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		return false;
	}
	if (pid == 0) {
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		close(pfd[0]);
		struct result *r = calloc(1, sizeof(*r));
		if (!r)
			_exit(1);
		r->ok = true;
		fn(r, arg);
		struct rusage ru;
		getrusage(RUSAGE_SELF, &ru);
		r->peak_rss_kib = ru.ru_maxrss;
		const char *p = (const char *)r;
		size_t left = sizeof(*r);
		while (left) {
			ssize_t w = write(pfd[1], p, left);
			if (w <= 0)
				_exit(1);
			p += w;
			left -= (size_t)w;
		}
		_exit(0);
	}
	running_child = pid;
	close(pfd[1]);
	size_t got = 0;
	double deadline = now_s() + CHILD_TIMEOUT_S;
	while (got < sizeof(*out)) {
		struct pollfd pf = { .fd = pfd[0], .events = POLLIN };
		int n = poll(&pf, 1, 1000);
		if (n < 0 && errno != EINTR)
			break;
		if (stop_flag || now_s() > deadline) {
			kill(pid, SIGKILL);
			break;
		}
		if (n <= 0)
			continue;
		ssize_t rd = read(pfd[0], (char *)out + got,
				  sizeof(*out) - got);
		if (rd <= 0)
			break;
		got += (size_t)rd;
	}
	close(pfd[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	running_child = 0;
	if (got == sizeof(*out))
		return out->ok;
	memset(out, 0, sizeof(*out));
	if (stop_flag)
		snprintf(out->err, sizeof(out->err), "interrupted");
	else if (WIFSIGNALED(st))
		snprintf(out->err, sizeof(out->err), "child killed by "
			 "signal %d%s", WTERMSIG(st), WTERMSIG(st) == SIGKILL ?
			 " (timeout or out of memory in its cgroup?)" : "");
	else
		snprintf(out->err, sizeof(out->err), "child exited with "
			 "status %d", WEXITSTATUS(st));
	return false;
}

/* ------------------------------------------------------------------ */
/* Workloads (run in the children, on any memory)                      */
/* ------------------------------------------------------------------ */

/* Hints for a phase: upager advice or madvise, by side. */
struct side_ops {
	void (*hint)(void *ctx, uint8_t *base, size_t len, bool seq);
	void (*sync)(void *ctx, uint8_t *base, size_t len, struct result *r);
	void *ctx;
};

static void phase_fill(uint8_t *base, size_t len, struct phase *ph)
{
	double t0 = now_s();
	for (uint64_t pg = 0; pg < len / PG; pg++)
		gen_page(base + pg * PG, pg);
	ph->secs = now_s() - t0;
	ph->units = len;
	ph->ran = true;
}

/* Random 4 KiB page touches: a word read from each, one in @write_every
 * also writes a word (none if 0). */
static void phase_random(uint8_t *base, size_t len, uint64_t ops,
			 unsigned write_every, uint64_t seed, struct phase *ph)
{
	uint64_t s = seed, sum = 0, npg = len / PG;
	double t0 = now_s();
	for (uint64_t i = 0; i < ops; i++) {
		uint64_t r = textpool_rnd(&s);
		uint64_t pg = r % npg;
		size_t off = (size_t)((r >> 40) % (PG / 8)) * 8;
		volatile uint64_t *w = (volatile uint64_t *)(base + pg * PG +
							     off);
		sum = sum * 31 + *w;
		if (write_every && (r >> 20) % write_every == 0)
			*w = text_word(r >> 7);
	}
	ph->secs = now_s() - t0;
	ph->units = ops;
	ph->sum = sum;
	ph->ran = true;
}

/* Sequential scan: one word of every 64-byte line. */
static void phase_scan(uint8_t *base, size_t len, struct phase *ph)
{
	uint64_t sum = 0;
	double t0 = now_s();
	for (size_t off = 0; off < len; off += 64)
		sum += *(volatile uint64_t *)(base + off);
	ph->secs = now_s() - t0;
	ph->units = len;
	ph->sum = sum;
	ph->ran = true;
}

/* The compressed comparison's phases on one side: fill, scan, then
 * (unless @no_random) random touches. The scan comes first so that every
 * side scans the same bytes. */
static void lz4_workload(uint8_t *base, size_t len, const struct side_ops *so,
			 struct result *r, bool no_random)
{
	so->hint(so->ctx, base, len, true);
	phase_fill(base, len, &r->ph[PH_FILL]);
	phase_scan(base, len, &r->ph[PH_SEQ]);
	if (no_random)
		return;
	so->hint(so->ctx, base, len, false);
	phase_random(base, len, O.ops, 10, 0x5eed, &r->ph[PH_RAND]);
}

/* Ends the file comparison's phase @ph begun at @t0 (wall) and @c0
 * (process CPU): the store sync (upager_flush or msync) is timed as part
 * of it and also on its own. */
static void end_synced(const struct side_ops *so, uint8_t *base, size_t len,
		       struct result *r, struct phase *ph, double t0, double c0)
{
	double t1 = now_s(), c1 = cpu_s();
	so->sync(so->ctx, base, len, r);
	ph->sync_secs = now_s() - t1;
	ph->secs = now_s() - t0;
	ph->sync_cpu_secs = cpu_s() - c1;
	ph->cpu_secs = cpu_s() - c0;
	ph->ran = true;
}

/* The file comparison's phases, each timed apart:
 * - PH_RAND: random read/write of a cold region, then flush; the region
 *   is under its budget all along (O.file_ops touches, 40,000 by default,
 *   reach about 15% of a data set four times the budget);
 * - PH_SCAN: a sequential read of every page, which leaves the budget
 *   full;
 * - PH_FULL: random read/write again (other pages), then flush: now most
 *   misses make room first, by eviction or the kernel's reclaim, and
 *   written victims go back to the file on the way;
 * - PH_SEQ: a sequential write of every page, then flush. */
static void file_workload(uint8_t *base, size_t len, const struct side_ops *so,
			  struct result *r)
{
	unsigned we = (unsigned)O.file_write_every;
	so->hint(so->ctx, base, len, false);
	double t0 = now_s(), c0 = cpu_s();
	phase_random(base, len, O.file_ops, we, 0x5eed, &r->ph[PH_RAND]);
	end_synced(so, base, len, r, &r->ph[PH_RAND], t0, c0);

	so->hint(so->ctx, base, len, true);
	struct phase *ph = &r->ph[PH_SCAN];
	uint64_t sum = 0;
	t0 = now_s();
	c0 = cpu_s();
	for (size_t off = 0; off < len; off += PG)
		sum = sum * 31 + *(volatile uint64_t *)(base + off);
	ph->secs = now_s() - t0;
	ph->cpu_secs = cpu_s() - c0;
	ph->units = len;
	ph->sum = sum;
	ph->ran = true;

	so->hint(so->ctx, base, len, false);
	t0 = now_s();
	c0 = cpu_s();
	phase_random(base, len, O.file_ops, we, 0xf011, &r->ph[PH_FULL]);
	end_synced(so, base, len, r, &r->ph[PH_FULL], t0, c0);

	so->hint(so->ctx, base, len, true);
	ph = &r->ph[PH_SEQ];
	t0 = now_s();
	c0 = cpu_s();
	for (uint64_t pg = 0; pg < len / PG; pg++)
		gen_page(base + pg * PG, pg ^ 0x5a5a);
	end_synced(so, base, len, r, ph, t0, c0);
	ph->units = len;
}

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

struct up_args {
	bool lz4;        /* else the file comparison */
	size_t page;     /* install unit */
	bool no_random;  /* lz4: fill and scan only */
	const char *path;
	const char *cg;  /* cgroup to join, or NULL */
	uint64_t budget;
};

static void upager_side(struct result *r, const void *argp)
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

struct k_args {
	bool lz4;
	const char *path;
	const char *cg;
};

static void kernel_side(struct result *r, const void *argp)
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

/* ------------------------------------------------------------------ */
/* Report                                                              */
/* ------------------------------------------------------------------ */

static bool header_done;
static bool any_mismatch, any_failed;

static void row(const char *cmp, const char *work, const char *unit,
		const struct phase *u, const struct phase *k, bool k_ok,
		const char *kwhy)
{
	double uv = u && u->ran && u->secs > 0 ? (double)u->units / u->secs : 0;
	double kv = k_ok && k && k->ran && k->secs > 0 ?
		    (double)k->units / k->secs : 0;
	bool bytes = !strcmp(unit, "MB/s");
	if (bytes) {
		uv /= 1e6;
		kv /= 1e6;
	}
	if (O.csv) {
		if (!header_done)
			printf("comparison,workload,unit,upager,kernel,ratio,"
			       "upager_s,kernel_s\n");
		header_done = true;
		printf("%s,%s,%s,%.1f,%.1f,%.3f,%.3f,%.3f\n", cmp, work, unit,
		       uv, kv, kv > 0 ? uv / kv : 0, u ? u->secs : 0,
		       k_ok && k ? k->secs : 0);
		return;
	}
	if (!header_done)
		printf("\n%-12s %-30s %-8s %12s %12s %8s\n", "comparison",
		       "workload", "unit", "upager", "kernel", "ratio");
	header_done = true;
	char ks[32], rs[32];
	if (kv > 0) {
		snprintf(ks, sizeof(ks), "%.1f", kv);
		snprintf(rs, sizeof(rs), "%.2fx", uv / kv);
	} else {
		snprintf(ks, sizeof(ks), "-");
		snprintf(rs, sizeof(rs), "-");
	}
	printf("%-12s %-30s %-8s %12.1f %12s %8s%s%s\n", cmp, work, unit, uv,
	       ks, rs, kwhy && !k_ok ? "  " : "", kwhy && !k_ok ? kwhy : "");
}

static void check_sums(const char *what, const struct result *u,
		       const struct result *k)
{
	for (int p = 0; p < PH_N; p++) {
		if (!u->ph[p].ran || !k->ph[p].ran)
			continue;
		if (u->ph[p].sum != k->ph[p].sum) {
			note("checksum mismatch: %s phase %d: upager %#" PRIx64
			     " kernel %#" PRIx64, what, p, u->ph[p].sum,
			     k->ph[p].sum);
			any_mismatch = true;
		}
	}
}

/* ------------------------------------------------------------------ */
/* The two comparisons                                                 */
/* ------------------------------------------------------------------ */

static bool kernel_possible(char *why, size_t wl)
{
	if (!O.kernel) {
		snprintf(why, wl, "kernel side skipped (--no-kernel)");
		return false;
	}
	if (geteuid() != 0) {
		snprintf(why, wl, "kernel side skipped: needs root (cgroup, "
			 "zram, swapon)");
		return false;
	}
	if (access(CG_ROOT "/cgroup.procs", W_OK)) {
		snprintf(why, wl, "kernel side skipped: no v1 memory cgroup "
			 "at " CG_ROOT);
		return false;
	}
	return true;
}

static void note_upager_lz4(const char *what, const struct result *u)
{
	note("upager side (%s): lz4 held %" PRIu64 " MiB of data in %" PRIu64
	     " MiB (ratio %.2f), allocator %" PRIu64 " MiB; faults %" PRIu64
	     " (p50 %" PRIu64 " us, p99 %" PRIu64 " us), prefetched %"
	     PRIu64 ", evictions %" PRIu64 ", write-backs %" PRIu64
	     " (%" PRIu64 " found unchanged by the store)"
	     ", max resident seen %" PRIu64 " MiB, peak RSS %ld MiB",
	     what, u->lz.bytes_logical >> 20, u->lz.bytes_stored >> 20,
	     u->lz.ratio, u->lz.bytes_allocated >> 20, u->st.faults,
	     upager_stats_percentile(&u->st, 50),
	     upager_stats_percentile(&u->st, 99),
	     u->st.prefetched, u->st.evictions, u->st.writebacks,
	     u->lz.unchanged,
	     u->max_resident_seen >> 20, u->peak_rss_kib >> 10);
}

/* Runs the upager side of the compressed comparison with install unit
 * @page; reports a failure. */
static bool upager_lz4_run(size_t page, bool no_random, struct result *u)
{
	struct up_args ua = { .lz4 = true, .page = page,
			      .no_random = no_random, .budget = O.budget };
	bool ok = run_child(upager_side, &ua, u);
	if (!ok) {
		note("upager side (unit %zu KiB) failed: %s", page >> 10,
		     u->err);
		any_failed = true;
	}
	return ok;
}

static bool kernel_lz4_run(struct result *k, char *why, size_t wl)
{
	if (!kernel_possible(why, wl))
		return false;
	const char *cg = cg_create(0, O.budget, why, wl);
	bool ok = cg && zram_setup(O.size * 2, why, wl);
	if (ok) {
		note("kernel side: v1 memory cgroup %s (limit %" PRIu64
		     " MiB), swap on /dev/zram%d (lz4, disksize %" PRIu64
		     " MiB), set up by this program and removed at exit", cg,
		     O.budget >> 20, zram_id, (O.size * 2) >> 20);
		struct k_args ka = { .lz4 = true, .cg = cg };
		ok = run_child(kernel_side, &ka, k);
		if (!ok) {
			snprintf(why, wl, "kernel side failed: %s", k->err);
			any_failed = true;
		} else {
			char p[300];
			snprintf(p, sizeof(p), "%s/memory.max_usage_in_bytes",
				 cg);
			note("kernel side: cgroup peak usage %" PRIu64
			     " MiB, zram held %" PRIu64 " MiB of data in %"
			     PRIu64 " MiB (ratio %.2f), %" PRIu64
			     " MiB of memory, peak RSS %ld MiB",
			     read_u64(p) >> 20, k->zram_orig >> 20,
			     k->zram_compr >> 20,
			     k->zram_compr ? (double)k->zram_orig /
					     (double)k->zram_compr : 0,
			     k->zram_used >> 20, k->peak_rss_kib >> 10);
		}
	}
	zram_teardown();
	cg_remove(0);
	return ok;
}

/* Upager runs twice: with 4 KiB units (fill, scan, random touches) and
 * with --seq-page units (fill and scan only): an application picks the
 * unit per region, the kernel cannot. Both are reported. */
static void compare_lz4(void)
{
	char why[256] = "", wr[48], ws[48], ws4[48], wf[48], wf4[48];
	struct result u, us, k;
	memset(&k, 0, sizeof(k));
	memset(&us, 0, sizeof(us));
	note("== compressed memory: %" PRIu64 " MiB of data, budget %" PRIu64
	     " MiB; upager lz4 store alone (units %zu KiB and %zu KiB, "
	     "readahead %zu KiB) vs kernel anon memory + zram lz4 swap",
	     O.size >> 20, O.budget >> 20, O.page >> 10, O.seq_page >> 10,
	     O.readahead >> 10);

	bool u_ok = upager_lz4_run(O.page, false, &u);
	bool s_ok = O.seq_page != O.page &&
		    upager_lz4_run(O.seq_page, true, &us);
	bool k_ok = kernel_lz4_run(&k, why, sizeof(why));
	if (!k_ok)
		note("%s", why);
	if (u_ok)
		note_upager_lz4("random-access unit", &u);
	if (s_ok)
		note_upager_lz4("sequential unit", &us);
	if (u_ok && k_ok)
		check_sums("compressed", &u, &k);
	if (s_ok && k_ok)
		check_sums("compressed, sequential unit", &us, &k);

	/* No commas: the names are csv fields too. */
	snprintf(wr, sizeof(wr), "random 4K touch (%zuK unit)", O.page >> 10);
	snprintf(ws, sizeof(ws), "seq scan (%zuK unit)", O.seq_page >> 10);
	snprintf(ws4, sizeof(ws4), "seq scan (%zuK unit)", O.page >> 10);
	snprintf(wf, sizeof(wf), "seq fill (%zuK unit)", O.seq_page >> 10);
	snprintf(wf4, sizeof(wf4), "seq fill (%zuK unit)", O.page >> 10);
	if (u_ok)
		row("compressed", wr, "pages/s", &u.ph[PH_RAND],
		    &k.ph[PH_RAND], k_ok, NULL);
	if (s_ok) {
		row("compressed", ws, "MB/s", &us.ph[PH_SEQ], &k.ph[PH_SEQ],
		    k_ok, NULL);
		row("compressed", wf, "MB/s", &us.ph[PH_FILL],
		    &k.ph[PH_FILL], k_ok, NULL);
	}
	if (u_ok) {
		row("compressed", ws4, "MB/s", &u.ph[PH_SEQ], &k.ph[PH_SEQ],
		    k_ok, NULL);
		row("compressed", wf4, "MB/s", &u.ph[PH_FILL],
		    &k.ph[PH_FILL], k_ok, NULL);
	}
	if (!O.csv)
		printf("\n");
}

/* Creates the file comparison's file (text pages), on disk and out of the
 * page cache. */
static int make_file(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	uint8_t *buf = malloc(MIB);
	int rc = buf ? 0 : -ENOMEM;
	for (uint64_t off = 0; rc == 0 && off < O.size; off += MIB) {
		size_t n = O.size - off < MIB ? (size_t)(O.size - off) : MIB;
		for (size_t p = 0; p < n; p += PG)
			gen_page(buf + p, (off + p) / PG);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
			rc = -EIO;
	}
	free(buf);
	if (rc == 0 && fsync(fd))
		rc = -errno;
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
	return rc;
}

#define HASH_SEED 0x84222325ull

/* Folds @n bytes (a multiple of 8) into hash @h, word by word. */
static uint64_t hash_words(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, 8);
		h = (h ^ w) * 0x100000001b3ull;
	}
	return h;
}

/* A 64-bit hash of the file's contents (after a side finished). */
static uint64_t hash_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	uint8_t *buf = malloc(MIB);
	uint64_t h = HASH_SEED;
	ssize_t n;
	off_t off = 0;
	while (buf && (n = pread(fd, buf, MIB, off)) > 0) {
		h = hash_words(h, buf, (size_t)n);
		off += n;
	}
	free(buf);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
	return h;
}

/* The hash the file must have after a side: its last phase rewrote every
 * page (file_workload()), so nothing else may be left. */
static uint64_t hash_expected(void)
{
	uint8_t page[PG];
	uint64_t h = HASH_SEED;
	for (uint64_t pg = 0; pg < O.size / PG; pg++) {
		gen_page(page, pg ^ 0x5a5a);
		h = hash_words(h, page, PG);
	}
	return h;
}

static void compare_file(void)
{
	char why[256] = "", path[4096];
	struct result u, k;
	memset(&u, 0, sizeof(u));
	memset(&k, 0, sizeof(k));
	snprintf(path, sizeof(path), "%s/upager-budget-bench-%d.dat", O.dir,
		 (int)getpid());
	bool kpos = kernel_possible(why, sizeof(why));
	if (kpos && O.headroom_auto && O.headroom == 0) {
		snprintf(why, sizeof(why), "file comparison: kernel side "
			 "skipped: a budget under 32 MiB leaves no room in a "
			 "cgroup of that limit for upager's own memory beyond "
			 "its budget (about 12 MiB); give --headroom to run it "
			 "anyway");
		kpos = false;
	}
	uint64_t ubudget = kpos ? O.budget - O.headroom : O.budget;
	note("== writable file: %" PRIu64 " MiB file in %s; upager WRITEBACK "
	     "region (file store%s, %zu KiB units, budget %" PRIu64
	     " MiB%s) vs mmap MAP_SHARED in a cgroup limited to %" PRIu64
	     " MiB", O.size >> 20, O.dir, O.direct ? ", O_DIRECT reads" : "",
	     O.file_page >> 10, ubudget >> 20,
	     kpos ? ", in a cgroup of the same limit" : "", O.budget >> 20);

	int rc = make_file(path);
	if (rc) {
		note("file comparison skipped: cannot write %s: %s", path,
		     strerror(-rc));
		unlink(path);
		return;
	}
	const char *ucg = NULL;
	if (kpos)
		ucg = cg_create(1, O.budget, why, sizeof(why));
	struct up_args ua = { .lz4 = false, .page = O.file_page, .path = path,
			      .cg = ucg,
			      .budget = ubudget };
	bool u_ok = run_child(upager_side, &ua, &u);
	uint64_t uh = hash_file(path);
	cg_remove(1);
	if (!u_ok) {
		note("upager side failed: %s", u.err);
		if (ucg)
			note("(its cgroup's limit is the budget, %" PRIu64
			     " MiB, and its region budget %" PRIu64 " MiB "
			     "under it: upager's own memory beyond the region "
			     "budget, about 12 MiB, must fit in --headroom)",
			     O.budget >> 20, ubudget >> 20);
		any_failed = true;
	}

	bool k_ok = kpos;
	const char *kcg = NULL;
	if (k_ok) {
		kcg = cg_create(2, O.budget, why, sizeof(why));
		k_ok = kcg != NULL;
	}
	uint64_t kh = 0;
	if (k_ok && (rc = make_file(path))) {
		snprintf(why, sizeof(why), "cannot rewrite %.160s: %s", path,
			 strerror(-rc));
		k_ok = false;
	}
	if (k_ok) {
		struct k_args ka = { .lz4 = false, .path = path, .cg = kcg };
		k_ok = run_child(kernel_side, &ka, &k);
		if (!k_ok) {
			snprintf(why, sizeof(why), "kernel side failed: %s",
				 k.err);
			any_failed = true;
		}
		kh = hash_file(path);
	}
	cg_remove(2);
	unlink(path);
	if (!k_ok)
		note("%s", why);
	if (u_ok)
		note("upager side: faults %" PRIu64 " (p50 %" PRIu64
		     " us, p99 %" PRIu64 " us), prefetched %" PRIu64
		     ", evictions %" PRIu64 ", write-backs %" PRIu64
		     ", max resident seen %" PRIu64 " MiB, peak RSS %ld MiB",
		     u.st.faults, upager_stats_percentile(&u.st, 50),
		     upager_stats_percentile(&u.st, 99), u.st.prefetched,
		     u.st.evictions,
		     u.st.writebacks,
		     u.max_resident_seen >> 20, u.peak_rss_kib >> 10);
	static const struct {
		int ph;
		const char *what, *row, *unit;
		bool synced;
	} fph[] = {
		{ PH_RAND, "random r/w", "random r/w + flush", "pages/s", true },
		{ PH_SCAN, "seq read", "seq read", "MB/s", false },
		{ PH_FULL, "random r/w, budget full", "random full + flush",
		  "pages/s", true },
		{ PH_SEQ, "seq write", "seq write + flush", "MB/s", true },
	};
	for (size_t i = 0; u_ok && i < sizeof(fph) / sizeof(fph[0]); i++) {
		const struct phase *a = &u.ph[fph[i].ph], *b = &k.ph[fph[i].ph];
		char kside[96] = "", usync[48] = "", ksync[48] = "";
		if (fph[i].synced) {
			snprintf(usync, sizeof(usync), " + flush %.2f s (cpu "
				 "%.2f)", a->sync_secs, a->sync_cpu_secs);
			snprintf(ksync, sizeof(ksync), " + msync %.2f s (cpu "
				 "%.2f)", b->sync_secs, b->sync_cpu_secs);
		}
		if (k_ok)
			snprintf(kside, sizeof(kside), ", kernel %.2f s (cpu "
				 "%.2f)%s", b->secs - b->sync_secs,
				 b->cpu_secs - b->sync_cpu_secs, ksync);
		note("%s: upager %.2f s (cpu %.2f)%s%s", fph[i].what,
		     a->secs - a->sync_secs, a->cpu_secs - a->sync_cpu_secs,
		     usync, kside);
	}
	uint64_t want = hash_expected();
	if (u_ok && uh != want) {
		note("the file after the upager side is not what was written "
		     "(hash %#" PRIx64 ", expected %#" PRIx64 ")", uh, want);
		any_mismatch = true;
	}
	if (k_ok && kh != want) {
		note("the file after the kernel side is not what was written "
		     "(hash %#" PRIx64 ", expected %#" PRIx64 ")", kh, want);
		any_mismatch = true;
	}
	if (u_ok && k_ok)
		check_sums("file", &u, &k);
	if (!u_ok)
		return;
	for (size_t i = 0; i < sizeof(fph) / sizeof(fph[0]); i++) {
		char w[48];
		snprintf(w, sizeof(w), "%s (%zuK unit)", fph[i].row,
			 O.file_page >> 10);
		row("file", w, fph[i].unit, &u.ph[fph[i].ph],
		    &k.ph[fph[i].ph], k_ok, NULL);
	}
	if (!O.csv)
		printf("\n");
}

int main(int argc, char **argv)
{
	parse_opts(argc, argv);
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	atexit(kernel_env_teardown);
	make_pool();
	note("upager-budget-bench: upager %s, data %" PRIu64 " MiB, budget %"
	     PRIu64 " MiB, %" PRIu64 " random ops (file: %" PRIu64 ")",
	     upager_version(), O.size >> 20, O.budget >> 20, O.ops,
	     O.file_ops);
	if (O.do_lz4 && !stop_flag)
		compare_lz4();
	if (O.do_file && !stop_flag)
		compare_file();
	kernel_env_teardown();
	if (stop_flag) {
		note("interrupted: cgroups and zram removed");
		return 130;
	}
	if (any_mismatch)
		return 1;
	return any_failed ? 1 : 0;
}
