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
 *
 * This file has main(), the options, the data, running a side in a child
 * and the report; the sides are in budget_sides.c, each comparison's
 * phases and rows in budget_lz4.c and budget_file.c (budget_bench.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "upager.h"
#include "budget_bench.h"
#include "size.h"
#include "textpool.h"
#include "kernel_env.h"

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

struct opts O = {
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
"                     (default budget/8, from 24M to 32M; a budget\n"
"                     under 48M leaves no room for upager's own memory,\n"
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
		 * write-back scratch, the program's data pool: 11-14 MiB of
		 * RSS measured) plus room for the page cache and the kernel's
		 * own: budget/8, from 24 to 32 MiB. With 16 MiB a 64 MiB
		 * budget's upager side was killed by its cgroup. */
		uint64_t h = O.budget / 8;
		h = h < 24 * MIB ? 24 * MIB : h > 32 * MIB ? 32 * MIB : h;
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
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	FILE *f = O.csv ? stderr : stdout;
	vfprintf(f, fmt, ap);
	fputc('\n', f);
	fflush(f);
	va_end(ap);
}

double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the whole process (every thread: the library's, and the
 * kernel's io_uring workers, count). */
double cpu_s(void)
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
void gen_page(uint8_t *dst, uint64_t pg)
{
	memcpy(dst, pool + (textpool_mix64(pg) % POOL_PAGES) * PG, PG);
	memcpy(dst, &pg, sizeof(pg));
}

/* An 8-byte text-like word for a write (keeps pages compressible). */
uint64_t text_word(uint64_t r)
{
	uint64_t w;
	memcpy(&w, pool + (r % ((uint64_t)POOL_PAGES * PG - 8)), 8);
	return w;
}

/* ------------------------------------------------------------------ */
/* Results passed from a child to the parent                           */
/* ------------------------------------------------------------------ */

void fail_res(struct result *r, const char *fmt, ...)
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

volatile sig_atomic_t stop_flag;
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

bool run_child(side_fn fn, const void *arg, struct result *out)
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

void phase_fill(uint8_t *base, size_t len, struct phase *ph)
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
void phase_random(uint8_t *base, size_t len, uint64_t ops,
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
void phase_scan(uint8_t *base, size_t len, struct phase *ph)
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
/* ------------------------------------------------------------------ */
/* Report                                                              */
/* ------------------------------------------------------------------ */

static bool header_done;
bool any_mismatch, any_failed;

void row(const char *cmp, const char *work, const char *unit,
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

void check_sums(const char *what, const struct result *u,
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

bool kernel_possible(char *why, size_t wl)
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
