# Fails unless the shared library exports the public API and nothing of the library's internals:
# `nm -DC --defined-only` lists no detail:: symbol, and lists a sample of the C++ and C API
# (cmake -P script; LIB is the shared library, NM the nm of the toolchain).
execute_process(COMMAND ${NM} -DC --defined-only ${LIB}
    OUTPUT_VARIABLE symbols RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} failed (${rc}): ${err}")
endif()
string(REGEX MATCHALL "[^\n]*detail::[^\n]*" internal "${symbols}")
list(LENGTH internal n)
if(n GREATER 0)
    list(SUBLIST internal 0 10 first)
    string(REPLACE ";" "\n" first "${first}")
    message(FATAL_ERROR "${LIB} exports ${n} detail:: symbols, e.g.\n${first}")
endif()
foreach(expected
        "pagedkv::BlockPool::BlockPool("
        "pagedkv::DynamicKVCache::DynamicKVCache("
        "pagedkv::PagedKVCache::update("
        "pagedkv::Context::create("
        "pagedkv::Tensor::from_host("
        "pagedkv::save_snapshot("
        "typeinfo for pagedkv::Error"
        "pagedkv_pool_create"
        "pagedkv_cache_update"
        "pagedkv::KVManager::begin_step("
        "pagedkv::Step::view("
        "pagedkv::KVManager::export_sequence("
        "pagedkv::Connection::connect("
        "pagedkv_manager_begin_step")
    string(FIND "${symbols}" "${expected}" at)
    if(at EQUAL -1)
        message(FATAL_ERROR "${LIB} does not export ${expected}")
    endif()
endforeach()
string(REGEX MATCHALL "\n[0-9a-f]+ [TWVuBDR] " defined "\n${symbols}")
list(LENGTH defined count)
message(STATUS "${LIB}: ${count} symbols exported, none of them detail::")
