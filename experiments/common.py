"""What the entry points share: flags and errors, running several methods of one config, tables,
curves (figures: experiments/plots.py; provenance: experiments/provenance.py)."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from typing import Callable, Sequence

import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import l2rw_jax
from l2rw_jax import config as config_lib
from l2rw_jax import results as results_lib
from l2rw_jax import workdir as workdir_lib

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show INFO logs, and on an error the traceback (default: one line)."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host job: join the other processes "
    "(l2rw_jax.distributed.initialize) before any JAX work; run the same command on every "
    "host with a shared workdir (gs:// or a network file system) and "
    "--config.loop.num_devices=0. Cloud TPU, Slurm and Open MPI are detected; elsewhere give "
    "the three flags below or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "--distributed: host:port of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "--distributed: the number of processes.", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "--distributed: this process's index, 0 .. num_processes - 1.",
    lower_bound=0,
)

# Errors a user's input causes (a value, a path): one line, no traceback, unless --verbose.
USER_ERRORS = (ValueError, FileNotFoundError, app.UsageError)
# A run that failed (training diverged): one line too, exit code 1.
RUN_ERRORS = (FloatingPointError,)


def run_main(main: Callable[[Sequence[str]], None]) -> None:
    """``app.run(main)`` for the entry points: WARNING-level logs (no absl/tfds/jax INFO lines,
    e.g. jax probing for a TPU) and a user error printed as one line ``error: <message>`` on
    stderr with exit code 2 (a run that failed, e.g. diverged: the same line, exit code 1);
    ``--verbose`` keeps the INFO logs and the traceback.
    ``--distributed`` joins the multi-host job first (:func:`initialize_distributed`); then
    only process 0 prints (tables, paths) on its standard output."""

    def wrapped(argv):
        if not _VERBOSE.value:
            logging.set_verbosity(logging.WARNING)
        try:
            initialize_distributed()
            if not _DISTRIBUTED.value or workdir_lib.is_primary():
                return main(argv)
            # One table per job: the other processes run the same code (the training is a
            # collective) and keep their standard output to themselves; errors still show.
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                return main(argv)
        except USER_ERRORS + RUN_ERRORS as e:
            if _VERBOSE.value:
                raise
            print(f"error: {e} (--verbose for the traceback)", file=sys.stderr)
            sys.exit(2 if isinstance(e, USER_ERRORS) else 1)

    app.run(wrapped, flags_parser=_parse_flags)


def define_config(default_path: str, help_text: str):
    """``--config``: a ``get_config()`` file with overridable fields (``--config.num_steps=20``),
    locked (a typo is an error, not a new field). A bad override is a one-line error naming the
    field, with the closest field or the new place of a field of the old flat config
    (traceback with ``--verbose``)."""
    try:
        # config_flags reads the --config.* overrides from sys.argv here, at definition.
        return config_flags.DEFINE_config_file("config", default_path, help_text, lock_config=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        _config_error(e, sys.argv)


def _parse_flags(argv):
    """``absl.flags.FLAGS(argv)`` with every parsing error as one line ``error: ...``, exit 2
    (absl's own answer is a ``FATAL Flags parsing error`` with the traceback of the config
    file, exit 1): a config file whose ``get_config`` raised (e.g. a development copy with
    ``L2RW_DEV_DATA`` unset) gives its own message, an override before ``--config=`` says so."""
    _check_config_order(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _config_error(e, argv, _flag_message(str(e)))
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # --config.* overrides
        _config_error(e, argv)


def _check_config_order(argv: Sequence[str]) -> None:
    """``--config.<field>`` overrides apply to the file given by ``--config=``: it must come
    first (config_flags refuses the other order with an unclear message)."""
    given = [i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    early = [a for a in argv[1 : given[0]] if a.startswith("--config.")] if given else []
    if early:
        _config_error(
            ValueError(early[0]),
            argv,
            f"--config=... must come before any --config.<field> override; "
            f"found {early[0]} before {argv[given[0]]}.",
        )


def _flag_message(message: str) -> str:
    """One line of an absl flags error: for a config file's error, the exception its
    ``get_config`` raised (the last line of the traceback config_flags puts in the text)."""
    if "Error whilst parsing config file" in message:
        last = [line.strip() for line in message.splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if re.match(r"^\w+(Error|Exception): ", last) else last
    return " ".join(message.split())


def _config_error(error: Exception, argv: Sequence[str], message: str | None = None) -> None:
    if "--verbose" in argv:
        raise error
    print(
        f"error: {message or _override_message(error, argv)} (--verbose for the traceback)",
        file=sys.stderr,
    )
    sys.exit(2)


def _override_message(error: Exception, argv: Sequence[str]) -> str:
    """The first ``--config.<field>`` of ``argv`` that the config does not have, with the
    field it moved to (old flat config) or the closest one; else ``error``'s own text."""
    known = set(config_lib.flatten(config_lib.default_config().to_dict()))
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        field = arg[len("--config.") :].split("=", 1)[0]
        if (
            field in known
            or any(field.startswith(k + ".") for k in known)
            or ".options." in (f"{field}.")
        ):  # model.options takes the model's own keyword arguments
            continue
        if field in config_lib.LEGACY_FIELDS:
            return (
                f"--config.{field}: no such config field; it moved to "
                f"--config.{config_lib.LEGACY_FIELDS[field]}."
            )
        close = difflib.get_close_matches(field, sorted(known), n=1)
        hint = f"; did you mean --config.{close[0]}?" if close else ""
        return f"--config.{field}: no such config field{hint}"
    return " ".join(str(error).replace("\\n", " ").split()).strip("'\"")


