"""File names: 8.3 short names, VFAT long names, short-name generation.

Pure code. Short names are stored as 11 OEM bytes (code page 850 here, like
mtools' default); long names as UTF-16LE in 13-unit slots, chained by ordinal and
tied to their short entry by a checksum of its 11 name bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from servers.fat.errors import InvalidName, NameTooLong

OEM_CODEPAGE = "cp850"
MAX_LFN_UNITS = 255
LFN_CHARS_PER_ENTRY = 13
LFN_LAST = 0x40
ATTR_LFN = 0x0F
NT_LOWER_BASE = 0x08
NT_LOWER_EXT = 0x10
_LFN_OFFSETS = (1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30)

_FORBIDDEN_LONG = set('"*/:<>?\\|')
# Characters allowed in a short name besides A-Z and 0-9 (and OEM bytes >= 0x80).
_SHORT_SPECIAL = set("$%'-_@~`!(){}^#&")
_LONG_ONLY = set("+,;=[] .")  # legal in long names, replaced by '_' (or dropped) in basis names


def validate_long_name(name: str) -> None:
    """Raise InvalidName / NameTooLong unless ``name`` can be stored as a VFAT long name."""
    if name in ("", ".", ".."):
        raise InvalidName(f"invalid file name {name!r}")
    bad = [c for c in name if c in _FORBIDDEN_LONG or ord(c) < 0x20]
    if bad:
        raise InvalidName(f"file name {name!r} contains characters FAT forbids: {bad[0]!r}")
    if name[-1] in ". ":
        raise InvalidName(f"file name {name!r} ends with a dot or space (Windows drops them)")
    if len(name.encode("utf-16-le")) // 2 > MAX_LFN_UNITS:
        raise NameTooLong(f"file name longer than {MAX_LFN_UNITS} UTF-16 units")


def lfn_checksum(short: bytes) -> int:
    """The VFAT checksum of an 11-byte short name: rotate right by one, add the next byte."""
    total = 0
    for b in short:
        total = (((total & 1) << 7) + (total >> 1) + b) & 0xFF
    return total


def _short_char_ok(ch: str) -> bool:
    return ch.isascii() and (ch.isupper() or ch.isdigit() or ch in _SHORT_SPECIAL)


def exact_short_name(name: str) -> tuple[bytes, int] | None:
    """If ``name`` is a valid 8.3 name needing no long name, return (11 bytes, NT case flags).

    A part (base or extension) that is all lower case sets its NT flag (0x08 / 0x10),
    as Windows NT and Linux do; mixed case within a part needs a long name.
    """
    base, dot, ext = name.partition(".")
    if not name.isascii() or not base or len(base) > 8 or len(ext) > 3 or "." in ext or (dot and not ext):
        return None
    flags = 0
    for part, flag in ((base, NT_LOWER_BASE), (ext, NT_LOWER_EXT)):
        if part.upper() != part:
            if part.lower() != part:
                return None
            flags |= flag
        if not all(_short_char_ok(c) for c in part.upper()):
            return None
    if base[0] == " ":
        return None
    return (base.upper().ljust(8) + ext.upper().ljust(3)).encode("ascii"), flags


def _basis_part(text: str) -> tuple[str, bool]:
    """Upper-case ``text`` and map it to short-name characters; report whether it was lossy."""
    out = []
    lossy = False
    for ch in text.upper():
        if ch in " .":
            lossy = True
            continue
        if _short_char_ok(ch):
            out.append(ch)
        else:
            out.append("_")
            lossy = True
    return "".join(out), lossy


def basis_name(name: str) -> tuple[str, str, bool]:
    """The Windows-like basis name (base, ext) and whether a ``~N`` tail is required.

    Spaces and periods are dropped from the base (leading periods too), the
    extension comes from after the last period, characters that cannot appear in a
    short name become '_'; a tail is needed when anything was lost or truncated.
    """
    stripped = name.lstrip(".")
    base_src, dot, ext_src = stripped.rpartition(".")
    if not dot:
        base_src, ext_src = stripped, ""
    base, lossy_b = _basis_part(base_src)
    ext, lossy_e = _basis_part(ext_src)
    lossy = lossy_b or lossy_e or len(base) > 8 or len(ext) > 3 or stripped != name
    base, ext = base[:8], ext[:3]
    if not base:
        base, lossy = "_", True
    return base, ext, lossy


def generate_short_name(name: str, taken: Callable[[bytes], bool]) -> bytes:
    """A short name for the long name ``name`` that ``taken`` does not report as in use.

    Tails go ~1, ~2, ... (the base shrinks to fit the tail), bounded at ~999999:
    a directory holds at most 65536 entries, so the search always ends.
    """
    base, ext, _ = basis_name(name)
    for n in range(1, 1_000_000):
        tail = f"~{n}"
        candidate = pack_short(base[: 8 - len(tail)] + tail, ext)
        if not taken(candidate):
            return candidate
    raise InvalidName(f"no free short name for {name!r}")  # pragma: no cover - unreachable


def pack_short(base: str, ext: str) -> bytes:
    raw = base.ljust(8).encode(OEM_CODEPAGE, "replace") + ext.ljust(3).encode(OEM_CODEPAGE,
                                                                             "replace")
    if raw[0] == 0xE5:
        raw = b"\x05" + raw[1:]  # 0xE5 marks deleted entries; 0x05 stands for it
    return raw


def short_display(raw: bytes, nt_flags: int = 0) -> str:
    """The 11 stored bytes as 'NAME.EXT' (applying the NT lower-case flags)."""
    if raw[0] == 0x05:
        raw = b"\xe5" + raw[1:]
    base = raw[:8].decode(OEM_CODEPAGE, "replace").rstrip(" ")
    ext = raw[8:11].decode(OEM_CODEPAGE, "replace").rstrip(" ")
    if nt_flags & NT_LOWER_BASE:
        base = base.lower()
    if nt_flags & NT_LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def encode_lfn(name: str, checksum: int) -> list[bytes]:
    """The LFN entries for ``name``, in on-disk order (highest ordinal, flagged 0x40, first).

    The name is padded with one 0x0000 terminator (if it does not fill the last
    slot exactly) and then 0xFFFF units.
    """
    units = name.encode("utf-16-le")
    count = -(-len(units) // (2 * LFN_CHARS_PER_ENTRY))
    room = count * LFN_CHARS_PER_ENTRY * 2
    if len(units) < room:
        units += b"\x00\x00"
    units += b"\xff" * (room - len(units))
    entries = []
    for i in range(count):
        ordinal = i + 1 | (LFN_LAST if i == count - 1 else 0)
        e = bytearray(32)
        e[0], e[11], e[12], e[13] = ordinal, ATTR_LFN, 0, checksum
        chunk = units[i * 26:(i + 1) * 26]
        for j, off in enumerate(_LFN_OFFSETS):
            e[off:off + 2] = chunk[2 * j:2 * j + 2]
        entries.append(bytes(e))
    entries.reverse()
    return entries


def lfn_fragment(entry: bytes) -> tuple[int, int, bytes, bool]:
    """Decode one LFN entry: (ordinal without flag, checksum, UTF-16LE units, is-last flag).

    Units stop at the 0x0000 terminator. They are returned undecoded because a
    surrogate pair may straddle two entries: join the fragments, then decode.
    """
    units = b"".join(entry[off:off + 2] for off in _LFN_OFFSETS)
    for i in range(0, len(units), 2):
        if units[i:i + 2] == b"\0\0":
            units = units[:i]
            break
    return entry[0] & 0x3F, entry[13], units, bool(entry[0] & LFN_LAST)


def decode_lfn_units(units: bytes) -> str:
    return units.decode("utf-16-le", "replace")
