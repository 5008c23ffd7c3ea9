"""One record per set of weights (``PretrainedCfg``): where it lives, how it is evaluated, its classes, its license
and what the papers report. The released weights of the PoolFormers, the MetaFormer Baselines and InceptionNeXt have
one tag per file, spelled as timm spells them (``caformer_s18.sail_in22k_ft_in1k_384``); the official hybrids have
one untagged file each.

Every built model carries such a record as ``model.pretrained_cfg`` (a release's, or its architecture's with what a
checkpoint says), which the processor, ``info``, the Hugging Face and timm folder writers and the service read.

The official files (sail-sg/metaformer) are plain state_dicts on Hugging Face (``huggingface.co/sail/dl``); timm's
copies (``timm/<arch>.<tag>``) are safetensors. Every tag is evaluated at its input size with crop_pct 1.0,
bicubic interpolation and the ImageNet mean and std. All are released under Apache-2.0 (trained on ImageNet, whose
own terms are for non-commercial research).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, class_names
from ..errors import ConfigError

OFFICIAL_HOST = "https://huggingface.co/sail/dl/resolve/main/"

# timm's tag: (the official file's suffix, input size, classes)
TAG_KINDS = {
    "sail_in1k": ("", 224, 1000),
    "sail_in1k_384": ("_384", 384, 1000),
    "sail_in22k_ft_in1k": ("_in21ft1k", 224, 1000),
    "sail_in22k_ft_in1k_384": ("_384_in21ft1k", 384, 1000),
    "sail_in22k": ("_in21k", 224, 21841),  # ImageNet-21k's 21,841 classes
}
IN_TIMM = ("poolformerv2", "convformer", "caformer")  # timm lacks IdentityFormer and RandFormer

# The paper's ImageNet-1k top-1 (%) of each tag, in TAG_KINDS' order (the 21k-only weights have none), and the
# paper's MACs (G) at 224 and 384. IdentityFormer, RandFormer and PoolFormerV2 were released at 224 on 1k only.
PAPER = {
    "identityformer_s12": ((74.6,), (1.8, None)),
    "identityformer_s24": ((78.2,), (3.4, None)),
    "identityformer_s36": ((79.3,), (5.0, None)),
    "identityformer_m36": ((80.0,), (8.8, None)),
    "identityformer_m48": ((80.4,), (11.5, None)),
    "randformer_s12": ((76.6,), (1.9, None)),
    "randformer_s24": ((78.2,), (3.5, None)),
    "randformer_s36": ((79.5,), (5.2, None)),
    "randformer_m36": ((81.2,), (9.0, None)),
    "randformer_m48": ((81.4,), (11.9, None)),
    "poolformerv2_s12": ((78.0,), (1.8, None)),
    "poolformerv2_s24": ((80.7,), (3.4, None)),
    "poolformerv2_s36": ((81.6,), (5.0, None)),
    "poolformerv2_m36": ((82.2,), (8.8, None)),
    "poolformerv2_m48": ((82.6,), (11.5, None)),
    "convformer_s18": ((83.0, 84.4, 83.7, 85.0, None), (3.9, 11.6)),
    "convformer_s36": ((84.1, 85.4, 85.4, 86.4, None), (7.6, 22.4)),
    "convformer_m36": ((84.5, 85.6, 86.1, 86.9, None), (12.8, 37.7)),
    "convformer_b36": ((84.8, 85.7, 87.0, 87.6, None), (22.6, 66.5)),
    "caformer_s18": ((83.6, 85.0, 84.1, 85.4, None), (4.1, 13.4)),
    "caformer_s36": ((84.5, 85.7, 85.8, 86.9, None), (8.0, 26.0)),
    "caformer_m36": ((85.2, 86.2, 86.6, 87.5, None), (13.2, 42.0)),
    "caformer_b36": ((85.5, 86.4, 87.4, 88.1, None), (23.2, 72.2)),
}


# PoolFormer (v1), released by sail-sg/poolformer: the paper's top-1 and MACs, and the evaluation crop.
POOLFORMER_HOST = "https://github.com/sail-sg/poolformer/releases/download/v1.0/"
POOLFORMER = {
    "poolformer_s12": (77.2, 1.8, 0.9),
    "poolformer_s24": (80.3, 3.4, 0.9),
    "poolformer_s36": (81.4, 5.0, 0.9),
    "poolformer_m36": (82.1, 8.8, 0.95),
    "poolformer_m48": (82.5, 11.6, 0.95),
}
# The official hybrid and identity models of Table 5 (sail-sg/poolformer, one untagged file each) and their
# evaluation crop (the official code's default_cfgs).
HYBRIDS = {
    "metaformer_id_s12": 0.9,
    "metaformer_pppa_s12_224": 0.95,
    "metaformer_ppaa_s12_224": 0.95,
    "metaformer_pppf_s12_224": 0.9,
    "metaformer_ppff_s12_224": 0.95,
}


# InceptionNeXt, released by sail-sg/inceptionnext (plain state_dicts whose names timm kept) and copied by timm:
# tag: (official file, input size, crop, the paper's top-1 and MACs). The crop is timm's; the official code evaluates
# InceptionNeXt-B at 224 with 0.875, timm's record says 0.95 (the other crops agree).
INCEPTION_HOST = "https://github.com/sail-sg/inceptionnext/releases/download/model/"
INCEPTION_NEXT = {
    "inception_next_atto.sail_in1k": ("inceptionnext_atto.pth", 224, 0.875, 75.3, 0.51),
    "inception_next_tiny.sail_in1k": ("inceptionnext_tiny.pth", 224, 0.875, 82.3, 4.2),
    "inception_next_small.sail_in1k": ("inceptionnext_small.pth", 224, 0.875, 83.5, 8.4),
    "inception_next_base.sail_in1k": ("inceptionnext_base.pth", 224, 0.95, 84.0, 14.9),
    "inception_next_base.sail_in1k_384": ("inceptionnext_base_384.pth", 384, 1.0, 85.2, 43.6),
}

# MambaOut, released by yuweihao/MambaOut (plain state_dicts, channels-last names) and copied by timm, and timm's own
# *_rw models (no official file): tag: (official file, input size, crop, classes, the paper's top-1 and MACs). timm
# tests those trained at 224 at 288 too (its test size), the *_rw base models with crop 1.0 there.
MAMBAOUT_HOST = "https://github.com/yuweihao/MambaOut/releases/download/model/"
MAMBAOUT = {
    "mambaout_femto.in1k": ("mambaout_femto.pth", 224, 1.0, 1000, 78.9, 1.2),
    "mambaout_kobe.in1k": ("mambaout_kobe.pth", 224, 1.0, 1000, 80.0, 1.5),
    "mambaout_tiny.in1k": ("mambaout_tiny.pth", 224, 1.0, 1000, 82.7, 4.5),
    "mambaout_small.in1k": ("mambaout_small.pth", 224, 1.0, 1000, 84.1, 9.0),
    "mambaout_base.in1k": ("mambaout_base.pth", 224, 1.0, 1000, 84.2, 15.8),
    "mambaout_small_rw.sw_e450_in1k": (None, 224, 1.0, 1000, None, None),
    "mambaout_base_short_rw.sw_e500_in1k": (None, 224, 0.95, 1000, None, None),
    "mambaout_base_tall_rw.sw_e500_in1k": (None, 224, 0.95, 1000, None, None),
    "mambaout_base_wide_rw.sw_e500_in1k": (None, 224, 0.95, 1000, None, None),
    "mambaout_base_plus_rw.sw_e150_in12k_ft_in1k": (None, 224, 1.0, 1000, None, None),
    "mambaout_base_plus_rw.sw_e150_r384_in12k_ft_in1k": (None, 384, 1.0, 1000, None, None),
    "mambaout_base_plus_rw.sw_e150_in12k": (None, 224, 1.0, 11821, None, None),  # ImageNet-12k's 11,821 classes
}


def _mambaout_test_settings(size: int, crop_pct: float) -> dict:
    """timm's test size and crop of a MambaOut release (a test crop where it differs from the crop), and the
    squashed (not cropped) 384 fine-tune's resize."""
    if size == 384:
        return {"test_input_size": (3, 384, 384), "crop_mode": "squash"}
    return {"test_input_size": (3, 288, 288), "test_crop_pct": 1.0 if crop_pct != 1.0 else None}


