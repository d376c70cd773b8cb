/*
 * page_server.c - the server end of the remote page protocol: serves a
 * memory buffer or a store to remote stores (store_remote.c).
 *
 * Threads: one acceptor, then one thread per connection. A client opens
 * two connections that name the same session token: on the demand one the
 * thread answers READ frames in order; on the bulk one, after PUSH_START,
 * it pushes every block of the push map the session has not sent yet:
 * first those of the "push first" map (the client's working set, when the
 * application knows it), then the others.
 *
 * Session state shared by a client's two threads: `sent` (one byte per
 * block, set once with an atomic exchange by whichever thread sends the
 * block first: a block read on demand is never pushed), `hint` (block to
 * restart the push at, set by each demand read: the stream follows the
 * faults) and `demand_busy` (the push thread waits while a demand read is
 * being served, so a fault's reply is never queued behind a push).
 *
 * Stopping: `stopping` is set, the acceptor is woken through an eventfd,
 * every connection is shut down (blocking send/recv return), threads are
 * joined. Limits: blocks are read synchronously, one per thread; a
 * session lives as long as one of its connections.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#include "remote_proto.h"

#define DEFAULT_BLOCK (64u << 10)

struct session {
	uint64_t token;
	unsigned refs;          /* connections; srv->lock */
	atomic_uint_fast64_t hint; /* block + 1 to restart at; 0: none */
	atomic_int demand_busy;
	uint8_t *sent;          /* nblocks bytes */
	struct session *next;
};

struct conn {
	upager_page_server_t *srv;
	int fd;
	pthread_t thr;
	atomic_bool done;
	struct session *ses;
	char *buf;              /* block buffer for store reads */
	struct conn *next;
};

struct upager_page_server {
	int listen_fd;
	int wake_fd;
	pthread_t acceptor;
	const char *base;        /* memory server */
	upager_store_t *store;   /* store server */
	uint64_t size;
	size_t bs;
	uint64_t nblocks;
	unsigned flags;
	atomic_bool stopping;

	pthread_mutex_t lock;    /* conns, sessions, push_map */
	struct conn *conns;
	struct session *sessions;
	uint8_t *push_map;       /* NULL: every block */
	uint8_t *first_map;      /* NULL: no block before the others */

	atomic_uint_fast64_t connections, refused, reads, read_bytes,
		pushed_blocks, pushed_bytes, restarts, streams_done,
		pushed_first;
};

#define ADD(srv, f, n) atomic_fetch_add_explicit(&(srv)->f, (n), \
						 memory_order_relaxed)

/* ---- reading what we serve ---- */

static int src_read(upager_page_server_t *srv, void *buf, size_t len,
		    uint64_t off)
{
	upager_store_t *s = srv->store;
	if (s->kind == UPAGER__STORE_CUSTOM)
		return s->ops.read(s->ctx, buf, len, off);
	char *p = buf;
	while (len) {
		ssize_t k = pread(s->fd, p, len, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0) { /* the file shrank: zeros, as a region would */
			memset(p, 0, len);
			break;
		}
		p += k;
		off += (uint64_t)k;
		len -= (size_t)k;
	}
	return 0;
}

/* Sends frame h whose payload is store bytes [off, off + h->len). */
static int send_range(struct conn *c, const struct upager__rp_hdr *h,
		      uint64_t off)
{
	upager_page_server_t *srv = c->srv;
	if (srv->base)
		return upager__rp_send(c->fd, h, srv->base + off);
	if (!c->buf) {
		c->buf = malloc(UPAGER__RP_MAX_DATA);
		if (!c->buf)
			return -ENOMEM;
	}
	int rc = src_read(srv, c->buf, h->len, off);
	if (rc)
		return rc;
	return upager__rp_send(c->fd, h, c->buf);
}

/* ---- sessions ---- */

