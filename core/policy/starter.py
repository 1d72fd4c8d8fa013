"""The starter KILLSWITCH.md ``m99 policy init`` writes: the v1.0 format, every key commented with what M99
does with it."""

from __future__ import annotations

__all__ = ["STARTER"]

STARTER = """\
# KILLSWITCH

> Emergency stop policy for the AI agents of this repository, enforced in-process by M99.
> Spec version: 1.0 | Check it with: m99 policy check

---

## TRIGGERS
# Any trigger met moves the agent up the ESCALATION ladder.  Spend, token and call counts are
# summed over every framework and agent of the process.  Remove a line to drop that limit.

cost_limit_usd: 10.00          # Spend per session (process), hard: a call that would pass it is refused
cost_limit_daily_usd: 50.00    # Spend per calendar day, kept across restarts
# cost_limit_daily_scope: class  # M99: one daily budget for the agent's class (or global), leased
# cost_limit_daily_chunk_usd: 2.50  #   from the control plane in chunks (default 1/20 of the limit)
tokens_per_minute: 100000      # Token ceiling in any sliding minute
api_calls_per_minute: 60       # Tool and model calls per sliding minute
error_rate_threshold: 0.5      # Share of failed calls (among the last 20) that pauses the agent
runtime_limit_minutes: 120     # Longest run before a stop
consecutive_failures: 5        # Failed calls in a row that pause the agent

---

## FORBIDDEN
# Refused before the tool runs when a tool call's arguments name one of these paths.
# "~" is your home; relative patterns start at this file's directory; a pattern without "/"
# matches that name at any depth.

files:
  - .env
  - .env.*
  - "**/*.pem"
  - "**/*.key"
  - "**/secrets/**"
  - "~/.ssh/**"
  - "~/.aws/**"

directories:
  - /etc
  - /proc
  - /sys

network:
  - block_public_egress: false    # true: only the allowlist (and private addresses) may be reached
  - allowlist: []                 # e.g. api.openai.com, *.example.com, 10.0.0.0/8

actions:                        # Tools of these names (and M99's known aliases) are refused
  - git_push_force
  - drop_database
  - send_bulk_email
  - publish_to_production

---

## ESCALATION
# Rate triggers throttle, failure triggers pause, spend and runtime stop at once.  A trigger still
# breached at its level, or a level left unresolved past its timeout, goes to the next level.

level_1_throttle:
  action: reduce_rate           # Calls are spaced to half the rate of the last minute
  notify: false
  timeout_minutes: 5

level_2_pause:
  action: pause_and_notify      # New calls wait until an operator resumes or escalates
  notify: true
  channels:
    - email: ops@example.com    # M99 reports to its control plane; route its events to your channels
  timeout_minutes: 15

level_3_shutdown:
  action: full_stop             # Every tool and model call refused (the M99 L3 freeze)
  notify: true
  save_state: true              # Evidence snapshot before the stop
  allow_restart: true           # false: only an M99 authority may lift the stop

---

## AUDIT

log_file: .killswitch.log       # Append-only JSON Lines, next to this file
log_format: jsonl
log_fields:
  - timestamp
  - trigger_type
  - trigger_value
  - trigger_limit
  - action_taken
  - escalation_level
  - session_id
  - agent_id
retain_logs_days: 90            # M99 never deletes the log: keeping it this long is yours to do

---

## OVERRIDE

require_human_approval: true    # Changes go through review; M99 reads this file at start only
override_requires_mfa: false    # Your repository's business (signed commits)
protected_branch: main          # Your repository's business (branch protection)
allow_agent_modification: false # Agent tools may not write this file

---

## METADATA

owner: your-team
contact: ops@example.com
last_reviewed: 2026-01-01
review_frequency: quarterly
spec_version: "1.0"
spec_url: https://killswitch.md
"""
