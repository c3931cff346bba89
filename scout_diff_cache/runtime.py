"""The server's Python runtime, set for an event loop that must not stall while snapshots are made.

A snapshot is tens of megabytes of bytes objects, made once per epoch in a thread beside the event
loop, which must not stall meanwhile (every stream and health check would). Three things stand in
the way, all set here for the process:

- a thread running Python holds the GIL until the interpreter's switch interval (5 ms by default)
  makes it yield, and under load the loop waits for several such turns: the interval is 1 ms;
- every full pass of the cyclic collector walks every tracked object with the GIL held (about
  50 ms over a fresh process on this project's machine), and a build allocates enough to set one
  off: what exists once the app is set up is exempted (it lives as long as the process anyway), and
  so is each snapshot once built (several objects per file: 10 ms a pass for git/git's two epochs);
- glibc keeps freed memory in its heap: a dropped snapshot, or the sections a build unpacked before
  copying them into chunks, would stay resident. Blocks of a snapshot chunk's size are mapped on
  their own (freed, they are unmapped at once), and the heap is trimmed after a build.

Elsewhere than glibc the allocator calls are skipped. Only `serve` tunes its process so: it calls
`settle` once the app is set up and hands `after_build` down to be run after each snapshot build;
`inspect`, the tests and other library callers leave their process as it is.
"""

from __future__ import annotations

import ctypes
import gc
import sys

#: glibc's mallopt parameter for the size from which a block is mapped on its own.
M_MMAP_THRESHOLD = -3

#: Blocks this large or larger are mapped on their own (the snapshot's chunks are about 1 MiB).
MAPPED_FROM = 256 * 1024

#: Seconds a thread runs Python before it hands the GIL to another that waits (the loop).
SWITCH_INTERVAL = 0.001


def settle() -> None:
    """Once the app is set up: exempt what exists from the collector, map large blocks on their own,
    hand the GIL over sooner."""
    gc.collect()
    gc.freeze()
    map_large_blocks()
    sys.setswitchinterval(SWITCH_INTERVAL)


def exempt_from_collection() -> None:
    """Once a snapshot is built: collect the young garbage (a short pass), then exempt every object
    that is left from the collector's full passes. A snapshot holds no reference cycles, so it is
    still freed when dropped; only a cycle already in the oldest generation would outlive it."""
    gc.collect(1)
    gc.freeze()


def after_build() -> None:
    """After each snapshot build, in the build's thread while the snapshot is held: give back what
    the build freed, then exempt the snapshot from the collector."""
    release_freed_memory()
    exempt_from_collection()


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
