/*
 * mig.h - state shared by vm-migrate's source and destination halves.
 */
#ifndef VMM_MIG_H
#define VMM_MIG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmm.h"
#include "wire.h"

struct opts {
	enum mig_mode mode;
	size_t ram_size;
	int nvcpus;
	bool no_kvm;
	bool no_push;
	size_t page_size;
	unsigned migrate_after_ms;
	unsigned run_after_ms;
	unsigned kill_after_ms;   /* run: SIGKILL the source this long after
				     the switch (postcopy test) */
	unsigned workers;
	bool no_follow;
	unsigned hot_div;
	unsigned pages_per_unit;
	unsigned max_passes;
	size_t max_dirty;         /* precopy stops iterating below this */
	unsigned hot_sample_ms;   /* postcopy: dirty-log window that finds
				     the pages to push first (0: off) */
	int bg_nice;              /* postcopy: nice of the migration's
				     threads once the hot pages are in */
	const char *csv;
	const char *timeline;
	const char *host;         /* dest: source host; source: bind address */
	const char *port;
};

struct app {
	struct opts o;
	struct vm *vm;
	char *ram;
	bool kvm;
	_Atomic uint32_t units[GUEST_MAX_VCPUS];
	atomic_int filled, finished;
	atomic_bool failed;
	char fail_msg[160];
	uint32_t fin_units[GUEST_MAX_VCPUS], fin_sum[GUEST_MAX_VCPUS];

	/* Timeline, sampled every 10 ms by a thread. */
	pthread_t sampler;
	atomic_bool sampling;
	pthread_mutex_t slock;
	struct sample *samples;
	size_t nsamples, scap;
	uint64_t (*installed)(struct app *a); /* dest: units present */
	void *installed_arg;
};

uint64_t now_ns(void);
void sleep_ms(unsigned ms);
const char *mode_name(enum mig_mode m);
uint64_t total_units(struct app *a);
void app_hooks(struct app *a, struct vm_hooks *h);
void sampler_start(struct app *a);
void sampler_stop(struct app *a);
/* Waits until every vCPU filled RAM (or finished); false on failure. */
bool wait_filled(struct app *a, unsigned timeout_ms);
/* Asks every vCPU to stop after its current unit and waits for the
 * final reports; false on failure or timeout. */
bool finish_guest(struct app *a, unsigned timeout_ms);
/* Checks each vCPU's checksum against the model; prints; true if all
 * match. */
bool check_checksums(struct app *a);
void *map_anon(size_t len);
/* Sets the nice value of every thread of this process but the main one
 * and the running vCPUs to @nice (the rest of the push then yields the
 * CPUs to the guest). Returns the threads changed. */
int renice_background(struct app *a, int nice);
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

int run_source(struct app *a, int ctl);
int run_dest(struct app *a, int ctl, pid_t source_pid);

#endif /* VMM_MIG_H */
