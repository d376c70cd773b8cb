/*
 * test_cli_size.c - cli_parse_size(), the byte-size syntax of the
 * programs' command lines (cli/size.h).
 *
 * Values by value, every error by its code, and *out untouched on every
 * error (the programs keep their defaults in it). Needs no userfaultfd,
 * so it runs cmocka directly instead of through tu_main().
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>

#include "size.h"

#define UNTOUCHED 0x5a5a5a5a5a5a5a5aull

static void check_ok(const char *s, uint64_t want)
{
	uint64_t v = UNTOUCHED;

	print_message("\"%s\"\n", s);
	assert_int_equal(cli_parse_size(s, &v), 0);
	assert_true(v == want);
}

static void check_err(const char *s, int err)
{
	uint64_t v = UNTOUCHED;

	print_message("\"%s\"\n", s ? s : "(null)");
	assert_int_equal(cli_parse_size(s, &v), err);
	assert_true(v == UNTOUCHED);
}

static void test_plain_numbers(void **state)
{
	(void)state;
	check_ok("0", 0);
	check_ok("1", 1);
	check_ok("4096", 4096);
	check_ok("4096B", 4096);
	check_ok("4096b", 4096);
	/* Decimal even with a leading zero: not octal. */
	check_ok("010", 10);
	check_ok("18446744073709551615", UINT64_MAX);
}

static void test_suffixes(void **state)
{
	(void)state;
	check_ok("4K", 4096);
	check_ok("4k", 4096);
	check_ok("4KiB", 4096);
	check_ok("4kib", 4096);
	check_ok("4KB", 4096);
	check_ok("4kb", 4096);
	check_ok("2M", 2ull << 20);
	check_ok("2MiB", 2ull << 20);
	check_ok("1G", 1ull << 30);
	check_ok("1g", 1ull << 30);
	check_ok("1GiB", 1ull << 30);
	check_ok("3T", 3ull << 40);
	check_ok("0K", 0);
	/* The largest value each unit can carry. */
	check_ok("16777215T", 16777215ull << 40);
	check_ok("17179869183G", 17179869183ull << 30);
}

static void test_malformed(void **state)
{
	(void)state;
	check_err(NULL, -EINVAL);
	check_err("", -EINVAL);
	check_err("12Q", -EINVAL);
	check_err("-1", -EINVAL);
	check_err("+1", -EINVAL);
	check_err(" 1", -EINVAL);
	check_err("1 ", -EINVAL);
	check_err("K", -EINVAL);
	check_err("KiB", -EINVAL);
	check_err("B", -EINVAL);
	check_err("0x10", -EINVAL);
	check_err("1.5G", -EINVAL);
	check_err("1e3", -EINVAL);
	check_err("4Ki", -EINVAL);
	check_err("4iB", -EINVAL);
	check_err("4KK", -EINVAL);
	check_err("4KBB", -EINVAL);
	check_err("4KiBx", -EINVAL);
	check_err("4P", -EINVAL);
	/* Garbage is reported as such even after too many digits. */
	check_err("99999999999999999999Q", -EINVAL);
}

static void test_out_of_range(void **state)
{
	(void)state;
	check_err("18446744073709551616", -ERANGE);
	check_err("99999999999999999999", -ERANGE);
	check_err("99999999999999999999K", -ERANGE);
	/* 2^34 GiB is 2^64 bytes: the multiplication overflows. */
	check_err("17179869184G", -ERANGE);
	check_err("16777216T", -ERANGE);
	check_err("18014398509481984K", -ERANGE);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_plain_numbers),
	cmocka_unit_test(test_suffixes),
	cmocka_unit_test(test_malformed),
	cmocka_unit_test(test_out_of_range),
};

int main(void)
{
	return cmocka_run_group_tests(tests, NULL, NULL);
}
