"""The command line (DESIGN.md §2). Thin: parse options, call the library, print the report, pick the exit code.

Expected failures (MMCorpusError) print one line on stderr and exit with their code; no traceback reaches
the user for those. Common options (--root, --config-dir, --quiet, -v, --log-file) work before or after
the command name.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmcorpus import __version__
from mmcorpus.errors import EXIT_FAILED, EXIT_USAGE, MMCorpusError, UsageError
from mmcorpus.core.progress import human_bytes, set_quiet
from mmcorpus.registry import Registry, spec_to_dict

DEFAULT_ROOT = "~/mmcorpus-data"
log = logging.getLogger("mmcorpus")

app = typer.Typer(
    name="mmcorpus",
    help="Download and prepare the training corpora of multi-modal LLMs (CC3M, CC12M, LLaVA, ShareGPT4V).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# ------------------------------------------------------------------------------------------ common options

RootOpt = Annotated[Optional[Path], typer.Option("--root", help=f"Data root (env MMCORPUS_ROOT; default {DEFAULT_ROOT}).",
                                                 show_default=False)]
ConfigDirOpt = Annotated[Optional[list[Path]], typer.Option("--config-dir", help="Extra spec folder (repeatable; "
                                                            "env MMCORPUS_CONFIG_DIR).", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the final summary.")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log detail (-vv: debug).")]
LogFileOpt = Annotated[Optional[Path], typer.Option("--log-file", help="Also append the log (with times) to this file.",
                                                    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


@dataclass
class Context:
    root: Path | None = None
    config_dirs: list[Path] = field(default_factory=list)
    quiet: bool = False
    verbose: int = 0
    log_file: Path | None = None

    def merge(self, root, config_dirs, quiet, verbose=0, log_file=None) -> "Context":
        return Context(root or self.root, [*self.config_dirs, *(config_dirs or [])], quiet or self.quiet,
                       max(verbose, self.verbose), log_file or self.log_file)

    def resolved_root(self) -> Path:
        return Path(self.root or os.environ.get("MMCORPUS_ROOT") or DEFAULT_ROOT).expanduser()

    def registry(self) -> Registry:
        return Registry.load(self.config_dirs)


def _setup(ctx: typer.Context, root=None, config_dirs=None, quiet=False, verbose=0, log_file=None) -> Context:
    state = (ctx.obj or Context()).merge(root, config_dirs, quiet, verbose, log_file)
    _configure_logging(state)
    return state


def _configure_logging(state: Context) -> None:
    level = logging.WARNING if state.quiet else (logging.DEBUG if state.verbose > 1 else logging.INFO)
    logger = logging.getLogger("mmcorpus")
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    # On a terminal people read short lines; in cron logs every line needs its time.
    fmt = "%(message)s" if sys.stderr.isatty() else "%(asctime)s %(levelname)s %(message)s"
    console.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(console)
    if state.log_file:
        handler = logging.FileHandler(state.log_file)
        handler.setLevel(logging.DEBUG if state.verbose else logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
    set_quiet(state.quiet)


def _handle_errors(func):
    """Expected failures: one line on stderr, the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MMCorpusError as exc:
            typer.echo(f"mmcorpus: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("mmcorpus: interrupted; run the same command again to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(text)


@app.callback(invoke_without_command=True)
def main_options(ctx: typer.Context, root: RootOpt = None, config_dir: ConfigDirOpt = None, quiet: QuietOpt = False,
                 verbose: VerboseOpt = 0, log_file: LogFileOpt = None,
                 version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False):
    if version:
        typer.echo(f"mmcorpus {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_USAGE)
    ctx.obj = Context(root, list(config_dir or []), quiet, verbose, log_file)


# ----------------------------------------------------------------------------------------------- list/info


@app.command("list")
@_handle_errors
def list_cmd(ctx: typer.Context, as_json: JsonOpt = False, root: RootOpt = None, config_dir: ConfigDirOpt = None):
    """The registry: every dataset and image collection."""
    state = _setup(ctx, root, config_dir)
    registry = state.registry()
    rows = [_list_row(spec) for spec in registry]
    _emit(rows, as_json, _table(rows, ["name", "kind", "stages", "files", "size", "license"]))


def _list_row(spec) -> dict:
    size = spec.approx_size()
    return {
        "name": spec.name,
        "kind": spec.kind,
        "stages": ",".join(spec.stages) or "-",
        "files": len(spec.downloads),
        "size": human_bytes(size) if size else ("manual" if spec.manual and not size else "?"),
        "size_bytes": size,
        "license": _short(spec.license, 48),
        "title": spec.title,
    }


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


@app.command()
@_handle_errors
def info(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Dataset or collection name.")],
         as_json: JsonOpt = False, root: RootOpt = None, config_dir: ConfigDirOpt = None):
    """One spec in full, plus what is already on disk."""
    state = _setup(ctx, root, config_dir)
    spec = state.registry().get(name)
    on_disk = _on_disk(spec, state.resolved_root())
    data = {**spec_to_dict(spec), "on_disk": on_disk}
    _emit(data, as_json, _info_text(spec, on_disk))


def _on_disk(spec, root: Path) -> dict:
    out = {}
    for file in spec.downloads:
        path = root / "downloads" / spec.name / file.filename
        out[file.key] = {"path": str(path), "present": path.is_file(),
                         "bytes": path.stat().st_size if path.is_file() else None}
    return out


def _info_text(spec, on_disk: dict) -> str:
    lines = [f"{spec.name} ({spec.kind}): {spec.title}"]
    for label, value in (("stages", ", ".join(spec.stages)), ("homepage", spec.homepage),
                         ("license", spec.license), ("citation", spec.citation), ("path", spec.path and
                         f"<root>/images/{spec.path}"), ("images", "from the url column" if spec.images_from
                         else ", ".join(spec.collections)), ("manual", spec.manual), ("notes", spec.notes),
                         ("spec", str(spec.source))):
        if value:
            lines.append(f"  {label + ':':10} {' '.join(str(value).split())}")
    lines.append("  files:")
    for file in spec.downloads:
        state = on_disk[file.key]
        flags = [human_bytes(file.size) if file.size else "size ?", "sha256" if file.sha256 else "",
                 "md5" if file.md5 else "", "optional" if file.optional else "",
                 "on disk" if state["present"] else "not fetched"]
        lines.append(f"    {file.key}: {file.filename} [{', '.join(f for f in flags if f)}]")
        for url in file.urls:
            lines.append(f"      {url}")
        if file.manual:
            lines.append(f"      manual: {' '.join(file.manual.split())}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- fetch


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`I/N` (0-based I), or from a Slurm job array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of
    SLURM_ARRAY_TASK_COUNT) when not given; None outside an array."""
    if text is None:
        if "SLURM_ARRAY_TASK_ID" not in os.environ or "SLURM_ARRAY_TASK_COUNT" not in os.environ:
            return None
        from mmcorpus.fetch.urllist.plan import shard_from_env

        try:
            index, count = shard_from_env()
        except ValueError:
            raise UsageError("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT are not numbers") from None
        text = f"{index}/{count}"
    index, sep, total = text.partition("/")
    if not (sep and index.isdigit() and total.isdigit() and 0 <= int(index) < int(total)):
        raise UsageError(f"--shard expects I/N with 0 <= I < N, got {text!r}")
    return int(index), int(total)


def parse_resize(text: str | None) -> int | None:
    if text is None or text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 16:
        raise UsageError(f"--resize expects a size in pixels (>= 16) or 'none', got {text!r}")
    return int(text)


@app.command()
@_handle_errors
def fetch(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Datasets/collections, optionally NAME:FILE[,FILE].")],
    no_images: Annotated[bool, typer.Option("--no-images", help="Only the annotation files.")] = False,
    all_files: Annotated[bool, typer.Option("--all-files", help="Also optional files (metadata, parts).")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Processes for image work.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Download threads per process.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N samples (trials).")] = None,
    resize: Annotated[Optional[str], typer.Option(help="Resize images so the shorter side is SIZE (JPEG), or 'none' to keep the bytes.")] = None,
    image_check: Annotated[Optional[str], typer.Option(
        "--image-check", help="How kept JPEG bytes are checked: decode (default; every byte decoded) or "
                              "structure (header and end-of-image marker only; faster, see README).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Total deadline per image, seconds.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-try transient image failures.")] = False,
    mirror: Annotated[Optional[list[str]], typer.Option(help="Rewrite URL prefixes FROM=TO (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be downloaded.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="Slice I/N of the work (default from SLURM_ARRAY_*).")] = None,
    engine: Annotated[str, typer.Option(help="native, or img2dataset (installed separately).")] = "native",
    executor: Annotated[str, typer.Option(help="local, or ray: the shards as Ray tasks (the ray extra); "
                                               "with --engine img2dataset also pyspark.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster (default: RAY_ADDRESS, a "
                                                       "running local cluster, else a new local instance).")] = None,
    tasks: Annotated[Optional[int], typer.Option(help="Ray tasks (default: the cluster's CPUs).")] = None,
    allow_private_hosts: Annotated[bool, typer.Option("--allow-private-hosts",
                                                      help="Allow image URLs on private/loopback addresses.")] = False,
    ignore_opt_out: Annotated[bool, typer.Option("--ignore-opt-out",
                                                 help="Do not honour X-Robots-Tag noai/noimageai.")] = False,
    delete_archives: Annotated[bool, typer.Option("--delete-archives", help="Delete archives once extracted.")] = False,
    manual_source: Annotated[Optional[Path], typer.Option(help="Folder/archive for manual collections (SAM).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for another run's lock instead of exiting 75.")] = False,
    min_success: Annotated[Optional[float], typer.Option(help="Exit 1 when the image success ratio is lower.")] = None,
    as_json: JsonOpt = False, root: RootOpt = None, config_dir: ConfigDirOpt = None, quiet: QuietOpt = False,
    verbose: VerboseOpt = 0, log_file: LogFileOpt = None,
):
    """Download the files and images of datasets/collections (idempotent: a re-run does what is left)."""
    from mmcorpus.fetch.files import DownloadOptions
    from mmcorpus.fetch.urllist.executors import check_available
    from mmcorpus.fetch.run import FetchOptions, ImageOptions, fetch as run_fetch
    from mmcorpus.core.imaging import CHECKS
    from mmcorpus.fetch.urls import UrlRewriter

    state = _setup(ctx, root, config_dir, quiet, verbose, log_file)
    check_available(executor, engine)  # exit 2 before any download when Ray / img2dataset is missing
    if image_check is not None and image_check not in CHECKS:
        raise UsageError(f"--image-check expects one of {', '.join(CHECKS)}, got {image_check!r}")
    if min_success is not None and not 0 <= min_success <= 1:
        raise UsageError(f"--min-success expects a ratio between 0 and 1, got {min_success}")
    options = FetchOptions(
        root=state.resolved_root(),
        download=DownloadOptions(rewrite=UrlRewriter.from_args(mirror)),
        images=ImageOptions(workers=workers, threads=threads, limit=limit, resize=parse_resize(resize),
                            image_check=image_check, timeout=timeout, retry_failed=retry_failed, shard=parse_shard(shard),
                            allow_private_hosts=allow_private_hosts, respect_opt_out=not ignore_opt_out,
                            engine=engine, executor=executor, ray_address=ray_address, tasks=tasks),
        no_images=no_images, all_files=all_files, dry_run=dry_run, delete_archives=delete_archives,
        manual_source=manual_source, wait_for_lock=wait,
    )
    report = run_fetch(state.registry(), names, options)
    report["root"] = str(options.root)
    ok = report["ok"] and _success_ratio_ok(report, min_success)
    _emit(report, as_json, format_fetch_report(report))
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _success_ratio_ok(report: dict, min_success: float | None) -> bool:
    if min_success is None:
        return True
    ok = failed = 0
    for target in report.get("targets", []):
        for images in target.get("images", []):
            ok += images.get("ok", 0)
            failed += sum((images.get("failed") or {}).values())
    ratio = ok / (ok + failed) if ok + failed else 1.0
    report["success_ratio"] = round(ratio, 4)
    if ratio < min_success:
        log.error("image success ratio %.1f%% is below --min-success %.1f%%", 100 * ratio, 100 * min_success)
        return False
    return True


def format_fetch_report(report: dict) -> str:
    """The human summary of a fetch: per name, files and images, failures with reasons."""
    if report.get("dry_run"):
        lines = ["dry run: nothing downloaded"]
        for t in report["targets"]:
            lines.append(f"{t['name']} ({t['kind']}): {len(t['files'])} files, {human_bytes(t['bytes'])} known size")
            for f in t["files"]:
                where = f["url"] or f"manual: {' '.join((f['manual'] or '').split())}"
                lines.append(f"  {f['filename']:45} {human_bytes(f['size']) if f['size'] else '?':>9}  {where}")
        return "\n".join(lines)
    lines = []
    for t in report["targets"]:
        mark = "ok" if t["ok"] else "FAILED"
        lines.append(f"{t['name']} ({t['kind']}): {mark} in {t.get('seconds', 0):.1f} s")
        if t.get("error"):
            lines.append(f"  error: {t['error']}")
        for f in t.get("files", []):
            detail = f.get("error") or f.get("note") or human_bytes(f.get("bytes"))
            lines.append(f"  file {f['key']}: {f['status']} ({' '.join(str(detail).split())})")
        for images in t.get("images", []):
            lines.append("  images " + _images_line(images))
        for archive in t.get("archives", []):
            lines.append("  " + _archive_line(archive))
        if t.get("manual"):
            lines.append(f"  manual: {' '.join(t['manual'].split())}")
    lines.append(f"root: {report.get('root')}")
    return "\n".join(lines)


def _archive_line(archive: dict) -> str:
    status = archive.get("status")
    if status == "missing":
        return f"archive {archive.get('name')}: missing ({archive.get('reason', '')})"
    files = archive.get("extracted", 0) + archive.get("already_present", 0)
    return f"archive {archive.get('name')}: {status}, {files} files, {human_bytes(archive.get('bytes'))}"


def _images_line(images: dict) -> str:
    """`train: 36/45 ok (80.0%); failed: not_found 5, corrupt 1; 120 images/s`"""
    reasons = images.get("failed") or {}
    failed = sum(reasons.values())
    why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    rows = images.get("rows", images.get("ok", 0) + failed)
    text = f"{images.get('subset')}: {images.get('ok', 0)}/{rows} ok ({100 * images.get('success_rate', 0):.1f}%)"
    if why:
        text += f"; failed: {why}"
    if images.get("fetched"):
        text += f"; {images.get('images_per_s', 0):.0f} images/s"
    if images.get("malformed"):
        text += "; malformed lines: " + ", ".join(f"{k} {v}" for k, v in images["malformed"].items())
    return text


# -------------------------------------------------------------------------------------------------- prepare


@app.command()
@_handle_errors
def prepare(
    ctx: typer.Context,
    stage: Annotated[Optional[str], typer.Option(help="pretrain or finetune (configs/stages/).")] = None,
    mix: Annotated[Optional[Path], typer.Option("--mix", help="Your own mix YAML instead of a built-in stage.")] = None,
    datasets: Annotated[Optional[str], typer.Option(help="Only these datasets of the mix: a,b:subset.")] = None,
    fmt: Annotated[Optional[list[str]], typer.Option("--format", help="parquet (always), llava, webdataset; "
                                                     "repeatable.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of random:N sampling and caption prompts.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if nothing changed.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Processes normalizing big JSON files and checking images.")] = None,
    as_json: JsonOpt = False, root: RootOpt = None, config_dir: ConfigDirOpt = None, quiet: QuietOpt = False,
    verbose: VerboseOpt = 0, log_file: LogFileOpt = None,
):
    """Normalize what is fetched and build the stage mix under <root>/stages/<stage>/."""
    from mmcorpus.ops.prepare import prepare as run_prepare
    from mmcorpus.stage.report import format_stage_summary

    state = _setup(ctx, root, config_dir, quiet, verbose, log_file)
    formats = ["parquet", *[f for f in (fmt or []) if f != "parquet"]]
    result = run_prepare(state.registry(), state.resolved_root(), stage=stage, mix_file=mix,
                         datasets=[d for d in (datasets or "").split(",") if d] or None, formats=formats,
                         seed=seed, force=force, config_dirs=state.config_dirs, workers=workers, log=log.info)
    _emit(result, as_json, _normalize_lines(result["normalize"]) + format_stage_summary(result["manifest"]))


def _normalize_lines(normalized: dict) -> str:
    lines = []
    for label, report in normalized.items():
        status = report.get("status")
        if status == "ok":
            rejected = report.get("rejected", 0)
            lines.append(f"normalized {label}: {report.get('rows', 0)} rows"
                         + (f", {rejected} records rejected" if rejected else ""))
        else:
            lines.append(f"normalized {label}: {(status or '?').replace('_', ' ')}")
    return "\n".join(lines) + ("\n\n" if lines else "")


# ------------------------------------------------------------------------------------------- status/verify


@app.command()
@_handle_errors
def status(ctx: typer.Context, name: Annotated[Optional[str], typer.Argument(help="One dataset/collection.")] = None,
           as_json: JsonOpt = False, root: RootOpt = None, config_dir: ConfigDirOpt = None):
    """What is on disk: files verified, images ok/failed by reason, bytes, last run."""
    from mmcorpus.ops.status import collect_status, format_status

    state = _setup(ctx, root, config_dir)
    registry = state.registry()
    if name is not None:
        registry.get(name)  # an unknown name is a usage error, not an empty report
    report = collect_status(registry, state.resolved_root(), name)
    text = format_status(report) + _stages_summary(state.resolved_root())
    _emit(report, as_json, text)


def _stages_summary(root: Path) -> str:
    from mmcorpus.stage.report import format_stage_summary
    from mmcorpus.stage.prepare import prepared_stages

    lines = []
    for manifest in prepared_stages(root).values():
        lines += ["", format_stage_summary(manifest)]
    return "\n".join(lines)


@app.command()
@_handle_errors
def verify(ctx: typer.Context, name: Annotated[Optional[str], typer.Argument(help="One dataset/collection.")] = None,
           repair: Annotated[bool, typer.Option("--repair", help="Move bad files aside and fetch them again.")] = False,
           workers: Annotated[Optional[int], typer.Option(help="Processes decoding images.")] = None,
           mirror: Annotated[Optional[list[str]], typer.Option(help="URL prefix rewrite FROM=TO, for --repair.")] = None,
           as_json: JsonOpt = False, root: RootOpt = None, config_dir: ConfigDirOpt = None, quiet: QuietOpt = False):
    """Re-check checksums (ignoring caches), archive members and the decodability of every stored image."""
    from mmcorpus.ops.verify import format_verify, verify_root

    state = _setup(ctx, root, config_dir, quiet)
    registry = state.registry()
    if name is not None:
        registry.get(name)
    report = verify_root(registry, state.resolved_root(), name, workers=workers, repair=repair)
    if repair and report.get("refetch"):
        from mmcorpus.fetch.files import DownloadOptions
        from mmcorpus.fetch.run import FetchOptions, fetch as run_fetch
        from mmcorpus.fetch.urls import UrlRewriter

        options = FetchOptions(root=state.resolved_root(), download=DownloadOptions(rewrite=UrlRewriter.from_args(mirror)))
        report["repair"] = run_fetch(registry, report["refetch"], options)
        report["ok"] = report["repair"]["ok"]
    _emit(report, as_json, format_verify(report) + (
        "\n" + format_fetch_report(report["repair"]) if report.get("repair") else ""))
    if not report["ok"]:
        raise typer.Exit(EXIT_FAILED)


# ----------------------------------------------------------------------------------------------------- demo


@app.command()
@_handle_errors
def demo(ctx: typer.Context,
         out: Annotated[Optional[Path], typer.Option("--out", help="Where to put the demo root (default ./mmcorpus-demo).")] = None,
         keep_serving: Annotated[bool, typer.Option("--serve", help="Keep the mirror running afterwards.")] = False,
         quiet: QuietOpt = False, verbose: VerboseOpt = 0):
    """The whole pipeline offline, against the bundled sample mirror on 127.0.0.1."""
    from mmcorpus.demo.run import run_demo

    _setup(ctx, None, None, quiet, verbose)
    code = run_demo((out or Path("mmcorpus-demo")).resolve(), serve=keep_serving)
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
