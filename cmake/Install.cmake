# Install rules: headers, the library, and a relocatable CMake package, so that consumers write
# find_package(pagedkv CONFIG REQUIRED) and link pagedkv::pagedkv. Every path is relative to
# the install prefix, so the installed tree may be moved.
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
