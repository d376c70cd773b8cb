/*
 * main.c - vm-migrate: live migration of a KVM guest through upager.
 *
 *   vm-migrate run    [options]   source and destination on this host
 *   vm-migrate source [options] --listen ADDR:PORT
 *   vm-migrate dest   [options] --connect HOST:PORT
 *
 * The guest (guest.S) fills its RAM with a known pattern, then works on a
 * hot set until told to stop, and reports a checksum of its whole RAM,
 * which must equal the host model's (guest_model.c). The source runs it
 * first; the chosen mode moves it to the destination; the destination
 * lets it finish and checks the checksum: a mismatch is a failure (exit
 * 1). A page that cannot be fetched after a postcopy switch raises SIGBUS
 * in the destination, which reports it and exits with status 3.
 *
 * This file: options, common helpers (progress accounting, sampler,
 * checksum check), mode "none" (no migration), and the run driver.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mig.h"
#include "size.h"

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "vm-migrate: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

const char *mode_name(enum mig_mode m)
{
	static const char *const n[] = { "none", "stop-copy", "precopy",
					 "postcopy", "hybrid" };
	return n[m];
}

void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		die("mmap %zu bytes: %s", len, strerror(errno));
	madvise(p, len, MADV_HUGEPAGE);
	return p;
}

int renice_background(struct app *a, int nice)
{
	DIR *dir = opendir("/proc/self/task");
	if (!dir)
		return 0;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dir))) {
		pid_t tid = (pid_t)atoi(e->d_name);
		if (tid <= 0 || tid == getpid() ||
		    (a->vm && vm_is_vcpu_thread(a->vm, tid)))
			continue;
		if (setpriority(PRIO_PROCESS, (id_t)tid, nice) == 0)
			n++;
	}
	closedir(dir);
	return n;
}

/* ---- progress accounting (vCPU threads) ---- */

static void on_filled(void *arg, int i)
{
	(void)i;
	atomic_fetch_add(&((struct app *)arg)->filled, 1);
}

static void on_progress(void *arg, int i, uint32_t units)
{
	atomic_store(&((struct app *)arg)->units[i], units);
}

static void on_finished(void *arg, int i, uint32_t units, uint32_t sum)
{
	struct app *a = arg;
	a->fin_units[i] = units;
	a->fin_sum[i] = sum;
	atomic_store(&a->units[i], units);
	atomic_fetch_add(&a->finished, 1);
}

static void on_failed(void *arg, int i, const char *why)
{
	struct app *a = arg;
	snprintf(a->fail_msg, sizeof(a->fail_msg), "vCPU %d: %s", i, why);
	atomic_store(&a->failed, true);
}

void app_hooks(struct app *a, struct vm_hooks *h)
{
	*h = (struct vm_hooks){ on_filled, on_progress, on_finished,
				on_failed, a };
}

uint64_t total_units(struct app *a)
{
	uint64_t t = 0;
	for (int i = 0; i < a->o.nvcpus; i++)
		t += atomic_load(&a->units[i]);
	return t;
}

static void *sampler_main(void *arg)
{
	struct app *a = arg;
	while (atomic_load(&a->sampling)) {
		struct sample s = {
			.t_ns = now_ns(), .units = total_units(a),
			.installed = a->installed ? a->installed(a) : 0,
		};
		pthread_mutex_lock(&a->slock);
		if (a->nsamples == a->scap) {
			size_t cap = a->scap ? 2 * a->scap : 1024;
			struct sample *n = realloc(a->samples, cap * sizeof(*n));
			if (n) {
				a->samples = n;
				a->scap = cap;
			}
		}
		if (a->nsamples < a->scap)
			a->samples[a->nsamples++] = s;
		pthread_mutex_unlock(&a->slock);
		sleep_ms(10);
	}
	return NULL;
}

void sampler_start(struct app *a)
{
	pthread_mutex_init(&a->slock, NULL);
	atomic_store(&a->sampling, true);
	if (pthread_create(&a->sampler, NULL, sampler_main, a))
		die("cannot start the sampler thread");
}

void sampler_stop(struct app *a)
{
	if (atomic_exchange(&a->sampling, false))
		pthread_join(a->sampler, NULL);
}

bool wait_filled(struct app *a, unsigned timeout_ms)
{
	uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	while (atomic_load(&a->filled) < a->o.nvcpus) {
		if (atomic_load(&a->failed) || now_ns() > end)
			return false;
		sleep_ms(1);
	}
	return true;
}

