"""Every experiment config composes and smoke-runs (lightning-hydra-template's test_sweeps style).

The real encoders need audio, a hub download and a GPU; here each config's encoder is replaced by the
precomputed-features corpus of conftest.feature_corpus, and the run is shrunk (1 epoch, one fold of
2), so what is tested is the config itself (every key and arm valid) and the pipeline downstream of
the encoder. No hub is ever contacted: the encoder source is set to None and features are given.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from conftest import feature_corpus
from omegaconf import OmegaConf

from ctxemo.config import load_config
from ctxemo.studies.ablation import arms_from_config, run_ablation
from ctxemo.studies.cv import run_cv

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
CONFIG_DIR = EXPERIMENTS / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
IDS = [str(p.relative_to(CONFIG_DIR)) for p in CONFIGS]
# real_speech.yaml has its own 7-label taxonomy: its smoke run is on the real corpus (tests/test_real_speech.py).
GRIDS = [p for p in CONFIGS if p.name != "real_speech.yaml"]

# Arm overrides that need audio, a hub or a GPU (encoder choice, LoRA, end-to-end training): dropped
# from arms in the smoke run. Composition of the full arm is still checked in test_config_composes.
NEEDS_AUDIO = ("encoder.", "train.mode=", "data.manifest=", "data.features=")


@functools.lru_cache(maxsize=None)
def _composed(path: Path):
    return load_config([path])


def composed(path: Path):
    """load_config([path]), composed once per session (a fresh copy each call)."""
    return _composed(path).copy()


# Downstream configs already smoke-run in this session: configs that differ only in what the smoke
# run replaces (the encoder, the name) exercise the same code and are run once.
_SMOKED: dict = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    feature_corpus(folder, n_callers=6, calls_per_caller=2, turns=6)
    return folder


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def quick_comparison(monkeypatch):
    """The ablation's closing bootstrap and plots are tested in test_report; here a few resamples, no plots."""
    from ctxemo.reports import comparison
    from ctxemo.studies import ablation

    real = comparison.finish_comparison

    def quick(run_dir, result, **kwargs):
        return real(run_dir, result, **{**kwargs, "n_boot": 20, "make_plots": False})

    monkeypatch.setattr(comparison, "finish_comparison", quick)
    monkeypatch.setattr(ablation, "finish_comparison", quick, raising=False)  # if ablation imported the name


def smoke_overrides(corpus: Path, out_dir: Path) -> list:
    return [
        f"data.manifest={corpus / 'manifest.jsonl'}", f"data.features={corpus / 'feats.npy'}",
        "encoder.source=null", "encoder.offline=true", "encoder.finetune=frozen", "train.mode=two_stage",
        "train.epochs=1", "train.patience=1", "train.batch_calls=4", "train.device=cpu",
        "context.d_model=16", "context.depth=1", "context.heads=2",
        "cv.folds=2", "cv.only_folds=[0]", f"out_dir={out_dir}",
    ]


def test_configs_are_found():
    assert (CONFIG_DIR / "base.yaml") in CONFIGS
    assert len(list((CONFIG_DIR / "encoder").glob("*.yaml"))) == 15  # 5 encoders x {joint, binary, fine}
    assert list((CONFIG_DIR / "ablation").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_composes(path):
    cfg = composed(path)
    if cfg.encoder.source is not None:
        assert not cfg.encoder.offline, f"{path}: a hub id needs encoder.offline: false"
    for arm, overrides in dict(cfg.ablation.arms).items():
        arm_cfg = load_config(overrides=list(overrides), base=cfg)
        if arm_cfg.encoder.finetune == "lora":
            assert arm_cfg.train.mode == "end_to_end", f"{path}: arm {arm}: LoRA does nothing in two_stage"
    if cfg.ablation.arms:
        assert cfg.ablation.reference in cfg.ablation.arms, f"{path}: name the reference arm"


def test_every_config_is_documented():
    readme = (EXPERIMENTS / "README.md").read_text(encoding="utf-8")
    missing = [name for name in IDS if name not in readme]
    assert not missing, f"experiments/README.md does not mention {missing}"


def test_config_names_are_unique():
    names = [composed(p).name for p in CONFIGS]
    assert len(set(names)) == len(names)


def test_seed_table_tasks():
    for enc in (CONFIG_DIR / "encoder").glob("*-binary.yaml"):
        cfg = composed(enc)
        assert cfg.loss.fine_weight == 0 and cfg.loss.binary_weight > 0 and cfg.train.early_stop_metric == "binary_ap"
    for enc in (CONFIG_DIR / "encoder").glob("*-fine.yaml"):
        cfg = composed(enc)
        assert cfg.loss.binary_weight == 0 and cfg.loss.fine_weight > 0 and cfg.head.binary_from == "fine"


def test_encoder_grid_matches_encoder_files():
    """ablation/encoders.yaml repeats each encoder file's settings as overrides; they must not drift."""
    grid = composed(CONFIG_DIR / "ablation" / "encoders.yaml")
    for arm, overrides in arms_from_config(grid).items():
        if arm in grid.ablation.baselines:
            continue
        name = arm.rsplit("-", 1)[0]
        expected = composed(CONFIG_DIR / "encoder" / f"{name}.yaml").encoder
        got = load_config(overrides=overrides, base=grid).encoder
        assert OmegaConf.to_container(got) == OmegaConf.to_container(expected), arm


def smoke_arms(cfg) -> dict:
    """The grid's arms without their audio-only overrides; arms that become identical are run once
    (the reference first, and always at least two arms so the comparison runs)."""
    arms = {arm: [o for o in overrides if not o.startswith(NEEDS_AUDIO)]
            for arm, overrides in dict(cfg.ablation.arms).items()}
    reference = cfg.ablation.reference
    kept = {reference: arms[reference]}
    for arm, overrides in arms.items():
        if overrides not in kept.values():
            kept[arm] = overrides
    if len(kept) < 2:
        other = next(a for a in arms if a != reference)
        kept[other] = arms[other]
    return kept


@pytest.mark.parametrize("path", GRIDS, ids=[str(p.relative_to(CONFIG_DIR)) for p in GRIDS])
def test_config_smoke_run(path, corpus, tmp_path):
    cfg = load_config(overrides=smoke_overrides(corpus, tmp_path), base=composed(path))
    if cfg.ablation.arms:
        cfg.ablation.arms = smoke_arms(cfg)
    key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("name", "out_dir", "encoder")]))
    if key in _SMOKED:
        pytest.skip(f"same downstream config as {_SMOKED[key]}, already smoke-run")
    _SMOKED[key] = path.name
    if not cfg.ablation.arms:
        assert cfg.data.features and cfg.encoder.source is None
        summary = run_cv(cfg, tmp_path / "cv", progress=False)
        assert np.isfinite(summary["binary_f1"]["mean"])
        return
    for overrides in cfg.ablation.arms.values():
        arm_cfg = load_config(overrides=list(overrides), base=cfg)
        assert arm_cfg.data.features and arm_cfg.encoder.source is None  # never an encoder, never a hub
    result = run_ablation(cfg, tmp_path / "ablate", progress=False, log=lambda *_: None)
    assert list(result["arms"]) == [*cfg.ablation.arms, *[b for b in cfg.ablation.baselines if b not in cfg.ablation.arms]]
    assert (tmp_path / "ablate" / "summary.md").is_file()
