"""The README's EmbeddingService reference is the one crd.py generates from the schema."""

from __future__ import annotations

from pathlib import Path

from embedfleet_operator.crd_reference import reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_crd_reference_in_readme_is_current() -> None:
    text = README.read_text()
    start = text.index("<!-- crd-reference:start")
    body = text[text.index("-->", start) + 4 : text.index("<!-- crd-reference:end -->")]
    assert body == reference_markdown(), "regenerate: python -m embedfleet_operator.crd_reference"
    assert "`spec.autoscaling.idleTimeoutSeconds`" in body
