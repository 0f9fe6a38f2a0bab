#!/usr/bin/env python3
"""Runs engine_main under mpirun with SKYRING_TIMELINE=<dir>/trace-{rank}.json and checks that
every rank's trace parses as JSON (a Chrome trace: a list of events) and holds what
docs/engine.md says it does: per tensor lanes named after the tensors, negotiation spans,
batches in place on one node (fused copies across clouds), collectives, replayed batches once the steps repeat, and "bytes sent"
counter events per link class. With CLOUDS, the ranks are split evenly into two clouds with
SKYRING_COMPRESSION=int8, and each trace must also hold the allreduce's levels (node and
cross-cloud spans: each cloud is one node) and the codec's encode and decode spans.

    check_timeline.py MPIEXEC ENGINE_MAIN RANKS [CLOUDS]
"""
import json
import os
import subprocess
import sys
import tempfile


def main():
    mpiexec, program, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    clouds = len(sys.argv) > 4 and sys.argv[4] == "CLOUDS"
    with tempfile.TemporaryDirectory(prefix="skyring-timeline-") as d:
        pattern = os.path.join(d, "trace-{rank}.json")
        if clouds:
            command = [mpiexec, "--oversubscribe"]
            for i, cloud in enumerate(["aws", "gcp"]):
                if i:
                    command.append(":")
                command += ["-np", str(ranks // 2), "-x", "SKYRING_TIMELINE=" + pattern,
                            "-x", "SKYRING_CLOUD=" + cloud, "-x", "SKYRING_COMPRESSION=int8",
                            program]
        else:
            command = [mpiexec, "--oversubscribe", "-np", str(ranks), "-x",
                       "SKYRING_TIMELINE=" + pattern, program]
        run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=240)
        if run.returncode != 0:
            print(run.stdout)
            sys.exit("engine_main failed with exit code %d" % run.returncode)
        for rank in range(ranks):
            path = pattern.replace("{rank}", str(rank))
            with open(path) as f:
                events = json.load(f)  # the whole file must be valid JSON
            if not isinstance(events, list) or not events:
                sys.exit("%s: not a non-empty list of events" % path)
            names = {e.get("name") for e in events}
            cats = {e.get("cat") for e in events}
            lanes = {e["args"]["name"] for e in events
                     if e.get("ph") == "M" and e.get("name") == "thread_name"}
            counters = [e for e in events if e.get("ph") == "C"]
            want = {
                "a lane per tensor (t0)": "t0" in lanes,
                "negotiation spans": "negotiation" in cats,
                "collective spans": "collective" in cats,
                # On one node a batch is reduced where its tensors are (docs/engine.md,
                # "On one node"): no fusion copies; across clouds it is copied in and out.
                "fused copies" if clouds else "batches in place, no fusion copies":
                    ("copy in" in names and "copy out" in names) if clouds else
                    ("copy in" not in names and any(
                        e.get("args", {}).get("in_place") for e in events)),
                "replayed batches": "replayed batch" in names
                                    or "replayed batch (in place)" in names,
                "bytes sent counters": bool(counters) and all(
                    set(e["args"]) == {"intra_node", "intra_cloud", "cross_cloud"}
                    for e in counters),
                "every event of this rank": all(e.get("pid") == rank for e in events),
                "complete events have durations": all(
                    e.get("dur", -1) >= 0 for e in events if e.get("ph") == "X"),
            }
            if clouds:
                spans = [e for e in events if e.get("ph") == "X"]
                levels = {(e["name"], e["args"]["level"]) for e in spans
                          if e.get("cat") == "level"}
                codec = [e for e in spans if e.get("cat") == "codec"]
                want.update({
                    # Each cloud's ranks share one node: the node level reduces and
                    # shares inside it, compressed calls included (docs/compression.md).
                    "node level spans": ("node reduce-scatter", "node") in levels
                                        and ("node allgather", "node") in levels,
                    "cross-cloud level spans": ("cross-cloud allreduce", "cross-cloud")
                                               in levels,
                    "int8 encode and decode spans": {e["name"] for e in codec}
                                                    == {"encode", "decode"} and all(
                        e["args"]["codec"].startswith("int8") and e["args"]["encoded"] > 0
                        for e in codec),
                })
            missing = [k for k, ok in want.items() if not ok]
            if missing:
                sys.exit("%s: missing %s" % (path, ", ".join(missing)))
            print("rank %d: %d events, %d lanes, %d counters: ok"
                  % (rank, len(events), len(lanes), len(counters)))


if __name__ == "__main__":
    main()
