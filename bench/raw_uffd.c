/*
 * raw_uffd.c - the limit of the fault path itself: a minimal userfaultfd
 * handler written straight on the kernel interface, with no store, no
 * queue and no workers. One handler thread reads fault messages and
 * answers each with one UFFDIO_COPY of the whole unit (4 KiB, 64 KiB or
 * 2 MiB, aligned) from an in-memory copy of the file. Used by the warm
 * workload, next to upager reading the same copy through a custom store.
 *
 * Contract details it honours: EEXIST from UFFDIO_COPY means another
 * install won the race (wake the range); EAGAIN means the address space is
 * changing (retry). No other event is requested, so none arrives.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"

struct raw {
	struct mem_ctx mem;
	int uffd, stop_fd;
	uint8_t *region;     /* aligned to unit */
	void *map;           /* what to munmap */
	size_t map_len, span, unit;
	const uint8_t *src;  /* span bytes */
	pthread_t handler;
	uint64_t faults, copies;
	int err;
};

static int install(struct raw *x, uint64_t addr)
{
	uint64_t base = addr & ~(uint64_t)(x->unit - 1);
	struct uffdio_copy c = {
		.dst = base,
		.src = (uintptr_t)(x->src + (base - (uintptr_t)x->region)),
		.len = x->unit,
	};

	for (;;) {
		if (ioctl(x->uffd, UFFDIO_COPY, &c) == 0) {
			x->copies++;
			return 0;
		}
		if (errno == EEXIST) {
			struct uffdio_range r = { .start = base, .len = x->unit };

			return ioctl(x->uffd, UFFDIO_WAKE, &r) == 0 ? 0 : -errno;
		}
		if (errno != EAGAIN)
			return -errno;
		/* Part of the unit may have been copied: go on after it. */
		if (c.copy > 0) {
			c.dst += (uint64_t)c.copy;
			c.src += (uint64_t)c.copy;
			c.len -= (uint64_t)c.copy;
		}
		c.copy = 0;
	}
}

static int handle_messages(struct raw *x)
{
	struct uffd_msg msg[32];
	ssize_t n = read(x->uffd, msg, sizeof(msg));

	if (n < 0)
		return errno == EAGAIN ? 0 : -errno;
	for (size_t i = 0; i < (size_t)n / sizeof(msg[0]); i++) {
		int err;

		if (msg[i].event != UFFD_EVENT_PAGEFAULT)
			continue;
		x->faults++;
		err = install(x, msg[i].arg.pagefault.address);
		if (err)
			return err;
	}
	return 0;
}

static void *handler_main(void *arg)
{
	struct raw *x = arg;
	struct pollfd p[2] = { { .fd = x->uffd, .events = POLLIN },
			       { .fd = x->stop_fd, .events = POLLIN } };

	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			x->err = -errno;
			break;
		}
		if (p[1].revents)
			break;
		if ((x->err = handle_messages(x)) != 0)
			break;
	}
	return NULL;
}

static int raw_setup(struct raw *x, const struct run_spec *s)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg;
	uintptr_t a;

	x->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (x->uffd < 0)
		return -errno;
	if (ioctl(x->uffd, UFFDIO_API, &api) != 0)
		return -errno;
	x->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (x->stop_fd < 0)
		return -errno;
	x->map_len = x->span + x->unit;
	x->map = mmap(NULL, x->map_len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (x->map == MAP_FAILED) {
		x->map = NULL;
		return -errno;
	}
	a = ((uintptr_t)x->map + x->unit - 1) & ~(uintptr_t)(x->unit - 1);
	x->region = (uint8_t *)a;
	x->mem.base = x->region;
	reg = (struct uffdio_register){
		.range = { .start = a, .len = x->span },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(x->uffd, UFFDIO_REGISTER, &reg) != 0)
		return -errno;
	(void)s;
	return -pthread_create(&x->handler, NULL, handler_main, x);
}

static void raw_teardown(struct raw *x, bool handler_up)
{
	if (handler_up) {
		uint64_t one = 1;

		if (write(x->stop_fd, &one, sizeof(one)) != sizeof(one))
			pthread_cancel(x->handler);
		pthread_join(x->handler, NULL);
	}
	if (x->map)
		munmap(x->map, x->map_len);
	if (x->stop_fd >= 0)
		close(x->stop_fd);
	if (x->uffd >= 0)
		close(x->uffd);
	free((void *)x->src);
}

int engine_raw_uffd_run(const struct engine *e, const struct run_spec *s,
			struct run_result *r)
{
	const struct access_ops ops = { .read_page = mem_read_page,
					.read_range = mem_read_range };
	struct raw x = { .uffd = -1, .stop_fd = -1, .unit = e->unit };
	int err;

	r->page_size = e->unit;
	x.span = (s->file_size + e->unit - 1) / e->unit * e->unit;
	x.src = load_file_copy(s->path, s->file_size, x.span, &err);
	if (!x.src) {
		result_fail(r, err, "reading the file: %s", strerror(-err));
		return err;
	}
	r->aux_bytes = x.span;
	err = raw_setup(&x, s);
	if (err) {
		result_fail(r, err, "userfaultfd set-up: %s", strerror(-err));
		raw_teardown(&x, false);
		return err;
	}
	err = drive_workload(s, &ops, &x, r);
	if (err)
		result_fail(r, err, "workload: %s", strerror(-err));
	r->data_bytes = resident_bytes(x.region, x.span);
	raw_teardown(&x, true);
	if (x.err)
		result_fail(r, x.err, "fault handler: %s", strerror(-x.err));
	r->has_stats = true;
	r->faults = x.faults;
	r->installed = x.copies;
	r->fault_p50_us = r->fault_p99_us = -1;
	return r->error;
}
