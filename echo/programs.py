"""Jitted functions whose compiled programs are kept on disk between runs.

Before a run's first window, JAX traces the model, its gradient and the
optimizer through `lax.scan` in Python, lowers the result and hands it to
XLA; for the default config tracing and lowering alone take most of the half
second after import, and JAX's persistent compilation cache skips only
XLA's part. `SavedProgram` keeps the compiled executable itself
(`jax.experimental.serialize_executable`), so that a second run of the same
config neither traces, lowers nor compiles its programs: it loads them.

A program is saved under a key made of everything that decides what it
computes and what it runs on: its name, a description of the config it was
built from, the tree structure, shapes and dtypes of its arguments, which of
them are donated, the source of every module of this package, the versions
of jax, jaxlib, flax and optax, the device, the processor, XLA's flags and
the CPU client's thread count, and JAX's settings. Any change to one of these
compiles afresh and saves another file. Each file starts with the sha256 of
what follows; one that does not match, or cannot be read, is compiled again
and replaced. Files are a few hundred kB and are never deleted.

A program is saved only from a process that has no persistent compilation
cache configured: XLA's CPU client cannot serialize again an executable that
it read from that cache (the copy fails when it runs, with "Function ... not
found"). Such a process still reads the saved programs.

Code that changes what a function computes without changing this package's
source (a monkeypatch in a test, say) must run without saved programs
(`directory=None`), or it would load the program of the unchanged code.
"""

import functools
import glob
import hashlib
import importlib.metadata
import os
import pickle
import platform
import re
import tempfile

import jax
from absl import logging
from jax.experimental import serialize_executable

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax')
_SUFFIX = '.xla'
# JAX settings that change what is logged, cached or dumped, not what a
# program computes; every other setting is part of the key.
_UNKEYED_SETTINGS = re.compile(
  r'cache|log|dump|explain|traceback|debug_info|captured_constants'
)
# A saved file: the sha256 of the pickled program, then the pickled program.
_DIGEST_BYTES = 32


@functools.cache
def _code_digest():
  """sha256 of this package's source, as loaded, and the libraries' versions."""
  digest = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(_PACKAGE, '*.py'))):
    digest.update(os.path.basename(path).encode())
    with open(path, 'rb') as f:
      digest.update(f.read())
  for library in _LIBRARIES:
    digest.update(f'{library}=={importlib.metadata.version(library)}'.encode())
  return digest.hexdigest()


def _environment():
  """What the programs run on and JAX's settings now, as strings."""
  device = jax.devices()[0]
  return (
    device.platform,
    device.device_kind,
    device.client.platform_version,
    platform.machine(),
    _processor(),
    os.environ.get('XLA_FLAGS', ''),
    # The CPU client's thread count, which XLA may plan its kernels for.
    os.environ.get('PJRT_NPROC', ''),
    # The PRNG, x64, precision and the like change what a program computes.
    repr(
      sorted(
        (name, repr(value))
        for name, value in jax.config.values.items()
        if not _UNKEYED_SETTINGS.search(name)
      )
    ),
  )


@functools.cache
def _processor():
  """The host processor's model and instruction-set flags, where known.

  XLA's CPU code is compiled for the instructions of the processor it runs
  on, so a cache folder shared by machines must tell them apart.
  """
  try:
    with open('/proc/cpuinfo') as f:
      lines = f.read().splitlines()
  except OSError:
    return platform.processor()
  wanted = ('model name', 'flags', 'Features', 'CPU part')
  return '\n'.join(sorted({line for line in lines if line.startswith(wanted)}))


def saving_allowed():
  """Whether this process may save programs (see the module docstring)."""
  return not jax.config.jax_compilation_cache_dir


class SavedProgram:
  """`jax.jit(fun)` whose compiled program is saved in `directory`.

  Call it as the jitted function. Arguments are pytrees of arrays and Python
  scalars; results come back in the tree structure `fun` returns.

  Args:
    fun: the function to jit; it must depend on nothing but its arguments
      and what `description` names.
    name: the program's name, the start of its file names.
    description: a string that changes whenever something `fun` closes over
      changes what it computes (for example the config as JSON).
    directory: where programs are saved; None or '' compiles them as plain
      `jax.jit` does.
    donate_argnums: arguments whose buffers the call may reuse.
    on_build: called with no arguments each time a program is made, traced
      or read from disk (once per argument signature).
  """

  def __init__(
    self,
    fun,
    name,
    description,
    directory,
    donate_argnums=(),
    on_build=None,
  ):
    self._fun = fun
    self._name = name
    self._description = description
    self._directory = directory and os.path.expanduser(directory)
    self._on_build = on_build or (lambda: None)
    self._jitted = jax.jit(self._traced, donate_argnums=donate_argnums)
    self._donate_argnums = tuple(donate_argnums)
    self._programs = {}

  def __call__(self, *args):
    if not self._directory:
      return self._jitted(*args)
    leaves, in_tree = jax.tree.flatten(args)
    signature = (in_tree, tuple(jax.typeof(leaf) for leaf in leaves))
    program = self._programs.get(signature)
    if program is None:
      program = self._programs[signature] = self._build(args, signature)
    return program(*args)

  def _traced(self, *args):
    self._on_build()
    return self._fun(*args)

  def path(self, signature):
    """The file that holds the program for arguments of `signature`."""
    in_tree, avals = signature
    digest = hashlib.sha256()
    for part in (
      self._name,
      self._description,
      repr(in_tree),
      repr(avals),
      repr(self._donate_argnums),
      _code_digest(),
      *_environment(),
    ):
      digest.update(part.encode())
      digest.update(b'\0')
    name = f'{self._name}-{digest.hexdigest()[:32]}{_SUFFIX}'
    return os.path.join(self._directory, name)

  def _build(self, args, signature):
    """The compiled program for `args`: read from disk, or compiled."""
    path = self.path(signature)
    compiled = _read(path)
    if compiled is not None:
      self._on_build()
      return compiled
    compiled = self._jitted.lower(*args).compile()
    if saving_allowed():
      _write(path, serialize_executable.serialize(compiled))
    return compiled


def _read(path):
  """The jax.stages.Compiled saved in `path`, or None if it cannot be read."""
  try:
    with open(path, 'rb') as f:
      digest, blob = f.read(_DIGEST_BYTES), f.read()
    # A damaged executable could crash the process or compute wrong numbers
    # when run, so only an intact file is loaded.
    if hashlib.sha256(blob).digest() != digest:
      raise ValueError('its checksum does not match')
    payload, in_tree, out_tree = pickle.loads(blob)
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
  except FileNotFoundError:
    return None
  except Exception as error:  # noqa: BLE001 - any damage means compile again.
    logging.warning('Compiling again: %s cannot be read (%s)', path, error)
    return None


def _write(path, serialized):
  """Saves a serialized program in `path`, whole or not at all."""
  directory = os.path.dirname(path)
  try:
    os.makedirs(directory, exist_ok=True)
    blob = pickle.dumps(serialized)
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
      f.write(hashlib.sha256(blob).digest())
      f.write(blob)
    os.replace(f.name, path)
  except OSError as error:
    # The run goes on; the next one compiles again.
    logging.warning('Could not save %s: %s', path, error)
