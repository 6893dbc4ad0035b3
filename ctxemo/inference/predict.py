"""`ctxemo predict`: score manifests or whole-call recordings with a model bundle, offline or as if live.

Each call's results are appended and flushed to the output folder as soon as the call is done, so a
failure later loses nothing; rerunning into the same folder with the same bundle and options resumes
(finished calls are kept and skipped). A bad input becomes a row of skipped.csv with its reason.
Logs carry paths, ids and numbers only, never audio or text.
"""
from __future__ import annotations

import sys
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ctxemo.data.audio import audio_info, read_audio
from ctxemo.data.manifest import optional_sec
from ctxemo.data.segmenter import SegmenterConfig, segment_file
from ctxemo.data.vad import resolve_vad
from ctxemo.errors import AudioError, CtxemoError, ManifestError
from ctxemo.inference.bundle import Bundle, load_bundle
from ctxemo.inference.outputs import (
    ROLES_FROM_CHANNELS,
    ROLES_FROM_MANIFEST,
    ROLES_UNKNOWN_MONO,
    PredictionWriter,
    plot_trajectory,
    segment_record,
    skip_row,
    summarize_call,
)

# What libsndfile decodes (MP3 since libsndfile 1.1); other audio containers are named when a folder holds them.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg") + ((".mp3",) if "MP3" in sf.available_formats() else ())
UNREADABLE_AUDIO_SUFFIXES = (".m4a", ".aac", ".mp4", ".wma", ".amr", ".opus", ".webm", ".3gp", ".mp3")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
CHANNEL_ROLES = ("caller", "operator", "ignore")
EMBED_BATCH_SEGMENTS = 64  # segments read and embedded together (bundle.embed buckets them by length)


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
    gold_negative: Optional[int] = None  # 0/1 from a manifest that carries labels (drawn on --plot), else None
    # A recording's segment is read only when it is embedded (path, channel, start, end, rate): a call's
    # audio is never held whole, so memory does not grow with call length.
    crop: Optional[tuple] = None

    def load_wave(self) -> np.ndarray:
        """The segment's samples (mono, at the bundle's rate): held, or read from its recording now."""
        if self.wave is not None:
            return self.wave
        path, channel, start, end, sr = self.crop
        return read_audio(path, start_sec=start, end_sec=end, channel=channel, target_sr=sr)


@dataclass
class PreparedCall:
    call_id: str
    source: str
    segments: List[PreparedSegment]
    skipped: List[Dict[str, Any]] = field(default_factory=list)  # segment-level skipped rows
    duration_sec: Optional[float] = None
    roles: str = ROLES_FROM_MANIFEST  # where the roles came from (calls.csv `roles`)
    warnings: List[str] = field(default_factory=list)  # e.g. a band unlike the training audio's


@dataclass
class PredictSummary:
    out_dir: Path
    calls: List[str] = field(default_factory=list)  # call ids written in this run
    skipped: List[Dict[str, Any]] = field(default_factory=list)  # skipped rows written in this run
    resumed: List[str] = field(default_factory=list)  # call ids already done before this run
    errors: int = 0  # unexpected (non-input) errors, also in skipped.csv


# ----------------------------------------------------------------------------- preparing calls

def segmenter_from_overrides(overrides: Sequence[str]) -> SegmenterConfig:
    """`segmenter.key=value` items (the command line) -> SegmenterConfig; a bad key or value fails naming it."""
    from omegaconf import OmegaConf

    from ctxemo.config import load_config

    cfg = load_config(overrides=list(overrides))
    return SegmenterConfig(**OmegaConf.to_container(cfg.segmenter))


