/*
 * options.c - the command line of upager-bench: defaults, parsing and
 * --help. Sizes (and --ops) use the shared syntax of cli/size.h: decimal,
 * binary suffixes K, M, G, T; engine lists take exact names, shell
 * patterns ("upager-*-direct") or a family name ("upager", "raw-uffd")
 * meaning all of its engines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "size.h"

#define DEFAULT_OPS 10000

static void usage(void)
{
	printf(
"usage: upager-bench [options]\n"
"\n"
"Compares upager with mmap, pread and the raw device on one file, each run\n"
"in its own child process, and checks that every engine read the same bytes.\n"
"\n"
"  --size SIZE        size of the generated file (default 1G)\n"
"  --file PATH        use an existing file instead of generating one\n"
"  --dir DIR          where to generate (default $TMPDIR, else /var/tmp;\n"
"                     memory file systems are refused)\n"
"  --keep             keep the generated file\n"
"  --workload LIST    comma list of seq,rand,rand-hinted,stride,warm or all\n"
"  --engines LIST     comma list of engines, patterns or families, or all\n"
"  --list             print the engines and workloads and exit\n"
"  --threads N        application threads of the multithreaded rand (default 8);\n"
"                     rand runs with 1 and with N threads\n"
"  --ops N            reads per thread of rand and rand-hinted (default %d;\n"
"                     takes SIZE's suffixes: 10K is 10240)\n"
"  --repeat R         run each configuration R times, report the median (default 1)\n"
"  --stride K         stride workload reads every K-th 4 KiB page (default 16)\n"
"  --hint-batch N     offsets rand-hinted knows ahead (default 256)\n"
"  --readahead SIZE   upager map option readahead (default 4M; 0 disables)\n"
"  --no-advice        upager gets no SEQUENTIAL/RANDOM advice (with\n"
"                     --readahead 0: every unit is a demand fault)\n"
"  --qd N             device engine queue depth (default 32)\n"
"  --device-io SIZE   device engine request size of the seq scan (default 1M)\n"
"  --seed N           PRNG and data seed (default 42)\n"
"  --timeout SEC      kill a run after SEC seconds (default 600)\n"
"  --format FMT       table (default), csv or json on stdout\n"
"  --out DIR          also write results.txt, results.csv, results.json in DIR\n"
"  --no-drop-caches   evict with fadvise only, even as root\n"
"  --no-reference     skip the pread reference checksum (for profiling or huge\n"
"                     files): engines are compared with the first one only\n"
"  --quiet            no progress on stderr\n"
"  --help             this text\n"
"\n"
"SIZE is a decimal number of bytes with an optional suffix K, M, G or T\n"
"(powers of 1024; also written KiB or KB, any case), e.g. 64M or 1GiB.\n"
"\n"
"Exit status: 0 when every run succeeded and every checksum matched the\n"
"reference; 1 when a run failed or a checksum differed; 2 on a usage error;\n"
"77 when userfaultfd is unavailable and its engines were skipped.\n",
		DEFAULT_OPS);
}

static void list(void)
{
	printf("workloads:");
	for (int w = 0; w < WL_COUNT; w++)
		printf(" %s", workload_name((enum workload)w));
	printf("\nengines:\n");
	for (size_t i = 0; i < bench_nengines; i++) {
		printf("  %-23s", bench_engines[i].name);
		for (int w = 0; w < WL_COUNT; w++)
			if (engine_supports(&bench_engines[i], (enum workload)w))
				printf(" %s", workload_name((enum workload)w));
		printf("\n");
	}
}

/* A plain number (no suffix), decimal, 0x hex or 0 octal, as strtoull. */
static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || s[0] == '-' || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
	uint64_t v;

	if (parse_u64(s, &v) || v < lo || v > hi)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

