"""Framework contract tests run offline: CrewAI must not phone home, prompt, or write to ~."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["CREWAI_TESTING"] = "true"
os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="m99-crewai-"))


def pytest_configure(config: pytest.Config) -> None:
    # crewai's own import raises an ImportWarning (crewai.rag), an error under this repo's -W error.
    config.addinivalue_line("filterwarnings", "ignore:Cannot set an attribute on:ImportWarning")
