# Installs libskyring, the public headers and a package config, so that a user's project
# does find_package(skyring CONFIG REQUIRED) and links skyring::skyring.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS skyring EXPORT skyringTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# skyring/torch.h only where libskyring_torch is built (it needs libtorch's headers).
if(SKYRING_WITH_TORCH)
  install(DIRECTORY include/skyring DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    FILES_MATCHING PATTERN "*.h")
else()
  install(DIRECTORY include/skyring DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    FILES_MATCHING PATTERN "*.h" PATTERN "torch.h" EXCLUDE)
endif()
install(FILES ${PROJECT_BINARY_DIR}/include/skyring/version.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/skyring)
install(EXPORT skyringTargets NAMESPACE skyring::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/skyring)

# The optional component torch (find_package(skyring COMPONENTS torch)): libskyring_torch
# in an export set of its own, which the package config loads only when asked, after
# finding libtorch (its target links libtorch's imported target `torch`).
if(SKYRING_WITH_TORCH)
  install(TARGETS skyring_torch EXPORT skyringTorchTargets
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT skyringTorchTargets NAMESPACE skyring::
    DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/skyring)
endif()

configure_package_config_file(cmake/skyringConfig.cmake.in
  ${PROJECT_BINARY_DIR}/skyringConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/skyring)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/skyringConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/skyringConfig.cmake
  ${PROJECT_BINARY_DIR}/skyringConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/skyring)
