"""What a batch did: :class:`BatchSummary` and :func:`format_summary`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BatchSummary", "CaseFailure", "format_summary"]


@dataclass(frozen=True)
class CaseFailure:
    """A case that failed: its identifier, ``"ErrorType: message"`` and how often it was tried."""

    identifier: str
    error: str
    attempts: int = 1


@dataclass
class BatchSummary:
    """The outcome of :func:`~medcam3d.batch.run_batch`.

    Attributes:
        output_dir: the output folder; manifest: its manifest file.
        engine: ``"local"`` or ``"ray"``; workers: how many workers ran (0 when every case was skipped).
        done: cases computed in this run, in the order they finished.
        skipped: cases the manifest listed as finished (inputs and outputs unchanged).
        failures: cases that failed, with the error messages.
        outputs: case → the files it wrote in this run.
        reasons: case → why it ran (``"new"``, ``"inputs changed"``, ``"outputs missing"``, ``"overwrite"``).
        elapsed_s: wall time of the whole run.
        startup_s: of which making the workers took (loading the model; for Ray also connecting and
            starting the actors).
    """

    output_dir: Path
    manifest: Path
    engine: str
    workers: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
    outputs: dict[str, list[Path]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    startup_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failures)

    @property
    def ok(self) -> bool:
        """No case failed."""
        return not self.failures

    @property
    def exit_code(self) -> int:
        """The command's exit status: 1 when any case failed (the others are still done), else 0."""
        return 0 if self.ok else 1

    @property
    def failed(self) -> list[str]:
        return [f.identifier for f in self.failures]


def format_summary(summary: BatchSummary, max_failures: int = 20) -> str:
    """A few lines for the terminal: counts, time, where the outputs are, and each failure.

    Example: ``"12 case(s): 8 done, 3 skipped (finished before), 1 failed in 41.2 s (local engine);
    outputs in out"`` followed by ``"  case_007: InputFileError: ..."`` per failed case.
    """
    engine = f"{summary.engine} engine" + (f", {summary.workers} workers" if summary.workers > 1 else "")
    lines = [
        f"{summary.total} case(s): {len(summary.done)} done, {len(summary.skipped)} skipped (finished before), "
        f"{len(summary.failures)} failed in {summary.elapsed_s:.1f} s ({engine}); outputs in {summary.output_dir}"
    ]
    if summary.failures:
        lines.append("Failed cases:")
        for failure in summary.failures[:max_failures]:
            tries = f" (tried {failure.attempts} times)" if failure.attempts > 1 else ""
            message = " ".join(failure.error.split())
            lines.append(f"  {failure.identifier}{tries}: {message}")
        if len(summary.failures) > max_failures:
            lines.append(f"  ... and {len(summary.failures) - max_failures} more")
        lines.append("Fix the inputs and run the same command again: finished cases are skipped.")
    return "\n".join(lines)
