#!/usr/bin/env bash
# The README's Rust snippets, used the way a newcomer uses them: each pasted into a fresh
# `cargo new` project with exactly the dependencies the README lists next to it, built,
# and the quickstart run (it must print nothing and exit 0, as the README says).
#
# The doctests (`ReadmeDoctests` in src/lib.rs) compile the same code, but against
# keygate's own dev-dependencies; only this catches a dependency the README forgets to
# list (an earlier README's quickstart needed `chrono` and never said so) or a
# rustdoc-hidden `# ` line that makes a snippet fail when pasted.
#
# `.ci/run` runs it; by hand: `tests/readme/run.sh`. The README's `path = "../keygate"` is
# pointed at this checkout, the checkout's Cargo.lock is copied in (the versions CI tested),
# and the build shares the checkout's target directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir

fail() {
  echo "readme: FAIL: $*" >&2
  exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# extract.py README WORK: writes WORK/<name>/{Cargo.toml,src/main.rs} per snippet.
python3 - "$repo/README.md" "$work" "$repo" <<'PY'
import pathlib, re, sys

readme, work, repo = pathlib.Path(sys.argv[1]).read_text(), pathlib.Path(sys.argv[2]), sys.argv[3]

def fence(text, start, lang):
    """The body of the first ```lang… block at or after `start`, and where it ends."""
    m = re.compile(r"^```" + lang + r"[^\n]*\n(.*?)^```$", re.M | re.S).search(text, start)
    if not m:
        sys.exit(f"readme: no ```{lang} block after offset {start}")
    return m.group(1), m.end()

def project(name, deps, code):
    for line in code.splitlines():
        if line.startswith("# ") or line == "#":
            sys.exit(f"readme: {name}: a rustdoc-hidden line cannot be pasted: {line!r}")
    if 'path = "../keygate"' not in deps:
        sys.exit(f"readme: {name}: keygate is not a path dependency on ../keygate:\n{deps}")
    deps = deps.replace('path = "../keygate"', f'path = "{repo}"')
    root = work / name
    (root / "src").mkdir(parents=True)
    (root / "Cargo.toml").write_text(
        f'[package]\nname = "{name}"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n'
        f"[workspace]\n\n{deps}"
    )
    (root / "src" / "main.rs").write_text(code)

# Quickstart: the ```toml block under "## Quickstart", then the ```rust block after it.
at = readme.index("\n## Quickstart\n")
toml, end = fence(readme, at, "toml")
code, _ = fence(readme, end, "rust")
project("quickstart", toml, code)

# axum: the ```rust block after "**axum**", then the sentence listing its dependencies
# ("with `keygate = …`, `axum = …` and `tokio = …`.").
at = readme.index("\n**axum**")
code, end = fence(readme, at, "rust")
sentence = readme[end:readme.index(".\n", end)]
deps = re.findall(r"`([a-z][a-z0-9_-]* = [^`]+)`", sentence)
names = [d.split(" = ")[0] for d in deps]
if sorted(names) != ["axum", "keygate", "tokio"]:
    sys.exit(f"readme: axum: expected keygate, axum and tokio after the snippet, found {names}")
project("axum_app", "[dependencies]\n" + "\n".join(deps) + "\n", code)
PY

for app in quickstart axum_app; do
  cp "$repo/Cargo.lock" "$work/$app/Cargo.lock"
done

echo "readme: quickstart (cargo new, the README's Cargo.toml and src/main.rs, cargo run)"
out=$(cd "$work/quickstart" && CARGO_TARGET_DIR=$target_dir cargo run --quiet) ||
  fail "the quickstart did not build or exit 0"
[ -z "$out" ] || fail "the quickstart printed to stdout (the README says it prints nothing): $out"

echo "readme: axum app (cargo new, the dependencies listed under the snippet, cargo build)"
(cd "$work/axum_app" && CARGO_TARGET_DIR=$target_dir cargo build --quiet) ||
  fail "the axum snippet did not build with the dependencies the README lists"

echo "readme: ok"
