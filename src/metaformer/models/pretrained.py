"""The released weights of the PoolFormers and the MetaFormer Baselines, one tag per file, spelled as timm spells
them (``caformer_s18.sail_in22k_ft_in1k_384``): where each file lives, how it was evaluated, and what the papers
report.

The official files (sail-sg/metaformer) are plain state_dicts on Hugging Face (``huggingface.co/sail/dl``); timm's
copies (``timm/<arch>.<tag>``) are safetensors. Every tag is evaluated at its input size with crop_pct 1.0,
bicubic interpolation and the ImageNet mean and std. All are released under Apache-2.0 (trained on ImageNet, whose
own terms are for non-commercial research).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Pretrained:
    """One released set of weights of an architecture."""

    arch: str
    tag: str
    url: str  # the official file (a plain state_dict in the official format)
    hf_hub_id: str | None  # timm's safetensors copy on the Hugging Face Hub
    image_size: int
    num_classes: int
    top1: float | None  # the paper's ImageNet-1k top-1, %
    macs_g: float | None  # the paper's MACs at image_size
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    license: str = "apache-2.0"

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"


def _releases() -> dict[str, Pretrained]:
    releases = {}
    for arch, (top1, macs, crop_pct) in POOLFORMER.items():
        release = Pretrained(arch, "sail_in1k", f"{POOLFORMER_HOST}{arch}.pth.tar", f"timm/{arch}.sail_in1k", 224, 1000,
                             top1, macs, crop_pct)  # fmt: skip
        releases[release.name] = release
    for arch, (top1s, (macs_224, macs_384)) in PAPER.items():
        family = arch.split("_")[0]
        for (tag, (suffix, size, classes)), top1 in zip(TAG_KINDS.items(), top1s, strict=False):
            hub = f"timm/{arch}.{tag}" if family in IN_TIMM else None
            release = Pretrained(arch, tag, f"{OFFICIAL_HOST}{family}/{arch}{suffix}.pth", hub, size, classes, top1,
                                 macs_384 if size == 384 else macs_224)  # fmt: skip
            releases[release.name] = release
    return releases


RELEASES = _releases()


def releases_of(arch: str) -> list[Pretrained]:
    """The released weights of ``arch``, the default (ImageNet-1k at 224) first."""
    return [r for r in RELEASES.values() if r.arch == arch]


def split_tag(name: str) -> tuple[str, Pretrained | None]:
    """The architecture of ``name`` and the release its tag names (``caformer_s18.sail_in1k_384``), if any."""
    arch, _, tag = name.partition(".")
    if not tag:
        return arch, None
    if name not in RELEASES:
        known = ", ".join(r.tag for r in releases_of(arch)) or "none tagged"
        raise ConfigError(f"{arch} has no release {tag!r}; its releases: {known}")
    return arch, RELEASES[name]
