"""Property-based fuzzing of the seed importer and the config loader: whatever the per-call CSVs (bytes in
any encoding, tricky cells, missing wavs and folders) or the YAML files and `key=value` overrides,
`import_seed` raises ManifestError or writes a manifest that `load_manifest` reads back, and
`load_config` raises ConfigError or returns a config inside every range and choice; nothing else."""
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from ctxemo.config import CHOICES, DEFAULT_LABELS, RANGES, in_range, load_config
from ctxemo.data.manifest import load_manifest
from ctxemo.data.seed_import import import_seed
from ctxemo.errors import ConfigError, ManifestError
from ctxemo.taxonomy import Taxonomy

TAXONOMY = Taxonomy(labels=tuple(DEFAULT_LABELS))
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ----------------------------------------------------------------------------- the seed importer

seed_cells = st.one_of(st.sampled_from(["0", "1", "2", "", " 1 ", "-1", "1.0", "x", "通话", '"', "a,b", "a\nb",
                                        "\ufeff", "\x00", "99999999999999999999"]), st.text(max_size=6))
HEADERS = ["index,role," + ",".join(DEFAULT_LABELS), "Index,ROLE," + ",".join(DEFAULT_LABELS) + ",备注",
           "index,role", "role,index," + ",".join(reversed(DEFAULT_LABELS)), ""]


@st.composite
def seed_calls(draw):
    """[(call name, CSV bytes, wav indices present, folder name)] for 1-3 calls."""
    calls = []
    for k in range(draw(st.integers(1, 3))):
        header = draw(st.sampled_from(HEADERS))
        width = max(1, header.count(",") + 1)
        rows = draw(st.lists(st.lists(seed_cells, min_size=width - 1, max_size=width + 1), max_size=4))
        text = "\n".join([header, *(",".join(r) for r in rows)])
        if draw(st.booleans()):  # the usual shape: an index and a 0/1 role in front
            text = "\n".join([header, *(f"{i},{draw(st.sampled_from(['0', '1']))}," + ",".join(r[2:])
                                        for i, r in enumerate(rows))])
        encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "utf-16"]))
        raw = text.encode(encoding, errors="replace")
        if draw(st.booleans()):
            raw = raw + draw(st.binary(max_size=8))
        name = f"call{k}"
        folder = draw(st.sampled_from([name, name.upper(), None]))
        wavs = draw(st.sets(st.sampled_from(["0", "1", "2", "3"]), max_size=4))
        calls.append((name, raw, wavs, folder))
    return calls


@settings(FUZZ, max_examples=80)  # each example writes a seed folder: slower than the config loader's
@given(calls=seed_calls(), allow_missing=st.booleans(), encoding=st.sampled_from([None, None, "utf-8", "gbk"]))
def test_import_seed_raises_manifest_error_or_writes_a_readable_manifest(calls, allow_missing, encoding):
    with tempfile.TemporaryDirectory() as tmp:
        seed, out = Path(tmp) / "seed", Path(tmp) / "out"
        seed.mkdir()
        for name, raw, wavs, folder in calls:
            (seed / f"{name}.csv").write_bytes(raw)
            if folder:
                (seed / folder).mkdir(exist_ok=True)
                for index in wavs:
                    (seed / folder / f"{index}.wav").write_bytes(b"RIFF")  # only existence is checked
        try:
            result = import_seed(seed, out, TAXONOMY, encoding=encoding, allow_missing=allow_missing)
        except ManifestError as exc:
            assert str(seed) in str(exc) or "encoding" in str(exc)
            assert not (out / "manifest.csv").exists()  # a refused import writes nothing
            return
        manifest = load_manifest(result.manifest, TAXONOMY)  # what was written is a valid manifest
        assert sorted(set(manifest.call_id)) == sorted(result.calls)
        assert len(result.calls) + len({c for c, _ in result.skipped}) >= len(calls)  # every call accounted for
        assert allow_missing or not result.skipped

# ----------------------------------------------------------------------------- the config loader

KEYS = sorted(set(RANGES) | set(CHOICES) | {"name", "taxonomy.labels", "taxonomy.negative_labels", "cv.only_folds",
                                            "ablation.arms", "ablation.baselines", "encoder.layers", "data.manifest",
                                            "train.tensorboard", "encoder.model_config", "nonsense", "train.nope"})
values = st.one_of(
    st.sampled_from(["0", "1", "-1", "2", "0.5", "1e-3", "-1e9", "1e400", "nan", "inf", "-inf", "999999999999999999999",
                     "true", "null", "~", "[]", "[1,2]", "{}", "{a: 1}", "'x'", "\"", "[", "${train.lr}",
                     "${nope}", "${oc.env:HOME}", "???", "transformer", "identity", "通话", ""]),
    st.text(max_size=8))


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4),
       yaml_text=st.one_of(st.none(), st.sampled_from(["", "train:\n  lr: -1\n", "train: 3\n", "- a\n", "a: [\n",
                                                       "name: ${seed}\n", "cv:\n  folds: 1e400\n", "defaults: x.yaml\n",
                                                       "train:\n  epochs: !!python/object:os.system ls\n"]),
                           st.text(max_size=30)))
def test_load_config_raises_config_error_or_returns_a_valid_config(overrides, yaml_text):
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        if yaml_text is not None:
            paths.append(Path(tmp) / "c.yaml")
            paths[0].write_text(yaml_text, encoding="utf-8")
        try:
            cfg = load_config(paths, [f"{k}={v}" for k, v in overrides])
        except ConfigError:
            return
        for key, rule in RANGES.items():
            value = OmegaConf.select(cfg, key)
            assert isinstance(value, (int, float)) and not math.isnan(value) and in_range(value, rule), key
        for key, choices in CHOICES.items():
            assert OmegaConf.select(cfg, key) in choices
        OmegaConf.to_yaml(cfg, resolve=True)  # a returned config resolves (what config.yaml is written from)
