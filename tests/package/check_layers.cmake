# The layering of DESIGN.md as a source check, beside the build's own enforcement (each layer
# sees only the include roots of the layers below it, cmake/Layers.cmake): what a layer may not
# include, whatever the include path, and what the public headers may not offer.
# cmake -P script; SOURCE_DIR is the source root.
set(problems "")
function(forbid folder regex why)
    file(GLOB_RECURSE files "${SOURCE_DIR}/${folder}/*.cpp" "${SOURCE_DIR}/${folder}/*.hpp"
         "${SOURCE_DIR}/${folder}/*.h" "${SOURCE_DIR}/${folder}/*.c")
    foreach(f IN LISTS files)
        file(STRINGS "${f}" lines REGEX "${regex}")
        foreach(line IN LISTS lines)
            file(RELATIVE_PATH rel "${SOURCE_DIR}" "${f}")
            string(APPEND problems "${rel}: ${line}  (${why})\n")
        endforeach()
    endforeach()
    set(problems "${problems}" PARENT_SCOPE)
endfunction()

forbid(allocator "^#include [<\"](vulkan/|cache/|shaders/|tools/|tests/)"
    "allocator/ is plain C++: no Vulkan, nothing above it")
forbid(shaders "^#include \"(cache/|tools/|tests/)" "shaders/ has no cache policy")
forbid(shaders/vulkan "^#include \"shaders/(kernels|store)/" "vulkan/ is below kernels and store")
forbid(shaders/kernels "^#include \"shaders/store/" "kernels/ are below the page stores")
forbid(cache "^#include \"(tools/|tests/)" "the library does not use tools or tests")
forbid(cache/manager "^#include \"cache/(kinds|snapshot|capi|transfer)/" "manager/ is below the kinds")
forbid(cache/transfer "^#include \"cache/(kinds|snapshot|capi)/" "transfer/ sits on the manager alone")
forbid(cache/kinds "^#include \"cache/(snapshot|capi)/" "kinds/ are below snapshots and the C API")
forbid(cache/snapshot "^#include \"cache/capi/" "snapshot/ is below the C API")
forbid(tools "^#include \"(\\.\\./)*tests/" "tools use tests/reference through its target only")
forbid(include "^[^/]*detail::[A-Za-z_]+[&*]? +[a-z_]+\\(\\) const"
    "public headers offer no detail:: accessors")
forbid(include "^#include \"(allocator|cache|shaders|tools|tests)/"
    "public headers include public headers only")

file(STRINGS "${SOURCE_DIR}/tools/CMakeLists.txt" tool_lines REGEX "tests/")
foreach(line IN LISTS tool_lines)
    string(APPEND problems "tools/CMakeLists.txt: ${line}  (tools reach tests/ only through "
                           "the pagedkv_reference target)\n")
endforeach()

if(problems)
    message(FATAL_ERROR "layering broken:\n${problems}")
endif()
message(STATUS "layers hold: no include points up or sideways")
