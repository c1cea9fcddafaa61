"""``cspnet convert``: timm or darknet weights -> a cspnet .safetensors checkpoint."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert timm or darknet weights into a cspnet .safetensors checkpoint",
        description="cspnet convert --from timm TIMM_NAME IN OUT | cspnet convert --from darknet CFG WEIGHTS OUT",
    )
    p.add_argument("--from", dest="source", choices=("timm", "darknet"), required=True)
    p.add_argument("inputs", nargs=3, metavar="ARG",
                   help="timm: TIMM_NAME IN OUT (IN: .safetensors/.pth state dict); darknet: CFG WEIGHTS OUT")
    p.add_argument("--model", default=None, help="darknet: native model to map onto (default: from the cfg)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import load_state_dict_file
    from ..convert import build_for, check_timm_name, from_timm, save_converted, to_native_model

    first, second, out = args.inputs
    if args.source == "timm":
        check_timm_name(first)
    out_path = Path(out)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must be a .safetensors file")
    if not out_path.parent.exists() and str(out_path.parent):
        raise ValueError(f"{out}: directory {out_path.parent} does not exist")
    if args.source == "timm":
        name, native = from_timm(load_state_dict_file(second), first)
        model = build_for(name, native)
    else:
        model = to_native_model(first, second, args.model)  # carries any act= override in its config
        name, native = model.model_name, model.state_dict()
    save_converted(model, native, out_path, f"{args.source}:{Path(first).name}:{Path(second).name}")
    print(f"wrote {out_path} ({name}, {len(native)} tensors)")
    print(f"load it with cspnet.create_model(checkpoint={str(out_path)!r})")
    return 0