bool finish_guest(struct app *a, unsigned timeout_ms)
{
	for (int i = 0; i < a->o.nvcpus; i++) {
		struct guest_params *p = guest_params_of(a->ram, i);
		uint32_t stop = atomic_load(&a->units[i]) + 1;
		__atomic_store_n(&p->stop_units, stop, __ATOMIC_RELEASE);
	}
	uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	while (atomic_load(&a->finished) < a->o.nvcpus) {
		if (atomic_load(&a->failed) || now_ns() > end)
			return false;
		sleep_ms(1);
	}
	return true;
}

bool check_checksums(struct app *a)
{
	bool ok = true;
	for (int i = 0; i < a->o.nvcpus; i++) {
		const struct guest_params *p = guest_params_of(a->ram, i);
		uint32_t want = guest_model_checksum(p, a->fin_units[i]);
		bool match = want == a->fin_sum[i];
		printf("vCPU %d: %u work units, checksum %08x, expected %08x: %s\n",
		       i, a->fin_units[i], a->fin_sum[i], want,
		       match ? "OK" : "MISMATCH");
		ok &= match;
	}
	return ok;
}

/* ---- SIGBUS: a guest page could not be fetched ---- */

static void put_hex(char *p, uint64_t v)
{
	for (int i = 15; i >= 0; i--, v >>= 4)
		p[i] = "0123456789abcdef"[v & 15];
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	char msg[] = "vm-migrate: dest: SIGBUS at 0x................ in thread"
		     " ................: a guest page could not be fetched "
		     "(source gone?); stopping instead of running on zeros\n";
	put_hex(strstr(msg, "0x") + 2, (uint64_t)(uintptr_t)si->si_addr);
	put_hex(strstr(msg, "thread ") + 7, (uint64_t)syscall(SYS_gettid));
	ssize_t w = write(2, msg, sizeof(msg) - 1);
	(void)w;
	_exit(3);
}

static void install_sigbus(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGBUS, &sa, NULL);
}

/* ---- mode none: the reference run ---- */

static int run_none(struct app *a)
{
	a->ram = map_anon(a->o.ram_size);
	if (guest_setup(a->ram, a->o.ram_size, a->o.nvcpus, a->o.hot_div,
			a->o.pages_per_unit))
		die("bad guest geometry");
	struct vm_hooks h;
	app_hooks(a, &h);
	int rc = vm_create(a->kvm, a->ram, a->o.ram_size, a->o.nvcpus, &h, &a->vm);
	if (rc)
		die("vm_create: %s", strerror(-rc));
	vm_reset(a->vm);
	uint64_t t0 = now_ns();
	vm_resume(a->vm);
	if (!wait_filled(a, 120000))
		die("guest failed during fill: %s", a->fail_msg);
	uint64_t t1 = now_ns();
	uint64_t u1 = total_units(a);
	sleep_ms(a->o.migrate_after_ms + a->o.run_after_ms);
	uint64_t u2 = total_units(a);
	uint64_t t2 = now_ns();
	if (!finish_guest(a, 120000))
		die("guest did not finish: %s", a->fail_msg);
	vm_pause(a->vm);
	printf("mode none (%s): fill %.1f ms, %.0f work units/s\n",
	       a->kvm ? "KVM guest" : "plain process",
	       (double)(t1 - t0) / 1e6, (double)(u2 - u1) * 1e9 / (double)(t2 - t1));
	return check_checksums(a) ? 0 : 1;
}

/* ---- sockets and the run driver ---- */

static int listen_on(const char *host, const char *port, int *bound_port)
{
	struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE };
	struct addrinfo *ai;
	if (getaddrinfo(host, port, &hints, &ai))
		die("cannot resolve %s:%s", host ? host : "*", port);
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 8))
		die("cannot listen on %s:%s: %s", host ? host : "*", port,
		    strerror(errno));
	freeaddrinfo(ai);
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	getsockname(fd, (struct sockaddr *)&sin, &sl);
	*bound_port = ntohs(sin.sin_port);
	return fd;
}

static int connect_to(const char *host, const char *port)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *ai;
	if (getaddrinfo(host, port, &hints, &ai))
		die("cannot resolve %s:%s", host, port);
	int fd = -1;
	for (int tries = 0; tries < 100 && fd < 0; tries++) {
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen)) {
			close(fd);
			fd = -1;
			sleep_ms(50);
		}
	}
	freeaddrinfo(ai);
	if (fd < 0)
		die("cannot connect to %s:%s: %s", host, port, strerror(errno));
	return fd;
}

static int accept_one(int lfd)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		die("accept: %s", strerror(errno));
	return fd;
}

