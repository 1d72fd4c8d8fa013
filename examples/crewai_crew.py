"""A CrewAI crew under the kill switch, fully offline.

The example ships in the package as ``m99.examples.crewai_crew``; this file runs it from a checkout:
``python examples/crewai_crew.py [--url URL] [--wait]`` is ``python -m m99.examples.crewai_crew``.
"""

from m99.examples.crewai_crew import main

if __name__ == "__main__":
    raise SystemExit(main())
