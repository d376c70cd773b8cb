/*
 * proto.c - encode, decode and validate upagerd protocol records, move
 * them over a UNIX socket with descriptors attached, and parse
 * Firecracker's handshake. See proto.h and docs/protocol.md.
 *
 * No state, no allocation, no locks: every function is safe to call from
 * any thread. Records are read field by field with memcpy, so a buffer
 * need not be aligned.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto.h"

#define HDR_LEN 16u
#define MAX_READAHEAD (1ull << 30)

/* Fixed body sizes of requests, and of the common reply prefix. */
#define BODY_HELLO 8u
#define BODY_MAP 40u
#define BODY_UNMAP 8u
#define BODY_ADVISE 24u
#define BODY_STATS 0u
#define BODY_LIST 8u
#define BODY_REPLY 8u
#define BODY_LIST_HEAD 8u

static bool pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* ---- little writers and readers ---- */

struct wr {
	uint8_t *p;
	size_t n;
};

static void put(struct wr *w, const void *v, size_t n)
{
	memcpy(w->p + w->n, v, n);
	w->n += n;
}

static void put32(struct wr *w, uint32_t v) { put(w, &v, 4); }
static void put64(struct wr *w, uint64_t v) { put(w, &v, 8); }

static void begin(struct wr *w, void *buf, uint16_t type, uint32_t seq)
{
	w->p = buf;
	w->n = 0;
	struct upager__hdr h = {
		.magic = UPAGER_PROTO_MAGIC, .version = UPAGER_PROTO_VERSION,
		.type = type, .length = 0, .seq = seq,
	};
	put(w, &h, sizeof(h));
}

static size_t finish(struct wr *w)
{
	uint32_t len = (uint32_t)w->n;
	memcpy(w->p + offsetof(struct upager__hdr, length), &len, 4);
	return w->n;
}

static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- encoders ---- */

size_t upager__enc_hello(void *buf, uint32_t seq, uint32_t role)
{
	struct wr w;
	begin(&w, buf, UPAGER_MSG_HELLO, seq);
	put32(&w, role);
	put32(&w, 0);
	return finish(&w);
}

size_t upager__enc_map(void *buf, uint32_t seq, uint64_t base, uint64_t length,
		       uint64_t offset, uint64_t readahead, uint32_t page_size,
		       uint32_t flags)
{
	struct wr w;
	begin(&w, buf, UPAGER_MSG_MAP, seq);
	put64(&w, base);
	put64(&w, length);
	put64(&w, offset);
	put64(&w, readahead);
	put32(&w, page_size);
	put32(&w, flags);
	return finish(&w);
}

size_t upager__enc_unmap(void *buf, uint32_t seq, uint64_t base)
{
	struct wr w;
	begin(&w, buf, UPAGER_MSG_UNMAP, seq);
	put64(&w, base);
	return finish(&w);
}

size_t upager__enc_advise(void *buf, uint32_t seq, uint64_t addr, uint64_t len,
			  uint32_t advice)
{
	struct wr w;
	begin(&w, buf, UPAGER_MSG_ADVISE, seq);
	put64(&w, addr);
	put64(&w, len);
	put32(&w, advice);
	put32(&w, 0);
	return finish(&w);
}

size_t upager__enc_stats(void *buf, uint32_t seq)
{
	struct wr w;
	begin(&w, buf, UPAGER_MSG_STATS, seq);
	return finish(&w);
}

size_t upager__enc_list(void *buf, uint32_t seq, uint32_t first)
{
	struct wr w;
	begin(&w, buf, UPAGER_MSG_LIST, seq);
	put32(&w, first);
	put32(&w, 0);
	return finish(&w);
}

