/*
 * client.c - a runtime whose faults are served by upagerd.
 *
 * With upager_config.daemon_socket set, upager_create() opens the
 * runtime's userfaultfd as usual (features negotiated here, so POISON and
 * the events are ours to ask for), connects to the daemon and hands it a
 * copy of the descriptor. Regions are still mapped, registered and
 * excluded from fork() here (runtime.c); each is then described to the
 * daemon with its store's file descriptor attached, and the daemon serves
 * its faults. This process runs no manager and no workers: up->nworkers is
 * 0 until a fallback starts them.
 *
 * One watcher thread waits for the daemon's socket to hang up. Then:
 *  - FALLBACK_LOCAL: it starts the manager and workers on the same
 *    descriptor and region table (the table was kept in step all along,
 *    with every unit EMPTY: a unit the daemon installed meets EEXIST and
 *    is only woken), and wakes every region so that threads whose fault
 *    the dead daemon had read but not served fault again, now here.
 *  - FALLBACK_SIGBUS: it becomes the descriptor's reader and answers
 *    every fault with UFFDIO_POISON (tgkill(SIGBUS) without POISON), and
 *    reads the other events so that madvise/munmap never block.
 * Either way no thread reads zeros or waits forever.
 *
 * Locking: req_lock serialises requests (one record in flight on the
 * socket, replies matched by sequence number). state_lock is held for
 * reading by unmap and advise, which depend on whether workers exist, and
 * for writing by the fallback while it changes that.
 *
 * Limits: a daemon that hangs without dying is noticed only by requests
 * (10 s socket timeouts), not by the watcher. A forked child inherits the
 * socket (close-on-exec, not close-on-fork): the daemon sees the client
 * gone only when both have closed it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"
#include "proto.h"

enum { ST_CONNECTED, ST_LOCAL, ST_SIGBUS };

struct upager__client {
	upager_t *up;
	int sock;
	int stop_fd;
	unsigned fallback;
	unsigned nworkers;    /* started only by FALLBACK_LOCAL */
	pthread_mutex_t req_lock;
	uint32_t seq;
	pthread_rwlock_t state_lock;
	atomic_int state;
	pthread_t watcher;
	bool watcher_started;
};

#define IO_TIMEOUT_S 10

/* ---- requests ---- */

/* Sends one request and waits for its reply. -ENOTCONN: the daemon is
 * gone. On success *rep holds the decoded reply and its status is
 * returned. */
static int request(struct upager__client *c, uint8_t *buf, size_t len,
		   const int *fds, unsigned nfds, struct upager__msg *rep)
{
	uint8_t in[512];
	struct upager__hdr h;
	memcpy(&h, buf, sizeof(h));
	pthread_mutex_lock(&c->req_lock);
	int rc = upager__proto_send(c->sock, buf, len, fds, nfds);
	if (rc == -EPIPE || rc == -ECONNRESET || rc == -ENOTCONN)
		rc = -ENOTCONN;
	while (rc == 0) {
		int junk[4];
		unsigned nj;
		long n = upager__proto_recv(c->sock, in, sizeof(in), junk, 0, &nj);
		if (n == 0 || n == -ECONNRESET) {
			rc = -ENOTCONN;
			break;
		}
		if (n < 0) {
			rc = n == -EAGAIN ? -ETIMEDOUT : (int)n;
			break;
		}
		rc = upager__proto_decode(in, (size_t)n, rep);
		if (rc == 0 && rep->seq != h.seq)
			continue; /* a stale reply to a timed-out request */
		if (rc == 0 && rep->type != (UPAGER_MSG_REPLY | h.type))
			rc = -EPROTO;
		if (rc)
			rc = -EPROTO;
		else
			rc = rep->u.reply.status;
		break;
	}
	pthread_mutex_unlock(&c->req_lock);
	return rc;
}

static uint32_t next_seq(struct upager__client *c)
{
	return __atomic_add_fetch(&c->seq, 1, __ATOMIC_RELAXED);
}

/* ---- fallback ---- */

static void wake_all(upager_t *up)
{
	struct upager__space *sp = &up->home;
	pthread_rwlock_rdlock(&sp->table_lock);
	for (size_t i = 0; i < sp->nregions; i++)
		upager__uffd_wake(sp->uffd, sp->table[i]->base,
				  sp->table[i]->span);
	pthread_rwlock_unlock(&sp->table_lock);
}

static int start_local(struct upager__client *c)
{
	upager_t *up = c->up;
	up->nworkers = c->nworkers;
	int rc = upager__workers_start(up);
	if (rc) {
		up->nworkers = 0;
		return rc;
	}
	rc = upager__manager_start(up);
	if (rc) {
		upager__workers_stop(up);
		atomic_store(&up->stopping, false);
		up->nworkers = 0;
	}
	return rc;
}

