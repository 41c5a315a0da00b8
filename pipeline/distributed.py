"""Many streams across machines: the streams of a ``.streams`` file spread over pipelines in Ray actors.

    run_on_ray(cfg)                          python -m pipeline --source site.streams --ray local|ADDRESS
        ray.init                             'local' starts a Ray runtime here; else join the cluster at ADDRESS
        the streams file's lines             (or the one source)
        split over N actors                  round robin: actor k gets lines k, k+N, ... (ray_actors, 0 = one per
                                             stream, at most the cluster's CPUs / ray_cpus)
        PipelineActor per part               builds its own models, on a GPU when Ray gives it one, else the CPU
        actor.run(part) -> its summary       run_pipeline on a MultiSource of its streams
        the merged summary                   a row per stream from every actor, the restarts counted

Outputs: each actor writes its own, named by stream: ``--save DIR/`` gets ``DIR/stream<i>_<name>.mp4`` (i: the
stream's line among all the streams), ``--save-json OUT.jsonl`` becomes ``OUT.part<k>.jsonl`` (every line carries
its ``"stream"``); the driver writes the merged ``--summary``. If an actor dies, Ray restarts it
(``ray_max_restarts``) and runs its part again: a camera or network stream reconnects, a file plays from its
start and its outputs are written anew; the summary counts the restart. Ctrl-C asks every actor to stop as
Ctrl-C stops one pipeline: each closes its outputs properly.

Ray is optional (``pip install -r requirements-ray.txt``); without it ``--ray`` is a clear error. Stream URLs never
appear in Ray's task or actor names (the actors are named ``blurdet-part<k>``), and every log line masks them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from configs import load_config, to_dict
from pipeline.config import PipelineConfig
from pipeline.sources import is_streams_file, mask_url, read_streams_file
from runtime.files import atomic_write_text

logger = logging.getLogger(__name__)

RAY_MISSING = ("--ray needs Ray, an optional dependency: pip install -r requirements-ray.txt "
               "(or drop --ray to run every stream in this process)")


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    return ray


def stream_specs(cfg: PipelineConfig) -> list[str]:
    """The sources a run reads: the lines of a .streams/.txt file, or the one source."""
    src = cfg.source.strip()
    return read_streams_file(src) if is_streams_file(src) else [src]


def split(n_streams: int, n_parts: int) -> list[list[int]]:
    """Stream numbers per part, round robin (part k: k, k + n_parts, ...); no part is empty."""
    n_parts = max(1, min(n_parts, n_streams))
    return [list(range(k, n_streams, n_parts)) for k in range(n_parts)]


def part_path(path: str, part: int) -> str:
    """OUT.jsonl -> OUT.part<k>.jsonl: each actor's own file."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.part{part}{p.suffix}"))


class PipelineActor:
    """One pipeline (its own models and threads) on its share of the streams; wrapped by ray.remote at run time.
    Two concurrent calls: ``run`` works while ``stop`` can still reach it."""

    def __init__(self, log_level: int = logging.INFO) -> None:
        from pipeline.runner import StopRequest

        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        self.request = StopRequest()

    def run(self, cfg_data: dict, specs: list[str], ids: list[int], part: int) -> dict:
        import ray

        from pipeline.runner import run_pipeline
        from pipeline.sources import MultiSource, open_source

        cfg = load_config(PipelineConfig, data=cfg_data)
        sources = [open_source(spec, vid_stride=cfg.vid_stride, queue_size=cfg.queue_size, realtime=cfg.realtime,
                               reconnect_attempts=cfg.reconnect_attempts, reconnect_delay=cfg.reconnect_delay,
                               open_timeout=cfg.open_timeout) for spec in specs]
        source = MultiSource(f"part{part}", sources, reconnect_attempts=cfg.reconnect_attempts,
                             reconnect_delay=cfg.reconnect_delay, stream_ids=ids)
        summary = run_pipeline(cfg, source=source, request=self.request)
        context = ray.get_runtime_context()
        summary["ray"] = {"part": part, "restarted": bool(context.was_current_actor_reconstructed),
                          "node": context.get_node_id()}
        return summary

    def stop(self) -> None:
        self.request.ask(interrupted=True)


