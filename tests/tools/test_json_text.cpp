// The JSON text pagedkv-bench and pagedkv-dump write (tools/common/json_text): strings escaped
// by nlohmann-json, figures that are not finite written as null (JSON has no nan or inf), and
// the document parsing back to what was put in.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>

#include "json_text.hpp"

using pagedkv::tools::Json;
using pagedkv::tools::json_number;
using pagedkv::tools::json_text;

TEST_CASE("json_number: not finite is null, whole values are integers, 6 digits") {
    CHECK(json_number(std::numeric_limits<double>::quiet_NaN()).is_null());
    CHECK(json_number(std::numeric_limits<double>::infinity()).is_null());
    CHECK(json_number(-std::numeric_limits<double>::infinity()).is_null());
    CHECK(json_number(544.0).is_number_integer());
    CHECK(json_number(544.0).get<int64_t>() == 544);
    CHECK(json_number(0.123456789).get<double>() == 0.123457);
    CHECK(json_number(1.0 / 3, 3).get<double>() == 0.333);
}

TEST_CASE("json_text: a bench-like document with a nan figure and a name to escape") {
    Json doc;
    doc["schema_version"] = 1;
    doc["device"] = "llvmpipe \"quoted\" \\ back\nnew line\ttab \x01";
    doc["ratio"] = json_number(std::nan(""));
    doc["gbps"] = json_number(12.5);
    doc["spread"] = Json::array({json_number(1.0), json_number(INFINITY), "a"});
    const std::string text = json_text(doc);
    CHECK(text.find("nan") == std::string::npos);
    CHECK(text.find("inf") == std::string::npos);
    CHECK(text.find("\"ratio\": null") != std::string::npos);
    CHECK(text.find("\"spread\": [1, null, \"a\"]") != std::string::npos);
    CHECK(text.find(R"(llvmpipe \"quoted\" \\ back\nnew line\ttab \u0001)") != std::string::npos);
    CHECK(text.back() == '\n');
    // Keys keep their order, and the text parses back to the document.
    CHECK(text.find("schema_version") < text.find("device"));
    const Json back = Json::parse(text);
    CHECK(back == doc);
}

TEST_CASE("json_text: bytes that are not UTF-8 become U+FFFD") {
    Json doc;
    doc["file"] = std::string(
        "a\xff"
        "b");
    const std::string text = json_text(doc);
    CHECK(text.find("a\xEF\xBF\xBD"
                    "b") != std::string::npos);
    CHECK_NOTHROW(Json::parse(text));
}
