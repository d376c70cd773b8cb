/*
 * upager.h - user-space paging runtime.
 *
 * An application registers memory regions whose pages are supplied from
 * user space. When a thread touches a page that is not there yet, the
 * kernel reports the fault over a userfaultfd descriptor; upager's manager
 * thread reads it, a worker thread fetches the install unit from the
 * region's backing store (a file read through io_uring, or the
 * application's own callbacks) and installs it with UFFDIO_COPY, which
 * wakes the faulting thread.
 *
 * Conventions for the whole API:
 *  - Every function that can fail returns 0 on success or a negative errno
 *    value (-EINVAL, -ENOMEM, ...). errno is not part of the contract.
 *    upager_strerror() turns such a value into text.
 *  - Handles (upager_t, upager_store_t) are opaque. Every destroy/release
 *    function accepts NULL.
 *  - Bad input is rejected before anything changes: a call that returns an
 *    error has no effect.
 *  - The library never prints, never exits and never installs signal
 *    handlers. A fault that cannot be served (store read error, fault in a
 *    range upager no longer tracks) raises SIGBUS in the faulting thread;
 *    it never hangs and never reads as zeros.
 *  - Unless said otherwise, functions taking an upager_t are thread-safe.
 *
 * Linking: pkg-config upager, or CMake find_package(upager) and the target
 * upager::upager.
 */
#ifndef UPAGER_H
#define UPAGER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UPAGER_VERSION_MAJOR 0
#define UPAGER_VERSION_MINOR 1
#define UPAGER_VERSION_PATCH 0
#define UPAGER_VERSION_STRING "0.1.0"

#if defined(UPAGER_STATIC_DEFINE)
#define UPAGER_API
#elif defined(__GNUC__)
#define UPAGER_API __attribute__((visibility("default")))
#else
#define UPAGER_API
#endif

/*! upager_t : a paging runtime: one userfaultfd descriptor, one manager
 * thread, a pool of worker threads, and the regions registered on it. */
typedef struct upager upager_t;

/*! upager_store_t : a backing store that regions read their bytes from.
 * Reference counted: every region mapped from a store holds a reference,
 * so a store may be released as soon as the regions are mapped. */
typedef struct upager_store upager_store_t;

struct upager_stats;

/* ------------------------------------------------------------------ */
/* Runtime                                                             */
/* ------------------------------------------------------------------ */

/*! struct upager_config : options for upager_create(). Zero-initialise
 * it and set what you need; every zero field takes its default. */
struct upager_config {
	/* Worker threads that fetch and install pages. 0: the number of
	 * online CPUs, at most 8. At most 256. */
	unsigned workers;
	/* io_uring submission queue depth of each worker, which is also the
	 * most reads a worker keeps in flight. 0: 64. Power of two, at most
	 * 4096. */
	unsigned queue_depth;
	/* Capacity of the queue of demand faults waiting for a worker (one
	 * entry per distinct install unit with a waiting thread). When it is
	 * full the manager stops reading fault messages until a worker takes
	 * one: the faulting threads wait in the kernel. 0: 4096. At least 16,
	 * at most 1<<20. */
	unsigned max_pending;
	/* Capacity of the prefetch queue (readahead and UPAGER_ADV_WILLNEED
	 * batches, each entry up to 64 units). Readahead that does not fit is
	 * dropped; upager_advise() waits for room. 0: 1024. At least 16, at
	 * most 1<<20. */
	unsigned max_prefetch;
	/* Reserved: must be 0. */
	unsigned flags;
};

/*! upager_create() :
 * Creates a runtime: opens a userfaultfd descriptor (close-on-exec),
 * negotiates the kernel features upager needs and starts the manager and
 * worker threads.
 * @cfg  options, or NULL for the defaults.
 * @out  receives the new runtime; untouched on failure.
 * @return 0, -EINVAL (bad cfg field), -ENOSYS or -EPERM (userfaultfd not
 *         available to this process: see vm.unprivileged_userfaultfd),
 *         -EOPNOTSUPP (the kernel lacks a userfaultfd feature upager
 *         needs: EVENT_REMOVE, EVENT_UNMAP, EVENT_REMAP), -ENOMEM, or
 *         another -errno from io_uring or thread set-up. */
