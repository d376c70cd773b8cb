/*
 * dest.c - the destination half of vm-migrate: receives the guest in the
 * source's chosen mode, resumes it, lets it finish and checks its
 * checksum; then prints and records the migration's figures.
 *
 * Guest RAM here is
 *  - stop-copy, precopy: plain anonymous memory the stream is copied into;
 *  - postcopy: a region from upager_map() over a remote store connected to
 *    the source's page server; pushed blocks are installed by advising
 *    WILLNEED from the store's on_pushed callback; the source sends the
 *    map of units it saw the guest write (pushed first), which is only
 *    used here to count the hot units that arrived by push;
 *  - hybrid: a region over a small custom store of this file that serves
 *    pages clean since the precopy pass from the local copy and the
 *    others through the remote store (upager_store_remote_read).
 * Everything the switch needs (VM, runtime, region, connections) is set up
 * before the source pauses, so downtime is the CPU state's transfer only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mig.h"
#include "upager.h"

struct dest {
	struct app *a;
	struct mig_config cfg;
	upager_t *up;
	upager_store_t *remote;
	upager_store_t *layer;   /* hybrid */
	char *pre;               /* hybrid: precopy landing buffer */
	uint8_t *dirty_map;      /* hybrid: units to take from the source */
	uint8_t *hot_map;        /* postcopy: units the source pushes first */
	atomic_uint_fast64_t hot_pushed; /* of those, arrived by push */
	uint64_t t_hot_present;  /* when every hot unit was installed */
	unsigned char *mc_vec;   /* mincore() vector for 256 units */
	int reniced;             /* threads moved to --bg-nice */
	size_t nunits;
	uint64_t ctl_bytes;
	struct stop_info si;
	struct sample *src_samples;
	char state[VM_STATE_MAX];
};

static struct dest *the_dest; /* for callbacks without an argument */

/* ---- upager glue ---- */

static void on_pushed(void *arg, uint64_t off, size_t len)
{
	struct dest *d = arg;
	upager_advise(d->up, d->a->ram + off, len, UPAGER_ADV_WILLNEED);
	uint64_t u = off / d->cfg.page_size;
	if (d->hot_map && (d->hot_map[u / 8] >> (u % 8)) & 1)
		atomic_fetch_add_explicit(&d->hot_pushed, 1,
					  memory_order_relaxed);
}

/* The map is published (release) before the guest resumes; workers reach
 * layer_read() through the kernel's fault path, which the acquire makes
 * visible to race detectors too. */
static bool unit_dirty(const struct dest *d, uint64_t u)
{
	const uint8_t *m = __atomic_load_n(&d->dirty_map, __ATOMIC_ACQUIRE);
	return (m[u / 8] >> (u % 8)) & 1;
}

static int layer_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct dest *d = ctx;
	if (unit_dirty(d, off / d->cfg.page_size))
		return upager_store_remote_read(d->remote, buf, len, off);
	memcpy(buf, d->pre + off, len);
	return 0;
}

static int layer_size(void *ctx, uint64_t *size)
{
	*size = ((struct dest *)ctx)->cfg.ram_size;
	return 0;
}

static uint64_t region_installed(struct app *a)
{
	struct dest *d = the_dest;
	if (!d->up)
		return d->nunits;
	struct upager_stats st;
	if (upager_stats(d->up, a->ram, &st))
		return 0;
	return st.pages_installed;
}

static void setup_upager(struct dest *d)
{
	struct app *a = d->a;
	struct upager_config uc = {
		.workers = a->o.workers,
		.flags = a->o.no_follow ? UPAGER_CFG_NO_FOLLOW : 0,
	};
	int rc = upager_create(&uc, &d->up);
	if (rc)
		die("upager_create: %s", upager_strerror(rc));
	char port[16];
	snprintf(port, sizeof(port), "%u", d->cfg.page_port);
	struct upager_remote_opts ro = { .on_pushed = on_pushed, .arg = d };
	rc = upager_store_remote(a->o.host, port, &ro, &d->remote);
	if (rc)
		die("upager_store_remote(%s:%s): %s", a->o.host, port,
		    upager_strerror(rc));
	upager_store_t *store = d->remote;
	if (d->cfg.mode == MODE_HYBRID) {
		d->pre = map_anon(d->cfg.ram_size);
		struct upager_store_ops ops = { .read = layer_read, .size = layer_size };
		rc = upager_store_custom(&ops, d, &d->layer);
		if (rc)
			die("upager_store_custom: %s", upager_strerror(rc));
		store = d->layer;
	}
	struct upager_map_opts mo = { .page_size = d->cfg.page_size };
	void *addr;
	rc = upager_map(d->up, store, 0, d->cfg.ram_size, &mo, &addr);
	if (rc)
		die("upager_map: %s", upager_strerror(rc));
	a->ram = addr;
}