size_t upager__enc_reply(void *buf, uint16_t type, uint32_t seq,
			 int32_t status, const struct upager__wire_stats *st,
			 const struct upager__client_rec *recs, uint32_t count,
			 uint32_t total)
{
	struct wr w;
	begin(&w, buf, (uint16_t)(UPAGER_MSG_REPLY | type), seq);
	put32(&w, (uint32_t)status);
	put32(&w, type == UPAGER_MSG_HELLO ? UPAGER_PROTO_VERSION : 0);
	if (status == 0 && type == UPAGER_MSG_STATS && st)
		put(&w, st, sizeof(*st));
	if (status == 0 && type == UPAGER_MSG_LIST) {
		if (count > UPAGER_LIST_MAX)
			count = UPAGER_LIST_MAX;
		put32(&w, total);
		put32(&w, recs ? count : 0);
		if (recs)
			put(&w, recs, count * sizeof(*recs));
	}
	return finish(&w);
}

void upager__enc_set_version(void *buf, uint16_t version)
{
	memcpy((uint8_t *)buf + offsetof(struct upager__hdr, version), &version,
	       2);
}

/* ---- decoder ---- */

static int check_map(struct upager__msg *m)
{
	uint64_t base = m->u.map.base, len = m->u.map.length;
	uint32_t ps = m->u.map.page_size;
	if (!pow2(ps) || ps < UPAGER_PAGE_SIZE_MIN || ps > UPAGER_PAGE_SIZE_MAX)
		return -EINVAL;
	if (base == 0 || (base & (ps - 1)) || len == 0)
		return -EINVAL;
	if (base >= UPAGER_PROTO_ADDR_LIMIT || len > UPAGER_PROTO_ADDR_LIMIT)
		return -EINVAL;
	uint64_t span = (len + ps - 1) & ~(uint64_t)(ps - 1);
	if (span > UPAGER_PROTO_ADDR_LIMIT - base)
		return -EINVAL;
	if (m->u.map.offset + len < m->u.map.offset)
		return -EINVAL;
	if (m->u.map.readahead > MAX_READAHEAD)
		return -EINVAL;
	if (m->u.map.flags & ~UPAGER_MAPF_DIRECT)
		return -EINVAL;
	return 0;
}

static int check_advise(struct upager__msg *m)
{
	uint64_t a = m->u.advise.addr, n = m->u.advise.len;
	if (a == 0 || n == 0 || a >= UPAGER_PROTO_ADDR_LIMIT ||
	    n > UPAGER_PROTO_ADDR_LIMIT - a)
		return -EINVAL;
	if (m->u.advise.advice > UPAGER_ADV_DONTNEED)
		return -EINVAL;
	return 0;
}

static int decode_request(const uint8_t *b, size_t blen, struct upager__msg *m)
{
	switch (m->type) {
	case UPAGER_MSG_HELLO:
		if (blen != BODY_HELLO)
			return -EPROTO;
		m->u.hello.role = get32(b);
		m->u.hello.flags = get32(b + 4);
		if (m->u.hello.flags || (m->u.hello.role != UPAGER_ROLE_CLIENT &&
					 m->u.hello.role != UPAGER_ROLE_CONTROL))
			return -EINVAL;
		return 0;
	case UPAGER_MSG_MAP:
		if (blen != BODY_MAP)
			return -EPROTO;
		m->u.map.base = get64(b);
		m->u.map.length = get64(b + 8);
		m->u.map.offset = get64(b + 16);
		m->u.map.readahead = get64(b + 24);
		m->u.map.page_size = get32(b + 32);
		m->u.map.flags = get32(b + 36);
		return check_map(m);
	case UPAGER_MSG_UNMAP:
		if (blen != BODY_UNMAP)
			return -EPROTO;
		m->u.unmap.base = get64(b);
		if (m->u.unmap.base == 0 || (m->u.unmap.base & 4095) ||
		    m->u.unmap.base >= UPAGER_PROTO_ADDR_LIMIT)
			return -EINVAL;
		return 0;
	case UPAGER_MSG_ADVISE:
		if (blen != BODY_ADVISE)
			return -EPROTO;
		m->u.advise.addr = get64(b);
		m->u.advise.len = get64(b + 8);
		m->u.advise.advice = get32(b + 16);
		if (get32(b + 20))
			return -EINVAL;
		return check_advise(m);
	case UPAGER_MSG_STATS:
		return blen == BODY_STATS ? 0 : -EPROTO;
	case UPAGER_MSG_LIST:
		if (blen != BODY_LIST)
			return -EPROTO;
		m->u.list.first = get32(b);
		return get32(b + 4) || m->u.list.first > INT32_MAX ? -EINVAL : 0;
	default:
		return -EPROTO;
	}
}