static struct session *session_get(upager_page_server_t *srv, uint64_t tok)
{
	pthread_mutex_lock(&srv->lock);
	struct session *s = srv->sessions;
	while (s && s->token != tok)
		s = s->next;
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (s)
			s->sent = calloc(srv->nblocks, 1);
		if (s && !s->sent) {
			free(s);
			s = NULL;
		}
		if (s) {
			s->token = tok;
			s->next = srv->sessions;
			srv->sessions = s;
		}
	}
	if (s)
		s->refs++;
	pthread_mutex_unlock(&srv->lock);
	return s;
}

static void session_put(upager_page_server_t *srv, struct session *s)
{
	pthread_mutex_lock(&srv->lock);
	if (--s->refs == 0) {
		struct session **pp = &srv->sessions;
		while (*pp != s)
			pp = &(*pp)->next;
		*pp = s->next;
		free(s->sent);
		free(s);
	}
	pthread_mutex_unlock(&srv->lock);
}

/* ---- demand connection ---- */

static int serve_read(struct conn *c, const struct upager__rp_hdr *h)
{
	upager_page_server_t *srv = c->srv;
	if (h->offset >= srv->size || h->arg > srv->size - h->offset) {
		upager__rp_send_error(c->fd, h->id, EINVAL,
				      "read past the end of the store");
		return 0;
	}
	struct session *s = c->ses;
	uint64_t first = h->offset / srv->bs;
	uint64_t last = (h->offset + h->arg - 1) / srv->bs;
	for (uint64_t b = first; b <= last; b++)
		__atomic_store_n(&s->sent[b], 1, __ATOMIC_RELAXED);
	if (last + 1 < srv->nblocks)
		atomic_store(&s->hint, last + 2);
	struct upager__rp_hdr d = {
		.type = RP_DATA, .id = h->id, .len = (uint32_t)h->arg,
		.offset = h->offset,
	};
	int rc = send_range(c, &d, h->offset);
	if (rc == -EPIPE || rc == -ECONNRESET)
		return rc;
	if (rc) {
		upager__rp_send_error(c->fd, h->id, rc, "store read failed");
		return 0;
	}
	ADD(srv, reads, 1);
	ADD(srv, read_bytes, h->arg);
	return 0;
}

static void demand_loop(struct conn *c)
{
	for (;;) {
		struct upager__rp_hdr h;
		if (upager__rp_recv_hdr(c->fd, &h))
			return;
		if (h.type != RP_READ) {
			upager__rp_send_error(c->fd, 0, EPROTO,
					      "only READ on a demand connection");
			return;
		}
		atomic_fetch_add(&c->ses->demand_busy, 1);
		int rc = serve_read(c, &h);
		atomic_fetch_sub(&c->ses->demand_busy, 1);
		if (rc)
			return;
	}
}

/* ---- bulk connection: the push stream ---- */

static bool in_map(const uint8_t *map, uint64_t b)
{
	return !map || (map[b / 8] >> (b % 8)) & 1;
}

/* Next block at or after cur (wrapping) to push that is in both maps
 * (NULL: every block), or UINT64_MAX. */
static uint64_t next_block(upager_page_server_t *srv, struct session *s,
			   const uint8_t *map, const uint8_t *first,
			   uint64_t cur)
{
	for (uint64_t i = 0; i < srv->nblocks; i++) {
		uint64_t b = (cur + i) % srv->nblocks;
		if (!__atomic_load_n(&s->sent[b], __ATOMIC_RELAXED) &&
		    in_map(map, b) && in_map(first, b))
			return b;
	}
	return UINT64_MAX;
}

static void wait_demand_idle(upager_page_server_t *srv, struct session *s)
{
	struct timespec ts = { 0, 20000 };
	while (atomic_load(&s->demand_busy) > 0 && !atomic_load(&srv->stopping))
		nanosleep(&ts, NULL);
}

/* Pushes the blocks of @first (if any), then the rest of @map. Demand
 * reads move the cursor in both phases; in the first one the stream only
 * looks for blocks of @first from there. */
