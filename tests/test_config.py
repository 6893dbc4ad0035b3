import pytest

from ctxemo.config import load_config, to_yaml
from ctxemo.errors import ConfigError


def test_defaults_and_override():
    cfg = load_config(overrides=["train.epochs=3", "context.kind=identity"])
    assert cfg.train.epochs == 3 and cfg.context.kind == "identity"
    assert len(cfg.taxonomy.labels) == 11 and cfg.taxonomy.labels[0] == "despair"


def test_misspelled_key_names_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.epochz=3"])
    assert "train.epochz" in str(err.value) and "epochs" in str(err.value)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(overrides=["train.epochs=many"])


def test_invalid_choice_lists_choices():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["context.kind=lstm"])
    assert "identity" in str(err.value) and "transformer" in str(err.value)


def test_yaml_defaults_chain_and_unknown_key(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.01\n")
    (tmp_path / "arm.yaml").write_text("defaults: [base.yaml]\ntrain:\n  epochs: 2\n")
    cfg = load_config([tmp_path / "arm.yaml"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.01
    (tmp_path / "bad.yaml").write_text("trian:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*trian"):
        load_config([tmp_path / "bad.yaml"])


def test_round_trip_yaml(tmp_path):
    cfg = load_config(overrides=["seed=5"])
    (tmp_path / "c.yaml").write_text(to_yaml(cfg))
    assert load_config([tmp_path / "c.yaml"]) == cfg


def test_negative_labels_must_exist():
    with pytest.raises(ConfigError, match="negative_labels"):
        load_config(overrides=["taxonomy.negative_labels=[joy]"])


def test_diamond_defaults_merge_base_once(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.5\n")
    (tmp_path / "a.yaml").write_text("defaults: [base.yaml]\ntrain:\n  epochs: 2\n")
    (tmp_path / "b.yaml").write_text("defaults: [base.yaml]\ncontext:\n  kind: identity\n")
    (tmp_path / "top.yaml").write_text("defaults: [a.yaml, b.yaml]\n")
    cfg = load_config([tmp_path / "top.yaml"])
    assert cfg.train.epochs == 2 and cfg.context.kind == "identity" and cfg.train.lr == 0.5
    (tmp_path / "loop.yaml").write_text("defaults: [loop.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config([tmp_path / "loop.yaml"])


def test_child_arms_replace_parent_arms(tmp_path):
    (tmp_path / "base.yaml").write_text("ablation:\n  arms:\n    a: [context.kind=identity]\n    b: []\n")
    (tmp_path / "grid.yaml").write_text("defaults: [base.yaml]\nablation:\n  arms:\n    x: [loss.kind=bce]\n    y: []\n")
    assert list(load_config([tmp_path / "grid.yaml"]).ablation.arms) == ["x", "y"]


@pytest.mark.parametrize("override", ["train.window_segments=0", "train.min_delta=-1", "train.bucket_calls=-3",
                                      "context.attention_dropout=1.5", "context.dropout=1.0", "head.dropout=-0.1"])
def test_out_of_range_numbers_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def _numeric_keys(node, prefix=""):
    """Dotted names of every int/float leaf of the schema (bool excluded)."""
    from omegaconf import DictConfig
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _numeric_keys(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name


def test_every_numeric_key_has_a_range():
    from ctxemo.config import RANGES
    keys = set(_numeric_keys(load_config()))
    assert keys - set(RANGES) == set(), "numeric config keys without a line in config.RANGES"
    assert set(RANGES) - keys == set(), "RANGES names keys that are not numeric keys of the schema"


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", r"'train\.lr' = -1\.0 must be > 0"), ("train.lr=0", r"train\.lr.*> 0"),
    ("train.epochs=0", r"'train\.epochs' = 0 must be >= 1"), ("cv.folds=1", r"cv\.folds.*>= 2"),
    ("cv.inner_val_fraction=1.0", r"inner_val_fraction.*\(0, 1\)"), ("loss.beta=1.0", r"loss\.beta.*\[0, 1\)"),
    ("train.lr=nan", r"train\.lr = nan|'train\.lr' = nan"), ("data.channel=-2", r"data\.channel.*>= -1"),
    ("train.patience=0", r"train\.patience"), ("encoder.lora.rank=0", r"encoder\.lora\.rank"),
])
def test_range_table_refuses_out_of_range_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize("override", ["train.lr=1e-9", "train.epochs=1", "cv.folds=2", "loss.beta=0", "data.channel=-1",
                                      "train.bucket_calls=0", "cv.inner_folds=0", "context.window=0"])
def test_range_table_accepts_its_boundaries(override):
    load_config(overrides=[override])


def test_in_range_rules():
    from ctxemo.config import in_range
    assert in_range(0, "[0, 1)") and not in_range(1, "[0, 1)") and in_range(1, "[0, 1]")
    assert not in_range(0, "(0, 1)") and in_range(0.5, "(0, 1)") and not in_range(0, "> 0") and in_range(0, ">= 0")
    assert not in_range(float("nan"), ">= 0") and not in_range(float("nan"), "[0, 1]")


@pytest.mark.parametrize("override, message", [
    ("ablation.arms=@", r"override 'ablation.arms=@': the value is not valid YAML"),  # found by the fuzz
    ("train.lr=${nope}", r"config key 'train.lr': Interpolation key 'nope' not found"),  # found by the fuzz
])
def test_unparsable_or_unresolvable_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
@pytest.mark.parametrize("binary_from", ["fine", "mean"])
def test_single_label_taxonomy_without_a_non_negative_class_cannot_derive_the_binary(binary_from):
    single = ["taxonomy.multilabel=false", "taxonomy.labels=[sad,angry]", f"head.binary_from={binary_from}"]
    with pytest.raises(ConfigError, match="head.binary_from.*non-negative class"):
        load_config(overrides=single)
    with pytest.raises(ConfigError, match="head.binary_from"):
        load_config(overrides=[*single, "taxonomy.negative_labels=[sad,angry]"])
    load_config(overrides=[*single, "taxonomy.labels=[sad,angry,calm]", "taxonomy.negative_labels=[sad,angry]"])
    load_config(overrides=[*single, "head.binary_from=head"])
    load_config(overrides=["taxonomy.labels=[sad,angry]", f"head.binary_from={binary_from}"])  # multi-label: fine