UPAGER_API int upager_create(const struct upager_config *cfg, upager_t **out);

/*! upager_destroy() :
 * Unmaps every region still mapped (as upager_unmap()), stops the threads
 * and closes the descriptor. NULL is a no-op. After it returns no upager
 * thread runs and no region memory remains mapped. Must not be called
 * while another thread uses @up. */
UPAGER_API void upager_destroy(upager_t *up);

/* ------------------------------------------------------------------ */
/* Stores                                                              */
/* ------------------------------------------------------------------ */

/* Flags of upager_store_file(). */
#define UPAGER_STORE_DIRECT 0x1u /* read with O_DIRECT through aligned
				    buffers: no page-cache pollution */

/*! upager_store_file() :
 * A store backed by a regular file, read through io_uring. The file is
 * opened read-only, close-on-exec; its size is read at each
 * upager_map(): bytes past the end read as zeros.
 * @path   file to open.
 * @flags  0 or UPAGER_STORE_DIRECT.
 * @out    receives the store with one reference held by the caller.
 * @return 0, -EINVAL (NULL argument, unknown flag, neither a regular file
 *         nor a block device),
 *         -ENOENT (no such file), -EACCES, or another -errno from open. */
UPAGER_API int upager_store_file(const char *path, unsigned flags,
				 upager_store_t **out);

/*! struct upager_store_ops : callbacks of a custom store.
 * Callbacks may be called from several worker threads at once and must be
 * thread-safe. They must not call back into upager on the same runtime and
 * must not touch memory of regions that they serve. */
struct upager_store_ops {
	/* Required. Fill @buf with @len bytes of the store starting at
	 * @offset. Return 0, or a negative errno: the faulting thread then
	 * gets SIGBUS. Bytes past the store's size (see size) are never
	 * asked for. */
	int (*read)(void *ctx, void *buf, size_t len, uint64_t offset);
	/* Optional. Write @len bytes at @offset. Return 0 or -errno. Unused
	 * by the read-only regions of this version. */
	int (*write)(void *ctx, const void *buf, size_t len, uint64_t offset);
	/* Optional. Store the store's size in bytes in *@size and return 0,
	 * or return -errno. Without it the store has no end. */
	int (*size)(void *ctx, uint64_t *size);
	/* Optional. Called once when the last reference is released. */
	void (*release)(void *ctx);
};

/*! upager_store_custom() :
 * A store whose bytes come from the application's callbacks. @ops is
 * copied; @ctx is passed to every callback.
 * @return 0, -EINVAL (NULL ops, out or ops->read), -ENOMEM. On failure
 *         ops->release is not called. */
UPAGER_API int upager_store_custom(const struct upager_store_ops *ops,
				   void *ctx, upager_store_t **out);

/*! upager_store_release() :
 * Drops the caller's reference. The store is freed (file closed,
 * ops->release called) when no region uses it any more. NULL is a no-op. */
UPAGER_API void upager_store_release(upager_store_t *s);

/*! struct upager_lz4_opts : options for upager_store_lz4(). Zero-initialise
 * it; every zero field takes its default. */
struct upager_lz4_opts {
	/* Block size in bytes: the unit the store compresses and indexes.
	 * Power of two from 4 KiB to 2 MiB; regions over the store must use
	 * a page_size that is a multiple of it. 0: 4 KiB. */
	size_t block_size;
	/* Most compressed bytes the store may hold (0: no limit). A write
	 * that would exceed it fails with -ENOSPC (stacked over a lower
	 * store: the block is written through to the lower store and
	 * dropped from the cache instead). */
	uint64_t max_bytes;
	/* Logical size of a store used alone, in bytes (0: no end). Blocks
	 * never written read as zeros. Ignored when stacked: the lower
	 * store's size applies. */
	uint64_t size;
	/* LZ4 acceleration (1 = default ratio, higher = faster, worse
	 * ratio). 0: 1. At most 65537. */
	int acceleration;
	/* Reserved: must be 0. */
	unsigned flags;
};

