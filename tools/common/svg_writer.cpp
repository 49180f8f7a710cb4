#include "svg_writer.hpp"

namespace pagedkv::tools {

std::string xml_escape(std::string_view s) {
    std::string o;
    o.reserve(s.size());
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (ch == '&')
            o += "&amp;";
        else if (ch == '<')
            o += "&lt;";
        else if (ch == '>')
            o += "&gt;";
        else if (ch == '"')
            o += "&quot;";
        else if (c < 0x20 && ch != '\t' && ch != '\n' && ch != '\r')
            o += "\xEF\xBF\xBD";  // U+FFFD
        else
            o += ch;
    }
    return o;
}

SvgWriter::SvgWriter(const Attrs& svg_attrs) {
    Attrs attrs{{"xmlns", "http://www.w3.org/2000/svg"}};
    attrs.insert(attrs.end(), svg_attrs.begin(), svg_attrs.end());
    open("svg", attrs);
}

void SvgWriter::start_tag(std::string_view tag, const Attrs& attrs) {
    out_ += '<';
    out_ += tag;
    for (const Attr& a : attrs) {
        out_ += ' ';
        out_ += a.name;
        out_ += "=\"";
        out_ += xml_escape(a.value);
        out_ += '"';
    }
}

void SvgWriter::end_element() {
    if (open_.size() <= 1) out_ += '\n';
}

void SvgWriter::open(std::string_view tag, const Attrs& attrs) {
    start_tag(tag, attrs);
    out_ += '>';
    if (open_.empty()) out_ += '\n';  // the <svg> tag on a line of its own
    open_.emplace_back(tag);
}

void SvgWriter::close() {
    if (open_.empty()) return;
    out_ += "</" + open_.back() + ">";
    open_.pop_back();
    end_element();
}

void SvgWriter::element(std::string_view tag, const Attrs& attrs) {
    start_tag(tag, attrs);
    out_ += "/>";
    end_element();
}

void SvgWriter::text(std::string_view tag, const Attrs& attrs, std::string_view content) {
    start_tag(tag, attrs);
    out_ += '>';
    out_ += xml_escape(content);
    out_ += "</";
    out_ += tag;
    out_ += '>';
    end_element();
}

std::string SvgWriter::finish() {
    while (!open_.empty())
        close();
    return std::move(out_);
}

}  // namespace pagedkv::tools
