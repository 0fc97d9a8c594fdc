"""The command line (DESIGN.md §2, §6.1). Thin: parse the options, call the command's `run(...)`, print its
formatter's text (or --json), pick the exit code.

Each command's work is one module: mmcorpus.ops.{listing,info,fetch,prepare,status,verify} and
mmcorpus.demo.run, imported when the command runs (so `--help` stays fast). The common options (COMMON) are
declared once and accepted before or after every command; commands that report also take --json.
Expected failures (MMCorpusError, and a full disk anywhere) print one line on stderr and exit with their code;
no traceback. What leaves here (that line, the report, every log line) goes through mmcorpus.core.redact.

`--help` reads like pip's or git's: flags show no metavar, values show a readable one (DIR, FROM=TO, I/N) or
their choices ([native|img2dataset]). The choices are spelled here so that no heavy module loads for
`--help`; tests/test_cli_help.py ties each of them to the library's constant.
"""

import functools
import inspect
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from mmcorpus import __version__, layout
from mmcorpus.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    MMCorpusError,
    UsageError,
    disk_full_message,
    is_disk_full,
)

log = logging.getLogger("mmcorpus")

class _PlainHelp:
    """--help like pip's: `-h, --help` shows no `<bool>`, an argument's metavar stands alone (typer 0.2x would
    add `<list[str]>` after it). tests/test_cli_help.py renders every command's help to hold this."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument) and param.metavar:
                param.display_type_rich = lambda ctx: None
        return params


class Command(_PlainHelp, TyperCommand):
    pass


class Group(_PlainHelp, TyperGroup):
    pass


app = typer.Typer(
    name="mmcorpus",
    cls=Group,
    help="Download and prepare the training corpora of multi-modal LLMs (CC3M, CC12M, LLaVA, ShareGPT4V).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Choices shown in --help (tests/test_cli_help.py checks them against the library).
STAGES = "[pretrain|finetune]"
ENGINES = "[native|img2dataset]"
EXECUTORS = "[local|ray|pyspark]"
IMAGE_CHECKS = "[decode|structure]"
FORMATS = "[parquet|llava|webdataset|hf]"


def flag(*names: str, help: str) -> Any:
    """A boolean flag: no metavar in --help (typer would show `<bool>`, which reads as if it took a value)."""
    return typer.Option(*names, help=help, metavar="", show_default=False)


def value(*names: str, metavar: str, help: str, show_default: bool = True) -> Any:
    return typer.Option(*names, metavar=metavar, help=help, show_default=show_default)


# ------------------------------------------------------------------------------------------ common options

# name -> (annotation, default): added to the group (before the command) and to every command (after it).
COMMON: dict[str, tuple[Any, Any]] = {
    "root": (Annotated[Optional[Path], value("--root", metavar="DIR", show_default=False,
                                             help=f"Data root (env MMCORPUS_ROOT; default {layout.DEFAULT_ROOT}).")], None),
    "config_dir": (Annotated[Optional[list[Path]], value("--config-dir", metavar="DIR", show_default=False,
                                                         help="Extra spec folder (repeatable; env MMCORPUS_CONFIG_DIR).")],
                   None),
    "quiet": (Annotated[bool, flag("--quiet", "-q", help="Only errors and the final summary.")], False),
    "verbose": (Annotated[int, typer.Option("--verbose", "-v", count=True, metavar="", show_default=False,
                                            help="More log detail (-vv: debug).")], 0),
    "log_file": (Annotated[Optional[Path], value("--log-file", metavar="FILE", show_default=False,
                                                 help="Also append the log (with times) to this file.")], None),
}
JSON_OPTION = (Annotated[bool, flag("--json", help="Print the result as JSON on stdout.")], False)


@dataclass
class Context:
    """The common options, merged from before and after the command name."""

    root: Path | None = None
    config_dirs: list[Path] = field(default_factory=list)
    quiet: bool = False
    verbose: int = 0
    log_file: Path | None = None

    def merge(self, root=None, config_dir=None, quiet=False, verbose=0, log_file=None) -> "Context":
        return Context(root or self.root, [*self.config_dirs, *(config_dir or [])], quiet or self.quiet,
                       max(verbose, self.verbose), log_file or self.log_file)

    def resolved_root(self) -> Path:
        root = layout.resolve_root(self.root)
        if root.exists() and not root.is_dir():
            raise UsageError(f"--root {root} is not a directory (the data root; env MMCORPUS_ROOT)")
        return root

    def registry(self):
        from mmcorpus.registry import Registry

        return Registry.load(self.config_dirs)


def _configure_logging(state: Context) -> None:
    from mmcorpus.core.progress import set_quiet
    from mmcorpus.core.redact import SafeLogFilter

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
    console.addFilter(lambda record: not getattr(record, "log_file_only", False))
    handlers = [console]
    if state.log_file:
        try:
            handler = _LogFile(state.log_file)
        except OSError as exc:  # the usual cron mistake: a log folder that does not exist, or is not writable
            raise UsageError(f"--log-file {state.log_file}: cannot open it: {exc.strerror}") from None
        handler.setLevel(logging.DEBUG if state.verbose else logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handlers.append(handler)
    for handler in handlers:  # every line: URLs redacted, control characters escaped
        handler.addFilter(SafeLogFilter())
        logger.addHandler(handler)
    set_quiet(state.quiet)


class _LogFile(logging.FileHandler):
    """--log-file: a log that cannot be written (disk full) says so once on stderr, not a traceback per line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"mmcorpus: warning: cannot write --log-file {self.baseFilename}: "
                             f"{sys.exc_info()[1]}; logging to it stops\n")


