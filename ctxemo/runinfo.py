"""Run folders: every run records its resolved config, argv, git hash, seed, library versions and the
fingerprints of its inputs, and a folder never mixes the results of two configs or two sets of inputs.

`RunFolder` is the guard every command goes through: a rerun into a folder resumes only when the config
and the inputs are those recorded there; otherwise it is refused (nothing written) unless `--overwrite`,
which starts the folder clean. Nothing is written until `RunFolder.start`, called once every check passed.
"""
from __future__ import annotations

import datetime as _dt
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from omegaconf import DictConfig

from ctxemo.config import load_config, to_container, to_yaml
from ctxemo.errors import CtxemoError
from ctxemo.io import read_json, write_json, write_text

CONFIG_FILE, RUN_FILE = "config.yaml", "run.json"
# Kept by --overwrite: the embedding cache checks every row's fingerprint itself, so it can never serve
# stale embeddings, and recomputing it is the slow part of a rerun.
KEPT_ON_OVERWRITE = ("cache",)

TRACKED_PACKAGES = ("ctxemo", "torch", "torchaudio", "transformers", "peft", "numpy", "scikit-learn",
                    "omegaconf", "einops", "soundfile", "safetensors", "scipy")


def library_versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_hash() -> Optional[str]:
    """Commit of the ctxemo source tree (None outside a git checkout), '+dirty' if modified."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def start_run(run_dir: str | Path, cfg: DictConfig, *, command: str,
              inputs: Optional[Dict[str, Any]] = None) -> Path:
    """Create `run_dir` and write config.yaml + run.json (argv, git hash, seed, versions, input fingerprints)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG_FILE, to_yaml(cfg))
    write_json(run_dir / RUN_FILE, {
        "command": command, "argv": sys.argv, "git": git_hash(), "seed": int(cfg.seed),
        "started": _dt.datetime.now().isoformat(timespec="seconds"), "versions": library_versions(),
        "platform": platform.platform(), "inputs": inputs or {},
    })
    return run_dir


def config_differences(stored: Path, cfg: DictConfig, *, limit: int = 5) -> list:
    """What differs between a run folder's config.yaml and `cfg`, as "key: old -> new" (at most `limit`, then
    "..."); [] when they agree. The stored file is read onto today's schema, so a key added by a later
    version of ctxemo takes its default there, and a folder started before it can still be resumed when
    the run keeps that default. A stored config the schema can no longer read differs as a whole."""
    text = stored.read_text(encoding="utf-8")
    if text == to_yaml(cfg):
        return []
    try:
        old = flat_config(load_config([stored]))
    except CtxemoError as exc:
        return [f"{stored.name} is not readable by this version: {exc}"]
    new = flat_config(cfg)
    changed = [f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
               for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    return changed[:limit] + (["..."] if len(changed) > limit else [])


def flat_config(cfg: DictConfig) -> Dict[str, Any]:
    """dotted key -> value of every leaf of `cfg` (resolved)."""
    out: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(to_container(cfg), "")
    return out


def _other_ways(run_dir: Path) -> str:
    return f"choose another --out, or pass --overwrite to start {run_dir} clean"


class RunFolder:
    """The guard of one run folder: `check_*` only read; `start` is the first write.

    Args:
        run_dir: the folder. cfg: the resolved config of this run.
        overwrite: skip the checks; `start` (or `clear`) then empties the folder but for `keep`.
        keep: top-level entries that --overwrite leaves (default: the content-checked embedding cache).
    Raises (at construction):
        CtxemoError: the folder holds a run of another config (and not `overwrite`).
    """

    def __init__(self, run_dir: str | Path, cfg: DictConfig, *, overwrite: bool = False,
                 keep: Sequence[str] = KEPT_ON_OVERWRITE, log: Callable[[str], None] = print):
        self.path, self.cfg, self.overwrite, self.keep, self.log = Path(run_dir), cfg, overwrite, tuple(keep), log
        self._cleared = False
        if self.path.exists() and not self.path.is_dir():
            raise CtxemoError(f"{self.path}: the run folder names an existing file, not a folder; choose another --out")
        existing = self.path / CONFIG_FILE
        if not overwrite and existing.is_file():
            changed = config_differences(existing, cfg)
            if changed:
                raise CtxemoError(f"{self.path} holds a run with a different config ({', '.join(changed)}); to "
                                  f"resume, use the same config and overrides; otherwise {_other_ways(self.path)}")

    def check_inputs(self, inputs: Dict[str, Any]) -> None:
        """Refuse a resume whose inputs (manifest, features, audio) differ from those recorded in run.json."""
        if self.overwrite or not (self.path / RUN_FILE).is_file():
            return
        try:
            recorded = read_json(self.path / RUN_FILE).get("inputs") or {}
        except (ValueError, AttributeError):
            raise CtxemoError(f"{self.path / RUN_FILE}: not a readable run record; {_other_ways(self.path)}") from None
        changed = [_describe_change(name, recorded.get(name), inputs.get(name))
                   for name in sorted(set(recorded) | set(inputs)) if recorded.get(name) != inputs.get(name)]
        if recorded and changed:
            raise CtxemoError(f"{self.path} holds results computed from other inputs ({'; '.join(changed)}); "
                              f"resuming would mix them with results from the new ones: {_other_ways(self.path)}")

    def clear(self) -> None:
        """--overwrite: empty the folder (but for `keep`), once, saying so. Refuses a folder that is not a run's."""
        if not self.overwrite or self._cleared or not self.path.is_dir():
            self._cleared = True
            return
        entries = [p for p in self.path.iterdir() if p.name not in self.keep]
        is_run = (self.path / RUN_FILE).is_file() or (self.path / CONFIG_FILE).is_file()
        if entries and not is_run:  # `--out ~ --overwrite` must not delete a home folder
            raise CtxemoError(f"--overwrite: {self.path} is not a ctxemo run folder (no {RUN_FILE} or {CONFIG_FILE}); "
                              "refusing to delete what it holds; choose another --out")
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if entries:
            kept = [name for name in self.keep if (self.path / name).exists()]
            self.log(f"[overwrite] removed the previous run in {self.path} ({len(entries)} entries"
                     + (f"; kept {', '.join(f'{k}/' for k in kept)}: checked row by row, never stale" if kept else "")
                     + ")")
        self._cleared = True

    def start(self, *, command: str, inputs: Optional[Dict[str, Any]] = None) -> Path:
        """Every check has passed: clear (with --overwrite) and write config.yaml + run.json."""
        self.clear()
        return start_run(self.path, self.cfg, command=command, inputs=inputs)


def _describe_change(name: str, old: Optional[Dict[str, Any]], new: Optional[Dict[str, Any]]) -> str:
    """One changed input in words, e.g. "manifest data/m.csv: content changed (sha256 1a2b3c4d… -> 5e6f…)"."""
    if old is None:
        return f"{name}: not used by the recorded run"
    if new is None:
        return f"{name} {old.get('path', '')}: used by the recorded run, not by this one".replace("  ", " ")
    what = f"{name} {new['path']}" if "path" in new else name
    if old.get("rows") != new.get("rows"):
        return f"{what}: {old.get('rows')} rows then, {new.get('rows')} now"
    if name == "audio":  # the embedding cache's fingerprint: path, size, modification time and crop per row
        return "audio: the size or modification time of an audio file, or a row's crop, changed"
    return f"{what}: content changed (sha256 {str(old.get('sha256'))[:12]}… then, {str(new.get('sha256'))[:12]}… now)"
