"""The visual Turing test: a loopback web app that asks people "real or refined?".

Each rater sees the same set of real and refined images, one at a time, in an order of
their own (seeded by their name), and answers with one click. Every answer is appended
to a JSON-lines file at once, so a rater can close the page and continue later, and
files from several raters (or machines) can be pooled. At the end the page shows the
confusion matrix and the one-sided binomial p-value against chance; the paper's raters
got 517 of 1,000 right (p = 0.148).

The image URLs carry only the rater and a position, never where the image came from.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import random
import re
import sys
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from pipeline import shards
from pipeline.errors import UserError
from pipeline.evaluation.metrics import binomial_p_value

REAL, REFINED = "real", "refined"
CHOICES = (REAL, REFINED)
MAX_RATER = 64
# An answer form is a name of at most 64 characters, a position and a choice: well under
# 1 KiB even with every character percent-encoded.
MAX_BODY = 4096
# Seconds a connection may sit idle inside a request before it is closed, so a slow or
# stalled client cannot hold its handler thread indefinitely.
CONNECTION_TIMEOUT = 10.0
# Connections the kernel queues before they are accepted: a class of raters opening the
# page at once must queue, not be reset (the library default of 5 reset many).
LISTEN_BACKLOG = 256
# Host names under which a loopback server is reached; anything else in the Host header
# is another site (e.g. DNS rebinding) and is refused.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Item:
    id: str  # "<truth>:<shard>:<key>", stable across runs
    truth: str
    png: bytes


def _keys(folder: str) -> list[tuple[str, str]]:
    paths = shards.require_shards(folder)
    found = [(item.shard, item.key) for path in paths for item in shards.iter_shard(path)
             if isinstance(item, shards.RawSample)]
    if not found:
        raise UserError(f"{folder} holds no readable samples")
    return found


def _pick(folder: str, truth: str, count: int, seed: int) -> list[Item]:
    """`count` samples of `folder` chosen at random (fixed by the seed), with their PNG bytes."""
    keys = _keys(folder)
    chosen = set(random.Random(f"{seed}:{truth}").sample(keys, min(count, len(keys))))
    items = []
    for path in shards.list_shards(folder):
        for item in shards.iter_shard(path):
            if isinstance(item, shards.RawSample) and (item.shard, item.key) in chosen:
                items.append(Item(f"{truth}:{item.shard}:{item.key}", truth, item.image_bytes))
    return items


def read_answers(paths: str | list[str]) -> list[dict]:
    """Answers from one or more files; a rater's repeat answer to an item counts once."""
    seen, answers = set(), []
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.exists(path):
            continue
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    answer = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path} line {number} is not JSON; fix or remove that line") from None
                if (answer.get("rater"), answer.get("item")) in seen:
                    continue
                seen.add((answer.get("rater"), answer.get("item")))
                answers.append(answer)
    return answers


def summarise(answers: list[dict]) -> dict:
    """Confusion matrix (truth x answer), share correct and the p-value against chance."""
    confusion = {truth: {answer: 0 for answer in CHOICES} for truth in CHOICES}
    for answer in answers:
        confusion[answer["truth"]][answer["answer"]] += 1
    total = len(answers)
    correct = confusion[REAL][REAL] + confusion[REFINED][REFINED]
    return {
        "answers": total,
        "correct": correct,
        "accuracy": correct / total if total else None,
        "p_value": binomial_p_value(correct, total),
        "confusion": confusion,
        "raters": sorted({answer["rater"] for answer in answers}),
    }


def summary_text(summary: dict) -> str:
    c = summary["confusion"]
    if not summary["answers"]:
        return "no answers yet"
    return "\n".join([
        f"{summary['correct']} of {summary['answers']} answers correct "
        f"({100 * summary['accuracy']:.1f} %), one-sided binomial p = {summary['p_value']:.3g} "
        f"against chance (the paper: 517 of 1000, p = 0.148); raters: {', '.join(summary['raters'])}",
        "                 answered real   answered refined",
        f"  shown real     {c[REAL][REAL]:13d}   {c[REAL][REFINED]:16d}",
        f"  shown refined  {c[REFINED][REAL]:13d}   {c[REFINED][REFINED]:16d}",
    ])


