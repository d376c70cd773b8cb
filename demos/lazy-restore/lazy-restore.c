/*
 * lazy-restore.c - snapshot a running guest's RAM to a file, then restore
 * it two ways and time both:
 *   eager  read the whole snapshot into memory, then resume the guest;
 *   lazy   map the snapshot through upager (a file store) and resume at
 *          once: each page is read from the file on its first touch.
 * For each: time from the start of the restore to the first guest
 * instruction (KVM single-step trap) and to the guest's first completed
 * work unit; then the guest runs to the end and its checksum is checked
 * against the host model, so a lazily restored page that came back wrong
 * fails the run. The snapshot's page cache is dropped (posix_fadvise)
 * before each restore, so both read from the disk.
 *
 *   lazy-restore [--mem SIZE] [--page-size SIZE] [--file PATH]
 *                [--csv FILE] [--no-kvm]
 *
 * SIZE is in the syntax of cli/size.h (decimal, suffixes K, M, G, T).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "size.h"
#include "upager.h"
#include "vmm.h"

struct run {
	_Atomic uint32_t units;
	uint32_t base_units;
	_Atomic uint64_t t_first_insn, t_first_unit;
	atomic_int filled, finished;
	uint32_t fin_units, fin_sum;
	atomic_bool failed;
};

static struct run R;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void die(const char *what, int err)
{
	fprintf(stderr, "lazy-restore: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static void on_filled(void *a, int i)
{
	(void)a;
	(void)i;
	atomic_fetch_add(&R.filled, 1);
}

static void on_progress(void *a, int i, uint32_t u)
{
	(void)a;
	(void)i;
	atomic_store(&R.units, u);
	uint64_t zero = 0;
	if (u > R.base_units)
		atomic_compare_exchange_strong(&R.t_first_unit, &zero, now_ns());
}

static void on_finished(void *a, int i, uint32_t u, uint32_t sum)
{
	(void)a;
	(void)i;
	R.fin_units = u;
	R.fin_sum = sum;
	atomic_fetch_add(&R.finished, 1);
}

static void on_failed(void *a, int i, const char *why)
{
	(void)a;
	fprintf(stderr, "lazy-restore: vCPU %d: %s\n", i, why);
	atomic_store(&R.failed, true);
}

static void on_first(void *a)
{
	(void)a;
	atomic_store(&R.t_first_insn, now_ns());
}

static const struct vm_hooks hooks = { on_filled, on_progress, on_finished,
				       on_failed, NULL };

static bool wait_for(atomic_int *v, int want, unsigned ms)
{
	uint64_t end = now_ns() + (uint64_t)ms * 1000000ull;
	while (atomic_load(v) < want && !atomic_load(&R.failed) && now_ns() < end)
		sleep_ms(1);
	return atomic_load(v) >= want;
}

/* Boots the guest in plain memory, runs it, pauses it and writes its RAM
 * to @path; the CPU state goes to @state. */
static size_t snapshot(bool kvm, size_t size, const char *path, char *state)
{
	char *ram = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap", errno);
	if (guest_setup(ram, size, 1, 8, 256))
		die("guest_setup", EINVAL);
	struct vm *vm;
	int rc = vm_create(kvm, ram, size, 1, &hooks, &vm);
	if (rc)
		die("vm_create", rc);
	vm_reset(vm);
	vm_resume(vm);
	if (!wait_for(&R.filled, 1, 300000))
		die("guest fill", EIO);
	sleep_ms(500);
	vm_pause(vm);
	size_t len = vm_save(vm, state);
	R.base_units = atomic_load(&R.units);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die(path, errno);
	for (size_t off = 0; off < size;) {
		ssize_t k = pwrite(fd, ram + off, size - off, (off_t)off);
		if (k <= 0)
			die("write snapshot", errno);
		off += (size_t)k;
	}
	fsync(fd);
	close(fd);
	vm_destroy(vm);
	munmap(ram, size);
	printf("snapshot: %zu MiB of guest RAM written to %s after %u work units\n",
	       size >> 20, path, R.base_units);
	return len;
}

