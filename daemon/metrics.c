/*
 * metrics.c - per-client statistics as Prometheus text, served on an
 * optional loopback HTTP listener (--metrics-port).
 *
 * One thread accepts on 127.0.0.1 only and answers GET /metrics; anything
 * else gets 404. Requests are read with a 2 s timeout, so a stuck peer
 * cannot hold the listener for long. The text is built from
 * upagerd_snapshot(), the same numbers `upagerctl stats` prints.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "upagerd.h"

struct out {
	char *buf;
	size_t cap, len;
};

static void emit(struct out *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void emit(struct out *o, const char *fmt, ...)
{
	if (o->len >= o->cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len += (size_t)n < o->cap - o->len ? (size_t)n : o->cap - o->len;
}

static const char *kind_name(uint32_t k)
{
	return k == UPAGER_KIND_FIRECRACKER ? "firecracker" : "client";
}

static const struct {
	const char *name, *help;
	size_t off;
} counters[] = {
	{ "faults", "Fault messages received for the client",
	  offsetof(struct upager__wire_stats, faults) },
	{ "pages_installed", "Install units installed",
	  offsetof(struct upager__wire_stats, pages_installed) },
	{ "bytes_fetched", "Bytes read from the client's stores",
	  offsetof(struct upager__wire_stats, bytes_fetched) },
	{ "prefetched", "Units installed ahead of any fault",
	  offsetof(struct upager__wire_stats, prefetched) },
	{ "zero_pages", "Units installed as zeros",
	  offsetof(struct upager__wire_stats, zero_pages) },
	{ "read_errors", "Store reads that failed (SIGBUS in the client)",
	  offsetof(struct upager__wire_stats, read_errors) },
	{ "retries", "Installs retried after EAGAIN/ENOENT",
	  offsetof(struct upager__wire_stats, retries) },
};

static void histogram(struct out *o, const struct upager__client_rec *r)
{
	uint64_t cum = 0;
	double sum = 0;
	for (int i = 0; i < UPAGER_HIST_BUCKETS; i++) {
		uint64_t n = r->st.fault_us_hist[i];
		cum += n;
		/* Bucket i holds [2^i, 2^(i+1)) us (bucket 0: under 2 us). */
		double lo = i ? (double)(1ull << i) : 0, hi = (double)(2ull << i);
		sum += (double)n * (lo + hi) / 2 * 1e-6;
		if (i == UPAGER_HIST_BUCKETS - 1)
			break;
		emit(o, "upagerd_client_fault_seconds_bucket{pid=\"%u\",kind=\"%s\","
		     "le=\"%g\"} %llu\n", r->pid, kind_name(r->kind), hi * 1e-6,
		     (unsigned long long)cum);
	}
	emit(o, "upagerd_client_fault_seconds_bucket{pid=\"%u\",kind=\"%s\","
	     "le=\"+Inf\"} %llu\n", r->pid, kind_name(r->kind),
	     (unsigned long long)cum);
	emit(o, "upagerd_client_fault_seconds_sum{pid=\"%u\",kind=\"%s\"} %.9f\n",
	     r->pid, kind_name(r->kind), sum);
	emit(o, "upagerd_client_fault_seconds_count{pid=\"%u\",kind=\"%s\"} %llu\n",
	     r->pid, kind_name(r->kind), (unsigned long long)cum);
}

