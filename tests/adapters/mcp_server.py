"""A tiny stdio MCP server for the AutoGen MCP-workbench tests: its tool leaves a file behind."""

from __future__ import annotations

from pathlib import Path

from mcp.server.fastmcp import FastMCP

server = FastMCP("m99-test")


@server.tool()
def write_file(path: str, text: str) -> str:
    """Write text to a file."""
    Path(path).write_text(text)
    return f"wrote {len(text)} characters"


if __name__ == "__main__":
    server.run("stdio")
