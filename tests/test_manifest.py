import json

import numpy as np
import pytest

from ctxemo.data.manifest import load_manifest, write_manifest
from ctxemo.errors import ManifestError
from ctxemo.taxonomy import Taxonomy


def _csv(tmp_path, text, name="m.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def audio_dir(tmp_path, wav_factory):
    for name in ["a.wav", "b.wav", "c.wav"]:
        wav_factory(name)
    return tmp_path


def test_reads_label_list_and_orders_calls(audio_dir, taxonomy):
    path = _csv(audio_dir, "call_id,segment_index,audio,caller_id,role,labels\n"
                           "x,1,b.wav,p1,caller,sadness;fear\n"
                           "x,0,a.wav,p1,operator,\n"
                           "y,0,c.wav,,caller,\n")
    m = load_manifest(path, taxonomy)
    assert len(m) == 3 and m.negative.tolist() == [1, 0, 0]
    assert m.fine[0, taxonomy.index("sadness")] == 1 and m.fine[0, taxonomy.index("fear")] == 1
    assert [r.tolist() for r in m.calls()] == [[1, 0], [2]]
    assert m.caller_id[2] == "y"  # defaults to the call id
    assert m.is_caller.tolist() == [True, False, True]


def test_one_column_per_label(audio_dir, taxonomy):
    header = "call_id,segment_index,audio," + ",".join(taxonomy.labels)
    row = "x,0,a.wav," + ",".join("1" if n == "pain" else "0" for n in taxonomy.labels)
    m = load_manifest(_csv(audio_dir, header + "\n" + row + "\n"), taxonomy)
    assert m.fine[0].tolist() == taxonomy.encode(["pain"]).tolist() and m.negative[0] == 1


def test_jsonl(audio_dir, taxonomy):
    path = audio_dir / "m.jsonl"
    path.write_text(json.dumps({"call_id": "x", "segment_index": 0, "audio": "a.wav", "labels": ["guilt"]}) + "\n")
    assert load_manifest(path, taxonomy).fine[0, taxonomy.index("guilt")] == 1


@pytest.mark.parametrize("text, match", [
    ("call_id,audio\nx,a.wav\n", r"missing required column.*segment_index"),
    ("call_id,segment_index,audio\nx,0,a.wav\nx,0,b.wav\n", r"line 3.*duplicate.*first seen on line 2"),
    ("call_id,segment_index,audio,labels\nx,0,a.wav,sadnes\n", r"line 2.*unknown label 'sadnes'"),
    ("call_id,segment_index,audio\nx,0,missing.wav\n", r"line 2.*file not found"),
    ("call_id,segment_index,audio\nx,zero,a.wav\n", r"line 2.*segment_index.*integer"),
    ("call_id,segment_index,audio,negative,labels\nx,0,a.wav,0,despair\n", r"line 2.*negative=0"),
    ("call_id,segment_index,audio,role\nx,0,a.wav,therapist\n", r"line 2.*role"),
    ("call_id,segment_index,audio,start,end\nx,0,a.wav,2.0,1.0\n", r"line 2.*'end'"),
    ("call_id,segment_index,audio\n", r"no rows"),
])
def test_errors_name_file_line_column(audio_dir, taxonomy, text, match):
    path = _csv(audio_dir, text)
    with pytest.raises(ManifestError, match=match) as err:
        load_manifest(path, taxonomy)
    assert str(path) in str(err.value) or "m.csv" in str(err.value)


def test_non_utf8_is_named(tmp_path, taxonomy):
    path = tmp_path / "m.csv"
    path.write_bytes("call_id,segment_index,audio\n通话,0,a.wav\n".encode("gb18030"))
    with pytest.raises(ManifestError, match="UTF-8"):
        load_manifest(path, taxonomy)


def test_single_label_taxonomy_rejects_two_labels(audio_dir):
    tax = Taxonomy(labels=("sadness", "fear"), multilabel=False)
    with pytest.raises(ManifestError, match="single-label"):
        load_manifest(_csv(audio_dir, "call_id,segment_index,audio,labels\nx,0,a.wav,sadness;fear\n"), tax)


def test_features_manifest_needs_no_audio(tmp_path, taxonomy):
    m = load_manifest(_csv(tmp_path, "call_id,segment_index\nx,0\nx,1\n"), taxonomy, require_audio=False)
    assert len(m) == 2


def test_write_then_read(audio_dir, taxonomy):
    path = write_manifest(audio_dir / "out.csv", [
        {"call_id": "x", "segment_index": 0, "audio": "a.wav", "labels": "anxiety", "role": "caller"}])
    m = load_manifest(path, taxonomy)
    assert m.fine[0, taxonomy.index("anxiety")] == 1
    assert not list(audio_dir.glob(".out.csv*"))  # no temp file left behind
    assert np.isnan(m.start_sec[0])