CROP_MODES = ("center", "squash")


class Recorded:
    """What a model with a ``pretrained_cfg`` record answers from it: its architecture's name and its classes'."""

    pretrained_cfg: PretrainedCfg

    @property
    def name(self) -> str:
        """The registered architecture (empty for a model built from a bare config)."""
        return self.pretrained_cfg.architecture

    @property
    def labels(self) -> tuple[str, ...]:
        return self.pretrained_cfg.labels


@dataclass(frozen=True)
class PretrainedCfg(Mapping):
    """What a model's weights are, where they come from and how they are evaluated, with timm's key names
    (``cfg["crop_pct"]`` works as for timm's ``pretrained_cfg``)."""

    architecture: str
    tag: str | None = None  # the release, as timm spells it (sail_in1k_384); None: untagged, or no release
    url: str | None = None  # the official file (a plain state_dict in the official format)
    hf_hub_id: str | None = None  # timm's safetensors copy on the Hugging Face Hub
    hf_transformers_id: str | None = None  # the Hugging Face transformers copy (PoolFormer v1)
    timm_architecture: str | None = None  # the same architecture in timm, where timm has it
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.9
    crop_mode: str = "center"  # center: resize the short side, crop the centre; squash: resize both sides, crop
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    label_names: tuple[str, ...] | None = None  # None: ImageNet-1k's names for 1000 classes, else class_<i>
    license: str | None = None
    top1: float | None = None  # the paper's ImageNet-1k top-1, %
    macs_g: float | None = None  # the paper's MACs at the input size
    test_input_size: tuple[int, int, int] | None = None  # timm's larger evaluation size, where it has one
    test_crop_pct: float | None = None  # ... and its crop there

    def __post_init__(self) -> None:
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.test_input_size is not None:
            object.__setattr__(self, "test_input_size", tuple(self.test_input_size))
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))
            if len(self.label_names) != self.num_classes:
                raise ConfigError(f"{len(self.label_names)} class names given for {self.num_classes} classes")

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def image_size(self) -> int:
        return self.input_size[-1]

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names: the record's own, else ImageNet-1k's for 1000 classes, else ``class_<i>``."""
        return class_names(self.num_classes, self.label_names)

    @property
    def has_weights(self) -> bool:
        return self.url is not None or self.hf_hub_id is not None

    def replace(self, **changes: object) -> PretrainedCfg:
        return dataclasses.replace(self, **changes)

    def without_weights(self) -> PretrainedCfg:
        """The record of a model of this architecture and evaluation whose weights are not the release's."""
        return self.replace(
            tag=None, url=None, hf_hub_id=None, hf_transformers_id=None, license=None, top1=None, macs_g=None
        )

    def __getitem__(self, key: str) -> object:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in zip(self, self.values(), strict=True)
        }


