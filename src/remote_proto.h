/*
 * remote_proto.h - the remote page protocol: frame codec and socket I/O.
 *
 * Shared by the remote store (store_remote.c, the client) and the page
 * server (page_server.c). docs/protocol.md ("Remote page protocol") is the
 * specification; this file and remote_proto.c must agree with it.
 *
 * Every frame is a 32-byte little-endian header, followed by `len` bytes
 * of payload. upager__rp_decode() validates every header field for the
 * frame's type before anyone acts on it, so a peer can never make us read
 * an unbounded payload, a READ past the end of the address space, or a
 * frame type we do not know. It is the function the fuzz target drives.
 */
#ifndef UPAGER_REMOTE_PROTO_H
#define UPAGER_REMOTE_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "internal.h"

#define UPAGER__RP_MAGIC 0x50525055u /* "UPRP" in little-endian order */
#define UPAGER__RP_VERSION 1u
#define UPAGER__RP_HDR 32u
#define UPAGER__RP_HELLO_LEN 16u
#define UPAGER__RP_MAX_DATA (4u << 20)  /* largest READ / DATA / PUSH */
#define UPAGER__RP_MAX_TEXT 256u        /* largest ERROR text */
#define UPAGER__RP_BLOCK_MIN 4096u
#define UPAGER__RP_BLOCK_MAX (2u << 20)

enum upager__rp_type {
	RP_HELLO = 1,      /* c->s: payload = struct upager__rp_hello */
	RP_WELCOME = 2,    /* s->c: offset = store size, arg = block size */
	RP_ERROR = 3,      /* either way: arg = errno, payload = text */
	RP_READ = 4,       /* c->s (demand): id, offset, arg = length */
	RP_DATA = 5,       /* s->c (demand): id, offset, payload */
	RP_PUSH_START = 6, /* c->s (bulk): start the background stream */
	RP_PUSH = 7,       /* s->c (bulk): offset, payload (one block) */
	RP_PUSH_DONE = 8,  /* s->c (bulk): every block was pushed */
	RP_TYPE_MAX = 8,
};

enum upager__rp_channel {
	RP_CHAN_DEMAND = 1,
	RP_CHAN_BULK = 2,
};

struct upager__rp_hdr {
	uint16_t version;
	uint16_t type;
	uint32_t id;
	uint32_t len;
	uint64_t offset;
	uint64_t arg;
};

struct upager__rp_hello {
	uint64_t token;   /* ties a client's two connections together */
	uint32_t channel; /* RP_CHAN_* */
	uint32_t flags;   /* must be 0 in version 1 */
};

/* Writes h (with magic and our version, whatever h->version says) to out. */
void upager__rp_encode(const struct upager__rp_hdr *h,
		       uint8_t out[UPAGER__RP_HDR]) UPAGER__HIDDEN;

/* Decodes and validates a header. Returns 0; -EBADMSG (bad magic, unknown
 * type, a field out of range for the type); -EPROTONOSUPPORT (good magic,
 * other version: h->version tells which). */
int upager__rp_decode(const uint8_t in[UPAGER__RP_HDR],
		      struct upager__rp_hdr *h) UPAGER__HIDDEN;

void upager__rp_encode_hello(const struct upager__rp_hello *m,
			     uint8_t out[UPAGER__RP_HELLO_LEN]) UPAGER__HIDDEN;
/* Returns 0 or -EBADMSG (wrong length, unknown channel, flags set). */
int upager__rp_decode_hello(const uint8_t *in, size_t n,
			    struct upager__rp_hello *m) UPAGER__HIDDEN;

/* Validates an ERROR payload: printable ASCII only. 0 or -EBADMSG. */
int upager__rp_check_text(const uint8_t *in, size_t n) UPAGER__HIDDEN;

/* Validates a byte stream of whole frames (header then payload), as a
 * receiver would: returns the number of valid frames, or a negative errno
 * at the first invalid one. A truncated last frame stops the walk without
 * error. Used by the fuzz target and the parser regression test. */
int upager__rp_parse_stream(const uint8_t *buf, size_t n) UPAGER__HIDDEN;

/* ---- socket I/O: whole buffers, -errno, never SIGPIPE ---- */

/* Returns 0, -EPIPE on end of stream, or -errno. */
int upager__rp_read_full(int fd, void *buf, size_t n) UPAGER__HIDDEN;
int upager__rp_write_full(int fd, const void *buf, size_t n) UPAGER__HIDDEN;
/* Sends all of @cnt buffers (advancing @iov as it goes), retrying after
 * EINTR and short sends, without SIGPIPE. Returns 0 or -errno. */
int upager__rp_send_iov(int fd, struct iovec *iov, int cnt) UPAGER__HIDDEN;
/* Sends a header and its payload (h->len bytes, may be NULL if 0). */
int upager__rp_send(int fd, const struct upager__rp_hdr *h,
		    const void *payload) UPAGER__HIDDEN;
/* Receives and validates a header (payload left in the socket). */
int upager__rp_recv_hdr(int fd, struct upager__rp_hdr *h) UPAGER__HIDDEN;
/* Reads and discards n payload bytes. */
int upager__rp_skip(int fd, size_t n) UPAGER__HIDDEN;
/* Sends an ERROR frame with a text (best effort). */
void upager__rp_send_error(int fd, uint32_t id, int err,
			   const char *text) UPAGER__HIDDEN;

#endif /* UPAGER_REMOTE_PROTO_H */
