"""`libra-node status`: studies per state, queue depths, recent failures. No PHI.

Studies are named by a short keyed digest of their UID (the same one the
logs use), so ops can follow one study across lines without seeing who it is.
"""

from __future__ import annotations

import time
from typing import Any

from libra_node.ledger import Ledger, StudyState
from libra_node.logs import phi_hash


def collect_status(
    ledger: Ledger, queue_depths: dict[str, int | None], now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    oldest = ledger.oldest_by_state()
    return {
        "studies": ledger.count_by_state(),
        "oldest_seconds": {state: round(now - at, 1) for state, at in sorted(oldest.items())},
        "queues": queue_depths,
        "recent_failures": [
            {
                "study": phi_hash(study.study_uid),
                "version": study.version,
                "reason": study.state_reason,
                "failed_seconds_ago": round(now - study.state_changed_at, 1),
            }
            for study in ledger.recent_failures()
        ],
    }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_status(status: dict[str, Any]) -> str:
    lines = ["studies:"]
    for state in StudyState:
        count = status["studies"].get(state.value, 0)
        oldest = status["oldest_seconds"].get(state.value)
        waiting = f"  (oldest {_age(oldest)})" if oldest is not None and count else ""
        lines.append(f"  {state.value:<10} {count:>6}{waiting}")
    lines.append("queues:")
    for name, depth in status["queues"].items():
        lines.append(f"  {name:<10} {'unreachable' if depth is None else depth:>6}")
    failures = status["recent_failures"]
    lines.append("recent failures:" if failures else "recent failures: none")
    for failure in failures:
        lines.append(
            f"  study {failure['study']} v{failure['version']}, "
            f"{_age(failure['failed_seconds_ago'])} ago: {failure['reason']}"
        )
    return "\n".join(lines)
