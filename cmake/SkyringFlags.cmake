# Warning and sanitizer flags, carried by one interface target that every skyring target
# links privately (so they never leak into a user's build through the package config).
add_library(skyring_build_flags INTERFACE)
target_compile_options(skyring_build_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror --Werror=all-warnings>)

if(SKYRING_SANITIZE)
  string(REPLACE ";" "," _skyring_san "${SKYRING_SANITIZE}")
  target_compile_options(skyring_build_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${_skyring_san} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(skyring_build_flags INTERFACE -fsanitize=${_skyring_san})
endif()
