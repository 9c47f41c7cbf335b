"""From an uploaded file's bytes to its text: txt, md, html, pdf and docx.

Each kind is one function; ``parse`` picks it by the file's extension. The text keeps the
document's structure where the format says it: headings become Markdown headings (``# ``), so
the chunker can cut at them, and paragraphs are separated by blank lines. Everything that can
go wrong with a user's file is a ``ParseError`` with OpenAI's ``last_error`` code
(``unsupported_file`` or ``invalid_file``) and a message a person can act on: an unknown type,
an empty or binary file, a corrupt or encrypted PDF, a zip bomb, text past ``max_bytes``.

The libraries: pypdf (BSD) for PDF, python-docx (MIT) for Word, lxml's HTML parser (BSD) for
HTML, which python-docx needs anyway. Scripts, styles and other non-text elements of HTML are
dropped before the text is read.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any, Literal

__all__ = ["KINDS", "ParseError", "parse"]

ErrorCode = Literal["unsupported_file", "invalid_file"]


class ParseError(Exception):
    """A file that cannot become text; ``code`` and ``message`` are its ``last_error``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(filename: str, data: bytes, *, max_bytes: int) -> str:
    """The text of ``data``, read as the type ``filename``'s extension names; ``max_bytes``
    caps the file, what a compressed format may expand to, and the text extracted."""
    suffix = PurePosixPath(filename.lower()).suffix
    reader = KINDS.get(suffix)
    if reader is None:
        supported = ", ".join(sorted(KINDS))
        what = f"'{suffix}'" if suffix else "without an extension"
        raise ParseError("unsupported_file", f"Files {what} are not supported ({supported}).")
    if not data:
        raise ParseError("invalid_file", "The file is empty.")
    if len(data) > max_bytes:
        raise ParseError(
            "invalid_file",
            f"The file is {len(data):,} bytes, over knowledge.max_file_bytes ({max_bytes:,}).",
        )
    text = _tidy(reader(data, max_bytes))
    if not text.strip():
        raise ParseError("invalid_file", "The file has no text to index" + _hint(suffix) + ".")
    if len(text.encode()) > max_bytes:
        raise ParseError(
            "invalid_file",
            f"The file's text is over knowledge.max_file_bytes ({max_bytes:,} bytes).",
        )
    return text


def _hint(suffix: str) -> str:
    return " (a scanned PDF needs OCR first)" if suffix == ".pdf" else ""


# --- Plain text and Markdown -------------------------------------------------------------------


def _text(data: bytes, max_bytes: int) -> str:
    """UTF-8 (with or without a BOM), else GB 18030, which Chinese Windows tools still write."""
    if b"\x00" in data[:8192]:
        raise ParseError("invalid_file", "The file is binary, not text.")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ParseError("invalid_file", "The file is not text in UTF-8 or GB 18030.")


# --- HTML --------------------------------------------------------------------------------------

