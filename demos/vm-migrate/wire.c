/*
 * wire.c - blocking whole-message I/O for the migration stream (wire.h).
 */
#define _GNU_SOURCE
#include <sys/uio.h>

#include "remote_proto.h"
#include "wire.h"

int wire_send2(int fd, uint32_t type, uint64_t a, uint64_t b,
	       const void *p1, size_t l1, const void *p2, size_t l2)
{
	struct msg m = { .type = type, .a = a, .b = b, .len = l1 + l2 };
	struct iovec iov[3] = {
		{ &m, sizeof(m) },
		{ (void *)p1, l1 },
		{ (void *)p2, l2 },
	};
	return upager__rp_send_iov(fd, iov, 3);
}

int wire_send(int fd, uint32_t type, uint64_t a, uint64_t b,
	      const void *payload, size_t len)
{
	return wire_send2(fd, type, a, b, payload, len, NULL, 0);
}

int wire_read(int fd, void *buf, size_t n)
{
	return upager__rp_read_full(fd, buf, n);
}

int wire_recv(int fd, struct msg *m)
{
	return wire_read(fd, m, sizeof(*m));
}
