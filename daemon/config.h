/*
 * config.h - upagerd's settings: defaults, the config file, the command
 * line. The command line overrides the file; the file overrides the
 * defaults. See upagerd --help and docs/protocol.md.
 */
#ifndef UPAGERD_CONFIG_H
#define UPAGERD_CONFIG_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/types.h>

#define UPAGERD_DEFAULT_SOCKET "/run/upagerd/upagerd.sock"

struct upagerd_config {
	char *socket;        /* control socket (SOCK_SEQPACKET) */
	char *fc_socket;     /* Firecracker handler socket, or NULL */
	char *mem_file;      /* Firecracker snapshot memory file */
	unsigned workers;    /* upager worker threads (0: library default) */
	unsigned threads;    /* control-plane threads */
	bool allow_gid_set;
	gid_t allow_gid;     /* group whose members may connect too */
	unsigned socket_mode;
	unsigned metrics_port; /* 0: no HTTP listener */
	unsigned max_clients;
	unsigned max_regions;  /* per client */
};

void upagerd_config_defaults(struct upagerd_config *c);
/* Reads "key = value" lines ('#' starts a comment). Returns 0, or -1
 * after printing the file, line and reason to @err. */
int upagerd_config_file(struct upagerd_config *c, const char *path, FILE *err);
/* Parses argv. Returns 0 to run, 1 when it printed help or the version
 * (exit 0), -1 after printing an error (exit 2). */
int upagerd_config_args(struct upagerd_config *c, int argc, char **argv,
			FILE *out, FILE *err);
void upagerd_config_free(struct upagerd_config *c);

#endif /* UPAGERD_CONFIG_H */
