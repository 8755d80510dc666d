"""The run report: one self-contained HTML file from a run's trace (and store, when present).

`RunReport.load(path)` reads a run (its directory, its `trace.jsonl` or its `store.sqlite`)
into one view: question and answer, every agent's timeline, every model call and code cell,
the shared context as it grew (each gist with its evidence and verification), the tasks and
the usage. `RunReport.to_html()` writes that view as a single page with inline CSS and a
few lines of inline JS: no server, no network, no CDN. Every string that came from a run is
escaped; nothing from a run is ever placed inside a <script>.

The store is read as a `StoreSnapshot` (`state.sqlite.read_snapshot`, read-only), so
writing a report never changes the run it describes.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delm_rlm.chunking import task_label
from delm_rlm.errors import RunNotFound
from delm_rlm.result import format_cost
from delm_rlm.state.protocol import StoreSnapshot
from delm_rlm.state.sqlite import read_snapshot
from delm_rlm.trace import Trace, TraceEvent
from delm_rlm.trace_charts import CHART_CSS, answer_graph_svg, timeline_svg

TRACE_FILE = "trace.jsonl"
STORE_FILE = "store.sqlite"
CORPUS_FILE = "corpus.json"  # the corpus a team run keeps beside its store (its document names)
FINAL_TASK = "final"  # the task id a team's finalizer works under
_RUN_LANE = "run"  # events that belong to no agent (run start, queue, verifier without agent)


@dataclass
class RunFiles:
    trace: Path | None
    store: Path | None

    @classmethod
    def locate(cls, path: str | Path) -> RunFiles:
        """A run directory, its trace (.jsonl) or its store (.sqlite / .db)."""
        p = Path(path)
        if not p.exists():
            raise RunNotFound(f"{p}: no such file or folder (pass a run directory, its {TRACE_FILE} or its {STORE_FILE})")
        if p.is_dir():
            trace = _one(p, TRACE_FILE, "*.jsonl")
            store = _one(p, STORE_FILE, "*.sqlite")
            if trace is None and store is None:
                raise RunNotFound(f"{p}: no {TRACE_FILE} or {STORE_FILE} in this folder; is it a run directory (see --out)?")
            return cls(trace, store)
        if p.suffix == ".jsonl":
            store = _one(p.parent, STORE_FILE, None)
            return cls(p, store)
        if p.suffix in {".sqlite", ".db", ".sqlite3"}:
            return cls(_one(p.parent, TRACE_FILE, None), p)
        raise RunNotFound(f"{p}: not a trace (.jsonl) or a store (.sqlite); pass a run directory or one of its files")


def _one(folder: Path, preferred: str, pattern: str | None) -> Path | None:
    if (folder / preferred).is_file():
        return folder / preferred
    if pattern:
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return found[0]
    return None


@dataclass
class RoleUsage:
    calls: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float | None = 0.0

    def add(self, d: dict[str, Any]) -> None:
        self.calls += 1
        self.cached += 1 if d.get("cached") else 0
        self.input_tokens += int(d.get("input_tokens") or 0)
        self.output_tokens += int(d.get("output_tokens") or 0)
        self.seconds += float(d.get("seconds") or 0.0)
        cost = d.get("cost_usd")
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + float(cost)


@dataclass
class GistRecord:
    """One gist's life: the proposal, the verifier's decision, and its stored final form."""

    gist_id: str | None
    gist: dict[str, Any]
    proposed: TraceEvent | None = None
    decisions: list[TraceEvent] = field(default_factory=list)

    @property
    def status(self) -> str:
        for e in reversed(self.decisions):
            return {"gist_admitted": "admitted", "gist_rejected": "rejected", "gist_merged": "merged"}[e.kind]
        return str(self.gist.get("status") or "pending")


@dataclass
class RunReport:
    events: list[TraceEvent]
    store: StoreSnapshot | None = None
    files: RunFiles | None = None
    names: list[str] | None = None  # the corpus's document names (from the run's corpus.json)

    # ---- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> RunReport:
        files = RunFiles.locate(path)
        events = Trace.load(files.trace) if files.trace else []
        store = read_snapshot(files.store) if files.store else None
        folder = (files.trace or files.store).parent  # type: ignore[union-attr]
        return cls(events, store, files, _corpus_names(folder / CORPUS_FILE))

    def doc_name(self, doc: Any) -> str:
        """"doc 3 (notes/a.txt)" where the document's name is known, else "doc 3"."""
        if self.names is not None and isinstance(doc, int) and 0 <= doc < len(self.names):
            return f"doc {doc} ({self.names[doc]})"
        return f"doc {doc}"

    def finalizer_totals(self) -> str | None:
        """What the finalizer's last cell printed (its totals), when it ran code."""
        cells = [e for e in self.events if e.kind == "code_cell" and e.task == FINAL_TASK and e.data.get("stdout")]
        if not cells:
            return None
        lines = str(cells[-1].data["stdout"]).strip().splitlines()
        return "\n".join(lines[-16:])

    # ---- the run at a glance ------------------------------------------------------------

    def _first(self, kind: str) -> TraceEvent | None:
        return next((e for e in self.events if e.kind == kind), None)

    def _last(self, kind: str) -> TraceEvent | None:
        return next((e for e in reversed(self.events) if e.kind == kind), None)

    @property
    def question(self) -> str:
        started = self._first("run_started")
        if started and started.data.get("question"):
            return str(started.data["question"])
        return str((self.store.meta.get("question") if self.store else None) or "")

    @property
    def method(self) -> str:
        started = self._first("run_started")
        return str((started.data.get("method") if started else None) or (self.store.meta.get("method") if self.store else None) or "")

    @property
    def answer(self) -> str | None:
        for kind in ("run_finished", "finalize"):
            e = self._last(kind)
            if e and e.data.get("answer") is not None:
                return str(e.data["answer"])
        if self.store and self.store.meta.get("answer") is not None:
            return str(self.store.meta["answer"])
        return None

    @property
    def status(self) -> str:
        e = self._last("run_finished")
        if e:
            return str(e.data.get("status", "finished"))
        if self.store and self.store.meta.get("status"):
            return str(self.store.meta["status"])
        return "unfinished (no run_finished event)"

    @property
    def seconds(self) -> float:
        return max((e.t for e in self.events), default=0.0)

    @property
    def answer_gist_ids(self) -> list[str]:
        for kind in ("finalize", "run_finished"):
            e = self._last(kind)
            if e and e.data.get("gist_ids"):
                return [str(g) for g in e.data["gist_ids"]]
        return []

    def lanes(self) -> dict[str, list[TraceEvent]]:
        """Events per agent, in order; run-level events in the 'run' lane."""
        lanes: dict[str, list[TraceEvent]] = {}
        for e in self.events:
            lanes.setdefault(e.agent or _RUN_LANE, []).append(e)

        def natural(name: str) -> tuple[bool, list[Any]]:  # run first, then a1, a2, ..., a10
            return name != _RUN_LANE, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]

        return {name: lanes[name] for name in sorted(lanes, key=natural)}

    def usage_by_role(self) -> dict[str, RoleUsage]:
        by_role: dict[str, RoleUsage] = defaultdict(RoleUsage)
        for e in self.events:
            if e.kind == "model_call":
                by_role[str(e.data.get("role") or "?")].add(e.data)
        return dict(by_role)

    def usage_by_agent(self) -> dict[str, RoleUsage]:
        by_agent: dict[str, RoleUsage] = defaultdict(RoleUsage)
        for e in self.events:
            if e.kind == "model_call":
                by_agent[e.agent or _RUN_LANE].add(e.data)
        return dict(by_agent)

    def gists(self) -> list[GistRecord]:
        """Every gist in the order it entered the shared context (proposal time, then id)."""
        records: dict[str, GistRecord] = {}
        anonymous: list[GistRecord] = []
        order: list[GistRecord] = []
        for e in self.events:
            if e.kind == "gist_proposed":
                gist = dict(e.data.get("gist") or {})
                gid = gist.get("id")
                rec = GistRecord(gid, gist, proposed=e)
                if gid:
                    records[gid] = rec
                else:
                    anonymous.append(rec)
                order.append(rec)
            elif e.kind in ("gist_admitted", "gist_rejected", "gist_merged"):
                gid = e.data.get("gist_id")
                rec = records.get(str(gid)) if gid else None
                if rec is None:
                    rec = GistRecord(str(gid) if gid else None, {})
                    if gid:
                        records[str(gid)] = rec
                    order.append(rec)
                rec.decisions.append(e)
        # A gist the store holds without events of its own (the FAILURE record of a rejection)
        # goes right after the rejection that created it.
        failure_of = {str(e.data["failure_gist_id"]): e.seq for e in self.events
                      if e.kind == "gist_rejected" and e.data.get("failure_gist_id")}
        for stored in self.store.gists if self.store else []:
            gid = stored.get("id")
            if gid in records:
                records[gid].gist = {**records[gid].gist, **stored}
            else:
                rec = GistRecord(gid, stored)
                records[str(gid)] = rec
                order.append(rec)

        def placed(rec: GistRecord) -> float:
            first = rec.proposed or (rec.decisions[0] if rec.decisions else None)
            if first is not None:
                return first.seq
            return failure_of.get(str(rec.gist_id), float("inf")) + 0.5

        return sorted(order, key=placed)

    def task_agents(self) -> dict[str, list[str]]:
        """Who claimed each task, in order (several agents when a task was retried)."""
        found: dict[str, list[str]] = {}
        for e in self.events:
            if e.kind == "task_claimed" and e.task and e.agent:
                agents = found.setdefault(e.task, [])
                if e.agent not in agents:
                    agents.append(e.agent)
        return found

    def tasks(self) -> list[dict[str, Any]]:
        """Every task with its goal, state, attempts, gists and the agents that worked on it
        (`agents`; the store's lease holder is empty once a task is done)."""
        claimed = self.task_agents()
        listed = self._tasks()
        for t in listed:
            holder = [t["lease_holder"]] if t.get("lease_holder") else []
            t["agents"] = claimed.get(str(t.get("id")), holder) or holder
        return listed

    def _tasks(self) -> list[dict[str, Any]]:
        if self.store and self.store.tasks:
            return [dict(t) for t in self.store.tasks]
        tasks: dict[str, dict[str, Any]] = {}
        for e in self.events:
            # Only queue events make a task; gists and cells merely name the task they served.
            if not e.task or not e.kind.startswith("task_"):
                continue
            t = tasks.setdefault(e.task, {"id": e.task, "goal": "", "deps": [], "state": "", "attempts": 0,
                                          "lease_holder": None, "gist_ids": [], "last_error": None})
            if e.kind == "task_created":
                t["goal"] = e.data.get("goal", "")
                t["deps"] = e.data.get("deps") or []
                t["state"] = "pending"
            elif e.kind == "task_claimed":
                t["state"], t["lease_holder"] = "claimed", e.agent
                t["attempts"] = e.data.get("attempt", t["attempts"] + 1)
            elif e.kind == "task_done":
                t["state"], t["gist_ids"] = "done", e.data.get("gist_ids") or []
            elif e.kind == "task_failed":
                t["state"], t["last_error"] = "failed", e.data.get("reason")
            elif e.kind == "task_requeued":
                t["state"], t["last_error"] = "ready", e.data.get("reason")
        return list(tasks.values())

    # ---- HTML ---------------------------------------------------------------------------

    def to_html(self) -> str:
        return _Page(self).render()

    def write_html(self, out: str | Path) -> Path:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.to_html(), encoding="utf-8")
        return out