/* Hybrid: install every clean unit from the local copy, in batches. */
static void *install_clean(void *arg)
{
	struct dest *d = arg;
	size_t batch = 64;
	for (size_t u = 0; u < d->nunits;) {
		if (unit_dirty(d, u)) {
			u++;
			continue;
		}
		size_t v = u;
		while (v < d->nunits && v - u < batch && !unit_dirty(d, v))
			v++;
		upager_advise(d->up, d->a->ram + u * d->cfg.page_size,
			      (v - u) * d->cfg.page_size, UPAGER_ADV_WILLNEED);
		u = v;
	}
	return NULL;
}

/* ---- the stream ---- */

static void recv_config(struct dest *d, int ctl)
{
	struct msg m;
	if (wire_recv(ctl, &m) || m.type != M_CONFIG || m.len != sizeof(d->cfg) ||
	    wire_read(ctl, &d->cfg, sizeof(d->cfg)) || d->cfg.magic != MIG_MAGIC)
		die("dest: no valid configuration from the source");
	struct opts *o = &d->a->o;
	o->mode = (enum mig_mode)d->cfg.mode;
	o->ram_size = d->cfg.ram_size;
	o->nvcpus = (int)d->cfg.nvcpus;
	o->page_size = d->cfg.page_size;
	d->a->kvm = d->cfg.kvm;
	d->nunits = d->cfg.ram_size / d->cfg.page_size;
}

static void recv_stop(struct dest *d, int ctl, const struct msg *m)
{
	char *buf = malloc(m->len);
	if (!buf || wire_read(ctl, buf, m->len))
		die("dest: lost the stream during the switch");
	memcpy(&d->si, buf, sizeof(d->si));
	size_t slen = d->si.nsamples * sizeof(struct sample);
	if (sizeof(d->si) + slen + d->si.state_len + d->si.map_len +
	    d->si.hot_len != m->len || d->si.state_len > sizeof(d->state) ||
	    (d->si.hot_len && d->si.hot_len != (d->nunits + 7) / 8))
		die("dest: malformed switch message");
	d->src_samples = malloc(slen + 1);
	memcpy(d->src_samples, buf + sizeof(d->si), slen);
	memcpy(d->state, buf + sizeof(d->si) + slen, d->si.state_len);
	if (d->si.map_len) {
		uint8_t *map = malloc(d->si.map_len);
		if (!map)
			die("out of memory");
		memcpy(map, buf + sizeof(d->si) + slen + d->si.state_len,
		       d->si.map_len);
		__atomic_store_n(&d->dirty_map, map, __ATOMIC_RELEASE);
	}
	if (d->si.hot_len) {
		d->hot_map = malloc(d->si.hot_len);
		d->mc_vec = malloc(256 * (d->cfg.page_size / GUEST_PAGE));
		if (!d->hot_map || !d->mc_vec)
			die("out of memory");
		memcpy(d->hot_map, buf + m->len - d->si.hot_len, d->si.hot_len);
	}
	d->ctl_bytes += m->len + sizeof(*m);
	free(buf);
}

static void recv_until_stop(struct dest *d, int ctl)
{
	char *target = d->pre ? d->pre : d->a->ram;
	for (;;) {
		struct msg m;
		if (wire_recv(ctl, &m))
			die("dest: the source went away before the switch");
		if (m.type == M_RAM) {
			if (m.a > d->cfg.ram_size || m.len > d->cfg.ram_size - m.a ||
			    wire_read(ctl, target + m.a, m.len))
				die("dest: bad RAM message");
			d->ctl_bytes += m.len + sizeof(m);
		} else if (m.type == M_PASS) {
			d->ctl_bytes += sizeof(m);
			if (wire_send(ctl, M_PASS, m.a, 0, NULL, 0))
				die("dest: the source went away during precopy");
		} else if (m.type == M_STOP) {
			recv_stop(d, ctl, &m);
			return;
		} else {
			die("dest: unexpected message %u", m.type);
		}
	}
}

