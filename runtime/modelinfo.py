"""What ``edgeloop model info`` shows: files, sha256 check, metadata, tensors -- and what is wrong.

Why in the edge: listing tensors needs the interpreter, which the core
(``edgeloop.modelfile``) must not import. :func:`describe` never raises for a
bad model: it reports each problem, so the command can show the document and
then exit with the model-error code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeloop.errors import ModelError
from edgeloop.modelfile import ModelMetadata, load_metadata, metadata_path, sha256_bytes
from edgeloop.edge.inference import load_interpreter_class, tensor_details


def describe(path: str | Path) -> dict[str, Any]:
    """The full document (``model info --json``); ``problems`` lists what makes the model unusable."""
    path = Path(path)
    info: dict[str, Any] = {"file": str(path), "metadata_file": str(metadata_path(path)), "problems": []}
    problems: list[str] = info["problems"]
    try:
        content = path.read_bytes()
    except OSError as exc:
        problems.append(f"cannot read model file {path}: {exc.strerror}")
        return info
    actual = sha256_bytes(content)
    info["bytes"] = len(content)
    info["sha256"] = actual
    meta: ModelMetadata | None = None
    try:
        meta = load_metadata(metadata_path(path))
    except ModelError as exc:
        problems.append(str(exc))
    if meta is not None:
        info["sha256_ok"] = actual == meta.sha256
        info["metadata"] = meta.model_dump(mode="json", exclude_none=True)
        if not info["sha256_ok"]:
            problems.append(f"sha256 of {path.name} is {actual[:16]}... but its metadata says {meta.sha256[:16]}...")
    else:
        info["sha256_ok"] = None
    try:
        cls, name = load_interpreter_class()
        info["interpreter"] = name
        interpreter = cls(model_content=content)
        info["inputs"], info["outputs"] = tensor_details(interpreter)
    except ModelError as exc:
        problems.append(str(exc))
    except (ValueError, RuntimeError) as exc:
        problems.append(f"the interpreter cannot load {path.name}: {exc}")
    if meta is not None and info.get("inputs"):
        spec = info["inputs"][0]
        expected = list(meta.input.shape[1:])
        info["input_spec_ok"] = spec["shape"][1:] == expected and spec["dtype"] == meta.input.dtype
        if not info["input_spec_ok"]:
            problems.append(f"input tensor is {spec['shape']} {spec['dtype']} but the metadata says "
                            f"{meta.input.shape} {meta.input.dtype}")
    return info


def _tensor(t: dict[str, Any]) -> str:
    shape = "x".join("N" if d is None else str(d) for d in t["shape"])
    quant = f" (scale {t['quantization']['scale']:.6g}, zero point {t['quantization']['zero_point']})" \
        if t.get("quantization") else ""
    return f"{t['name']}  {shape}  {t['dtype']}{quant}"


def summary(info: dict[str, Any]) -> list[str]:
    """A few lines for people: what the model is, whether it is intact, what it takes and gives."""
    meta = info.get("metadata") or {}
    lines = []
    if meta:
        lines.append(f"model        {meta['name']} {meta['version']} ({meta.get('task', 'anomaly')})")
    lines.append(f"file         {info['file']}" + (f" ({info['bytes']:,} bytes)" if "bytes" in info else ""))
    if "sha256" in info:
        verdict = {True: "ok, matches the metadata", False: "MISMATCH with the metadata", None: "not checked"}
        lines.append(f"sha256       {info['sha256'][:16]}...  {verdict[info.get('sha256_ok')]}")
    if "interpreter" in info:
        lines.append(f"interpreter  {info['interpreter']}")
    for t in info.get("inputs", []):
        lines.append(f"input        {_tensor(t)}")
    for t in info.get("outputs", []):
        lines.append(f"output       {_tensor(t)}")
    if meta:
        lines.append(f"threshold    {meta['threshold']:.6g} on output {meta.get('score_output', 0)}")
        lines.append(f"labels       {', '.join(meta.get('labels', []))}")
        if meta.get("normalization"):
            lines.append(f"normalize    from metadata ({len(meta['normalization']['mean'])} features)")
        if meta.get("image"):
            image = meta["image"]
            lines.append(f"image        {image['width']}x{image['height']} {image['color']}")
        training = meta.get("training") or {}
        if training:
            made = [training.get("created"), f"{training.get('samples')} samples", training.get("framework")]
            if training.get("parent"):
                made.append(f"retrained from {training['parent']}")
            lines.append(f"trained      {', '.join(str(m) for m in made if m)}")
        if meta.get("created_by"):
            lines.append(f"created by   {meta['created_by']}")
    for problem in info["problems"]:
        lines.append(f"PROBLEM      {problem}")
    return lines
