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
	 * batches, each entry up to 256 units). Readahead that does not fit is
	 * dropped; upager_advise() waits for room. 0: 1024. At least 16, at
	 * most 1<<20. */
	unsigned max_prefetch;
	/* UPAGER_CFG_* flags, or 0. */
	unsigned flags;
	/* Resident budget in bytes for all regions of the runtime together
	 * (0: none). Enforced like upager_map_opts.max_resident. */
	uint64_t max_resident;
	/* Path of an upagerd control socket (NULL: serve faults in this
	 * process). When set, upager_create() connects to the daemon and
	 * hands it the runtime's userfaultfd; upager_map() passes each
	 * region and its store's file descriptor (only file stores: others
	 * fail with -EOPNOTSUPP), and the daemon serves the faults. The
	 * runtime then runs no manager or workers of its own, only a
	 * watcher thread that notices the daemon's death (see
	 * daemon_fallback). upager_stats(up, NULL) adds the daemon's
	 * counters for this process; a single region's counters count only
	 * faults this process served itself (after a fallback). The
	 * protocol is in docs/protocol.md. */
	const char *daemon_socket;
	/* What happens to faults when the daemon dies (with daemon_socket):
	 * UPAGER_DAEMON_FALLBACK_LOCAL or UPAGER_DAEMON_FALLBACK_SIGBUS. */
	unsigned daemon_fallback;
};

/* Flags of upager_config.flags. */
#define UPAGER_CFG_NO_FOLLOW 1u /* the manager thread runs wherever the
				   scheduler puts it. By default, while one
				   thread makes most of the faults and they
				   are not sequential, the manager
				   pins itself to that thread's CPU (checked
				   every 10 ms): a fault's wake-ups then stay
				   on one CPU (see docs/design.md) */
#define UPAGER_CFG_INLINE 2u /* faults are served by the faulting thread
				itself, in a SIGBUS handler, instead of
				by the manager: no thread switch per
				fault (docs/design.md, section 9).
				Regions must use file stores or lz4 stores
				without a lower store (upager_map gives
				-EOPNOTSUPP otherwise). The runtime
				takes the process's SIGBUS handler and
				passes every SIGBUS not its own to the
				handler that was there when it was
				created: install yours before
				upager_create. A system call that touches
				a page not yet present (read(2) into the
				region) fails with EFAULT instead of
				waiting for it. Not with daemon_socket
				(-EINVAL); -EOPNOTSUPP where the kernel
				lacks UFFD_FEATURE_SIGBUS */

/* Values of upager_config.daemon_fallback. */
#define UPAGER_DAEMON_FALLBACK_LOCAL 0u  /* start this process's own manager
					    and workers and serve every
					    region here, waking the threads
					    the daemon left waiting */
#define UPAGER_DAEMON_FALLBACK_SIGBUS 1u /* every later fault in a region
					    raises SIGBUS (never zeros,
					    never a hang) */

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
 *         another -errno from io_uring or thread set-up. With
 *         cfg->daemon_socket also -errno from connect (-ENOENT,
 *         -ECONNREFUSED: no daemon there), -EPROTO (daemon of another
 *         protocol version, or a malformed reply), -EACCES (the daemon
 *         refused this user). */
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
#define UPAGER_STORE_WRITABLE 0x2u /* open read-write: regions mapped
				      with UPAGER_MAP_WRITEBACK write
				      their changes back to the file
				      (whole pages with O_DIRECT where
				      the file system allows it) */

/*! upager_store_file() :
 * A store backed by a regular file, read (and written) through io_uring.
 * The file is opened close-on-exec, read-only unless UPAGER_STORE_WRITABLE;
 * its size is read at each upager_map(): bytes past the end read as zeros.
 * Write-back may extend the file up to the end of a WRITEBACK region.
 * A writable store opens the file a second time with O_DIRECT where the
 * file system allows it: write-back of whole pages, and reads of ranges
 * not in the page cache that are no sequential stream's, bypass the page
 * cache (docs/design.md, sections 6 and 8). A read-only store does the
 * same for such reads when the process owns the file or may write it
 * (only then does the kernel let it see which pages are cached).
 * @path   file to open.
 * @flags  0 or UPAGER_STORE_DIRECT | UPAGER_STORE_WRITABLE.
 * @out    receives the store with one reference held by the caller.
 * @return 0, -EINVAL (NULL argument, unknown flag, neither a regular file
 *         nor a block device),
 *         -ENOENT (no such file), -EACCES, or another -errno from open. */
