"""The session's own frame reader reads what websocket-client's ``frame_buffer`` reads.

``FrameReader`` replaced ``frame_buffer`` on the read path for its cost; these properties
hold it to the library's results on arbitrary frames (any opcode, reserved bits, masks,
all three length encodings) cut into arbitrary reads: the same frames in the same order,
the same refusals, the same "a frame is begun" state after every read, and each header
known before any of its payload is asked for.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import given
from hypothesis import strategies as st
from websocket import ABNF, WebSocketProtocolException, frame_buffer

from jitterline.transport.framing import FrameReader, check_frame

# Close payloads that exercise ABNF.validate: empty, one byte, valid and invalid codes.
_CLOSE_PAYLOADS = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.sampled_from([1000, 1001, 1002, 1005, 1006, 1015, 2999, 3000, 4999, 5000]).flatmap(
        lambda code: st.binary(max_size=20).map(lambda reason: struct.pack("!H", code) + reason)
    ),
    st.binary(min_size=126, max_size=130),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame as a server might send it, well-formed or not."""
    opcode = draw(st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11, 15]))
    fin = draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 0, 1, 2, 4]))
    if opcode == ABNF.OPCODE_CLOSE:
        payload = draw(_CLOSE_PAYLOADS)
    else:
        size = draw(st.sampled_from([0, 1, 125, 126, 127, 300, 65535, 65536, 70000]))
        payload = (draw(st.binary(max_size=8)) + bytes(size))[:size]
    masked = draw(st.booleans())
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    length = len(payload)
    long_form = draw(st.booleans()) and length < 126  # a short length in a longer field
    if length < 126 and not long_form:
        header = bytes([first, length | (0x80 if masked else 0)])
    elif length < 1 << 16:
        header = bytes([first, 126 | (0x80 if masked else 0)]) + struct.pack("!H", length)
    else:
        header = bytes([first, 127 | (0x80 if masked else 0)]) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    key = draw(st.binary(min_size=4, max_size=4))
    return header + key + ABNF.mask(key, payload)


def _cuts(wire: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(wire), *(p % (len(wire) + 1) for p in points)})
    return [wire[a:b] for a, b in itertools.pairwise(edges)]


class _Library:
    """websocket-client's frame_buffer as the session drove it: header, length, frame."""

    def __init__(self) -> None:
        self.pending = b""
        self.frames = frame_buffer(self._recv, True)

    def _recv(self, size: int) -> bytes:
        if not self.pending:
            raise BlockingIOError
        chunk, self.pending = self.pending[:size], self.pending[size:]
        return chunk

    def read(self, data: bytes) -> tuple[list[tuple[object, ...]], bool]:
        self.pending += data
        out: list[tuple[object, ...]] = []
        try:
            while True:
                frames = self.frames
                if frames.needs_header():
                    frames.recv_header()
                if frames.needs_length():
                    frames.recv_length()
                    assert frames.header is not None
                    out.append(("header", frames.header[4], frames.length))
                try:
                    frame = frames.recv_frame()
                except WebSocketProtocolException as exc:
                    out.append(("refused", str(exc)))
                    return out, False
                first = frame.fin << 7 | frame.rsv1 << 6 | frame.rsv2 << 5 | frame.rsv3 << 4
                out.append(("frame", first | frame.opcode, frame.data))
        except BlockingIOError:
            pass
        return out, frames.header is not None or bool(frames.recv_buffer)


def _ours(reader: FrameReader, data: bytes) -> tuple[list[tuple[object, ...]], bool]:
    reader.feed(data)
    out: list[tuple[object, ...]] = []
    while True:
        first = reader.first
        if first < 0:
            if not reader.header():
                break
            out.append(("header", reader.first & 0x0F, reader.length))
            continue
        payload = reader.payload()
        if payload is None:
            break
        refused = check_frame(first, payload)
        if refused is not None:
            out.append(("refused", str(refused)))
            return out, False
        out.append(("frame", first, payload))
    return out, reader.partial


@given(st.lists(frames(), min_size=1, max_size=6), st.lists(st.integers(0, 1 << 20)))
def test_the_reader_reads_what_websocket_client_reads_however_the_bytes_are_cut(
    wire_frames: list[bytes], points: list[int]
) -> None:
    library, reader = _Library(), FrameReader()
    for chunk in _cuts(b"".join(wire_frames), points):
        theirs, their_partial = library.read(chunk)
        ours, our_partial = _ours(reader, chunk)
        assert ours == theirs
        if theirs and theirs[-1][0] == "refused":
            return  # the session cuts the link here
        assert our_partial == their_partial


@given(st.binary(min_size=1, max_size=3))
def test_a_frame_cut_inside_its_header_is_begun_and_waits(head: bytes) -> None:
    reader = FrameReader()
    reader.feed(bytes([0x81]) + head[:1])
    assert reader.partial


def test_a_large_payload_over_many_reads_is_joined_once_it_is_complete() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = bytes([0x82, 127]) + struct.pack("!Q", len(payload)) + payload
    reader = FrameReader()
    reader.feed(wire[:65536])
    assert reader.header() and reader.payload() is None
    for start in range(65536, len(wire), 65536):
        assert reader.payload() is None
        reader.feed(wire[start : start + 65536])
    assert reader.payload() == payload
    assert not reader.partial
