"""Property-based fuzzing of the manifest reader: whatever the text of a CSV or JSONL manifest (random
bytes of text, BOMs, quotes, missing or extra cells, odd numbers, odd JSON values), `load_manifest`
either returns a consistent Manifest or raises ManifestError, never anything else."""
import csv
import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxemo.config import DEFAULT_LABELS
from ctxemo.data.manifest import load_manifest
from ctxemo.errors import ManifestError
from ctxemo.taxonomy import Taxonomy

TAXONOMIES = [Taxonomy(labels=tuple(DEFAULT_LABELS)),
              Taxonomy(labels=("sadness", "fear", "calm"), multilabel=False, negative_labels=("sadness", "fear"))]
FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Cells that sit near the parser's edges: numbers that overflow or are not integers, NaN/inf, booleans
# in several spellings, label lists with separators, quotes, newlines, separators, BOMs, unicode.
tricky_cells = st.sampled_from([
    "", " ", "0", "1", "-1", "1.0", "1e3", "1e400", "-0", "nan", "NaN", "inf", "-inf", "99999999999999999999999",
    "true", "False", "yes", "no", "caller", "operator", "1", "Counselor", "sadness", "fear;despair", "sadness,,pain",
    "sadnes", ";", '"', '""', "a,b", "a\nb", "a\r\nb", "\u2028", "\x0c", "\x00", "\ufeff", "通话", "a.wav",
    "../a.wav", "/abs/a.wav", "x" * 300,
])
cells = st.one_of(tricky_cells, tricky_cells, st.text(max_size=12))  # two parts tricky, one part random
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                         st.floats(allow_nan=True, allow_infinity=True), cells)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")  # exists (only existence is checked by the reader)
    return tmp_path


def check(path, taxonomy, require_audio, check_audio):
    """Read `path`; the only acceptable failure is ManifestError, and a success must be consistent."""
    try:
        m = load_manifest(path, taxonomy, require_audio=require_audio, check_audio_exists=check_audio)
    except ManifestError as exc:
        assert str(path) in str(exc) or "manifest" in str(exc)
        return
    n = len(m)
    assert n > 0 and len(m.caller_id) == len(m.role) == len(m.audio) == n
    assert m.segment_index.shape == m.negative.shape == m.line.shape == (n,)
    assert m.fine.shape == (n, taxonomy.num_labels)
    assert set(np.unique(m.negative)) <= {0, 1} and set(np.unique(m.fine)) <= {0.0, 1.0}
    assert set(m.role) <= {"caller", "operator"}
    assert len({(c, s) for c, s in zip(m.call_id, m.segment_index.tolist())}) == n
    assert sum(len(rows) for rows in m.calls()) == n


@FUZZ
@given(text=st.text(max_size=300), suffix=st.sampled_from([".csv", ".jsonl"]), bom=st.booleans(),
       header=st.booleans(), require_audio=st.booleans())
def test_random_text(folder, text, suffix, bom, header, require_audio):
    """Arbitrary text, optionally behind a BOM and a plausible header row."""
    if header and suffix == ".csv":
        text = "call_id,segment_index,audio,labels\n" + text
    path = folder / f"m{suffix}"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8", errors="surrogatepass")
    check(path, TAXONOMIES[0], require_audio, check_audio=True)


huge_ints = st.sampled_from([2 ** 63, -(2 ** 63) - 1, 10 ** 22]) | st.integers()  # int64 overflows
OPTIONAL = ["start", "end", "caller_id", "role", "negative", "labels", "transcript", "", *DEFAULT_LABELS[:3]]
labels_text = st.lists(st.sampled_from(["sadness", "fear", "despair", "calm", "sadnes", " pain "]), max_size=3)


