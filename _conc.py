"""Times compile_all of the default experiment's programs with N workers (one process per N)."""
import json, sys, time
sys.path.insert(0, ".")
from imp.configs.digits import get_config
from imp import experiment
from imp.plan import programs
workers = int(sys.argv[1])
run = experiment.build(get_config("smoke"), f"/tmp/wt16_conc{workers}")
hooks = experiment.default_hooks(run)
specs = programs.train_specs(run.plan) + programs.eval_specs(run.plan, run.state.params, hooks.eval_programs())
start = time.perf_counter()
reports = programs.compile_all(run.plan, run.cache, specs, workers=workers)
wall = time.perf_counter() - start
print(json.dumps({"workers": workers, "wall_s": round(wall, 1),
                  "compile_s_sum": round(sum(r.compile_seconds for r in reports), 1),
                  "count_s_sum": round(sum(r.count_seconds for r in reports), 1)}))
