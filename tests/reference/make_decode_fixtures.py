#!/usr/bin/env python3
"""The decoder corpus in tests/fixtures/decode: JPEG and PNG variants of a few sample images
that real photo collections contain and that the sample itself does not (four-channel JPEGs
from print workflows, 16-bit, palette and grey-alpha PNGs).

Pillow writes most of them. It cannot write YCCK (Adobe's four-channel JPEG with a colour
transform), so those come from the small baseline encoder below, which writes what libjpeg
and Photoshop write: YCbCr of the inverted CMY channels plus K, flagged by an Adobe APP14
marker with transform 2. Its output is checked here against what Pillow decodes from it.

The files are made once by a developer and committed; make_reference.py then computes
Pillow's pixels and the model's features for them.

Usage: make_decode_fixtures.py DATA_DIR OUT_DIR
Needs: pip install pillow numpy
"""
import math
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

# Sources, one per fixture family, from different classes so the fixtures look different.
SOURCES = {
    "cmyk": "Strawberry/0_100.jpg",
    "ycck": "Banana/0_100.jpg",
    "png16": "Orange/0_100.jpg",
    "palette": "Mangostan/0_100.jpg",
    "grey": "Pear/0_100.jpg",
}


def ink_cmyk(rgb):
    """CMYK ink amounts with full grey-component replacement (K = min(C, M, Y)), in the
    multiplicative model Pillow converts back with: RGB = (255 - K) * (255 - CMY) / 255."""
    cmy = 255.0 - rgb.astype(np.float64)
    k = cmy.min(axis=2, keepdims=True)
    c = np.where(k < 255, (cmy - k) * 255.0 / np.maximum(255.0 - k, 1.0), 0.0)
    return np.round(np.concatenate([c, k], axis=2)).astype(np.uint8)


# --- a baseline JPEG encoder for four-component YCCK ----------------------------------------

LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
          47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32
# Zigzag: anti-diagonals, rows rising on odd ones and falling on even ones.
ZIGZAG = sorted(((r, c) for r in range(8) for c in range(8)), key=lambda rc: (rc[0] + rc[1], rc[0] if (rc[0] + rc[1]) % 2 else -rc[0]))
DCT = np.array([[(math.sqrt(0.5) if u == 0 else 1.0) / 2 * math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)] for u in range(8)])
# Canonical Huffman tables covering every symbol: DC categories 0..11 in 4 bits, the 162 AC
# symbols (EOB, ZRL, run/size pairs) in 8 bits. Not optimal, valid, and simple.
DC_SYMBOLS = list(range(12))
AC_SYMBOLS = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]


