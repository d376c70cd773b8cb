/*
 * fuzz_remote_proto.c - the remote page protocol parser under attack.
 *
 * Built two ways from the same file:
 *  - with clang and -DUPAGER_FUZZ=ON, a libFuzzer target
 *    (fuzz_remote_proto_fuzzer): LLVMFuzzerTestOneInput() feeds arbitrary
 *    bytes to upager__rp_parse_stream() and checks its invariants;
 *  - always, a ctest regression run (fuzz_remote_proto): the hand-made
 *    frames below, each with the exact result the parser must give, then
 *    any corpus files named on the command line, then a fixed-seed run of
 *    random mutations of valid streams through the same invariants.
 *
 * Invariants: the parser never reads past the buffer (ASan builds catch
 * it), returns a frame count no larger than n / 32, and accepts a frame
 * only if re-encoding its decoded header gives back the same 32 bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remote_proto.h"

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_remote_proto: invariant broken: %s\n", what);
	abort();
}

/* Checks the invariants on one input. */
static void check_input(const uint8_t *data, size_t n)
{
	int frames = upager__rp_parse_stream(data, n);
	if (frames > 0 && (size_t)frames > n / UPAGER__RP_HDR)
		fail("more frames than headers fit");
	if (frames < 0 && frames != -EBADMSG && frames != -EPROTONOSUPPORT)
		fail("unexpected error code");
	if (n >= UPAGER__RP_HDR) {
		struct upager__rp_hdr h;
		if (upager__rp_decode(data, &h) == 0) {
			uint8_t again[UPAGER__RP_HDR];
			upager__rp_encode(&h, again);
			if (memcmp(again, data, UPAGER__RP_HDR))
				fail("accepted header does not re-encode");
			if (h.len > UPAGER__RP_MAX_DATA)
				fail("accepted an oversized payload");
			if (h.type == RP_READ && h.offset + h.arg < h.offset)
				fail("accepted a READ that wraps");
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	check_input(data, n);
	return 0;
}

#ifndef UPAGER_LIBFUZZER

/* ---- hand-made frames with their expected results ---- */

static size_t frame(uint8_t *out, uint16_t type, uint32_t id, uint32_t len,
		    uint64_t off, uint64_t arg)
{
	struct upager__rp_hdr h = {
		.type = type, .id = id, .len = len, .offset = off, .arg = arg,
	};
	upager__rp_encode(&h, out);
	return UPAGER__RP_HDR;
}

static int failures;

static void expect(const char *name, const uint8_t *buf, size_t n, int want)
{
	int got = upager__rp_parse_stream(buf, n);
	check_input(buf, n);
	if (got != want) {
		fprintf(stderr, "FAIL %s: parse gave %d, expected %d\n", name,
			got, want);
		failures++;
	} else {
		printf("ok   %s (%d)\n", name, got);
	}
}

static void hello_cases(void)
{
	uint8_t b[128];
	struct upager__rp_hello m = { .token = 42, .channel = RP_CHAN_DEMAND };
	size_t n = frame(b, RP_HELLO, 0, UPAGER__RP_HELLO_LEN, 0, 0);
	upager__rp_encode_hello(&m, b + n);
	expect("hello valid", b, n + UPAGER__RP_HELLO_LEN, 1);
	m.channel = 3;
	upager__rp_encode_hello(&m, b + n);
	expect("hello unknown channel", b, n + UPAGER__RP_HELLO_LEN, -EBADMSG);
	m.channel = RP_CHAN_BULK;
	m.flags = 1;
	upager__rp_encode_hello(&m, b + n);
	expect("hello flags set", b, n + UPAGER__RP_HELLO_LEN, -EBADMSG);
	frame(b, RP_HELLO, 0, 8, 0, 0);
	expect("hello short payload", b, 40, -EBADMSG);
	frame(b, RP_HELLO, 0, UPAGER__RP_HELLO_LEN, 0, 0);
	expect("hello truncated payload", b, n + 4, 0);
	frame(b, RP_HELLO, 7, UPAGER__RP_HELLO_LEN, 0, 0);
	expect("hello with id", b, 48, -EBADMSG);
}

static void header_cases(void)
{
	uint8_t b[128];
	memset(b, 0, sizeof(b));
	expect("zeros", b, 32, -EBADMSG);
	expect("short buffer", b, 31, 0);
	frame(b, RP_PUSH_DONE, 0, 0, 0, 0);
	expect("push done", b, 32, 1);
	b[0] ^= 1;
	expect("bad magic", b, 32, -EBADMSG);
	frame(b, RP_PUSH_DONE, 0, 0, 0, 0);
	b[4] = 2; /* version 2 */
	expect("other version", b, 32, -EPROTONOSUPPORT);
	frame(b, 0, 0, 0, 0, 0);
	expect("type 0", b, 32, -EBADMSG);
	frame(b, RP_TYPE_MAX + 1, 0, 0, 0, 0);
	expect("unknown type", b, 32, -EBADMSG);
	frame(b, RP_PUSH_START, 0, 0, 0, 1);
	expect("push start with arg", b, 32, -EBADMSG);
}

static void read_data_cases(void)
{
	uint8_t b[128];
	frame(b, RP_READ, 1, 0, 4096, 65536);
	expect("read valid", b, 32, 1);
	frame(b, RP_READ, 0, 0, 4096, 65536);
	expect("read id 0", b, 32, -EBADMSG);
	frame(b, RP_READ, 1, 0, 4096, 0);
	expect("read length 0", b, 32, -EBADMSG);
	frame(b, RP_READ, 1, 0, 0, UPAGER__RP_MAX_DATA + 1ull);
	expect("read too long", b, 32, -EBADMSG);
	frame(b, RP_READ, 1, 0, UINT64_MAX - 10, 4096);
	expect("read wraps", b, 32, -EBADMSG);
	frame(b, RP_READ, 1, 16, 0, 4096);
	expect("read with payload", b, 32, -EBADMSG);
	frame(b, RP_DATA, 9, 8, 0, 0);
	memset(b + 32, 0xab, 8);
	frame(b + 40, RP_PUSH_DONE, 0, 0, 0, 0);
	expect("data then push done", b, 72, 2);
	frame(b, RP_DATA, 9, 0, 0, 0);
	expect("data empty", b, 32, -EBADMSG);
	frame(b, RP_DATA, 9, UPAGER__RP_MAX_DATA + 1, 0, 0);
	expect("data too long", b, 32, -EBADMSG);
	frame(b, RP_PUSH, 0, UPAGER__RP_BLOCK_MAX + 1, 0, 0);
	expect("push too long", b, 32, -EBADMSG);
	frame(b, RP_PUSH, 3, 4096, 0, 0);
	expect("push with id", b, 32, -EBADMSG);
}

static void welcome_error_cases(void)
{
	uint8_t b[128];
	frame(b, RP_WELCOME, 0, 0, 1 << 20, 65536);
	expect("welcome valid", b, 32, 1);
	frame(b, RP_WELCOME, 0, 0, 1 << 20, 65535);
	expect("welcome block not pow2", b, 32, -EBADMSG);
	frame(b, RP_WELCOME, 0, 0, 1 << 20, 4u << 20);
	expect("welcome block too big", b, 32, -EBADMSG);
	frame(b, RP_ERROR, 0, 5, 0, EPROTO);
	memcpy(b + 32, "oops!", 5);
	expect("error valid", b, 37, 1);
	b[34] = '\n';
	expect("error control char", b, 37, -EBADMSG);
	frame(b, RP_ERROR, 0, 0, 0, 0);
	expect("error errno 0", b, 32, -EBADMSG);
	frame(b, RP_ERROR, 0, 300, 0, 5);
	expect("error text too long", b, 32, -EBADMSG);
}

/* ---- random mutations of a valid stream ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void mutate_run(unsigned rounds)
{
	uint8_t base[256], b[256];
	size_t n = 0;
	struct upager__rp_hello m = { .token = 1, .channel = RP_CHAN_BULK };
	n += frame(base + n, RP_HELLO, 0, UPAGER__RP_HELLO_LEN, 0, 0);
	upager__rp_encode_hello(&m, base + n);
	n += UPAGER__RP_HELLO_LEN;
	n += frame(base + n, RP_READ, 5, 0, 8192, 4096);
	n += frame(base + n, RP_DATA, 5, 16, 8192, 0);
	memset(base + n, 0x5a, 16);
	n += 16;
	n += frame(base + n, RP_ERROR, 5, 4, 0, EIO);
	memcpy(base + n, "gone", 4);
	n += 4;
	n += frame(base + n, RP_PUSH_DONE, 0, 0, 0, 0);
	if (upager__rp_parse_stream(base, n) != 5)
		fail("seed stream does not parse");
	for (unsigned r = 0; r < rounds; r++) {
		memcpy(b, base, n);
		unsigned flips = 1 + (unsigned)(next_rand() % 8);
		for (unsigned i = 0; i < flips; i++)
			b[next_rand() % n] ^= (uint8_t)(1u << (next_rand() % 8));
		check_input(b, 1 + (size_t)(next_rand() % n));
	}
	printf("ok   %u random mutations\n", rounds);
}

static void replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		failures++;
		return;
	}
	static uint8_t buf[1 << 20];
	size_t n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	check_input(buf, n);
	printf("ok   corpus %s (%zu bytes)\n", path, n);
}

int main(int argc, char **argv)
{
	header_cases();
	hello_cases();
	read_data_cases();
	welcome_error_cases();
	for (int i = 1; i < argc; i++)
		replay_file(argv[i]);
	mutate_run(200000);
	if (failures) {
		fprintf(stderr, "%d parser case(s) failed\n", failures);
		return 1;
	}
	return 0;
}

#endif /* UPAGER_LIBFUZZER */
