"""How an exported encoder serves: latency, throughput, and the bytes each signature moves.

`benchmark_serving(saved_model)` builds requests with dim-tf's own clients
(`dim_tf.serving.client.rest_request`, `grpc_request`) from real JPEGs (the
shipped CIFAR-10 sample, and one 1200x900 photo made from one of them), and has
them answered by `dim_tf/serving/standalone.py` in a process that never
imports dim_tf: the SavedModel loaded with `tf.saved_model.load`, as TF Serving
runs it. It reports:

- bytes: request and response sizes per signature over REST and gRPC, for 12
  images (32x32, as pixels or JPEG files) and for one 1200x900 photo;
- latency: p50 and p99 at batch 1, pixels (`embed`) and JPEG (`embed_encoded`);
- throughput: images/s at batch 1, 8 and 64 with 1, 4 and 16 concurrent callers,
  pixels and JPEG.

Times are the server's work (parse the gRPC request, run the signature,
serialize the response) without the network, on this machine's CPU.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np

from dim_tf.config import ENCODED, NORMALIZED, SAMPLES_DIR, SIGNATURES
from dim_tf.errors import ServingError
from dim_tf.serving.client import check_saved_model, decode_pixels, grpc_request, rest_request

STANDALONE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standalone.py")
BATCH_SIZES = (1, 8, 64)
CALLERS = (1, 4, 16)
SIZE_BATCH = 12


def run_standalone(mode: str, saved_model: str, plan, timeout: float = 3600) -> dict:
    """Runs `standalone.py MODE` on `saved_model` with `plan` in a fresh process
    (without dim_tf on its path) and returns its results.

    Raises:
        ServingError: the process failed (its last lines of stderr are in the message).
    """
    with tempfile.TemporaryDirectory(prefix="dim-serving-") as work:
        plan_path, results_path = os.path.join(work, "plan.pkl"), os.path.join(work, "results.pkl")
        with open(plan_path, "wb") as f:
            pickle.dump(plan, f)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run([sys.executable, STANDALONE_SCRIPT, mode, saved_model, plan_path,
                                 results_path], cwd=work, env=env, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise ServingError(f"Serving {saved_model} in a standalone process failed:\n"
                               + "\n".join(result.stderr.strip().splitlines()[-15:]))
        with open(results_path, "rb") as f:
            return pickle.load(f)


def _sample_jpegs(count: int) -> list[bytes]:
    paths = sorted(glob.glob(os.path.join(SAMPLES_DIR, "cifar10", "test", "*", "*.jpg")))[:count]
    files = []
    for path in paths:
        with open(path, "rb") as f:
            files.append(f.read())
    return files


def _photo(jpeg: bytes, width: int = 1200, height: int = 900) -> bytes:
    """A smooth 1200x900 JPEG (one sample enlarged): a camera photo's size, if not its detail."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").resize((width, height), Image.BICUBIC).save(
        buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _pixels(files: list[bytes]) -> np.ndarray:
    return np.stack([decode_pixels(f, channels=3) for f in files])


def _request(case: str, protocol: str, batch: np.ndarray, signature: str) -> dict:
    body = (json.dumps(rest_request(batch, signature)).encode() if protocol == "rest"
            else grpc_request(batch, "dim", signature).SerializeToString())
    return {"case": case, "protocol": protocol, "body": body}


def _batch(kind: str, jpegs: list[bytes]) -> np.ndarray:
    if kind == ENCODED:
        return np.array(jpegs, dtype=object)
    pixels = _pixels(jpegs)
    return pixels.astype(np.float32) / 127.5 - 1 if kind == NORMALIZED else pixels


def size_requests(jpegs: list[bytes], photo: bytes) -> list[dict]:
    """Every signature over REST and gRPC on SIZE_BATCH sample images, and the photo
    as pixels and as a JPEG."""
    requests = []
    for name, spec in SIGNATURES.items():
        batch = _batch(spec.input_kind, jpegs[:SIZE_BATCH])
        for protocol in ("rest", "grpc"):
            requests.append(_request(f"{name}|{protocol}|12 images", protocol, batch, name))
    for protocol in ("rest", "grpc"):
        requests.append(_request(f"embed|{protocol}|1 photo 1200x900", protocol,
                                 _pixels([photo]), "embed"))
        requests.append(_request(f"embed_encoded|{protocol}|1 photo 1200x900", protocol,
                                 np.array([photo], dtype=object), "embed_encoded"))
    return requests


def benchmark_serving(saved_model: str, seconds: float = 2.0, latency_calls: int = 200) -> dict:
    """The figures of the module docstring for the SavedModel version `saved_model`.

    Raises:
        ServingError: not a version directory with the `embed` signatures, or the
            standalone process failed.
    """
    for name in ("embed", "embed_encoded"):
        check_saved_model(saved_model, name)
    jpegs = _sample_jpegs(max(BATCH_SIZES))
    photo = _photo(jpegs[0])
    answered = run_standalone("answer", saved_model, size_requests(jpegs, photo))
    sizes = [dict(zip(("signature", "protocol", "payload"), case.split("|")),
                  request_bytes=r["request_bytes"], response_bytes=r["response_bytes"])
             for case, r in answered.items() if case != "warmup"]
    failed = {case: r["error"] for case, r in answered.items() if case != "warmup" and r["error"]}
    if failed:
        raise ServingError(f"Requests failed: {failed}")
    kinds = {"pixels": ("embed", _pixels), "jpeg": ("embed_encoded",
                                                    lambda f: np.array(f, dtype=object))}
    plan = {"latency": [], "throughput": [], "batch_sizes": list(BATCH_SIZES),
            "callers": list(CALLERS), "latency_calls": latency_calls, "seconds": seconds}
    for kind, (signature, make) in kinds.items():
        plan["latency"].append(_request(kind, "grpc", make(jpegs[:1]), signature))
        plan["throughput"] += [_request(f"{kind}|{n}", "grpc", make(jpegs[:n]), signature)
                               for n in BATCH_SIZES]
    measured = run_standalone("measure", saved_model, plan)
    throughput = [{"input": case.split("|")[0], "batch": int(case.split("|")[1]),
                   **{f"callers_{c}": round(v, 1) for c, v in by_callers.items()}}
                  for case, by_callers in measured["throughput"].items()]
    latency = {kind: {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
               for kind, r in measured["latency"].items()}
    return {"saved_model": saved_model, "bytes": sizes, "latency_batch_1": latency,
            "throughput_images_per_second": throughput, "warmup_replayed": answered["warmup"]}
