/*
 * daemon_vs_inproc.c - fault service time served in process vs through
 * upagerd, on the same workload.
 *
 * Workload: a file (in the page cache) mapped as one region; one thread
 * touches every unit once in a shuffled order and times each first touch
 * (clock_gettime around the load), i.e. the whole fault round trip as the
 * application sees it: kernel -> manager -> worker -> UFFDIO_COPY -> wake.
 * The in-process runtime and a daemon-served runtime take turns, several
 * rounds each, so that drift on a shared machine hits both alike.
 *
 * usage: daemon_vs_inproc [--mib N] [--rounds N] [--unit SIZE]
 * Prints a table and CSV lines (mode,unit,faults,mean_us,p50_us,p99_us).
 * A benchmark, not a test: it asserts nothing about the numbers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "upager.h"
#include "size.h"

#ifndef UPAGERD_PATH
#define UPAGERD_PATH "upagerd"
#endif

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

struct result {
	double mean, p50, p99;
	size_t n;
};

static int run(const char *sock, const char *file, size_t len, size_t unit,
	       unsigned seed, struct result *res)
{
	struct upager_config c = { .daemon_socket = sock };
	upager_t *up;
	int rc = upager_create(&c, &up);
	if (rc)
		return rc;
	upager_store_t *s;
	if ((rc = upager_store_file(file, 0, &s))) {
		upager_destroy(up);
		return rc;
	}
	struct upager_map_opts o = { .page_size = unit };
	void *addr;
	rc = upager_map(up, s, 0, len, &o, &addr);
	upager_store_release(s);
	if (rc) {
		upager_destroy(up);
		return rc;
	}
	size_t n = len / unit;
	size_t *idx = malloc(n * sizeof(*idx));
	uint64_t *t = malloc(n * sizeof(*t));
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	srand(seed);
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)rand() % (i + 1), x = idx[i];
		idx[i] = idx[j];
		idx[j] = x;
	}
	volatile char *p = addr;
	char sink = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t t0 = now_ns();
		sink ^= p[idx[i] * unit];
		t[i] = now_ns() - t0;
	}
	(void)sink;
	qsort(t, n, sizeof(*t), cmp_u64);
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += (double)t[i];
	res->n = n;
	res->mean = sum / (double)n / 1e3;
	res->p50 = (double)t[n / 2] / 1e3;
	res->p99 = (double)t[n * 99 / 100] / 1e3;
	free(idx);
	free(t);
	upager_destroy(up);
	return 0;
}

static pid_t start_daemon(const char *sock)
{
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		execl(UPAGERD_PATH, UPAGERD_PATH, "--socket", sock, (char *)NULL);
		_exit(127);
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	for (int i = 0; i < 500; i++) {
		int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
		int ok = connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(s);
		if (ok)
			return pid;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	return -1;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: daemon_vs_inproc [--mib N] [--rounds N] [--unit SIZE]\n"
		"  --mib N      region (and file) size in MiB (default 64)\n"
		"  --rounds N   rounds, each mode once per round (default 3)\n"
		"  --unit SIZE  upager install unit, 4K..2M power of two (4K)\n"
		"Numbers are decimal and may end in K, M, G or T (powers of\n"
		"1024; also written KiB or KB, any case).\n");
}

/*
 * Sets the option @opt from @val. Returns false for an unknown option or
 * a bad value: an empty region, no rounds (the means divide by them) or a
 * unit upager would not take.
 */
static bool parse_opt(const char *opt, const char *val, size_t *mib,
		      unsigned *rounds, size_t *unit)
{
	uint64_t v;

	if (cli_parse_size(val, &v))
		return false;
	if (!strcmp(opt, "--mib") && v && v <= SIZE_MAX >> 20)
		*mib = (size_t)v;
	else if (!strcmp(opt, "--rounds") && v && v <= UINT_MAX)
		*rounds = (unsigned)v;
	else if (!strcmp(opt, "--unit") && v >= UPAGER_PAGE_SIZE_MIN &&
		 v <= UPAGER_PAGE_SIZE_MAX && !(v & (v - 1)))
		*unit = (size_t)v;
	else
		return false;
	return true;
}

int main(int argc, char **argv)
{
	size_t mib = 64, unit = 4096;
	unsigned rounds = 3;
	for (int i = 1; i < argc; i += 2) {
		if (!strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		}
		if (i + 1 == argc ||
		    !parse_opt(argv[i], argv[i + 1], &mib, &rounds, &unit)) {
			fprintf(stderr, "daemon_vs_inproc: bad option '%s%s%s'\n",
				argv[i], i + 1 < argc ? " " : "",
				i + 1 < argc ? argv[i + 1] : "");
			usage(stderr);
			return 2;
		}
	}
	if ((mib << 20) % unit) {
		fprintf(stderr, "daemon_vs_inproc: the region (--mib) must be "
			"a multiple of --unit\n");
		return 2;
	}
	char dir[] = "/tmp/upager-bench-XXXXXX";
	if (!mkdtemp(dir))
		return 1;
	char file[64], sock[64];
	snprintf(file, sizeof(file), "%s/data", dir);
	snprintf(sock, sizeof(sock), "%s/upagerd.sock", dir);
	size_t len = mib << 20;
	int fd = open(file, O_CREAT | O_RDWR | O_TRUNC, 0600);
	char *buf = malloc(1 << 20);
	for (size_t off = 0; off < len; off += 1 << 20) {
		for (size_t k = 0; k < 1 << 20; k++)
			buf[k] = (char)((off + k) * 2654435761u >> 13);
		if (write(fd, buf, 1 << 20) != 1 << 20)
			return 1;
	}
	free(buf);
	close(fd); /* the file stays in the page cache: warm data */
	pid_t d = start_daemon(sock);
	if (d < 0) {
		fprintf(stderr, "daemon_vs_inproc: cannot start %s\n", UPAGERD_PATH);
		return 1;
	}
	printf("%-9s %7s %8s %9s %9s %9s\n", "mode", "unit", "faults",
	       "mean_us", "p50_us", "p99_us");
	struct result sum[2] = { 0 };
	for (unsigned r = 0; r < rounds; r++) {
		for (int m = 0; m < 2; m++) {
			struct result res;
			int rc = run(m ? sock : NULL, file, len, unit, r + 1, &res);
			if (rc) {
				fprintf(stderr, "run: %s\n", upager_strerror(rc));
				return 1;
			}
			printf("%-9s %7zu %8zu %9.2f %9.2f %9.2f\n",
			       m ? "daemon" : "inproc", unit, res.n, res.mean,
			       res.p50, res.p99);
			sum[m].mean += res.mean / rounds;
			sum[m].p50 += res.p50 / rounds;
			sum[m].p99 += res.p99 / rounds;
			sum[m].n = res.n;
		}
	}
	for (int m = 0; m < 2; m++)
		printf("csv,%s,%zu,%zu,%.2f,%.2f,%.2f\n", m ? "daemon" : "inproc",
		       unit, sum[m].n, sum[m].mean, sum[m].p50, sum[m].p99);
	printf("daemon/inproc: mean %.2fx, p50 %.2fx, p99 %.2fx\n",
	       sum[1].mean / sum[0].mean, sum[1].p50 / sum[0].p50,
	       sum[1].p99 / sum[0].p99);
	kill(d, SIGTERM);
	waitpid(d, NULL, 0);
	unlink(file);
	rmdir(dir);
	return 0;
}