UPAGER_API int upager_store_file(const char *path, unsigned flags,
				 upager_store_t **out);

/*! upager_store_fd() :
 * A file store over a descriptor the caller already holds (a pager daemon
 * gets its clients' files this way, passed over a UNIX socket). Like
 * upager_store_file() otherwise. Nothing is duplicated: on success the
 * store owns @fd and closes it when freed; on failure @fd is untouched.
 * @fd     a readable regular file or block device.
 * @flags  0 or UPAGER_STORE_DIRECT (O_DIRECT is set on the open file
 *         description if it is not already).
 * @out    receives the store with one reference held by the caller.
 * @return 0, -EINVAL (negative @fd, NULL @out, unknown flag, neither a
 *         regular file nor a block device), -EBADF (@fd is not open or
 *         is write-only), -ENOMEM, or -errno from fcntl (O_DIRECT). */
UPAGER_API int upager_store_fd(int fd, unsigned flags, upager_store_t **out);

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
	/* Optional: zero-copy reads, for a store whose bytes are already in
	 * this process's memory. Return a pointer to the @len bytes of the
	 * store at @offset (the ranges read would be asked for), or NULL to
	 * have those bytes read with read instead, as if map were absent;
	 * NULL is not an error, and map may decline some offsets and serve
	 * others. upager installs the faulting pages straight from the
	 * pointer (the kernel's one copy) and never writes through it.
	 * The bytes must stay readable, and unchanged except through this
	 * store's own write callback, for as long as a region uses the store
	 * (until the last upager_unmap over it returns or release is called):
	 * upager copies from them after map returns and does not say when it
	 * is done. (upager never writes back a unit while it installs that
	 * same unit.) Called from several worker threads at once, like read:
	 * it must be thread-safe and should not block. */
	const void *(*map)(void *ctx, size_t len, uint64_t offset);
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
	uint64_t unchanged;       /* block writes that found the store
				     alone holding those very bytes:
				     nothing compressed or allocated (not
				     counted in writes) */
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
	/* UPAGER_MAP_* flags. */
	unsigned flags;
	/* Resident budget of the region in bytes (0: none). When the
	 * region holds more than the budget less a slack (a 64th of it, at
	 * least 128 units, at most an eighth), an eviction thread drops the
	 * least recently faulted units (CLOCK with a second chance for
	 * units faulted again soon after eviction, see docs/design.md) in
	 * batches down to two slacks under it; a fault that would exceed the budget waits
	 * briefly for it. Dirty units of a WRITEBACK region are written back
	 * before they are dropped; dirty units of other regions are never
	 * dropped (their writes exist nowhere else). At least one unit. */
	uint64_t max_resident;
};

/* Flags of upager_map_opts. */
#define UPAGER_MAP_WRITEBACK 0x1u /* writes go back to the store: tracked
				     with userfaultfd write-protection,
				     written back on eviction, upager_flush,
				     UPAGER_ADV_DONTNEED, upager_unmap and
				     upager_destroy. The store must be
				     writable (a file store opened with
				     UPAGER_STORE_WRITABLE, a custom store
				     with ops->write, an lz4 store). Over an
				     lz4 store alone, units are installed
				     writable and count as dirty until
				     written back (no write-protect fault on
				     the first write); the store recognises
				     the bytes it already holds and stores
				     nothing for them (lz4 stat
				     `unchanged`). */
#define UPAGER_MAP_ZERO_REMOVED 0x2u /* pages the application drops
				     (madvise MADV_DONTNEED/MADV_REMOVE, a
				     balloon) read as zeros afterwards, as
				     anonymous memory does, instead of being
				     fetched from the store again (what
				     Firecracker expects of its handlers) */

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
 * Writes back the dirty units of a WRITEBACK region (a write-back error is
 * returned and the region stays mapped, nothing lost; discard first with
 * UPAGER_ADV_DISCARD to unmap anyway), then unregisters and unmaps the
 * region that starts at @addr and drops its store reference. Reads in flight for it complete first; after it
 * returns no upager thread touches the range. Threads that still touch
 * the range afterwards get SIGSEGV, as with munmap.
 * @return 0, -EINVAL (@up or @addr NULL, or @addr is not the start of a
 *         region of @up), or the -errno of a failed write-back. */
