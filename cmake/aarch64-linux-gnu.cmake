# Cross build for aarch64 Linux on a Debian x86-64 host (make test-aarch64):
#   sh scripts/aarch64-sysroot.sh build-aarch64/sysroot
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#         -DEVX_AARCH64_SYSROOT=build-aarch64/sysroot
# The compiler is Debian's gcc-aarch64-linux-gnu (with its own libc to link
# against). The arm64 libevent and check, and the loader and libc the tests
# run with, come from EVX_AARCH64_SYSROOT, unpacked from Debian's arm64
# packages by scripts/aarch64-sysroot.sh without installing them. Without
# EVX_AARCH64_SYSROOT they are looked up where multiarch installs them
# (/usr/lib/aarch64-linux-gnu). ctest runs every test program under qemu-user.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_ASM_COMPILER aarch64-linux-gnu-gcc)

# try_compile projects read this file again, in the same process: hand them
# EVX_AARCH64_SYSROOT so they set the same environment.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES EVX_AARCH64_SYSROOT)

# Only arm64 .pc files: the host's would hand x86-64 libraries to the linker.
if(EVX_AARCH64_SYSROOT)
  get_filename_component(_evx_root "${EVX_AARCH64_SYSROOT}" ABSOLUTE)
  set(ENV{PKG_CONFIG_SYSROOT_DIR} "${_evx_root}") # -I and -L point into it
  set(ENV{PKG_CONFIG_LIBDIR} "${_evx_root}/usr/lib/aarch64-linux-gnu/pkgconfig:${_evx_root}/usr/share/pkgconfig")
else()
  set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
endif()
set(ENV{PKG_CONFIG_PATH} "")

# Programs from the host, everything else for the target.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)

# ctest (and try_run) start target programs through qemu-user, with the
# Debian arm64 loader and libc: under -L from the sysroot, else the multiarch
# ones at their usual paths. Not the cross toolchain's libc
# (/usr/aarch64-linux-gnu): with it, pthread_create hangs under Debian 12's
# qemu-user 7.2.
find_program(EVX_QEMU_AARCH64 qemu-aarch64 REQUIRED)
if(EVX_AARCH64_SYSROOT)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${EVX_QEMU_AARCH64} -L ${_evx_root})
else()
  set(CMAKE_CROSSCOMPILING_EMULATOR ${EVX_QEMU_AARCH64})
endif()
