/*
 * uffd.c - the one thin layer over userfaultfd.
 *
 * Every UFFDIO_* ioctl of the library is issued here and its result turned
 * into 0 / -errno. The kernel's byte-count fields (uffdio_copy.copy and
 * friends) hold either the bytes handled or a negative errno, and 0 or
 * -EAGAIN when nothing was handled depending on the kernel version: they
 * are clamped to a length here so that no caller ever reads an errno as a
 * length.
 *
 * upager__install() implements the install contract (design.md, "kernel
 * contract"): EEXIST means a page is already there, so it is skipped; EAGAIN/ENOENT mean the address space is changing and an
 * event is waiting for the manager to read it, so the install backs off
 * and retries; ESRCH/ENOSPC mean the address space is gone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Features upager cannot work without, and ones it uses when offered. */
#define NEED_FEATURES (UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | \
		       UFFD_FEATURE_EVENT_REMAP)
#define WANT_FEATURES (UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_POISON | \
		       UFFD_FEATURE_MOVE | UFFD_FEATURE_PAGEFAULT_FLAG_WP)

static int uffd_new(void)
{
	/* Not UFFD_USER_MODE_ONLY: faults raised from kernel mode (a KVM
	 * guest, a read() into the region) must reach the handler too. */
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	int err = errno;
	if (err != EPERM && err != ENOSYS)
		return -err;
	/* vm.unprivileged_userfaultfd=0: /dev/userfaultfd grants access
	 * through its file permissions instead. */
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -err;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	int err2 = errno;
	close(dev);
	return fd >= 0 ? fd : -err2;
}

int upager__uffd_open(int *out, struct upager__uffd_caps *caps, bool sigbus)
{
	/* A descriptor accepts one UFFDIO_API: probe on a throwaway one. */
	int probe = uffd_new();
	if (probe < 0)
		return probe;
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	int rc = ioctl(probe, UFFDIO_API, &api) ? -errno : 0;
	close(probe);
	if (rc)
		return rc;
	if ((api.features & NEED_FEATURES) != NEED_FEATURES)
		return -EOPNOTSUPP;
	if (sigbus && !(api.features & UFFD_FEATURE_SIGBUS))
		return -EOPNOTSUPP;

	int fd = uffd_new();
	if (fd < 0)
		return fd;
	uint64_t want = NEED_FEATURES | (api.features & WANT_FEATURES) |
			(sigbus ? UFFD_FEATURE_SIGBUS : 0);
	struct uffdio_api api2 = { .api = UFFD_API, .features = want };
	if (ioctl(fd, UFFDIO_API, &api2)) {
		rc = -errno;
		close(fd);
		return rc;
	}
	caps->features = api2.features;
	caps->poison = !!(api2.features & UFFD_FEATURE_POISON);
	caps->move = !!(api2.features & UFFD_FEATURE_MOVE);
	caps->thread_id = !!(api2.features & UFFD_FEATURE_THREAD_ID);
	caps->wp = !!(api2.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	/* api2.features lists every feature the kernel has, asked for or
	 * not: SIGBUS is on only if asked for. */
	caps->sigbus = sigbus;
	*out = fd;
	return 0;
}

int upager__uffd_open_mover(int *out)
{
	int fd = uffd_new();
	if (fd < 0)
		return fd;
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_MOVE };
	if (ioctl(fd, UFFDIO_API, &api)) {
		int rc = errno == EINVAL ? -EOPNOTSUPP : -errno;
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

int upager__uffd_register_mode(int fd, uintptr_t base, size_t len,
			       uint64_t mode)
{
	struct uffdio_register reg = {
		.range = { .start = base, .len = len },
		.mode = mode,
	};
	if (ioctl(fd, UFFDIO_REGISTER, &reg))
		return -errno;
	uint64_t need = (1ULL << _UFFDIO_WAKE);
	if (mode & UFFDIO_REGISTER_MODE_MISSING)
		need |= (1ULL << _UFFDIO_COPY) | (1ULL << _UFFDIO_ZEROPAGE);
	if (mode & UFFDIO_REGISTER_MODE_WP)
		need |= (1ULL << _UFFDIO_WRITEPROTECT);
	if ((reg.ioctls & need) != need) {
		upager__uffd_unregister(fd, base, len);
		return -EOPNOTSUPP;
	}
	return 0;
}

int upager__uffd_unregister(int fd, uintptr_t base, size_t len)
{
	struct uffdio_range r = { .start = base, .len = len };
	return ioctl(fd, UFFDIO_UNREGISTER, &r) ? -errno : 0;
}

int upager__uffd_wake(int fd, uintptr_t base, size_t len)
{
	struct uffdio_range r = { .start = base, .len = len };
	return ioctl(fd, UFFDIO_WAKE, &r) ? -errno : 0;
}

int upager__uffd_writeprotect(int fd, uintptr_t base, size_t len,
			      bool protect)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = base, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	/* Un-protecting wakes the range's waiters; protecting does not. */
	return ioctl(fd, UFFDIO_WRITEPROTECT, &wp) ? -errno : 0;
}

int upager__uffd_unprotect_nowake(int fd, uintptr_t base, size_t len)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = base, .len = len },
		.mode = UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
	};
	return ioctl(fd, UFFDIO_WRITEPROTECT, &wp) ? -errno : 0;
}

