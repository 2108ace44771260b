"""The grid scheduler: processes take cells from a shared queue in `out_dir` until none is left.

`python -m engine.grid CONFIG [key=value ...]` (or `medft grid`) runs a grid YAML (config.py).
Any number of processes may run the same grid at once: the ranks of the DeepSpeed launcher
(`deepspeed --num_gpus 8 --module engine.grid CONFIG`, each rank on `cuda:LOCAL_RANK`), several
`medft grid` processes, or several hosts sharing the file system. Each process repeatedly claims a
free cell (claims.py), trains it with `train_cell` and moves on, and exits when every cell is done
or has failed `1 + grid.retries` times.
- A done cell (result.json) is skipped; a cell killed half-way resumes from its checkpoint. Both
  only under the config that made them: before any cell trains, a grid whose cells (or out_dir's
  grid.yaml) differ from the saved configs in a key that changes results stops, naming them
  (guard.py); `--restart-changed` moves those cells aside and trains them afresh.
- A cell that raises is recorded in its folder (failure.json: reason, traceback, attempts) and
  retried later; it never stops the other cells. A worker that died counts as a failed attempt
  only when its cell completed no epoch under it; `--retry-failed` re-queues failed cells.
- Ctrl-C or SIGTERM releases the claim, so the cell is free for the next run at once (exit 130).
- A worker takes cells in the order that reuses what it has loaded (cells_mode.claim_order).
- Ranks come from the launcher (RANK, LOCAL_RANK) or from SLURM (SLURM_PROCID, SLURM_LOCALID);
  docs/cluster.md has the multi-node recipes.
- Each process keeps the last `grid.dataset_cache_size` datasets it loaded for the cells that follow.
- attempts.jsonl in each cell folder records every start and outcome, with host and pid.

Modules, each importing only those before it: config (the grid YAML and its cells), claims
(who trains which cell), logs (rank and cell id on every log line), worker (one cell's run and what
both modes share), cells_mode and data_mode (the two `grid.parallel` loops), guard (out_dir's results
against the grid's config), run (`run_grid`), __main__ (the command line).
"""