/*! upager_store_lz4() :
 * A compressed page store in memory. Each block is compressed with LZ4 on
 * write and decompressed on read; a block that does not compress below
 * its size is stored raw. Memory of overwritten or discarded blocks is
 * reused and returned to the system.
 * Used alone (@lower NULL) it is a compressed anonymous store: never
 * written blocks read as zeros. Stacked over @lower it is a compressed
 * cache tier: reads of blocks it does not hold go to @lower (and are kept
 * compressed), writes are kept compressed and written through to @lower.
 * @opts   options, or NULL for defaults.
 * @lower  store under the cache, or NULL; the lz4 store takes a reference.
 * @out    receives the store with one reference held by the caller.
 * @return 0, -EINVAL (bad option, unknown flag, NULL @out), -ENOMEM. */
UPAGER_API int upager_store_lz4(const struct upager_lz4_opts *opts,
				upager_store_t *lower, upager_store_t **out);

/*! struct upager_lz4_stats : counters of an lz4 store. */
struct upager_lz4_stats {
	uint64_t blocks;          /* blocks held */
	uint64_t raw_blocks;      /* of those, stored uncompressed */
	uint64_t bytes_logical;   /* blocks * block_size */
	uint64_t bytes_stored;    /* compressed bytes held */
	uint64_t bytes_allocated; /* memory the store's allocator holds */
	uint64_t reads, writes;   /* block reads and writes served */
	uint64_t lower_reads;     /* reads passed to the lower store */
	uint64_t corrupt;         /* blocks that failed to decompress */
	double ratio;             /* bytes_logical / bytes_stored (0 if
				     empty) */
};

/*! upager_store_lz4_stats() :
 * Fills @out with the counters of lz4 store @s.
 * @return 0, -EINVAL (NULL argument or @s is not an lz4 store). */
UPAGER_API int upager_store_lz4_stats(upager_store_t *s,
				      struct upager_lz4_stats *out);

/* ------------------------------------------------------------------ */
/* Regions                                                             */
/* ------------------------------------------------------------------ */

#define UPAGER_PAGE_SIZE_MIN 4096u
#define UPAGER_PAGE_SIZE_MAX (2u * 1024 * 1024)

/*! struct upager_map_opts : options for upager_map(). Zero-initialise
 * it; every zero field takes its default. */
struct upager_map_opts {
	/* Install unit in bytes: a power of two from 4 KiB to 2 MiB. A fault
	 * anywhere in a unit fetches and installs the whole unit. 0: 4 KiB. */
	size_t page_size;
	/* Prefetch window in bytes used while access looks sequential (a
	 * fault on the unit after the previous fault's). 0: off. Rounded up
	 * to whole units; at most 1 GiB. */
	size_t readahead;
	/* Reserved: must be 0. */
	unsigned flags;
};

/*! upager_map() :
 * Reserves a private range of @length bytes, readable and writable, whose
 * byte i reads as byte @offset + i of @store (any byte offset: unlike mmap
 * no alignment is needed), and registers it with the runtime. Pages are
 * fetched on first touch. The range is rounded up to whole install units
 * and aligned to the unit size; bytes past @length in the last unit, and
 * bytes past the store's end, read as zeros. Writes stay in memory (they
 * are not written back) and survive until upager_unmap() or
 * UPAGER_ADV_DONTNEED.
 * The range is excluded from fork(): a child process that touches it gets
 * SIGSEGV, never zeros (see docs/design.md).
 * @up      the runtime.
 * @store   the store; the region takes its own reference.
 * @offset  store offset of the region's first byte.
 * @length  bytes, > 0.
 * @opts    options, or NULL for defaults.
 * @addr    receives the region's start address.
 * @return 0, -EINVAL (NULL argument, length 0, bad page_size, readahead
 *         over 1 GiB, unknown flag, offset + length overflows), -ENOMEM,
 *         or -errno from the store's size callback or from registering
 *         the range. */