def scaled_table(base, quality):
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = [min(255, max(1, (v * scale + 50) // 100)) for v in base]
    return np.array(table, dtype=np.float64).reshape(8, 8)


class Bits:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)  # byte stuffing
                self.acc, self.n = 0, 0

    def flush(self):
        while self.n:
            self.put(1, 1)  # pad with one-bits
        return bytes(self.out)


def category(v):
    return 0 if v == 0 else int(abs(v)).bit_length()


def put_value(bits, v, size):
    if size:
        bits.put(v if v > 0 else v + (1 << size) - 1, size)


def segment(marker, payload):
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def write_ycck(stored_cmyk, path, sampling, quality=90):
    """stored_cmyk: the samples libjpeg should hand back as JCS_CMYK (Adobe-inverted).
    sampling: (h, v) of the Y and K components; Cb and Cr are 1x1."""
    height, width, _ = stored_cmyk.shape
    h_max, v_max = sampling
    r, g, b = (255.0 - stored_cmyk[..., i].astype(np.float64) for i in range(3))
    planes = [
        0.299 * r + 0.587 * g + 0.114 * b,
        -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
        0.5 * r - 0.418688 * g - 0.081312 * b + 128,
        stored_cmyk[..., 3].astype(np.float64),
    ]
    factors = [sampling, (1, 1), (1, 1), sampling]
    tables = [0, 1, 1, 0]
    mcus_x, mcus_y = -(-width // (8 * h_max)), -(-height // (8 * v_max))
    padded = []
    for plane, (h, v) in zip(planes, factors):
        full = np.pad(plane, ((0, mcus_y * 8 * v_max - height), (0, mcus_x * 8 * h_max - width)), mode="edge")
        fy, fx = v_max // v, h_max // h
        padded.append(full.reshape(full.shape[0] // fy, fy, full.shape[1] // fx, fx).mean(axis=(1, 3)))
    quant = [scaled_table(LUMA, quality), scaled_table(CHROMA, quality)]

    bits = Bits()
    previous_dc = [0, 0, 0, 0]
    for my in range(mcus_y):
        for mx in range(mcus_x):
            for c, (h, v) in enumerate(factors):
                for by in range(v):
                    for bx in range(h):
                        y0, x0 = (my * v + by) * 8, (mx * h + bx) * 8
                        block = padded[c][y0:y0 + 8, x0:x0 + 8] - 128.0
                        coefficients = np.round(DCT @ block @ DCT.T / quant[tables[c]]).astype(int)
                        zz = [int(coefficients[rc]) for rc in ZIGZAG]
                        diff = zz[0] - previous_dc[c]
                        previous_dc[c] = zz[0]
                        size = category(diff)
                        bits.put(DC_SYMBOLS.index(size), 4)
                        put_value(bits, diff, size)
                        run = 0
                        last = max((i for i in range(1, 64) if zz[i]), default=0)
                        for i in range(1, last + 1):
                            if zz[i] == 0:
                                run += 1
                                continue
                            while run > 15:
                                bits.put(AC_SYMBOLS.index(0xF0), 8)
                                run -= 16
                            size = category(zz[i])
                            bits.put(AC_SYMBOLS.index((run << 4) | size), 8)
                            put_value(bits, zz[i], size)
                            run = 0
                        if last < 63:
                            bits.put(AC_SYMBOLS.index(0x00), 8)
    data = bits.flush()

    def zigzag_table(t):
        return bytes(int(t[rc]) for rc in ZIGZAG)

    def huffman(table_class, symbols, length):
        counts = [0] * 16
        counts[length - 1] = len(symbols)
        return bytes([table_class << 4]) + bytes(counts) + bytes(symbols)

    out = b"\xff\xd8"
    out += segment(0xFFEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 2))  # transform 2: YCCK
    out += segment(0xFFDB, b"\x00" + zigzag_table(quant[0]) + b"\x01" + zigzag_table(quant[1]))
    sof = struct.pack(">BHHB", 8, height, width, 4)
    for c, (h, v) in enumerate(factors):
        sof += bytes([c + 1, (h << 4) | v, tables[c]])
    out += segment(0xFFC0, sof)
    out += segment(0xFFC4, huffman(0, DC_SYMBOLS, 4) + huffman(1, AC_SYMBOLS, 8))
    out += segment(0xFFDA, bytes([4, 1, 0x00, 2, 0x00, 3, 0x00, 4, 0x00, 0, 63, 0]))
    out += data + b"\xff\xd9"
    with open(path, "wb") as f:
        f.write(out)


# --- PNGs Pillow does not write -------------------------------------------------------------

def write_png(path, width, height, bit_depth, color_type, raw_rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def sub_filtered(row):
        # Filter type 1 (Sub): each byte minus the same byte of the pixel to its left.
        pixel = {0: 1, 2: 3, 4: 2, 6: 4}[color_type] * bit_depth // 8
        raw = np.frombuffer(row, dtype=np.uint8).astype(np.int32)
        left = np.concatenate([np.zeros(pixel, dtype=np.int32), raw[:-pixel]])
        return b"\x01" + ((raw - left) % 256).astype(np.uint8).tobytes()

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"".join(sub_filtered(row) for row in raw_rows), 9)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def main():
    data_dir, out_dir = sys.argv[1:3]
    os.makedirs(out_dir, exist_ok=True)
    source = {k: np.asarray(Image.open(os.path.join(data_dir, v)).convert("RGB")) for k, v in SOURCES.items()}
    out = lambda name: os.path.join(out_dir, name)  # noqa: E731

    # CMYK as Pillow writes it (Adobe marker, inverted samples): its naive RGB->CMYK, K = 0.
    Image.fromarray(source["cmyk"]).convert("CMYK").save(out("cmyk_adobe.jpg"), quality=90)
    # CMYK with a real black channel, progressive.
    Image.fromarray(ink_cmyk(source["cmyk"]), "CMYK").save(out("cmyk_progressive.jpg"), quality=90, progressive=True)
    # YCCK, without and with 2x2 subsampling of Y and K.
    stored = 255 - ink_cmyk(source["ycck"])
    write_ycck(stored, out("ycck_444.jpg"), (1, 1))
    write_ycck(stored, out("ycck_420.jpg"), (2, 2))
    # Grey JPEG.
    Image.fromarray(source["grey"]).convert("L").save(out("grey.jpg"), quality=90)

    # 16-bit RGB whose low byte is 255 minus the high one: Pillow keeps the high byte; a
    # decoder that rounds would move dark samples up and bright ones down.
    rgb = source["png16"].astype(np.uint16)
    rgb16 = (rgb << 8) | (255 - rgb)
    write_png(out("rgb16.png"), 100, 100, 16, 2, [row.astype(">u2").tobytes() for row in rgb16])
    # 16-bit grey spanning 0..510: Pillow keeps values up to 255 and clips the rest.
    grey16 = np.asarray(Image.fromarray(source["png16"]).convert("L")).astype(np.uint16) * 2
    write_png(out("grey16.png"), 100, 100, 16, 0, [row.astype(">u2").tobytes() for row in grey16])

    # 8-bit palette, and a 16-colour palette (4 bits per pixel) with transparency.
    Image.fromarray(source["palette"]).quantize(256).save(out("palette.png"))
    Image.fromarray(source["palette"]).quantize(16).save(out("palette4_trns.png"), transparency=0, bits=4)
    # Grey with an alpha gradient.
    grey = Image.fromarray(source["grey"]).convert("L")
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (100, 1)))
    Image.merge("LA", (grey, alpha)).save(out("grey_alpha.png"))

    # The four-channel files decode (in Pillow) close to their source photo.
    for name, key in [("cmyk_adobe.jpg", "cmyk"), ("cmyk_progressive.jpg", "cmyk"), ("ycck_444.jpg", "ycck"),
                      ("ycck_420.jpg", "ycck")]:
        with Image.open(out(name)) as image:
            decoded = np.asarray(image.convert("RGB")).astype(int)
        error = np.abs(decoded - source[key].astype(int)).mean()
        assert error < 6, f"{name}: mean error {error:.2f} against its source"
        print(f"{name}: {image.mode}, mean error against the source {error:.2f}")
    for name in sorted(os.listdir(out_dir)):
        with Image.open(out(name)) as image:
            print(f"{name}: {os.path.getsize(out(name))} bytes, {image.format} {image.mode} {image.info.get('transparency', '')}")


if __name__ == "__main__":
    main()
