/*
 * main.c - upager-bench: compares upager with mmap, pread and the raw
 * device on one file, in one invocation, and checks that every engine
 * read the same bytes.
 *
 * The plan: for each workload (and, for rand, each thread count), a
 * reference checksum from plain preads, then each engine in turn, each
 * repeat from a cold (evicted) or warm page cache as the workload says,
 * each in its own child process (runner.c). The median repeat by time is
 * reported. A checksum that differs from the reference, or a run that
 * fails, makes the exit status 1 after the report is printed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"
#include "upager.h"

static char generated[4096]; /* removed on exit and on SIGINT/SIGTERM */

static void on_signal(int sig)
{
	if (generated[0])
		unlink(generated);
	signal(sig, SIG_DFL);
	raise(sig);
}

struct bench {
	struct options o;
	char path[4096];
	uint64_t file_size;
	const char *evict_method;
	struct progress *progress;
	struct run_result *res;
	size_t nres, capres;
	unsigned nruns, run_index;
	bool failed, mismatch, uffd_missing;
	char cmdline[1024];
};

/* Whether engines of kind @k can run here: raw-uffd opens a userfaultfd
 * itself; upager may also use /dev/userfaultfd, so ask it. The runtime is
 * destroyed (its threads joined) before any run is forked. */
static bool uffd_available(enum engine_kind k, char *why, size_t len)
{
	upager_t *up = NULL;
	int fd, err;

	if (k == ENG_RAW_UFFD || k == ENG_RAW_SIGBUS) {
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
		if (fd < 0) {
			snprintf(why, len, "userfaultfd(): %s", strerror(errno));
			return false;
		}
		close(fd);
		return true;
	}
	err = upager_create(NULL, &up);
	upager_destroy(up);
	if (err)
		snprintf(why, len, "upager_create: %s", upager_strerror(err));
	return err == 0;
}

/* Drops the engines that cannot run for lack of userfaultfd (exit 77 at
 * the end, so that the test suite reports a skip, not a pass). */
static void drop_uffd_engines(struct bench *b)
{
	int avail[2] = { -1, -1 }; /* upager, raw-uffd: unknown, no, yes */
	char why[2][160];

	for (size_t i = 0; i < bench_nengines; i++) {
		enum engine_kind k = bench_engines[i].kind;
		int j = k != ENG_UPAGER;

		if (!b->o.eng_on[i] ||
		    (k != ENG_UPAGER && k != ENG_RAW_UFFD && k != ENG_RAW_SIGBUS))
			continue;
		if (avail[j] < 0)
			avail[j] = uffd_available(k, why[j], sizeof(why[j]));
		if (avail[j])
			continue;
		b->o.eng_on[i] = false;
		b->uffd_missing = true;
		fprintf(stderr, "upager-bench: %s skipped: %s (see "
			"vm.unprivileged_userfaultfd)\n", bench_engines[i].name, why[j]);
	}
}

static int prepare_file(struct bench *b)
{
	struct stat st;
	char dir[2048], why[256];
	int err;

	if (b->o.file) {
		snprintf(b->path, sizeof(b->path), "%s", b->o.file);
	} else {
		err = datafile_pick_dir(b->o.dir, dir, sizeof(dir), why, sizeof(why));
		if (why[0])
			fprintf(stderr, "upager-bench: %s\n", why);
		if (err) {
			fprintf(stderr, "upager-bench: no disk directory to write the "
				"data file in (use --dir or --file)\n");
			return err;
		}
		snprintf(b->path, sizeof(b->path), "%s/upager-bench.%d.dat", dir,
			 (int)getpid());
		snprintf(generated, sizeof(generated), "%s", b->path);
		err = datafile_generate(b->path, b->o.size, b->o.seed, b->o.quiet);
		if (err) {
			fprintf(stderr, "upager-bench: writing %s: %s\n", b->path,
				strerror(-err));
			return err;
		}
	}
	if (stat(b->path, &st) != 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "upager-bench: %s: not a regular file\n", b->path);
		return -EINVAL;
	}
	b->file_size = (uint64_t)st.st_size;
	if (b->file_size < 64 * BENCH_PAGE) {
		fprintf(stderr, "upager-bench: %s is too small\n", b->path);
		return -EINVAL;
	}
	if (strcmp(fs_type_name(b->path), "tmpfs") == 0)
		fprintf(stderr, "upager-bench: warning: %s is on tmpfs: cold runs "
			"measure memory, not a disk\n", b->path);
	return 0;
}

