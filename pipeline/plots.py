"""Pictures of one video's diarisation, as PNG: the sync signal of every face track, and the speaker timeline.

matplotlib draws on its Agg canvas directly (``Figure`` + ``FigureCanvasAgg``): no display, no pyplot
state, nothing changed for other code in the process. The colour of a speaker is the same here and in the
annotated video (``speaker_colours``); tracks that share a colour (faces that never speak, or two tracks of
one speaker) differ in line style and shade, and in every sync plot the legend sits beside the axes so it
hides no curve or threshold, with an entry for the thresholds. Titles (which carry the file name) use the first
installed font of ``TEXT_FONT_FAMILIES`` that has each character (a character none of them has is shown as
``?`` rather than as a missing-glyph box and warning) and wrap onto more lines rather than run past the figure's
edge. A plot without face tracks (audio only) says so in the middle, with no threshold lines to cross it.
"""
from __future__ import annotations

import functools
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.cache import atomic_path
from pipeline.formats import Turn
from pipeline.fusion.voxconverse import UNKNOWN_SPEAKER

# matplotlib's tab10 without its grey (kept for faces that never speak and for 'unknown'), as RGB in [0, 1].
PALETTE_RGB: tuple[tuple[float, float, float], ...] = (
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.737, 0.741, 0.133),
    (0.090, 0.745, 0.812),
)
NEUTRAL_RGB = (0.5, 0.5, 0.5)
_DPI = 100
LEGEND_WIDTH_IN = 2.5  # room beside the axes for a sync plot's legend
# Line styles that tell apart tracks drawn in one colour (solid first); grey shades for faces that never speak.
LINE_STYLES: tuple = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)))
_SILENT_GREYS: tuple[float, ...] = (0.45, 0.62, 0.30)
# Families tried in order for each character of a title: matplotlib's own DejaVu Sans (Latin, Greek, Cyrillic,
# many symbols), then common system fonts with CJK and other scripts where installed.
TEXT_FONT_FAMILIES: tuple[str, ...] = ("DejaVu Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans",
                                       "WenQuanYi Zen Hei", "Droid Sans Fallback", "Arial Unicode MS")