def write_html(run: str | Path, out: str | Path) -> Path:
    """Write the HTML report of the run at `run` (directory, trace or store) to `out`."""
    return RunReport.load(run).write_html(out)


# ---- rendering -------------------------------------------------------------------------------

_GIST_REF = re.compile(r"\b(g[1-9]\d*)\b")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _anchor(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", value)


def _corpus_names(path: Path) -> list[str] | None:
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("names")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


class _Page:
    def __init__(self, report: RunReport) -> None:
        self.r = report
        self.gists = report.gists()
        self.known_gists = {g.gist_id for g in self.gists if g.gist_id}

    def link_gists(self, text: Any) -> str:
        """Escape `text`, then turn mentions of known gist ids into links."""
        escaped = esc(text)
        return _GIST_REF.sub(
            lambda m: f'<a class="gref" href="#gist-{m.group(1)}">{m.group(1)}</a>' if m.group(1) in self.known_gists else m.group(1),
            escaped,
        )

    def render(self) -> str:
        r = self.r
        title = f"delm-rlm run: {r.question[:80]}" if r.question else "delm-rlm run"
        body = "\n".join([
            self.header(),
            self.nav(),
            self.graph_section(),
            self.usage_section(),
            self.context_section(),
            self.tasks_section(),
            self.timeline_section(),
        ])
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # The page must work offline and must not fetch anything: forbid it outright.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
            f"<title>{esc(title)}</title><style>{_CSS}{CHART_CSS}</style></head>\n<body>\n{body}\n"
            f"<script>{_JS}</script>\n</body></html>\n"
        )

    def header(self) -> str:
        r = self.r
        answer = r.answer
        ans_html = (f'<div class="answer" id="answer">{self.link_gists(answer)}</div>' if answer is not None
                    else '<div class="answer none" id="answer">no answer</div>')
        rests = r.answer_gist_ids
        rests_html = ("<p class=\"rests\">Rests on: " + ", ".join(self.link_gists(g) for g in rests) + "</p>") if rests else ""
        started = r._first("run_started")
        corpus = started.data.get("corpus") if started else None
        chips = [("method", r.method or "?"), ("status", r.status), ("seconds", f"{r.seconds:.1f}"),
                 ("agents", str(len([a for a in r.lanes() if a != _RUN_LANE]))), ("events", str(len(r.events)))]
        if r.files and r.files.trace:
            chips.append(("trace", r.files.trace.name))
        chip_html = "".join(f'<span class="chip"><b>{esc(k)}</b> {esc(v)}</span>' for k, v in chips)
        corpus_html = f"<details class=\"corpus\"><summary>Corpus</summary><pre>{esc(corpus)}</pre></details>" if corpus else ""
        config = started.data.get("config") if started else None
        config_html = (f"<details class=\"corpus\"><summary>Configuration</summary><pre>{esc(json.dumps(config, indent=2, default=str))}</pre></details>"
                       if config else "")
        return (
            f"<header><h1>delm-rlm run report</h1><div class=\"chips\">{chip_html}</div>"
            f"<h2>Question</h2><div class=\"question\" id=\"question\">{esc(r.question) or '<i>(not recorded)</i>'}</div>"
            f"<h2>Answer</h2>{ans_html}{rests_html}{corpus_html}{config_html}</header>"
        )

    def nav(self) -> str:
        lanes = list(self.r.lanes())
        buttons = "".join(
            f'<button type="button" class="lane-toggle on" data-lane="{esc(_anchor(a))}">{esc(a)}</button>' for a in lanes
        )
        return (
            "<nav><a href=\"#answer-graph\">Answer graph</a> <a href=\"#usage\">Usage</a> <a href=\"#context\">Shared context</a> "
            "<a href=\"#tasks\">Tasks</a> <a href=\"#timeline\">Timeline</a>"
            f"<span class=\"lanes\">Agents: {buttons}</span>"
            "<button type=\"button\" id=\"expand-all\">expand all</button></nav>"
        )

    def graph_section(self) -> str:
        """The gists the answer rests on, joined to it, with the finalizer's totals beside it."""
        by_id = {g.gist_id: g.gist for g in self.gists if g.gist_id}
        rests = [{"id": gid, **by_id.get(gid, {})} for gid in self.r.answer_gist_ids]
        svg = answer_graph_svg(rests, self.r.answer, self.r.finalizer_totals())
        if not svg:
            return ""
        return f'<section id="answer-graph"><h2>What the answer rests on</h2>{svg}</section>'

    def usage_section(self) -> str:
        by_role = self.r.usage_by_role()
        rows = []
        total = RoleUsage()
        for role, u in sorted(by_role.items()):
            rows.append(self._usage_row(role, u))
            total.calls += u.calls
            total.cached += u.cached
            total.input_tokens += u.input_tokens
            total.output_tokens += u.output_tokens
            total.seconds += u.seconds
            total.cost_usd = None if u.cost_usd is None or total.cost_usd is None else total.cost_usd + u.cost_usd
        rows.append(self._usage_row("total", total, cls="total"))
        by_agent = "".join(self._usage_row(a, u) for a, u in sorted(self.r.usage_by_agent().items()))
        reported = self.r._last("run_finished")
        reported_html = ""
        ledger = reported.data.get("usage") if reported else None
        if isinstance(ledger, dict):
            cost = ledger.get("cost_usd")
            reported_html = (
                "<p class=\"muted\">The run's own ledger: "
                f"{int(ledger.get('calls') or 0):,} calls ({int(ledger.get('cached_calls') or 0):,} cached, "
                f"{int(ledger.get('failed_calls') or 0):,} failed), {int(ledger.get('input_tokens') or 0):,} input and "
                f"{int(ledger.get('output_tokens') or 0):,} output tokens, {float(ledger.get('seconds') or 0):.2f} model seconds, "
                f"cost {format_cost(None if cost is None else float(cost))}.</p>"
            )
        head = "<tr><th></th><th>calls</th><th>cached</th><th>input tokens</th><th>output tokens</th><th>model seconds</th><th>cost (USD)</th></tr>"
        return (
            f"<section id=\"usage\"><h2>Usage</h2><table class=\"usage\"><caption>by role</caption>{head}{''.join(rows)}</table>"
            f"<table class=\"usage\"><caption>by agent</caption>{head}{by_agent}</table>{reported_html}</section>"
        )

    @staticmethod
    def _usage_row(name: str, u: RoleUsage, cls: str = "") -> str:
        return (
            f"<tr class=\"{cls}\"><th>{esc(name)}</th><td>{u.calls:,}</td><td>{u.cached:,}</td><td>{u.input_tokens:,}</td>"
            f"<td>{u.output_tokens:,}</td><td>{u.seconds:.2f}</td><td>{esc(format_cost(u.cost_usd))}</td></tr>"
        )

    def context_section(self) -> str:
        if not self.gists:
            return "<section id=\"context\"><h2>Shared context</h2><p class=\"muted\">No gists were proposed in this run.</p></section>"
        counts: dict[str, int] = defaultdict(int)
        for g in self.gists:
            counts[g.status] += 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        cards = "\n".join(self._gist_card(g, i) for i, g in enumerate(self.gists))
        return f"<section id=\"context\"><h2>Shared context as it grew</h2><p class=\"muted\">{esc(summary)}</p>{cards}</section>"

    def _gist_card(self, rec: GistRecord, index: int) -> str:
        g = rec.gist
        gid = rec.gist_id or f"proposal-{index}"
        kind = str(g.get("kind") or "?")
        status = rec.status
        prov = g.get("provenance") or {}
        who = " / ".join(str(x) for x in (prov.get("agent_id"), prov.get("task_id"), prov.get("model")) if x)
        lines = [f'<article class="gist {esc(status)}" id="gist-{esc(_anchor(gid))}">',
                 f'<div class="gist-head"><span class="gid">{esc(rec.gist_id or "(no id)")}</span>'
                 f'<span class="kind">{esc(kind.upper())}</span><span class="badge {esc(status)}">{esc(status)}</span>'
                 f'<span class="muted">{esc(who)}</span></div>',
                 f'<p class="gist-text">{self.link_gists(g.get("text", ""))}</p>']
        if g.get("summary"):
            lines.append(f'<p class="summary"><b>Summary.</b> {self.link_gists(g["summary"])}</p>')
        if g.get("value") is not None:
            lines.append(f'<p><b>Claimed value:</b> <code>{esc(json.dumps(g["value"], default=str))}</code>'
                         + (f" (tolerance {esc(g.get('tolerance'))})" if g.get("tolerance") else "") + "</p>")
        evidence = g.get("evidence") or []
        rerun = any(ev.get("type") == "code" and ev.get("code") == g.get("check") for ev in evidence)
        if g.get("check") and not rerun:
            lines.append(f'<div class="label">check</div><pre class="code">{esc(g["check"])}</pre>')
        for ev in evidence:
            if ev.get("type") == "code" and g.get("check") and ev.get("code") == g.get("check"):
                lines.append(f'<div class="label">check, re-run by the verifier in a fresh sandbox, and its output</div>'
                             f'<pre class="code">{esc(ev.get("code"))}</pre><pre class="out">{esc(ev.get("output"))}</pre>')
            elif ev.get("type") == "quote":
                lines.append(f'<div class="label">quote, {esc(self.r.doc_name(ev.get("doc")))} [{esc(ev.get("start"))}:{esc(ev.get("end"))}]</div>'
                             f'<blockquote>{esc(ev.get("quote"))}</blockquote>')
            else:
                lines.append(f'<div class="label">code evidence</div><pre class="code">{esc(ev.get("code"))}</pre>'
                             f'<pre class="out">{esc(ev.get("output"))}</pre>')
        verification = []
        if rec.proposed is not None:
            verification.append(f"proposed at {rec.proposed.t:.2f}s by {esc(rec.proposed.agent or '?')}")
        for d in rec.decisions:
            if d.kind == "gist_admitted":
                checks = ", ".join(map(str, d.data.get("checks") or [])) or "none listed"
                verification.append(f"<span class=\"ok\">admitted</span> at {d.t:.2f}s (checks: {esc(checks)})"
                                    + (f": {self.link_gists(d.data.get('note'))}" if d.data.get("note") else ""))
            elif d.kind == "gist_rejected":
                fail = d.data.get("failure_gist_id")
                verification.append(f"<span class=\"bad\">rejected</span> at {d.t:.2f}s: {self.link_gists(d.data.get('reason'))}"
                                    + (f" (failure recorded as {self.link_gists(fail)})" if fail else ""))
            else:
                verification.append(f"merged at {d.t:.2f}s into {self.link_gists(d.data.get('into'))}")
        if not rec.decisions and g.get("note"):
            verification.append(f"verifier's note: {self.link_gists(g['note'])}")
        if verification:
            lines.append('<div class="verification">' + "<br>".join(verification) + "</div>")
        lines.append("</article>")
        return "\n".join(lines)

    def tasks_section(self) -> str:
        tasks = self.r.tasks()
        if not tasks:
            return "<section id=\"tasks\"><h2>Tasks</h2><p class=\"muted\">No task queue in this run.</p></section>"
        rows = []
        for t in tasks:
            goal = str(t.get("goal") or "")
            label = task_label(goal, self.r.names)
            goal_html = (f'<b>{esc(label)}</b><details><summary>goal</summary>{self.link_gists(goal)}</details>'
                         if label != goal else self.link_gists(goal))
            rows.append(
                f"<tr><th>{esc(t.get('id'))}</th><td>{goal_html}</td><td>{esc(', '.join(map(str, t.get('deps') or [])))}</td>"
                f"<td>{esc(t.get('state'))}</td><td>{esc(t.get('attempts'))}</td><td>{esc(', '.join(t.get('agents') or []))}</td>"
                f"<td>{self.link_gists(', '.join(map(str, t.get('gist_ids') or [])))}</td><td>{esc(t.get('last_error') or '')}</td></tr>"
            )
        head = "<tr><th>task</th><th>goal</th><th>deps</th><th>state</th><th>attempts</th><th>agent</th><th>gists</th><th>last error</th></tr>"
        return f"<section id=\"tasks\"><h2>Tasks</h2><table class=\"tasks\">{head}{''.join(rows)}</table></section>"

    def timeline_section(self) -> str:
        parts = ["<section id=\"timeline\"><h2>Timeline per agent</h2>", timeline_svg(self.r.events, self.r.names)]
        for lane, events in self.r.lanes().items():
            items = "\n".join(self._event(e) for e in events)
            parts.append(f'<div class="lane" data-lane="{esc(_anchor(lane))}"><h3>{esc(lane)}</h3><ol class="events">{items}</ol></div>')
        parts.append("</section>")
        return "\n".join(parts)

    def _event(self, e: TraceEvent) -> str:
        d = e.data
        task = f'<span class="task">{esc(e.task)}</span>' if e.task else ""
        head = f'<span class="t">{e.t:8.2f}s</span><span class="kind k-{esc(e.kind)}">{esc(e.kind)}</span>{task}'
        body = ""
        if e.kind == "code_cell":
            flags = []
            if d.get("timed_out"):
                flags.append("timed out")
            if d.get("duration_s") is not None:
                flags.append(f"{float(d['duration_s']):.2f}s")
            body = (f'<span class="muted">turn {esc(d.get("iteration"))} · {esc(", ".join(flags))}</span>'
                    f'<pre class="code">{esc(d.get("code"))}</pre>')
            if d.get("stdout"):
                body += f'<pre class="out">{esc(d.get("stdout"))}</pre>'
            if d.get("stderr"):
                body += f'<pre class="out err">{esc(d.get("stderr"))}</pre>'
            if d.get("error"):
                body += f'<pre class="out err">{esc(d.get("error"))}</pre>'
            if not (d.get("stdout") or d.get("stderr") or d.get("error")):
                body += '<pre class="out muted">(no output)</pre>'
            return f'<li class="ev cell" id="ev-{e.seq}">{head}{body}</li>'
        if e.kind == "model_call":
            cost = d.get("cost_usd")
            summary = (f"{esc(d.get('role'))} · {esc(d.get('model'))} · {int(d.get('input_tokens') or 0):,} in / "
                       f"{int(d.get('output_tokens') or 0):,} out · {float(d.get('seconds') or 0):.2f}s"
                       + f" · cost {format_cost(None if cost is None else float(cost))}" + (" · cached" if d.get("cached") else ""))
            body = (f'<span class="muted">{summary}</span>'
                    f'<details><summary>prompt (tail)</summary><pre class="prompt">{esc(d.get("prompt"))}</pre></details>'
                    f'<details class="response"><summary>response</summary><pre class="response">{esc(d.get("response"))}</pre></details>')
            return f'<li class="ev call" id="ev-{e.seq}">{head}{body}</li>'
        if e.kind == "gist_proposed":
            g = d.get("gist") or {}
            gid = g.get("id")
            ref = self.link_gists(gid) if gid else ""
            body = f' {ref} <span class="kind">{esc(str(g.get("kind", "")).upper())}</span> {self.link_gists(g.get("text"))}'
        elif e.kind == "gist_admitted":
            body = f' {self.link_gists(d.get("gist_id"))} <span class="ok">admitted</span> {self.link_gists(d.get("note") or "")}'
        elif e.kind == "gist_rejected":
            body = f' {self.link_gists(d.get("gist_id") or "")} <span class="bad">rejected</span>: {self.link_gists(d.get("reason"))}'
        elif e.kind == "agent_step":
            body = f' turn {esc(d.get("iteration"))}: {self.link_gists(d.get("action"))}'
        elif e.kind in ("finalize", "run_finished"):
            body = f' <b>{self.link_gists(d.get("answer"))}</b>' + (f' ({esc(d.get("status"))})' if d.get("status") else "")
            if d.get("gist_ids"):
                body += " rests on " + ", ".join(self.link_gists(g) for g in d["gist_ids"])
        elif e.kind == "run_started":
            body = f' method {esc(d.get("method") or "?")}; question and corpus at the top of the page'
        else:
            shown = {k: v for k, v in d.items() if k not in ("config",)}
            if shown:
                body = f' <span class="data">{self.link_gists(json.dumps(shown, default=str, ensure_ascii=False)[:2000])}</span>'
        cls = " err" if e.kind in ("error", "task_failed", "budget_exceeded", "gist_rejected", "model_call_failed") else ""
        return f'<li class="ev{cls}" id="ev-{e.seq}">{head}{body}</li>'


