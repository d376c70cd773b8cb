/*
 * runner.c - one run in its own child process.
 *
 * The child runs the engine and writes its struct run_result back through
 * a pipe (one write, smaller than PIPE_BUF); the parent reads it, reaps
 * the child with wait4() and takes the peak RSS from ru_maxrss. A fresh
 * process per run keeps one engine's memory, threads and mappings out of
 * the next one's figures. While the child works, the parent polls the
 * shared progress counters and reports on stderr how far the run is.
 * alarm() bounds a run that hangs (a lost fault never completes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

/* Resident set of this process now, in KiB (0 if unknown). */
static long current_rss_kb(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, resident = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		resident = 0;
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void child_main(const struct run_spec *s, int wfd)
{
	struct run_result r = { 0 };
	ssize_t n;

	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	alarm(s->timeout);
	r.threads = s->threads;
	r.cold = workload_is_cold(s->wl);
	r.p50_us = r.p99_us = r.fault_p50_us = r.fault_p99_us = -1;
	r.base_rss_kb = current_rss_kb();
	s->eng->run(s->eng, s, &r);
	n = write(wfd, &r, sizeof(r));
	_exit(n == (ssize_t)sizeof(r) ? 0 : 1);
}

static uint64_t progress_done(const struct progress *p)
{
	uint64_t sum = 0;

	for (unsigned i = 0; i < BENCH_MAX_THREADS; i++)
		sum += atomic_load_explicit(&p->slot[i].done, memory_order_relaxed);
	return sum;
}

static void show_progress(const struct run_spec *s, const char *label,
			  double started, double *last_line)
{
	double now = now_sec(), pct = 0;
	bool tty = isatty(STDERR_FILENO);

	if (s->progress && s->progress->total)
		pct = 100.0 * (double)progress_done(s->progress) /
		      (double)s->progress->total;
	if (tty) {
		fprintf(stderr, "\r%s: %5.1f%% %6.1f s ", label, pct, now - started);
	} else if (now - *last_line >= 10) {
		fprintf(stderr, "%s: %.1f%% after %.0f s\n", label, pct, now - started);
		*last_line = now;
	}
}

/* Reads the child's result; false when it died before writing it. */
static bool read_result(const struct run_spec *s, const char *label,
			bool quiet, int rfd, struct run_result *r)
{
	double started = now_sec(), last_line = started;
	size_t got = 0;
	struct pollfd p = { .fd = rfd, .events = POLLIN };

	while (got < sizeof(*r)) {
		int pr = poll(&p, 1, 1000);
		ssize_t n;

		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			if (!quiet && now_sec() - started > 2)
				show_progress(s, label, started, &last_line);
			continue;
		}
		n = read(rfd, (char *)r + got, sizeof(*r) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (!quiet && isatty(STDERR_FILENO) && now_sec() - started > 2)
		fprintf(stderr, "\r%*s\r", 60, "");
	return got == sizeof(*r);
}

static void describe_death(int status, struct run_result *r)
{
	if (WIFSIGNALED(status)) {
		int sig = WTERMSIG(status);

		result_fail(r, -EINTR, "child killed by signal %d (%s)%s", sig,
			    strsignal(sig),
			    sig == SIGALRM ? ": run exceeded --timeout" : "");
	} else {
		result_fail(r, -EIO, "child exited with status %d and no result",
			    WEXITSTATUS(status));
	}
}

int runner_run(const struct run_spec *s, const char *label, bool quiet,
	       struct run_result *r)
{
	struct rusage ru;
	int fds[2], status = 0;
	bool have;
	pid_t pid;

	if (s->progress) {
		memset(s->progress, 0, sizeof(*s->progress));
		s->progress->total = workload_ops_total(s);
	}
	if (pipe2(fds, O_CLOEXEC) != 0)
		return -errno;
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		int err = -errno;

		close(fds[0]);
		close(fds[1]);
		return err;
	}
	if (pid == 0) {
		close(fds[0]);
		child_main(s, fds[1]);
	}
	close(fds[1]);
	memset(r, 0, sizeof(*r));
	have = read_result(s, label, quiet, fds[0], r);
	close(fds[0]);
	while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
		;
	if (!have) {
		memset(r, 0, sizeof(*r));
		r->p50_us = r->p99_us = r->fault_p50_us = r->fault_p99_us = -1;
		r->page_size = s->eng->unit;
		describe_death(status, r);
	}
	snprintf(r->workload, sizeof(r->workload), "%s", workload_name(s->wl));
	snprintf(r->engine, sizeof(r->engine), "%s", s->eng->name);
	r->threads = s->threads;
	r->cold = workload_is_cold(s->wl);
	r->peak_rss_kb = ru.ru_maxrss;
	return 0;
}
