"""One switch, three frameworks: a LangChain agent, a CrewAI crew and an AutoGen team in one process.

The example ships in the package as ``m99.examples.mixed_fleet``; this file runs it from a checkout:
``python examples/mixed_fleet.py [--url URL] [--wait]`` is ``python -m m99.examples.mixed_fleet``.
"""

from m99.examples.mixed_fleet import main

if __name__ == "__main__":
    raise SystemExit(main())
