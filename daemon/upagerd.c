/*
 * upagerd.c - the upager pager daemon.
 *
 * Clients (runtimes created with upager_config.daemon_socket) connect to
 * a SOCK_SEQPACKET socket, hand over their userfaultfd and describe their
 * regions, each with its store's file descriptor attached; the daemon
 * serves every client's faults with one upager runtime: its manager thread
 * epolls every adopted descriptor and its workers fetch and install for
 * all of them. With --firecracker it also accepts Firecracker's page-fault
 * handler handshake on a SOCK_STREAM socket and serves the microVM's guest
 * memory from the snapshot memory file (--mem-file).
 *
 * Threads: cfg.threads control-plane threads share one epoll set over the
 * listening sockets, every connection and the Firecracker VMs' pidfds.
 * Every watch is EPOLLONESHOT and a connection has one watch at a time,
 * so exactly one thread handles a connection at any moment and its state
 * needs no lock of its own. The connection list has one lock, taken to
 * link, unlink and snapshot (LIST, metrics).
 *
 * Trust: every peer is checked with SO_PEERCRED (same user, or a member
 * of --allow-group); every record is decoded by proto.c and then checked
 * against what this client registered (overlap, region count, bounds).
 * The daemon opens no file for a client: stores come only from
 * descriptors the client passed, and faults are served only through the
 * client's own userfaultfd, which reaches no other process's memory.
 *
 * Lifetime: a client is dropped when its socket reaches EOF or an error
 * (its process died, or upager_destroy): its space is closed (waiting for
 * installs in flight), which releases the stores and closes every
 * descriptor it passed. A Firecracker VM is dropped when its process exits
 * (pidfd), since Firecracker may leave the socket idle or close it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "upagerd.h"

enum conn_kind { K_NEW, K_CLIENT, K_CONTROL, K_REFUSED, K_FC_PENDING, K_FC };
enum watch_kind { W_LISTEN, W_FC_LISTEN, W_STOP, W_SOCK, W_PIDFD };

struct watch {
	int kind;
	int fd;
	struct conn *c;
};

struct range {
	uint64_t base, span;
};

struct conn {
	/* Held by the thread handling the connection, and across its
	 * re-arm: the next thread's handling happens after this one's. */
	pthread_mutex_t mu;
	struct conn *prev, *next;
	struct watch w;
	int fd, pidfd, fc_uffd;
	int kind;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	upager_space_t *sp;
	struct range *ranges;
	unsigned nranges, cap;
	char *fcbuf;
	size_t fclen;
};

#define RECORDS_PER_EVENT 16

