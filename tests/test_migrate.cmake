# Remote store, page server and vm-migrate tests, included from
# tests/CMakeLists.txt.
#   test_migrate.<case>   remote store cases and one migration per mode
#                         (64 MiB guest; the demo checks the checksum)
#   fuzz_remote_proto     parser regression run (hand-made frames, corpus
#                         files, fixed-seed mutations); works with gcc
#   fuzz_remote_proto_fuzzer  libFuzzer target: clang and -DUPAGER_FUZZ=ON
option(UPAGER_FUZZ "Build libFuzzer targets (clang only)" OFF)

upager_add_test(test_migrate SOURCES test_migrate.c TIMEOUT 120
  LABELS concurrency
  CASES remote_roundtrip remote_push remote_push_first remote_version remote_dies
        mig_stopcopy mig_precopy mig_postcopy mig_hybrid mig_process
        mig_killsrc)
target_compile_definitions(test_migrate PRIVATE
  VM_MIGRATE="$<TARGET_FILE:vm-migrate>")
# The destination leaves on purpose with _exit(3) from its SIGBUS handler
# when the source dies: under ThreadSanitizer that is a "thread leak" of
# the remote store's threads, which is the point of the test, not a bug.
set_tests_properties(test_migrate.mig_killsrc PROPERTIES
  ENVIRONMENT "TSAN_OPTIONS=report_thread_leaks=0 halt_on_error=1")
add_dependencies(test_migrate vm-migrate)

add_executable(fuzz_remote_proto fuzz_remote_proto.c
  ${PROJECT_SOURCE_DIR}/src/remote_proto.c)
target_include_directories(fuzz_remote_proto PRIVATE
  ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
add_test(NAME fuzz_remote_proto COMMAND fuzz_remote_proto)
set_tests_properties(fuzz_remote_proto PROPERTIES
  TIMEOUT 60 LABELS "upager;fuzz")

if(UPAGER_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "UPAGER_FUZZ=ON needs clang (CC=clang)")
  endif()
  add_executable(fuzz_remote_proto_fuzzer fuzz_remote_proto.c
    ${PROJECT_SOURCE_DIR}/src/remote_proto.c)
  target_include_directories(fuzz_remote_proto_fuzzer PRIVATE
    ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
  target_compile_definitions(fuzz_remote_proto_fuzzer PRIVATE UPAGER_LIBFUZZER)
  target_compile_options(fuzz_remote_proto_fuzzer PRIVATE
    -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_remote_proto_fuzzer PRIVATE
    -fsanitize=fuzzer,address,undefined)
endif()
