"""Presidio's records/s in process, on one core: run by bench/masking.py with
bench/.venv-peers/bin/python; prints one JSON object.

Presidio's JSON processor masks a record in place, so each timed batch is a fresh deep copy
made outside the timed section (as records fresh from a database or a JSON body would be):
only ``anonymize`` is timed.

    bench/.venv-peers/bin/python bench/peers/presidio_inprocess.py --seconds 3 \
        [--variant public|prebuilt] [--sample PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers.presidio_engine import PresidioMasker
from bench.peers.workload import records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--variant", choices=["public", "prebuilt"], default="public")
    parser.add_argument("--sample", type=Path, default=None)
    args = parser.parse_args()
    masker = PresidioMasker()
    mask = masker.mask if args.variant == "public" else masker.mask_prebuilt
    batch = records()
    if args.sample:
        args.sample.write_text(json.dumps([mask(r) for r in copy.deepcopy(batch)]))
    # Warm up, then measure for ``--seconds`` of timed masking.
    for record in copy.deepcopy(batch):
        mask(record)
    timed, done = 0.0, 0
    while timed < args.seconds:
        fresh = copy.deepcopy(batch)
        start = time.process_time()
        for record in fresh:
            mask(record)
        timed += time.process_time() - start
        done += len(fresh)
    print(json.dumps({"records_per_s": done / timed, "records": done, "seconds": timed}))


if __name__ == "__main__":
    main()