size_t upagerd_prometheus(struct daemon *d, char *buf, size_t cap)
{
	struct out o = { buf, cap, 0 };
	unsigned total = 0, n = 0, cap_recs = 0;
	struct upager__client_rec *recs = NULL;
	/* Grow until the snapshot fits (clients come and go meanwhile). */
	for (int tries = 0; tries < 4; tries++) {
		n = upagerd_snapshot(d, 0, recs, cap_recs, &total);
		if (n == total)
			break;
		free(recs);
		cap_recs = total + 16;
		recs = calloc(cap_recs, sizeof(*recs));
		if (!recs) {
			cap_recs = 0;
			n = 0;
			break;
		}
	}
	emit(&o, "# HELP upagerd_clients Clients served now (runtimes and "
	     "Firecracker VMs).\n# TYPE upagerd_clients gauge\n"
	     "upagerd_clients %u\n", n);
	emit(&o, "# TYPE upagerd_connections_total counter\n"
	     "upagerd_connections_total %llu\n",
	     (unsigned long long)atomic_load(&d->accepted));
	emit(&o, "# TYPE upagerd_refused_total counter\n"
	     "upagerd_refused_total %llu\n",
	     (unsigned long long)atomic_load(&d->refused));
	emit(&o, "# TYPE upagerd_protocol_errors_total counter\n"
	     "upagerd_protocol_errors_total %llu\n",
	     (unsigned long long)atomic_load(&d->proto_errors));
	emit(&o, "# TYPE upagerd_firecracker_handshakes_total counter\n"
	     "upagerd_firecracker_handshakes_total %llu\n",
	     (unsigned long long)atomic_load(&d->fc_handshakes));
	for (size_t k = 0; k < sizeof(counters) / sizeof(counters[0]); k++) {
		emit(&o, "# HELP upagerd_client_%s_total %s.\n"
		     "# TYPE upagerd_client_%s_total counter\n", counters[k].name,
		     counters[k].help, counters[k].name);
		for (unsigned i = 0; i < n; i++) {
			uint64_t v;
			memcpy(&v, (const char *)&recs[i].st + counters[k].off,
			       sizeof(v));
			emit(&o, "upagerd_client_%s_total{pid=\"%u\",kind=\"%s\"} "
			     "%llu\n", counters[k].name, recs[i].pid,
			     kind_name(recs[i].kind), (unsigned long long)v);
		}
	}
	emit(&o, "# HELP upagerd_client_fault_seconds Fault service time, from "
	     "reading the fault to the install (sum estimated from bucket "
	     "midpoints).\n# TYPE upagerd_client_fault_seconds histogram\n");
	for (unsigned i = 0; i < n; i++)
		histogram(&o, &recs[i]);
	free(recs);
	return o.len;
}

/* ---- the HTTP listener ---- */

static void serve_one(struct daemon *d, int s)
{
	struct timeval tv = { .tv_sec = 2 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	char req[4096];
	size_t len = 0;
	while (len < sizeof(req) - 1) {
		ssize_t n = recv(s, req + len, sizeof(req) - 1 - len, 0);
		if (n <= 0)
			break;
		len += (size_t)n;
		req[len] = 0;
		if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
			break;
	}
	req[len] = 0;
	size_t cap = 1 << 20;
	char *body = malloc(cap);
	bool ok = body && (!strncmp(req, "GET /metrics ", 13) ||
			   !strncmp(req, "GET /metrics\r", 13));
	size_t blen = ok ? upagerd_prometheus(d, body, cap) : 0;
	char head[256];
	int hl = snprintf(head, sizeof(head),
			  "HTTP/1.0 %s\r\nContent-Type: %s\r\n"
			  "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			  ok ? "200 OK" : "404 Not Found",
			  ok ? "text/plain; version=0.0.4" : "text/plain",
			  ok ? blen : (size_t)10);
	ssize_t w = send(s, head, (size_t)hl, MSG_NOSIGNAL);
	if (w == hl)
		w = ok ? send(s, body, blen, MSG_NOSIGNAL)
		       : send(s, "not found\n", 10, MSG_NOSIGNAL);
	(void)w;
	free(body);
}

struct listener {
	struct daemon *d;
	int fd;
};

static void *metrics_main(void *arg)
{
	struct listener *l = arg;
	struct pollfd p[2] = {
		{ .fd = l->fd, .events = POLLIN },
		{ .fd = l->d->stop_fd, .events = POLLIN },
	};
	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int s = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
		if (s < 0)
			continue;
		serve_one(l->d, s);
		close(s);
	}
	close(l->fd);
	free(l);
	return NULL;
}

int upagerd_metrics_start(struct daemon *d, pthread_t *thr)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sa = {
		.sin_family = AF_INET,
		.sin_port = htons((uint16_t)d->cfg.metrics_port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	struct listener *l = malloc(sizeof(*l));
	if (!l || bind(s, (struct sockaddr *)&sa, sizeof(sa)) || listen(s, 16)) {
		fprintf(stderr, "upagerd: metrics port %u: %s\n",
			d->cfg.metrics_port, strerror(errno));
		free(l);
		close(s);
		return -1;
	}
	l->d = d;
	l->fd = s;
	if (pthread_create(thr, NULL, metrics_main, l)) {
		free(l);
		close(s);
		return -1;
	}
	return 0;
}
