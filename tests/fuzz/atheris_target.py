"""One atheris run of one target: ``python -m tests.fuzz.atheris_target TARGET [libFuzzer
flags] CORPUS...``. Started by ``python -m tests.fuzz``, one process per target, because
libFuzzer ends the process when the run ends."""

from __future__ import annotations

import sys

import atheris

# Coverage feedback from drainwatch's own code and from PyYAML (the config target's parser);
# json is a C extension and needs none.
with atheris.instrument_imports(include=["drainwatch", "yaml"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    name, *flags = sys.argv[1:]
    atheris.Setup([sys.argv[0], *flags], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
