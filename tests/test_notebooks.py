"""The notebooks in examples/notebooks run top to bottom (nbclient, a real kernel, the real frameworks with
offline scripted models, an embedded control plane): each halts its agents mid-task, shows every halt
confirmed with its time-to-halt, and the audit chain verified.  The saved copies are what
``examples/notebooks/_build.py`` writes, with their outputs, so a repository page shows a real run."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: pip install 'm99[dev]'")
pytest.importorskip("nbclient", reason="nbclient is not installed: pip install 'm99[dev]'")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (the kernel nbclient starts)")

HERE = Path(__file__).resolve().parent.parent / "examples" / "notebooks"
CELL_TIMEOUT = 120  # seconds a cell may take; each notebook runs in 5-15 s here
EXPECTED = {
    # LangChain's run ends at the next tool call or model call, whichever comes first after the freeze.
    "langchain": [
        r"case pack valid: execution exe_\w+",
        r"audit entries linked to a signed checkpoint",
        r"invoke raised (ToolCallRefused|ModelCallRefused): M99: ",
        "1 of 1 agent acknowledged",
    ],
    "crewai": [
        r"case pack valid: execution exe_\w+",
        r"audit entries linked to a signed checkpoint",
        "kickoff_async raised M99RunStopped",
        r"1 of 1 agent acknowledged \(halt confirmed\)",
    ],
    "autogen": [
        r"case pack valid: execution exe_\w+",
        r"audit entries linked to a signed checkpoint",
        "team.run ended: Stopped by the M99 kill switch.",
        r"1 of 1 agent acknowledged \(halt confirmed\)",
    ],
    "mixed_fleet": [
        r"case pack valid: execution exe_\w+",
        r"audit entries linked to a signed checkpoint",
        "crew-analyst: M99RunStopped",
        r"lc-researcher: (ToolCallRefused|ModelCallRefused): M99: ",
        "ag-team: ended: Stopped by the M99 kill switch.",
        r"4 of 4 agents acknowledged \(halt confirmed\)",
        r"'still_held': \[\]",
    ],
}


def _builder() -> object:
    spec = importlib.util.spec_from_file_location("notebook_build", HERE / "_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["notebook_build"] = module
    spec.loader.exec_module(module)
    return module


def _text(nb: object) -> str:
    parts = []
    for cell in nb.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", ()):
            assert output["output_type"] != "error", f"{output.get('ename')}: {output.get('evalue')}"
            parts.append(output.get("text", "") or str(output.get("data", {}).get("text/plain", "")))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_notebook_runs_top_to_bottom_and_halts_its_agents(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _builder()
    saved = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
    # What is committed is what _build.py writes (so editing one without the other fails here) ...
    fresh = build.build(name)  # type: ignore[attr-defined]
    assert [c.source for c in saved.cells] == [c.source for c in fresh.cells], "run examples/notebooks/_build.py"
    # ... with the outputs of a real run, that read as one.
    for expected in EXPECTED[name]:
        assert re.search(expected, _text(saved)), expected
    # And it runs now: executed afresh, in a kernel of its own, offline.
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai"))
    ran = build.execute(saved, timeout=CELL_TIMEOUT)  # type: ignore[attr-defined]
    text = _text(ran)
    for expected in [*EXPECTED[name], "audit chain valid: "]:
        assert re.search(expected, text), f"{expected!r} not in the output of {name}.ipynb:\n{text}"
    assert "not confirmed: []" in text or name == "mixed_fleet"