static size_t clamp_done(int64_t v)
{
	return v > 0 ? (size_t)v : 0;
}

static int uffd_copy_mode(int fd, uintptr_t dst, const void *src, size_t len,
			  uint64_t mode, size_t *done)
{
	struct uffdio_copy c = {
		.dst = dst, .src = (uintptr_t)src, .len = len, .mode = mode,
	};
	int rc = ioctl(fd, UFFDIO_COPY, &c) ? -errno : 0;
	*done = rc ? clamp_done(c.copy) : len;
	return rc;
}

static int uffd_zero_mode(int fd, uintptr_t dst, size_t len, uint64_t mode,
			  size_t *done)
{
	struct uffdio_zeropage z = {
		.range = { .start = dst, .len = len }, .mode = mode,
	};
	int rc = ioctl(fd, UFFDIO_ZEROPAGE, &z) ? -errno : 0;
	*done = rc ? clamp_done(z.zeropage) : len;
	return rc;
}

int upager__uffd_zero(int fd, uintptr_t dst, size_t len, size_t *done)
{
	return uffd_zero_mode(fd, dst, len, 0, done);
}

static int uffd_poison_mode(int fd, uintptr_t dst, size_t len, uint64_t mode,
			    size_t *done)
{
	struct uffdio_poison p = {
		.range = { .start = dst, .len = len }, .mode = mode,
	};
	int rc = ioctl(fd, UFFDIO_POISON, &p) ? -errno : 0;
	*done = rc ? clamp_done(p.updated) : len;
	return rc;
}

int upager__uffd_poison(int fd, uintptr_t dst, size_t len, size_t *done)
{
	return uffd_poison_mode(fd, dst, len, 0, done);
}

static int uffd_move_mode(int fd, uintptr_t dst, uintptr_t src, size_t len,
			  uint64_t mode, size_t *done)
{
	struct uffdio_move m = {
		.dst = dst, .src = src, .len = len, .mode = mode,
	};
	int rc = ioctl(fd, UFFDIO_MOVE, &m) ? -errno : 0;
	*done = rc ? clamp_done(m.move) : len;
	return rc;
}

int upager__uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len,
		      size_t *done)
{
	return uffd_move_mode(fd, dst, src, len,
			      UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES |
			      UFFDIO_MOVE_MODE_DONTWAKE, done);
}

static void backoff(unsigned *us)
{
	struct timespec ts = { 0, (long)*us * 1000 };
	nanosleep(&ts, NULL);
	if (*us < 1000)
		*us *= 2;
}

#define PAGE 4096u

