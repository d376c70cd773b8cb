/*
 * config.c - upagerd's config file and command line.
 *
 * Every setting has one name, used both as a config-file key and as a
 * long option (--key value, with '_' written as '-'), so the two cannot
 * drift apart. Values are checked here; nothing else validates them.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "upager.h"

void upagerd_config_defaults(struct upagerd_config *c)
{
	memset(c, 0, sizeof(*c));
	c->socket = strdup(UPAGERD_DEFAULT_SOCKET);
	c->threads = 2;
	c->socket_mode = 0660;
	c->max_clients = 1024;
	c->max_regions = 4096;
}

void upagerd_config_free(struct upagerd_config *c)
{
	free(c->socket);
	free(c->fc_socket);
	free(c->mem_file);
	memset(c, 0, sizeof(*c));
}

static int parse_uint(const char *v, unsigned base, unsigned lo, unsigned hi,
		      unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, (int)base);
	if (errno || end == v || *end || x < lo || x > hi || *v == '-')
		return -1;
	*out = (unsigned)x;
	return 0;
}

static int parse_group(const char *v, gid_t *out)
{
	unsigned g;
	if (parse_uint(v, 10, 0, 0x7fffffff, &g) == 0) {
		*out = (gid_t)g;
		return 0;
	}
	struct group *gr = getgrnam(v);
	if (!gr)
		return -1;
	*out = gr->gr_gid;
	return 0;
}

static int set_str(char **dst, const char *v)
{
	if (!*v)
		return -1;
	char *s = strdup(v);
	if (!s)
		return -1;
	free(*dst);
	*dst = s;
	return 0;
}

/* Applies one setting; returns 0 or -1 with *why set. */
static int apply(struct upagerd_config *c, const char *key, const char *v,
		 const char **why)
{
	*why = "invalid value";
	if (!strcmp(key, "socket"))
		return set_str(&c->socket, v);
	if (!strcmp(key, "firecracker") || !strcmp(key, "firecracker_socket"))
		return set_str(&c->fc_socket, v);
	if (!strcmp(key, "mem_file"))
		return set_str(&c->mem_file, v);
	if (!strcmp(key, "workers"))
		return parse_uint(v, 10, 0, 256, &c->workers);
	if (!strcmp(key, "threads"))
		return parse_uint(v, 10, 1, 64, &c->threads);
	if (!strcmp(key, "allow_group")) {
		c->allow_gid_set = parse_group(v, &c->allow_gid) == 0;
		*why = "no such group";
		return c->allow_gid_set ? 0 : -1;
	}
	if (!strcmp(key, "socket_mode"))
		return parse_uint(v, 8, 0, 0777, &c->socket_mode);
	if (!strcmp(key, "metrics_port"))
		return parse_uint(v, 10, 1, 65535, &c->metrics_port);
	if (!strcmp(key, "max_clients"))
		return parse_uint(v, 10, 1, 1u << 20, &c->max_clients);
	if (!strcmp(key, "max_regions"))
		return parse_uint(v, 10, 1, 1u << 20, &c->max_regions);
	*why = "unknown setting";
	return -1;
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = 0;
	return s;
}

int upagerd_config_file(struct upagerd_config *c, const char *path, FILE *err)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(err, "upagerd: %s: %s\n", path, strerror(errno));
		return -1;
	}
	char line[1024];
	unsigned no = 0;
	int rc = 0;
	while (rc == 0 && fgets(line, sizeof(line), f)) {
		no++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		char *s = trim(line);
		if (!*s)
			continue;
		char *eq = strchr(s, '=');
		const char *why = "expected key = value";
		if (eq) {
			*eq = 0;
			if (apply(c, trim(s), trim(eq + 1), &why) == 0)
				continue;
		}
		fprintf(err, "upagerd: %s:%u: %s\n", path, no, why);
		rc = -1;
	}
	fclose(f);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: upagerd [options]\n"
"Serves the page faults of upager clients (and of Firecracker microVMs\n"
"restored from a snapshot) from their stores.\n"
"  --config FILE          read settings from FILE (key = value lines)\n"
"  --socket PATH          control socket (default " UPAGERD_DEFAULT_SOCKET ")\n"
"  --socket-mode OCTAL    its permissions (default 0660)\n"
"  --allow-group GROUP    members of GROUP may connect too (default: only\n"
"                         this user)\n"
"  --firecracker PATH     also act as a Firecracker page-fault handler on\n"
"                         PATH; needs --mem-file\n"
"  --mem-file PATH        Firecracker snapshot memory file\n"
"  --workers N            fault-serving worker threads (0: library default)\n"
"  --threads N            control-plane threads (default 2)\n"
"  --metrics-port N       Prometheus text on http://127.0.0.1:N/metrics\n"
"  --max-clients N        connections at once (default 1024)\n"
"  --max-regions N        regions per client (default 4096)\n"
"  --version, --help\n");
}

int upagerd_config_args(struct upagerd_config *c, int argc, char **argv,
			FILE *out, FILE *err)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(out);
			return 1;
		}
		if (!strcmp(a, "--version")) {
			fprintf(out, "upagerd %s (protocol 1)\n", upager_version());
			return 1;
		}
		if (strncmp(a, "--", 2) || i + 1 >= argc) {
			fprintf(err, "upagerd: bad argument '%s' (try --help)\n", a);
			return -1;
		}
		const char *v = argv[++i];
		if (!strcmp(a, "--config")) {
			if (upagerd_config_file(c, v, err))
				return -1;
			continue;
		}
		char key[64];
		snprintf(key, sizeof(key), "%s", a + 2);
		for (char *p = key; *p; p++)
			if (*p == '-')
				*p = '_';
		const char *why;
		if (apply(c, key, v, &why)) {
			fprintf(err, "upagerd: %s %s: %s\n", a, v, why);
			return -1;
		}
	}
	if (!!c->fc_socket != !!c->mem_file) {
		fprintf(err, "upagerd: --firecracker and --mem-file go together\n");
		return -1;
	}
	return 0;
}
