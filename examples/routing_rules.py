"""Which distance and radius rule `--category auto` should use, measured on several products at once:
patch distances are computed once, every rule is then applied in numpy.

    python examples/routing_rules.py PREPARED [PREPARED ...] [--foreign DIR ...] [--cache FILE.npz]

The router profiles (banks, references, held-out normals) are built from the prepared folders' calib
splits exactly as `adcli calibrate` builds them (its `_router`; the router does not depend on the
trained model). For every image, each of its 14×14 patches' cosine distance to the nearest patch of
each category's bank is computed once. A rule (qr, q, f, reference) is then

    nearest category = argmin over categories of the qr-quantile of the image's patch distances
    radius(category) = q99 of its held-out normals' q-quantile distance
                       + f × (nearest foreign reference's q-quantile distance − q99)
    UNKNOWN_CATEGORY when the image's q-quantile distance to its nearest category exceeds the radius

where the foreign references are the other categories' reference images and the uniform/noise frames
of `generic_frames()` ("nearest": the closest one, what routing.py does), or only the generic frames
("frames"), or per other category the median of its references ("median").

Categories of the first PREPARED are the trained ones, the test images of the others (e.g. generated
products) are foreign; with several PREPARED a second table has all of them trained. Per rule it prints
the share of test images routed to their own category — defective, good, and good ones with a dark or
a bright blob over half the frame (routing_check.blob; also how often their nearest category is their
own, what scoring an UNKNOWN image under its nearest product relies on) — as the mean over categories
and the worst category, and the share of foreign images rejected: each category's test images under
the router built without it (leave-one-out, mean and worst category), and the foreign sources (DIRs,
uniform and noise frames of routing_check.foreign_frames; mean and worst source).
"""

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from routing_check import blob, foreign_frames  # noqa: E402

from adcli.commands.calibrate import _router, normals_from_prepared  # noqa: E402
from adcli.data.manifest import load_manifest  # noqa: E402
from adcli.commands.inspect.intake import list_files  # noqa: E402
from adcli.core.io import read_image  # noqa: E402
from adcli.model.routing import PatchEmbedder, generic_frames  # noqa: E402

QUANTILES = (0.1, 0.2, 0.35, 0.5)
FRACTIONS = (0.5, 0.75, 0.9)


def patch_distances(embedder, items, banks) -> np.ndarray:
    """Images (paths or PIL) -> (N, K, P): each patch's cosine distance to the nearest patch of each bank."""
    out = []
    for i in range(0, len(items), 16):
        chunk = [read_image(p) if isinstance(p, (str, Path)) else p for p in items[i:i + 16]]
        out.append(embedded_distances(embedder.embed_views(np.stack([PatchEmbedder.view(im) for im in chunk])), banks))
    return np.concatenate(out)


def embedded_distances(patches: torch.Tensor, banks) -> np.ndarray:
    return torch.stack([1 - (patches.float() @ b.T).amax(-1) for b in banks], 1).numpy().astype(np.float32)


