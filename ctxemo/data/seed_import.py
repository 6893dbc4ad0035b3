"""Import the seed study's own layout into a manifest.

Seed layout: one CSV per call (`<call>.csv`, columns `index, role, <one 0/1 column per label>`,
role 1 = caller, 0 = operator) and one wav per turn at `<call>/<index>.wav`, all under one folder.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional

from ctxemo.data.manifest import write_manifest
from ctxemo.errors import ManifestError
from ctxemo.taxonomy import Taxonomy


def _read_caller_map(path: Optional[Path]) -> Dict[str, str]:
    """Optional `call_id,caller_id` CSV: the seed folder itself does not say who called."""
    if path is None:
        return {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"call_id", "caller_id"} <= set(reader.fieldnames):
            raise ManifestError(f"{path}: caller map needs columns call_id, caller_id")
        return {row["call_id"].strip(): row["caller_id"].strip() for row in reader}


def import_seed(seed_dir: str | Path, out_dir: str | Path, taxonomy: Taxonomy, *,
                caller_map: Optional[str | Path] = None) -> Path:
    """Convert the seed layout to `out_dir/manifest.csv` (audio paths point back into `seed_dir`).

    Args:
        seed_dir: folder holding `<call>.csv` files and `<call>/<index>.wav` turns.
        out_dir: where the manifest is written.
        taxonomy: label names; matched to the CSV's label columns case-insensitively.
        caller_map: optional CSV `call_id,caller_id`, so folds can be grouped by caller.
    Returns:
        Path of the written manifest.
    Raises:
        ManifestError: naming the per-call CSV, line and column at fault.
    """
    seed_dir, out_dir = Path(seed_dir), Path(out_dir)
    call_files = sorted(p for p in seed_dir.glob("*.csv") if (seed_dir / p.stem).is_dir())
    if not call_files:
        raise ManifestError(f"{seed_dir}: no per-call CSV with a matching <call>/ wav folder found")
    callers = _read_caller_map(Path(caller_map) if caller_map else None)
    rows: List[dict] = []
    for call_csv in call_files:
        call_id = call_csv.stem
        with open(call_csv, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = {name.strip().lower(): name for name in (reader.fieldnames or [])}
            missing = [c for c in ["index", "role", *taxonomy.labels] if c.lower() not in header]
            if missing:
                raise ManifestError(f"{call_csv}: missing column(s) {missing}; found {reader.fieldnames}")
            for number, record in enumerate(reader, start=2):
                where = f"{call_csv}: line {number}"
                index = record[header["index"]].strip()
                role = {"1": "caller", "0": "operator"}.get(record[header["role"]].strip())
                if role is None:
                    raise ManifestError(f"{where}: column 'role' must be 1 (caller) or 0 (operator)")
                names = []
                for label in taxonomy.labels:
                    value = record[header[label.lower()]].strip()
                    if value not in ("0", "1", ""):
                        raise ManifestError(f"{where}: column '{label}' must be 0 or 1, got {value!r}")
                    if value == "1":
                        names.append(label)
                wav = seed_dir / call_id / f"{index}.wav"
                if not wav.is_file():
                    raise ManifestError(f"{where}: audio for index {index} not found at {wav}")
                rows.append({
                    "call_id": call_id, "segment_index": index,
                    "audio": os.path.relpath(wav.resolve(), out_dir.resolve()),
                    "caller_id": callers.get(call_id, call_id), "role": role,
                    "labels": ";".join(names) if role == "caller" else "",
                })
    return write_manifest(out_dir / "manifest.csv", rows)
