/*
 * report.c - what upager-bench prints: the human table with ratios, the
 * goals check, CSV (one row per configuration, fixed header) and JSON.
 *
 * Ratios compare runs of the same workload and thread count from the same
 * invocation only: this machine is shared and noisy, and ratios from one
 * run are what can be trusted. MB is 10^6 bytes of data the application
 * read.
 */
#define _GNU_SOURCE
#include <math.h>
#include <string.h>

#include "bench.h"
#include "upager.h"

static double mbps(const struct run_result *r)
{
	return r->seconds > 0 ? (double)r->bytes / r->seconds / 1e6 : 0;
}

static double opsps(const struct run_result *r)
{
	return r->seconds > 0 ? (double)r->ops / r->seconds : 0;
}

static const struct run_result *find(const struct run_result *r, size_t n,
				     const char *wl, const char *eng,
				     unsigned threads)
{
	for (size_t i = 0; i < n; i++)
		if (!r[i].error && strcmp(r[i].workload, wl) == 0 &&
		    strcmp(r[i].engine, eng) == 0 && r[i].threads == threads)
			return &r[i];
	return NULL;
}

static bool is_upager(const struct run_result *r)
{
	return strncmp(r->engine, "upager-", 7) == 0;
}

static bool holds_data(const struct run_result *r)
{
	return is_upager(r) || strncmp(r->engine, "raw-", 4) == 0;
}

/* What the engine added to the process beyond the data it holds:
 * (peak RSS - RSS before the engine started - data held - the in-memory
 * copy of the file the warm runs read from) / data held. */
static bool rss_overhead(const struct run_result *r, double *frac)
{
	double data = (double)r->data_bytes;
	double rss = (double)(r->peak_rss_kb - r->base_rss_kb) * 1024.0;

	if (!holds_data(r) || r->data_bytes == 0)
		return false;
	*frac = (rss - data - (double)r->aux_bytes) / data;
	return true;
}

static void unit_str(uint64_t b, char *out, size_t len)
{
	if (b >= MIB && b % MIB == 0)
		snprintf(out, len, "%lluM", (unsigned long long)(b / MIB));
	else if (b >= KIB && b % KIB == 0)
		snprintf(out, len, "%lluK", (unsigned long long)(b / KIB));
	else
		snprintf(out, len, "%llu", (unsigned long long)b);
}

static void num(char *out, size_t len, double v, int prec)
{
	if (v < 0 || isnan(v))
		snprintf(out, len, "-");
	else
		snprintf(out, len, "%.*f", prec, v);
}

static void ratio(char *out, size_t len, const struct run_result *r,
		  const struct run_result *base)
{
	if (!base || mbps(base) <= 0)
		snprintf(out, len, "-");
	else
		snprintf(out, len, "%.2f", mbps(r) / mbps(base));
}

static void table_row(FILE *f, const struct run_result *r,
		      const struct run_result *all, size_t n)
{
	char unit[24], p50[24], p99[24], data[24], over[24], xm[24], xd[24];
	double frac;

	unit_str(r->page_size, unit, sizeof(unit));
	if (r->error) {
		fprintf(f, "%-12s %-23s %3u %5s %-5s FAILED: %s\n", r->workload,
			r->engine, r->threads, unit, r->cold ? "cold" : "warm",
			r->message);
		return;
	}
	num(p50, sizeof(p50), r->p50_us, 1);
	num(p99, sizeof(p99), r->p99_us, 1);
	num(data, sizeof(data), holds_data(r) ? (double)r->data_bytes / MIB : -1, 1);
	if (rss_overhead(r, &frac))
		snprintf(over, sizeof(over), "%+.2f%%", frac * 100);
	else
		snprintf(over, sizeof(over), "-");
	ratio(xm, sizeof(xm), r, find(all, n, r->workload, "mmap", r->threads));
	ratio(xd, sizeof(xd), r, find(all, n, r->workload, "device", r->threads));
	fprintf(f, "%-12s %-23s %3u %5s %-5s %9.1f %10.0f %6.2f %8s %8s %8.1f %8s %8s %6s %6s\n",
		r->workload, r->engine, r->threads, unit, r->cold ? "cold" : "warm",
		mbps(r), opsps(r), r->cpu_seconds, p50, p99,
		(double)r->peak_rss_kb / 1024.0,
		data, over, xm, xd);
}

