"""A tiny installed package that registers a MONAI BasicUNet in the entry-point group `unetkit.models`.

Written into a folder as an installed distribution (package + `.dist-info` with `entry_points.txt`), so
that putting the folder on sys.path (or PYTHONPATH, for a subprocess) installs it, as pip would."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "basicunet"
PACKAGE = "byo_unetkit_plugin"
FEATURES = [4, 4, 8, 8, 16, 4]  # BasicUNet's six widths, tiny

CODE = '''
from monai.networks.nets import BasicUNet


def build_basicunet(cfg):
    """unetkit ModelConfig -> MONAI BasicUNet; cfg.options are BasicUNet's own keywords."""
    net = BasicUNet(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                    **cfg.options)
    net.size_multiple = 16  # four halvings: unetkit pads inputs to multiples of 16 (export, odd tiles)
    return net
'''


def write_plugin(root: Path) -> Path:
    """The plugin installed under `root`; returns `root` (the sys.path entry)."""
    (root / PACKAGE).mkdir(parents=True, exist_ok=True)
    (root / PACKAGE / "__init__.py").write_text(CODE)
    info = root / f"{PACKAGE}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[unetkit.models]\n{PLUGIN} = {PACKAGE}:build_basicunet\n")
    return root


def basicunet(in_channels: int, out_channels: int):
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=FEATURES)
