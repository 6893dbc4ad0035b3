import pytest

from ctxemo.data.manifest import load_manifest
from ctxemo.data.seed_import import import_seed
from ctxemo.errors import ManifestError


def _seed_layout(root, wav_factory, taxonomy, call="call7", rows=((0, 1, "sadness"), (1, 0, None), (2, 1, None))):
    header = "index,role," + ",".join(taxonomy.labels)
    lines = [header]
    for index, role, label in rows:
        lines.append(f"{index},{role}," + ",".join("1" if n == label else "0" for n in taxonomy.labels))
        wav_factory(f"seed/{call}/{index}.wav")
    (root / "seed" / f"{call}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "seed"


def test_import_seed_layout(tmp_path, wav_factory, taxonomy):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy)
    (tmp_path / "callers.csv").write_text("call_id,caller_id\ncall7,personA\n")
    manifest = import_seed(seed, tmp_path / "out", taxonomy, caller_map=tmp_path / "callers.csv")
    m = load_manifest(manifest, taxonomy)
    assert m.role == ["caller", "operator", "caller"]
    assert m.negative.tolist() == [1, 0, 0] and m.caller_id == ["personA"] * 3
    assert m.audio_path(0).resolve() == (seed / "call7" / "0.wav").resolve()


def test_import_seed_errors(tmp_path, wav_factory, taxonomy):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy, rows=((0, 2, None),))
    with pytest.raises(ManifestError, match=r"call7.csv: line 2: column 'role'"):
        import_seed(seed, tmp_path / "out", taxonomy)
    with pytest.raises(ManifestError, match="no per-call CSV"):
        import_seed(tmp_path / "nothing", tmp_path / "out", taxonomy)
