"""Seekable gzip: read a ``.gz`` input where it is, from seek points recorded while scanning it.

The index scan decompresses each gzip input once, front to back (:class:`GzipScan`), and
records a *seek point* every ``SPAN`` bytes of output (4 MiB): where a deflate block starts
in the compressed file (byte and bit), where that is in the decompressed stream, and the
32 KiB of output before it (the window a deflate stream may refer back to, stored
zlib-compressed). A start of a gzip member is a seek point that needs no window. Reading
decompressed bytes ``[off, off + n)`` (:class:`GzipReader`) inflates from the last seek
point before ``off``: at most one span, so each rank decompresses only its own contiguous
run of the file and nothing is written to disk (the method of zlib's ``zran.c``).

Multi-member files (``cat a.gz b.gz``) and BGZF (a series of small members: BAM's
container, ``bgzip``) are read the same way. zlib is used through ``ctypes`` (Python's
``zlib`` module cannot start inflating at a bit position); the library is the one the
interpreter's ``zlib`` module is built on, present wherever Python is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import zlib

import numpy as np

__all__ = ["GzipScan", "GzipReader", "GzipPoints", "SPAN", "GzipCorrupt"]

SPAN = 4 << 20
WINDOW = 32 << 10
_IN_CHUNK = 1 << 20
_OUT_CHUNK = 1 << 20
Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR, Z_BLOCK = 0, 1, 2, -5, 5


class _ZStream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p),
                ("zalloc", ctypes.c_void_p), ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
                ("data_type", ctypes.c_int), ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


def _libz():
    name = ctypes.util.find_library("z") or "libz.so.1"
    lib = ctypes.CDLL(name)
    p = ctypes.POINTER(_ZStream)
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflate.argtypes = [p, ctypes.c_int]
    lib.inflateEnd.argtypes = [p]
    lib.inflateReset2.argtypes = [p, ctypes.c_int]
    lib.inflatePrime.argtypes = [p, ctypes.c_int, ctypes.c_int]
    lib.inflateSetDictionary.argtypes = [p, ctypes.c_char_p, ctypes.c_uint]
    return lib


_Z = None


def _z():
    global _Z
    if _Z is None:
        _Z = _libz()
    return _Z


class GzipCorrupt(Exception):
    """A gzip stream that cannot be decompressed; ``lines``: newlines decompressed before it."""


class _Inflater:
    """One zlib inflate stream over a file, fed from a position; output into a Python buffer."""

    def __init__(self, fh, start: int, wbits: int):
        self.z = _z()
        self.s = _ZStream()
        self.fh = fh
        fh.seek(start)
        self.inbuf = ctypes.create_string_buffer(_IN_CHUNK)
        self.in_pos = start                 # file offset of inbuf[0]
        self.eof = False
        ver = self.z.zlibVersion()
        if self.z.inflateInit2_(ctypes.byref(self.s), wbits, ver, ctypes.sizeof(_ZStream)) != Z_OK:
            raise MemoryError("zlib inflateInit2 failed")

    def consumed(self) -> int:
        """File offset of the next input byte."""
        return self.in_pos + (self.s.next_in - ctypes.addressof(self.inbuf) if self.s.next_in else 0)

    def fill(self) -> bool:
        if self.s.avail_in:
            return True
        pos = self.fh.tell()
        data = self.fh.read(_IN_CHUNK)
        if not data:
            self.eof = True
            return False
        ctypes.memmove(self.inbuf, data, len(data))
        self.in_pos = pos
        self.s.next_in = ctypes.addressof(self.inbuf)
        self.s.avail_in = len(data)
        return True

    def next_member(self, skip: int) -> bytes:
        """After the end of a deflate stream: skip ``skip`` bytes (a raw stream's gzip trailer),
        then return the next two bytes (``b""`` at the end of the file); when they are the gzip
        magic, the stream is reset to read that member."""
        s = self.s
        while skip:
            if not s.avail_in and not self.fill():
                return b""
            d = min(skip, s.avail_in)
            s.next_in += d
            s.avail_in -= d
            skip -= d
        if not s.avail_in and not self.fill():
            return b""
        if s.avail_in >= 2:
            head = ctypes.string_at(s.next_in, 2)
        else:                                        # the magic split across two reads: peek in the file
            pos = self.consumed()
            self.fh.seek(pos)
            head = self.fh.read(2)
            self.fh.seek(pos)
            s.avail_in, s.next_in, self.in_pos = 0, None, pos
        if head == b"\x1f\x8b":
            self.z.inflateReset2(ctypes.byref(s), 31)
        return head

    def close(self):
        if self.s is not None:
            self.z.inflateEnd(ctypes.byref(self.s))
            self.s = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


class GzipPoints:
    """Seek points of one gzip file (arrays; see the module docstring)."""

    def __init__(self, out_off, in_off, bits, member, win_off, windows: bytes, size: int):
        self.out_off = np.asarray(out_off, dtype=np.int64)
        self.in_off = np.asarray(in_off, dtype=np.int64)
        self.bits = np.asarray(bits, dtype=np.int8)
        self.member = np.asarray(member, dtype=bool)
        self.win_off = np.asarray(win_off, dtype=np.int64)
        self.windows = windows
        self.size = int(size)                 # decompressed size

    def to_bytes(self) -> bytes:
        import io
        buf = io.BytesIO()
        np.savez(buf, out_off=self.out_off, in_off=self.in_off, bits=self.bits, member=self.member,
                 win_off=self.win_off, windows=np.frombuffer(self.windows, np.uint8),
                 size=np.array([self.size], np.int64))
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: str) -> "GzipPoints":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["out_off"], z["in_off"], z["bits"], z["member"], z["win_off"], z["windows"].tobytes(),
                       int(z["size"][0]))

    def window(self, k: int) -> bytes:
        a, b = int(self.win_off[k]), int(self.win_off[k + 1])
        return zlib.decompress(self.windows[a:b]) if b > a else b""


class GzipScan:
    """Decompress a gzip file front to back (``read(n)``, for the scanner) and record seek points."""

    def __init__(self, path: str, span: int | None = None):
        self.path, self.span = path, span or SPAN
        self.fh = open(path, "rb")
        self.inf = _Inflater(self.fh, 0, 31)
        self.out = ctypes.create_string_buffer(WINDOW + _OUT_CHUNK)
        self.hist = b""                      # the last WINDOW bytes of output before ``self.out`` data
        self.total = 0                       # decompressed bytes so far
        self.lines = 0
        self.pending = b""
        self.done = False
        self.member_start = True
        self.pts = {"out": [], "in": [], "bits": [], "member": [], "win": []}
        self._point(0, 0, 0, True, b"")

    def _point(self, out: int, inp: int, bits: int, member: bool, window: bytes) -> None:
        p = self.pts
        p["out"].append(out)
        p["in"].append(inp)
        p["bits"].append(bits)
        p["member"].append(member)
        p["win"].append(zlib.compress(window, 1) if window else b"")

    def read(self, n: int) -> bytes:
        parts, have = [self.pending], len(self.pending)
        while have < n and not self.done:
            data = self._step()
            parts.append(data)
            have += len(data)
        buf = b"".join(parts) if len(parts) > 1 else parts[0]
        out, self.pending = buf[:n], buf[n:]
        return out

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position, left to be read again."""
        data = self.read(n)
        self.pending = data + self.pending
        return data

    def _step(self) -> bytes:
        """Inflate up to ``_OUT_CHUNK`` bytes; returns them."""
        got = bytearray()
        try:
            return self._inflate(got)
        except GzipCorrupt:
            self.lines += got.count(b"\n")  # the error's line: after the last line that could be read
            raise

    def _inflate(self, got: bytearray) -> bytes:
        s, z = self.inf.s, self.inf.z
        base = ctypes.addressof(self.out)
        s.next_out = base
        s.avail_out = _OUT_CHUNK
        while s.avail_out:
            if not s.avail_in and not self.inf.fill():
                if self.member_start:            # clean end: after the last member
                    self.done = True
                    break
                raise GzipCorrupt("unexpected end of file (truncated)")
            if self.member_start:
                self.member_start = False
            before = s.avail_out
            ret = z.inflate(ctypes.byref(s), Z_BLOCK)
            produced = before - s.avail_out
            if produced:
                start = s.next_out - produced - base
                got += ctypes.string_at(base + start, produced)
                self.total += produced
            if ret == Z_STREAM_END:
                self._next_member()
                if self.done:
                    break
                continue
            if ret not in (Z_OK, Z_BUF_ERROR):
                msg = s.msg.decode("utf-8", "replace") if s.msg else f"zlib error {ret}"
                raise GzipCorrupt(msg)
            end_of_block = (s.data_type & 128) and not (s.data_type & 64)
            if end_of_block and self.total - self.pts["out"][-1] >= self.span:
                window = (self.hist + bytes(got))[-WINDOW:]
                self._point(self.total, self.inf.consumed(), s.data_type & 7, False, window)
        data = bytes(got)
        self.hist = (self.hist + data)[-WINDOW:]
        self.lines += data.count(b"\n")
        return data

    def _next_member(self) -> None:
        """After a member's trailer: another member, zero padding, or the end."""
        inf = self.inf
        pos = inf.consumed()
        head = inf.next_member(0)
        if head == b"\x1f\x8b":
            self.member_start = True
            if self.total - self.pts["out"][-1] >= self.span:
                self._point(self.total, pos, 0, True, b"")
            return
        if head:
            self.fh.seek(pos)
            if self.fh.read().strip(b"\x00"):
                raise GzipCorrupt(f"trailing data after the last gzip member at byte {pos}")
        self.done = True

    def points(self) -> GzipPoints:
        p = self.pts
        sizes = [len(w) for w in p["win"]]
        win_off = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=win_off[1:])
        # a member start that is also the end of the data (empty trailing member) is harmless
        return GzipPoints(p["out"], p["in"], p["bits"], p["member"], win_off, b"".join(p["win"]), self.total)

    def close(self) -> None:
        self.inf.close()
        self.fh.close()


