#!/usr/bin/env python3
"""Crash-to-suspicion and restart-to-trust times of real `dtx node` processes on 127.0.0.1.

Usage: node/scripts/detection-time.py [--nodes 5] [--rounds 10] [--dtx target/release/dtx]
       [-- extra dtx node arguments, e.g. --heartbeat-interval 200ms]

Each round (after --settle seconds, past the detector's warm-up) SIGKILLs one node (round robin), reads every other node's /status until it
suspects the victim (the node reports how long it has suspected it, so polling adds no
error), restarts the victim and waits until everyone trusts it again. Prints one line per
round and a summary.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request


def status(address):
    with urllib.request.urlopen(f"http://{address}/status", timeout=5) as response:
        return json.loads(response.read())


def member(report, name):
    return next((m for m in report["members"] if m["name"] == name), None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dtx", default="target/release/dtx")
    parser.add_argument("--settle", type=float, default=2.5,
                        help="seconds to wait after each (re)start: past the detector's "
                             "warm-up (8 arrivals), before which phi is deliberately slow")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="dtx-detection-")
    subprocess.run([args.dtx, "init", "--nodes", str(args.nodes), "--dir", directory],
                   check=True, stdout=subprocess.DEVNULL)
    config_path = os.path.join(directory, "cluster.toml")
    with open(config_path, "rb") as file:
        config = tomllib.load(file)
    names = [node["name"] for node in config["nodes"]]
    control = {node["name"]: node["control"] for node in config["nodes"]}
    processes = {}

    def start(name):
        log = open(os.path.join(directory, f"{name}.log"), "a")
        process = subprocess.Popen(
            [args.dtx, "node", "--config", config_path, "--name", name,
             "--data-dir", os.path.join(directory, name)] + args.extra,
            stdout=subprocess.PIPE, stderr=log, text=True)
        while "ready" not in (process.stdout.readline() or "ready"):
            pass
        processes[name] = process

    def wait_trusted(victim, observers, incarnation, since):
        times = {}
        while len(times) < len(observers):
            for observer in observers:
                if observer in times:
                    continue
                seen = member(status(control[observer]), victim)
                if seen and seen["phi"] is not None and not seen["suspected"] \
                        and seen["incarnation"] > incarnation:
                    times[observer] = time.monotonic() - since
            if time.monotonic() - since > 60:
                sys.exit(f"{victim} not trusted again within 60 s: {times}")
            time.sleep(0.005)
        return times

    try:
        for name in names:
            start(name)
        for name in names:
            wait_trusted(name, [n for n in names if n != name], 0, time.monotonic())
        time.sleep(args.settle)
        bound_ms = status(control[names[0]])["detection_bound_ms"]
        detections, trusts = [], []
        for round_index in range(args.rounds):
            victim = names[round_index % len(names)]
            observers = [n for n in names if n != victim]
            incarnation = member(status(control[observers[0]]), victim)["incarnation"]
            killed = time.monotonic()
            processes[victim].send_signal(signal.SIGKILL)
            processes[victim].wait()
            times = {}
            while len(times) < len(observers):
                for observer in observers:
                    if observer in times:
                        continue
                    seen = member(status(control[observer]), victim)
                    received = time.monotonic()
                    if seen and seen.get("suspected_for_ms") is not None:
                        times[observer] = received - seen["suspected_for_ms"] / 1000 - killed
                if time.monotonic() - killed > 60:
                    sys.exit(f"{victim} not suspected by all within 60 s: {times}")
                time.sleep(0.005)
            restarted = time.monotonic()
            start(victim)
            trusted = wait_trusted(victim, observers, incarnation, restarted)
            time.sleep(args.settle)
            detections += times.values()
            trusts += trusted.values()
            print(f"round {round_index + 1}: kill -9 {victim}: suspected after "
                  f"{', '.join(f'{o} {t * 1000:.0f} ms' for o, t in sorted(times.items()))}; "
                  f"trusted again {max(trusted.values()) * 1000:.0f} ms after ready", flush=True)

        def summary(values):
            values = sorted(v * 1000 for v in values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            return (f"p50 {statistics.median(values):.0f} ms, p99 {p99:.0f} ms, "
                    f"max {values[-1]:.0f} ms over {len(values)} observations")

        print(f"{args.nodes} nodes, detection bound {bound_ms} ms")
        print(f"crash -> suspicion: {summary(detections)}")
        print(f"ready -> trusted:   {summary(trusts)}")
    finally:
        for process in processes.values():
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
