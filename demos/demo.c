/*
 * demo.c - upager-demo: read one file through upager and through mmap.
 *
 * Generates a file of deterministic, position-dependent content (or uses
 * --file), then reads it start to end through three mappings: plain mmap,
 * mmap with MADV_SEQUENTIAL, and an upager region with 64 KiB install
 * units and 4 MiB readahead. Each engine gets a cold pass (page cache
 * evicted first) and a warm pass (a fresh mapping over a cached file).
 * Every pass checksums the bytes it read and must match the file, so the
 * demo is also an end-to-end check. Prints a table of times and upager's
 * own counters.
 *
 * Exit status: 0 all passes verified, 1 error, 2 SIGBUS (a page upager
 * could not serve), 77 userfaultfd not available to this process.
 *
 * Uses only the public API (include/upager.h). Single-threaded; upager's
 * threads do the paging. The temporary file is removed on exit, on
 * SIGINT, SIGTERM, SIGHUP, SIGPIPE and SIGBUS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <upager.h>
#include "size.h"

#define KIB ((uint64_t)1024)
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)
#define CHUNK (1 * MIB)       /* generation / checksum I/O unit */
#define BLOCK_HEADER 32       /* readable header at the start of each 4 KiB */
#define TMPFS_MAGIC_ 0x01021994

struct options {
	uint64_t size;
	const char *file;
	size_t page_size;
	size_t readahead;
	unsigned workers;
	int direct;
};

/* Position-sensitive checksum (Fletcher-style over 64-bit words): catches
 * missing, zeroed, shifted and swapped pages, and streams across chunks. */
struct csum {
	uint64_t a, b;
};

enum engine { ENG_MMAP, ENG_MMAP_SEQ, ENG_UPAGER, ENG_COUNT };
static const char *const engine_name[ENG_COUNT] = { "mmap", "mmap-seq",
						     "upager" };

struct pass_result {
	double seconds;
	double cached_pct; /* share of the file in page cache before */
	struct upager_stats st;
};

/* Temp file path, removed by the signal handler too. */
static char tmp_path[4096];

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("upager-demo: error: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	if (tmp_path[0])
		unlink(tmp_path);
	exit(1);
}

static void on_fatal_signal(int sig)
{
	static const char bus[] =
		"upager-demo: error: SIGBUS: a page could not be served\n";
	static const char stop[] = "upager-demo: interrupted\n";

	if (sig == SIGBUS)
		(void)!write(STDERR_FILENO, bus, sizeof(bus) - 1);
	else if (sig != SIGPIPE)
		(void)!write(STDERR_FILENO, stop, sizeof(stop) - 1);
	if (tmp_path[0])
		unlink(tmp_path);
	_exit(sig == SIGBUS ? 2 : 128 + sig);
}

static void install_signal_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_fatal_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: upager-demo [options]\n"
		"Reads a file through upager and through mmap, cold and warm,\n"
		"checks that every view matches the file and prints timings.\n\n"
		"  --size N        size of the generated file (default 256M)\n"
		"  --file PATH     use this existing file instead of generating one\n"
		"  --page-size N   upager install unit, 4K..2M power of two (default 64K)\n"
		"  --readahead N   upager readahead window, 0 = off (default 4M)\n"
		"  --workers N     upager worker threads (default: library default)\n"
		"  --direct        upager reads with O_DIRECT (no page cache)\n"
		"  --help          this text\n\n"
		"N is a decimal number with an optional suffix K, M, G or T\n"
		"(powers of 1024; also written KiB or KB, any case).\n\n"
		"The file is generated in $TMPDIR (or /tmp) and removed on exit;\n"
		"for real cold reads it must be on a disk, not on tmpfs.\n");
}