# Elements whose content is never text a reader sees.
_DROPPED = ("script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "head")
_BLOCKS = frozenset(
    "p div section article aside header footer nav main li ul ol dl dt dd table tr "
    "blockquote pre figure figcaption form fieldset address hr".split()
)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


def _html(data: bytes, max_bytes: int) -> str:
    from lxml import etree, html

    try:
        root = html.document_fromstring(data)
    except (etree.ParserError, ValueError) as exc:
        raise ParseError("invalid_file", f"The HTML cannot be read: {exc}.") from None
    title = root.findtext(".//title") or ""
    etree.strip_elements(root, *_DROPPED, etree.Comment, with_tail=False)
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag in _HEADINGS:
            element.text = f"\n\n{'#' * _HEADINGS[tag]} " + (element.text or "")
            element.tail = "\n\n" + (element.tail or "")
        elif tag in _BLOCKS:
            element.tail = "\n\n" + (element.tail or "")
        elif tag in ("br", "td", "th"):
            element.tail = ("\n" if tag == "br" else " ") + (element.tail or "")
    body = root.text_content()
    return f"# {title.strip()}\n\n{body}" if title.strip() and "#" not in body[:200] else body


# --- PDF ---------------------------------------------------------------------------------------


def _pdf(data: bytes, max_bytes: int) -> str:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    if not data.startswith(b"%PDF-") and b"%PDF-" not in data[:1024]:
        raise ParseError("invalid_file", "The file is not a PDF (no %PDF- header).")
    pages: list[str] = []
    size = 0
    # pypdf raises more than its own errors on malformed files (a bad xref table ends in a
    # KeyError or ValueError deep inside): all of them mean "this PDF cannot be read".
    malformed = (PyPdfError, ValueError, KeyError, TypeError, IndexError, AttributeError)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("invalid_file", "The PDF is encrypted with a password.")
        for page in reader.pages:
            text = page.extract_text() or ""
            size += len(text)
            if size > max_bytes:
                break  # parse() reports the limit
            pages.append(text)
    except FileNotDecryptedError:
        raise ParseError("invalid_file", "The PDF is encrypted with a password.") from None
    except RecursionError:
        raise ParseError("invalid_file", "The PDF is malformed (nested too deeply).") from None
    except malformed as exc:
        raise ParseError("invalid_file", f"The PDF is corrupt: {exc}.") from None
    return "\n\n".join(pages)


# --- Word --------------------------------------------------------------------------------------

_OLE = b"\xd0\xcf\x11\xe0"  # a compound file: an encrypted .docx, or a legacy .doc


def _docx(data: bytes, max_bytes: int) -> str:
    if data.startswith(_OLE):
        raise ParseError(
            "invalid_file",
            "The document is encrypted with a password, or is a legacy .doc saved as .docx.",
        )
    _check_zip(data, max_bytes)
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from lxml import etree

    try:
        document = docx.Document(io.BytesIO(data))
        return "\n\n".join(_docx_blocks(document))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, etree.XMLSyntaxError) as exc:
        raise ParseError("invalid_file", f"The Word document is corrupt: {exc}.") from None


# A Word file inflates a few times (styles, themes: 830 KB from a 36 KB blank document); a
# bomb inflates hundreds of times. Both rules are read from the zip's directory.
_MIN_EXPANSION = 16 * 1024 * 1024
_MAX_RATIO = 100


def _check_zip(data: bytes, max_bytes: int) -> None:
    """A zip bomb is refused from its directory before anything is inflated (Python's zipfile
    never inflates a member past the size its directory declares): at most four times
    ``max_bytes`` (16 MiB at least) in all, and no large part packed over 100 to 1."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ParseError(
            "invalid_file", f"The document is not a valid zip package: {exc}."
        ) from None
    declared = sum(member.file_size for member in members)
    limit = max(4 * max_bytes, _MIN_EXPANSION)
    packed = any(
        m.file_size > 1024 * 1024 and m.file_size > _MAX_RATIO * max(m.compress_size, 1)
        for m in members
    )
    if declared > limit or packed or len(members) > 10_000:
        raise ParseError(
            "invalid_file",
            f"The document would expand to {declared:,} bytes in {len(members):,} parts "
            f"(from {len(data):,}): refused as a possible zip bomb.",
        )


_HEADING_STYLE = re.compile(r"(?:heading|标题)\s*(\d)", re.IGNORECASE)


def _docx_blocks(document: Any) -> Iterator[str]:
    """Paragraphs and tables in the order of the body; headings as Markdown headings."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text = block.text.strip()
            if not text:
                continue
            style = block.style.name if block.style is not None else ""
            level = _HEADING_STYLE.match(style or "")
            if style == "Title":
                yield f"# {text}"
            elif level:
                yield f"{'#' * min(int(level.group(1)), 6)} {text}"
            else:
                yield text
        elif isinstance(block, Table):
            for row in block.rows:
                cells = [cell.text.strip() for cell in row.cells]
                yield " | ".join(dict.fromkeys(c for c in cells if c))  # merged cells repeat


# --- Common ------------------------------------------------------------------------------------


def _tidy(text: str) -> str:
    """Spaces collapsed within lines, at most one blank line between paragraphs."""
    lines = (" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


KINDS: dict[str, Callable[[bytes, int], str]] = {
    ".txt": _text,
    ".text": _text,
    ".md": _text,
    ".markdown": _text,
    ".html": _html,
    ".htm": _html,
    ".pdf": _pdf,
    ".docx": _docx,
}
