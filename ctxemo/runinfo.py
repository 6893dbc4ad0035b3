"""Run folders: every run records its resolved config, argv, git hash, seed and library versions."""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

from omegaconf import DictConfig

from ctxemo.config import to_yaml
from ctxemo.io import write_json, write_text

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


def start_run(run_dir: str | Path, cfg: DictConfig, *, command: str) -> Path:
    """Create `run_dir` and write config.yaml + run.json (argv, git hash, seed, versions)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", to_yaml(cfg))
    write_json(run_dir / "run.json", {
        "command": command, "argv": sys.argv, "git": git_hash(), "seed": int(cfg.seed),
        "started": _dt.datetime.now().isoformat(timespec="seconds"), "versions": library_versions(),
        "platform": platform.platform(),
    })
    return run_dir