def _to_log_file(text: str, level: int = logging.INFO) -> None:
    """Into --log-file only (the console already shows it): why the run ended, so a log alone tells."""
    log = logging.getLogger("mmcorpus.cli")
    if not any(isinstance(h, _LogFile) for h in logging.getLogger("mmcorpus").handlers):
        return  # no --log-file (or it could not be opened): logging's last resort would print it twice
    for line in filter(str.strip, text.splitlines()):
        log.log(level, "%s", line, extra={"log_file_only": True})


def emit(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    """A command's report on stdout: JSON with URLs redacted, or the text with control characters escaped too.
    The text summary also goes to --log-file."""
    from mmcorpus.core.redact import redact_data, safe_text

    summary = safe_text(text(), one_line=False)
    typer.echo(json.dumps(redact_data(data), indent=2, default=str) if as_json else summary)
    _to_log_file("summary:\n" + summary)


def _error_line(message: str) -> None:
    from mmcorpus.core.redact import safe_text

    line = f"mmcorpus: error: {safe_text(message)}"
    typer.echo(line, err=True)
    _to_log_file(line, logging.ERROR)


def _os_error_message(exc: OSError, state: "Context") -> str:
    """One line for a file-system refusal: what, which path, and --root when the path is under it."""
    path = exc.filename or ""
    reason = exc.strerror or type(exc).__name__
    root = layout.resolve_root(state.root)
    hint = f" (the data root is {root}: pass --root or set MMCORPUS_ROOT)" if str(path).startswith(str(root)) else ""
    return f"cannot write {path}: {reason}{hint}" if path else f"{reason}{hint}"


def command(name: str | None = None, *, reports: bool = False):
    """Register `func(state: Context, [as_json,] **its own options)` as a command that also takes COMMON (and
    --json when it `reports`), with MMCorpusError turned into one line on stderr and its exit code."""

    def decorate(func):
        own = list(inspect.signature(func).parameters.values())[1:]  # without `state`
        extra = {**COMMON, **({"as_json": JSON_OPTION} if reports else {})}
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        params += [p for p in own if p.name not in extra]
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                   for n, (a, d) in extra.items() if n != "as_json" or reports]

        @functools.wraps(func)
        def wrapper(ctx: typer.Context, **kwargs):
            common = {n: kwargs.pop(n) for n in COMMON}
            state = (ctx.obj or Context()).merge(**common)
            try:
                _configure_logging(state)
                return func(state, **kwargs)
            except MMCorpusError as exc:
                _error_line(str(exc))
                raise typer.Exit(exc.exit_code) from None
            except OSError as exc:
                if is_disk_full(exc):
                    _error_line(disk_full_message(exc, where=f"a file under {layout.resolve_root(state.root)}"))
                else:  # a read-only root, a root that is a file, a folder taken away: one line, not a traceback
                    _error_line(_os_error_message(exc, state))
                raise typer.Exit(EXIT_FAILED) from None
            except KeyboardInterrupt:
                _error_line("interrupted; run the same command again to resume")
                raise typer.Exit(130) from None

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read the signature above, not func's
        app.command(name, cls=Command)(wrapper)
        return func

    return decorate


def _group_options(ctx: typer.Context,
                   version: Annotated[bool, flag("--version", help="Show the version and exit.")] = False, **common):
    if version:
        typer.echo(f"mmcorpus {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_USAGE)
    ctx.obj = Context().merge(**common)


_group_params = list(inspect.signature(_group_options).parameters.values())[:2]
_group_options.__signature__ = inspect.Signature(
    _group_params + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                     for n, (a, d) in COMMON.items()])
_group_options.__annotations__ = {p.name: p.annotation for p in _group_options.__signature__.parameters.values()}
app.callback(invoke_without_command=True)(_group_options)


# ------------------------------------------------------------------------------------------------ commands

Names = Annotated[Optional[str], typer.Argument(metavar="[NAME]", help="One dataset/collection.", show_default=False)]


