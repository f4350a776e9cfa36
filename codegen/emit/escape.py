"""Put user text (layer and tensor names, source paths, options) into generated files as inert text.

Names come from the user's model (nn.Module attribute names, ONNX node names) and can hold any character.
Every emitter writes them through one of these functions, registered once as Jinja filters in
emit.c.template_environment(), so a template escapes at the point of use:

  c_comment      inside /* ... */ on one line        py_comment     after `#` in Python
  c_string       inside "..." in C                   py_string      a Python string literal
  make_comment   after `#` in a Makefile             cmake_comment  after `#` in CMake

Comment text is one line of printable ASCII; anything else is written in a backslash notation
(`\\n`, `\\x00`, `\\u2028`, `\\\\`), so an ordinary name comes out unchanged and a hostile one stays a comment:
no line break or line splice, no comment terminator, no C trigraph, no Python coding declaration.
"""
from __future__ import annotations

import re

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _char(ch: str) -> str:
    """One character as printable ASCII: itself, or its backslash escape."""
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0x20 <= code < 0x7F:
        return ch
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def comment_text(text: object) -> str:
    """One line of printable ASCII, for a line comment (Python, make, CMake). Never ends in a backslash."""
    out = "".join(_char(ch) for ch in str(text))
    return out[:-2] + "\\x5c" if out.endswith("\\\\") else out  # make continues a comment over `\` newline


def c_comment(text: object) -> str:
    """Text for the inside of a C block comment: comment_text without `*/`, `/*` or `??` (trigraphs).

    The template keeps a space (or other punctuation than `*` and `/`) between the text and the comment's
    own `/*` and `*/`."""
    text = str(text)
    out = []
    for i, ch in enumerate(text):
        before, after = text[i - 1] if i else "", text[i + 1] if i + 1 < len(text) else ""
        if ch == "/" and "*" in (before, after):
            out.append("\\x2f")  # no escape begins or ends with `/` or `*`: none can form `*/` or `/*`
        elif ch == "?" and before == "?":
            out.append("\\?")
        else:
            out.append(_char(ch))
    joined = "".join(out)
    return joined[:-2] + "\\x5c" if joined.endswith("\\\\") else joined


def c_string(text: object) -> str:
    """A C string literal with its quotes; the bytes are the text's UTF-8 encoding, exactly."""
    out = []
    previous = 0
    for byte in str(text).encode("utf-8", "surrogatepass"):
        if byte in (0x22, 0x5C):  # " and backslash
            out.append("\\" + chr(byte))
        elif byte == 0x3F and previous == 0x3F:  # `??x` would be a trigraph
            out.append("\\?")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")  # octal escapes stop after 3 digits (hex ones do not)
        previous = byte
    return '"' + "".join(out) + '"'


_CODING = re.compile(r"(coding)([:=])")


def py_comment(text: object) -> str:
    """Text after `#` in Python: comment_text, and never a PEP 263 coding declaration (first two lines)."""
    return _CODING.sub(lambda m: f"{m.group(1)}\\x{ord(m.group(2)):02x}", comment_text(text))


def py_string(text: object) -> str:
    """A Python string literal (ASCII, any text)."""
    return ascii(str(text))


make_comment = comment_text
cmake_comment = comment_text  # `# ` (with the space) never opens a CMake bracket comment

FILTERS = {"c_comment": c_comment, "c_string": c_string, "py_comment": py_comment, "py_string": py_string,
           "make_comment": make_comment, "cmake_comment": cmake_comment}
