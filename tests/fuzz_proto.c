/*
 * fuzz_proto.c - fuzz target for the daemon protocol decoder and the
 * Firecracker handshake parser (src/proto.c).
 *
 * Input: byte 0 selects the parser (even: a protocol record, odd: a
 * Firecracker JSON handshake), the rest is its input. Properties checked
 * beyond "no crash, no leak, no undefined behaviour":
 *  - a request that decodes re-encodes to exactly the same bytes (the
 *    decoder accepts nothing the encoder cannot produce);
 *  - a parsed handshake's regions satisfy every rule the daemon relies on
 *    (aligned, in range, no overlap).
 *
 * Built two ways (tests/CMakeLists.txt):
 *  - with clang -fsanitize=fuzzer (option UPAGER_FUZZ=ON, scripts/fuzz):
 *    the libFuzzer target;
 *  - as a plain program (any compiler; ctest case fuzz_proto_replay):
 *    main() replays every file named on the command line or found in the
 *    directories named, plus built-in seeds and deterministic mutations
 *    of them, through the same entry point.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto.h"

static void check_record(const uint8_t *d, size_t n)
{
	struct upager__msg m;
	if (upager__proto_decode(d, n, &m) || (m.type & UPAGER_MSG_REPLY))
		return;
	uint8_t out[512];
	size_t len = 0;
	switch (m.type) {
	case UPAGER_MSG_HELLO:
		len = upager__enc_hello(out, m.seq, m.u.hello.role);
		break;
	case UPAGER_MSG_MAP:
		len = upager__enc_map(out, m.seq, m.u.map.base, m.u.map.length,
				      m.u.map.offset, m.u.map.readahead,
				      m.u.map.page_size, m.u.map.flags);
		break;
	case UPAGER_MSG_UNMAP:
		len = upager__enc_unmap(out, m.seq, m.u.unmap.base);
		break;
	case UPAGER_MSG_ADVISE:
		len = upager__enc_advise(out, m.seq, m.u.advise.addr,
					 m.u.advise.len, m.u.advise.advice);
		break;
	case UPAGER_MSG_STATS:
		len = upager__enc_stats(out, m.seq);
		break;
	case UPAGER_MSG_LIST:
		len = upager__enc_list(out, m.seq, m.u.list.first);
		break;
	default:
		abort(); /* decoded a type that does not exist */
	}
	if (len != n || memcmp(out, d, n))
		abort();
}

static void check_fc(const uint8_t *d, size_t n)
{
	struct upager__fc_region r[UPAGER_FC_MAX_REGIONS];
	unsigned k;
	if (upager__fc_parse((const char *)d, n, r, UPAGER_FC_MAX_REGIONS, &k))
		return;
	if (k == 0 || k > UPAGER_FC_MAX_REGIONS)
		abort();
	for (unsigned i = 0; i < k; i++) {
		uint64_t ps = r[i].page_size;
		if (ps < 4096 || ps > (2u << 20) || (ps & (ps - 1)) ||
		    (r[i].base & (ps - 1)) || !r[i].size ||
		    r[i].base + r[i].size < r[i].base)
			abort();
		for (unsigned j = 0; j < i; j++)
			if (r[i].base < r[j].base + r[j].size &&
			    r[j].base < r[i].base + r[i].size)
				abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	/* A private copy of exactly the input's size, so that ASan sees any
	 * read past its end. */
	uint8_t *copy = malloc(size - 1 ? size - 1 : 1);
	if (!copy)
		return 0;
	memcpy(copy, data + 1, size - 1);
	if (data[0] & 1)
		check_fc(copy, size - 1);
	else
		check_record(copy, size - 1);
	free(copy);
	return 0;
}

#ifndef UPAGER_LIBFUZZER

static unsigned long runs;

static void run(const uint8_t *d, size_t n)
{
	LLVMFuzzerTestOneInput(d, n);
	runs++;
}

/* Every prefix, and bit flips at a stride, of one input. */
static void mutate(const uint8_t *d, size_t n)
{
	uint8_t *b = malloc(n + 1);
	for (size_t k = 1; k <= n; k++)
		run(d, k);
	for (size_t i = 1; i < n; i++) {
		for (int bit = 0; bit < 8; bit += 3) {
			memcpy(b, d, n);
			b[i] ^= (uint8_t)(1u << bit);
			run(b, n);
		}
	}
	free(b);
}

static void seed(uint8_t sel, const void *p, size_t n)
{
	uint8_t b[1024];
	b[0] = sel;
	memcpy(b + 1, p, n);
	mutate(b, n + 1);
}

static void builtin_seeds(void)
{
	uint8_t r[512];
	seed(0, r, upager__enc_hello(r, 1, UPAGER_ROLE_CLIENT));
	seed(0, r, upager__enc_map(r, 2, 0x7f0000000000ull, 1 << 20, 4096,
				   65536, 65536, UPAGER_MAPF_DIRECT));
	seed(0, r, upager__enc_unmap(r, 3, 0x7f0000000000ull));
	seed(0, r, upager__enc_advise(r, 4, 0x7f0000001000ull, 8192, 1));
	seed(0, r, upager__enc_stats(r, 5));
	seed(0, r, upager__enc_list(r, 6, 0));
	struct upager__wire_stats st = { .faults = 3 };
	seed(0, r, upager__enc_reply(r, UPAGER_MSG_STATS, 5, 0, &st, NULL, 0, 0));
	seed(0, r, upager__enc_reply(r, UPAGER_MSG_HELLO, 1, -13, NULL, NULL, 0, 0));
	struct upager__client_rec rec = { .pid = 1, .kind = 1 };
	seed(0, r, upager__enc_reply(r, UPAGER_MSG_LIST, 6, 0, NULL, &rec, 1, 1));
	const char *js[] = {
		"[{\"base_host_virt_addr\":140000000000000,\"size\":4194304,"
		"\"offset\":0,\"page_size\":4096}]",
		"[{\"base_host_virt_addr\":140000000000000,\"size\":2097152,"
		"\"offset\":0,\"page_size_kib\":2048},{\"size\":4096,"
		"\"base_host_virt_addr\":140000002097152,\"offset\":2097152,"
		"\"page_size\":4096,\"extra\":[1,{\"a\":null},true,\"x\\\"\"]}]",
		" [ { \"base_host_virt_addr\" : 4096 , \"size\" : 1 , "
		"\"offset\" : 18446744073709551615 , \"page_size\" : 4096 } ] ",
	};
	for (size_t i = 0; i < sizeof(js) / sizeof(js[0]); i++)
		seed(1, js[i], strlen(js[i]));
}

static void replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return;
	uint8_t *b = malloc(1 << 20);
	size_t n = b ? fread(b, 1, 1 << 20, f) : 0;
	fclose(f);
	if (b)
		mutate(b, n);
	free(b);
}

static void replay(const char *path)
{
	struct stat st;
	if (stat(path, &st))
		return;
	if (!S_ISDIR(st.st_mode)) {
		replay_file(path);
		return;
	}
	DIR *d = opendir(path);
	for (struct dirent *e; d && (e = readdir(d));) {
		if (e->d_name[0] == '.')
			continue;
		char p[4096];
		snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
		replay_file(p);
	}
	if (d)
		closedir(d);
}

int main(int argc, char **argv)
{
	builtin_seeds();
	for (int i = 1; i < argc; i++)
		replay(argv[i]);
	printf("fuzz_proto: %lu inputs, no failure\n", runs);
	return 0;
}
#endif
