"""Scan over layers: compile time and step time, scanned (at each `model.scan_unroll`) vs
unrolled, at 4, 12, 24 and 48 layers.

IMP §3.1.1 reports 15-30x faster compiles with `scan` over layers: XLA compiles one layer body
instead of every layer. Compile time here is trace + lower + XLA compile of the whole train
step (what a run waits for), median of repeated compiles of fresh functions, also split into
JAX's trace + lower and XLA's compile; step time is the median of interleaved rounds on the
same batch. `scan_unroll=k` keeps the scanned parameter layout and runs k layers per loop
iteration: the rows show what each setting costs in compile time and gains in step time.

Why the ratio depends on depth: an unrolled step compiles in about F + L * c seconds (F for the
embedders, loss and optimizer, c per layer), a scanned one in about F + c + (the loop's own
cost), whatever L is. The ratio therefore grows with depth and with c / F; the rows per depth
show both parts.
"""

from __future__ import annotations

from benchmarks.measure import Report, Stat, interleaved, ratio
from benchmarks.programs import TaskShape, train_program

NAME = "scan_layers"
GOAL = "15-30x faster compile (paper)"
MODEL = dict(width=64, num_heads=4, mlp_dim=256, embed_dim=64, text_max_length=24)
SIZES = {"quick": dict(depths=(2,), unrolls=(2,), compiles=1, rounds=2, repeats=2),
         "full": dict(depths=(4, 12, 24, 48), unrolls=(2, 4), compiles=2, rounds=5,
                      repeats=5)}
TASK = TaskShape("softmax", batch_size=16, resolution=16)  # 64 tokens per example


def benchmark(quick: bool) -> Report:
  size = SIZES["quick" if quick else "full"]
  rows, data = [], {}
  for depth in size["depths"]:
    compile_s, lower_s, programs = {}, {}, {}
    settings = {"scanned": dict(scan_layers=True, scan_unroll=1)}  # a loop of `depth` trips
    unrolls = sorted({k for k in size["unrolls"] if k < depth} | {depth})  # depth: no loop
    settings.update({f"scanned_unroll{k}": dict(scan_layers=True, scan_unroll=k)
                     for k in unrolls})
    settings["unrolled"] = dict(scan_layers=False)
    for name, setting in settings.items():
      built = [train_program(dict(MODEL, depth=depth, **setting), TASK)
               for _ in range(size["compiles"])]
      compile_s[name] = [p.compile_seconds for p in built]
      lower_s[name] = [p.lower_seconds for p in built]
      programs[name] = built[-1]
    step_s = interleaved(programs, rounds=size["rounds"], repeats=size["repeats"])
    speedup = ratio(compile_s["unrolled"], compile_s["scanned"])
    step_ratio = ratio(step_s["scanned"], step_s["unrolled"])
    parts = {name: (Stat.of(lower_s[name]).median,
                    Stat.of(compile_s[name]).median - Stat.of(lower_s[name]).median)
             for name in compile_s}
    rows += [
        (f"{depth} layers: compile s, scanned / unrolled",
         f"{Stat.of(compile_s['scanned']).median:.1f} / "
         f"{Stat.of(compile_s['unrolled']).median:.1f} s", ""),
        (f"{depth} layers: trace+lower | XLA s, scanned / unrolled",
         "{:.1f} | {:.1f} / {:.1f} | {:.1f} s".format(*parts["scanned"], *parts["unrolled"]),
         ""),
        (f"{depth} layers: compile speed-up of scan", speedup.show(fmt="{:.1f}", unit="x"),
         GOAL),
        (f"{depth} layers: step time scanned / unrolled", step_ratio.show(unit="x"), "~1x"),
    ]
    for name in settings:
      if name.startswith("scanned_unroll"):
        rows.append((f"{depth} layers, {name.removeprefix('scanned_')}: compile s | step time "
                     "/ unrolled", f"{Stat.of(compile_s[name]).median:.1f} s | "
                     f"{ratio(step_s[name], step_s['unrolled']).show(unit='x')}", ""))
    data[f"depth_{depth}"] = {
        "compile_seconds": {k: Stat.of(v).to_json() for k, v in compile_s.items()},
        "trace_lower_seconds": {k: Stat.of(v).to_json() for k, v in lower_s.items()},
        "step_ms": {k: Stat.of(v).scaled(1e3).to_json() for k, v in step_s.items()},
        "compile_speedup": speedup.to_json(), "step_ratio_scanned_over_unrolled":
        step_ratio.to_json(),
        "step_ratio_over_unrolled": {k: ratio(step_s[k], step_s["unrolled"]).to_json()
                                     for k in settings if k != "unrolled"}}
  data["model"] = MODEL
  data["batch"] = dict(batch_size=TASK.batch_size, resolution=TASK.resolution)
  return Report(rows, data)
