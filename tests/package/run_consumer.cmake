# Configures, builds and runs the consumer project in tests/package/consumer (cmake -P script).
#
#   MODE=install       installs PAGEDKV_BUILD_DIR into WORK_DIR/stage, moves the prefix to
#                      WORK_DIR/prefix (proving it relocatable), checks that no installed CMake
#                      file names FORBIDDEN_PATHS ('|'-separated) or the staging prefix, and
#                      builds the consumer with find_package against the moved prefix.
#   MODE=subdirectory  builds the consumer with add_subdirectory(PAGEDKV_SOURCE_DIR); its build
#                      directory is kept between runs so that only the first one compiles
#                      the whole library.
# Common: CONSUMER_SOURCE_DIR, WORK_DIR, GENERATOR, MAKE_PROGRAM, CXX_COMPILER, BUILD_TYPE, WERROR.

function(run what)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "${what} failed (${rc}):\n${out}")
    endif()
    message(STATUS "${what}: ok")
endfunction()

foreach(var CONSUMER_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER MODE)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
    endif()
endforeach()
if(NOT BUILD_TYPE)
    set(BUILD_TYPE Release)
endif()

set(configure_args -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE})
if(MAKE_PROGRAM)
    list(APPEND configure_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()

if(MODE STREQUAL "install")
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

run("build the consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/build --config ${BUILD_TYPE} -j 2)
run("run the consumer" ${WORK_DIR}/build/pagedkv_consumer)