def compute(prepared: list[str], foreign: list[str]) -> dict[str, np.ndarray]:
    sets, group = {}, []
    for g, folder in enumerate(prepared):
        cats = sorted({s.category for s in load_manifest(folder)})
        sets.update(normals_from_prepared(folder, cats))
        group += [g] * len(cats)
    cats = list(sets)
    router = _router(SimpleNamespace(router=None, categories=cats), sets, Console(stderr=True))
    banks = router.banks
    test, blobs, blob_cat = [], [], []
    for folder in prepared:  # the blobs of each folder's good images as routing_check.py draws them
        rng, tests = np.random.default_rng(0), [s for s in load_manifest(folder) if s.split == "test"]
        goods = [s for tone in ("dark", "bright") for s in tests if s.label == 0]
        test, blob_cat = test + tests, blob_cat + [cats.index(s.category) for s in goods]
        blobs += [blob(read_image(s.path), rng, i >= len(goods) // 2) for i, s in enumerate(goods)]
    sources = {"/".join(Path(d).resolve().parts[-2:]): list_files(Path(d)) for d in foreign}
    sources.update(foreign_frames(np.random.default_rng(123)))
    data = {"categories": np.array(cats), "group": np.array(group), "sources": np.array(list(sources)),
            "test": patch_distances(router.embedder, [s.path for s in test], banks),
            "test_cat": np.array([cats.index(s.category) for s in test]),
            "test_defect": np.array([s.label for s in test]),
            "blob": patch_distances(router.embedder, blobs, banks),
            "blob_cat": np.array(blob_cat),
            "generic": embedded_distances(router.embedder(generic_frames()), banks)}
    for k, c in enumerate(cats):
        data[f"held_out.{k}"] = patch_distances(router.embedder, [s.path for s in sets[c].normals], banks)
        data[f"refs.{k}"] = embedded_distances(router.profiles[c].references, banks)
    for j, items in enumerate(sources.values()):
        data[f"foreign.{j}"] = patch_distances(router.embedder, items, banks)
    return data


def radii(data, q: float, f: float, ref: str, keep: list[int]) -> np.ndarray:
    """(K,): each kept category's radius under the rule, with only the kept categories trained (others nan)."""
    out = np.full(len(data["categories"]), np.nan)
    for k in keep:
        q99 = np.quantile(quantile(data[f"held_out.{k}"], q)[:, k], 0.99)
        generic = quantile(data["generic"], q)[:, k]
        others = [quantile(data[f"refs.{o}"], q)[:, k] for o in keep if o != k]
        if ref == "nearest":
            nearest = min(generic.min(), *(o.min() for o in others))
        elif ref == "median":
            nearest = min(generic.min(), *(np.median(o) for o in others))
        else:
            nearest = generic.min()
        out[k] = q99 + f * max(nearest - q99, 0.0)
    return out


_quantiles = {}


def quantile(d: np.ndarray, q: float) -> np.ndarray:
    """(N, K, P) -> (N, K): the q-quantile over patches, cached (the arrays live as long as `data`)."""
    key = (id(d), q)
    if key not in _quantiles:
        _quantiles[key] = (d, np.quantile(d, q, axis=-1))
    return _quantiles[key][1]


def route(d: np.ndarray, rule: tuple, radius: np.ndarray, keep: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, P) patch distances -> (category index or -1 for UNKNOWN_CATEGORY, nearest category index).
    The nearest category is chosen at the route quantile qr, the radius is checked at the quantile q."""
    qr, q = rule[:2]
    nearest = np.array(keep)[quantile(d, qr)[:, keep].argmin(1)]
    known = quantile(d, q)[np.arange(len(d)), nearest] <= radius[nearest]
    return np.where(known, nearest, -1), nearest


def evaluate(data, rule: tuple, trained: list[int]) -> dict[str, tuple[float, float]]:
    """rule = (qr, q, f, reference). Per measure: (mean over categories or sources, worst one) of the
    share routed right, with only the `trained` categories in the router (the others' test images are
    then foreign too)."""
    qr, q, f, ref = rule
    r = radii(data, q, f, ref, trained)
    (test, _), (blobs, blob_nearest) = route(data["test"], rule, r, trained), route(data["blob"], rule, r, trained)
    own = {"defect": [], "good": [], "blob": [], "blob nearest": [], "left out": []}
    for k in trained:
        for name, label in (("defect", 1), ("good", 0)):
            own[name].append(np.mean(test[(data["test_cat"] == k) & (data["test_defect"] == label)] == k))
        own["blob"].append(np.mean(blobs[data["blob_cat"] == k] == k))
        own["blob nearest"].append(np.mean(blob_nearest[data["blob_cat"] == k] == k))
        keep = [o for o in trained if o != k]
        left_out = route(data["test"], rule, radii(data, q, f, ref, keep), keep)[0][data["test_cat"] == k]
        own["left out"].append(np.mean(left_out == -1))
    foreign = [np.mean(route(data[f"foreign.{j}"], rule, r, trained)[0] == -1) for j in range(len(data["sources"]))]
    foreign += [np.mean(test[data["test_cat"] == k] == -1) for k in range(len(data["categories"])) if k not in trained]
    out = {name: (float(np.mean(v)), float(np.min(v))) for name, v in own.items()}
    out["foreign"] = (float(np.mean(foreign)), float(np.min(foreign)))
    return out


RULES = [(qr, q, f, "nearest") for q in QUANTILES for f in FRACTIONS for qr in dict.fromkeys((q, 0.1))]
RULES += [(0.05, 0.35, 0.75, "nearest"), (0.1, 0.35, 0.75, "median"), (0.1, 0.35, 0.75, "frames")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared", nargs="+")
    ap.add_argument("--foreign", nargs="*", default=[], help="folders of images of no product in PREPARED")
    ap.add_argument("--cache", type=Path, help="npz of the patch distances: written once, read afterwards")
    args = ap.parse_args()
    if args.cache and args.cache.exists():
        data = dict(np.load(args.cache))
    else:
        data = compute(args.prepared, args.foreign)
        if args.cache:
            np.savez_compressed(args.cache, **data)
    cats, group = list(data["categories"]), data["group"]
    for trained in ([k for k in range(len(cats)) if group[k] == 0], list(range(len(cats))))[:1 + (group.max() > 0)]:
        others = [c for k, c in enumerate(cats) if k not in trained]
        print(f"\ntrained: {', '.join(cats[k] for k in trained)}; foreign: {', '.join([*data['sources'], *others])}")
        print("| route q | radius q | f | reference | defects own | goods own | blobs own | blobs: nearest is own "
              "| left out rejected | foreign rejected |\n|---|---|---|---|---|---|---|---|---|---|")
        for rule in RULES:
            cells = " | ".join(f"{100 * mean:.1f} (min {100 * worst:.1f})" for mean, worst in evaluate(data, rule, trained).values())
            print(f"| {' | '.join(map(str, rule))} | {cells} |")

if __name__ == "__main__":
    main()
