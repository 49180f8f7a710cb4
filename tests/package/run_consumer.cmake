# Configures, builds and runs a consumer project (tests/package/consumer, or the C-only
# tests/package/c_consumer) against pagedkv (cmake -P script).
#
#   MODE=install       installs PAGEDKV_BUILD_DIR into WORK_DIR/stage, moves the prefix to
#                      WORK_DIR/prefix (proving it relocatable), checks that no installed CMake
#                      or pkg-config file names FORBIDDEN_PATHS ('|'-separated) or the staging
#                      prefix, that the PROGRAMS ('|'-separated, may be empty) are in its bin/
#                      and those of HELP_PROGRAMS run from there with --help, and builds the
#                      consumer with find_package against the moved prefix.
#   MODE=pkgconfig     installs and moves the prefix as MODE=install does, then compiles and
#                      links CONSUMER_SOURCE_DIR/main.c with C_COMPILER alone and the flags of
#                      `pkg-config --static --cflags --libs pagedkv` (PKG_CONFIG) from the moved
#                      prefix, as `cc main.c $(pkg-config ...)` would, and runs it.
#   MODE=subdirectory  builds the consumer with add_subdirectory(PAGEDKV_SOURCE_DIR); its build
#                      directory is kept between runs so that only the first one compiles
#                      the whole library.
# Common: CONSUMER_SOURCE_DIR, CONSUMER (the program it builds; default pagedkv_consumer),
# WORK_DIR, GENERATOR, MAKE_PROGRAM, CXX_COMPILER (or C_COMPILER for a C consumer), BUILD_TYPE,
# WERROR.

function(run what)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "${what} failed (${rc}):\n${out}")
    endif()
    message(STATUS "${what}: ok")
endfunction()

foreach(var CONSUMER_SOURCE_DIR WORK_DIR MODE)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
    endif()
endforeach()
if(NOT CXX_COMPILER AND NOT C_COMPILER)
    message(FATAL_ERROR "run_consumer.cmake: neither CXX_COMPILER nor C_COMPILER is set")
endif()
if(NOT BUILD_TYPE)
    set(BUILD_TYPE Release)
endif()
if(NOT CONSUMER)
    set(CONSUMER pagedkv_consumer)
endif()