static uint64_t size_arg(const char *opt, const char *val)
{
	uint64_t v;

	if (cli_parse_size(val, &v) != 0)
		die("%s: bad size '%s'", opt, val);
	return v;
}

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "file", required_argument, NULL, 'f' },
		{ "page-size", required_argument, NULL, 'p' },
		{ "readahead", required_argument, NULL, 'r' },
		{ "workers", required_argument, NULL, 'w' },
		{ "direct", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*o = (struct options){ .size = 256 * MIB, .page_size = 64 * KIB,
			       .readahead = 4 * MIB };
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 's': o->size = size_arg("--size", optarg); break;
		case 'f': o->file = optarg; break;
		case 'p': o->page_size = size_arg("--page-size", optarg); break;
		case 'r': o->readahead = size_arg("--readahead", optarg); break;
		case 'w': o->workers = (unsigned)size_arg("--workers", optarg); break;
		case 'd': o->direct = 1; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(1);
		}
	}
	if (optind != argc)
		die("unexpected argument '%s' (see --help)", argv[optind]);
	if (o->size == 0)
		die("--size must be > 0");
	if (o->page_size < UPAGER_PAGE_SIZE_MIN ||
	    o->page_size > UPAGER_PAGE_SIZE_MAX ||
	    (o->page_size & (o->page_size - 1)) != 0)
		die("--page-size must be a power of two from 4K to 2M");
}

/* ------------------------------------------------------------------ */
/* Content and checksums                                               */
/* ------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Fills @buf (a multiple of 4 KiB) with the content at file offset @off:
 * each 4 KiB block starts with a readable header naming its offset, the
 * rest is pseudo-random words derived from their position. */
static void fill_content(uint8_t *buf, size_t len, uint64_t off)
{
	for (size_t blk = 0; blk < len; blk += 4096) {
		uint64_t *w = (uint64_t *)(buf + blk);
		for (size_t i = 0; i < 4096 / 8; i++)
			w[i] = splitmix64((off + blk) / 8 + i);
		char hdr[BLOCK_HEADER + 1];
		snprintf(hdr, sizeof(hdr), "upager-demo @%016" PRIx64 "\n",
			 off + blk);
		memcpy(buf + blk, hdr, BLOCK_HEADER);
	}
}

static void csum_update(struct csum *c, const uint8_t *p, size_t len)
{
	uint64_t a = c->a, b = c->b, w;
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		memcpy(&w, p + i, 8);
		a += w;
		b += a;
	}
	if (i < len) { /* tail: zero-padded last word */
		w = 0;
		memcpy(&w, p + i, len - i);
		a += w;
		b += a;
	}
	c->a = a;
	c->b = b;
}

static int csum_equal(const struct csum *x, const struct csum *y)
{
	return x->a == y->a && x->b == y->b;
}

/* ------------------------------------------------------------------ */
/* The file                                                            */
/* ------------------------------------------------------------------ */

/* Progress on stderr: one updating line on a terminal, else a line at
 * every quarter. */
static void progress(const char *what, uint64_t done, uint64_t total)
{
	static int last_quarter = -1;
	int pct = (int)(done * 100 / total);

	if (isatty(STDERR_FILENO)) {
		fprintf(stderr, "\rupager-demo: %s %" PRIu64 " / %" PRIu64
			" MiB (%3d%%)%s", what, done / MIB, total / MIB, pct,
			done == total ? "\n" : "");
		return;
	}
	if (pct / 25 == last_quarter && done != total)
		return;
	last_quarter = pct / 25;
	fprintf(stderr, "upager-demo: %s %" PRIu64 " / %" PRIu64 " MiB (%d%%)\n",
		what, done / MIB, total / MIB, pct);
}

static void write_all(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write %s: %s", tmp_path, n < 0 ? strerror(errno) : "short write");
		p += n;
		len -= (size_t)n;
	}
}

/* Creates the temporary file and returns its descriptor; *@sum gets the
 * checksum of what was written. */
