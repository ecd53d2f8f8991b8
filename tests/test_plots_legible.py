"""Stage 4's pictures can be read: every track tells apart in the legend, the legend hides no threshold (beside
the axes, with an entry for the thresholds, for SyncNet, Wav2Lip and GestSync alike), titles stay inside the
figure, an audio-only plot writes across no line, non-ASCII titles draw without missing glyphs, and the video
never prints ``conf -0.00``."""
from __future__ import annotations

import warnings

import numpy as np

from pipeline.annotate import build_overlays, format_confidence
from pipeline.formats import Turn
from pipeline.plots import (
    displayable,
    plot_sync,
    plot_timeline,
    sync_argmax_figure,
    sync_figure,
    timeline_figure,
    track_styles,
)

SILENT_AND_SPEAKING = ["face 0", "face 1", "face 2", "face 3", "spk00", "spk00", "spk01"]


def _style_key(style: dict) -> tuple:
    return tuple(np.round(style["color"], 3)), str(style["linestyle"])


def test_every_track_has_its_own_colour_and_line_style():
    styles = track_styles(SILENT_AND_SPEAKING)
    assert len({_style_key(s) for s in styles}) == len(SILENT_AND_SPEAKING)
    assert styles[4]["color"] == styles[5]["color"] != styles[6]["color"]  # a speaker keeps its colour
    assert styles[4]["linestyle"] != styles[5]["linestyle"]


def test_legend_tells_tracks_apart_and_hides_no_threshold():
    labels = SILENT_AND_SPEAKING
    frames = [np.arange(10 * k, 10 * k + 200) for k in range(len(labels))]
    confidences = [np.full(200, 0.95 + 0.01 * k) for k in range(len(labels))]  # all near the 0.9 threshold
    figure = sync_figure(frames, confidences, labels, [Turn(1.0, 5.0, "spk00", "av", (4,))], 25.0, 10.0,
                         thresholds=(0.5, 0.9), title="x")
    figure.canvas.draw()
    axes = figure.axes[0]
    legend = axes.get_legend()
    handles = [h for h in legend.legend_handles]
    keys = {(tuple(np.round(h.get_color(), 3)) if not isinstance(h.get_color(), str) else h.get_color(),
             str(h.get_linestyle())) for h in handles}
    assert len(keys) == len(handles) == len(labels) + 1  # every track, and the thresholds
    renderer = figure.canvas.get_renderer()
    legend_box, axes_box = legend.get_window_extent(renderer), axes.get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1  # beside the axes: covers no curve and no threshold line
    threshold_y = axes.transData.transform((0.0, 0.9))[1]
    assert axes_box.y0 < threshold_y < axes_box.y1


def test_non_ascii_titles_draw_without_missing_glyph_warnings(tmp_path):
    title = "vidéo_Привет_Ωμέγα_日本語_🎬: sync"
    shown, families = displayable(title)
    assert shown.startswith("vidéo_Привет_Ωμέγα_") and shown.endswith(": sync") and len(shown) == len(title)
    assert "DejaVu Sans" in families
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph warns (UserWarning / RuntimeWarning)
        plot_sync(tmp_path / "s.png", [np.arange(50)], [np.linspace(-1, 2, 50)], ["face 0"], [], 25.0, 2.0,
                  thresholds=(0.5, 0.9), title=title)
        plot_timeline(tmp_path / "t.png", [Turn(0.0, 1.0, "spk00", "av", (0,))], 2.0, title=title)
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "t.png").stat().st_size > 0


def test_video_caption_never_shows_minus_zero():
    assert format_confidence(-0.004) == "0.00" and format_confidence(-0.0) == "0.00"
    assert format_confidence(-0.006) == "-0.01" and format_confidence(1.234) == "1.23"
    track = {"track": {"frame": np.arange(3)}, "proc_track": {"x": np.full(3, 50.0), "y": np.full(3, 50.0),
                                                               "s": np.full(3, 20.0)}}
    overlays = build_overlays([track], [np.array([-0.001, -0.0049, 0.5])], ["face 0"], {"face 0": (0, 0, 0)}, [], 25.0)
    texts = [o.text for frame in sorted(overlays) for o in overlays[frame]]
    assert texts == ["face 0  T0  conf 0.00", "face 0  T0  conf 0.00", "face 0  T0  conf 0.50"]


LONG_REFERENCE = "gestsync_asd2spk_interview_with_two_guests_2024"  # stage 4 puts the reference in every title


def _argmax_figures(num_tracks: int) -> dict:
    """The Wav2Lip and GestSync pictures as stage 4 draws them (its titles, thresholds and labels)."""
    frames = [np.arange(10 * k, 10 * k + 200) for k in range(num_tracks)]
    curves = [0.5 + 0.3 * np.sin(np.arange(200) / (15 + k)) for k in range(num_tracks)]
    labels = [f"spk0{k}" for k in range(num_tracks)]
    return {model: sync_argmax_figure(frames, [scale * c for c in curves], labels, 25.0, 10.0, thresholds,
                                      title=f"{LONG_REFERENCE}: {what} per face track (shaded: the face with the "
                                            f"highest)")
            for model, what, scale, thresholds in (
                ("wav2lip", "Wav2Lip expert smoothed score", 1.0, (0.5, 0.75)),
                ("gestsync", "GestSync smoothed gesture score", 0.4, (0.1, 0.3)))}


def test_wav2lip_and_gestsync_legends_beside_the_axes_with_the_thresholds():
    for model, figure in _argmax_figures(3).items():
        figure.canvas.draw()
        axes = figure.axes[0]
        legend = axes.get_legend()
        assert legend is not None, model
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts == ["face 0 (spk00)", "face 1 (spk01)", "face 2 (spk02)", "vote thresholds"], model
        renderer = figure.canvas.get_renderer()
        assert legend.get_window_extent(renderer).x0 >= axes.get_window_extent(renderer).x1, model
        assert legend.get_window_extent(renderer).x1 <= figure.bbox.width, model


def test_titles_stay_inside_the_figure():
    turns = [Turn(1.0, 5.0, "spk00", "av", (0,))]
    figures = dict(_argmax_figures(2))
    figures["syncnet"] = sync_figure([np.arange(200)], [np.ones(200)], ["spk00"], turns, 25.0, 8.0, (0.5, 0.9),
                                     title=f"{LONG_REFERENCE}_and_then_some_more: sync confidence per face track "
                                           "(shaded: speaking)")
    figures["timeline"] = timeline_figure(turns, 8.0, title=f"{LONG_REFERENCE}_and_more: speakers (solid: face seen "
                                                            "speaking; hatched: voice only)")
    for name, figure in figures.items():
        figure.canvas.draw()
        title = figure.axes[0].title
        box = title.get_window_extent(figure.canvas.get_renderer())
        assert 0 <= box.x0 and box.x1 <= figure.bbox.width, (name, box, figure.bbox.width)
        assert LONG_REFERENCE in title.get_text().replace("\n", " ")


def test_audio_only_plot_writes_across_no_line():
    for name, figure in (("syncnet", sync_figure([], [], [], [], 25.0, 10.0, (0.5, 0.9), title="sample")),
                         ("wav2lip", sync_argmax_figure([], [], [], 25.0, 10.0, (0.5, 0.75), title="sample"))):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        axes = figure.axes[0]
        [text] = [t for t in axes.texts if "no face tracks" in t.get_text()]
        box = text.get_window_extent(renderer)
        for line in axes.lines:
            assert not box.overlaps(line.get_window_extent(renderer)), (name, line.get_label())
