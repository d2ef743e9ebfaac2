# SPDX-License-Identifier: BSD-3-Clause
function(kernelgate_target_warnings target)
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow
        -Wnon-virtual-dtor -Wcast-align -Wunused -Woverloaded-virtual -Wimplicit-fallthrough)
    # g++ 12 reports Asio's coroutine frame allocator as mismatched new/delete (false positive).
    target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-Wno-mismatched-new-delete>)
    if(KERNELGATE_WERROR)
        target_compile_options(${target} PRIVATE -Werror)
    endif()
endfunction()
