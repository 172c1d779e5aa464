"""The same tiny HTTP server under every runtime this machine can really run: native, WASM engines, OCI runtimes.

One experiment, one run, variants interleaved (runlab's engine alternates them start by start): the static C
server (build/workloads/hello.c) natively and under podman with runc, crun 1.21 and gVisor runsc (systrap and
ptrace platforms); its WASI
build (hello-wasi.c, clang --target=wasm32-wasi) on wasmtime 46 (JIT and AOT .cwasm), wazero 1.12 (with and
without its compilation cache), WasmEdge
0.14 (interpreter and AOT) and inside a container through crun's WasmEdge handler. Per variant: cold start
(exec → first 200 with the expected body), idle PSS (after the settle time), size (binary, module or image),
latency under load (closed loop) — and each figure's ratio to native.

    make workloads   # fetches the engines and builds the modules and images (build/workloads/)
    .venv/bin/python bench/bench_wasm_runtimes.py [--repeat 30] [--quick] [--out bench/results/wasm_runtimes.json]

Writes the experiment file it ran and runlab's full JSON result beside --out, and prints the table (Markdown
with --markdown) that docs/runtimes.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tables
import yaml

REPO = Path(__file__).resolve().parent.parent
CACHE = (REPO / "build" / "cache").resolve()  # podman records the resolved store path
BIN = CACHE / "runtimes" / "bin"
WASM = CACHE / "wasm"
STORE = CACHE / "podman-store"
PODMAN = ["--root", f"{STORE}/root", "--runroot", "/tmp/runlab-podman-runroot", "--tmpdir", f"{STORE}/tmp",
          "--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--events-backend=none"]
RUN_ARGS = ["--network=host", "--log-driver=none", "--no-hosts", "--dns=none",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def variants() -> list[dict[str, Any]]:
    wt = [str(BIN / "wasmtime"), "run", "-S", "preview2=n,tcplisten=127.0.0.1:{port}"]
    we = ["--port", "{port}", "--bind", "127.0.0.1"]

    def ctr(name: str, oci: str, image: str = "localhost/runlab-hello:1", command: list[str] | None = None,
            engine_args: list[str] | None = None, run_args: list[str] | None = None, **kw: Any) -> dict[str, Any]:
        return {"name": name, "runtime": "container", "engine": "podman", "oci_runtime": oci,
                "engine_args": PODMAN + (engine_args or []), "run_args": (run_args or []) + RUN_ARGS,
                "image": image, "command": command or ["/hello", "--port", "{port}"], **kw}

    return [
        {"name": "native", "runtime": "process", "command": [str(CACHE / "workloads" / "hello"), "--port", "{port}"]},
        {"name": "wasmtime", "runtime": "wasm", "command": [*wt, str(WASM / "hello-wasi.wasm")]},
        {"name": "wasmtime-aot", "runtime": "wasm",
         "command": [wt[0], "run", "--allow-precompiled", *wt[2:], str(WASM / "hello-wasi.cwasm")]},
        {"name": "wazero", "runtime": "wasm",
         "command": [str(BIN / "wazero"), "run", "-listen", "127.0.0.1:{port}", str(WASM / "hello-wasi.wasm")]},
        # wazero compiles the module at every start; -cachedir keeps the compiled code between starts
        {"name": "wazero-cache", "runtime": "wasm",
         "command": [str(BIN / "wazero"), "run", "-cachedir", str(CACHE / "wasm" / "wazero-cache"), "-listen",
                     "127.0.0.1:{port}", str(WASM / "hello-wasi.wasm")]},
        {"name": "wasmedge", "runtime": "wasm",
         "command": [str(BIN / "wasmedge"), str(WASM / "hello-wasmedge.wasm"), *we]},
        {"name": "wasmedge-aot", "runtime": "wasm",
         "command": [str(BIN / "wasmedge"), str(WASM / "hello-wasmedge.aot.wasm"), *we]},
        ctr("podman-runc", "runc"),
        ctr("podman-crun", str(BIN / "crun")),
        ctr("podman-runsc", str(BIN / "runsc"), engine_args=["--runtime-flag", "network=host",
                                                              "--runtime-flag", "platform=systrap"]),
        ctr("podman-runsc-ptrace", str(BIN / "runsc"), engine_args=["--runtime-flag", "network=host",
                                                                     "--runtime-flag", "platform=ptrace"]),
        ctr("crun-wasmedge", str(BIN / "crun"), image="localhost/runlab-hello-wasm:1",
            command=["/hello-wasmedge.wasm", *we], run_args=["--annotation", "module.wasm.image/variant=compat"],
            stop_timeout=0),
    ]


def experiment(repeat: int, requests: int) -> dict[str, Any]:
    return {"name": "wasm-runtimes", "description": "hello server: native, WASM engines, OCI runtimes",
            "repeat": repeat, "warmup": 2, "reference": "native", "settle": "2s",
            "phases": ["cold_start", "footprint", "size", "load"],
            "ready": {"http": "http://127.0.0.1:{port}/", "expect_body": "^hello$", "timeout": "60s",
                      "interval": "1ms", "probe_timeout": "250ms"},
            "load": {"requests": requests, "concurrency": 10, "timeout": "10s"},
            "variants": variants()}


def prepare() -> None:
    env = {**os.environ, "PODMAN_STORE": str(STORE), "PYTHON": sys.executable}
    for script in ("build.sh", "fetch-runtimes.sh", "build-wasm.sh"):
        subprocess.run(["bash", str(REPO / "build" / "workloads" / script)], env=env, check=True,
                       stdout=subprocess.DEVNULL)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for v in result["variants"]:
        st, fp, sz = v.get("startup_ms") or {}, v.get("footprint") or {}, v.get("size") or {}
        ld = (v.get("load") or [{}])[0]
        rows.append({"name": v["name"], "runtime": v["runtime"], "error": v.get("error"),
                     "start_median_ms": st.get("median"), "start_ci": [st.get("ci_low"), st.get("ci_high")],
                     "start_n": st.get("n"), "pss_bytes": fp.get("pss_bytes"), "rss_bytes": fp.get("rss_bytes"),
                     "processes": fp.get("processes"), "size_bytes": sz.get("bytes"), "size_what": sz.get("what"),
                     "p50_ms": (ld.get("latency_ms") or {}).get("median"),
                     "p99_ms": (ld.get("latency_ms") or {}).get("p99"), "rps": ld.get("achieved_rps"),
                     "load_errors": ld.get("errors")})
    return {"rows": rows}


def fmt_size(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**10:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def report(result: dict[str, Any], markdown: bool = False) -> str:
    rows = result["rows"]
    native = next(r for r in rows if r["name"] == "native")
    out = []
    for r in rows:
        if r["error"]:
            out.append([r["name"], "error: " + str(r["error"])[:80], "", "", "", "", ""])
            continue
        ratio = r["start_median_ms"] / native["start_median_ms"] if native["start_median_ms"] else 0
        out.append([r["name"], f"{r['start_median_ms']:.1f} ms ({r['start_ci'][0]:.1f}–{r['start_ci'][1]:.1f})",
                    f"{ratio:.0f}×", f"{r['pss_bytes'] / 2**20:.1f} MiB", fmt_size(r["size_bytes"]),
                    f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms", f"{r['rps']:,.0f}/s"])
    headers = ["variant", "cold start median (95% CI)", "vs native", "idle PSS", "size", "p50 / p99 under load",
               "throughput"]
    title = (f"{result['experiment_file']}: repeat {result['repeat']}, interleaved; load {result['requests']} "
             f"requests, 10 concurrent (closed loop); {result.get('machine', '')}")
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in out]
        return title + "\n\n" + "\n".join(lines)
    return tables.table(headers, out, title=title)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="repeat 5, 200 requests")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "wasm_runtimes.json"))
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.requests = 5, 200
    prepare()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    exp_file = out.with_suffix(".experiment.yaml")
    exp_file.write_text(yaml.safe_dump(experiment(args.repeat, args.requests), sort_keys=False))
    full = out.with_suffix(".runlab.json")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "agent", "run", str(exp_file), "--json", str(full), "--quiet"],
                       cwd=REPO, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        print(r.stdout[-3000:], file=sys.stderr)
        return r.returncode
    result = summarise(json.loads(full.read_text()))
    result.update(experiment_file=str(exp_file), repeat=args.repeat, requests=args.requests,
                  wall_s=round(time.monotonic() - t0, 1),
                  versions=(CACHE / "runtimes" / "versions.txt").read_text().splitlines())
    result["machine"] = tables.machine()
    print(report(result, args.markdown))
    print("\n".join(result["versions"]))
    tables.save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
