"""Make tests/data/openmmlab/mmseg_upernet.json: mmseg's own UPerHead and FCNHead on the reference weights and
inputs (tests/openmmlab_reference.py). Run with mmsegmentation 1.2.2, mmengine 0.10.7 and mmcv-lite 2.1.0 on the
path; mmcv-lite has no compiled ops, which these heads do not use (a stub stands in for the extension module that
mmseg's package imports load)."""

import json
import sys
import types
from pathlib import Path

import torch

ext = types.ModuleType("mmcv._ext")


def _op(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return lambda *args, **kwargs: None  # only imports touch it


ext.__getattr__ = _op
sys.modules["mmcv._ext"] = ext
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/
import mmcv  # noqa: E402
import mmengine  # noqa: E402
import mmseg  # noqa: E402
from mmseg.models.decode_heads.fcn_head import FCNHead  # noqa: E402
from mmseg.models.decode_heads.uper_head import UPerHead  # noqa: E402
from openmmlab_reference import reference_inputs, reference_weights  # noqa: E402

norm = dict(type="BN", requires_grad=True)
in_channels = [64, 128, 320, 512]
decode = UPerHead(
    in_channels=in_channels,
    in_index=[0, 1, 2, 3],
    pool_scales=(1, 2, 3, 6),
    channels=512,
    dropout_ratio=0.1,
    num_classes=150,
    norm_cfg=norm,
    align_corners=False,
)
aux = FCNHead(
    in_channels=320,
    in_index=2,
    channels=256,
    num_convs=1,
    concat_input=False,
    dropout_ratio=0.1,
    num_classes=150,
    norm_cfg=norm,
    align_corners=False,
)
state = {
    **{f"decode_head.{k}": v for k, v in decode.state_dict().items()},
    **{f"auxiliary_head.{k}": v for k, v in aux.state_dict().items()},
}
state = {k: v for k, v in state.items() if "loss" not in k}
shapes = {k: list(v.shape) for k, v in state.items()}
weights = reference_weights(shapes)
decode.load_state_dict({k[len("decode_head.") :]: v for k, v in weights.items() if k.startswith("decode_head.")})
aux.load_state_dict({k[len("auxiliary_head.") :]: v for k, v in weights.items() if k.startswith("auxiliary_head.")})
decode.eval(), aux.eval()
input_shapes = [[1, 64, 64, 64], [1, 128, 32, 32], [1, 320, 16, 16], [1, 512, 8, 8]]
inputs = reference_inputs(input_shapes, 0)


with torch.no_grad():
    logits = decode.forward(inputs)
    aux_logits = aux.forward(inputs)
    pooled = decode.psp_forward(inputs)


def rounded(values):
    if isinstance(values, list):
        return [rounded(v) for v in values]
    return float(f"{values:.6g}")


outputs = {}
for name, tensor in (("bottleneck", pooled), ("logits", logits), ("aux_logits", aux_logits)):
    slicing = "[:, ::4, ::8, ::8]" if tensor.shape[-1] > 8 else "[:, ::4, :, :]"
    part = eval(f"tensor{slicing}")
    outputs[name] = {"shape": list(tensor.shape), "slice": slicing, "values": rounded(part.tolist())}
notes = (
    "mmseg.models.decode_heads.UPerHead(in_channels=[64,128,320,512], in_index=[0,1,2,3], pool_scales=(1,2,3,6), "
    "channels=512, dropout_ratio=0.1, num_classes=150, norm_cfg=BN, align_corners=False) and FCNHead(in_channels="
    "320, in_index=2, channels=256, num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=150, norm_cfg=BN, "
    "align_corners=False), as in mmseg's upernet configs (SyncBN there; same keys). CPU, eval, float32, no_grad. "
    "Weights: reference_weights(shapes) loaded with strict=True. bottleneck = decode_head.psp_forward(inputs); "
    "logits = decode_head.forward(inputs), aux_logits = auxiliary_head.forward(inputs), at the input's strides, "
    "before any resize. Values rounded to 6 significant digits; 'slice' is Python indexing applied to the full "
    f"output. torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv(-lite) {mmcv.__version__}, "
    f"mmseg {mmseg.__version__}; made by tests/data/openmmlab/make_upernet_fixture.py"
)
out = {"shapes": shapes, "inputs": {"shapes": input_shapes, "seed": 0}, "outputs": outputs, "notes": notes}
Path(sys.argv[1]).write_text(json.dumps(out, separators=(",", ":")))
print("params", sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")))
