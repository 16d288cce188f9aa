"""``transferkit demo``: the end-to-end demo on real data that ships with the setup."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors, setup_logging


@handle_errors
def demo(
    task: str = typer.Option("image", "--task", help="image (MNIST / ImageNet -> Fashion-MNIST) or text "
                             "(MiniLM -> four newsgroups)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (demo-out, or demo-text-out)."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Number of seeds to average over."),
    shots: int = typer.Option(10, "--shots", min=1, help="Labelled images per class."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Epochs of the runs that train a network (the "
                               "image demo's EfficientNet probes: 200 full-batch epochs, cached features)."),
    fashion_root: Path | None = typer.Option(
        None, "--fashion-root", help="Folder with Fashion-MNIST's IDX files."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the demo in --out (same settings)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the results in --out (kept until the new demo finishes)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every epoch."),
) -> None:
    """Source model -> transfer -> fine-tune -> comparison with scratch -> report, on real data."""
    from transferkit.demo import DemoSettings, TextDemoSettings, run_demo, run_text_demo
    from transferkit.errors import ConfigError

    setup_logging(verbose)
    if task not in ("image", "text"):
        raise ConfigError(f"--task must be image or text, got {task!r}")
    if task == "text":
        out = out or Path("demo-text-out")
        settings_t = TextDemoSettings(seeds=tuple(range(seeds)), shots=shots, epochs=epochs)
        result = run_text_demo(out, settings_t, echo=console.print, resume=resume, overwrite=overwrite)
    else:
        out = out or Path("demo-out")
        settings = DemoSettings(seeds=tuple(range(seeds)), shots=shots, epochs=epochs)
        result = run_demo(out, settings, fashion_root=fashion_root, echo=console.print, resume=resume,
                          overwrite=overwrite)
    console.print()
    typer.echo(result.table())
    best = next((r for r in result.summary if r["name"] == result.best_name), None)
    if best is not None and best.get("gain") is not None:
        console.print(f"\nbest arm on validation: {result.best_name}: {100 * best['accuracy_mean']:.1f} % on "
                      f"the test set, {100 * best['gain']:+.1f} pp over scratch", soft_wrap=True)
    console.print(
        f"\nwrote {out / 'metrics.json'}, {out / 'report.html'} and the model best on validation "
        f"({result.best_name}) to {out / 'model'}"
    )
