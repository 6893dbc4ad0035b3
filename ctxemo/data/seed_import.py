"""Import the seed study's own layout into a manifest.

Seed layout: one CSV per call (`<call>.csv`, columns `index, role, <one 0/1 column per label>`,
role 1 = caller, 0 = operator) and one wav per turn at `<call>/<index>.wav`, all under one folder.
CSVs come as hotline exports do: UTF-8 (with or without BOM) or GB18030/GBK (`ctxemo.data.text`).

Nothing is dropped silently: a call that cannot be imported (no wav folder, a bad row, a missing wav) is
reported with its reason and, unless `allow_missing`, nothing is written; calls missing from the caller map
and map entries that name no call are warnings.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ctxemo.data.manifest import write_manifest
from ctxemo.data.text import EXPORT_ENCODINGS, read_text
from ctxemo.errors import ManifestError
from ctxemo.taxonomy import Taxonomy


@dataclass
class SeedImport:
    manifest: Optional[Path]  # None when nothing was written (calls failed and not allow_missing)
    calls: List[str]  # imported calls
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (call, reason) of every call not imported
    warnings: List[str] = field(default_factory=list)


def _csv_rows(path: Path, encodings: Sequence[str]) -> Tuple[List[str], List[Tuple[int, Dict[str, str]]]]:
    """(header, [(physical line, row)]) of a CSV in any of `encodings`; errors name the file and line."""
    text, _ = read_text(path, encodings=encodings, hint="pass --encoding to name the file's encoding")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        for record in reader:
            if None in record:
                raise ManifestError(f"{path}: line {reader.line_num}: more values than header columns")
            rows.append((reader.line_num, {k.strip(): (v or "").strip() for k, v in record.items()}))
    except csv.Error as exc:
        raise ManifestError(f"{path}: line {reader.line_num + 1}: not valid CSV ({exc})") from None
    if not header:
        raise ManifestError(f"{path}: empty file (no header row on line 1)")
    return header, rows


def _read_caller_map(path: Path, encodings: Sequence[str]) -> Dict[str, Tuple[str, int]]:
    """`call_id,caller_id` CSV -> {call: (caller, line)}: the seed folder itself does not say who called."""
    header, rows = _csv_rows(path, encodings)
    if not {"call_id", "caller_id"} <= set(header):
        raise ManifestError(f"{path}: caller map needs columns call_id, caller_id; found {header}")
    out: Dict[str, Tuple[str, int]] = {}
    for line, row in rows:
        call, caller = row["call_id"], row["caller_id"]
        if not call or not caller:
            raise ManifestError(f"{path}: line {line}: empty call_id or caller_id")
        if call in out and out[call][0] != caller:
            raise ManifestError(f"{path}: line {line}: call {call!r} mapped to {caller!r}, but line {out[call][1]} "
                                f"gave {out[call][0]!r}")
        out[call] = (caller, line)
    return out


def _call_rows(call_csv: Path, wav_dir: Path, out_dir: Path, taxonomy: Taxonomy, encodings: Sequence[str]) -> List[dict]:
    """Manifest rows of one call. Raises ManifestError naming the call's CSV, line and column."""
    call_id = call_csv.stem
    header, records = _csv_rows(call_csv, encodings)
    columns = {name.lower(): name for name in header}
    missing = [c for c in ["index", "role", *taxonomy.labels] if c.lower() not in columns]
    if missing:
        raise ManifestError(f"{call_csv}: missing column(s) {missing}; found {header}")
    rows, seen = [], {}
    for number, record in records:
        where = f"{call_csv}: line {number}"
        index = record[columns["index"]]
        try:
            int(index)
        except ValueError:
            raise ManifestError(f"{where}: column 'index' must be an integer, got {index!r}") from None
        if index in seen:
            raise ManifestError(f"{where}: duplicate index {index}, first seen on line {seen[index]}")
        seen[index] = number
        role = {"1": "caller", "0": "operator"}.get(record[columns["role"]])
        if role is None:
            raise ManifestError(f"{where}: column 'role' must be 1 (caller) or 0 (operator)")
        names = []
        for label in taxonomy.labels:
            value = record[columns[label.lower()]]
            if value not in ("0", "1", ""):
                raise ManifestError(f"{where}: column '{label}' must be 0 or 1, got {value!r}")
            if value == "1":
                names.append(label)
        wav = wav_dir / f"{index}.wav"
        if not wav.is_file():
            raise ManifestError(f"{where}: audio for index {index} not found at {wav}")
        rows.append({"call_id": call_id, "segment_index": index,
                     "audio": os.path.relpath(wav.resolve(), out_dir.resolve()), "role": role,
                     "labels": ";".join(names) if role == "caller" else ""})
    if not rows:
        raise ManifestError(f"{call_csv}: no rows")
    return rows


