"""The ``mlflow`` training hook: an MLflow run with the recipe as parameters and as recipe.yaml, every step's metrics, and the final checkpoint as artifacts."""

from __future__ import annotations

from typing import Annotated, Any

from ftcore.api import FtcoreError, Option, TrainingHook

from .common import flat, need, numbers, run_id_file

#: MLflow refuses longer parameter values
MAX_PARAM = 6000


class MLflow(TrainingHook):
    """Log to MLflow: ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``, else MLflow's own default), one run per training run."""

    order = 100  # after the hooks that add metrics

    def __init__(
        self,
        tracking_uri: Annotated[str | None, Option("MLflow tracking URI (a server, or file:///path for a local store)")] = None,
        experiment: Annotated[str, Option("experiment name")] = "ftcore",
        run_name: Annotated[str | None, Option("run name (default: the recipe's name)")] = None,
        log_checkpoint: Annotated[bool, Option("copy the final checkpoint into the run's artifacts")] = True,
    ) -> None:
        self.tracking_uri, self.experiment, self.run_name, self.log_checkpoint = tracking_uri, experiment, run_name, log_checkpoint
        self.client: Any = None
        self.run_id: str | None = None
        self.last: Any = None

    def before_train(self, ctx: Any) -> None:
        if not ctx.is_main:
            return
        need("mlflow", "mlflow")
        from mlflow.exceptions import MlflowException

        try:
            self._start(ctx)
        except MlflowException as exc:  # a store MLflow refuses, a server that is down: say so, without a traceback
            raise FtcoreError(f"mlflow: {str(exc).strip().splitlines()[0][:400]}", where="hooks (mlflow)",
                              hint="check tracking_uri / MLFLOW_TRACKING_URI (a file:// store needs MLFLOW_ALLOW_FILE_STORE=true with MLflow 3)") from None

    def _start(self, ctx: Any) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        id_file = run_id_file(ctx.work_dir, "mlflow")
        if id_file.is_file() and ctx.step:  # a resumed run goes on in its MLflow run
            self.run_id = id_file.read_text().strip()
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name or ctx.recipe.name).info.run_id
        id_file.write_text(self.run_id)
        params = [Param(k, v[:MAX_PARAM]) for k, v in flat(ctx.recipe.data).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, ctx.recipe.to_yaml(), "recipe.yaml")

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, ctx.step) for k, v in numbers(metrics).items()])

    def after_save(self, ctx: Any, folder: Any) -> None:
        self.last = folder

    def after_train(self, ctx: Any) -> None:
        if self.run_id is None:
            return
        if self.log_checkpoint and self.last is not None:
            self.client.log_artifacts(self.run_id, str(self.last), artifact_path="checkpoint")
        self.client.set_terminated(self.run_id)
        self.run_id = None