static struct run_spec base_spec(struct bench *b, enum workload w,
				 unsigned threads)
{
	return (struct run_spec){
		.wl = w,
		.threads = threads,
		.path = b->path,
		.file_size = b->file_size,
		.npages = b->file_size / BENCH_PAGE,
		.ops = b->o.ops,
		.seed = b->o.seed,
		.stride = b->o.stride,
		.hint_batch = b->o.hint_batch,
		.readahead = b->o.readahead,
		.no_advice = b->o.no_advice,
		.qd = b->o.qd,
		.seq_io = b->o.seq_io,
		.timeout = b->o.timeout,
		.progress = b->progress,
	};
}

static int prepare_cache(struct bench *b, enum workload w)
{
	const char *method = NULL;
	double left;
	int err;

	if (!workload_is_cold(w))
		return cache_warm(b->path);

	err = cache_evict(b->path, !b->o.no_drop, &method);
	if (err)
		return err;
	b->evict_method = method;
	left = cache_resident(b->path);
	if (left > 0.01)
		fprintf(stderr, "upager-bench: warning: %.1f%% of the file still in "
			"the page cache after eviction\n", left * 100);
	return 0;
}

static int cmp_seconds(const void *a, const void *b)
{
	const struct run_result *x = a, *y = b;

	return (x->seconds > y->seconds) - (x->seconds < y->seconds);
}

/* *ref is the pread reference, or with --no-reference unset until the
 * first successful run of the configuration provides it. */
static void check_checksum(struct bench *b, const struct run_result *r,
			   uint64_t *ref, bool *have_ref)
{
	if (r->error)
		return;
	if (!*have_ref) {
		*ref = r->checksum;
		*have_ref = true;
		return;
	}
	if (r->checksum == *ref)
		return;
	b->mismatch = true;
	fprintf(stderr, "upager-bench: error: checksum mismatch: %s %s threads=%u: "
		"%016llx, reference %016llx\n", r->workload, r->engine, r->threads,
		(unsigned long long)r->checksum, (unsigned long long)*ref);
}

static void run_label(const struct run_spec *s, unsigned rep, unsigned nrep,
		      unsigned idx, unsigned total, char *out, size_t len)
{
	if (nrep > 1)
		snprintf(out, len, "[%u/%u] %s %s threads=%u (repeat %u/%u)", idx,
			 total, workload_name(s->wl), s->eng->name, s->threads,
			 rep + 1, nrep);
	else
		snprintf(out, len, "[%u/%u] %s %s threads=%u", idx, total,
			 workload_name(s->wl), s->eng->name, s->threads);
}

/* One run of one engine; fills @r and returns true when it succeeded
 * and its checksum is right. */
