/*
 * guest.S - the guest program of vm-migrate and lazy-restore.
 *
 * Runs in 64-bit long mode at CPL 3 with IOPL 3 (so OUT works and the
 * code runs natively even on PVM-style KVM hosts, which emulate guest
 * supervisor code that is not PVM-aware), identity-mapped with 2 MiB user
 * pages (page tables built by guest_setup() at 0x4000); the
 * VMM copies the bytes between vmg_guest_start and vmg_guest_end to guest
 * physical address 0x1000 and enters there with %ebx pointing at this
 * vCPU's parameter block (see guest.h, struct guest_params). Only relative
 * jumps are used, so the code runs wherever it is copied.
 *
 *  1. fill: dword i of the vCPU's slice = (i * 0x9E3779B1) ^ seed;
 *     OUT 0x10 when done.
 *  2. work units, until stop_units (written by the VMM) is reached: each
 *     unit picks pages_per_unit pages of the hot set with an LCG and
 *     updates 16 dwords per page, v = rol(v + unit, 3), folding each into
 *     the checksum, sum = rol(sum, 5) + v; OUT 0x11 with the unit count.
 *  3. final scan: every dword of the slice folded into the checksum;
 *     OUT 0x12 with the unit count, OUT 0x13 with the checksum, then
 *     OUT 0x14 (halt: HLT would fault at CPL 3).
 * guest_model.c computes the same checksum on the host.
 */
	.section .rodata
	.globl vmg_guest_start
	.globl vmg_guest_end
	.code64
vmg_guest_start:
	mov 0(%rbx), %edi		/* p = slice base */
	mov 4(%rbx), %ecx
	shl $10, %ecx			/* dwords in the slice */
	xor %eax, %eax			/* i */
	mov 20(%rbx), %esi		/* seed */
1:	imul $0x9E3779B1, %eax, %edx
	xor %esi, %edx
	mov %edx, (%rdi)
	add $4, %rdi
	inc %eax
	cmp %ecx, %eax
	jne 1b
	outl %eax, $0x10

	xor %ebp, %ebp			/* units done */
	xor %edi, %edi			/* checksum */
	mov 20(%rbx), %eax
	mov %eax, 32(%rbx)		/* lcg state = seed */
unit:
	mov 24(%rbx), %eax		/* stop_units, 0: run on */
	test %eax, %eax
	jz 2f
	cmp %eax, %ebp
	jae scan
2:	mov 16(%rbx), %ecx		/* pages left in this unit */
page:
	mov 32(%rbx), %eax
	imul $1664525, %eax, %eax
	add $1013904223, %eax
	mov %eax, 32(%rbx)
	shr $8, %eax
	and 12(%rbx), %eax		/* page within the hot set */
	add 8(%rbx), %eax		/* + first hot page */
	shl $12, %eax
	add 0(%rbx), %eax
	mov %eax, %edx			/* page address (zero-extended) */
	lea 4096(%rdx), %rsi		/* page end */
word:
	mov (%rdx), %eax
	add %ebp, %eax
	rol $3, %eax
	mov %eax, (%rdx)
	rol $5, %edi
	add %eax, %edi
	add $256, %rdx
	cmp %rsi, %rdx
	jb word
	dec %ecx
	jnz page
	inc %ebp
	mov %ebp, %eax
	outl %eax, $0x11
	jmp unit

scan:
	mov 0(%rbx), %edx
	mov 4(%rbx), %ecx
	shl $12, %ecx
	add %rdx, %rcx
3:	mov (%rdx), %eax
	rol $5, %edi
	add %eax, %edi
	add $4, %rdx
	cmp %rcx, %rdx
	jb 3b
	mov %ebp, %eax
	outl %eax, $0x12
	mov %edi, %eax
	outl %eax, $0x13
4:	outl %eax, $0x14
	jmp 4b
vmg_guest_end:
	.section .note.GNU-stack,"",@progbits
