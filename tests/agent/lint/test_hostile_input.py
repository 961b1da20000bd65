"""``drainwatch lint`` never crashes and never hangs on what it is given: unparsable, binary,
huge, deeply nested and non-UTF-8 files, symlink loops, FIFOs, and YAML bombs are each
reported as a file not linted (DW001, exit 2) while every other file is still linted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from drainwatch.agent.lint import LintSettings, lint_paths
from drainwatch.agent.lint.manifest_yaml import MAX_DEPTH

BROKEN_STOP = "import asyncio\nasync def f(server):\n    asyncio.create_task(server.stop(5))\n"


def lint_dir(tmp_path: Path, **files: bytes) -> tuple[int, list[str], list[str]]:
    """Write ``files`` next to a file with one real finding; return (exit code, problem
    messages, codes found)."""
    (tmp_path / "good_neighbour.py").write_text(BROKEN_STOP)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    result = lint_paths([str(tmp_path)], LintSettings(max_bytes=200_000))
    return (
        result.exit_code,
        [f"{Path(p.path).name}:{p.line}: {p.message}" for p in result.problems],
        [f.code for f in result.findings],
    )


HOSTILE_PYTHON = {
    "syntax error": (b"def broken(:\n    pass\n", "cannot parse"),
    "binary": (b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "binary file"),
    "NUL inside text": (b"x = 1\ny = '\x00'\n", "binary file"),
    "invalid UTF-8": (b"name = '\xff\xfe caf\xe9'\n", "not valid utf-8"),
    "unknown encoding cookie": (b"# -*- coding: klingon -*-\nx = 1\n", "encoding"),
    "huge": (b"x = 1\n" * 50_000, "too large to lint: 300000 bytes"),
    "nested parentheses": (b"x = " + b"(" * 5000 + b")" * 5000 + b"\n", "cannot parse"),
    "deep expression": (b"x = " + b"+".join([b"1"] * 60_000) + b"\n", "nested too deeply"),
    "deep indentation": (
        b"".join(b" " * i + b"if x:\n" for i in range(120)) + b" " * 120 + b"pass\n",
        "cannot parse",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE_PYTHON))
def test_a_python_file_that_cannot_be_linted_is_reported_and_the_rest_linted(
    tmp_path: Path, name: str
) -> None:
    """Exit 2, one DW001 saying why, and the neighbour's finding still reported."""
    content, why = HOSTILE_PYTHON[name]
    code, problems, found = lint_dir(tmp_path, **{"hostile.py": content})
    assert code == 2
    assert len(problems) == 1 and problems[0].startswith("hostile.py:"), problems
    assert why in problems[0], problems
    assert found == ["DW101"]


def test_a_deep_but_parsable_expression_is_linted(tmp_path: Path) -> None:
    """900 nested binary operations parse; the rules walk them without recursion."""
    source = "async def f(server):\n    x = " + "+".join(["1"] * 900) + "\n    time.sleep(1)\n"
    code, problems, found = lint_dir(tmp_path, **{"deep.py": ("import time\n" + source).encode()})
    assert problems == []
    assert sorted(found) == ["DW101", "DW104"] and code == 1


def test_a_declared_latin_1_file_is_read(tmp_path: Path) -> None:
    """A coding cookie is honoured: Latin-1 text is not an error."""
    content = "# -*- coding: latin-1 -*-\nname = 'café'\n".encode("latin-1")
    code, problems, _ = lint_dir(tmp_path, **{"latin.py": content})
    assert problems == [] and code == 1


