/*
 * remote_proto.c - encode, decode and validate remote page protocol frames;
 * blocking whole-buffer socket I/O for both ends.
 *
 * Pure functions except for the I/O helpers at the end; no shared state,
 * safe from any thread. The validation rules here are the ones
 * docs/protocol.md lists per frame type.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "remote_proto.h"

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

void upager__rp_encode(const struct upager__rp_hdr *h,
		       uint8_t out[UPAGER__RP_HDR])
{
	put32(out, UPAGER__RP_MAGIC);
	put16(out + 4, UPAGER__RP_VERSION);
	put16(out + 6, h->type);
	put32(out + 8, h->id);
	put32(out + 12, h->len);
	put64(out + 16, h->offset);
	put64(out + 24, h->arg);
}

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* Per-type rules; see docs/protocol.md. */
static int check_fields(const struct upager__rp_hdr *h)
{
	switch (h->type) {
	case RP_HELLO:
		return (h->len == UPAGER__RP_HELLO_LEN && h->id == 0 &&
			h->offset == 0 && h->arg == 0) ? 0 : -EBADMSG;
	case RP_WELCOME:
		return (h->len == 0 && h->id == 0 &&
			is_pow2(h->arg) && h->arg >= UPAGER__RP_BLOCK_MIN &&
			h->arg <= UPAGER__RP_BLOCK_MAX) ? 0 : -EBADMSG;
	case RP_ERROR:
		return (h->len <= UPAGER__RP_MAX_TEXT && h->offset == 0 &&
			h->arg >= 1 && h->arg <= 4095) ? 0 : -EBADMSG;
	case RP_READ:
		return (h->len == 0 && h->id != 0 && h->arg >= 1 &&
			h->arg <= UPAGER__RP_MAX_DATA &&
			h->offset <= UINT64_MAX - h->arg) ? 0 : -EBADMSG;
	case RP_DATA:
		return (h->id != 0 && h->len >= 1 &&
			h->len <= UPAGER__RP_MAX_DATA && h->arg == 0 &&
			h->offset <= UINT64_MAX - h->len) ? 0 : -EBADMSG;
	case RP_PUSH_START:
	case RP_PUSH_DONE:
		return (h->len == 0 && h->id == 0 && h->offset == 0 &&
			h->arg == 0) ? 0 : -EBADMSG;
	case RP_PUSH:
		return (h->id == 0 && h->len >= 1 &&
			h->len <= UPAGER__RP_BLOCK_MAX && h->arg == 0 &&
			h->offset <= UINT64_MAX - h->len) ? 0 : -EBADMSG;
	default:
		return -EBADMSG;
	}
}

int upager__rp_decode(const uint8_t in[UPAGER__RP_HDR],
		      struct upager__rp_hdr *h)
{
	if (get32(in) != UPAGER__RP_MAGIC)
		return -EBADMSG;
	h->version = get16(in + 4);
	h->type = get16(in + 6);
	h->id = get32(in + 8);
	h->len = get32(in + 12);
	h->offset = get64(in + 16);
	h->arg = get64(in + 24);
	if (h->version != UPAGER__RP_VERSION)
		return -EPROTONOSUPPORT;
	return check_fields(h);
}

void upager__rp_encode_hello(const struct upager__rp_hello *m,
			     uint8_t out[UPAGER__RP_HELLO_LEN])
{
	put64(out, m->token);
	put32(out + 8, m->channel);
	put32(out + 12, m->flags);
}

int upager__rp_decode_hello(const uint8_t *in, size_t n,
			    struct upager__rp_hello *m)
{
	if (n != UPAGER__RP_HELLO_LEN)
		return -EBADMSG;
	m->token = get64(in);
	m->channel = get32(in + 8);
	m->flags = get32(in + 12);
	if (m->channel != RP_CHAN_DEMAND && m->channel != RP_CHAN_BULK)
		return -EBADMSG;
	return m->flags ? -EBADMSG : 0;
}

int upager__rp_check_text(const uint8_t *in, size_t n)
{
	if (n > UPAGER__RP_MAX_TEXT)
		return -EBADMSG;
	for (size_t i = 0; i < n; i++)
		if (in[i] < 0x20 || in[i] > 0x7e)
			return -EBADMSG;
	return 0;
}

int upager__rp_parse_stream(const uint8_t *buf, size_t n)
{
	int frames = 0;
	size_t pos = 0;
	while (n - pos >= UPAGER__RP_HDR) {
		struct upager__rp_hdr h;
		int rc = upager__rp_decode(buf + pos, &h);
		if (rc)
			return rc;
		pos += UPAGER__RP_HDR;
		if (n - pos < h.len)
			break;
		if (h.type == RP_HELLO) {
			struct upager__rp_hello m;
			rc = upager__rp_decode_hello(buf + pos, h.len, &m);
		} else if (h.type == RP_ERROR) {
			rc = upager__rp_check_text(buf + pos, h.len);
		}
		if (rc)
			return rc;
		pos += h.len;
		if (frames == INT32_MAX)
			break;
		frames++;
	}
	return frames;
}

/* ---- socket I/O ---- */

int upager__rp_read_full(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n) {
		ssize_t k = recv(fd, p, n, MSG_WAITALL);
		if (k == 0)
			return -EPIPE;
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int upager__rp_send_iov(int fd, struct iovec *iov, int cnt)
{
	while (cnt) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)cnt };
		ssize_t k = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		size_t left = (size_t)k;
		while (cnt && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (char *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

int upager__rp_write_full(int fd, const void *buf, size_t n)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = n };
	return upager__rp_send_iov(fd, &iov, 1);
}

int upager__rp_send(int fd, const struct upager__rp_hdr *h,
		    const void *payload)
{
	uint8_t hdr[UPAGER__RP_HDR];
	upager__rp_encode(h, hdr);
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = (void *)payload, .iov_len = h->len },
	};
	return upager__rp_send_iov(fd, iov, h->len ? 2 : 1);
}

int upager__rp_recv_hdr(int fd, struct upager__rp_hdr *h)
{
	uint8_t hdr[UPAGER__RP_HDR];
	int rc = upager__rp_read_full(fd, hdr, sizeof(hdr));
	if (rc)
		return rc;
	return upager__rp_decode(hdr, h);
}

int upager__rp_skip(int fd, size_t n)
{
	char trash[4096];
	while (n) {
		size_t k = n < sizeof(trash) ? n : sizeof(trash);
		int rc = upager__rp_read_full(fd, trash, k);
		if (rc)
			return rc;
		n -= k;
	}
	return 0;
}

void upager__rp_send_error(int fd, uint32_t id, int err, const char *text)
{
	size_t n = strnlen(text, UPAGER__RP_MAX_TEXT);
	struct upager__rp_hdr h = {
		.type = RP_ERROR, .id = id, .len = (uint32_t)n,
		.arg = (uint64_t)(err < 0 ? -err : err),
	};
	(void)upager__rp_send(fd, &h, text);
}
