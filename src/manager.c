/*
 * manager.c - the manager thread: reads the userfaultfd and dispatches.
 *
 * One thread per runtime reads messages in batches and never waits on a
 * worker while it holds unread events, with one exception stated in
 * design.md: when the demand queue is full it stops reading (the faulting
 * threads wait in the kernel) until a worker frees a slot.
 *
 * Per message:
 *  - PAGEFAULT: find the region (binary search) and the unit. EMPTY: mark
 *    it FETCHING and queue a demand fetch. QUEUED (waiting in the prefetch
 *    queue): promote it to a demand fetch. FETCHING: nothing, the install
 *    in flight wakes every waiter of the unit. PRESENT: the fault raced an
 *    install or the page was dropped behind our back; mincore() tells
 *    which, and we wake or fetch again. Outside every region: the address
 *    is not ours to serve, so it is poisoned and the thread gets SIGBUS.
 *  - REMOVE (madvise DONTNEED/REMOVE): the units touched become EMPTY so
 *    the next access fetches from the store again.
 *  - UNMAP: the application unmapped region memory itself; stop tracking.
 *  - REMAP: a whole region moved: follow it; a partial move: the moved
 *    part is no longer ours (faults there get SIGBUS).
 *  - PAGEFAULT with the write-protect flag: the unit becomes dirty and
 *    writable; on a sequential write stream, so do the clean units ahead
 *    of it (see "Write streams" in readahead.c).
 * Reading the message is what lets the kernel finish the madvise/munmap/
 * mremap and lets installs stop failing with EAGAIN, so non-fault events
 * are handled inline, never queued.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

#define BATCH 64

/* Following the faulting thread's CPU (see design.md, "Where the manager
 * runs"): a window's majority faulting thread, found by a
 * Boyer-Moore vote over its faults. */
#define FOLLOW_WINDOW_NS 10000000ull  /* a window: at least 10 ms */
#define FOLLOW_WINDOW_FAULTS 64u      /* and 64 faults, */
#define FOLLOW_MAX_NS 100000000ull    /* or 100 ms */
#define FOLLOW_MIN_FAULTS 16u         /* fewer: never pinned */

struct follow {
	uint64_t start;     /* window start */
	uint32_t tid;       /* majority candidate */
	unsigned votes, faults;
	unsigned seq;       /* faults on sequential streams */
	int cpu;            /* the manager's pinned CPU, or -1 */
	bool have_mask;
	cpu_set_t mask;     /* the manager's own affinity at start */
};

struct mgr {
	upager_t *up;
	struct follow fl;
	/* Demand fetches the manager could not start itself and the shared
	 * queue had no room for. While there are any, it reads no more
	 * messages (the faulting threads wait in the kernel). */
	struct upager__req *pending; /* BATCH + queue_depth entries */
	unsigned npending, cap;
	unsigned kicks;
	struct uffd_msg msgs[BATCH];
};

bool upager__manager_flush(upager_t *up)
{
	struct mgr *m = up->mgr;
	unsigned i = 0;
	if (m->npending) {
		pthread_mutex_lock(&up->qlock);
		while (i < m->npending &&
		       upager__ring_push(&up->demand, &m->pending[i])) {
			atomic_fetch_add(&up->demand_count, 1);
			i++;
		}
		pthread_mutex_unlock(&up->qlock);
		memmove(m->pending, m->pending + i,
			(m->npending - i) * sizeof(m->pending[0]));
		m->npending -= i;
		m->kicks += i;
	}
	if (m->kicks || m->npending) {
		/* Still full: wake every worker so that they drain it. */
		upager__workers_kick(up, m->npending ? up->nworkers : m->kicks);
		m->kicks = 0;
	}
	return m->npending == 0;
}

static void queue_demand(struct mgr *m, struct upager__region *r, size_t u,
			 uint64_t t0, uint32_t tid, bool write)
{
	atomic_fetch_add(&r->refs, 1);
	struct upager__req req = {
		.r = r, .unit = u, .t0 = t0, .tid = tid, .write = write,
		.demand = true,
	};
	/* The manager reads the unit itself when it can: one thread less to
	 * wake on the fault's path (a wake-up that crosses CPUs costs more
	 * than the read's submission). */
	if (upager__worker_start_local(m->up->mgr_w, &req))
		return;
	/* At most one per message, and no new batch is read while any are
	 * left: pending never overflows. */
	m->pending[m->npending++] = req;
}

