"""Run an iterator in a background thread, a few items ahead: decoding overlaps the network."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator


def prefetch(items: Iterable, depth: int) -> Iterator:
    """Run ``items`` in a background thread, ``depth`` items ahead (decoding overlaps the network)."""
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as err:  # handed to the consumer
            buffer.put(err)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
