"""Bootstrap of the worker zygote (``processes.py``), run by path: ``python
_zygote.py FD``.

It imports the few modules a worker needs without running the ``futurefsm`` and
``futurefsm.scheduler_stub`` package ``__init__`` files (which import the client and
ZeroMQ): those two packages start hollow and load for real on their first missing
attribute, so a task that uses futurefsm itself still finds all of it. Small workers
start faster and, when a cancel kills one, are gone sooner.
"""

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any


def _hollow(name: str, directory: str) -> None:
    """Register package ``name`` (in ``directory``) without running its ``__init__``."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory]
    )
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(attribute: str) -> Any:  # PEP 562
        path = os.path.join(directory, attribute)
        if os.path.isfile(f"{path}.py") or os.path.isdir(path):  # ``from pkg import mod``
            return importlib.import_module(f"{name}.{attribute}")
        del module.__dict__["__getattr__"]  # anything else: the package proper, now
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module


def _main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.dirname(here)
    sys.path[0] = os.path.dirname(package)  # not this directory: its modules are not top-level
    _hollow("futurefsm", package)
    _hollow("futurefsm.scheduler_stub", here)
    from futurefsm.scheduler_stub.processes import zygote_main

    zygote_main()


if __name__ == "__main__":
    _main()
