"""TCP relays between the loopbacks of two network namespaces (for tests, as root).

A test that runs control and Walrus in its own (root) namespace and nodes inside
namespaces it creates needs the two sides to reach each other without giving the root
namespace a route into the test's networks. `setns(2)` switches only the calling
thread, and a socket stays in the namespace it was created in, so a thread that
enters namespace A and listens there, and per connection a thread that enters
namespace B and connects there, join 127.0.0.1 of A to 127.0.0.1 of B. Nothing leaves
either loopback.

    relay = Relay(("node-ns", 8773), (None, control_port))   # None: the test's own namespace
    relay.port       # where it listens (in node-ns), chosen when (ns, 0) is given
    relay.close()
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_HOME = os.open("/proc/self/ns/net", os.O_RDONLY)  # the namespace this process started in


def enter(namespace: str | None) -> None:
    """Move the calling thread into `namespace` (a name under /run/netns; None: home)."""
    fd = _HOME if namespace is None else os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        if fd != _HOME:
            os.close(fd)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Relay:
    """Listen on 127.0.0.1:port in one namespace, connect to 127.0.0.1:port in another."""

    def __init__(self, listen: tuple[str | None, int], connect: tuple[str | None, int]) -> None:
        self.connect = connect
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._sock: socket.socket | None = None
        self.port = 0
        threading.Thread(target=self._serve, args=listen, daemon=True).start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _serve(self, namespace: str | None, port: int) -> None:
        try:
            enter(namespace)
            sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
            self._sock, self.port = sock, sock.getsockname()[1]
        except BaseException as exc:  # reported to the constructor
            self._error = exc
            return
        finally:
            self._ready.set()
        while not self._closed:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(client,), daemon=True).start()

    def _join(self, client: socket.socket) -> None:
        namespace, port = self.connect
        try:
            enter(namespace)
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