static int decode_reply(const uint8_t *b, size_t blen, struct upager__msg *m)
{
	uint16_t req = m->type & (uint16_t)~UPAGER_MSG_REPLY;
	if (req < UPAGER_MSG_HELLO || req > UPAGER_MSG_LIST || blen < BODY_REPLY)
		return -EPROTO;
	m->u.reply.status = (int32_t)get32(b);
	m->u.reply.version = get32(b + 4);
	if (m->u.reply.status > 0 || m->u.reply.status < -4095)
		return -EPROTO;
	b += BODY_REPLY;
	blen -= BODY_REPLY;
	if (m->u.reply.status != 0 ||
	    (req != UPAGER_MSG_STATS && req != UPAGER_MSG_LIST))
		return blen == 0 ? 0 : -EPROTO;
	if (req == UPAGER_MSG_STATS) {
		if (blen != sizeof(m->u.reply.st))
			return -EPROTO;
		memcpy(&m->u.reply.st, b, blen);
		return 0;
	}
	if (blen < BODY_LIST_HEAD)
		return -EPROTO;
	m->u.reply.total = get32(b);
	m->u.reply.count = get32(b + 4);
	if (m->u.reply.count > UPAGER_LIST_MAX ||
	    m->u.reply.count > m->u.reply.total ||
	    blen - BODY_LIST_HEAD !=
		    m->u.reply.count * sizeof(struct upager__client_rec))
		return -EPROTO;
	m->u.reply.recs = b + BODY_LIST_HEAD;
	return 0;
}

int upager__proto_decode(const void *buf, size_t len, struct upager__msg *m)
{
	const uint8_t *b = buf;
	memset(m, 0, sizeof(*m));
	if (!buf || len < HDR_LEN || len > UPAGER_PROTO_MAX_MSG)
		return -EPROTO;
	struct upager__hdr h;
	memcpy(&h, b, sizeof(h));
	if (h.magic != UPAGER_PROTO_MAGIC)
		return -EPROTO;
	m->version = h.version;
	if (h.version != UPAGER_PROTO_VERSION || h.length != len)
		return -EPROTO;
	m->type = h.type;
	m->seq = h.seq;
	if (h.type & UPAGER_MSG_REPLY)
		return decode_reply(b + HDR_LEN, len - HDR_LEN, m);
	return decode_request(b + HDR_LEN, len - HDR_LEN, m);
}

/* ---- statistics ---- */

void upager__stats_to_wire(const struct upager_stats *in,
			   struct upager__wire_stats *out)
{
#define COPY_FIELD(f) out->f = in->f;
	memset(out, 0, sizeof(*out));
	UPAGER__WIRE_STATS_FIELDS(COPY_FIELD)
	memcpy(out->fault_us_hist, in->fault_us_hist, sizeof(out->fault_us_hist));
}

void upager__stats_from_wire(const struct upager__wire_stats *in,
			     struct upager_stats *out)
{
	memset(out, 0, sizeof(*out));
	UPAGER__WIRE_STATS_FIELDS(COPY_FIELD)
	memcpy(out->fault_us_hist, in->fault_us_hist, sizeof(out->fault_us_hist));
#undef COPY_FIELD
}

/* ---- transport ---- */

#define MAX_FDS 4u

int upager__proto_dial(const char *path, int timeout_s)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	struct timeval tv = { .tv_sec = timeout_s };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa))) {
		int rc = -errno;
		close(s);
		return rc;
	}
	return s;
}