def _releases() -> dict[str, PretrainedCfg]:
    releases = []
    for arch, (top1, macs, crop_pct) in POOLFORMER.items():
        releases.append(
            PretrainedCfg(
                arch,
                "sail_in1k",
                f"{POOLFORMER_HOST}{arch}.pth.tar",
                f"timm/{arch}.sail_in1k",
                f"sail/{arch}",
                arch,
                crop_pct=crop_pct,
                license="apache-2.0",
                top1=top1,
                macs_g=macs,
            )
        )
    for arch, crop_pct in HYBRIDS.items():
        releases.append(
            PretrainedCfg(arch, None, f"{POOLFORMER_HOST}{arch}.pth.tar", crop_pct=crop_pct, license="apache-2.0")
        )
    for arch, (top1s, (macs_224, macs_384)) in PAPER.items():
        family = arch.split("_")[0]
        in_timm = family in IN_TIMM
        for (tag, (suffix, size, classes)), top1 in zip(TAG_KINDS.items(), top1s, strict=False):
            releases.append(
                PretrainedCfg(
                    arch,
                    tag,
                    f"{OFFICIAL_HOST}{family}/{arch}{suffix}.pth",
                    f"timm/{arch}.{tag}" if in_timm else None,
                    None,
                    arch if in_timm else None,
                    (3, size, size),
                    crop_pct=1.0,
                    num_classes=classes,
                    license="apache-2.0",
                    top1=top1,
                    macs_g=macs_384 if size == 384 else macs_224,
                )
            )
    for name, (file, size, crop_pct, top1, macs) in INCEPTION_NEXT.items():
        arch, tag = name.split(".")
        releases.append(
            PretrainedCfg(
                arch,
                tag,
                INCEPTION_HOST + file,
                f"timm/{name}",
                None,
                arch,
                (3, size, size),
                crop_pct=crop_pct,
                license="apache-2.0",
                top1=top1,
                macs_g=macs,
            )
        )
    for name, (file, size, crop_pct, classes, top1, macs) in MAMBAOUT.items():
        arch, tag = name.split(".")
        releases.append(
            PretrainedCfg(
                arch,
                tag,
                MAMBAOUT_HOST + file if file else None,
                f"timm/{name}",
                None,
                arch,
                (3, size, size),
                crop_pct=crop_pct,
                num_classes=classes,
                license="apache-2.0",
                top1=top1,
                macs_g=macs,
                **_mambaout_test_settings(size, crop_pct),
            )
        )
    return {release.name: release for release in releases}


