"""Orbax checkpoints of the whole training state, with resume and fallback.

A checkpoint at step N contains the train state (parameters, optimiser state, step) and a
JSON record of everything else a run needs to continue exactly. That record is the
position in the data stream, the training time so far (for the wallclock cap) and the PRNG
key. Orbax writes
each step into a temporary folder and renames it only when complete, so a checkpoint
interrupted while being written never replaces a good one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No readable checkpoint although some exist; the message names the folder."""


class Checkpointer:
    """Saves and restores runs/<run_id>/checkpoints/<step>/, keeping the last `keep` steps."""

    def __init__(self, directory: Path, keep: int = 3, warn: Callable[[str], None] = print):
        self.directory = Path(directory).absolute()
        self.warn = warn
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write step `step`; a step already on disk (a resumed run's first step) is kept."""
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, like_state: Any) -> tuple[Any, dict] | None:
        """Return (state, meta) of the newest readable step, or None when there is none.

        `like_state` gives the shapes, dtypes and shardings to restore into. A step that
        cannot be read (a damaged file, say) is skipped with a warning in favour of the
        previous one.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        steps = self.steps()
        for step in reversed(steps):
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            try:
                restored = self.manager.restore(step, args=args)
            except Exception as error:  # Orbax and TensorStore raise many types for damaged files.
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                self.warn(f"warning: checkpoint step {step} in {self.directory} is unreadable ({first_line[:200]}); "
                          "trying the previous step")
                continue
            return restored["state"], dict(restored["meta"])
        if steps:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} (steps {steps} all failed); "
                "delete the folder to start afresh or choose another RUN_ID"
            )
        return None

    def close(self) -> None:
        self.manager.close()