static int push_stream(struct conn *c, const uint8_t *map,
		       const uint8_t *first)
{
	upager_page_server_t *srv = c->srv;
	struct session *s = c->ses;
	uint64_t cur = 0;
	while (!atomic_load(&srv->stopping)) {
		uint64_t h = atomic_exchange(&s->hint, 0);
		if (h && !(srv->flags & UPAGER_SERVER_IN_ORDER)) {
			cur = h - 1;
			ADD(srv, restarts, 1);
		}
		uint64_t b = UINT64_MAX;
		if (first) {
			b = next_block(srv, s, map, first, cur);
			if (b == UINT64_MAX)
				first = NULL; /* all sent: the others now */
		}
		if (b == UINT64_MAX)
			b = next_block(srv, s, map, NULL, cur);
		if (b == UINT64_MAX) {
			struct upager__rp_hdr d = { .type = RP_PUSH_DONE };
			ADD(srv, streams_done, 1);
			return upager__rp_send(c->fd, &d, NULL);
		}
		cur = b + 1;
		if (__atomic_exchange_n(&s->sent[b], 1, __ATOMIC_RELAXED))
			continue;
		wait_demand_idle(srv, s);
		uint64_t off = b * srv->bs;
		uint64_t n = srv->size - off < srv->bs ? srv->size - off : srv->bs;
		struct upager__rp_hdr d = {
			.type = RP_PUSH, .len = (uint32_t)n, .offset = off,
		};
		int rc = send_range(c, &d, off);
		if (rc)
			return rc;
		if (first)
			ADD(srv, pushed_first, 1);
		ADD(srv, pushed_blocks, 1);
		ADD(srv, pushed_bytes, n);
	}
	return -ECANCELED;
}

/* A private copy of *@from (NULL if none); false when out of memory. */
static bool copy_map(upager_page_server_t *srv, uint8_t *const *from,
		     uint8_t **out)
{
	pthread_mutex_lock(&srv->lock);
	uint8_t *m = NULL;
	if (*from) {
		m = malloc((srv->nblocks + 7) / 8);
		if (m)
			memcpy(m, *from, (srv->nblocks + 7) / 8);
	}
	bool ok = !*from || m;
	pthread_mutex_unlock(&srv->lock);
	*out = m;
	return ok;
}

static void bulk_loop(struct conn *c)
{
	struct upager__rp_hdr h;
	if (upager__rp_recv_hdr(c->fd, &h))
		return;
	if (h.type != RP_PUSH_START) {
		upager__rp_send_error(c->fd, 0, EPROTO,
				      "only PUSH_START on a bulk connection");
		return;
	}
	uint8_t *map = NULL, *first = NULL;
	if (!copy_map(c->srv, &c->srv->push_map, &map) ||
	    !copy_map(c->srv, &c->srv->first_map, &first)) {
		free(map);
		upager__rp_send_error(c->fd, 0, ENOMEM, "out of memory");
		return;
	}
	int rc = push_stream(c, map, first);
	free(map);
	free(first);
	if (rc)
		return;
	/* Keep the connection until the client closes it. */
	while (upager__rp_recv_hdr(c->fd, &h) == 0 && h.len == 0)
		;
}

/* ---- connections ---- */

static int hello(struct conn *c, struct upager__rp_hello *m)
{
	upager_page_server_t *srv = c->srv;
	struct upager__rp_hdr h;
	int rc = upager__rp_recv_hdr(c->fd, &h);
	if (rc == -EPROTONOSUPPORT) {
		upager__rp_send_error(c->fd, 0, EPROTONOSUPPORT,
				      "protocol version mismatch: this page "
				      "server speaks version 1 only");
		return rc;
	}
	if (rc)
		return rc;
	uint8_t p[UPAGER__RP_HELLO_LEN];
	if (h.type != RP_HELLO ||
	    upager__rp_read_full(c->fd, p, sizeof(p)) ||
	    upager__rp_decode_hello(p, sizeof(p), m)) {
		upager__rp_send_error(c->fd, 0, EPROTO, "expected HELLO");
		return -EPROTO;
	}
	c->ses = session_get(srv, m->token);
	if (!c->ses) {
		upager__rp_send_error(c->fd, 0, ENOMEM, "out of memory");
		return -ENOMEM;
	}
	struct upager__rp_hdr w = {
		.type = RP_WELCOME, .offset = srv->size, .arg = srv->bs,
	};
	return upager__rp_send(c->fd, &w, NULL);
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct upager__rp_hello m;
	if (hello(c, &m)) {
		ADD(c->srv, refused, 1);
	} else if (m.channel == RP_CHAN_DEMAND) {
		int one = 1;
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		demand_loop(c);
	} else {
		bulk_loop(c);
	}
	if (c->ses)
		session_put(c->srv, c->ses);
	c->ses = NULL;
	shutdown(c->fd, SHUT_RDWR);
	atomic_store(&c->done, true);
	return NULL;
}

