"""Files a user will actually send: each gives the right digit or one clear line, from the function and the CLI.

The reference picture is a "7" drawn dark on white (the shipped model: 7 with probability 0.91); every valid
variant of it must still be a 7, every bad file one ``odenet: error:`` line and a non-zero exit.
"""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from odenet import images as preprocess
from odenet.cli import main
from odenet.errors import OdenetError
from odenet.images import prepare_image


def seven(size=(400, 400), ink=0, paper=255, mode="L") -> Image.Image:
    w, h = size
    im = Image.new(mode, size, paper)
    ImageDraw.Draw(im).line([(0.25 * w, 0.2 * h), (0.75 * w, 0.2 * h), (0.45 * w, 0.85 * h)], fill=ink,
                            width=max(3, int(0.06 * min(w, h))))
    return im


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _exif_rotated(p):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the pixels are stored sideways, as phones do
    seven(size=(640, 480)).convert("RGB").transpose(Image.ROTATE_90).save(p, "JPEG", exif=exif, quality=92)


def _animated(p):
    frames = [seven().convert("P"), Image.new("P", (400, 400), 0)]
    frames[0].save(p, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _sixteen_bit(p):
    a = np.asarray(seven(), dtype=np.uint16) * 257  # 0 .. 65535
    Image.fromarray(a).save(p, "PNG")
    assert Image.open(p).mode.startswith("I")


def _transparent(p):
    im = Image.new("RGBA", (300, 300), (0, 0, 0, 0))  # black strokes on a fully transparent (black) background
    ImageDraw.Draw(im).line([(75, 60), (225, 60), (135, 255)], fill=(0, 0, 0, 255), width=18)
    im.save(p, "PNG")


def _float_tiff(p):
    Image.fromarray(np.asarray(seven(), dtype=np.float32) / 255.0).save(p, "TIFF")


def _bomb(p):
    """A valid PNG header claiming 60000 x 60000 pixels: decoding it would take 3.6 GB."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                  + png_chunk(b"IEND", b""))


def _truncated(fmt):
    def make(p):
        seven().save(p, fmt)
        data = p.read_bytes()
        p.write_bytes(data[:len(data) // 2])
    return make


def _noise(p):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300)).astype(np.uint8)).save(p)


VALID = {  # name -> writer; each must be read as a 7
    "plain.png": lambda p: seven().save(p),
    "photo_exif_orientation_6.jpg": _exif_rotated,
    "animated.gif": _animated,
    "sixteen_bit.png": _sixteen_bit,
    "cmyk.jpg": lambda p: seven().convert("CMYK").save(p, "JPEG"),
    "transparent_background.png": _transparent,
    "palette.png": lambda p: seven().convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=8).save(p),
    "grey_alpha.png": lambda p: seven().convert("LA").save(p),
    "one_bit.png": lambda p: seven().convert("1").save(p),
    "float.tiff": _float_tiff,
    "white_on_black.png": lambda p: seven(ink=255, paper=0).save(p),
    "twelve_megapixels.jpg": lambda p: seven(size=(4000, 3000)).save(p, "JPEG", quality=85),
    "jpeg_named.png": lambda p: seven().convert("RGB").save(p, "JPEG"),
    "bitmap.bmp": lambda p: seven().save(p, "BMP"),
    "webp.webp": lambda p: seven().convert("RGB").save(p, "WEBP"),
}
BAD = {  # name -> (writer, what the one line must say)
    "empty.png": (lambda p: p.write_bytes(b""), "is empty"),
    "text.png": (lambda p: p.write_text("this is not an image"), "not a readable image"),
    "truncated.png": (_truncated("PNG"), "not a readable image"),
    "truncated.jpg": (_truncated("JPEG"), "not a readable image"),
    "one_pixel.png": (lambda p: Image.new("L", (1, 1), 0).save(p), "too small or too thin"),
    "strip_30000x10.png": (lambda p: Image.new("L", (30000, 10), 255).save(p), "too small or too thin"),
    "bomb.png": (_bomb, "larger than odenet decodes"),
    "drawing.svg": (lambda p: p.write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0L9 9"/></svg>'),
                    "SVG"),
    "document.pdf": (lambda p: p.write_bytes(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"), "PDF"),
    "folder.png": (lambda p: p.mkdir(), "is a folder"),
    "blank.png": (lambda p: Image.new("L", (200, 200), 255).save(p), "is blank"),
    "noise.png": (_noise, "does not look like a digit"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    for name, make in VALID.items():
        make(d / name)
    for name, (make, _) in BAD.items():
        make(d / name)
    return d


def test_twenty_kinds_at_least():
    assert len(VALID) + len(BAD) + 1 >= 20  # + the unreadable file below


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_variants_are_read_as_the_digit(files, name, capsys):
    assert main(["predict", str(files / name), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{files / name}: 7 "), out
    assert "does not look like" not in out


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_give_one_clear_line(files, name, capsys):
    with pytest.raises(OdenetError, match=BAD[name][1]):
        prepare_image(str(files / name))
    assert main(["predict", str(files / name)]) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("odenet: error: ") and BAD[name][1] in lines[0], cap.err
    assert "Traceback" not in cap.err and str(files) not in lines[0].replace(str(files / name), name)


def test_unreadable_file_says_permission_denied(files, monkeypatch, capsys):
    """chmod does not stop root, so the refusal the OS would give is made here."""
    target = files / "plain.png"

    def deny(path, *args, **kwargs):
        if Path(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(preprocess, "open", deny, raising=False)
    with pytest.raises(OdenetError, match="permission denied"):
        prepare_image(str(target))
    assert main(["predict", str(target)]) == 1
    assert capsys.readouterr().err.strip() == "odenet: error: cannot read plain.png: permission denied"


def test_exif_rotation_is_what_makes_the_photo_a_seven(files, tmp_path):
    """The same pixels without the orientation tag are a sideways 7, and read differently."""
    with Image.open(files / "photo_exif_orientation_6.jpg") as im:
        im.convert("RGB").save(tmp_path / "sideways.jpg", quality=92)  # the tag dropped
    upright = prepare_image(str(files / "photo_exif_orientation_6.jpg"))
    sideways = prepare_image(str(tmp_path / "sideways.jpg"))
    assert np.abs(upright.astype(int) - np.rot90(sideways, -1).astype(int)).mean() < 12  # the same 7, turned
    assert np.abs(upright.astype(int) - sideways.astype(int)).mean() > 20


def test_one_bad_file_among_good_ones_stops_nothing(files, capsys):
    assert main(["predict", str(files / "plain.png"), str(files / "empty.png"), str(files / "cmyk.jpg")]) == 1
    cap = capsys.readouterr()
    assert [line.split(":")[1].split()[0] for line in cap.out.splitlines()] == ["7", "7"]
    assert cap.err.count("\n") == 1 and "empty.png is empty" in cap.err


@pytest.mark.parametrize("array, message", [
    (np.zeros((28, 28, 2), np.uint8), "must be"),
    (np.full((28, 28), np.nan, np.float32), "finite"),
    (np.zeros((2, 2, 28, 28), np.uint8), "must be"),
])
def test_bad_arrays_give_one_line(array, message):
    with pytest.raises(OdenetError, match=message):
        prepare_image(array)


def test_a_pipe_or_device_is_refused_without_being_read(tmp_path, capsys):
    """A named pipe with no writer would block an open() forever; a device may never end."""
    import os

    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(OdenetError, match="not a regular file"):
            prepare_image(str(path))
    assert main(["predict", str(fifo)]) == 1
    assert capsys.readouterr().err.strip() == f"odenet: error: image {fifo} is not a regular file (a device, pipe or socket)"
    with pytest.raises(OdenetError, match="image not found"):
        prepare_image(str(tmp_path / "missing.png"))
