"""Issue 16's attacks that need a real `unetkit serve` (uvicorn, sockets) on loopback: slow headers
(case 4), slow bodies (case 3) and chunked bodies over the limit (case 5). Bounded: at most 100
connections and ~20 s per test; every socket is closed at the end."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import httpx
import pytest

from tests.serve.live import LiveServer
from tests.serve.samples import png_of, synthetic_image


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_peer(s: socket.socket) -> bool:
    """True when the server closed the socket (after any answer it wrote)."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture
def live(artifact_path, tmp_path):
    servers: list[LiveServer] = []

    def make(**settings: object) -> LiveServer:
        servers.append(LiveServer(artifact_path, tmp_path / f"server{len(servers)}.log", **settings))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def test_case4_header_slowloris_does_not_block_others_and_is_closed(live):
    server = live(header_timeout_seconds=2, max_connections=200)
    baseline = open_fds(server.proc.pid)
    sockets = []
    try:
        for _ in range(100):
            s = connect(server.port)
            s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never finished
            sockets.append(s)
        time.sleep(0.3)
        assert open_fds(server.proc.pid) >= baseline + 90  # they are open now
        start = time.monotonic()
        r = httpx.post(f"{server.url}/v1/segment", content=png_of(synthetic_image(32, 32)),
                       headers={"Content-Type": "image/png"}, timeout=10)
        assert r.status_code == 200 and time.monotonic() - start < 5
        time.sleep(3)  # past the header timeout
        assert all(closed_by_peer(s) for s in sockets)
        assert open_fds(server.proc.pid) <= baseline + 5
    finally:
        for s in sockets:
            s.close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_case4_huge_headers_get_431_and_do_not_grow_memory(live):
    """A request line or header of any size was buffered whole (before: a 50 MB header, +88 MB RSS,
    answered 200); past max_header_bytes the connection gets 431 and is closed, memory flat."""
    server = live(max_header_bytes=16 * 1024)
    before = rss_bytes(server.proc.pid)
    for start in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"GET /healthz?" ):
        s = connect(server.port)
        try:
            s.sendall(start)
            answer, sent, reset = b"", 0, False
            try:
                while sent < 20_000_000 and not answer:  # 20 MB offered; the server stops reading long before
                    s.sendall(b"a" * 65536)
                    sent += 65536
                    if select.select([s], [], [], 0)[0]:
                        answer = s.recv(65536)
                answer = answer or s.recv(65536)
            except (BrokenPipeError, ConnectionResetError):
                reset = True  # closed with our bytes unread: the kernel may reset before we read the 431
                try:
                    answer = answer or s.recv(65536)
                except OSError:
                    pass
            assert answer.startswith(b"HTTP/1.1 431") or (reset and not answer), answer[:60]
            assert sent < 5_000_000  # the server stopped reading at the cap
        finally:
            s.close()
    assert rss_bytes(server.proc.pid) - before < 8 * 2**20
    ok = httpx.get(f"{server.url}/healthz", headers={"X-Fine": "a" * 8000}, timeout=5)
    assert ok.status_code == 200  # headers under the cap are served as before


def test_case4_connections_beyond_the_cap_are_closed_at_once(live):
    server = live(max_connections=20, header_timeout_seconds=10)
    sockets = [connect(server.port) for _ in range(40)]
    try:
        time.sleep(0.5)
        assert sum(closed_by_peer(s) for s in sockets) >= 15
    finally:
        for s in sockets:
            s.close()
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_case3_slow_uploads_do_not_lock_everyone_out_and_hit_the_body_deadline(live):
    server = live(max_inflight=4, body_timeout_seconds=3)
    image = png_of(synthetic_image(48, 48))
    slow = []
    try:
        for _ in range(4):  # as many slow clients as there are admission slots
            s = connect(server.port)
            s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      + f"Content-Length: {len(image)}\r\n\r\n".encode() + image[:10])
            slow.append(s)
        stop = threading.Event()

        def trickle() -> None:  # one byte every 0.5 s per client, until the server gives up
            for i in range(10, 30):
                if stop.wait(0.5):
                    return
                for s in slow:
                    try:
                        s.send(image[i:i + 1])
                    except OSError:
                        pass

        t = threading.Thread(target=trickle)
        t.start()
        time.sleep(0.5)
        with httpx.Client(timeout=10) as client:
            statuses = [client.post(f"{server.url}/v1/segment", content=image,
                                    headers={"Content-Type": "image/png"}).status_code for _ in range(5)]
        assert statuses == [200] * 5  # before: every one 503 (the slow clients held the slots)
        time.sleep(3)  # past the body deadline
        answers = []
        for s in slow:
            s.setblocking(True)
            s.settimeout(2)
            answers.append(s.recv(200))
        stop.set()
        t.join()
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
    finally:
        for s in slow:
            s.close()


def test_case5_a_chunked_body_over_the_limit_is_refused_as_it_passes(live):
    limit = 1_000_000
    server = live(max_body_bytes=limit)
    s = connect(server.port)
    sent = 0
    try:
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"\x89PNG" + b"\x00" * (64 * 1024 - 4)
        answer = b""
        deadline = time.monotonic() + 20
        while sent < 4 * limit and time.monotonic() < deadline:
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                answer = s.recv(4096)
                break
            try:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:  # the server closed the connection
                break
            sent += len(chunk)
            time.sleep(0.005)
        if not answer:
            s.settimeout(5)
            try:
                answer = s.recv(4096)
            except OSError:
                answer = b""
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
        assert b"connection: close" in answer.lower()
        assert sent < 1.3 * limit, f"{sent:,} bytes sent before the 413 (limit {limit:,})"  # before: 1.85x
    finally:
        s.close()
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def forward_passes(server) -> float:
    """Forward passes the server has run so far (its inference histogram's count)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("unetkit_inference_seconds_count"))


def test_case7_a_disconnected_clients_work_stops(live):
    """A client that sends a large image and hangs up costs a few more batches, not the whole image
    (before: every tile ran to the end, or to the request deadline)."""
    server = live(max_batch_size=1, max_wait_ms=0, request_timeout_seconds=120)
    body = png_of(synthetic_image(1000, 1000))  # ~2,000 tiles of the tiny model, one per pass: tens of seconds
    s = connect(server.port)
    try:
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 30
        while forward_passes(server) < 20:  # the request is being segmented
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.1)
    finally:
        s.close()  # the client gives up
    time.sleep(1.0)  # the watcher notices within ~0.2 s; the batch in flight finishes
    settled = forward_passes(server)
    time.sleep(2.0)
    assert forward_passes(server) == settled  # nothing more runs for the request that was dropped
    r = httpx.post(f"{server.url}/v1/segment", content=png_of(synthetic_image(32, 32)),
                   headers={"Content-Type": "image/png"}, timeout=10)
    assert r.status_code == 200  # and the server is free for the next client
