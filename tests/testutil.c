/*
 * testutil.c - code shared by upager's cmocka test binaries (see
 * testutil.h for the content model and the skip rules).
 *
 * Everything here runs on the test's main thread except tu_byte(),
 * tu_fill(), tu_expected(), tu_check() and tu_rand(), which application
 * threads of a test call concurrently: those keep no shared state. cmocka
 * assertions are only used on the main thread: a failing assertion jumps
 * back into the test runner, which is only valid from there.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char tu_dir[PATH_MAX];
static char **tu_paths;
static size_t tu_npaths;
static unsigned tu_skips;

/* ---- pattern ---- */

uint64_t tu_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

uint8_t tu_byte(uint64_t off)
{
	return (uint8_t)(tu_mix64(off >> 3) >> ((off & 7) * 8));
}

void tu_fill(void *buf, uint64_t off, size_t len)
{
	uint8_t *p = buf;

	while (len && (off & 7)) {
		*p++ = tu_byte(off++);
		len--;
	}
	while (len >= 8) {
		uint64_t w = tu_mix64(off >> 3);
		for (unsigned i = 0; i < 8; i++)
			p[i] = (uint8_t)(w >> (8 * i));
		p += 8;
		off += 8;
		len -= 8;
	}
	while (len--)
		*p++ = tu_byte(off++);
}

/* ---- files ---- */

const char *tu_path(const char *name)
{
	char **grown = realloc(tu_paths, (tu_npaths + 1) * sizeof(*grown));
	assert_non_null(grown);
	tu_paths = grown;
	size_t len = strlen(tu_dir) + 1 + strlen(name) + 1;
	char *p = malloc(len);
	assert_non_null(p);
	snprintf(p, len, "%s/%s", tu_dir, name);
	tu_paths[tu_npaths++] = p;
	return p;
}

static void write_pattern(int fd, uint64_t off, uint64_t len)
{
	static uint8_t buf[1 << 20];

	while (len) {
		size_t n = len < sizeof(buf) ? (size_t)len : sizeof(buf);
		tu_fill(buf, off, n);
		ssize_t w = pwrite(fd, buf, n, (off_t)off);
		assert_true(w == (ssize_t)n);
		off += n;
		len -= n;
	}
}

