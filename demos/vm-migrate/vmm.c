/*
 * vmm.c - the machine of vmm.h: a KVM virtual machine without devices, or
 * the guest program as host threads.
 *
 * KVM: one memory slot covering guest RAM from physical address 0; each
 * vCPU starts directly in 64-bit long mode, at CPL 3 with IOPL 3, over an
 * identity map (no boot code needed). CPL 3 matters on PVM-style KVM
 * hosts such as this machine's: they run guest user code natively but
 * emulate, one instruction at a time, supervisor code that is not
 * PVM-aware (about 300 times slower). The guest talks to the VMM only through OUT instructions (exits
 * KVM_EXIT_IO), halting with an OUT. Pausing follows the KVM API's rules: set
 * immediate_exit, kick the thread out of KVM_RUN with a signal, and call
 * KVM_RUN once more with immediate_exit set so that a pending OUT
 * completes before the state is read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vmm.h"

#define KICK_SIGNAL SIGUSR1
#define STATE_MAGIC 0x564d5354u /* "TSMV" */

struct vcpu {
	struct vm *vm;
	int idx;
	int fd;
	struct kvm_run *run;
	pthread_t thr;
	bool running;
	bool done;
	bool step;               /* single-step armed */
	_Atomic pid_t tid;       /* its thread while running, else 0 */
	struct pw_state pw;      /* process backend */
};

struct vm {
	bool kvm;
	int kvm_fd, vm_fd;
	size_t run_size;
	char *ram;
	size_t ram_size;
	int nvcpus;
	struct vm_hooks hooks;
	struct pw_hooks pw_hooks;
	struct vcpu vcpus[GUEST_MAX_VCPUS];
	atomic_bool stop;
	uint32_t slot_flags;
	_Atomic uint64_t *pw_dirty;  /* process backend's dirty log */
	void (*first)(void *arg);
	void *first_arg;
};

static void on_kick(int sig)
{
	(void)sig;
}

/* ---- KVM ---- */

static int set_slot(struct vm *vm, uint32_t flags)
{
	struct kvm_userspace_memory_region r = {
		.slot = 0, .flags = flags, .guest_phys_addr = 0,
		.memory_size = vm->ram_size,
		.userspace_addr = (uint64_t)(uintptr_t)vm->ram,
	};
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return -errno;
	vm->slot_flags = flags;
	return 0;
}

static int kvm_open(struct vm *vm)
{
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0)
		return -ENODEV;
	if (ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		return -ENODEV;
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		return -ENODEV;
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0)
		return -errno;
	int rc = set_slot(vm, 0);
	if (rc)
		return rc;
	int sz = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (sz <= 0)
		return -errno;
	vm->run_size = (size_t)sz;
	for (int i = 0; i < vm->nvcpus; i++) {
		struct vcpu *c = &vm->vcpus[i];
		c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i);
		if (c->fd < 0)
			return -errno;
		c->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE,
			      MAP_SHARED, c->fd, 0);
		if (c->run == MAP_FAILED) {
			c->run = NULL;
			return -errno;
		}
	}
	return 0;
}

static void flat_segment(struct kvm_segment *s, uint16_t sel, uint8_t type,
			 bool code64)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->db = !code64;
	s->l = code64;
	s->s = 1;
	s->g = 1;
}

static int kvm_reset_vcpu(struct vm *vm, struct vcpu *c)
{
	struct kvm_sregs sr;
	if (ioctl(c->fd, KVM_GET_SREGS, &sr) < 0)
		return -errno;
	flat_segment(&sr.cs, 0x1b, 11, true);
	flat_segment(&sr.ds, 0x23, 3, false);
	sr.cs.dpl = sr.ds.dpl = 3;
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	/* Long mode with the identity map guest_setup() built; caches on
	 * (the reset CR0 has CD and NW set). */
	sr.cr3 = GUEST_PT_GPA;
	sr.cr4 = 0x20;          /* PAE */
	sr.cr0 = 0x80000011u;   /* PG, ET, PE */
	sr.efer = 0x500;        /* LME, LMA */
	if (ioctl(c->fd, KVM_SET_SREGS, &sr) < 0)
		return -errno;
	/* MTRRs on, write-back by default: the reset state (MTRRs off)
	 * makes all guest memory uncached. */
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[1];
	} msrs;
	memset(&msrs, 0, sizeof(msrs));
	msrs.hdr.nmsrs = 1;
	msrs.e[0].index = 0x2ff; /* IA32_MTRR_DEF_TYPE */
	msrs.e[0].data = 0xc06;  /* enable, fixed enable, WB */
	if (ioctl(c->fd, KVM_SET_MSRS, &msrs) != 1)
		return -EIO;
	struct kvm_regs r;
	memset(&r, 0, sizeof(r));
	r.rflags = 0x3002; /* IOPL 3 */
	r.rip = GUEST_CODE_GPA;
	r.rbx = GUEST_PARAMS_GPA + (uint64_t)c->idx * sizeof(struct guest_params);
	if (ioctl(c->fd, KVM_SET_REGS, &r) < 0)
		return -errno;
	(void)vm;
	return 0;
}

