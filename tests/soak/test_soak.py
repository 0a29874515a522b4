"""A short soak in the suite (`make soak` runs the long one, with issue 13's fault mix).

Both nginx paths, 4 workers each, 4 client processes of full handshakes; every fault kind the
emulator has, in bursts today's transport must absorb (no call can meet more than MaxRetries
faults: the "today" mix), reloads (one during a token-service outage); then the HSM stopped and
started again. The bar: no failed handshake under the faults, a fast failure with the HSM down,
and the same workers serving once it is back.
"""

from __future__ import annotations

from mhsm_emulator.control import FAULT_KINDS
from tests import logscan
from tests.soak.soak import PATHS, limit, soak

SECONDS = 36.0


def test_short_soak() -> None:
    report = soak(SECONDS, "today", logscan.directory())  # scanned for secrets at the session's end
    logscan.remember(*report.secrets)
    print("\n".join(report.lines()))
    faults, down, back = report.phases
    ok, failed = report.count(faults)
    assert failed == 0, "\n".join(report.lines())
    assert all(report.count(faults, path)[0] >= 20 for path in PATHS), report.lines()
    assert set(report.faults) == set(FAULT_KINDS), f"every fault kind: {report.faults}"
    assert report.reloads >= 2 and report.retries > 0, report.lines()
    assert report.down_failures and all(s <= limit() for s in report.down_failures), report.lines()
    assert not report.notes, report.notes
    assert report.same_workers, "the workers that served before the HSM went down serve after"
    assert all(report.count(back, path)[0] > 0 for path in PATHS), report.lines()
