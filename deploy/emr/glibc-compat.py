#!/usr/bin/env python3
"""Makes an x86-64 ELF binary built against a newer glibc load on an older one, for the few
symbols whose only newer requirement is a new *version* of a function the old glibc also has.

    glibc-compat.py FILE [MAX_VERSION]      (MAX_VERSION: 2.34, the glibc of Amazon Linux 2023)

Built on Debian bookworm (glibc 2.36), the fruits binaries need GLIBC_2.35 for exactly two
symbols: hypot and hypotf, which glibc 2.35 re-exported under a new version (a faster, correctly
rounded implementation) while keeping the old GLIBC_2.2.5 ones. This rewrites, in the binary's
version-needs table (.gnu.version_r), each requirement newer than MAX_VERSION whose symbols are
all in COMPAT into a requirement of the older version those symbols have always had, as if the
program had been linked against the older glibc. Nothing else changes; any other symbol needing a
newer glibc is an error (the binary must then be built on an older system).

The file is rewritten in place; running it again finds nothing to do.
"""

import struct
import sys

# Symbol -> the oldest glibc version that exports it on x86-64 (still exported by newer glibc
# as a compatibility symbol).
COMPAT = {"hypot": "GLIBC_2.2.5", "hypotf": "GLIBC_2.2.5"}

SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF


def elf_hash(name: bytes) -> int:
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def version_key(name: str):
    return tuple(int(part) for part in name.split("_", 1)[1].split("."))


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path = sys.argv[1]
    max_version = version_key("GLIBC_" + (sys.argv[2] if len(sys.argv) == 3 else "2.34"))
    data = bytearray(open(path, "rb").read())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        print(f"{path}: not a 64-bit little-endian ELF file", file=sys.stderr)
        return 1

    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
        sections.append(struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize))
    by_type = {s[1]: s for s in sections}
    if SHT_GNU_VERNEED not in by_type:
        print(f"{path}: no version needs: nothing to do")
        return 0
    dynsym, versym, verneed = by_type[SHT_DYNSYM], by_type[SHT_GNU_VERSYM], by_type[SHT_GNU_VERNEED]
    dynstr_offset = sections[dynsym[6]][4]

    def string(offset: int) -> str:
        end = data.index(b"\0", dynstr_offset + offset)
        return data[dynstr_offset + offset:end].decode()

    # The symbols that use each version index.
    users = {}
    symbol_count = dynsym[5] // dynsym[9]
    for i in range(symbol_count):
        (name_offset,) = struct.unpack_from("<I", data, dynsym[4] + i * dynsym[9])
        (index,) = struct.unpack_from("<H", data, versym[4] + i * 2)
        users.setdefault(index & 0x7FFF, []).append(string(name_offset))

    # Walk the needs: file entries (Elf64_Verneed), each with its versions (Elf64_Vernaux).
    names = {}  # version name -> its offset in .dynstr, to point a rewritten entry at
    entries = []
    offset = verneed[4]
    while True:
        _, count, file_offset, aux, next_need = struct.unpack_from("<HHIII", data, offset)
        aux_offset = offset + aux
        for _ in range(count):
            _, _, other, name_offset, next_aux = struct.unpack_from("<IHHII", data, aux_offset)
            name = string(name_offset)
            names[name] = name_offset
            entries.append((aux_offset, string(file_offset), name, other))
            if not next_aux:
                break
            aux_offset += next_aux
        if not next_need:
            break
        offset += next_need

    changed = 0
    for aux_offset, library, name, index in entries:
        if not name.startswith("GLIBC_") or version_key(name) <= max_version:
            continue
        symbols = users.get(index, [])
        targets = {COMPAT.get(symbol) for symbol in symbols}
        if None in targets or len(targets) != 1:
            unknown = sorted(s for s in symbols if s not in COMPAT)
            print(
                f"{path}: needs {name} from {library} for {', '.join(unknown) or 'symbols of different versions'}, "
                f"which glibc {'.'.join(map(str, max_version))} does not have: build on an older system",
                file=sys.stderr,
            )
            return 1
        (target,) = targets
        if target not in names:
            print(f"{path}: the string {target} is not in .dynstr; cannot point {name} at it", file=sys.stderr)
            return 1
        struct.pack_into("<I", data, aux_offset, elf_hash(target.encode()))
        struct.pack_into("<I", data, aux_offset + 8, names[target])
        print(f"{path}: {', '.join(sorted(symbols))} from {library}: {name} -> {target}")
        changed += 1

    if changed:
        open(path, "wb").write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
