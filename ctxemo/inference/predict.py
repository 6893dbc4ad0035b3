"""`ctxemo predict`: score manifests or whole-call recordings with a model bundle, offline or as if live.

Each call's results are appended and flushed to the output folder as soon as the call is done, so a
failure later loses nothing; rerunning into the same folder with the same bundle and options resumes
(finished calls are kept and skipped). A bad input becomes a row of skipped.csv with its reason.
Logs carry paths, ids and numbers only, never audio or text.
"""
from __future__ import annotations

import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ctxemo.data.audio import audio_info, read_audio
from ctxemo.data.manifest import optional_sec
from ctxemo.data.segmenter import SegmenterConfig, segment_recording
from ctxemo.errors import AudioError, CtxemoError, ManifestError
from ctxemo.inference.bundle import Bundle, load_bundle
from ctxemo.inference.outputs import (
    PredictionWriter,
    plot_trajectory,
    segment_record,
    skip_row,
    summarize_call,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
CHANNEL_ROLES = ("caller", "operator", "ignore")


class SkipInput(CtxemoError):
    """This call (or input file) cannot be scored; the reason goes to skipped.csv."""


@dataclass
class PreparedSegment:
    role: str
    start: float  # seconds in the call, NaN when unknown
    end: float
    duration: float  # seconds, NaN when unknown
    segment_index: int
    wave: Optional[np.ndarray] = None  # mono at the bundle's rate; None when not embedded
    feat: Optional[np.ndarray] = None  # precomputed embedding


@dataclass
class PreparedCall:
    call_id: str
    source: str
    segments: List[PreparedSegment]
    skipped: List[Dict[str, Any]] = field(default_factory=list)  # segment-level skipped rows
    duration_sec: Optional[float] = None


@dataclass
class PredictSummary:
    out_dir: Path
    calls: List[str] = field(default_factory=list)  # call ids written in this run
    skipped: List[Dict[str, Any]] = field(default_factory=list)  # skipped rows written in this run
    resumed: List[str] = field(default_factory=list)  # call ids already done before this run
    errors: int = 0  # unexpected (non-input) errors, also in skipped.csv


# ----------------------------------------------------------------------------- preparing calls

def parse_channels(text: Optional[str]) -> Optional[List[str]]:
    """'caller,operator' -> ['caller', 'operator'] (channel k -> role; 'ignore' drops a channel)."""
    if text is None or not str(text).strip():
        return None
    roles = [part.strip().lower() for part in str(text).split(",")]
    bad = [r for r in roles if r not in CHANNEL_ROLES]
    if bad:
        raise CtxemoError(f"--channels {text!r}: unknown role(s) {bad}; give one of {CHANNEL_ROLES} per channel, "
                          "e.g. --channels caller,operator")
    return roles


def _channel_roles(channels: Optional[List[str]], n_channels: int, path: Path) -> List[str]:
    if n_channels == 1:
        return [channels[0] if channels else "caller"]
    if channels is None:
        if n_channels == 2:
            return ["caller", "operator"]
        raise SkipInput(f"{path}: {n_channels} channels; say which role each one carries with --channels")
    if len(channels) != n_channels:
        raise SkipInput(f"{path}: {n_channels} channels but --channels names {len(channels)} ({','.join(channels)})")
    return channels


def prepare_recording(bundle: Bundle, path: Path, *, channels: Optional[List[str]],
                      segmenter: SegmenterConfig) -> PreparedCall:
    """Read a whole-call recording, cut it into speech segments and attach each one's audio and role.

    Raises:
        SkipInput: unreadable, empty, NaN samples, no speech, or a channel-map mismatch (message says which).
    """
    call_id, source = path.stem, str(path)
    try:
        info = audio_info(path)
        if info.frames == 0:
            raise SkipInput(f"{path}: empty recording (0 samples)")
        roles = _channel_roles(channels, int(info.channels), path)
        sr = bundle.sample_rate
        audio = np.stack([read_audio(path, channel=c, target_sr=sr) for c in range(int(info.channels))])
    except AudioError as exc:
        raise SkipInput(str(exc)) from None
    seg = segment_recording(audio, sample_rate=sr, config=segmenter)
    kept = [s for s in seg.segments if roles[s.channel] != "ignore"]
    short = [s for s in seg.too_short if roles[s.channel] != "ignore"]
    if not kept:
        what = (f"only {len(short)} speech burst(s) shorter than {segmenter.min_segment_sec:.2f} s" if short
                else f"no speech found (silent audio; noise floor {max(seg.floors_dbfs):.1f} dBFS)")
        raise SkipInput(f"{path}: {what}")
    segments = []
    for i, s in enumerate(kept):
        a, b = int(round(s.start_sec * sr)), int(round(s.end_sec * sr))
        segments.append(PreparedSegment(role=roles[s.channel], start=s.start_sec, end=s.end_sec,
                                        duration=s.end_sec - s.start_sec, segment_index=i,
                                        wave=audio[s.channel, a:b]))
    skipped = [skip_row(call_id, source, f"segment too short ({s.speech_sec:.2f} s of speech < "
                         f"{segmenter.min_segment_sec:.2f} s)", start=s.start_sec, end=s.end_sec) for s in short]
    return PreparedCall(call_id=call_id, source=source, segments=segments, skipped=skipped,
                        duration_sec=seg.duration_sec)


def prepare_manifest(bundle: Bundle, path: Path, *, features: Optional[Path] = None) -> Iterable[PreparedCall]:
    """Calls of a manifest, one at a time (audio read per call). Unusable rows become skipped rows.

    Raises:
        SkipInput: the manifest (or features file) itself is unusable.
    """
    from ctxemo.data.features import load_features
    from ctxemo.data.manifest import load_manifest

    if features is None and not bundle.has_encoder:
        raise SkipInput(f"{path}: the bundle was trained on precomputed features; pass features aligned to this "
                        "manifest (predict_manifest(..., features=...))")
    try:
        manifest = load_manifest(path, bundle.taxonomy, require_audio=features is None, check_audio_exists=False)
        feats = load_features(features, len(manifest), manifest=manifest) if features is not None else None
    except ManifestError as exc:
        raise SkipInput(str(exc)) from None
    if feats is not None and feats.shape[1] != bundle.d_in:
        raise SkipInput(f"{features}: {feats.shape[1]} feature dims but the bundle's model takes {bundle.d_in}")
    sr, min_sec = bundle.sample_rate, float(bundle.cfg.data.min_segment_sec)
    for rows in manifest.calls():
        call_id = manifest.call_id[rows[0]]
        segments, skipped = [], []
        for r in rows:
            role, start, end = manifest.role[r], float(manifest.start_sec[r]), float(manifest.end_sec[r])
            seg = PreparedSegment(role=role, start=start, end=end, duration=end - start,
                                  segment_index=int(manifest.segment_index[r]))
            where = dict(segment_index=seg.segment_index, start=start, end=end)
            if feats is not None:
                seg.feat = feats[r]
            elif bundle.in_context([role])[0]:  # operator turns the model never sees are not read
                try:
                    crop_start, crop_end = manifest.crop(r)
                    seg.wave = read_audio(manifest.audio_path(r), start_sec=crop_start, end_sec=crop_end,
                                          channel=int(bundle.cfg.data.channel), target_sr=sr)
                except (AudioError, ManifestError) as exc:
                    skipped.append(skip_row(call_id, str(path), str(exc), **where))
                    continue
                seg.duration = len(seg.wave) / sr
            if seg.duration < min_sec:
                skipped.append(skip_row(call_id, str(path), f"segment too short ({seg.duration:.3f} s < "
                                         f"data.min_segment_sec {min_sec:.3f} s)", **where))
                continue
            segments.append(seg)
        ends = [s.end for s in segments if not np.isnan(s.end)]
        yield PreparedCall(call_id=call_id, source=str(path), segments=segments, skipped=skipped,
                           duration_sec=max(ends) if ends else None)


# ----------------------------------------------------------------------------- scoring

def score_prepared(bundle: Bundle, call: PreparedCall, *, live: bool = False) -> List[Dict[str, Any]]:
    """Per-segment records of a prepared call: the whole call at once, or pushed one by one (live)."""
    segs = call.segments
    if live:
        from ctxemo.inference.live import LiveSession

        session = LiveSession(bundle, call_id=call.call_id)
        records = []
        for s in segs:
            times = dict(start_sec=optional_sec(s.start), end_sec=optional_sec(s.end))
            if s.wave is not None:
                record = session.push(s.wave, sample_rate=bundle.sample_rate, role=s.role, **times)
            else:
                record = session.push_embedding(s.feat, role=s.role, duration_sec=_or_zero(s.duration), **times)
            record["segment_index"] = s.segment_index
            records.append(record)
        return records
    roles = [s.role for s in segs]
    in_context = bundle.in_context(roles)
    feats = np.zeros((len(segs), bundle.d_in), dtype=np.float32)
    rows = np.flatnonzero(in_context)
    if len(rows):
        if segs[rows[0]].feat is not None:
            feats[rows] = np.stack([segs[i].feat for i in rows])
        else:
            feats[rows] = bundle.embed([segs[i].wave for i in rows])
    start = np.array([s.start for s in segs], dtype=float)
    end = np.array([s.end for s in segs], dtype=float)
    scores = bundle.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    return [segment_record(bundle, call_id=call.call_id, segment_index=s.segment_index, start=s.start, end=s.end,
                           duration=s.duration, role=s.role, p_negative=scores.p_negative[i], p_fine=scores.p_fine[i])
            for i, s in enumerate(segs)]


def _or_zero(x: float) -> float:
    return 0.0 if np.isnan(x) else float(x)


# ----------------------------------------------------------------------------- runs

def predict_inputs(bundle: Union[Bundle, str, Path], inputs: Sequence[Union[str, Path]], out_dir: Union[str, Path],
                   *, channels: Optional[List[str]] = None, live: bool = False, plot: bool = False,
                   segmenter: SegmenterConfig = SegmenterConfig(), features: Optional[Path] = None,
                   log: Callable[[str], None] = lambda message: None) -> PredictSummary:
    """Score manifests and/or recordings (folders are searched for wav/flac/ogg) into `out_dir`.

    Args:
        bundle: a Bundle or its folder.
        inputs: manifest files (.csv/.jsonl), recordings (.wav/.flac/.ogg) or folders of recordings.
        channels: role per channel of multi-channel recordings ("caller", "operator", "ignore"); default
            caller,operator for two channels; mono recordings are one speaker (default caller).
        live: feed each call's segments one by one through a LiveSession (needs a causal bundle).
        plot: write plots/<call_id>.png.
        segmenter: VAD settings for recordings.
        features: precomputed embeddings aligned to the (single) manifest input.
        log: receives progress lines (ids, paths and numbers only).
    Returns:
        PredictSummary of this run.
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if live:
        from ctxemo.inference.live import check_live_capable

        check_live_capable(bundle)
    paths = _expand(inputs)
    if features is None and any(p.suffix.lower() in AUDIO_SUFFIXES + MANIFEST_SUFFIXES for p in paths):
        bundle.encoder()  # build and check it now: a refused encoder must stop the run, not skip every call
    options = {"live": bool(live), "channels": channels, "segmenter": asdict(segmenter),
               "features": None if features is None else str(features)}
    writer = PredictionWriter(Path(out_dir), bundle=bundle, options=options, live=live, log=log)
    summary = PredictSummary(out_dir=Path(out_dir), resumed=sorted(writer.done))
    sources: Dict[str, str] = {}
    try:
        for path in paths:
            suffix = path.suffix.lower()
            if suffix in MANIFEST_SUFFIXES:
                calls = lambda p=path: prepare_manifest(bundle, p, features=features)  # noqa: E731
            elif suffix in AUDIO_SUFFIXES:
                calls = lambda p=path: [  # noqa: E731
                    prepare_recording(bundle, p, channels=channels, segmenter=segmenter)]
            else:
                row = skip_row(path.stem, str(path), f"{path}: unsupported input type {suffix or '(none)'!r}; give "
                               f"a manifest ({', '.join(MANIFEST_SUFFIXES)}) or recordings "
                               f"({', '.join(AUDIO_SUFFIXES)})")
                _record_skip(writer, summary, row, log)
                continue
            _run_input(bundle, path, calls, writer=writer, summary=summary, sources=sources, live=live, plot=plot,
                       log=log)
    finally:
        writer.close()
    for message in bundle.warnings:
        log(f"[predict] warning: {message}")
    return summary


def _run_input(bundle: Bundle, path: Path, calls: Callable, *, writer: PredictionWriter, summary: PredictSummary,
               sources: Dict[str, str], live: bool, plot: bool, log: Callable) -> None:
    """Score every call of one input. A failure of the input skips it; a failure of one call skips that
    call and the next one goes on. Either way it becomes a row of skipped.csv."""

    def fail(call_id: str, source: str, exc: BaseException) -> None:
        if isinstance(exc, CtxemoError):
            reason = str(exc)
        else:  # a bug must not lose the calls already written, nor stop the others
            summary.errors += 1
            traceback.print_exc(file=sys.stderr)
            reason = f"unexpected error: {type(exc).__name__}: {exc}"
        _record_skip(writer, summary, skip_row(call_id, source, reason), log)

    try:
        iterator = iter(calls())
    except Exception as exc:
        return fail(path.stem, str(path), exc)
    while True:
        try:
            call = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # the input itself is unusable (unreadable manifest, bad recording, ...)
            return fail(path.stem, str(path), exc)
        if call.call_id in sources:
            _record_skip(writer, summary, skip_row(call.call_id, call.source, f"call id {call.call_id!r} already "
                                                    f"used by {sources[call.call_id]}; rename one of them"), log)
            continue
        if call.call_id in writer.done:  # finished by an earlier run into this folder
            sources[call.call_id] = "an earlier run into this folder"
            log(f"[predict] {call.call_id}: already done, kept")
            continue
        sources[call.call_id] = call.source
        try:
            _score_and_write(bundle, call, writer=writer, summary=summary, live=live, plot=plot, log=log)
        except Exception as exc:
            fail(call.call_id, call.source, exc)


def _score_and_write(bundle: Bundle, call: PreparedCall, *, writer: PredictionWriter, summary: PredictSummary,
                     live: bool, plot: bool, log: Callable) -> None:
    if not call.segments:
        writer.write_skipped(call.skipped)
        summary.skipped += call.skipped
        raise SkipInput(f"call {call.call_id}: no usable segment ({len(call.skipped)} skipped)")
    records = score_prepared(bundle, call, live=live)
    result = summarize_call(records, call_id=call.call_id, source=call.source, duration_sec=call.duration_sec,
                            n_skipped=len(call.skipped))
    if plot:
        try:
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in call.call_id)
            plot_trajectory(writer.out_dir / "plots" / f"{name}.png", records,
                            threshold=bundle.thresholds.binary, title=call.call_id)
        except Exception as exc:  # a plot is a convenience; never lose a call's numbers for it
            log(f"[predict] {call.call_id}: plot failed ({type(exc).__name__}: {exc})")
    writer.write_call(records, result, call.skipped)
    summary.calls.append(call.call_id)
    summary.skipped += call.skipped
    share = result["negative_share"]
    log(f"[predict] {call.call_id}: {len(records)} segments ({result['n_caller_segments']} caller), "
        f"{len(call.skipped)} skipped, negative caller speech "
        f"{'n/a' if share is None else f'{100 * share:.0f}%'}")


def _record_skip(writer: PredictionWriter, summary: PredictSummary, row: Dict[str, Any], log: Callable) -> None:
    writer.write_skipped([row])
    summary.skipped.append(row)
    log(f"[predict] skipped {row['source']}: {row['reason']}")


def _expand(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    out: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise CtxemoError(f"{path}: folder holds no recordings ({', '.join(AUDIO_SUFFIXES)})")
            out += found
        else:
            out.append(path)
    return out


def predict_recordings(bundle: Union[Bundle, str, Path], paths: Sequence[Union[str, Path]],
                       out_dir: Union[str, Path], **kwargs) -> PredictSummary:
    """Score whole-call recordings (see `predict_inputs` for the keyword arguments)."""
    return predict_inputs(bundle, paths, out_dir, **kwargs)


def predict_manifest(bundle: Union[Bundle, str, Path], manifest: Union[str, Path], out_dir: Union[str, Path],
                     **kwargs) -> PredictSummary:
    """Score the calls of one manifest (see `predict_inputs`; `features=` for precomputed embeddings)."""
    return predict_inputs(bundle, [manifest], out_dir, **kwargs)


