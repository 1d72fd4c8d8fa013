"""How long ``m99.init`` takes with LangChain, CrewAI and AutoGen installed, and what in it costs what.

Run ``python benchmarks/bench_init.py [--runs N]``.  Every measurement is a fresh Python process, so no
module is imported yet and nothing is warm; all of them register with one control plane started
beforehand in this process (``EmbeddedControlPlane``, on loopback).  Cases: the agent imports no framework
before ``m99.init``, or one of them (that import is not timed: the agent pays it anyway; its adapter then
installs inside ``m99.init``).  ``init`` is the ``m99.init(...)`` call alone, the first use of ``m99.init``
included (it loads the runtime); ``import m99`` is shown beside it.

Then, for the no-framework case, what ``import m99`` and the call are made of (medians over the runs,
each phase timed in the fresh process by importing it first or by wrapping it): the imports (httpx,
cryptography, M99's core, the adapters package, wrapt), building the Guard, building the control-plane
client (an httpx client: it loads the CA bundle even for ``http://``), the registration round trip,
starting the session's tasks, and setting up the post-import hooks.

Target (issue "fast one-line start"): ``m99.init`` in an agent that imports no framework <= 300 ms with
all three frameworks installed.  Offline: loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

TARGET_MS = 300.0

CASES = {
    "none": "",
    "langchain": "import langchain_core.tools, langchain.agents",
    "crewai": "import crewai",
    "autogen": "import autogen_agentchat.agents",
}

FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "crewai", "autogen_agentchat", "autogen_core", "autogen_ext")

# One fresh process: import the case's framework (untimed), then time ``import m99`` and ``m99.init``.
INIT = """
import json, sys, time
{pre}
t0 = time.perf_counter()
import m99
t1 = time.perf_counter()
runtime = m99.init(sys.argv[2], url=sys.argv[1])
t2 = time.perf_counter()
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(sys.argv[3].split(",")))
print(json.dumps({{"import_ms": (t1 - t0) * 1e3, "init_ms": (t2 - t1) * 1e3, "installed": runtime.installed,
                  "waiting": list(getattr(runtime, "waiting", [])), "loaded": loaded}}))
m99.shutdown()
"""

# The no-framework case again, each phase of m99.init timed where it happens.
PHASES = """
import json, sys, time
times = {}

def timed(label, owner, name):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times[label] = times.get(label, 0.0) + (time.perf_counter() - start) * 1e3
    setattr(owner, name, wrapper)

def imported(label, module):
    start = time.perf_counter()
    __import__(module)
    times[label] = (time.perf_counter() - start) * 1e3

start = time.perf_counter()
imported("import httpx", "httpx")
imported("import cryptography (Ed25519)", "cryptography.hazmat.primitives.asymmetric.ed25519")
imported("import m99 (the rest of it)", "m99")
imported("import the rest of m99's core (runtime, session, link, guard)", "m99.runtime")
imported("import m99.adapters", "m99.adapters")
imported("import wrapt and the post-import hooks", "m99.adapters._imports")
import m99.adapters, m99.guard, m99.link, m99.session
timed("build the Guard", m99.guard.Guard, "__init__")
timed("build the control-plane client (httpx client, CA bundle)", m99.link.ControlLink, "__init__")
timed("registration round trip (POST /api/agents/register)", m99.link.ControlLink, "register")
timed("start the session (register, then the heartbeat/push/lease tasks)", m99.session.Session, "start")
timed("set up the post-import hooks", m99.adapters, "install_on_import")
call = time.perf_counter()
runtime = m99.init(sys.argv[2], url=sys.argv[1])
end = time.perf_counter()
times["m99.init call"] = (end - call) * 1e3
times["import m99 + m99.init call"] = (end - start) * 1e3
print(json.dumps(times))
m99.shutdown()
"""


def child(code: str, url: str, name: str) -> dict[str, object]:
    env = {**os.environ, "CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true", "CREWAI_TESTING": "true"}
    env.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="m99-bench-init-"))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), url, name, ",".join(FRAMEWORKS)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    if out.returncode != 0:
        raise SystemExit(f"the measured process failed:\n{out.stderr}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per case (default 5)")
    args = parser.parse_args(argv)

    from importlib.metadata import version

    from m99 import EmbeddedControlPlane

    print(f"Python {sys.version.split()[0]}, m99 {version('m99')}")
    print(
        "installed: "
        + ", ".join(
            f"{d} {version(d)}" for d in ("langchain-core", "langchain", "langgraph", "crewai", "autogen-agentchat")
        )
    )
    print(f"{args.runs} fresh processes per case; medians (min-max) in ms\n")
    with EmbeddedControlPlane() as cp:
        print(f"{'imported before m99.init':<26}{'import m99':>18}{'m99.init':>22}   installed at once / waiting")
        verdict = True
        for case, pre in CASES.items():
            runs = [child(INIT.format(pre=pre), cp.url, f"bench-{case}-{n}") for n in range(args.runs)]
            imports = [float(r["import_ms"]) for r in runs]  # type: ignore[arg-type]
            inits = [float(r["init_ms"]) for r in runs]  # type: ignore[arg-type]
            last = runs[-1]
            loaded = last["loaded"]
            print(
                f"{case:<26}{median(imports):>8.1f} ({min(imports):.0f}-{max(imports):.0f})"
                f"{median(inits):>12.1f} ({min(inits):.0f}-{max(inits):.0f})"
                f"   {last['installed']} / {last['waiting']}"
                + ("" if case != "none" or not loaded else f"  (m99.init imported {loaded}!)")
            )
            if case == "none":
                verdict = median(inits) <= TARGET_MS and not loaded
        print()
        phases = [child(PHASES, cp.url, f"bench-phases-{n}") for n in range(args.runs)]
        print("what m99.init costs in a process that imports no framework (medians, ms):")
        for label in phases[0]:
            values = [float(p[label]) for p in phases]  # type: ignore[arg-type]
            print(f"  {label:<72}{median(values):>8.1f}  ({min(values):.1f}-{max(values):.1f})")
    print(f"\ntarget: m99.init with no framework imported <= {TARGET_MS:.0f} ms: " + ("met" if verdict else "NOT met"))
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