/* Arms the first-instruction trap: vCPU 0 resumes at a three-instruction
 * trampoline (OUT to PORT_FIRST, then a jump to where it was; %r11, which
 * guest.S never uses, holds the target). Single-stepping would be simpler,
 * but PVM-style hosts turn the debug trap into a guest triple fault. */
static int arm_trampoline(struct vcpu *c)
{
	struct kvm_regs r;
	if (ioctl(c->fd, KVM_GET_REGS, &r) < 0)
		return -errno;
	unsigned char *t = (unsigned char *)c->vm->ram + GUEST_TRAMP_GPA;
	t[0] = 0xe7; /* out %eax, $PORT_FIRST */
	t[1] = PORT_FIRST;
	t[2] = 0x49; /* movabs $rip, %r11 */
	t[3] = 0xbb;
	memcpy(t + 4, &r.rip, 8);
	t[12] = 0x41; /* jmp *%r11 */
	t[13] = 0xff;
	t[14] = 0xe3;
	r.rip = GUEST_TRAMP_GPA;
	if (ioctl(c->fd, KVM_SET_REGS, &r) < 0)
		return -errno;
	return 0;
}

/* Handles one exit; returns false when the vCPU must stop. */
static bool kvm_exit(struct vcpu *c)
{
	struct vm *vm = c->vm;
	struct kvm_run *run = c->run;
	char why[80];
	switch (run->exit_reason) {
	case KVM_EXIT_IO: {
		if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 4)
			break;
		uint32_t v;
		memcpy(&v, (char *)run + run->io.data_offset, 4);
		switch (run->io.port) {
		case PORT_FILLED:
			vm->hooks.filled(vm->hooks.arg, c->idx);
			break;
		case PORT_PROGRESS:
			vm->hooks.progress(vm->hooks.arg, c->idx, v);
			break;
		case PORT_UNITS:
			c->pw.units = v;
			break;
		case PORT_CHECKSUM:
			c->pw.sum = v;
			break;
		case PORT_FIRST:
			if (c->step) {
				c->step = false;
				vm->first(vm->first_arg);
			}
			break;
		case PORT_HALT:
			c->done = true;
			vm->hooks.finished(vm->hooks.arg, c->idx, c->pw.units,
					   c->pw.sum);
			return false;
		}
		return true;
	}
	case KVM_EXIT_HLT:
		c->done = true;
		vm->hooks.finished(vm->hooks.arg, c->idx, c->pw.units, c->pw.sum);
		return false;
	}
	snprintf(why, sizeof(why), "unexpected KVM exit %u", run->exit_reason);
	vm->hooks.failed(vm->hooks.arg, c->idx, why);
	return false;
}

