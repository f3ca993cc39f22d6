"""The evaluation page as one static HTML file: tables and inline SVG bars, no script, no stylesheet or font from the
network, so it opens offline, in a mail attachment or a CI artifact.

It shows what ``notebooks/gaia_evaluate.py`` shows, from the same figures (:mod:`gaia_source.evaluation`, over the
whole dataset): pass rate per target, answers side by side, flaky prompts, retrieval hit@1 / hit@k / MRR per node,
and drift before and after.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import dlt

from .evaluation import HIT_K, drift_changes, side_by_side, summarize, target_label

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .6rem 0; } th, td { border: 1px solid #d0d7de; padding: .3rem .55rem;
       text-align: left; vertical-align: top; max-width: 40rem; } th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .muted { color: #656d76; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } svg text { font: 12px system-ui, sans-serif; }
"""

_TABLE_SUFFIX = {"chat_completions_stream": " (stream)", "responses": " (responses)"}


def _cell(value: Any, css: str = "") -> str:
    if value is None:
        text = '<span class="muted">—</span>'
    elif isinstance(value, float):
        text = f"{value:.3f}"
    else:
        text = escape(str(value))
    return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v, "num" if i in numeric else "") for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(title: str, bars: Sequence[Tuple[str, Optional[float]]], width: int = 640) -> str:
    """Horizontal bars of values in [0, 1], as inline SVG."""
    label_width, row, scale = 380, 22, width - 380 - 60
    height = row * len(bars) + 30
    parts = [f'<svg role="img" width="{width}" height="{height}" '
             f'aria-label="{escape(title)}"><text x="0" y="14" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(bars):
        y = 24 + i * row
        shown = label if len(label) <= 60 else label[:59] + "…"
        parts.append(f'<text x="0" y="{y + 14}">{escape(shown)}</text>')
        if value is not None:
            parts.append(f'<rect x="{label_width}" y="{y + 3}" width="{max(1.0, value * scale):.1f}" height="15" '
                         f'fill="#4c78a8"/><text x="{label_width + value * scale + 6:.1f}" y="{y + 14}">'
                         f"{value:.0%}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _percent(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{value:.1%}"


def render(pipeline: dlt.Pipeline, k: int = HIT_K) -> Tuple[str, Dict[str, Any]]:
    """The report's HTML and the summary it shows (see :func:`~gaia_source.evaluation.summarize`)."""
    summary = summarize(pipeline, None, k)
    labels, prompts = side_by_side(pipeline)
    changes = drift_changes(pipeline)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out: List[str] = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Gaia evaluation — {escape(pipeline.pipeline_name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Gaia evaluation — pipeline <code>{escape(pipeline.pipeline_name)}</code>, dataset "
        f"<code>{escape(pipeline.dataset_name)}</code></h1>",
        f'<p class="muted">Generated {now}. An answer passes when it contains its expected answer '
        f"({escape(summary['match'])}); each cell counts its newest answer per node and model.</p>",
    ]
    targets = summary["targets"]
    out.append("<h2>Pass rate against expected answers</h2>")
    graded = [t for t in targets if t["graded"]]
    if graded:
        out.append(_table(
            ["table", "node", "model (answered)", "model requested", "graded", "passed", "pass rate", "samples",
             "flaky prompts", "drifted prompts"],
            [[t["table"], t["node_url"], t["model"], ", ".join(t["model_requested"]), t["graded"], t["passed"],
              _percent(t["pass_rate"]), t["samples"], t["flaky_prompts"], t["drifted_prompts"]] for t in targets],
            numeric=(4, 5, 6, 7, 8, 9)))
        out.append(_bars("Pass rate per node and model", [
            (target_label(t["node_url"], t["model"]) + _TABLE_SUFFIX.get(t["table"], ""), t["pass_rate"])
            for t in graded]))
    else:
        out.append("<p><em>No prompts with an <code>expected</code> answer.</em></p>")
    out.append("<h2>Answers side by side (sample 0, newest answer per node and model)</h2>")
    if prompts:
        out.append(_table(["prompt", "expected", *labels],
                          [[p["prompt"], p["expected"], *[p["answers"].get(label) for label in labels]]
                           for p in prompts]))
    else:
        out.append("<p><em>No answers loaded.</em></p>")
    out.append("<h2>Flaky prompts (more than one distinct answer across samples)</h2>")
    if summary["flaky"]:
        out.append(_table(["table", "prompt", "node", "model", "configuration", "samples", "distinct answers"],
                          [[f["table"], f["prompt"], f["node_url"], f["model"], (f["info_hash"] or "")[:12],
                            f["samples"], f["distinct_answers"]] for f in summary["flaky"]], numeric=(5, 6)))
    else:
        sampled = any(t["samples"] > 1 for t in targets)
        out.append("<p><em>" + ("Every sampled prompt gave one answer." if sampled else
                                "No prompt was sampled more than once (<code>--samples N</code>).") + "</em></p>")
    out.append(f"<h2>Retrieval hit@1, hit@{k} and MRR</h2>")
    if summary["retrieval"]:
        out.append(_table(["node", "graded queries", "hit@1", f"hit@{k}", "MRR"],
                          [[r["node_url"], r["queries"], r["hit_at_1"], r["hit_at_k"], r["mrr"]]
                           for r in summary["retrieval"]], numeric=(1, 2, 3, 4)))
        out.append(_bars(f"hit@{k} per node", [(r["node_url"], r["hit_at_k"]) for r in summary["retrieval"]]))
    else:
        out.append("<p><em>No queries with <code>expected_sources</code>.</em></p>")
    out.append("<h2>Drift: prompts answered under more than one node configuration</h2>")
    if changes:
        out.append(_table(["prompt", "node", "model before", "model after", "before", "after", "changed"],
                          [[c["prompt"], c["node_url"], c["model_before"], c["model_after"], c["before"], c["after"],
                            "yes" if c["changed"] else "no"] for c in changes]))
    else:
        out.append("<p><em>No node changed its configuration between runs.</em></p>")
    out.append("</body></html>\n")
    return "".join(out), summary


def write_report(pipeline: dlt.Pipeline, path: str, k: int = HIT_K) -> Dict[str, Any]:
    """Write the evaluation report of ``pipeline``'s dataset to ``path``; return the summary it shows."""
    html, summary = render(pipeline, k)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(html)
    return summary
