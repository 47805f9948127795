"""Data-parallel training on a Ray cluster: Ray Train (v2 API) runs PyTorch DDP, archipel keeps the state.

Launched by archipel at a site whose compute is a Ray cluster (``archipel run examples/train_ddp.yaml``), this
script is the Ray job's driver. It reads the input once and starts a ``TorchTrainer`` whose ``WORKERS``
workers train one small MLP with DistributedDataParallel (gloo), each on its shard of every epoch. Rank 0 is
the only one that writes to archipel: the loss per epoch and, when the spec's interval is due, a checkpoint
(weights, optimizer momentum, epoch). A recovered attempt's driver loads the last checkpoint and hands it to
every worker, so training goes on from there. The driver logs the accuracy and publishes the model as JSON.
``EPOCHS`` and ``WORKERS`` (environment) set the length and width of training.
"""

import json
import os
import tempfile

import numpy as np
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer, prepare_model

import archipel

FEATURES = [  # the ten mean_* measurements of the cell nuclei
    "mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
    "mean_compactness", "mean_concavity", "mean_concave_points", "mean_symmetry", "mean_fractal_dimension",
]  # fmt: skip
BATCH = 32


def train_loop(config: dict) -> dict | None:
    """One worker's training; rank 0 returns the accuracy and the weights (Ray hands them to the driver)."""
    train = ray.train.get_context()
    rank, world = train.get_world_rank(), train.get_world_size()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    resume = config["resume"]
    if resume is not None:
        net.load_state_dict({name: torch.tensor(w) for name, w in resume["model"].items()})
    model = prepare_model(net)  # DDP: every step averages the gradients of all workers
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    if resume is not None:
        for param, buffer in zip(net.parameters(), resume["momentum"], strict=True):
            optimizer.state[param]["momentum_buffer"] = torch.tensor(buffer)
    X, y = torch.tensor(config["X"]), torch.tensor(config["y"])  # copies: Ray's shared arrays are read-only
    job = archipel.job.context() if rank == 0 else None  # one writer of metrics and checkpoints
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(config["start"], config["epochs"]):
        order = np.random.default_rng(epoch).permutation(len(y))  # the same order on every worker
        shard = torch.from_numpy(order[: len(y) // world * world][rank::world])  # equal shards: no rank waits
        total = torch.zeros(2, dtype=torch.float64)
        for lo in range(0, len(shard), BATCH):
            batch = shard[lo : lo + BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(X[batch]).squeeze(1), y[batch])
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(batch), len(batch)], dtype=torch.float64)
        torch.distributed.all_reduce(total)  # the loss over every worker's shard
        if job is not None:
            job.log_metric("loss", float(total[0] / total[1]), step=epoch + 1)
            if job.checkpoint.due():
                momentum = [optimizer.state[p]["momentum_buffer"] for p in net.parameters()]
                state = {"epoch": epoch + 1, "model": net.state_dict(), "momentum": momentum}
                job.checkpoint.save(state, step=epoch + 1)
    if rank != 0:
        return None
    with torch.no_grad():
        accuracy = float(((net(X).squeeze(1) > 0).float() == y).float().mean())
    return {
        "accuracy": accuracy,
        "workers": world,
        "model": {k: v.numpy() for k, v in net.state_dict().items()},
    }


ctx = archipel.job.context()
table = ctx.input(ctx.inputs[0])
X = np.column_stack([table[c].to_numpy().astype(np.float64) for c in FEATURES])
X = ((X - X.mean(axis=0)) / (X.std(axis=0) + 1e-12)).astype(np.float32)
y = table["malignant"].to_numpy().astype(np.float32)
epochs, workers = int(os.environ.get("EPOCHS", "10")), int(os.environ.get("WORKERS", "2"))
ctx.log_params({"model": "MLP 6-16-1", "optimizer": "SGD momentum 0.9", "epochs": epochs, "workers": workers})
resume = ctx.checkpoint.load()
start = int(resume["epoch"]) if resume is not None else 0
if resume is not None:
    print(f"resuming at epoch {start} from checkpoint {ctx.checkpoint.seq}", flush=True)

# Ray Train keeps its own run folder; archipel keeps the checkpoints, so a throwaway local one will do.
with tempfile.TemporaryDirectory(prefix="ray-train-") as storage:
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"X": X, "y": y, "epochs": epochs, "start": start, "resume": resume},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False),
        run_config=ray.train.RunConfig(name=f"{ctx.run_id}-{ctx.step}", storage_path=storage),
    )
    final = trainer.fit().return_value

ctx.log_metric("workers", final["workers"], step=epochs)
ctx.log_metric("accuracy", final["accuracy"], step=epochs)
weights = {name: w.tolist() for name, w in final["model"].items()}  # float32 -> exact floats: stable bytes
ctx.output("model", json.dumps({"features": FEATURES, "weights": weights}, sort_keys=True).encode())
print(f"trained {epochs} epochs on {final['workers']} workers: accuracy {final['accuracy']:.4f}", flush=True)
