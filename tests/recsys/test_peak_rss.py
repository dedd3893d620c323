"""The bench's memory sampler: the summed peak and what made it up in that one sample."""

from __future__ import annotations

import time

import psutil

from recsys.bench.processes import PeakRSS, _label


def test_the_breakdown_at_the_peak_sums_to_the_peak_and_holds_a_briefly_held_buffer():
    with PeakRSS() as mem:
        time.sleep(0.6)
        held = bytearray(300 * 2**20)  # touched (zeroed), so resident
        time.sleep(0.8)
        del held
        time.sleep(0.6)  # the last samples are without it
    at = mem.at_peak(top=1000)
    assert abs(sum(at.values()) - mem.gib) <= 0.005 * len(at) + 0.01  # each label rounded
    me = _label(" ".join(psutil.Process().cmdline()))
    assert at[me] >= 0.29, at  # this process with the buffer: the peak sample, not the last one
