import numpy as np
import pytest

from ctxemo.data.features import load_features
from ctxemo.errors import ManifestError


def test_load_features_validates_and_names_the_file(tmp_path):
    good = tmp_path / "feats.npy"
    np.save(good, np.ones((4, 3), dtype=np.float32))
    assert load_features(good, 4).shape == (4, 3)
    np.save(tmp_path / "f64.npy", np.ones((4, 3)))
    assert load_features(tmp_path / "f64.npy", 4).dtype == np.float32  # converted, not refused
    bad = np.ones((4, 3), dtype=np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "flat.npy", np.ones(4, dtype=np.float32))
    np.save(tmp_path / "ints.npy", np.ones((4, 3), dtype=np.int64))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    cases = [("nan.npy", 4, r"row\(s\) \[2\]"), ("flat.npy", 4, "2-D"), ("feats.npy", 5, "4 feature rows but the manifest has 5"),
             ("absent.npy", 4, "not found"), ("ints.npy", 4, "floating point"), ("objects.npy", 4, "not a readable")]
    for name, rows, message in cases:
        with pytest.raises(ManifestError, match=message) as info:
            load_features(tmp_path / name, rows)
        assert name in str(info.value)
