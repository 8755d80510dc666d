"""The offline local model: assembling and verifying the GGUF from its parts, install hints,
and (marked `local_model`) the real model served by llama.cpp answering through the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from delm_rlm.llm import local as local_model
from delm_rlm.errors import LMError, LocalModelUnavailable
from delm_rlm.llm.gateway import LM
from delm_rlm.llm.local import LocalModelSpec, assemble


def make_parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    parts = []
    for i, chunk in enumerate(chunks, 1):
        p = tmp_path / "parts" / f"part{i:02d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(chunk)
        parts.append(p)
    return parts


CHUNKS = [b"GGUF" + bytes(range(256)) * 40, os.urandom(5000), b"tail-bytes"]
WHOLE = b"".join(CHUNKS)
SHA = hashlib.sha256(WHOLE).hexdigest()


def test_assemble_concatenates_in_order_and_verifies(tmp_path: Path) -> None:
    parts = make_parts(tmp_path, CHUNKS)
    target = tmp_path / "models" / "m.gguf"
    progress: list[tuple[int, int]] = []
    out = assemble(parts, target, size=len(WHOLE), sha256=SHA, progress=lambda d, t: progress.append((d, t)))
    assert out == target and target.read_bytes() == WHOLE
    assert progress[-1] == (len(WHOLE), len(WHOLE))
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf", "m.gguf.lock", "m.gguf.verified.json"]
    # Second time: nothing is rewritten, the parts are not even read.
    mtime = target.stat().st_mtime_ns
    for p in parts:
        p.unlink()
    assert assemble(parts, target, size=len(WHOLE), sha256=SHA) == target
    assert target.stat().st_mtime_ns == mtime


def test_wrong_checksum_leaves_no_file_behind(tmp_path: Path) -> None:
    parts = make_parts(tmp_path, CHUNKS)
    target = tmp_path / "models" / "m.gguf"
    with pytest.raises(LocalModelUnavailable, match=f"expected {'0' * 64}.*force-reinstall"):
        assemble(parts, target, size=len(WHOLE), sha256="0" * 64)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf.lock"]  # no model, no temporary


def test_parts_of_the_wrong_size_are_refused_before_writing(tmp_path: Path) -> None:
    parts = make_parts(tmp_path, CHUNKS[:2])
    with pytest.raises(LocalModelUnavailable, match="a part is missing or from another version"):
        assemble(parts, tmp_path / "m.gguf", size=len(WHOLE), sha256=SHA)
    assert not (tmp_path / "m.gguf").exists()


def test_a_damaged_model_file_is_reassembled(tmp_path: Path) -> None:
    parts = make_parts(tmp_path, CHUNKS)
    target = tmp_path / "m.gguf"
    assemble(parts, target, size=len(WHOLE), sha256=SHA)
    damaged = bytearray(WHOLE)
    damaged[100] ^= 0xFF
    target.chmod(0o644)  # the assembled file is read-only
    target.write_bytes(bytes(damaged))  # same size, new mtime: no longer matches the record
    assemble(parts, target, size=len(WHOLE), sha256=SHA)
    assert target.read_bytes() == WHOLE


FAKE = LocalModelSpec(
    name="local-test", label="fake test model", dist_prefix="delm-rlm-no-such-part", n_parts=3, version="0",
    size=len(WHOLE), sha256=SHA, filename="fake.gguf", alias="fake",
)


@pytest.fixture
def fake_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model directory holding the fake model, assembled from parts the spec can find."""
    monkeypatch.setenv("DELM_RLM_MODEL_DIR", str(tmp_path / "models"))
    parts = make_parts(tmp_path, CHUNKS)
    monkeypatch.setattr(local_model, "part_files", lambda spec: parts)
    local_model.ensure_model_file(FAKE)
    return tmp_path / "models"


def edit_in_place(target: Path) -> None:
    """A same-size edit of the file with its mtime put back, as code that wants to pass a
    size + mtime check would do it."""
    st = target.stat()
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[7] ^= 0x55
    target.write_bytes(bytes(data))
    target.chmod(0o444)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns


