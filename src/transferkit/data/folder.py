"""An image folder read from disk one image at a time, so memory does not grow with the folder.

:func:`transferkit.data.sources.load_image_folder` decodes every image into one in-memory
:class:`~transferkit.data.base.TensorDataset`; 50,000 RGB 224x224 images take 30 GB that way.
:class:`ImageFolder` keeps only the file paths (one compact numpy byte-string array) and the
labels, and decodes an image when it is indexed, so it suits a :class:`torch.utils.data.DataLoader`
with worker processes (it pickles cheaply and holds no per-file Python objects, so forked workers
do not copy it page by page through reference counts).

Folder conventions are those of ``load_image_folder``: one sub-folder per class (sorted names are
the classes), optional ``train/`` and ``test/`` sub-folders, and errors as one line naming the
file and the fix.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from transferkit.data.sources import (
    _GRAY_MODES,
    _IMAGE_ERRORS,
    _folder_classes,
    _image_error,
    _scan,
)
from transferkit.errors import ConfigError, DataError, DataNotFoundError

__all__ = ["ImageFolder", "open_image_folder"]

_MODES = {"L": 1, "RGB": 3}


def _errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for an unreadable image (the decompression-bomb guard included)."""
    from PIL import Image

    return (*_IMAGE_ERRORS, Image.DecompressionBombError)


