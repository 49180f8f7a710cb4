# Fails unless README.md holds tests/package/readme_example.cpp verbatim in its usage example.
file(READ ${README} readme)
file(READ ${EXAMPLE} example)
string(FIND "${readme}" "```cpp\n${example}```" at)
if(at EQUAL -1)
    message(FATAL_ERROR "README.md's usage example differs from ${EXAMPLE}; paste the file "
                        "into the ```cpp block of the README")
endif()