_CSS = """
:root{--fg:#1d232b;--muted:#667085;--bg:#fbfbfd;--card:#fff;--line:#e3e6ec;--ok:#137333;--bad:#b3261e;--accent:#2957c4}
*{box-sizing:border-box}body{margin:0 auto;max-width:1200px;padding:16px 24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:15px;margin:12px 0 6px}
.chips{display:flex;flex-wrap:wrap;gap:6px}.chip{background:#eef1f6;border-radius:10px;padding:2px 8px;font-size:12px}
.question{white-space:pre-wrap;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px;max-height:300px;overflow:auto}
.answer{white-space:pre-wrap;font-size:18px;font-weight:600;background:#eef7ee;border:1px solid #b9dcbc;border-radius:6px;padding:10px}
.answer.none{background:#fbeeee;border-color:#e6b8b5;color:var(--bad)}
nav{position:sticky;top:0;background:var(--bg);padding:8px 0;border-bottom:1px solid var(--line);z-index:2;display:flex;flex-wrap:wrap;gap:10px;align-items:center}
nav a{color:var(--accent);text-decoration:none}.lanes{margin-left:auto}button{font:inherit;font-size:12px;border:1px solid var(--line);background:#fff;border-radius:10px;padding:1px 8px;cursor:pointer}
button.on{background:var(--accent);color:#fff;border-color:var(--accent)}
table{border-collapse:collapse;margin:6px 0 12px;background:var(--card)}td,th{border:1px solid var(--line);padding:3px 8px;text-align:right;vertical-align:top}
table.tasks td,table.tasks th{text-align:left}caption{text-align:left;color:var(--muted);font-size:12px}tr.total{font-weight:700}
.gist{background:var(--card);border:1px solid var(--line);border-left:4px solid var(--muted);border-radius:6px;padding:8px 12px;margin:8px 0}
.gist.admitted{border-left-color:var(--ok)}.gist.rejected{border-left-color:var(--bad)}.gist:target{outline:2px solid var(--accent)}
.gist-head{display:flex;gap:8px;align-items:center}.gid{font-weight:700;font-family:ui-monospace,monospace}.kind{font-size:11px;letter-spacing:.05em;color:var(--muted)}
.badge{font-size:11px;border-radius:8px;padding:0 6px;background:#eee}.badge.admitted{background:#e3f3e5;color:var(--ok)}.badge.rejected{background:#fbe4e2;color:var(--bad)}
.gist-text{margin:6px 0;font-weight:500}.summary{white-space:pre-wrap}.label{font-size:11px;color:var(--muted);margin-top:6px}
blockquote{margin:2px 0;padding:4px 10px;border-left:3px solid var(--line);white-space:pre-wrap;background:#f7f8fa}
.verification{font-size:12px;color:var(--muted);margin-top:6px}.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}
pre{margin:4px 0;padding:6px 8px;border-radius:4px;white-space:pre-wrap;word-break:break-word;max-height:420px;overflow:auto;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre.code{background:#1f2430;color:#e6e9ef}pre.out{background:#f2f4f7;border:1px solid var(--line)}pre.err{background:#fdf0ef;color:var(--bad)}
.lane{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:4px 12px;margin:10px 0}.lane.hidden{display:none}
ol.events{list-style:none;padding:0;margin:0}.ev{padding:4px 0;border-top:1px dashed var(--line)}.ev.err .kind{color:var(--bad)}
.t{display:inline-block;width:76px;color:var(--muted);font-family:ui-monospace,monospace;font-size:12px}.ev .kind{font-weight:600;margin-right:6px}
.task{font-family:ui-monospace,monospace;font-size:12px;background:#eef1f6;border-radius:6px;padding:0 5px;margin-right:6px}
.muted{color:var(--muted)}.data{font-family:ui-monospace,monospace;font-size:12px;word-break:break-word}a.gref{color:var(--accent);font-family:ui-monospace,monospace}
details summary{cursor:pointer;color:var(--muted);font-size:12px}
"""

# DOM only; no data from the run is embedded here.
_JS = """
(function () {
  'use strict';
  var toggles = document.querySelectorAll('button.lane-toggle');
  Array.prototype.forEach.call(toggles, function (button) {
    button.addEventListener('click', function () {
      var lane = button.getAttribute('data-lane');
      var on = !button.classList.contains('on');
      button.classList.toggle('on', on);
      Array.prototype.forEach.call(document.querySelectorAll('div.lane'), function (div) {
        if (div.getAttribute('data-lane') === lane) { div.classList.toggle('hidden', !on); }
      });
    });
  });
  var expand = document.getElementById('expand-all');
  if (expand) {
    expand.addEventListener('click', function () {
      var open = expand.textContent === 'expand all';
      Array.prototype.forEach.call(document.querySelectorAll('details'), function (d) { d.open = open; });
      expand.textContent = open ? 'collapse all' : 'expand all';
    });
  }
})();
"""