def _bilinear(image_module):  # Image.Resampling exists from Pillow 9.1 on
    return getattr(image_module, "Resampling", image_module).BILINEAR


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in hw):
        raise ConfigError(f"size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


class ImageFolder(Dataset):
    """Images in class sub-folders of ``root``, decoded one at a time in ``__getitem__``.

    Construction only lists the files (sorted, as ``load_image_folder`` does) and opens the first
    image of each class to read its mode and size; no pixels are held in memory.

    ``mode=None`` looks at the first image of each class only: ``"L"`` when all of those are gray,
    else ``"RGB"``. Every image is converted to that mode when read, so a folder that mixes gray
    and colour images beyond those samples is converted to the chosen mode (gray images are
    repeated over three channels, colour ones are turned gray). Pass ``mode`` to choose.

    Without ``size`` every image must have the first image's size (a different one raises
    :class:`DataError` when it is read); with ``size=(H, W)`` (or an int) each image is resized
    with bilinear interpolation after the mode conversion.

    Args:
        root: Folder with one sub-folder of images per class.
        classes: Class names (label ``i`` is ``classes[i]``); default: the sorted sub-folder names.
            Every sub-folder must be one of them (a test folder may lack some).
        mode: ``"L"`` (1 channel) or ``"RGB"`` (3 channels); ``None`` chooses as described above.
        size: Output ``(height, width)``, or ``None`` to keep the images' common size.
        name: A short name for reports.

    Attributes:
        classes: Class names. targets: int64 labels ``(N,)``. name: The name. mode: The PIL mode.
        input_shape: ``(C, H, W)`` of every item. num_classes: ``len(classes)``.

    Raises:
        DataNotFoundError: ``root`` does not exist.
        DataError: No class sub-folders, a class folder without images, a class folder not among
            ``classes``, or a first image that cannot be read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str] | None = None,
        mode: str | None = None,
        size: int | Sequence[int] | None = None,
        name: str = "",
    ) -> None:
        from PIL import Image

        folder = Path(root)
        if not folder.is_dir():
            raise DataNotFoundError(f"image folder {str(folder)!r} does not exist; check the path")
        if mode is not None and mode not in _MODES:
            raise ConfigError(f"mode must be 'L', 'RGB' or None (choose from the images), got {mode!r}")
        self.size = _size(size)
        self.classes = list(classes) if classes is not None else _folder_classes(folder)
        items = _scan(folder, self.classes)
        if not items:
            raise DataError(f"image folder {str(folder)!r} holds no images; add class sub-folders of images")
        self.root = str(folder)
        self.name = name
        # one byte string per file, relative to root: ~20 bytes a file, and a single Python object
        self._files = np.array([os.fsencode(f.relative_to(folder)) for f, _ in items], dtype=np.bytes_)
        self.targets = torch.tensor([c for _, c in items], dtype=torch.int64)
        firsts: dict[int, Path] = {}  # the first image of each class, in folder order
        for f, c in items:
            firsts.setdefault(c, f)
        modes: list[str] = []
        sizes: list[tuple[int, int]] = []
        for f in firsts.values():
            try:
                with Image.open(f) as im:
                    modes.append(im.mode)
                    sizes.append(im.size)
            except _errors() as exc:
                raise _image_error(f, exc) from exc
        self.mode = mode or ("L" if all(m in _GRAY_MODES for m in modes) else "RGB")
        self._first = sizes[0]  # (width, height) of the first image: every image's size without `size`
        h, w = self.size or (sizes[0][1], sizes[0][0])
        self.input_shape: tuple[int, int, int] = (_MODES[self.mode], h, w)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def path(self, index: int) -> Path:
        """The file of item ``index``."""
        return Path(self.root) / os.fsdecode(self._files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: float32 ``(C, H, W)`` in ``[0, 1]`` and an int64 scalar label.

        Raises:
            DataError: The image is corrupt or truncated, or (without ``size``) has another size
                than the first image.
        """
        from PIL import Image

        f = self.path(index)
        arr = None
        try:
            with Image.open(f) as im:
                got = im.size  # read from the header; the pixels are decoded by convert below
                if self.size is not None or got == self._first:
                    im = im.convert(self.mode)
                    if self.size is not None:
                        im = im.resize((self.size[1], self.size[0]), _bilinear(Image))
                    arr = np.array(im, dtype=np.uint8)
        except _errors() as exc:
            raise _image_error(f, exc) from exc
        if arr is None:
            raise DataError(
                f"image {str(f)!r} is {got[0]}x{got[1]} but the images of {self.root!r} are "
                f"{self._first[0]}x{self._first[1]} (width x height, as the first one); pass "
                "size=(height, width) to resize every image, or resize the files"
            )
        x = torch.from_numpy(arr)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        return x.float() / 255.0, self.targets[index]

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> ImageFolder:
        """A new folder dataset with the items at ``indices`` (same classes, mode and size)."""
        idx = np.asarray(torch.as_tensor(indices, dtype=torch.long).numpy(), dtype=np.int64)
        out = copy.copy(self)
        out._files = self._files[idx]
        out.targets = self.targets[torch.from_numpy(idx)]
        out.name = self.name if name is None else name
        return out

    def class_counts(self) -> torch.Tensor:
        """Number of examples of each class, shape ``(num_classes,)``."""
        return torch.bincount(self.targets, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (
            f"ImageFolder({self.root!r}, name={self.name!r}, n={len(self)}, "
            f"classes={self.num_classes}, input_shape={self.input_shape})"
        )


def open_image_folder(
    path: str | os.PathLike,
    name: str,
    test_fraction: float = 0.2,
    test_seed: int = 0,
    size: int | Sequence[int] | None = None,
    mode: str | None = None,
) -> tuple[ImageFolder, ImageFolder]:
    """Streaming ``(train, test)`` of an image folder, split as ``load_image_folder`` splits it.

    With ``train/`` and ``test/`` sub-folders each gives its split (the mode is chosen from the
    training images and used for both); otherwise the test split is the stratified
    ``test_fraction`` drawn with ``test_seed`` (the same examples ``load_image_folder`` holds out).

    Returns:
        Two :class:`ImageFolder` datasets named ``"<name>/train"`` and ``"<name>/test"``.

    Raises:
        DataNotFoundError: ``path`` does not exist.
        DataError: See :class:`ImageFolder`; also when (without ``size``) the first test image's
            size differs from the first training image's.
    """
    from transferkit.data.sampling import stratified_indices

    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {str(root)!r} does not exist; check the path")
    split_dirs = root / "train", root / "test"
    if all(d.is_dir() for d in split_dirs):
        classes = _folder_classes(split_dirs[0])
        train = ImageFolder(split_dirs[0], classes, mode, size, f"{name}/train")
        test = ImageFolder(split_dirs[1], classes, train.mode, size, f"{name}/test")
        if test.input_shape != train.input_shape:
            raise DataError(
                f"image {str(test.path(0))!r} is {test.input_shape[2]}x{test.input_shape[1]} but the "
                f"training images are {train.input_shape[2]}x{train.input_shape[1]} (width x height); "
                "pass size=(height, width) to resize every image, or resize the files"
            )
        return train, test
    full = ImageFolder(root, _folder_classes(root), mode, size, name)
    keep, held = stratified_indices(full.targets, test_fraction, test_seed)
    return full.subset(keep, f"{name}/train"), full.subset(held, f"{name}/test")