def split_segmenter_overrides(items: Sequence[str]) -> tuple:
    """(inputs, `segmenter.*=...` overrides) of predict's positional arguments; an existing file always
    counts as an input, whatever its name."""
    is_override = lambda item: item.startswith("segmenter.") and "=" in item and not Path(item).exists()  # noqa: E731
    return [i for i in items if not is_override(i)], [i for i in items if is_override(i)]


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
        seg = segment_file(path, segmenter)  # read in blocks
    except AudioError as exc:
        raise SkipInput(str(exc)) from None
    kept = [s for s in seg.segments if roles[s.channel] != "ignore"]
    short = [s for s in seg.too_short if roles[s.channel] != "ignore"]
    if not kept:
        if short:
            what = f"only {len(short)} speech burst(s) shorter than {segmenter.min_segment_sec:.2f} s"
        elif seg.not_speech:
            what = f"no speech found ({seg.not_speech} sound(s) that silero-vad did not hear as speech)"
        else:
            what = f"no speech found (silent audio; noise floor {max(seg.floors_dbfs):.1f} dBFS)"
        raise SkipInput(f"{path}: {what}")
    segments = [PreparedSegment(role=roles[s.channel], start=s.start_sec, end=s.end_sec,
                                duration=s.end_sec - s.start_sec, segment_index=i,
                                crop=(path, s.channel, s.start_sec, s.end_sec, bundle.sample_rate))
                for i, s in enumerate(kept)]
    skipped = [skip_row(call_id, source, f"segment too short ({s.speech_sec:.2f} s of speech < "
                        f"{segmenter.min_segment_sec:.2f} s)", start=s.start_sec, end=s.end_sec,
                        role=roles[s.channel], channel=s.channel) for s in short]
    # One channel and no --channels: nothing tells caller from operator, so every turn is taken as the caller's.
    known = int(info.channels) > 1 or channels is not None
    return PreparedCall(call_id=call_id, source=source, segments=segments, skipped=skipped,
                        duration_sec=seg.duration_sec, roles=ROLES_FROM_CHANNELS if known else ROLES_UNKNOWN_MONO)


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
    sr = bundle.sample_rate
    for rows in manifest.calls():
        call_id = manifest.call_id[rows[0]]
        segments, skipped = [], []
        for r in rows:
            role, start, end = manifest.role[r], float(manifest.start_sec[r]), float(manifest.end_sec[r])
            seg = PreparedSegment(role=role, start=start, end=end, duration=end - start,
                                  segment_index=int(manifest.segment_index[r]),
                                  gold_negative=int(manifest.negative[r]) if manifest.has_gold else None)
            where = dict(segment_index=seg.segment_index, start=start, end=end, role=role)
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
            segments.append(seg)  # a short one is padded and scored, as in CV (ctxemo.data.short_segments)
        ends = [s.end for s in segments if not np.isnan(s.end)]
        yield PreparedCall(call_id=call_id, source=str(path), segments=segments, skipped=skipped,
                           duration_sec=max(ends) if ends else None)


# ----------------------------------------------------------------------------- scoring

def score_prepared(bundle: Bundle, call: PreparedCall, *, live: bool = False,
                   on_segment: Callable[[], None] = lambda: None) -> List[Dict[str, Any]]:
    """Per-segment records of a prepared call: the whole call at once, or pushed one by one (live; then
    `on_segment` is called after each segment, e.g. to move a progress bar)."""
    segs = call.segments
    if live:
        from ctxemo.inference.live import LiveSession

        session = LiveSession(bundle, call_id=call.call_id)
        records = []
        for s in segs:
            times = dict(start_sec=optional_sec(s.start), end_sec=optional_sec(s.end))
            if s.wave is not None or s.crop is not None:
                with warnings.catch_warnings():  # the session's band warning goes to the call's log instead
                    warnings.simplefilter("ignore")
                    record = session.push(s.load_wave(), sample_rate=bundle.sample_rate, role=s.role, **times)
            else:
                record = session.push_embedding(s.feat, role=s.role, duration_sec=_or_zero(s.duration), **times)
            record["segment_index"] = s.segment_index
            records.append(record)
            on_segment()
        if session.band_warning:
            call.warnings.append(session.band_warning)
        return records
    roles = [s.role for s in segs]
    in_context = bundle.in_context(roles)
    feats = np.zeros((len(segs), bundle.d_in), dtype=np.float32)
    rows = np.flatnonzero(in_context)
    if len(rows):
        if segs[rows[0]].feat is not None:
            feats[rows] = np.stack([segs[i].feat for i in rows])
        else:  # embedded as they are read, a batch at a time: a call's audio is never held whole
            for a in range(0, len(rows), EMBED_BATCH_SEGMENTS):
                part = rows[a:a + EMBED_BATCH_SEGMENTS]
                waves = [segs[i].load_wave() for i in part]
                if a == 0:
                    _check_band(bundle, call, [w for i, w in zip(part, waves) if segs[i].role == "caller"])
                feats[part] = bundle.embed(waves)
    start = np.array([s.start for s in segs], dtype=float)
    end = np.array([s.end for s in segs], dtype=float)
    scores = bundle.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    return [segment_record(bundle, call_id=call.call_id, segment_index=s.segment_index, start=s.start, end=s.end,
                           duration=s.duration, role=s.role, p_negative=scores.p_negative[i], p_fine=scores.p_fine[i])
            for i, s in enumerate(segs)]


