/*
 * upagerctl.c - talks to a running upagerd over its control socket.
 *
 *   upagerctl [--socket PATH] stats    per-client statistics table
 *   upagerctl [--socket PATH] ping     checks that the daemon answers
 *   upagerctl --version
 *
 * It speaks the daemon protocol (docs/protocol.md) as a control client:
 * HELLO with the control role, then LIST requests, a page at a time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "proto.h"
#include "upager.h"

static int call(int s, uint8_t *buf, size_t len, uint8_t *in,
		struct upager__msg *rep)
{
	int rc = upager__proto_send(s, buf, len, NULL, 0);
	if (rc)
		return rc;
	int fds[1];
	unsigned nfds;
	long n = upager__proto_recv(s, in, UPAGER_PROTO_MAX_MSG, fds, 0, &nfds);
	if (n == 0)
		return -ECONNRESET;
	if (n < 0)
		return (int)n;
	rc = upager__proto_decode(in, (size_t)n, rep);
	if (rc == -EPROTO && rep->version && rep->version != UPAGER_PROTO_VERSION) {
		fprintf(stderr, "upagerctl: the daemon speaks protocol %u, "
			"this tool %u\n", rep->version, UPAGER_PROTO_VERSION);
		return rc;
	}
	return rc ? rc : rep->u.reply.status;
}

static const char *human(uint64_t v, char *buf, size_t n)
{
	const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double x = (double)v;
	int i = 0;
	while (x >= 1024 && i < 4) {
		x /= 1024;
		i++;
	}
	snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", x, u[i]);
	return buf;
}

static void print_rec(const struct upager__client_rec *r)
{
	struct upager_stats st;
	upager__stats_from_wire(&r->st, &st);
	char b[32];
	printf("%8u %6u %-11s %8llu %12llu %10s %8llu %8llu %8llu\n", r->pid,
	       r->uid, r->kind == UPAGER_KIND_FIRECRACKER ? "firecracker" : "client",
	       (unsigned long long)st.regions, (unsigned long long)st.faults,
	       human(st.bytes_fetched, b, sizeof(b)),
	       (unsigned long long)upager_stats_percentile(&st, 50),
	       (unsigned long long)upager_stats_percentile(&st, 99),
	       (unsigned long long)st.read_errors);
}

static int stats(int s, uint8_t *buf, uint8_t *in)
{
	printf("%8s %6s %-11s %8s %12s %10s %8s %8s %8s\n", "PID", "UID", "KIND",
	       "REGIONS", "FAULTS", "FETCHED", "P50_US", "P99_US", "ERRORS");
	uint32_t first = 0, seq = 2;
	for (;;) {
		struct upager__msg rep;
		size_t len = upager__enc_list(buf, seq++, first);
		int rc = call(s, buf, len, in, &rep);
		if (rc)
			return rc;
		for (uint32_t i = 0; i < rep.u.reply.count; i++) {
			struct upager__client_rec r;
			memcpy(&r, rep.u.reply.recs + i * sizeof(r), sizeof(r));
			print_rec(&r);
		}
		first += rep.u.reply.count;
		if (rep.u.reply.count == 0 || first >= rep.u.reply.total)
			return 0;
	}
}

static void usage(FILE *f)
{
	fprintf(f, "usage: upagerctl [--socket PATH] stats|ping\n"
		   "       upagerctl --version\n"
		   "default socket: " UPAGERD_DEFAULT_SOCKET "\n");
}

int main(int argc, char **argv)
{
	const char *path = UPAGERD_DEFAULT_SOCKET, *cmd = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--socket") && i + 1 < argc) {
			path = argv[++i];
		} else if (!strcmp(argv[i], "--version")) {
			printf("upagerctl %s (protocol %u)\n", upager_version(),
			       UPAGER_PROTO_VERSION);
			return 0;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (!cmd && argv[i][0] != '-') {
			cmd = argv[i];
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!cmd || (strcmp(cmd, "stats") && strcmp(cmd, "ping"))) {
		usage(stderr);
		return 2;
	}
	int s = upager__proto_dial(path, 10);
	if (s < 0) {
		fprintf(stderr, "upagerctl: %s: %s\n", path, upager_strerror(s));
		return 1;
	}
	uint8_t *buf = malloc(UPAGER_PROTO_MAX_MSG), *in = malloc(UPAGER_PROTO_MAX_MSG);
	int rc = -ENOMEM;
	if (buf && in) {
		struct upager__msg rep;
		size_t len = upager__enc_hello(buf, 1, UPAGER_ROLE_CONTROL);
		rc = call(s, buf, len, in, &rep);
		if (rc == 0 && !strcmp(cmd, "ping"))
			printf("upagerd at %s: protocol %u\n", path,
			       rep.u.reply.version);
		else if (rc == 0)
			rc = stats(s, buf, in);
	}
	if (rc)
		fprintf(stderr, "upagerctl: %s\n", upager_strerror(rc));
	free(buf);
	free(in);
	close(s);
	return rc ? 1 : 0;
}