static int generate_file(uint64_t size, struct csum *sum)
{
	const char *dir = getenv("TMPDIR");
	uint8_t *buf = malloc(CHUNK);
	int fd;

	if (!dir || !dir[0])
		dir = "/tmp";
	if ((size_t)snprintf(tmp_path, sizeof(tmp_path), "%s/upager-demo-XXXXXX",
			     dir) >= sizeof(tmp_path))
		die("TMPDIR path too long");
	if (!buf)
		die("out of memory");
	fd = mkostemp(tmp_path, O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		tmp_path[0] = '\0';
		die("cannot create a file in %s: %s", dir, strerror(e));
	}
	*sum = (struct csum){ 0, 0 };
	for (uint64_t off = 0; off < size; off += CHUNK) {
		size_t n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
		fill_content(buf, CHUNK, off);
		csum_update(sum, buf, n);
		write_all(fd, buf, n);
		if ((off / CHUNK) % 16 == 15 || off + n == size)
			progress("generating", off + n, size);
	}
	free(buf);
	if (fdatasync(fd) != 0)
		die("fdatasync %s: %s", tmp_path, strerror(errno));
	return fd;
}

/* Opens an existing file and checksums it with read(). */
static int open_existing(const char *path, uint64_t *size, struct csum *sum)
{
	struct stat sb;
	uint8_t *buf = malloc(CHUNK);
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0)
		die("%s: not a non-empty regular file", path);
	if (!buf)
		die("out of memory");
	*size = (uint64_t)sb.st_size;
	*sum = (struct csum){ 0, 0 };
	for (uint64_t off = 0; off < *size;) {
		ssize_t n = pread(fd, buf, CHUNK, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("read %s: %s", path, n < 0 ? strerror(errno) : "file shrank");
		csum_update(sum, buf, (size_t)n);
		off += (uint64_t)n;
		if ((off / CHUNK) % 16 == 0 || off == *size)
			progress("checksumming", off, *size);
	}
	free(buf);
	return fd;
}

/* Share of the file's pages that are in the page cache (mincore). */
static double cached_share(int fd, uint64_t size)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t pages = (size_t)((size + (uint64_t)pg - 1) / (uint64_t)pg);
	unsigned char *vec = malloc(pages);
	void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	size_t resident = 0;

	if (!vec || m == MAP_FAILED)
		die("mincore set-up: %s", !vec ? "out of memory" : strerror(errno));
	if (mincore(m, size, vec) != 0)
		die("mincore: %s", strerror(errno));
	for (size_t i = 0; i < pages; i++)
		resident += vec[i] & 1;
	munmap(m, size);
	free(vec);
	return 100.0 * (double)resident / (double)pages;
}

/* Drops the file from the page cache; returns the share still cached. */
static double evict(int fd, uint64_t size)
{
	if (fdatasync(fd) != 0 && errno != EINVAL)
		die("fdatasync: %s", strerror(errno));
	int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	if (rc != 0)
		die("posix_fadvise(DONTNEED): %s", strerror(rc));
	return cached_share(fd, size);
}

static int on_tmpfs(int fd)
{
	struct statfs sf;

	return fstatfs(fd, &sf) == 0 && (unsigned long)sf.f_type == TMPFS_MAGIC_;
}

/* ------------------------------------------------------------------ */
/* Passes                                                              */
/* ------------------------------------------------------------------ */

struct ctx {
	const struct options *o;
	int fd;
	uint64_t size;
	struct csum expect;
	upager_t *up;
	upager_store_t *store;
};

/* Locates the first byte where @m differs from the file, for the error. */
static uint64_t first_difference(const struct ctx *c, const uint8_t *m)
{
	uint8_t *buf = malloc(CHUNK);

	if (!buf)
		return UINT64_MAX;
	for (uint64_t off = 0; off < c->size; off += CHUNK) {
		ssize_t n = pread(c->fd, buf, CHUNK, (off_t)off);
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] != m[off + (uint64_t)i]) {
				free(buf);
				return off + (uint64_t)i;
			}
		}
	}
	free(buf);
	return UINT64_MAX;
}

static void verify(const struct ctx *c, enum engine e, const char *pass,
		   const uint8_t *m, const struct csum *got)
{
	if (csum_equal(got, &c->expect))
		return;
	uint64_t at = first_difference(c, m);
	if (at == UINT64_MAX)
		die("%s %s pass: checksum mismatch", engine_name[e], pass);
	die("%s %s pass: content differs from the file at offset %" PRIu64
	    " (0x%" PRIx64 ")", engine_name[e], pass, at, at);
}

