/*
 * store.c - backing stores: a file read through io_uring, or the
 * application's callbacks.
 *
 * A store is immutable after creation except for its reference count, so
 * workers read its fields without locks. Reads themselves are issued by
 * worker.c (io_uring for files, a direct call for custom stores); this
 * file only creates, sizes and frees stores.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static void rc_close(int fd, int wfd, int dwfd)
{
	if (dwfd >= 0 && dwfd != fd && dwfd != wfd)
		close(dwfd);
	if (wfd >= 0 && wfd != fd)
		close(wfd);
	close(fd);
}

/* One read-only map of the file for map_file(); NULL on failure.
 * MADV_HUGEPAGE: a miss in the map reads the 2 MiB folio around it (and,
 * unless @one, the next one too), so the disk gets large requests and the
 * page cache large folios. MADV_DONTFORK: a child has no use for it. */
static const char *map_one_file(int fd, size_t len, bool one)
{
	void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return NULL;
	madvise(m, len, MADV_HUGEPAGE);
	if (one)
		madvise(m, len, MADV_RANDOM);
	madvise(m, len, MADV_DONTFORK);
	return m;
}

/* Maps a buffered store's file for mapped reads (see struct upager_store).
 * Best effort: a file that cannot be mapped is read as before. */
static void map_file(upager_store_t *s, const struct stat *st)
{
	if ((s->flags & UPAGER_STORE_DIRECT) || !S_ISREG(st->st_mode) ||
	    st->st_size <= 0)
		return;
	size_t len = (size_t)st->st_size;
	s->map = map_one_file(s->fd, len, false);
	if (s->map)
		s->map_one = map_one_file(s->fd, len, true);
	s->map_len = len;
}

int upager_store_file(const char *path, unsigned flags, upager_store_t **out)
{
	if (!path || !out ||
	    (flags & ~(UPAGER_STORE_DIRECT | UPAGER_STORE_WRITABLE)))
		return -EINVAL;
	bool rw = flags & UPAGER_STORE_WRITABLE;
	int oflags = (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC;
	if (flags & UPAGER_STORE_DIRECT)
		oflags |= O_DIRECT;
	int fd = open(path, oflags);
	if (fd < 0)
		return -errno;
	/* Write-back goes through the page cache (units need not be
	 * block-aligned): a second, buffered descriptor for O_DIRECT. */
	int wfd = -1;
	if (rw) {
		wfd = (flags & UPAGER_STORE_DIRECT) ?
		      open(path, O_RDWR | O_CLOEXEC) : fd;
		if (wfd < 0) {
			int rc = -errno;
			close(fd);
			return rc;
		}
	}
	struct stat st;
	if (fstat(fd, &st)) {
		int rc = -errno;
		rc_close(fd, wfd, -1);
		return rc;
	}
	upager_store_t *s = NULL;
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		rc_close(fd, wfd, -1);
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		rc_close(fd, wfd, -1);
		return -ENOMEM;
	}
	atomic_init(&s->refs, 1);
	s->kind = UPAGER__STORE_FILE;
	s->fd = fd;
	s->wfd = wfd;
	s->dwfd = -1;
	/* Write-back of whole pages bypasses the page cache (wb_write.c):
	 * an O_DIRECT store's own descriptor, else one more. Best effort:
	 * without it every write is buffered. A read-only buffered store
	 * gets one for its random misses (upager__store_read_direct()),
	 * but only where mincore() tells it the truth about the file's page
	 * cache: the kernel shows a file's cache only to its owner or to
	 * whoever may write it, and calls every page of any other file
	 * uncached. */
	if (rw)
		s->dwfd = (flags & UPAGER_STORE_DIRECT) ?
			  fd : open(path, O_RDWR | O_CLOEXEC | O_DIRECT);
	else if (!(flags & UPAGER_STORE_DIRECT) &&
		 (st.st_uid == geteuid() ||
		  faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) == 0))
		s->dwfd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	s->flags = flags;
	map_file(s, &st);
	*out = s;
	return 0;
}

