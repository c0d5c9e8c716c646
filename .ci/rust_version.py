#!/usr/bin/env python3
"""Checks that each workspace package's `rust-version` is true for the locked dependencies.

A package's declared `rust-version` promises that it builds with that Rust. The promise is
only true if no dependency in the locked graph (normal and build dependencies, every
feature on, this host's platform) declares a newer `rust-version` itself. Exits 1 and names
the dependencies that need a newer Rust when the promise is false.

    python3 .ci/rust_version.py
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"]))
    declared = {(p["name"], p["version"]): p.get("rust_version") for p in meta["packages"]}
    failed = False
    for member in meta["workspace_members"]:
        package = next(p for p in meta["packages"] if p["id"] == member)
        ours = package.get("rust_version")
        if ours is None:
            print(f"{package['name']}: no rust-version declared")
            failed = True
            continue
        tree = subprocess.check_output(
            ["cargo", "tree", "--locked", "--all-features", "-e", "normal,build",
             "-p", package["name"], "--prefix", "none", "--format", "{p}"], text=True)
        needs = {}
        for line in tree.splitlines():
            fields = line.split()
            if len(fields) < 2 or not fields[1].startswith("v"):
                continue
            name, ver = fields[0], fields[1][1:]
            rv = declared.get((name, ver))
            if rv and name != package["name"]:
                needs[(name, ver)] = rv
        newest = max(needs.values(), key=version, default=None)
        too_new = sorted((rv, n, v) for (n, v), rv in needs.items() if version(rv) > version(ours))
        print(f"{package['name']}: rust-version {ours}; {len(needs)} dependencies declare one, "
              f"the newest needs {newest}")
        for rv, name, ver in too_new:
            print(f"  {name} {ver} needs Rust {rv}")
        failed |= bool(too_new)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