void upager__manager_defer(upager_t *up, const struct upager__req *j)
{
	struct mgr *m = up->mgr;
	/* Room for one batch plus every read the manager can have in
	 * flight, each deferred at most once per completion. */
	if (m->npending < m->cap)
		m->pending[m->npending++] = *j;
	else
		upager__region_put(j->r); /* cannot happen: see cap */
}

/* The readahead of a fault the manager read; counts the faults on
 * streams for the thread following (follow_tick). */
static size_t fault_readahead(upager_t *up, struct upager__region *r, size_t u,
			      bool write)
{
	bool stream;
	size_t wend = upager__fault_readahead(up, r, u, write, &stream);
	if (stream)
		up->mgr->fl.seq++;
	return wend;
}

/* A write to a write-protected page: the unit becomes dirty and writable,
 * and on a write stream the clean units after it as well. While the
 * write-back thread owns the unit the thread waits for it. */
static void on_wp_fault(upager_t *up, struct upager__space *sp,
			struct upager__region *r, size_t u)
{
	uintptr_t ua = r->base + (u << r->page_shift);
	enum wp_claim c = wp_claim(r, u);
	if (c == WP_BUSY)
		return;
	/* WP_GONE: gone meanwhile; the wake below lets it fault again. */
	bool held = c == WP_HELD, here = c != WP_GONE;
	size_t n = 1;
	if (here) {
		size_t wend = fault_readahead(up, r, u, true);
		while (u + n < wend && hold_clean(r, u + n))
			n++;
	}
	/* Un-protected without waking, then the held units are PRESENT and
	 * dirty, then the waiters wake: a writer that returns and flushes
	 * finds its unit dirty. A page no longer there is not protected;
	 * the wake releases its waiters too. */
	upager__uffd_unprotect_nowake(sp->uffd, ua, n << r->page_shift);
	if (held)
		release_dirty(r, u);
	for (size_t v = u + 1; v < u + n; v++)
		release_dirty(r, v);
	upager__space_wake(sp, ua, n << r->page_shift);
}

static bool page_resident(uintptr_t page)
{
	unsigned char v = 0;
	if (mincore((void *)page, 4096, &v))
		return false;
	return v & 1;
}

/* How long after upager_space_adopt() a fault no region covers is taken
 * for one whose region is still being added (see on_fault). */
#define ADOPT_GRACE_NS (1000ull * 1000 * 1000)

