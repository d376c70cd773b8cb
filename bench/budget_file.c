/*
 * budget_file.c - upager-budget-bench's writable-file comparison: a
 * WRITEBACK region over a writable file store against mmap(MAP_SHARED)
 * of the same file, each in a v1 memory cgroup of the same limit. The
 * phases each side runs, the file (made, hashed, checked after each side)
 * and the comparison's rows.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "budget_bench.h"
#include "kernel_env.h"

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
void file_workload(uint8_t *base, size_t len, const struct side_ops *so,
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

void compare_file(void)
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
			 "skipped: a budget under 48 MiB leaves no room in a "
			 "cgroup of that limit for upager's own memory beyond "
			 "its budget (11-14 MiB); give --headroom to run it "
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
			     "budget, 11-14 MiB, must fit in --headroom)",
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
