"""Stack readers and page conversion: every layout the challenge may send."""

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from model.io import StackReadError, read_stack, write_json_atomic
from model.preprocess import UnsupportedPixelType, fit_to_size, page_to_rgb_uint8, page_to_tensor
from tests.conftest import SAMPLE_STACK, needs_sample_stack, synthetic_pages


def write_tiff(path, pages, **kw):
    with tifffile.TiffWriter(path) as tif:
        for page in pages:
            tif.write(page, compression="deflate", resolution=(40000, 40000), resolutionunit="CENTIMETER",
                      photometric="rgb" if page.ndim == 3 and page.shape[-1] in (3, 4) else "minisblack", **kw)
    return path


@needs_sample_stack
def test_organisers_stack_reads_as_16_rgb_pages():
    pages = read_stack(SAMPLE_STACK)
    assert len(pages) == 16
    assert all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for p in pages)


def test_tiff_round_trip(tmp_path):
    pages = synthetic_pages(5)
    read = read_stack(write_tiff(tmp_path / "s.tiff", pages))
    assert len(read) == 5 and all(np.array_equal(a, b) for a, b in zip(pages, read))


def test_tiff_single_volume_page(tmp_path):
    pages = np.stack(synthetic_pages(4))
    tifffile.imwrite(tmp_path / "v.tif", pages, photometric="rgb")
    assert len(read_stack(tmp_path / "v.tif")) == 4


def test_mha_vector_stack(tmp_path):
    pages = np.stack(synthetic_pages(3))
    image = sitk.GetImageFromArray(pages, isVector=True)
    sitk.WriteImage(image, str(tmp_path / "s.mha"), useCompression=True)
    read = read_stack(tmp_path / "s.mha")
    assert len(read) == 3 and np.array_equal(read[1], pages[1])


def test_mha_single_page(tmp_path):
    page = synthetic_pages(1)[0]
    sitk.WriteImage(sitk.GetImageFromArray(page, isVector=True), str(tmp_path / "p.mha"))
    read = read_stack(tmp_path / "p.mha")
    assert len(read) == 1 and np.array_equal(read[0], page)


def test_rgba_16bit_grey_and_ragged_pages(tmp_path):
    rgb = synthetic_pages(3)
    rgba = np.concatenate([rgb[0], np.full((128, 128, 1), 255, np.uint8)], axis=2)
    sixteen = rgb[1].astype(np.uint16) * 257
    grey = rgb[2][:, :, 0]
    small = rgb[0][:100, :90]
    path = write_tiff(tmp_path / "mixed.tiff", [rgba, sixteen, grey, small])
    pages = read_stack(path)
    converted = [page_to_tensor(p, 128) for p in pages]
    assert all(c.shape == (3, 128, 128) for c in converted)
    assert np.array_equal(page_to_rgb_uint8(pages[0]), rgb[0])
    assert np.array_equal(page_to_rgb_uint8(pages[1]), rgb[1])
    assert np.array_equal(page_to_rgb_uint8(pages[2])[:, :, 1], rgb[2][:, :, 0])


@pytest.mark.parametrize("content,match", [(b"", "cannot read"), (b"not a tiff at all" * 10, "cannot read")])
def test_corrupt_tiff_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.tiff"
    path.write_bytes(content)
    with pytest.raises(StackReadError, match=match) as info:
        read_stack(path)
    assert str(path) in str(info.value)


def test_wrong_suffix_and_missing_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(StackReadError, match="unsupported file type"):
        read_stack(tmp_path / "x.png")
    with pytest.raises(StackReadError, match="no such file"):
        read_stack(tmp_path / "missing.tiff")


@pytest.mark.parametrize("dtype", [np.int16, np.complex64])
def test_unsupported_pixel_types(dtype):
    with pytest.raises(UnsupportedPixelType):
        page_to_rgb_uint8(np.zeros((8, 8, 3), dtype=dtype))
    with pytest.raises(UnsupportedPixelType):
        page_to_rgb_uint8(np.zeros((8, 8, 5), dtype=np.uint8))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.bool_]),
                  shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 2, 3, 4])),
                  elements={"allow_nan": False, "allow_infinity": False, "min_value": 0, "max_value": 1}
                  ),
       st.sampled_from([32, 64]))
def test_any_supported_page_becomes_rgb_uint8_of_model_size(page, size):
    rgb = page_to_rgb_uint8(page)
    assert rgb.shape == page.shape[:2] + (3,) and rgb.dtype == np.uint8
    assert page_to_tensor(page, size).shape == (3, size, size)


def test_fit_to_size_crops_centre_square():
    import torch

    img = torch.zeros(3, 10, 20, dtype=torch.uint8)
    img[:, :, 5:15] = 255
    out = fit_to_size(img, 10)
    assert out.shape == (3, 10, 10) and bool((out == 255).all())


def test_write_json_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(TypeError):
        write_json_atomic([{"x": object()}], target)
    assert list(tmp_path.iterdir()) == []
    write_json_atomic([1, 2], target)
    assert target.read_text().startswith("[")


def quantise(page: np.ndarray, colours: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A page as (indices, palette (colours, 3) uint8) with Pillow's adaptive palette, and its exact RGB."""
    from PIL import Image

    p = Image.fromarray(page).convert("P", palette=Image.ADAPTIVE, colors=colours)
    return np.array(p), np.array(p.convert("RGB"))


@pytest.mark.parametrize("writer", ["pillow", "tifffile-257", "tifffile-8bit"])
def test_palette_tiff_pages_are_expanded_through_their_colour_map(tmp_path, writer):
    """Palette ("P") pages hold colour indices: read as indices they would be a dark grey image."""
    from PIL import Image

    pages = synthetic_pages(3)
    path = tmp_path / "palette.tiff"
    expected = []
    if writer == "pillow":  # Pillow writes the colour map as v * 256
        frames = [Image.fromarray(pg).convert("P", palette=Image.ADAPTIVE, colors=16) for pg in pages]
        frames[0].save(path, save_all=True, append_images=frames[1:])
        expected = [np.array(f.convert("RGB")) for f in frames]
    else:
        with tifffile.TiffWriter(path) as tif:
            for pg in pages:
                indices, rgb = quantise(pg)
                palette = np.zeros((3, 256), np.uint16)
                colours = np.unique(rgb.reshape(-1, 3), axis=0)
                for colour in colours:  # the index Pillow gave each colour
                    idx = indices[np.all(rgb == colour, axis=2)][0]
                    palette[:, idx] = colour.astype(np.uint16) * (257 if writer == "tifffile-257" else 1)
                tif.write(indices, photometric="palette", colormap=palette)
                expected.append(rgb)
    read = read_stack(path)
    assert len(read) == 3
    for got, want in zip(read, expected):
        assert got.shape == (128, 128, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    # The quantised pages still look like the originals (a pink page, not an index map).
    assert np.abs(read[0].astype(int) - pages[0].astype(int)).mean() < 12


def test_palette_index_beyond_the_colour_map_is_an_error(tmp_path):
    from model.io import expand_palette

    with pytest.raises(StackReadError, match="beyond"):
        expand_palette(np.array([[0, 5]], np.uint8), np.zeros((3, 4), np.uint16))
