# Warnings on, and clean: every target of ours gets the same set.
function(pagedkv_warnings target)
    if(MSVC)
        target_compile_options(${target} PRIVATE /W4)
    else()
        target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow
            -Wdouble-promotion
            # Vulkan structs are made as `VkFooInfo x{VK_STRUCTURE_TYPE_...}`: the rest zeroed.
            -Wno-missing-field-initializers
            # C++ only (a target may hold a C source, e.g. tests/sanitizers/*.c).
            $<$<COMPILE_LANGUAGE:CXX>:-Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual>)
        if(PAGEDKV_WERROR)
            target_compile_options(${target} PRIVATE -Werror)
        endif()
    endif()
endfunction()