def _call_csvs(seed_dir: Path, caller_map: Optional[Path]) -> Dict[str, Path]:
    """{call: its CSV}: every CSV in the folder but the caller map (which may sit beside them)."""
    skip = caller_map.resolve() if caller_map else None
    return {p.stem: p for p in sorted(seed_dir.glob("*.csv")) if p.is_file() and p.resolve() != skip}


def _unpaired(seed_dir: Path, csvs: Dict[str, Path]) -> List[Tuple[str, str]]:
    """(call, reason) for every per-call CSV without its wav folder and every folder without its CSV."""
    folders = {p.name for p in seed_dir.iterdir() if p.is_dir()}
    out = []
    for call in sorted(set(csvs) - folders):
        near = [f for f in folders if f.lower() == call.lower()]  # case differs: names must match exactly
        out.append((call, f"{csvs[call].name} has no wav folder {call}/"
                    + (f" (found {near[0]}/: folder and CSV names must match exactly, case included)" if near else "")))
    for folder in sorted(folders - set(csvs)):
        if any(f.suffix.lower() == ".wav" for f in (seed_dir / folder).iterdir()) and folder.lower() not in \
                {c.lower() for c in csvs}:
            out.append((folder, f"wav folder {folder}/ has no {folder}.csv"))
    return out


def import_seed(seed_dir: str | Path, out_dir: str | Path, taxonomy: Taxonomy, *,
                caller_map: Optional[str | Path] = None, encoding: Optional[str] = None,
                allow_missing: bool = False) -> SeedImport:
    """Convert the seed layout to `out_dir/manifest.csv` (audio paths point back into `seed_dir`).

    Args:
        seed_dir: folder holding `<call>.csv` files and `<call>/<index>.wav` turns.
        out_dir: where the manifest is written.
        taxonomy: label names; matched to the CSV's label columns case-insensitively.
        caller_map: optional CSV `call_id,caller_id`, so folds can be grouped by caller.
        encoding: the CSVs' text encoding (default: UTF-8 with or without BOM, else GB18030/GBK).
        allow_missing: write the calls that could be imported even if some could not.
    Returns:
        What was imported, every call that was not (with the reason) and the warnings.
    Raises:
        ManifestError: no call found, an unreadable caller map, or (without allow_missing) calls that could
            not be imported, all listed with their reasons; nothing is written then.
    """
    seed_dir, out_dir = Path(seed_dir), Path(out_dir)
    encodings = (encoding,) if encoding else EXPORT_ENCODINGS
    caller_map = Path(caller_map) if caller_map else None
    csvs = _call_csvs(seed_dir, caller_map) if seed_dir.is_dir() else {}
    if not csvs:
        raise ManifestError(f"{seed_dir}: no per-call CSV with a matching <call>/ wav folder found")
    callers = _read_caller_map(caller_map, encodings) if caller_map else {}
    skipped = _unpaired(seed_dir, csvs)
    rows: List[dict] = []
    calls: List[str] = []
    for call_csv in (p for p in csvs.values() if (seed_dir / p.stem).is_dir()):
        try:
            call_rows = _call_rows(call_csv, seed_dir / call_csv.stem, out_dir, taxonomy, encodings)
        except ManifestError as exc:
            skipped.append((call_csv.stem, str(exc)))
            continue
        calls.append(call_csv.stem)
        for row in call_rows:
            row["caller_id"] = callers.get(row["call_id"], (row["call_id"],))[0]
        rows.extend(call_rows)
    if not calls:
        raise ManifestError(f"{seed_dir}: no call could be imported:\n" + _listing(skipped))
    if skipped and not allow_missing:
        raise ManifestError(f"{seed_dir}: {len(skipped)} call(s) could not be imported (nothing written; fix them, "
                            f"or pass --allow-missing to import the other {len(calls)}):\n" + _listing(skipped))
    warnings = []
    if caller_map:
        unmapped = [c for c in calls if c not in callers]
        if unmapped:
            warnings.append(f"{caller_map}: {len(unmapped)} imported call(s) are not in the caller map and get "
                            f"caller_id = call_id (one caller's calls may then land in different folds): "
                            f"{_few(unmapped)}")
        unused = [f"{c} (line {line})" for c, (_, line) in sorted(callers.items(), key=lambda kv: kv[1][1])
                  if c not in calls]
        if unused:
            warnings.append(f"{caller_map}: {len(unused)} entr(ies) name no imported call: {_few(unused)}")
    manifest = write_manifest(out_dir / "manifest.csv", rows)
    return SeedImport(manifest=manifest, calls=calls, skipped=skipped, warnings=warnings)


def _few(items: Sequence[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _listing(skipped: Sequence[Tuple[str, str]]) -> str:
    return "\n".join(f"  {call}: {reason}" for call, reason in skipped)
