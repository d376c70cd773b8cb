/*
 * proto.h - the upagerd wire protocol: message layouts, encoding,
 * decoding and validation, shared by the client library (client.c) and
 * the daemon (daemon/upagerd.c compiles proto.c into itself).
 *
 * docs/protocol.md ("Daemon protocol") is the specification; this file is
 * its implementation. Every message is one SOCK_SEQPACKET record: a fixed
 * 16-byte header, then a body whose length is fixed per type (LIST replies
 * carry a counted array). Integers are in host byte order: both ends run
 * on one machine. The header's magic and version fields keep their place
 * in every version, so each side can always tell which version the other
 * speaks and refuse it clearly.
 *
 * The decoder trusts nothing: lengths, counts, flags, alignment and
 * overflow are checked before a field is used. It never allocates and
 * never reads past the buffer it was given (fuzzed by tests/fuzz_proto.c).
 *
 * Also here: the parser of Firecracker's page-fault handler handshake (a
 * JSON array of guest memory regions), used by upagerd's Firecracker mode.
 */
#ifndef UPAGER_PROTO_H
#define UPAGER_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "upager.h"

#ifndef UPAGER__HIDDEN
#define UPAGER__HIDDEN __attribute__((visibility("hidden")))
#endif

#define UPAGER_PROTO_MAGIC 0x44475055u /* "UPGD" in memory order */
#define UPAGER_PROTO_VERSION 1u
#define UPAGER_PROTO_MAX_MSG 65536u /* largest record either side sends */

enum upager__msg_type {
	UPAGER_MSG_HELLO = 1,  /* client -> daemon: role; fd: the uffd */
	UPAGER_MSG_MAP = 2,    /* client -> daemon: a region; fd: its file */
	UPAGER_MSG_UNMAP = 3,  /* client -> daemon: base */
	UPAGER_MSG_ADVISE = 4, /* client -> daemon: range and advice */
	UPAGER_MSG_STATS = 5,  /* client -> daemon: this client's counters */
	UPAGER_MSG_LIST = 6,   /* control -> daemon: every client's counters */
	UPAGER_MSG_REPLY = 0x80, /* daemon -> client: OR'ed with the type */
};

/* HELLO roles. */
#define UPAGER_ROLE_CLIENT 1u  /* a runtime: the uffd comes with HELLO */
#define UPAGER_ROLE_CONTROL 2u /* upagerctl: no descriptor */

/* MAP flags. */
#define UPAGER_MAPF_DIRECT 0x1u /* the store reads with O_DIRECT */

/* Client kinds in LIST records. */
#define UPAGER_KIND_CLIENT 1u
#define UPAGER_KIND_CONTROL 2u
#define UPAGER_KIND_FIRECRACKER 3u

/* Upper bound of a user-space address on any x86-64/arm64 paging mode. */
#define UPAGER_PROTO_ADDR_LIMIT (1ull << 57)

struct upager__hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t length; /* whole record, header included */
	uint32_t seq;    /* echoed in the reply */
};

/* The counters of struct upager_stats that travel, in wire order. */
#define UPAGER__WIRE_STATS_FIELDS(X)                                      \
	X(faults) X(pages_installed) X(bytes_fetched) X(prefetched)        \
	X(zero_pages) X(read_errors) X(retries) X(regions)

struct upager__wire_stats {
#define UPAGER__WIRE_FIELD(f) uint64_t f;
	UPAGER__WIRE_STATS_FIELDS(UPAGER__WIRE_FIELD)
#undef UPAGER__WIRE_FIELD
	uint64_t fault_us_hist[UPAGER_HIST_BUCKETS];
};

struct upager__client_rec {
	uint32_t pid, uid, kind, pad;
	struct upager__wire_stats st;
};

#define UPAGER_LIST_MAX 128u /* records per LIST reply */

/* A decoded message. Only the fields of its type are meaningful. */
struct upager__msg {
	uint16_t version;
	uint16_t type;
	uint32_t seq;
	union {
		struct { uint32_t role, flags; } hello;
		struct {
			uint64_t base, length, offset, readahead;
			uint32_t page_size, flags;
		} map;
		struct { uint64_t base; } unmap;
		struct { uint64_t addr, len; uint32_t advice; } advise;
		struct { uint32_t first; } list;
		struct {
			int32_t status;
			uint32_t version; /* HELLO reply: the daemon's */
			uint32_t total, count; /* LIST reply */
			struct upager__wire_stats st; /* STATS reply */
			const uint8_t *recs; /* LIST reply: count records */
		} reply;
	} u;
};