static uint8_t *map_engine(struct ctx *c, enum engine e)
{
	void *m;

	if (e == ENG_UPAGER) {
		struct upager_map_opts mo = { .page_size = c->o->page_size,
					      .readahead = c->o->readahead };
		int rc = upager_map(c->up, c->store, 0, (size_t)c->size, &mo, &m);
		if (rc != 0)
			die("upager_map: %s", upager_strerror(rc));
		return m;
	}
	m = mmap(NULL, (size_t)c->size, PROT_READ, MAP_PRIVATE, c->fd, 0);
	if (m == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	if (e == ENG_MMAP_SEQ && madvise(m, (size_t)c->size, MADV_SEQUENTIAL) != 0)
		die("madvise(MADV_SEQUENTIAL): %s", strerror(errno));
	return m;
}

static void unmap_engine(struct ctx *c, enum engine e, uint8_t *m,
			 struct upager_stats *st)
{
	if (e == ENG_UPAGER) {
		int rc = upager_stats(c->up, m, st);
		if (rc != 0)
			die("upager_stats: %s", upager_strerror(rc));
		rc = upager_unmap(c->up, m);
		if (rc != 0)
			die("upager_unmap: %s", upager_strerror(rc));
		return;
	}
	if (munmap(m, (size_t)c->size) != 0)
		die("munmap: %s", strerror(errno));
}

/* Maps the file with engine @e, reads every byte, checks the content. */
static void run_pass(struct ctx *c, enum engine e, int cold,
		     struct pass_result *r)
{
	const char *pass = cold ? "cold" : "warm";
	struct csum got = { 0, 0 };

	memset(r, 0, sizeof(*r));
	r->cached_pct = cold ? evict(c->fd, c->size) : cached_share(c->fd, c->size);
	double t0 = now();
	uint8_t *m = map_engine(c, e);
	csum_update(&got, m, (size_t)c->size);
	r->seconds = now() - t0;
	verify(c, e, pass, m, &got);
	unmap_engine(c, e, m, &r->st);
	fprintf(stderr, "upager-demo: %-8s %s pass: %.3f s, content verified\n",
		engine_name[e], pass, r->seconds);
}

/* ------------------------------------------------------------------ */
/* Report                                                              */
/* ------------------------------------------------------------------ */

static double mbps(const struct ctx *c, double s)
{
	return s > 0 ? (double)c->size / s / 1e6 : 0.0;
}

static void print_times(const struct ctx *c, struct pass_result r[ENG_COUNT][2])
{
	printf("\n%-9s %-5s %9s %10s %8s %9s\n", "engine", "pass", "seconds",
	       "MB/s", "vs mmap", "cached%");
	for (int pass = 0; pass < 2; pass++) {
		double base = mbps(c, r[ENG_MMAP][pass].seconds);
		for (int e = 0; e < ENG_COUNT; e++) {
			double v = mbps(c, r[e][pass].seconds);
			printf("%-9s %-5s %9.3f %10.1f %8.2f %8.1f%%\n",
			       engine_name[e], pass ? "warm" : "cold",
			       r[e][pass].seconds, v, base > 0 ? v / base : 0.0,
			       r[e][pass].cached_pct);
		}
	}
	printf("(vs mmap: throughput relative to plain mmap in the same pass; "
	       "cached%%: share of the file in the page cache when the pass "
	       "started)\n");
}

static void print_stats_row(const char *label, const struct upager_stats *st)
{
	printf("%-8s %9" PRIu64 " %9" PRIu64 " %11.1f %10" PRIu64 " %6" PRIu64
	       " %7" PRIu64 " %7" PRIu64 "\n",
	       label, st->faults, st->pages_installed,
	       (double)st->bytes_fetched / (double)MIB, st->prefetched,
	       st->zero_pages, upager_stats_percentile(st, 50),
	       upager_stats_percentile(st, 99));
}

static void print_stats(struct ctx *c, struct pass_result r[ENG_COUNT][2])
{
	struct upager_stats total;
	int rc = upager_stats(c->up, NULL, &total);

	if (rc != 0)
		die("upager_stats: %s", upager_strerror(rc));
	printf("\nupager counters (install unit %zu KiB, readahead %zu KiB)\n",
	       c->o->page_size / 1024, c->o->readahead / 1024);
	printf("%-8s %9s %9s %11s %10s %6s %7s %7s\n", "pass", "faults",
	       "installed", "fetched MiB", "prefetched", "zero", "p50 us",
	       "p99 us");
	print_stats_row("cold", &r[ENG_UPAGER][0].st);
	print_stats_row("warm", &r[ENG_UPAGER][1].st);
	print_stats_row("runtime", &total);
	if (total.read_errors || total.retries)
		printf("read errors %" PRIu64 ", install retries %" PRIu64 "\n",
		       total.read_errors, total.retries);
	printf("(faults: fault messages from the kernel; installed: units "
	       "installed; prefetched: units installed before any fault;\n"
	       " p50/p99: fault service time, upper bound of the histogram "
	       "bucket)\n");
}

/* ------------------------------------------------------------------ */

/* Exit code when userfaultfd is not available (ctest's skip code). */
#define EXIT_UNAVAILABLE 77

static void create_runtime(struct ctx *c)
{
	struct upager_config cfg = { .workers = c->o->workers };
	int rc = upager_create(&cfg, &c->up);

	if (rc == -EPERM || rc == -ENOSYS) {
		fprintf(stderr, "upager-demo: userfaultfd is not available to "
			"this process (%s): run as root or set "
			"vm.unprivileged_userfaultfd=1\n", upager_strerror(rc));
		exit(EXIT_UNAVAILABLE);
	}
	if (rc != 0)
		die("upager_create: %s", upager_strerror(rc));
}

static void open_store(struct ctx *c, const char *path)
{
	int rc = upager_store_file(path, c->o->direct ? UPAGER_STORE_DIRECT : 0,
				   &c->store);

	if (rc != 0)
		die("upager_store_file(%s): %s", path, upager_strerror(rc));
}

static void print_header(const struct ctx *c, const char *path)
{
	printf("upager-demo: upager %s\n", upager_version());
	printf("file: %s (%.1f MiB, %s)\n", path, (double)c->size / (double)MIB,
	       c->o->file ? "existing" : "generated, removed on exit");
	printf("upager: install unit %zu KiB, readahead %zu KiB, ",
	       c->o->page_size / 1024, c->o->readahead / 1024);
	if (c->o->workers)
		printf("%u workers\n", c->o->workers);
	else
		printf("default number of workers\n");
	if (c->o->direct)
		printf("upager store reads with O_DIRECT: its warm pass reads the disk too\n");
	printf("cold passes: page cache dropped first with fdatasync + "
	       "posix_fadvise(POSIX_FADV_DONTNEED)\n");
	printf("warm passes: a fresh mapping of the file while it is in the page cache\n");
	if (on_tmpfs(c->fd))
		printf("WARNING: the file is on tmpfs, whose pages cannot be "
		       "evicted: cold passes are warm. Set TMPDIR to a "
		       "directory on a disk.\n");
}

int main(int argc, char **argv)
{
	struct options o;
	struct ctx c = { .o = &o };
	struct pass_result r[ENG_COUNT][2];

	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_options(argc, argv, &o);
	install_signal_handlers();
	create_runtime(&c);
	if (o.file)
		c.fd = open_existing(o.file, &c.size, &c.expect);
	else
		c.fd = generate_file((c.size = o.size), &c.expect);
	const char *path = o.file ? o.file : tmp_path;

	open_store(&c, path);
	print_header(&c, path);
	for (int e = 0; e < ENG_COUNT; e++) {
		run_pass(&c, e, 1, &r[e][0]);
		run_pass(&c, e, 0, &r[e][1]);
	}
	print_times(&c, r);
	print_stats(&c, r);

	upager_store_release(c.store);
	upager_destroy(c.up);
	close(c.fd);
	if (tmp_path[0] && unlink(tmp_path) != 0)
		die("unlink %s: %s", tmp_path, strerror(errno));
	tmp_path[0] = '\0';
	printf("\nall %d passes read the same bytes as the file: OK\n",
	       2 * ENG_COUNT);
	return 0;
}
