"""The corpus report: one HTML page with a row of numbers and links per video and its plots below it.

The plots are embedded (data: URIs), so the page shows them on its own; a click on a plot opens the PNG file
itself (``videos/REF/``) at full size, and the links to each video's RTTM, VIA project and annotated video are
relative to ``out_dir``, so the folder can be moved or shared whole. Laid out to fit a 1400 px wide window:
the numbers and links in narrow columns, each plot below them at its own size (shrunk only to the page width).
"""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAGES = ("stage1", "stage2", "stage3", "stage4")

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; white-space: nowrap; }
td.name small { color: #555; overflow-wrap: anywhere; }
td.files a { white-space: nowrap; }
tr.failed td { background: #fff0f0; }
tr.plots td { border-top: none; padding-bottom: 14px; }
tr.plots a { display: inline-block; max-width: 100%; margin: 0 8px 4px 0; vertical-align: top; }
img.plot { display: block; max-width: 100%; height: auto; }
.error { color: #b00020; font-family: monospace; overflow-wrap: anywhere; }
"""

# On load, marks on <body> what the browser drew (tests/test_corpus_report_browser.py reads it back): how many
# plots decoded, the smallest shown/natural width of a plot, the right edge of the furthest link and plot, and
# the page's width against the window's.
_LOADED_SCRIPT = (
    "<script>window.addEventListener('load', function () {"
    "var d = document.body.dataset, images = Array.from(document.images);"
    "d.imagesLoaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;"
    "d.imagesTotal = images.length;"
    "d.minPlotScale = Math.min.apply(null, images.map(function (i) {"
    " return i.getBoundingClientRect().width / i.naturalWidth; }).concat([1])).toFixed(3);"
    "var right = function (list) { return Math.max.apply(null, list.map(function (e) {"
    " return e.getBoundingClientRect().right; }).concat([0])).toFixed(0); };"
    "d.linksRight = right(Array.from(document.querySelectorAll('td.files a')));"
    "d.linksCount = document.querySelectorAll('td.files a').length;"
    "d.plotsRight = right(images);"
    "d.pageWidth = document.documentElement.scrollWidth; d.windowWidth = window.innerWidth; });</script>")


def percent(fraction: float) -> str:
    """A DER or JER (a fraction, 0.12) as the page shows it: '12.00 %'."""
    return f"{100 * fraction:.2f} %"


def _embedded_png(out_dir: Path, path: Path, what: str) -> str:
    """The PNG itself (a data: URI, so the page needs no other file to show it), inside a link to the file
    that opens it at full size; '' when absent."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    href = html.escape(path.relative_to(out_dir).as_posix())
    return (f'<a href="{href}" title="{html.escape(what)}: click to open at full size">'
            f'<img class="plot" alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"></a>')


def _link(out_dir: Path, path: Path, text: str) -> str:
    if not path.is_file():
        return ""
    return f'<a href="{html.escape(path.relative_to(out_dir).as_posix())}">{html.escape(text)}</a>'


def _score_cells(score: dict[str, float] | None, with_scores: bool) -> str:
    if not with_scores:
        return ""
    if not score:
        return '<td class="num" colspan="5">no reference</td>'
    return "".join(f'<td class="num">{cell}</td>' for cell in (
        percent(score["der"]), f"{score['missed_s']:.2f}", f"{score['false_alarm_s']:.2f}",
        f"{score['confusion_s']:.2f}", percent(score["jer"])))


def _stage_cell(summary: Any) -> str:
    """Seconds per stage of the run that computed it; '*' marks a stage reused from the cache, '?' one whose
    computing run left no time."""
    cached = set(getattr(summary, "cached_stages", ()) or ())
    parts = []
    for stage in STAGES:
        seconds = summary.stage_seconds.get(stage)
        text = f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "?"
        parts.append(text + ("*" if stage in cached else ""))
    return "/".join(parts)


def _video_rows(out_dir: Path, s: Any, width: int, with_scores: bool) -> str:
    """The two rows of one diarised video: numbers and links, then its plots."""
    video_dir = out_dir / "videos" / s.reference
    name = getattr(s, "name", "") or s.videofile
    links = " ".join(link for link in (
        _link(out_dir, out_dir / "rttm" / f"{s.reference}.rttm", "RTTM"),
        _link(out_dir, video_dir / f"{s.reference}_via.json", "VIA project"),
        _link(out_dir, video_dir / f"{s.reference}_annotated.mp4", "annotated video")) if link)
    plots = (_embedded_png(out_dir, video_dir / f"{s.reference}_timeline.png", "speaker timeline")
             + _embedded_png(out_dir, video_dir / f"{s.reference}_sync.png", "sync plot"))
    reference = html.escape(s.reference)
    return (f'<tr data-reference="{reference}"><td class="name"><b>{reference}</b><br>'
            f"<small>{html.escape(name)}</small></td>"
            f'<td class="num">{s.duration_s:.1f}</td><td class="num">{s.tracks}</td>'
            f'<td class="num">{s.speakers}</td><td class="num">{s.turns}</td><td class="num">{s.speech_s:.1f}</td>'
            f'<td class="num">{_stage_cell(s)}</td>{_score_cells(s.score, with_scores)}'
            f'<td class="files">{links}</td></tr>\n'
            f'<tr class="plots" data-plots="{reference}"><td colspan="{width}">{plots or "no plots"}</td></tr>')


def corpus_report_html(out_dir: Path, summaries: Sequence[Any], overall: dict[str, float] | None,
                       notes: Sequence[str] = ()) -> str:
    """The page: a header with totals, then per video its numbers and links, and below them its timeline and
    sync plots."""
    with_scores = overall is not None or any(s.score for s in summaries)
    done = [s for s in summaries if s.status == "done"]
    hours = sum(s.duration_s for s in summaries) / 3600
    head = ["video", "duration (s)", "tracks", "speakers", "turns", "speech (s)", "seconds per stage (1/2/3/4)"]
    if with_scores:
        head += ["DER", "missed (s)", "false alarm (s)", "confusion (s)", "JER"]
    head += ["files"]
    rows = []
    for s in summaries:
        if s.status == "done":
            rows.append(_video_rows(out_dir, s, len(head), with_scores))
            continue
        rows.append(f'<tr class="failed" data-reference="{html.escape(s.reference)}"><td class="name">'
                    f'<b>{html.escape(s.reference)}</b><br><small>{html.escape(getattr(s, "name", "") or s.videofile)}'
                    f'</small></td><td colspan="{len(head) - 1}" class="error">failed: {html.escape(s.error)}</td></tr>')
    overall_text = ""
    if overall:
        overall_text = (f"<p>Overall (VoxConverse convention): DER {percent(overall['der'])} (missed "
                        f"{overall['missed_s']:.2f} s, false alarm {overall['false_alarm_s']:.2f} s, confusion "
                        f"{overall['confusion_s']:.2f} s), JER {percent(overall['jer'])}</p>")
    notes_text = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>av-diarise corpus report</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>Corpus report</h1>\n"
        f"<p>{len(done)} of {len(summaries)} videos diarised, {hours:.3f} hours of media; "
        f"{len(summaries) - len(done)} failed. Seconds per stage are those of the run that computed the stage; "
        "* marks a stage this run reused from the cache (? where that run left no time). Click a plot to open it "
        "at full size.</p>\n"
        f"{overall_text}" + (f"<ul>{notes_text}</ul>" if notes_text else "")
        + "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>\n"
        + "\n".join(rows) + "\n</tbody></table>" + _LOADED_SCRIPT + "</body></html>\n")