UPAGER_API int upager_unmap(upager_t *up, void *addr);

/*! upager_flush() :
 * Writes back every dirty unit of the WRITEBACK region range
 * [@addr, @addr + @len) and returns once the store holds it (for a file
 * store: written and fdatasync'ed), like msync(MS_SYNC). A unit whose write
 * fails stays dirty in memory and is retried by the next flush.
 * Regions without UPAGER_MAP_WRITEBACK have nothing to flush: 0.
 * @return 0, -EINVAL (NULL @up, @len 0, range not inside one region), or
 *         the -errno of the first failed write (-EIO, -ENOSPC, ...). */
UPAGER_API int upager_flush(upager_t *up, void *addr, size_t len);

/* Advice for upager_advise(). */
#define UPAGER_ADV_NORMAL 0     /* back to the region's own readahead */
#define UPAGER_ADV_WILLNEED 1   /* fetch the range now, asynchronously */
#define UPAGER_ADV_SEQUENTIAL 2 /* access will be sequential: read ahead
				   aggressively */
#define UPAGER_ADV_RANDOM 3     /* access will be random: no readahead */
#define UPAGER_ADV_DONTNEED 4   /* drop the range's pages: the next touch
				   fetches from the store again; in a
				   WRITEBACK region dirty units are written
				   back first, elsewhere writes are lost */
#define UPAGER_ADV_DISCARD 5    /* drop the range's pages and forget their
				   writes, even in a WRITEBACK region */

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
 * Serving starts at once: for one second a fault at an address no range
 * covers yet is released to fault again (the handler may still be adding
 * ranges while the owner runs); after that, such faults get SIGBUS.
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
	uint64_t faults;          /* fault messages received from the kernel
				     (now and then the kernel repeats one for
				     the same access; the repeat is ignored) */
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
	uint64_t evictions;       /* units dropped to respect a budget */
	uint64_t writebacks;      /* units written back to the store */
	uint64_t write_errors;    /* write-backs that failed (unit kept) */
	uint64_t dirty_units;     /* units written since last written back
				     (current value; over an lz4 store
				     alone, units installed since, see
				     UPAGER_MAP_WRITEBACK) */
	uint64_t resident_bytes;  /* bytes of installed units (current) */
	/* Fault service time, from the manager reading the fault message to
	 * the page being installed: bucket 0 counts times under 2 us, bucket
	 * i > 0 counts times in [2^i, 2^(i+1)) us; the last bucket also
	 * holds everything longer. */
	uint64_t fault_us_hist[UPAGER_HIST_BUCKETS];
};

/*! upager_stats() :
 * Fills @out with the counters of the region that contains @addr, or of
 * the whole runtime when @addr is NULL. Counters are read without
 * stopping the threads: each is exact, the set is not a snapshot. A unit
 * installed ahead of need (readahead, WILLNEED) can be readable a moment
 * before the worker that installed it has counted it.
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

/* ------------------------------------------------------------------ */
/* Remote store and page server                                        */
/* ------------------------------------------------------------------ */

/* A page server makes a store (or a plain memory buffer) readable over
 * TCP; a remote store reads from one. The wire protocol is versioned and
 * documented in docs/protocol.md ("Remote page protocol"). Each remote
 * store opens two connections to the server: a "demand" connection for
 * the reads of faulting threads (many in flight, matched by id, answered
 * ahead of background traffic) and a "bulk" connection on which the
 * server pushes every block in the background once asked to
 * (upager_store_remote_push()), restarting its stream near the most
 * recent demand read. Pushed blocks wait in a bounded cache in the store
 * until a read takes them; when the cache is full the store stops reading
 * the bulk connection and TCP flow control stalls the server. */

/*! struct upager_remote_opts : options for upager_store_remote().
 * Zero-initialise it; every zero field takes its default. */