void report_table(FILE *f, const struct report_meta *m,
		  const struct run_result *r, size_t n)
{
	fprintf(f, "upager-bench (upager %s): %s, %.0f MiB on %s\n",
		upager_version(), m->path, (double)m->file_size / MIB, m->fs_type);
	fprintf(f, "cold runs start from: %s; median of %u run(s); rand: %llu reads "
		"per thread; MB = 10^6 bytes read by the application\n",
		m->evict_method, m->repeat, (unsigned long long)m->ops);
	fprintf(f, "command: %s\n\n", m->cmdline);
	fprintf(f, "%-12s %-23s %3s %5s %-5s %9s %10s %6s %8s %8s %8s %8s %8s %6s %6s\n",
		"workload", "engine", "thr", "unit", "cache", "MB/s", "ops/s",
		"CPU s", "p50 us", "p99 us", "RSS MiB", "data MiB", "RSS-data", "x mmap",
		"x dev");
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && (strcmp(r[i].workload, r[i - 1].workload) != 0 ||
			      r[i].threads != r[i - 1].threads))
			fputc('\n', f);
		table_row(f, &r[i], r, n);
	}
	fprintf(f, "\n"
		"unit: install unit (upager, raw-uffd, raw-sigbus) or I/O size (pread, device)\n"
		"CPU s: CPU time of the engine's process while the workload ran "
		"(every thread: the application's, upager's, the kernel's io_uring "
		"workers)\n"
		"p50/p99: per read (rand, rand-hinted, stride); device: per request, "
		"one thread, O_DIRECT io_uring at QD%u\n"
		"data MiB: bytes resident in the engine's region at the end\n"
		"RSS-data: (peak RSS - RSS before the engine started - data - "
		"in-memory copy of the file) / data\n"
		"x mmap, x dev: MB/s relative to mmap and to device in the same "
		"workload and thread count\n", m->qd);
}

/* ---- goals ---- */

static const struct run_result *best_upager(const struct run_result *r,
					    size_t n, const char *wl,
					    unsigned threads)
{
	const struct run_result *best = NULL;

	for (size_t i = 0; i < n; i++)
		if (!r[i].error && is_upager(&r[i]) &&
		    strcmp(r[i].workload, wl) == 0 && r[i].threads == threads &&
		    (!best || mbps(&r[i]) > mbps(best)))
			best = &r[i];
	return best;
}

static void goal_line(FILE *f, const char *what, const struct run_result *a,
		      const struct run_result *b, double want, bool lower_better,
		      double value)
{
	if (!a || !b) {
		fprintf(f, "  %-52s  not measured\n", what);
		return;
	}
	fprintf(f, "  %-52s %6.2f (goal %s %.2f: %s) [%s vs %s]\n", what, value,
		lower_better ? "<=" : ">=", want,
		(lower_better ? value <= want : value >= want) ? "met" : "NOT met",
		a->engine, b->engine);
}

static void goal_ratio(FILE *f, const struct run_result *r, size_t n,
		       const char *what, const char *wl, unsigned threads,
		       const char *base, double want)
{
	const struct run_result *u = best_upager(r, n, wl, threads);
	const struct run_result *b = find(r, n, wl, base, threads);

	goal_line(f, what, u, b, want, false,
		  u && b && mbps(b) > 0 ? mbps(u) / mbps(b) : 0);
}

static unsigned max_rand_threads(const struct run_result *r, size_t n)
{
	unsigned t = 0;

	for (size_t i = 0; i < n; i++)
		if (strcmp(r[i].workload, "rand") == 0 && r[i].threads > t)
			t = r[i].threads;
	return t;
}

/* Overhead over data held, worst case among the upager runs that held
 * most of the file (at least half of the largest amount any upager run
 * held): with little data the process's fixed pages would dominate, so
 * those runs are reported by their absolute overhead instead. */
