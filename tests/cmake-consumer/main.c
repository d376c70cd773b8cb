/*
 * main.c - consumer of an installed upager.
 *
 * Checks what an application sees through the installed package: the
 * header and the library agree on the version, errors have text, a
 * runtime can be created and destroyed, and (for the shared library) the
 * library loaded at run time is the one under the prefix being tested,
 * not some other copy on the system.
 *
 * usage: consumer <install-prefix>
 * exit: 0 ok, 1 failure, 77 userfaultfd not available to this process.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <upager.h>

static int failures;

#define CHECK(cond, ...)                                                 \
	do {                                                             \
		if (!(cond)) {                                           \
			fprintf(stderr, "consumer: FAIL %s:%d: ", __FILE__, \
				__LINE__);                               \
			fprintf(stderr, __VA_ARGS__);                    \
			fputc('\n', stderr);                             \
			failures++;                                      \
		}                                                        \
	} while (0)

static void check_version(void)
{
	const char *v = upager_version();
	char expect[32];

	snprintf(expect, sizeof(expect), "%d.%d.%d", UPAGER_VERSION_MAJOR,
		 UPAGER_VERSION_MINOR, UPAGER_VERSION_PATCH);
	CHECK(v != NULL, "upager_version() returned NULL");
	if (v == NULL)
		return;
	CHECK(strcmp(v, UPAGER_VERSION_STRING) == 0,
	      "library version \"%s\" != header version \"%s\"", v,
	      UPAGER_VERSION_STRING);
	CHECK(strcmp(expect, UPAGER_VERSION_STRING) == 0,
	      "header macros %s disagree with UPAGER_VERSION_STRING %s", expect,
	      UPAGER_VERSION_STRING);
	printf("consumer: upager %s\n", v);
}

static void check_strerror(void)
{
	const char *neg = upager_strerror(-EINVAL);
	const char *pos = upager_strerror(EINVAL);

	CHECK(neg != NULL && neg[0] != '\0', "upager_strerror(-EINVAL) empty");
	CHECK(pos != NULL && neg != NULL && strcmp(neg, pos) == 0,
	      "upager_strerror(-EINVAL) and (EINVAL) differ");
	CHECK(neg != NULL && strcmp(neg, upager_strerror(-ENOMEM)) != 0,
	      "upager_strerror(-EINVAL) and (-ENOMEM) are the same text");
	printf("consumer: upager_strerror(-EINVAL) = \"%s\"\n",
	       neg ? neg : "(null)");
	CHECK(upager_strerror(0) != NULL, "upager_strerror(0) is NULL");
}

/* 1: ran, 0: failed, -1: userfaultfd not available here. */
static int check_runtime(void)
{
	struct upager_config cfg = { .workers = 1 };
	upager_t *up = NULL;
	int rc = upager_create(&cfg, &up);

	if (rc == -ENOSYS || rc == -EPERM) {
		printf("consumer: SKIP runtime: userfaultfd not available (%s)\n",
		       upager_strerror(rc));
		return -1;
	}
	CHECK(rc == 0, "upager_create: %s", upager_strerror(rc));
	if (rc != 0)
		return 0;
	CHECK(up != NULL, "upager_create returned 0 but no runtime");

	struct upager_stats st;
	rc = upager_stats(up, NULL, &st);
	CHECK(rc == 0, "upager_stats: %s", upager_strerror(rc));
	CHECK(rc != 0 || st.regions == 0, "fresh runtime has %llu regions",
	      (unsigned long long)st.regions);
	CHECK(upager_unmap(up, NULL) == -EINVAL, "upager_unmap(NULL addr)");
	upager_destroy(up);
	upager_destroy(NULL);
	return 1;
}

/* The shared library in use must live under the tested prefix. */
static void check_origin(const char *prefix)
{
#if CONSUMER_SHARED
	Dl_info info;
	char lib[PATH_MAX], pre[PATH_MAX];
	const char *(*fn)(void) = upager_version;
	void *sym;

	/* ISO C has no function-to-object pointer cast; POSIX needs one. */
	memcpy(&sym, &fn, sizeof(sym));
	info.dli_fname = NULL;
	CHECK(dladdr(sym, &info) != 0 &&
		      info.dli_fname != NULL,
	      "dladdr(upager_version) failed");
	if (info.dli_fname == NULL)
		return;
	CHECK(realpath(info.dli_fname, lib) != NULL, "realpath(%s)",
	      info.dli_fname);
	CHECK(realpath(prefix, pre) != NULL, "realpath(%s)", prefix);
	CHECK(strncmp(lib, pre, strlen(pre)) == 0 &&
		      lib[strlen(pre)] == '/',
	      "loaded %s, which is not under %s", lib, pre);
	printf("consumer: library %s\n", lib);
#else
	(void)prefix;
#endif
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <install-prefix>\n", argv[0]);
		return 1;
	}
	check_version();
	check_strerror();
	check_origin(argv[1]);
	int ran = check_runtime();
	if (failures) {
		fprintf(stderr, "consumer: %d check(s) failed\n", failures);
		return 1;
	}
	return ran < 0 ? 77 : 0;
}
