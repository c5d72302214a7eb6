"""Ray for every job (train, refine-dataset, demo): where it runs, what it prints, and
that nothing it started outlives the job.

`ray_session(address)` joins the cluster at `address` (or RAY_ADDRESS, which `ray job
submit` sets), else starts an embedded Ray on this machine, bound to loopback only.
It shuts down only a Ray it started: inside an already initialised Ray (a test
fixture, the demo between steps) it does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import warnings

from pipeline.ray_watchdog import CLEAN_END

# Ray's own chatter (start-up notices, Ray Data's per-dataset plan and progress blocks,
# Ray Train's controller and clean-up actors) is off unless --verbose; what the
# pipeline itself prints always gets through.
_verbose = False
LOCALHOST = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def set_verbose(flag: bool) -> None:
    global _verbose
    _verbose = bool(flag)


def is_verbose() -> bool:
    return _verbose or os.environ.get("SIMGAN_VERBOSE") == "1"


def process_env(verbose: bool) -> dict[str, str]:
    """Environment for every Ray process of the job (driver and workers)."""
    env = {
        # Ray Train replaces print() in its workers with a copy to stdout plus a log
        # record on the console handler: with worker output sent to the driver, every
        # line of ours appeared twice. Plain print writes it once.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    if not verbose:
        env.update({
            # Ray Data reads this in every process that runs a dataset (also a Train
            # worker streaming its shard); WARNING would still say "progress bars disabled".
            "RAY_DATA_LOG_LEVEL": "ERROR",
            # Watches for node preemption, which a single machine never sees; its
            # actor's start logs a C++ error line about its arguments.
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            # Deprecation notices from Ray's own internals (Ray Data's DatasetManager), and
            # torch on the read-only arrays Ray Data hands to the refiner actors.
            "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore:The given NumPy array is not writable",

        })
    return env


def _quiet_this_process(verbose: bool) -> None:
    # Ray Data may have read RAY_DATA_LOG_LEVEL before this process set it (when it was
    # imported first), and warns once that progress bars are off: set the levels here.
    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        # Advice to Ray users about faster filters; nothing the user of this tool can act on.
        warnings.filterwarnings("ignore", message=r"Use 'expr' instead of 'fn'", category=UserWarning)
    if not sys.stdout.isatty():
        # Colour codes around the worker prefix are noise in a log file or a job log.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def _data_context(verbose: bool) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    # Non-interactive: Ray Data would log a block of progress lines per dataset.
    context.enable_progress_bars = verbose
    context.execution_options.verbose_progress = verbose


@contextlib.contextmanager
def ray_session(address: str | None = None, verbose: bool | None = None, num_cpus: int | None = None):
    """Ray for one job; yields True when this call started (and will stop) it."""
    import ray

    verbose = is_verbose() if verbose is None else verbose
    if ray.is_initialized():
        _data_context(verbose)
        yield False
        return
    env = process_env(verbose)
    # Set before a local Ray starts: its raylet, and every worker it forks, inherit it.
    os.environ.update(env)
    _quiet_this_process(verbose)
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(
        logging_level=logging.INFO if verbose else logging.ERROR,
        # The same in Ray's worker processes. Among what it hides: Ray Train's clean-up
        # actor warns every second that the State API is unavailable, which it is
        # without the dashboard this job does not start.
        logging_config=ray.LoggingConfig(log_level="INFO" if verbose else "ERROR"),
        log_to_driver=True,
        # A cluster's workers do not inherit this process's environment.
        runtime_env={"env_vars": env},
    )
    watchdog, own = None, {}
    if address:
        _log(verbose, f"ray: joining the cluster at {address}")
        ray.init(address=address, **common)
    else:
        # "local": always a fresh embedded Ray, never a cluster another process left
        # running. Loopback: nothing off this machine needs to reach it.
        own = _own_address()
        with _loopback_only(), _environment(own):
            ray.init(address="local", include_dashboard=False, num_cpus=num_cpus,
                     **{**common, "runtime_env": {"env_vars": {**env, **own}}})
        watchdog = _start_watchdog()
        _log(verbose, f"ray: started a local Ray on {LOCALHOST} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")
    _data_context(verbose)
    try:
        with _environment(own):
            yield True
    finally:
        ray.shutdown()
        if watchdog is not None:
            _end_cleanly(watchdog)


def node_id() -> str | None:
    """The id of the Ray node this process runs on (a driver, task or actor of a
    connected Ray), or None outside Ray; never imports or starts Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def _own_address() -> dict[str, str]:
    """The embedded Ray's GCS address, fixed before it starts. Ray's own helpers (Ray
    Train's placement-group cleaner asks the State API) look for "the" Ray of the
    machine; with another Ray running beside this one they find two and fail with a
    traceback. RAY_ADDRESS in this job's processes names this one."""
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        port = probe.getsockname()[1]
    return {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{LOCALHOST}:{port}"}


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """`values` in os.environ inside the block (Ray's processes started there inherit
    them), the previous values after it, so a later job in this process starts afresh."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _loopback_only():
    """Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the machine's address and binds
    its servers to every interface; in its "no cluster" mode (the macOS and Windows
    default, chosen by this variable) the node address, and every server, is loopback.
    Ray's processes read the variable at start; this process read it when it imported
    ray, so the constant is set here too, and put back for a later cluster connection."""
    from ray._private import ray_constants

    saved = os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _log(verbose: bool, line: str) -> None:
    if verbose:
        from pipeline import console

        console.logger(console.ROOT).info(line)


def _session_dir() -> str:
    import ray

    return ray._private.worker._global_node.get_session_dir_path()


def _end_cleanly(watchdog: subprocess.Popen) -> None:
    """Tell the watchdog that Ray was shut down: it leaves without killing anything."""
    try:
        watchdog.stdin.write(CLEAN_END)
        watchdog.stdin.close()
    except BrokenPipeError:  # it is gone already: nothing to tell
        pass
    watchdog.wait()


def _start_watchdog() -> subprocess.Popen:
    """A process that ends the local Ray's processes if this driver dies without
    shutting it down (SIGKILL, OOM killer): Ray lets its agents and workers run on
    for a minute or more after a driver it did not see exit."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.ray_watchdog", _session_dir()],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C in the terminal is the driver's to handle
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