/* FALLBACK_SIGBUS: this thread reads the descriptor from now on. */
static void serve_sigbus(struct upager__client *c)
{
	upager_t *up = c->up;
	struct uffd_msg msgs[32];
	struct pollfd p[2] = {
		{ .fd = up->home.uffd, .events = POLLIN },
		{ .fd = c->stop_fd, .events = POLLIN },
	};
	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			return;
		if (p[1].revents)
			return;
		ssize_t n = read(up->home.uffd, msgs, sizeof(msgs));
		if (n <= 0)
			continue;
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue; /* read: that is all events need */
			uintptr_t a = (uintptr_t)msgs[i].arg.pagefault.address &
				      ~(uintptr_t)4095;
			size_t done;
			int rc = up->home.caps.poison ?
				upager__uffd_poison(up->home.uffd, a, 4096, &done) :
				-EOPNOTSUPP;
			uint32_t tid = msgs[i].arg.pagefault.feat.ptid;
			if (rc && rc != -EEXIST && up->home.caps.thread_id && tid)
				syscall(SYS_tgkill, getpid(), (pid_t)tid, SIGBUS);
			upager__uffd_wake(up->home.uffd, a, 4096);
		}
	}
}

static void *watcher_main(void *arg)
{
	struct upager__client *c = arg;
	struct pollfd p[2] = {
		{ .fd = c->sock, .events = POLLRDHUP },
		{ .fd = c->stop_fd, .events = POLLIN },
	};
	for (;;) {
		p[0].revents = p[1].revents = 0;
		int n = poll(p, 2, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || p[1].revents)
			return NULL;
		if (p[0].revents & (POLLHUP | POLLERR | POLLRDHUP))
			break;
	}
	/* The daemon is gone. */
	pthread_rwlock_wrlock(&c->state_lock);
	int to = ST_SIGBUS;
	if (c->fallback == UPAGER_DAEMON_FALLBACK_LOCAL && start_local(c) == 0)
		to = ST_LOCAL;
	atomic_store(&c->state, to);
	pthread_rwlock_unlock(&c->state_lock);
	if (to == ST_LOCAL) {
		wake_all(c->up);
		return NULL;
	}
	/* Faults already queued or read by the daemon: woken, they fault
	 * again and reach us. */
	wake_all(c->up);
	serve_sigbus(c);
	return NULL;
}

/* ---- set-up and teardown ---- */

static void client_free(struct upager__client *c)
{
	if (c->sock >= 0)
		close(c->sock);
	if (c->stop_fd >= 0)
		close(c->stop_fd);
	pthread_mutex_destroy(&c->req_lock);
	pthread_rwlock_destroy(&c->state_lock);
	free(c);
}

int upager__client_connect(upager_t *up, const struct upager_config *cfg)
{
	if (cfg->daemon_fallback > UPAGER_DAEMON_FALLBACK_SIGBUS)
		return -EINVAL;
	struct upager__client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->up = up;
	c->sock = -1;
	c->fallback = cfg->daemon_fallback;
	c->nworkers = up->nworkers;
	pthread_mutex_init(&c->req_lock, NULL);
	pthread_rwlock_init(&c->state_lock, NULL);
	atomic_init(&c->state, ST_CONNECTED);
	c->stop_fd = eventfd(0, EFD_CLOEXEC);
	int rc = c->stop_fd < 0 ? -errno : 0;
	if (rc)
		goto fail;
	c->sock = upager__proto_dial(cfg->daemon_socket, IO_TIMEOUT_S);
	if (c->sock < 0) {
		rc = c->sock;
		goto fail;
	}
	uint8_t buf[64];
	size_t len = upager__enc_hello(buf, next_seq(c), UPAGER_ROLE_CLIENT);
	struct upager__msg rep;
	rc = request(c, buf, len, &up->home.uffd, 1, &rep);
	if (rc == -ENOTCONN)
		rc = -ECONNREFUSED; /* refused before a word was said */
	if (rc)
		goto fail;
	if (rep.u.reply.version != UPAGER_PROTO_VERSION) {
		rc = -EPROTO;
		goto fail;
	}
	/* Before the watcher exists: a fallback restores nworkers. */
	up->nworkers = 0;
	up->client = c;
	rc = -pthread_create(&c->watcher, NULL, watcher_main, c);
	if (rc) {
		up->nworkers = c->nworkers;
		up->client = NULL;
		goto fail;
	}
	c->watcher_started = true;
	return 0;
fail:
	client_free(c);
	return rc;
}

void upager__client_close(upager_t *up)
{
	struct upager__client *c = up->client;
	if (!c)
		return;
	uint64_t one = 1;
	ssize_t n = write(c->stop_fd, &one, sizeof(one));
	(void)n;
	if (c->watcher_started)
		pthread_join(c->watcher, NULL);
	/* Closing the socket tells the daemon to drop this client. */
	up->client = NULL;
	client_free(c);
}