@command("list", reports=True)
def list_command(state: Context, as_json: bool):
    """The registry: every dataset and image collection."""
    from mmcorpus.ops import listing

    rows = listing.run(state.registry())
    emit(rows, as_json, lambda: listing.format_report(rows))


@command(reports=True)
def info(state: Context, name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset or collection name.")],
         as_json: bool):
    """One spec in full, plus what is already on disk."""
    from mmcorpus.ops import info as info_command

    registry = state.registry()
    data = info_command.run(registry, state.resolved_root(), name)
    emit(data, as_json, lambda: info_command.format_report(registry, data))


@command(reports=True)
def fetch(
    state: Context,
    names: Annotated[list[str], typer.Argument(metavar="NAME[:FILE,...]",
                                               help="Datasets/collections, optionally only some of their files.")],
    as_json: bool,
    no_images: Annotated[bool, flag("--no-images", help="Only the annotation files.")] = False,
    all_files: Annotated[bool, flag("--all-files", help="Also optional files (metadata, parts).")] = False,
    workers: Annotated[Optional[int], value("--workers", metavar="N", help="Processes for image work (default: "
                                            "the CPUs).")] = None,
    threads: Annotated[Optional[int], value("--threads", metavar="N", help="Download threads per process "
                                            "(default 64).")] = None,
    limit: Annotated[Optional[int], value("--limit", metavar="N", help="Only the first N samples (trials).")] = None,
    resize: Annotated[Optional[str], value("--resize", metavar="SIZE|none", help="Resize images so the shorter side "
                                           "is SIZE (JPEG); none (default) keeps the bytes.")] = None,
    image_check: Annotated[Optional[str], value("--image-check", metavar=IMAGE_CHECKS, help="How kept JPEG bytes "
                                                "are checked: decode (default; every byte decoded) or structure "
                                                "(header and end-of-image marker only; faster, see README).")] = None,
    timeout: Annotated[Optional[float], value("--timeout", metavar="SECONDS", help="Total deadline per image "
                                              "(default 20); a file or archive must bring 1 MiB per 3x "
                                              "this.")] = None,
    retry_failed: Annotated[bool, flag("--retry-failed", help="Re-try transient image failures.")] = False,
    mirror: Annotated[Optional[list[str]], value("--mirror", metavar="FROM=TO", show_default=False,
                                                 help="Rewrite URL prefixes (repeatable).")] = None,
    dry_run: Annotated[bool, flag("--dry-run", help="Show what would be downloaded.")] = False,
    shard: Annotated[Optional[str], value("--shard", metavar="I/N", help="Slice I of N of the work (default "
                                          "from SLURM_ARRAY_*).")] = None,
    engine: Annotated[str, value("--engine", metavar=ENGINES, help="img2dataset is installed separately.")] = "native",
    executor: Annotated[str, value("--executor", metavar=EXECUTORS, help="ray: the shards as Ray tasks (the ray "
                                   "extra); pyspark only with --engine img2dataset.")] = "local",
    ray_address: Annotated[Optional[str], value("--ray-address", metavar="ADDRESS", help="Ray cluster (default: "
                                                "RAY_ADDRESS, a running local cluster, else a new local "
                                                "instance).")] = None,
    tasks: Annotated[Optional[int], value("--tasks", metavar="N", help="Ray tasks (default: the cluster's "
                                          "CPUs).")] = None,
    allow_private_hosts: Annotated[bool, flag("--allow-private-hosts",
                                              help="Allow image URLs on private/loopback addresses.")] = False,
    ignore_opt_out: Annotated[bool, flag("--ignore-opt-out", help="Do not honour X-Robots-Tag noai/noimageai.")] = False,
    delete_archives: Annotated[bool, flag("--delete-archives", help="Delete archives once extracted.")] = False,
    manual_source: Annotated[Optional[Path], value("--manual-source", metavar="PATH", help="Folder/archive for "
                                                   "manual collections (SAM).")] = None,
    wait: Annotated[bool, flag("--wait", help="Wait for another run's lock instead of exiting 75.")] = False,
    min_success: Annotated[Optional[float], value("--min-success", metavar="RATIO", help="Exit 1 when the image "
                                                  "success ratio is lower (0 to 1).")] = None,
):
    """Download the files and images of datasets/collections (idempotent: a re-run does what is left)."""
    from mmcorpus.fetch.options import FetchOptions, resize_from_text, shard_from_text
    from mmcorpus.fetch.urls import UrlRewriter
    from mmcorpus.ops import fetch as fetch_command

    options = FetchOptions(
        root=state.resolved_root(), rewrite=UrlRewriter.from_args(mirror), no_images=no_images, all_files=all_files,
        dry_run=dry_run, delete_archives=delete_archives, manual_source=manual_source, wait_for_lock=wait,
        workers=workers, threads=threads, limit=limit, resize=resize_from_text(resize), image_check=image_check,
        timeout=timeout, retry_failed=retry_failed, shard=shard_from_text(shard),
        allow_private_hosts=allow_private_hosts, respect_opt_out=not ignore_opt_out, engine=engine,
        executor=executor, ray_address=ray_address, tasks=tasks,
    )
    report, ok = fetch_command.run(state.registry(), names, options, min_success=min_success)
    emit(report, as_json, lambda: fetch_command.format_report(report))
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@command(reports=True)
def prepare(
    state: Context,
    as_json: bool,
    stage: Annotated[Optional[str], value("--stage", metavar=STAGES, help="A built-in stage (configs/stages/) or "
                                          "one of your --config-dir.")] = None,
    mix: Annotated[Optional[Path], value("--mix", metavar="FILE", help="Your own mix YAML instead of a stage.")] = None,
    datasets: Annotated[Optional[str], value("--datasets", metavar="NAME[:SUBSET],...",
                                             help="Only these: entries of the mix, or any dataset whose spec lists the stage in stages:.")] = None,
    fmt: Annotated[Optional[list[str]], value("--format", metavar=FORMATS, show_default=False,
                                              help="Exports besides parquet (always written); repeatable.")] = None,
    seed: Annotated[Optional[int], value("--seed", metavar="N", help="Seed of random:N sampling and caption "
                                         "prompts.")] = None,
    force: Annotated[bool, flag("--force", help="Rebuild even if nothing changed.")] = False,
    workers: Annotated[Optional[int], value("--workers", metavar="N", help="Processes normalizing big JSON files "
                                            "and checking images.")] = None,
    samples_per_shard: Annotated[int, value("--samples-per-shard", metavar="N",
                                            help="Samples per shard of data/, webdataset/ and hf/.")] = 10_000,
):
    """Normalize what is fetched and build the stage mix under <root>/stages/<stage>/."""
    from mmcorpus.ops import prepare as prepare_command

    result = prepare_command.run(state.registry(), state.resolved_root(), stage=stage, mix_file=mix,
                                 datasets=datasets, formats=fmt, seed=seed, force=force,
                                 config_dirs=state.config_dirs, workers=workers,
                                 samples_per_shard=samples_per_shard, log=log.info)
    emit(result, as_json, lambda: prepare_command.format_report(result))


