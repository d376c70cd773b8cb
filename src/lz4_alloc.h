/*
 * lz4_alloc.h - the size-class allocator behind the lz4 store.
 *
 * Compressed blocks have many different sizes and are freed and replaced
 * all the time; malloc would leave the heap fragmented and rarely give
 * memory back. This allocator rounds each request up to one of 64 size
 * classes (multiples of block_size / 64), carves the slots of a class from
 * slabs mapped with mmap, and unmaps a slab as soon as its last slot is
 * freed. Requests too large for a slab get a mapping of their own.
 *
 * Thread safety: alloc and free may be called from any thread; each class
 * has its own lock. The caller passes the size again to free, which picks
 * the class.
 */
#ifndef UPAGER_LZ4_ALLOC_H
#define UPAGER_LZ4_ALLOC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define UPAGER__LZ4A_CLASSES 64u

struct upager__lz4a_slab;

struct upager__lz4a_class {
	pthread_mutex_t lock;
	size_t slot;                       /* bytes per slot */
	uint32_t nslots;                   /* slots per slab */
	struct upager__lz4a_slab *partial; /* slabs with a free slot */
} __attribute__((aligned(64)));

struct upager__lz4a {
	size_t gran;      /* class step: class i holds slots of (i+1)*gran */
	size_t slab_size; /* bytes per slab, a power of two */
	size_t big;       /* requests over this get their own mapping */
	atomic_uint_fast64_t bytes; /* bytes mapped (slabs + own mappings) */
	struct upager__lz4a_class cls[UPAGER__LZ4A_CLASSES];
};

/* Sets up an allocator for blocks of @block_size bytes (power of two,
 * 4 KiB..2 MiB). Returns 0 or -errno. Maps nothing yet. */
int upager__lz4a_init(struct upager__lz4a *a, size_t block_size)
	__attribute__((visibility("hidden")));
/* Frees the allocator's locks. Every allocation must have been freed. */
void upager__lz4a_destroy(struct upager__lz4a *a)
	__attribute__((visibility("hidden")));
/* @n bytes (1..block_size), or NULL when memory runs out. */
void *upager__lz4a_alloc(struct upager__lz4a *a, size_t n)
	__attribute__((visibility("hidden")));
/* Frees @p, which was allocated with the same @n. */
void upager__lz4a_free(struct upager__lz4a *a, void *p, size_t n)
	__attribute__((visibility("hidden")));
/* Bytes of memory the allocator holds. */
uint64_t upager__lz4a_bytes(struct upager__lz4a *a)
	__attribute__((visibility("hidden")));

#endif /* UPAGER_LZ4_ALLOC_H */
