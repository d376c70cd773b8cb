/*
 * wp_probe.c - what asynchronous write-protection would change, measured
 * on the running kernel with userfaultfd alone (no upager).
 *
 * upager tracks the first write to a unit a read installed with a
 * write-protect fault: the kernel stops the writer, the handler (the
 * faulting thread's SIGBUS handler, inline) marks the unit dirty and
 * removes the protection with UFFDIO_WRITEPROTECT. With
 * UFFD_FEATURE_WP_ASYNC the kernel removes it itself and PAGEMAP_SCAN on
 * /proc/self/pagemap later says which pages were written. This program
 * times both ways of taking a first write, the scans, and checks one fact
 * the write-back thread would depend on: whether UFFDIO_MOVE keeps a
 * page's write-protect bit (upager moves evicted pages out of the region
 * before it writes them back), and one a scan must allow for: whether
 * PAGEMAP_SCAN counts a hole as written (so scans here ask for written
 * pages that are present or swapped out). docs/design.md section 8 says what follows
 * from the answers.
 *
 *   upager-wp-probe [--pages N] [--format table|csv]
 *
 * Exit status 0; 77 when the kernel lacks userfaultfd write-protection,
 * WP_ASYNC, UFFDIO_MOVE or PAGEMAP_SCAN.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../src/compat.h"

/* PAGEMAP_SCAN (Linux 6.7, linux/fs.h): newer than Debian 12's headers. */
#ifndef PAGEMAP_SCAN
struct page_region {
	__u64 start, end, categories;
};
struct pm_scan_arg {
	__u64 size, flags, start, end, walk_end, vec, vec_len, max_pages;
	__u64 category_inverted, category_mask, category_anyof_mask;
	__u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#endif

#define PG 4096u

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static void die(const char *what)
{
	fprintf(stderr, "upager-wp-probe: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* A descriptor with @features, or -1 if the kernel refuses them. */
static int uffd_with(uint64_t features)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		die("userfaultfd");
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &api)) {
		close(fd);
		return -1;
	}
	return fd;
}

static char *region_new(int fd, size_t len, uint64_t mode)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	struct uffdio_register reg = {
		.range = { (uintptr_t)p, len }, .mode = mode,
	};
	if (ioctl(fd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");
	return p;
}

/* Installs n pages write-protected, as a read fault does. */
static void install_protected(int fd, char *p, size_t n)
{
	static char src[PG] __attribute__((aligned(PG)));
	memset(src, 7, PG);
	for (size_t i = 0; i < n; i++) {
		struct uffdio_copy c = {
			.dst = (uintptr_t)(p + i * PG), .src = (uintptr_t)src,
			.len = PG, .mode = UFFDIO_COPY_MODE_WP,
		};
		if (ioctl(fd, UFFDIO_COPY, &c))
			die("UFFDIO_COPY");
	}
}

/* Runs of written pages in [p, p + len): their count, *pages the pages.
 * protect: write-protect them again on the way (PM_SCAN_WP_MATCHING).
 * holes: take the kernel's word alone, which counts a hole as written;
 * else only pages there (present or swapped out) count. */
static long scan_pages(int pm, const char *p, size_t len, bool protect,
		       bool holes, size_t *pages)
{
	static struct page_region vec[1024];
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.flags = protect ? PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
				 : 0,
		.start = (uintptr_t)p, .end = (uintptr_t)p + len,
		.vec = (uintptr_t)vec, .vec_len = 1024,
		.category_mask = PAGE_IS_WRITTEN,
		.category_anyof_mask =
			holes ? 0 : PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		.return_mask = PAGE_IS_WRITTEN,
	};
	long n = ioctl(pm, PAGEMAP_SCAN, &a);
	if (n < 0)
		die("PAGEMAP_SCAN");
	*pages = 0;
	for (long i = 0; i < n; i++)
		*pages += (vec[i].end - vec[i].start) / PG;
	return n;
}

static long scan(int pm, const char *p, size_t len, bool protect,
		 size_t *pages)
{
	return scan_pages(pm, p, len, protect, false, pages);
}

/* The synchronous way, as upager's inline faults take it: the write
 * raises SIGBUS (UFFD_FEATURE_SIGBUS), the handler un-protects the page. */
static int sync_fd;
static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	uintptr_t a = (uintptr_t)si->si_addr & ~(uintptr_t)(PG - 1);
	struct uffdio_writeprotect wp = { .range = { a, PG }, .mode = 0 };
	if (ioctl(sync_fd, UFFDIO_WRITEPROTECT, &wp))
		_exit(3);
}

struct row {
	const char *what;
	double value;
	const char *unit;
};