static void goal_rss(FILE *f, const struct run_result *r, size_t n)
{
	const struct run_result *worst = NULL, *small = NULL;
	uint64_t most = 0;
	double wf = 0, frac, small_mib = 0;

	for (size_t i = 0; i < n; i++)
		if (!r[i].error && is_upager(&r[i]) && r[i].data_bytes > most)
			most = r[i].data_bytes;
	for (size_t i = 0; i < n; i++) {
		if (r[i].error || !is_upager(&r[i]) || !rss_overhead(&r[i], &frac))
			continue;
		if (r[i].data_bytes * 2 < most) {
			double mib = frac * (double)r[i].data_bytes / MIB;

			if (!small || mib > small_mib) {
				small = &r[i];
				small_mib = mib;
			}
			continue;
		}
		if (!worst || frac > wf) {
			worst = &r[i];
			wf = frac;
		}
	}
	if (!worst) {
		fprintf(f, "  %-52s  not measured\n", "upager peak RSS over data held");
		return;
	}
	fprintf(f, "  %-52s %5.2f%% (goal <= 1%%: %s) [worst: %s %s, %.0f MiB held]\n",
		"upager peak RSS over data held", wf * 100,
		wf <= 0.01 ? "met" : "NOT met", worst->workload, worst->engine,
		(double)worst->data_bytes / MIB);
	if (small)
		fprintf(f, "    runs holding less: at most %.1f MiB over data [%s %s, "
			"%.0f MiB held]\n", small_mib, small->workload, small->engine,
			(double)small->data_bytes / MIB);
}

/* Where the inline fault design's own cost puts a cold random 4 KiB miss:
 * raw-sigbus-4k (a bare SIGBUS handler: one O_DIRECT read, one copy)
 * against mmap-rand, and upager against it. Figures, not goals. */
static void floor_lines(FILE *f, const struct run_result *r, size_t n)
{
	const struct run_result *raw = find(r, n, "rand", "raw-sigbus-4k", 1);
	const struct run_result *m = find(r, n, "rand", "mmap-rand", 1);
	const struct run_result *u = best_upager(r, n, "rand", 1);

	if (!raw || mbps(raw) <= 0)
		return;
	if (m && mbps(m) > 0)
		fprintf(f, "  %-52s %6.2f (the design's floor, no goal)\n",
			"  cold rand 1 thread: raw-sigbus-4k / mmap-rand",
			mbps(raw) / mbps(m));
	if (u)
		fprintf(f, "  %-52s %6.2f [%s]\n",
			"  cold rand 1 thread: upager / raw-sigbus-4k",
			mbps(u) / mbps(raw), u->engine);
}

void report_goals(FILE *f, const struct run_result *r, size_t n)
{
	unsigned nt = max_rand_threads(r, n);
	const struct run_result *u, *raw;
	char what[64];

	fprintf(f, "\ngoals (best upager engine of each workload, this run):\n");
	goal_ratio(f, r, n, "cold seq: upager / device", "seq", 1, "device", 0.90);
	goal_ratio(f, r, n, "cold seq: upager / mmap-seq", "seq", 1, "mmap-seq", 1.0);
	goal_ratio(f, r, n, "cold seq: upager / mmap", "seq", 1, "mmap", 3.0);
	goal_ratio(f, r, n, "cold rand-hinted 1 thread: upager / mmap-rand",
		   "rand-hinted", 1, "mmap-rand", 4.0);
	/* The same, against mmap-rand without its WILLNEED hints (its rand
	 * run reads the same pages in the same order). */
	u = best_upager(r, n, "rand-hinted", 1);
	raw = find(r, n, "rand", "mmap-rand", 1);
	goal_line(f, "  same, vs mmap-rand unhinted (rand, 1 thread)", u, raw, 4.0,
		  false, u && raw && mbps(raw) > 0 ? mbps(u) / mbps(raw) : 0);
	if (nt > 1)
		snprintf(what, sizeof(what), "cold rand %u threads: upager / mmap-rand", nt);
	else
		snprintf(what, sizeof(what), "cold rand N threads: upager / mmap-rand");
	goal_ratio(f, r, n, what, "rand", nt, "mmap-rand", 1.0);
	floor_lines(f, r, n);
	u = find(r, n, "warm", "upager-2m", 1);
	raw = find(r, n, "warm", "raw-uffd-2m", 1);
	goal_line(f, "warm 2M units: upager time / raw-uffd time", u, raw, 1.25,
		  true, u && raw && raw->seconds > 0 ? u->seconds / raw->seconds : 0);
	goal_rss(f, r, n);
}

/* ---- CSV ---- */

static void csv_num(FILE *f, double v, int prec)
{
	if (v >= 0 && !isnan(v))
		fprintf(f, "%.*f", prec, v);
}

