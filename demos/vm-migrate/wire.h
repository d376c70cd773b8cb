/*
 * wire.h - the migration stream between vm-migrate's source and
 * destination: control messages, RAM, CPU state. (Pages that fault on
 * the destination after a postcopy switch do not use it: they travel over
 * upager's remote page protocol.)
 *
 * Every message is a 32-byte header then `len` payload bytes. Both ends
 * are this program, on hosts of the same byte order; the stream is not
 * versioned beyond the magic in M_CONFIG.
 */
#ifndef VMM_WIRE_H
#define VMM_WIRE_H

#include <stddef.h>
#include <stdint.h>

enum {
	M_CONFIG = 1, /* src->dst: struct mig_config */
	M_RAM = 2,    /* src->dst: a = guest RAM offset, payload = bytes */
	M_PASS = 3,   /* src->dst: a = precopy pass ended, b = bytes;
			 dst->src: the same a, once all of it arrived */
	M_STOP = 4,   /* src->dst: struct stop_info, samples, CPU state,
			 dirty map (hybrid), hot map (postcopy) */
	M_DONE = 5,   /* dst->src: the source may exit */
	M_HOT = 6,    /* dst->src: every hot unit is installed (postcopy) */
};

struct msg {
	uint32_t type, pad;
	uint64_t a, b, len;
};

#define MIG_MAGIC 0x4d49474bu

enum mig_mode { MODE_NONE, MODE_STOPCOPY, MODE_PRECOPY, MODE_POSTCOPY,
		MODE_HYBRID };

struct mig_config {
	uint32_t magic;
	uint32_t mode;
	uint64_t ram_size;
	uint32_t nvcpus;
	uint32_t kvm;
	uint32_t page_size;   /* install unit = server block size */
	uint32_t page_port;   /* page server port (postcopy, hybrid) */
	uint32_t hot_div, pages_per_unit;
};

struct sample {
	uint64_t t_ns;
	uint64_t units;
	uint64_t installed;
};

struct stop_info {
	uint64_t t_trigger, t_pause, t_stop_sent;
	uint64_t units_trigger;
	uint64_t passes;
	uint64_t nsamples;
	uint64_t state_len;
	uint64_t map_len;     /* hybrid: dirty map bytes (one bit per unit) */
	uint64_t hot_len;     /* postcopy: hot map bytes (one bit per unit),
				 after the dirty map */
	uint64_t hot_units;   /* postcopy: bits set in the hot map */
	uint64_t hot_sample_ns; /* postcopy: length of the sampling window */
	uint64_t hot_cpu_ns;  /* postcopy: vCPU time in that window */
	uint32_t units_pause[8]; /* each vCPU's work units when paused */
};

/* All return 0 or -errno (-EPIPE at end of stream). */
int wire_send(int fd, uint32_t type, uint64_t a, uint64_t b,
	      const void *payload, size_t len);
int wire_send2(int fd, uint32_t type, uint64_t a, uint64_t b,
	       const void *p1, size_t l1, const void *p2, size_t l2);
int wire_recv(int fd, struct msg *m);
int wire_read(int fd, void *buf, size_t n);

#endif /* VMM_WIRE_H */
