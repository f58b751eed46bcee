"""Load a function's handler in-process, the way the Lambda runtime would.

Each ``functions/<folder>/app.py`` is loaded once from its file under the
module name ``functions.<folder>.app`` (every function's module is called
``app``, so the plain name would collide) and cached, like a warm container.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from local.template import LambdaFunction

Handler = Callable[[Any, Any], Any]

_ACCOUNT_ID = "123456789012"
_REGION = "us-east-1"

_load_lock = threading.Lock()


def load_module(function: LambdaFunction) -> ModuleType:
    """The function's handler module, imported on first use and then reused."""
    module_path, _, _ = function.handler.rpartition(".")
    name = f"functions.{function.folder}.{module_path}"
    source = function.code_dir.joinpath(*module_path.split(".")).with_suffix(".py")
    with _load_lock:
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__file__", None) == str(source):
            return loaded
        spec = importlib.util.spec_from_file_location(name, source)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {source} for {function.logical_id}")
        module = importlib.util.module_from_spec(spec)
        # Registered before running it, as ``import`` does: pydantic resolves
        # the annotations of models defined in the module through sys.modules.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module


def load_handler(function: LambdaFunction) -> Handler:
    _, _, attribute = function.handler.rpartition(".")
    handler: Handler = getattr(load_module(function), attribute)
    if not callable(handler):
        raise TypeError(f"{function.handler} of {function.logical_id} is not callable")
    return handler


@dataclass
class LocalLambdaContext:
    """Enough of ``LambdaContext`` for Powertools (Logger, Metrics, Tracer)."""

    function_name: str
    memory_limit_in_mb: int = 128
    timeout_s: int = 3
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    _deadline: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    @classmethod
    def for_function(cls, function: LambdaFunction) -> LocalLambdaContext:
        return cls(function.logical_id, function.memory_mb, function.timeout_s)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{_REGION}:{_ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