def speaker_colours(speakers: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """RGB in [0, 1] per speaker: palette colours in sorted label order, grey for 'unknown'."""
    named = sorted({s for s in speakers if s != UNKNOWN_SPEAKER})
    colours = {speaker: PALETTE_RGB[i % len(PALETTE_RGB)] for i, speaker in enumerate(named)}
    if UNKNOWN_SPEAKER in speakers:
        colours[UNKNOWN_SPEAKER] = NEUTRAL_RGB
    return colours


def identity_speakers(turns: Sequence[Turn], face_ids: Sequence[int]) -> dict[int, str]:
    """Face identity -> the speaker whose audio-visual turns name its tracks for the longest time."""
    seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for turn in turns:
        if turn.source != "av":
            continue
        for track_idx in turn.track_ids:
            seconds[int(face_ids[track_idx])][turn.speaker] += turn.end_s - turn.start_s
    return {identity: max(sorted(by_speaker), key=lambda s: by_speaker[s]) for identity, by_speaker in seconds.items()}


def track_labels(turns: Sequence[Turn], face_ids: Sequence[int]) -> list[str]:
    """Label of each track: the speaker of its face identity, else ``face <identity>``."""
    by_identity = identity_speakers(turns, face_ids)
    return [by_identity.get(int(identity), f"face {int(identity)}") for identity in face_ids]


def label_colours(labels: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """Colours of track labels: speakers as ``speaker_colours``, silent faces grey."""
    speakers = [label for label in labels if not label.startswith("face ")]
    colours = speaker_colours(speakers)
    return {label: colours.get(label, NEUTRAL_RGB) for label in labels}


def track_styles(labels: Sequence[str]) -> list[dict]:
    """Line colour and style of each track: its label's colour (``label_colours``); tracks sharing a colour get
    the next line style (and, for silent faces, the next grey), so no two tracks look alike in the legend."""
    colours = label_colours(labels)
    seen: dict[tuple, int] = defaultdict(int)
    styles = []
    for label in labels:
        colour = colours[label]
        silent = label.startswith("face ")
        count = seen[("silent",) if silent else colour]
        seen[("silent",) if silent else colour] += 1
        if silent:  # shade and style both change: 21 silent tracks before a pair repeats
            grey = _SILENT_GREYS[count % len(_SILENT_GREYS)]
            colour = (grey, grey, grey)
        styles.append({"color": colour, "linestyle": LINE_STYLES[count % len(LINE_STYLES)]})
    return styles


@functools.cache
def _font_families() -> tuple[tuple[str, frozenset[int]], ...]:
    """The installed families of ``TEXT_FONT_FAMILIES`` with the code points each has."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    found = []
    for family in TEXT_FONT_FAMILIES:
        entry = next((f for f in font_manager.fontManager.ttflist if f.name == family), None)
        if entry is None:
            continue
        try:
            found.append((family, frozenset(FT2Font(entry.fname).get_charmap())))
        except (OSError, RuntimeError, ValueError):
            continue
    return tuple(found)


def displayable(text: str) -> tuple[str, list[str]]:
    """(``text`` with every character no installed family has replaced by ``?``, the families to draw it with)."""
    families = _font_families()
    shown = "".join(c if c.isspace() or any(ord(c) in chars for _, chars in families) else "?" for c in text)
    return shown, [name for name, _ in families] or ["sans-serif"]


def _set_title(axes, title: str) -> None:
    """The title in fonts that have its characters, wrapped so that it fits inside the figure (call it after
    everything else is on the figure: the layout decides where the axes, and so the title, sit)."""
    shown, families = displayable(title)
    text = axes.set_title(shown, fontfamily=families)
    figure = axes.get_figure()
    for _ in range(4):
        figure.draw_without_rendering()  # runs the constrained layout
        box = text.get_window_extent(figure.canvas.get_renderer())
        centre = (box.x0 + box.x1) / 2
        room = 2 * min(centre, figure.bbox.width - centre) - 8  # centred on the axes: the nearer edge limits
        if box.width <= room:
            return
        longest = max(len(line) for line in text.get_text().split("\n"))
        text.set_text(textwrap.fill(shown, width=max(8, int(longest * room / box.width))))


def _no_tracks(axes) -> None:
    """Say, in the middle of an empty sync plot, that there was nothing to draw."""
    axes.set_ylim(0.0, 1.0)
    axes.text(0.5, 0.5, "no face tracks (audio only): no sync curve", transform=axes.transAxes, ha="center",
              va="center", bbox={"facecolor": "white", "edgecolor": "none", "pad": 4})


def _legend_beside(axes, num_curves: int) -> None:
    """The legend right of the axes (``LEGEND_WIDTH_IN`` is kept for it), never over a curve or threshold."""
    if 0 < num_curves <= 12:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".part.png") as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


def _width_in(duration_s: float) -> float:
    """Wider figures for longer videos: 10 in up to 100 s, then 1 in per 10 s, at most 40 in."""
    return float(min(40.0, max(10.0, duration_s / 10.0)))


def plot_sync(path: Path, track_frames: Sequence[np.ndarray], confidences: Sequence[np.ndarray],
              labels: Sequence[str], turns: Sequence[Turn], frame_rate_hz: float, duration_s: float,
              thresholds: Sequence[float] = (), title: str = "") -> Path:
    """Each track's smoothed sync confidence against time, its speaker's audio-visual turns shaded.

    ``confidences[i][j]`` belongs to frame ``track_frames[i][0] + j``; values past the track's length are
    not drawn. Dashed lines mark the confidence thresholds that vote for active speech.
    """
    figure = sync_figure(track_frames, confidences, labels, turns, frame_rate_hz, duration_s, thresholds, title)
    return _save_png(figure, path)


def sync_figure(track_frames: Sequence[np.ndarray], confidences: Sequence[np.ndarray], labels: Sequence[str],
                turns: Sequence[Turn], frame_rate_hz: float, duration_s: float, thresholds: Sequence[float] = (),
                title: str = ""):
    """The figure ``plot_sync`` saves."""
    colours = label_colours(labels)
    styles = track_styles(labels)
    figure = _figure(_width_in(duration_s) + LEGEND_WIDTH_IN, 4.0)  # + room for the legend beside the axes
    axes = figure.add_subplot()
    for turn in turns:
        if turn.source == "av":
            axes.axvspan(turn.start_s, turn.end_s, color=colours.get(turn.speaker, NEUTRAL_RGB), alpha=0.15, lw=0)
    for track_idx, (frames, confidence) in enumerate(zip(track_frames, confidences)):
        frames = np.asarray(frames)
        count = min(len(frames), len(confidence))
        if count == 0:
            continue
        times_s = (int(frames[0]) + np.arange(count)) / frame_rate_hz
        axes.plot(times_s, np.asarray(confidence[:count], dtype=float), lw=1.2, **styles[track_idx],
                  label=f"track {track_idx} ({labels[track_idx]})")
    _thresholds(axes, thresholds if len(confidences) else ())
    axes.set_xlim(0.0, max(duration_s, 1e-3))
    axes.set_xlabel("time (s)")
    axes.set_ylabel("sync confidence")
    axes.grid(alpha=0.3)
    _legend_beside(axes, len(confidences))
    if not len(confidences):
        _no_tracks(axes)
    _set_title(axes, title or "SyncNet confidence per face track (shaded: speaking)")
    return figure


def _thresholds(axes, thresholds: Sequence[float]) -> None:
    """The voting thresholds as dashed lines, one legend entry for them all."""
    for k, threshold in enumerate(thresholds):
        axes.axhline(threshold, color="black", lw=0.8, ls=(0, (6, 3)), alpha=0.6,
                     label="vote thresholds" if k == 0 else None)


def distinct_track_colours(labels: Sequence[str]) -> list[tuple[float, float, float]]:
    """A colour per track: its speaker's (as ``label_colours``), silent faces the palette colours no speaker
    uses, in turn, so that every face of the argmax picture can be told apart."""
    speaking = label_colours(labels)
    used = {speaking[label] for label in labels if not label.startswith("face ")}
    spare = [rgb for rgb in PALETTE_RGB if rgb not in used] or list(PALETTE_RGB)
    colours, next_spare = [], 0
    for label in labels:
        if label.startswith("face "):
            colours.append(spare[next_spare % len(spare)])
            next_spare += 1
        else:
            colours.append(speaking[label])
    return colours


def argmax_spans(track_frames: Sequence[np.ndarray], curves: Sequence[np.ndarray],
                 num_frames: int) -> list[tuple[int, int, int]]:
    """``(start_frame, end_frame, track)`` runs where a track's curve is the highest (frames with none left out)."""
    from pipeline.fusion.argmax import NO_FACE, argmax_faces
    from pipeline.fusion.voxconverse import find_runs

    firsts = [int(np.asarray(f)[0]) if len(f) else 0 for f in track_frames]
    usable = [np.asarray(c, dtype=float)[:len(f)] for c, f in zip(curves, track_frames)]
    values, starts, lengths = find_runs(argmax_faces(usable, firsts, num_frames))
    return [(int(s), int(s + n), int(v)) for v, s, n in zip(values, starts, lengths) if v != NO_FACE]


def plot_sync_argmax(path: Path, track_frames: Sequence[np.ndarray], curves: Sequence[np.ndarray],
                     labels: Sequence[str], frame_rate_hz: float, duration_s: float,
                     thresholds: Sequence[float] = (), title: str = "", ylabel: str = "lip-sync score") -> Path:
    """Each track's smoothed sync curve against time, and in every frame the track with the highest curve
    shaded in its colour (syncnet-speaker-diarization's picture: the argmax face is the speaker).

    ``curves[i][j]`` belongs to frame ``track_frames[i][0] + j``; NaN values are not drawn. Dashed lines mark
    the thresholds of the VoxConverse voting rule when given.
    """
    figure = sync_argmax_figure(track_frames, curves, labels, frame_rate_hz, duration_s, thresholds, title, ylabel)
    return _save_png(figure, path)


def sync_argmax_figure(track_frames: Sequence[np.ndarray], curves: Sequence[np.ndarray], labels: Sequence[str],
                       frame_rate_hz: float, duration_s: float, thresholds: Sequence[float] = (), title: str = "",
                       ylabel: str = "lip-sync score"):
    """The figure ``plot_sync_argmax`` saves."""
    colours = distinct_track_colours(labels)
    figure = _figure(_width_in(duration_s) + LEGEND_WIDTH_IN, 4.0)  # + room for the legend beside the axes
    axes = figure.add_subplot()
    num_frames = max([int(round(duration_s * frame_rate_hz))] +
                     [int(np.asarray(f)[0]) + len(f) for f in track_frames if len(f)])
    for start, end, track_idx in argmax_spans(track_frames, curves, num_frames):
        axes.axvspan(start / frame_rate_hz, end / frame_rate_hz, color=colours[track_idx], alpha=0.15, lw=0)
    for track_idx, (frames, curve) in enumerate(zip(track_frames, curves)):
        count = min(len(frames), len(curve))
        if count == 0:
            continue
        times_s = (int(np.asarray(frames)[0]) + np.arange(count)) / frame_rate_hz
        axes.plot(times_s, np.asarray(curve[:count], dtype=float), color=colours[track_idx], lw=1.2,
                  label=f"face {track_idx} ({labels[track_idx]})")
    _thresholds(axes, thresholds if len(curves) else ())
    axes.set_xlim(0.0, max(duration_s, 1e-3))
    axes.set_xlabel("time (s)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    _legend_beside(axes, len(curves))
    if not len(curves):
        _no_tracks(axes)
    _set_title(axes, title or "lip-sync score per face (shaded: the face with the highest score)")
    return figure


def plot_timeline(path: Path, turns: Sequence[Turn], duration_s: float, title: str = "") -> Path:
    """One row per speaker with its turns as bars: solid when a face was seen speaking, hatched for voice only."""
    return _save_png(timeline_figure(turns, duration_s, title), path)


def timeline_figure(turns: Sequence[Turn], duration_s: float, title: str = ""):
    """The figure ``plot_timeline`` saves."""
    speakers = sorted({turn.speaker for turn in turns}, key=lambda s: (s == UNKNOWN_SPEAKER, s))
    colours = speaker_colours(speakers)
    figure = _figure(_width_in(duration_s), 1.2 + 0.4 * max(1, len(speakers)))
    axes = figure.add_subplot()
    for row, speaker in enumerate(speakers):
        for source, hatch in (("av", None), ("audio", "////")):
            spans = [(t.start_s, t.end_s - t.start_s) for t in turns if t.speaker == speaker and t.source == source]
            if spans:
                axes.broken_barh(spans, (row - 0.4, 0.8), facecolors=colours[speaker],
                                 alpha=1.0 if hatch is None else 0.5, hatch=hatch, edgecolor="white", lw=0.3)
    axes.set_yticks(range(len(speakers)), speakers)
    axes.set_ylim(-0.6, max(1, len(speakers)) - 0.4)
    axes.invert_yaxis()
    axes.set_xlim(0.0, max(duration_s, max((t.end_s for t in turns), default=0.0), 1e-3))
    axes.set_xlabel("time (s)")
    axes.grid(axis="x", alpha=0.3)
    if not speakers:
        axes.text(0.5, 0.5, "no speech found", transform=axes.transAxes, ha="center", va="center")
    _set_title(axes, title or "speakers (solid: face seen speaking; hatched: voice only)")
    return figure


def rgb_to_bgr255(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    """An RGB colour in [0, 1] as OpenCV's BGR in 0..255."""
    r, g, b = (int(round(255 * min(1.0, max(0.0, c)))) for c in rgb)
    return b, g, r


__all__ = [
    "NEUTRAL_RGB",
    "PALETTE_RGB",
    "argmax_spans",
    "distinct_track_colours",
    "identity_speakers",
    "label_colours",
    "plot_sync",
    "plot_sync_argmax",
    "plot_timeline",
    "displayable",
    "rgb_to_bgr255",
    "speaker_colours",
    "sync_argmax_figure",
    "sync_figure",
    "timeline_figure",
    "track_labels",
    "track_styles",
]