const char *tu_make_file(const char *name, uint64_t size)
{
	const char *path = tu_path(name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	write_pattern(fd, 0, size);
	assert_int_equal(fsync(fd), 0);
	close(fd);
	return path;
}

const char *tu_make_sparse(const char *name, uint64_t size,
			   const struct tu_island *isl, size_t n)
{
	const char *path = tu_path(name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	if (ftruncate(fd, (off_t)size)) {
		int e = errno;
		close(fd);
		unlink(path);
		errno = e;
		return NULL;
	}
	for (size_t i = 0; i < n; i++)
		write_pattern(fd, isl[i].off, isl[i].len);
	close(fd);
	return path;
}

int tu_open(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

/* ---- reference model ---- */

static void store_bytes(const struct tu_ref *ref, uint64_t so, uint8_t *buf,
			size_t len)
{
	size_t got = 0;

	if (ref->fd >= 0) {
		while (got < len) {
			ssize_t r = pread(ref->fd, buf + got, len - got,
					  (off_t)(so + got));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				break;
			got += (size_t)r;
		}
	} else if (so < ref->store_size) {
		uint64_t avail = ref->store_size - so;
		got = avail < len ? (size_t)avail : len;
		tu_fill(buf, so, got);
	}
	memset(buf + got, 0, len - got);
}

void tu_expected(const struct tu_ref *ref, size_t from, void *buf, size_t len)
{
	uint8_t *p = buf;

	if (from < ref->length) {
		size_t n = ref->length - from < len ? ref->length - from : len;
		store_bytes(ref, ref->offset + from, p, n);
		p += n;
		len -= n;
	}
	memset(p, 0, len);
}

bool tu_check(const struct tu_ref *ref, const void *base, size_t from,
	      size_t len)
{
	uint8_t want[64 * 1024];
	const uint8_t *have = (const uint8_t *)base + from;

	while (len) {
		size_t n = len < sizeof(want) ? len : sizeof(want);
		tu_expected(ref, from, want, n);
		if (memcmp(want, have, n)) {
			size_t i = 0;
			while (want[i] == have[i])
				i++;
			size_t bad = 0;
			for (size_t j = i; j < n; j++)
				bad += want[j] != have[j];
			fprintf(stderr,
				"content mismatch at region offset %zu (store "
				"offset %llu): want 0x%02x have 0x%02x; %zu of "
				"the next %zu bytes differ\n",
				from + i,
				(unsigned long long)(ref->offset + from + i),
				want[i], have[i], bad, n - i);
			return false;
		}
		from += n;
		have += n;
		len -= n;
	}
	return true;
}

/* ---- runtime ---- */

upager_t *tu_runtime(const struct upager_config *cfg)
{
	upager_t *up = NULL;
	int rc = upager_create(cfg, &up);
	if (rc)
		fail_msg("upager_create: %d (%s)", rc, upager_strerror(rc));
	assert_non_null(up);
	return up;
}

upager_t *tu_inline_runtime(void)
{
	struct upager_config c = { .flags = UPAGER_CFG_INLINE };
	upager_t *up = NULL;
	int rc = upager_create(&c, &up);
	if (rc == -EOPNOTSUPP)
		tu_skip("kernel without UFFD_FEATURE_SIGBUS");
	TU_OK(rc);
	return up;
}

upager_store_t *tu_store_file(const char *path, unsigned flags)
{
	upager_store_t *s = NULL;
	int rc = upager_store_file(path, flags, &s);
	if (rc)
		fail_msg("upager_store_file(%s, %#x): %d (%s)", path, flags, rc,
			 upager_strerror(rc));
	assert_non_null(s);
	return s;
}

void *tu_map(upager_t *up, upager_store_t *s, uint64_t offset, size_t length,
	     size_t page_size, size_t readahead)
{
	struct upager_map_opts o = { .page_size = page_size,
				     .readahead = readahead };
	void *addr = NULL;
	int rc = upager_map(up, s, offset, length, &o, &addr);
	if (rc)
		fail_msg("upager_map(off %llu, len %zu, page %zu, ra %zu): "
			 "%d (%s)",
			 (unsigned long long)offset, length, page_size,
			 readahead, rc, upager_strerror(rc));
	assert_non_null(addr);
	size_t unit = page_size ? page_size : UPAGER_PAGE_SIZE_MIN;
	assert_int_equal((uintptr_t)addr % unit, 0);
	return addr;
}

struct upager_stats tu_stats(upager_t *up, void *addr)
{
	struct upager_stats st;
	memset(&st, 0xa5, sizeof(st));
	int rc = upager_stats(up, addr, &st);
	if (rc)
		fail_msg("upager_stats(%p): %d (%s)", addr, rc,
			 upager_strerror(rc));
	return st;
}

struct upager_stats tu_stats_settled(upager_t *up, void *addr)
{
	struct upager_stats a = tu_stats(up, addr), b;
	for (int i = 0; i < 250; i++) {
		tu_sleep_ms(20);
		b = tu_stats(up, addr);
		if (!memcmp(&a, &b, sizeof(a)))
			return b;
		a = b;
	}
	fail_msg("upager_stats(%p): counters still moving after 5 s", addr);
	return a;
}

uint64_t tu_hist_sum(const struct upager_stats *st)
{
	uint64_t sum = 0;
	for (unsigned i = 0; i < UPAGER_HIST_BUCKETS; i++)
		sum += st->fault_us_hist[i];
	return sum;
}

void tu_print_stats(const char *what, const struct upager_stats *st)
{
	printf("  %s: faults %llu installed %llu fetched %llu prefetched %llu "
	       "zero %llu read_errors %llu retries %llu regions %llu "
	       "p50 %lluus p99 %lluus\n",
	       what, (unsigned long long)st->faults,
	       (unsigned long long)st->pages_installed,
	       (unsigned long long)st->bytes_fetched,
	       (unsigned long long)st->prefetched,
	       (unsigned long long)st->zero_pages,
	       (unsigned long long)st->read_errors,
	       (unsigned long long)st->retries,
	       (unsigned long long)st->regions,
	       (unsigned long long)upager_stats_percentile(st, 50),
	       (unsigned long long)upager_stats_percentile(st, 99));
	fflush(stdout);
}

/* ---- time, randomness, threads, children ---- */

/* Calls @fn with each thread of this process and its comm (no newline)
 * until it returns non-zero; returns that value, or 0. */
static pid_t each_task(pid_t (*fn)(pid_t tid, const char *comm, void *arg),
		       void *arg)
{
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return 0;
	pid_t ret = 0;
	struct dirent *e;
	while (!ret && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[300], comm[64] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
			 e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue; /* exited meanwhile */
		if (fgets(comm, sizeof(comm), f)) {
			comm[strcspn(comm, "\n")] = '\0';
			ret = fn((pid_t)atoi(e->d_name), comm, arg);
		}
		fclose(f);
	}
	closedir(d);
	return ret;
}

static pid_t match_name(pid_t tid, const char *comm, void *arg)
{
	return strcmp(comm, arg) == 0 ? tid : 0;
}

pid_t tu_thread_tid(const char *name)
{
	return each_task(match_name, (void *)name);
}

struct thread_count {
	const char *prefix;
	size_t n;
};

static pid_t count_thread(pid_t tid, const char *comm, void *arg)
{
	(void)tid;
	struct thread_count *c = arg;
	if (c->prefix ? strncmp(comm, c->prefix, strlen(c->prefix)) == 0 :
			strncmp(comm, "iou-", 4) != 0)
		c->n++;
	return 0;
}

size_t tu_count_threads(const char *prefix)
{
	struct thread_count c = { .prefix = prefix, .n = 0 };
	each_task(count_thread, &c);
	return c.n;
}

size_t tu_wait_threads(const char *prefix, size_t most)
{
	size_t n = tu_count_threads(prefix);
	for (int i = 0; i < 200 && n > most; i++) {
		tu_sleep_ms(10);
		n = tu_count_threads(prefix);
	}
	return n;
}

uint64_t tu_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void tu_sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
			       .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

uint64_t tu_rand(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dull;
}

void tu_shuffle(size_t *idx, size_t n, uint64_t seed, bool init)
{
	uint64_t st = tu_mix64(seed) | 1;

	if (init)
		for (size_t i = 0; i < n; i++)
			idx[i] = i;
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(tu_rand(&st) % i);
		size_t t = idx[i - 1];
		idx[i - 1] = idx[j];
		idx[j] = t;
	}
}

void tu_run_threads(unsigned n, void *(*fn)(void *), void *args,
		    size_t stride)
{
	pthread_t *t = calloc(n, sizeof(*t));
	assert_non_null(t);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(pthread_create(&t[i], NULL, fn,
						(char *)args + i * stride),
				 0);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	free(t);
}

/* ---- text-like data ---- */

static const char *const tu_words[] = {
	"the",     "page",   "fault",  "store",   "worker", "region",
	"kernel",  "thread", "memory", "block",   "of",     "and",
	"to",      "in",     "a",      "is",      "that",   "for",
	"install", "unit",   "offset", "length",  "cache",  "queue",
	"read",    "write",  "map",    "compress", "lz4",   "zero",
};
#define TU_NWORDS (sizeof(tu_words) / sizeof(tu_words[0]))

void tu_fill_text(uint8_t *p, size_t len, uint64_t *rng)
{
	size_t i = 0;
	while (i < len) {
		const char *w = tu_words[tu_rand(rng) % TU_NWORDS];
		for (; *w && i < len; w++)
			p[i++] = (uint8_t)*w;
		if (i < len)
			p[i++] = tu_rand(rng) % 11 ? ' ' : '\n';
	}
}

/* ---- checking a region unit by unit, from threads ---- */

struct tu_scan {
	const struct tu_ref *ref;
	const uint8_t *base;
	size_t page;
	size_t *order;
	size_t n;
	unsigned nthreads;
	atomic_uint failures;
};

struct tu_scan_arg {
	struct tu_scan *sc;
	unsigned id;
};

static void *tu_scan_thread(void *p)
{
	struct tu_scan_arg *a = p;
	struct tu_scan *sc = a->sc;
	uint64_t rnd = tu_mix64(a->id + 1) | 1;

	for (size_t j = a->id; j < sc->n; j += sc->nthreads) {
		size_t u = sc->order[j];
		size_t start = u * sc->page;
		/* Fault the unit in at a random byte, not at its start. */
		size_t first = start + (size_t)(tu_rand(&rnd) % sc->page);
		uint8_t want;
		tu_expected(sc->ref, first, &want, 1);
		if (((volatile const uint8_t *)sc->base)[first] != want ||
		    !tu_check(sc->ref, sc->base, start, sc->page))
			atomic_fetch_add(&sc->failures, 1);
	}
	return NULL;
}

void tu_scan_units(const struct tu_ref *ref, const void *base, size_t page,
		   size_t nunits, unsigned threads, bool random, uint64_t seed)
{
	struct tu_scan sc = { .ref = ref, .base = base, .page = page,
			   .n = nunits, .nthreads = threads };
	struct tu_scan_arg args[16];

	assert_true(threads <= 16);
	sc.order = malloc(nunits * sizeof(*sc.order));
	assert_non_null(sc.order);
	for (size_t i = 0; i < nunits; i++)
		sc.order[i] = i;
	if (random)
		tu_shuffle(sc.order, nunits, seed, false);
	atomic_init(&sc.failures, 0);
	for (unsigned i = 0; i < threads; i++)
		args[i] = (struct tu_scan_arg){ &sc, i };
	tu_run_threads(threads, tu_scan_thread, args, sizeof(args[0]));
	free(sc.order);
	assert_int_equal(atomic_load(&sc.failures), 0);
}

void tu_child_default_signals(void)
{
	struct sigaction sa;
	sigset_t set;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGSEGV);
	sigaddset(&set, SIGBUS);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
}

bool tu_wait_child(pid_t pid, unsigned timeout_ms, int *status)
{
	uint64_t deadline = tu_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		pid_t r = waitpid(pid, status, WNOHANG);
		if (r == pid)
			return true;
		if (r < 0 && errno != EINTR)
			fail_msg("waitpid(%d): %s", (int)pid, strerror(errno));
		if (tu_now_ns() > deadline)
			break;
		tu_sleep_ms(5);
	}
	fprintf(stderr, "child %d still running after %u ms: killed\n",
		(int)pid, timeout_ms);
	kill(pid, SIGKILL);
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
	return false;
}