def _check_band(bundle: Bundle, call: PreparedCall, caller_waves: List[np.ndarray]) -> None:
    """Compare the call's first caller segments' band with the training audio's (a warning on the call)."""
    message = bundle.check_band(caller_waves, sample_rate=bundle.sample_rate, where=f"call {call.call_id}")
    if message:
        call.warnings.append(message)


def _or_zero(x: float) -> float:
    return 0.0 if np.isnan(x) else float(x)


# ----------------------------------------------------------------------------- runs

def predict_inputs(bundle: Union[Bundle, str, Path], inputs: Sequence[Union[str, Path]], out_dir: Union[str, Path],
                   *, channels: Optional[List[str]] = None, live: bool = False, plot: bool = False,
                   segmenter: SegmenterConfig = SegmenterConfig(), features: Optional[Path] = None,
                   log: Callable[[str], None] = lambda message: None, progress: bool = False) -> PredictSummary:
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
        progress: a bar over the calls on stderr (and, live, over each call's segments).
    Returns:
        PredictSummary of this run.
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if live:
        from ctxemo.inference.live import check_live_capable

        check_live_capable(bundle)
    paths, not_read = _expand(inputs)
    _, note = resolve_vad(segmenter.vad)
    if note and any(p.suffix.lower() in AUDIO_SUFFIXES for p in paths):
        log(f"[predict] warning: {note}")
    if features is None and any(p.suffix.lower() in AUDIO_SUFFIXES + MANIFEST_SUFFIXES for p in paths):
        bundle.encoder()  # build and check it now: a refused encoder must stop the run, not skip every call
    options = {"live": bool(live), "channels": channels, "segmenter": asdict(segmenter),
               "features": None if features is None else str(features)}
    writer = PredictionWriter(Path(out_dir), bundle=bundle, options=options, live=live, log=log)
    summary = PredictSummary(out_dir=Path(out_dir), resumed=sorted(writer.done))
    sources: Dict[str, str] = {}
    for path, reason in not_read:
        if path.suffix.lower() in UNREADABLE_AUDIO_SUFFIXES:  # a recording we cannot decode: a skipped row
            _record_skip(writer, summary, skip_row(path.stem, str(path), reason), log)
        else:
            log(f"[predict] not read: {reason}")
    # Calls are counted up front only when every input is one recording (a manifest's calls appear as read).
    recordings_only = all(p.suffix.lower() in AUDIO_SUFFIXES for p in paths)
    bars = ProgressBars(enabled=progress, total_calls=len(paths) if recordings_only else None, live=live)
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
                       log=log, bars=bars)
    finally:
        bars.close()
        writer.close()
    for message in bundle.warnings:
        log(f"[predict] warning: {message}")
    return summary


def _run_input(bundle: Bundle, path: Path, calls: Callable, *, writer: PredictionWriter, summary: PredictSummary,
               sources: Dict[str, str], live: bool, plot: bool, log: Callable, bars: "ProgressBars") -> None:
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
            _score_and_write(bundle, call, writer=writer, summary=summary, live=live, plot=plot, log=log, bars=bars)
        except Exception as exc:
            fail(call.call_id, call.source, exc)
        finally:
            bars.call_done()


