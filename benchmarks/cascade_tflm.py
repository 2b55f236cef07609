"""A cascade as one TFLite Micro project (issue 19): arena, flash bytes per inference and member loads,
next to stock TFLM running the monolithic model from RAM.

For each cascade (digits by default: scikit-learn's digits, the test suite's recipe; MNIST with
`--datasets digits,mnist`: a short recipe on the first 60,000 samples, the project's memory figures
do not depend on how well it is trained; or bundles given with `--bundle`): export the project,
run it on the test inputs on the host TFLM, and, when the Cortex-M4 toolchain and ../shared/vendor
are here, under QEMU (pinned TFLM), checking its scores bit for bit against
`CascadeInterpreter(backend="tflm")`. Prints one table with the issue's targets:

    arena <= 1.1 x (largest member's own per-op arena + the router's)
    stock TFLM RAM (arena + model, monolithic) / cascade arena >= 3

    python benchmarks/cascade_tflm.py [--datasets digits,mnist] [--bundle X.cascade --data test.npz]
                                      [--inputs 200] [--out benchmarks/cascade_results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tflm_swap.cascade import CascadeBundle, CascadeInterpreter  # noqa: E402
from tflm_swap.cascade.tflm_project import export_project, run_project  # noqa: E402
from tflm_swap.errors import TflmSwapError  # noqa: E402
from tflm_swap.format.model import Model  # noqa: E402
from tflm_swap.micro import run_host_tflm  # noqa: E402
from tflm_swap.micro.host import io_specs  # noqa: E402

RECIPES = {  # a cascade in well under a minute per dataset (memory figures, not accuracy)
    "digits": dict(n_train=700, n_groups=3, epochs=8, router_epochs=8, sparsity_epochs=2, finetune_epochs=2),
    "mnist": dict(n_train=6000, n_groups=2, epochs=2, router_epochs=2, sparsity_epochs=1, finetune_epochs=1),
}


def train(name: str, mnist: Path) -> tuple[CascadeBundle, np.ndarray]:
    """A cascade trained with RECIPES[name] and its test inputs."""
    from tflm_swap.cascade import CascadeBuilder

    recipe = dict(RECIPES[name])
    n_train = recipe.pop("n_train")
    if name == "digits":
        from tflm_swap.demo import load_digits_images

        x_train, x_test, y_train, _ = load_digits_images(0)
    else:
        from tflm_swap.cascade.data import load_npz, split_by_order

        x, y = load_npz(mnist)
        x_train, y_train, x_test, _ = split_by_order(x, y, 10_000)
    print(f"== {name}: training a cascade on {n_train} samples", flush=True)
    built = CascadeBuilder(verbose=0, **recipe).fit(None, x_train[:n_train], y_train[:n_train])
    return CascadeBundle.from_bytes(built.bundle_.to_bytes(), source=f"{name}.cascade"), x_test


def stock_ram(bundle: CascadeBundle) -> tuple[int, int]:
    """(arena, model bytes) of stock TFLM (host) running the monolithic model with its weights in RAM."""
    plain = bytes(Model.from_bytes(bundle.member_bytes(bundle.monolithic)).without_external())
    zeros = [np.zeros(shape, dtype) for shape, dtype in io_specs(plain, "inputs")]
    return run_host_tflm(plain, None, [zeros]).arena_total, len(plain)


def measure(name: str, bundle: CascadeBundle, x: np.ndarray, out: Path, board: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="cascade_tflm_") as tmp:
        project = export_project(bundle, Path(tmp) / "project", prefix=name)
        mono = export_project(bundle, Path(tmp) / "mono", prefix=name, monolithic=True).member("monolithic")
        host = run_project(project, x)
        exact = None
        if board is not None:
            qemu = run_project(project, x, board=board)
            with CascadeInterpreter(bundle, backend="tflm") as ci:
                exact = bool(np.array_equal(qemu.scores.view(np.uint64), ci.predict(x).view(np.uint64)))
    router, others = project.members[0], project.members[1:]
    largest = max(others, key=lambda m: m.arena_size)
    arena, model = stock_ram(bundle)
    runs = {m.name: sum(k in r for r in host.members_run) for k, m in enumerate(project.members)}
    figures = {
        "dataset": name, "groups": bundle.groups, "inputs": len(x),
        "members": {m.name: {"arena": m.arena_size, "graph_bytes": len(m.micro.graph),
                             "flash_bytes_per_run": m.flash_bytes_per_inference, "runs": runs[m.name]}
                    for m in project.members},
        "cascade_arena": project.arena_size,
        "target_arena": 1.1 * (largest.arena_size + router.arena_size),
        "largest_member": largest.name,
        "monolithic_per_op_arena": mono.arena_size,
        "stock_arena": arena, "stock_model_bytes": model, "stock_ram": arena + model,
        "ram_ratio": (arena + model) / project.arena_size,
        "image_bytes": len(project.image),
        "flash_bytes_per_inference": float(np.mean(host.bytes_loaded)),
        "monolithic_flash_bytes_per_inference": mono.flash_bytes_per_inference,
        "setups_per_inference": float(np.mean(host.setups)),
        "fallback_rate": float(np.mean([len(g) != 1 for g in host.groups_run])),
        "bit_identical_qemu": exact, "board": board,
    }
    (out / f"tflm_{name}.json").write_text(json.dumps(figures, indent=1))
    return figures


def table(results: list[dict]) -> str:
    rows = [
        ("groups", lambda r: str(r["groups"])),
        ("members' own arenas (bytes)", lambda r: ", ".join(f"{k} {v['arena']:,}" for k, v in r["members"].items())),
        ("cascade arena (one, shared)", lambda r: f"{r['cascade_arena']:,}"),
        ("target: 1.1 x (largest + router)", lambda r: f"{r['target_arena']:,.0f} ({r['largest_member']})"),
        ("arena / (largest + router)", lambda r: f"{1.1 * r['cascade_arena'] / r['target_arena']:.3f}"),
        ("monolithic, per-op loads: arena", lambda r: f"{r['monolithic_per_op_arena']:,}"),
        ("stock TFLM monolithic: arena + model", lambda r: f"{r['stock_arena']:,} + {r['stock_model_bytes']:,} = "
                                                           f"{r['stock_ram']:,}"),
        ("stock RAM / cascade arena (target >= 3)", lambda r: f"{r['ram_ratio']:.2f}"),
        ("flash image (bytes)", lambda r: f"{r['image_bytes']:,}"),
        ("flash bytes per inference, mean", lambda r: f"{r['flash_bytes_per_inference']:,.0f} (monolithic per-op "
                                                      f"{r['monolithic_flash_bytes_per_inference']:,})"),
        ("member runs over the inputs", lambda r: ", ".join(f"{k} {v['runs']}" for k, v in r["members"].items())),
        ("specialist set-ups per inference", lambda r: f"{r['setups_per_inference']:.2f}"),
        ("top-2 fallback rate", lambda r: f"{r['fallback_rate']:.1%}"),
        ("scores bit-identical (QEMU vs Python TFLM)", lambda r: f"{r['bit_identical_qemu']} ({r['inputs']} inputs)"),
    ]
    lines = ["| | " + " | ".join(r["dataset"] for r in results) + " |", "|---|" + "---|" * len(results)]
    lines += [f"| {label} | " + " | ".join(f(r) for r in results) + " |" for label, f in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="digits", help="digits, mnist (trained here with a short recipe)")
    p.add_argument("--bundle", action="append", default=[], help="a bundle to measure (with --data)")
    p.add_argument("--data", help=".npz with test images 'x' for --bundle")
    p.add_argument("--mnist", default=str(ROOT.parent / "shared" / "datasets" / "mnist.npz"))
    p.add_argument("--inputs", type=int, default=200)
    p.add_argument("--board", default="mps2-an386", help="QEMU board for the bit-exact check ('none': skip)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "cascade_results"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    board = None if args.board == "none" else args.board
    if board is not None:
        from tflm_swap.micro import mcu

        os.environ.setdefault("TFLM_SWAP_VENDOR", str(ROOT.parent / "shared" / "vendor"))
        why = mcu.available(board)
        if why:
            print(f"no QEMU run: {why}")
            board = None
    cascades = [(Path(b).stem, CascadeBundle.load(b), np.load(args.data)["x"]) for b in args.bundle]
    cascades += [(n, *train(n, Path(args.mnist))) for n in args.datasets.split(",") if n and not args.bundle]
    results = []
    for name, bundle, x in cascades:
        try:
            results.append(measure(name, bundle, np.asarray(x[: args.inputs], np.float32), out, board))
        except TflmSwapError as exc:
            print(f"{name}: {exc}")
            return 1
    print("\n" + table(results))
    print(f"\nJSON in {out}/tflm_*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