static void *kvm_vcpu_main(void *arg)
{
	struct vcpu *c = arg;
	struct vm *vm = c->vm;
	atomic_store(&c->tid, gettid());
	if (c->step && arm_trampoline(c)) {
		vm->hooks.failed(vm->hooks.arg, c->idx, "cannot arm the trap");
		return NULL;
	}
	while (!atomic_load(&vm->stop)) {
		if (ioctl(c->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			char why[80];
			snprintf(why, sizeof(why), "KVM_RUN: %s", strerror(errno));
			vm->hooks.failed(vm->hooks.arg, c->idx, why);
			break;
		}
		if (!kvm_exit(c))
			break;
	}
	/* Complete a pending OUT so that the saved state is consistent. */
	__atomic_store_n(&c->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	ioctl(c->fd, KVM_RUN, 0);
	return NULL;
}

/* ---- process backend ---- */

static void pw_filled(void *arg, int i)
{
	struct vm *vm = arg;
	vm->hooks.filled(vm->hooks.arg, i);
}

static void pw_progress(void *arg, int i, uint32_t units)
{
	struct vm *vm = arg;
	vm->hooks.progress(vm->hooks.arg, i, units);
}

static void pw_finished(void *arg, int i, uint32_t units, uint32_t sum)
{
	struct vm *vm = arg;
	vm->vcpus[i].done = true;
	vm->hooks.finished(vm->hooks.arg, i, units, sum);
}

static void *pw_vcpu_main(void *arg)
{
	struct vcpu *c = arg;
	struct vm *vm = c->vm;
	atomic_store(&c->tid, gettid());
	if (c->step) {
		c->step = false;
		vm->first(vm->first_arg);
	}
	pw_run(vm->ram, c->idx, &c->pw, &vm->stop, vm->pw_dirty, &vm->pw_hooks);
	return NULL;
}

/* ---- common ---- */

int vm_create(bool kvm, void *ram, size_t ram_size, int nvcpus,
	      const struct vm_hooks *hooks, struct vm **out)
{
	if (nvcpus < 1 || nvcpus > GUEST_MAX_VCPUS)
		return -EINVAL;
	struct vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->kvm = kvm;
	vm->kvm_fd = vm->vm_fd = -1;
	vm->ram = ram;
	vm->ram_size = ram_size;
	vm->nvcpus = nvcpus;
	vm->hooks = *hooks;
	vm->pw_hooks = (struct pw_hooks){ pw_filled, pw_progress, pw_finished, vm };
	for (int i = 0; i < nvcpus; i++) {
		vm->vcpus[i].vm = vm;
		vm->vcpus[i].idx = i;
		vm->vcpus[i].fd = -1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_kick; /* no SA_RESTART: KVM_RUN returns EINTR */
	sigaction(KICK_SIGNAL, &sa, NULL);
	int rc = 0;
	if (kvm) {
		rc = kvm_open(vm);
	} else {
		size_t words = (ram_size / GUEST_PAGE + 63) / 64;
		vm->pw_dirty = calloc(words, sizeof(uint64_t));
		if (!vm->pw_dirty)
			rc = -ENOMEM;
	}
	if (rc) {
		vm_destroy(vm);
		return rc;
	}
	*out = vm;
	return 0;
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	vm_pause(vm);
	for (int i = 0; i < vm->nvcpus; i++) {
		if (vm->vcpus[i].run)
			munmap(vm->vcpus[i].run, vm->run_size);
		if (vm->vcpus[i].fd >= 0)
			close(vm->vcpus[i].fd);
	}
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	free(vm->pw_dirty);
	free(vm);
}

bool vm_is_kvm(const struct vm *vm)
{
	return vm->kvm;
}

int vm_reset(struct vm *vm)
{
	for (int i = 0; i < vm->nvcpus; i++) {
		struct vcpu *c = &vm->vcpus[i];
		memset(&c->pw, 0, sizeof(c->pw));
		c->done = false;
		if (vm->kvm) {
			int rc = kvm_reset_vcpu(vm, c);
			if (rc)
				return rc;
		}
	}
	return 0;
}

int vm_resume(struct vm *vm)
{
	atomic_store(&vm->stop, false);
	for (int i = 0; i < vm->nvcpus; i++) {
		struct vcpu *c = &vm->vcpus[i];
		if (c->done || c->running)
			continue;
		if (vm->kvm)
			__atomic_store_n(&c->run->immediate_exit, 0,
					 __ATOMIC_SEQ_CST);
		int rc = pthread_create(&c->thr, NULL,
					vm->kvm ? kvm_vcpu_main : pw_vcpu_main, c);
		if (rc)
			return -rc;
		c->running = true;
	}
	return 0;
}

int vm_pause(struct vm *vm)
{
	atomic_store(&vm->stop, true);
	for (int i = 0; i < vm->nvcpus; i++) {
		struct vcpu *c = &vm->vcpus[i];
		if (!c->running)
			continue;
		if (vm->kvm) {
			__atomic_store_n(&c->run->immediate_exit, 1,
					 __ATOMIC_SEQ_CST);
			pthread_kill(c->thr, KICK_SIGNAL);
		}
		pthread_join(c->thr, NULL);
		atomic_store(&c->tid, 0);
		c->running = false;
	}
	return 0;
}

uint64_t vm_cpu_ns(const struct vm *vm)
{
	uint64_t sum = 0;
	for (int i = 0; i < vm->nvcpus; i++) {
		const struct vcpu *c = &vm->vcpus[i];
		clockid_t clk;
		struct timespec ts;
		if (!c->running || pthread_getcpuclockid(c->thr, &clk) ||
		    clock_gettime(clk, &ts))
			continue;
		sum += (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	}
	return sum / (uint64_t)vm->nvcpus;
}

bool vm_is_vcpu_thread(const struct vm *vm, pid_t tid)
{
	for (int i = 0; i < vm->nvcpus; i++)
		if (atomic_load(&vm->vcpus[i].tid) == tid)
			return true;
	return false;
}

bool vm_all_done(const struct vm *vm)
{
	for (int i = 0; i < vm->nvcpus; i++)
		if (!vm->vcpus[i].done)
			return false;
	return true;
}

struct state_hdr {
	uint32_t magic, nvcpus, kvm, pad;
};

struct kvm_vcpu_state {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct pw_state pw;
	uint32_t done, pad;
};

size_t vm_save(struct vm *vm, void *buf)
{
	struct state_hdr h = { STATE_MAGIC, (uint32_t)vm->nvcpus, vm->kvm, 0 };
	char *p = buf;
	memcpy(p, &h, sizeof(h));
	p += sizeof(h);
	for (int i = 0; i < vm->nvcpus; i++) {
		struct vcpu *c = &vm->vcpus[i];
		struct kvm_vcpu_state s;
		memset(&s, 0, sizeof(s));
		if (vm->kvm) {
			ioctl(c->fd, KVM_GET_REGS, &s.regs);
			ioctl(c->fd, KVM_GET_SREGS, &s.sregs);
		}
		s.pw = c->pw;
		s.done = c->done;
		memcpy(p, &s, sizeof(s));
		p += sizeof(s);
	}
	return (size_t)(p - (char *)buf);
}

int vm_load(struct vm *vm, const void *buf, size_t len)
{
	struct state_hdr h;
	if (len < sizeof(h))
		return -EINVAL;
	memcpy(&h, buf, sizeof(h));
	if (h.magic != STATE_MAGIC || h.nvcpus != (uint32_t)vm->nvcpus ||
	    h.kvm != vm->kvm ||
	    len != sizeof(h) + h.nvcpus * sizeof(struct kvm_vcpu_state))
		return -EINVAL;
	const char *p = (const char *)buf + sizeof(h);
	for (int i = 0; i < vm->nvcpus; i++) {
		struct vcpu *c = &vm->vcpus[i];
		struct kvm_vcpu_state s;
		memcpy(&s, p, sizeof(s));
		p += sizeof(s);
		if (vm->kvm && (ioctl(c->fd, KVM_SET_SREGS, &s.sregs) < 0 ||
				ioctl(c->fd, KVM_SET_REGS, &s.regs) < 0))
			return -errno;
		c->pw = s.pw;
		c->done = s.done;
	}
	return 0;
}

int vm_dirty_log(struct vm *vm, bool on)
{
	if (!vm->kvm)
		return 0;
	return set_slot(vm, on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
}

int vm_dirty_fetch(struct vm *vm, uint64_t *bitmap)
{
	size_t words = (vm->ram_size / GUEST_PAGE + 63) / 64;
	if (!vm->kvm) {
		for (size_t i = 0; i < words; i++)
			bitmap[i] |= atomic_exchange(&vm->pw_dirty[i], 0);
		return 0;
	}
	uint64_t *tmp = calloc(words, sizeof(uint64_t));
	if (!tmp)
		return -ENOMEM;
	struct kvm_dirty_log d = { .slot = 0, .dirty_bitmap = tmp };
	int rc = 0;
	if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &d) < 0)
		rc = -errno;
	for (size_t i = 0; !rc && i < words; i++)
		bitmap[i] |= tmp[i];
	free(tmp);
	return rc;
}

void vm_trap_first(struct vm *vm, void (*first)(void *arg), void *arg)
{
	vm->first = first;
	vm->first_arg = arg;
	vm->vcpus[0].step = true;
}