static void drop_cache(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

struct result {
	double first_insn_ms, first_unit_ms;
	bool ok;
};

/* Resumes the snapshot (RAM at @ram, already there or lazily served),
 * times it from @t0 and checks the guest's final checksum. */
static struct result resume(bool kvm, char *ram, size_t size, const char *state,
			    size_t slen, uint64_t t0)
{
	struct vm *vm;
	int rc = vm_create(kvm, ram, size, 1, &hooks, &vm);
	if (rc)
		die("vm_create", rc);
	if (vm_load(vm, state, slen))
		die("vm_load", EINVAL);
	atomic_store(&R.t_first_insn, 0);
	atomic_store(&R.t_first_unit, 0);
	atomic_store(&R.finished, 0);
	vm_trap_first(vm, on_first, NULL);
	vm_resume(vm);
	uint64_t end = now_ns() + 120ull * 1000000000ull;
	while (!atomic_load(&R.t_first_unit) && !atomic_load(&R.failed) &&
	       now_ns() < end)
		sleep_ms(1);
	struct result r = {
		.first_insn_ms = (double)(atomic_load(&R.t_first_insn) - t0) / 1e6,
		.first_unit_ms = (double)(atomic_load(&R.t_first_unit) - t0) / 1e6,
	};
	struct guest_params *p = guest_params_of(ram, 0);
	__atomic_store_n(&p->stop_units, atomic_load(&R.units) + 1, __ATOMIC_RELEASE);
	if (!wait_for(&R.finished, 1, 300000))
		die("guest did not finish", EIO);
	vm_destroy(vm);
	uint32_t want = guest_model_checksum(p, R.fin_units);
	r.ok = want == R.fin_sum;
	printf("  checksum %08x, expected %08x: %s\n", R.fin_sum, want,
	       r.ok ? "OK" : "MISMATCH");
	return r;
}

static struct result eager(bool kvm, size_t size, const char *path,
			   const char *state, size_t slen)
{
	drop_cache(path);
	uint64_t t0 = now_ns();
	char *ram = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (ram == MAP_FAILED || fd < 0)
		die("eager restore", errno);
	for (size_t off = 0; off < size;) {
		ssize_t k = pread(fd, ram + off, size - off, (off_t)off);
		if (k <= 0)
			die("read snapshot", errno);
		off += (size_t)k;
	}
	close(fd);
	struct result r = resume(kvm, ram, size, state, slen, t0);
	munmap(ram, size);
	return r;
}

static struct result lazy(bool kvm, size_t size, size_t page, const char *path,
			  const char *state, size_t slen)
{
	drop_cache(path);
	uint64_t t0 = now_ns();
	upager_t *up;
	upager_store_t *st;
	void *ram;
	struct upager_map_opts mo = { .page_size = page };
	int rc = upager_create(NULL, &up);
	if (!rc)
		rc = upager_store_file(path, 0, &st);
	if (!rc)
		rc = upager_map(up, st, 0, size, &mo, &ram);
	if (rc)
		die("lazy restore", rc);
	struct result r = resume(kvm, ram, size, state, slen, t0);
	struct upager_stats s;
	upager_stats(up, ram, &s);
	printf("  upager: %llu faults, %llu units installed, fault p50 %llu us, "
	       "p99 %llu us\n", (unsigned long long)s.faults,
	       (unsigned long long)s.pages_installed,
	       (unsigned long long)upager_stats_percentile(&s, 50),
	       (unsigned long long)upager_stats_percentile(&s, 99));
	upager_unmap(up, ram);
	upager_store_release(st);
	upager_destroy(up);
	return r;
}

/* The value @val of option @opt, or the end of the program. */
static size_t size_arg(const char *opt, const char *val)
{
	uint64_t v;
	int rc = cli_parse_size(val, &v);

	if (rc) {
		fprintf(stderr, "lazy-restore: bad %s '%s': %s\n", opt, val,
			strerror(-rc));
		exit(1);
	}
	return (size_t)v;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	size_t size = 1ull << 30, page = 64 << 10;
	const char *path = "lazy-restore.snap", *csv = NULL;
	bool kvm = access("/dev/kvm", R_OK | W_OK) == 0;
	static const struct option lo[] = {
		{ "mem", 1, 0, 'm' }, { "page-size", 1, 0, 'p' },
		{ "file", 1, 0, 'f' }, { "csv", 1, 0, 'c' },
		{ "no-kvm", 0, 0, 'n' }, { 0, 0, 0, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'm': size = size_arg("--mem", optarg); break;
		case 'p': page = size_arg("--page-size", optarg); break;
		case 'f': path = optarg; break;
		case 'c': csv = optarg; break;
		case 'n': kvm = false; break;
		default:
			fprintf(stderr, "usage: lazy-restore [--mem SIZE] "
				"[--page-size SIZE] [--file PATH] [--csv FILE] "
				"[--no-kvm]\n"
				"SIZE: decimal, with an optional K, M, G or T "
				"(powers of 1024)\n");
			return 1;
		}
	}
	/* !page: a zero --page-size must not reach the modulo */
	if (size < (8u << 20) || size > (3ull << 30) || !page || size % page)
		die("--mem must be 8M..3G and a multiple of --page-size", EINVAL);
	if (!kvm)
		printf("lazy-restore: /dev/kvm not used: restoring a plain "
		       "process workload instead of a KVM guest\n");
	static char state[VM_STATE_MAX];
	size_t slen = snapshot(kvm, size, path, state);
	printf("eager restore (read %zu MiB, then resume):\n", size >> 20);
	struct result e = eager(kvm, size, path, state, slen);
	printf("lazy restore (resume at once, RAM through upager, %zu KiB units):\n",
	       page >> 10);
	struct result l = lazy(kvm, size, page, path, state, slen);
	printf("\n%-8s %22s %26s\n", "restore", "first instruction (ms)",
	       "first unit of work (ms)");
	printf("%-8s %22.3f %26.3f\n", "eager", e.first_insn_ms, e.first_unit_ms);
	printf("%-8s %22.3f %26.3f\n", "lazy", l.first_insn_ms, l.first_unit_ms);
	printf("lazy reaches the first instruction %.0fx sooner\n",
	       e.first_insn_ms / l.first_insn_ms);
	if (csv) {
		FILE *f = fopen(csv, "a");
		if (f) {
			if (ftell(f) == 0)
				fprintf(f, "restore,backend,mem_mib,page_kib,"
					   "first_insn_ms,first_unit_ms,checksum_ok\n");
			fprintf(f, "eager,%s,%zu,%zu,%.3f,%.3f,%d\n", kvm ? "kvm" : "process",
				size >> 20, page >> 10, e.first_insn_ms, e.first_unit_ms, e.ok);
			fprintf(f, "lazy,%s,%zu,%zu,%.3f,%.3f,%d\n", kvm ? "kvm" : "process",
				size >> 20, page >> 10, l.first_insn_ms, l.first_unit_ms, l.ok);
			fclose(f);
		}
	}
	unlink(path);
	return e.ok && l.ok ? 0 : 1;
}
