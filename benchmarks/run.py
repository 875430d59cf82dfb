"""Run every benchmark and write ``results/*.json`` and ``RESULTS.md``.

    python -m benchmarks.run                 # CPU set (scaled-down LLaVA shape), single-threaded
    python -m benchmarks.run --quick         # smoke test: tiny shapes, one round (< 2 min on 2 cores),
                                             # into outputs/benchmarks-quick/
    python -m benchmarks.run --device cuda   # GPU set: LLaVA-1.5-7B shape in bf16, CUDA events
    python -m benchmarks.run --report-only   # RESULTS.md from the results/*.json already there
    python -m benchmarks.run --device cuda --shapes-only   # without the data stack (a bare GPU box)

Timing on the CPU is process CPU time with one thread (the only stable measure on a shared box);
every ratio comes from medians of rounds interleaved in this one process.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import compiled, end_to_end, flops_check, memory, overhead, prefill, scaling
from benchmarks.common import (
    BUDGET_FRACTIONS,
    Shape,
    bundled_subject,
    pin_commit,
    shaped_subject,
    write_result,
)
from benchmarks.report import write_report
from vla_autoprune.cli import OneLineParser
from vla_autoprune.errors import ConfigError
from vla_autoprune.run_files import check_writable

logger = logging.getLogger("benchmarks")

RESULTS = Path(__file__).parent / "results"
REPORT = Path(__file__).parent / "RESULTS.md"
QUICK = Path("outputs") / "benchmarks-quick"  # git-ignored, like every run's outputs
BENCHMARKS = ("prefill", "overhead", "memory", "flops", "scaling", "end_to_end", "compiled")
LLAVA_7B = Shape("llava-1.5-7b", 32, 4096, 32, 11008, 1, 576, 60, note="LLaVA-1.5-7B shape, random weights")


@dataclass
class Plan:
    """Sizes and repetitions of one run."""

    llava: Shape
    flops_shape: Shape
    scaling_shape: Shape
    per_camera: tuple[int, ...]
    batches: tuple[int, ...] = (1, 8)
    rounds: int = 5
    rounds_large: int = 3  # rounds at batch 8 on the scaled LLaVA shape
    dtype: torch.dtype = torch.float32
    e2e_samples: int | None = None  # end to end: the first samples of the synthetic val split (None: all 16)
    e2e_batch: int = 8
    fractions: dict[str, float] = field(default_factory=lambda: dict(BUDGET_FRACTIONS))
    wide: Shape | None = None  # prefill at batch 1, fastv and autoprune only (None: skipped)


def plan_for(quick: bool, device: torch.device) -> Plan:
    """The quick (smoke), CPU or GPU plan."""
    if quick:
        tiny = Shape("llava-shaped-tiny", 4, 128, 4, 344, 1, 64, 12, prefix=8, note="smoke-test size")
        scale = Shape("scaling-tiny", 2, 64, 2, 172, 6, 16, 12, prefix=8, note="smoke-test size")
        return Plan(
            tiny, tiny, scale, (16, 36), batches=(1, 2), rounds=1, rounds_large=1, e2e_samples=4, e2e_batch=2
        )
    cpu_llava = Shape(
        "llava-shaped-cpu",
        8,
        256,
        8,
        688,
        1,
        576,
        60,
        note="LLaVA-1.5 prompt (576 + 60), decoder scaled to 8 x 256 for CPU",
    )
    cpu_scale = Shape("scaling-cpu", 4, 256, 4, 688, 6, 64, 60, note="6 cameras, decoder 4 x 256 for CPU")
    if device.type == "cuda":
        return Plan(
            LLAVA_7B,
            cpu_llava,
            Shape("scaling-7b", 32, 4096, 32, 11008, 6, 64, 60, note="LLaVA-1.5-7B decoder, 6 cameras"),
            (64, 144, 256, 576),
            rounds=10,
            rounds_large=10,
            dtype=torch.bfloat16,
        )
    # The shape issue 14 measured AutoPrune on: wide enough that the layers' own work, not the
    # engine's fixed per-layer cost, dominates a pruned prefill.
    wide = Shape("wide-cpu", 12, 1024, 16, 2752, 6, 100, 60, note="issue 14's CPU shape: 12 x 1024, V = 600")
    return Plan(cpu_llava, cpu_llava, cpu_scale, (64, 144, 256, 576), wide=wide)


def _device(text: str) -> torch.device:
    """argparse type for ``--device``: ``cpu``, ``cuda`` or ``cuda:N``."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N")
    return device


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; bad input and Ctrl-C end it with one line (exit 2, 130)."""
    parser = OneLineParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round: a smoke test")
    parser.add_argument("--device", default="cpu", type=_device, help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--out", type=Path, help=f"results folder (default {RESULTS}; with --quick {QUICK / 'results'})"
    )
    parser.add_argument(
        "--report", type=Path, help=f"report file (default {REPORT}; with --quick {QUICK / 'RESULTS.md'})"
    )
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {BENCHMARKS}")
    parser.add_argument(
        "--shapes-only",
        action="store_true",
        help="the random-weight shapes alone: no bundled model, synthetic data or evaluate loop, so "
        "nuscenes-devkit and the data stack need not be installed (e.g. a lent GPU machine)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite --report from the results already in --out (e.g. after copying in "
        "the JSON files of runs made elsewhere, such as a GPU machine)",
    )
    args = parser.parse_args(argv)
    # A smoke run never overwrites the committed figures unless told to.
    args.out = args.out or (QUICK / "results" if args.quick else RESULTS)
    args.report = args.report or (QUICK / "RESULTS.md" if args.quick else REPORT)
    for flag, folder in (("--out", args.out), ("--report", args.report.parent)):
        if not (args.report_only and flag == "--out"):
            try:  # checked before minutes of benchmarks, not when their results are written
                check_writable(folder, flag)
            except ConfigError as err:
                parser.error(f"{flag}: {err}")
    if args.report.is_dir():
        parser.error(f"--report: {args.report} is a folder; pass the report's file path")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        _run(parser, args)
    except KeyboardInterrupt:
        # Each section's result file is written atomically as the section ends.
        logger.error(
            "interrupted: the sections finished so far are in %s, the report was not rewritten; "
            "rerun the rest with --only, then --report-only",
            args.out,
        )
        raise SystemExit(130) from None


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run the sections ``args`` ask for and write the report (or, ``--report-only``, the report alone)."""
    if args.report_only:
        if not any(args.out.glob("*.json")):
            parser.error(
                f"--report-only: no results (*.json) in {args.out}; run the benchmarks or pass --out"
            )
        write_report(args.out, args.report)
        logger.info("wrote %s from %s", args.report, args.out)
        return
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; run on a GPU machine or drop --device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(
            f"--device {device}: there are {torch.cuda.device_count()} CUDA devices; pick one of them"
        )
    if device.type == "cpu":
        torch.set_num_threads(1)
    only = set(args.only.split(","))
    unknown = only - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")
    if args.shapes_only:
        only.discard("end_to_end")
    elif not _data_stack_installed():
        parser.error(
            "nuscenes-devkit is not installed (the bundled model's data needs it); install the project "
            "(pip install -e .) or pass --shapes-only for the random-weight shapes alone"
        )
    plan = plan_for(args.quick, device)
    mode = {"quick": args.quick, "dtype": str(plan.dtype)}
    pin_commit()  # every section names the commit the run started at
    start = time.perf_counter()
    bundled = not args.shapes_only
    if "prefill" in only:
        run_prefill(plan, device, args.out, mode, bundled)
    if "overhead" in only:
        run_overhead(plan, device, args.out, mode, bundled)
    if "memory" in only:
        subject = shaped_subject(plan.llava, 1, device, plan.dtype)
        write_result(
            args.out,
            "memory",
            device,
            mode | {"shape": plan.llava.describe(), "batch": 1},
            memory.measure(subject, plan.rounds),
        )
        logger.info("memory done (%.0f s)", time.perf_counter() - start)
    if "flops" in only:
        exact = torch.float32  # whatever the plan's dtype: the counts are checked exactly
        subject = shaped_subject(plan.flops_shape, 1, device, exact, attn="eager")
        rows = flops_check.measure(subject)
        write_result(
            args.out,
            "flops",
            device,
            mode
            | {"dtype": str(exact), "shape": plan.flops_shape.describe(), "batch": 1, "attention": "eager"},
            rows,
            llava_7b_reduction=flops_check.llava_reduction(LLAVA_7B),
        )
        logger.info("flops done (%.0f s)", time.perf_counter() - start)
    if "scaling" in only:
        rows, fits = scaling.measure(plan.scaling_shape, plan.per_camera, 1, plan.rounds, device, plan.dtype)
        config = mode | {
            "shape": plan.scaling_shape.describe(),
            "per_camera": plan.per_camera,
            "batch": 1,
            "budget": "V/4",
        }
        write_result(args.out, "scaling", device, config, rows, fits=fits)
        logger.info("scaling done (%.0f s)", time.perf_counter() - start)
    if "end_to_end" in only:
        rounds = max(1, plan.rounds_large)
        rows = end_to_end.measure(
            ("none", "autoprune"), plan.fractions["V/4"], rounds, plan.e2e_batch, plan.e2e_samples, device
        )
        config = mode | {
            "model": "tiny-drive-vla",
            "data": "synthetic val, 2 scenes x 8 samples, 192 x 192",
            "samples": rows[0]["samples"],
            "batch": plan.e2e_batch,
            "budget": "V/4",
            "rounds": rounds,
            "scores": ["open_loop"],
        }
        write_result(args.out, "end_to_end", device, config, rows)
        logger.info("end_to_end done (%.0f s)", time.perf_counter() - start)
    if "compiled" in only:  # last: it compiles the subject's layers in place
        subject = shaped_subject(plan.llava, 1, device, plan.dtype)
        rows = compiled.measure(subject, plan.rounds, ("none", "fastv", "autoprune"), plan.fractions["V/4"])
        config = mode | {"shape": plan.llava.describe(), "batch": 1, "budget": "V/4", "rounds": plan.rounds,
                         "compile": "each decoder layer, nn.Module.compile(dynamic=True)"}  # fmt: skip
        write_result(args.out, "compiled", device, config, rows)
        logger.info("compiled done (%.0f s)", time.perf_counter() - start)
    write_report(args.out, args.report)
    logger.info("wrote %s and %s in %.0f s", args.out, args.report, time.perf_counter() - start)