static void conn_free(struct conn *c)
{
	pthread_join(c->thr, NULL);
	close(c->fd);
	free(c->buf);
	free(c);
}

/* Joins connections whose thread has ended. Caller holds srv->lock. */
static void reap(upager_page_server_t *srv)
{
	struct conn **pp = &srv->conns;
	while (*pp) {
		struct conn *c = *pp;
		if (atomic_load(&c->done)) {
			*pp = c->next;
			conn_free(c);
		} else {
			pp = &c->next;
		}
	}
}

static void accept_one(upager_page_server_t *srv)
{
	int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->srv = srv;
	c->fd = fd;
	ADD(srv, connections, 1);
	pthread_mutex_lock(&srv->lock);
	reap(srv);
	if (atomic_load(&srv->stopping) ||
	    pthread_create(&c->thr, NULL, conn_main, c)) {
		pthread_mutex_unlock(&srv->lock);
		close(fd);
		free(c);
		return;
	}
	c->next = srv->conns;
	srv->conns = c;
	pthread_mutex_unlock(&srv->lock);
}

static void *acceptor_main(void *arg)
{
	upager_page_server_t *srv = arg;
	while (!atomic_load(&srv->stopping)) {
		struct pollfd p[2] = {
			{ .fd = srv->listen_fd, .events = POLLIN },
			{ .fd = srv->wake_fd, .events = POLLIN },
		};
		if (poll(p, 2, -1) < 0)
			continue;
		if (p[1].revents)
			break;
		if (p[0].revents & POLLIN)
			accept_one(srv);
		else if (p[0].revents) /* listening socket closed or broken */
			break;
	}
	return NULL;
}

/* ---- public entry points ---- */

static int start(int listen_fd, const void *base, upager_store_t *store,
		 uint64_t size, const struct upager_page_server_opts *opts,
		 upager_page_server_t **out)
{
	struct upager_page_server_opts o = { 0 };
	if (opts)
		o = *opts;
	if (!o.block_size)
		o.block_size = DEFAULT_BLOCK;
	if (o.block_size < UPAGER__RP_BLOCK_MIN ||
	    o.block_size > UPAGER__RP_BLOCK_MAX ||
	    (o.block_size & (o.block_size - 1)) ||
	    (o.flags & ~UPAGER_SERVER_IN_ORDER))
		return -EINVAL;
	upager_page_server_t *srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->listen_fd = listen_fd;
	srv->base = base;
	srv->store = store;
	srv->size = size;
	srv->bs = o.block_size;
	srv->nblocks = (size + o.block_size - 1) / o.block_size;
	srv->flags = o.flags;
	int rc = pthread_mutex_init(&srv->lock, NULL);
	if (rc)
		goto fail_lock;
	srv->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (srv->wake_fd < 0) {
		rc = -errno;
		goto fail_efd;
	}
	rc = -pthread_create(&srv->acceptor, NULL, acceptor_main, srv);
	if (rc)
		goto fail_thread;
	if (store)
		upager__store_ref(store);
	*out = srv;
	return 0;

fail_thread:
	close(srv->wake_fd);
fail_efd:
	pthread_mutex_destroy(&srv->lock);
fail_lock:
	free(srv);
	return rc < 0 ? rc : -rc;
}

