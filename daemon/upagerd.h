/*
 * upagerd.h - state shared by the daemon's files: upagerd.c (sockets,
 * clients, Firecracker handshakes) and metrics.c (statistics snapshots,
 * Prometheus text, the loopback HTTP listener).
 */
#ifndef UPAGERD_H
#define UPAGERD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "proto.h"
#include "upager.h"

struct conn;

struct daemon {
	struct upagerd_config cfg;
	upager_t *up;
	upager_store_t *fc_store; /* Firecracker memory file */
	int epfd;
	int stop_fd;
	atomic_bool stopping;

	/* Every connection; LIST and metrics read it under lock, and a
	 * connection is unlinked under lock before it is freed. */
	pthread_mutex_t lock;
	struct conn *conns;
	unsigned nconns;

	atomic_uint_fast64_t accepted, refused, proto_errors, fc_handshakes;
};

/* Fills up to @max records starting at index @first of the connection
 * list (clients and Firecracker VMs; control connections are skipped).
 * Returns how many; *total gets the number there are. */
unsigned upagerd_snapshot(struct daemon *d, unsigned first,
			  struct upager__client_rec *out, unsigned max,
			  unsigned *total);

/* Prometheus text exposition of every client into @buf; returns length. */
size_t upagerd_prometheus(struct daemon *d, char *buf, size_t cap);
/* Starts the 127.0.0.1 HTTP listener thread (cfg.metrics_port). */
int upagerd_metrics_start(struct daemon *d, pthread_t *thr);

#endif /* UPAGERD_H */
