"""Loaded at interpreter start by ``drainwatch run`` (this folder is put on PYTHONPATH).

It instruments the process, then runs any other ``sitecustomize`` the environment had, so
``drainwatch run`` composes with other tools that use the same hook.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

if os.environ.get("DRAINWATCH_AUTO") == "1":
    try:
        from drainwatch._autoinstrument import install

        install()
    except Exception as error:  # never stop the application from starting
        sys.stderr.write(f"drainwatch: auto-instrumentation is off: {error!r}\n")

for _entry in sys.path:
    if not _entry or os.path.abspath(_entry) == _HERE:
        continue
    _candidate = os.path.join(_entry, "sitecustomize.py")
    if os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_drainwatch_next_sitecustomize", _candidate)
        if _spec is not None and _spec.loader is not None:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