static int run_both(struct app *a)
{
	int port;
	int lfd = listen_on("127.0.0.1", "0", &port);
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		int ctl = accept_one(lfd);
		close(lfd);
		a->o.host = "127.0.0.1";
		_exit(run_source(a, ctl));
	}
	close(lfd);
	char ps[16];
	snprintf(ps, sizeof(ps), "%d", port);
	int ctl = connect_to("127.0.0.1", ps);
	a->o.host = "127.0.0.1";
	install_sigbus();
	int rc = run_dest(a, ctl, pid);
	int st;
	if (waitpid(pid, &st, 0) == pid && rc == 0 &&
	    !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
		fprintf(stderr, "vm-migrate: the source failed (status %d)\n", st);
		rc = 1;
	}
	return rc;
}

/* ---- options ---- */

/* A positive size (cli/size.h syntax), or the end of the program. */
static size_t parse_size(const char *s)
{
	uint64_t v;

	if (cli_parse_size(s, &v) || v == 0)
		die("bad size '%s'", s);
	return (size_t)v;
}

static enum mig_mode parse_mode(const char *s)
{
	for (int m = MODE_NONE; m <= MODE_HYBRID; m++)
		if (!strcmp(s, mode_name((enum mig_mode)m)))
			return (enum mig_mode)m;
	die("unknown mode '%s' (none, stop-copy, precopy, postcopy, hybrid)", s);
}

static void usage(void)
{
	printf(
"usage: vm-migrate run    [options]\n"
"       vm-migrate source [options] --listen ADDR:PORT\n"
"       vm-migrate dest   [options] --connect HOST:PORT\n"
"options:\n"
"  --mode M              none, stop-copy, precopy, postcopy, hybrid (postcopy)\n"
"  --mem SIZE            guest RAM (1G)\n"
"  --vcpus N             vCPUs, 1..8 (1)\n"
"  --page-size SIZE      upager install unit and push block (64K)\n"
"  --migrate-after MS    run this long after the fill before migrating (1000)\n"
"  --run-after MS        run this long after migration completes (1000)\n"
"  --workers N           upager workers on the destination (4)\n"
"  --no-follow           destination: UPAGER_CFG_NO_FOLLOW (the manager is\n"
"                        never pinned to a vCPU thread's CPU)\n"
"  --hot-div N           hot set = 1/N of each vCPU's RAM (8)\n"
"  --pages-per-unit N    pages touched per work unit (256)\n"
"  --max-passes N        precopy: at most N copy passes (8)\n"
"  --max-dirty SIZE      precopy: stop iterating below this much dirty RAM (16M)\n"
"  --no-kvm              run the guest program as host threads\n"
"  --no-push             postcopy without the background push stream\n"
"  --hot-sample MS       postcopy: log the guest's writes for MS ms before\n"
"                        the switch and push those pages first (20; 0: off)\n"
"  --bg-nice N           postcopy: once those pages are in, run the rest of\n"
"                        the migration at nice N on both sides (5; 0: off)\n"
"  --kill-source-after MS  run: SIGKILL the source MS after the switch\n"
"  --csv FILE            append a summary row to FILE\n"
"  --timeline FILE       append the progress timeline to FILE\n"
"SIZE: a decimal number of bytes with an optional suffix K, M, G or T\n"
"(powers of 1024; also written KiB or KB, any case), e.g. 64K or 1G\n"
"exit status: 0 checksum OK, 1 failure, 3 SIGBUS (guest page lost)\n");
}

static void split_hostport(char *s, const char **host, const char **port)
{
	char *c = strrchr(s, ':');
	if (!c)
		die("expected HOST:PORT, got '%s'", s);
	*c = '\0';
	*host = s;
	*port = c + 1;
}