/* Source of zero units in write-protected regions: UFFDIO_ZEROPAGE has no
 * write-protect mode, and a zero page mapped without it would let the
 * first write go unseen. A zero unit such a region gets writable is there
 * to be written (a write fault's, or readahead ahead of a write stream):
 * it too is copied, as private pages, since on the shared zero page every
 * 4 KiB page of it would cost the writer a copy-on-write fault of its
 * own. In .bss: reading it maps the zero page. */
static char zeros[UPAGER_PAGE_SIZE_MAX];

int upager__install(struct upager__region *r, size_t unit, size_t count,
		    const void *src, enum upager__fill how, bool wp)
{
	upager_t *up = r->up;
	int fd = r->sp->uffd;
	uintptr_t dst = region_base(r) + (unit << r->page_shift);
	size_t len = count << r->page_shift, off = 0;
	bool zcopy = how == FILL_ZERO && r->wp;
	if (zcopy && len > sizeof(zeros))
		return -EINVAL; /* callers install zero units one by one */
	unsigned delay = 2, enoent = 0;
	int rc = 0;

	if (zcopy) {
		how = FILL_COPY;
		src = zeros;
	}
	while (off < len) {
		size_t done = 0;
		switch (how) {
		case FILL_COPY:
			rc = uffd_copy_mode(fd, dst + off,
					    (const char *)src + off, len - off,
					    UFFDIO_COPY_MODE_DONTWAKE |
					    (wp ? UFFDIO_COPY_MODE_WP : 0),
					    &done);
			break;
		case FILL_MOVE:
			/* No holes allowed: every page of a read buffer was
			 * written, and a hole would leave the unit short. */
			rc = uffd_move_mode(fd, dst + off,
					    (uintptr_t)src + off, len - off,
					    UFFDIO_MOVE_MODE_DONTWAKE, &done);
			break;
		case FILL_ZERO:
			rc = uffd_zero_mode(fd, dst + off, len - off,
					    UFFDIO_ZEROPAGE_MODE_DONTWAKE, &done);
			break;
		case FILL_POISON:
			rc = uffd_poison_mode(fd, dst + off, len - off,
					      UFFDIO_POISON_MODE_DONTWAKE,
					      &done);
			break;
		}
		off += done;
		if (rc == 0)
			break;
		if (done > 0)
			continue; /* partial progress: carry on from there */
		if (rc == -EEXIST) {
			/* A racing install or a page the application kept:
			 * leave it, fill the rest. */
			off += PAGE;
			continue;
		}
		if (how == FILL_MOVE && rc != -EAGAIN) {
			/* The rest is copied: the pages not moved are still
			 * in src. EINVAL and EPERM are the region's for
			 * good (its vma differs from the buffer's: other
			 * protection, mlock); the rest (a page shared or
			 * pinned: EBUSY; a hole: ENOENT) this unit's. */
			if (rc == -EINVAL || rc == -EPERM)
				atomic_store(&r->no_move, true);
			how = FILL_COPY;
			continue;
		}
		if (rc == -EAGAIN || rc == -ENOENT) {
			/* An event (REMOVE, UNMAP, REMAP) is unread or the
			 * layout changed mid-copy: the manager will drain
			 * it; retry unless the region is going away. */
			if (atomic_load(&r->dead) || atomic_load(&up->stopping) ||
			    atomic_load(&r->sp->gone))
				return -ECANCELED;
			/* The manager must not wait for itself to read the
			 * event: its caller hands the job to a worker. */
			if (upager__on_manager)
				return -EAGAIN;
			if (rc == -ENOENT && ++enoent > 64)
				return rc; /* the range is no longer there */
			CNT_INC(&r->cnt, retries, 1);
			backoff(&delay);
			continue;
		}
		/* ESRCH, ENOSPC: the address space is gone; anything else
		 * is a bug we report rather than loop on. */
		if (rc == -ESRCH || rc == -ENOSPC)
			atomic_store(&r->sp->gone, true);
		return rc;
	}
	return 0;
}