def test_symlink_loops_and_broken_links_do_not_stop_the_walk(tmp_path: Path) -> None:
    """A directory linking to its parent, a link to itself, a dangling link: walked once."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.py").write_text(BROKEN_STOP)
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    os.symlink(tmp_path / "self", tmp_path / "self")
    os.symlink(tmp_path / "missing.py", tmp_path / "dangling.py")
    began = time.monotonic()
    code, problems, found = lint_dir(tmp_path)
    assert time.monotonic() - began < 10
    assert problems == [] and found == ["DW101", "DW101"] and code == 1


def test_a_symlink_loop_given_by_name_is_a_problem(tmp_path: Path) -> None:
    """A path that is itself a loop cannot be opened: DW001 with the reason."""
    os.symlink(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "b", tmp_path / "a")
    result = lint_paths([str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "Too many levels of symbolic links" in result.problems[0].message


def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    """A FIFO named .py in the tree is passed over; given by name it is a problem, at once."""
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    code, problems, found = lint_dir(tmp_path)
    assert code == 1
    assert problems == [] and found == ["DW101"]
    result = lint_paths([str(fifo)])
    assert "not a regular file" in result.problems[0].message


def test_a_missing_path_is_a_problem_and_the_others_are_linted(tmp_path: Path) -> None:
    """A path that does not exist: DW001, exit 2, the real file still linted."""
    (tmp_path / "real.py").write_text(BROKEN_STOP)
    result = lint_paths([str(tmp_path / "nope"), str(tmp_path / "real.py")])
    assert result.exit_code == 2
    assert "No such file or directory" in result.problems[0].message
    assert [f.code for f in result.findings] == ["DW101"]


BILLION_LAUGHS = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
kind: Pod
spec: {containers: *i}
"""

HOSTILE_YAML = {
    "billion laughs": (BILLION_LAUGHS, "alias bomb"),
    "recursive alias": (b"kind: Pod\nspec: &s {containers: [*s]}\n", "recursive"),
    "deep nesting": (
        b"kind: Pod\nspec: " + b"[" * (MAX_DEPTH + 50) + b"]" * (MAX_DEPTH + 50),
        "nested deeper",
    ),
    "syntax error": (b"kind: Pod\nspec: {containers: [\n", "cannot parse YAML"),
    "tabs": (b"kind: Pod\n\tspec: {}\n", "cannot parse YAML"),
    "binary": (bytes(range(256)) * 4, "binary file"),
    "invalid UTF-8": (b'kind: Pod\nmetadata: {name: "\xff"}\n', "not valid utf-8"),
    "too many documents": (b"---\nkind: Pod\n" * 1100, "more than 1000 YAML documents"),
    "control character": (b"kind: Pod\nmetadata: {name: a\x1cb}\n", "cannot parse YAML"),
}


@pytest.mark.parametrize("name", list(HOSTILE_YAML))
def test_a_manifest_that_cannot_be_linted_is_reported_and_the_rest_linted(
    tmp_path: Path, name: str
) -> None:
    """YAML bombs, recursion, depth, bad syntax, binary: DW001 and exit 2, fast, and the
    neighbour still linted."""
    content, why = HOSTILE_YAML[name]
    began = time.monotonic()
    code, problems, found = lint_dir(tmp_path, **{"hostile.yaml": content})
    assert time.monotonic() - began < 10
    assert code == 2
    assert len(problems) == 1 and why in problems[0], problems
    assert found == ["DW101"]


def test_a_helm_template_is_passed_over(tmp_path: Path) -> None:
    """``{{ }}`` templates are not YAML until rendered: skipped, not an error."""
    code, problems, found = lint_dir(
        tmp_path, **{"deployment.yaml": b"kind: Deployment\nspec: {{ .Values.spec }}\n"}
    )
    assert problems == [] and found == ["DW101"] and code == 1


def test_python_tags_in_yaml_are_never_constructed(tmp_path: Path) -> None:
    """A ``!!python/object/apply`` tag is composed as a node, never run."""
    marker = tmp_path / "ran"
    content = f"kind: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    code, problems, found = lint_dir(tmp_path, **{"evil.yaml": content})
    assert not marker.exists()
    assert problems == [] and found == ["DW101"] and code == 1
