# SPDX-License-Identifier: BSD-3-Clause
# Sourced by tools/run.sh and tools/test.sh: how each configures its build directory.
# run.sh builds only the gateway, in build/, without the test suite (whose dependencies it
# does not install). test.sh uses the same build/ and must turn the suite back on, since
# CMake keeps a cached option until it is given again.
run_cmake_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DKERNELGATE_BUILD_TESTS=OFF)
test_cmake_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DKERNELGATE_BUILD_TESTS=ON
                  -DKERNELGATE_WERROR=ON)
asan_cmake_flags=(-DCMAKE_BUILD_TYPE=Debug -DKERNELGATE_SANITIZE=ON -DKERNELGATE_BUILD_TESTS=ON
                  -DKERNELGATE_WERROR=ON)
