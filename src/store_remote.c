/*
 * store_remote.c - a store that reads from a page server over TCP (the
 * client end of docs/protocol.md, "Remote page protocol").
 *
 * Built on the custom-store mechanism: the store is a CUSTOM store whose
 * read callback is remote_read(); upager_store_remote_*() recognise it by
 * that callback.
 *
 * Two connections. Demand: workers (many at once) send READ frames under
 * send_lock, each tagged with the id of a request slot, and sleep on the
 * slot; the demand receiver thread reads DATA frames straight into the
 * waiting worker's buffer and wakes it. Bulk: after PUSH_START the bulk
 * receiver thread reads PUSH frames into a bounded cache of blocks and
 * calls on_pushed(); when the cache is full it stops reading the socket
 * (TCP flow control then stalls the server).
 *
 * Invariants (under cache_lock): a block is in the cache at most once;
 * once any read has returned a block (`delivered`), it is never cached
 * again and a cached copy is dropped, so the cache only ever holds blocks
 * that a future read may take. Store bytes never change while served
 * (the server's side is paused), so a pushed copy and a demand copy agree.
 *
 * Failure: when either receiver sees the demand connection break, or a
 * read times out, `broken` is set, both sockets are shut down and every
 * waiting and future read fails with -EIO at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "remote_proto.h"

#define NSLOTS 256u
#define DEFAULT_CACHE (64u << 20)
#define DEFAULT_TIMEOUT_MS 10000u

enum slot_state { SLOT_FREE, SLOT_WAITING, SLOT_RECEIVING, SLOT_DONE };

struct req {
	enum slot_state state;
	uint32_t id;
	char *buf;
	size_t len;
	uint64_t offset;
	int status;
	pthread_cond_t cv;
};

struct remote {
	int dfd, bfd;            /* demand and bulk sockets */
	uint64_t size;
	size_t bs;
	unsigned bs_shift;
	uint64_t nblocks;
	unsigned timeout_ms;
	void (*on_pushed)(void *arg, uint64_t offset, size_t len);
	void *arg;

	pthread_mutex_t send_lock;   /* demand socket writes */
	pthread_mutex_t lock;        /* slots, broken */
	pthread_cond_t slot_cv;      /* a slot became free */
	struct req slots[NSLOTS];
	uint32_t gen;
	atomic_bool broken;

	pthread_mutex_t cache_lock;
	pthread_cond_t space_cv;     /* a cache slot became free */
	int32_t *where;              /* per block: cache slot or -1 */
	uint8_t *delivered;          /* per block */
	char *cache;                 /* ncache * bs bytes */
	uint32_t *cache_free;        /* stack of free slots */
	uint32_t ncache, nfree;

	pthread_t drecv, brecv;
	bool brecv_started;
	atomic_bool push_asked, push_done, stopping;

	atomic_uint_fast64_t demand_reads, demand_bytes, cache_reads,
		pushed_blocks, pushed_dropped, bytes_received;
	atomic_uint_fast64_t hist[UPAGER_HIST_BUCKETS];
};

static int remote_read(void *ctx, void *buf, size_t len, uint64_t off);

static struct remote *remote_of(upager_store_t *s)
{
	if (!s || s->kind != UPAGER__STORE_CUSTOM || s->ops.read != remote_read)
		return NULL;
	return s->ctx;
}

/* ---- failure ---- */

static void mark_broken(struct remote *rm)
{
	pthread_mutex_lock(&rm->lock);
	if (!atomic_exchange(&rm->broken, true)) {
		shutdown(rm->dfd, SHUT_RDWR);
		shutdown(rm->bfd, SHUT_RDWR);
	}
	for (unsigned i = 0; i < NSLOTS; i++) {
		struct req *q = &rm->slots[i];
		if (q->state == SLOT_WAITING) {
			q->status = -EIO;
			q->state = SLOT_DONE;
			pthread_cond_signal(&q->cv);
		}
	}
	pthread_mutex_unlock(&rm->lock);
	pthread_mutex_lock(&rm->cache_lock);
	pthread_cond_broadcast(&rm->space_cv);
	pthread_mutex_unlock(&rm->cache_lock);
}

