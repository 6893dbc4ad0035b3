"""Builders shared by the bundle, predict and live tests: tiny configs, random bundles, small corpora."""
import numpy as np
import torch

from ctxemo.config import load_config
from ctxemo.data.synthetic import CorpusSpec, generate_corpus
from ctxemo.evaluation.evaluate import Thresholds
from ctxemo.inference.bundle import save_bundle
from ctxemo.models.call_model import build_call_model
from ctxemo.taxonomy import Taxonomy

SR = 16000
TINY = ["context.d_model=16", "context.depth=1", "context.heads=2", "train.epochs=2", "train.patience=2",
        "train.batch_calls=4", "train.device=cpu", "encoder.family=wav2vec2"]


def tiny_config(tmp_path, *overrides):
    return load_config(overrides=[f"out_dir={tmp_path / 'runs'}", *TINY, *overrides])


def random_bundle(folder, cfg, *, d_in: int = 32, seed: int = 0, time_features_used: bool = True, calibrator=None):
    """A bundle around an untrained (random) CallModel: fast, and every weight matters."""
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    torch.manual_seed(seed)
    model = build_call_model(cfg, d_in=d_in, taxonomy=taxonomy)
    model.context.set_feature_stats(0.1 * torch.randn(d_in), 0.5 + torch.rand(d_in))
    thresholds = Thresholds(binary=0.45, fine=np.linspace(0.2, 0.6, taxonomy.num_labels))
    return save_bundle(folder, cfg=cfg, model=model, thresholds=thresholds, d_in=d_in,
                       time_features_used=time_features_used, calibrator=calibrator)


def small_corpus(folder, *, n_calls: int = 4, seed: int = 0, turns=(6, 8)):
    spec = CorpusSpec(n_calls=n_calls, seed=seed, calls_per_caller=1, min_turns=turns[0], max_turns=turns[1],
                      caller_turn_sec=(0.6, 1.2), operator_turn_sec=(0.6, 1.0))
    return generate_corpus(folder, spec=spec)


def call_arrays(n: int, d: int, *, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    roles = ["caller" if i % 3 != 1 else "operator" for i in range(n)]
    start = np.cumsum(rng.uniform(0.8, 2.0, n))
    return feats, roles, start, start + rng.uniform(0.5, 1.5, n)
