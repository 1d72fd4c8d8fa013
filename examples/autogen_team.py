"""An AutoGen team (``RoundRobinGroupChat``) under the kill switch, fully offline.

The example ships in the package as ``m99.examples.autogen_team``; this file runs it from a checkout:
``python examples/autogen_team.py [--url URL] [--wait]`` is ``python -m m99.examples.autogen_team``.
"""

from m99.examples.autogen_team import main

if __name__ == "__main__":
    raise SystemExit(main())