def test_the_assembled_model_file_is_read_only(fake_model_dir: Path) -> None:
    target = fake_model_dir / FAKE.filename
    assert target.read_bytes() == WHOLE
    assert target.stat().st_mode & 0o222 == 0
    assert local_model.is_verified(target, SHA, len(WHOLE))


def test_a_same_size_edit_is_caught_by_the_hash_when_the_model_is_loaded(fake_model_dir: Path) -> None:
    """The file the server loads (ensure_model_file) is hashed; size, mtime and a matching
    sidecar do not pass an edited file, and it is reassembled from the parts."""
    target = fake_model_dir / FAKE.filename
    edit_in_place(target)
    assert not local_model.is_verified(target, SHA, len(WHOLE))  # the ctime moved
    assert local_model.ensure_model_file(FAKE) == target
    assert target.read_bytes() == WHOLE

    # Even a sidecar rewritten to describe the edited file does not make it pass.
    edit_in_place(target)
    st = target.stat()
    sidecar = target.with_name(target.name + ".verified.json")
    sidecar.write_text(json.dumps({"sha256": SHA, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                   "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}))
    assert local_model.is_verified(target, SHA, len(WHOLE))  # the record alone is fooled ...
    assert local_model.ensure_model_file(FAKE) == target
    assert target.read_bytes() == WHOLE  # ... the hash is not


def test_a_hash_is_reused_in_the_process_while_the_file_is_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashed while assembled, the file is not read again by a later load in this process
    (a server restart), sidecar or not; once touched, it is."""
    monkeypatch.setattr(local_model, "RACY_WINDOW_NS", 0)  # the file was written just now
    monkeypatch.setenv("DELM_RLM_MODEL_DIR", str(tmp_path / "models"))
    parts = make_parts(tmp_path, CHUNKS)
    monkeypatch.setattr(local_model, "part_files", lambda spec: parts)
    target = local_model.ensure_model_file(FAKE)
    hashed: list[Path] = []
    real_sha256_file = local_model.sha256_file
    monkeypatch.setattr(local_model, "sha256_file", lambda path, *a: hashed.append(path) or real_sha256_file(path, *a))
    target.with_name(target.name + ".verified.json").unlink()
    assert local_model.ensure_model_file(FAKE) == target and hashed == []
    os.utime(target)  # touched: the identity changed
    assert local_model.ensure_model_file(FAKE) == target and hashed == [target]


def test_an_edited_model_file_without_its_parts_is_refused(fake_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = fake_model_dir / FAKE.filename
    monkeypatch.setattr(local_model, "part_files", lambda spec: (_ for _ in ()).throw(
        LocalModelUnavailable("the fake model packages are not installed (delm-rlm-no-such-part1)")))
    edit_in_place(target)
    with pytest.raises(LocalModelUnavailable, match=r"fake.gguf does not match the SHA-256 of fake test model .*changed after it was assembled.*not installed"):
        local_model.ensure_model_file(FAKE)


def test_missing_part_packages_name_the_install_command() -> None:
    spec = LocalModelSpec(
        name="local-1.5b", label="test model", dist_prefix="delm-rlm-no-such-part", n_parts=3, version="0",
        size=1, sha256="0" * 64, filename="none.gguf", alias="x",
    )
    with pytest.raises(LocalModelUnavailable, match=r"delm-rlm-no-such-part1, delm-rlm-no-such-part2.*pip install 'delm-rlm\[local\]'") as info:
        local_model.part_files(spec)
    assert isinstance(info.value, LMError) and isinstance(info.value, ImportError)


def test_missing_server_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_model, "_SERVER_MODULES", ("delm_rlm_no_such_module",))
    with pytest.raises(LocalModelUnavailable, match=r"llama-cpp-python\[server\].*pip install 'delm-rlm\[local\]'"):
        local_model.check_server_installed()


def test_context_window_is_the_served_n_ctx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DELM_RLM_LOCAL_N_CTX", raising=False)
    assert LM("local").context_window == local_model.DEFAULT_N_CTX == 16384
    monkeypatch.setenv("DELM_RLM_LOCAL_N_CTX", "8192")
    assert LM("local").context_window == 8192
    assert LM("gpt-4o-mini", routes={"sub": "local"}).context_window_for("sub") == 8192
    monkeypatch.setenv("DELM_RLM_LOCAL_N_CTX", "lots")
    with pytest.raises(LMError, match="DELM_RLM_LOCAL_N_CTX='lots' must be a positive integer"):
        local_model.n_ctx()


def test_local_means_local_even_with_an_api_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    lm = LM("local")
    assert lm.base_url is None and "local-gguf" in repr(lm)
    assert LM("some-api-model").base_url == "http://127.0.0.1:1/v1"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize(("amx", "opt_in", "turned_off"), [(True, None, True), (True, "1", False), (False, None, False)])
def test_server_turns_amx_kernels_off_unless_asked(
    monkeypatch: pytest.MonkeyPatch, amx: bool, opt_in: str | None, turned_off: bool
) -> None:
    # A build with AMX kernels crashes (SIGILL) on machines whose CPU reports AMX without
    # running it; the server process then loads the model without extra buffer types.
    import llama_cpp.llama_cpp as lib

    monkeypatch.setattr(local_model, "amx_compiled", lambda: amx)
    if opt_in is None:
        monkeypatch.delenv("DELM_RLM_LOCAL_AMX", raising=False)
    else:
        monkeypatch.setenv("DELM_RLM_LOCAL_AMX", opt_in)
    monkeypatch.setattr(lib, "llama_model_default_params", lib.llama_model_default_params)  # restored after
    assert local_model.without_amx_kernels() is turned_off
    assert lib.llama_model_default_params().use_extra_bufts is (not turned_off)


def _local_model_missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed: pip install 'delm-rlm[local]'"
    try:
        if not local_model.is_verified(local_model.model_file_path(), local_model.QWEN_1_5B.sha256, local_model.QWEN_1_5B.size):
            local_model.part_files(local_model.QWEN_1_5B)
    except LocalModelUnavailable as e:
        return str(e)
    return None


@pytest.mark.local_model
@pytest.mark.skipif(_local_model_missing() is not None, reason=f"local model unavailable: {_local_model_missing()}")
async def test_real_local_model_assembles_verifies_serves_and_answers() -> None:
    path = local_model.ensure_model_file()
    assert path.stat().st_size == 1_117_320_768
    assert local_model.sha256_file(path) == local_model.QWEN_1_5B.sha256  # independent of the record

    lm = LM("local", cache=False)
    c = await lm.complete(
        [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
    )
    assert c.model == "local" and c.cost_usd == 0.0 and not c.cached
    assert 10 < c.input_tokens < 60 and 1 <= c.output_tokens <= 8  # counted by the server's tokenizer
    assert c.text.strip(), "the model returned an empty answer"

    server = local_model.ensure_server("local")
    assert server.alive() and server.base_url.startswith("http://127.0.0.1:")
    assert server.log_path is not None and "chat template" in server.log_path.read_text(errors="replace")

    # Stopped at exit; a later call starts it again.
    local_model.shutdown_servers()
    assert not server.alive()
    again = await LM("local", cache=False).complete("Say OK.", max_tokens=4)
    assert again.text.strip()
    assert local_model.ensure_server("local") is not server

    # A call cancelled mid-prompt is still computed by the server; settle waits for it, and
    # its one-token probe is neither counted nor cached.
    lm = LM("local", cache=False)
    long_prompt = "Summarize: " + "The quick brown fox jumps over the lazy dog. " * 300
    call = asyncio.create_task(lm.complete(long_prompt, max_tokens=64))
    while lm.in_flight == 0:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    calls_before = lm.usage.total.calls
    waited = await lm.settle(timeout=300)
    assert lm.in_flight == 0 and waited > 0.5, waited  # the abandoned prompt was still being read
    assert lm.usage.total.calls == calls_before
    assert await lm.settle(timeout=300) < waited