/* ---- figures ---- */

struct figures {
	double downtime_ms, total_ms, rate_before, rate_during, rate_after;
	double hot_ready_ms;     /* resume -> every hot unit installed */
	uint64_t bytes, demand, pushed, local, hot, hot_pushed, p50, p99;
};

/* Guest work units at time t, from the source's then our samples. */
static double units_at(struct dest *d, uint64_t t)
{
	struct app *a = d->a;
	double u = 0;
	for (size_t i = 0; i < d->si.nsamples && d->src_samples[i].t_ns <= t; i++)
		u = (double)d->src_samples[i].units;
	pthread_mutex_lock(&a->slock);
	for (size_t i = 0; i < a->nsamples && a->samples[i].t_ns <= t; i++)
		u = (double)a->samples[i].units;
	pthread_mutex_unlock(&a->slock);
	return u;
}

static double rate(struct dest *d, uint64_t t0, uint64_t t1)
{
	if (t1 <= t0)
		return 0;
	return (units_at(d, t1) - units_at(d, t0)) * 1e9 / (double)(t1 - t0);
}

static void write_timeline(struct dest *d, uint64_t t_complete)
{
	struct app *a = d->a;
	FILE *f = fopen(a->o.timeline, "a");
	if (!f)
		die("cannot open %s: %s", a->o.timeline, strerror(errno));
	if (ftell(f) == 0)
		fprintf(f, "mode,t_ms,units,rate,installed_frac,phase\n");
	const char *mode = mode_name(a->o.mode);
	for (int side = 0; side < 2; side++) {
		struct sample *s = side ? a->samples : d->src_samples;
		size_t n = side ? a->nsamples : d->si.nsamples;
		for (size_t i = 5; i < n; i++) {
			double dt = (double)(s[i].t_ns - s[i - 5].t_ns) / 1e9;
			double r = (double)(s[i].units - s[i - 5].units) / dt;
			int phase = s[i].t_ns < d->si.t_trigger ? 0 :
				    s[i].t_ns <= t_complete ? 1 : 2;
			double inst = side ? (double)s[i].installed / (double)d->nunits : -1;
			fprintf(f, "%s,%.1f,%llu,%.0f,%.4f,%d\n", mode,
				((double)s[i].t_ns - (double)d->si.t_trigger) / 1e6,
				(unsigned long long)s[i].units, r, inst, phase);
		}
	}
	fclose(f);
}

static void write_csv(struct dest *d, const struct figures *f, bool ok)
{
	struct app *a = d->a;
	FILE *fp = fopen(a->o.csv, "a");
	if (!fp)
		die("cannot open %s: %s", a->o.csv, strerror(errno));
	if (ftell(fp) == 0)
		fprintf(fp, "mode,backend,mem_mib,vcpus,page_kib,downtime_ms,"
			    "total_ms,bytes_sent,demand_pages,pushed_pages,"
			    "local_pages,hot_pages,hot_pushed,hot_ready_ms,"
			    "fault_p50_us,fault_p99_us,rate_before,"
			    "rate_during,rate_after,checksum_ok\n");
	fprintf(fp, "%s,%s,%zu,%d,%zu,%.3f,%.1f,%llu,%llu,%llu,%llu,%llu,%llu,"
		    "%.1f,%llu,%llu,%.0f,%.0f,%.0f,%d\n",
		mode_name(a->o.mode), a->kvm ? "kvm" : "process",
		a->o.ram_size >> 20, a->o.nvcpus, a->o.page_size >> 10,
		f->downtime_ms, f->total_ms, (unsigned long long)f->bytes,
		(unsigned long long)f->demand, (unsigned long long)f->pushed,
		(unsigned long long)f->local, (unsigned long long)f->hot,
		(unsigned long long)f->hot_pushed, f->hot_ready_ms,
		(unsigned long long)f->p50,
		(unsigned long long)f->p99, f->rate_before, f->rate_during,
		f->rate_after, ok);
	fclose(fp);
}