def initialize_distributed() -> None:
    """For ``--distributed``: ``l2rw_jax.distributed.initialize`` with the flags' values (before
    ``main``: the configs do no JAX work when the flags are parsed). Without it, the three
    address flags are a usage error (they would be silently ignored)."""
    given = {
        f.name: f.value for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None
    }
    if not _DISTRIBUTED.value:
        if given:
            raise app.UsageError(f"--{', --'.join(sorted(given))} need --distributed.")
        return
    from l2rw_jax import distributed

    index, count = distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    logging.info("Process %d of %d.", index, count)


def run_methods(
    config, workdir: workdir_lib.PathLike, methods: Sequence[str], overrides=None
) -> dict:
    """Trains ``config`` once per method, each in ``<workdir>/<method>``; {method: results}.

    ``overrides(method) -> dict`` may change fields per method (e.g. the official code's batch
    of 500 for hard mining). A finished run is not trained again (its results are returned),
    an interrupted one resumes.
    Every method's config is validated before any is trained (a typo in the last method fails
    before the first trains), raising ValueError.
    """
    if not methods:
        raise ValueError(f"no methods given; allowed: {', '.join(config_lib.METHODS)}.")
    configs = {}
    for method in methods:
        cfg = config_lib.validate(config)
        cfg.method.name = method
        cfg.update((overrides or (lambda m: {}))(method))
        configs[method] = config_lib.validate(cfg)
    root = workdir_lib.path(workdir)  # gs:// keeps its scheme; a local path is made absolute.
    return {
        method: l2rw_jax.train_and_evaluate(cfg, root / method) for method, cfg in configs.items()
    }


def fmt(stats: dict | None, *, error: bool = False) -> str:
    """``mean +- ci95`` in percent (of error when ``error``), or ``mean`` for one seed."""
    if stats is None:
        return "-"
    mean = 100 * (1 - stats["mean"]) if error else 100 * stats["mean"]
    if stats["ci95"] is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} +- {100 * stats['ci95']:.2f}"


def background_accuracies(per_class_KxC, bg_K) -> dict:
    """The background class's test accuracy and the mean of the other classes', per member
    (``mean_ci95``); a class absent from a member's test split (null) is left out, and a
    figure no member has is None."""
    acc_KxC = results_lib.as_float(per_class_KxC)
    k = np.arange(len(bg_K))
    bg = acc_KxC[k, bg_K]
    others_KxC = acc_KxC.copy()
    others_KxC[k, bg_K] = np.nan
    present_KxC = ~np.isnan(others_KxC)
    others = np.where(present_KxC, others_KxC, 0.0).sum(1) / np.maximum(present_KxC.sum(1), 1)
    others = others[present_KxC.any(1)]
    bg = bg[~np.isnan(bg)]
    return {
        "background_accuracy": results_lib.mean_ci95(bg) if bg.size else None,
        "other_classes_accuracy": results_lib.mean_ci95(others) if others.size else None,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    )


def method_table(results: dict) -> str:
    """One row per method: final / best / hyper-validation-selected test accuracy, speed."""
    header = [
        "method",
        "seeds",
        "final test acc %",
        "best test acc %",
        "selected test acc %",
        "steps/s",
        "wall s",
    ]
    rows = [
        [
            m,
            len(r["seeds"]),
            fmt(r["final_test_accuracy"]),
            fmt(r["best_test_accuracy"]),
            fmt(r["selected_test_accuracy"]),
            f"{r['steps_per_s']:.1f}",
            f"{r['wall_time_s']:.0f}",
        ]
        for m, r in results.items()
    ]
    return markdown_table(header, rows)


def test_curve(workdir: workdir_lib.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(steps_E, accuracy_KxE) of the test evaluations in ``<workdir>/metrics.jsonl`` (local or
    a URI)."""
    by_seed: dict[int, dict[int, float]] = {}
    for r in workdir_lib.read_jsonl(workdir_lib.path(workdir) / "metrics.jsonl"):
        if r["split"] == "test":
            by_seed.setdefault(r["seed"], {})[r["step"]] = r["accuracy"]
    steps = np.array(sorted(next(iter(by_seed.values()))))
    return steps, np.array([[accs[s] for s in steps] for _, accs in sorted(by_seed.items())])


def write_json(path: workdir_lib.PathLike, obj) -> None:
    """Atomic JSON file, local or a URI; on process 0 only."""
    workdir_lib.write_json(path, obj)


def quiet_checkpoint_logs() -> None:
    """Drops orbax's INFO chatter (several lines per checkpoint) from the absl log."""
    import logging as std_logging

    from absl import logging

    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "orbax" not in record.pathname
    )


def write_text(path: workdir_lib.PathLike, text: str) -> None:
    """Atomic text file, local or a URI; on process 0 only."""
    if workdir_lib.is_primary():  # Multi-host: process 0 writes the files.
        workdir_lib.atomic_write(path, lambda f: f.write(text))
