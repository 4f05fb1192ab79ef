#!/usr/bin/env bash
# Wheels that the device machines' Python lacks for `bench/gpu_check.sh` and `bench/gpu_pretrain.sh` (their image
# has torch, lightning, transformers, peft, pandas, pyarrow, tensorboard; not these), at the versions of this
# checkout's .venv, into .whl/ (git-ignored through .git/info/exclude). The device call carries .whl
# (run(carry=[".whl"], ...)); the scripts install the wheels there through bench/device_env.sh when they need them.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
mkdir -p .whl
for name in diffusers importlib_metadata jsonargparse docstring_parser typeshed_client; do
    version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$name==$version"
done
ls -la .whl