static void on_fault(struct mgr *m, struct upager__space *sp,
		     const struct uffd_msg *msg, uint64_t now)
{
	upager_t *up = m->up;
	uintptr_t addr = (uintptr_t)msg->arg.pagefault.address & ~(uintptr_t)4095;
	uint32_t tid = sp->caps.thread_id ? msg->arg.pagefault.feat.ptid : 0;
	struct upager__region *r = upager__lookup(sp, addr);
	if (!r && !sp->local && now - sp->adopted_ns < ADOPT_GRACE_NS) {
		/* An adopted space whose owner touches its memory before the
		 * handler has added the region (Firecracker resumes the VM
		 * right after the handshake): release the thread to fault
		 * again, until the region is there or the grace ends. */
		upager__space_wake(sp, addr, 4096);
		return;
	}
	if (!r || atomic_load(&r->dead)) {
		/* Not a live region of ours: never let it read zeros. */
		size_t done;
		if (!r && sp->caps.poison)
			upager__uffd_poison(sp->uffd, addr, 4096, &done);
		else if (!r && tid && sp->local)
			syscall(SYS_tgkill, getpid(), (pid_t)tid, SIGBUS);
		upager__space_wake(sp, addr, 4096);
		return;
	}
	CNT_INC(&r->cnt, faults, 1);
	size_t u = (addr - r->base) >> r->page_shift;
	uint64_t flags = msg->arg.pagefault.flags;
	if (flags & UFFD_PAGEFAULT_FLAG_WP) {
		on_wp_fault(up, sp, r, u);
		return;
	}
	bool write = flags & UFFD_PAGEFAULT_FLAG_WRITE;
	for (;;) {
		uint8_t b = unit_byte(r->state, u), s = b & UNIT_STATE;
		if (s == UNIT_EMPTY || s == UNIT_QUEUED) {
			/* Faulted again after an eviction: the eviction
			 * clock will pass over it once. */
			uint8_t set = (b & UNIT_GHOST) ? UNIT_HOT : 0;
			if (!unit_update(r->state, u, s, UNIT_FETCHING, set,
					 UNIT_GHOST))
				continue;
			queue_demand(m, r, u, now, tid, write);
			fault_readahead(up, r, u, write);
			return;
		}
		if (s == UNIT_BUSY) {
			/* The write-back thread wakes us when done, unless
			 * we are the write-back thread, copying a page the
			 * application dropped meanwhile: give it zeros (the
			 * unit is dropped afterwards). */
			if (tid && (int)tid == atomic_load(&up->wb_tid)) {
				size_t done;
				upager__uffd_zero(sp->uffd, addr, 4096, &done);
				upager__space_wake(sp, addr, 4096);
			}
			return;
		}
		if (s == UNIT_FETCHING) {
			/* The install in flight wakes us; keep the stream's
			 * readahead going. */
			fault_readahead(up, r, u, write);
			return;
		}
		/* PRESENT: a racing install already woke this thread, or
		 * the page went away (zapped without a REMOVE we saw). In
		 * our own memory mincore() tells which; in another
		 * process's, fetch again (the install meets EEXIST and
		 * wakes). */
		if (sp->local && page_resident(addr)) {
			upager__space_wake(sp, addr, 4096);
			return;
		}
		if (unit_update(r->state, u, UNIT_PRESENT, UNIT_FETCHING, 0,
				UNIT_DIRTY)) {
			unit_forgotten(r, b);
			queue_demand(m, r, u, now, tid, write);
			return;
		}
	}
}

/* The application dropped the unit's pages (or some of them). */
static void forget_unit(struct upager__region *r, size_t u)
{
	for (;;) {
		uint8_t b = unit_byte(r->state, u), s = b & UNIT_STATE;
		if (s == UNIT_EMPTY)
			return;
		if (s == UNIT_BUSY) {
			/* The write-back thread owns it: tell it. */
			if (unit_update(r->state, u, s, s, UNIT_REMOVED, 0))
				return;
			continue;
		}
		uint8_t set = r->zero_removed ? UNIT_ZEROED : 0;
		if (unit_update(r->state, u, s, UNIT_EMPTY, set, UNIT_DIRTY)) {
			if (s == UNIT_PRESENT)
				unit_forgotten(r, b);
			return;
		}
	}
}

/* The application dropped units [first, first+n) of r. */
static void forget_units(struct upager__region *r, size_t first, size_t n)
{
	for (size_t k = 0; k < n; k++)
		forget_unit(r, first + k);
	r->ra_next = 0;
}

/* Units overlapping [a, b) in every region become EMPTY. */
static void forget_range(struct upager__space *sp, uintptr_t a, uintptr_t b)
{
	for (size_t i = 0; i < sp->nregions; i++) {
		struct upager__region *r = sp->table[i];
		if (r->base >= b)
			break;
		if (r->base + r->span <= a)
			continue;
		size_t f, n;
		upager__units_of(r, a, b, &f, &n);
		forget_units(r, f, n);
	}
}

static void on_unmap(struct upager__space *sp, uintptr_t a, uintptr_t b)
{
	forget_range(sp, a, b);
	struct upager__region *r = upager__lookup(sp, a);
	if (r && r->base == a && r->base + r->span <= b)
		atomic_store(&r->app_unmapped, true);
}

