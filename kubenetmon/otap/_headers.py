"""``BatchArrowRecords.headers``: HPACK-encoded metadata of one BAR (the per-BAR ``kubenetmon-batch-id``).

The id changes every BAR, so it is written never-indexed: a header block does
not touch HPACK's dynamic table, and a BAR the server failed to read cannot
put the encoder and decoder out of step. The decoder is still one per
stream, as the spec asks (a peer may index other headers).
"""

from __future__ import annotations

import hpack

__all__ = ["HeaderDecoder", "encode_headers"]

_MAX_HEADER_BYTES = 16 * 1024


def encode_headers(headers: dict[str, str]) -> bytes:
    """A header block of ``headers`` (lower-case names), none of them indexed."""
    return bytes(hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in headers.items()]))


class HeaderDecoder:
    """Decodes the header blocks of one stream, in order."""

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = _MAX_HEADER_BYTES

    def decode(self, block: bytes) -> dict[str, str]:
        """Names → values; raises ``ValueError`` for a block that is not HPACK."""
        if not block:
            return {}
        try:
            return {str(k): str(v) for k, v in self._decoder.decode(block)}
        except hpack.HPACKError as exc:
            raise ValueError(f"headers are not an HPACK header block: {exc}") from None