void report_csv(FILE *f, const struct run_result *r, size_t n)
{
	fprintf(f, "workload,engine,threads,page_size,cache,seconds,mb_per_s,"
		"ops_per_s,p50_us,p99_us,peak_rss_kb\n");
	for (size_t i = 0; i < n; i++) {
		if (r[i].error)
			continue;
		fprintf(f, "%s,%s,%u,%llu,%s,%.6f,%.2f,%.1f,", r[i].workload,
			r[i].engine, r[i].threads, (unsigned long long)r[i].page_size,
			r[i].cold ? "cold" : "warm", r[i].seconds, mbps(&r[i]),
			opsps(&r[i]));
		csv_num(f, r[i].p50_us, 2);
		fputc(',', f);
		csv_num(f, r[i].p99_us, 2);
		fprintf(f, ",%ld\n", r[i].peak_rss_kb);
	}
}

/* ---- JSON ---- */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, const char *key, double v, bool last)
{
	fprintf(f, "\"%s\": ", key);
	if (v < 0 || isnan(v))
		fprintf(f, "null");
	else
		fprintf(f, "%.6g", v);
	fprintf(f, last ? "" : ", ");
}

static void json_run(FILE *f, const struct run_result *r)
{
	double frac;

	fprintf(f, "    {\"workload\": ");
	json_str(f, r->workload);
	fprintf(f, ", \"engine\": ");
	json_str(f, r->engine);
	fprintf(f, ", \"threads\": %u, \"page_size\": %llu, \"cache\": \"%s\", ",
		r->threads, (unsigned long long)r->page_size,
		r->cold ? "cold" : "warm");
	fprintf(f, "\"ok\": %s, ", r->error ? "false" : "true");
	if (r->error) {
		fprintf(f, "\"error\": ");
		json_str(f, r->message);
		fprintf(f, ", ");
	}
	json_num(f, "seconds", r->seconds, false);
	json_num(f, "cpu_seconds", r->cpu_seconds, false);
	json_num(f, "mb_per_s", mbps(r), false);
	json_num(f, "ops_per_s", opsps(r), false);
	json_num(f, "p50_us", r->p50_us, false);
	json_num(f, "p99_us", r->p99_us, false);
	fprintf(f, "\"ops\": %llu, \"bytes\": %llu, \"checksum\": \"%016llx\", ",
		(unsigned long long)r->ops, (unsigned long long)r->bytes,
		(unsigned long long)r->checksum);
	fprintf(f, "\"peak_rss_kb\": %ld, \"base_rss_kb\": %ld, \"data_bytes\": %llu, "
		"\"aux_bytes\": %llu, ", r->peak_rss_kb, r->base_rss_kb,
		(unsigned long long)r->data_bytes,
		(unsigned long long)r->aux_bytes);
	json_num(f, "rss_overhead", rss_overhead(r, &frac) ? frac : -1, !r->has_stats);
	if (r->has_stats) {
		fprintf(f, "\"faults\": %llu, \"installed\": %llu, \"bytes_fetched\": %llu, "
			"\"prefetched\": %llu, ", (unsigned long long)r->faults,
			(unsigned long long)r->installed, (unsigned long long)r->fetched,
			(unsigned long long)r->prefetched);
		json_num(f, "fault_p50_us", r->fault_p50_us, false);
		json_num(f, "fault_p99_us", r->fault_p99_us, true);
	}
	fprintf(f, "}");
}

void report_json(FILE *f, const struct report_meta *m,
		 const struct run_result *r, size_t n)
{
	fprintf(f, "{\n  \"meta\": {\"upager_version\": ");
	json_str(f, upager_version());
	fprintf(f, ", \"file\": ");
	json_str(f, m->path);
	fprintf(f, ", \"file_size\": %llu, \"fs_type\": ",
		(unsigned long long)m->file_size);
	json_str(f, m->fs_type);
	fprintf(f, ", \"evict_method\": ");
	json_str(f, m->evict_method);
	fprintf(f, ", \"repeat\": %u, \"ops\": %llu, \"threads\": %u, \"command\": ",
		m->repeat, (unsigned long long)m->ops, m->threads);
	json_str(f, m->cmdline);
	fprintf(f, "},\n  \"runs\": [\n");
	for (size_t i = 0; i < n; i++) {
		json_run(f, &r[i]);
		fprintf(f, i + 1 < n ? ",\n" : "\n");
	}
	fprintf(f, "  ]\n}\n");
}