def run_on_ray(cfg: PipelineConfig) -> dict:
    """Run cfg's streams over Ray actors (see the module docstring); returns the merged summary."""
    ray = _ray()
    specs = stream_specs(cfg)
    started_here = not ray.is_initialized()
    if started_here:
        address = "local" if cfg.ray == "local" else cfg.ray
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConnectionError(f"--ray {cfg.ray}: cannot start or join Ray: {e}. Fix: --ray local, or the address "
                                  "of a running cluster (ray start --head prints it).") from None
    try:
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
        wanted = cfg.ray_actors or (max(1, int(cpus // cfg.ray_cpus)) if cfg.ray_cpus > 0 else len(specs))
        parts = split(len(specs), wanted)
        per_gpu = 1.0 if cfg.detector.device != "cpu" and gpus >= len(parts) else 0.0
        logger.info("Ray: %d stream(s) over %d pipeline actor(s) (%g CPU%s each); cluster: %g CPUs, %g GPUs",
                    len(specs), len(parts), cfg.ray_cpus, ", 1 GPU" if per_gpu else "", cpus, gpus)
        remote = ray.remote(PipelineActor)
        actors = [remote.options(name=f"blurdet-part{k}", num_cpus=cfg.ray_cpus, num_gpus=per_gpu,
                                 max_restarts=cfg.ray_max_restarts, max_task_retries=cfg.ray_max_restarts,
                                 max_concurrency=2).remote(logging.getLogger().getEffectiveLevel())
                  for k in range(len(parts))]
        data = to_dict(cfg)
        data.update(ray="", summary="", show=False)
        if not per_gpu and cfg.detector.device == "auto":
            data["detector"] = {**data["detector"], "device": "cpu"}
        calls = []
        for k, (actor, ids) in enumerate(zip(actors, parts)):
            part = {**data, "save_json": part_path(cfg.save_json, k) if cfg.save_json else ""}
            calls.append(actor.run.remote(part, [specs[i] for i in ids], ids, k))
        try:
            results = _wait(ray, calls)
        except KeyboardInterrupt:
            logger.warning("Ctrl-C: asking every pipeline actor to stop and close its outputs (Ctrl-C again aborts)")
            ray.get([a.stop.remote() for a in actors])
            results = _wait(ray, calls)
    finally:
        if started_here:
            ray.shutdown()
    summary = merge(results, cfg)
    if cfg.summary:
        atomic_write_text(cfg.summary, json.dumps(summary, indent=2) + "\n")
    logger.info("Ray: %d frames in, %d out, %d dropped, %.2f fps over %d actor(s), %d restart(s)", summary["frames_in"],
                summary["frames_out"], summary["dropped"], summary["fps"], len(results), summary["ray"]["restarts"])
    return summary


def _wait(ray, calls: list) -> list[dict]:
    try:
        return ray.get(calls)
    except ray.exceptions.RayActorError as e:
        raise RuntimeError(f"a pipeline actor died more often than ray_max_restarts allows: {e}") from None
    except ray.exceptions.RayTaskError as e:  # an error in a pipeline (bad input...): its message, not Ray's trace
        raise RuntimeError(str(e.cause) if getattr(e, "cause", None) else str(e)) from None


def merge(parts: list[dict], cfg: PipelineConfig) -> dict:
    """One summary from the actors' summaries: totals, a row per stream (by stream number), the restarts."""
    streams = sorted((row for p in parts for row in p["streams"]), key=lambda r: r["stream"])
    p95 = [p["latency_ms"]["p95"] for p in parts if p["latency_ms"]["p95"] is not None]
    config = to_dict(cfg)
    config["source"] = mask_url(config["source"])
    return {
        "source": mask_url(cfg.source), "source_kind": "streams", "live": any(p["live"] for p in parts),
        "frames_in": sum(p["frames_in"] for p in parts), "frames_out": sum(p["frames_out"] for p in parts),
        "dropped": sum(p["dropped"] for p in parts), "interrupted": any(p["interrupted"] for p in parts),
        "fps": round(sum(p["fps"] for p in parts), 3),  # the actors run side by side: their rates add up
        "latency_ms": {"p95_worst_part": max(p95) if p95 else None,
                       "p50_median_part": float(np.median([p["latency_ms"]["p50"] for p in parts
                                                           if p["latency_ms"]["p50"] is not None] or [np.nan]))},
        "streams": streams,
        "ray": {"address": cfg.ray, "actors": len(parts), "restarts": sum(bool(p["ray"]["restarted"]) for p in parts),
                "parts": [{"part": p["ray"]["part"], "node": p["ray"]["node"], "restarted": p["ray"]["restarted"],
                           "streams": [r["stream"] for r in p["streams"]], "fps": p["fps"]} for p in parts]},
        "config": config,
    }
