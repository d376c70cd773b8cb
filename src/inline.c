/*
 * inline.c - faults served by the faulting thread itself
 * (UPAGER_CFG_INLINE).
 *
 * The runtime's descriptor is opened with UFFD_FEATURE_SIGBUS: a fault in
 * one of its regions raises SIGBUS in the faulting thread instead of
 * queueing a message for the manager. The handler here finds the region,
 * reads the unit from its file store with pread(2) (or decompresses it
 * from an lz4 store alone), installs it with UFFDIO_COPY and returns; the
 * access runs again and finds the page. No other thread is woken, so a
 * miss costs what the kernel's own page-cache fault costs plus a signal
 * and a copy, where the manager's path costs
 * three thread switches (faulting thread -> manager -> faulting thread,
 * docs/design.md section 9).
 *
 * What the handler may call. It runs where the thread touched region
 * memory, which the library itself never does while holding a lock (the
 * write-back thread copies units out only where mincore() says pages are
 * there), so the handler may take the region table's read lock, the
 * write-back thread's lock and the prefetch queue's lock (a read stream's
 * readahead, handed to the workers) as any thread does: the interrupted
 * thread cannot hold them. It never allocates with malloc (read buffers come
 * from a fixed pool, mapped with mmap), keeps errno, and never waits on
 * another thread without a time bound: where a unit is owned by someone
 * else (a worker's prefetch, the write-back thread) it sleeps briefly and
 * returns, and the access faults again until the unit is there.
 *
 * Everything that is not a fault of ours (another SIGBUS, a poisoned unit
 * after a read error, an address of no region) goes to the handler that
 * was installed before the first inline runtime, or to the default action.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "internal.h"

#define MAX_RUNTIMES 16
#define POOL 32
#define RUN_BYTES (64u * 1024) /* most bytes one fault of a stream reads */
#define ALIGN 4096u
#define WAIT_US 20
#define PRESENT_WAIT_NS (50ull * 1000 * 1000) /* see serve_unit() */
#define BUSY_WAIT_NS (50ull * 1000 * 1000)    /* see serve_unit() */
#define ROOM_WAIT_ROUNDS 1000 /* x 50 us: the bound of wb_wait_room() */

/* Attached runtimes; the handler reads them with `active` raised, detach
 * clears a slot and then waits for `active` to fall to 0. */
static _Atomic(upager_t *) runtimes[MAX_RUNTIMES];
static atomic_uint active;
static pthread_mutex_t attach_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned attached;
static struct sigaction previous; /* written under attach_lock, before the
				     handler is installed */

struct buf {
	atomic_bool busy;
	char *p;
	size_t len;
};
static struct buf pool[POOL];

enum outcome { NOT_OURS, SERVED, FAILED };

static void pause_us(unsigned us)
{
	struct timespec ts = { 0, (long)us * 1000 };
	nanosleep(&ts, NULL);
}

