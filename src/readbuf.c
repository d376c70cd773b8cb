/*
 * readbuf.c - a worker's read buffers: one arena of UPAGER__ARENA_BYTES
 * (a bitmap of its pages, first fit, or last fit for a buffer a read will
 * likely not touch) and, where the kernel gives transparent huge pages,
 * HUGE_SLOTS huge pages for reads of one whole 2 MiB unit that are moved
 * into the region instead of copied (moves()). So a worker's buffer
 * memory is bounded whatever the mix of unit sizes. Each set belongs to
 * one worker (worker.c) and is used by its thread alone: no locks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define HUGE_BYTES (2u << 20)  /* a PMD-mapped transparent huge page */
#define HUGE_SLOTS UPAGER__HUGE_SLOTS
#define ARENA_PAGES UPAGER__ARENA_PAGES

static size_t round_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static bool page_used(const struct upager__rbufs *b, size_t p)
{
	return b->used[p / 64] & (1ull << (p % 64));
}

static void mark_pages(struct upager__rbufs *b, size_t p, size_t n, bool on)
{
	for (size_t i = p; i < p + n; i++) {
		if (on)
			b->used[i / 64] |= 1ull << (i % 64);
		else
			b->used[i / 64] &= ~(1ull << (i % 64));
	}
}

/* First page of the first run of n free arena pages; ARENA_PAGES if
 * none. */
static size_t arena_find(const struct upager__rbufs *b, size_t n)
{
	size_t run = 0;
	for (size_t p = 0; p < ARENA_PAGES; p++) {
		if (!(p % 64) && b->used[p / 64] == ~0ull) {
			run = 0;
			p += 63;
			continue;
		}
		run = page_used(b, p) ? 0 : run + 1;
		if (run == n)
			return p + 1 - n;
	}
	return ARENA_PAGES;
}

/* First page of the last run of n free arena pages; ARENA_PAGES if
 * none. */
static size_t arena_find_last(const struct upager__rbufs *b, size_t n)
{
	size_t run = 0;
	for (size_t p = ARENA_PAGES; p-- > 0;) {
		run = page_used(b, p) ? 0 : run + 1;
		if (run == n)
			return p;
	}
	return ARENA_PAGES;
}

/* First fit of n contiguous free arena pages (last fit for a buffer
 * held only in case: see mapped_src() in worker.c); NULL if none. */
char *upager__rbufs_arena_alloc(struct upager__rbufs *b, size_t n,
				bool spare)
{
	size_t p = spare ? arena_find_last(b, n) : arena_find(b, n);
	if (p == ARENA_PAGES)
		return NULL;
	mark_pages(b, p, n, true);
	return b->arena + p * 4096;
}

void upager__rbufs_arena_free(struct upager__rbufs *b, char *buf,
			      size_t n)
{
	mark_pages(b, (size_t)(buf - b->arena) / 4096, n, false);
}

bool upager__rbufs_arena_fits(const struct upager__rbufs *b, size_t n)
{
	return arena_find(b, n) < ARENA_PAGES;
}

/* Whether a read of units [u, u+n) of r goes to a huge slot, to be moved
 * into the region with UFFDIO_MOVE: one whole 2 MiB unit from the start
 * of a page of an O_DIRECT or custom store (a buffered file store's
 * scans measured 8% slower with it, the kernel's copy out of the page
 * cache and the huge page's clearing both left on the read's path), in
 * a region of this process's own whose pages need no write-protection
 * (a write-protected region's vma has another page protection than the
 * buffer's, and the kernel moves pages only between vmas that agree),
 * and where moving has not failed before. A huge page moves as one page
 * table entry: no copy, no 512 page allocations; moving 512 small pages
 * is slower than copying them, so smaller units are copied. */
