"""Command line: ``ntkal run | plot | label | strategies | datasets`` and ``ntkal --version``.

User errors (a bad config, a missing dataset, an unreadable file) print one red line and exit
with status 2, without a traceback; set ``NTKAL_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from ntkal import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Look-ahead deep active learning with the empirical NTK.",
)
console = Console()
err_console = Console(stderr=True)


def _fail(err: BaseException) -> None:
    if os.environ.get("NTKAL_DEBUG", "") not in ("", "0"):
        raise err
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    from rich.markup import escape

    # escaped: messages may hold brackets (e.g. "ntkal[ray]") that rich would read as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        console.print(f"ntkal {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Look-ahead deep active learning with the empirical NTK."""


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--seeds must be integers separated by commas, got {text!r}") from None


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default runs/<config name>)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or auto."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Discard earlier results in --out instead of resuming."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (overrides the config)."
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="Folder holding the dataset's files (overrides the config's "
        "dataset.root and $NTKAL_DATA).",
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run every (strategy, seed) as a Ray task, on a private Ray "
        "listening on 127.0.0.1 only (needs the ray extra: pip install ntkal\\[ray]).",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        metavar="ADDRESS",
        help="Join an existing Ray cluster instead (host:port or auto); implies --ray.",
    ),
    ray_cpus: int | None = typer.Option(
        None, "--ray-cpus", help="CPUs of the private Ray (default: all)."
    ),
) -> None:
    """Run (or resume) every strategy x seed of CONFIG; print the accuracy and AUC tables."""
    try:
        from ntkal.experiments import load_config, run_experiment
        from ntkal.experiments.plots import accuracy_rich_table, auc_rich_table, auc_table
        from ntkal.experiments.runner import is_quiet

        cfg = load_config(config).with_overrides(
            seeds=_parse_seeds(seeds), device=device, threads=threads, data_root=data_root
        )
        out_dir = out if out is not None else Path("runs") / config.stem
        if not ray and ray_address is None:
            records = run_experiment(
                cfg,
                out_dir,
                quiet=is_quiet(True if quiet else None),
                overwrite=overwrite,
                console=console,
            )
        else:
            from ntkal.experiments.ray_runner import run_experiment_ray

            records = run_experiment_ray(
                cfg,
                out_dir,
                address=ray_address,
                num_cpus=ray_cpus,
                quiet=is_quiet(True if quiet else None),
                overwrite=overwrite,
                console=console,
            )
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: run the same command again to resume[/]")
        raise typer.Exit(code=130) from None
    except Exception as err:  # noqa: BLE001 - every failure becomes one line, see module doc
        _fail(err)
        return
    console.print(accuracy_rich_table(records))
    console.print(auc_rich_table(auc_table(records)))
    console.print(
        f"results: {out_dir / 'results.json'}, {out_dir / 'results.csv'}; "
        f"curves: {out_dir / 'learning_curves.png'}",
        highlight=False,
    )


@app.command()
def plot(
    results: Path = typer.Argument(..., help="results.json written by `ntkal run`."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="PNG path (default: learning_curves.png beside it)."
    ),
) -> None:
    """Draw learning curves (mean ± std over seeds) and print the AUC table."""
    try:
        from ntkal.experiments.plots import (
            auc_rich_table,
            auc_table,
            load_records,
            plot_learning_curves,
        )

        records = load_records(results)
        if not records:
            raise ValueError(f"{results} holds no records yet")
        png = plot_learning_curves(records, out or results.with_name("learning_curves.png"))
    except Exception as err:  # noqa: BLE001
        _fail(err)
        return
    console.print(auc_rich_table(auc_table(records)))
    console.print(f"curves: {png}", highlight=False)


def _parse_size(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--image-size must be HEIGHT,WIDTH (e.g. 28,28), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"--image-size must be HEIGHT,WIDTH (e.g. 28,28), got {text!r}")
    return parts