static int select_engines(const char *arg, struct options *o)
{
	char *copy = strdup(arg), *save = NULL;
	int err = 0;

	if (!copy)
		return -ENOMEM;
	memset(o->eng_on, 0, sizeof(o->eng_on));
	for (char *tok = strtok_r(copy, ",", &save); tok && !err;
	     tok = strtok_r(NULL, ",", &save)) {
		char family[64];
		bool hit = false;

		snprintf(family, sizeof(family), "%s-*", tok);
		for (size_t i = 0; i < bench_nengines; i++) {
			const char *n = bench_engines[i].name;
			bool m = strcmp(tok, "all") == 0 || fnmatch(tok, n, 0) == 0 ||
				 (!engine_find(tok) && fnmatch(family, n, 0) == 0);

			if (m)
				o->eng_on[i] = hit = true;
		}
		if (!hit) {
			fprintf(stderr, "upager-bench: unknown engine '%s' (see --list)\n",
				tok);
			err = -EINVAL;
		}
	}
	free(copy);
	return err;
}

static int select_workloads(const char *arg, struct options *o)
{
	char *copy = strdup(arg), *save = NULL;
	int err = 0;

	if (!copy)
		return -ENOMEM;
	memset(o->wl_on, 0, sizeof(o->wl_on));
	for (char *tok = strtok_r(copy, ",", &save); tok && !err;
	     tok = strtok_r(NULL, ",", &save)) {
		enum workload w;

		if (strcmp(tok, "all") == 0) {
			for (int i = 0; i < WL_COUNT; i++)
				o->wl_on[i] = true;
		} else if (workload_parse(tok, &w) == 0) {
			o->wl_on[w] = true;
		} else {
			fprintf(stderr, "upager-bench: unknown workload '%s'\n", tok);
			err = -EINVAL;
		}
	}
	free(copy);
	return err;
}

static void set_defaults(struct options *o)
{
	memset(o, 0, sizeof(*o));
	o->size = GIB;
	o->threads = 8;
	o->repeat = 1;
	o->ops = DEFAULT_OPS;
	o->seed = 42;
	o->stride = 16;
	o->hint_batch = 256;
	o->readahead = 4 * MIB;
	o->qd = 32;
	o->seq_io = MIB;
	o->timeout = 600;
	o->format = FMT_TABLE;
	for (int w = 0; w < WL_COUNT; w++)
		o->wl_on[w] = true;
	for (size_t i = 0; i < bench_nengines; i++)
		o->eng_on[i] = true;
}

enum {
	OPT_KEEP = 256, OPT_LIST, OPT_STRIDE, OPT_HINT, OPT_RA, OPT_QD,
	OPT_SEED, OPT_TIMEOUT, OPT_NODROP, OPT_CORRUPT, OPT_DIR, OPT_DEVIO, OPT_NOREF, OPT_NOADV,
};

static const struct option longopts[] = {
	{ "size", required_argument, NULL, 's' },
	{ "file", required_argument, NULL, 'f' },
	{ "dir", required_argument, NULL, OPT_DIR },
	{ "keep", no_argument, NULL, OPT_KEEP },
	{ "workload", required_argument, NULL, 'w' },
	{ "workloads", required_argument, NULL, 'w' },
	{ "engines", required_argument, NULL, 'e' },
	{ "engine", required_argument, NULL, 'e' },
	{ "list", no_argument, NULL, OPT_LIST },
	{ "threads", required_argument, NULL, 't' },
	{ "ops", required_argument, NULL, 'n' },
	{ "repeat", required_argument, NULL, 'r' },
	{ "stride", required_argument, NULL, OPT_STRIDE },
	{ "hint-batch", required_argument, NULL, OPT_HINT },
	{ "readahead", required_argument, NULL, OPT_RA },
	{ "qd", required_argument, NULL, OPT_QD },
	{ "device-io", required_argument, NULL, OPT_DEVIO },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "format", required_argument, NULL, 'F' },
	{ "out", required_argument, NULL, 'o' },
	{ "no-drop-caches", no_argument, NULL, OPT_NODROP },
	{ "no-reference", no_argument, NULL, OPT_NOREF },
	{ "no-advice", no_argument, NULL, OPT_NOADV },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	/* Self-test of the checksum comparison: alters one engine's sum. */
	{ "corrupt-checksum", required_argument, NULL, OPT_CORRUPT },
	{ NULL, 0, NULL, 0 },
};

