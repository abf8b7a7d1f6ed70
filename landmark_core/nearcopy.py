"""Near-copies: the same photo resized, recompressed or slightly cropped, found by a 256-bit difference hash.

A model measured on copies of the photos it learned from looks better than it is, and a check of paths misses them
(the same photo in two data sets, or at two sizes). The hash is the sign of the brightness step between
neighbouring cells of a 17x16 grey thumbnail. Measured on the shared photos: porto's 800-px test photos against
their full-size originals differ in 0-14 of the 256 bits, a cropped copy of a vietnam test photo in its training
split in 24, and the nearest photo that is not a copy (the same building from the same spot, another shot) in 28.
A crop of more than about 2% of each side moves the thumbnail's cells and passes unnoticed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import storage
from .preprocess import decode_image

HASH_BITS = 256
MAX_BITS = 24  # a copy differs in at most this many bits (see above)
_GRID = (17, 16)  # width, height: 16 steps across each of 16 rows


def dhash(data: bytes) -> np.ndarray:
    """The photo's difference hash, (256,) bool. Raises (preprocess.DecodeError) when the bytes are no photo."""
    from PIL import Image

    img = decode_image(data, draft_to=4 * _GRID[1]).image.convert("L").resize(_GRID, Image.BILINEAR)
    a = np.asarray(img, dtype=np.int16)
    return (a[:, 1:] > a[:, :-1]).ravel()


def hash_uris(uris: list[str], opts: storage.S3Options = storage.S3Options(), *, threads: int = 8):
    """(hashes of the photos that read and decode, (M, 256) bool; their uris). A photo that does not is left out:
    it can be no one's copy."""

    def one(uri: str):
        try:
            return dhash(storage.read_bytes(uri, opts))
        except Exception:  # unreadable or no photo: nothing to compare (eval names such photos on its own)
            return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        got = list(pool.map(one, uris))
    kept = [(u, h) for u, h in zip(uris, got) if h is not None]
    hashes = np.stack([h for _, h in kept]) if kept else np.zeros((0, HASH_BITS), dtype=bool)
    return hashes, [u for u, _ in kept]


def nearest(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the index of the nearest reference hash and the bits they differ in."""
    if not len(reference) or not len(query):
        return np.full(len(query), -1), np.full(len(query), HASH_BITS + 1)
    idx, bits = [], []
    for _, d in _bit_distances(query, reference):
        idx.append(d.argmin(1))
        bits.append(np.rint(d.min(1)).astype(np.int64))
    return np.concatenate(idx), np.concatenate(bits)


def _bit_distances(query: np.ndarray, reference: np.ndarray):
    """(first query row, the bits each of a chunk of query hashes differs from every reference hash), chunk by
    chunk: the distance matrix stays about 256 MB however many hashes there are."""
    ref = reference.astype(np.float32)
    ref_ones = ref.sum(1)
    chunk = max(1, min(1024, _MATRIX_CELLS // max(1, len(ref))))
    for s in range(0, len(query), chunk):  # bits differing = |a| + |b| - 2 a.b, one matrix product a chunk
        q = query[s : s + chunk].astype(np.float32)
        yield s, q.sum(1)[:, None] + ref_ones[None, :] - 2.0 * (q @ ref.T)


_MATRIX_CELLS = 64_000_000


def copies(query: np.ndarray, reference: np.ndarray, *, max_bits: int = MAX_BITS) -> dict[int, tuple[int, int]]:
    """{query index: (reference index, bits)} for the queries that are a copy of a reference photo."""
    idx, bits = nearest(query, reference)
    return {i: (int(j), int(b)) for i, (j, b) in enumerate(zip(idx, bits)) if b <= max_bits}


def groups(hashes: np.ndarray, *, max_bits: int = MAX_BITS) -> np.ndarray:
    """(N,) group ids: photos joined by a chain of near-copies (within ``max_bits`` of each other) share one, so
    that a split can keep each group on one side (`landmark data split`)."""
    parent = np.arange(len(hashes))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for s, d in _bit_distances(hashes, hashes):
        for i, j in zip(*np.nonzero(np.rint(d) <= max_bits)):
            a, b = root(s + int(i)), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(hashes))])
