"""The data contract (docs/design.md): a CSV or JSONL manifest, one row per speech segment of a call.

`load_manifest` validates every row and fails with the file, line and column at fault, before any
training starts: a typo in a hand-edited label sheet must not surface hours later.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ctxemo.data.text import read_text
from ctxemo.errors import ManifestError
from ctxemo.io import atomic_path
from ctxemo.taxonomy import Taxonomy

ROLES = ("caller", "operator")
ROLE_IDS = {"caller": 0, "operator": 1}  # the role ids the context stage embeds
_ROLE_ALIASES = {"caller": "caller", "operator": "operator", "1": "caller", "0": "operator",
                 "client": "caller", "counselor": "operator", "counsellor": "operator"}
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no", ""}


def optional_sec(value: float) -> Optional[float]:
    """A manifest time as a float, or None where it is unknown (NaN)."""
    return None if value is None or np.isnan(value) else float(value)


@dataclass
class Manifest:
    """Validated segments, kept in file order (row i here = row i of a features `.npy`)."""

    path: Path
    taxonomy: Taxonomy
    call_id: List[str]
    segment_index: np.ndarray  # int64 [n]
    audio: List[Optional[str]]  # as written in the file (relative to the manifest's folder)
    start_sec: np.ndarray  # float64 [n], NaN when absent
    end_sec: np.ndarray  # float64 [n], NaN when absent
    caller_id: List[str]
    role: List[str]  # "caller" | "operator"
    negative: np.ndarray  # int64 [n] 0/1
    fine: np.ndarray  # float32 [n, c] 0/1
    line: np.ndarray  # int64 [n]: line (CSV) or line number (JSONL) of each row, for messages
    has_gold: bool = False  # the file gave labels (a `negative`, `labels` or per-label column), not only ids
    _calls: Optional[List[np.ndarray]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.call_id)

    @property
    def root(self) -> Path:
        return self.path.parent

    def audio_path(self, row: int) -> Path:
        rel = self.audio[row]
        if not rel:
            raise ManifestError(f"{self.path}: line {self.line[row]}: no 'audio' path for this row")
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    @property
    def is_caller(self) -> np.ndarray:
        """bool [n]: segments that are scored (caller turns); operator turns are context only."""
        return np.array([r == "caller" for r in self.role], dtype=bool)

    def crop(self, row: int) -> Tuple[Optional[float], Optional[float]]:
        """(start_sec, end_sec) of a row inside its audio file; None where the manifest gives none."""
        return optional_sec(self.start_sec[row]), optional_sec(self.end_sec[row])

    def calls(self) -> List[np.ndarray]:
        """Row indices of each call, ordered by segment_index; calls in order of first appearance."""
        if self._calls is None:
            by_call: Dict[str, List[int]] = {}
            for row, cid in enumerate(self.call_id):
                by_call.setdefault(cid, []).append(row)
            self._calls = [
                np.array(sorted(rows, key=lambda r: self.segment_index[r]), dtype=np.int64)
                for rows in by_call.values()
            ]
        return self._calls

    def call_ids(self) -> List[str]:
        return [self.call_id[rows[0]] for rows in self.calls()]

    def label_matrix(self) -> np.ndarray:
        """[n, 1 + c] int: negative then fine labels, for stratified splitting."""
        return np.concatenate([self.negative[:, None], self.fine.astype(np.int64)], axis=1)


# ----------------------------------------------------------------------------- reading

def _read_rows(path: Path) -> List[tuple]:
    """[(line_number, {column: raw value})] from CSV or JSONL, with errors naming the file."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    # UTF-8 is the contract; a BOM from spreadsheet exports is tolerated.
    text, _ = read_text(path, encodings=("utf-8-sig",), hint="re-save the manifest as UTF-8")
    rows: List[tuple] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        # Split on "\n" only: str.splitlines would also cut at U+2028, form feeds etc., which JSON
        # strings may hold unescaped.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:  # also 5000-digit numbers and deep nesting
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:120]
                raise ManifestError(f"{path}: line {number}: not valid JSON ({reason})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{path}: line {number}: expected a JSON object per line")
            rows.append((number, obj))
    else:
        # newline="": the csv module's own line handling (quoted fields may span lines; U+2028 or a
        # form feed inside a cell is just a character). reader.line_num counts physical lines.
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            if not reader.fieldnames:
                raise ManifestError(f"{path}: empty manifest (no header row on line 1)")
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            doubled = sorted({name for name in reader.fieldnames if reader.fieldnames.count(name) > 1})
            if doubled:
                raise ManifestError(f"{path}: line 1: column(s) {doubled} appear more than once in the header")
            for obj in reader:
                number = reader.line_num
                if None in obj:
                    raise ManifestError(f"{path}: line {number}: more values than header columns")
                rows.append((number, obj))
        except csv.Error as exc:  # e.g. a cell over csv.field_size_limit(); line_num = lines read before
            raise ManifestError(f"{path}: line {reader.line_num + 1}: not valid CSV ({exc})") from None
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")
    return rows


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _parse_flag(value, *, where: str, column: str) -> int:
    text = _text(value).lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise ManifestError(f"{where}: column '{column}' must be 0/1, got {value!r}")


