// JSON as pagedkv-bench and pagedkv-dump write it: documents built as nlohmann::ordered_json
// (keys stay in the order they were set), written with nlohmann's escaping and number format.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace pagedkv::tools {

using Json = nlohmann::ordered_json;

// j as text, ending in a newline: two-space indentation, one member or element a line, except
// arrays holding only numbers, strings, booleans and nulls, which stay on one line ("[1, 2, 3]").
// Bytes of a string that are not UTF-8 become U+FFFD (a file name need not be UTF-8).
std::string json_text(const Json& j);

// v rounded to `digits` significant digits: an integer when the rounded value is whole (544, not
// 544.0), null when v is not finite (JSON has no inf or nan).
Json json_number(double v, int digits = 6);

}  // namespace pagedkv::tools
