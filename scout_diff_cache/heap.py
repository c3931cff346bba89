"""The server's heap: what the cyclic collector walks, and what freed memory goes back to the system.

A snapshot is tens of megabytes of bytes objects, made once per epoch, and the event loop must not
stall while one is made or dropped. Two things stand in the way, both fixed here for the process:

- every full pass of the cyclic collector walks every tracked object with the GIL held (about
  50 ms over a fresh process on this project's machine), and a build allocates enough to set one
  off: what exists once the app is set up is exempted (it lives as long as the process anyway);
- glibc keeps freed memory in its heap: a dropped snapshot, or the sections a build unpacked before
  copying them into chunks, would stay resident. Blocks of a snapshot chunk's size are mapped on
  their own (freed, they are unmapped at once), and the heap is trimmed after a build.

Elsewhere than glibc the allocator calls are skipped.
"""

from __future__ import annotations

import ctypes
import gc

#: glibc's mallopt parameter for the size from which a block is mapped on its own.
M_MMAP_THRESHOLD = -3

#: Blocks this large or larger are mapped on their own (the snapshot's chunks are about 1 MiB).
MAPPED_FROM = 256 * 1024


def settle() -> None:
    """Once the app is set up: exempt what exists from the collector, map large blocks on their own."""
    gc.collect()
    gc.freeze()
    map_large_blocks()


def map_large_blocks() -> None:
    """Blocks of MAPPED_FROM bytes or more get a mapping of their own, unmapped when freed."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MAPPED_FROM)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (after a build freed what it unpacked)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)  # ctypes releases the GIL for the call
