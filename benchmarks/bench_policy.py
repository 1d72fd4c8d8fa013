"""What a KILLSWITCH.md policy adds to an allowed tool call when no trigger is near.

Run ``python benchmarks/bench_policy.py [--quick]``.  The same method as ``bench_adapters.py`` (whose
helpers it uses): for every installed framework, an allowed tool call along the framework's real tool
path, with the adapter installed and a level-0 Guard, timed without a policy and with one attached, in
alternating rounds; the verdict is the paired median of with/without.  Two policies: the triggers of the
published template (cost, tokens and calls per minute, error rate, failures in a row, far from their
limits), graded; and the same with the template's FORBIDDEN files, directories and actions, shown
beside (every tool call's arguments are then scanned for forbidden paths: that work is the rule's).

Target (issue 14): the policy adds nothing measurable (<= 5 %, the adapters' own bar) to an allowed
tool call when no trigger is near.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_adapters as ba

from m99 import adapters
from m99.guard import Guard
from m99.policy.gate import PolicyGate, load_for_process

TRIGGERS = """## TRIGGERS
cost_limit_usd: 50.00
tokens_per_minute: 100000000
api_calls_per_minute: 100000000
error_rate_threshold: 0.25
consecutive_failures: 5
"""
FORBIDDEN = """---
## FORBIDDEN
files:
  - .env
  - .env.*
  - "**/*.pem"
  - "**/secrets/**"
  - "~/.ssh/**"
directories:
  - /etc
  - /proc
actions:
  - git_push_force
  - drop_database
  - send_bulk_email
"""


def gate_for(text: str, directory: Path, name: str) -> PolicyGate:
    path = directory / f"{name}.md"
    path.write_text(text)
    gate = load_for_process(path, agent="bench-agent", prices={"*": {"input": 1.0, "output": 1.0}})
    assert gate is not None
    return gate


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    rounds = ba.QUICK_ROUNDS if quick else ba.ROUNDS
    seconds = ba.QUICK_SECONDS_PER_TIMING if quick else ba.SECONDS_PER_TIMING
    ba.logging.disable(ba.logging.WARNING)
    ba.warnings.simplefilter("ignore")
    guard = Guard("bench-agent", kind="autonomous", terminate=lambda grace: None)
    adapters.default_resolver.default = guard
    work = Path(tempfile.mkdtemp(prefix="m99-bench-policy-"))
    gates = {
        "triggers": gate_for(TRIGGERS, work, "triggers"),
        "+FORBIDDEN": gate_for(TRIGGERS + FORBIDDEN, work, "forbidden"),
    }
    cleanup: list[ba.Callable[[], object]] = []
    cases: list[ba.Case] = []
    found: list[str] = []
    try:
        for name, build in ba.BUILDERS.items():
            if adapters.ADAPTERS[name].missing() is not None:
                continue
            adapters.install(name)  # installed on both sides: the policy is what differs
            found.append(f"{name}: {ba.versions(ba.PACKAGES[name])}")
            for case in build(cleanup):
                if case.added != "install()":
                    continue
                for label, gate in gates.items():

                    def enable(gate: PolicyGate = gate) -> None:
                        guard.attach_policy(gate)

                    def disable() -> None:
                        guard.attach_policy(None)

                    cases.append(
                        ba.Case(case.framework, case.path, label, case.without, case.with_m99, enable, disable)
                    )
        sizes = [ba.calibrate(case, seconds) for case in cases]
        for r in range(rounds):
            for case, n in zip(cases, sizes, strict=True):
                order = (False, True) if r % 2 == 0 else (True, False)
                per_unit = {g: ba.time_side(case, g, n, guard) for g in order}
                case.ratios.append(per_unit[True] / per_unit[False])
    finally:
        guard.attach_policy(None)
        adapters.uninstall_all()
        adapters.default_resolver.default = None
        for step in cleanup:
            step()
        for gate in gates.values():
            gate.close()

    print(f"Python {sys.version.split()[0]}, m99 {ba.versions(('m99',)).removeprefix('m99 ')}")
    for line in found:
        print(line)
    print(f"{rounds} alternating with/without-policy rounds of ~{seconds * 1000:g} ms each; µs per allowed tool call")
    row = "{:<10} {:<42} {:<11} {:>8} {:>8} {:>7} {:>9} {:>12}  {}"
    print(
        row.format("framework", "tool-call path", "policy", "without", "with", "added", "paired", "95 % CI", "verdict")
    )
    print(row.format("", "", "", "best µs", "best µs", "µs", "median %", "of median %", "").rstrip())
    graded = over = 0
    for case in cases:
        base, with_policy = case.best[False], case.best[True]
        paired = (ba.statistics.median(case.ratios) - 1) * 100
        low, high = ba.median_interval(case.ratios)
        if case.added == "triggers":
            graded += 1
            over += paired > ba.TARGET_PCT
            verdict = "OK" if paired <= ba.TARGET_PCT else "OVER"
        else:
            verdict = "within" if paired <= ba.TARGET_PCT else "over"
        if case.recorded[True] != case.units[True] or case.recorded[False] != case.units[False]:
            verdict += f" (Guard saw {case.recorded[True]}/{case.recorded[False]} calls)"
        interval = f"{(low - 1) * 100:.1f}..{(high - 1) * 100:.1f}"
        figures = (f"{base:.1f}", f"{with_policy:.1f}", f"{with_policy - base:.1f}", f"{paired:.1f}", interval)
        print(row.format(case.framework, case.path, case.added, *figures, verdict))
    print(
        "policy: triggers = the template's TRIGGERS, far from their limits (graded); +FORBIDDEN = with the "
        "template's FORBIDDEN paths and actions too (every call's arguments scanned), shown beside"
    )
    print(f"target: <= {ba.TARGET_PCT:g} % per allowed tool call; {graded - over} of {graded} graded rows meet it")
    return 0 if graded and not over else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