static bool run_once(struct bench *b, const struct run_spec *s, unsigned rep,
		     uint64_t *ref, bool *have_ref, struct run_result *r)
{
	char label[160];
	int err;

	run_label(s, rep, b->o.repeat, ++b->run_index, b->nruns, label,
		  sizeof(label));
	if (!b->o.quiet)
		fprintf(stderr, "%s ...\n", label);
	err = prepare_cache(b, s->wl);
	if (!err)
		err = runner_run(s, label, b->o.quiet, r);
	if (err) {
		memset(r, 0, sizeof(*r));
		snprintf(r->workload, sizeof(r->workload), "%s", workload_name(s->wl));
		snprintf(r->engine, sizeof(r->engine), "%s", s->eng->name);
		r->threads = s->threads;
		r->cold = workload_is_cold(s->wl);
		result_fail(r, err, "set-up: %s", strerror(-err));
	}
	if (b->o.corrupt && strcmp(b->o.corrupt, s->eng->name) == 0)
		r->checksum ^= 1;
	check_checksum(b, r, ref, have_ref);
	if (r->error) {
		b->failed = true;
		fprintf(stderr, "upager-bench: error: %s: %s\n", label, r->message);
		return false;
	}
	if (!b->o.quiet)
		fprintf(stderr, "  %.1f MB/s in %.2f s, peak RSS %.1f MiB\n",
			(double)r->bytes / r->seconds / 1e6, r->seconds,
			(double)r->peak_rss_kb / 1024);
	return true;
}

/* Keeps the median successful repeat by time, or the last failure when
 * none succeeded. */
static void keep_median(struct bench *b, struct run_result *reps, unsigned ok,
			const struct run_result *failure)
{
	if (ok == 0) {
		b->res[b->nres++] = *failure;
		return;
	}
	qsort(reps, ok, sizeof(reps[0]), cmp_seconds);
	b->res[b->nres++] = reps[(ok - 1) / 2];
}

static unsigned thread_counts(const struct bench *b, enum workload w,
			      unsigned out[2])
{
	out[0] = 1;
	if (w == WL_RAND && b->o.threads > 1) {
		out[1] = b->o.threads;
		return 2;
	}
	return 1;
}

static unsigned engines_for(const struct bench *b, enum workload w)
{
	unsigned n = 0;

	for (size_t i = 0; i < bench_nengines; i++)
		n += b->o.eng_on[i] && engine_supports(&bench_engines[i], w);
	return n;
}

static void count_runs(struct bench *b)
{
	unsigned t[2];

	b->nruns = 0;
	b->capres = 0;
	for (int w = 0; w < WL_COUNT; w++) {
		if (!b->o.wl_on[w])
			continue;
		unsigned nt = thread_counts(b, (enum workload)w, t);
		unsigned ne = engines_for(b, (enum workload)w);

		b->capres += nt * ne;
		b->nruns += nt * ne * b->o.repeat;
	}
}

/* Runs every engine on one configuration. Repeats go round the engines
 * (A B C, A B C, ...) rather than engine by engine, so that a change in
 * the machine's load weighs on all engines alike. */
static int run_config(struct bench *b, enum workload w, unsigned threads)
{
	struct run_spec s = base_spec(b, w, threads);
	const struct engine *eng[BENCH_MAX_ENGINES];
	unsigned ne = 0, rep = b->o.repeat;
	struct run_result *reps, *fail;
	unsigned *ok;
	uint64_t ref = 0;
	bool have_ref = !b->o.no_reference;
	int err = have_ref ? reference_checksum(&s, &ref) : 0;

	if (err) {
		fprintf(stderr, "upager-bench: reference checksum of %s: %s\n",
			workload_name(w), strerror(-err));
		return err;
	}
	for (size_t i = 0; i < bench_nengines; i++)
		if (b->o.eng_on[i] && engine_supports(&bench_engines[i], w))
			eng[ne++] = &bench_engines[i];
	reps = calloc((size_t)ne * rep + 1, sizeof(*reps));
	fail = calloc(ne + 1, sizeof(*fail));
	ok = calloc(ne + 1, sizeof(*ok));
	if (!reps || !fail || !ok) {
		err = -ENOMEM;
		goto out;
	}
	for (unsigned r = 0; r < rep; r++) {
		for (unsigned e = 0; e < ne; e++) {
			struct run_result *slot = &reps[(size_t)e * rep + ok[e]];

			s.eng = eng[e];
			if (run_once(b, &s, r, &ref, &have_ref, slot))
				ok[e]++;
			else
				fail[e] = *slot;
		}
	}
	for (unsigned e = 0; e < ne; e++)
		keep_median(b, &reps[(size_t)e * rep], ok[e], &fail[e]);
out:
	free(reps);
	free(fail);
	free(ok);
	return err;
}