static void on_remap(struct upager__space *sp, uintptr_t from, uintptr_t to,
		     size_t len)
{
	struct upager__region *r = upager__lookup(sp, from);
	if (r && r->base == from && len >= r->span) {
		/* The whole region moved (its registration moved with it):
		 * follow it. The table is read-locked here; moving an entry
		 * needs the write lock, so take it. */
		pthread_rwlock_unlock(&sp->table_lock);
		pthread_rwlock_wrlock(&sp->table_lock);
		if (upager__table_remove(sp, r)) {
			__atomic_store_n(&r->base, to, __ATOMIC_RELAXED);
			/* Cannot fail: the remove left room. */
			upager__table_insert(sp, r);
		}
		pthread_rwlock_unlock(&sp->table_lock);
		pthread_rwlock_rdlock(&sp->table_lock);
		return;
	}
	forget_range(sp, from, from + len);
}

/* The CPU thread tid last ran on, or -1. */
static int thread_cpu(uint32_t tid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%u/stat", tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	/* Fields after the command name, which may hold spaces: "processor"
	 * is field 39, the 37th after the ')'. */
	char *p = strrchr(buf, ')');
	for (int f = 2; p && f < 39; f++)
		p = strchr(p + 1, ' ');
	return p ? atoi(p + 1) : -1;
}

static void follow_vote(struct follow *fl, uint32_t tid)
{
	fl->faults++;
	if (fl->votes == 0) {
		fl->tid = tid;
		fl->votes = 1;
	} else if (fl->tid == tid) {
		fl->votes++;
	} else {
		fl->votes--;
	}
}

/* At the end of each window: pin the manager to the CPU of the thread
 * that won the window's vote by a margin of half its faults (it made at
 * least half of them), unless 1/4 were on sequential streams; else unpin
 * it. */
static void follow_tick(struct follow *fl, uint64_t now)
{
	uint64_t age = now - fl->start;
	if (age < FOLLOW_WINDOW_NS ||
	    (fl->faults < FOLLOW_WINDOW_FAULTS && age < FOLLOW_MAX_NS))
		return;
	int cpu = -1;
	if (fl->faults >= FOLLOW_MIN_FAULTS && fl->votes * 2 >= fl->faults &&
	    fl->seq * 4 < fl->faults && fl->tid && fl->have_mask) {
		/* Any CPU the thread runs on is one we may run on too
		 * (should the kernel refuse, we stay where we are). */
		cpu = thread_cpu(fl->tid);
		if (cpu >= CPU_SETSIZE)
			cpu = -1;
	}
	if (cpu != fl->cpu) {
		cpu_set_t one;
		CPU_ZERO(&one);
		if (cpu >= 0)
			CPU_SET(cpu, &one);
		if (sched_setaffinity(0, sizeof(cpu_set_t),
				      cpu >= 0 ? &one : &fl->mask) == 0)
			fl->cpu = cpu;
	}
	fl->start = now;
	fl->faults = fl->votes = fl->seq = 0;
}

static void dispatch(struct mgr *m, struct upager__space *sp,
		     const struct uffd_msg *msgs, size_t n)
{
	upager_t *up = m->up;
	uint64_t now = upager__now_ns();
	pthread_rwlock_rdlock(&sp->table_lock);
	for (size_t i = 0; i < n; i++) {
		const struct uffd_msg *msg = &msgs[i];
		switch (msg->event) {
		case UFFD_EVENT_PAGEFAULT:
			if (!up->no_follow)
				follow_vote(&m->fl, sp->caps.thread_id ?
					    msg->arg.pagefault.feat.ptid : 0);
			on_fault(m, sp, msg, now);
			break;
		case UFFD_EVENT_REMOVE:
			forget_range(sp, msg->arg.remove.start,
				     msg->arg.remove.end);
			break;
		case UFFD_EVENT_UNMAP:
			on_unmap(sp, msg->arg.remove.start, msg->arg.remove.end);
			break;
		case UFFD_EVENT_REMAP:
			on_remap(sp, msg->arg.remap.from, msg->arg.remap.to,
				 msg->arg.remap.len);
			break;
		default:
			break; /* FORK is not requested */
		}
	}
	pthread_rwlock_unlock(&sp->table_lock);
	upager__manager_flush(up);
	if (!up->no_follow)
		follow_tick(&m->fl, now);
}

/* Reads and serves what sp has pending, a bounded number of batches so
 * that one busy space cannot starve the others (epoll is level-triggered:
 * the rest is reported again). A batch that was not full ends it too: a
 * read that would meet EAGAIN is a system call on every fault's path, and
 * a message that came meanwhile is reported again. Returns false if the
 * descriptor is dead. */
