"""Partials must agree (issue 12): schema and coverage at admission (the verifier's agreement
stage, a real store and a real check kernel), and again at finalization (the run refuses
mixed schemas; the finalizer's `add_up` total refuses a key some partials cannot vouch for).

The corpora are label-keyed records and log lines, never the OOLONG layout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from delm_rlm import Budget, RunStore, ScriptedLM, Team, Trace
from delm_rlm.gists import Gist, GistKind, Provenance
from delm_rlm.state.context import SharedContext
from delm_rlm.team.finalizer import ADD_UP_CODE
from delm_rlm.verify import AgreementRules, Verifier, disagreement, lacking_keys
from delm_rlm.verify.agreement import coverage_floor, covers_records, schema_problem
from sandbox import make_sandbox

LABELS = ["entity", "location", "numeric value"]


def _records(n: int, offset: int) -> str:
    return "".join(f"id: {offset + i} | text: item {offset + i} | label: {LABELS[(offset + i) % 3]}\n" for i in range(n))


DOCS = [_records(160, 0), _records(160, 160), _records(160, 320)]


def _counts(doc: str) -> dict[str, int]:
    return dict(Counter(line.rsplit("label: ", 1)[1] for line in doc.splitlines()))


COUNT_CHECK = (
    "from collections import Counter\n"
    "print(dict(Counter(line.rsplit('label: ', 1)[1] for line in chunk.splitlines())))"
)


def _partial(task: str, value: object, gid_text: str | None = None) -> Gist:
    return Gist(kind=GistKind.PARTIAL, text=gid_text or f"{task}: {value}", value=value,
                provenance=Provenance(task_id=task, agent_id="a1"))


def _verifier(tmp_path: Path) -> tuple[Verifier, SharedContext, RunStore]:
    store = RunStore(tmp_path / "store.sqlite")
    context = SharedContext(store, DOCS)
    verifier = Verifier(context, DOCS, trace=Trace(tmp_path / "trace.jsonl"), judge=False,
                        sandbox_factory=lambda: make_sandbox("local"))
    verifier.agreement = AgreementRules(context, chunk_tasks={"t1", "t2", "t3"})
    for task, doc in (("t1", DOCS[0]), ("t2", DOCS[1])):
        context.record(_partial(task, _counts(doc)))
    return verifier, context, store


async def test_a_blank_key_beside_label_keyed_partials_is_rejected_saying_what_the_others_use(tmp_path: Path) -> None:
    verifier, _, store = _verifier(tmp_path)
    async with verifier:
        verdict = await verifier.verify(_partial("t3", {"": 27}), source=DOCS[2], require_check=False)
    assert verdict.status == "rejected" and verdict.stage == "agreement"
    assert "blank key ''" in verdict.reason
    assert "'entity', 'location', 'numeric value'" in verdict.reason  # what the others use
    failure = store.get_gist(verdict.failure_gist_id)
    assert failure.kind == GistKind.FAILURE and "blank key" in failure.text


async def test_low_coverage_is_rejected_with_its_tolerance_and_full_counts_are_admitted(tmp_path: Path) -> None:
    verifier, _, store = _verifier(tmp_path)
    async with verifier:
        subset = await verifier.verify(_partial("t3", {"numeric value": 27}), source=DOCS[2], require_check=False)
        number = await verifier.verify(_partial("t3", 53), source=DOCS[2], require_check=False)
        spelled = await verifier.verify(_partial("t3", {**_counts(DOCS[2]), "Numeric Value": 1}), source=DOCS[2],
                                        require_check=False)
        full = await verifier.verify(
            Gist(kind=GistKind.PARTIAL, text="t3: counts per label", value=_counts(DOCS[2]), check=COUNT_CHECK,
                 provenance=Provenance(task_id="t3", agent_id="a1")),
            source=DOCS[2], check_vars={"chunk_doc": 2, "chunk_start": 0, "chunk_end": len(DOCS[2])},
        )
    assert subset.status == "rejected" and subset.stage == "agreement"
    assert "add up to 27, but the chunk has 160 records" in subset.reason
    assert "at least 144" in subset.reason and "tolerance 10% of the records, at least 2" in subset.reason
    # A single number may count a subset, but not beside counts per key: another schema.
    assert number.status == "rejected" and "a single number" in number.reason and "counts per key" in number.reason
    assert spelled.status == "rejected" and "'Numeric Value' is spelled 'numeric value'" in spelled.reason
    assert full.status == "admitted", full.reason
    assert "code" in full.checks and store.get_gist(full.admitted_id).value == _counts(DOCS[2])


def test_agreement_rules_stated_in_code() -> None:
    assert coverage_floor(160, 0.1) == 144 and coverage_floor(10, 0.1) == 8 and coverage_floor(3, 0.1) == 1
    assert covers_records({"a": 2, None: 1}, 3, 0.1) is True
    assert covers_records({"a": 1}, 10, 0.1) is False
    assert covers_records({"a": 0.5}, 10, 0.1) is None  # measures per key count no records
    assert covers_records(7, 10, 0.1) is None  # a single number may count a subset
    # Numbers beside numbers agree; a closed vocabulary (labels in every partial) rejects a
    # partial that shares none of its keys; disjoint dates (no common core) are fine.
    assert schema_problem(3, [5, 7]) is None
    labelled = [{"a": 1, "b": 2}, {"a": 3, "b": 1}, {"a": 2, "c": 1}]
    assert "share none" in (schema_problem({"x": 9}, labelled) or "")
    assert schema_problem({"2024-05-03": 4}, [{"2024-05-01": 3}, {"2024-05-02": 2}, {"2024-05-02": 1, "2024-05-01": 1}]) is None


SERVICE_LOG = "".join(f"2024-05-0{i % 9 + 1} svc={'api' if i % 2 else 'db'} msg=request {i} took {i * 7} ms\n"
              for i in range(160))  # what makes a line urgent is in no field: it must be labelled


async def test_where_records_must_be_labelled_counts_are_keyed_by_labels_or_field_values(tmp_path: Path) -> None:
    """Seen in the issue-12 benchmark on unlabelled lines: `line.split(label)[1]` counted
    fragments of the text ({"'.": 2, None: 181, 'AIDS stand for ?': 1, ...}); its check
    reprinted it faithfully. Under a plan whose records need labels, keys must be labels or
    values a record states (L1), and label counts must label the records (L2)."""
    from delm_rlm.team.scout import stated_values

    store = RunStore(tmp_path / "store.sqlite")
    context = SharedContext(store, [SERVICE_LOG])
    verifier = Verifier(context, [SERVICE_LOG], trace=Trace(tmp_path / "trace.jsonl"), judge=False,
                        sandbox_factory=lambda: make_sandbox("local"))
    verifier.agreement = AgreementRules(context, chunk_tasks={"t1"}, labels=["urgent", "routine"],
                                        field_values=stated_values)
    async with verifier:
        fragments = await verifier.verify(_partial("t1", {None: 150, "took 7 ms": 5, "ms": 5}), source=SERVICE_LOG,
                                          require_check=False)
        unlabelled = await verifier.verify(_partial("t1", {"urgent": 6, "routine": 4, None: 150}), source=SERVICE_LOG,
                                           require_check=False)
    assert fragments.status == "rejected" and fragments.stage == "agreement"
    assert "'took 7 ms', 'ms' are neither labels" in fragments.reason and "'urgent', 'routine'" in fragments.reason
    assert "classify(records" in fragments.reason
    assert unlabelled.status == "rejected" and "150 of the chunk's 160 records are counted under None" in unlabelled.reason
    assert "at most 16 may be" in unlabelled.reason
    rules = verifier.agreement
    assert rules.problem({"api": 80, "DB": 80}, SERVICE_LOG) is None  # a field's values (case aside) are categories
    assert rules.problem({"urgent": 40, "Routine": 118, None: 2}, SERVICE_LOG) is None
    # Where the records state what is asked (no labelling plan), the rules are off.
    assert AgreementRules(context, chunk_tasks={"t1"}).problem({None: 150, "ms": 10}, SERVICE_LOG) is None


def test_the_finalizer_checks_refuse_mixed_schemas_and_name_the_missing_key() -> None:
    parts = [Gist(id=f"g{i}", kind=GistKind.PARTIAL, text=f"t{i}", value=v, provenance=Provenance(task_id=f"t{i}"))
             for i, v in enumerate([{"entity": 3, "location": 2}, {"entity": 1}, 27], start=1)]
    problem = disagreement(parts)
    assert problem is not None and "mixed schemas" in problem and "g1, g2 are counts per key" in problem
    assert "g3 is a single number" in problem
    assert "blank key" in (disagreement(parts[:1] + [parts[1].model_copy(update={"value": {"": 27}})]) or "")
    assert disagreement(parts[:2]) is None
    assert lacking_keys([("g1", {"entity": 3, "location": 2}, True), ("g2", {"entity": 1}, False)]) == {"location": ["g2"]}

    namespace: dict = {}
    exec(ADD_UP_CODE, namespace)  # the finalizer REPL's helpers, pure Python
    add_up = namespace["add_up"]
    with pytest.raises(ValueError, match=r"g1, g2 are counts per key; g3 is a single number\): no answer from mixed schemas"):
        add_up([{"id": p.id, "value": p.value} for p in parts])
    total = add_up([{"id": "g1", "value": {"entity": 3, "location": 2}, "complete": True},
                    {"id": "g2", "value": {"entity": 1}, "complete": False}])
    assert total["entity"] == 4 and total.most_common(1) == [("entity", 4)]
    with pytest.raises(KeyError, match=r"g2 lack the key 'location'"):
        total["location"]  # noqa: B018 - the read is what is refused
    covered = add_up([{"id": "g1", "value": {"entity": 3, "location": 2}, "complete": True},
                      {"id": "g2", "value": {"entity": 1}, "complete": True}])
    assert covered["location"] == 2  # a covering partial's missing key is an explicit zero
    assert namespace["combine"]([{"id": "g1", "value": [1]}, {"id": "g2", "value": [2, 3]}], "concat") == [1, 2, 3]
    assert namespace["combine"]([{"id": "g1", "value": 4}, {"id": "g2", "value": 9}], "max") == 9


# -- at finalization, in a real run ------------------------------------------------------

LOG = ["2024-05-01 ERROR db timeout\n2024-05-01 WARN disk 80%\n2024-05-01 INFO ok\n",
       "2024-05-02 ERROR db timeout\n2024-05-02 ERROR net down\n" + "2024-05-02 INFO ok\n" * 5 + "2024-05-02 WARN disk 90%\n"]
LOG_QUESTION = "How many WARN lines are there?"
LEVELS = "Counter(line.split()[1] for line in chunk.splitlines() if line.strip())"


def _number_agent(messages: list[dict], role: str) -> str:
    if role == "finalizer":
        return '```repl\nanswer["content"] = str(add_up(gists(kind="partial"))["value"])\nanswer["ready"] = True\n```'
    count = "sum(1 for line in chunk.splitlines() if ' WARN ' in line)"
    check = f"print({count})"
    return (f"```repl\nn = {count}\nprint(propose('partial', f'{{n}} WARN lines', value=n, check={check!r}))\n"
            "answer['content'] = str(n)\nanswer['ready'] = True\n```")


async def test_a_run_whose_partials_disagree_is_refused_before_the_finalizer_starts(tmp_path: Path) -> None:
    """Partials admitted with different schemas (here one recorded by an older run) are
    never combined: the run ends with the reason, naming the gists, and no model call."""
    run_dir = tmp_path / "run"
    first = await Team(ScriptedLM(_number_agent), agents=1, plan="split", budget=Budget(max_calls=2),
                       run_dir=run_dir).run(LOG_QUESTION, LOG)
    assert first.status == "budget"  # both chunks done, stopped before the finalizer
    store = RunStore(run_dir / "store.sqlite")
    recorded = SharedContext(store, LOG).record(_partial("t2", {"WARN": 1, "ERROR": 2, "INFO": 1}, "t2: counts per level"))
    lm = ScriptedLM(_number_agent)
    result = await Team.resume(run_dir, lm=lm, budget=None)
    assert result.status == "error" and result.answer is None
    assert "refused to answer" in result.error and "mixed schemas" in result.error
    assert f"{recorded.id} is counts per key" in result.error
    assert lm.received == []  # refused in code, before any finalizer call


async def test_the_finalizer_total_refuses_a_key_a_partial_cannot_vouch_for(tmp_path: Path) -> None:
    """With the coverage rule off, a partial counting only ERROR lines is admitted; the
    finalizer's total then refuses total['WARN'], naming the key and that partial."""
    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            if "REPL output" in messages[-1]["content"]:
                return '```repl\nanswer["content"] = "unknown"\nanswer["ready"] = True\n```'
            return '```repl\nparts = gists(kind="partial")\nprint([p["complete"] for p in parts])\nprint(add_up(parts)["WARN"])\n```'
        only_errors = "Counter(line.split()[1] for line in chunk.splitlines() if ' ERROR ' in line)"
        counting = only_errors if "chunk 2 of 2" in messages[1]["content"] else LEVELS
        check = f"from collections import Counter\nprint(dict({counting}))"
        return (f"```repl\nfrom collections import Counter\nc = dict({counting})\n"
                f"print(propose('partial', f'levels {{c}}', value=c, check={check!r}))\n"
                "answer['content'] = str(c)\nanswer['ready'] = True\n```")

    result = await Team(ScriptedLM(script), agents=1, plan="split", coverage_tolerance=None,
                        run_dir=tmp_path / "run").run(LOG_QUESTION, LOG)
    assert result.answer == "unknown", result.error
    subset = next(g for g in RunStore(result.store_path).list_gists(status="admitted", kinds="partial")
                  if g.provenance.task_id == "t2")
    assert subset.value == {"ERROR": 2}
    cell = next(e for e in Trace.load(result.trace_path) if e.kind == "code_cell" and e.task == "final")
    assert "[True, False]" in cell.data["stdout"] or "[False, True]" in cell.data["stdout"]
    assert f"partials {subset.id} lack the key 'WARN'" in cell.data["error"]
    assert "do not account for all their records" in cell.data["error"]