int upager__proto_send(int sock, const void *buf, size_t len, const int *fds,
		       unsigned nfds)
{
	if (nfds > MAX_FDS)
		return -EINVAL;
	union {
		char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	for (;;) {
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (n >= 0)
			return (size_t)n == len ? 0 : -EMSGSIZE;
		if (errno != EINTR)
			return -errno;
	}
}

/* Collects the descriptors of every SCM_RIGHTS block: the first @maxfds
 * into @fds, the rest closed. */
static unsigned take_fds(struct msghdr *mh, int *fds, unsigned maxfds,
			 bool keep)
{
	unsigned n = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
			if (keep && n < maxfds)
				fds[n++] = fd;
			else
				close(fd);
		}
	}
	return n;
}

long upager__proto_recv(int sock, void *buf, size_t cap, int *fds,
			unsigned maxfds, unsigned *nfds)
{
	union {
		char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	*nfds = 0;
	ssize_t n;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	bool trunc = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
	*nfds = take_fds(&mh, fds, maxfds, !trunc);
	if (trunc)
		return -EMSGSIZE;
	return (long)n;
}

/* ---- Firecracker's JSON handshake ---- */

/* A tiny JSON reader, just enough for an array of flat objects whose
 * values we need are unsigned integers. Other values are skipped with a
 * depth limit. */
struct js {
	const char *s;
	size_t n, i;
	bool short_input; /* ran out of bytes (not a syntax error) */
};

static void ws(struct js *j)
{
	while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' ||
			       j->s[j->i] == '\n' || j->s[j->i] == '\r'))
		j->i++;
}

static int peek(struct js *j)
{
	ws(j);
	if (j->i >= j->n) {
		j->short_input = true;
		return -1;
	}
	return (unsigned char)j->s[j->i];
}

static bool eat(struct js *j, char c)
{
	if (peek(j) != c)
		return false;
	j->i++;
	return true;
}

/* A string without escapes of interest: copies up to cap-1 bytes. */
static bool str(struct js *j, char *out, size_t cap)
{
	if (!eat(j, '"'))
		return false;
	size_t k = 0;
	while (j->i < j->n) {
		char c = j->s[j->i++];
		if (c == '"') {
			if (out)
				out[k < cap ? k : cap - 1] = 0;
			return true;
		}
		if ((unsigned char)c < 0x20)
			return false;
		if (c == '\\') {
			if (j->i >= j->n)
				break;
			c = j->s[j->i++];
		}
		if (out && k + 1 < cap)
			out[k++] = c;
		else if (out)
			k = cap; /* too long: no key of ours */
	}
	j->short_input = true;
	return false;
}

static bool number(struct js *j, uint64_t *v)
{
	if (peek(j) < '0' || peek(j) > '9')
		return false;
	uint64_t x = 0;
	size_t start = j->i;
	while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9') {
		unsigned d = (unsigned)(j->s[j->i] - '0');
		if (x > (UINT64_MAX - d) / 10)
			return false;
		x = x * 10 + d;
		j->i++;
	}
	if (j->i >= j->n) {
		j->short_input = true;
		return false;
	}
	if (j->s[j->i] == '.' || j->s[j->i] == 'e' || j->s[j->i] == 'E')
		return false; /* not an integer */
	if (j->s[start] == '0' && j->i - start > 1)
		return false;
	*v = x;
	return true;
}

static bool skip_value(struct js *j, int depth);

static bool skip_container(struct js *j, char open, char close, int depth)
{
	if (!eat(j, open))
		return false;
	if (eat(j, close))
		return true;
	for (;;) {
		if (open == '{') {
			if (!str(j, NULL, 0) || !eat(j, ':'))
				return false;
		}
		if (!skip_value(j, depth + 1))
			return false;
		if (eat(j, close))
			return true;
		if (!eat(j, ','))
			return false;
	}
}

static bool literal(struct js *j, const char *w)
{
	size_t k = strlen(w);
	ws(j);
	size_t avail = j->n - j->i;
	if (avail < k) {
		if (memcmp(j->s + j->i, w, avail) == 0)
			j->short_input = true;
		return false;
	}
	if (memcmp(j->s + j->i, w, k))
		return false;
	j->i += k;
	return true;
}