class TuringTest:
    """The items, each rater's order, and the answers file. Thread-safe."""

    def __init__(self, real_dir: str, refined_dir: str, answers_path: str, count: int = 100, seed: int = 0):
        if count < 2:
            raise UserError("--count must be at least 2 (half real, half refined)")
        self.items = _pick(real_dir, REAL, count // 2, seed) + _pick(refined_dir, REFINED, count - count // 2, seed)
        self.by_id = {item.id: item for item in self.items}
        self.answers_path = answers_path
        self.seed = seed
        self.lock = threading.Lock()
        folder = os.path.dirname(os.path.abspath(answers_path))
        os.makedirs(folder, exist_ok=True)
        read_answers(answers_path)  # refuse a damaged file before anyone answers

    def order(self, rater: str) -> list[Item]:
        items = sorted(self.items, key=lambda item: item.id)
        random.Random(zlib.crc32(f"{self.seed}:{rater}".encode())).shuffle(items)
        return items

    def answered(self, rater: str) -> set[str]:
        return {a["item"] for a in read_answers(self.answers_path) if a["rater"] == rater}

    def next_position(self, rater: str) -> int | None:
        done = self.answered(rater)
        for position, item in enumerate(self.order(rater)):
            if item.id not in done:
                return position
        return None

    def record(self, rater: str, position: int, answer: str) -> bool:
        """Append the answer if `position` is the rater's next item; False if it is not
        (a resubmitted form), so one answer is never counted twice."""
        if answer not in CHOICES:
            return False
        with self.lock:
            if self.next_position(rater) != position:
                return False
            item = self.order(rater)[position]
            line = {
                "rater": rater,
                "item": item.id,
                "truth": item.truth,
                "answer": answer,
                "correct": answer == item.truth,
                "position": position,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            with open(self.answers_path, "a") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            return True

    def summary(self, rater: str | None = None) -> dict:
        answers = read_answers(self.answers_path)
        if rater is not None:
            answers = [a for a in answers if a["rater"] == rater]
        return summarise(answers)


# ------------------------------------------------------------------ web pages

STYLE = (
    "body{font-family:sans-serif;text-align:center;margin:2em}"
    "img{width:280px;image-rendering:pixelated;border:1px solid #888}"
    "button{font-size:1.3em;margin:.5em 1em;padding:.4em 1.2em}"
    "table{margin:1em auto;border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .8em}"
)


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>").encode()


def _matrix_html(summary: dict, caption: str, table_id: str) -> str:
    if not summary["answers"]:
        return f"<p>{html.escape(caption)}: no answers yet.</p>"
    c = summary["confusion"]
    return (
        f"<h2>{html.escape(caption)}</h2>"
        f"<table id={table_id}><tr><th></th><th>answered real</th>"
        "<th>answered refined</th></tr>"
        f"<tr><th>shown real</th><td>{c[REAL][REAL]}</td><td>{c[REAL][REFINED]}</td></tr>"
        f"<tr><th>shown refined</th><td>{c[REFINED][REAL]}</td><td>{c[REFINED][REFINED]}</td></tr></table>"
        f"<p class=score>{summary['correct']} of {summary['answers']} correct "
        f"({100 * summary['accuracy']:.1f} %); one-sided binomial p = {summary['p_value']:.3g} "
        "against guessing. A p-value above 0.05 means the images could not be told apart "
        "better than chance (the paper: 517 of 1000, p = 0.148).</p>"
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------ routes
# Each route is a function of (request, test, query); the request is the handler below,
# which has already refused a foreign Host, and answers through its reply/redirect.

NOT_FOUND = _page("Not found", "<p>Nothing here.</p>")


def _rater(values: dict) -> str | None:
    rater = (values.get("rater") or [""])[0].strip()
    return rater if 0 < len(rater) <= MAX_RATER else None


def _needs_rater(route):
    """The route gets the rater's name as a fourth argument, or the request a 400 page."""
    def checked(request, test, query):
        rater = _rater(query)
        if rater is None:
            return request.reply(400, _page("Name needed", "<p>Please give a name (1 to 64 characters).</p>"
                                                          "<p><a href=/>Back</a></p>"))
        return route(request, test, query, rater)
    return checked


def _start_page(request, test, query):
    return request.reply(200, _page("Real or refined?", (
        "<h1>Real or refined?</h1><p>You will see images one at a time. Some are real "
        "photographs, some were made by a simulator and refined. Say which you think "
        "each is. You can stop at any time and continue later under the same name.</p>"
        "<form action=/rate method=get><label>Your name "
        f"<input id=rater name=rater maxlength={MAX_RATER} required></label> "
        "<button id=start type=submit>Start</button></form>")))


@_needs_rater
def _rate_page(request, test, query, rater):
    position = test.next_position(rater)
    if position is None:
        return request.redirect("/done?" + urlencode({"rater": rater}))
    r = html.escape(rater, quote=True)
    return request.reply(200, _page("Real or refined?", (
        f"<p id=progress>Image {position + 1} of {len(test.items)}</p>"
        f"<img id=sample src=\"/image?{html.escape(urlencode({'rater': rater, 'n': position}))}\" "
        "alt=\"image to rate\"><form action=/answer method=post>"
        f"<input type=hidden name=rater value=\"{r}\"><input type=hidden name=n value={position}>"
        "<p><button id=real name=answer value=real>Real</button>"
        "<button id=refined name=answer value=refined>Refined</button></p></form>"
        f"<p><a id=stop href=\"/done?{html.escape(urlencode({'rater': rater}))}\">"
        "Stop here and see the results so far</a></p>")))


@_needs_rater
def _image(request, test, query, rater):
    order = test.order(rater)
    try:
        item = order[int((query.get("n") or ["-1"])[0])]
    except (ValueError, IndexError):
        return request.reply(404, _page("Not found", "<p>No such image.</p>"))
    return request.reply(200, item.png, kind="image/png")


@_needs_rater
def _done_page(request, test, query, rater):
    left = test.next_position(rater)
    more = ("" if left is None else
            f"<p><a id=continue href=\"/rate?{html.escape(urlencode({'rater': rater}))}\">"
            "Continue rating</a></p>")
    return request.reply(200, _page("Results", (
        f"<h1 id=done>Thank you, {html.escape(rater)}</h1>{more}"
        + _matrix_html(test.summary(rater), "Your answers", "mine")
        + _matrix_html(test.summary(), "All raters pooled", "pooled"))))


def _results(request, test, query):
    return request.reply(200, json.dumps(test.summary()).encode(), kind="application/json")


def _answer(request, test, query):
    # Browsers send Origin with every form post; it must be the page's own address
    # (the Host it was served under, so a forwarded port still works). Clients
    # without Origin passed the Host check in _route.
    origin = request.headers.get("Origin")
    if origin is not None and origin.strip().lower() != f"http://{request.own_host()}":
        # A page of another site posting here: its answers are not a rater's.
        return request.refuse(403, "Forbidden", f"answers from {origin[:100]!r} are not accepted")
    length = request.body_length()
    if isinstance(length, str):
        status, reason = length.split(" ", 1)
        return request.refuse(int(status), "Bad request", reason)
    body = request.rfile.read(length)
    if len(body) < length:
        return request.refuse(400, "Bad request", f"the answer ended after {len(body)} of {length} bytes")
    form = parse_qs(body.decode("utf-8", "replace"))
    rater = _rater(form)
    if rater is None:
        return request.reply(400, _page("Name needed", "<p>Please give a name.</p>"))
    try:
        position = int((form.get("n") or [""])[0])
    except ValueError:
        return request.reply(400, _page("Bad answer", "<p>The answer form was damaged.</p>"))
    test.record(rater, position, (form.get("answer") or [""])[0])
    return request.redirect("/rate?" + urlencode({"rater": rater}))


# (method, path) -> route. Anything else is a 404 (a method the handler has no do_X
# for is answered 501 by the library).
ROUTES = {
    ("GET", "/"): _start_page,
    ("GET", "/rate"): _rate_page,
    ("GET", "/image"): _image,
    ("GET", "/done"): _done_page,
    ("GET", "/results.json"): _results,
    ("POST", "/answer"): _answer,
}


def make_handler(test: TuringTest, idle_timeout: float = CONNECTION_TIMEOUT):
    class Handler(BaseHTTPRequestHandler):
        # Applied to each connection's socket by StreamRequestHandler.setup().
        timeout = idle_timeout

        def log_message(self, format, *args):  # keep the terminal for progress lines
            pass

        def log_error(self, format, *args):
            print(f"turing-test: {self.client_address[0]}: {_one_line(format % args)}", file=sys.stderr, flush=True)

        def reply(self, status: int, body: bytes, kind: str = "text/html; charset=utf-8", headers=None):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, path: str):
            self.reply(303, b"", headers={"Location": path})

        def own_host(self) -> str | None:
            """The Host header when it names this server, else None."""
            host = (self.headers.get("Host") or "").strip().lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            own = {self.server.server_address[0].lower(), *LOOPBACK_NAMES}
            return host if name in own else None

        def refuse(self, status: int, title: str, text: str):
            self.log_error("%s %s answered %d: %s", self.command, self.path[:100], status, text)
            self.close_connection = True
            return self.reply(status, _page(title, f"<p>{html.escape(text)}</p>"), headers={"Connection": "close"})

        def body_length(self) -> int | str:
            """The declared body length, or why it is refused ("400 ..." or "413 ...")."""
            values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
            if not values:
                return 0
            if len(set(values)) > 1:
                return "400 conflicting Content-Length headers"
            if not re.fullmatch(r"[0-9]{1,12}", values[0]):
                return f"400 Content-Length {values[0][:20]!r} is not a byte count"
            if int(values[0]) > MAX_BODY:
                return f"413 a {int(values[0])}-byte answer is more than the {MAX_BODY} bytes allowed"
            return int(values[0])

        def _route(self):
            """Route the request. A foreign Host is refused first; a UserError (such as an
            answers file damaged while serving) is a one-line log and a 500 page rather
            than a traceback."""
            if self.own_host() is None:
                return self.refuse(403, "Forbidden", "this server only answers requests addressed to it on loopback")
            url = urlparse(self.path)
            route = ROUTES.get((self.command, url.path))
            try:
                if route is None:
                    return self.reply(404, NOT_FOUND)
                return route(self, test, parse_qs(url.query))
            except UserError as exc:
                return self.refuse(500, "Server problem", str(exc))

        do_GET = do_POST = _route

    return Handler


class TuringServer(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request, client_address):
        # The library prints a traceback per failed request; one line says enough.
        exc = sys.exc_info()[1]
        print(f"turing-test: {client_address[0]}: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr, flush=True)


def make_server(test: TuringTest, port: int = 0, host: str = "127.0.0.1",
                timeout: float = CONNECTION_TIMEOUT) -> TuringServer:
    """A server on loopback; `port=0` picks a free port (see `server.server_address`).
    `timeout` bounds how long a connection may sit idle inside a request."""
    try:
        return TuringServer((host, port), make_handler(test, timeout))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