static bool serve(struct mgr *m, struct upager__space *sp, struct uffd_msg *msgs)
{
	upager_t *up = m->up;
	for (int round = 0; round < 16 && m->npending == 0; round++) {
		atomic_fetch_add(&up->mgr_epoch, 1); /* odd: reading */
		ssize_t n = read(sp->uffd, msgs, BATCH * sizeof(*msgs));
		if (n > 0)
			dispatch(m, sp, msgs, (size_t)n / sizeof(*msgs));
		atomic_fetch_add(&up->mgr_epoch, 1); /* even: handled */
		if (n > 0 && (size_t)n < BATCH * sizeof(*msgs))
			return true;
		if (n > 0)
			continue;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return true;
		return false; /* EOF or a dead descriptor */
	}
	return true;
}

void upager__manager_barrier(upager_t *up)
{
	uint64_t e = atomic_load(&up->mgr_epoch);
	if (!(e & 1))
		return; /* idle: whatever it read is handled */
	while (atomic_load(&up->mgr_epoch) == e && !atomic_load(&up->stopping)) {
		struct timespec ts = { 0, 20000 };
		nanosleep(&ts, NULL);
	}
}

void upager__manager_serve(upager_t *up)
{
	struct mgr *m = up->mgr;
	struct epoll_event evs[16];
	/* Lock first: an adopted space closed meanwhile must not be in the
	 * events (upager_space_close removes it under the write lock). */
	pthread_rwlock_rdlock(&up->spaces_lock);
	int n = epoll_wait(up->epfd, evs, 16, 0);
	for (int i = 0; i < n; i++) {
		struct upager__space *sp = evs[i].data.ptr;
		if (!sp) {
			/* ctl_fd: the loop re-checks `stopping`. */
			uint64_t v;
			ssize_t rc = read(up->ctl_fd, &v, sizeof(v));
			(void)rc;
			continue;
		}
		if (!serve(m, sp, m->msgs) ||
		    (evs[i].events & (EPOLLERR | EPOLLHUP))) {
			/* The descriptor is dead (its process exited): stop
			 * polling it until its owner closes it. */
			atomic_store(&sp->gone, true);
			epoll_ctl(up->epfd, EPOLL_CTL_DEL, sp->uffd, NULL);
		}
	}
	pthread_rwlock_unlock(&up->spaces_lock);
}

int upager__manager_init(upager_t *up)
{
	up->mgr = calloc(1, sizeof(struct mgr));
	if (!up->mgr)
		return -ENOMEM;
	up->mgr->up = up;
	up->mgr->fl.cpu = -1;
	up->mgr->cap = BATCH + up->queue_depth;
	up->mgr->pending = calloc(up->mgr->cap, sizeof(struct upager__req));
	int rc = up->mgr->pending ? upager__worker_new_manager(up, &up->mgr_w) :
				    -ENOMEM;
	if (rc) {
		free(up->mgr->pending);
		free(up->mgr);
		up->mgr = NULL;
	}
	return rc;
}

void upager__manager_fini(upager_t *up)
{
	if (!up->mgr)
		return;
	/* Stopping: demand fetches never handed over hold references. */
	for (unsigned i = 0; i < up->mgr->npending; i++)
		upager__region_put(up->mgr->pending[i].r);
	upager__worker_free_manager(up->mgr_w);
	up->mgr_w = NULL;
	free(up->mgr->pending);
	free(up->mgr);
	up->mgr = NULL;
}

_Thread_local bool upager__on_manager;

static void *manager_main(void *arg)
{
	upager_t *up = arg;
	upager__on_manager = true;
	struct follow *fl = &up->mgr->fl;
	fl->have_mask = sched_getaffinity(0, sizeof(fl->mask), &fl->mask) == 0;
	return upager__worker_run(up->mgr_w);
}

int upager__manager_start(upager_t *up)
{
	int rc = -pthread_create(&up->manager, NULL, manager_main, up);
	if (rc)
		return rc;
	/* Named here, not by the thread: named once upager_create returns. */
	pthread_setname_np(up->manager, "upager-mgr");
	up->manager_started = true;
	return 0;
}
