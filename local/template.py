"""Read ``template.yaml`` into the little the local tools need: functions, routes, env.

CloudFormation short tags (``!Ref``, ``!Sub``, ``!If`` …) are not YAML that
``yaml.safe_load`` understands, so a SafeLoader subclass turns each into its
long form (``{"Ref": …}``, ``{"Fn::Sub": …}``). Environment values that are
intrinsics are only known once deployed, so they are dropped; the local runner
supplies its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATE_PATH = REPO_ROOT / "template.yaml"

_FUNCTION_TYPE = "AWS::Serverless::Function"


class TemplateError(ValueError):
    """The template uses something the local tools cannot represent."""


class CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags into their long (JSON) form.

    ``!Ref X`` → ``{"Ref": "X"}``, ``!GetAtt A.B`` → ``{"Fn::GetAtt": ["A", "B"]}``,
    any other ``!Name v`` → ``{"Fn::Name": v}``.
    """


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def load_cfn_yaml(text: str) -> dict[str, Any]:
    """A template's text as the JSON-form document CloudFormation itself sees."""
    document = yaml.load(text, Loader=CloudFormationLoader)  # noqa: S506 (SafeLoader subclass)
    if not isinstance(document, dict):
        raise TemplateError("a CloudFormation template is a mapping")
    return document


@dataclass(frozen=True)
class Route:
    """One ``HttpApi`` event: ``method`` is upper case (``ANY`` matches every method)."""

    method: str
    path: str
    function_id: str

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class LambdaFunction:
    logical_id: str
    code_dir: Path
    handler: str
    environment: Mapping[str, str]
    routes: tuple[Route, ...]
    memory_mb: int = 128
    timeout_s: int = 3

    @property
    def folder(self) -> str:
        return self.code_dir.name


@dataclass(frozen=True)
class Template:
    path: Path
    functions: tuple[LambdaFunction, ...]

    def function(self, logical_id: str) -> LambdaFunction:
        for function in self.functions:
            if function.logical_id == logical_id:
                return function
        raise KeyError(f"no function {logical_id!r} in {self.path}")

    def function_by_folder(self, folder: str) -> LambdaFunction:
        for function in self.functions:
            if function.folder == folder:
                return function
        known = ", ".join(sorted(function.folder for function in self.functions))
        raise KeyError(f"no function with CodeUri functions/{folder}/ in {self.path} (known: {known})")


def _plain_string(value: Any) -> str | None:
    """CloudFormation turns scalars into strings; intrinsics have no local value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _literal_int(name: str, properties: Mapping[str, Any], globals_: Mapping[str, Any], default: int) -> int:
    value = properties.get(name, globals_.get(name, default))
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _variables(properties: Mapping[str, Any]) -> dict[str, Any]:
    environment = properties.get("Environment") or {}
    return dict(environment.get("Variables") or {})


def _routes(logical_id: str, properties: Mapping[str, Any]) -> tuple[Route, ...]:
    routes = []
    for event_id, event in (properties.get("Events") or {}).items():
        if event.get("Type") != "HttpApi":
            continue
        event_properties = event.get("Properties") or {}
        method, path = event_properties.get("Method"), event_properties.get("Path")
        if not isinstance(method, str) or not isinstance(path, str):
            raise TemplateError(f"{logical_id}.{event_id}: HttpApi events need a literal Method and Path")
        routes.append(Route(method=method.upper(), path=path, function_id=logical_id))
    return tuple(routes)


def _function(
    template_dir: Path, logical_id: str, properties: Mapping[str, Any], globals_: Mapping[str, Any]
) -> LambdaFunction:
    code_uri = properties.get("CodeUri", globals_.get("CodeUri"))
    handler = properties.get("Handler", globals_.get("Handler"))
    if not isinstance(code_uri, str) or not isinstance(handler, str):
        raise TemplateError(f"{logical_id}: CodeUri and Handler must be literal strings")
    merged = {**_variables(globals_), **_variables(properties)}
    environment = {name: text for name, value in merged.items() if (text := _plain_string(value)) is not None}
    return LambdaFunction(
        logical_id=logical_id,
        code_dir=template_dir / PurePosixPath(code_uri),
        handler=handler,
        environment=environment,
        routes=_routes(logical_id, properties),
        memory_mb=_literal_int("MemorySize", properties, globals_, 128),
        timeout_s=_literal_int("Timeout", properties, globals_, 3),
    )


def load_template(path: Path = DEFAULT_TEMPLATE_PATH) -> Template:
    path = path.resolve()
    document = load_cfn_yaml(path.read_text())
    globals_ = (document.get("Globals") or {}).get("Function") or {}
    functions = tuple(
        _function(path.parent, logical_id, resource.get("Properties") or {}, globals_)
        for logical_id, resource in (document.get("Resources") or {}).items()
        if resource.get("Type") == _FUNCTION_TYPE
    )
    return Template(path=path, functions=functions)


def http_routes(template: Template) -> list[Route]:
    return [route for function in template.functions for route in function.routes]
