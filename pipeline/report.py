"""The corpus report: one self-contained HTML page (plots embedded, no network) with a row per video."""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; white-space: nowrap; }
tr.failed td { background: #fff0f0; }
img.plot { width: 420px; display: block; margin-bottom: 4px; }
.error { color: #b00020; font-family: monospace; }
"""


# Marks on <body> how many plots the browser decoded (tests/test_corpus_report_browser.py reads it back).
_LOADED_SCRIPT = (
    "<script>window.addEventListener('load', function () {"
    "var images = Array.from(document.images);"
    "document.body.dataset.imagesLoaded = images.filter(function (i) {"
    " return i.complete && i.naturalWidth > 0; }).length;"
    "document.body.dataset.imagesTotal = images.length; });</script>")


def _embedded_png(path: Path) -> str:
    """An <img> holding the PNG itself (a data: URI), so the page needs no other file; '' when absent."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _link(out_dir: Path, path: Path, text: str) -> str:
    if not path.is_file():
        return ""
    return f'<a href="{html.escape(path.relative_to(out_dir).as_posix())}">{html.escape(text)}</a>'


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else ""


def _score_cells(score: dict[str, float] | None, with_scores: bool) -> str:
    if not with_scores:
        return ""
    if not score:
        return '<td class="num" colspan="5">no reference</td>'
    return "".join(f'<td class="num">{cell}</td>' for cell in (
        f"{100 * score['der']:.2f} %", f"{score['missed_s']:.2f}", f"{score['false_alarm_s']:.2f}",
        f"{score['confusion_s']:.2f}", f"{100 * score['jer']:.2f} %"))


def corpus_report_html(out_dir: Path, summaries: Sequence[Any], overall: dict[str, float] | None,
                       notes: Sequence[str] = ()) -> str:
    """The page: a header with totals, then per video its numbers, timeline and sync plots, and links."""
    with_scores = overall is not None or any(s.score for s in summaries)
    done = [s for s in summaries if s.status == "done"]
    hours = sum(s.duration_s for s in summaries) / 3600
    head = ["video", "duration (s)", "tracks", "speakers", "speech (s)", "seconds per stage (1/2/3/4)"]
    if with_scores:
        head += ["DER", "missed (s)", "false alarm (s)", "confusion (s)", "JER"]
    head += ["timeline and sync plots", "files"]
    rows = []
    for s in summaries:
        video_dir = out_dir / "videos" / s.reference
        if s.status != "done":
            span = len(head) - 1
            rows.append(f'<tr class="failed" data-reference="{html.escape(s.reference)}"><td>'
                        f'{html.escape(s.reference)}</td><td colspan="{span}" class="error">failed: '
                        f"{html.escape(s.error)}</td></tr>")
            continue
        stages = "/".join(_fmt(s.stage_seconds.get(f"stage{i}", 0.0), ".1f") for i in range(1, 5))
        plots = (_embedded_png(video_dir / f"{s.reference}_timeline.png")
                 + _embedded_png(video_dir / f"{s.reference}_sync.png"))
        links = "<br>".join(link for link in (
            _link(out_dir, out_dir / "rttm" / f"{s.reference}.rttm", "RTTM"),
            _link(out_dir, video_dir / f"{s.reference}_via.json", "VIA project"),
            _link(out_dir, video_dir / f"{s.reference}_annotated.mp4", "annotated video")) if link)
        rows.append(
            f'<tr data-reference="{html.escape(s.reference)}"><td>{html.escape(s.reference)}<br>'
            f'<small>{html.escape(s.videofile)}</small></td>'
            f'<td class="num">{s.duration_s:.1f}</td><td class="num">{s.tracks}</td>'
            f'<td class="num">{s.speakers}</td><td class="num">{s.speech_s:.1f}</td><td class="num">{stages}</td>'
            f"{_score_cells(s.score, with_scores)}<td>{plots}</td><td>{links}</td></tr>")
    overall_text = ""
    if overall:
        overall_text = (f"<p>Overall (VoxConverse convention): DER {100 * overall['der']:.2f} % (missed "
                        f"{overall['missed_s']:.2f} s, false alarm {overall['false_alarm_s']:.2f} s, confusion "
                        f"{overall['confusion_s']:.2f} s), JER {100 * overall['jer']:.2f} %</p>")
    notes_text = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>av-diarise corpus report</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>Corpus report</h1>\n"
        f"<p>{len(done)} of {len(summaries)} videos diarised, {hours:.3f} hours of media; "
        f"{len(summaries) - len(done)} failed.</p>\n{overall_text}"
        + (f"<ul>{notes_text}</ul>" if notes_text else "")
        + "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>\n"
        + "\n".join(rows) + "\n</tbody></table>" + _LOADED_SCRIPT + "</body></html>\n")
