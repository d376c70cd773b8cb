# consumer.cmake - registers the "install" test (tests/cmake-consumer).
#
# Included from tests/CMakeLists.txt:
#   include(${PROJECT_SOURCE_DIR}/tests/consumer.cmake)
# The test installs this build tree into a fresh prefix under the build
# directory and builds a small program against it through
# find_package(upager) (shared and static) and through pkg-config.

set(_upager_consumer_cflags "")
if(UPAGER_SANITIZE STREQUAL "address")
  set(_upager_consumer_cflags "-fsanitize=address,undefined -fno-omit-frame-pointer")
elseif(UPAGER_SANITIZE STREQUAL "thread")
  set(_upager_consumer_cflags "-fsanitize=thread -fno-omit-frame-pointer")
endif()

add_test(NAME install_consumer
  COMMAND bash "${PROJECT_SOURCE_DIR}/tests/cmake-consumer/run.sh"
          "${PROJECT_BINARY_DIR}" "${CMAKE_CURRENT_BINARY_DIR}/install-consumer")
set_tests_properties(install_consumer PROPERTIES
  LABELS "install"
  TIMEOUT 300
  RUN_SERIAL TRUE
  SKIP_RETURN_CODE 77
  ENVIRONMENT "UPAGER_CMAKE=${CMAKE_COMMAND};UPAGER_CC=${CMAKE_C_COMPILER};UPAGER_CFLAGS=${_upager_consumer_cflags};UPAGER_LDFLAGS=${_upager_consumer_cflags}")
unset(_upager_consumer_cflags)