int upager_store_fd(int fd, unsigned flags, upager_store_t **out)
{
	if (fd < 0 || !out || (flags & ~UPAGER_STORE_DIRECT))
		return -EINVAL;
	struct stat st;
	if (fstat(fd, &st))
		return -errno;
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return -EINVAL;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if ((fl & O_ACCMODE) == O_WRONLY)
		return -EBADF; /* the store reads it */
	/* O_DIRECT is a property of the open file description: set it
	 * here if the owner did not. */
	if ((flags & UPAGER_STORE_DIRECT) && !(fl & O_DIRECT) &&
	    fcntl(fd, F_SETFL, fl | O_DIRECT))
		return -errno;
	upager_store_t *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	atomic_init(&s->refs, 1);
	s->kind = UPAGER__STORE_FILE;
	s->fd = fd;
	s->wfd = -1; /* read-only: no write-back descriptor */
	s->dwfd = -1;
	s->flags = flags;
	if (!(fl & O_DIRECT))
		map_file(s, &st);
	*out = s;
	return 0;
}

int upager_store_custom(const struct upager_store_ops *ops, void *ctx,
			upager_store_t **out)
{
	if (!ops || !ops->read || !out)
		return -EINVAL;
	upager_store_t *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	atomic_init(&s->refs, 1);
	s->kind = UPAGER__STORE_CUSTOM;
	s->fd = -1;
	s->wfd = -1;
	s->dwfd = -1;
	s->ops = *ops;
	s->ctx = ctx;
	*out = s;
	return 0;
}

enum { DIO_COLD_RUN = 16, DIO_SAMPLE = 64 };

bool upager__store_read_direct(upager_store_t *s, uint64_t off, size_t len)
{
	enum { CHECK_MAX = 64 }; /* pages looked up: up to 256 KiB */
	if (!upager__store_dio(s) || (s->flags & UPAGER_STORE_DIRECT) ||
	    !s->map_one || ((off | len) & 4095) || !len || len > CHECK_MAX * 4096u ||
	    off + len > s->map_len)
		return false;
	/* The lookup (mincore, a system call) costs about a microsecond, a
	 * fifth of what upager adds to a miss. Where the file is cold it
	 * says the same every time: after DIO_COLD_RUN lookups in a row
	 * found nothing, the next DIO_SAMPLE - 1 reads skip it. Skipping
	 * costs no coherence: an O_DIRECT read writes back dirty page-cache
	 * pages of its range before it reads. A file that warms up meanwhile
	 * is read from the device, not the cache, for at most that many
	 * reads. */
	unsigned skip = atomic_load_explicit(&s->dw_skip, memory_order_relaxed);
	if (skip && atomic_compare_exchange_strong_explicit(
			    &s->dw_skip, &skip, skip - 1, memory_order_relaxed,
			    memory_order_relaxed))
		return true;
	unsigned char vec[CHECK_MAX];
	if (mincore((void *)(s->map_one + off), len, vec))
		return false;
	for (size_t i = 0; i < len / 4096; i++) {
		if (vec[i] & 1) {
			atomic_store_explicit(&s->dw_cold, 0,
					      memory_order_relaxed);
			return false;
		}
	}
	if (atomic_fetch_add_explicit(&s->dw_cold, 1, memory_order_relaxed) + 1 >=
	    DIO_COLD_RUN) {
		atomic_store_explicit(&s->dw_cold, 0, memory_order_relaxed);
		atomic_store_explicit(&s->dw_skip, DIO_SAMPLE - 1,
				      memory_order_relaxed);
	}
	return true;
}

void upager__store_ref(upager_store_t *s)
{
	atomic_fetch_add(&s->refs, 1);
}

void upager_store_release(upager_store_t *s)
{
	if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	if (s->kind == UPAGER__STORE_FILE) {
		if (s->map)
			munmap((void *)s->map, (size_t)s->map_len);
		if (s->map_one)
			munmap((void *)s->map_one, (size_t)s->map_len);
		rc_close(s->fd, s->wfd, s->dwfd);
	} else if (s->ops.release) {
		s->ops.release(s->ctx);
	}
	free(s);
}

int upager__store_size(upager_store_t *s, uint64_t *size)
{
	if (s->kind == UPAGER__STORE_CUSTOM) {
		if (!s->ops.size) {
			*size = UINT64_MAX;
			return 0;
		}
		return s->ops.size(s->ctx, size);
	}
	struct stat st;
	if (fstat(s->fd, &st))
		return -errno;
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(s->fd, 0, SEEK_END);
		if (end < 0)
			return -errno;
		*size = (uint64_t)end;
		return 0;
	}
	*size = (uint64_t)st.st_size;
	return 0;
}
