"""The state directory: atomic, bounded, crash-safe report files that a fresh agent reads back,
with bad files quarantined and a full or read-only disk survived."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from drainwatch.agent.state_dir import (
    QUARANTINE,
    StateDir,
    StateDirCollector,
    StateDirError,
    check_state_dir,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

T0 = 1_750_000_000.0


def report(instance: str, updated: float, **extra: Any) -> dict[str, Any]:
    """A drain report as ``DrainReport.to_json()`` shapes it (the fields the store reads)."""
    return {
        "service": "checkout",
        "instance": instance,
        "pid": 4242,
        "complete": True,
        "verdict": "OK",
        "updated": updated,
        **extra,
    }


def report_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith("report-"))


def test_reports_survive_a_new_state_dir_newest_first(tmp_path: Path) -> None:
    """A fresh StateDir on the same directory reads back every saved report, newest first."""
    first = StateDir(tmp_path / "state")
    for index, updated in enumerate((T0 + 5, T0 + 1, T0 + 9)):
        assert first.save_report(report(f"i{index}", updated)) is not None
    again = StateDir(tmp_path / "state")
    assert [r["instance"] for r in again.load_reports()] == ["i2", "i0", "i1"]
    assert again.load_reports()[0] == report("i2", T0 + 9)


def test_file_names_come_from_the_agent_clock_and_a_counter_only(tmp_path: Path) -> None:
    """Hostile service/instance strings never reach a path; the name is time + counter."""
    state_dir = StateDir(tmp_path)
    hostile = report("../../etc/passwd", T0, service="/tmp/x\x00y")
    path = state_dir.save_report(hostile)
    assert path is not None and path.parent == tmp_path
    assert re.fullmatch(r"report-20250615T\d{6}\.000000Z-000001\.json", path.name)
    no_time = state_dir.save_report(report("b", float("nan")))
    assert no_time is not None and no_time.name.endswith("-000002.json")
    # a new StateDir continues the counter, so names keep sorting after a restart
    later = StateDir(tmp_path).save_report(report("c", T0))
    assert later is not None and later.name.endswith("-000003.json")


def test_a_missing_directory_is_created_0750_and_files_are_0640(tmp_path: Path) -> None:
    """The agent creates its state directory private to its user and group."""
    state_dir = StateDir(tmp_path / "a" / "state")
    path = state_dir.save_report(report("i", T0))
    assert path is not None
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "state").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_history_is_bounded_and_a_newer_copy_replaces_the_older(tmp_path: Path) -> None:
    """keep=3 leaves the three newest shutdowns; re-saving one instance keeps one file."""
    state_dir = StateDir(tmp_path, keep=3)
    for index in range(5):
        state_dir.save_report(report(f"i{index}", T0 + index))
    assert len(report_files(tmp_path)) == 3
    state_dir.save_report(report("i4", T0 + 10, verdict="1 violation"))
    assert len(report_files(tmp_path)) == 3
    loaded = StateDir(tmp_path, keep=3).load_reports()
    assert [(r["instance"], r["verdict"]) for r in loaded] == [
        ("i4", "1 violation"),
        ("i3", "OK"),
        ("i2", "OK"),
    ]
    assert state_dir.stats().pruned == 2
    # a restarted agent with a smaller history prunes down to it
    assert [r["instance"] for r in StateDir(tmp_path, keep=1).load_reports()] == ["i4"]
    assert len(report_files(tmp_path)) == 1


def test_bad_files_are_quarantined_once_and_the_rest_still_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Truncated, non-JSON, foreign-format and oversized files move to quarantine/, counted
    and logged once; unknown files are left alone."""
    state_dir = StateDir(tmp_path, max_bytes=4096)
    good = state_dir.save_report(report("good", T0))
    assert good is not None
    whole = good.read_bytes()
    bad = {
        "report-20250101T000000.000000Z-000101.json": whole[: len(whole) // 2],  # truncated
        "report-20250101T000000.000000Z-000102.json": b"\xff\xfe\x00binary",
        "report-20250101T000000.000000Z-000103.json": b"[1, 2, 3]",
        "report-20250101T000000.000000Z-000104.json": json.dumps({"format": 99}).encode(),
        "report-20250101T000000.000000Z-000105.json": b" " * 5000,  # oversized
        "report-20250101T000000.000000Z-000106.json": b"[" * 4000,  # too deep for the parser
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "report-latest.json").write_text("not ours")
    caplog.set_level(logging.INFO, "drainwatch.agent")
    fresh = StateDir(tmp_path, max_bytes=4096)
    assert [r["instance"] for r in fresh.load_reports()] == ["good"]
    assert sorted(os.listdir(tmp_path / QUARANTINE)) == sorted(bad)
    assert fresh.stats().quarantined == {"corrupt": 3, "unknown_format": 2, "oversized": 1}
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "report-latest.json").exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6
    assert all("moved to" in r.getMessage() for r in warnings)
    caplog.clear()
    assert [r["instance"] for r in fresh.load_reports()] == ["good"]
    assert not caplog.records  # nothing new to say