struct upager_remote_opts {
	/* Capacity of the cache of pushed blocks, in bytes. 0: 64 MiB.
	 * Rounded down to whole blocks; at least 4 blocks. */
	size_t cache_bytes;
	/* A demand read that gets no answer within this many milliseconds
	 * fails with -EIO and closes the store's connections (the peer is
	 * taken for dead). Also the TCP user timeout. 0: 10000. */
	unsigned timeout_ms;
	/* Optional. Called by the store's bulk receiver thread after each
	 * pushed block [@offset, @offset + @len) entered the cache: the
	 * application typically calls upager_advise(UPAGER_ADV_WILLNEED) on
	 * the matching region range so that workers install the block
	 * (reading it from the cache, which frees its slot). Must not call
	 * upager_store_release() on this store. A block that no read ever
	 * takes keeps its cache slot. */
	void (*on_pushed)(void *arg, uint64_t offset, size_t len);
	void *arg;
	/* Reserved: must be 0. */
	unsigned flags;
};

/*! upager_store_remote() :
 * Connects to the page server at @host:@port (name or address; IPv4 or
 * IPv6), checks the protocol version and learns the store's size and
 * block size. The returned store reads through the server: regions
 * mapped from it fault their pages in over the network. A read fails with
 * -EIO (so the faulting thread gets SIGBUS) as soon as a connection
 * breaks or times out; it never hangs and never reads as zeros.
 * Regions over a remote store work best with a page_size equal to the
 * server's block size and offsets aligned to it.
 * @return 0, -EINVAL (NULL host, port or out, bad option),
 *         -EPROTONOSUPPORT (the server speaks another protocol version),
 *         -EPROTO (the server sent something invalid or an error),
 *         -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH or another -errno from
 *         name resolution (-ENOENT) or connect, -ENOMEM. */
UPAGER_API int upager_store_remote(const char *host, const char *port,
				   const struct upager_remote_opts *opts,
				   upager_store_t **out);

/*! upager_store_remote_push() :
 * Asks the server to start the background push stream of remote store @s
 * (at most once; later calls do nothing). Call it once the regions that
 * on_pushed will advise are mapped.
 * @return 0, -EINVAL (@s is not a remote store), -EIO (connection
 *         broken). */
UPAGER_API int upager_store_remote_push(upager_store_t *s);

/*! upager_store_remote_read() :
 * Reads @len bytes at @offset through remote store @s, exactly as a fault
 * would: from the push cache when every block is there (taking the blocks
 * out of it), else with a demand request. For applications that layer
 * their own custom store over a remote one. Thread-safe.
 * @return 0, -EINVAL (not a remote store, range past the end), -EIO. */
UPAGER_API int upager_store_remote_read(upager_store_t *s, void *buf,
					size_t len, uint64_t offset);

/*! struct upager_remote_stats : counters of a remote store. */
struct upager_remote_stats {
	uint64_t size;            /* store bytes, from the server */
	uint64_t block_size;      /* push unit, from the server */
	uint64_t demand_reads;    /* reads sent on the demand connection */
	uint64_t demand_bytes;
	uint64_t cache_reads;     /* reads served from pushed blocks */
	uint64_t pushed_blocks;   /* blocks received on the bulk connection */
	uint64_t pushed_dropped;  /* of those, dropped (already read) */
	uint64_t bytes_received;  /* payload bytes, both connections */
	uint64_t cache_blocks;    /* blocks in the cache now */
	uint64_t demand_us_hist[UPAGER_HIST_BUCKETS]; /* demand round trips,
				     bucketed as upager_stats.fault_us_hist */
	int push_done;            /* the server finished pushing */
	int broken;               /* a connection broke: reads fail */
};

/*! upager_store_remote_stats() :
 * Fills @out with the counters of remote store @s.
 * @return 0, -EINVAL (NULL argument, not a remote store). */
UPAGER_API int upager_store_remote_stats(upager_store_t *s,
					 struct upager_remote_stats *out);

/*! upager_page_server_t : serves one store or memory buffer to any
 * number of remote stores; one thread per connection. */
typedef struct upager_page_server upager_page_server_t;

/* Flags of struct upager_page_server_opts. */
#define UPAGER_SERVER_IN_ORDER 0x1u /* push in offset order, ignoring
				       where demand reads land */

/*! struct upager_page_server_opts : options of a page server.
 * Zero-initialise it; every zero field takes its default. */
