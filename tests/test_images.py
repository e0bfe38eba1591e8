"""Images come in as a viewer shows them: 16-bit scaled, EXIF orientation applied, transparency
on white; anything unreadable is one UnreadableImage with the reason."""
import numpy as np
import pytest
from PIL import Image

from relprop import images
from relprop.images import UnreadableImage, load_image


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (24, 32))
    sixteen = (eight * 257 + rng.integers(-128, 129, eight.shape)).clip(0, 65535)
    Image.fromarray(sixteen.astype(np.uint16)).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I;16")
    img = load_image(tmp_path / "16.png")
    assert img.mode == "RGB" and img.size == (32, 24)
    pixels = np.asarray(img).astype(int)
    assert (pixels == pixels[..., :1]).all()  # grey stays grey
    assert np.abs(pixels[..., 0] - eight).max() <= 1


def test_thirty_two_bit_integer_mode_is_read_as_sixteen_bit():
    img = images._to_rgb(Image.fromarray(np.array([[0, 257 * 100, 65535]], np.int32)))
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100,) * 3, (255,) * 3]


@pytest.mark.parametrize("orientation, corner", [(6, "top right"), (8, "bottom left")])
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    """Stored landscape with a red top-left corner; the camera says to turn it upright."""
    stored = Image.new("RGB", (64, 32), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "photo.jpg")
    assert img.size == (32, 64)
    x, y = {"top right": (28, 3), "bottom left": (3, 60)}[corner]
    red, green, _ = img.getpixel((x, y))
    assert red > 200 and green < 50
    assert max(img.getpixel((3, 3))) < 50  # not where it was stored


def test_transparent_pixels_are_white(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 10, 10))  # left half fully transparent, colour black
    rgba.paste((200, 0, 0, 128), (10, 0, 15, 10))  # half transparent red
    rgba.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB"
    assert img.getpixel((2, 5)) == (255, 255, 255)
    assert img.getpixel((12, 5)) == pytest.approx((227, 127, 127), abs=1)
    assert img.getpixel((18, 5)) == (10, 20, 30)


def test_palette_transparency_is_white(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 0, 0, 0, 9, 9, 9])
    p.putpixel((0, 0), 2)
    p.save(tmp_path / "p.png", transparency=1)
    img = load_image(tmp_path / "p.png")
    assert img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (9, 9, 9)


def test_large_jpeg_is_decoded_at_a_reduced_scale_but_not_below_min_size(tmp_path):
    Image.new("RGB", (2000, 1200), (30, 60, 90)).save(tmp_path / "big.jpg")
    assert load_image(tmp_path / "big.jpg").size == (2000, 1200)
    reduced = load_image(tmp_path / "big.jpg", min_size=256)
    assert reduced.size == (500, 300)  # 1/4: 1/8 would leave a side below 256
    assert reduced.getpixel((250, 150)) == pytest.approx((30, 60, 90), abs=3)


def test_unreadable_files_raise_one_error_with_the_reason(tmp_path, monkeypatch):
    (tmp_path / "notes.jpg").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:len(whole) // 2])
    cases = {"notes.jpg": "not an image", "cut.png": "truncated or corrupt",
             "missing.png": "no such file", ".": "is a folder"}
    for name, reason in cases.items():
        with pytest.raises(UnreadableImage, match=reason):
            load_image(tmp_path / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        load_image(tmp_path / "whole.png")


def test_any_other_decoder_failure_is_an_unreadable_image(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")

    def broken(img):
        raise ZeroDivisionError("broken EXIF")
    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken)
    with pytest.raises(UnreadableImage, match="ZeroDivisionError: broken EXIF"):
        load_image(tmp_path / "x.png")