class GzipReader:
    """Random access to the decompressed bytes of a gzip file through its seek points.

    Keeps the last decompressed span, so reading the records of a contiguous run inflates
    each span once. ``reader[a:b]`` is ``read(a, b - a)``. Not shared across processes:
    each process (DataLoader worker) makes its own (file handles are opened lazily).
    """

    def __init__(self, path: str, points: GzipPoints):
        self.path, self.points = path, points
        self._fh = None
        self._pid = None
        self._lo, self._buf = 0, b""

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")
            self._pid = os.getpid()
        return self._fh

    def __getitem__(self, sl: slice) -> bytes:
        a = sl.start or 0
        b = self.points.size if sl.stop is None else min(sl.stop, self.points.size)
        return self.read(a, max(0, b - a))

    def read(self, off: int, n: int) -> bytes:
        if n <= 0:
            return b""
        lo, buf = self._lo, self._buf
        if lo <= off and off + n <= lo + len(buf):
            return buf[off - lo:off - lo + n]
        p = self.points
        k = int(np.searchsorted(p.out_off, off, side="right")) - 1
        nxt = int(p.out_off[k + 1]) if k + 1 < len(p.out_off) else p.size
        self._lo = int(p.out_off[k])
        self._buf = self._inflate(k, max(off + n, nxt))
        return self._buf[off - self._lo:off - self._lo + n]

    def _inflate(self, k: int, end: int) -> bytes:
        """Decompressed bytes from seek point ``k`` up to output offset ``end`` (or the file's end)."""
        p, fh = self.points, self._file()
        member = bool(p.member[k])
        bits = int(p.bits[k])
        start = int(p.in_off[k])
        inf = _Inflater(fh, start - (1 if bits else 0), 31 if member else -15)
        try:
            s, z = inf.s, inf.z
            if bits:
                prev = fh.read(1)[0]
                z.inflatePrime(ctypes.byref(s), bits, prev >> (8 - bits))
            if not member:
                win = p.window(k)
                if win:
                    z.inflateSetDictionary(ctypes.byref(s), win, len(win))
            want = end - int(p.out_off[k])
            out = ctypes.create_string_buffer(_OUT_CHUNK)
            got = bytearray()
            raw = not member
            while len(got) < want:
                s.next_out = ctypes.addressof(out)
                s.avail_out = _OUT_CHUNK
                if not s.avail_in and not inf.fill():
                    break
                ret = z.inflate(ctypes.byref(s), 0)
                got += ctypes.string_at(out, _OUT_CHUNK - s.avail_out)
                if ret == Z_STREAM_END:               # the member ends: the next one (skip the trailer)
                    if inf.next_member(8 if raw else 0) != b"\x1f\x8b":
                        break
                    raw = False
                elif ret not in (Z_OK, Z_BUF_ERROR):
                    raise OSError(f"{self.path}: gzip stream unreadable at byte {inf.consumed()} "
                                  f"({s.msg.decode('utf-8', 'replace') if s.msg else ret}); the file changed "
                                  "after it was indexed?")
            return bytes(got[:want])
        finally:
            inf.close()

    def __getstate__(self):
        return {"path": self.path, "points": self.points}

    def __setstate__(self, state):
        self.__init__(state["path"], state["points"])