static void parse(int argc, char **argv, struct app *a, const char **role)
{
	static const struct option lo[] = {
		{ "mode", 1, 0, 'm' }, { "mem", 1, 0, 'M' },
		{ "vcpus", 1, 0, 'v' }, { "page-size", 1, 0, 'p' },
		{ "migrate-after", 1, 0, 'a' }, { "run-after", 1, 0, 'r' },
		{ "workers", 1, 0, 'w' }, { "hot-div", 1, 0, 'H' },
		{ "pages-per-unit", 1, 0, 'u' }, { "max-passes", 1, 0, 'P' },
		{ "max-dirty", 1, 0, 'D' }, { "no-kvm", 0, 0, 'n' },
		{ "no-push", 0, 0, 'N' }, { "kill-source-after", 1, 0, 'k' },
		{ "csv", 1, 0, 'c' }, { "timeline", 1, 0, 't' },
		{ "listen", 1, 0, 'l' }, { "connect", 1, 0, 'C' },
		{ "hot-sample", 1, 0, 'S' }, { "bg-nice", 1, 0, 'B' },
		{ "no-follow", 0, 0, 'F' },
		{ "help", 0, 0, 'h' }, { 0, 0, 0, 0 },
	};
	struct opts *o = &a->o;
	*o = (struct opts){
		.mode = MODE_POSTCOPY, .ram_size = 1ull << 30, .nvcpus = 1,
		.page_size = 64 << 10, .migrate_after_ms = 1000,
		.run_after_ms = 1000, .workers = 4, .hot_div = 8,
		.pages_per_unit = 256, .max_passes = 8, .max_dirty = 16 << 20,
		.hot_sample_ms = 20, .bg_nice = 5,
	};
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage();
		exit(argc < 2);
	}
	*role = argv[1];
	optind = 2;
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'm': o->mode = parse_mode(optarg); break;
		case 'M': o->ram_size = parse_size(optarg); break;
		case 'v': o->nvcpus = atoi(optarg); break;
		case 'p': o->page_size = parse_size(optarg); break;
		case 'a': o->migrate_after_ms = (unsigned)atoi(optarg); break;
		case 'r': o->run_after_ms = (unsigned)atoi(optarg); break;
		case 'w': o->workers = (unsigned)atoi(optarg); break;
		case 'H': o->hot_div = (unsigned)atoi(optarg); break;
		case 'u': o->pages_per_unit = (unsigned)atoi(optarg); break;
		case 'P': o->max_passes = (unsigned)atoi(optarg); break;
		case 'D': o->max_dirty = parse_size(optarg); break;
		case 'S': o->hot_sample_ms = (unsigned)atoi(optarg); break;
		case 'B': o->bg_nice = atoi(optarg); break;
		case 'n': o->no_kvm = true; break;
		case 'N': o->no_push = true; break;
		case 'F': o->no_follow = true; break;
		case 'k': o->kill_after_ms = (unsigned)atoi(optarg); break;
		case 'c': o->csv = optarg; break;
		case 't': o->timeline = optarg; break;
		case 'l': split_hostport(optarg, &o->host, &o->port); break;
		case 'C': split_hostport(optarg, &o->host, &o->port); break;
		case 'h': usage(); exit(0);
		default: usage(); exit(1);
		}
	}
	if (o->nvcpus < 1 || o->nvcpus > GUEST_MAX_VCPUS)
		die("--vcpus must be 1..%d", GUEST_MAX_VCPUS);
	if (o->page_size < 4096 || o->page_size > (2u << 20) ||
	    (o->page_size & (o->page_size - 1)))
		die("--page-size must be a power of two from 4K to 2M");
	if (o->ram_size % o->page_size || o->ram_size > (3ull << 30) ||
	    o->ram_size < (4u << 20))
		die("--mem must be a multiple of the page size, 4M..3G");
	if (o->bg_nice < 0 || o->bg_nice > 19)
		die("--bg-nice must be 0..19");
	if (!o->pages_per_unit || !o->hot_div)
		die("--pages-per-unit and --hot-div must be positive");
}

static bool kvm_usable(void)
{
	return access("/dev/kvm", R_OK | W_OK) == 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	static struct app app;
	const char *role;
	parse(argc, argv, &app, &role);
	app.kvm = !app.o.no_kvm && kvm_usable();
	if (!app.o.no_kvm && !app.kvm)
		printf("vm-migrate: /dev/kvm cannot be used here: migrating a "
		       "plain process workload (threads walking their memory) "
		       "instead of a KVM guest\n");
	if (!strcmp(role, "run")) {
		if (app.o.mode == MODE_NONE)
			return run_none(&app);
		return run_both(&app);
	}
	if (!strcmp(role, "source")) {
		if (!app.o.port)
			die("source needs --listen ADDR:PORT");
		int port;
		int lfd = listen_on(app.o.host, app.o.port, &port);
		printf("source: waiting for the destination on port %d\n", port);
		int ctl = accept_one(lfd);
		close(lfd);
		return run_source(&app, ctl);
	}
	if (!strcmp(role, "dest")) {
		if (!app.o.port)
			die("dest needs --connect HOST:PORT");
		install_sigbus();
		return run_dest(&app, connect_to(app.o.host, app.o.port), 0);
	}
	usage();
	return 1;
}
