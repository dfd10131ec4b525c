"""What every launch script shares: absl flags, config file, clean errors.

Bad input (a flag, a config override, data, a checkpoint) prints one line
`error: ...` naming the bad value and what is allowed, and exits with code 2;
a training run whose loss became non-finite exits with code 3.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def define_config_flags(default: str | None = "configs/quickstart.py") -> None:
  config_flags.DEFINE_config_file(
      "config", default, "Path to an ml_collections config file "
      "(`file.py` or `file.py:arg`); override fields with --config.a.b=value.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-host: host:port of process 0 (else from the "
                      "environment, as jax.distributed.initialize finds it).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


def fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _first_line(e: BaseException) -> str:
  """One line: the message's first line, plus the cause when a config file
  raised (absl wraps that traceback into the flag error's text)."""
  lines = [l.strip() for l in (str(e).strip() or type(e).__name__).splitlines()
           if l.strip()]
  if len(lines) > 1 and any(l.startswith("Traceback") for l in lines):
    return f"{lines[0].rstrip(':')}: {lines[-1]}"
  return lines[0]


def _unknown_key(e: BaseException, argv) -> str | None:
  """'unknown key optim.lrr; did you mean optim.lr?' for ml_collections'
  "'lrr'\nDid you mean "lr" instead of "lrr"?" (KeyError/AttributeError),
  with the full key taken from the --config.<key>=... argument."""
  import re
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = str(e.args[0]) if e.args else str(e)
  bad = re.search(r"""['"]([^'"\s]+)['"]""", text)
  if not bad:
    return None
  bad = bad.group(1)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  for arg in argv[1:]:
    m = re.match(r"--config\.([^=]+)", arg)
    if m and bad in m.group(1).split("."):
      parts = m.group(1).split(".")
      key = ".".join(parts[:parts.index(bad) + 1])
      msg = f"unknown key {key!r} in {arg.split('=')[0]}"
      if hint:
        msg += f"; did you mean {'.'.join(parts[:parts.index(bad)] + [hint.group(1)])!r}?"
      return msg
  return None


def _parse(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(_first_line(e))
  except (KeyError, AttributeError) as e:
    fail(f"bad config: {_unknown_key(e, argv) or _first_line(e)}")
  except (ValueError, TypeError, OSError) as e:
    fail(f"bad config: {_first_line(e)}")


def workdir_flag(what: str) -> str:
  """--workdir, required: the folder for `what`."""
  from rift_jax.errors import UserError
  if not FLAGS.workdir:
    raise UserError(f"--workdir is required (a directory for {what})")
  return FLAGS.workdir


def maybe_initialize_distributed() -> None:
  """Starts JAX's distributed runtime when asked (multi-host GPU/TPU/CPU)."""
  import jax
  if not (FLAGS.distributed or FLAGS.coordinator_address):
    return
  kw = {}
  if FLAGS.coordinator_address:
    kw = dict(coordinator_address=FLAGS.coordinator_address,
              num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  # CPU devices need a collectives backend to talk across processes; the
  # setting only affects the CPU client, so it is safe on GPU/TPU hosts.
  # (Asking jax.default_backend() here would start the backends, after which
  # jax.distributed.initialize refuses to run.)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)


def run(main: Callable[[], None]) -> None:
  """absl's app.run with this project's error policy."""
  from rift_jax.errors import UserError

  def _main(argv):
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    if len(argv) > 1:
      fail(f"unexpected arguments {argv[1:]!r}; use --flag=value")
    try:
      main()
    except UserError as e:
      fail(_first_line(e))
    except KeyboardInterrupt:
      fail("interrupted; finished stages and checkpoints are kept", 130)
    except Exception as e:  # noqa: BLE001
      from rift_jax.errors import NonFiniteLoss
      if isinstance(e, NonFiniteLoss):
        fail(_first_line(e), 3)
      raise

  app.run(_main, flags_parser=_parse)
