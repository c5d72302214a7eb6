"""The Turing test server against hostile or careless clients, on loopback only."""

import http.client
import socket
import threading
import time
from urllib.parse import urlencode

import numpy as np
import pytest

from pipeline.data.output import write_labelled_shard
from pipeline.evaluation import turing

ANSWER = urlencode({"rater": "ann", "n": 0, "answer": "real"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("turing_hostile")
    rng = np.random.default_rng(0)
    for name in ("real", "refined"):
        write_labelled_shard(str(root / name), f"{name}-000000.tar",
                             [(f"{name}{i}", rng.integers(0, 256, (8, 8), dtype=np.uint8), {}) for i in range(3)])
    return str(root / "real"), str(root / "refined")


@pytest.fixture
def served(folders, tmp_path):
    """(port, answers file) of a running server; it is stopped afterwards."""
    answers = tmp_path / "answers.jsonl"
    server = turing.make_server(turing.TuringTest(*folders, str(answers), count=4), 0, timeout=0.5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1], answers
    server.shutdown()
    server.server_close()


def post(port, headers, body=ANSWER):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/answer", body, {"Content-Type": "application/x-www-form-urlencoded", **headers})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def raw(port, request: bytes, timeout=3.0) -> bytes:
    """Send `request` as is and read until the server closes; socket.timeout if it never does."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def answers_in(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_posts_from_other_origins_or_hosts_are_refused_and_record_nothing(served):
    port, answers = served
    for headers in ({"Origin": "http://evil.example"},
                    {"Origin": f"http://127.0.0.1:{port + 1}"},
                    {"Origin": "null"},
                    {"Host": f"evil.example:{port}"}):
        status, page = post(port, headers)
        assert status == 403 and ("not accepted" in page or "addressed to it" in page), (headers, page)
        assert answers_in(answers) == 0, headers
    # The same answer from the server's own page is recorded, with or without Origin.
    assert post(port, {"Origin": f"http://127.0.0.1:{port}"})[0] == 303
    assert post(port, {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}, ANSWER.replace("ann", "bo"))[0] == 303
    assert post(port, {}, ANSWER.replace("ann", "cy"))[0] == 303
    assert answers_in(answers) == 3


@pytest.mark.parametrize("length, status", [(b"-1", 400), (b"abc", 400), (b"99999999999", 413), (b"5000", 413)])
def test_bad_content_length_is_answered_at_once_without_reading(served, length, status):
    port, answers = served
    start = time.perf_counter()
    reply = raw(port, b"POST /answer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %s\r\n\r\n" % (port, length))
    assert reply.startswith(b"HTTP/1.0 %d " % status), reply[:80]
    assert time.perf_counter() - start < 2.0 and answers_in(answers) == 0


def test_a_stalled_client_is_disconnected_after_the_idle_timeout(served):
    port, _ = served
    start = time.perf_counter()
    assert raw(port, b"GET / HTTP/1.1\r\nHost: 127") == b""  # half a request, then silence
    assert time.perf_counter() - start < 2.5
    start = time.perf_counter()
    # A body promised but never sent: the reading thread gives up too.
    reply = raw(port, b"POST /answer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 40\r\n\r\nrater=" % port)
    assert reply == b"" and time.perf_counter() - start < 2.5


def test_two_hundred_simultaneous_connections_are_all_answered(served):
    port, _ = served
    count = 200
    barrier = threading.Barrier(count)
    replies: list = [None] * count

    def client(i):
        try:
            barrier.wait(timeout=20)
            replies[i] = raw(port, b"GET / HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n" % port, timeout=20)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            replies[i] = exc

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    failed = [r for r in replies if not (isinstance(r, bytes) and r.startswith(b"HTTP/1.0 200 "))]
    assert not failed, f"{len(failed)} of {count} failed, e.g. {failed[0]!r}"


def test_handler_errors_are_one_line_not_a_traceback(folders, served, capfd):
    port, answers = served
    capfd.readouterr()
    answers.write_text("{damaged\n")  # edited by hand while the server runs
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/rate?rater=ann")
    response = conn.getresponse()
    assert response.status == 500 and "line 1 is not JSON" in response.read().decode()
    conn.close()
    time.sleep(0.1)
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "line 1 is not JSON" in err

    server = turing.make_server(turing.TuringTest(*folders, str(answers.with_name("b.jsonl")), count=4))
    try:
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            server.handle_error(None, ("127.0.0.1", 5))
    finally:
        server.server_close()
    err = capfd.readouterr().err
    assert err == "turing-test: 127.0.0.1: RuntimeError: boom second line\n"
