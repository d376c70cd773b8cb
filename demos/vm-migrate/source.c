/*
 * source.c - the source half of vm-migrate: boots the guest, lets it run,
 * then migrates it in the chosen mode.
 *
 *  stop-copy  pause, send all RAM and the CPU state.
 *  precopy    send all RAM while the guest runs with dirty logging on,
 *             resend what it dirtied until little is left (or max passes),
 *             pause, send the rest and the CPU state.
 *  postcopy   log the guest's writes for a short window (--hot-sample)
 *             to learn its working set; pause, send the CPU state only:
 *             the destination resumes at once and fetches pages from this
 *             process's page server, which pushes the working set first.
 *  hybrid     one precopy pass, pause, send the CPU state and the map of
 *             pages dirtied since; the page server pushes only those.
 *
 * The page server (upager_page_server_mem over guest RAM) is started
 * before the guest so that the destination can connect its remote store
 * ahead of the switch; it serves nothing until the guest is paused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mig.h"
#include "upager.h"

#define CHUNK (1u << 20)

static int page_listen(const char *host, int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	if (!host || inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		sin.sin_addr.s_addr = htonl(INADDR_ANY);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    listen(fd, 16))
		die("page server socket: %s", strerror(errno));
	socklen_t sl = sizeof(sin);
	getsockname(fd, (struct sockaddr *)&sin, &sl);
	*port = ntohs(sin.sin_port);
	return fd;
}

static uint64_t sent_bytes;

static void send_range(int ctl, struct app *a, uint64_t off, uint64_t len)
{
	while (len) {
		size_t n = len < CHUNK ? (size_t)len : CHUNK;
		if (wire_send(ctl, M_RAM, off, 0, a->ram + off, n))
			die("source: the destination went away");
		sent_bytes += n + sizeof(struct msg);
		off += n;
		len -= n;
	}
}

/* Ends a precopy pass and waits until the destination has taken in
 * everything sent so far, so that no backlog in the socket buffers is
 * left for the downtime. */
static void end_pass(int ctl, unsigned pass, uint64_t bytes)
{
	struct msg m;
	if (wire_send(ctl, M_PASS, pass, bytes, NULL, 0) || wire_recv(ctl, &m) ||
	    m.type != M_PASS)
		die("source: the destination went away during precopy");
	sent_bytes += sizeof(m);
}

static bool test_bit(const uint64_t *bm, size_t i)
{
	return (bm[i / 64] >> (i % 64)) & 1;
}

/* Sends the pages set in @dirty (runs coalesced); returns bytes. */
static uint64_t send_dirty(int ctl, struct app *a, const uint64_t *dirty)
{
	size_t pages = a->o.ram_size / GUEST_PAGE;
	uint64_t total = 0;
	for (size_t i = 0; i < pages;) {
		if (!test_bit(dirty, i)) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < pages && test_bit(dirty, j))
			j++;
		send_range(ctl, a, (uint64_t)i * GUEST_PAGE,
			   (uint64_t)(j - i) * GUEST_PAGE);
		total += (uint64_t)(j - i) * GUEST_PAGE;
		i = j;
	}
	return total;
}