/* ---- regions ---- */

int upager__client_check_map(upager_t *up, upager_store_t *store,
			     const struct upager_map_opts *opts)
{
	(void)opts;
	if (!up->client)
		return 0;
	if (store && store->kind != UPAGER__STORE_FILE)
		return -EOPNOTSUPP; /* only a descriptor can be handed over */
	return 0;
}

int upager__client_map(upager_t *up, struct upager__region *r)
{
	struct upager__client *c = up->client;
	if (!c || atomic_load(&c->state) != ST_CONNECTED)
		return 0; /* served here (LOCAL), or poisoned (SIGBUS) */
	uint8_t buf[128];
	uint32_t flags = (r->store->flags & UPAGER_STORE_DIRECT) ?
			 UPAGER_MAPF_DIRECT : 0;
	size_t len = upager__enc_map(buf, next_seq(c), r->base, r->length,
				     r->offset, (uint64_t)r->ra_units * r->page_size,
				     (uint32_t)r->page_size, flags);
	struct upager__msg rep;
	int rc = request(c, buf, len, &r->store->fd, 1, &rep);
	if (rc == -ENOTCONN && c->fallback == UPAGER_DAEMON_FALLBACK_LOCAL)
		return 0; /* the watcher takes over and serves it here */
	return rc;
}

int upager__client_unmap(upager_t *up, uintptr_t base)
{
	struct upager__client *c = up->client;
	pthread_rwlock_rdlock(&c->state_lock);
	pthread_rwlock_rdlock(&up->home.table_lock);
	struct upager__region *r = upager__lookup(&up->home, base);
	bool ok = r && r->base == base;
	pthread_rwlock_unlock(&up->home.table_lock);
	int rc = -EINVAL;
	if (ok) {
		if (atomic_load(&c->state) == ST_CONNECTED) {
			/* The daemon first: after its reply none of its
			 * installs is in flight for the range. */
			uint8_t buf[64];
			struct upager__msg rep;
			size_t len = upager__enc_unmap(buf, next_seq(c), base);
			request(c, buf, len, NULL, 0, &rep);
		}
		rc = upager__region_remove(&up->home, base);
	}
	pthread_rwlock_unlock(&c->state_lock);
	return rc;
}

static bool range_in_region(upager_t *up, uintptr_t a, size_t len)
{
	struct upager__space *sp = &up->home;
	pthread_rwlock_rdlock(&sp->table_lock);
	struct upager__region *r = upager__lookup(sp, a);
	bool ok = r && len <= r->span && a - r->base <= r->span - len;
	pthread_rwlock_unlock(&sp->table_lock);
	return ok;
}

int upager__client_advise(upager_t *up, uintptr_t a, size_t len, int advice)
{
	struct upager__client *c = up->client;
	pthread_rwlock_rdlock(&c->state_lock);
	int st = atomic_load(&c->state), rc;
	if (st == ST_LOCAL || advice == UPAGER_ADV_DONTNEED) {
		/* DONTNEED is a madvise of our own memory; the daemon sees
		 * the REMOVE event. */
		rc = upager__space_advise(&up->home, a, len, advice);
	} else if (!a || len == 0 || a + len < a || advice < UPAGER_ADV_NORMAL ||
		   advice > UPAGER_ADV_DONTNEED || !range_in_region(up, a, len)) {
		rc = -EINVAL;
	} else if (st == ST_SIGBUS) {
		rc = 0; /* advice with nobody to take it */
	} else {
		uint8_t buf[64];
		struct upager__msg rep;
		size_t n = upager__enc_advise(buf, next_seq(c), a, len,
					      (uint32_t)advice);
		rc = request(c, buf, n, NULL, 0, &rep);
		if (rc == -ENOTCONN)
			rc = 0;
	}
	pthread_rwlock_unlock(&c->state_lock);
	return rc;
}

int upager__client_stats_add(upager_t *up, struct upager_stats *acc)
{
	struct upager__client *c = up->client;
	if (!c || atomic_load(&c->state) != ST_CONNECTED)
		return 0;
	uint8_t buf[64];
	struct upager__msg rep;
	size_t n = upager__enc_stats(buf, next_seq(c));
	int rc = request(c, buf, n, NULL, 0, &rep);
	if (rc)
		return rc == -ENOTCONN ? 0 : rc;
	struct upager_stats st;
	upager__stats_from_wire(&rep.u.reply.st, &st);
	acc->faults += st.faults;
	acc->pages_installed += st.pages_installed;
	acc->bytes_fetched += st.bytes_fetched;
	acc->prefetched += st.prefetched;
	acc->zero_pages += st.zero_pages;
	acc->read_errors += st.read_errors;
	acc->retries += st.retries;
	for (int i = 0; i < UPAGER_HIST_BUCKETS; i++)
		acc->fault_us_hist[i] += st.fault_us_hist[i];
	return 0;
}