int upager_page_server_mem(int listen_fd, const void *base, uint64_t size,
			   const struct upager_page_server_opts *opts,
			   upager_page_server_t **out)
{
	if (listen_fd < 0 || !base || !size || !out)
		return -EINVAL;
	return start(listen_fd, base, NULL, size, opts, out);
}

int upager_page_server_store(int listen_fd, upager_store_t *store,
			     const struct upager_page_server_opts *opts,
			     upager_page_server_t **out)
{
	if (listen_fd < 0 || !store || !out)
		return -EINVAL;
	if (store->kind != UPAGER__STORE_FILE &&
	    store->kind != UPAGER__STORE_CUSTOM)
		return -EOPNOTSUPP;
	uint64_t size;
	int rc = upager__store_size(store, &size);
	if (rc)
		return rc;
	if (size == UINT64_MAX)
		return -EOPNOTSUPP;
	if (size == 0)
		return -EINVAL;
	return start(listen_fd, NULL, store, size, opts, out);
}

/* Replaces *@field with a copy of @map (NULL: none). */
static int set_map(upager_page_server_t *srv, uint8_t **field,
		   const uint8_t *map, size_t nblocks)
{
	if (!srv || (map && nblocks != srv->nblocks))
		return -EINVAL;
	uint8_t *m = NULL;
	if (map) {
		m = malloc((nblocks + 7) / 8);
		if (!m)
			return -ENOMEM;
		memcpy(m, map, (nblocks + 7) / 8);
	}
	pthread_mutex_lock(&srv->lock);
	uint8_t *old = *field;
	*field = m;
	pthread_mutex_unlock(&srv->lock);
	free(old);
	return 0;
}

int upager_page_server_set_push_map(upager_page_server_t *srv,
				    const uint8_t *map, size_t nblocks)
{
	return set_map(srv, srv ? &srv->push_map : NULL, map, nblocks);
}

int upager_page_server_set_push_first(upager_page_server_t *srv,
				      const uint8_t *map, size_t nblocks)
{
	return set_map(srv, srv ? &srv->first_map : NULL, map, nblocks);
}

int upager_page_server_pushed_first(upager_page_server_t *srv,
				    uint64_t *out)
{
	if (!srv || !out)
		return -EINVAL;
	*out = atomic_load(&srv->pushed_first);
	return 0;
}

int upager_page_server_stats(upager_page_server_t *srv,
			     struct upager_page_server_stats *out)
{
	if (!srv || !out)
		return -EINVAL;
	out->connections = atomic_load(&srv->connections);
	out->refused = atomic_load(&srv->refused);
	out->reads = atomic_load(&srv->reads);
	out->read_bytes = atomic_load(&srv->read_bytes);
	out->pushed_blocks = atomic_load(&srv->pushed_blocks);
	out->pushed_bytes = atomic_load(&srv->pushed_bytes);
	out->restarts = atomic_load(&srv->restarts);
	out->streams_done = atomic_load(&srv->streams_done);
	return 0;
}

void upager_page_server_stop(upager_page_server_t *srv)
{
	if (!srv)
		return;
	atomic_store(&srv->stopping, true);
	uint64_t one = 1;
	if (write(srv->wake_fd, &one, sizeof(one)) < 0) {
		/* An eventfd write only fails on overflow: it is awake. */
	}
	pthread_join(srv->acceptor, NULL);
	pthread_mutex_lock(&srv->lock);
	for (struct conn *c = srv->conns; c; c = c->next)
		shutdown(c->fd, SHUT_RDWR);
	struct conn *c = srv->conns;
	srv->conns = NULL;
	pthread_mutex_unlock(&srv->lock);
	while (c) {
		struct conn *next = c->next;
		conn_free(c);
		c = next;
	}
	close(srv->wake_fd);
	pthread_mutex_destroy(&srv->lock);
	free(srv->push_map);
	free(srv->first_map);
	upager_store_release(srv->store);
	free(srv);
}
