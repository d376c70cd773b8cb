/*
 * engines.c - the table of engines and the code they share.
 *
 * Names are what --engines and the reports use. Which workloads an engine
 * takes part in: the device engine reads with O_DIRECT and so has no warm
 * variant; raw-uffd installs from memory and so only runs warm, while
 * raw-sigbus reads the file with O_DIRECT when cold, copies from memory
 * when warm, and skips rand-hinted (it has nothing to do with a hint);
 * upager's
 * O_DIRECT store has nothing to add when the store is memory, and its
 * inline engines (UPAGER_CFG_INLINE) take file stores only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

#define UP(nm, u, d) { .name = nm, .kind = ENG_UPAGER, .unit = (u), \
		       .direct = (d), .run = engine_upager_run }
#define UPI(nm, u, d) { .name = nm, .kind = ENG_UPAGER, .unit = (u), \
			.direct = (d), .inline_faults = true, \
			.run = engine_upager_run }
#define MM(nm, adv) { .name = nm, .kind = ENG_MMAP, .unit = BENCH_PAGE, \
		      .advice = (adv), .run = engine_mmap_run }
#define RAW(nm, u) { .name = nm, .kind = ENG_RAW_UFFD, .unit = (u), \
		     .run = engine_raw_uffd_run }

const struct engine bench_engines[] = {
	UP("upager-4k", 4 * KIB, false),
	UP("upager-64k", 64 * KIB, false),
	UP("upager-2m", 2 * MIB, false),
	UP("upager-4k-direct", 4 * KIB, true),
	UP("upager-64k-direct", 64 * KIB, true),
	UP("upager-2m-direct", 2 * MIB, true),
	UPI("upager-4k-inline", 4 * KIB, false),
	UPI("upager-64k-inline", 64 * KIB, false),
	UPI("upager-4k-direct-inline", 4 * KIB, true),
	MM("mmap", MADV_NORMAL),
	MM("mmap-seq", MADV_SEQUENTIAL),
	MM("mmap-rand", MADV_RANDOM),
	{ .name = "pread", .kind = ENG_PREAD, .unit = BENCH_PAGE,
	  .run = engine_pread_run },
	{ .name = "device", .kind = ENG_DEVICE, .unit = BENCH_PAGE,
	  .run = engine_device_run },
	RAW("raw-uffd-4k", 4 * KIB),
	RAW("raw-uffd-64k", 64 * KIB),
	RAW("raw-uffd-2m", 2 * MIB),
	{ .name = "raw-sigbus-4k", .kind = ENG_RAW_SIGBUS, .unit = BENCH_PAGE,
	  .run = engine_raw_sigbus_run },
};

const size_t bench_nengines = sizeof(bench_engines) / sizeof(bench_engines[0]);

bool engine_supports(const struct engine *e, enum workload w)
{
	switch (e->kind) {
	case ENG_DEVICE:
		return w != WL_WARM;
	case ENG_RAW_UFFD:
		return w == WL_WARM;
	case ENG_RAW_SIGBUS:
		return w != WL_RAND_HINTED;
	case ENG_UPAGER:
		/* Warm runs serve from a custom store in memory: no
		 * O_DIRECT, and inline faults take file stores only. */
		return !((e->direct || e->inline_faults) && w == WL_WARM);
	default:
		return true;
	}
}

const struct engine *engine_find(const char *name)
{
	for (size_t i = 0; i < bench_nengines; i++)
		if (strcmp(bench_engines[i].name, name) == 0)
			return &bench_engines[i];
	return NULL;
}

uint64_t mem_read_page(void *ctx, unsigned thread, uint64_t page)
{
	const struct mem_ctx *m = ctx;

	(void)thread;
	return page_sum(m->base + page * BENCH_PAGE, page);
}

uint64_t mem_read_range(void *ctx, unsigned thread, uint64_t first, uint64_t n)
{
	const struct mem_ctx *m = ctx;
	uint64_t sum = 0;

	(void)thread;
	for (uint64_t p = first; p < first + n; p++)
		sum += page_sum(m->base + p * BENCH_PAGE, p);
	return sum;
}

void *load_file_copy(const char *path, uint64_t size, size_t cap, int *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint8_t *buf;
	uint64_t done = 0;

	if (fd < 0) {
		*err = -errno;
		return NULL;
	}
	buf = malloc(cap);
	if (!buf) {
		*err = -ENOMEM;
		close(fd);
		return NULL;
	}
	while (done < size) {
		size_t want = size - done < 8 * MIB ? size - done : 8 * MIB;
		ssize_t n = pread(fd, buf + done, want, (off_t)done);

		if (n <= 0) {
			*err = n < 0 ? -errno : -EIO;
			free(buf);
			close(fd);
			return NULL;
		}
		done += (uint64_t)n;
	}
	memset(buf + size, 0, cap - size);
	close(fd);
	return buf;
}

uint64_t resident_bytes(void *addr, size_t len)
{
	size_t pages = (len + BENCH_PAGE - 1) / BENCH_PAGE;
	unsigned char *vec = malloc(pages);
	uint64_t n = 0;

	if (!vec)
		return 0;
	if (mincore(addr, len, vec) == 0)
		for (size_t i = 0; i < pages; i++)
			n += vec[i] & 1;
	free(vec);
	return n * BENCH_PAGE;
}

void result_fail(struct run_result *r, int err, const char *fmt, ...)
{
	va_list ap;

	if (r->error)
		return; /* keep the first failure */
	r->error = err ? err : -EIO;
	va_start(ap, fmt);
	vsnprintf(r->message, sizeof(r->message), fmt, ap);
	va_end(ap);
}
