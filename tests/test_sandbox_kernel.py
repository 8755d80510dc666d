"""KernelSandbox behaviour a user relies on, against real kernels (strongest isolation here)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox import ExecResult, KernelSandbox, Sandbox, SandboxError, make_sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb():
    os.environ["OPENAI_API_KEY"] = "sk-test-must-not-leak"
    async with KernelSandbox(timeout=20) as box:
        yield box


async def test_state_persists_across_cells(sb: KernelSandbox) -> None:
    assert (await sb.execute("counter = 40")).ok
    await sb.execute("counter += 2")
    result = await sb.execute("print(counter)")
    assert result.stdout == "42\n" and result.error is None


async def test_stdout_stderr_and_last_expression(sb: KernelSandbox) -> None:
    result = await sb.execute("import sys\nprint('out')\nprint('err', file=sys.stderr)\n6 * 7")
    assert result.stdout == "out\n42\n"
    assert result.stderr == "err\n"
    assert result.duration_s > 0


async def test_exception_is_reported_and_next_cell_runs(sb: KernelSandbox) -> None:
    result = await sb.execute("undefined_name + 1")
    assert not result.ok
    assert result.error is not None and result.error.startswith("NameError: name 'undefined_name' is not defined")
    assert "undefined_name + 1" in result.error  # short traceback shows the failing line
    assert "\x1b[" not in result.error
    assert (await sb.execute("print('still here')")).stdout == "still here\n"


async def test_timeout_interrupts_and_keeps_variables(sb: KernelSandbox) -> None:
    await sb.execute("kept = 'yes'")
    result = await sb.execute("while True: pass", timeout=1)
    assert result.timed_out and not result.ok and not result.restarted
    assert 1.0 <= result.duration_s < 4.0
    assert (await sb.execute("print(kept)")).stdout == "yes\n"


async def test_set_and_get_variables_roundtrip(sb: KernelSandbox) -> None:
    import pandas as pd

    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    await sb.set_variables(numbers=[1, 2, 3], label="ok", frame=frame)
    assert (await sb.execute("total = sum(numbers); shape = frame.shape")).ok
    assert await sb.get_variable("total") == 6
    assert await sb.get_variable("shape") == (2, 2)
    pd.testing.assert_frame_equal(await sb.get_variable("frame"), frame)
    with pytest.raises(NameError):
        await sb.get_variable("never_defined")
    with pytest.raises(ValueError):
        await sb.set_variables(**{"not valid": 1})


async def test_get_variable_refuses_hostile_pickle(sb: KernelSandbox, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    await sb.execute(
        "import os\nclass Evil:\n    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\nevil = Evil()"
    )
    with pytest.raises(TypeError, match="not plain data"):
        await sb.get_variable("evil")
    assert not marker.exists()


async def test_environment_has_no_secrets_and_one_blas_thread(sb: KernelSandbox) -> None:
    assert "OPENAI_API_KEY" in os.environ
    result = await sb.execute("import os, json; print(json.dumps(dict(os.environ)))")
    import json

    env = json.loads(result.stdout)
    assert not any(k.endswith(("_API_KEY", "_TOKEN", "_SECRET")) for k in env), sorted(env)
    assert env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1"


async def test_kernel_runs_this_interpreter_in_its_workspace(sb: KernelSandbox) -> None:
    import sys

    result = await sb.execute("import os, sys; print(sys.executable); print(os.getcwd())")
    exe, cwd = result.stdout.split()
    assert Path(exe).resolve() == Path(sys.executable).resolve()
    assert Path(cwd) == sb.workspace
    assert Path.cwd() != sb.workspace
    assert sb.private_dir is not None and sb.private_dir.stat().st_mode & 0o077 == 0
    assert sb.log_path is not None and sb.log_path.exists()
    # IPC transport: the kernel's sockets are files in its private directory, not TCP ports
    assert any(p.is_socket() for p in sb.private_dir.iterdir())


async def test_dead_kernel_is_restarted_and_reported(sb: KernelSandbox) -> None:
    await sb.execute("before = 1")
    result = await sb.execute("import os; os._exit(1)")
    assert result.restarted and not result.ok
    assert result.error is not None and result.error.startswith("KernelDied")
    assert (await sb.execute("print('works')")).stdout == "works\n"
    assert "NameError" in ((await sb.execute("before")).error or "")


async def test_restart_loses_state(sb: KernelSandbox) -> None:
    await sb.execute("gone = 1")
    await sb.restart()
    assert "NameError" in ((await sb.execute("gone")).error or "")
    assert (await sb.execute("print(1 + 1)")).stdout == "2\n"


async def test_bad_input_is_refused_clearly(sb: KernelSandbox) -> None:
    with pytest.raises(TypeError, match="str"):
        await sb.execute(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        await sb.execute("1", timeout=0)
    with pytest.raises(TypeError, match="str, a list"):
        await sb.load_context(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="isolation"):
        KernelSandbox(isolation="docker")
    with pytest.raises(ValueError, match="unknown sandbox kind"):
        make_sandbox("vm")


async def test_not_started_sandbox_says_so() -> None:
    box = make_sandbox("local")
    assert isinstance(box, KernelSandbox) and isinstance(box, Sandbox)
    with pytest.raises(SandboxError, match="not started"):
        await box.execute("1")


async def test_four_kernels_started_at_once_all_work(tmp_path: Path) -> None:
    # Two with given workspaces, two with their own: concurrent starts must not disturb each other.
    boxes = [KernelSandbox(workspace=tmp_path / f"ws{i}" if i % 2 else None) for i in range(4)]
    await asyncio.gather(*(b.start() for b in boxes))
    try:
        results: list[ExecResult] = await asyncio.gather(
            *(b.execute(f"import os; print({i}, os.getcwd())") for i, b in enumerate(boxes))
        )
        for i, (box, r) in enumerate(zip(boxes, results)):
            assert r.stdout.split() == [str(i), str(box.workspace)], r
        assert len({b.private_dir for b in boxes}) == 4
    finally:
        await asyncio.gather(*(b.close() for b in boxes))
    assert all((tmp_path / f"ws{i}").is_dir() for i in (1, 3))  # a given workspace is kept


async def test_close_removes_private_dir_and_own_workspace() -> None:
    box = KernelSandbox()
    await box.start()
    private, workspace = box.private_dir, box.workspace
    assert private is not None and private.is_dir() and workspace.is_dir()
    await box.close()
    assert not private.exists() and not workspace.exists()


async def test_auto_runs_bubblewrap_and_says_so(sb: KernelSandbox) -> None:
    from sandbox import isolation as iso

    assert "bubblewrap" in iso.available()  # otherwise auto refuses and the fixture cannot start
    assert sb.isolation == "bubblewrap"
    result = await sb.execute(f"import os; print(os.path.exists({str(Path.cwd())!r}), os.getuid() == 0)")
    assert result.stdout == "False False\n", result  # the checkout it was started from is not there


async def test_limits_default_to_caps_and_bad_ones_are_refused() -> None:
    from delm_rlm.errors import ConfigError

    box = KernelSandbox()
    assert (box.memory_limit, box.max_processes, box.disk_limit, box.tmp_limit) == (2 * 1024**3, 64, 1024**3,
                                                                                    256 * 1024**2)
    assert box.isolation == "auto" and box.uid is None  # the mode and uid in force are known once started
    for bad in ({"max_processes": 4}, {"disk_limit": 1024}, {"tmp_limit": 10}, {"memory_limit": 10},
                {"isolation": "chroot"}):
        with pytest.raises(ConfigError):
            KernelSandbox(**bad)  # type: ignore[arg-type]
    assert KernelSandbox(isolation="rlimits").isolation == "rlimits"  # resolved to "none" at start