UPAGER_API int upager_map(upager_t *up, upager_store_t *store,
			  uint64_t offset, size_t length,
			  const struct upager_map_opts *opts, void **addr);

/*! upager_unmap() :
 * Unregisters and unmaps the region that starts at @addr and drops its
 * store reference. Reads in flight for it complete first; after it
 * returns no upager thread touches the range. Threads that still touch
 * the range afterwards get SIGSEGV, as with munmap.
 * @return 0, -EINVAL (@up or @addr NULL, or @addr is not the start of a
 *         region of @up). */
UPAGER_API int upager_unmap(upager_t *up, void *addr);

/* Advice for upager_advise(). */
#define UPAGER_ADV_NORMAL 0     /* back to the region's own readahead */
#define UPAGER_ADV_WILLNEED 1   /* fetch the range now, asynchronously */
#define UPAGER_ADV_SEQUENTIAL 2 /* access will be sequential: read ahead
				   aggressively */
#define UPAGER_ADV_RANDOM 3     /* access will be random: no readahead */
#define UPAGER_ADV_DONTNEED 4   /* drop the range's pages: the next touch
				   fetches from the store again; writes to
				   the range are discarded */

/*! upager_advise() :
 * Gives advice about the range [@addr, @addr + @len), which must lie in one
 * region. WILLNEED queues every unit of the range that is not yet present
 * as one batch of reads spread over the workers, and returns once they are
 * queued (it waits while the prefetch queue is full); faults on those
 * units wait for the read already in flight. SEQUENTIAL and RANDOM change
 * the readahead of the whole region containing the range. DONTNEED
 * discards the units overlapping the range (whole units).
 * @return 0, -EINVAL (NULL @up, @len 0, unknown advice, range not inside
 *         one region), or -errno from madvise (DONTNEED). */
UPAGER_API int upager_advise(upager_t *up, void *addr, size_t len,
			     int advice);

/* ------------------------------------------------------------------ */
/* Serving another process (pager daemons)                             */
/* ------------------------------------------------------------------ */

/*! upager_space_t : another process's address space served by this
 * runtime through a userfaultfd descriptor that process created and
 * handed over (for example over a UNIX socket with SCM_RIGHTS). Its owner
 * maps the memory and registers it (UFFDIO_REGISTER_MODE_MISSING); the
 * runtime only serves the faults. */
typedef struct upager_space upager_space_t;

/*! upager_space_adopt() :
 * Starts serving the userfaultfd descriptor @uffd, on which the other
 * process has already called UFFDIO_API (with UFFD_FEATURE_POISON, so
 * that store errors raise SIGBUS there, and with the EVENT_REMOVE /
 * EVENT_UNMAP / EVENT_REMAP features if it wants those handled). The
 * descriptor is switched to non-blocking mode. On success the runtime owns
 * @uffd and closes it in upager_space_close(); on failure it is untouched.
 * @return 0, -EINVAL (NULL or negative argument), -ENOMEM, or -errno from
 *         epoll (-EPERM: @uffd is not pollable). */
UPAGER_API int upager_space_adopt(upager_t *up, int uffd,
				  upager_space_t **out);

/*! upager_space_add() :
 * Serves the range [@base, @base + @length) of the other process, which
 * it has registered on the descriptor, from @store: byte i of the range is
 * byte @offset + i of the store, as with upager_map(). @base must be
 * aligned to the install unit (opts->page_size); the range is rounded up
 * to whole units and must not overlap a range already added.
 * @return 0, -EINVAL (bad argument or option, as upager_map), -EEXIST
 *         (overlap), -ENOMEM. */
