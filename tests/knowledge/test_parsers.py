"""Parsers: each supported type becomes text with its headings; every bad file a ParseError
with the code and message a store file's ``last_error`` carries."""

from __future__ import annotations

import pytest

from nobusy.knowledge.parsers import ParseError, parse
from tests.knowledge.documents import HTML_WITH_SCRIPTS, docx, encrypted_pdf, pdf, zip_bomb

LIMIT = 1_000_000


def test_text_and_markdown() -> None:
    assert parse("a.md", "# 年假\n\n每年  15 天。\n\n\n\n".encode(), max_bytes=LIMIT) == (
        "# 年假\n\n每年 15 天。"
    )
    assert parse("a.txt", "报销需发票".encode("gb18030"), max_bytes=LIMIT) == "报销需发票"
    assert parse("a.txt", b"\xef\xbb\xbfBOM", max_bytes=LIMIT) == "BOM"


def test_html_drops_scripts_styles_and_keeps_headings() -> None:
    text = parse("policy.html", HTML_WITH_SCRIPTS, max_bytes=LIMIT)
    assert "evilpayload" not in text and "color" not in text and "cookie" not in text
    assert text.startswith("# Travel policy")
    assert "Economy class for trips under six hours." in text
    assert "Hotels up to 800 CNY a night." in text


def test_pdf_and_docx() -> None:
    assert parse("a.pdf", pdf("Annual leave is 15 days"), max_bytes=LIMIT) == (
        "Annual leave is 15 days"
    )
    text = parse("a.docx", docx("报销制度", "出差报销需在30天内提交。"), max_bytes=LIMIT)
    assert text == "# 报销制度\n\n出差报销需在30天内提交。"


@pytest.mark.parametrize(
    ("name", "data", "code", "words"),
    [
        ("setup.exe", b"MZ\x90\x00", "unsupported_file", "'.exe' are not supported"),
        ("README", b"text", "unsupported_file", "without an extension"),
        ("empty.txt", b"", "invalid_file", "empty"),
        ("blank.md", b"  \n\n ", "invalid_file", "no text"),
        ("binary.txt", b"\x00\x01\x02", "invalid_file", "binary"),
        ("notpdf.pdf", b"hello", "invalid_file", "not a PDF"),
        ("cut.pdf", pdf("Annual leave")[:150], "invalid_file", "corrupt"),
        ("locked.pdf", encrypted_pdf("secret"), "invalid_file", "encrypted"),
        ("scan.pdf", pdf(""), "invalid_file", "OCR"),
        ("bomb.docx", zip_bomb(), "invalid_file", "zip bomb"),
        ("junk.docx", b"PK\x03\x04junk", "invalid_file", "not a valid zip"),
        ("locked.docx", b"\xd0\xcf\x11\xe0" + b"\x00" * 100, "invalid_file", "encrypted"),
        ("big.txt", b"x" * (LIMIT + 1), "invalid_file", "knowledge.max_file_bytes"),
    ],
)
def test_bad_files_say_why(name: str, data: bytes, code: str, words: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(name, data, max_bytes=LIMIT)
    assert caught.value.code == code
    assert words in caught.value.message