static void report(struct dest *d, uint64_t t_resume, uint64_t t_complete,
		   uint64_t t_end, bool ok)
{
	struct app *a = d->a;
	struct figures f = { 0 };
	f.downtime_ms = (double)(t_resume - d->si.t_pause) / 1e6;
	f.total_ms = (double)(t_complete - d->si.t_trigger) / 1e6;
	f.bytes = d->ctl_bytes;
	if (d->remote) {
		struct upager_remote_stats rs;
		upager_store_remote_stats(d->remote, &rs);
		f.bytes += rs.bytes_received;
		f.demand = rs.demand_reads;
		f.pushed = rs.cache_reads;
		struct upager_stats st;
		upager_stats(d->up, a->ram, &st);
		f.p50 = upager_stats_percentile(&st, 50);
		f.p99 = upager_stats_percentile(&st, 99);
		if (d->dirty_map)
			f.local = st.pages_installed > f.demand + f.pushed ?
				  st.pages_installed - f.demand - f.pushed : 0;
		f.hot = d->si.hot_units;
		f.hot_pushed = atomic_load(&d->hot_pushed);
		if (d->t_hot_present)
			f.hot_ready_ms = (double)(d->t_hot_present - t_resume) / 1e6;
	}
	uint64_t win = (uint64_t)(a->o.migrate_after_ms < 1000 ?
				  a->o.migrate_after_ms : 1000) * 1000000ull;
	f.rate_before = rate(d, d->si.t_trigger - win, d->si.t_trigger);
	f.rate_during = rate(d, d->si.t_trigger, t_complete);
	f.rate_after = rate(d, t_complete, t_end);
	printf("== %s: %zu MiB, %d vCPU(s), %s, %zu KiB pages ==\n",
	       mode_name(a->o.mode), a->o.ram_size >> 20, a->o.nvcpus,
	       a->kvm ? "KVM guest" : "plain process workload",
	       a->o.page_size >> 10);
	printf("downtime (guest paused)   %10.3f ms\n", f.downtime_ms);
	printf("total migration time      %10.1f ms%s\n", f.total_ms,
	       a->o.no_push ? " (no push: pages arrive only on demand)" : "");
	if (d->si.passes)
		printf("precopy passes            %10llu\n",
		       (unsigned long long)d->si.passes);
	printf("bytes sent                %10.1f MiB\n", (double)f.bytes / (1 << 20));
	if (d->remote) {
		printf("pages demand-faulted      %10llu\n", (unsigned long long)f.demand);
		printf("pages pushed              %10llu\n", (unsigned long long)f.pushed);
		if (d->dirty_map)
			printf("pages from precopy copy   %10llu\n",
			       (unsigned long long)f.local);
		if (d->hot_map)
			printf("hot pages (sampled, %.0f ms) %8llu, pushed first "
			       "%llu\n", (double)d->si.hot_sample_ns / 1e6,
			       (unsigned long long)f.hot,
			       (unsigned long long)f.hot_pushed);
		if (d->t_hot_present)
			printf("hot pages all present     %10.1f ms after the "
			       "resume (then %d threads at nice %d)\n",
			       f.hot_ready_ms, d->reniced, a->o.bg_nice);
		printf("fault service p50 / p99   %6llu / %llu us\n",
		       (unsigned long long)f.p50, (unsigned long long)f.p99);
	}
	printf("progress before / during / after: %.0f / %.0f / %.0f units/s "
	       "(during = %.0f%% of before)\n", f.rate_before, f.rate_during,
	       f.rate_after, f.rate_before > 0 ? 100 * f.rate_during / f.rate_before : 0);
	if (a->o.csv)
		write_csv(d, &f, ok);
	if (a->o.timeline)
		write_timeline(d, t_complete);
}

/* ---- the destination ---- */

/* Whether every unit of the hot map is installed, checked on the first
 * page of each unit (units are installed whole). */
static bool hot_present(struct dest *d)
{
	size_t ps = d->cfg.page_size;
	for (size_t u = 0; u < d->nunits;) {
		if (!((d->hot_map[u / 8] >> (u % 8)) & 1)) {
			u++;
			continue;
		}
		size_t v = u;
		while (v < d->nunits && v - u < 256 &&
		       (d->hot_map[v / 8] >> (v % 8)) & 1)
			v++;
		if (mincore(d->a->ram + u * ps, (v - u) * ps, d->mc_vec))
			return false;
		for (size_t k = 0; k < v - u; k++)
			if (!(d->mc_vec[k * (ps / GUEST_PAGE)] & 1))
				return false;
		u = v;
	}
	return true;
}