static size_t round_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/* A buffer of at least need bytes, for this thread alone until put. */
static struct buf *buf_get(size_t need)
{
	for (;;) {
		for (unsigned i = 0; i < POOL; i++) {
			struct buf *b = &pool[i];
			bool f = false;
			if (atomic_load_explicit(&b->busy, memory_order_relaxed) ||
			    !atomic_compare_exchange_strong(&b->busy, &f, true))
				continue;
			if (b->len < need) {
				if (b->p)
					munmap(b->p, b->len);
				void *p = mmap(NULL, need, PROT_READ | PROT_WRITE,
					       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				b->p = p == MAP_FAILED ? NULL : p;
				b->len = b->p ? need : 0;
				if (!b->p) {
					atomic_store(&b->busy, false);
					return NULL;
				}
			}
			return b;
		}
		/* More threads faulting than buffers: each holder is one
		 * read away from giving its buffer back. */
		pause_us(WAIT_US);
	}
}

static void buf_put(struct buf *b)
{
	atomic_store(&b->busy, false);
}

/* The live region holding addr, with a reference; NULL if none. */
static struct upager__region *find(uintptr_t addr)
{
	for (unsigned i = 0; i < MAX_RUNTIMES; i++) {
		upager_t *up = atomic_load(&runtimes[i]);
		if (!up)
			continue;
		struct upager__space *sp = &up->home;
		pthread_rwlock_rdlock(&sp->table_lock);
		struct upager__region *r = upager__lookup(sp, addr);
		if (r && !atomic_load(&r->dead))
			atomic_fetch_add(&r->refs, 1);
		else
			r = NULL;
		pthread_rwlock_unlock(&sp->table_lock);
		if (r)
			return r;
	}
	return NULL;
}

/* What the faulting access was, where the architecture's signal context
 * says (known): a write, and to a page that was mapped (a write to a
 * write-protected page, not a missing one). */
struct access {
	bool known, write, mapped;
};

static struct access fault_access(const void *ucv)
{
#if defined(__x86_64__)
	const ucontext_t *uc = ucv;
	greg_t err = uc->uc_mcontext.gregs[REG_ERR]; /* page-fault error code */
	return (struct access){ .known = true, .write = err & 2,
				.mapped = err & 1 };
#else
	(void)ucv;
	return (struct access){ .known = false, .mapped = false };
#endif
}

static bool page_resident(uintptr_t a)
{
	unsigned char v = 0;
	return mincore((void *)(a & ~(uintptr_t)4095), 4096, &v) == 0 &&
	       (v & 1);
}

/* Whether a fault on unit u of r continues a stream, by the inline
 * faults' own record (any thread: read atomically). */
static bool on_stream(struct upager__region *r, size_t u)
{
	return upager__stream_continues(
		atomic_load(&r->advice),
		__atomic_load_n(&r->last_fault, __ATOMIC_RELAXED),
		__atomic_load_n(&r->inline_ra, __ATOMIC_RELAXED), u);
}

/* Whether unit byte b may join a run a fault reads: EMPTY, or queued for
 * a worker that has not started it (the run takes it over, as the fault
 * took its own unit), with no flag but GHOST. */
static bool joins_run(uint8_t b)
{
	b &= (uint8_t)~UNIT_GHOST;
	return b == UNIT_EMPTY || b == UNIT_QUEUED;
}

/* Claims units after u for one read when the fault is on a stream: units
 * [u, u+n) are FETCHING on return. */
static size_t claim_run(struct upager__region *r, size_t u, bool stream)
{
	if (!stream)
		return 1;
	size_t max = RUN_BYTES >> r->page_shift, n = 1;
	while (n < max && u + n < r->nunits) {
		uint8_t b = unit_byte(r->state, u + n);
		if (!joins_run(b) ||
		    !unit_update(r->state, u + n, b & UNIT_STATE,
				 UNIT_FETCHING, 0, UNIT_GHOST))
			break;
		n++;
	}
	return n;
}

/* Reads io_len bytes of r's file store at foff into p with pread(2),
 * through fd (O_DIRECT if @direct). Returns the bytes read (fewer at the
 * end of the file) or -errno. */
static ssize_t read_file(int fd, bool direct, char *p, size_t io_len,
			 uint64_t foff)
{
	size_t got = 0;
	while (got < io_len) {
		ssize_t k = pread(fd, p + got, io_len - got,
				  (off_t)(foff + got));
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			break;
		got += (size_t)k;
		if (direct && k % ALIGN)
			break; /* end of file */
	}
	return (ssize_t)got;
}

/* Reads units [u, u+n) of r into b: want store bytes, then zeros.
 * A file store is read with pread(2), with O_DIRECT where the store reads
 * so or, no @stream's read, upager__store_read_direct() says so (a random
 * miss then costs no page-cache page); an lz4 store alone is decompressed
 * in this thread, with the scratch space for one block after the units
 * in the same pool buffer (nothing allocated here), taking one stripe
 * mutex for the copy of each block's compressed bytes (see the top of
 * this file for why a lock is safe here). Returns 0 or -errno. */
static int read_units(struct upager__region *r, size_t u, size_t n,
		      size_t want, bool stream, char **data, struct buf **bp)
{
	upager_store_t *s = r->store;
	size_t len = n << r->page_shift;
	uint64_t off = r->offset + ((uint64_t)u << r->page_shift), foff = off;
	bool file = s->kind == UPAGER__STORE_FILE;
	size_t scratch = file ? 0 : upager__lz4_scratch_size(s);
	if (!file && !scratch)
		return -EINVAL; /* space.c maps no other store here */
	size_t skip = 0, io_len = want;
	/* An O_DIRECT read takes the 4 KiB-aligned span around the bytes. */
	uint64_t aoff = off & ~(uint64_t)(ALIGN - 1);
	size_t askip = (size_t)(off - aoff), alen = round_up(askip + want, ALIGN);
	bool direct = file && (s->flags & UPAGER_STORE_DIRECT);
	int fd = s->fd;
	if (file && !direct && !stream &&
	    upager__store_read_direct(s, aoff, alen)) {
		direct = true;
		fd = s->dwfd;
	}
	if (direct) {
		foff = aoff;
		skip = askip;
		io_len = alen;
	}
	size_t need = round_up(skip + len, ALIGN);
	if (need < io_len)
		need = io_len;
	struct buf *b = buf_get(need + scratch);
	if (!b)
		return -ENOMEM;
	ssize_t got;
	if (file) {
		got = read_file(fd, direct, b->p, io_len, foff);
		if (got == -EINVAL && fd != s->fd) {
			/* The kernel declines O_DIRECT here: buffered, from
			 * now on (the write-back's too). */
			atomic_store(&s->dw_off, true);
			skip = 0;
			io_len = want;
			got = read_file(s->fd, false, b->p, io_len, off);
		}
	} else {
		int rc = upager__lz4_read_scratch(s, b->p, want, off,
						  b->p + need);
		got = rc ? rc : (ssize_t)want;
	}
	if (got < 0) {
		buf_put(b);
		return (int)got;
	}
	size_t have = (size_t)got > skip ? (size_t)got - skip : 0;
	if (have > want)
		have = want;
	memset(b->p + skip + have, 0, len - have);
	CNT_INC(&r->cnt, bytes_fetched, have);
	*data = b->p + skip;
	*bp = b;
	return 0;
}

/* At the budget: wake the write-back thread and give it a moment, as a
 * worker does (upager__wb_wait_room, without its condition variable). */
static void make_room(upager_t *up, struct upager__region *r)
{
	if (!r->budget_units && !up->budget_units_4k)
		return;
	upager__wb_kick_over(up, r);
	for (int i = 0; i < ROOM_WAIT_ROUNDS && upager__wb_full(up, r) &&
			!atomic_load(&r->dead) && !atomic_load(&up->stopping);
	     i++)
		pause_us(50);
}

/* The read of unit u (claimed, FETCHING, with n-1 more after it) failed:
 * the thread gets SIGBUS, never zeros. The units go back to EMPTY rather
 * than being poisoned as the manager does: a poisoned page faults here
 * with the same si_code as a missing one, so the handler could not tell
 * them apart. Every later access reads again, and fails again until the
 * store recovers. */
static enum outcome fail_fetch(struct upager__region *r, size_t u, size_t n)
{
	CNT_INC(&r->cnt, read_errors, 1);
	for (size_t i = 0; i < n; i++)
		unit_cas(r->state, u + i, UNIT_FETCHING, UNIT_EMPTY);
	return FAILED;
}

/* Unit u of r is ours (FETCHING): fetch and install it, with the units
 * after it when the faults look like a stream. */
static enum outcome fetch(struct upager__region *r, size_t u, bool write,
			  bool zeroed, uint64_t t0)
{
	upager_t *up = r->up;
	bool stream = !zeroed && on_stream(r, u);
	size_t n = claim_run(r, u, stream);
	__atomic_store_n(&r->last_fault, u + n - 1, __ATOMIC_RELAXED);
	/* A read stream of a file: the workers read on ahead, their reads
	 * in flight while this thread works. Not for a write stream (its
	 * units go in writable and dirty with the run, below), nor over an
	 * lz4 store: decompressing is as quick here as in a worker, and
	 * under a budget the workers' installs wait for room while this
	 * thread waits for them (the scans of upager-budget-bench --inline
	 * read 10-25% slower with it). */
	if (stream && !write && r->store->kind == UPAGER__STORE_FILE)
		upager__inline_readahead(up, r, u + n);
	make_room(up, r);
	size_t want = zeroed ? 0 : upager__run_want(r, u, n);
	char *data = NULL;
	struct buf *b = NULL;
	if (want == 0) {
		b = buf_get(n << r->page_shift);
		if (b) {
			memset(b->p, 0, n << r->page_shift);
			data = b->p;
		}
	} else if (read_units(r, u, n, want, stream, &data, &b)) {
		return fail_fetch(r, u, n);
	}
	if (!b)
		return fail_fetch(r, u, n);
	/* A write fault's units go in writable and dirty, the units of
	 * its stream too (a write stream writes them next); a read's
	 * write-protected, so that the first write is seen, except where
	 * every unit goes in dirty (installs_dirty()). */
	struct upager__req j = {
		.r = r, .unit = u, .t0 = t0, .write = write, .demand = true,
		.count = (uint32_t)n,
	};
	int rc = upager__install(r, u, n, data, FILL_COPY,
				 r->wp && !installs_dirty(&j));
	buf_put(b);
	/* The units after the faulting one count as prefetched. */
	upager__settle(&j, u, 1, rc == 0);
	j.demand = false;
	upager__settle(&j, u + 1, n - 1, rc == 0);
	if (rc == 0) {
		upager__hist_add(&r->cnt, upager__now_ns() - t0);
		if (r->budget_units || up->budget_units_4k)
			upager__wb_kick_over(up, r);
		return SERVED;
	}
	/* -ECANCELED: the region is going away; the access faults again
	 * and meets what unmap left (PROT_NONE: SIGSEGV). Anything else
	 * cannot be installed: SIGBUS. */
	return rc == -ECANCELED ? SERVED : FAILED;
}

/* A write to a write-protected unit: dirty and writable, as the
 * manager's on_wp_fault does for a thread waiting in the kernel. On a
 * stream, the clean units of the write window after it go with it
 * (upager__unprotect_clean(), as for the manager's write streams): a
 * writer going through resident clean units then takes about one signal
 * a window, not one a unit. What it does not write of them is written
 * back all the same (at most a window, a quarter of the budget at most). */
static enum outcome wp_fault(struct upager__region *r, size_t u)
{
	enum wp_claim c = wp_claim(r, u);
	if (c == WP_BUSY)
		pause_us(WAIT_US); /* the write-back thread has it */
	if (c == WP_BUSY || c == WP_GONE)
		return SERVED; /* fault again */
	uintptr_t ua = region_base(r) + (u << r->page_shift);
	upager__uffd_unprotect_nowake(r->sp->uffd, ua, r->page_size);
	if (c != WP_HELD)
		return SERVED;
	release_dirty(r, u);
	size_t end = u + 1;
	if (on_stream(r, u))
		end = upager__unprotect_clean(r, u + 1,
					      u + 1 + upager__write_window(r, u));
	__atomic_store_n(&r->last_fault, end - 1, __ATOMIC_RELAXED);
	return SERVED;
}

static enum outcome serve_unit(struct upager__region *r, uintptr_t addr,
			       const void *uc)
{
	upager_t *up = r->up;
	uint64_t t0 = upager__now_ns(), present_since = 0, busy_since = 0;
	size_t u = (addr - region_base(r)) >> r->page_shift;
	struct access acc = fault_access(uc);
	bool write = acc.write, first = true;
	CNT_INC(&r->cnt, faults, 1);
	for (;;) {
		uint8_t b = unit_byte(r->state, u), s = b & UNIT_STATE;
		switch (s) {
		case UNIT_EMPTY:
		case UNIT_QUEUED: {
			uint8_t set = (b & UNIT_GHOST) ? UNIT_HOT : 0;
			if (!unit_update(r->state, u, s, UNIT_FETCHING, set,
					 UNIT_GHOST))
				continue;
			return fetch(r, u, write, b & UNIT_ZEROED, t0);
		}
		case UNIT_BUSY:
		case UNIT_FETCHING:
			if (s == UNIT_BUSY && (int)syscall(SYS_gettid) ==
					      atomic_load(&up->wb_tid)) {
				/* The write-back thread copying a page the
				 * application dropped meanwhile: zeros (the
				 * unit is dropped afterwards). */
				size_t done;
				upager__uffd_zero(r->sp->uffd,
						  addr & ~(uintptr_t)4095,
						  4096, &done);
				return SERVED;
			}
			/* Its owner (a worker, another thread, the
			 * write-back thread) installs or releases it. Wait
			 * for that here: faulting again would cost a signal
			 * a round and count as one more fault. Past a bound
			 * (or with the region going away) fault again. */
			uint64_t now = upager__now_ns();
			if (!busy_since)
				busy_since = now;
			if (now - busy_since >= BUSY_WAIT_NS ||
			    atomic_load(&r->dead) || atomic_load(&up->stopping))
				return SERVED;
			pause_us(WAIT_US);
			continue;
		default: /* PRESENT */
			break;
		}
		/* A write to a mapped (protected) page says so in the
		 * fault's error code: no system call to ask. Otherwise ask:
		 * an install may have mapped it since the fault. */
		bool mapped = (first && acc.mapped) || page_resident(addr);
		first = false;
		if (mapped) {
			/* Mapped: a write to a protected page, or an
			 * install that raced with this fault. */
			if (r->wp && (write || !acc.known))
				return wp_fault(r, u);
			return SERVED;
		}
		/* PRESENT but not mapped: the application dropped it and
		 * the manager has yet to handle the REMOVE event that
		 * resets the unit. Wait for that; past a bound, fetch it
		 * again as the manager does for a page that went away
		 * unseen. */
		uint64_t now = upager__now_ns();
		if (!present_since)
			present_since = now;
		if (now - present_since < PRESENT_WAIT_NS) {
			pause_us(WAIT_US);
			continue;
		}
		if (unit_update(r->state, u, UNIT_PRESENT, UNIT_FETCHING, 0,
				UNIT_DIRTY)) {
			unit_forgotten(r, b);
			return fetch(r, u, write, false, t0);
		}
	}
}

/* The handler that was there before ours, or the default action. */
static void pass_on(int sig, siginfo_t *si, void *uc)
{
	struct sigaction old = previous;
	if (old.sa_flags & SA_SIGINFO) {
		if (old.sa_sigaction) {
			old.sa_sigaction(sig, si, uc);
			return;
		}
	} else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
		old.sa_handler(sig);
		return;
	}
	/* Default: the access runs again and faults again, now with the
	 * default action (the process dies of SIGBUS, as without us). */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGBUS, &dfl, NULL);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	enum outcome o = NOT_OURS;
	atomic_fetch_add(&active, 1);
	if (si->si_code == BUS_ADRERR) {
		struct upager__region *r = find((uintptr_t)si->si_addr);
		if (r) {
			o = serve_unit(r, (uintptr_t)si->si_addr, uc);
			upager__region_put(r);
		}
	}
	atomic_fetch_sub(&active, 1);
	errno = saved;
	if (o != SERVED)
		pass_on(sig, si, uc);
}