struct upager_page_server_opts {
	/* Push unit in bytes, a power of two from 4 KiB to 2 MiB.
	 * 0: 64 KiB. */
	size_t block_size;
	/* UPAGER_SERVER_* flags. */
	unsigned flags;
};

/*! upager_page_server_mem() :
 * Starts a page server on @listen_fd (a listening TCP socket; the server
 * accepts on it but does not close it) serving the @size bytes at @base.
 * The caller keeps the buffer mapped until upager_page_server_stop()
 * returns; pushes and reads copy whatever it holds when they run.
 * @return 0, -EINVAL (NULL or zero argument, bad option), -ENOMEM, or
 *         -errno from thread creation. */
UPAGER_API int upager_page_server_mem(int listen_fd, const void *base,
				      uint64_t size,
				      const struct upager_page_server_opts *opts,
				      upager_page_server_t **out);

/*! upager_page_server_store() :
 * As upager_page_server_mem(), serving store @store (file or custom
 * store with a size; the server takes a reference).
 * @return as upager_page_server_mem(), or -EOPNOTSUPP (a store kind
 *         the server cannot read, or a store without an end). */
UPAGER_API int upager_page_server_store(int listen_fd, upager_store_t *store,
					const struct upager_page_server_opts *opts,
					upager_page_server_t **out);

/*! upager_page_server_set_push_map() :
 * Restricts the push stream to the blocks whose bit is set in @map (bit b
 * of byte b/8 for block b, @nblocks bits; @map is copied). Blocks outside
 * the map are still served on demand. Affects push streams started after
 * the call. @map NULL: push every block (the default).
 * @return 0, -EINVAL (@nblocks differs from the server's block count),
 *         -ENOMEM. */
UPAGER_API int upager_page_server_set_push_map(upager_page_server_t *srv,
					       const uint8_t *map,
					       size_t nblocks);

/*! upager_page_server_set_push_first() :
 * Makes push streams send the blocks whose bit is set in @map (bit b of
 * byte b/8 for block b, @nblocks bits; @map is copied) before any other
 * block: typically the client's working set, so that it stops faulting as
 * early as possible. Only blocks of the push map are pushed at all, and a
 * block a demand read already sent is skipped. While such blocks remain,
 * a demand read still moves the stream, to the next of them after the
 * range read; then the stream pushes the rest as usual. Affects push
 * streams started after the call. @map NULL: no block goes first (the
 * default).
 * @return 0, -EINVAL (@srv NULL, or @nblocks differs from the server's
 *         block count), -ENOMEM. */
UPAGER_API int upager_page_server_set_push_first(upager_page_server_t *srv,
						 const uint8_t *map,
						 size_t nblocks);

/*! upager_page_server_pushed_first() :
 * Stores in @out how many blocks @srv's push streams have sent while
 * blocks of the push-first map (upager_page_server_set_push_first())
 * remained, i.e. ahead of the others.
 * @return 0, -EINVAL (NULL argument). */
UPAGER_API int upager_page_server_pushed_first(upager_page_server_t *srv,
					       uint64_t *out);

/*! struct upager_page_server_stats : counters of a page server. */
struct upager_page_server_stats {
	uint64_t connections;   /* accepted */
	uint64_t refused;       /* closed at hello (bad version, ...) */
	uint64_t reads;         /* demand reads served */
	uint64_t read_bytes;
	uint64_t pushed_blocks; /* blocks sent on push streams */
	uint64_t pushed_bytes;
	uint64_t restarts;      /* push stream moved to a demand read */
	uint64_t streams_done;  /* push streams that sent every block */
};

/*! upager_page_server_stats() : fills @out with @srv's counters.
 * @return 0, -EINVAL (NULL argument). */
UPAGER_API int upager_page_server_stats(upager_page_server_t *srv,
					struct upager_page_server_stats *out);

/*! upager_page_server_stop() :
 * Stops accepting, closes every connection (their clients' reads then
 * fail with -EIO), joins the threads and frees the server. The listening
 * socket stays open. NULL is a no-op. */
UPAGER_API void upager_page_server_stop(upager_page_server_t *srv);

#ifdef __cplusplus
}
#endif

#endif /* UPAGER_H */