/* Every hot unit is in: tell the source, and let the rest of the
 * migration yield the CPUs to the guest. */
static void hot_done(struct dest *d, int ctl)
{
	struct app *a = d->a;
	d->t_hot_present = now_ns();
	if (wire_send(ctl, M_HOT, 0, 0, NULL, 0))
		die("dest: the source went away");
	if (a->o.bg_nice)
		d->reniced = renice_background(a, a->o.bg_nice);
}

static uint64_t wait_complete(struct dest *d, int ctl, uint64_t t_resume)
{
	struct app *a = d->a;
	if (!d->up)
		return t_resume;
	if (a->o.no_push)
		return now_ns();
	uint64_t end = now_ns() + 300ull * 1000000000ull;
	while (region_installed(a) < d->nunits) {
		if (d->hot_map && !d->t_hot_present && hot_present(d))
			hot_done(d, ctl);
		if (atomic_load(&a->failed))
			die("dest: guest failed: %s", a->fail_msg);
		if (now_ns() > end)
			die("dest: pages still missing after 300 s");
		if (atomic_load(&a->finished) == a->o.nvcpus)
			break;
		sleep_ms(1);
	}
	return now_ns();
}

int run_dest(struct app *a, int ctl, pid_t source_pid)
{
	static struct dest d;
	d.a = a;
	the_dest = &d;
	recv_config(&d, ctl);
	if (a->o.mode == MODE_POSTCOPY || a->o.mode == MODE_HYBRID)
		setup_upager(&d);
	else
		a->ram = map_anon(a->o.ram_size);
	a->installed = region_installed;
	struct vm_hooks h;
	app_hooks(a, &h);
	int rc = vm_create(a->kvm, a->ram, a->o.ram_size, a->o.nvcpus, &h, &a->vm);
	if (rc)
		die("dest: vm_create: %s", strerror(-rc));
	recv_until_stop(&d, ctl);

	rc = vm_load(a->vm, d.state, d.si.state_len);
	if (rc)
		die("dest: bad CPU state");
	for (int i = 0; i < a->o.nvcpus; i++)
		atomic_store(&a->units[i], d.si.units_pause[i]);
	sampler_start(a);
	vm_resume(a->vm);
	uint64_t t_resume = now_ns();
	if (d.remote && !a->o.no_push) {
		rc = upager_store_remote_push(d.remote);
		if (rc)
			die("dest: push: %s", upager_strerror(rc));
	}
	pthread_t clean;
	if (d.dirty_map && pthread_create(&clean, NULL, install_clean, &d))
		die("dest: cannot start the installer thread");
	if (a->o.kill_after_ms && source_pid > 0) {
		sleep_ms(a->o.kill_after_ms);
		kill(source_pid, SIGKILL);
		printf("dest: killed the source (pid %d) %u ms after the switch\n",
		       (int)source_pid, a->o.kill_after_ms);
	}
	uint64_t t_complete = wait_complete(&d, ctl, t_resume);
	if (d.dirty_map)
		pthread_join(clean, NULL);
	sleep_ms(a->o.run_after_ms);
	uint64_t t_end = now_ns();
	if (!finish_guest(a, 300000))
		die("dest: guest did not finish: %s", a->fail_msg);
	sampler_stop(a);
	vm_pause(a->vm);
	bool ok = check_checksums(a);
	report(&d, t_resume, t_complete, t_end, ok);
	wire_send(ctl, M_DONE, 0, 0, NULL, 0);
	close(ctl);
	if (!ok) {
		fprintf(stderr, "vm-migrate: CHECKSUM MISMATCH after %s migration: "
				"guest memory was corrupted\n", mode_name(a->o.mode));
		return 1;
	}
	printf("checksum OK: the guest's RAM matches an unmigrated run\n");
	vm_destroy(a->vm);
	free(d.hot_map);
	free(d.mc_vec);
	if (d.up) {
		upager_unmap(d.up, a->ram);
		upager_store_release(d.remote);
		upager_store_release(d.layer);
		upager_destroy(d.up);
	}
	return 0;
}
