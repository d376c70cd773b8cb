/*
 * vmm.h - a minimal machine for the guest program: a KVM virtual machine
 * (64-bit long mode at CPL 3, no devices; port I/O only), or, where
 * /dev/kvm cannot be used, the same program as host threads
 * ("plain process" backend). Both expose the same operations, so the
 * migration code does not care which one runs.
 *
 * Threads: one per vCPU, started by vm_resume() and joined by vm_pause().
 * The hooks are called from vCPU threads.
 */
#ifndef VMM_VMM_H
#define VMM_VMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "guest.h"

struct vm;

struct vm_hooks {
	void (*filled)(void *arg, int vcpu);
	void (*progress)(void *arg, int vcpu, uint32_t units);
	void (*finished)(void *arg, int vcpu, uint32_t units, uint32_t sum);
	void (*failed)(void *arg, int vcpu, const char *why);
	void *arg;
};

/* Bytes of vm_save() output for n vCPUs (an upper bound). */
#define VM_STATE_MAX (GUEST_MAX_VCPUS * 2048u)

/* Creates a machine over guest RAM @ram (@ram_size bytes, page aligned,
 * kept by the caller). @kvm: use /dev/kvm (else host threads). Returns 0
 * or -errno (-ENODEV: /dev/kvm unusable). */
int vm_create(bool kvm, void *ram, size_t ram_size, int nvcpus,
	      const struct vm_hooks *hooks, struct vm **out);
void vm_destroy(struct vm *vm);
bool vm_is_kvm(const struct vm *vm);

/* Sets every vCPU to the program's entry point (a fresh boot). */
int vm_reset(struct vm *vm);
/* Starts every vCPU that has not finished. */
int vm_resume(struct vm *vm);
/* Stops every vCPU at an instruction boundary with its state complete,
 * and joins the vCPU threads. */
int vm_pause(struct vm *vm);
/* CPU time the running vCPU threads have used, in ns, averaged over
 * the vCPUs (guest time included). */
uint64_t vm_cpu_ns(const struct vm *vm);
/* Whether @tid is the thread of one of the running vCPUs. */
bool vm_is_vcpu_thread(const struct vm *vm, pid_t tid);
/* Whether every vCPU ran its program to the end. */
bool vm_all_done(const struct vm *vm);

/* CPU state of every vCPU (paused). Returns bytes written to @buf. */
size_t vm_save(struct vm *vm, void *buf);
int vm_load(struct vm *vm, const void *buf, size_t len);

/* Dirty page tracking of guest RAM, one bit per 4 KiB page. */
int vm_dirty_log(struct vm *vm, bool on);
/* ORs the pages written since the last call into @bitmap and clears the
 * log. */
int vm_dirty_fetch(struct vm *vm, uint64_t *bitmap);

/* Makes vCPU 0 call @first(@arg) from its thread as soon as it has run its
 * first guest instruction after the next vm_resume() (KVM: a trampoline
 * whose first instruction is an OUT; the process backend calls it before
 * its first unit). Used to time the first guest instruction. */
void vm_trap_first(struct vm *vm, void (*first)(void *arg), void *arg);

#endif /* VMM_VMM_H */