int main(int argc, char **argv)
{
	size_t n = 4096;
	bool csv = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--pages") && i + 1 < argc) {
			char *end;
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (*end || v < 16 || v > (1ul << 20)) {
				fprintf(stderr, "upager-wp-probe: --pages: "
					"16 to 1048576\n");
				return 2;
			}
			n = v;
		} else if (!strcmp(argv[i], "--format") && i + 1 < argc) {
			const char *f = argv[++i];
			if (strcmp(f, "csv") && strcmp(f, "table")) {
				fprintf(stderr, "upager-wp-probe: --format: "
					"table or csv\n");
				return 2;
			}
			csv = !strcmp(f, "csv");
		} else {
			fprintf(stderr, "usage: upager-wp-probe [--pages N] "
				"[--format table|csv]\n");
			return 2;
		}
	}
	size_t len = n * PG;
	uint64_t wp = UFFD_FEATURE_PAGEFAULT_FLAG_WP;
	int afd = uffd_with(wp | UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE);
	sync_fd = uffd_with(wp | UFFD_FEATURE_SIGBUS);
	int mfd = uffd_with(UFFD_FEATURE_MOVE);
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (afd < 0 || sync_fd < 0 || mfd < 0 || pm < 0) {
		fprintf(stderr, "upager-wp-probe: this kernel lacks "
			"write-protect faults, WP_ASYNC or UFFDIO_MOVE\n");
		return 77;
	}
	uint64_t both = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
	struct row rows[10];
	int nr = 0;

	/* First writes, synchronous: SIGBUS and UFFDIO_WRITEPROTECT. */
	struct sigaction sa = { .sa_sigaction = on_sigbus,
				.sa_flags = SA_SIGINFO };
	sigaction(SIGBUS, &sa, NULL);
	char *s = region_new(sync_fd, len, both);
	install_protected(sync_fd, s, n);
	double t0 = now_us();
	for (size_t i = 0; i < n; i++)
		s[i * PG] = 1;
	rows[nr++] = (struct row){ "first write: SIGBUS + un-protect",
				   (now_us() - t0) / (double)n, "us/page" };

	/* First writes, asynchronous: resolved inside the kernel. */
	char *a = region_new(afd, len, both);
	install_protected(afd, a, n);
	size_t pages;
	struct pm_scan_arg probe = { .size = sizeof(probe),
				     .start = (uintptr_t)a,
				     .end = (uintptr_t)a + PG };
	if (ioctl(pm, PAGEMAP_SCAN, &probe) < 0) {
		fprintf(stderr, "upager-wp-probe: no PAGEMAP_SCAN: %s\n",
			strerror(errno));
		return 77;
	}
	t0 = now_us();
	for (size_t i = 0; i < n; i++)
		a[i * PG] = 1;
	rows[nr++] = (struct row){ "first write: WP_ASYNC",
				   (now_us() - t0) / (double)n, "us/page" };

	/* Scans: all written, then (after protecting them) all clean. */
	t0 = now_us();
	scan(pm, a, len, false, &pages);
	rows[nr++] = (struct row){ "PAGEMAP_SCAN: all written",
				   (now_us() - t0) * 1000 / (double)n,
				   "ns/page" };
	if (pages != n) {
		fprintf(stderr, "upager-wp-probe: %zu of %zu pages read as "
			"written\n", pages, n);
		return 1;
	}
	t0 = now_us();
	scan(pm, a, len, true, &pages);
	rows[nr++] = (struct row){ "PAGEMAP_SCAN + WP_MATCHING: all written",
				   (now_us() - t0) * 1000 / (double)n,
				   "ns/page" };
	t0 = now_us();
	scan(pm, a, len, false, &pages);
	rows[nr++] = (struct row){ "PAGEMAP_SCAN: all clean",
				   (now_us() - t0) * 1000 / (double)n,
				   "ns/page" };
	if (pages != 0) {
		fprintf(stderr, "upager-wp-probe: %zu pages still written "
			"after WP_MATCHING\n", pages);
		return 1;
	}
	t0 = now_us();
	for (size_t i = 0; i < 1000; i++)
		scan(pm, a + (i % n) * PG, PG, false, &pages);
	rows[nr++] = (struct row){ "PAGEMAP_SCAN of one page",
				   (now_us() - t0) / 1000, "us" };

	/* A range never populated, asked for written pages alone. */
	char *hole = region_new(afd, 16 * PG, both);
	scan_pages(pm, hole, 16 * PG, false, true, &pages);
	rows[nr++] = (struct row){ "PAGEMAP_SCAN reports holes as written",
				   pages ? 1 : 0, "1 = yes" };

	/* UFFDIO_MOVE of a clean (protected) page: does it arrive clean? */
	char *scratch = region_new(mfd, 2 * PG, UFFDIO_REGISTER_MODE_WP);
	struct uffdio_move mv = { .dst = (uintptr_t)scratch,
				  .src = (uintptr_t)a, .len = PG };
	if (ioctl(mfd, UFFDIO_MOVE, &mv))
		die("UFFDIO_MOVE");
	scan(pm, scratch, PG, false, &pages);
	rows[nr++] = (struct row){ "UFFDIO_MOVE keeps write-protection",
				   pages == 0 ? 1 : 0, "1 = yes" };

	if (csv) {
		printf("what,value,unit\n");
		for (int i = 0; i < nr; i++)
			printf("%s,%.3f,%s\n", rows[i].what, rows[i].value,
			       rows[i].unit);
	} else {
		printf("upager-wp-probe: %zu pages of 4 KiB\n", n);
		for (int i = 0; i < nr; i++)
			printf("%-42s %10.3f  %s\n", rows[i].what,
			       rows[i].value, rows[i].unit);
	}
	return 0;
}
