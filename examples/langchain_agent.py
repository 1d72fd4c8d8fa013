"""A LangChain agent (``create_agent``) under the kill switch, fully offline.

The example ships in the package as ``m99.examples.langchain_agent``; this file runs it from a checkout:
``python examples/langchain_agent.py [--url URL] [--wait]`` is ``python -m m99.examples.langchain_agent``.
"""

from m99.examples.langchain_agent import main

if __name__ == "__main__":
    raise SystemExit(main())
