"""Drawing one trace in the terminal: its spans as a tree, each with a bar on a shared timeline.

Pure rendering (spans in, rich ``Text`` lines out); ``m2a traces show`` prints what this returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from rich.text import Text

from m2a.telemetry.store import SpanRow

KEY_PREFIXES = ("gen_ai.", "m2a.")
MAX_VALUE = 48
MAX_EVENTS = 5
_KIND_STYLE = {"server": "cyan", "client": "magenta", "producer": "yellow", "consumer": "yellow"}


def tree(spans: list[SpanRow]) -> Iterator[tuple[int, SpanRow]]:
    """``(depth, span)`` depth-first, children by start time; a span whose parent is not in the trace
    (sent by a process that did not report here) is drawn as a root."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanRow]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids and span.parent_id != span.span_id else None
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.start_ns, -s.end_ns, s.span_id))
    seen: set[str] = set()
    stack = [(0, s) for s in reversed(children.get(None, []))]
    while stack:
        depth, span = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        yield depth, span
        stack.extend((depth + 1, c) for c in reversed(children.get(span.span_id, [])))
    for span in spans:  # parent cycles: never reachable from a root, still shown
        if span.span_id not in seen:
            seen.add(span.span_id)
            yield 0, span


def ms(ns: int) -> str:
    return f"{ns / 1e6:,.1f} ms"


def when(ns: int, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Local time of a Unix-nanosecond timestamp."""
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime(fmt)


def key_attributes(span: SpanRow) -> list[str]:
    """``key=value`` for the gen_ai.* and m2a.* attributes, values cut to a readable length."""
    out = []
    for key in sorted(k for k in span.attributes if k.startswith(KEY_PREFIXES)):
        value = str(span.attributes[key])
        out.append(f"{key}={value if len(value) <= MAX_VALUE else value[: MAX_VALUE - 1] + '…'}")
    return out


def bar(start: int, end: int, t0: int, total: int, width: int) -> tuple[int, int]:
    """Offset and length (cells, length ≥ 1) of ``[start, end]`` on a ``width``-cell timeline."""
    offset = min(width - 1, max(0, int((start - t0) * width / total)))
    length = max(1, round((end - start) * width / total))
    return offset, min(length, width - offset)


def waterfall(spans: list[SpanRow], console_width: int = 100) -> list[Text]:
    """The lines of ``m2a traces show``: a header, then one line per span (attributes and events
    indented beneath it)."""
    if not spans:
        return []
    t0 = min(s.start_ns for s in spans)
    total = max(1, max(s.end_ns for s in spans) - t0)
    rows = list(tree(spans))
    labels = [("  " * depth) + ("└ " if depth else "") + span.name for depth, span in rows]
    name_w = min(40, max(len(label) for label in labels))
    width = max(20, min(60, console_width - name_w - 30))
    ms_w = max(len(ms(total)), 8)
    header = Text(f"{'SPAN':<{name_w}} │", style="bold")
    scale = ms(0)[:-3] + " " * width
    end_label = ms(total)
    header.append(scale[: width - len(end_label)] + end_label + "│", style="dim")
    header.append(f" {'DURATION':>{ms_w}}  SERVICE", style="bold")
    lines = [header]
    for (depth, span), label in zip(rows, labels, strict=True):
        failed = span.status == "error"
        style = "red" if failed else _KIND_STYLE.get(span.kind, "blue")
        offset, length = bar(span.start_ns, span.end_ns, t0, total, width)
        line = Text(f"{label[:name_w]:<{name_w}} ")
        line.append("│", style="dim")
        line.append(" " * offset)
        line.append("█" * length, style=style)
        line.append(" " * (width - offset - length))
        line.append("│", style="dim")
        line.append(f" {ms(span.duration_ns):>{ms_w}}  ")
        line.append(span.service, style="dim")
        if failed:
            line.append("  ERROR", style="bold red")
        lines.append(line)
        lines.extend(_details(span, depth, t0, total, width, name_w))
    return lines


def _details(span: SpanRow, depth: int, t0: int, total: int, width: int, name_w: int) -> list[Text]:
    indent = "  " * (depth + 1) + "  "
    out = []
    if span.status == "error" and span.status_message:
        out.append(Text(f"{indent}error: {span.status_message}", style="red"))
    attrs = key_attributes(span)
    if attrs:
        out.append(Text(indent + "  ".join(attrs), style="dim"))
    for event in span.events[:MAX_EVENTS]:
        time_ns = int(event.get("time_ns") or span.start_ns)
        offset, _ = bar(time_ns, time_ns, t0, total, width)
        label = f"{indent}◆ {event.get('name', '')}"
        line = Text(f"{label[:name_w]:<{name_w}} ", style="dim")
        line.append("│" + " " * offset, style="dim")
        line.append("◆", style="yellow")
        line.append(" " * (width - offset - 1) + "│", style="dim")
        extra = _event_attrs(event.get("attributes") or {})
        line.append(f" +{ms(time_ns - span.start_ns)}{extra}", style="dim")
        out.append(line)
    if len(span.events) > MAX_EVENTS:
        out.append(Text(f"{indent}… {len(span.events) - MAX_EVENTS} more event(s)", style="dim"))
    return out


def _event_attrs(attributes: dict[str, Any]) -> str:
    shown = [f"{k}={str(v)[:MAX_VALUE]}" for k, v in list(attributes.items())[:3]]
    return ("  " + " ".join(shown)) if shown else ""