/* ---- demand side ---- */

static struct req *slot_take(struct remote *rm, void *buf, size_t len,
			     uint64_t off)
{
	pthread_mutex_lock(&rm->lock);
	for (;;) {
		if (atomic_load(&rm->broken)) {
			pthread_mutex_unlock(&rm->lock);
			return NULL;
		}
		for (unsigned i = 0; i < NSLOTS; i++) {
			struct req *q = &rm->slots[i];
			if (q->state != SLOT_FREE)
				continue;
			rm->gen++;
			q->id = (rm->gen << 8) | i;
			if (q->id == 0)
				q->id = (++rm->gen << 8) | i;
			q->state = SLOT_WAITING;
			q->buf = buf;
			q->len = len;
			q->offset = off;
			q->status = 0;
			pthread_mutex_unlock(&rm->lock);
			return q;
		}
		pthread_cond_wait(&rm->slot_cv, &rm->lock);
	}
}

/* Waits for q to complete; frees it. Returns its status. */
static int slot_wait(struct remote *rm, struct req *q)
{
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += rm->timeout_ms / 1000;
	dl.tv_nsec += (long)(rm->timeout_ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	bool timed_out = false;
	pthread_mutex_lock(&rm->lock);
	while (q->state != SLOT_DONE) {
		if (!timed_out && pthread_cond_timedwait(&q->cv, &rm->lock, &dl)
				  == ETIMEDOUT) {
			/* The peer is gone or hung: fail everything. The
			 * receiver may be writing into our buffer, so wait
			 * for it to give the slot back. */
			timed_out = true;
			pthread_mutex_unlock(&rm->lock);
			mark_broken(rm);
			pthread_mutex_lock(&rm->lock);
		} else if (timed_out) {
			pthread_cond_wait(&q->cv, &rm->lock);
		}
	}
	int rc = q->status;
	q->state = SLOT_FREE;
	pthread_cond_signal(&rm->slot_cv);
	pthread_mutex_unlock(&rm->lock);
	return rc;
}

static int demand_fetch(struct remote *rm, void *buf, size_t len,
			uint64_t off)
{
	struct req *q = slot_take(rm, buf, len, off);
	if (!q)
		return -EIO;
	uint64_t t0 = upager__now_ns();
	struct upager__rp_hdr h = {
		.type = RP_READ, .id = q->id, .offset = off, .arg = len,
	};
	pthread_mutex_lock(&rm->send_lock);
	int rc = upager__rp_send(rm->dfd, &h, NULL);
	pthread_mutex_unlock(&rm->send_lock);
	if (rc) {
		mark_broken(rm);
		slot_wait(rm, q);
		return -EIO;
	}
	rc = slot_wait(rm, q);
	if (rc == 0) {
		uint64_t us = (upager__now_ns() - t0) / 1000;
		unsigned b = 0;
		while (b + 1 < UPAGER_HIST_BUCKETS && (2ull << b) <= us)
			b++;
		atomic_fetch_add(&rm->hist[us < 2 ? 0 : b], 1);
		atomic_fetch_add(&rm->demand_reads, 1);
		atomic_fetch_add(&rm->demand_bytes, len);
	}
	return rc;
}

/* Finds the waiting slot for a DATA or ERROR frame, or NULL. */
static struct req *slot_claim(struct remote *rm, const struct upager__rp_hdr *h)
{
	struct req *q = &rm->slots[h->id & (NSLOTS - 1)];
	pthread_mutex_lock(&rm->lock);
	if (q->state != SLOT_WAITING || q->id != h->id) {
		pthread_mutex_unlock(&rm->lock);
		return NULL;
	}
	q->state = SLOT_RECEIVING;
	pthread_mutex_unlock(&rm->lock);
	return q;
}

static void slot_finish(struct remote *rm, struct req *q, int status)
{
	pthread_mutex_lock(&rm->lock);
	q->status = status;
	q->state = SLOT_DONE;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&rm->lock);
}