@app.command()
def label(
    data: str = typer.Argument(
        ...,
        help="A built-in dataset name (e.g. digits) or your "
        "file / folder: .npz, .csv, .parquet, or a folder of images.",
    ),
    store: Path | None = typer.Option(
        None, "--store", "-s", help="SQLite label file (default: <data name>.labels.sqlite here)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8765, "--port", "-p", help="Port to listen on."),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a non-loopback --host (needs --token)."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="NTKAL_LABEL_TOKEN", help="Shared secret every request must carry."
    ),
    model: str = typer.Option("mlp", "--model", help="Built-in model name."),
    width: int | None = typer.Option(None, "--width", help="Built-in model width."),
    factory: str | None = typer.Option(
        None, "--model-factory", help="Your model: package.module:function."
    ),
    subset: int = typer.Option(
        500, "--subset", help="Unlabelled points the look-ahead scores per session."
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", help="Random items before the first retrain (default max(10, classes))."
    ),
    epochs: int = typer.Option(30, "--epochs", help="Epochs per retrain (at least 300 steps)."),
    label_column: str | None = typer.Option(
        None, "--label-column", help="Tables: the label column."
    ),
    image_size: str | None = typer.Option(
        None, "--image-size", help="Image folders: resize to H,W."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated class names (needed for an unlabelled pool)."
    ),
    train_size: int | None = typer.Option(
        None, "--train-size", help="Built-in datasets: pool size (stratified)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the model, subsets and order."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        help="Acquisition strategy "
        "(`ntkal strategies`); look-ahead ones update "
        "per label in closed form, others are "
        "re-queried. Default: auto "
        "(ntkal.labelling.DEFAULT_STRATEGY).",
    ),
) -> None:
    """Serve a labelling page for DATA on http://HOST:PORT (127.0.0.1 by default)."""
    try:
        import torch

        from ntkal.data import builtin_dataset_name, load_dataset, read_file_source
        from ntkal.data.files import is_file_source
        from ntkal.labelling.engine import DEFAULT_STRATEGY, LabellingSession, default_train_config
        from ntkal.labelling.server import check_bind, serve
        from ntkal.labelstore import LabelStore, claim_store
        from ntkal.models import build_from_factory, build_model
        from ntkal.strategies import get_strategy

        check_bind(host, allow_remote, token)
        strategy = strategy or DEFAULT_STRATEGY
        get_strategy(strategy)  # an unknown name fails before any data is read
        if threads is not None:
            torch.set_num_threads(int(threads))
        names = [c.strip() for c in classes.split(",")] if classes else None
        source = None
        if builtin_dataset_name(data) is None and is_file_source(data):
            source = read_file_source(
                data, label_column=label_column, image_size=_parse_size(image_size), classes=names
            )
            dataset = source.dataset
        else:
            dataset = load_dataset(data, train_size=train_size, seed=seed)
        torch.manual_seed(seed)
        net = (
            build_from_factory(factory, dataset.in_shape, dataset.num_classes)
            if factory
            else build_model(model, dataset.in_shape, dataset.num_classes, width=width)
        )
        path = store if store is not None else Path(f"{Path(data.rstrip('/')).stem}.labels.sqlite")
        claim = claim_store(path)  # held for the server's life: a second server is refused
        # A short timeout: a store locked by another process fails that request, not the page.
        label_store = LabelStore(
            path, pool_size=dataset.num_train, num_classes=dataset.num_classes, timeout=2.0
        )
        session = LabellingSession(
            dataset,
            label_store,
            net,
            subset=subset,
            warmup=warmup,
            train_config=default_train_config(epochs),
            seed=seed,
            use_dataset_labels=source is not None,
            source=source,
            strategy=strategy,
        )
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        console.print(
            f"labelling {dataset.num_train} items of {data} into {path} "
            f"({len(session.store)} labelled so far) with {session.picks.description}",
            highlight=False,
        )
        console.print(f"open {url}  (Ctrl+C to stop)", highlight=False)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line, see module doc
        _fail(err)
        return
    try:
        serve(session, host=host, port=port, token=token, allow_remote=allow_remote)
    finally:
        claim.release()


@app.command()
def strategies() -> None:
    """List the acquisition strategies and what they do."""
    from rich.table import Table

    from ntkal.strategies import available_strategies

    table = Table(title="Strategies")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, doc in available_strategies().items():
        table.add_row(name, doc)
    console.print(table)


