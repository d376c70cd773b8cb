/*
 * datafile.c - the file every engine reads, and its state in the page
 * cache.
 *
 * The generated file holds data_word(seed, i) in its i-th 8-byte word:
 * no page is zero or repeats another, so a page served from the wrong
 * place, or not at all, changes the checksum. It is written where
 * --dir, $TMPDIR or /var/tmp say, after checking with statfs that the
 * place is a disk file system (tmpfs would measure memory, not the disk).
 *
 * Cold runs start from cache_evict(): fdatasync and
 * posix_fadvise(DONTNEED) on the file, and when running as root also
 * sync and "echo 1 > /proc/sys/vm/drop_caches". cache_resident() checks
 * the result with mincore.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "bench.h"

#define IO_CHUNK (8u * 1024 * 1024)

static bool memory_fs(const char *dir)
{
	struct statfs st;

	if (statfs(dir, &st) != 0)
		return false;
	return st.f_type == TMPFS_MAGIC || st.f_type == RAMFS_MAGIC;
}

const char *fs_type_name(const char *path)
{
	struct statfs st;

	if (statfs(path, &st) != 0)
		return "unknown";
	switch (st.f_type) {
	case EXT4_SUPER_MAGIC:
		return "ext4";
	case XFS_SUPER_MAGIC:
		return "xfs";
	case BTRFS_SUPER_MAGIC:
		return "btrfs";
	case TMPFS_MAGIC:
		return "tmpfs";
	case RAMFS_MAGIC:
		return "ramfs";
	case OVERLAYFS_SUPER_MAGIC:
		return "overlayfs";
	case NFS_SUPER_MAGIC:
		return "nfs";
	default:
		return "other";
	}
}

int datafile_pick_dir(const char *want, char *out, size_t outlen,
		      char *why, size_t whylen)
{
	const char *cand[3] = { want, getenv("TMPDIR"), "/var/tmp" };

	why[0] = '\0';
	for (int i = 0; i < 3; i++) {
		if (!cand[i] || !cand[i][0])
			continue;
		if (access(cand[i], W_OK) != 0) {
			snprintf(why, whylen, "%s: %s", cand[i], strerror(errno));
			if (i == 0)
				return -EACCES; /* asked for explicitly */
			continue;
		}
		if (memory_fs(cand[i])) {
			snprintf(why, whylen, "%s is a memory file system: skipped",
				 cand[i]);
			if (i == 0)
				return -EINVAL; /* asked for explicitly */
			continue;
		}
		snprintf(out, outlen, "%s", cand[i]);
		return 0;
	}
	return -ENOENT;
}

static void fill_chunk(uint64_t *buf, uint64_t first_word, size_t words,
		       uint64_t seed)
{
	for (size_t i = 0; i < words; i++)
		buf[i] = data_word(seed, first_word + i);
}

int datafile_generate(const char *path, uint64_t size, uint64_t seed, bool quiet)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	uint64_t *buf;
	uint64_t done = 0;
	bool tty = isatty(STDERR_FILENO);
	int err = 0;

	if (fd < 0)
		return -errno;
	buf = malloc(IO_CHUNK);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (done < size && !err) {
		size_t n = size - done < IO_CHUNK ? size - done : IO_CHUNK;
		ssize_t w;

		fill_chunk(buf, done / 8, (n + 7) / 8, seed);
		w = pwrite(fd, buf, n, (off_t)done);
		if (w != (ssize_t)n)
			err = w < 0 ? -errno : -EIO;
		done += n;
		if (!quiet && tty && (done % (128 * MIB) == 0 || done == size))
			fprintf(stderr, "\rgenerating %s: %3.0f%%", path,
				100.0 * (double)done / (double)size);
	}
	if (!quiet)
		fprintf(stderr, "%sgenerated %s: %.0f MiB\n", tty ? "\r" : "", path,
			(double)size / MIB);
	if (!err && fsync(fd) != 0)
		err = -errno;
	free(buf);
	close(fd);
	return err;
}

static int drop_caches(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, "1\n", 2) != 2)
		err = -errno;
	close(fd);
	return err;
}

int cache_evict(const char *path, bool allow_drop, const char **method)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int err;

	if (fd < 0)
		return -errno;
	fdatasync(fd);
	err = -posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
	if (err)
		return err;
	*method = "fdatasync+fadvise(DONTNEED)";
	if (allow_drop && geteuid() == 0) {
		sync();
		if (drop_caches() == 0)
			*method = "fdatasync+fadvise(DONTNEED)+drop_caches";
	}
	return 0;
}

int cache_warm(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf = malloc(IO_CHUNK);
	int err = 0;
	off_t off = 0;

	if (fd < 0 || !buf) {
		err = fd < 0 ? -errno : -ENOMEM;
		goto out;
	}
	for (;;) {
		ssize_t n = pread(fd, buf, IO_CHUNK, off);

		if (n < 0) {
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		off += n;
	}
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return err;
}

double cache_resident(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	void *addr;
	double frac = -1;

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) == 0 && st.st_size > 0) {
		addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (addr != MAP_FAILED) {
			frac = (double)resident_bytes(addr, (size_t)st.st_size) /
			       (double)st.st_size;
			munmap(addr, (size_t)st.st_size);
		}
	}
	close(fd);
	return frac > 1 ? 1 : frac;
}

/* ---- reference checksum ---- */

struct ref {
	int fd;
	_Alignas(64) uint8_t buf[BENCH_PAGE];
	uint64_t sum;
	int err;
};

static void ref_page(void *arg, uint64_t page)
{
	struct ref *r = arg;
	ssize_t n;

	if (r->err)
		return;
	n = pread(r->fd, r->buf, BENCH_PAGE, (off_t)(page * BENCH_PAGE));
	if (n != BENCH_PAGE) {
		r->err = n < 0 ? -errno : -EIO;
		return;
	}
	r->sum += page_sum(r->buf, page);
}

int reference_checksum(const struct run_spec *s, uint64_t *out)
{
	struct ref *r = calloc(1, sizeof(*r));
	unsigned n = (s->wl == WL_RAND || s->wl == WL_RAND_HINTED) ? s->threads : 1;
	int err;

	if (!r)
		return -ENOMEM;
	r->fd = open(s->path, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0) {
		err = -errno;
		free(r);
		return err;
	}
	for (unsigned t = 0; t < n && !r->err; t++)
		workload_pages(s, t, ref_page, r);
	*out = r->sum;
	err = r->err;
	close(r->fd);
	free(r);
	return err;
}