UPAGER_API int upager_space_add(upager_space_t *sp, uint64_t base,
				size_t length, upager_store_t *store,
				uint64_t offset,
				const struct upager_map_opts *opts);

/*! upager_space_remove() :
 * Stops serving the range added at @base (it does not touch the other
 * process's memory). Later faults there get SIGBUS.
 * @return 0, -EINVAL (no range starts at @base). */
UPAGER_API int upager_space_remove(upager_space_t *sp, uint64_t base);

/*! upager_space_advise() : upager_advise() for a range of @sp, except that
 * UPAGER_ADV_DONTNEED is refused with -EOPNOTSUPP (the pages belong to the
 * other process). */
UPAGER_API int upager_space_advise(upager_space_t *sp, uint64_t base,
				   size_t len, int advice);

/*! upager_space_stats() : counters of every range of @sp, including
 * ranges since removed. @return 0, -EINVAL. */
UPAGER_API int upager_space_stats(upager_space_t *sp,
				  struct upager_stats *out);

/*! upager_space_status() :
 * @return 0 while the other process's address space exists, -ESRCH once
 *         the kernel reported it gone, -EINVAL for NULL. */
UPAGER_API int upager_space_status(upager_space_t *sp);

/*! upager_space_close() :
 * Stops serving @sp: removes every range, waits for fetches in flight,
 * closes the descriptor. Threads of the other process that still fault
 * there wait until their own process closes its copy of the descriptor
 * or unregisters the range. NULL is a no-op. */
UPAGER_API void upager_space_close(upager_space_t *sp);

/* ------------------------------------------------------------------ */
/* Statistics                                                          */
/* ------------------------------------------------------------------ */

#define UPAGER_HIST_BUCKETS 32

/*! struct upager_stats : counters since the region was mapped (or, for
 * the whole runtime, since it was created, including regions since
 * unmapped). */
struct upager_stats {
	uint64_t faults;          /* fault messages received from the kernel */
	uint64_t pages_installed; /* install units installed (copy or zero) */
	uint64_t bytes_fetched;   /* bytes read from the store */
	uint64_t prefetched;      /* units installed ahead of any fault
				     (readahead or WILLNEED) */
	uint64_t zero_pages;      /* units installed as zeros (hole or past
				     the end of the store) */
	uint64_t read_errors;     /* store reads that failed (each fault that
				     saw one got SIGBUS) */
	uint64_t retries;         /* installs retried after EAGAIN/ENOENT */
	uint64_t regions;         /* regions currently mapped */
	/* Fault service time, from the manager reading the fault message to
	 * the page being installed: bucket 0 counts times under 2 us, bucket
	 * i > 0 counts times in [2^i, 2^(i+1)) us; the last bucket also
	 * holds everything longer. */
	uint64_t fault_us_hist[UPAGER_HIST_BUCKETS];
};

/*! upager_stats() :
 * Fills @out with the counters of the region that contains @addr, or of
 * the whole runtime when @addr is NULL. Counters are read without
 * stopping the threads: each is exact, the set is not a snapshot.
 * @return 0, -EINVAL (NULL @up or @out, @addr not in a region). */
UPAGER_API int upager_stats(upager_t *up, void *addr,
			    struct upager_stats *out);

/*! upager_stats_percentile() :
 * Estimates the @pct percentile (0 < pct <= 100) of fault service time in
 * microseconds from the histogram in @st (upper bound of the bucket that
 * holds it). Returns 0 when no fault was timed. */
UPAGER_API uint64_t upager_stats_percentile(const struct upager_stats *st,
					    double pct);

/*! upager_strerror() :
 * Text for a value returned by upager (a negative errno; positive values
 * are accepted too). Never NULL; the string is static. */
UPAGER_API const char *upager_strerror(int err);

/*! upager_version() : the library's version string, "MAJOR.MINOR.PATCH". */
UPAGER_API const char *upager_version(void);

#ifdef __cplusplus
}
#endif

#endif /* UPAGER_H */
