/*
 * raw_sigbus.c - the limit of an inline fault path on a file: a minimal
 * userfaultfd pager written straight on the kernel interface, with no
 * state, no budget and no stats. The descriptor has UFFD_FEATURE_SIGBUS,
 * so a missing page raises SIGBUS in the faulting thread; the handler
 * reads the page with one O_DIRECT pread(2) into a buffer of that thread
 * and installs it with one UFFDIO_COPY. This is what every pager of this
 * design pays per miss (signal delivery and return, the read, the copy),
 * so the gap between it and mmap is a floor for upager's inline faults,
 * not something upager's own code adds. In the warm workload the handler
 * copies from an in-memory copy of the file instead of reading it: what
 * is left is the mechanism alone (the fault, the signal, the copy).
 *
 * Contract details it honours: EEXIST from UFFDIO_COPY means another
 * thread installed the page first (its bytes are the same); EAGAIN means
 * the address space is changing (retry). A failed read or install, or a
 * SIGBUS elsewhere, restores the default action, so the re-executed
 * access ends the run's child with SIGBUS: never zeros.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"

/* One engine per run, and one run per child process: the handler finds
 * its state here. */
static struct {
	int uffd, fd;
	uintptr_t start, len;
	uint64_t file_size;
	const uint8_t *src; /* warm: the file's bytes, len of them */
	atomic_ulong faults, copies;
} rs = { .uffd = -1, .fd = -1 };

static _Thread_local alignas(BENCH_PAGE) uint8_t page_buf[BENCH_PAGE];

static void give_up(void)
{
	signal(SIGBUS, SIG_DFL); /* the access faults again and ends here */
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr & ~(uintptr_t)(BENCH_PAGE - 1);
	int saved = errno;

	(void)sig;
	(void)uc;
	if (si->si_code != BUS_ADRERR || a < rs.start ||
	    a - rs.start >= rs.len) {
		give_up();
		return;
	}
	atomic_fetch_add_explicit(&rs.faults, 1, memory_order_relaxed);
	uint64_t off = a - rs.start;
	const uint8_t *from = rs.src ? rs.src + off : page_buf;
	if (!rs.src) {
		size_t want = rs.file_size - off < BENCH_PAGE ?
			      (size_t)(rs.file_size - off) : BENCH_PAGE;
		ssize_t n;
		do
			n = pread(rs.fd, page_buf, BENCH_PAGE, (off_t)off);
		while (n < 0 && errno == EINTR);
		if (n < (ssize_t)want) {
			give_up();
			errno = saved;
			return;
		}
		memset(page_buf + want, 0, BENCH_PAGE - want);
	}
	struct uffdio_copy c = { .dst = a, .src = (uintptr_t)from,
				 .len = BENCH_PAGE };
	while (ioctl(rs.uffd, UFFDIO_COPY, &c) != 0) {
		if (errno == EEXIST)
			break;
		if (errno != EAGAIN) {
			give_up();
			break;
		}
		c.copy = 0;
	}
	if (c.copy == BENCH_PAGE)
		atomic_fetch_add_explicit(&rs.copies, 1, memory_order_relaxed);
	errno = saved;
}

static int setup(const struct run_spec *s, void **map, size_t *map_len)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_SIGBUS };

	if (s->wl != WL_WARM) {
		rs.fd = open(s->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
		if (rs.fd < 0)
			return -errno;
	}
	rs.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (rs.uffd < 0)
		return -errno;
	if (ioctl(rs.uffd, UFFDIO_API, &api) != 0)
		return -errno;
	*map_len = (s->file_size + BENCH_PAGE - 1) / BENCH_PAGE * BENCH_PAGE;
	*map = mmap(NULL, *map_len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (*map == MAP_FAILED) {
		*map = NULL;
		return -errno;
	}
	rs.start = (uintptr_t)*map;
	rs.len = *map_len;
	rs.file_size = s->file_size;
	struct uffdio_register reg = {
		.range = { .start = rs.start, .len = rs.len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(rs.uffd, UFFDIO_REGISTER, &reg) != 0)
		return -errno;
	struct sigaction sa = { .sa_sigaction = on_sigbus,
				.sa_flags = SA_SIGINFO };
	sigemptyset(&sa.sa_mask);
	return sigaction(SIGBUS, &sa, NULL) == 0 ? 0 : -errno;
}

int engine_raw_sigbus_run(const struct engine *e, const struct run_spec *s,
			  struct run_result *r)
{
	const struct access_ops ops = { .read_page = mem_read_page,
					.read_range = mem_read_range };
	struct mem_ctx m;
	void *map = NULL;
	size_t map_len = 0;
	int err;

	(void)e;
	r->page_size = BENCH_PAGE;
	if (s->wl == WL_WARM) {
		size_t cap = (s->file_size + BENCH_PAGE - 1) / BENCH_PAGE *
			     BENCH_PAGE;
		rs.src = load_file_copy(s->path, s->file_size, cap, &err);
		if (!rs.src) {
			result_fail(r, err, "reading the file: %s",
				    strerror(-err));
			return err;
		}
		r->aux_bytes = cap;
	}
	err = setup(s, &map, &map_len);
	if (err) {
		result_fail(r, err, "set-up (O_DIRECT file, userfaultfd with "
			    "SIGBUS): %s", strerror(-err));
	} else {
		m.base = map;
		err = drive_workload(s, &ops, &m, r);
		if (err)
			result_fail(r, err, "workload: %s", strerror(-err));
		r->data_bytes = resident_bytes(map, map_len);
	}
	signal(SIGBUS, SIG_DFL);
	if (map)
		munmap(map, map_len);
	if (rs.uffd >= 0)
		close(rs.uffd);
	if (rs.fd >= 0)
		close(rs.fd);
	free((void *)rs.src);
	r->has_stats = true;
	r->faults = atomic_load(&rs.faults);
	r->installed = atomic_load(&rs.copies);
	r->fault_p50_us = r->fault_p99_us = -1;
	return r->error;
}
