/*
 * wire.c - blocking whole-message I/O for the migration stream (wire.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "wire.h"

static int send_iov(int fd, struct iovec *iov, int cnt)
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

int wire_send2(int fd, uint32_t type, uint64_t a, uint64_t b,
	       const void *p1, size_t l1, const void *p2, size_t l2)
{
	struct msg m = { .type = type, .a = a, .b = b, .len = l1 + l2 };
	struct iovec iov[3] = {
		{ &m, sizeof(m) },
		{ (void *)p1, l1 },
		{ (void *)p2, l2 },
	};
	return send_iov(fd, iov, 3);
}

int wire_send(int fd, uint32_t type, uint64_t a, uint64_t b,
	      const void *payload, size_t len)
{
	return wire_send2(fd, type, a, b, payload, len, NULL, 0);
}

int wire_read(int fd, void *buf, size_t n)
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

int wire_recv(int fd, struct msg *m)
{
	return wire_read(fd, m, sizeof(*m));
}