static int on_data(struct remote *rm, const struct upager__rp_hdr *h)
{
	struct req *q = slot_claim(rm, h);
	if (!q) /* the reader timed out and left: drop the payload */
		return upager__rp_skip(rm->dfd, h->len);
	if (h->offset != q->offset || h->len != q->len) {
		slot_finish(rm, q, -EIO);
		return -EPROTO;
	}
	int rc = upager__rp_read_full(rm->dfd, q->buf, h->len);
	slot_finish(rm, q, rc ? -EIO : 0);
	atomic_fetch_add(&rm->bytes_received, h->len);
	return rc;
}

static int on_error(struct remote *rm, const struct upager__rp_hdr *h)
{
	int rc = upager__rp_skip(rm->dfd, h->len);
	if (h->id == 0)
		return -EPROTO;
	struct req *q = slot_claim(rm, h);
	if (q)
		slot_finish(rm, q, -EIO);
	return rc;
}

static void *demand_main(void *arg)
{
	struct remote *rm = arg;
	for (;;) {
		struct upager__rp_hdr h;
		int rc = upager__rp_recv_hdr(rm->dfd, &h);
		if (!rc && h.type == RP_DATA)
			rc = on_data(rm, &h);
		else if (!rc && h.type == RP_ERROR)
			rc = on_error(rm, &h);
		else if (!rc)
			rc = -EPROTO;
		if (rc)
			break;
	}
	mark_broken(rm);
	return NULL;
}

/* ---- the push cache ---- */

static void cache_drop_locked(struct remote *rm, uint64_t b)
{
	int32_t slot = rm->where[b];
	if (slot < 0)
		return;
	rm->where[b] = -1;
	rm->cache_free[rm->nfree++] = (uint32_t)slot;
	pthread_cond_signal(&rm->space_cv);
}

/* Serves [off, off + len) from the cache if every block is there. */
static bool cache_read(struct remote *rm, char *buf, size_t len, uint64_t off)
{
	uint64_t first = off >> rm->bs_shift;
	uint64_t last = (off + len - 1) >> rm->bs_shift;
	pthread_mutex_lock(&rm->cache_lock);
	for (uint64_t b = first; b <= last; b++) {
		if (rm->where[b] < 0) {
			pthread_mutex_unlock(&rm->cache_lock);
			return false;
		}
	}
	for (uint64_t b = first; b <= last; b++) {
		uint64_t bstart = b << rm->bs_shift;
		uint64_t from = off > bstart ? off : bstart;
		uint64_t to = bstart + rm->bs;
		if (to > off + len)
			to = off + len;
		memcpy(buf + (from - off),
		       rm->cache + ((size_t)rm->where[b] << rm->bs_shift) +
			       (from - bstart),
		       to - from);
		rm->delivered[b] = 1;
		cache_drop_locked(rm, b);
	}
	pthread_mutex_unlock(&rm->cache_lock);
	return true;
}

static void mark_delivered(struct remote *rm, size_t len, uint64_t off)
{
	uint64_t first = off >> rm->bs_shift;
	uint64_t last = (off + len - 1) >> rm->bs_shift;
	pthread_mutex_lock(&rm->cache_lock);
	for (uint64_t b = first; b <= last; b++) {
		rm->delivered[b] = 1;
		cache_drop_locked(rm, b);
	}
	pthread_mutex_unlock(&rm->cache_lock);
}

static int remote_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct remote *rm = ctx;
	if (len == 0)
		return 0;
	if (off >= rm->size || len > rm->size - off)
		return -EINVAL;
	if (atomic_load(&rm->broken))
		return -EIO;
	if (cache_read(rm, buf, len, off)) {
		atomic_fetch_add(&rm->cache_reads, 1);
		return 0;
	}
	for (size_t done = 0; done < len;) {
		size_t n = len - done;
		if (n > UPAGER__RP_MAX_DATA)
			n = UPAGER__RP_MAX_DATA;
		int rc = demand_fetch(rm, (char *)buf + done, n, off + done);
		if (rc)
			return rc;
		done += n;
	}
	mark_delivered(rm, len, off);
	return 0;
}

/* ---- bulk side ---- */

/* Takes a free cache slot for block b, waiting for room. Returns the slot,
 * -1 to drop the block (already delivered or cached), -2 to stop. */