set(configure_args -G ${GENERATOR} -DCMAKE_BUILD_TYPE=${BUILD_TYPE})
if(CXX_COMPILER)
    list(APPEND configure_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(C_COMPILER)
    list(APPEND configure_args -DCMAKE_C_COMPILER=${C_COMPILER})
endif()
if(MAKE_PROGRAM)
    list(APPEND configure_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()

if(MODE STREQUAL "install" OR MODE STREQUAL "pkgconfig")
    set(stage ${WORK_DIR}/stage)
    set(prefix ${WORK_DIR}/prefix)
    file(REMOVE_RECURSE ${WORK_DIR})
    run("cmake --install" ${CMAKE_COMMAND} --install ${PAGEDKV_BUILD_DIR} --prefix ${stage}
        --config ${BUILD_TYPE})
    file(RENAME ${stage} ${prefix})

    file(GLOB_RECURSE package_files ${prefix}/*/cmake/pagedkv/*.cmake)
    if(NOT package_files)
        message(FATAL_ERROR "no pagedkv CMake package files under ${prefix}")
    endif()
    file(GLOB_RECURSE pc_files ${prefix}/*/pkgconfig/pagedkv.pc)
    if(NOT pc_files)
        message(FATAL_ERROR "no pkgconfig/pagedkv.pc under ${prefix}")
    endif()
    list(APPEND package_files ${pc_files})
    foreach(header pagedkv/pagedkv.hpp pagedkv/pagedkv.h pagedkv/version.hpp)
        if(NOT EXISTS ${prefix}/include/${header})
            message(FATAL_ERROR "${header} was not installed into ${prefix}/include")
        endif()
    endforeach()
    string(REPLACE "|" ";" forbidden "${FORBIDDEN_PATHS}")
    list(APPEND forbidden ${stage})
    foreach(f IN LISTS package_files)
        file(READ ${f} text)
        foreach(path IN LISTS forbidden)
            string(FIND "${text}" "${path}" at)
            if(NOT at EQUAL -1)
                message(FATAL_ERROR "${f} names ${path}: the package is not relocatable")
            endif()
        endforeach()
    endforeach()

    string(REPLACE "|" ";" programs "${PROGRAMS}")
    foreach(program IN LISTS programs)
        if(NOT EXISTS ${prefix}/bin/${program})
            message(FATAL_ERROR "${program} was not installed into ${prefix}/bin")
        endif()
    endforeach()
    string(REPLACE "|" ";" programs "${HELP_PROGRAMS}")
    foreach(program IN LISTS programs)
        run("${program} --help from the moved prefix" ${prefix}/bin/${program} --help)
    endforeach()
endif()

if(MODE STREQUAL "pkgconfig")
    if(NOT PKG_CONFIG OR NOT C_COMPILER)
        message(FATAL_ERROR "run_consumer.cmake: MODE=pkgconfig needs PKG_CONFIG and C_COMPILER")
    endif()
    get_filename_component(pc_dir "${pc_files}" DIRECTORY)
    execute_process(
        COMMAND ${CMAKE_COMMAND} -E env "PKG_CONFIG_PATH=${pc_dir}:$ENV{PKG_CONFIG_PATH}"
                ${PKG_CONFIG} --static --cflags --libs pagedkv
        RESULT_VARIABLE rc OUTPUT_VARIABLE flags ERROR_VARIABLE err
        OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "pkg-config --static --cflags --libs pagedkv failed (${rc}):\n${err}")
    endif()
    string(FIND "${flags}" "${prefix}/" at)
    if(at EQUAL -1)
        message(FATAL_ERROR "pkg-config did not point into the moved prefix ${prefix}: ${flags}")
    endif()
    message(STATUS "pkg-config --static --cflags --libs pagedkv: ${flags}")
    separate_arguments(flags UNIX_COMMAND "${flags}")
    file(MAKE_DIRECTORY ${WORK_DIR}/build)
    run("${C_COMPILER} main.c $(pkg-config --static --cflags --libs pagedkv)" ${C_COMPILER}
        -std=c11 -Wall -Wextra -Wpedantic -Werror ${CONSUMER_SOURCE_DIR}/main.c ${flags}
        -o ${WORK_DIR}/build/${CONSUMER})
elseif(MODE STREQUAL "install")
    # Only the moved prefix may provide pagedkv: no package registry, no system install.
    run("configure against the installed package" ${CMAKE_COMMAND}
        -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build ${configure_args}
        -DCMAKE_PREFIX_PATH=${prefix}
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
        -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
    file(STRINGS ${WORK_DIR}/build/CMakeCache.txt found REGEX "^pagedkv_DIR:")
    if(NOT found MATCHES "${prefix}/")
        message(FATAL_ERROR "find_package picked another pagedkv: ${found}")
    endif()
elseif(MODE STREQUAL "subdirectory")
    if(NOT PAGEDKV_SOURCE_DIR)
        message(FATAL_ERROR "run_consumer.cmake: PAGEDKV_SOURCE_DIR is not set")
    endif()
    run("configure with add_subdirectory" ${CMAKE_COMMAND}
        -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build ${configure_args}
        -DPAGEDKV_SOURCE_DIR=${PAGEDKV_SOURCE_DIR}
        -DPAGEDKV_WERROR=${WERROR})
else()
    message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

if(NOT MODE STREQUAL "pkgconfig")
    run("build the consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/build --config ${BUILD_TYPE} -j 2)
endif()
run("run the consumer" ${WORK_DIR}/build/${CONSUMER})
