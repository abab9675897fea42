"""What every source shares: counters, and the live wrapper (a reader thread, a bounded latest-frame-wins
queue, reconnection with capped exponential backoff).

A source is an iterable of `Frame`s with an `id`, a `live` flag, `stats` (SourceStats) and `close()`.
File sources yield every frame in order. A live source (camera, network stream) is read by its own
thread into a queue of `queue_size` frames; when the consumer is slower the oldest frame is dropped
and counted, so a result is never older than the queue. When a live stream ends or fails, it is
reopened after 0.5, 1, 2, ... seconds (capped at `max_backoff`); the gap is recorded when frames
resume. A source that cannot be opened the first time raises InputError at once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edge_guard.errors import InputError
from edge_guard.sources.frame import Frame
from edge_guard.sources.mjpeg import Broken

Opener = Callable[[], Iterable["Frame | Broken"]]  # opens the stream once; iterating reads it


@dataclass
class SourceStats:
    """Counters of one source, safe to update from its reader thread."""

    read: int = 0  # frames read from the source
    dropped: int = 0  # live frames dropped because the consumer was behind (latest frame wins)
    corrupt: dict[str, int] = field(default_factory=dict)  # reason -> frames
    reconnects: int = 0
    gaps: list[dict[str, float]] = field(default_factory=list)  # {"start", "end", "seconds"} wall time
    errors: list[str] = field(default_factory=list)  # why the stream was lost, most recent last (10 kept)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_corrupt(self, reason: str) -> None:
        with self._lock:
            self.corrupt[reason] = self.corrupt.get(reason, 0) + 1

    def lost(self, why: str) -> None:
        with self._lock:
            self.errors = [*self.errors[-9:], why]

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"read": self.read, "dropped": self.dropped, "corrupt": dict(self.corrupt),
                    "reconnects": self.reconnects, "gaps": list(self.gaps), "errors": list(self.errors)}


class Source:
    """Base of all sources: iterate it for Frames; `close()` stops it (idempotent)."""

    live = False

    def __init__(self, source_id: str) -> None:
        self.id = source_id
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop reading; an iteration in progress ends after the current frame."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamSource(Source):
    """A source read in order from an opener (a file, stdin): every frame, no thread, no reconnection."""

    def __init__(self, source_id: str, opener: Opener) -> None:
        super().__init__(source_id)
        self._items = opener()
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        for item in self._items:
            if self._stop.is_set():
                break
            if isinstance(item, Broken):
                self.stats.count_corrupt(item.reason)
                continue
            self.stats.read += 1
            yield item

    def close(self) -> None:
        self._stop.set()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class LiveSource(Source):
    """A live stream read by a thread into a bounded queue (latest frame wins), reopened when it is lost.

    opener: opens the stream (raising OSError/InputError when it cannot) and returns its frames.
    max_reconnects: reopen attempts in a row before giving up (None: forever). backoff: first wait in s.
    """

    live = True

    def __init__(self, source_id: str, opener: Opener, *, queue_size: int = 2, max_reconnects: int | None = None,
                 backoff: float = 0.5, max_backoff: float = 10.0) -> None:
        super().__init__(source_id)
        if queue_size < 1:
            raise InputError(f"queue size: expected an integer >= 1, got {queue_size}.")
        self._opener, self._max_reconnects = opener, max_reconnects
        self._backoff, self._max_backoff = backoff, max_backoff
        self._queue: collections.deque[Frame] = collections.deque(maxlen=queue_size)
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._lost_at: float | None = None  # wall time the stream was lost, until frames come back
        self._failures = 0  # reopen attempts since the last frame
        try:
            first = opener()  # a source that cannot be opened at all is one clear error, now
        except (OSError, InputError, ValueError) as exc:
            raise InputError(f"{source_id}: cannot open the stream ({exc}). Check the address or device, "
                             "and that it is streaming.") from None
        self._thread = threading.Thread(target=self._read, args=(first,), name=f"edgeguard-source {source_id}",
                                        daemon=True)
        self._thread.start()

    def _put(self, frame: Frame) -> None:
        with self._ready:
            if len(self._queue) == self._queue.maxlen:
                with self.stats._lock:
                    self.stats.dropped += 1  # the oldest frame falls out: the consumer only sees recent ones
            self._queue.append(frame)
            self._ready.notify()

    def _pump(self, items: Iterable[Frame | Broken]) -> None:
        for item in items:
            if self._stop.is_set():
                return
            if isinstance(item, Broken):
                self.stats.count_corrupt(item.reason)
                continue
            if self._lost_at is not None:  # frames are back: record the gap
                now = time.time()
                with self.stats._lock:
                    self.stats.gaps.append({"start": self._lost_at, "end": now,
                                            "seconds": round(now - self._lost_at, 3)})
                self._lost_at = None
            self._failures = 0  # a frame arrived: the stream works again, the reconnect budget is whole
            with self.stats._lock:
                self.stats.read += 1
            self._put(item)

    def _read(self, items: Iterable[Frame | Broken] | None) -> None:
        try:
            while items is not None and not self._stop.is_set():
                try:
                    self._pump(items)
                    why = "stream ended"
                except Exception as exc:  # whatever a stream raises (IncompleteRead, codec errors): it is lost
                    why = f"{type(exc).__name__}: {exc}"
                if self._stop.is_set():
                    return
                self.stats.lost(why)
                self._lost_at = self._lost_at or time.time()
                items = self._reconnect()
        finally:
            with self._ready:
                self._done = True
                self._ready.notify_all()

    def _reconnect(self) -> Iterable[Frame | Broken] | None:
        """Reopen the stream, waiting 0.5, 1, 2, ... s (capped) between attempts; None when giving up or stopped."""
        # the budget counts attempts since the last frame, so a stream that opens and dies at once gives up too
        while self._max_reconnects is None or self._failures < self._max_reconnects:
            if self._stop.wait(min(self._max_backoff, self._backoff * 2 ** self._failures)):
                return None
            self._failures += 1
            try:
                items = self._opener()
            except Exception as exc:
                self.stats.lost(f"reconnect {self._failures}: {type(exc).__name__}: {exc}")
                continue
            with self.stats._lock:
                self.stats.reconnects += 1
            return items
        return None

    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._ready:
                while not self._queue and not self._done and not self._stop.is_set():
                    self._ready.wait(0.1)
                if self._queue:
                    frame = self._queue.popleft()
                elif self._done or self._stop.is_set():
                    return
                else:
                    continue
            yield frame

    def close(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        self._thread.join(timeout=5)