static bool moves(const struct upager__rbufs *b,
		  const struct upager__region *r, size_t n, size_t skip)
{
	return b->huge && skip == 0 && (n << r->page_shift) == HUGE_BYTES &&
	       (r->store->kind == UPAGER__STORE_CUSTOM ||
		(r->store->flags & UPAGER_STORE_DIRECT)) &&
	       !r->wp && r->sp->local && r->sp->caps.move &&
	       !atomic_load_explicit(&r->no_move, memory_order_relaxed);
}

static bool huge_free(const struct upager__rbufs *b)
{
	return b->huge_used != (1u << HUGE_SLOTS) - 1;
}

bool upager__rbufs_in_huge(const struct upager__rbufs *b, const char *p)
{
	return b->huge && p >= b->huge && p < b->huge + HUGE_SLOTS * HUGE_BYTES;
}

/* A read buffer of np pages for units [u, u+n) of r: a huge slot where
 * moves() says so and one is free, else arena pages; NULL if neither.
 * spare: a buffer the read will likely not touch. */
char *upager__rbufs_alloc(struct upager__rbufs *b,
			  const struct upager__region *r, size_t n, size_t skip,
			  size_t np, bool spare)
{
	if (moves(b, r, n, skip) && huge_free(b)) {
		unsigned i = (unsigned)__builtin_ctz(~b->huge_used);
		b->huge_used |= 1u << i;
		char *p = b->huge + (size_t)i * HUGE_BYTES;
		/* Its huge page, allocated here rather than by the
		 * kernel's copy into it in the middle of the read. */
		*(volatile char *)p = 0;
		return p;
	}
	return upager__rbufs_arena_alloc(b, np, spare);
}

void upager__rbufs_free(struct upager__rbufs *b, char *buf, size_t np)
{
	if (!upager__rbufs_in_huge(b, buf)) {
		upager__rbufs_arena_free(b, buf, np);
		return;
	}
	size_t i = (size_t)(buf - b->huge) / HUGE_BYTES;
	b->huge_used &= ~(1u << i);
}

bool upager__rbufs_fits(const struct upager__rbufs *b,
			const struct upager__region *r, size_t n, size_t skip,
			size_t np)
{
	return (moves(b, r, n, skip) && huge_free(b)) || upager__rbufs_arena_fits(b, np);
}

/* Whether the kernel gives transparent huge pages to a range advised
 * MADV_HUGEPAGE ("always" or "madvise"; not "never", nor without THP). */
static bool thp_advisable(void)
{
	char buf[64] = "";
	int fd = open("/sys/kernel/mm/transparent_hugepage/enabled",
		      O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

/* The huge slots: HUGE_SLOTS huge pages, aligned, advised MADV_HUGEPAGE
 * and MADV_DONTFORK (a child sharing a page would make the kernel refuse
 * to move it). NULL where there are no huge pages to be had or no
 * memory: reads then all go to the arena. */
static char *huge_slots(void)
{
	if (!thp_advisable())
		return NULL;
	size_t len = HUGE_SLOTS * HUGE_BYTES;
	char *p = mmap(NULL, len + HUGE_BYTES, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	char *a = (char *)round_up((uintptr_t)p, HUGE_BYTES);
	if (a > p)
		munmap(p, (size_t)(a - p));
	munmap(a + len, HUGE_BYTES - (size_t)(a - p));
	if (madvise(a, len, MADV_HUGEPAGE) || madvise(a, len, MADV_DONTFORK)) {
		munmap(a, len);
		return NULL;
	}
	return a;
}

int upager__rbufs_init(struct upager__rbufs *b)
{
	memset(b, 0, sizeof(*b));
	b->arena = mmap(NULL, UPAGER__ARENA_BYTES, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b->arena == MAP_FAILED) {
		b->arena = NULL;
		return -ENOMEM;
	}
	b->huge = huge_slots();
	return 0;
}

void upager__rbufs_destroy(struct upager__rbufs *b)
{
	if (b->arena)
		munmap(b->arena, UPAGER__ARENA_BYTES);
	if (b->huge)
		munmap(b->huge, HUGE_SLOTS * HUGE_BYTES);
	b->arena = b->huge = NULL;
}
