#include "json_text.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>

namespace pagedkv::tools {

namespace {

std::string scalar(const Json& j) {
    return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

void write(std::string& out, const Json& j, size_t indent) {
    const bool flat = j.is_array() && std::none_of(j.begin(), j.end(),
                                                   [](const Json& x) { return x.is_structured(); });
    if (flat) {
        out += '[';
        for (size_t i = 0; i < j.size(); ++i)
            out += (i ? ", " : "") + scalar(j[i]);
        out += ']';
        return;
    }
    if (!j.is_structured() || j.empty()) {
        out += scalar(j);
        return;
    }
    out += j.is_object() ? "{\n" : "[\n";
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it != j.begin()) out += ",\n";
        out.append(indent + 2, ' ');
        if (j.is_object()) out += scalar(it.key()) + ": ";
        write(out, it.value(), indent + 2);
    }
    out += '\n';
    out.append(indent, ' ');
    out += j.is_object() ? '}' : ']';
}

}  // namespace

std::string json_text(const Json& j) {
    std::string out;
    write(out, j, 0);
    return out + "\n";
}

Json json_number(double v, int digits) {
    if (!std::isfinite(v)) return nullptr;
    const std::string s = fmt::format("{:.{}g}", v, digits);
    double r = 0;
    std::from_chars(s.data(), s.data() + s.size(), r);
    if (std::trunc(r) == r && std::fabs(r) < 9e15) return int64_t(r);
    return r;
}

}  // namespace pagedkv::tools