static uint64_t count_bits(const uint64_t *bm, size_t words)
{
	uint64_t n = 0;
	for (size_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

/* Precopy passes while the guest runs; returns passes made. */
static unsigned precopy(int ctl, struct app *a, uint64_t *dirty, size_t words,
			bool iterate)
{
	if (vm_dirty_log(a->vm, true))
		die("cannot enable dirty logging");
	vm_dirty_fetch(a->vm, dirty); /* start clean */
	memset(dirty, 0, words * 8);
	send_range(ctl, a, 0, a->o.ram_size);
	end_pass(ctl, 1, a->o.ram_size);
	unsigned pass = 1;
	printf("source: pass 1 sent %zu MiB\n", a->o.ram_size >> 20);
	while (iterate && pass < a->o.max_passes) {
		vm_dirty_fetch(a->vm, dirty);
		uint64_t bytes = count_bits(dirty, words) * GUEST_PAGE;
		if (bytes <= a->o.max_dirty)
			break; /* the rest goes in the stop phase */
		send_dirty(ctl, a, dirty);
		memset(dirty, 0, words * 8);
		pass++;
		end_pass(ctl, pass, bytes);
		printf("source: pass %u resent %.1f MiB dirtied\n", pass,
		       (double)bytes / (1 << 20));
	}
	return pass;
}

/* One bit per install unit with a page set in @dirty (hybrid: dirtied
 * since the precopy pass; postcopy: written in the sampling window). */
static uint8_t *unit_map(struct app *a, const uint64_t *dirty, size_t *nunits)
{
	size_t per = a->o.page_size / GUEST_PAGE;
	size_t n = a->o.ram_size / a->o.page_size;
	uint8_t *m = calloc((n + 7) / 8, 1);
	if (!m)
		die("out of memory");
	for (size_t u = 0; u < n; u++)
		for (size_t k = 0; k < per; k++)
			if (test_bit(dirty, u * per + k)) {
				m[u / 8] |= (uint8_t)(1u << (u % 8));
				break;
			}
	*nunits = n;
	return m;
}

static uint64_t count_map(const uint8_t *m, size_t nbits)
{
	uint64_t n = 0;
	for (size_t i = 0; i < nbits; i++)
		n += (m[i / 8] >> (i % 8)) & 1;
	return n;
}

/* Install units with a page set in @dirty. */
static uint64_t count_units(struct app *a, const uint64_t *dirty)
{
	size_t per = a->o.page_size / GUEST_PAGE;
	size_t n = a->o.ram_size / a->o.page_size;
	uint64_t c = 0;
	for (size_t u = 0; u < n; u++)
		for (size_t k = 0; k < per; k++)
			if (test_bit(dirty, u * per + k)) {
				c++;
				break;
			}
	return c;
}

/* Postcopy: the install units the guest writes now, from KVM's dirty log
 * while it runs (NULL when off). The log is read every 10 ms and the
 * union kept; sampling ends once the vCPUs have had --hot-sample ms of
 * CPU time (not wall time: on a busy host a vCPU may not run at all for
 * a while) and the last read added under 1/32 of the units found, or
 * after 4 times that long in wall time. Every first write to a page
 * after a read costs a write-protection fault, so the window is kept
 * short; the log stays on until the pause, which follows at once. */
static uint8_t *sample_hot(struct app *a, uint64_t *dirty, size_t words,
			   struct stop_info *si)
{
	unsigned ms = a->o.hot_sample_ms;
	if (!ms)
		return NULL;
	uint64_t t0 = now_ns(), cpu0 = vm_cpu_ns(a->vm);
	uint64_t max_end = t0 + 4 * ms * 1000000ull;
	if (vm_dirty_log(a->vm, true))
		die("cannot enable dirty logging");
	vm_dirty_fetch(a->vm, dirty); /* process backend: start clean */
	memset(dirty, 0, words * 8);
	for (uint64_t found = 0;;) {
		sleep_ms(ms < 10 ? ms : 10);
		if (vm_dirty_fetch(a->vm, dirty))
			die("cannot read the dirty log");
		uint64_t now = now_ns(), was = found;
		bool ran = vm_cpu_ns(a->vm) - cpu0 >= ms * 1000000ull;
		found = count_units(a, dirty);
		if (now >= max_end || (ran && found - was <= found / 32))
			break;
	}
	size_t n;
	uint8_t *hot = unit_map(a, dirty, &n);
	si->hot_len = (n + 7) / 8;
	si->hot_units = count_map(hot, n);
	si->hot_sample_ns = now_ns() - t0;
	si->hot_cpu_ns = vm_cpu_ns(a->vm) - cpu0;
	return hot;
}

static void send_stop(int ctl, struct app *a, struct stop_info *si,
		      const uint8_t *map, const uint8_t *hot)
{
	static char state[VM_STATE_MAX];
	si->state_len = vm_save(a->vm, state);
	pthread_mutex_lock(&a->slock);
	size_t first = a->nsamples > 2000 ? a->nsamples - 2000 : 0;
	si->nsamples = a->nsamples - first;
	size_t slen = si->nsamples * sizeof(struct sample);
	size_t len = sizeof(*si) + slen + si->state_len + si->map_len +
		     si->hot_len;
	char *buf = malloc(len);
	if (!buf)
		die("out of memory");
	memcpy(buf + sizeof(*si), a->samples + first, slen);
	pthread_mutex_unlock(&a->slock);
	memcpy(buf + sizeof(*si) + slen, state, si->state_len);
	if (map)
		memcpy(buf + sizeof(*si) + slen + si->state_len, map, si->map_len);
	if (hot)
		memcpy(buf + len - si->hot_len, hot, si->hot_len);
	si->t_stop_sent = now_ns();
	memcpy(buf, si, sizeof(*si));
	if (wire_send(ctl, M_STOP, 0, sent_bytes, buf, len))
		die("source: the destination went away");
	free(buf);
}

int run_source(struct app *a, int ctl)
{
	struct opts *o = &a->o;
	a->ram = map_anon(o->ram_size);
	if (guest_setup(a->ram, o->ram_size, o->nvcpus, o->hot_div,
			o->pages_per_unit))
		die("bad guest geometry");
	struct vm_hooks h;
	app_hooks(a, &h);
	int rc = vm_create(a->kvm, a->ram, o->ram_size, o->nvcpus, &h, &a->vm);
	if (rc)
		die("source: vm_create: %s", strerror(-rc));

	upager_page_server_t *srv = NULL;
	int plfd = -1, pport = 0;
	if (o->mode == MODE_POSTCOPY || o->mode == MODE_HYBRID) {
		plfd = page_listen(o->host, &pport);
		struct upager_page_server_opts so = { .block_size = o->page_size };
		rc = upager_page_server_mem(plfd, a->ram, o->ram_size, &so, &srv);
		if (rc)
			die("page server: %s", upager_strerror(rc));
	}
	struct mig_config cfg = {
		.magic = MIG_MAGIC, .mode = o->mode, .ram_size = o->ram_size,
		.nvcpus = (uint32_t)o->nvcpus, .kvm = a->kvm,
		.page_size = (uint32_t)o->page_size, .page_port = (uint32_t)pport,
		.hot_div = o->hot_div, .pages_per_unit = o->pages_per_unit,
	};
	if (wire_send(ctl, M_CONFIG, 0, 0, &cfg, sizeof(cfg)))
		die("source: cannot send the configuration");

	sampler_start(a);
	vm_reset(a->vm);
	vm_resume(a->vm);
	if (!wait_filled(a, 300000))
		die("source: guest failed during fill: %s", a->fail_msg);
	sleep_ms(o->migrate_after_ms);
	if (atomic_load(&a->failed))
		die("source: guest failed: %s", a->fail_msg);

	struct stop_info si = { .t_trigger = now_ns(), .units_trigger = total_units(a) };
	size_t words = (o->ram_size / GUEST_PAGE + 63) / 64;
	uint64_t *dirty = calloc(words, 8);
	uint8_t *map = NULL, *hot = NULL;
	if (!dirty)
		die("out of memory");
	if (o->mode == MODE_PRECOPY || o->mode == MODE_HYBRID)
		si.passes = precopy(ctl, a, dirty, words, o->mode == MODE_PRECOPY);
	if (o->mode == MODE_POSTCOPY)
		hot = sample_hot(a, dirty, words, &si);
	vm_pause(a->vm);
	si.t_pause = now_ns();
	for (int i = 0; i < o->nvcpus; i++)
		si.units_pause[i] = atomic_load(&a->units[i]);
	if (o->mode == MODE_STOPCOPY) {
		send_range(ctl, a, 0, o->ram_size);
	} else if (o->mode == MODE_PRECOPY) {
		vm_dirty_fetch(a->vm, dirty);
		send_dirty(ctl, a, dirty);
	} else if (o->mode == MODE_HYBRID) {
		vm_dirty_fetch(a->vm, dirty);
		size_t n;
		map = unit_map(a, dirty, &n);
		si.map_len = (n + 7) / 8;
		rc = upager_page_server_set_push_map(srv, map, n);
		if (rc)
			die("set_push_map: %s", upager_strerror(rc));
	} else if (hot) {
		rc = upager_page_server_set_push_first(srv, hot,
						       o->ram_size / o->page_size);
		if (rc)
			die("set_push_first: %s", upager_strerror(rc));
	}
	send_stop(ctl, a, &si, map, hot);
	sampler_stop(a); /* after the switch: joining it may take 10 ms */
	printf("source: paused; CPU state sent %.3f ms after the pause\n",
	       (double)(si.t_stop_sent - si.t_pause) / 1e6);
	if (hot)
		printf("source: %.1f ms of dirty log (guest ran %.1f ms) before "
		       "the pause found %llu hot units of %zu\n",
		       (double)si.hot_sample_ns / 1e6,
		       (double)si.hot_cpu_ns / 1e6,
		       (unsigned long long)si.hot_units,
		       o->ram_size / o->page_size);

	/* Serve pages until the destination is done with us. Once it has
	 * the hot pages, the rest of the push yields the CPU to its guest. */
	struct msg m;
	while ((rc = wire_recv(ctl, &m)) == 0 && m.type == M_HOT) {
		int n = o->bg_nice ? renice_background(a, o->bg_nice) : 0;
		if (n)
			printf("source: hot pages in; %d threads now at nice "
			       "%d\n", n, o->bg_nice);
	}
	if (srv) {
		struct upager_page_server_stats ps;
		upager_page_server_stats(srv, &ps);
		printf("source: page server sent %llu demand reads, %llu pushed "
		       "blocks, %llu restarts near faults\n",
		       (unsigned long long)ps.reads,
		       (unsigned long long)ps.pushed_blocks,
		       (unsigned long long)ps.restarts);
		uint64_t first = 0;
		upager_page_server_pushed_first(srv, &first);
		if (hot)
			printf("source: %llu blocks pushed ahead of the others "
			       "(hot)\n", (unsigned long long)first);
	}
	upager_page_server_stop(srv);
	if (plfd >= 0)
		close(plfd);
	vm_destroy(a->vm);
	free(dirty);
	free(map);
	free(hot);
	close(ctl);
	if (rc || m.type != M_DONE) {
		fprintf(stderr, "vm-migrate: source: the destination ended "
				"without saying DONE\n");
		return 1;
	}
	return 0;
}
