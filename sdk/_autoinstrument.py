"""What ``drainwatch run`` does inside the target process, before the application runs.

Like ``opentelemetry-instrument``: the command is exec'd with a ``sitecustomize`` on its
path that calls ``install()``. That starts the reporter, observes termination signals
(also through the handlers the application installs later), and patches gRPC servers,
grpc_health servicers, aiohttp runners and sites, and uvicorn servers as their modules
are imported, so a service that knows nothing about drainwatch reports its in-flight
requests, its listeners and its shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from . import _runtime
from ._signals import observe_signals, patch_signal_installers

logger = logging.getLogger("drainwatch")

ENV_AUTO = "DRAINWATCH_AUTO"
Patch = Callable[[ModuleType], None]


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then patches the freshly executed module."""

    def __init__(self, loader: importlib.abc.Loader, patch: Patch) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _apply(self._patch, module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the modules that have a patch."""

    def __init__(self, patches: dict[str, Patch]) -> None:
        self._patches = patches
        self._busy = threading.local()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        patch = self._patches.get(fullname)
        if patch is None or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname  # find the real spec without finding ourselves again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def _apply(patch: Patch, module: ModuleType) -> None:
    try:
        patch(module)
    except Exception:  # a patch that fails leaves the module as it was
        logger.warning("drainwatch: could not instrument %s", module.__name__, exc_info=True)
        _runtime.note_internal_error()


# -- the patches -----------------------------------------------------------------------------


def patch_grpc(grpc: Any) -> None:
    from .integrations import grpc as integration

    grpc.server = integration.counting_factory(grpc.server, aio=False)
    aio = getattr(grpc, "aio", None)
    if aio is not None:
        aio.server = integration.counting_factory(aio.server, aio=True)


def _instrument_on_init(cls: Any, instrument: Callable[[Any], Any]) -> None:
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        original_init(self, *args, **kwargs)
        try:
            instrument(self)
        except Exception:
            _runtime.note_internal_error()

    cls.__init__ = __init__


def patch_grpc_health(module: ModuleType) -> None:
    from .integrations import grpc as integration

    _instrument_on_init(module.HealthServicer, integration.instrument_health_servicer)
    aio = getattr(module, "aio", None)
    if aio is not None:
        _instrument_on_init(aio.HealthServicer, integration.instrument_health_servicer)


def patch_aiohttp_web(web: ModuleType) -> None:
    from .integrations import aiohttp as integration

    runner_class = web.AppRunner
    original_setup = runner_class.setup

    @functools.wraps(original_setup)
    async def setup(self: Any) -> None:
        app = getattr(self, "app", None)
        if app is not None and not app.frozen:
            integration.setup(app)
        integration.track_runner(self)
        await original_setup(self)

    runner_class.setup = setup
    _instrument_on_init(web.BaseSite, integration.track_site)


def patch_uvicorn_server(module: ModuleType) -> None:
    from .integrations import asgi as integration

    _instrument_on_init(module.Server, integration.track_uvicorn)


def patch_uvicorn_config(module: ModuleType) -> None:
    from .integrations import asgi as integration

    config_class = module.Config
    original_load = config_class.load

    @functools.wraps(original_load)
    def load(self: Any) -> None:
        original_load(self)
        if not isinstance(self.loaded_app, integration.DrainwatchMiddleware):
            self.loaded_app = integration.DrainwatchMiddleware(self.loaded_app)

    config_class.load = load


def patch_asyncio_runners(runners: Any) -> None:
    """Record ``asyncio.run()`` cancelling the tasks left when main returns: the ``cancel``
    step, with how many tasks it cut (the requests they served are cut with them)."""
    from ._shutdown import CANCEL, STATE

    original = getattr(runners, "_cancel_all_tasks", None)
    if original is None:
        return

    @functools.wraps(original)
    def cancel_all_tasks(loop: Any) -> None:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not pending:
            original(loop)
            return
        STATE.step_started(CANCEL, detail=f"asyncio.run() cancelled {len(pending)} task(s)")
        try:
            original(loop)
        finally:
            STATE.step_finished(CANCEL)

    runners._cancel_all_tasks = cancel_all_tasks


def track_tasks() -> None:
    """Watch every event loop as it starts (its tasks and its lag), unless tracking is off,
    and dump tasks and threads on ``DRAINWATCH_DUMP_SIGNAL`` when one is set."""
    from ._task_dump import install_dump_signal
    from ._tracking import TRACKING

    settings = _runtime.current().settings
    if settings.enabled and settings.tracking:
        TRACKING.watch_loops_as_they_start()
    install_dump_signal(settings.dump_signal)


PATCHES: dict[str, Patch] = {
    "asyncio.runners": patch_asyncio_runners,
    "grpc": patch_grpc,
    "grpc_health.v1.health": patch_grpc_health,
    "aiohttp.web": patch_aiohttp_web,
    "uvicorn.server": patch_uvicorn_server,
    "uvicorn.config": patch_uvicorn_config,
}
_installed: set[str] = set()


def install(patches: dict[str, Patch] | None = None) -> None:
    """Instrument this process (idempotent). Never raises into the application."""
    if "done" in _installed:
        return
    _installed.add("done")
    chosen = PATCHES if patches is None else patches
    try:
        _runtime.current()
        track_tasks()
        observe_signals()
        patch_signal_installers()
        sys.meta_path.insert(0, _PostImportFinder(chosen))
        for name, patch in chosen.items():
            module = sys.modules.get(name)
            if module is not None:
                _apply(patch, module)
    except Exception:
        logger.warning("drainwatch: auto-instrumentation failed", exc_info=True)
