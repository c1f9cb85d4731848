#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Makes a linked Swift executable independent of the folder it was built in.

    python3 Packaging/zero-module-hash.py BINARY...

swiftc puts in every object a 16-byte hash of the module it compiled, the section
.swift_modhash, which only the compiler reads again (to skip code generation when an
object's module did not change). That hash covers more than the code: two builds of the
same sources in two folders give the same code and different hashes, and the linker's
build id, a SHA-1 of the whole file, differs with them. This fills .swift_modhash with
zeros, in place (the layout of the file does not change), and sets the build id to the
SHA-1 of the result, as the linker computes it: over the file with the id zeroed.
Nothing reads either section when the program runs.
"""
import hashlib
import struct
import sys


def sections(data):
    """{name: (file offset, size)} of an ELF64 little-endian file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + index * shentsize)
        return name, offset, size

    _, names, _ = header(shstrndx)
    found = {}
    for index in range(shnum):
        name, offset, size = header(index)
        start = names + name
        found[data[start : data.index(b"\0", start)].decode()] = (offset, size)
    return found


def normalise(path):
    with open(path, "rb") as file:
        data = bytearray(file.read())
    found = sections(data)
    if ".swift_modhash" not in found or ".note.gnu.build-id" not in found:
        raise ValueError(f"{path}: no .swift_modhash or no .note.gnu.build-id")
    offset, size = found[".swift_modhash"]
    data[offset : offset + size] = bytes(size)
    offset, _ = found[".note.gnu.build-id"]
    namesz, descsz, _type = struct.unpack_from("<III", data, offset)
    desc = offset + 12 + ((namesz + 3) & ~3)
    data[desc : desc + descsz] = bytes(descsz)
    data[desc : desc + descsz] = hashlib.sha1(data).digest()[:descsz]
    with open(path, "wb") as file:
        file.write(data)


if __name__ == "__main__":
    for binary in sys.argv[1:]:
        normalise(binary)
