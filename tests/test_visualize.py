import numpy as np
import pytest
from PIL import Image

from ddpm_keras.visualize import image_grid
from ddpm_keras.visualize import save_gif
from ddpm_keras.visualize import save_image_grid
from ddpm_keras.visualize import to_uint8


def test_to_uint8_maps_the_range_ends_and_clips():
    np.testing.assert_array_equal(to_uint8(np.array([-1.5, -1.0, 0.0, 1.0, 2.0])), [0, 0, 128, 255, 255])


def test_grid_places_each_image_in_its_cell():
    images = np.stack([np.full((4, 5, 3), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid(images, ncols=2, padding=1)
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3)
    assert (grid[1:5, 1:6] == 0).all()  # first cell
    assert (grid[1:5, 7:12] == 128).all()  # second cell, same row
    assert (grid[6:10, 1:6] == 255).all()  # third cell, next row
    assert (grid[0] == 255).all() and (grid[6:10, 7:12] == 255).all()  # padding, empty cell


def test_grid_rejects_a_bad_shape():
    with pytest.raises(ValueError, match=r"shape=\(4, 4, 3\)"):
        image_grid(np.zeros((4, 4, 3)))


def test_png_and_gif_files_hold_the_pixels(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, (4, 6, 6, 1)).astype(np.float32)
    png = save_image_grid(images, tmp_path / "grid.png", scale=2)
    with Image.open(png) as picture:
        np.testing.assert_array_equal(np.asarray(picture)[::2, ::2], image_grid(images)[..., 0])
    gif = save_gif(np.stack([images, -images, images * 0]), tmp_path / "sub" / "traj.gif")
    with Image.open(gif) as picture:
        assert picture.n_frames == 3
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["grid.png", "sub", "traj.gif"]