/* Decodes and validates the record @buf[0, @len). Returns 0; -EPROTO for
 * a malformed record (bad magic, length, type or body size) or for
 * another version (then msg->version says which); -EINVAL for a
 * well-formed record whose fields are out of range (msg->type and
 * msg->seq are then valid, so the error can be answered). */
int upager__proto_decode(const void *buf, size_t len,
			 struct upager__msg *msg) UPAGER__HIDDEN;

/* Encoders: write one record into @buf (at least UPAGER_PROTO_MAX_MSG
 * bytes for LIST replies, 512 for the others) and return its length. */
size_t upager__enc_hello(void *buf, uint32_t seq, uint32_t role) UPAGER__HIDDEN;
size_t upager__enc_map(void *buf, uint32_t seq, uint64_t base, uint64_t length,
		       uint64_t offset, uint64_t readahead, uint32_t page_size,
		       uint32_t flags) UPAGER__HIDDEN;
size_t upager__enc_unmap(void *buf, uint32_t seq, uint64_t base) UPAGER__HIDDEN;
size_t upager__enc_advise(void *buf, uint32_t seq, uint64_t addr, uint64_t len,
			  uint32_t advice) UPAGER__HIDDEN;
size_t upager__enc_stats(void *buf, uint32_t seq) UPAGER__HIDDEN;
size_t upager__enc_list(void *buf, uint32_t seq, uint32_t first) UPAGER__HIDDEN;
/* A reply to a request of @type. @st (STATS) or @recs/@count/@total
 * (LIST) are included when non-NULL. */
size_t upager__enc_reply(void *buf, uint16_t type, uint32_t seq,
			 int32_t status, const struct upager__wire_stats *st,
			 const struct upager__client_rec *recs, uint32_t count,
			 uint32_t total) UPAGER__HIDDEN;
/* Overrides the version field of an encoded record (tests only). */
void upager__enc_set_version(void *buf, uint16_t version) UPAGER__HIDDEN;

void upager__stats_to_wire(const struct upager_stats *in,
			   struct upager__wire_stats *out) UPAGER__HIDDEN;
void upager__stats_from_wire(const struct upager__wire_stats *in,
			     struct upager_stats *out) UPAGER__HIDDEN;

/* Connects a SEQPACKET socket to the daemon at @path, with send and
 * receive timeouts of @timeout_s seconds. Returns the socket (close-on-
 * exec) or -errno (-ENAMETOOLONG: @path does not fit a socket address). */
int upager__proto_dial(const char *path, int timeout_s) UPAGER__HIDDEN;

/* Sends one record with up to 4 descriptors (SCM_RIGHTS). Returns 0 or
 * -errno (-EPIPE/-ECONNRESET when the peer is gone). */
int upager__proto_send(int sock, const void *buf, size_t len, const int *fds,
		       unsigned nfds) UPAGER__HIDDEN;
/* Receives one record into @buf (@cap bytes) and up to @maxfds descriptors
 * (close-on-exec); descriptors beyond that are closed. Returns the length,
 * 0 at EOF, or -errno (-EMSGSIZE: record or control data truncated, every
 * received descriptor closed). */
long upager__proto_recv(int sock, void *buf, size_t cap, int *fds,
			unsigned maxfds, unsigned *nfds) UPAGER__HIDDEN;

/* ---- Firecracker handshake ---- */

struct upager__fc_region {
	uint64_t base, size, offset, page_size;
};

#define UPAGER_FC_MAX_REGIONS 64u
#define UPAGER_FC_MAX_JSON 65536u

/* Parses Firecracker's JSON array of guest memory mappings: objects with
 * base_host_virt_addr, size, offset and page_size (bytes; the older
 * page_size_kib is accepted too); other keys are ignored. Checks every
 * region: size > 0, page size a power of two in [4 KiB, 2 MiB], base
 * aligned to it, no overflow, no overlap. Returns 0 and the regions, 1
 * when @len bytes are a valid prefix that is not yet complete, or
 * -EINVAL. */
int upager__fc_parse(const char *json, size_t len,
		     struct upager__fc_region *out, unsigned max,
		     unsigned *n) UPAGER__HIDDEN;

#endif /* UPAGER_PROTO_H */
