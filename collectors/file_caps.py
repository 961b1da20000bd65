"""File capabilities: how the agent's image lets py-spy read another process without root,
and how the agent tells whether it will work.

Kubernetes adds a capability (``capabilities.add: [SYS_PTRACE]``) to a container's bounding
set, but a process that is not uid 0 gets no effective capability from it: the kernel only
gives capabilities on ``execve`` to root, to ambient sets (which Kubernetes does not set),
or through the executed file's own capabilities. So the image gives the py-spy binary the
file capability ``cap_sys_ptrace+ep`` (``grant``), the agent runs as a non-root user, and
when it starts py-spy the kernel computes py-spy's capabilities as

    permitted = file permitted & bounding set        (SYS_PTRACE, if the pod added it)
    effective = permitted, as the file's effective bit is set

unless the agent runs with ``no_new_privs`` (``allowPrivilegeEscalation: false``), under
which, as prctl(2) documents, the kernel ignores file capabilities. This module reads the
file's ``security.capability`` attribute and this process's ``CapEff``, ``CapBnd`` and
``NoNewPrivs``; ``preflight.check_pyspy_file_capability`` turns them into a verdict.

``python -m drainwatch.collectors.file_caps grant PATH`` is the image's build step (root, or
``CAP_SETFCAP``, is needed to set the attribute); ``show PATH`` prints what a file has.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass
from typing import Final

CAP_SYS_PTRACE: Final = 19
XATTR: Final = "security.capability"
_REVISION_MASK: Final = 0xFF000000
_REVISION_1: Final = 0x01000000
_REVISION_2: Final = 0x02000000
_REVISION_3: Final = 0x03000000
_FLAG_EFFECTIVE: Final = 0x000001


@dataclass(frozen=True, slots=True)
class FileCaps:
    """The capabilities a file gives on exec (bit masks) and its effective bit."""

    permitted: int
    inheritable: int
    effective: bool

    def has(self, capability: int) -> bool:
        return bool(self.permitted >> capability & 1)


def parse_file_caps(data: bytes) -> FileCaps | None:
    """Decode a ``security.capability`` value (revisions 1 to 3); ``None`` if malformed."""
    if len(data) < 4:
        return None
    (magic,) = struct.unpack_from("<I", data)
    revision = magic & _REVISION_MASK
    effective = bool(magic & _FLAG_EFFECTIVE)
    if revision == _REVISION_1 and len(data) >= 12:
        permitted, inheritable = struct.unpack_from("<II", data, 4)
        return FileCaps(permitted, inheritable, effective)
    if revision in (_REVISION_2, _REVISION_3) and len(data) >= 20:
        low_p, low_i, high_p, high_i = struct.unpack_from("<IIII", data, 4)
        return FileCaps(low_p | high_p << 32, low_i | high_i << 32, effective)
    return None


def read_file_caps(path: str) -> FileCaps | None:
    """The file capabilities of ``path``; ``None`` when it has none (or they cannot be read)."""
    try:
        return parse_file_caps(os.getxattr(path, XATTR))
    except OSError:
        return None


def grant(path: str, capabilities: tuple[int, ...] = (CAP_SYS_PTRACE,)) -> None:
    """Give ``path`` the file capabilities ``capabilities`` as permitted and effective (what
    ``setcap cap_sys_ptrace+ep PATH`` does). Needs ``CAP_SETFCAP``; raises ``OSError``."""
    mask = 0
    for capability in capabilities:
        mask |= 1 << capability
    value = struct.pack(
        "<IIIII", _REVISION_2 | _FLAG_EFFECTIVE, mask & 0xFFFFFFFF, 0, mask >> 32, 0
    )
    os.setxattr(path, XATTR, value)


@dataclass(frozen=True, slots=True)
class ProcessCaps:
    """This process's capability sets (bit masks) and its ``no_new_privs`` flag."""

    effective: int
    bounding: int
    no_new_privs: bool


def process_caps(proc_root: str = "/proc") -> ProcessCaps | None:
    """From ``{proc_root}/self/status``; ``None`` when it cannot be read."""
    try:
        with open(f"{proc_root}/self/status", encoding="utf-8", errors="replace") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return ProcessCaps(
            int(fields["CapEff"].strip(), 16),
            int(fields["CapBnd"].strip(), 16),
            fields.get("NoNewPrivs", "0").strip() == "1",
        )
    except (OSError, KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drainwatch.collectors.file_caps",
        description="Grant py-spy cap_sys_ptrace+ep (image build step), or show a file's "
        "capabilities.",
    )
    parser.add_argument("action", choices=("grant", "show"))
    parser.add_argument("path")
    args = parser.parse_args(argv)
    if args.action == "grant":
        try:
            grant(args.path)
        except OSError as error:
            print(f"cannot set {XATTR} on {args.path}: {error}", file=sys.stderr)
            return 1
    caps = read_file_caps(args.path)
    if caps is None:
        print(f"{args.path}: no file capabilities")
        return 1 if args.action == "grant" else 0
    effective = "+e" if caps.effective else ""
    print(
        f"{args.path}: permitted={caps.permitted:#x} inheritable={caps.inheritable:#x}{effective}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
