/*
 * guest.h - the guest program's memory layout and its host-side model.
 *
 * Guest RAM layout (guest physical addresses): the program at 0x1000, one
 * 64-byte parameter block per vCPU from 0x2000, identity-mapping page
 * tables for long mode from 0x4000, and from 1 MiB to the end
 * the data, split into one slice per vCPU. guest.S runs on a vCPU;
 * guest_model.c runs the same algorithm on the host, either to compute
 * the checksum a run must end with, or as the "plain process" workload
 * used where /dev/kvm is not available.
 */
#ifndef VMM_GUEST_H
#define VMM_GUEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_CODE_GPA 0x1000u
#define GUEST_PARAMS_GPA 0x2000u
#define GUEST_TRAMP_GPA 0x3000u  /* vmm.c's trampoline */
#define GUEST_PT_GPA 0x4000u     /* PML4, PDPT, 4 PDs: up to 0xa000 */
#define GUEST_DATA_GPA 0x100000u
#define GUEST_MAX_VCPUS 8
#define GUEST_PAGE 4096u

/* OUT ports used by the guest. */
#define PORT_FILLED 0x10
#define PORT_PROGRESS 0x11
#define PORT_UNITS 0x12
#define PORT_CHECKSUM 0x13
#define PORT_HALT 0x14
#define PORT_FIRST 0x15 /* the VMM's first-instruction trampoline */

/* One vCPU's parameter block; offsets are fixed by guest.S. */
struct guest_params {
	uint32_t base;           /* 0: slice start (GPA) */
	uint32_t npages;         /* 4: slice pages */
	uint32_t hot_start;      /* 8: first hot page (slice index) */
	uint32_t hot_mask;       /* 12: hot pages - 1 (power of two) */
	uint32_t pages_per_unit; /* 16 */
	uint32_t seed;           /* 20 */
	uint32_t stop_units;     /* 24: 0 = run on; written by the VMM */
	uint32_t reserved;       /* 28 */
	uint32_t lcg;            /* 32: the guest's LCG state */
	uint32_t pad[7];
};

_Static_assert(sizeof(struct guest_params) == 64, "guest.S layout");

/* Bytes of guest code, from guest.S. */
extern const unsigned char vmg_guest_start[], vmg_guest_end[];

/* Lays out the program and parameter blocks in guest RAM (host mapping
 * @ram of @ram_size bytes) for @nvcpus vCPUs; @hot_div sets the hot set
 * to at most 1/hot_div of each slice. Returns 0 or -EINVAL. */
int guest_setup(void *ram, size_t ram_size, int nvcpus, unsigned hot_div,
		unsigned pages_per_unit);

/* The parameter block of vCPU @i. */
struct guest_params *guest_params_of(void *ram, int i);

/* Checksum vCPU @i's program must report after @units work units, computed
 * on the host from its parameters alone. */
uint32_t guest_model_checksum(const struct guest_params *p, uint32_t units);

/* ---- the plain-process workload: the same program as a host thread ---- */

enum pw_phase { PW_FILL = 0, PW_WORK = 1, PW_DONE = 2 };

/* A "vCPU" of the process workload: its whole CPU state. */
struct pw_state {
	uint32_t phase, units, sum, pad;
};

struct pw_hooks {
	void (*filled)(void *arg, int vcpu);
	void (*progress)(void *arg, int vcpu, uint32_t units);
	void (*finished)(void *arg, int vcpu, uint32_t units, uint32_t sum);
	void *arg;
};

/* Runs vCPU @i's program on host memory @ram from state @st until it ends
 * or *@stop becomes true (checked between work units). Pages written are
 * marked in @dirty (one bit per 4 KiB page of RAM) when it is not NULL. */
void pw_run(void *ram, int i, struct pw_state *st, atomic_bool *stop,
	    _Atomic uint64_t *dirty, const struct pw_hooks *h);

#endif /* VMM_GUEST_H */