const char *tu_status_str(int status, char *buf, size_t size)
{
	if (WIFEXITED(status))
		snprintf(buf, size, "exit %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, size, "signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, size, "status %#x", status);
	return buf;
}

/* ---- skipping and main ---- */

void tu_note_skip(const char *fmt, ...)
{
	va_list ap;

	printf("SKIP: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	tu_skips++;
}

static void probe_userfaultfd(void)
{
	upager_t *up = NULL;
	int rc = upager_create(NULL, &up);

	if (rc == -EPERM || rc == -ENOSYS) {
		printf("SKIP: userfaultfd is not available to this process "
		       "(%s); run as root or set "
		       "vm.unprivileged_userfaultfd=1\n",
		       upager_strerror(rc));
		exit(77);
	}
	/* Any other failure is a defect the tests themselves report. */
	upager_destroy(up);
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
		    struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void cleanup(void)
{
	if (tu_dir[0])
		nftw(tu_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	tu_dir[0] = 0;
	for (size_t i = 0; i < tu_npaths; i++)
		free(tu_paths[i]);
	free(tu_paths);
	tu_paths = NULL;
	tu_npaths = 0;
}

static void make_dir(void)
{
	const char *base = getenv("TMPDIR");

	if (!base || !*base)
		base = "/tmp";
	snprintf(tu_dir, sizeof(tu_dir), "%s/upager-test-XXXXXX", base);
	if (!mkdtemp(tu_dir)) {
		fprintf(stderr, "mkdtemp(%s): %s\n", tu_dir, strerror(errno));
		exit(1);
	}
	atexit(cleanup);
}

int tu_main(int argc, char **argv, const char *group,
	    const struct CMUnitTest *tests, size_t n)
{
	size_t selected = n;
	char *filter = NULL;

	setvbuf(stdout, NULL, _IOLBF, 0);
	probe_userfaultfd();
	make_dir();
	if (argc > 1) {
		size_t len = strlen(argv[1]) + 3;
		filter = malloc(len);
		if (!filter)
			return 1;
		snprintf(filter, len, "*%s*", argv[1]);
		cmocka_set_test_filter(filter);
		selected = 0;
		for (size_t i = 0; i < n; i++)
			selected += strstr(tests[i].name, argv[1]) != NULL;
		if (!selected) {
			fprintf(stderr, "no test matches '%s'\n", argv[1]);
			free(filter);
			return 1;
		}
	}
	int failed = _cmocka_run_group_tests(group, tests, n, NULL, NULL);
	free(filter);
	cleanup();
	if (failed)
		return 1;
	if (tu_skips && tu_skips >= selected)
		return 77;
	return 0;
}

/* ---- catching SIGBUS in this process ---- */

volatile int tu_sigbus_count;
void *volatile tu_sigbus_addr;
static sigjmp_buf sigbus_jump;

static void sigbus_catcher(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	tu_sigbus_count++;
	tu_sigbus_addr = si->si_addr;
	siglongjmp(sigbus_jump, 1);
}

void tu_sigbus_catch(struct sigaction *old)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sigbus_catcher;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGBUS, &sa, old), 0);
	tu_sigbus_count = 0;
}

bool tu_sigbus_catching(void)
{
	struct sigaction cur;
	assert_int_equal(sigaction(SIGBUS, NULL, &cur), 0);
	return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == sigbus_catcher;
}

bool tu_read_raises_sigbus(const volatile uint8_t *p, uint8_t *val)
{
	if (sigsetjmp(sigbus_jump, 1) == 0) {
		*val = *p;
		return false;
	}
	return true;
}