static int64_t cache_reserve(struct remote *rm, uint64_t b)
{
	pthread_mutex_lock(&rm->cache_lock);
	while (!rm->nfree && !rm->delivered[b] && !atomic_load(&rm->stopping) &&
	       !atomic_load(&rm->broken))
		pthread_cond_wait(&rm->space_cv, &rm->cache_lock);
	int64_t slot;
	if (atomic_load(&rm->stopping) || atomic_load(&rm->broken))
		slot = -2;
	else if (rm->delivered[b] || rm->where[b] >= 0)
		slot = -1;
	else
		slot = rm->cache_free[--rm->nfree];
	pthread_mutex_unlock(&rm->cache_lock);
	return slot;
}

/* Publishes slot as block b's copy, unless a read delivered b meanwhile. */
static bool cache_publish(struct remote *rm, uint64_t b, uint32_t slot)
{
	pthread_mutex_lock(&rm->cache_lock);
	bool ok = !rm->delivered[b];
	if (ok)
		rm->where[b] = (int32_t)slot;
	else
		rm->cache_free[rm->nfree++] = slot;
	pthread_mutex_unlock(&rm->cache_lock);
	return ok;
}

static int on_push(struct remote *rm, const struct upager__rp_hdr *h)
{
	uint64_t b = h->offset >> rm->bs_shift;
	if ((h->offset & (rm->bs - 1)) || b >= rm->nblocks ||
	    h->len > rm->bs || h->len > rm->size - h->offset)
		return -EPROTO;
	atomic_fetch_add(&rm->pushed_blocks, 1);
	atomic_fetch_add(&rm->bytes_received, h->len);
	int64_t slot = cache_reserve(rm, b);
	if (slot == -2)
		return -ECANCELED;
	if (slot == -1) {
		atomic_fetch_add(&rm->pushed_dropped, 1);
		return upager__rp_skip(rm->bfd, h->len);
	}
	char *dst = rm->cache + ((size_t)slot << rm->bs_shift);
	int rc = upager__rp_read_full(rm->bfd, dst, h->len);
	if (rc) { /* give the slot back; demand reads still work */
		pthread_mutex_lock(&rm->cache_lock);
		rm->cache_free[rm->nfree++] = (uint32_t)slot;
		pthread_mutex_unlock(&rm->cache_lock);
		return rc;
	}
	if (!cache_publish(rm, b, (uint32_t)slot)) {
		atomic_fetch_add(&rm->pushed_dropped, 1);
		return 0;
	}
	if (rm->on_pushed)
		rm->on_pushed(rm->arg, h->offset, h->len);
	return 0;
}

static void *bulk_main(void *arg)
{
	struct remote *rm = arg;
	for (;;) {
		struct upager__rp_hdr h;
		int rc = upager__rp_recv_hdr(rm->bfd, &h);
		if (!rc && h.type == RP_PUSH) {
			rc = on_push(rm, &h);
		} else if (!rc && h.type == RP_PUSH_DONE) {
			atomic_store(&rm->push_done, true);
			break;
		} else if (!rc) {
			rc = -EPROTO;
		}
		if (rc)
			break;
	}
	return NULL;
}

/* ---- set-up ---- */

static int dial(const char *host, const char *port, unsigned timeout_ms)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	};
	struct addrinfo *ai;
	int g = getaddrinfo(host, port, &hints, &ai);
	if (g)
		return g == EAI_SYSTEM ? -errno : -ENOENT;
	int rc = -EHOSTUNREACH;
	for (struct addrinfo *a = ai; a; a = a->ai_next) {
		int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC,
				a->ai_protocol);
		if (fd < 0) {
			rc = -errno;
			continue;
		}
		unsigned to = timeout_ms;
		setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &to, sizeof(to));
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
			freeaddrinfo(ai);
			return fd;
		}
		rc = -errno;
		close(fd);
	}
	freeaddrinfo(ai);
	return rc;
}

