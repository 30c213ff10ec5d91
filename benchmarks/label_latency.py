"""Latency of ``ntkal label``: from POSTing a label to the next item being ready.

For each case a real server (uvicorn on 127.0.0.1, in a thread) serves a
:class:`ntkal.labelling.LabellingSession` with the page's default strategy
(:data:`ntkal.labelling.DEFAULT_STRATEGY`, sequential) scoring the *whole* pool; the network is
first trained on ``--warm`` labels (the retrain the app runs after its warm-up), then ``--steps``
labels are POSTed one after another (with the CSRF header, as the page does), each answered with
the next item, chosen after conditioning on that label in closed form. Reported per step, as
medians (and the maximum):

* ``store``: the SQLite commit (``synchronous=FULL``: on disk before the answer);
* ``condition``: the closed-form update of the linearised network (``ActiveLearner.teach``);
* ``next``: scoring the candidates and choosing the next item;
* ``server``: all three, measured in the server;
* ``round trip``: what the client waits, HTTP included (the page adds drawing the item: the
  browser test records key -> next item drawn in ``window.ntkalLatencies``).

Also reported: the one-off cost of a new look-ahead session (kernel on ``L ∪ S``, solve), paid in
the background after each retrain, and the retrain itself.

Cases: pools of 1 000 (digits), 10 000 and 50 000 (Fashion-MNIST when installed, else the
synthetic dataset). A case is *not measured* (and says so in the table and the JSON) when the
machine's 1-minute load average is above ``--max-load`` (default 2): numbers taken on a machine
whose cores are busy with other work say nothing about the code.

Run ``python benchmarks/label_latency.py`` (``--quick``: one 300-item case, a few steps, < 20 s);
writes ``benchmarks/results/label_latency[_quick].json`` with machine information.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, csrf: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "X-Ntkal-Csrf": csrf})
    with urllib.request.urlopen(req, timeout=600) as res:
        return json.loads(res.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=600) as res:
        return json.loads(res.read())


def _dataset(pool: int, seed: int):
    from ntkal.data import load_dataset

    if pool <= 1797:
        return "digits", load_dataset("digits", train_size=pool, seed=seed)
    try:
        return "fashion_mnist", load_dataset("fashion_mnist", train_size=pool, test_size=1000,
                                             seed=seed)
    except Exception:  # noqa: BLE001 - not installed here: the synthetic set stands in
        return "synthetic", load_dataset("synthetic", train_size=pool, test_size=1000, seed=seed)


def run_case(pool: int, warm: int, steps: int, width: int, seed: int, folder: Path,
             epochs: int = 30, think: float = 1.0, speculate: bool = True) -> dict:
    import uvicorn

    from ntkal.labelling import DEFAULT_STRATEGY, LabellingSession, default_train_config
    from ntkal.labelling.server import create_app
    from ntkal.models import build_model

    dataset_name, data = _dataset(pool, seed)
    subset = pool = data.num_train
    truth = data.y_train.numpy()
    torch.manual_seed(seed)
    model = build_model("mlp", data.in_shape, data.num_classes, width=width)
    store = folder / f"{dataset_name}-{pool}-{subset}.sqlite"
    session = LabellingSession(data, str(store), model, subset=subset, warmup=10**9, seed=seed,
                               train_config=default_train_config(epochs), speculate=speculate)
    rng = np.random.default_rng(seed)
    first = rng.choice(pool, size=warm, replace=False)
    session.import_labels(first.tolist(), truth[first].tolist())
    t0 = time.perf_counter()
    session.start_retrain()
    session.wait_for_retrain()
    retrain = session.stats()["retrain"]
    assert retrain["state"] == "done", retrain
    total_retrain = time.perf_counter() - t0

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(session), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)
    try:
        csrf = _get(url + "/api/session")["csrf"]
        item = _get(url + "/api/next?client=bench")
        rows = []
        for _ in range(steps):
            assert item["source"].startswith("look-ahead"), item["source"]
            time.sleep(think)                      # the annotator looks at the item
            t = time.perf_counter()
            res = _post(url + "/api/labels", {"index": item["index"],
                                              "label": int(truth[item["index"]]),
                                              "client": "bench"}, csrf)
            rows.append(dict(res["latency"], round_trip_ms=1000 * (time.perf_counter() - t)))
            item = res["next"]
    finally:
        server.should_exit = True
        thread.join(30)
    session.close()

    def med(key, which=None):
        values = [r[key] for r in rows if which is None or r.get("speculated") == which]
        return float(np.median(values)) if values else None

    return {"dataset": dataset_name, "pool": pool, "subset": subset, "warm_labels": warm,
            "strategy": DEFAULT_STRATEGY, "measured": True,
            "steps": steps, "model": f"mlp width {width}",
            "store_ms": med("store_ms"), "condition_ms": med("condition_ms"),
            "next_ms": med("next_ms"), "server_ms": med("total_ms"),
            "round_trip_ms": med("round_trip_ms"),
            "think_seconds": think, "speculate": speculate,
            "speculated_steps": int(sum(bool(r.get("speculated")) for r in rows)),
            "round_trip_hit_ms": med("round_trip_ms", True),
            "round_trip_miss_ms": med("round_trip_ms", False),
            "max_round_trip_ms": float(max(r["round_trip_ms"] for r in rows)),
            "retrain_seconds": float(retrain["seconds"]),
            "retrain_and_new_session_seconds": total_retrain, "per_step": rows}


def _ms(value) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def _load() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # pragma: no cover
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 300-item case, < 20 s")
    parser.add_argument("--pools", type=int, nargs="*", default=None,
                        help="pool sizes, each scored whole (default 1000 10000 50000)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-load", type=float, default=2.0,
                        help="skip a case when the 1-minute load average is above this")
    parser.add_argument("--think", type=float, default=None,
                        help="seconds the annotator looks at each item (default 1, quick 0.2)")
    parser.add_argument("--no-speculate", action="store_true",
                        help="choose the next item only after the label arrives")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    think = args.think if args.think is not None else (0.2 if args.quick else 1.0)
    torch.set_num_threads(args.threads)
    steps = args.steps or (3 if args.quick else 20)
    pools = args.pools or ([300] if args.quick else [1000, 10_000, 50_000])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pool in pools:
            load = _load()
            if load > args.max_load and not args.quick:
                results.append({"pool": pool, "measured": False, "loadavg": load})
                print(f"|pool|={pool:>6}: not measured (load average {load:.1f} > "
                      f"{args.max_load:g})", flush=True)
                continue
            row = run_case(pool, warm=20 if args.quick else 50, steps=steps,
                           width=32 if args.quick else 128, seed=0, folder=Path(tmp),
                           epochs=5 if args.quick else 30, think=think,
                           speculate=not args.no_speculate)
            row["loadavg"] = load
            results.append(row)
            print(f"{row['dataset']:>13} |pool|={pool:>6} (all scored): round trip "
                  f"{row['round_trip_ms']:8.1f} ms (server {row['server_ms']:.1f}: store "
                  f"{row['store_ms']:.1f}, condition {row['condition_ms']:.1f}, next "
                  f"{row['next_ms']:.1f}); {row['speculated_steps']}/{row['steps']} speculated "
                  f"(hit {_ms(row['round_trip_hit_ms'])}, miss {_ms(row['round_trip_miss_ms'])}); "
                  "retrain + new session "
                  f"{row['retrain_and_new_session_seconds']:.1f} s", flush=True)
    print()
    print("| data | pool (all scored) | round trip (median / max) | speculated: round trip "
          "| not speculated: round trip | server | store | condition | next query "
          "| retrain + new session | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if not r["measured"]:
            print(f"| | {r['pool']} | not measured (load {r['loadavg']:.1f}) | | | | | | | | |")
            continue
        print(f"| {r['dataset']} | {r['pool']} | {r['round_trip_ms']:.1f} / "
              f"{r['max_round_trip_ms']:.1f} ms | {_ms(r['round_trip_hit_ms'])} "
              f"({r['speculated_steps']}/{r['steps']}) | {_ms(r['round_trip_miss_ms'])} | "
              f"{r['server_ms']:.1f} ms | {r['store_ms']:.1f} ms"
              f" | {r['condition_ms']:.1f} ms | {r['next_ms']:.1f} ms | "
              f"{r['retrain_and_new_session_seconds']:.1f} s | {r['loadavg']:.1f} |")
    out = args.out or RESULTS / f"label_latency{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "label_latency", "machine": machine_info(),
                               "threads": args.threads, "steps": steps, "results": results},
                              indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