static int parse_format(const char *s, enum out_format *f)
{
	if (strcmp(s, "table") == 0)
		*f = FMT_TABLE;
	else if (strcmp(s, "csv") == 0)
		*f = FMT_CSV;
	else if (strcmp(s, "json") == 0)
		*f = FMT_JSON;
	else
		return -EINVAL;
	return 0;
}

static int parse_one(int c, const char *arg, struct options *o)
{
	uint64_t v;
	int err = 0;

	switch (c) {
	case 's':
		err = cli_parse_size(arg, &o->size);
		if (!err && o->size < 4 * MIB)
			err = -EINVAL;
		break;
	case 'f': o->file = arg; break;
	case OPT_DIR: o->dir = arg; break;
	case OPT_KEEP: o->keep = true; break;
	case 'w': err = select_workloads(arg, o); break;
	case 'e': err = select_engines(arg, o); break;
	case 't': err = parse_uint(arg, 1, BENCH_MAX_THREADS, &o->threads); break;
	case 'n':
		err = cli_parse_size(arg, &o->ops);
		if (!err && (o->ops == 0 || o->ops > 100000000))
			err = -EINVAL;
		break;
	case 'r': err = parse_uint(arg, 1, 1000, &o->repeat); break;
	case OPT_STRIDE: err = parse_uint(arg, 1, 1u << 20, &o->stride); break;
	case OPT_HINT: err = parse_uint(arg, 1, 1u << 16, &o->hint_batch); break;
	case OPT_RA:
		err = cli_parse_size(arg, &v);
		if (!err && v > GIB)
			err = -EINVAL;
		o->readahead = (size_t)v;
		break;
	case OPT_QD: err = parse_uint(arg, 1, 4096, &o->qd); break;
	case OPT_DEVIO:
		err = cli_parse_size(arg, &v);
		if (!err && (v < BENCH_PAGE || v > 64 * MIB || v % BENCH_PAGE))
			err = -EINVAL;
		o->seq_io = (size_t)v;
		break;
	case OPT_SEED: err = parse_u64(arg, &o->seed); break;
	case OPT_TIMEOUT: err = parse_uint(arg, 1, 86400, &o->timeout); break;
	case 'F': err = parse_format(arg, &o->format); break;
	case 'o': o->out_dir = arg; break;
	case OPT_NODROP: o->no_drop = true; break;
	case OPT_NOREF: o->no_reference = true; break;
	case OPT_NOADV: o->no_advice = true; break;
	case 'q': o->quiet = true; break;
	case OPT_CORRUPT: o->corrupt = arg; break;
	default: err = -EINVAL; break;
	}
	return err;
}

static const char *opt_name(int c)
{
	for (const struct option *lo = longopts; lo->name; lo++)
		if (lo->val == c)
			return lo->name;
	return "?";
}

/* Returns 0 to go on, 1 when done (help, list), -EINVAL on bad usage. */
int options_parse(int argc, char **argv, struct options *o)
{
	int c;

	set_defaults(o);
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		if (c == 'h') {
			usage();
			return 1;
		}
		if (c == OPT_LIST) {
			list();
			return 1;
		}
		if (c == '?' || parse_one(c, optarg, o) != 0) {
			if (c != '?')
				fprintf(stderr, "upager-bench: bad value for --%s: '%s'\n",
					opt_name(c), optarg);
			fprintf(stderr, "Try 'upager-bench --help'.\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "upager-bench: unexpected argument '%s'\n",
			argv[optind]);
		return -EINVAL;
	}
	return 0;
}
