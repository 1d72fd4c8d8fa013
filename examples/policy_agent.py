"""A KILLSWITCH.md-governed agent that overspends on purpose and is stopped by its own policy.

The example ships in the package as ``m99.examples.policy_agent`` (its KILLSWITCH.md beside it); this
file runs it from a checkout: ``python examples/policy_agent.py`` is ``python -m m99.examples.policy_agent``.
"""

from m99.examples.policy_agent import main

if __name__ == "__main__":
    raise SystemExit(main())
