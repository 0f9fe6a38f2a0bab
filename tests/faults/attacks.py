"""Hostile clients of the bootstrap store (rank 0 hosts it at MASTER_ADDR:MASTER_PORT),
run from the runner while a real job starts and runs. Each attack runs in background
threads until stop() and never blocks the runner: every socket has a timeout.

Most attacks need no knowledge of the store's protocol (garbage, a huge length, silence,
many connections). The frames that do use one are written in the first protocol's
format (src/bootstrap/tcp_store.h: u8 op | u32 keyLength | key | u32 valueLength |
value, big-endian); a store that demands an authenticated handshake first simply drops
them, which is the point.
"""

import os
import socket
import struct
import threading
import time

OP_SET = 1


def frame(op, key, value_len, value=b""):
    key = key.encode()
    return struct.pack(">BI", op, len(key)) + key + struct.pack(">I", value_len) + value


class Attacker:
    def __init__(self, port, host="127.0.0.1"):
        self.addr = (host, port)
        self.stop_event = threading.Event()
        self.threads = []
        self.held = []  # sockets kept open until stop()
        self.lock = threading.Lock()
        self.stats = {"connected": 0, "refused": 0, "sent_bytes": 0}

    def _count(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    def connect(self, timeout=1.0):
        try:
            s = socket.create_connection(self.addr, timeout=timeout)
        except OSError:
            self._count("refused")
            return None
        self._count("connected")
        return s

    def hold(self, s):
        with self.lock:
            self.held.append(s)

    def spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def loop(self, fn, pause=0.01):
        """Runs fn() again and again in a thread until stop()."""

        def body():
            while not self.stop_event.is_set():
                try:
                    fn()
                except OSError:
                    pass
                self.stop_event.wait(pause)

        self.spawn(body)

    def send_and_close(self, data, read=False):
        s = self.connect()
        if s is None:
            return
        with s:
            try:
                s.sendall(data)
                self._count("sent_bytes", len(data))
                if read:
                    s.settimeout(0.1)
                    s.recv(4096)
            except OSError:
                pass

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=5)
        with self.lock:
            for s in self.held:
                try:
                    s.close()
                except OSError:
                    pass
            self.held.clear()

    # ---- the attacks ---------------------------------------------------------------------

    def garbage(self, threads=2):
        """Random bytes, over and over, on fresh connections."""
        for _ in range(threads):
            self.loop(lambda: self.send_and_close(os.urandom(4096), read=True))

    def truncated(self):
        """Frames cut short (in the header, in the key, in the value), then closed."""
        whole = frame(OP_SET, "allgather/0/1", 64, os.urandom(64))
        cuts = [1, 3, 5, 9, len(whole) - 10, len(whole) - 1]

        def once():
            for cut in cuts:
                self.send_and_close(whole[:cut])

        self.loop(once)

    def huge_lengths(self):
        """Frames announcing ~4 GiB (a key length, a value length, a bare length prefix),
        followed by a little data; the connections stay open."""

        def open_one(data):
            s = self.connect()
            if s is None:
                return
            try:
                s.sendall(data)
                self._count("sent_bytes", len(data))
            except OSError:
                pass
            self.hold(s)

        open_one(struct.pack(">BI", OP_SET, 0xFFFFFFFF) + os.urandom(1 << 16))
        open_one(frame(OP_SET, "key!", 0xFFFFFFFF, os.urandom(1 << 16)))
        open_one(b"\xff" * 64)
        self.loop(lambda: self.send_and_close(struct.pack(">BI", OP_SET, 0xFFFFFFFF)), pause=0.05)

    def slow(self, clients=16):
        """Clients that send a few bytes and then nothing, and keep their connection."""
        for _ in range(clients):
            s = self.connect()
            if s is None:
                continue
            try:
                s.sendall(b"\x01\x00\x00")
            except OSError:
                pass
            self.hold(s)

    def idle(self, count):
        """count connections that send nothing and stay open; returns how many opened."""
        opened = 0
        deadline = time.monotonic() + 5
        for _ in range(count):
            if time.monotonic() > deadline or self.stop_event.is_set():
                break
            s = self.connect(timeout=0.5)
            if s is not None:
                self.hold(s)
                opened += 1
        return opened

    def big_values(self, connections=8, each=63 << 20, wait_s=4.0):
        """Each connection announces a 64 MiB value and sends `each` bytes of it, then
        holds the connection open (the value never completes). Returns once every
        connection has sent what it could (the server may stop reading), at most wait_s."""
        chunk = os.urandom(1 << 20)

        def one(i):
            s = self.connect()
            if s is None:
                return
            s.settimeout(2.0)
            self.hold(s)
            try:
                s.sendall(frame(OP_SET, f"big/{i}", 64 << 20))
                sent = 0
                while sent < each and not self.stop_event.is_set():
                    s.sendall(chunk)
                    sent += len(chunk)
                    self._count("sent_bytes", len(chunk))
            except OSError:
                pass

        first = len(self.threads)
        for i in range(connections):
            self.spawn(one, i)
        end = time.monotonic() + wait_s
        for t in self.threads[first:]:
            t.join(timeout=max(0.0, end - time.monotonic()))

    def forged_addresses(self, world):
        """Tries to plant bytes under other ranks' keys: the topology record and UCX
        address exchanges (allgather/0/R, allgather/1/R, ...) of every rank."""

        def once():
            for rnd in range(4):
                for r in range(world):
                    self.send_and_close(frame(OP_SET, f"allgather/{rnd}/{r}", 100,
                                              os.urandom(100)), read=True)

        self.loop(once, pause=0.005)


def rss_bytes(pid):
    """VmRSS of pid, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssWatch:
    """Samples a process's VmRSS in a thread; peak is the largest seen."""

    def __init__(self, pid, period=0.02):
        self.pid, self.period, self.peak = pid, period, 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_event.is_set():
            rss = rss_bytes(self.pid)
            if rss is None:
                return
            self.peak = max(self.peak, rss)
            self.stop_event.wait(self.period)

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=5)
        return self.peak


def wait_listening(port, timeout_s, host="127.0.0.1"):
    """True once something accepts connections on host:port (a bare connect, closed)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def listen_addresses(port):
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of sockets listening on port."""
    found = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    addr, p = fields[1].split(":")
                    if int(p, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                        found.append(addr)
        except OSError:
            pass
    return found