def _data_stack_installed() -> bool:
    """Whether nuscenes-devkit imports (the bundled model's synthetic data is read through it)."""
    try:
        import nuscenes  # noqa: F401
    except ImportError:
        return False
    return True


def run_prefill(plan: Plan, device: torch.device, out: Path, mode: dict, bundled: bool = True) -> None:
    for batch in plan.batches if bundled else ():
        subject = bundled_subject(batch, device)
        rows = prefill.measure(subject, plan.rounds, budgets=plan.fractions)
        write_result(
            out,
            f"prefill_bundled_b{batch}",
            device,
            mode | subject.config | {"batch": batch, "rounds": plan.rounds},
            rows,
        )
        logger.info("prefill bundled b%d done", batch)
    for batch in plan.batches:
        subject = shaped_subject(plan.llava, batch, device, plan.dtype)
        rounds = plan.rounds if batch == 1 else plan.rounds_large
        rows = prefill.measure(subject, rounds, budgets=plan.fractions)
        write_result(
            out,
            f"prefill_{plan.llava.name}_b{batch}",
            device,
            mode | {"shape": plan.llava.describe(), "batch": batch, "rounds": rounds},
            rows,
        )
        logger.info("prefill %s b%d done", plan.llava.name, batch)
    if plan.wide is not None:
        subject = shaped_subject(plan.wide, 1, device, plan.dtype)
        budgets = {k: v for k, v in plan.fractions.items() if k != "V"}
        rows = prefill.measure(subject, plan.rounds, pruners=("fastv", "autoprune"), budgets=budgets)
        config = {"shape": plan.wide.describe(), "batch": 1, "rounds": plan.rounds}
        write_result(out, f"prefill_{plan.wide.name}_b1", device, mode | config, rows)
        logger.info("prefill %s b1 done", plan.wide.name)


def run_overhead(plan: Plan, device: torch.device, out: Path, mode: dict, bundled: bool = True) -> None:
    fraction = plan.fractions["V/4"]
    big = max(plan.batches)
    subjects = [(f"{plan.llava.name}_b1", lambda: shaped_subject(plan.llava, 1, device, plan.dtype))]
    if bundled:
        subjects.insert(0, (f"bundled_b{big}", lambda: bundled_subject(big, device)))
    wide = plan.wide
    if wide is not None:  # where the layers' work dominates: what is left of the engine's cost
        subjects.append((f"{wide.name}_b1", lambda: shaped_subject(wide, 1, device, plan.dtype)))
    for name, make in subjects:
        subject = make()  # one model in memory at a time
        rows, profiles, stages = overhead.measure(subject, plan.rounds, ("fastv", "autoprune"), fraction)
        config = mode | subject.config | {"batch": subject.batch, "budget": "V/4", "rounds": plan.rounds}
        write_result(out, f"overhead_{name}", device, config, rows, profiles=profiles, stages=stages)
        logger.info("overhead %s done", name)


if __name__ == "__main__":
    main()
