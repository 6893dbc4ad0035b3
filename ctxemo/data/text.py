"""Text files as hotline exports come: UTF-8 (with or without the BOM spreadsheets add) or GB18030/GBK
(the usual export encoding of Chinese spreadsheets); a file that is neither fails naming its line."""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import Optional, Sequence, Tuple

from ctxemo.errors import ManifestError

# Tried in order. UTF-8 first: a UTF-8 file almost never decodes as GB18030 by accident, the reverse
# happens. GB18030 is a superset of GBK (and GB2312), so one decoder reads all three.
EXPORT_ENCODINGS = ("utf-8-sig", "gb18030")
_NAMES = {"utf-8-sig": "UTF-8", "gb18030": "GB18030/GBK"}


def read_text(path: str | Path, *, encodings: Sequence[str] = EXPORT_ENCODINGS, hint: str = "") -> Tuple[str, str]:
    """(text, encoding used) of `path`, the first of `encodings` that decodes it.

    Raises:
        ManifestError: an unknown encoding name, or no encoding decodes the file: names the file, the line
            and the byte where the first encoding failed, and `hint` (what to do about it).
    """
    path = Path(path)
    for name in encodings:
        try:
            codecs.lookup(name)
        except LookupError:
            raise ManifestError(f"unknown text encoding {name!r} (e.g. utf-8, utf-8-sig, gb18030, gbk)") from None
    raw = path.read_bytes()
    first: Optional[UnicodeDecodeError] = None
    for name in encodings:
        try:
            return raw.decode(name), name
        except UnicodeDecodeError as exc:
            first = first or exc
    assert first is not None
    line = raw[: first.start].count(b"\n") + 1
    column = first.start - (raw.rfind(b"\n", 0, first.start) + 1) + 1
    tried = " nor ".join(_NAMES.get(name, name) for name in encodings)
    raise ManifestError(f"{path}: line {line}: not {tried} text (byte 0x{raw[first.start]:02x}, byte {column} of the line)"
                        + (f"; {hint}" if hint else ""))