def _parse_float(value, *, where: str, column: str) -> float:
    text = _text(value)
    if text == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise ManifestError(f"{where}: column '{column}' must be a number of seconds, got {value!r}") from None


def _parse_labels(value, taxonomy: Taxonomy, *, where: str) -> np.ndarray:
    names = value if isinstance(value, list) else [n for n in _text(value).replace(",", ";").split(";")]
    names = [str(n).strip() for n in names if str(n).strip()]
    try:
        return taxonomy.encode(names)
    except KeyError as exc:
        raise ManifestError(
            f"{where}: column 'labels': unknown label {exc.args[0]!r}; valid labels: {', '.join(taxonomy.labels)}"
        ) from None


def load_manifest(
    path: str | Path,
    taxonomy: Taxonomy,
    *,
    require_audio: bool = True,
    check_audio_exists: bool = True,
) -> Manifest:
    """Read and validate a manifest.

    Args:
        path: `.csv` or `.jsonl` file; audio paths are relative to its folder.
        taxonomy: label names, multi-label or not, and which labels are negative.
        require_audio: False when precomputed features replace the audio.
        check_audio_exists: verify each audio file exists (cheap; catches typos before training).
    Returns:
        A `Manifest` in file order.
    Raises:
        ManifestError: naming the file, line and column of the first problem found.
    """
    path = Path(path)
    rows = _read_rows(path)
    columns = set().union(*(obj.keys() for _, obj in rows))
    required = ["call_id", "segment_index"] + (["audio"] if require_audio else [])
    missing = [c for c in required if c not in columns]
    if missing:
        raise ManifestError(f"{path}: missing required column(s) {missing}; found columns: {sorted(columns)}")
    label_columns = [name for name in taxonomy.labels if name in columns]
    has_label_list = "labels" in columns
    if has_label_list and label_columns:
        raise ManifestError(f"{path}: give fine labels either as a 'labels' column or as one 0/1 column per "
                            f"label, not both (found 'labels' and {label_columns})")

    n, c = len(rows), taxonomy.num_labels
    call_id, audio, caller_id, role = [], [], [], []
    segment_index = np.zeros(n, dtype=np.int64)
    start = np.full(n, np.nan)
    end = np.full(n, np.nan)
    negative = np.zeros(n, dtype=np.int64)
    fine = np.zeros((n, c), dtype=np.float32)
    line = np.zeros(n, dtype=np.int64)
    seen: Dict[tuple, int] = {}
    negative_mask = taxonomy.negative_mask

    for i, (number, obj) in enumerate(rows):
        where = f"{path}: line {number}"
        line[i] = number
        cid = _text(obj.get("call_id"))
        if not cid:
            raise ManifestError(f"{where}: column 'call_id' is empty")
        try:
            segment_index[i] = int(_text(obj.get("segment_index")))
        except (ValueError, OverflowError):  # OverflowError: does not fit int64
            raise ManifestError(f"{where}: column 'segment_index' must be an integer, got "
                                f"{obj.get('segment_index')!r}") from None
        key = (cid, int(segment_index[i]))
        if key in seen:
            raise ManifestError(f"{where}: duplicate (call_id, segment_index) = {key}, first seen on line {seen[key]}")
        seen[key] = number
        call_id.append(cid)
        caller_id.append(_text(obj.get("caller_id")) or cid)
        raw_role = _text(obj.get("role")).lower() or "caller"
        if raw_role not in _ROLE_ALIASES:
            raise ManifestError(f"{where}: column 'role' must be one of {ROLES}, got {obj.get('role')!r}")
        role.append(_ROLE_ALIASES[raw_role])
        audio_rel = _text(obj.get("audio")) or None
        if require_audio and audio_rel is None:
            raise ManifestError(f"{where}: column 'audio' is empty")
        audio.append(audio_rel)
        start[i] = _parse_float(obj.get("start"), where=where, column="start")
        end[i] = _parse_float(obj.get("end"), where=where, column="end")
        if not np.isnan(start[i]) and not np.isnan(end[i]) and end[i] <= start[i]:
            raise ManifestError(f"{where}: 'end' ({end[i]}) must be after 'start' ({start[i]})")

        if has_label_list:
            fine[i] = _parse_labels(obj.get("labels"), taxonomy, where=where)
        for j, name in enumerate(taxonomy.labels):
            if name in label_columns:
                fine[i, j] = _parse_flag(obj.get(name), where=where, column=name)
        if not taxonomy.multilabel and fine[i].sum() > 1:
            raise ManifestError(f"{where}: the taxonomy is single-label but the row has "
                                f"{taxonomy.decode(fine[i])}")
        derived = int(fine[i, negative_mask].any())
        if "negative" in columns and _text(obj.get("negative")) != "":
            negative[i] = _parse_flag(obj.get("negative"), where=where, column="negative")
            if negative[i] == 0 and derived:
                raise ManifestError(f"{where}: negative=0 but the row carries negative label(s) "
                                    f"{[l for l in taxonomy.decode(fine[i]) if l in set(np.array(taxonomy.labels)[negative_mask])]}")
        else:
            negative[i] = derived

    manifest = Manifest(path=path, taxonomy=taxonomy, call_id=call_id, segment_index=segment_index, audio=audio,
                        start_sec=start, end_sec=end, caller_id=caller_id, role=role, negative=negative,
                        fine=fine, line=line,
                        has_gold=bool(has_label_list or label_columns or "negative" in columns))
    _check_caller_per_call(manifest)
    if require_audio and check_audio_exists:
        for i in range(n):
            try:
                found = manifest.audio_path(i).is_file()
            except OSError as exc:  # e.g. a file name over the OS limit
                raise ManifestError(f"{path}: line {line[i]}: column 'audio': unusable path "
                                    f"({exc.strerror or exc})") from None
            if not found:
                raise ManifestError(f"{path}: line {line[i]}: column 'audio': file not found: {manifest.audio_path(i)}")
    return manifest


