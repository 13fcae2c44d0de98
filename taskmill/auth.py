"""The handshake on the coordinator's socket: both sides prove they hold the key.

Fixed-size messages, so the coordinator can run every handshake on one thread
with non-blocking sockets (see ``coordinator.acceptor``)::

    coordinator -> client   CHALLENGE: MAGIC + 32 random bytes
    client -> coordinator   ANSWER:    HMAC(key, "client" + challenge) + 32 random bytes
    coordinator -> client   VERDICT:   HMAC(key, "server" + the client's bytes), or REFUSED

A peer without the key learns nothing it can replay; a client also knows it
reached the coordinator that holds its key, not something squatting on the
path. After the handshake the socket carries ``multiprocessing.connection``
frames. Pure standard library; the client half lives here too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import time

__all__ = ["ANSWER_SIZE", "CHALLENGE_SIZE", "REFUSED", "AuthError", "answer", "challenge", "check_answer",
           "client_handshake", "verdict"]

MAGIC = b"TMv1"
NONCE_SIZE = 32
DIGEST_SIZE = 32
CHALLENGE_SIZE = len(MAGIC) + NONCE_SIZE
ANSWER_SIZE = DIGEST_SIZE + NONCE_SIZE
#: What the coordinator sends instead of its proof when the answer is wrong.
REFUSED = b"\0" * DIGEST_SIZE


class AuthError(ConnectionError):
    """The other side does not hold the key (or does not speak this handshake)."""


def _mac(key: bytes, label: bytes, data: bytes) -> bytes:
    return hmac.new(key, label + data, hashlib.sha256).digest()


def challenge() -> bytes:
    """A fresh challenge for a new peer."""
    return MAGIC + os.urandom(NONCE_SIZE)


def answer(key: bytes, challenge_bytes: bytes) -> bytes:
    """The client's answer to ``challenge_bytes``: its proof, then its own nonce."""
    if len(challenge_bytes) != CHALLENGE_SIZE or not challenge_bytes.startswith(MAGIC):
        raise AuthError("the socket does not speak taskmill's handshake")
    return _mac(key, b"client", challenge_bytes) + os.urandom(NONCE_SIZE)


def check_answer(key: bytes, challenge_bytes: bytes, answer_bytes: bytes) -> bool:
    """Whether ``answer_bytes`` proves the peer holds ``key``."""
    return len(answer_bytes) == ANSWER_SIZE and hmac.compare_digest(
        answer_bytes[:DIGEST_SIZE], _mac(key, b"client", challenge_bytes))


def verdict(key: bytes, answer_bytes: bytes) -> bytes:
    """The coordinator's proof, for a client whose answer was right."""
    return _mac(key, b"server", answer_bytes[DIGEST_SIZE:])


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the coordinator closed the connection during the handshake")
        buf += chunk
    return buf


def client_handshake(sock: socket.socket, key: bytes, deadline: float) -> None:
    """Run the client's half on a connected blocking socket before ``deadline`` (monotonic).

    Raises ``EOFError`` if the coordinator closes before its challenge (it was
    too busy: try again), ``AuthError`` if either side's proof is wrong, and
    ``TimeoutError`` past the deadline.
    """
    try:
        got = _recv_exact(sock, CHALLENGE_SIZE, deadline)
        mine = answer(key, got)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(mine)
        try:
            proof = _recv_exact(sock, DIGEST_SIZE, deadline)
        except EOFError:
            raise AuthError("the coordinator closed the connection after the key's proof") from None
    except socket.timeout:
        raise TimeoutError("the coordinator did not finish the handshake in time") from None
    finally:
        sock.settimeout(None)
    if proof == REFUSED:
        raise AuthError("the coordinator refused this key")
    if not hmac.compare_digest(proof, verdict(key, mine)):
        raise AuthError("the process on the socket does not hold the coordinator's key")
