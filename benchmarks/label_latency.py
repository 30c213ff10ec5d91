"""Latency of ``ntkal label``: from POSTing a label to the next query being ready.

For each case a real server (uvicorn on 127.0.0.1, in a thread) serves a
:class:`ntkal.labelling.LabellingSession`; the network is first trained on ``--warm`` labels (the
retrain the app runs after its warm-up), then ``--steps`` labels are POSTed one after another, each
answered with the next item, which sequential MLMOC chose after conditioning on that label in
closed form. Reported per step, as medians (and the maximum):

* ``store``: the SQLite commit (``synchronous=FULL``: on disk before the answer);
* ``condition``: the closed-form update of the linearised network (``ActiveLearner.teach``);
* ``next``: scoring the session's candidates and choosing the next item;
* ``server``: all three, measured in the server;
* ``round trip``: what the client waits, HTTP included.

Also reported: the one-off cost of a new look-ahead session (kernel on ``L ∪ S``, solve), paid in
the background after each retrain, and the retrain itself.

Cases: digits with ``|pool| = 1000`` (the whole pool scored) and Fashion-MNIST with
``|pool| = 10000`` scoring a random subset of ``m`` points per session (the app's ``--subset``;
its default is 500). Scoring all 10000 points per label is left out by default: the closed-form
engine is O(m^2 k) per step and memory O(m^2); pass ``--subsets 10000`` to try it.

Run ``python benchmarks/label_latency.py`` (``--quick`` for a short check); writes
``benchmarks/results/label_latency[_quick].json`` with machine information.
"""
from __future__ import annotations

import argparse
import json
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
from fidelity import RESULTS, machine_info  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as res:
        return json.loads(res.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=600) as res:
        return json.loads(res.read())


def run_case(dataset_name: str, pool: int, subset: int, warm: int, steps: int, width: int,
             seed: int, folder: Path) -> dict:
    import uvicorn

    from ntkal.data import load_dataset
    from ntkal.labelling import LabellingSession, default_train_config
    from ntkal.labelling.server import create_app
    from ntkal.models import build_model

    data = load_dataset(dataset_name, train_size=pool, test_size=None if dataset_name == "digits"
                        else 1000, seed=seed)
    truth = data.y_train.numpy()
    torch.manual_seed(seed)
    model = build_model("mlp", data.in_shape, data.num_classes, width=width)
    store = folder / f"{dataset_name}-{pool}-{subset}.sqlite"
    session = LabellingSession(data, str(store), model, subset=subset, warmup=10**9, seed=seed,
                               train_config=default_train_config(30))
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
        item = _get(url + "/api/next?client=bench")
        rows = []
        for _ in range(steps):
            assert item["source"].startswith("look-ahead"), item["source"]
            t = time.perf_counter()
            res = _post(url + "/api/labels", {"index": item["index"],
                                              "label": int(truth[item["index"]]),
                                              "client": "bench"})
            rows.append(dict(res["latency"], round_trip_ms=1000 * (time.perf_counter() - t)))
            item = res["next"]
    finally:
        server.should_exit = True
        thread.join(30)
    session.store.close()

    def med(key):
        return float(np.median([r[key] for r in rows]))

    return {"dataset": dataset_name, "pool": pool, "subset": subset, "warm_labels": warm,
            "steps": steps, "model": f"mlp width {width}",
            "store_ms": med("store_ms"), "condition_ms": med("condition_ms"),
            "next_ms": med("next_ms"), "server_ms": med("total_ms"),
            "round_trip_ms": med("round_trip_ms"),
            "max_round_trip_ms": float(max(r["round_trip_ms"] for r in rows)),
            "retrain_seconds": float(retrain["seconds"]),
            "retrain_and_new_session_seconds": total_retrain, "per_step": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller subsets")
    parser.add_argument("--subsets", type=int, nargs="*", default=None,
                        help="scored subsets for the 10000 pool (default 500 1000 2000 4000)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (5 if args.quick else 20)
    subsets = args.subsets or ([500] if args.quick else [500, 1000, 2000, 4000])
    cases = [("digits", 1000, 1000)] + [("fashion_mnist", 10_000, m) for m in subsets]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pool, subset in cases:
            row = run_case(name, pool, subset, warm=50, steps=steps, width=128, seed=0,
                           folder=Path(tmp))
            results.append(row)
            print(f"{name:>13} |pool|={pool:>5} m={subset:>5}: round trip "
                  f"{row['round_trip_ms']:8.1f} ms (server {row['server_ms']:.1f}: store "
                  f"{row['store_ms']:.1f}, condition {row['condition_ms']:.1f}, next "
                  f"{row['next_ms']:.1f}); retrain + new session "
                  f"{row['retrain_and_new_session_seconds']:.1f} s", flush=True)
    print()
    print("| data | pool | scored m | round trip (median / max) | store | condition | next query "
          "| retrain + new session |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['dataset']} | {r['pool']} | {r['subset']} | {r['round_trip_ms']:.1f} / "
              f"{r['max_round_trip_ms']:.1f} ms | {r['store_ms']:.1f} ms | "
              f"{r['condition_ms']:.1f} ms | {r['next_ms']:.1f} ms | "
              f"{r['retrain_and_new_session_seconds']:.1f} s |")
    out = args.out or RESULTS / f"label_latency{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "label_latency", "machine": machine_info(),
                               "threads": args.threads, "steps": steps, "results": results},
                              indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