def _score_and_write(bundle: Bundle, call: PreparedCall, *, writer: PredictionWriter, summary: PredictSummary,
                     live: bool, plot: bool, log: Callable, bars: "ProgressBars") -> None:
    if not call.segments:
        writer.write_skipped(call.skipped)
        summary.skipped += call.skipped
        raise SkipInput(f"call {call.call_id}: no usable segment ({len(call.skipped)} skipped)")
    records = score_prepared(bundle, call, live=live, on_segment=bars.segments(call))
    for message in call.warnings:
        log(f"[predict] warning: {message}")
    result = summarize_call(records, call_id=call.call_id, source=call.source, duration_sec=call.duration_sec,
                            n_skipped=len(call.skipped), roles=call.roles)
    if call.roles == ROLES_UNKNOWN_MONO:
        log(f"[predict] {call.call_id}: mono recording, roles unknown: every turn is scored as the caller's "
            "(operator speech included); pass --channels caller to confirm, or give a stereo recording")
    if plot:
        try:
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in call.call_id)
            gold = {s.segment_index: s.gold_negative for s in call.segments
                    if s.gold_negative is not None and s.role == "caller"}
            plot_trajectory(writer.out_dir / "plots" / f"{name}.png", records,
                            threshold=bundle.thresholds.binary, title=call.call_id, gold=gold or None)
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


def _expand(inputs: Sequence[Union[str, Path]]) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """(inputs to read, [(file, why it is not read)]): folders give their recordings; every other file in
    them is named with the reason, so an .m4a among the wavs is not passed over without a word."""
    out: List[Path] = []
    not_read: List[Tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            out.append(path)
            continue
        found = []
        for p in sorted(path.iterdir()):
            suffix = p.suffix.lower()
            if p.name.startswith(".") or not p.is_file():
                continue  # hidden files (editor and OS clutter) and subfolders are not inputs
            if suffix in AUDIO_SUFFIXES:
                found.append(p)
            elif suffix in UNREADABLE_AUDIO_SUFFIXES:
                not_read.append((p, f"{p}: {suffix} audio cannot be decoded here (libsndfile reads "
                                    f"{', '.join(AUDIO_SUFFIXES)}); convert it, e.g. ffmpeg -i {p.name} {p.stem}.wav"))
            else:
                not_read.append((p, f"{p}: not a recording ({suffix or 'no suffix'}); inside a folder only "
                                    f"{', '.join(AUDIO_SUFFIXES)} files are read"))
        if not found:
            raise CtxemoError(f"{path}: folder holds no recordings ({', '.join(AUDIO_SUFFIXES)})"
                              + (f"; not read: {', '.join(p.name for p, _ in not_read[:5])}" if not_read else ""))
        out += found
    return out, not_read


class ProgressBars:
    """tqdm bars on stderr: calls done (of all, when known up front) and, live, the segments of the
    current call. Bars show counts and call ids only."""

    def __init__(self, *, enabled: bool, total_calls: Optional[int], live: bool):
        self.enabled, self.live = enabled, live
        self._calls = tqdm(total=total_calls, unit="call", desc="calls", file=sys.stderr) if enabled else None
        self._segments = None

    def segments(self, call: PreparedCall) -> Callable[[], None]:
        """A callback that moves the current call's segment bar (live mode only)."""
        if not (self.enabled and self.live):
            return lambda: None
        self._segments = tqdm(total=len(call.segments), unit="seg", desc=str(call.call_id)[:24], leave=False,
                              file=sys.stderr)
        return self._segments.update

    def call_done(self) -> None:
        if self._segments is not None:
            self._segments.close()
            self._segments = None
        if self._calls is not None:
            self._calls.update()

    def close(self) -> None:
        if self._segments is not None:
            self._segments.close()
        if self._calls is not None:
            self._calls.close()


def predict_recordings(bundle: Union[Bundle, str, Path], paths: Sequence[Union[str, Path]],
                       out_dir: Union[str, Path], **kwargs) -> PredictSummary:
    """Score whole-call recordings (see `predict_inputs` for the keyword arguments)."""
    return predict_inputs(bundle, paths, out_dir, **kwargs)


def predict_manifest(bundle: Union[Bundle, str, Path], manifest: Union[str, Path], out_dir: Union[str, Path],
                     **kwargs) -> PredictSummary:
    """Score the calls of one manifest (see `predict_inputs`; `features=` for precomputed embeddings)."""
    return predict_inputs(bundle, [manifest], out_dir, **kwargs)