@command(reports=True)
def status(state: Context, as_json: bool, name: Names = None):
    """What is on disk: files verified, images ok/failed by reason, bytes, last run."""
    from mmcorpus.ops import status as status_command

    root = state.resolved_root()
    report = status_command.run(state.registry(), root, name)
    emit(report, as_json, lambda: status_command.format_report(report, root))


@command(reports=True)
def verify(state: Context, as_json: bool, name: Names = None,
           repair: Annotated[bool, flag("--repair", help="Move bad files aside and fetch them again.")] = False,
           workers: Annotated[Optional[int], value("--workers", metavar="N", help="Processes decoding images "
                                                   "(default: the CPUs).")] = None,
           mirror: Annotated[Optional[list[str]], value("--mirror", metavar="FROM=TO", show_default=False,
                                                        help="URL prefix rewrite for --repair (repeatable).")] = None,
           allow_private_hosts: Annotated[bool, flag("--allow-private-hosts", help="For --repair: allow URLs "
                                                     "on private/loopback addresses, as fetch does.")] = False):
    """Re-check checksums (ignoring caches), archive members and the decodability of every stored image."""
    from mmcorpus.fetch.urls import UrlRewriter
    from mmcorpus.ops import verify as verify_command

    report = verify_command.run(state.registry(), state.resolved_root(), name, workers=workers, repair=repair,
                                rewrite=UrlRewriter.from_args(mirror), allow_private_hosts=allow_private_hosts)
    emit(report, as_json, lambda: verify_command.format_report(report, quiet=state.quiet))
    if not report["ok"]:
        raise typer.Exit(EXIT_FAILED)


@command()
def demo(state: Context,
         out: Annotated[Optional[Path], value("--out", metavar="DIR", help="Where to put the demo root (default "
                                              "./mmcorpus-demo).")] = None,
         keep_serving: Annotated[bool, flag("--serve", help="Keep the mirror running afterwards.")] = False):
    """The whole pipeline offline, against the bundled sample mirror on 127.0.0.1."""
    from mmcorpus.demo.run import run_demo

    if state.config_dirs:
        raise UsageError("demo runs on its own bundled specs: drop --config-dir")
    if state.root and out:
        raise UsageError("demo: give --out or --root (the same thing here), not both")
    code = run_demo(Path(out or state.root or "mmcorpus-demo").expanduser().resolve(), serve=keep_serving)
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
