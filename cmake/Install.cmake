# Install rules: headers, the library, a relocatable CMake package (consumers write
# find_package(pagedkv CONFIG REQUIRED) and link pagedkv::pagedkv), a pkg-config file
# (pagedkv.pc) and, when they are built, the programs. Every path is relative to the install
# prefix, so the installed tree may be moved.
include(CMakePackageConfigHelpers)

set(PAGEDKV_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/pagedkv)

install(TARGETS pagedkv
    EXPORT pagedkvTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/pagedkv
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PAGEDKV_GENERATED_INCLUDE_DIR}/pagedkv/version.hpp
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/pagedkv)
install(EXPORT pagedkvTargets
    NAMESPACE pagedkv::
    DESTINATION ${PAGEDKV_CMAKE_DIR})

# fmt is linked privately; only a static archive passes that on to whoever links it.
get_target_property(pagedkv_type pagedkv TYPE)
if(pagedkv_type STREQUAL "STATIC_LIBRARY")
    set(PAGEDKV_FIND_FMT "find_dependency(fmt)")
else()
    set(PAGEDKV_FIND_FMT "# (a shared library: fmt is linked into it already)")
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/pagedkvConfig.cmake.in
    ${PROJECT_BINARY_DIR}/pagedkvConfig.cmake
    INSTALL_DESTINATION ${PAGEDKV_CMAKE_DIR})
# A consumer asking for 0.1 accepts any 0.y at least as new; 1.0 will not match it.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/pagedkvConfigVersion.cmake
    VERSION ${PROJECT_VERSION}
    COMPATIBILITY SameMajorVersion)
install(FILES
    ${PROJECT_BINARY_DIR}/pagedkvConfig.cmake
    ${PROJECT_BINARY_DIR}/pagedkvConfigVersion.cmake
    DESTINATION ${PAGEDKV_CMAKE_DIR})

# pkg-config: lib/pkgconfig/pagedkv.pc, its prefix found from its own directory (${pcfiledir}).
# The public headers include Vulkan's, so vulkan is required either way. A shared library has
# fmt, UCX and the C++ runtime linked in already: they are only for `pkg-config --static`. A
# static archive (the default) needs them at every link, so they are listed as public too and
# `pkg-config --libs pagedkv` works with or without --static. (xxHash is inlined from its
# header: nothing to link.)
set(PAGEDKV_PC_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${PAGEDKV_PC_DIR}")
    message(FATAL_ERROR "pagedkv.pc needs a relative CMAKE_INSTALL_LIBDIR (got ${CMAKE_INSTALL_LIBDIR})")
endif()
file(RELATIVE_PATH PAGEDKV_PC_PREFIX_FROM_PCDIR /prefix/${PAGEDKV_PC_DIR} /prefix)
string(REGEX REPLACE "/$" "" PAGEDKV_PC_PREFIX_FROM_PCDIR "${PAGEDKV_PC_PREFIX_FROM_PCDIR}")
set(pagedkv_pc_runtime)
foreach(lib IN LISTS PAGEDKV_CXX_RUNTIME)
    string(APPEND pagedkv_pc_runtime " -l${lib}")
endforeach()
if(pagedkv_type STREQUAL "STATIC_LIBRARY")
    set(PAGEDKV_PC_REQUIRES "vulkan fmt ucx")
    set(PAGEDKV_PC_REQUIRES_PRIVATE "")
    set(PAGEDKV_PC_CFLAGS " -DPAGEDKV_STATIC")
    set(PAGEDKV_PC_LIBS "${pagedkv_pc_runtime}")
    set(PAGEDKV_PC_LIBS_PRIVATE "")
else()
    set(PAGEDKV_PC_REQUIRES "vulkan")
    set(PAGEDKV_PC_REQUIRES_PRIVATE "fmt ucx")
    set(PAGEDKV_PC_CFLAGS "")
    set(PAGEDKV_PC_LIBS "")
    string(STRIP "${pagedkv_pc_runtime}" PAGEDKV_PC_LIBS_PRIVATE)
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/pagedkv.pc.in ${PROJECT_BINARY_DIR}/pagedkv.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/pagedkv.pc DESTINATION ${PAGEDKV_PC_DIR})

# The programs: pagedkv-demo (the quick start's demos) and pagedkv-dump (reads snapshot files).
# pagedkv-bench stays in the build tree: it times the library against raw Vulkan calls, a
# developer's measurement rather than a user's program.
if(PAGEDKV_BUILD_TOOLS)
    install(TARGETS pagedkv-demo pagedkv-dump RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
    # The demo links libpagedkv: a shared one is found beside the installed programs' prefix.
    file(RELATIVE_PATH pagedkv_bin_to_lib /prefix/${CMAKE_INSTALL_BINDIR}
        /prefix/${CMAKE_INSTALL_LIBDIR})
    set_target_properties(pagedkv-demo PROPERTIES INSTALL_RPATH "$ORIGIN/${pagedkv_bin_to_lib}")
endif()
