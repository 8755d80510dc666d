"""Shared fixtures: where the real data lives, and a private cache per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Deterministic property tests: the same examples on every run and machine (no flaky CI), and
# no per-example deadline (2 shared cores make timings noisy).
settings.register_profile(
    "delm-rlm", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("delm-rlm")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Real benchmark data lives beside the checkout, never inside it (see ../shared/data/README.md).
SHARED_DATA = Path(os.environ.get("DELM_RLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(
            f"real test data missing: {path} (expected ../shared/data beside the checkout; "
            "set DELM_RLM_SHARED_DATA to its location)"
        )
    return path


@pytest.fixture(scope="session")
def trec_pool() -> Path:
    """The TREC question-classification pool (5,452 labelled lines)."""
    return _require(SHARED_DATA / "trec" / "train_5500.label")


@pytest.fixture(scope="session")
def longbench_sample() -> Path:
    """12 real LongBench-v2 Multi-Document QA rows (official fields)."""
    return _require(SHARED_DATA / "longbench_v2" / "multidoc_dev.jsonl")


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the LM response cache of the test run away from the user's own cache.

    The assembled local model file is the exception: it is 1.1 GB and content-addressed, so
    tests reuse the user's copy through DELM_RLM_MODEL_DIR when it is set.
    """
    cache = tmp_path_factory.mktemp("delm-rlm-cache")
    previous = os.environ.get("DELM_RLM_CACHE_DIR")
    os.environ["DELM_RLM_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("DELM_RLM_CACHE_DIR", None)
    else:
        os.environ["DELM_RLM_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def private_runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Runs that name no directory go here, not into ./runs of wherever pytest was started."""
    runs = tmp_path_factory.mktemp("delm-rlm-runs")
    previous = os.environ.get("DELM_RLM_RUNS_DIR")
    os.environ["DELM_RLM_RUNS_DIR"] = str(runs)
    yield runs
    if previous is None:
        os.environ.pop("DELM_RLM_RUNS_DIR", None)
    else:
        os.environ["DELM_RLM_RUNS_DIR"] = previous


# pytest-xdist groups (scripts/test runs `-n 2 --dist loadgroup`): tests that share one
# external resource run on one worker, one after another: every PostgreSQL test, since some
# restart the one test server, and every local-model test, since one model server already
# uses both cores. Every other test stays with its module, as `--dist loadscope` would keep
# it: module-scoped fixtures (one sandbox for a file's tests) and the order they rely on hold.
POSTGRES_FIXTURES = frozenset({"postgres_url", "restart_server"})


def xdist_group_of(item: pytest.Item) -> str:
    """The worker group of a test: a shared server's name, else its module's path."""
    if item.get_closest_marker("local_model") is not None:
        return "local-model"
    if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())) or "postgres" in item.nodeid.lower():
        return "postgres"
    return item.nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(item)))


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def postgres_url() -> str:
    """The private test server's URL (DELM_RLM_TEST_POSTGRES_URL, which scripts/test and
    `scripts/pg-test-server start` set). Unset: the test skips with how to start one; under
    CI=true it fails, since no PostgreSQL test is skipped in CI."""
    from state_backends import postgres_test_url

    return postgres_test_url()


@pytest.fixture
def restart_server(postgres_url: str) -> Any:
    """Restart the test server in place (same port and data), as an operator would."""
    data_dir = os.environ.get("DELM_RLM_TEST_POSTGRES_DIR")
    if not data_dir:
        reason = "DELM_RLM_TEST_POSTGRES_DIR is not set (scripts/pg-test-server start sets it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"restart tests cannot be skipped in CI: {reason}")
        pytest.skip(reason)

    def restart() -> None:
        subprocess.run(["bash", str(Path(__file__).resolve().parent.parent / "scripts" / "pg-test-server"), "restart", data_dir],
                       check=True, timeout=120)

    return restart