static int run_all(struct bench *b)
{
	unsigned t[2];

	count_runs(b);
	b->res = calloc(b->capres ? b->capres : 1, sizeof(*b->res));
	if (!b->res)
		return -ENOMEM;
	for (int w = 0; w < WL_COUNT; w++) {
		if (!b->o.wl_on[w])
			continue;
		unsigned nt = thread_counts(b, (enum workload)w, t);

		for (unsigned i = 0; i < nt; i++) {
			int err = run_config(b, (enum workload)w, t[i]);

			if (err)
				return err;
		}
	}
	return 0;
}

static void report(struct bench *b, FILE *f, enum out_format fmt)
{
	struct report_meta m = {
		.path = b->path,
		.file_size = b->file_size,
		.fs_type = fs_type_name(b->path),
		.evict_method = b->evict_method ? b->evict_method : "-",
		.repeat = b->o.repeat,
		.ops = b->o.ops,
		.threads = b->o.threads,
		.qd = b->o.qd,
		.cmdline = b->cmdline,
	};

	switch (fmt) {
	case FMT_CSV:
		report_csv(f, b->res, b->nres);
		break;
	case FMT_JSON:
		report_json(f, &m, b->res, b->nres);
		break;
	default:
		report_table(f, &m, b->res, b->nres);
		report_goals(f, b->res, b->nres);
		break;
	}
}

static int write_out_dir(struct bench *b)
{
	static const struct { const char *name; enum out_format fmt; } files[] = {
		{ "results.txt", FMT_TABLE },
		{ "results.csv", FMT_CSV },
		{ "results.json", FMT_JSON },
	};
	char p[4096];

	if (mkdir(b->o.out_dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "upager-bench: mkdir %s: %s\n", b->o.out_dir,
			strerror(errno));
		return -errno;
	}
	for (size_t i = 0; i < 3; i++) {
		FILE *f;

		snprintf(p, sizeof(p), "%s/%s", b->o.out_dir, files[i].name);
		f = fopen(p, "w");
		if (!f) {
			fprintf(stderr, "upager-bench: %s: %s\n", p, strerror(errno));
			return -errno;
		}
		report(b, f, files[i].fmt);
		fclose(f);
	}
	return 0;
}

static void join_args(int argc, char **argv, char *out, size_t len)
{
	size_t used = 0;

	out[0] = '\0';
	for (int i = 0; i < argc && used + 1 < len; i++)
		used += (size_t)snprintf(out + used, len - used, "%s%s",
					 i ? " " : "", argv[i]);
}

int main(int argc, char **argv)
{
	static struct bench b;
	int err;

	err = options_parse(argc, argv, &b.o);
	if (err)
		return err > 0 ? 0 : 2;
	join_args(argc, argv, b.cmdline, sizeof(b.cmdline));
	/* A fixed threshold: big buffers are unmapped when freed, so the
	 * parent's heap does not grow into every child's RSS. */
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	drop_uffd_engines(&b);
	b.progress = mmap(NULL, sizeof(*b.progress), PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (b.progress == MAP_FAILED)
		b.progress = NULL;
	err = prepare_file(&b);
	if (!err)
		err = run_all(&b);
	if (!err) {
		report(&b, stdout, b.o.format);
		if (b.o.out_dir)
			err = write_out_dir(&b);
	}
	if (generated[0] && !b.o.keep)
		unlink(generated);
	else if (generated[0] && !b.o.quiet)
		fprintf(stderr, "upager-bench: kept %s\n", generated);
	free(b.res);
	if (err || b.failed || b.mismatch)
		return 1;
	return b.uffd_missing ? 77 : 0;
}
