# upagerInstall.cmake - install rules and the CMake/pkg-config packages.
#
# Included by the top-level CMakeLists.txt after src/ so that the library
# targets exist. Installs:
#   lib/libupager.so.*, lib/libupager.a          (components Runtime, Development)
#   include/upager.h                             (Development)
#   lib/cmake/upager/upager{Config,ConfigVersion,Targets,StaticTargets}.cmake
#   lib/pkgconfig/upager.pc                      (written at install time)

include(CMakePackageConfigHelpers)

set(UPAGER_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/upager" CACHE STRING
    "Where upagerConfig.cmake is installed, relative to the prefix")
mark_as_advanced(UPAGER_CMAKE_DIR)

set_target_properties(upager PROPERTIES EXPORT_NAME upager)
set_target_properties(upager_static PROPERTIES EXPORT_NAME upager_static)

install(TARGETS upager EXPORT upagerTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
    COMPONENT Runtime NAMELINK_COMPONENT Development
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT Runtime)
install(TARGETS upager_static EXPORT upagerStaticTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT Development)
install(FILES "${PROJECT_SOURCE_DIR}/include/upager.h"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" COMPONENT Development)

install(EXPORT upagerTargets NAMESPACE upager::
  DESTINATION "${UPAGER_CMAKE_DIR}" COMPONENT Development)
install(EXPORT upagerStaticTargets NAMESPACE upager::
  DESTINATION "${UPAGER_CMAKE_DIR}" COMPONENT Development)

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/upagerConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/cmake/upagerConfig.cmake"
  INSTALL_DESTINATION "${UPAGER_CMAKE_DIR}")
# 0.x releases make no compatibility promise across minor versions.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/cmake/upagerConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/cmake/upagerConfig.cmake"
  "${PROJECT_BINARY_DIR}/cmake/upagerConfigVersion.cmake"
  DESTINATION "${UPAGER_CMAKE_DIR}" COMPONENT Development)

configure_file("${PROJECT_SOURCE_DIR}/cmake/upagerPkgConfig.cmake.in"
               "${PROJECT_BINARY_DIR}/cmake/upagerPkgConfig.cmake" @ONLY)
install(SCRIPT "${PROJECT_BINARY_DIR}/cmake/upagerPkgConfig.cmake"
  COMPONENT Development)
