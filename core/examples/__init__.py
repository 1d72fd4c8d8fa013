"""Example agents under the kill switch, shipped in the package: a LangChain agent, a CrewAI crew, an
AutoGen team and a mixed fleet, every one with an offline scripted model (no key, no network).

    python -m m99.examples.langchain_agent      # or crewai_crew, autogen_team, mixed_fleet
    m99 demo                                    # all three, each in its own process, with a live view

Importing this package (or any module in it) imports no framework: each example imports its framework
when it builds its agent, so it needs ``pip install 'm99[all]'`` only to run.
"""

from __future__ import annotations

__all__: list[str] = []