def _check_caller_per_call(manifest: Manifest) -> None:
    """A call belongs to one caller: otherwise grouped CV could leak a caller across folds."""
    owner: Dict[str, tuple] = {}
    for i, (cid, who, role) in enumerate(zip(manifest.call_id, manifest.caller_id, manifest.role)):
        if role != "caller":
            continue
        if cid in owner and owner[cid][0] != who:
            raise ManifestError(f"{manifest.path}: line {manifest.line[i]}: call {cid!r} has caller_id {who!r} "
                                f"but line {owner[cid][1]} gave {owner[cid][0]!r}")
        owner.setdefault(cid, (who, manifest.line[i]))
    # Operator rows inherit the call's caller id so the whole call stays in one fold.
    for i, cid in enumerate(manifest.call_id):
        if cid in owner:
            manifest.caller_id[i] = owner[cid][0]


# ----------------------------------------------------------------------------- writing

MANIFEST_COLUMNS = ["call_id", "segment_index", "audio", "start", "end", "caller_id", "role", "negative", "labels"]


def write_manifest(path: str | Path, rows: Iterable[Dict[str, object]], *, columns: Sequence[str] = MANIFEST_COLUMNS) -> Path:
    """Write rows as a UTF-8 CSV atomically: a reader never sees half a manifest."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return Path(path)
