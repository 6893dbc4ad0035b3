import pytest

from ctxemo.data.manifest import load_manifest
from ctxemo.data.seed_import import import_seed
from ctxemo.errors import ManifestError


def _seed_layout(root, wav_factory, taxonomy, call="call7", rows=((0, 1, "sadness"), (1, 0, None), (2, 1, None)),
                 encoding="utf-8", folder=None, extra_column=None):
    header = "index,role," + ",".join(taxonomy.labels) + (f",{extra_column[0]}" if extra_column else "")
    lines = [header]
    for index, role, label in rows:
        lines.append(f"{index},{role}," + ",".join("1" if n == label else "0" for n in taxonomy.labels)
                     + (f",{extra_column[1]}" if extra_column else ""))
        wav_factory(f"seed/{folder or call}/{index}.wav")
    (root / "seed" / f"{call}.csv").write_text("\n".join(lines) + "\n", encoding=encoding)
    return root / "seed"


def test_import_seed_layout(tmp_path, wav_factory, taxonomy):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy)
    (tmp_path / "callers.csv").write_text("call_id,caller_id\ncall7,personA\n")
    result = import_seed(seed, tmp_path / "out", taxonomy, caller_map=tmp_path / "callers.csv")
    assert result.calls == ["call7"] and not result.skipped and not result.warnings
    m = load_manifest(result.manifest, taxonomy)
    assert m.role == ["caller", "operator", "caller"]
    assert m.negative.tolist() == [1, 0, 0] and m.caller_id == ["personA"] * 3
    assert m.audio_path(0).resolve() == (seed / "call7" / "0.wav").resolve()


def test_import_seed_errors(tmp_path, wav_factory, taxonomy):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy, rows=((0, 2, None),))
    with pytest.raises(ManifestError, match=r"call7.csv: line 2: column 'role'"):  # the only call: none imported
        import_seed(seed, tmp_path / "out", taxonomy)
    with pytest.raises(ManifestError, match="no per-call CSV"):
        import_seed(tmp_path / "nothing", tmp_path / "out", taxonomy)


NOTE = ("备注", "来电者情绪低落")  # a free-text column in Chinese, as hotline exports carry


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk"])
def test_import_seed_reads_the_encodings_exports_come_in(tmp_path, wav_factory, taxonomy, encoding):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy, encoding=encoding, extra_column=NOTE)
    (seed / "callers.csv").write_text("call_id,caller_id\ncall7,来电者甲\n", encoding=encoding)
    result = import_seed(seed, tmp_path / "out", taxonomy, caller_map=seed / "callers.csv")
    assert load_manifest(result.manifest, taxonomy).caller_id == ["来电者甲"] * 3


def test_import_seed_names_file_and_line_of_undecodable_text(tmp_path, wav_factory, taxonomy):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy, encoding="gb18030", extra_column=NOTE)
    # Forced UTF-8 on a GB18030 file: the first non-ASCII byte is on line 1 (the header's Chinese column name).
    with pytest.raises(ManifestError, match=r"call7\.csv: line 1: not utf-8 text \(byte 0x[0-9a-f]{2}, byte \d+ of the line\)"):
        import_seed(seed, tmp_path / "out", taxonomy, encoding="utf-8")
    (seed / "call7.csv").write_bytes(b"index,role\n0,1\n\xff\xfe\xff,1\n")  # neither UTF-8 nor GB18030
    with pytest.raises(ManifestError, match=r"call7\.csv: line 3: not UTF-8 nor GB18030/GBK text.*--encoding"):
        import_seed(seed, tmp_path / "out", taxonomy)
    with pytest.raises(ManifestError, match="unknown text encoding 'klingon'"):
        import_seed(seed, tmp_path / "out", taxonomy, encoding="klingon")


def test_import_seed_reports_every_call_it_could_not_import(tmp_path, wav_factory, taxonomy):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy)  # call7: fine
    _seed_layout(tmp_path, wav_factory, taxonomy, call="call01", folder="Call01")  # folder name differs in case
    (seed / "call02.csv").write_text((seed / "call7.csv").read_text())  # no folder at all
    _seed_layout(tmp_path, wav_factory, taxonomy, call="call03", rows=((0, 1, None), (0, 0, None)))  # index twice
    with pytest.raises(ManifestError) as err:
        import_seed(seed, tmp_path / "out", taxonomy)
    message = str(err.value)
    assert "3 call(s) could not be imported (nothing written" in message
    assert "call01: call01.csv has no wav folder call01/ (found Call01/" in message
    assert "call02: call02.csv has no wav folder call02/" in message
    assert "Call01: wav folder Call01/ has no Call01.csv" not in message  # reported once, as call01
    assert "call03.csv: line 3: duplicate index 0, first seen on line 2" in message  # the seed file's line
    assert not (tmp_path / "out").exists()

    result = import_seed(seed, tmp_path / "out", taxonomy, allow_missing=True)
    assert result.calls == ["call7"] and sorted(c for c, _ in result.skipped) == ["call01", "call02", "call03"]
    assert load_manifest(result.manifest, taxonomy).call_ids() == ["call7"]


def test_import_seed_warns_about_caller_map_gaps(tmp_path, wav_factory, taxonomy):
    seed = _seed_layout(tmp_path, wav_factory, taxonomy)
    _seed_layout(tmp_path, wav_factory, taxonomy, call="call8")
    (tmp_path / "callers.csv").write_text("call_id,caller_id\ncall7,p1\ncall9,p2\n")
    result = import_seed(seed, tmp_path / "out", taxonomy, caller_map=tmp_path / "callers.csv")
    assert len(result.warnings) == 2
    assert "1 imported call(s) are not in the caller map and get caller_id = call_id" in result.warnings[0]
    assert "call8" in result.warnings[0] and "call9 (line 3)" in result.warnings[1]
    (tmp_path / "callers.csv").write_text("call_id,caller_id\ncall7,p1\ncall7,p2\n")
    with pytest.raises(ManifestError, match=r"callers\.csv: line 3: call 'call7' mapped to 'p2', but line 2 gave 'p1'"):
        import_seed(seed, tmp_path / "out", taxonomy, caller_map=tmp_path / "callers.csv")


def test_import_seed_command_exit_codes_and_warnings(tmp_path, wav_factory, taxonomy, capsys):
    from ctxemo.cli import main
    seed = _seed_layout(tmp_path, wav_factory, taxonomy)
    (seed / "call02.csv").write_text((seed / "call7.csv").read_text())
    assert main(["import-seed", str(seed), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ctxemo import-seed: error:" in err and "call02" in err and "--allow-missing" in err
    assert main(["import-seed", str(seed), "--out", str(tmp_path / "out"), "--allow-missing"]) == 0
    captured = capsys.readouterr()
    assert "warning: call call02 not imported: call02.csv has no wav folder" in captured.err
    assert "(1 calls, 1 not imported)" in captured.out
