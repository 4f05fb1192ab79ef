# Sourced (not run) by the device scripts, bench/gpu_check.sh and bench/gpu_pretrain.sh, after they set $python:
#     device_env MODULE...
# checks that each MODULE is installed for $python (importlib finds it; nothing is imported, so the check takes a
# fraction of a second). The device machines' image lacks a few packages (diffusers, jsonargparse and their needs):
# `bash bench/device_wheels.sh` fetches them here into .whl/, and the device call carries that folder
# (run(carry=[".whl"], ...)). When a module is missing and .whl/ holds wheels, they are installed
# into $DEVICE_SITE (default /tmp/site; no index, no dependencies), which goes on PYTHONPATH; nothing is installed
# when every module is there already (a CPU dry run, or an image that has them). Returns 1 with one line naming what
# is still missing, so a device call stops in seconds instead of spending its lease on runs that cannot import.
device_env() {
    local check="import importlib.util, sys; missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
print(' '.join(missing)); sys.exit(1 if missing else 0)"
    local missing
    if missing=$("$python" -c "$check" "$@"); then
        return 0
    fi
    if compgen -G ".whl/*.whl" >/dev/null; then
        local site=${DEVICE_SITE:-/tmp/site}
        echo "== $missing missing under $python: installing the wheels of .whl/ into $site"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            .whl/*.whl || return 1
        export PYTHONPATH="${PYTHONPATH:-}${PYTHONPATH:+:}$site"
        missing=$("$python" -c "$check" "$@") && return 0
    fi
    echo "== cannot import: $missing (under $python). Run 'bash bench/device_wheels.sh' here and carry .whl in the call"
    return 1
}