static struct daemon D;
static struct watch w_listen = { .kind = W_LISTEN, .fd = -1 };
static struct watch w_fc = { .kind = W_FC_LISTEN, .fd = -1 };
static struct watch w_stop = { .kind = W_STOP, .fd = -1 };

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("upagerd: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- epoll ---- */

static int arm(struct watch *w, int op)
{
	struct epoll_event ev = {
		.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.ptr = w,
	};
	return epoll_ctl(D.epfd, op, w->fd, &ev) ? -errno : 0;
}

/* ---- connections ---- */

static void close_all(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

static void conn_close(struct conn *c)
{
	pthread_mutex_lock(&D.lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		D.conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	D.nconns--;
	pthread_mutex_unlock(&D.lock);
	epoll_ctl(D.epfd, EPOLL_CTL_DEL, c->w.fd, NULL);
	/* Closes the client's descriptor after its installs in flight;
	 * releases the stores and so the files it passed. */
	upager_space_close(c->sp);
	if (c->fd >= 0)
		close(c->fd);
	if (c->pidfd >= 0)
		close(c->pidfd);
	if (c->fc_uffd >= 0)
		close(c->fc_uffd);
	free(c->ranges);
	free(c->fcbuf);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

static int reply(struct conn *c, uint16_t type, uint32_t seq, int status,
		 const struct upager__wire_stats *st)
{
	uint8_t buf[512];
	size_t n = upager__enc_reply(buf, type, seq, status, st, NULL, 0, 0);
	return upager__proto_send(c->fd, buf, n, NULL, 0);
}

static bool peer_allowed(int fd, const struct ucred *cr)
{
	if (cr->uid == geteuid())
		return true;
	if (!D.cfg.allow_gid_set)
		return false;
	if (cr->gid == D.cfg.allow_gid)
		return true;
	gid_t groups[256];
	socklen_t len = sizeof(groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len))
		return false;
	for (size_t i = 0; i < len / sizeof(gid_t); i++)
		if (groups[i] == D.cfg.allow_gid)
			return true;
	return false;
}

static void on_accept(struct watch *lw, bool fc)
{
	for (int i = 0; i < 16; i++) {
		int fd = accept4(lw->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			break;
		struct ucred cr;
		socklen_t len = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len)) {
			close(fd);
			continue;
		}
		bool ok = peer_allowed(fd, &cr);
		if (!ok) {
			atomic_fetch_add(&D.refused, 1);
			logf_("refused pid %d uid %u gid %u", (int)cr.pid,
			      (unsigned)cr.uid, (unsigned)cr.gid);
			if (fc) { /* Firecracker would not read a reason */
				close(fd);
				continue;
			}
		}
		struct conn *c = calloc(1, sizeof(*c));
		pthread_mutex_lock(&D.lock);
		bool full = D.nconns >= D.cfg.max_clients;
		if (c && !full) {
			pthread_mutex_init(&c->mu, NULL);
			c->fd = fd;
			c->pidfd = c->fc_uffd = -1;
			c->kind = !ok ? K_REFUSED : fc ? K_FC_PENDING : K_NEW;
			c->pid = cr.pid;
			c->uid = cr.uid;
			c->gid = cr.gid;
			c->w = (struct watch){ .kind = W_SOCK, .fd = fd, .c = c };
			c->next = D.conns;
			if (D.conns)
				D.conns->prev = c;
			D.conns = c;
			D.nconns++;
		}
		pthread_mutex_unlock(&D.lock);
		if (!c || full) {
			logf_("too many connections: dropping pid %d", (int)cr.pid);
			free(c);
			close(fd);
			continue;
		}
		atomic_fetch_add(&D.accepted, 1);
		pthread_mutex_lock(&c->mu);
		int rc = arm(&c->w, EPOLL_CTL_ADD);
		pthread_mutex_unlock(&c->mu);
		if (rc)
			conn_close(c);
	}
	arm(lw, EPOLL_CTL_MOD);
}

/* ---- the client protocol ---- */

static bool is_uffd(int fd)
{
	char path[64], link[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return false;
	link[n] = 0;
	return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

/* HELLO from a new connection. Returns false to drop it. */
static bool do_hello(struct conn *c, const struct upager__msg *m, int *fds,
		     unsigned nfds)
{
	unsigned want = m->u.hello.role == UPAGER_ROLE_CLIENT ? 1 : 0;
	if (nfds != want) {
		close_all(fds, nfds);
		reply(c, m->type, m->seq, -EBADF, NULL);
		return false;
	}
	if (!want) {
		c->kind = K_CONTROL;
		return reply(c, m->type, m->seq, 0, NULL) == 0;
	}
	upager_space_t *sp = NULL;
	int rc = is_uffd(fds[0]) ? upager_space_adopt(D.up, fds[0], &sp) : -EBADF;
	if (rc) {
		close(fds[0]);
		reply(c, m->type, m->seq, rc, NULL);
		return false;
	}
	pthread_mutex_lock(&D.lock);
	c->sp = sp;
	c->kind = K_CLIENT;
	pthread_mutex_unlock(&D.lock);
	return reply(c, m->type, m->seq, 0, NULL) == 0;
}

static int find_range(const struct conn *c, uint64_t a, uint64_t len)
{
	for (unsigned i = 0; i < c->nranges; i++) {
		const struct range *r = &c->ranges[i];
		if (a >= r->base && len <= r->span && a - r->base <= r->span - len)
			return (int)i;
	}
	return -1;
}

/* Serves a new region from the client's file @fd; consumes @fd whatever
 * happens (once a store owns it, releasing the store closes it). */
static int do_map(struct conn *c, const struct upager__msg *m, int fd)
{
	uint64_t ps = m->u.map.page_size;
	uint64_t base = m->u.map.base;
	uint64_t span = (m->u.map.length + ps - 1) & ~(ps - 1);
	int rc = 0;
	if (c->nranges >= D.cfg.max_regions)
		rc = -ENOSPC;
	for (unsigned i = 0; rc == 0 && i < c->nranges; i++)
		if (base < c->ranges[i].base + c->ranges[i].span &&
		    c->ranges[i].base < base + span)
			rc = -EEXIST;
	if (rc == 0 && c->nranges == c->cap) {
		unsigned cap = c->cap ? c->cap * 2 : 8;
		void *p = realloc(c->ranges, cap * sizeof(*c->ranges));
		if (p) {
			c->ranges = p;
			c->cap = cap;
		} else {
			rc = -ENOMEM;
		}
	}
	upager_store_t *s = NULL;
	unsigned sflags = (m->u.map.flags & UPAGER_MAPF_DIRECT) ?
			  UPAGER_STORE_DIRECT : 0;
	if (rc == 0)
		rc = upager_store_fd(fd, sflags, &s);
	if (rc) {
		close(fd);
		return rc;
	}
	struct upager_map_opts o = {
		.page_size = m->u.map.page_size,
		.readahead = m->u.map.readahead,
	};
	rc = upager_space_add(c->sp, base, m->u.map.length, s,
			      m->u.map.offset, &o);
	upager_store_release(s); /* the range holds its own reference */
	if (rc == 0)
		c->ranges[c->nranges++] = (struct range){ base, span };
	return rc;
}

static int do_unmap(struct conn *c, uint64_t base)
{
	for (unsigned i = 0; i < c->nranges; i++) {
		if (c->ranges[i].base != base)
			continue;
		int rc = upager_space_remove(c->sp, base);
		c->ranges[i] = c->ranges[--c->nranges];
		return rc;
	}
	return -EINVAL;
}

static int do_advise(struct conn *c, const struct upager__msg *m)
{
	if (m->u.advise.advice == UPAGER_ADV_DONTNEED)
		return -EOPNOTSUPP; /* the client's own madvise */
	if (find_range(c, m->u.advise.addr, m->u.advise.len) < 0)
		return -EINVAL;
	return upager_space_advise(c->sp, m->u.advise.addr,
				   (size_t)m->u.advise.len,
				   (int)m->u.advise.advice);
}

static int do_list(struct conn *c, const struct upager__msg *m)
{
	struct upager__client_rec *recs = calloc(UPAGER_LIST_MAX, sizeof(*recs));
	uint8_t *buf = malloc(UPAGER_PROTO_MAX_MSG);
	int rc = -ENOMEM;
	if (recs && buf) {
		unsigned total;
		unsigned n = upagerd_snapshot(&D, m->u.list.first, recs,
					      UPAGER_LIST_MAX, &total);
		size_t len = upager__enc_reply(buf, m->type, m->seq, 0, NULL,
					       recs, n, total);
		rc = upager__proto_send(c->fd, buf, len, NULL, 0);
	}
	free(recs);
	free(buf);
	return rc;
}

/* One record. Returns false to drop the connection. */
static bool handle(struct conn *c, const uint8_t *buf, size_t len, int *fds,
		   unsigned nfds)
{
	struct upager__msg m;
	int rc = upager__proto_decode(buf, len, &m);
	if (rc == -EPROTO || (rc == 0 && (m.type & UPAGER_MSG_REPLY))) {
		close_all(fds, nfds);
		atomic_fetch_add(&D.proto_errors, 1);
		if (m.version && m.version != UPAGER_PROTO_VERSION)
			logf_("pid %d speaks protocol %u, this daemon %u: refused",
			      (int)c->pid, m.version, UPAGER_PROTO_VERSION);
		else
			logf_("pid %d: malformed record (%zu bytes): dropped",
			      (int)c->pid, len);
		/* A HELLO reply carries our version: the peer can say why. */
		reply(c, UPAGER_MSG_HELLO, m.seq, -EPROTO, NULL);
		return false;
	}
	if (c->kind == K_REFUSED) {
		close_all(fds, nfds);
		reply(c, m.type, m.seq, -EACCES, NULL);
		return false;
	}
	if (rc) { /* well-formed, out of range */
		close_all(fds, nfds);
		reply(c, m.type, m.seq, rc, NULL);
		return c->kind != K_NEW;
	}
	if ((c->kind == K_NEW) != (m.type == UPAGER_MSG_HELLO)) {
		close_all(fds, nfds);
		atomic_fetch_add(&D.proto_errors, 1);
		reply(c, m.type, m.seq, -EPROTO, NULL);
		return false;
	}
	if (m.type == UPAGER_MSG_HELLO)
		return do_hello(c, &m, fds, nfds);
	unsigned want = m.type == UPAGER_MSG_MAP ? 1 : 0;
	if (nfds != want) {
		close_all(fds, nfds);
		return reply(c, m.type, m.seq, -EBADF, NULL) == 0;
	}
	bool client = c->kind == K_CLIENT;
	struct upager_stats st;
	struct upager__wire_stats ws;
	switch (m.type) {
	case UPAGER_MSG_MAP:
		if (client) {
			rc = do_map(c, &m, fds[0]);
		} else {
			close(fds[0]);
			rc = -EPERM;
		}
		break;
	case UPAGER_MSG_UNMAP:
		rc = client ? do_unmap(c, m.u.unmap.base) : -EPERM;
		break;
	case UPAGER_MSG_ADVISE:
		rc = client ? do_advise(c, &m) : -EPERM;
		break;
	case UPAGER_MSG_STATS:
		rc = client ? upager_space_stats(c->sp, &st) : -EPERM;
		if (rc == 0) {
			st.regions = 0; /* the client counts its own */
			upager__stats_to_wire(&st, &ws);
		}
		return reply(c, m.type, m.seq, rc, rc ? NULL : &ws) == 0;
	case UPAGER_MSG_LIST:
		return do_list(c, &m) == 0;
	}
	return reply(c, m.type, m.seq, rc, NULL) == 0;
}

/* What a handler leaves the loop to do. */
enum outcome { REARM, ARMED, DROP };

static enum outcome on_records(struct conn *c)
{
	uint8_t *buf = malloc(UPAGER_PROTO_MAX_MSG);
	if (!buf)
		return DROP;
	bool keep = true;
	for (int i = 0; keep && i < RECORDS_PER_EVENT; i++) {
		int fds[2];
		unsigned nfds;
		long n = upager__proto_recv(c->fd, buf, UPAGER_PROTO_MAX_MSG,
					    fds, 2, &nfds);
		if (n == -EAGAIN)
			break;
		if (n <= 0) {
			close_all(fds, nfds);
			if (n == -EMSGSIZE)
				atomic_fetch_add(&D.proto_errors, 1);
			keep = false;
			break;
		}
		keep = handle(c, buf, (size_t)n, fds, nfds);
	}
	free(buf);
	return keep ? REARM : DROP;
}

/* ---- Firecracker ---- */

/* The handshake arrived whole: serve its regions from the memory file. */
static int fc_start(struct conn *c, const struct upager__fc_region *r,
		    unsigned n)
{
	upager_space_t *sp;
	int rc = is_uffd(c->fc_uffd) ? upager_space_adopt(D.up, c->fc_uffd, &sp)
				      : -EBADF;
	if (rc)
		return rc;
	c->fc_uffd = -1; /* the space owns it now */
	pthread_mutex_lock(&D.lock);
	c->sp = sp;
	c->kind = K_FC;
	pthread_mutex_unlock(&D.lock);
	for (unsigned i = 0; i < n; i++) {
		/* Pages the balloon took read as zeros afterwards, as
		 * Firecracker expects of its handlers. */
		struct upager_map_opts o = {
			.page_size = r[i].page_size,
			.flags = UPAGER_MAP_ZERO_REMOVED,
		};
		rc = upager_space_add(sp, r[i].base, r[i].size, D.fc_store,
				      r[i].offset, &o);
		if (rc)
			return rc;
	}
	atomic_fetch_add(&D.fc_handshakes, 1);
	/* Watch the VM's process from now on: Firecracker says nothing
	 * more on the socket and may close it. */
	int pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
	if (pidfd < 0)
		return 0; /* no pidfd: the socket's hang-up will do */
	epoll_ctl(D.epfd, EPOLL_CTL_DEL, c->fd, NULL);
	c->pidfd = pidfd;
	c->w = (struct watch){ .kind = W_PIDFD, .fd = pidfd, .c = c };
	return arm(&c->w, EPOLL_CTL_ADD);
}

static enum outcome on_fc_bytes(struct conn *c)
{
	if (c->kind == K_FC) { /* nothing more is expected: drain */
		char junk[256];
		ssize_t n = recv(c->fd, junk, sizeof(junk), 0);
		return n == 0 || (n < 0 && errno != EAGAIN) ? DROP : REARM;
	}
	if (!c->fcbuf && !(c->fcbuf = malloc(UPAGER_FC_MAX_JSON)))
		return DROP;
	int fds[1];
	unsigned nfds;
	long n = upager__proto_recv(c->fd, c->fcbuf + c->fclen,
				    UPAGER_FC_MAX_JSON - c->fclen, fds, 1, &nfds);
	if (nfds) {
		if (c->fc_uffd < 0)
			c->fc_uffd = fds[0];
		else
			close(fds[0]);
	}
	if (n == -EAGAIN)
		return REARM;
	if (n <= 0) {
		logf_("firecracker pid %d: closed before the handshake", (int)c->pid);
		return DROP;
	}
	c->fclen += (size_t)n;
	struct upager__fc_region r[UPAGER_FC_MAX_REGIONS];
	unsigned k;
	int rc = upager__fc_parse(c->fcbuf, c->fclen, r, UPAGER_FC_MAX_REGIONS, &k);
	if (rc == 1 && c->fclen < UPAGER_FC_MAX_JSON)
		return REARM;
	if (rc == 0 && c->fc_uffd < 0)
		rc = -EBADF;
	if (rc == 0)
		rc = fc_start(c, r, k);
	if (rc) {
		atomic_fetch_add(&D.proto_errors, 1);
		logf_("firecracker pid %d: handshake refused: %s", (int)c->pid,
		      upager_strerror(rc == 1 ? -EINVAL : rc));
		return DROP;
	}
	free(c->fcbuf);
	c->fcbuf = NULL;
	return c->pidfd < 0 ? REARM : ARMED;
}

/* ---- threads ---- */

static void serve_conn(struct conn *c)
{
	pthread_mutex_lock(&c->mu);
	enum outcome o = c->kind == K_FC_PENDING || c->kind == K_FC ?
			 on_fc_bytes(c) : on_records(c);
	if (o == REARM && arm(&c->w, EPOLL_CTL_MOD))
		o = DROP;
	pthread_mutex_unlock(&c->mu);
	if (o == DROP)
		conn_close(c);
}

static void *loop_main(void *arg)
{
	(void)arg;
	while (!atomic_load(&D.stopping)) {
		struct epoll_event ev;
		int n = epoll_wait(D.epfd, &ev, 1, -1);
		if (n <= 0)
			continue;
		struct watch *w = ev.data.ptr;
		switch (w->kind) {
		case W_STOP:
			return NULL;
		case W_LISTEN:
			on_accept(w, false);
			break;
		case W_FC_LISTEN:
			on_accept(w, true);
			break;
		case W_PIDFD: /* the VM's process exited */
			pthread_mutex_lock(&w->c->mu);
			pthread_mutex_unlock(&w->c->mu);
			conn_close(w->c);
			break;
		case W_SOCK:
			serve_conn(w->c);
			break;
		}
	}
	return NULL;
}

unsigned upagerd_snapshot(struct daemon *d, unsigned first,
			  struct upager__client_rec *out, unsigned max,
			  unsigned *total)
{
	unsigned idx = 0, n = 0;
	pthread_mutex_lock(&d->lock);
	for (struct conn *c = d->conns; c; c = c->next) {
		if (!c->sp || (c->kind != K_CLIENT && c->kind != K_FC))
			continue;
		if (idx++ < first || n == max)
			continue;
		struct upager_stats st;
		upager_space_stats(c->sp, &st);
		out[n] = (struct upager__client_rec){
			.pid = (uint32_t)c->pid, .uid = c->uid,
			.kind = c->kind == K_FC ? UPAGER_KIND_FIRECRACKER
						: UPAGER_KIND_CLIENT,
		};
		upager__stats_to_wire(&st, &out[n].st);
		n++;
	}
	pthread_mutex_unlock(&d->lock);
	*total = idx;
	return n;
}

/* ---- start-up ---- */

static int listen_on(const char *path, int type, unsigned mode)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		logf_("%s: path too long", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	/* A live daemon answers; a stale socket file is replaced. */
	int probe = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(probe);
		logf_("%s: another daemon is listening there", path);
		return -1;
	}
	if (probe >= 0)
		close(probe);
	unlink(path);
	int s = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) ||
	    chmod(path, mode) || listen(s, 128)) {
		logf_("%s: %s", path, strerror(errno));
		if (s >= 0)
			close(s);
		return -1;
	}
	return s;
}

static void on_signal(int sig)
{
	(void)sig;
	uint64_t one = 1;
	ssize_t n = write(D.stop_fd, &one, sizeof(one));
	(void)n;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int setup(void)
{
	struct upager_config uc = { .workers = D.cfg.workers };
	int rc = upager_create(&uc, &D.up);
	if (rc) {
		logf_("cannot create the runtime: %s", upager_strerror(rc));
		return -1;
	}
	if (D.cfg.mem_file) {
		rc = upager_store_file(D.cfg.mem_file, 0, &D.fc_store);
		if (rc) {
			logf_("%s: %s", D.cfg.mem_file, upager_strerror(rc));
			return -1;
		}
	}
	D.epfd = epoll_create1(EPOLL_CLOEXEC);
	D.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (D.epfd < 0 || D.stop_fd < 0)
		return -1;
	w_stop.fd = D.stop_fd;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &w_stop };
	if (epoll_ctl(D.epfd, EPOLL_CTL_ADD, D.stop_fd, &ev))
		return -1;
	w_listen.fd = listen_on(D.cfg.socket, SOCK_SEQPACKET, D.cfg.socket_mode);
	if (w_listen.fd < 0 || arm(&w_listen, EPOLL_CTL_ADD))
		return -1;
	if (D.cfg.fc_socket) {
		w_fc.fd = listen_on(D.cfg.fc_socket, SOCK_STREAM, D.cfg.socket_mode);
		if (w_fc.fd < 0 || arm(&w_fc, EPOLL_CTL_ADD))
			return -1;
	}
	return 0;
}

static void teardown(void)
{
	while (D.conns)
		conn_close(D.conns);
	if (w_listen.fd >= 0) {
		close(w_listen.fd);
		unlink(D.cfg.socket);
	}
	if (w_fc.fd >= 0) {
		close(w_fc.fd);
		unlink(D.cfg.fc_socket);
	}
	upager_store_release(D.fc_store);
	upager_destroy(D.up);
	if (D.epfd >= 0)
		close(D.epfd);
	if (D.stop_fd >= 0)
		close(D.stop_fd);
}

int main(int argc, char **argv)
{
	D.epfd = D.stop_fd = -1;
	pthread_mutex_init(&D.lock, NULL);
	upagerd_config_defaults(&D.cfg);
	int rc = upagerd_config_args(&D.cfg, argc, argv, stdout, stderr);
	if (rc) {
		upagerd_config_free(&D.cfg);
		return rc > 0 ? 0 : 2;
	}
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (setup()) {
		teardown();
		upagerd_config_free(&D.cfg);
		return 1;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	pthread_t metrics;
	bool have_metrics = false;
	if (D.cfg.metrics_port) {
		if (upagerd_metrics_start(&D, &metrics)) {
			teardown();
			upagerd_config_free(&D.cfg);
			return 1;
		}
		have_metrics = true;
	}
	logf_("serving on %s%s%s (protocol %u, %u threads)", D.cfg.socket,
	      D.cfg.fc_socket ? ", firecracker on " : "",
	      D.cfg.fc_socket ? D.cfg.fc_socket : "", UPAGER_PROTO_VERSION,
	      D.cfg.threads);
	pthread_t *thr = calloc(D.cfg.threads, sizeof(*thr));
	unsigned started = 0;
	for (; thr && started < D.cfg.threads; started++)
		if (pthread_create(&thr[started], NULL, loop_main, NULL))
			break;
	if (started == 0)
		on_signal(0);
	for (unsigned i = 0; i < started; i++)
		pthread_join(thr[i], NULL);
	free(thr);
	atomic_store(&D.stopping, true);
	if (have_metrics)
		pthread_join(metrics, NULL);
	teardown();
	upagerd_config_free(&D.cfg);
	return 0;
}