static bool ours_installed(void)
{
	struct sigaction cur;
	return sigaction(SIGBUS, NULL, &cur) == 0 &&
	       (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus;
}

int upager__inline_attach(upager_t *up)
{
	pthread_mutex_lock(&attach_lock);
	int rc = -EBUSY;
	unsigned slot = MAX_RUNTIMES;
	for (unsigned i = 0; i < MAX_RUNTIMES && slot == MAX_RUNTIMES; i++)
		if (!atomic_load(&runtimes[i]))
			slot = i;
	if (slot == MAX_RUNTIMES)
		goto out;
	/* Someone may have replaced ours since (a test harness restoring
	 * its own handlers): install again, passing on to that one. */
	if (!ours_installed()) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = on_sigbus;
		sa.sa_flags = SA_SIGINFO | SA_RESTART;
		sigemptyset(&sa.sa_mask);
		struct sigaction old;
		if (sigaction(SIGBUS, NULL, &old)) {
			rc = -errno;
			goto out;
		}
		previous = old;
		if (sigaction(SIGBUS, &sa, NULL)) {
			rc = -errno;
			goto out;
		}
	}
	atomic_store(&runtimes[slot], up);
	attached++;
	rc = 0;
out:
	pthread_mutex_unlock(&attach_lock);
	return rc;
}

void upager__inline_detach(upager_t *up)
{
	pthread_mutex_lock(&attach_lock);
	for (unsigned i = 0; i < MAX_RUNTIMES; i++) {
		upager_t *cur = atomic_load(&runtimes[i]);
		if (cur == up) {
			atomic_store(&runtimes[i], NULL);
			attached--;
		}
	}
	/* A handler that found up before the slot emptied holds a region
	 * reference or is about to drop one: let it finish. */
	while (atomic_load(&active))
		pause_us(WAIT_US);
	if (attached == 0) {
		if (ours_installed())
			sigaction(SIGBUS, &previous, NULL);
		for (unsigned i = 0; i < POOL; i++) {
			if (pool[i].p)
				munmap(pool[i].p, pool[i].len);
			pool[i].p = NULL;
			pool[i].len = 0;
		}
	}
	pthread_mutex_unlock(&attach_lock);
}
