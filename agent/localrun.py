"""``runlab-agent run FILE``: one machine, no broker — progress bars, the table, JSON/Markdown/CSV files."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from agent.engine import ExperimentError, Runner
from agent.preflight import Verdict, narrow
from agent.runtimes.base import LIVE, kill_all_now
from runlab.config import ConfigError
from runlab.experiment import Experiment, load_file, with_repeat, with_workloads, workloads_dir
from runlab.results import ExperimentResult


class RichProgress:
    """One progress bar per phase (rich), on stderr so stdout stays the table."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                           console=Console(stderr=True), transient=False)
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._p.stop()

    def phase(self, name: str, total: int) -> None:
        self._task = self._p.add_task(name, total=total, note="")

    def advance(self, note: str = "") -> None:
        if self._task is not None:
            self._p.update(self._task, advance=1, note=note)

    def message(self, text: str) -> None:
        self._p.console.print(text)


class QuietProgress:
    def __enter__(self) -> QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def phase(self, name: str, total: int) -> None: ...
    def advance(self, note: str = "") -> None: ...
    def message(self, text: str) -> None: ...


def write_outputs(result: ExperimentResult, args: argparse.Namespace) -> None:
    from runlab.report import render

    for fmt, path in (("json", args.json), ("markdown", args.markdown), ("csv", args.csv),
                      ("html", getattr(args, "html", None))):
        if path:
            Path(path).write_text(render(fmt, [result]))
            print(f"wrote {path}", file=sys.stderr)


def select(exp: Experiment, wanted: list[str] | None, file: str) -> Experiment:
    """``--variant NAME`` (repeatable): only these variants; ConfigError naming an unknown one."""
    if not wanted:
        return exp
    names = [v.name for v in exp.variants]
    for w in wanted:
        if w not in names:
            raise ConfigError(f"--variant {w}: not a variant of {file} (variants: {', '.join(names)})")
    picked, notes = narrow(exp, [n for n in names if n in wanted])
    for note in notes:
        print(f"runlab-agent: note: {note}", file=sys.stderr)
    return picked


def print_verdicts(verdicts: list[Verdict], file: str) -> None:
    """The pre-flight, on stderr, before the first sample."""
    runs = [vd for vd in verdicts if vd.ok]
    print(f"pre-flight {file}: {len(runs)} of {len(verdicts)} variants will run", file=sys.stderr)
    for vd in verdicts:
        print(f"  {'✓' if vd.ok else '⊘'} {vd.line()}", file=sys.stderr)


def run_local(args: argparse.Namespace) -> int:
    exp, digest = load_file(args.file)
    exp = with_workloads(exp, workloads_dir())
    exp = select(exp, args.variant, args.file)
    if args.repeat:
        exp = with_repeat(exp, args.repeat)
    if args.reference:
        if args.reference not in [v.name for v in exp.variants]:
            print(f"runlab-agent: --reference {args.reference}: not a variant of {args.file}", file=sys.stderr)
            return 2
        exp = msgspec.structs.replace(exp, reference=args.reference)
    from agent.privileges import problems

    for line in problems(exp, str(Path(args.file).resolve().parent)):  # what this user may not do, in detail
        print(f"runlab-agent: warning: {line}", file=sys.stderr)
    progress = QuietProgress() if args.quiet or not sys.stderr.isatty() else RichProgress()
    runner = Runner(exp, file=args.file, file_hash=digest, progress=progress, strict=args.strict,
                    on_preflight=lambda verdicts: print_verdicts(verdicts, args.file))

    async def main() -> ExperimentResult:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await runner.run()

    try:
        with progress:
            result = asyncio.run(main())
    except ExperimentError as e:
        print(f"runlab-agent: {args.file}: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        kill_all_now()  # whatever a second Ctrl-C interrupted mid-stop
        left = len(LIVE)
        print(f"\nrunlab-agent: cancelled; {'nothing left running' if not left else f'{left} workloads killed'}",
              file=sys.stderr)
        return 130
    finally:
        kill_all_now()
    from runlab.report import render

    print(render("table", [result]))
    write_outputs(result, args)
    if result.status == "skipped":
        print(f"runlab-agent: {args.file}: no variant can run on this machine (see the pre-flight above)",
              file=sys.stderr)
        return 1
    return 0 if all(not v.error for v in result.variants) else 1  # skipped variants: reported, not failures
