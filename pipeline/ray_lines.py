"""Lines logged in Ray Train workers, shown by the driver as its own.

Printed in a worker, a line would reach the driver's terminal only through Ray's log
forwarding (prefixed with the worker's name), and never the handlers the driver has,
such as the demo's log. Instead each worker sends its records to a small actor, and a
thread of the driver logs them again under the same logger names.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

from pipeline import console

POLL_SECONDS = 0.2


class _Mailbox:
    """Records in the order they were sent: a plain actor runs one caller's calls in order."""

    def __init__(self):
        self.items: list = []

    def put(self, items: list) -> None:
        self.items.extend(items)

    def take(self) -> list:
        items, self.items = self.items, []
        return items


def _log_again(items: list) -> None:
    for name, level, message, found in items:
        logging.getLogger(name).log(level, message, extra={"tick": found} if found else None)


@contextlib.contextmanager
def from_workers():
    """Driver side, inside a Ray session: yields (mailbox, whether bar-only ticks are
    wanted) to hand to each worker; what they send is logged here until the block ends."""
    import ray

    console.logger(console.ROOT)
    mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
    stop = threading.Event()

    def pump():
        while not stop.wait(POLL_SECONDS):
            _log_again(ray.get(mailbox.take.remote()))

    thread = threading.Thread(target=pump, name="worker-lines", daemon=True)
    thread.start()
    try:
        yield mailbox, console.wants_bar(sys.stdout)
    finally:
        stop.set()
        thread.join()
        _log_again(ray.get(mailbox.take.remote()))
        ray.kill(mailbox)


class _ToDriver(logging.Handler):
    def __init__(self, mailbox, ticks: bool):
        super().__init__(logging.INFO)
        self.mailbox, self.ticks, self.last = mailbox, ticks, None

    def emit(self, record: logging.LogRecord) -> None:
        if not self.ticks and not console.is_line(record):
            return  # the driver would drop it: not worth a message
        item = (record.name, record.levelno, record.getMessage(), getattr(record, "tick", None))
        # Not waited for: a step must not wait on the driver.
        self.last = self.mailbox.put.remote([item])

    def wait(self) -> None:
        import ray

        if self.last is not None:
            ray.get(self.last)  # this caller's calls run in order: all are in


@contextlib.contextmanager
def to_driver(mailbox, ticks: bool):
    """Worker side: inside the block the pipeline's lines go to the driver, all of them
    delivered when it ends."""
    handler = _ToDriver(mailbox, ticks)
    with console.instead_of_terminal(handler):
        try:
            yield
        finally:
            handler.wait()