def column_values(name: str, *, as_json: bool = False):
    """Cells for one column: mostly plausible values (so rows get deep into validation), or tricky ones."""
    plausible = {
        "call_id": st.sampled_from(["a", "b", "通话", " a "]),
        "segment_index": (st.integers(-2, 4) | huge_ints).map(str) if not as_json else st.integers(-2, 4) | huge_ints,
        "audio": st.sampled_from(["a.wav", "./a.wav", "missing.wav", "n" * 300 + ".wav", "a.wav/x"]),
        "start": st.floats(-1, 5).map(str) if not as_json else st.floats(-1, 5),
        "end": st.floats(-1, 5).map(str) if not as_json else st.floats(-1, 5),
        "caller_id": st.sampled_from(["p1", "p2", ""]),
        "role": st.sampled_from(["caller", "operator", "1", "0", "client", "Counsellor"]),
        "negative": st.sampled_from(["0", "1", "true", "no", ""]) if not as_json else st.sampled_from([0, 1, True]),
        "labels": labels_text.map(";".join) if not as_json else labels_text,
    }.get(name, st.sampled_from(["0", "1"]) if name in DEFAULT_LABELS else cells)
    return st.one_of(plausible, json_values if as_json else cells)


@st.composite
def csv_tables(draw):
    """A header (call_id, segment_index, audio + random optional columns, shuffled) and rows whose cells fit
    their column; some rows have a cell too few or too many."""
    columns = draw(st.permutations(["call_id", "segment_index", "audio",
                                    *draw(st.lists(st.sampled_from(OPTIONAL), unique=True, max_size=5))]))
    columns = columns[: len(columns) - draw(st.integers(0, 1))]  # sometimes a required column is missing
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        row = [draw(column_values(name.strip())) for name in columns]
        cut = draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        rows.append(row[:-1] if cut == 1 else row + [draw(cells)] if cut == -1 else row)
    return columns, rows


@FUZZ
@given(table=csv_tables(), raw=st.booleans(), bom=st.booleans(), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       taxonomy=st.sampled_from(TAXONOMIES), require_audio=st.booleans(), check_audio=st.booleans())
def test_random_csv_cells(folder, table, raw, bom, newline, taxonomy, require_audio, check_audio):
    """Plausible columns, random cells, rows with missing or extra cells; written with proper CSV quoting
    or (raw) joined with commas so quotes and newlines inside cells break the structure."""
    columns, rows = table
    if raw:
        text = newline.join(",".join(r) for r in [columns, *rows]) + newline
    else:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=newline).writerows([columns, *rows])
        text = buffer.getvalue()
    path = folder / "m.csv"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8", errors="surrogatepass")
    check(path, taxonomy, require_audio, check_audio)


@st.composite
def json_objects(draw):
    names = draw(st.lists(st.sampled_from(["call_id", "segment_index", "audio", *OPTIONAL]), unique=True, max_size=8))
    return {name: draw(column_values(name, as_json=True)) for name in names}


@FUZZ
@given(rows=st.lists(st.one_of(json_objects(), json_objects(), json_values), min_size=0, max_size=5),
       broken=st.sampled_from(["", "{", '{"call_id": "a", "segment_index": 1', "[1, 2]", "\u2028", "NaN"]),
       taxonomy=st.sampled_from(TAXONOMIES), require_audio=st.booleans())
def test_random_jsonl_values(folder, rows, broken, taxonomy, require_audio):
    """Objects with plausible or random JSON values (nested lists and dicts, huge ints, NaN, null) per line,
    unescaped U+2028 inside strings, and sometimes a broken last line."""
    lines = [json.dumps(r, ensure_ascii=False, allow_nan=True) for r in rows]
    path = folder / "m.jsonl"
    path.write_text("\n".join(lines + [broken]) + "\n", encoding="utf-8", errors="surrogatepass")
    check(path, taxonomy, require_audio, check_audio=True)


# Anything a transcript may hold, with the characters that break lines (for str.splitlines, or for CSV
# and JSON) drawn often: uniform sampling of unicode would almost never pick them.
LINE_BREAKERS = list("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\",;'\\")
free_text = st.text(st.sampled_from(LINE_BREAKERS) | st.characters(exclude_categories=("Cs",)), max_size=20)