RELEASES = _releases()
TAGGED = [release for release in RELEASES.values() if release.tag]


def releases_of(arch: str) -> list[PretrainedCfg]:
    """The released weights of ``arch``, the default (ImageNet-1k at 224) first."""
    return [r for r in RELEASES.values() if r.architecture == arch]


def release_of(arch: str, tag: str | None = None) -> PretrainedCfg:
    """The release ``tag`` of ``arch``, or its first (ImageNet-1k at 224) without a tag; an error naming what there
    is otherwise."""
    releases = releases_of(arch)
    if not releases:
        raise ConfigError(f"{arch} has no released weights; train it or pass checkpoint=PATH (--checkpoint PATH)")
    if tag is None:
        return releases[0]
    if releases[0].tag is None:
        raise ConfigError(f"{arch} has one release, without tags; pass pretrained=True (--pretrained)")
    return split_tag(f"{arch}.{tag}")[1]


def default_cfg(arch: str, image_size: int = 224, in_chans: int = 3) -> PretrainedCfg:
    """The record of a model of ``arch`` without released weights: its release's evaluation settings (and what
    timm calls it), else PoolFormer's (crop 0.9, bicubic, ImageNet mean and std)."""
    releases = releases_of(arch)
    record = releases[0].without_weights() if releases else PretrainedCfg(arch)
    return record.replace(input_size=(in_chans, image_size, image_size), num_classes=1000)


def split_tag(name: str) -> tuple[str, PretrainedCfg | None]:
    """The architecture of ``name`` and the release its tag names (``caformer_s18.sail_in1k_384``), if any."""
    arch, _, tag = name.partition(".")
    if not tag:
        return arch, None
    if name not in RELEASES:
        known = ", ".join(r.tag for r in releases_of(arch) if r.tag) or "none tagged"
        raise ConfigError(f"{arch} has no release {tag!r}; its releases: {known}")
    return arch, RELEASES[name]
