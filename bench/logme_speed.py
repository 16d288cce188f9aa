"""LogME speed: 10,000 x 1,280 features, 10 classes (issue 7's target: under 2 s on 2 cores).

Run by hand (not a test):
    .venv/bin/python bench/logme_speed.py >> bench/results/rank.md
"""

from __future__ import annotations

import datetime
import os
import time

import numpy as np

from transferkit.selection import logme


def main() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 10_000)
    features = rng.standard_normal((10_000, 1280)).astype(np.float32)
    features[:, :10] += 2 * np.eye(10)[labels]  # some signal
    logme(features[:500], labels[:500])  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        logme(features, labels)
        times.append(time.perf_counter() - t0)
    print(f"\nLogME speed ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
          f"`python bench/logme_speed.py`): 10,000 x 1,280 features, 10 classes: "
          f"{', '.join(f'{t:.2f}' for t in times)} s (3 runs)")


if __name__ == "__main__":
    main()
