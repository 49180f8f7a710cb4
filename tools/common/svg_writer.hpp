// SvgWriter: the SVG documents pagedkv-bench and pagedkv-dump write, element by element. Tag
// and attribute names are the caller's constants; every attribute value and every text is
// escaped here, so a file name or a device name cannot break the document.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace pagedkv::tools {

// s as XML character data or a double-quoted attribute value: & < > " as entities, and the
// control characters XML 1.0 does not allow (all below 0x20 but tab, newline and return) as
// U+FFFD.
std::string xml_escape(std::string_view s);

// One attribute, name="value". Numbers are written as fmt's "{}" writes them (shortest form);
// a number wanted with fixed decimals is passed as a string formatted by the caller.
struct Attr {
    Attr(std::string_view n, std::string_view v) : name(n), value(v) {}
    Attr(std::string_view n, const char* v) : name(n), value(v) {}
    Attr(std::string_view n, const std::string& v) : name(n), value(v) {}
    template <class Number>
    requires(std::is_arithmetic_v<Number> && !std::is_same_v<Number, bool>)
        Attr(std::string_view n, Number v)
        : name(n), value(fmt::format("{}", v)) {}

    std::string_view name;
    std::string value;
};
using Attrs = std::vector<Attr>;

// Writes one <svg> document. Each element that is a direct child of <svg> ends its line; those
// nested deeper stay on their parent's line.
class SvgWriter {
  public:
    // Opens <svg xmlns="http://www.w3.org/2000/svg" ...> with these attributes.
    explicit SvgWriter(const Attrs& svg_attrs);

    // <tag ...>: an element whose children follow, up to the matching close().
    void open(std::string_view tag, const Attrs& attrs = {});
    // </tag> of the innermost open element.
    void close();
    // <tag .../>: an element without content.
    void element(std::string_view tag, const Attrs& attrs);
    // <tag ...>text</tag>, the text escaped.
    void text(std::string_view tag, const Attrs& attrs, std::string_view content);

    // The document, every element still open closed, </svg> last.
    std::string finish();

  private:
    void start_tag(std::string_view tag, const Attrs& attrs);
    void end_element();

    std::string out_;
    std::vector<std::string> open_;  // the open elements, <svg> first
};

}  // namespace pagedkv::tools
