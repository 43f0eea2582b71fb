"""report.html: a self-contained contact sheet of a run, laid out by its two main swept values."""

from __future__ import annotations

import html
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from batchrun.errors import ChoiceError
from batchrun.results.reportcsv import (
    INPUT_PREFIX,
    VAR_PREFIX,
    prefixed,
    read_jobs,
    split_cell,
    unguard,
)
from batchrun.store.records import JobRow, OutputFile, report_status, report_statuses
from batchrun.util import localref
from batchrun.util.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from batchrun.util.safetext import printable

# The jobs a sheet's layout is chosen from, the first ones in expansion order: every page
# of a large sweep is then laid out the same way.
SAMPLE = 2000
NOT_SET = "(not set)"  # a grid header for jobs without the field (another model's field)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#222;background:#fafafa}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table.grid{border-collapse:collapse}
.grid th,.grid td{border:1px solid #ddd;padding:4px;vertical-align:top;background:#fff}
.grid thead th,.grid tbody th{background:#f0f0f0;font-weight:600;text-align:left}
.job{display:inline-block;margin:2px;max-width:220px;vertical-align:top}
.job img,.job video{display:block;max-width:200px;max-height:200px;margin:2px 0}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;color:#fff}
.s-succeeded{background:#2e7d32}.s-failed,.s-timed_out{background:#c62828}
.s-cancelled{background:#757575}.s-pending,.s-queued,.s-running{background:#1565c0}
.s-unknown{background:#ef6c00}
.s-changed,.s-regressed{background:#c62828}.s-unchanged,.s-fixed{background:#2e7d32}
.err{color:#b71c1c;white-space:pre-wrap;font-size:12px;margin:2px 0}
details{font-size:12px}dl{margin:0}dt{font-weight:600}dd{margin:0 0 0 1em}
.counts span{margin-right:1em}
.pair{display:flex;gap:1em}.pair>div{flex:1}
.approve-box{border:1px solid #ccc;background:#fff;padding:4px 8px}
.approve-box pre{white-space:pre-wrap;word-break:break-all;user-select:all}
.live{border:1px solid #1565c0;background:#e3f2fd;padding:4px 8px}
"""


_ESCAPED: dict[str, str] = {}  # a sweep's field names, statuses and values repeat


# The characters esc changes (printable's control characters but newline and tab; HTML's
# & < > " '): text without any is its own escape.
_CHANGED = re.compile("[&<>\"'\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def esc(value: object) -> str:
    """HTML-escape any value (inputs are user text, errors are server text)."""
    text = value if type(value) is str else str(value)
    if _CHANGED.search(text) is None:
        return text
    done = _ESCAPED.get(text)
    if done is None:
        done = html.escape(printable(text, lines=True), quote=True)
        if len(text) <= 40:  # short ones repeat; a long one is a prompt or an error
            if len(_ESCAPED) > 50_000:
                _ESCAPED.clear()
            _ESCAPED[text] = done
    return done


def show(value: Any) -> str:
    """One swept value as text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if type(value) is int:  # the common swept seed: json.dumps would say the same, slower
        return str(value)
    local = localref.text(value)  # a local input file: its path
    if local is not None:
        return local
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Live:
    """What report.html says while its run goes: a line atop the page, and how often the page
    reloads itself (the final report has neither)."""

    text: str  # "running: 12/40 done (...); $0.48 spent ...; waiting on 8 jobs at the server"
    refresh_s: int


def page(title: str, body: str, *, refresh_s: int = 0) -> str:
    """A complete HTML document with the inline stylesheet; reloading itself every REFRESH_S
    seconds when given."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s > 0 else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">{refresh}'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def media(files: list[OutputFile], href: Callable[[str], str | None]) -> str:
    """Thumbnails, video players or links for a job's outputs; `href` maps a run-relative
    path to a link (None when the file is not at hand)."""
    parts = []
    for f in files:
        base = os.path.basename(f.name or f.url) or "output"
        if f.error:
            parts.append(f'<div class="err">{esc(base)}: {esc(f.error)}</div>')
            continue
        link = href(f.name) if f.name else None
        suffix = os.path.splitext(f.name)[1].lower()
        if link is None:
            if f.url.startswith(("http://", "https://")):
                parts.append(f'<a href="{esc(f.url)}" rel="noopener">{esc(base)} (remote)</a>')
            else:
                parts.append(f"<div>{esc(base)} (not at hand)</div>")
        elif suffix in IMAGE_SUFFIXES:
            at = esc(link)
            parts.append(f'<a href="{at}"><img src="{at}" alt="{esc(base)}" loading="lazy"></a>')
        elif suffix in VIDEO_SUFFIXES:
            parts.append(
                f'<video src="{esc(link)}" controls muted preload="metadata"></video>'
                f'<a href="{esc(link)}">{esc(base)}</a>'
            )
        else:
            parts.append(f'<a href="{esc(link)}">{esc(base)}</a>')
    return "".join(parts)


_BADGES: dict[str, str] = {}  # a status -> its badge


def _badge(status: str) -> str:
    done = _BADGES.get(status)
    if done is None:
        badge = esc(report_status(status))
        done = _BADGES[status] = f'<span class="badge s-{badge}">{badge}</span> '
    return done


def job_card(job: JobRow, href: Callable[[str], str | None], *, anchor: bool = True) -> str:
    """One job: status badge, outputs, error, and its inputs and vars on hover (the title, a
    `name: value` a line) and on click."""
    return job_cards([job], href, anchor=anchor)[0]


def job_cards(
    jobs: list[JobRow], href: Callable[[str], str | None], *, anchor: bool = True
) -> list[str]:
    """job_card of each of `jobs`, made a step at a time over them (a page's jobs at once:
    100,000s of cards a report): each card is its form (_card_form) filled in."""
    keys = [(j.model_id, tuple(j.inputs), tuple(j.vars), anchor) for j in jobs]
    forms = [_CARD_FORMS.get(key) or _card_form(key) for key in keys]
    ids = _escaped([j.job_id for j in jobs])
    badges = [_BADGES.get(s) or _badge(s) for s in [j.status for j in jobs]]
    files = [media(j.files, href) if j.files else "" for j in jobs]
    errors = [f'<div class="err">{esc(e)}</div>' if e else "" for e in [j.error for j in jobs]]
    shown = [
        [
            v if type(v) is str else str(v) if type(v) is int else show(v)
            for v in (*j.inputs.values(), *j.vars.values())
        ]
        for j in jobs
    ]  # fmt: skip
    if _CHANGED.search("".join([v for values in shown for v in values])) is not None:
        shown = [[esc(v) for v in values] for values in shown]
    # A card's form names its id (twice when it has an anchor) and its values (twice: its
    # title and its details) in the order _card_form puts them.
    return [
        form % (*([job_id] if anchor else []), *values, badge, media_, error, job_id, *values)
        for form, job_id, badge, media_, error, values in zip(
            forms, ids, badges, files, errors, shown, strict=True
        )
    ]


def _escaped(texts: list[str]) -> list[str]:
    """esc of each of `texts` (a page's job ids): one search of them all when none needs
    escaping (nearly every page)."""
    if _CHANGED.search("".join(texts)) is None:
        return texts
    return [esc(text) for text in texts]


# A card as a %-form of its job id (when it has an anchor), its values, badge, files, error,
# job id and its values again, by model, input and var names, and whether it has an
# anchor: a sweep has a few.
_CARD_FORMS: dict[tuple[str, tuple[str, ...], tuple[str, ...], bool], str] = {}


def _card_form(key: tuple[str, tuple[str, ...], tuple[str, ...], bool]) -> str:
    """The card form of KEY (model, input names, var names, anchor), names and model escaped
    (`esc` maps character by character, so the title escaped whole is its lines escaped one
    by one)."""
    model_id, inputs, var_names, anchor = key
    names = [esc(k) for k in inputs] + [esc(f"{{{k}}}") for k in var_names]
    names = [n.replace("%", "%%") for n in names]
    model = esc(model_id).replace("%", "%%")
    fields = [("model", model)] + [(n, "%s") for n in names]
    title = "\n".join([f"{k}: {v}" for k, v in fields])
    details = "".join([f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields])
    id_attr = ' id="%s"' if anchor else ""
    if len(_CARD_FORMS) > 1000:
        _CARD_FORMS.clear()
    form = _CARD_FORMS[key] = (
        f'<div class="job"{id_attr} title="{title}">%s%s%s'
        f"<details><summary>%s</summary><dl>{details}</dl></details></div>"
    )
    return form


@dataclass
class Dimension:
    """A swept value: its key (model, input.<f>, var.<n>) and distinct values in order."""

    key: str
    values: list[str]
    aliases: list[str] = field(default_factory=list)  # keys that vary in lockstep with it


_KEYS: dict[str, tuple[bool, str]] = {}  # a key -> (an input's?, its name)


def _parsed(key: str) -> tuple[bool, str]:
    parsed = _KEYS.get(key)
    if parsed is None:
        kind, _, name = key.partition(".")
        parsed = _KEYS[key] = (kind == "input", name)
    return parsed


def dimension_value(job: JobRow, key: str) -> str:
    if key == "model":
        return job.model_id
    is_input, name = _parsed(key)
    value = (job.inputs if is_input else job.vars).get(name, _ABSENT)
    if value is _ABSENT:
        return ""
    return value if type(value) is str else show(value)


def dimension_values(jobs: list[JobRow], key: str) -> list[str]:
    """dimension_value of each of `jobs` (a page's at once: 100,000s of values a report)."""
    if key == "model":
        return [job.model_id for job in jobs]
    is_input, name = _parsed(key)
    found = [(job.inputs if is_input else job.vars).get(name, _ABSENT) for job in jobs]
    return [
        v if type(v) is str else "" if v is _ABSENT else str(v) if type(v) is int else show(v)
        for v in found
    ]


_ABSENT = object()


def dimensions(jobs: list[JobRow]) -> list[Dimension]:
    """Every swept key with its distinct values, those that vary most first."""
    return _dimensions(jobs, field_keys(jobs))[0]


def field_keys(jobs: list[JobRow]) -> list[str]:
    """model, then every input field and var name, in first-seen order."""
    found: dict[str, None] = {"model": None}
    for job in jobs:
        for k in job.inputs:
            found[INPUT_PREFIX + k] = None
        for k in job.vars:
            found[VAR_PREFIX + k] = None
    return list(found)


def _dimensions(jobs: list[JobRow], keys: list[str]) -> tuple[list[Dimension], int]:
    """dimensions() over `keys` and the number of distinct settings (combinations of every
    key's value)."""
    # Keys that move in lockstep (a prompt templated from {color} and color itself) split the
    # jobs the same way: keep one of them, a var first, else the one with the shortest values.
    groups: dict[tuple[int, ...], list[Dimension]] = {}
    for key in keys:
        index: dict[str, int] = {}  # value -> first-seen rank: O(1) per job
        partition = tuple(index.setdefault(dimension_value(job, key), len(index)) for job in jobs)
        groups.setdefault(partition, []).append(Dimension(key, list(index)))
    dims = []
    for group in groups.values():
        # The model names a group best (a field only one model has moves with it); then a
        # var; then the field with the shortest values.
        best = min(
            group,
            key=lambda d: (
                d.key != "model",
                not d.key.startswith("var."),
                max(map(len, d.values), default=0),
            ),
        )
        best.aliases = [d.key for d in group]
        dims.append(best)
    settings = len(set(zip(*groups, strict=True))) if jobs else 0
    # Stable sort: ties keep manifest order (model, then inputs, then vars).
    return sorted(dims, key=lambda d: -len(d.values)), settings


def resolve_key(name: str, dims: list[Dimension], *, setting: str = "rows_key") -> str:
    """Map a user's name for a grid axis (seed, input.seed, color, var.color, model) to a key;
    ChoiceError naming `setting` (rows_key, cols_key) when no swept field has that name."""
    keys = [key for d in dims for key in d.aliases]
    for candidate in (name, f"{INPUT_PREFIX}{name}", f"{VAR_PREFIX}{name}"):
        if candidate in keys:
            return candidate
    raise ChoiceError(
        f"no swept field {name!r}; choose from {', '.join(keys)}",
        setting=setting,
        values=[name],
        choices=keys,
    )


def layout(
    jobs: list[JobRow], rows_key: str | None, cols_key: str | None, keys: list[str] | None = None
) -> tuple[str | None, str | None, list[str]]:
    """Pick the grid's row key, column key and the extra keys that become sections.

    The first SAMPLE jobs are what the grid is laid out by (any key of `keys`, every key
    of the run, may still be chosen).
    """
    dims, settings = _dimensions(jobs[:SAMPLE], field_keys(jobs) if keys is None else keys)
    rk = resolve_key(rows_key, dims, setting="rows_key") if rows_key else None
    ck = resolve_key(cols_key, dims, setting="cols_key") if cols_key else None
    swept = [d for d in dims if len(d.values) > 1]
    # A field with a value for (nearly) every setting, such as a prompt templated from two
    # swept vars, would make a grid of mostly empty cells or a section per job: leave it out
    # when fields with fewer values can lay the jobs out (a cell may hold several jobs).
    spread = {d.key for d in swept if 2 * len(d.values) <= settings}
    if spread:
        swept = [d for d in swept if d.key in spread or {rk, ck} & set(d.aliases)]
    free = [d.key for d in swept if not {rk, ck} & set(d.aliases)]
    if rk is None and free:
        rk = free.pop(0)
    if ck is None and free:
        ck = free.pop(0)
    return rk, ck, free


Axes = tuple[str | None, str | None, list[str]]  # rows key, columns key, section keys


@dataclass
class Layout:
    """How every page of a sheet lays its jobs out, chosen once from the first SAMPLE jobs:
    one grid (models side by side when `model` is an axis), or a section per model, each
    with its own axes."""

    axes: Axes
    by_model: dict[str, Axes] | None = None  # a section per model: each model's axes
    rows_key: str | None = None  # what was asked for, for a model first seen after the sample
    cols_key: str | None = None

    @classmethod
    def choose(
        cls, sample: list[JobRow], keys: list[str], rows_key: str | None, cols_key: str | None
    ) -> Layout:
        rk, ck, extra = layout(sample, rows_key, cols_key, keys)
        models = list(dict.fromkeys(job.model_id for job in sample))
        if len(models) > 1 and "model" not in (rk, ck):
            chosen = cls((rk, ck, extra), {}, rows_key, cols_key)
            for model in models:
                chosen.model_axes(model, [job for job in sample if job.model_id == model])
            return chosen
        if len(models) > 1:
            # Models side by side: a field some model lacks would split them into sections
            # of their own; it stays inside the cells instead.
            extra = [k for k in extra if all(_has(sample, model, k) for model in models)]
        return cls((rk, ck, extra))

    def model_axes(self, model: str, members: list[JobRow]) -> Axes:
        """A model's axes (a section per model), chosen from its first jobs seen."""
        assert self.by_model is not None
        if model not in self.by_model:
            self.by_model[model] = layout(
                members, _swept_in(self.rows_key, members), _swept_in(self.cols_key, members)
            )
        return self.by_model[model]

    def axis_keys(self) -> list[str]:
        """The keys the jobs are laid out by, on any page."""
        every = [self.axes, *(self.by_model or {}).values()]
        return list(dict.fromkeys(k for rk, ck, extra in every for k in (rk, ck, *extra) if k))


def grids(jobs: list[JobRow], chosen: Layout, href: Callable[[str], str | None]) -> list[str]:
    """The jobs of one page laid out: the axes line and a grid per section (per model)."""
    if chosen.by_model is None:
        rk, ck, extra = chosen.axes
        return [_axes(rk, ck, extra), *_sections(jobs, rk, ck, extra, href, heading="h2")]
    # Models not side by side: a section per model, each laid out by its own fields (a
    # field of one model is no axis for another). `--cols model` puts them side by side.
    out = ["<p>a section per model (<b>--cols model</b> puts them side by side)</p>"]
    for model in dict.fromkeys(job.model_id for job in jobs):
        members = [job for job in jobs if job.model_id == model]
        mrk, mck, mextra = chosen.model_axes(model, members)
        out.append(f"<h2>{esc(model)}</h2>")
        out.append(_axes(mrk, mck, mextra))
        out += _sections(members, mrk, mck, mextra, href, heading="h3")
    return out


def href(name: str) -> str:
    """A link to a file of the run folder from a page in it."""
    return quote(name.replace(os.sep, "/"))


def _grid(
    jobs: list[JobRow], rk: str | None, ck: str | None, href: Callable[[str], str | None]
) -> str:
    none = [""] * len(jobs)
    row_of = dimension_values(jobs, rk) if rk else none
    col_of = dimension_values(jobs, ck) if ck else none
    rows: dict[str, dict[str, list[str]]] = {}  # the cards of each cell
    for card, r, c in zip(job_cards(jobs, href), row_of, col_of, strict=True):
        rows.setdefault(r, {}).setdefault(c, []).append(card)
    col_vals = dict.fromkeys(col_of)
    corner = " \\ ".join(k for k in (rk, ck) if k)
    head = "".join(f"<th>{esc(c or (NOT_SET if ck else ''))}</th>" for c in col_vals)
    body = []
    for r, cells in rows.items():
        # Only occupied cells are rendered; a run of empty ones is one spanning cell, so a
        # sparse grid costs its jobs, not rows x columns.
        tds, empty = [], 0
        for c in col_vals:
            members = cells.get(c)
            if members is None:
                empty += 1
                continue
            if empty:
                tds.append(_empty(empty))
                empty = 0
            tds.append("<td>" + "".join(members) + "</td>")
        if empty:
            tds.append(_empty(empty))
        body.append(f"<tr><th>{esc(r or (NOT_SET if rk else ''))}</th>{''.join(tds)}</tr>")
    return (
        f'<table class="grid"><thead><tr><th>{esc(corner)}</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _empty(span: int) -> str:
    return "<td></td>" if span == 1 else f'<td colspan="{span}"></td>'


def render(
    title: str,
    jobs: list[JobRow],
    *,
    rows_key: str | None = None,
    cols_key: str | None = None,
    live: Live | None = None,
) -> str:
    """The contact sheet of `jobs` as one HTML page (links relative to the run folder);
    while the run goes (`live`), with its line atop and reloading itself."""
    chosen = Layout.choose(jobs[:SAMPLE], field_keys(jobs), rows_key, cols_key)
    body = "\n".join([*heading(title, status_counts(jobs), len(jobs)), *grids(jobs, chosen, href)])
    return page(title, banner(live) + body, refresh_s=live.refresh_s if live else 0)


def banner(live: Live | None) -> str:
    """The live line atop every page while the run goes; '' after."""
    return "" if live is None else f'<p class="live"><strong>live</strong> {esc(live.text)}</p>\n'


def status_counts(jobs: list[JobRow]) -> dict[str, int]:
    """Jobs per report status, in first-seen order."""
    return dict(Counter(report_statuses([job.status for job in jobs])))


def heading(title: str, counts: dict[str, int], total: int) -> list[str]:
    """The sheet's title and its jobs per status."""
    return [
        f"<h1>{esc(title)}</h1>",
        '<p class="counts">'
        + "".join(
            f'<span><span class="badge s-{esc(s)}">{esc(s)}</span> {n}</span>'
            for s, n in counts.items()
        )
        + f"<span>{total} jobs</span></p>",
    ]


def _axes(rk: str | None, ck: str | None, extra: list[str]) -> str:
    return (
        f"<p>rows: <b>{esc(rk or '-')}</b>, columns: <b>{esc(ck or '-')}</b>"
        + (f", sections: <b>{esc(', '.join(extra))}</b>" if extra else "")
        + "</p>"
    )


def _has(jobs: list[JobRow], model: str, key: str) -> bool:
    """Whether some job of `model` has a value for `key`."""
    return any(job.model_id == model and dimension_value(job, key) != "" for job in jobs)


def _swept_in(name: str | None, jobs: list[JobRow]) -> str | None:
    """NAME when it is a swept field of these jobs (one model's), else None."""
    if not name:
        return None
    try:
        resolve_key(name, dimensions(jobs))
    except ChoiceError:
        return None
    return name


def _sections(
    jobs: list[JobRow],
    rk: str | None,
    ck: str | None,
    extra: list[str],
    href: Callable[[str], str | None],
    *,
    heading: str,
) -> list[str]:
    """A grid per combination of the extra keys, titled by their values (empty ones left
    out: a field a job does not have is no label)."""
    if not extra:
        return [_grid(jobs, rk, ck, href)]
    sections: dict[tuple[str, ...], list[JobRow]] = {}
    labels = zip(*[dimension_values(jobs, k) for k in extra], strict=True)
    for job, values in zip(jobs, labels, strict=True):
        sections.setdefault(values, []).append(job)
    out = []
    for values, members in sections.items():
        label = ", ".join(f"{k}={v}" for k, v in zip(extra, values, strict=True) if v != "")
        if label:
            out.append(f"<{heading}>{esc(label)}</{heading}>")
        out.append(_grid(members, rk, ck, href))
    return out


def job_from_row(row: dict[str, str], position: int = 0) -> JobRow:
    """A JobRow rebuilt from one report.csv row (statuses there are already report statuses)."""
    names = split_cell(row.get("output_files"))
    urls = split_cell(row.get("output_urls"))
    shas = split_cell(row.get("output_sha256"))
    files = [
        OutputFile(
            url=urls[i] if i < len(urls) else "",
            name=names[i] if i < len(names) else "",
            sha256=shas[i] if i < len(shas) else "",
        )
        for i in range(max(len(names), len(urls)))
    ]
    return JobRow(
        job_id=row["job_id"],
        position=position,
        model_id=row.get("model_id", ""),
        inputs=prefixed(row, INPUT_PREFIX),
        vars=prefixed(row, VAR_PREFIX),
        status=row.get("status", ""),
        error=unguard(row.get("error", "")),
        files=files,
    )


def rows_from_report(report_csv: Path) -> list[JobRow]:
    """JobRows rebuilt from a report.csv, for when the state store is not at hand."""
    jobs = read_jobs(Path(report_csv))
    return [job_from_row(row, i) for i, row in enumerate(jobs.values())]
