# CUDA is enabled wherever nvcc exists, GPU or not: kernels/ is compiled in every such
# build so that device code can never rot unseen. Sanitizer builds skip it (nvcc output
# is not instrumented, and the CPU twins carry the logic those builds check).
set(SKYRING_WITH_CUDA OFF)
if(SKYRING_ENABLE_CUDA AND NOT SKYRING_SANITIZE)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere, Hopper (H100/H200) and Blackwell (GB200); PTX of the last for newer parts.
      set(CMAKE_CUDA_ARCHITECTURES 80-real 90-real 100)
    endif()
    enable_language(CUDA)
    # CMake 3.25 predates nvcc 13 and does not know its C++20 flag: teach it.
    if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    find_package(CUDAToolkit REQUIRED)
    set(SKYRING_WITH_CUDA ON)
    message(STATUS "skyring: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, kernels for ${CMAKE_CUDA_ARCHITECTURES}")
  else()
    message(STATUS "skyring: no CUDA compiler found; kernels/ is not built")
  endif()
endif()