@st.composite
def valid_rows(draw):
    """Rows that satisfy the data contract, with a free-text column that may hold any character."""
    n = draw(st.integers(1, 6))
    calls = draw(st.lists(st.sampled_from(["a", "b", "通话", "c d"]), min_size=n, max_size=n))
    return [{"call_id": cid, "segment_index": i, "role": draw(st.sampled_from(["caller", "operator"])),
             "labels": draw(st.lists(st.sampled_from(DEFAULT_LABELS), max_size=2, unique=True)),
             "transcript": draw(free_text)} for i, cid in enumerate(calls)]


def assert_read_back(m, rows):
    assert m.call_id == [r["call_id"] for r in rows]
    assert m.segment_index.tolist() == [r["segment_index"] for r in rows]
    assert m.role == [r["role"] for r in rows]
    assert m.negative.tolist() == [int(bool(r["labels"])) for r in rows]


@FUZZ
@given(rows=valid_rows(), newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_valid_csv_reads_back_whatever_the_free_text(folder, rows, newline, bom):
    """A well-formed CSV (csv.writer quoting) is read back row for row, even when a cell holds newlines,
    quotes, U+2028, form feeds or other line-breaking characters."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(["call_id", "segment_index", "role", "labels", "transcript"])
    writer.writerows([[r["call_id"], r["segment_index"], r["role"], ";".join(r["labels"]), r["transcript"]]
                      for r in rows])
    path = folder / "m.csv"
    path.write_text(("\ufeff" if bom else "") + buffer.getvalue(), encoding="utf-8")
    assert_read_back(load_manifest(path, TAXONOMIES[0], require_audio=False), rows)


@FUZZ
@given(rows=valid_rows(), ascii_only=st.booleans())
def test_valid_jsonl_reads_back_whatever_the_free_text(folder, rows, ascii_only):
    """JSONL written by json.dumps (ensure_ascii either way: U+2028 may then stand unescaped) reads back."""
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows), encoding="utf-8")
    assert_read_back(load_manifest(path, TAXONOMIES[0], require_audio=False), rows)


@pytest.mark.parametrize("text", [
    "[" * 100_000,  # nesting deeper than the JSON decoder's recursion limit
    '{"call_id": "a", "segment_index": ' + "9" * 5000 + "}",  # over Python's int-digits limit
    '{"call_id": "a", "segment_index": 99999999999999999999999}',  # does not fit int64
])
def test_pathological_jsonl(folder, text):
    path = folder / "m.jsonl"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="line 1"):
        load_manifest(path, TAXONOMIES[0], require_audio=False)


@pytest.mark.parametrize("text, match", [
    ("call_id,segment_index\nx" + "y" * 200_000 + ",0\n", r"line 2: not valid CSV"),  # over csv.field_size_limit
    ("call_id,segment_index,audio\nx,0," + "n" * 300 + ".wav\n", r"line 2: column 'audio': unusable path"),
    ("call_id,call_id,segment_index\nx,y,0\n", r"line 1: column\(s\) \['call_id'\] appear more than once"),
    ("\ncall_id,segment_index\nx,0\n", r"no header row on line 1"),
])
def test_pathological_csv(folder, text, match):
    path = folder / "m.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match=match):
        load_manifest(path, TAXONOMIES[0])


def test_cells_may_hold_line_separators(folder):
    """A quoted cell with a newline, U+2028 or a form feed is one cell, and line numbers stay physical."""
    path = folder / "m.csv"
    path.write_text('call_id,segment_index,transcript\nx,0,"one\ntwo"\nx,1,a\u2028b\x0cc\ny,zero,\n',
                    encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 5: column 'segment_index'"):
        load_manifest(path, TAXONOMIES[0], require_audio=False)
    path.write_text('{"call_id": "x\u2028y", "segment_index": 0}\n', encoding="utf-8")
    assert load_manifest(path.rename(folder / "m.jsonl"), TAXONOMIES[0], require_audio=False).call_id == ["x\u2028y"]
    assert math.isnan(load_manifest(folder / "m.jsonl", TAXONOMIES[0], require_audio=False).start_sec[0])
