"""MkDocs hook: the REST API page (``api.md``) and ``openapi.json``, written at build time from the schema of
the control plane's own FastAPI app, so the reference is always the one that runs.

Offline and side-effect free: the app is built over a throwaway SQLite database in a temporary directory
and never served; nothing is written into ``docs/``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

METHODS = ("get", "post", "put", "patch", "delete")


def openapi_schema() -> dict[str, Any]:
    from m99.server import build
    from m99.server.app import create_app

    with tempfile.TemporaryDirectory(prefix="m99-docs-") as tmp:
        cp = build(Path(tmp))
        try:
            schema: dict[str, Any] = create_app(cp).openapi()
        finally:
            cp.close()
    return schema


SECTIONS = ("Operators (bearer token)", "Agents (Ed25519-signed)", "Open (no token)")
AGENT_PATHS = ("/api/agents/register", "/api/agents/{agent_id}/", "/api/acks")


def _section(path: str, op: dict[str, Any]) -> str:
    if path.startswith(AGENT_PATHS):
        return SECTIONS[1]
    if any(p.get("name") == "authorization" for p in op.get("parameters") or ()):
        return SECTIONS[0]
    return SECTIONS[2]


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = _ref_name(prop["$ref"])
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"array of {_type_of(prop.get('items', {}))}"
    return str(prop.get("type", "any"))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _limits(prop: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("maxItems", "max items"),
        ("pattern", "pattern"),
    ):
        if key in prop:
            value = f"`{prop[key]}`" if key == "pattern" else prop[key]
            parts.append(f"{label} {value}")
    if "enum" in prop:
        parts.append("one of " + ", ".join(f"`{v}`" for v in prop["enum"]))
    if "default" in prop:
        parts.append(f"default `{json.dumps(prop['default'])}`")
    return "; ".join(parts)


def render(schema: dict[str, Any]) -> str:
    out = [
        "# REST API reference",
        "",
        f"Generated from the OpenAPI schema of the control plane (M99 {schema['info']['version']}) when this "
        "site was built; a running `m99 serve` serves the same schema at `/openapi.json`, browsable at `/docs` "
        "and `/redoc` (assets from the package: no CDN). Download it: [openapi.json](openapi.json).",
        "",
        "Operator routes take `Authorization: Bearer <token>`; agent routes are Ed25519-signed by the agent. "
        'Every error is `{"error": {"code", "message"}}` with a 4xx status for bad input (see '
        "[Operations](operations.md#errors)).",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                op = item[method]
                by_tag.setdefault(_section(path, op), []).append((method, path, op))
    for tag in SECTIONS:
        if tag not in by_tag:
            continue
        out += [f"## {tag}", ""]
        for method, path, op in by_tag[tag]:
            out += [f"### `{method.upper()} {path}`", ""]
            summary = op.get("description") or op.get("summary") or ""
            if summary:
                out += [summary.strip(), ""]
            params = op.get("parameters") or []
            if params:
                out += ["| parameter | in | type | required |", "| --- | --- | --- | --- |"]
                for p in params:
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_cell(_type_of(p.get('schema', {})))} | "
                        f"{'yes' if p.get('required') else 'no'} |"
                    )
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                out += [f"Body: {_type_of(body)}", ""]
            codes = ", ".join(f"`{code}`" for code in op.get("responses", {}))
            if codes:
                out += [f"Responses: {codes}", ""]
    components = schema.get("components", {}).get("schemas", {})
    if components:
        out += ["## Schemas", ""]
        for name in sorted(components):
            model = components[name]
            out += [f"### {name}", ""]
            if model.get("description"):
                out += [model["description"].strip(), ""]
            props = model.get("properties", {})
            if props:
                required = set(model.get("required", ()))
                out += ["| field | type | required | bounds |", "| --- | --- | --- | --- |"]
                for field, prop in props.items():
                    out.append(
                        f"| `{field}` | {_cell(_type_of(prop))} | {'yes' if field in required else 'no'} | "
                        f"{_cell(_limits(prop))} |"
                    )
                out.append("")
    return "\n".join(out) + "\n"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    schema = openapi_schema()
    files.append(File.generated(config, "api.md", content=render(schema)))
    files.append(File.generated(config, "openapi.json", content=json.dumps(schema, indent=2)))
    return files
