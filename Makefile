# Thin wrappers over CMake. `make test` and `make demo` install missing Debian
# packages first, so they work on a fresh machine.
BUILD    ?= build
JOBS     ?= 2
CMAKE_FLAGS ?=
PREFIX   ?= $(CURDIR)/$(BUILD)/stage

# Runtime + test dependencies (Debian package names).
DEPS      = build-essential cmake pkg-config libevent-dev check libsqlite3-dev \
            libcurl4-openssl-dev libjansson-dev libuv1-dev curl python3 python3-aiosmtpd \
            python3-prometheus-client \
            redis-server libhiredis-dev
# The Redis suites start their own redis-server; ext/tasks' Redis backend
# needs hiredis (with its libevent adapter). Celery and RQ are the task-queue
# references of bench/tasks_redis.sh.
BENCH_DEPS = wrk python3-tornado python3-celery python3-rq redis-server gnuplot-nox
# make docs (and make install-check, which checks the installed man pages).
DOCS_DEPS = doxygen man-db
# Reliability runs (make test-valgrind, make fuzz-smoke).
VALGRIND_DEPS = valgrind
FUZZ_DEPS  = clang libclang-rt-14-dev
# make test-aarch64: the cross compiler and qemu-user. The arm64 libraries
# (libevent, check, the loader and libc) are not installed: they are unpacked
# into build-aarch64/sysroot (scripts/aarch64-sysroot.sh).
AARCH64_DEPS = gcc-aarch64-linux-gnu qemu-user
FUZZ_SECONDS ?= 60


.PHONY: all deps build docs test demo test-asan test-tsan test-valgrind test-aarch64 fuzz-smoke install install-check bench clean

all: build

deps:
	@sh scripts/deps.sh $(DEPS)

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan:
	$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DEVX_SANITIZE=address -DEVX_BUILD_BENCH=OFF"

test-tsan:
	$(MAKE) test BUILD=build-tsan CMAKE_FLAGS="-DEVX_SANITIZE=thread -DEVX_BUILD_BENCH=OFF"

# valgrind memcheck over the Check suites: one process per suite (CK_FORK=no),
# any memory error or leak fails it (see tests/CMakeLists.txt, EVX_VALGRIND).
test-valgrind:
	@sh scripts/deps.sh $(VALGRIND_DEPS)
	$(MAKE) test BUILD=build-valgrind CMAKE_FLAGS="-DEVX_VALGRIND=ON -DEVX_BUILD_BENCH=OFF -DEVX_BUILD_EXAMPLES=OFF"

# The library cross-built for aarch64 (cmake/aarch64-linux-gnu.cmake, -Werror
# like every build) and every suite of that build run under qemu-user (all but
# those of ext/sqlite, ext/mail and the Redis backend, whose libraries the
# sysroot lacks): the aarch64 context switch (core/coro-switch-aarch64.S,
# tests/test_coro_switch.c) and the aarch64 atomics tested on every CI run.
test-aarch64:
	@sh scripts/deps.sh $(AARCH64_DEPS)
	sh scripts/aarch64-sysroot.sh build-aarch64/sysroot
	$(MAKE) build BUILD=build-aarch64 CMAKE_FLAGS="-DCMAKE_TOOLCHAIN_FILE=$(CURDIR)/cmake/aarch64-linux-gnu.cmake -DEVX_AARCH64_SYSROOT=$(CURDIR)/build-aarch64/sysroot -DEVX_BUILD_BENCH=OFF -DEVX_BUILD_EXAMPLES=OFF -DEVX_BUILD_SQLITE=OFF -DEVX_BUILD_MAIL=OFF -DEVX_BUILD_REDIS=OFF"
	cd build-aarch64 && ctest --output-on-failure --no-tests=error -j $(JOBS)

# Every libFuzzer target in fuzz/ for FUZZ_SECONDS in total, built with clang
# and ASan+UBSan in build-fuzz; any crash, leak or sanitizer report fails.
fuzz-smoke:
	@sh scripts/deps.sh $(FUZZ_DEPS)
	$(MAKE) build BUILD=build-fuzz CMAKE_FLAGS="-DCMAKE_C_COMPILER=clang -DEVX_BUILD_FUZZ=ON -DEVX_SANITIZE=address -DEVX_BUILD_TESTS=OFF -DEVX_BUILD_EXAMPLES=OFF -DEVX_BUILD_BENCH=OFF"
	sh fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

# The API reference from the public headers' comments (Doxygen): HTML in
# $(BUILD)/docs/html, man pages in $(BUILD)/docs/man/man3 (installed by
# make install once built). Reconfigures so CMake finds a new doxygen.
# Any Doxygen warning fails it (WARN_AS_ERROR in cmake/Doxyfile.in).
docs: build
	@sh scripts/deps.sh $(DOCS_DEPS)
	cmake -S . -B $(BUILD) >/dev/null
	cmake --build $(BUILD) --target docs

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

# Build programs outside the tree against the installed libraries, with both
# pkg-config and find_package(evexec), run them without LD_LIBRARY_PATH, and
# read an installed man page.
install-check: docs
	$(MAKE) install
	sh scripts/install-check.sh $(PREFIX)

# 10 minutes of mixed hostile load on examples/hello (slow clients, leavers,
# overload, garbage, long polls); RSS and descriptors bounded and reported.
SOAK_SECONDS ?= 600
soak: build
	/usr/bin/python3 scripts/soak.py --bin $(BUILD)/examples/hello/evx_hello --seconds $(SOAK_SECONDS)

demo: build
	@sh scripts/demo.sh $(BUILD)

bench: deps
	@sh scripts/deps.sh $(BENCH_DEPS)
	$(MAKE) build BUILD=build-bench CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Release"
	sh bench/run.sh build-bench

clean:
	rm -rf build build-asan build-tsan build-valgrind build-fuzz build-bench build-aarch64