@app.command()
def datasets() -> None:
    """List the datasets and whether their files are installed."""
    from rich.table import Table

    from ntkal.data import NO_FILES, DatasetNotFoundError, available_datasets, load_dataset

    table = Table(title="Datasets")
    table.add_column("name", style="bold")
    table.add_column("status")
    for name in available_datasets():
        if name in NO_FILES:
            table.add_row(name, "built in")
            continue
        try:
            load_dataset(name, train_size=10, test_size=10)
            table.add_row(name, "[green]installed[/]")
        except DatasetNotFoundError as err:
            table.add_row(name, f"[yellow]missing[/]: {str(err).splitlines()[0]}")
        except Exception as err:  # noqa: BLE001 - a broken install is reported, not fatal
            table.add_row(name, f"[red]unreadable[/]: {str(err).splitlines()[0]}")
    console.print(table)


def _labelstudio_classes(classes: str | None, store) -> list[str]:
    if classes is None:
        return [str(i) for i in range(store.num_classes)]
    names = [c.strip() for c in classes.split(",")]
    if len(names) != store.num_classes or not all(names):
        raise ValueError(
            f"--classes must name the store's {store.num_classes} classes, "
            f"comma-separated; got {classes!r}"
        )
    return names


@app.command("serve-backend")
def serve_backend(
    project: int = typer.Option(..., "--project", help="Label Studio project id."),
    ls_url: str = typer.Option(
        "http://127.0.0.1:8080",
        "--ls-url",
        envvar="LABEL_STUDIO_URL",
        help="Label Studio's address.",
    ),
    ls_token: str | None = typer.Option(
        None,
        "--ls-token",
        envvar="LABEL_STUDIO_API_KEY",
        help="Label Studio API token (legacy key or personal access token).",
    ),
    store: Path | None = typer.Option(
        None,
        "--store",
        "-s",
        help="SQLite label file (default: labelstudio-<project>.labels.sqlite).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(9090, "--port", "-p", help="Port to listen on."),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a non-loopback --host (needs --token)."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="NTKAL_BACKEND_TOKEN", help="Secret every request must carry."
    ),
    public_url: str | None = typer.Option(
        None,
        "--public-url",
        help="The address Label Studio reaches this backend at (default http://HOST:PORT).",
    ),
    strategy: str | None = typer.Option(
        None, "--strategy", help="Look-ahead strategy (default auto)."
    ),
    model: str = typer.Option("mlp", "--model", help="Built-in model name."),
    width: int | None = typer.Option(None, "--width", help="Built-in model width."),
    factory: str | None = typer.Option(
        None, "--model-factory", help="Your model: package.module:function."
    ),
    subset: int = typer.Option(
        2000, "--subset", help="Unlabelled tasks scored per session (the rest get no score)."
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", help="Labels before the first retrain (default max(10, classes))."
    ),
    retrain_every: int = typer.Option(
        50, "--retrain-every", help="Retrain after this many new labels (0: only the first time)."
    ),
    epochs: int = typer.Option(30, "--epochs", help="Epochs per retrain."),
    image_size: str | None = typer.Option(
        None, "--image-size", help="Resize images to H,W (default: as the first image)."
    ),
    features: str | None = typer.Option(
        None, "--features", help="Table rows: the data fields to learn from, comma-separated."
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Folder Label Studio serves local files from."
    ),
    from_name: str | None = typer.Option(
        None, "--from-name", help="The Choices control to learn (when the config has several)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the model and the subsets."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
) -> None:
    """Serve a Label Studio ML backend for PROJECT: scores written back after every annotation."""
    try:
        import torch

        from ntkal.arguments import as_choice, as_int
        from ntkal.labelling.server import check_bind
        from ntkal.labelstudio.backend import DEFAULT_STRATEGY, Backend, lookahead_strategies
        from ntkal.labelstudio.client import LabelStudioClient

        check_bind(host, allow_remote, token)
        strategy = as_choice(strategy or DEFAULT_STRATEGY, "--strategy", lookahead_strategies())
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise ValueError(
                "serve-backend needs FastAPI and uvicorn: pip install 'ntkal[label]'"
            ) from None
        from ntkal.labelstudio.server import serve

        as_int(port, "--port", minimum=1, maximum=65535)
        as_int(subset, "--subset", minimum=1)
        as_int(retrain_every, "--retrain-every", minimum=0)
        if threads is not None:
            torch.set_num_threads(as_int(threads, "--threads", minimum=1))
        client = LabelStudioClient(ls_url, ls_token or "")
        path = store if store is not None else Path(f"labelstudio-{project}.labels.sqlite")
        console.print(f"reading Label Studio project {project} at {ls_url}", highlight=False)
        backend = Backend.from_project(
            client,
            project,
            str(path),
            model=model,
            width=width,
            factory=factory,
            strategy=strategy,
            subset=subset,
            warmup=warmup,
            epochs=epochs,
            image_size=_parse_size(image_size),
            features=[f.strip() for f in features.split(",")] if features else None,
            data_root=data_root,
            from_name=from_name,
            seed=seed,
            retrain_every=retrain_every,
        )
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        console.print(
            f"ntkal backend for project {project}: {len(backend.pool.task_ids)} tasks, "
            f"{len(backend.store)} labelled, store {path}",
            highlight=False,
        )
        console.print(
            f"connect it in Label Studio (Settings > Model): http://{shown}:{port}  "
            "(Ctrl+C to stop)",
            highlight=False,
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one line, see module doc
        _fail(err)
        return
    serve(
        backend, host=host, port=port, token=token, allow_remote=allow_remote, public_url=public_url
    )


@app.command("labelstudio-export")
def labelstudio_export(
    store: Path = typer.Argument(..., help="SQLite label file."),
    out: Path = typer.Argument(..., help="Label Studio JSON file to write."),
    classes: str | None = typer.Option(
        None, "--classes", help="Class names, comma-separated (default 0, 1, ...)."
    ),
    from_name: str = typer.Option("label", "--from-name", help="The Choices control's name."),
    to_name: str = typer.Option("image", "--to-name", help="The object tag's name."),
) -> None:
    """Write every label of STORE as a Label Studio JSON export (one task per label)."""
    try:
        from ntkal.labelstore import LabelStore
        from ntkal.labelstudio import export_store

        if not store.is_file():
            raise ValueError(f"label store {store} does not exist")
        ids_file = Path(str(store) + ".tasks.json")
        with LabelStore(str(store)) as ls:
            task_ids = None
            if ids_file.is_file():  # a serve-backend store: write the project's task ids
                import json

                task_ids = json.loads(ids_file.read_text())["task_ids"]
            n = export_store(
                ls,
                _labelstudio_classes(classes, ls),
                out,
                task_ids=task_ids,
                from_name=from_name,
                to_name=to_name,
            )
    except Exception as err:  # noqa: BLE001
        _fail(err)
        return
    console.print(f"wrote {n} labelled tasks to {out}", highlight=False)


@app.command("labelstudio-import")
def labelstudio_import(
    export: Path = typer.Argument(..., help="Label Studio JSON export."),
    store: Path = typer.Argument(..., help="SQLite label file (created with --pool-size)."),
    classes: str | None = typer.Option(
        None, "--classes", help="Class names in the store's order, comma-separated."
    ),
    pool_size: int | None = typer.Option(
        None, "--pool-size", help="Pool size, to create a new store."
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Classes, to create a new store (default: --classes)."
    ),
) -> None:
    """Add the labels of a Label Studio JSON export (data.ntkal_index per task) to STORE."""
    try:
        from ntkal.labelstore import LabelStore
        from ntkal.labelstudio import import_store

        names = [c.strip() for c in classes.split(",")] if classes else None
        k = num_classes if num_classes is not None else (len(names) if names else None)
        if not store.is_file() and (pool_size is None or k is None):
            raise ValueError(
                f"label store {store} does not exist: give --pool-size and "
                "--classes (or --num-classes) to create it"
            )
        with LabelStore(str(store), pool_size=pool_size, num_classes=k) as ls:
            result = import_store(ls, _labelstudio_classes(classes, ls), export)
    except Exception as err:  # noqa: BLE001
        _fail(err)
        return
    console.print(
        f"imported {result['added']} labels ({result['skipped']} already there) into {store}",
        highlight=False,
    )


if __name__ == "__main__":  # pragma: no cover
    app()
