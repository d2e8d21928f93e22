"""Named processing steps parsed from text, and :func:`enhance`, which applies them in order.

A step is ``NAME`` or ``NAME:ARG[,ARG...]``:

=========================================  ==============================================================
``n4``, ``n4:shrink=2,mask=all``           N4 bias-field correction (shrink factor; mask ``otsu`` or ``all``)
``denoise:gaussian|median|bilateral|``     denoising (see :func:`~segmorph.processing.filters.denoise`)
``anisotropic|nlmeans``
``histeq``, ``clahe``, ``clahe:0.02``      histogram equalisation, CLAHE (clip limit)
``window:brain``, ``window:40,400``        CT window, preset (brain, subdural, lung, bone, soft, liver) or
                                           level,width in HU, to [0, 1]
``clip:p0.5,p99.5``, ``clip:-100,300``     clip to percentiles (``p``) or to values
``rescale``                                min-max to [0, 1]
``canny``, ``canny:1.5``                   Canny edge map (sigma in mm)
``gradient``, ``gradient:2``               gradient magnitude (sigma in mm)
``frangi``, ``sato:dark,1,2,3``            vesselness (``dark`` tubes; scales in voxels)
``channel:green``, ``channel:0``           one channel (red, green, blue or a 0-based index)
``invert``                                 intensities mirrored within their range
``open:2``, ``close:r``, ``erode:r``,      morphology with a ball of r voxels
``dilate:r``
``fill-holes``, ``largest-component``      hole filling; largest component per label (label maps)
=========================================  ==============================================================

In one text, steps are separated by commas; a comma-separated piece that is a number (``400``,
``p99.5``, ``-600``) or ``key=value`` continues the step before it, so ``"window:40,400,clahe"`` is two
steps. A list gives one step per item. Bad names and parameters raise one
:class:`~segmorph.errors.SegmorphError` naming the step.

Example:
    >>> image = enhance(read_image("fundus.png"), "channel:green,clahe,frangi:dark")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.processing import filters

__all__ = ["STEP_NAMES", "Step", "enhance", "parse_step", "parse_steps"]

_CONTINUES = re.compile(r"^\s*(p?[-+]?(\d|\.\d)|[A-Za-z_]+=)")
_CHANNELS = {"red": 0, "green": 1, "blue": 2}


@dataclass(frozen=True)
class Step:
    """One parsed step.

    Attributes:
        text: The step as written (``"window:40,400"``), used in messages and records.
        name: The step's name (``"window"``).
        function: The filter with its parameters bound, ``Image -> Image``.
    """

    text: str
    name: str
    function: Callable[[Image], Image]

    def __call__(self, image: Image) -> Image:
        """Apply the step; a problem with this image is raised naming the step."""
        try:
            return self.function(image)
        except SegmorphError as err:
            raise SegmorphError(f"step {self.text!r}: {err.problem}", err.path) from None


def _fail(text: str, problem: str) -> SegmorphError:
    return SegmorphError(f"step {text!r}: {problem}")


def _number(text: str, value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _fail(text, f"{what} must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise _fail(text, f"{what} must be a finite number, got {value!r}")
    return number


def _whole(text: str, value: str, what: str, least: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _fail(text, f"{what} must be a whole number, got {value!r}") from None
    if number < least:
        raise _fail(text, f"{what} must be at least {least}, got {number}")
    return number


def _count(text: str, args: list[str], allowed: Sequence[int]) -> None:
    if len(args) not in allowed:
        wanted = " or ".join(str(n) for n in allowed)
        raise _fail(text, f"expected {wanted} parameter(s), got {len(args)}")


def _bare(function: Callable[[Image], Image]) -> Callable[[str, list[str]], Callable[[Image], Image]]:
    def make(text: str, args: list[str]) -> Callable[[Image], Image]:
        _count(text, args, (0,))
        return function

    return make


def _n4(text: str, args: list[str]) -> Callable[[Image], Image]:
    shrink, mask = 4, "otsu"
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "shrink" and value:
            shrink = _whole(text, value, "shrink")
        elif key == "mask" and value in ("otsu", "all"):
            mask = value
        elif arg.isdigit():
            shrink = _whole(text, arg, "shrink")
        else:
            raise _fail(text, f"unknown parameter {arg!r} (use shrink=N and mask=otsu|all)")
    return lambda image: filters.n4(image, shrink=shrink, mask=mask)


def _denoise(text: str, args: list[str]) -> Callable[[Image], Image]:
    if len(args) != 1 or args[0] not in filters.DENOISERS:
        raise _fail(text, f"expected one of denoise:{'|'.join(filters.DENOISERS)}")
    method = args[0]
    return lambda image: filters.denoise(image, method)


def _clahe(text: str, args: list[str]) -> Callable[[Image], Image]:
    _count(text, args, (0, 1))
    limit = _number(text, args[0], "clip limit") if args else 0.01
    if not 0 < limit <= 1:
        raise _fail(text, f"clip limit must be in (0, 1], got {limit}")
    return lambda image: filters.clahe(image, limit)


def _window(text: str, args: list[str]) -> Callable[[Image], Image]:
    if len(args) == 1 and args[0] in filters.WINDOWS:
        level, width = filters.WINDOWS[args[0]]
    elif len(args) == 2:
        level, width = _number(text, args[0], "level"), _number(text, args[1], "width")
        if width <= 0:
            raise _fail(text, f"width must be positive, got {args[1]}")
    else:
        raise _fail(text, f"expected a preset ({', '.join(filters.WINDOWS)}) or LEVEL,WIDTH in HU")
    return lambda image: filters.window(image, level, width)


def _clip(text: str, args: list[str]) -> Callable[[Image], Image]:
    _count(text, args, (2,))
    percent = [a.startswith("p") for a in args]
    if percent[0] != percent[1]:
        raise _fail(text, "give both bounds as percentiles (p0.5,p99.5) or both as values")
    low, high = (_number(text, a[1:] if percent[0] else a, "bound") for a in args)
    if percent[0] and not 0 <= low < high <= 100:
        raise _fail(text, f"percentiles must satisfy 0 <= low < high <= 100, got {low} and {high}")
    if low >= high:
        raise _fail(text, f"the lower bound {low} must be below the upper bound {high}")
    return lambda image: filters.clip(image, low, high, percentiles=percent[0])


def _sigma(function: Callable[..., Image]) -> Callable[[str, list[str]], Callable[[Image], Image]]:
    def make(text: str, args: list[str]) -> Callable[[Image], Image]:
        _count(text, args, (0, 1))
        sigma = _number(text, args[0], "sigma (mm)") if args else None
        if sigma is not None and sigma <= 0:
            raise _fail(text, f"sigma must be positive, got {sigma}")
        return lambda image: function(image, sigma)

    return make


def _vesselness(method: str) -> Callable[[str, list[str]], Callable[[Image], Image]]:
    def make(text: str, args: list[str]) -> Callable[[Image], Image]:
        dark, sigmas = False, []
        for arg in args:
            if arg in ("dark", "bright"):
                dark = arg == "dark"
            else:
                sigma = _number(text, arg, "scale (voxels)")
                if sigma <= 0:
                    raise _fail(text, f"scales must be positive, got {arg}")
                sigmas.append(sigma)
        scales = tuple(sigmas) or (1.0, 2.0, 3.0)
        return lambda image: filters.vesselness(image, method, scales, dark)

    return make


def _channel(text: str, args: list[str]) -> Callable[[Image], Image]:
    _count(text, args, (1,))
    index = _CHANNELS.get(args[0])
    if index is None:
        if not args[0].isdigit():
            raise _fail(text, f"expected red, green, blue or a 0-based channel index, got {args[0]!r}")
        index = int(args[0])
    return lambda image: filters.channel(image, index)


def _morphology(operation: str) -> Callable[[str, list[str]], Callable[[Image], Image]]:
    def make(text: str, args: list[str]) -> Callable[[Image], Image]:
        _count(text, args, (1,))
        radius = _whole(text, args[0], "radius (voxels)")
        return lambda image: filters.morphology(image, operation, radius)

    return make


_MAKERS: dict[str, Callable[[str, list[str]], Callable[[Image], Image]]] = {
    "n4": _n4,
    "denoise": _denoise,
    "histeq": _bare(filters.histeq),
    "clahe": _clahe,
    "window": _window,
    "clip": _clip,
    "rescale": _bare(filters.rescale),
    "canny": _sigma(filters.canny),
    "gradient": _sigma(filters.gradient),
    "frangi": _vesselness("frangi"),
    "sato": _vesselness("sato"),
    "channel": _channel,
    "invert": _bare(filters.invert),
    **{op: _morphology(op) for op in filters.MORPHOLOGY},
    "fill-holes": _bare(filters.fill_holes),
    "largest-component": _bare(filters.largest_component),
}
STEP_NAMES: tuple[str, ...] = tuple(_MAKERS)


def parse_step(text: str) -> Step:
    """One step from its text, ``NAME`` or ``NAME:ARG[,ARG...]`` (see the module doc).

    Raises:
        SegmorphError: Unknown name or bad parameters, naming the step.
    """
    if not isinstance(text, str):
        raise SegmorphError(f"step {text!r}: expected text such as 'denoise:median'")
    text = text.strip()
    name, colon, rest = text.partition(":")
    name = name.strip().lower()
    if name not in _MAKERS:
        raise _fail(text, f"unknown step {name!r} (known: {', '.join(STEP_NAMES)})")
    args = [a.strip() for a in rest.split(",")] if colon else []
    if colon and any(not a for a in args):
        raise _fail(text, "empty parameter")
    return Step(text, name, _MAKERS[name](text, args))


def _split(text: str) -> list[str]:
    pieces: list[str] = []
    for piece in text.split(","):
        if pieces and _CONTINUES.match(piece):
            pieces[-1] += "," + piece.strip()
        else:
            pieces.append(piece.strip())
    return pieces


def parse_steps(steps: str | Sequence[str | Step]) -> list[Step]:
    """Parse steps from one text (``"channel:green,clahe"``) or a list (one step per item).

    Args:
        steps: Comma-separated text, or a sequence of step texts (or already parsed :class:`Step`).

    Returns:
        The steps in order (an empty text or list gives no steps).

    Raises:
        SegmorphError: The first bad step, naming it and what is wrong.
    """
    if isinstance(steps, str):
        items: list[str | Step] = [] if not steps.strip() else list(_split(steps))
    else:
        items = list(steps)
    return [item if isinstance(item, Step) else parse_step(item) for item in items]


def enhance(image: Image, steps: str | Sequence[str | Step]) -> Image:
    """Apply processing steps in order; the result lies on exactly the input's grid.

    Args:
        image: Image ``(C, I, J[, K])``, intensity image or label map (``is_label``).
        steps: Steps as text or a list, see :func:`parse_steps` and the module doc.

    Returns:
        A new Image with the same affine and spatial shape; intensity steps give float32, morphology on a
        label map keeps an int64 label map, ``channel`` gives one channel.

    Raises:
        SegmorphError: A bad step, or a step that does not apply to this image (an intensity filter on a
            label map, ``channel:green`` on a one-channel image, a filter that cannot process an image of a
            voxel), naming the step.

    Example:
        >>> windowed = enhance(ct, ["window:brain"])  # HU -> [0, 1]
    """
    for step in parse_steps(steps):
        try:
            image = step(image)
        except RuntimeError as err:  # SimpleITK's filters refuse what they cannot process (a voxel-sized image)
            raise SegmorphError(f"{step.text}: the filter cannot process this image ({_last_line(err)})") from None
    return image


def _last_line(err: Exception) -> str:
    """The last non-empty line of an error's message (ITK's says where it was thrown first, then why)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
