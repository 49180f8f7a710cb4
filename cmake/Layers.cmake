# The layers of DESIGN.md as CMake targets, so that the build enforces their direction.
#
#   pagedkv_layer(<target> <folder> SOURCES ... [DEPENDS <lower layer targets>] [LIBS ...])
#
# makes an OBJECT library of the folder's sources. Code names its headers by their path from the
# source root ("allocator/page_format.hpp", "shaders/kernels/row_copy.hpp"), but the source root
# itself is on no include path: each layer gets an include root of its own in the build tree
# holding one link, to its folder, and sees only its own root and those of the layers it
# DEPENDS on (PUBLIC, so transitively). An include of a layer above, or of one it does not
# depend on, therefore fails to compile. The public headers (include/) are on every path.
#
# The objects are built once, position-independent and with hidden visibility, and go into the
# shared library (where only PAGEDKV_API symbols are exported) and into pagedkv_internal, the
# static library the tests, fuzzers and the bench link to reach the layers' internals.
function(pagedkv_layer target folder)
    cmake_parse_arguments(ARG "" "" "SOURCES;DEPENDS;LIBS;PUBLIC_LIBS" ${ARGN})
    add_library(${target} OBJECT ${ARG_SOURCES})
    set(root ${PROJECT_BINARY_DIR}/layers/${target})
    get_filename_component(parent ${root}/${folder} DIRECTORY)
    file(MAKE_DIRECTORY ${parent})
    if(NOT EXISTS ${root}/${folder})
        file(CREATE_LINK ${PROJECT_SOURCE_DIR}/${folder} ${root}/${folder} SYMBOLIC)
    endif()
    target_include_directories(${target} PUBLIC
        $<BUILD_INTERFACE:${root}>
        $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
        $<BUILD_INTERFACE:${PAGEDKV_GENERATED_INCLUDE_DIR}>)
    target_link_libraries(${target} PUBLIC ${ARG_DEPENDS} ${ARG_PUBLIC_LIBS} PRIVATE ${ARG_LIBS})
    target_compile_definitions(${target} PRIVATE PAGEDKV_BUILDING_LIBRARY)
    target_compile_features(${target} PUBLIC cxx_std_20)
    set_target_properties(${target} PROPERTIES
        POSITION_INDEPENDENT_CODE ON
        CXX_VISIBILITY_PRESET hidden
        VISIBILITY_INLINES_HIDDEN ON)
    pagedkv_warnings(${target})
    set_property(GLOBAL APPEND PROPERTY PAGEDKV_LAYERS ${target})
endfunction()

# Links a shared library of the layers' objects with cmake/pagedkv.map where the linker takes
# version scripts (GNU ld, lld), so that it exports the public API and nothing else.
function(pagedkv_export_only_api target)
    if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND NOT APPLE)
        set(map ${PROJECT_SOURCE_DIR}/cmake/pagedkv.map)
        target_link_options(${target} PRIVATE "LINKER:--version-script=${map}")
        set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${map})
    endif()
endfunction()
