"""How the demos score detection and print their scorecards (``make demo``, its drift phase, the benchmark)."""

from __future__ import annotations


def score_detection(faults: list[tuple[str, int]], rows: list[dict], span: int) -> dict:
    """Compare flagged windows with injected faults.

    A fault episode is a run of consecutive fault readings on one device; it is
    detected if any window overlapping it was flagged. A window (device, seq)
    overlaps readings seq-span+1..seq.
    """
    fault_set = set(faults)
    episodes: list[tuple[str, int, int]] = []
    for device, seq in sorted(fault_set):
        if episodes and episodes[-1][0] == device and episodes[-1][2] == seq - 1:
            episodes[-1] = (device, episodes[-1][1], seq)
        else:
            episodes.append((device, seq, seq))
    flagged = {(r["device"], int(r["seq"])) for r in rows if r["anomaly"]}
    detected = sum(
        any((dev, s) in flagged for s in range(first, last + span)) for dev, first, last in episodes
    )
    normal = [r for r in rows if not any((r["device"], int(r["seq"]) - k) in fault_set for k in range(span))]
    false_pos = sum(1 for r in normal if r["anomaly"])
    return {
        "episodes": len(episodes),
        "detected": detected,
        "recall": detected / len(episodes) if episodes else None,
        "normal_windows": len(normal),
        "false_positives": false_pos,
        "fpr": false_pos / len(normal) if normal else None,
    }


def print_card(lines: list[tuple[str, str]]) -> None:
    """``key  value`` rows between two rules."""
    width = max(len(k) for k, _ in lines)
    print("\n  " + "-" * (width + 40))
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    print("  " + "-" * (width + 40))