static bool skip_value(struct js *j, int depth)
{
	if (depth > 16)
		return false;
	int c = peek(j);
	uint64_t v;
	switch (c) {
	case '"':
		return str(j, NULL, 0);
	case '{':
		return skip_container(j, '{', '}', depth);
	case '[':
		return skip_container(j, '[', ']', depth);
	case 't':
		return literal(j, "true");
	case 'f':
		return literal(j, "false");
	case 'n':
		return literal(j, "null");
	case '-':
		j->i++;
		return number(j, &v);
	default:
		return number(j, &v);
	}
}

enum { K_BASE = 1, K_SIZE = 2, K_OFF = 4, K_PS = 8 };

static bool region(struct js *j, struct upager__fc_region *r)
{
	unsigned seen = 0;
	if (!eat(j, '{'))
		return false;
	if (eat(j, '}'))
		return false; /* empty: fields missing */
	for (;;) {
		char key[32];
		if (!str(j, key, sizeof(key)) || !eat(j, ':'))
			return false;
		uint64_t *dst = NULL, scale = 1;
		unsigned bit = 0;
		if (!strcmp(key, "base_host_virt_addr"))
			dst = &r->base, bit = K_BASE;
		else if (!strcmp(key, "size"))
			dst = &r->size, bit = K_SIZE;
		else if (!strcmp(key, "offset"))
			dst = &r->offset, bit = K_OFF;
		else if (!strcmp(key, "page_size"))
			dst = &r->page_size, bit = K_PS;
		else if (!strcmp(key, "page_size_kib"))
			dst = &r->page_size, bit = K_PS, scale = 1024;
		if (dst) {
			uint64_t v;
			if ((seen & bit) || !number(j, &v) ||
			    v > UINT64_MAX / scale)
				return false;
			*dst = v * scale;
			seen |= bit;
		} else if (!skip_value(j, 1)) {
			return false;
		}
		if (eat(j, '}'))
			break;
		if (!eat(j, ','))
			return false;
	}
	return seen == (K_BASE | K_SIZE | K_OFF | K_PS);
}

static bool region_ok(const struct upager__fc_region *r)
{
	if (!pow2(r->page_size) || r->page_size < UPAGER_PAGE_SIZE_MIN ||
	    r->page_size > UPAGER_PAGE_SIZE_MAX)
		return false;
	if (r->base == 0 || (r->base & (r->page_size - 1)) || r->size == 0)
		return false;
	if (r->base >= UPAGER_PROTO_ADDR_LIMIT ||
	    r->size > UPAGER_PROTO_ADDR_LIMIT - r->base)
		return false;
	return r->offset + r->size >= r->offset;
}

static bool overlaps(const struct upager__fc_region *a,
		     const struct upager__fc_region *b)
{
	return a->base < b->base + b->size && b->base < a->base + a->size;
}

int upager__fc_parse(const char *json, size_t len,
		     struct upager__fc_region *out, unsigned max, unsigned *n)
{
	struct js j = { .s = json, .n = len, .i = 0 };
	unsigned k = 0;
	*n = 0;
	if (!json || len > UPAGER_FC_MAX_JSON)
		return -EINVAL;
	if (!eat(&j, '['))
		goto bad;
	if (eat(&j, ']'))
		return -EINVAL; /* no regions: nothing to serve */
	for (;;) {
		struct upager__fc_region r = { 0 };
		if (k == max || !region(&j, &r))
			goto bad;
		if (!region_ok(&r))
			return -EINVAL;
		for (unsigned i = 0; i < k; i++)
			if (overlaps(&out[i], &r))
				return -EINVAL;
		out[k++] = r;
		if (eat(&j, ']'))
			break;
		if (!eat(&j, ','))
			goto bad;
	}
	ws(&j);
	/* Trailing NULs are tolerated (fixed-size sender buffers). */
	while (j.i < j.n && j.s[j.i] == 0)
		j.i++;
	if (j.i != j.n)
		return -EINVAL;
	*n = k;
	return 0;
bad:
	return j.short_input ? 1 : -EINVAL;
}
