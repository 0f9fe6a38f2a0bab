# Warning and sanitizer flags, carried by one interface target that every skyring target
# links privately (so they never leak into a user's build through the package config).
# SKYRING_WERROR=OFF keeps the warnings but not as errors: for compilers newer than the
# project's (Debian 12's GCC 12), whose new warnings should not stop a user's build.
option(SKYRING_WERROR "Treat warnings as errors" ON)
add_library(skyring_build_flags INTERFACE)
if(SKYRING_WERROR)
  target_compile_options(skyring_build_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror --Werror=all-warnings>)
else()
  target_compile_options(skyring_build_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra> $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
endif()
# GCC 12 at -O3 reports impossible overlaps inside libstdc++'s std::string code
# (GCC bug 105329, fixed in 13): a false positive in system headers, not in ours.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(skyring_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
endif()

if(SKYRING_SANITIZE)
  string(REPLACE ";" "," _skyring_san "${SKYRING_SANITIZE}")
  target_compile_options(skyring_build_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${_skyring_san} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(skyring_build_flags INTERFACE -fsanitize=${_skyring_san})
endif()
