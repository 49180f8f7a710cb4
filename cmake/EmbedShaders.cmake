# Compiles GLSL compute shaders to SPIR-V at build time (glslc, with depfiles) and wraps the
# words in a header of constexpr arrays inside the build tree. Nothing is generated into the
# source tree.
#
#   pagedkv_embed_shaders(<target> SOURCES a.comp ... VARIANTS "suffix:DEFINE[,DEFINE...]" ...)
#
# makes an INTERFACE target whose include path holds spirv/<name>_<suffix>.inc for each
# source and variant; code includes it as the initializer of a uint32_t array.
function(pagedkv_embed_shaders target)
    cmake_parse_arguments(ARG "" "" "SOURCES;VARIANTS" ${ARGN})
    set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/spirv)
    file(MAKE_DIRECTORY ${out_dir})
    set(outputs)
    foreach(src IN LISTS ARG_SOURCES)
        get_filename_component(name ${src} NAME_WE)
        set(abs ${CMAKE_CURRENT_SOURCE_DIR}/${src})
        foreach(variant IN LISTS ARG_VARIANTS)
            string(REPLACE ":" ";" parts ${variant})
            list(GET parts 0 suffix)
            list(GET parts 1 defines)
            string(REPLACE "," ";" defines ${defines})
            list(TRANSFORM defines PREPEND "-D")
            set(out ${out_dir}/${name}_${suffix}.inc)
            add_custom_command(
                OUTPUT ${out}
                COMMAND Vulkan::glslc --target-env=vulkan1.2 -O -Werror ${defines}
                        -MD -MF ${out}.d -mfmt=num -o ${out} ${abs}
                DEPENDS ${abs}
                DEPFILE ${out}.d
                COMMENT "glslc ${src} (${suffix})"
                VERBATIM)
            list(APPEND outputs ${out})
        endforeach()
    endforeach()
    add_custom_target(${target}_compile DEPENDS ${outputs})
    add_library(${target} INTERFACE)
    add_dependencies(${target} ${target}_compile)
    target_include_directories(${target} INTERFACE ${CMAKE_CURRENT_BINARY_DIR})
endfunction()