def test_a_writer_killed_mid_write_leaves_the_old_report_intact(tmp_path: Path) -> None:
    """SIGKILL while a 6 MiB report is half written: the old report still loads, the partial
    temporary file is never read and the next StateDir removes it."""
    state = tmp_path / "state"
    StateDir(state, max_bytes=64 << 20).save_report(report("a", T0, verdict="old"))
    before = report_files(state)
    writer = textwrap.dedent(
        f"""
        import os, sys, time
        from drainwatch.agent.state_dir import StateDir

        state_dir = StateDir({str(state)!r}, max_bytes=64 << 20)
        state_dir.load_reports()
        real_write, calls = os.write, [0]

        def write(fd, data):
            calls[0] += 1
            if calls[0] == 3:  # two chunks are on disk: stop here and wait for the kill
                print("mid-write", flush=True)
                time.sleep(60)
            return real_write(fd, data)

        os.write = write
        state_dir.save_report({{"service": "checkout", "instance": "a", "updated": {T0 + 1},
                                "verdict": "new", "blob": "x" * (6 << 20)}})
        print("finished", flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", writer], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(process.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(10)
        assert line == ["mid-write\n"], process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGKILL)
        assert process.wait(5) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    [partial] = [name for name in os.listdir(state) if name.startswith(".tmp-report-")]
    assert 0 < (state / partial).stat().st_size < 6 << 20
    assert report_files(state) == before
    fresh = StateDir(state, max_bytes=64 << 20)
    assert [(r["instance"], r["verdict"]) for r in fresh.load_reports()] == [("a", "old")]
    assert not [name for name in os.listdir(state) if name.startswith(".tmp-")]
    assert not (state / QUARANTINE).exists()


@pytest.mark.parametrize(
    ("call", "code", "reason", "fix"),
    [
        ("write", errno.ENOSPC, "no_space", "free space on the volume"),
        ("replace", errno.ENOSPC, "no_space", "free space on the volume"),
        ("replace", errno.EROFS, "read_only", "mount the state directory read-write"),
        ("open", errno.EACCES, "permission", "let the agent's user write there"),
    ],
)
def test_a_full_or_read_only_disk_is_counted_not_fatal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    call: str,
    code: int,
    reason: str,
    fix: str,
) -> None:
    """os.write/os.replace/os.open failing: save returns None, nothing partial is left, the
    error is counted and logged once with the fix, and saving works again afterwards."""
    state_dir = StateDir(tmp_path)
    assert state_dir.save_report(report("old", T0)) is not None
    real = getattr(os, call)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, failing)
    caplog.set_level(logging.WARNING, "drainwatch.agent")
    assert state_dir.save_report(report("new", T0 + 1)) is None
    assert state_dir.save_report(report("new", T0 + 2)) is None
    monkeypatch.setattr(os, call, real)
    stats = state_dir.stats()
    assert stats.write_errors == {reason: 2}
    assert stats.last_error is not None and fix in stats.last_error
    [warning] = caplog.records  # logged once, not once per attempt
    assert os.strerror(code) in warning.getMessage() and fix in warning.getMessage()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
    assert [r["instance"] for r in StateDir(tmp_path).load_reports()] == ["old"]
    assert state_dir.save_report(report("new", T0 + 3)) is not None
    assert state_dir.stats().last_error is None


def test_reports_that_cannot_be_stored_are_refused_with_a_reason(tmp_path: Path) -> None:
    """A report over the size cap or not JSON-serializable is counted, never written."""
    state_dir = StateDir(tmp_path, max_bytes=1024)
    assert state_dir.save_report(report("big", T0, blob="x" * 2000)) is None
    assert state_dir.save_report(report("odd", T0, blob=object())) is None
    assert state_dir.stats().write_errors == {"too_large": 1, "unserializable": 1}
    assert report_files(tmp_path) == []


def test_collector_exports_the_counters(tmp_path: Path) -> None:
    """drainwatch_state_dir_* counters carry the agent's service and every reason."""
    state_dir = StateDir(tmp_path, max_bytes=1024)
    state_dir.save_report(report("a", T0))
    state_dir.save_report(report("big", T0, blob="x" * 2000))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateDirCollector(state_dir, "checkout"))
    samples = {
        (sample.name, sample.labels.get("reason")): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.labels["service"] == "checkout" and not sample.name.endswith("_created")
    }
    assert samples[("drainwatch_state_dir_reports_saved_total", None)] == 1.0
    assert samples[("drainwatch_state_dir_write_errors_total", "too_large")] == 1.0
    assert samples[("drainwatch_state_dir_write_errors_total", "no_space")] == 0.0
    assert samples[("drainwatch_state_dir_quarantined_total", "corrupt")] == 0.0


def test_startup_validation_names_the_setting_the_rule_the_value_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths, files, uncreatable and unwritable directories are config errors."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        StateDirError,
        match=re.escape('--state-dir must be an absolute directory path: "state"; for example'),
    ):
        check_state_dir("state")
    with pytest.raises(
        StateDirError,
        match=re.escape(
            f'state_dir must be a directory: "{tmp_path / "file"}" is a file; point it at a '
            "directory (an emptyDir or a volume mount)"
        ),
    ):
        check_state_dir(tmp_path / "file", where="state_dir")
    with pytest.raises(
        StateDirError,
        match=re.escape(
            f'--state-dir must be a directory the agent can create: "{tmp_path / "file" / "x"}"'
            ": Not a directory; create it or mount a volume there"
        ),
    ):
        check_state_dir(tmp_path / "file" / "x")
    real_open = os.open

    def read_only(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        StateDirError,
        match=re.escape(
            f'--state-dir must be a writable directory: "{tmp_path}": Read-only file system; '
            "mount it read-write and let the agent's user write there"
        ),
    ):
        StateDir(tmp_path)