/* HELLO -> WELCOME on one connection; fills size and block size. */
static int greet(int fd, uint64_t token, uint32_t channel, uint64_t *size,
		 uint64_t *bs)
{
	uint8_t p[UPAGER__RP_HELLO_LEN];
	struct upager__rp_hello m = { .token = token, .channel = channel };
	upager__rp_encode_hello(&m, p);
	struct upager__rp_hdr h = { .type = RP_HELLO, .len = sizeof(p) };
	int rc = upager__rp_send(fd, &h, p);
	if (rc)
		return rc;
	rc = upager__rp_recv_hdr(fd, &h);
	if (rc == -EPROTONOSUPPORT)
		return rc;
	if (rc || h.type != RP_WELCOME) {
		if (!rc && h.type == RP_ERROR && h.arg == EPROTONOSUPPORT)
			return -EPROTONOSUPPORT;
		return rc == -EPIPE || rc == -ECONNRESET ? rc : -EPROTO;
	}
	if (h.offset == 0)
		return -EPROTO;
	*size = h.offset;
	*bs = h.arg;
	return 0;
}

static int cache_init(struct remote *rm, size_t cache_bytes)
{
	rm->ncache = (uint32_t)(cache_bytes / rm->bs);
	if (rm->ncache < 4)
		rm->ncache = 4;
	rm->where = malloc(rm->nblocks * sizeof(*rm->where));
	rm->delivered = calloc(rm->nblocks, 1);
	rm->cache_free = malloc(rm->ncache * sizeof(*rm->cache_free));
	rm->cache = mmap(NULL, (size_t)rm->ncache * rm->bs,
			 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	if (rm->cache == MAP_FAILED)
		rm->cache = NULL;
	if (!rm->where || !rm->delivered || !rm->cache_free || !rm->cache)
		return -ENOMEM;
	for (uint64_t b = 0; b < rm->nblocks; b++)
		rm->where[b] = -1;
	for (uint32_t i = 0; i < rm->ncache; i++)
		rm->cache_free[i] = rm->ncache - 1 - i;
	rm->nfree = rm->ncache;
	return 0;
}

static void remote_free(struct remote *rm)
{
	if (rm->cache)
		munmap(rm->cache, (size_t)rm->ncache * rm->bs);
	free(rm->where);
	free(rm->delivered);
	free(rm->cache_free);
	if (rm->dfd >= 0)
		close(rm->dfd);
	if (rm->bfd >= 0)
		close(rm->bfd);
	for (unsigned i = 0; i < NSLOTS; i++)
		pthread_cond_destroy(&rm->slots[i].cv);
	pthread_cond_destroy(&rm->slot_cv);
	pthread_cond_destroy(&rm->space_cv);
	pthread_mutex_destroy(&rm->lock);
	pthread_mutex_destroy(&rm->send_lock);
	pthread_mutex_destroy(&rm->cache_lock);
	free(rm);
}

static void remote_release(void *ctx)
{
	struct remote *rm = ctx;
	atomic_store(&rm->stopping, true);
	shutdown(rm->dfd, SHUT_RDWR);
	shutdown(rm->bfd, SHUT_RDWR);
	pthread_mutex_lock(&rm->cache_lock);
	pthread_cond_broadcast(&rm->space_cv);
	pthread_mutex_unlock(&rm->cache_lock);
	pthread_join(rm->drecv, NULL);
	if (rm->brecv_started)
		pthread_join(rm->brecv, NULL);
	remote_free(rm);
}

static int remote_size(void *ctx, uint64_t *size)
{
	*size = ((struct remote *)ctx)->size;
	return 0;
}

static struct remote *remote_alloc(const struct upager_remote_opts *o)
{
	struct remote *rm = calloc(1, sizeof(*rm));
	if (!rm)
		return NULL;
	rm->dfd = rm->bfd = -1;
	rm->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	rm->on_pushed = o->on_pushed;
	rm->arg = o->arg;
	pthread_mutex_init(&rm->lock, NULL);
	pthread_mutex_init(&rm->send_lock, NULL);
	pthread_mutex_init(&rm->cache_lock, NULL);
	pthread_cond_init(&rm->slot_cv, NULL);
	pthread_cond_init(&rm->space_cv, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	for (unsigned i = 0; i < NSLOTS; i++)
		pthread_cond_init(&rm->slots[i].cv, &ca);
	pthread_condattr_destroy(&ca);
	return rm;
}

static int connect_both(struct remote *rm, const char *host,
			const char *port)
{
	uint64_t token;
	if (getrandom(&token, sizeof(token), 0) != sizeof(token))
		token = upager__now_ns() ^ ((uint64_t)getpid() << 32);
	rm->dfd = dial(host, port, rm->timeout_ms);
	if (rm->dfd < 0)
		return rm->dfd;
	int one = 1;
	setsockopt(rm->dfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	rm->bfd = dial(host, port, rm->timeout_ms);
	if (rm->bfd < 0)
		return rm->bfd;
	uint64_t size, bs, size2, bs2;
	int rc = greet(rm->dfd, token, RP_CHAN_DEMAND, &size, &bs);
	if (!rc)
		rc = greet(rm->bfd, token, RP_CHAN_BULK, &size2, &bs2);
	if (rc)
		return rc;
	if (size != size2 || bs != bs2)
		return -EPROTO;
	rm->size = size;
	rm->bs = (size_t)bs;
	rm->bs_shift = (unsigned)__builtin_ctzll(bs);
	rm->nblocks = (size + bs - 1) / bs;
	return 0;
}

int upager_store_remote(const char *host, const char *port,
			const struct upager_remote_opts *opts,
			upager_store_t **out)
{
	struct upager_remote_opts o = { 0 };
	if (opts)
		o = *opts;
	if (!host || !port || !out || o.flags)
		return -EINVAL;
	struct remote *rm = remote_alloc(&o);
	if (!rm)
		return -ENOMEM;
	int rc = connect_both(rm, host, port);
	if (rc)
		goto fail;
	rc = cache_init(rm, o.cache_bytes ? o.cache_bytes : DEFAULT_CACHE);
	if (rc)
		goto fail;
	rc = -pthread_create(&rm->drecv, NULL, demand_main, rm);
	if (rc)
		goto fail;
	struct upager_store_ops ops = {
		.read = remote_read, .size = remote_size,
		.release = remote_release,
	};
	rc = upager_store_custom(&ops, rm, out);
	if (rc)
		goto fail_store;
	return 0;

fail_store:
	shutdown(rm->dfd, SHUT_RDWR);
	pthread_join(rm->drecv, NULL);
fail:
	remote_free(rm);
	return rc;
}

int upager_store_remote_push(upager_store_t *s)
{
	struct remote *rm = remote_of(s);
	if (!rm)
		return -EINVAL;
	if (atomic_load(&rm->broken))
		return -EIO;
	if (atomic_exchange(&rm->push_asked, true))
		return 0;
	struct upager__rp_hdr h = { .type = RP_PUSH_START };
	int rc = upager__rp_send(rm->bfd, &h, NULL);
	if (rc)
		return -EIO;
	rc = -pthread_create(&rm->brecv, NULL, bulk_main, rm);
	if (rc)
		return rc;
	rm->brecv_started = true;
	return 0;
}

int upager_store_remote_read(upager_store_t *s, void *buf, size_t len,
			     uint64_t offset)
{
	struct remote *rm = remote_of(s);
	if (!rm || (!buf && len))
		return -EINVAL;
	return remote_read(rm, buf, len, offset);
}

int upager_store_remote_stats(upager_store_t *s,
			      struct upager_remote_stats *out)
{
	struct remote *rm = remote_of(s);
	if (!rm || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->size = rm->size;
	out->block_size = rm->bs;
	out->demand_reads = atomic_load(&rm->demand_reads);
	out->demand_bytes = atomic_load(&rm->demand_bytes);
	out->cache_reads = atomic_load(&rm->cache_reads);
	out->pushed_blocks = atomic_load(&rm->pushed_blocks);
	out->pushed_dropped = atomic_load(&rm->pushed_dropped);
	out->bytes_received = atomic_load(&rm->bytes_received);
	for (unsigned i = 0; i < UPAGER_HIST_BUCKETS; i++)
		out->demand_us_hist[i] = atomic_load(&rm->hist[i]);
	pthread_mutex_lock(&rm->cache_lock);
	out->cache_blocks = rm->ncache - rm->nfree;
	pthread_mutex_unlock(&rm->cache_lock);
	out->push_done = atomic_load(&rm->push_done);
	out->broken = atomic_load(&rm->broken);
	return 0;
}
